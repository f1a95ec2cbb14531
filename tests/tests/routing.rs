//! Outbound routing: the authority forms a client may use, the local error
//! responses, round-robin, and passthrough (absolute-form and CONNECT).

use std::io::Write;
use std::time::Duration;

use coremesh_e2e::{Client, Curl, Origin, ProxyBuilder, Request};

fn proxy_for(api: &Origin) -> coremesh_e2e::Proxy {
    ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start()
}

#[test]
fn host_header_forms_all_route_to_the_service() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut c = proxy.outbound_client();
    for host in ["api", "api.mesh", "api:80", "api.mesh:8080", "API"] {
        let r = c.get(host, "/form");
        assert_eq!(
            r.status,
            200,
            "Host: {host} -> {} {:?}",
            r.status,
            r.body_str()
        );
        assert_eq!(r.header("x-origin"), Some("api"), "Host: {host}");
    }
    assert_eq!(api.requests(), 5);
}

#[test]
fn curl_with_host_header() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let out = Curl::new(&format!("http://{}/via-curl", proxy.outbound()))
        .args(&["-H", "Host: api"])
        .run();
    assert_eq!(out.response.status, 200);
    assert_eq!(out.response.json()["target"], "/via-curl");
}

#[test]
fn http_proxy_absolute_form_with_curl() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let proxy_url = format!("http://{}", proxy.outbound());

    // As an app honouring http_proxy would send it.
    let out = Curl::new("http://api/x?q=1")
        .env("http_proxy", &proxy_url)
        .run();
    assert_eq!(out.response.status, 200, "stderr: {}", out.stderr);
    let echo = out.response.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(
        echo["target"], "/x?q=1",
        "the upstream gets origin-form, not the absolute URI"
    );

    // curl -x, and the .mesh suffix with a port.
    let out = Curl::new("http://api.mesh:8080/y")
        .args(&["-x", &proxy_url])
        .run();
    assert_eq!(out.response.status, 200);
    assert_eq!(out.response.json()["target"], "/y");
    assert_eq!(api.requests(), 2);
    assert!(
        api.received()
            .iter()
            .all(|r| r.header("proxy-connection").is_none()),
        "Proxy-Connection is hop-by-hop and must not reach the upstream"
    );
}

#[test]
fn absolute_form_wins_over_host_header() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut c = proxy.outbound_client();
    // RFC 9112 3.2.2: with an absolute-form target the Host header is ignored.
    let r = c.request(&Request::get("http://api/abs").host("nosuchservice"));
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    assert_eq!(r.json()["target"], "/abs");
}

#[test]
fn unknown_service_is_404_with_coremesh_error() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut c = proxy.outbound_client();
    let r = c.get("billing", "/");
    assert_eq!(r.status, 404, "{:?}", r.body_str());
    let reason = r
        .header("coremesh-error")
        .expect("coremesh-error header on a local error");
    assert!(
        reason.to_ascii_lowercase().contains("unknown service"),
        "coremesh-error should say unknown service, got {reason:?}"
    );
    assert!(!r.body.is_empty(), "a short text body explains the error");
    // The connection stays usable for a good request.
    let r = c.get("api", "/ok");
    assert_eq!(r.status, 200);
    assert_eq!(api.requests(), 1);
}

#[test]
fn service_without_endpoints_is_503() {
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service_raw("empty", &[])
        .start();
    let r = proxy.outbound_client().get("empty", "/");
    assert_eq!(r.status, 503, "{:?}", r.body_str());
    let reason = r.header("coremesh-error").expect("coremesh-error header");
    assert!(
        reason.to_ascii_lowercase().contains("no endpoints"),
        "coremesh-error should say no endpoints, got {reason:?}"
    );
}

#[test]
fn endpoints_are_used_round_robin() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    // Round-robin as a static [[resilience]] block (the default balancer is
    // P2C-EWMA, which favours the faster endpoint).
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[a.addr(), b.addr()])
        .extra("[[resilience]]\nservice = \"api\"\nloadBalancer = \"round-robin\"\n")
        .start();
    let mut c = proxy.outbound_client();
    for _ in 0..10 {
        assert_eq!(c.get("api", "/rr").status, 200);
    }
    assert_eq!(a.requests() + b.requests(), 10);
    assert!(
        (4..=6).contains(&a.requests()),
        "round-robin over two endpoints: a got {}, b got {}",
        a.requests(),
        b.requests()
    );
}

