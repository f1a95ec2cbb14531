//! A raw HTTP/1.1 client. It writes exactly the bytes a test gives it (so it
//! can send malformed, pipelined or half-finished requests) and reads
//! responses with full framing: Content-Length, chunked with trailers, close
//! delimited, and the no-body cases (HEAD, 1xx, 204, 304).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Default bound on any single read: no test waits forever on a hung proxy.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A request to serialize. Header order and spelling are kept as given.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            version: "HTTP/1.1".to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }
    pub fn post(target: &str) -> Request {
        Request::new("POST", target)
    }
    pub fn host(self, host: &str) -> Request {
        self.header("Host", host)
    }
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn version(mut self, version: &str) -> Request {
        self.version = version.to_string();
        self
    }
    /// Sets the body; adds `Content-Length` unless the request already has a
    /// `Content-Length` or `Transfer-Encoding` header.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        let framed = self.headers.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
        });
        if !framed {
            let len = self.body.len().to_string();
            self.headers.push(("Content-Length".to_string(), len));
        }
        self
    }
    pub fn is_head(&self) -> bool {
        self.method.eq_ignore_ascii_case("HEAD")
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A response as the client saw it.
#[derive(Clone, Debug, Default)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// Whether the body was delimited by the connection closing.
    pub close_delimited: bool,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON (what the echo origin answers); panics with the body
    /// if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} headers {:?} body {:?}",
                self.status,
                self.headers,
                self.body_str()
            )
        })
    }
    /// Whether the header `name` lists `token` (comma separated, any case).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// What a test expects of the reply to a request it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The final response (1xx other than 101 are skipped).
    Final,
    /// Whatever response comes first, interim ones included.
    Any,
}

/// One client connection with a read buffer.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    pub peer: SocketAddr,
}

