//! The multiplexed mesh hop (`[upstream] multiplex = true`):
//! HTTP/1.1 requests between two proxies ride shared h2 connections over
//! mutual TLS, and come out as HTTP/1.1 on the far side.
//!
//! ```text
//!  clients ──HTTP/1.1──▶ web proxy ══h2 over mTLS══▶ api proxy ──HTTP/1.1──▶ origin
//! ```

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coremesh_e2e::pki::Pki;
use coremesh_e2e::util::TempDir;
use coremesh_e2e::{Client, Origin, Proxy, ProxyBuilder, Request};

/// web (outbound, `api` at the api proxy) and api (inbound to `app`),
/// static mutual TLS.
fn pair(dir: &TempDir, app: SocketAddr) -> (Proxy, Proxy) {
    let pki = Pki::new("mesh");
    let files = pki.files(dir.path(), "api", "api");
    let api = ProxyBuilder::new("api")
        .inbound(app)
        .extra(&files.toml())
        .start();
    let files = pki.files(dir.path(), "web", "web");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.inbound()])
        .upstream("multiplex", "true")
        .extra(&files.toml())
        .start();
    (web, api)
}

fn h2_connections(p: &Proxy, dir: &str) -> f64 {
    p.metrics()
        .sum("coremesh_h2_connections_total", &[("direction", dir)])
}

#[test]
fn http1_requests_from_many_clients_share_one_h2_connection() {
    let dir = TempDir::new("mux-share");
    let app = Origin::start("api");
    let (web, api) = pair(&dir, app.addr());
    let addr = web.outbound();
    std::thread::scope(|s| {
        for t in 0..8 {
            s.spawn(move || {
                for i in 0..25 {
                    // Half on keep-alive connections, half on new ones.
                    let mut c = Client::connect(addr);
                    let r = c.request(&Request::get(&format!("/t{t}/r{i}")).host("api"));
                    assert_eq!(r.status, 200, "{:?}", r.header("coremesh-error"));
                    let r = c.request(&Request::get("/again").host("api"));
                    assert_eq!(r.status, 200);
                }
            });
        }
    });
    assert_eq!(app.requests(), 400);
    assert_eq!(
        h2_connections(&api, "inbound"),
        1.0,
        "400 requests from 200 client connections rode one h2 connection"
    );
    for got in app.received() {
        assert_eq!(got.version, "HTTP/1.1", "{got:?}");
        assert_eq!(
            got.header("coremesh-http1"),
            None,
            "the marker stays between proxies"
        );
    }
}

