//! Zero-trust data plane (issue 5): mutual TLS between proxies.
//!
//! ```text
//!  Client ──▶ web proxy [outbound] ══mTLS══▶ api proxy [inbound] ──▶ origin api
//!                          ╚═══mTLS══▶ db proxy (answers with db's certificate)
//!  curl / raw TCP ──▶ api proxy [inbound]   (plaintext, foreign CA, expired: refused)
//! ```
//!
//! Static mode (`[tls]` files, no control) here; control-issued certificates
//! and rotation under load are in the last test.

use std::net::SocketAddr;
use std::time::Duration;

use coremesh_e2e::pki::Pki;
use coremesh_e2e::util::{wait_for, TempDir};
use coremesh_e2e::{Client, ControlBuilder, Curl, MeshProxy, Origin, Proxy, ProxyBuilder, Request};

/// A static-mode proxy fronting `app` as `service`, with `[tls]` from `pki`.
fn inbound_proxy(pki: &Pki, dir: &TempDir, service: &str, app: &Origin) -> Proxy {
    let files = pki.files(dir.path(), service, service);
    ProxyBuilder::new(service)
        .inbound(app.addr())
        .extra(&files.toml())
        .start()
}

/// A static-mode web proxy whose service `api` is at `endpoints`.
fn web_proxy(pki: &Pki, dir: &TempDir, endpoints: &[SocketAddr]) -> Proxy {
    web_builder(pki, dir, endpoints).start()
}

fn web_builder(pki: &Pki, dir: &TempDir, endpoints: &[SocketAddr]) -> ProxyBuilder {
    let files = pki.files(dir.path(), "web", "web");
    ProxyBuilder::new("web")
        .outbound()
        .service("api", endpoints)
        .extra(&files.toml())
}

fn inbound_handshakes(p: &Proxy) -> f64 {
    p.metrics()
        .sum("coremesh_tls_handshakes_total", &[("direction", "inbound")])
}

fn inbound_failures(p: &Proxy) -> f64 {
    p.metrics().sum(
        "coremesh_tls_handshake_failures_total",
        &[("direction", "inbound")],
    )
}

#[test]
fn static_mode_carries_requests_over_mutual_tls_and_resumes_sessions() {
    let dir = TempDir::new("mtls-static");
    let pki = Pki::new("mesh");
    let app = Origin::start("api");
    let api = inbound_proxy(&pki, &dir, "api", &app);
    // HTTP/1.1 between the proxies (multiplexed, every request would ride
    // one h2 connection and one handshake; off by default).
    let web = web_builder(&pki, &dir, &[api.inbound()])
        .upstream("multiplex", "false")
        .start();

    let mut c = web.outbound_client();
    let r = c.request(&Request::get("/hello").host("api"));
    assert_eq!(
        r.status,
        200,
        "{:?} {:?}",
        r.header("coremesh-error"),
        r.body_str()
    );
    assert_eq!(r.header("x-origin"), Some("api"));
    for _ in 0..3 {
        // A close-delimited body ends the proxy-to-proxy connection too, so
        // each of these needs a new handshake (resumed after the first).
        let mut c = web.outbound_client();
        let r = c.request(&Request::get("/close").host("api"));
        assert_eq!(
            r.status,
            200,
            "{:?} {:?}",
            r.header("coremesh-error"),
            r.body_str()
        );
        assert!(r
            .body_str()
            .contains("this body ends when the connection closes"));
    }
    assert_eq!(app.requests(), 4);
    let m = api.metrics();
    let full = m.sum(
        "coremesh_tls_handshakes_total",
        &[("direction", "inbound"), ("resumed", "false")],
    );
    let resumed = m.sum(
        "coremesh_tls_handshakes_total",
        &[("direction", "inbound"), ("resumed", "true")],
    );
    assert!(
        full >= 1.0 && full + resumed >= 3.0,
        "full {full}, resumed {resumed}"
    );
    assert!(resumed >= 1.0, "no session was resumed (full {full})");
    assert!(m.has("coremesh_certificate_expiry_timestamp_seconds"));
}

