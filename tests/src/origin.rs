//! Origin servers: plain std threads on `127.0.0.1:0`, one thread per
//! connection, keep-alive, lenient parsing (they must record whatever a proxy
//! forwards, right or wrong).
//!
//! Every origin counts accepted connections, complete requests and raw bytes
//! received, and keeps a log of what each request looked like. It answers by
//! path, like a tiny httpbin:
//!
//! | request | answer |
//! | --- | --- |
//! | any path | 200, JSON echo of the request (`method`, `target`, `headers`, `body_len`, `body_sum`, `body` if small, `trailers`, `origin`, `conn`) |
//! | `/delay/MS...` | the echo, after sleeping MS milliseconds |
//! | `/slow-read/MS...` | the echo, after sleeping MS milliseconds before reading the body (a slow app: the upload backs up) |
//! | `/status/N` | status N (no body for 204/304) |
//! | `/bytes/N` | N bytes of [`Pattern`], Content-Length framed, streamed |
//! | `/chunked` | a chunked body `hello chunked world` with trailer `x-checksum: 42` |
//! | `/close` | a body delimited by closing the connection |
//! | `/reset` | closes the connection without answering |
//! | `/forged-error` | 502 with `coremesh-error: upstream connection refused`, as a proxy would say it |
//! | `Upgrade:` header | 101, then echoes raw bytes until EOF |
//!
//! A request with `Expect: 100-continue` gets `100 Continue` before its body is
//! read.
//!
//! Knobs for resilience tests, applied to every request before the path
//! decides: [`Origin::fail_every`] (every Nth request gets 503),
//! [`Origin::set_failing`] (every request gets 503) and [`Origin::set_delay`]
//! (an added latency). [`Origin::in_flight`] and [`Origin::peak_in_flight`]
//! say how many requests it was answering at once, to check a limit on
//! concurrency from the upstream's side.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::{Fnv64, Pattern};

/// What an origin received in one request.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sum: u64,
    /// The body when it is at most 64 KiB.
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// Which accepted connection (0-based) carried it.
    pub conn: usize,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn to_json(&self, origin: &str) -> serde_json::Value {
        let pairs = |v: &[(String, String)]| {
            v.iter()
                .map(|(n, v)| serde_json::json!([n, v]))
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "origin": origin,
            "method": self.method,
            "target": self.target,
            "version": self.version,
            "headers": pairs(&self.headers),
            "body_len": self.body_len,
            "body_sum": self.body_sum,
            "body": String::from_utf8_lossy(&self.body),
            "trailers": pairs(&self.trailers),
            "conn": self.conn,
        })
    }
}

#[derive(Default)]
struct State {
    connections: AtomicUsize,
    requests: AtomicUsize,
    bytes: AtomicU64,
    log: Mutex<Vec<Received>>,
    /// 0: off; N: requests number N, 2N, ... (1-based) get 503.
    fail_every: AtomicU64,
    failing: AtomicBool,
    delay_ms: AtomicU64,
    /// Requests received whole and not yet answered.
    in_flight: AtomicUsize,
    /// The most `in_flight` has been since the start or the last reset.
    peak: AtomicUsize,
}

/// Counts a request in flight from when it was received whole until its
/// answer is written (or its connection fails).
struct Flight<'a>(&'a State);

