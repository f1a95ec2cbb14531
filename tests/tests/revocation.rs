//! Evicting a node (`meshctl node evict`): control revokes every
//! certificate it issued to the node and sends the list to every proxy,
//! which refuses those certificates on new handshakes and shuts its open
//! connections that use one; control refuses the node's sessions, renewals
//! and joins, also after a restart.
//!
//! The mesh: control; `api` (node api-node) in front of an app; `web`
//! (web-node) calling api; and `evil` (evil-node), a second instance of
//! api that also calls api: the compromised host.

use std::time::Duration;

use coremesh_e2e::util::wait_for;
use coremesh_e2e::{
    Client, Control, ControlBuilder, Curl, MeshProxy, Origin, Proxy, ProxyBuilder, Request,
};

const CONVERGE: Duration = Duration::from_secs(30);

/// A GET to `api` through `p`'s outbound listener on a new connection:
/// the status and which app answered.
fn call_api(p: &Proxy, path: &str) -> (u16, Option<String>) {
    let mut c = Client::connect(p.outbound());
    c.set_read_timeout(Duration::from_secs(10));
    let r = c.request(&Request::get(path).host("api"));
    (r.status, r.header("x-origin").map(str::to_string))
}

/// curl to `url` with the evil node's certificate and key, straight to a
/// proxy's inbound port: its exit code.
fn curl_as(cert: &std::path::Path, key: &std::path::Path, url: &str) -> (i32, String) {
    Curl::new(url)
        .args(&["-k", "--tlsv1.3", "--http1.1", "--max-time", "10"])
        .arg("--cert")
        .arg(&cert.display().to_string())
        .arg("--key")
        .arg(&key.display().to_string())
        .run_status()
}

fn evicted_in_list(control: &Control, node: &str) -> bool {
    let out = control.meshctl(&["node", "list"]).ok().stdout;
    out.lines()
        .any(|l| l.starts_with(node) && l.contains("EVICTED"))
}