#[test]
fn an_upload_to_an_app_that_stops_reading_for_seconds_is_not_taken_for_a_dead_peer() {
    // The mesh connection's dead-peer timeout (2 s of unacknowledged data)
    // would end it while the peer's window stays closed; it is lifted while
    // a body streams.
    let dir = TempDir::new("mtls-slow-read");
    let pki = Pki::new("mesh");
    let app = Origin::start("api");
    let api = inbound_proxy(&pki, &dir, "api", &app);
    let web = web_proxy(&pki, &dir, &[api.inbound()]);
    let len: usize = 48 << 20;
    let body = vec![b'x'; len];
    let mut c = web.outbound_client();
    c.set_read_timeout(std::time::Duration::from_secs(30));
    let r = c.request(&Request::post("/slow-read/3500").host("api").body(body));
    assert_eq!(
        r.status,
        200,
        "{:?} {:?}",
        r.header("coremesh-error"),
        r.body_str()
    );
    assert_eq!(r.json()["body_len"], len as u64);
    // The connection is still good for the next request.
    let r = c.request(&Request::get("/after").host("api"));
    assert_eq!(r.status, 200);
}

#[test]
fn the_inbound_port_refuses_plaintext_a_foreign_ca_and_an_expired_certificate() {
    let dir = TempDir::new("mtls-refuse");
    let pki = Pki::new("mesh");
    let app = Origin::start("api");
    let api = inbound_proxy(&pki, &dir, "api", &app);
    let url = format!("https://{}/", api.inbound());

    // Plaintext HTTP: no HTTP answer, the connection is closed.
    let mut c = Client::connect(api.inbound());
    c.send(&Request::get("/").host("api").to_bytes());
    let got = c
        .read_until_close(Duration::from_secs(5))
        .unwrap_or_default();
    assert!(!got.starts_with(b"HTTP/"), "plaintext got an HTTP answer");

    let curl = |files: &coremesh_e2e::pki::TlsFiles| {
        Curl::new(&url)
            // HTTP/1.1: the app here is an HTTP/1.1 origin, and an h2 client keeps
            // its protocol to the app (README, "HTTP/2 and gRPC").
            .args(&["-k", "--tlsv1.3", "--http1.1"])
            .arg("--cert")
            .arg(&files.cert.display().to_string())
            .arg("--key")
            .arg(&files.key.display().to_string())
    };

    // A valid mesh certificate gets through (so the refusals below are
    // about the certificate, not about curl).
    let good = pki.files(dir.path(), "good", "web");
    assert_eq!(curl(&good).run().response.status, 200);
    assert_eq!(app.requests(), 1);

    // TLS 1.3: the client finishes its side before the server has judged
    // its certificate, so curl sees the refusal as an alert or a closed
    // connection instead of a response; either way, a non-zero exit.
    let foreign = Pki::new("elsewhere").files(dir.path(), "foreign", "web");
    let expired = pki.files_for(
        dir.path(),
        "expired",
        "spiffe://mesh.test/service/web",
        -7200,
        -3600,
        &pki.ca_pem,
    );
    let stranger = pki.files_for(
        dir.path(),
        "stranger",
        "spiffe://other.test/service/web",
        -60,
        3600,
        &pki.ca_pem,
    );
    for (what, files) in [
        ("a certificate from another CA", &foreign),
        ("an expired certificate", &expired),
        ("another trust domain", &stranger),
    ] {
        let (code, err) = curl(files).run_status();
        assert_ne!(code, 0, "{what} was accepted: {err}");
    }
    let (code, err) = Curl::new(&url).args(&["-k", "--tlsv1.3"]).run_status();
    assert_ne!(
        code, 0,
        "a client without a certificate was accepted: {err}"
    );

    assert_eq!(app.requests(), 1, "a refused connection reached the app");
    assert!(inbound_failures(&api) >= 5.0, "failures not counted");
    assert!(inbound_handshakes(&api) >= 1.0);
}

#[test]
fn a_peer_answering_with_another_services_certificate_gets_no_requests() {
    let dir = TempDir::new("mtls-impersonation");
    let pki = Pki::new("mesh");
    let db_app = Origin::start("db");
    // The db proxy is a genuine mesh member, but web was told (wrongly, or
    // by an attacker who registered the address) that api lives there.
    let db = inbound_proxy(&pki, &dir, "db", &db_app);
    let web = web_proxy(&pki, &dir, &[db.inbound()]);

    let mut c = web.outbound_client();
    let r = c.request(&Request::get("/secret").host("api"));
    assert_eq!(r.status, 502);
    assert_eq!(r.header("coremesh-error"), Some("peer identity mismatch"));
    assert_eq!(
        db_app.requests(),
        0,
        "the impersonator received the request"
    );
    let m = web.metrics();
    assert!(m.sum("coremesh_tls_peer_identity_mismatch_total", &[]) >= 1.0);

    // With the genuine api next to it, every request reaches api, never db.
    let api_app = Origin::start("api");
    let api = inbound_proxy(&pki, &dir, "api", &api_app);
    let web = web_proxy(&pki, &dir, &[db.inbound(), api.inbound()]);
    let mut c = web.outbound_client();
    for i in 0..6 {
        let r = c.request(&Request::get(&format!("/{i}")).host("api"));
        assert_eq!(r.status, 200, "{:?}", r.header("coremesh-error"));
        assert_eq!(r.header("x-origin"), Some("api"));
    }
    assert_eq!(db_app.requests(), 0);
}