impl Client {
    /// Connects to `addr`; panics with the address if that fails.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        Client::try_connect_in(None, addr)
    }

    /// Connects from inside the network namespace `netns` (a test host),
    /// or from the test's own namespace when `None`.
    pub fn try_connect_in(netns: Option<&str>, addr: SocketAddr) -> io::Result<Client> {
        let connect = || TcpStream::connect_timeout(&addr, Duration::from_secs(10));
        let stream = match netns {
            Some(ns) => coremesh_testnet::enter_netns(ns, connect)?,
            None => connect()?,
        };
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
            peer: addr,
        })
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn set_read_timeout(&mut self, t: Duration) {
        self.stream
            .set_read_timeout(Some(t))
            .expect("set_read_timeout");
    }

    /// Writes all of `bytes`; panics on error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write to {}: {e}", self.peer));
    }

    /// Writes all of `bytes`, reporting errors (the peer may have closed).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `req` and reads its final response.
    pub fn request(&mut self, req: &Request) -> Response {
        self.send(&req.to_bytes());
        self.read_response_to(req.is_head())
    }

    /// `GET path` with `Host: host` on this connection.
    pub fn get(&mut self, host: &str, path: &str) -> Response {
        self.request(&Request::get(path).host(host))
    }

    /// Reads the final response to a non-HEAD request; panics on error.
    pub fn read_response(&mut self) -> Response {
        self.read_response_to(false)
    }

    /// Reads the final response; `head` says the request was HEAD.
    pub fn read_response_to(&mut self, head: bool) -> Response {
        let peer = self.peer;
        self.try_read(head, Expect::Final, &mut |_| {})
            .unwrap_or_else(|e| panic!("read response from {peer}: {e}"))
    }

    /// Reads the next response, including interim (1xx) ones.
    pub fn read_any_response(&mut self) -> io::Result<Response> {
        self.try_read(false, Expect::Any, &mut |_| {})
    }

    /// Reads the final response and hands each body piece to `sink` instead of
    /// collecting it (`Response::body` stays empty): for very large bodies.
    pub fn read_response_streaming(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<Response> {
        self.try_read(false, Expect::Final, sink)
    }

    /// Reads the final response to a non-HEAD request, reporting errors.
    pub fn try_read_response(&mut self) -> io::Result<Response> {
        self.try_read(false, Expect::Final, &mut |_| {})
    }

    fn try_read(
        &mut self,
        head: bool,
        expect: Expect,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Response> {
        loop {
            let raw = self.read_head()?;
            let mut resp = parse_response_head(&raw)?;
            let interim = (100..200).contains(&resp.status) && resp.status != 101;
            if interim && expect == Expect::Final {
                continue;
            }
            if head || (100..200).contains(&resp.status) || resp.status == 204 || resp.status == 304
            {
                return Ok(resp);
            }
            self.read_body(&mut resp, sink)?;
            return Ok(resp);
        }
    }

    /// Bytes already read past the last response (e.g. tunnel data).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn read_head(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..pos + 4).collect();
                return Ok(head);
            }
            if self.buf.len() > 1024 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head over 1 MiB",
                ));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head (had {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Ok(line[..pos].to_vec());
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed inside chunked framing",
                ));
            }
        }
    }

    fn read_exact_into(
        &mut self,
        mut n: u64,
        sink: &mut dyn FnMut(&[u8]),
        keep: Option<&mut Vec<u8>>,
    ) -> io::Result<()> {
        let mut keep = keep;
        while n > 0 {
            if self.buf.is_empty() && self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed with {n} body bytes still expected"),
                ));
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            sink(&self.buf[..take]);
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(&self.buf[..take]);
            }
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }

    fn read_body(&mut self, resp: &mut Response, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let mut body = Vec::new();
        if resp.header_has_token("transfer-encoding", "chunked") {
            loop {
                let line = self.read_line()?;
                let line = String::from_utf8_lossy(&line).into_owned();
                let size_str = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_str, 16).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size line {line:?}"),
                    )
                })?;
                if size == 0 {
                    loop {
                        let t = self.read_line()?;
                        if t.is_empty() {
                            break;
                        }
                        let t = String::from_utf8_lossy(&t).into_owned();
                        if let Some((n, v)) = t.split_once(':') {
                            resp.trailers
                                .push((n.trim().to_string(), v.trim().to_string()));
                        }
                    }
                    break;
                }
                self.read_exact_into(size, sink, Some(&mut body))?;
                let crlf = self.read_line()?;
                if !crlf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "chunk not followed by CRLF",
                    ));
                }
            }
        } else if let Some(cl) = resp.header("content-length") {
            let n: u64 = cl.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad Content-Length {cl:?}"),
                )
            })?;
            self.read_exact_into(n, sink, Some(&mut body))?;
        } else {
            resp.close_delimited = true;
            loop {
                if !self.buf.is_empty() {
                    sink(&self.buf);
                    body.append(&mut self.buf);
                }
                match self.fill() {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                    Err(e) => return Err(e),
                }
            }
        }
        // Streaming callers get the bytes through `sink` only.
        if body.len() <= 8 * 1024 * 1024 {
            resp.body = body;
        }
        Ok(())
    }

    /// Reads until the peer closes (EOF or reset) and returns everything read,
    /// buffered bytes included. Errors if the connection is still open after
    /// `timeout`.
    pub fn read_until_close(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connection still open after {timeout:?} (read so far {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.fill() {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(std::mem::take(&mut self.buf))
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the peer has closed the connection within `timeout` (any bytes
    /// that arrive meanwhile are discarded).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.read_until_close(timeout).is_ok()
    }

    /// Half-closes the write side (the client is done sending).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Connects to `addr`, sends `GET path` with `Host: host` and
/// `Connection: close`, and returns the response.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> Response {
    let mut c = Client::connect(addr);
    c.request(&Request::get(path).host(host).header("Connection", "close"))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a status line and headers (the bytes up to and including the blank line).
pub fn parse_response_head(raw: &[u8]) -> io::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (n, v) = line.split_once(':').ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad header line {line:?}"),
            )
        })?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Ok(Response {
        version,
        status,
        reason,
        headers,
        ..Response::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(bytes: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b);
            s.write_all(bytes).unwrap();
        });
        addr
    }

    #[test]
    fn reads_chunked_with_trailers_then_next_response() {
        let addr = serve_once(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nx-sum: 7\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        );
        let mut c = Client::connect(addr);
        c.send(b"GET / HTTP/1.1\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello!");
        assert_eq!(r.trailer("X-Sum"), Some("7"));
        let r = c.read_response();
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
    }

    #[test]
    fn reads_close_delimited() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it");
        let mut c = Client::connect(addr);
        c.send(b"GET / HTTP/1.1\r\n\r\n");
        let r = c.read_response();
        assert!(r.close_delimited);
        assert_eq!(r.body_str(), "all of it");
    }
}
