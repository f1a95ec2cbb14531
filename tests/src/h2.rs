//! HTTP/2 without TLS (h2c, prior knowledge): an origin that answers like
//! [`crate::Origin`] does for HTTP/1.1, and a raw client, both on the `h2`
//! crate over a tokio runtime of their own.
//!
//! [`H2Origin`] answers by path:
//!
//! | request | answer |
//! | --- | --- |
//! | any path | 200, JSON echo (`origin`, `method`, `path`, `authority`, `scheme`, `version`, `headers`, `body_len`, `body_sum`, `trailers`, `conn`) |
//! | `/delay/MS...` | the echo, after MS milliseconds |
//! | `/status/N` | status N, a short text body |
//! | `/bytes/N` | N bytes of [`Pattern`], with `content-length` (none with `?no-length`) |
//! | `/trailers` | body `hello trailers`, then trailer `x-checksum: 42` |
//!
//! Every answer carries `x-origin: NAME`. It speaks h2 only: a connection
//! that does not open with the HTTP/2 preface (a proxy speaking HTTP/1.1
//! to it) gets `505` and is closed, and its first line is kept
//! ([`H2Origin::not_h2`]), so a test says what the proxy sent instead.
//!
//! [`H2Client`] is one h2c connection; it sends requests one at a time or
//! many at once as streams of that connection, with bodies and trailers,
//! and reads status, headers, body and trailers back (gRPC frames too:
//! [`grpc_frame`], [`H2Response::grpc_status`]).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::util::{Fnv64, Pattern};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the h2 origin received in one request.
#[derive(Clone, Debug)]
pub struct H2Received {
    pub method: String,
    /// Path and query (`:path`).
    pub path: String,
    /// `:authority`, if the request had one.
    pub authority: Option<String>,
    pub scheme: Option<String>,
    /// Always `HTTP/2.0` (the origin speaks nothing else).
    pub version: String,
    /// Regular headers (no pseudo-headers), names lower case.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sum: u64,
    pub trailers: Vec<(String, String)>,
    /// Which accepted connection (0-based) carried it.
    pub conn: usize,
}

impl H2Received {
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
            "path": self.path,
            "authority": self.authority,
            "scheme": self.scheme,
            "version": self.version,
            "headers": pairs(&self.headers),
            "body_len": self.body_len,
            "body_sum": self.body_sum,
            "trailers": pairs(&self.trailers),
            "conn": self.conn,
        })
    }
}

#[derive(Default)]
struct State {
    connections: AtomicUsize,
    requests: AtomicUsize,
    log: Mutex<Vec<H2Received>>,
    not_h2: Mutex<Vec<String>>,
    /// Responses written whole (the last DATA or trailers handed to h2).
    answered: AtomicUsize,
}

/// A running h2c origin on `127.0.0.1:0`; dropping it stops its runtime,
/// which closes every connection (as a killed process would).
pub struct H2Origin {
    addr: SocketAddr,
    name: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl H2Origin {
    pub fn start(name: &str) -> H2Origin {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("h2 origin bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State::default());
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (st, nm) = (state.clone(), name.to_string());
        let thread = std::thread::Builder::new()
            .name(format!("h2-origin-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            acc = listener.accept() => {
                                let Ok((sock, _)) = acc else { continue };
                                let _ = sock.set_nodelay(true);
                                let id = st.connections.fetch_add(1, Ordering::SeqCst);
                                tokio::spawn(serve_conn(sock, id, st.clone(), nm.clone()));
                            }
                        }
                    }
                });
                // Dropping the runtime drops every connection task.
                drop(rt);
            })
            .expect("spawn h2 origin");
        H2Origin {
            addr,
            name: name.to_string(),
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Connections accepted so far (h2 or not).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
    /// Complete requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    /// Responses the origin finished writing: with [`H2Origin::requests`],
    /// tells a response the origin never sent from one a proxy did not
    /// relay.
    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }
    /// Every complete request, in the order they ended.
    pub fn received(&self) -> Vec<H2Received> {
        self.state.log.lock().expect("h2 origin log").clone()
    }
    /// The first line of each connection that was not HTTP/2 (what a
    /// proxy sent instead of the preface).
    pub fn not_h2(&self) -> Vec<String> {
        self.state.not_h2.lock().expect("h2 origin log").clone()
    }
    /// The last complete request; panics if none.
    pub fn last(&self) -> H2Received {
        self.received().pop().unwrap_or_else(|| {
            panic!(
                "h2 origin {} received no request (non-h2 connections: {:?})",
                self.name,
                self.not_h2()
            )
        })
    }
}

