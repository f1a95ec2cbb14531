//! Upstream failures become clear local responses, quickly and with a bound:
//! refused (502), reset (502), too slow (504).

use std::time::{Duration, Instant};

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
