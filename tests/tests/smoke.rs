//! Smoke subset: forwarding, keep-alive and chunked bodies. CI runs this file
//! against every backend (monoio io_uring, monoio epoll, glommio).

use coremesh_e2e::{Client, Origin, ProxyBuilder, Request};

#[test]
fn outbound_by_host_header_reaches_the_service() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();

    let mut c = proxy.outbound_client();
    let r = c.request(
        &Request::post("/orders?id=7")
            .host("api")
            .header("x-request-tag", "smoke-1")
            .body("hello api"),
    );
    assert_eq!(r.status, 200, "body: {}", r.body_str());
    assert_eq!(
        r.header("x-origin"),
        Some("api"),
        "response comes from the api origin"
    );
    let got = api.last();
    assert_eq!(got.method, "POST");
    assert_eq!(got.target, "/orders?id=7");
    assert_eq!(got.header("x-request-tag"), Some("smoke-1"));
    assert_eq!(got.body, b"hello api");
}

#[test]
fn inbound_forwards_every_request_to_the_app() {
    let app = Origin::start("app");
    let proxy = ProxyBuilder::new("api").inbound(app.addr()).start();

    let mut c = proxy.inbound_client();
    for host in ["api", "anything.example", "127.0.0.1"] {
        let r = c.request(&Request::get("/in").host(host).header("x-from", "mesh"));
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["target"], "/in");
    }
    assert_eq!(app.requests(), 3);
    assert_eq!(app.last().header("x-from"), Some("mesh"));
}

#[test]
fn keep_alive_reuses_one_upstream_connection() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();

    let mut c = proxy.outbound_client();
    for i in 0..50 {
        let r = c.get("api", &format!("/ka/{i}"));
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.json()["target"], format!("/ka/{i}"));
    }
    assert_eq!(api.requests(), 50);
    assert_eq!(
        api.connections(),
        1,
        "50 sequential requests on one client connection should ride one pooled upstream connection"
    );
}

#[test]
fn chunked_request_and_response_keep_their_trailers() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();

    let mut c = proxy.outbound_client();
    // Request: three chunks (one with an extension) and a trailer.
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
          5\r\nhello\r\n1;note=x\r\n \r\n7\r\nchunked\r\n0\r\nx-sum: 12345\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let got = api.last();
    assert_eq!(
        got.body, b"hello chunked",
        "the upstream gets the whole body"
    );
    assert!(
        got.trailers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("x-sum") && v == "12345"),
        "the upstream gets the request trailer: {:?}",
        got.trailers
    );

    // Response: chunked with a trailer, on the same connection.
    let r = c.get("api", "/chunked");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "hello chunked world");
    assert_eq!(
        r.trailer("x-checksum"),
        Some("42"),
        "response trailers arrive: {:?}",
        r.trailers
    );

    // And the connection is still usable afterwards.
    let r = c.get("api", "/after");
    assert_eq!(r.json()["target"], "/after");
}

#[test]
fn many_clients_in_parallel_all_get_answers() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .start();
    let addr = proxy.outbound();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..20 {
                    let r = c.get("api", &format!("/t{t}/{i}"));
                    assert_eq!(r.status, 200);
                    assert_eq!(r.json()["target"], format!("/t{t}/{i}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert_eq!(api.requests(), 160);
}