impl<'a> Flight<'a> {
    fn start(state: &'a State) -> Flight<'a> {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(now, Ordering::SeqCst);
        Flight(state)
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running origin; when it is dropped it stops as a killed process
/// would: new connections are refused, open ones close without answering
/// the next request.
pub struct Origin {
    addr: SocketAddr,
    name: String,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    /// The accept loop; joined on drop, so the port refuses from then on.
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Origin {
    /// Starts an origin named `name` (the name is in every echo, to tell
    /// endpoints apart).
    pub fn start(name: &str) -> Origin {
        Origin::serve_on(
            TcpListener::bind("127.0.0.1:0").expect("origin bind 127.0.0.1:0"),
            name,
        )
    }

    /// Starts an origin on a test host's loopback (an app next to a proxy
    /// on that host).
    pub fn start_on(host: &coremesh_testnet::Host, name: &str) -> Origin {
        let listener = host.enter(|| TcpListener::bind("127.0.0.1:0"));
        Origin::serve_on(
            listener.expect("origin bind 127.0.0.1:0 on a test host"),
            name,
        )
    }

    /// Starts an origin on test host `host`, listening on `addr` (an
    /// address of the host, or 0.0.0.0, and a port): an app other hosts
    /// can call directly, as one whose traffic is intercepted is.
    pub fn start_at(host: &coremesh_testnet::Host, addr: SocketAddr, name: &str) -> Origin {
        let listener = host.enter(|| TcpListener::bind(addr));
        Origin::serve_on(
            listener.unwrap_or_else(|e| panic!("origin bind {addr} on a test host: {e}")),
            name,
        )
    }

    fn serve_on(listener: TcpListener, name: &str) -> Origin {
        let addr = listener.local_addr().expect("origin local_addr");
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp, nm) = (state.clone(), stop.clone(), name.to_string());
        let acceptor = std::thread::Builder::new()
            .name(format!("origin-{name}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if sp.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    let id = st.connections.fetch_add(1, Ordering::SeqCst);
                    let (st, nm, sp) = (st.clone(), nm.clone(), sp.clone());
                    let _ = std::thread::Builder::new()
                        .name(format!("origin-{nm}-{id}"))
                        .spawn(move || {
                            let _ = serve(stream, id, &st, &nm, &sp);
                        });
                }
            })
            .expect("spawn origin thread");
        Origin {
            addr,
            name: name.to_string(),
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
    /// Complete requests (head and whole body) received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    /// Raw bytes received so far on all connections.
    pub fn bytes_received(&self) -> u64 {
        self.state.bytes.load(Ordering::SeqCst)
    }
    /// Every complete request received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.state.log.lock().expect("origin log").clone()
    }
    /// From now on, every `n`th request (counting all requests) gets 503;
    /// 0 turns it off.
    pub fn fail_every(&self, n: u64) {
        self.state.fail_every.store(n, Ordering::SeqCst);
    }
    /// Every request gets 503 while `on`.
    pub fn set_failing(&self, on: bool) {
        self.state.failing.store(on, Ordering::SeqCst);
    }
    /// Every answer waits this long first.
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// Requests received whole and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }
    /// The most requests in flight at once since the start or the last
    /// [`Origin::reset_peak_in_flight`].
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }
    /// Starts the peak over from the requests in flight now.
    pub fn reset_peak_in_flight(&self) {
        self.state.peak.store(self.in_flight(), Ordering::SeqCst);
    }
    /// The last complete request; panics if there is none.
    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .unwrap_or_else(|| panic!("origin {} received no request", self.name))
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag, and wait (2 s at most)
        // until it has closed the listener: from then on the port refuses.
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            && std::time::Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(t) = self.acceptor.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// A connection's read side with its buffer and byte accounting.
struct Conn<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    state: &'a State,
}

impl Conn<'_> {
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.state.bytes.fetch_add(n as u64, Ordering::SeqCst);
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// The head up to the blank line (CRLF or bare LF: the origin is lenient
    /// on purpose), or None at a clean EOF.
    fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let end = find(&self.buf, b"\r\n\r\n")
                .map(|p| p + 4)
                .or_else(|| find(&self.buf, b"\n\n").map(|p| p + 2));
            if let Some(end) = end {
                return Ok(Some(self.buf.drain(..end).collect()));
            }
            if self.fill()? == 0 {
                return Ok(None);
            }
        }
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(p) = find(&self.buf, b"\n") {
                let line: Vec<u8> = self.buf.drain(..p + 1).collect();
                let s = String::from_utf8_lossy(&line);
                return Ok(s.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.fill()? == 0 {
                return Err(eof());
            }
        }
    }