#[test]
fn http1_semantics_survive_the_hop() {
    let dir = TempDir::new("mux-semantics");
    let app = Origin::start("api");
    let (web, _api) = pair(&dir, app.addr());
    let mut c = web.outbound_client();

    // A Content-Length body.
    let r = c.request(
        &Request::post("/upload")
            .host("api")
            .body(vec![b'x'; 70_000]),
    );
    assert_eq!(r.status, 200);
    let got = app.last();
    assert_eq!(got.body_len, 70_000);
    assert_eq!(got.header("content-length"), Some("70000"));

    // A chunked body whose trailer the request announces.
    let r = c.request(
        &Request::post("/chunked-up")
            .host("api")
            .header("Transfer-Encoding", "chunked")
            .header("Trailer", "x-sum")
            .body("5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    let got = app.last();
    assert_eq!(got.body, b"hello world");
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));
    assert_eq!(got.trailers, vec![("x-sum".to_string(), "11".to_string())]);

    // The app's chunked answer and its trailer; a close-delimited one goes
    // chunked to an HTTP/1.1 client and the connection stays.
    let r = c.get("api", "/chunked");
    assert_eq!(r.body_str(), "hello chunked world");
    assert_eq!(r.trailer("x-checksum"), Some("42"));
    let r = c.get("api", "/close");
    assert_eq!(r.status, 200);
    assert!(r
        .body_str()
        .contains("this body ends when the connection closes"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));

    // HEAD and 204: no body; Expect: 100-continue.
    let r = c.request(&Request::new("HEAD", "/bytes/10").host("api"));
    assert_eq!((r.status, r.header("content-length")), (200, Some("10")));
    let r = c.get("api", "/status/204");
    assert_eq!(r.status, 204);
    let r = c.request(
        &Request::post("/expect")
            .host("api")
            .header("Expect", "100-continue")
            .body("abc"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(app.last().body, b"abc");

    // `Connection: close` from the client: answered, then closed.
    let r = c.request(
        &Request::get("/last")
            .host("api")
            .header("Connection", "close"),
    );
    assert_eq!(r.status, 200);
    assert!(c.closed_within(Duration::from_secs(2)));

    // HTTP/1.0 with keep-alive: a length-framed answer that says so.
    let mut c = web.outbound_client();
    let r = c.request(
        &Request::get("/ten")
            .host("api")
            .version("HTTP/1.0")
            .header("Connection", "keep-alive"),
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header_has_token("connection", "keep-alive"),
        "{:?}",
        r.headers
    );
    assert!(r.header("content-length").is_some());
    let r = c.request(&Request::get("/ten-again").host("api").version("HTTP/1.0"));
    assert_eq!(r.status, 200);
    // HTTP/1.0 without keep-alive: the connection closes after the answer.
    assert!(c.closed_within(Duration::from_secs(2)));

    // HTTP/1.0 and a close-delimited answer: delimited by the close.
    let mut c = web.outbound_client();
    c.send(b"GET /close HTTP/1.0\r\nHost: api\r\n\r\n");
    let raw = c
        .read_until_close(Duration::from_secs(5))
        .expect("the answer, then the close");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    assert!(
        text.contains("this body ends when the connection closes"),
        "{text}"
    );
}

/// An older proxy: mutual TLS with api's certificate, HTTP/1.1 only.
struct OldPeer {
    child: Child,
    addr: SocketAddr,
}

impl OldPeer {
    fn start(pki: &Pki, dir: &TempDir) -> OldPeer {
        let files = pki.files(dir.path(), "old-api", "api");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/old_peer.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([&files.cert, &files.key, &files.ca])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("the old peer's port");
        let port: u16 = line.trim().parse().expect("a port");
        OldPeer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for OldPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_peer_that_does_not_multiplex_gets_http1() {
    let dir = TempDir::new("mux-old-peer");
    let pki = Pki::new("mesh");
    let old = OldPeer::start(&pki, &dir);
    let files = pki.files(dir.path(), "web", "web");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[old.addr])
        .upstream("multiplex", "true")
        .extra(&files.toml())
        .start();
    let mut c = web.outbound_client();
    for i in 0..5 {
        let r = c.request(&Request::post(&format!("/r{i}")).host("api").body("x"));
        assert_eq!(
            r.status,
            200,
            "{:?} {}",
            r.header("coremesh-error"),
            r.body_str()
        );
        assert_eq!(r.header("x-old-peer"), Some("1"));
        assert_eq!(r.body_str(), "old peer, alpn http/1.1");
    }
    assert_eq!(h2_connections(&web, "outbound"), 0.0);
}

#[test]
fn a_stalled_reader_does_not_stall_the_other_requests_on_the_connection() {
    let dir = TempDir::new("mux-stall");
    let app = Origin::start("api");
    let (web, api) = pair(&dir, app.addr());
    // 16 MiB that nobody reads for a while: its stream holds what its
    // window allows, the shared connection goes on.
    let size: u64 = 16 * 1024 * 1024;
    let mut stalled = web.outbound_client();
    stalled.send(
        &Request::get(&format!("/bytes/{size}"))
            .host("api")
            .to_bytes(),
    );
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..30 {
        let t = Instant::now();
        let mut c = web.outbound_client();
        let r = c.request(&Request::get(&format!("/quick/{i}")).host("api"));
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "request {i} waited {:?} behind the stalled one",
            t.elapsed()
        );
    }
    assert_eq!(
        h2_connections(&api, "inbound"),
        1.0,
        "one shared connection"
    );
    // The stalled reader gets every byte once it reads.
    stalled.set_read_timeout(Duration::from_secs(30));
    let mut n = 0u64;
    let r = stalled
        .read_response_streaming(&mut |b| n += b.len() as u64)
        .expect("the big answer");
    assert_eq!((r.status, n), (200, size));
    let _ = stalled.stream().read(&mut [0u8; 1]);
}