#[test]
fn non_mesh_host_is_refused_without_passthrough() {
    let other = Origin::start("other");
    let proxy = ProxyBuilder::new("web").outbound().start();
    let mut c = proxy.outbound_client();
    let r = c.request(&Request::get(&format!("http://{}/direct", other.addr())));
    assert!(r.status >= 400, "got {}", r.status);
    assert!(r.header("coremesh-error").is_some());

    let mut c = proxy.outbound_client();
    c.send(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", other.addr()).as_bytes());
    let r = c.read_response();
    assert!(
        r.status >= 400,
        "CONNECT without passthrough answered {}",
        r.status
    );
    assert_eq!(other.bytes_received(), 0, "nothing reaches a non-mesh host");
}

#[test]
fn passthrough_forwards_absolute_form_and_tunnels_connect() {
    let other = Origin::start("other");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .passthrough(true)
        .start();

    // http_proxy style request to a host that is not a mesh service.
    let out = Curl::new(&format!("http://{}/direct?z=1", other.addr()))
        .env("http_proxy", &format!("http://{}", proxy.outbound()))
        .run();
    assert_eq!(out.response.status, 200, "stderr: {}", out.stderr);
    assert_eq!(out.response.json()["target"], "/direct?z=1");

    // CONNECT: 200, then raw bytes both ways (here an HTTP request inside).
    let mut c = proxy.outbound_client();
    c.send(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", other.addr()).as_bytes());
    let r = c.read_response_to(true);
    assert_eq!(
        r.status, 200,
        "CONNECT answered {} {:?}",
        r.status, r.headers
    );
    c.stream()
        .write_all(b"GET /inside-tunnel HTTP/1.1\r\nHost: other\r\n\r\n")
        .expect("write into tunnel");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["target"], "/inside-tunnel");
    assert_eq!(other.requests(), 2);

    // Closing our side ends the tunnel.
    c.shutdown_write();
    assert!(
        c.closed_within(Duration::from_secs(10)),
        "tunnel closes after the client does"
    );
}

#[test]
fn curl_http1_0_client() {
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let out = Curl::new(&format!("http://{}/ten", proxy.outbound()))
        .args(&["--http1.0", "-H", "Host: api"])
        .run();
    assert_eq!(out.response.status, 200);
    assert_eq!(out.response.json()["target"], "/ten");
}

#[test]
fn each_connection_is_independent() {
    // A client error on one connection does not disturb another one.
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut good = proxy.outbound_client();
    assert_eq!(good.get("api", "/1").status, 200);
    let mut bad = Client::connect(proxy.outbound());
    assert_eq!(bad.get("nope", "/").status, 404);
    assert_eq!(good.get("api", "/2").status, 200);
}

/// The proxy answers 404 after the head and will not read the 8 MiB body.
/// Closing at once would reset the connection under the client's write,
/// and the client would see "connection reset" instead of the answer; the
/// proxy half-closes and drains instead (lingering close), so the whole
/// upload goes out, the 404 is read, then EOF.
#[test]
fn an_upload_refused_after_its_head_gets_its_answer_not_a_reset() {
    use std::io::Read;
    let api = Origin::start("api");
    let proxy = proxy_for(&api);
    let mut s = std::net::TcpStream::connect(proxy.outbound()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = vec![b'x'; 8 << 20];
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: billing\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body)
        .expect("the whole upload is accepted (drained), not reset");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the answer and then EOF, no reset");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 404"),
        "the client reads the 404: {:?}",
        &text[..text.len().min(120)]
    );
    assert_eq!(api.requests(), 0);
}

#[test]
fn ring_hash_keeps_each_key_on_one_endpoint_and_spreads_the_keys() {
    let origins = [Origin::start("a"), Origin::start("b"), Origin::start("c")];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr()).collect();
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &addrs)
        .extra("[[resilience]]\nservice = \"api\"\nloadBalancer = { ring-hash = { header = \"x-user\" } }\n")
        .start();
    let mut c = proxy.outbound_client();
    let mut used = std::collections::BTreeSet::new();
    for user in 0..30 {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let r = c.request(
                &Request::get("/hash")
                    .host("api")
                    .header("x-user", &format!("user-{user}")),
            );
            assert_eq!(r.status, 200, "{:?}", r.body_str());
            seen.insert(r.header("x-origin").unwrap_or("?").to_string());
        }
        assert_eq!(seen.len(), 1, "user-{user} went to {seen:?}");
        used.extend(seen);
    }
    assert!(used.len() >= 2, "30 keys all on {used:?}");
}

#[test]
fn least_request_sends_less_to_the_endpoint_with_requests_piling_up() {
    let slow = Origin::start("slow");
    slow.set_delay(Duration::from_millis(300));
    let fast = Origin::start("fast");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[slow.addr(), fast.addr()])
        .extra("[[resilience]]\nservice = \"api\"\nloadBalancer = \"least-request\"\n")
        .start();
    // Six clients at once: requests pile up on the slow endpoint, and the
    // balancer (two choices, fewer in flight) sends the rest to the other.
    let outbound = proxy.outbound();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(outbound);
                for _ in 0..10 {
                    assert_eq!(c.get("api", "/lr").status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    assert_eq!(slow.requests() + fast.requests(), 60);
    assert!(
        slow.requests() < fast.requests(),
        "least-request: slow {}, fast {}",
        slow.requests(),
        fast.requests()
    );
}