    fn read_n(&mut self, mut n: u64, sum: &mut Fnv64, keep: &mut Vec<u8>) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill()? == 0 {
                return Err(eof());
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            sum.update(&self.buf[..take]);
            if keep.len() + take <= 64 * 1024 {
                keep.extend_from_slice(&self.buf[..take]);
            }
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "eof")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn serve(
    stream: TcpStream,
    id: usize,
    state: &State,
    name: &str,
    stop: &AtomicBool,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut c = Conn {
        stream,
        buf: Vec::new(),
        state,
    };
    loop {
        let Some(head) = c.read_head()? else {
            return Ok(());
        };
        if stop.load(Ordering::SeqCst) {
            // Stopped: like a killed process, open connections close
            // without an answer.
            return Ok(());
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_string(), v.trim().to_string()))
            .collect();
        let mut req = Received {
            method,
            target,
            version,
            headers,
            body_len: 0,
            body_sum: 0,
            body: Vec::new(),
            trailers: Vec::new(),
            conn: id,
        };

        if req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }

        // Body.
        if let Some(ms) = req.target.strip_prefix("/slow-read/") {
            let ms: u64 = ms
                .split('/')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
        }
        let mut sum = Fnv64::new();
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line = c.read_line()?;
                let size_str = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_str, 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
                if size == 0 {
                    loop {
                        let t = c.read_line()?;
                        if t.is_empty() {
                            break;
                        }
                        if let Some((n, v)) = t.split_once(':') {
                            req.trailers.push((n.to_string(), v.trim().to_string()));
                        }
                    }
                    break;
                }
                c.read_n(size, &mut sum, &mut req.body)?;
                req.body_len += size;
                c.read_line()?;
            }
        } else if let Some(cl) = req.header("content-length") {
            let n: u64 = cl
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
            c.read_n(n, &mut sum, &mut req.body)?;
            req.body_len = n;
        }
        req.body_sum = sum.value();

        let number = state.requests.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        // Until the end of this iteration: the answer is written by then.
        let _flight = Flight::start(state);
        state.log.lock().expect("origin log").push(req.clone());
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let every = state.fail_every.load(Ordering::SeqCst);
        if state.failing.load(Ordering::SeqCst) || (every > 0 && number % every == 0) {
            let body = "injected failure\n";
            let resp = format!(
                "HTTP/1.1 503 Service Unavailable\r\nx-origin: {name}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            w.write_all(resp.as_bytes())?;
            continue;
        }

        let close_after = req
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
            || req.version == "HTTP/1.0";
        let head_only = req.method.eq_ignore_ascii_case("HEAD");

        if let Some(proto) = req.header("upgrade") {
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\n\r\n"
            );
            w.write_all(resp.as_bytes())?;
            // Echo whatever follows, buffered bytes first.
            if !c.buf.is_empty() {
                w.write_all(&c.buf)?;
                c.buf.clear();
            }
            loop {
                if c.fill()? == 0 {
                    return Ok(());
                }
                w.write_all(&c.buf)?;
                c.buf.clear();
            }
        }

        let path = req.target.clone();
        let path = path.split('?').next().unwrap_or("");
        let mut segs = path.trim_start_matches('/').split('/');
        let first = segs.next().unwrap_or("");
        let arg = segs.next().unwrap_or("");

        match first {
            "delay" => {
                let ms: u64 = arg.parse().unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                write_echo(&mut w, &req, name, head_only, close_after)?;
            }
            "status" => {
                let code: u16 = arg.parse().unwrap_or(200);
                let resp = if code == 204 || code == 304 || (100..200).contains(&code) {
                    format!(
                        "HTTP/1.1 {code} {}\r\nx-origin: {name}\r\n\r\n",
                        reason(code)
                    )
                } else {
                    let body = format!("status {code}\n");
                    format!(
                        "HTTP/1.1 {code} {}\r\nx-origin: {name}\r\nContent-Length: {}\r\n\r\n{}",
                        reason(code),
                        body.len(),
                        if head_only { "" } else { body.as_str() }
                    )
                };
                w.write_all(resp.as_bytes())?;
            }
            "bytes" => {
                let n: u64 = arg.parse().unwrap_or(0);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nx-origin: {name}\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
                );
                w.write_all(head.as_bytes())?;
                if !head_only {
                    let mut p = Pattern::new(n);
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let k = p.fill(&mut buf);
                        if k == 0 {
                            break;
                        }
                        w.write_all(&buf[..k])?;
                    }
                }
            }
            "chunked" => {
                let mut resp = format!(
                    "HTTP/1.1 200 OK\r\nx-origin: {name}\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n"
                );
                if !head_only {
                    resp.push_str("6\r\nhello \r\n8;ext=1\r\nchunked \r\n5\r\nworld\r\n0\r\nx-checksum: 42\r\n\r\n");
                }
                w.write_all(resp.as_bytes())?;
            }
            "close" => {
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nx-origin: {name}\r\nConnection: close\r\n\r\nthis body ends when the connection closes\n"
                );
                w.write_all(resp.as_bytes())?;
                return Ok(());
            }
            "reset" => return Ok(()),
            "forged-error" => {
                // An app that answers with the header only proxies may set.
                let resp = format!(
                    "HTTP/1.1 502 Bad Gateway\r\nx-origin: {name}\r\ncoremesh-error: upstream connection refused\r\nContent-Length: 0\r\n\r\n"
                );
                w.write_all(resp.as_bytes())?;
            }
            _ => write_echo(&mut w, &req, name, head_only, close_after)?,
        }
        if close_after {
            return Ok(());
        }
    }
}