#[test]
fn certificates_from_control_rotate_under_load_without_a_failed_request() {
    // Certificates live 8 s, so each proxy renews about every 5 s: the run
    // below spans several rotations on both sides of every connection.
    let control = ControlBuilder::new().arg("--cert-lifetime", "8s").start();
    let app = Origin::start("api");
    let api_member = control.member("api", "api-1");
    let web_member = control.member("web", "web-1");
    let api = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&control.section(&api_member))
        .start();
    let web = ProxyBuilder::new("web")
        .outbound()
        .control(&control.section(&web_member).calls(&["api"]))
        .start();
    control.apply("kind: Service\nname: api\n");
    let ready = wait_for(Duration::from_secs(20), || {
        let mut c = Client::try_connect(web.outbound()).ok()?;
        c.set_read_timeout(Duration::from_secs(5));
        c.try_send(&Request::get("/").host("api").to_bytes()).ok()?;
        (c.try_read_response().ok()?.status == 200).then_some(())
    });
    assert!(ready.is_some(), "web never reached api");
    let expiry = |p: &Proxy| {
        p.metrics()
            .sum("coremesh_certificate_expiry_timestamp_seconds", &[])
    };
    let first = (expiry(&api), expiry(&web));

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut sent, mut failures) = (0, Vec::new());
    let mut conn: Option<Client> = None;
    let mut n = 0;
    while std::time::Instant::now() < deadline {
        n += 1;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert(Client::connect(web.outbound())),
        };
        c.set_read_timeout(Duration::from_secs(10));
        // Every fifth request closes, so new upstream connections (new
        // handshakes with the newest certificates) keep happening.
        let mut req = Request::get(&format!("/r/{n}")).host("api");
        if n % 5 == 0 {
            req = req.header("connection", "close");
        }
        sent += 1;
        match c
            .try_send(&req.to_bytes())
            .and_then(|()| c.try_read_response())
        {
            Ok(r) if r.status == 200 => {
                if r.header_has_token("connection", "close") {
                    conn = None;
                }
            }
            Ok(r) => {
                failures.push(format!(
                    "{n}: {} {:?}",
                    r.status,
                    r.header("coremesh-error")
                ));
                conn = None;
            }
            Err(e) => {
                failures.push(format!("{n}: {e}"));
                conn = None;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    let last = (expiry(&api), expiry(&web));
    assert!(
        last.0 >= first.0 + 8.0 && last.1 >= first.1 + 8.0,
        "certificates did not rotate: {first:?} -> {last:?}"
    );
    assert!(sent > 500, "only {sent} requests");
}

#[test]
fn a_per_caller_rate_limit_gives_each_caller_identity_its_own_bucket() {
    let dir = TempDir::new("mtls-per-caller");
    let pki = Pki::new("mesh");
    let app = Origin::start("api");
    let files = pki.files(dir.path(), "api", "api");
    let api = ProxyBuilder::new("api")
        .inbound(app.addr())
        .extra(&files.toml())
        .extra("[[resilience]]\nservice = \"api\"\nrateLimit = { requestsPerSecond = 1, burst = 5, per = \"caller\" }\n")
        .start();
    let caller = |name: &str| {
        let files = pki.files(dir.path(), name, name);
        ProxyBuilder::new(name)
            .outbound()
            .service("api", &[api.inbound()])
            .extra(&files.toml())
            .start()
    };
    let (web, batch) = (caller("web"), caller("batch"));
    // web spends its burst, then is limited...
    // (1 request per second refills: a slow machine may see one or two more.)
    let mut c = web.outbound_client();
    let answers: Vec<_> = (0..12).map(|_| c.get("api", "/pc")).collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!((5..=8).contains(&ok), "web: {statuses:?}");
    let limited: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
    assert_eq!(limited.len(), 12 - ok, "web: {statuses:?}");
    assert!(limited
        .iter()
        .all(|r| r.header("coremesh-error") == Some("rate limited")));
    // ...while batch, another identity, has a bucket of its own.
    let mut c = batch.outbound_client();
    for i in 0..5 {
        let r = c.get("api", "/pc");
        assert_eq!(r.status, 200, "batch request {i}: {:?}", r.body_str());
    }
}
