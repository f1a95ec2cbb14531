//! Hostile input: ambiguous framing (RFC 9112 6.3, 11: request smuggling),
//! size limits and slow clients. Each gets the right status, the connection is
//! closed, the upstream never sees the request, and other clients are not
//! disturbed.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use coremesh_e2e::{Client, Origin, Proxy, ProxyBuilder, Request};

fn proxy_for(api: &Origin) -> Proxy {
    ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start()
}

/// Sends `raw` on a fresh connection and expects `status` with a
/// `coremesh-error` header, then the connection closed by the proxy.
fn expect_rejected(proxy: &Proxy, name: &str, raw: &[u8], status: u16, must_close: bool) {
    let mut c = proxy.outbound_client();
    // The proxy may answer and close before reading everything we send.
    let _ = c.try_send(raw);
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("{name}: expected a {status} response, got {e}"));
    assert_eq!(
        r.status,
        status,
        "{name}: {:?} {:?}",
        r.headers,
        r.body_str()
    );
    assert!(
        r.header("coremesh-error").is_some(),
        "{name}: a local error carries coremesh-error: {:?}",
        r.headers
    );
    if must_close {
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "{name}: the connection must be closed after a {status}"
        );
    }
}

/// Requests whose head alone is ambiguous or malformed: the proxy can (and
/// must) refuse them before a single byte goes upstream.
const HEAD_ATTACKS: &[(&str, &[u8])] = &[
    (
        "Content-Length with Transfer-Encoding",
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding with Content-Length",
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "two differing Content-Length headers",
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    (
        "a Content-Length list with differing values",
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5, 6\r\n\r\nhello!",
    ),
    (
        "a non-numeric Content-Length",
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: +5\r\n\r\nhello",
    ),
    (
        "Transfer-Encoding gzip (not chunked)",
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    ),
    (
        "Transfer-Encoding chunked, gzip (chunked not final)",
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ),
    (
        "two Transfer-Encoding headers ending in gzip",
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
    ),
    (
        "bare LF line endings",
        b"GET / HTTP/1.1\nHost: api\n\n",
    ),
    (
        "a bare LF inside the head",
        b"GET / HTTP/1.1\r\nHost: api\nX-A: b\r\n\r\n",
    ),
    (
        "a bare CR inside a header value",
        b"GET / HTTP/1.1\r\nHost: api\r\nX-A: b\rc\r\n\r\n",
    ),
    (
        "a bare CR as a line ending",
        b"GET / HTTP/1.1\rHost: api\r\n\r\n",
    ),
    (
        "obs-fold (line folding)",
        b"GET / HTTP/1.1\r\nHost: api\r\nX-A: b\r\n c\r\n\r\n",
    ),
    (
        "obs-fold of Transfer-Encoding",
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "whitespace before the colon",
        b"GET / HTTP/1.1\r\nHost: api\r\nX-A : b\r\n\r\n",
    ),
    (
        "whitespace before the colon of Transfer-Encoding",
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc",
    ),
    (
        "a garbage request line",
        b"THIS IS NOT HTTP\r\n\r\n",
    ),
    (
        "an HTTP/1.1 request without Host",
        b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    ),
    (
        "two Host headers",
        b"GET / HTTP/1.1\r\nHost: api\r\nHost: other\r\n\r\n",
    ),
];

#[test]
fn ambiguous_or_malformed_heads_get_400_and_never_reach_the_upstream() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    for (name, raw) in HEAD_ATTACKS {
        expect_rejected(&proxy, name, raw, 400, true);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        api.requests(),
        0,
        "the upstream saw a request: {:?}",
        api.received()
    );
    assert_eq!(
        api.bytes_received(),
        0,
        "the upstream received bytes of a rejected request"
    );

    // The shard is still serving.
    let r = proxy.outbound_client().get("api", "/still-alive");
    assert_eq!(r.status, 200);
}