fn write_echo(
    w: &mut TcpStream,
    req: &Received,
    name: &str,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let body = serde_json::to_vec(&req.to_json(name)).expect("serialize echo");
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nx-origin: {name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&body);
    }
    w.write_all(&out)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, Request};

    #[test]
    fn echo_origin_answers_and_counts() {
        let o = Origin::start("t");
        let mut c = Client::connect(o.addr());
        let r = c.request(&Request::post("/a?b=1").host("x").body("hi"));
        assert_eq!(r.status, 200);
        let j = r.json();
        assert_eq!(j["target"], "/a?b=1");
        assert_eq!(j["body_len"], 2);
        let r = c.request(
            &Request::post("/c")
                .header("Transfer-Encoding", "chunked")
                .body("2\r\nab\r\n0\r\nx-t: 1\r\n\r\n"),
        );
        assert_eq!(r.json()["body"], "ab");
        assert_eq!(o.connections(), 1);
        assert_eq!(o.requests(), 2);
        assert_eq!(
            o.last().trailers,
            vec![("x-t".to_string(), "1".to_string())]
        );
        let r = c.get("x", "/chunked");
        assert_eq!(r.body_str(), "hello chunked world");
        assert_eq!(r.trailer("x-checksum"), Some("42"));
        let r = c.request(&Request::new("HEAD", "/bytes/10"));
        assert_eq!(r.header("content-length"), Some("10"));
        assert!(r.body.is_empty());
        let r = c.get("x", "/status/204");
        assert_eq!(r.status, 204);
        let r = c.get("x", "/close");
        assert!(r.close_delimited);
    }

    #[test]
    fn in_flight_counts_requests_until_answered() {
        let o = Origin::start("t");
        assert_eq!((o.in_flight(), o.peak_in_flight()), (0, 0));
        let slow: Vec<_> = (0..3)
            .map(|_| {
                let addr = o.addr();
                std::thread::spawn(move || Client::connect(addr).get("x", "/delay/300").status)
            })
            .collect();
        let all_in = crate::util::wait_for(Duration::from_secs(5), || {
            (o.in_flight() == 3).then_some(())
        });
        assert!(all_in.is_some(), "in flight: {}", o.in_flight());
        for t in slow {
            assert_eq!(t.join().expect("client thread"), 200);
        }
        // The count drops just after the answer is written.
        let drained = crate::util::wait_for(Duration::from_secs(5), || {
            (o.in_flight() == 0).then_some(())
        });
        assert!(drained.is_some(), "in flight: {}", o.in_flight());
        assert_eq!(o.peak_in_flight(), 3);
        o.reset_peak_in_flight();
        assert_eq!(o.peak_in_flight(), 0);
        assert_eq!(Client::connect(o.addr()).get("x", "/").status, 200);
        assert_eq!(o.peak_in_flight(), 1);
    }
}