#[test]
fn an_evicted_node_is_refused_everywhere_and_its_connections_are_closed() {
    let mut control = ControlBuilder::new().grace("1s").start();
    let api_app = Origin::start("api");
    let evil_app = Origin::start("evil");
    let api_m = control.member("api", "api-node");
    let web_m = control.member("web", "web-node");
    let evil_m = control.member("api", "evil-node");
    let api = ProxyBuilder::new("api")
        .inbound(api_app.addr())
        .control(&control.section(&api_m))
        .start();
    let evil = ProxyBuilder::new("api")
        .inbound(evil_app.addr())
        .outbound()
        .control(&control.section(&evil_m).calls(&["api"]))
        .start();
    let web = ProxyBuilder::new("web")
        .outbound()
        .control(&control.section(&web_m).calls(&["api"]))
        .start();
    let version = control.apply("kind: Service\nname: api\n");
    control.wait_applied(3, 2, version, &["web"], CONVERGE);

    // Before: web reaches both instances, evil's certificate gets through
    // api's inbound port, and evil holds a keep-alive connection to api
    // (its outbound pool) once one of its calls went there.
    let answered = wait_for(CONVERGE, || {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..20 {
            let (status, origin) = call_api(&web, &format!("/before/{i}"));
            assert_eq!(status, 200);
            seen.extend(origin);
        }
        (seen.len() == 2).then_some(seen)
    });
    assert!(answered.is_some(), "web never reached both api instances");
    let api_url = format!("https://{}/", api.inbound());
    let (code, err) = curl_as(&evil_m.cert_path(), &evil_m.key_path(), &api_url);
    assert_eq!(
        code, 0,
        "evil's certificate refused before the eviction: {err}"
    );
    let to_api = wait_for(CONVERGE, || {
        let before = api_app.requests();
        let (status, _) = call_api(&evil, "/keepalive");
        assert_eq!(status, 200);
        (api_app.requests() > before).then_some(())
    });
    assert!(to_api.is_some(), "evil's calls never went to api");
    let api_log = api.log_lines().len();
    let web_log = web.log_lines().len();

    // Evict.
    let out = control.meshctl(&["node", "evict", "evil-node"]).ok().stdout;
    assert!(out.contains("evicted node evil-node"), "{out}");
    assert!(out.contains("revoked 1 certificate(s)"), "{out}");
    assert!(
        out.contains("closed 1 control session(s); withdrew 1 endpoint(s)"),
        "{out}"
    );

    // Within one push: api and web (the two proxies left) ACK a snapshot
    // with one endpoint (api's), and it carries the revocation.
    let version = control.config_version();
    control.wait_applied(2, 1, version, &[], CONVERGE);

    // (1) New handshakes with evil's certificate fail: straight to api's
    // inbound port. (The other direction, a proxy calling evil, is what
    // the verifier's unit tests cover: control has withdrawn evil's
    // endpoint, so no proxy is routed there any more.)
    let (code, err) = curl_as(&evil_m.cert_path(), &evil_m.key_path(), &api_url);
    assert_ne!(
        code, 0,
        "evil's certificate still accepted after the eviction: {err}"
    );
    assert!(
        api.wait_for_log(api_log, CONVERGE, |l| l
            .contains("whose certificate is revoked"))
            .is_some(),
        "api did not log the refusal:\n{}",
        api.log_tail(30)
    );

    // (2) The keep-alive connection evil's proxy held to api was shut by
    // api; web shut its pooled connections to evil.
    assert!(
        api.wait_for_log(api_log, CONVERGE, |l| l
            .contains("closed connections whose peer certificate is revoked"))
            .is_some(),
        "api closed no connection:\n{}",
        api.log_tail(30)
    );
    assert!(
        web.wait_for_log(web_log, CONVERGE, |l| l
            .contains("closed connections whose peer certificate is revoked"))
            .is_some(),
        "web closed no connection to evil:\n{}",
        web.log_tail(30)
    );
    // And evil's calls no longer reach api: its proxy cannot handshake
    // (it may still answer from its own instance, with the snapshot it
    // had).
    let before = api_app.requests();
    for i in 0..5 {
        let (_, origin) = call_api(&evil, &format!("/after/{i}"));
        assert_ne!(origin.as_deref(), Some("api"), "evil's call reached api");
    }
    assert_eq!(
        api_app.requests(),
        before,
        "a request from evil reached api"
    );

    // (3) The others keep working: web's calls all reach api's instance.
    for i in 0..10 {
        let (status, origin) = call_api(&web, &format!("/after/{i}"));
        assert_eq!((status, origin.as_deref()), (200, Some("api")));
    }

    // (4) Evil's proxy cannot get back in: its session is refused (so no
    // renewal), and a join as evil-node with a fresh token is refused
    // without spending it.
    assert!(
        evil.wait_for_log(0, CONVERGE, |l| l.contains("was evicted from the mesh"))
            .is_some(),
        "evil's proxy was not told it is evicted:\n{}",
        evil.log_tail(30)
    );
    let rejoin = control.member("api", "evil-node");
    let again = ProxyBuilder::new("api")
        .inbound(evil_app.addr())
        .control(&control.section(&rejoin))
        .start();
    assert!(
        again
            .wait_for_log(0, CONVERGE, |l| l.contains("was evicted from the mesh"))
            .is_some(),
        "a new join as evil-node was not refused:\n{}",
        again.log_tail(30)
    );
    drop(again);
    let status = control.meshctl(&["status"]).ok().stdout;
    assert!(
        status
            .lines()
            .any(|l| l.contains("evil-node") && l.contains("EVICTED")),
        "{status}"
    );

    // (5) The eviction survives a control restart: still listed, still
    // refused, and the revocation list still reaches the proxies.
    control.restart();
    assert!(evicted_in_list(&control, "evil-node"));
    control.wait_applied(2, 1, version, &[], CONVERGE);
    let rejoin = control.member("api", "evil-node");
    let again = ProxyBuilder::new("api")
        .inbound(evil_app.addr())
        .control(&control.section(&rejoin))
        .start();
    assert!(
        again
            .wait_for_log(0, CONVERGE, |l| l.contains("was evicted from the mesh"))
            .is_some(),
        "a join as evil-node after the restart was not refused:\n{}",
        again.log_tail(30)
    );
    let (code, _) = curl_as(&evil_m.cert_path(), &evil_m.key_path(), &api_url);
    assert_ne!(
        code, 0,
        "evil's certificate accepted after control restarted"
    );
    let snapshot = std::fs::read_to_string(web_m.snapshot_path()).unwrap();
    assert!(
        snapshot.contains("\"revoked\""),
        "web's persisted snapshot has no revocation list"
    );
}

#[test]
fn a_readmitted_node_joins_again_with_a_new_token_and_its_old_certificate_stays_revoked() {
    let control = ControlBuilder::new().grace("1s").start();
    let app = Origin::start("api");
    let old = control.member("api", "host-9");
    let first = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&control.section(&old))
        .start();
    control.wait_converged(1, 1, 0, CONVERGE);
    drop(first);
    control.meshctl(&["node", "evict", "host-9"]).ok();
    let out = control.meshctl(&["node", "readmit", "host-9"]).ok().stdout;
    assert!(out.contains("readmitted node host-9"), "{out}");
    assert!(
        out.contains("1 of its old certificate(s) stay revoked"),
        "{out}"
    );
    assert!(!evicted_in_list(&control, "host-9"));
    // The old state (certificate) is refused; a new join works.
    let fresh = control.member("api", "host-9");
    let _second = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&control.section(&fresh))
        .start();
    control.wait_converged(1, 1, 0, CONVERGE);
    let (code, _) = curl_as(
        &old.cert_path(),
        &old.key_path(),
        &format!("https://{}/", _second.inbound()),
    );
    assert_ne!(
        code, 0,
        "the old certificate works again after the readmission"
    );
}