/// Bad chunk framing sits in the body: the proxy may already have sent the
/// head upstream, but it must answer 400 and the upstream must never see a
/// complete request.
#[test]
fn bad_chunk_sizes_get_400_and_no_complete_request_upstream() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let cases: &[(&str, &[u8])] = &[
        (
            "chunk size zz",
            b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "negative chunk size",
            b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk size overflowing 64 bits",
            b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk data longer than its size",
            b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (name, raw) in cases {
        expect_rejected(&proxy, name, raw, 400, true);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        api.requests(),
        0,
        "the upstream got a complete request: {:?}",
        api.received()
    );
    assert_eq!(proxy.outbound_client().get("api", "/ok").status, 200);
}

#[test]
fn long_request_line_is_414_and_big_heads_are_431() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);

    // Defaults: max_request_line 8192, max_head_bytes 65536, max_headers 100.
    let long_path = format!("/{}", "a".repeat(9000));
    expect_rejected(
        &proxy,
        "9000-byte target",
        &Request::get(&long_path).host("api").to_bytes(),
        414,
        false,
    );

    let huge = Request::get("/")
        .host("api")
        .header("x-big", &"b".repeat(70 * 1024))
        .to_bytes();
    expect_rejected(&proxy, "70 KiB header", &huge, 431, false);

    let mut many = Request::get("/").host("api");
    for i in 0..120 {
        many = many.header(&format!("x-h{i}"), "v");
    }
    expect_rejected(&proxy, "121 headers", &many.to_bytes(), 431, false);

    // Just under the limits passes.
    let ok_path = format!("/{}", "a".repeat(7000));
    let r = proxy
        .outbound_client()
        .request(&Request::get(&ok_path).host("api"));
    assert_eq!(r.status, 200);
    assert_eq!(
        api.requests(),
        1,
        "only the request within limits reached the upstream"
    );
}

#[test]
fn configured_limits_apply() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .limit("max_request_line", 256)
        .limit("max_head_bytes", 4096)
        .limit("max_headers", 10)
        .start();
    let path = format!("/{}", "p".repeat(300));
    expect_rejected(
        &proxy,
        "300-byte target",
        &Request::get(&path).host("api").to_bytes(),
        414,
        false,
    );
    let big = Request::get("/")
        .host("api")
        .header("x-big", &"b".repeat(5000))
        .to_bytes();
    expect_rejected(&proxy, "5000-byte header", &big, 431, false);
    let mut many = Request::get("/").host("api");
    for i in 0..12 {
        many = many.header(&format!("x-h{i}"), "v");
    }
    expect_rejected(&proxy, "13 headers", &many.to_bytes(), 431, false);

    let mut fine = Request::get("/fine").host("api");
    for i in 0..5 {
        fine = fine.header(&format!("x-h{i}"), "v");
    }
    assert_eq!(proxy.outbound_client().request(&fine).status, 200);
    assert_eq!(api.requests(), 1);
}

#[test]
fn slowloris_is_cut_at_head_read_while_others_are_served() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .timeout("head_read", "1s")
        .start();

    let addr = proxy.outbound();
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        let head = b"GET /slow HTTP/1.1\r\nHost: api\r\nX-Drip: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let start = Instant::now();
        c.set_read_timeout(Duration::from_secs(1));
        for &b in head.iter() {
            if c.try_send(&[b]).is_err() {
                return (start.elapsed(), true);
            }
            // Wait about a second for the next byte, watching for the close.
            let mut buf = [0u8; 1024];
            match c.stream().read(&mut buf) {
                Ok(0) => return (start.elapsed(), true),
                Ok(_) => {
                    // e.g. a 408: the close follows.
                    let closed = c.closed_within(Duration::from_secs(5));
                    return (start.elapsed(), closed);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(_) => return (start.elapsed(), true),
            }
        }
        (start.elapsed(), false)
    });

    // Meanwhile another client is served promptly, several times.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        let t = Instant::now();
        let r = proxy
            .outbound_client()
            .get("api", &format!("/meanwhile/{i}"));
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a normal client waited {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let (elapsed, closed) = slow.join().expect("slow client thread");
    assert!(
        closed,
        "the slowloris connection was never closed (sent the whole head over {elapsed:?})"
    );
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(8),
        "with head_read = 1s the slow client should be cut after about a second, took {elapsed:?}"
    );
    assert!(
        api.received()
            .iter()
            .all(|r| !r.target.starts_with("/slow")),
        "the slow request must not reach the upstream"
    );
}

#[test]
fn idle_keep_alive_connection_is_closed_after_keepalive_idle() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .timeout("keepalive_idle", "1s")
        .start();
    let mut c = proxy.outbound_client();
    assert_eq!(c.get("api", "/once").status, 200);
    let t = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(8)),
        "idle client connection still open after 8 s"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "closed too early: {:?}",
        t.elapsed()
    );
}

#[test]
fn garbage_flood_does_not_take_the_shard_down() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    for i in 0..20 {
        let mut c = proxy.outbound_client();
        let mut junk: Vec<u8> = (0..4096u32)
            .map(|j| ((i * 31 + j * 7) % 256) as u8)
            .collect();
        // Terminated like a head, so the proxy has a complete (bad) one to refuse.
        junk.extend_from_slice(b"\r\n\r\n");
        let _ = c.stream().write_all(&junk);
        let _ = c.read_until_close(Duration::from_secs(3));
    }
    let r = proxy.outbound_client().get("api", "/survived");
    assert_eq!(r.status, 200);
}