impl Drop for H2Origin {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_conn(mut sock: tokio::net::TcpStream, id: usize, state: Arc<State>, name: String) {
    // Is it h2? Peek until the preface is there or the bytes differ.
    let mut buf = [0u8; 64];
    let started = Instant::now();
    loop {
        let n = match sock.peek(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let k = n.min(PREFACE.len());
        if buf[..k] != PREFACE[..k] {
            let text = String::from_utf8_lossy(&buf[..n]);
            let first = text.lines().next().unwrap_or("").to_string();
            state.not_h2.lock().expect("h2 origin log").push(first);
            let body = "this origin speaks h2c (prior knowledge) only\n";
            let resp = format!(
                "HTTP/1.1 505 HTTP Version Not Supported\r\nx-origin: {name}\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            return;
        }
        if n >= PREFACE.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let conn = h2::server::Builder::new()
        .max_concurrent_streams(1000)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(sock)
        .await;
    let Ok(mut conn) = conn else { return };
    while let Some(accepted) = conn.accept().await {
        let Ok((req, respond)) = accepted else { return };
        tokio::spawn(handle(req, respond, id, state.clone(), name.clone()));
    }
}

async fn handle(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    conn: usize,
    state: Arc<State>,
    name: String,
) {
    let (parts, mut body) = req.into_parts();
    let mut rec = H2Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        scheme: parts.uri.scheme_str().map(str::to_string),
        version: "HTTP/2.0".to_string(),
        headers: header_pairs(&parts.headers),
        body_len: 0,
        body_sum: 0,
        trailers: Vec::new(),
        conn,
    };
    let mut sum = Fnv64::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        sum.update(&chunk);
        rec.body_len += chunk.len() as u64;
    }
    rec.body_sum = sum.value();
    match body.trailers().await {
        Ok(Some(t)) => rec.trailers = header_pairs(&t),
        Ok(None) => {}
        Err(_) => return,
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    state.log.lock().expect("h2 origin log").push(rec.clone());

    let path = rec.path.split('?').next().unwrap_or("").to_string();
    let mut segs = path.trim_start_matches('/').split('/');
    let first = segs.next().unwrap_or("");
    let arg = segs.next().unwrap_or("");
    let head = |status: u16, ctype: &str| {
        http::Response::builder()
            .status(status)
            .header("x-origin", name.as_str())
            .header("content-type", ctype)
            .body(())
            .expect("response head")
    };
    let echo = || Bytes::from(serde_json::to_vec(&rec.to_json(&name)).expect("echo json"));
    let done = match first {
        "status" => {
            let code: u16 = arg.parse().unwrap_or(200);
            let Ok(mut s) = respond.send_response(head(code, "text/plain"), false) else {
                return;
            };
            send_all(&mut s, Bytes::from(format!("status {code}\n")), true)
                .await
                .is_ok()
        }
        "bytes" => {
            let n: u64 = arg.parse().unwrap_or(0);
            let mut h = head(200, "application/octet-stream");
            if !rec.path.contains("no-length") {
                h.headers_mut()
                    .insert("content-length", n.to_string().parse().expect("length"));
            }
            let Ok(mut s) = respond.send_response(h, n == 0) else {
                return;
            };
            let mut p = Pattern::new(n);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let k = p.fill(&mut buf);
                if k == 0 {
                    break true;
                }
                let last = p.remaining() == 0;
                if send_all(&mut s, Bytes::copy_from_slice(&buf[..k]), last)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        "trailers" => {
            let Ok(mut s) = respond.send_response(head(200, "text/plain"), false) else {
                return;
            };
            if send_all(&mut s, Bytes::from_static(b"hello trailers"), false)
                .await
                .is_err()
            {
                return;
            }
            let mut t = http::HeaderMap::new();
            t.insert("x-checksum", http::HeaderValue::from_static("42"));
            s.send_trailers(t).is_ok()
        }
        _ => {
            if first == "delay" {
                let ms: u64 = arg.parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let Ok(mut s) = respond.send_response(head(200, "application/json"), false) else {
                return;
            };
            send_all(&mut s, echo(), true).await.is_ok()
        }
    };
    if done {
        state.answered.fetch_add(1, Ordering::SeqCst);
    }
}

fn header_pairs(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Sends `data` within the peer's flow-control window, as the window opens.
async fn send_all(
    s: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return s.send_data(data, end);
    }
    while !data.is_empty() {
        s.reserve_capacity(data.len());
        let cap = match poll_fn(|cx| s.poll_capacity(cx)).await {
            Some(c) => c?,
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if cap == 0 {
            continue;
        }
        let piece = data.split_to(cap.min(data.len()));
        s.send_data(piece, end && data.is_empty())?;
    }
    Ok(())
}

// ---- client ----

/// One request for [`H2Client`].
#[derive(Clone, Debug)]
pub struct H2Request {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl H2Request {
    pub fn new(method: &str, authority: &str, path: &str) -> H2Request {
        H2Request {
            method: method.to_string(),
            path: path.to_string(),
            authority: authority.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
        }
    }
    pub fn get(authority: &str, path: &str) -> H2Request {
        H2Request::new("GET", authority, path)
    }
    pub fn header(mut self, name: &str, value: &str) -> H2Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> H2Request {
        self.body = body.into();
        self
    }
    pub fn trailer(mut self, name: &str, value: &str) -> H2Request {
        self.trailers.push((name.to_string(), value.to_string()));
        self
    }
    /// A gRPC call: `POST /SERVICE/METHOD`, `content-type:
    /// application/grpc`, `te: trailers`, `message` in one gRPC frame.
    pub fn grpc(authority: &str, method_path: &str, message: &[u8]) -> H2Request {
        H2Request::new("POST", authority, method_path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(grpc_frame(message))
    }
}

/// What came back for one request.
#[derive(Clone, Debug)]
pub struct H2Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// From sending the request to the end of the response.
    pub took: Duration,
}

impl H2Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
    pub fn trailer(&self, name: &str) -> Option<&str> {
        find(&self.trailers, name)
    }
    /// A header, else a trailer of that name (gRPC puts its status in the
    /// headers of a trailers-only response, in the trailers otherwise).
    pub fn header_or_trailer(&self, name: &str) -> Option<&str> {
        self.header(name).or_else(|| self.trailer(name))
    }
    /// `grpc-status`, from the headers or the trailers.
    pub fn grpc_status(&self) -> Option<u32> {
        self.header_or_trailer("grpc-status")
            .and_then(|v| v.trim().parse().ok())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body_str()))
    }
}

fn find<'a>(v: &'a [(String, String)], name: &str) -> Option<&'a str> {
    v.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One gRPC length-prefixed message (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + message.len());
    v.push(0);
    v.extend_from_slice(&(message.len() as u32).to_be_bytes());
    v.extend_from_slice(message);
    v
}

/// One h2c connection (prior knowledge) with a runtime of its own.
pub struct H2Client {
    rt: tokio::runtime::Runtime,
    send: h2::client::SendRequest<Bytes>,
}

impl H2Client {
    /// Connects and completes the HTTP/2 handshake (preface and SETTINGS),
    /// with a 1 MiB stream window and an 8 MiB connection window.
    pub fn connect(addr: SocketAddr) -> Result<H2Client, String> {
        H2Client::connect_with_windows(addr, 1 << 20, 8 << 20)
    }

