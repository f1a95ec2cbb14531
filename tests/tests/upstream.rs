//! Upstream failures become clear local responses, quickly and with a bound:
//! refused (502), reset (502), too slow (504), unanswered connect (504).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use coremesh_e2e::util::wait_for;
use coremesh_e2e::{unused_port, Origin, ProxyBuilder};

#[test]
fn down_upstream_is_502_well_within_the_connect_timeout() {
    let down = unused_port();
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[down])
        .timeout("connect", "5s")
        .start();
    let t = Instant::now();
    let r = proxy.outbound_client().get("api", "/");
    let took = t.elapsed();
    assert_eq!(r.status, 502, "{:?}", r.body_str());
    assert!(r.header("coremesh-error").is_some(), "{:?}", r.headers);
    assert!(
        took < Duration::from_millis(2500),
        "a refused connect should fail fast, not wait for the 5 s connect timeout; took {took:?}"
    );
}

/// A listener whose accept queue is full and never drained: the kernel
/// drops further SYNs, so a connect to it neither succeeds nor fails until
/// the connector gives up. Keep the value alive for as long as that is needed.
struct Unanswered {
    listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl Unanswered {
    fn start() -> Unanswered {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // Backlog 0: Linux then queues one connection (backlog + 1).
        // SAFETY: listen(2) on a socket this function owns.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        // Fill the queue; once it is full, connects stop completing.
        while queued.len() < 8 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => queued.push(s),
                Err(_) => break,
            }
        }
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "the full accept queue still answers connects"
        );
        Unanswered {
            listener,
            _queued: queued,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }
}

#[test]
fn an_unanswered_connect_is_504_at_the_connect_timeout() {
    let blackhole = Unanswered::start();
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[blackhole.addr()])
        .timeout("connect", "500ms")
        .timeout("request", "30s")
        .start();
    let t = Instant::now();
    let r = proxy.outbound_client().get("api", "/");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{:?}", r.body_str());
    assert_eq!(r.header("coremesh-error"), Some("upstream connect timeout"));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "timeouts.connect = 500ms, answered after {took:?}"
    );
    // The proxy keeps serving: the next request gets the same answer.
    let r = proxy.outbound_client().get("api", "/again");
    assert_eq!(r.status, 504, "{:?}", r.body_str());
}

/// An upstream that answers 413 as soon as it has the request head, then
/// closes without reading the body (so its kernel resets the connection).
fn early_413_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large",
            );
            // Dropped with the body unread: the peer gets a reset.
        }
    });
    addr
}

#[test]
fn an_early_response_to_an_upload_reaches_the_client() {
    let upstream = early_413_upstream();
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[upstream])
        .start();
    const BODY: usize = 64 << 20;
    let mut c = TcpStream::connect(proxy.outbound()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        format!("POST /upload HTTP/1.1\r\nhost: api\r\ncontent-length: {BODY}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    // The upload goes on in the background until the proxy stops taking it.
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < BODY && w.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let mut resp = Vec::new();
    let _ = c.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.starts_with("HTTP/1.1 413"),
        "the client gets the upstream's answer, not a 502: {resp:?}"
    );
    assert!(resp.ends_with("too large"), "{resp:?}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp:?}"
    );
    // The proxy half-closed after the answer and drains what the client
    // still sends (lingering close), so the upload's writes never fail with
    // a reset while the client is still sending.
    let sent = writer.join().unwrap();
    assert_eq!(sent, BODY, "the rest of the upload was drained, not reset");
    // The proxy keeps serving (this upstream answers everything so).
    let r = proxy.outbound_client().get("api", "/again");
    assert_eq!(r.status, 413, "{:?}", r.body_str());
}

#[test]
fn upstream_closing_without_a_response_is_502() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();
    let mut c = proxy.outbound_client();
    let r = c.get("api", "/reset");
    assert_eq!(r.status, 502, "{:?}", r.body_str());
    assert!(r.header("coremesh-error").is_some());
    // The client connection survives an upstream failure.
    let r = proxy.outbound_client().get("api", "/fine");
    assert_eq!(r.status, 200);
}

#[test]
fn slow_upstream_response_is_504_at_the_request_timeout() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .timeout("request", "1s")
        .start();
    let t = Instant::now();
    let r = proxy.outbound_client().get("api", "/delay/6000");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{:?}", r.body_str());
    assert!(r.header("coremesh-error").is_some());
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "timeouts.request = 1s, answered after {took:?}"
    );
    // A fast request on the same service still works.
    assert_eq!(proxy.outbound_client().get("api", "/fast").status, 200);
}

#[test]
fn one_down_endpoint_does_not_stop_the_service() {
    let up = Origin::start("up");
    let down = unused_port();
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[up.addr(), down])
        .start();
    let mut ok = 0;
    for _ in 0..6 {
        let r = proxy.outbound_client().get("api", "/");
        assert!(r.status == 200 || r.status == 502, "got {}", r.status);
        if r.status == 200 {
            ok += 1;
        }
    }
    assert!(ok >= 3, "the healthy endpoint served {ok} of 6 requests");
}

/// An upstream that answers one request per connection with a keep-alive
/// response, then closes the connection shortly after, without saying so
/// (as servers with a short keep-alive timeout do). Counts requests.
fn closing_origin() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let n = served.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let n = n.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                n.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                std::thread::sleep(Duration::from_millis(50));
                // Closed without `Connection: close`.
            });
        }
    });
    (addr, served)
}

