//! HTTP/1.1 semantics through the proxy (RFC 9110/9112): pipelining,
//! 100-continue, upgrades, bodiless responses, HTTP/1.0, close-delimited
//! responses and hop-by-hop headers.

use std::io::Write;
use std::time::Duration;

use coremesh_e2e::{Curl, Origin, Proxy, ProxyBuilder, Request, TempDir};

fn proxy_for(api: &Origin) -> Proxy {
    ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start()
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut c = proxy.outbound_client();
    // Three requests in one write; the second one is slow at the origin, so an
    // out-of-order proxy would answer /p3 before /p2.
    let mut bytes = Request::get("/p1").host("api").to_bytes();
    bytes.extend(Request::get("/delay/300/p2").host("api").to_bytes());
    bytes.extend(Request::post("/p3").host("api").body("third").to_bytes());
    c.send(&bytes);
    let targets: Vec<String> = (0..3)
        .map(|_| {
            c.read_response().json()["target"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(targets, ["/p1", "/delay/300/p2", "/p3"]);
    assert_eq!(api.last().body, b"third");
}

#[test]
fn expect_100_continue_with_curl() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let dir = TempDir::new("expect");
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let file = dir.write("body.bin", &body);
    let out = Curl::new(&format!("http://{}/upload", proxy.outbound()))
        .args(&[
            "-H",
            "Host: api",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "15",
            "--data-binary",
        ])
        .arg(&format!("@{}", file.display()))
        .run();
    assert_eq!(out.response.status, 200);
    assert!(
        out.interim.iter().any(|r| r.status == 100),
        "curl should see 100 Continue before sending its body (saw {:?})",
        out.interim
    );
    let echo = out.response.json();
    assert_eq!(echo["body_len"], 200_000);
    let mut sum = coremesh_e2e::Fnv64::new();
    sum.update(&body);
    assert_eq!(echo["body_sum"], sum.value());
}

#[test]
fn expect_100_continue_raw_client_waits_for_interim() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut c = proxy.outbound_client();
    c.send(
        b"POST /wait HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    c.set_read_timeout(Duration::from_secs(10));
    let interim = c
        .read_any_response()
        .expect("a 100 Continue before the body is sent");
    assert_eq!(interim.status, 100);
    c.send(b"hello");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(api.last().body, b"hello");
}

#[test]
fn websocket_upgrade_becomes_a_tunnel() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut c = proxy.outbound_client();
    c.send(
        b"GET /chat HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let r = c.read_response_to(true);
    assert_eq!(r.status, 101, "{:?}", r.headers);
    assert!(
        r.header_has_token("upgrade", "websocket"),
        "{:?}",
        r.headers
    );
    let got = api.last();
    assert!(
        got.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "the upgrade request reaches the upstream with its Upgrade header: {:?}",
        got.headers
    );

    // Frames are opaque bytes to the proxy; the origin echoes them back.
    let mut echoed = c.take_buffered();
    for msg in [
        &b"\x81\x05hello"[..],
        &b"\x81\x0atunnel two"[..],
        &[0u8; 3000][..],
    ] {
        c.stream().write_all(msg).expect("write through tunnel");
        let mut buf = vec![0u8; msg.len()];
        let have = echoed.len().min(msg.len());
        buf[..have].copy_from_slice(&echoed[..have]);
        echoed.drain(..have);
        std::io::Read::read_exact(c.stream(), &mut buf[have..]).expect("echo through tunnel");
        assert_eq!(&buf[..], msg);
    }
    c.shutdown_write();
    assert!(
        c.closed_within(Duration::from_secs(10)),
        "the tunnel closes after both sides do"
    );
}

#[test]
fn head_204_304_carry_no_body() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut c = proxy.outbound_client();

    let r = c.request(&Request::new("HEAD", "/bytes/1000").host("api"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some("1000"),
        "HEAD keeps the GET's length"
    );

    let r = c.get("api", "/status/204");
    assert_eq!(r.status, 204);
    let r = c.get("api", "/status/304");
    assert_eq!(r.status, 304);
    let r = c.request(&Request::new("HEAD", "/chunked").host("api"));
    assert_eq!(r.status, 200);

    // Any stray body byte from the responses above would corrupt this one.
    let r = c.get("api", "/after");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["target"], "/after");
    c.set_read_timeout(Duration::from_millis(300));
    let mut probe = [0u8; 1];
    let extra = std::io::Read::read(c.stream(), &mut probe);
    assert!(
        matches!(&extra, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "no bytes beyond the last response: {extra:?}"
    );
}

#[test]
fn http1_0_client_gets_a_delimited_response_and_a_close() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);

    let mut c = proxy.outbound_client();
    c.send(b"GET /old HTTP/1.0\r\nHost: api\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["target"], "/old");
    assert!(
        c.closed_within(Duration::from_secs(10)),
        "an HTTP/1.0 request without keep-alive ends with a close"
    );

    // A chunked upstream response must not reach an HTTP/1.0 client chunked.
    let mut c = proxy.outbound_client();
    c.send(b"GET /chunked HTTP/1.0\r\nHost: api\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(
        !r.header_has_token("transfer-encoding", "chunked"),
        "no chunked framing to an HTTP/1.0 client: {:?}",
        r.headers
    );
    assert_eq!(r.body_str(), "hello chunked world");
}

#[test]
fn close_delimited_response_is_relayed_whole() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut c = proxy.outbound_client();
    let r = c.get("api", "/close");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "this body ends when the connection closes\n");
    // Whatever framing the proxy chose, the next request works (on this
    // connection if it stayed open, else on a new one).
    let r = if r.close_delimited {
        proxy.outbound_client().get("api", "/next")
    } else {
        c.get("api", "/next")
    };
    assert_eq!(r.status, 200);
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut c = proxy.outbound_client();
    let r = c.request(
        &Request::get("/hop")
            .host("api")
            .header("Connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .header("Keep-Alive", "timeout=5")
            .header("TE", "trailers")
            .header("Proxy-Connection", "keep-alive")
            .header("x-end-to-end", "kept"),
    );
    assert_eq!(r.status, 200);
    let got = api.last();
    for h in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(
            got.header(h).is_none(),
            "{h} is hop-by-hop (RFC 9110 7.6.1) but reached the upstream: {:?}",
            got.headers
        );
    }
    assert!(
        got.header("te")
            .is_none_or(|v| v.trim().eq_ignore_ascii_case("trailers")),
        // RFC 9110 7.6.1: a proxy may pass `TE: trailers` on when it relays trailers.
        "TE other than `trailers` must not be forwarded: {:?}",
        got.headers
    );
    assert_eq!(got.header("x-end-to-end"), Some("kept"));
}