    /// Connects with the given flow-control windows (what this client lets
    /// the peer send before it reads).
    pub fn connect_with_windows(
        addr: SocketAddr,
        stream_window: u32,
        connection_window: u32,
    ) -> Result<H2Client, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let send = rt.block_on(async {
            let tcp = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .map_err(|_| format!("connect to {addr}: timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let (send, conn) = h2::client::Builder::new()
                .initial_window_size(stream_window)
                .initial_connection_window_size(connection_window)
                .handshake::<_, Bytes>(tcp)
                .await
                .map_err(|e| format!("h2 handshake with {addr}: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, String>(send)
        })?;
        Ok(H2Client { rt, send })
    }

    /// Whether the server's SETTINGS enable extended CONNECT (RFC 8441,
    /// WebSocket over h2); known once its SETTINGS arrived (after a
    /// response).
    pub fn extended_connect_enabled(&self) -> bool {
        self.send.is_extended_connect_protocol_enabled()
    }

    /// Sends one request and reads the whole response, within `timeout`.
    pub fn request(&self, req: H2Request, timeout: Duration) -> Result<H2Response, String> {
        let send = self.send.clone();
        self.rt.block_on(async move {
            tokio::time::timeout(timeout, exchange(send, req))
                .await
                .map_err(|_| format!("no complete response within {timeout:?}"))?
        })
    }

    /// Sends every request at once, as concurrent streams of this
    /// connection; the results in the same order.
    pub fn concurrent(
        &self,
        reqs: Vec<H2Request>,
        timeout: Duration,
    ) -> Vec<Result<H2Response, String>> {
        let send = self.send.clone();
        self.rt.block_on(async move {
            let tasks: Vec<_> = reqs
                .into_iter()
                .map(|r| {
                    let s = send.clone();
                    tokio::spawn(async move {
                        tokio::time::timeout(timeout, exchange(s, r))
                            .await
                            .map_err(|_| format!("no complete response within {timeout:?}"))?
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
            }
            out
        })
    }
}

async fn exchange(
    send: h2::client::SendRequest<Bytes>,
    req: H2Request,
) -> Result<H2Response, String> {
    let started = Instant::now();
    let mut send = send.ready().await.map_err(|e| format!("ready: {e}"))?;
    // CONNECT has only :authority (RFC 9113 8.5).
    let uri = if req.method.eq_ignore_ascii_case("CONNECT") {
        req.authority.clone()
    } else {
        format!("http://{}{}", req.authority, req.path)
    };
    let mut b = http::Request::builder()
        .method(req.method.as_str())
        .uri(uri);
    for (n, v) in &req.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    let head = b.body(()).map_err(|e| format!("request: {e}"))?;
    let end_now = req.body.is_empty() && req.trailers.is_empty();
    let (response, mut stream) = send
        .send_request(head, end_now)
        .map_err(|e| format!("send request: {e}"))?;
    if !end_now {
        let data = Bytes::from(req.body);
        let end_with_data = req.trailers.is_empty();
        send_all(&mut stream, data, end_with_data)
            .await
            .map_err(|e| format!("send body: {e}"))?;
        if !req.trailers.is_empty() {
            let mut t = http::HeaderMap::new();
            for (n, v) in &req.trailers {
                t.append(
                    http::HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string())?,
                    http::HeaderValue::from_str(v).map_err(|e| e.to_string())?,
                );
            }
            stream
                .send_trailers(t)
                .map_err(|e| format!("send trailers: {e}"))?;
        }
    }
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("response body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = match body.trailers().await {
        Ok(Some(t)) => header_pairs(&t),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("response trailers: {e}")),
    };
    Ok(H2Response {
        status: parts.status.as_u16(),
        headers: header_pairs(&parts.headers),
        body: data,
        trailers,
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_h2_origin_echoes_what_an_h2_client_sends() {
        let o = H2Origin::start("h2o");
        let c = H2Client::connect(o.addr()).expect("connect");
        let r = c
            .request(
                H2Request::new("POST", "api", "/a/b?c=1")
                    .header("x-test", "1")
                    .body(vec![7u8; 100_000])
                    .trailer("x-sum", "9"),
                Duration::from_secs(10),
            )
            .expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-origin"), Some("h2o"));
        let j = r.json();
        assert_eq!(j["path"], "/a/b?c=1");
        assert_eq!(j["authority"], "api");
        assert_eq!(j["body_len"], 100_000);
        assert_eq!(j["trailers"][0][0], "x-sum");
        let r = c
            .request(H2Request::get("api", "/trailers"), Duration::from_secs(10))
            .unwrap();
        assert_eq!(r.body_str(), "hello trailers");
        assert_eq!(r.trailer("x-checksum"), Some("42"));
        let r = c
            .request(
                H2Request::get("api", "/bytes/3000000"),
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(r.body.len(), 3_000_000);
        let mut h = Fnv64::new();
        h.update(&r.body);
        assert_eq!(h.value(), crate::util::pattern_checksum(3_000_000));
        let rs = c.concurrent(
            (0..50)
                .map(|i| H2Request::get("api", &format!("/delay/50/{i}")))
                .collect(),
            Duration::from_secs(10),
        );
        assert!(rs.iter().all(|r| r.as_ref().is_ok_and(|r| r.status == 200)));
        assert_eq!(o.connections(), 1);
        assert_eq!(o.requests(), 53);
        let r = c
            .request(
                H2Request::get("api", "/status/418"),
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(r.status, 418);

        // HTTP/1.1 gets 505, and the origin says what it got.
        let mut c1 = crate::Client::connect(o.addr());
        let r = c1.get("api", "/h1");
        assert_eq!(r.status, 505);
        assert_eq!(o.not_h2(), vec!["GET /h1 HTTP/1.1".to_string()]);
    }
}