#[test]
fn a_pooled_connection_the_upstream_closed_is_not_a_failure() {
    let (api, served) = closing_origin();
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api])
        .start();
    let mut c = proxy.outbound_client();
    for i in 0..3 {
        let r = c.get("api", &format!("/get/{i}"));
        assert_eq!(
            r.status,
            200,
            "GET {i}: {:?} {}",
            r.headers,
            proxy.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // A POST (not idempotent, never replayed) checks the pooled connection
    // before using it instead.
    let r = c.request(
        &coremesh_e2e::Request::post("/post")
            .host("api")
            .body(&b"hello"[..]),
    );
    assert_eq!(r.status, 200, "{:?} {}", r.headers, proxy.log_tail(20));
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[test]
fn passthrough_to_the_proxy_itself_is_refused() {
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .passthrough(true)
        .start();
    let me = proxy.outbound();
    let mut c = proxy.outbound_client();
    let r =
        c.request(&coremesh_e2e::Request::get(&format!("http://{me}/loop")).host(&me.to_string()));
    assert_eq!(r.status, 508, "{:?}", r.headers);
    assert!(r.header("coremesh-error").is_some());
}

#[test]
fn the_total_timeout_bounds_a_whole_exchange() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .timeout("request", "30s")
        .timeout("total", "1s")
        .start();
    let t = Instant::now();
    let r = proxy.outbound_client().get("api", "/delay/5000");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{:?}", r.body_str());
    assert_eq!(r.header("coremesh-error"), Some("request total timeout"));
    assert!(
        took < Duration::from_secs(4),
        "timeouts.total = 1s, answered after {took:?}"
    );
    // Counted under the service it was routed to, not as "unknown".
    let api_5xx = [
        ("direction", "outbound"),
        ("service", "api"),
        ("class", "5xx"),
    ];
    let m = wait_for(Duration::from_secs(5), || {
        let m = proxy.metrics();
        (m.sum("coremesh_requests_total", &api_5xx) >= 1.0).then_some(m)
    })
    .unwrap_or_else(|| proxy.metrics());
    assert_eq!(
        m.sum("coremesh_requests_total", &api_5xx),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("coremesh_requests_total", &[("service", "unknown")]),
        0.0,
        "{}",
        m.text
    );
}

#[test]
fn a_refused_endpoint_warns_once_per_interval_and_every_502_is_explained_at_debug() {
    let down = unused_port();
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[down])
        .env("RUST_LOG", "info,coremesh_proxy=debug")
        .start();
    for _ in 0..20 {
        let r = proxy.outbound_client().get("api", "/");
        assert_eq!(r.status, 502, "{:?}", r.body_str());
    }
    let explained = wait_for(Duration::from_secs(5), || {
        let n = proxy
            .log_lines()
            .iter()
            .filter(|l| {
                l.contains("DEBUG")
                    && l.contains("upstream fault answered locally")
                    && l.contains("service=api")
                    && l.contains("status=502")
            })
            .count();
        (n >= 20).then_some(n)
    });
    assert!(
        explained.is_some(),
        "every 502 gets a debug line with the service and the reason:\n{}",
        proxy.log_tail(30)
    );
    let warnings: Vec<String> = proxy
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("upstream connect failed"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning per 5 s for 20 refused connects:\n{}",
        warnings.join("\n")
    );
    assert!(
        warnings[0].contains("service=api") && warnings[0].contains(&down.to_string()),
        "{}",
        warnings[0]
    );
}

#[test]
fn a_refused_endpoint_is_left_out_at_once_by_the_shard_that_saw_it() {
    let api = Origin::start("api");
    let down = unused_port();
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[down, api.addr()])
        // Round-robin would send every other request to the refusing one.
        .extra("[[resilience]]\nservice = \"api\"\nloadBalancer = \"round-robin\"\n")
        .env("RUST_LOG", "info,coremesh_proxy=debug")
        .start();
    let started = Instant::now();
    let mut client = proxy.outbound_client();
    for i in 0..50 {
        let r = client.get("api", "/");
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body_str());
    }
    let took = started.elapsed();
    let refused_lines = || -> Vec<String> {
        proxy
            .log_lines()
            .into_iter()
            .filter(|l| l.contains("DEBUG") && l.contains("upstream connect failed"))
            .filter(|l| l.contains(&down.to_string()))
            .collect()
    };
    // The log is read by a thread: wait for the first line to arrive.
    wait_for(Duration::from_secs(5), || {
        (!refused_lines().is_empty()).then_some(())
    });
    let refused = refused_lines();
    // The first refusal keeps the endpoint out for 1 s, then 2 s, 4 s: one
    // refused connect per backoff, not one per request.
    let most = if took < Duration::from_secs(1) { 1 } else { 3 };
    assert!(
        (1..=most).contains(&refused.len()),
        "50 requests in {took:?} tried the refusing endpoint {} times:\n{}",
        refused.len(),
        refused.join("\n")
    );
    assert!(
        proxy
            .log_lines()
            .iter()
            .any(|l| l.contains("endpoint down on this shard") && l.contains(&down.to_string())),
        "{}",
        proxy.log_tail(20)
    );
}
