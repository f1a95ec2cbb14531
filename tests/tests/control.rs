//! The control plane end to end (issue 4): the real `coremesh-control`,
//! `meshctl`, and sidecars that join with tokens.
//!
//! The mesh most tests build:
//!
//! ```text
//!  Client ──▶ web proxy [outbound] ──┬──▶ api proxy (labels version=v1) [inbound] ──▶ origin api-v1
//!                                    └──▶ api proxy (labels version=v2) [inbound] ──▶ origin api-v2
//!                 ▲                                 ▲
//!                 └──── QUIC: join, snapshots ──────┴──── coremesh-control ◀── meshctl
//! ```
//!
//! Each origin names itself in `x-origin`, so a response says which version
//! of api served it.
//!
//! NACKs: control validates every resource with the same rules the proxy's
//! `RoutingTable::compile` enforces (paths start with `/`; a route's service
//! is always in the snapshot, as control only sends the routes of the
//! services it sends), so what a proxy refuses is a conflict with its own
//! configuration: a service its proxy.toml defines statically in
//! `[[services]]` that control defines too. That is the NACK tested here
//! end to end; the other NACK reasons (a snapshot that does not compile, a
//! shard that does not prepare in time) are covered by the proxy's unit
//! tests against an in-process control.

// The load thread shares its tally with the test through a Mutex: test code,
// off the data plane, where the shared-nothing rule (clippy.toml) does not apply.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coremesh_e2e::util::wait_for;
use coremesh_e2e::{
    Client, Control, ControlBuilder, Member, MeshProxy, Origin, Proxy, ProxyBuilder, Request,
};

/// Bound on anything that should happen "within a second or so".
const SOON: Duration = Duration::from_secs(10);

/// The example of issue 4, verbatim.
const EXAMPLE: &str = r#"kind: Service
name: api
protocol: http            # http | tcp
---
kind: Route
name: api-canary
service: api              # applies to traffic addressed to service api; at most one Route per service
rules:                    # first match wins
  - match: { headers: { x-canary: "true" } }
    backends: [ { subset: { version: v2 } } ]
  - match: { pathPrefix: / }
    timeout: 2s
    retries: { attempts: 2, perTryTimeout: 500ms, on: [connect-failure, reset, 5xx] }
    backends:
      - { subset: { version: v1 }, weight: 90 }
      - { subset: { version: v2 }, weight: 10 }
"#;

/// Service api balanced round-robin (tests that need every endpoint used).
const ROUND_ROBIN_API: &str =
    "kind: Service\nname: api\n---\nkind: Resilience\nservice: api\nloadBalancer: round-robin\n";

// ---- building the mesh ----

/// An api sidecar in front of `app`, labelled `version`.
fn api_sidecar(control: &Control, member: &Member, app: &Origin, version: &str) -> Proxy {
    ProxyBuilder::new("api")
        .inbound(app.addr())
        .labels(&[("version", version)])
        .control(&control.section(member))
        .start()
}

/// A web sidecar: outbound only, calls api.
fn web_sidecar(control: &Control, member: &Member) -> Proxy {
    ProxyBuilder::new("web")
        .outbound()
        .control(&control.section(member).calls(&["api"]))
        .start()
}

/// Control, two api versions behind sidecars, `webs` web sidecars.
struct Mesh {
    control: Control,
    v1: Origin,
    v2: Origin,
    api_members: Vec<Member>,
    apis: Vec<Proxy>,
    web_members: Vec<Member>,
    webs: Vec<Proxy>,
}

impl Mesh {
    fn start(control: Control, webs: usize) -> Mesh {
        let v1 = Origin::start("api-v1");
        let v2 = Origin::start("api-v2");
        let api_members = vec![
            control.member("api", "api-v1-a"),
            control.member("api", "api-v2-a"),
        ];
        let apis = vec![
            api_sidecar(&control, &api_members[0], &v1, "v1"),
            api_sidecar(&control, &api_members[1], &v2, "v2"),
        ];
        let web_members: Vec<Member> = (0..webs)
            .map(|i| control.member("web", &format!("web-{i}")))
            .collect();
        let webs = web_members
            .iter()
            .map(|m| web_sidecar(&control, m))
            .collect();
        Mesh {
            control,
            v1,
            v2,
            api_members,
            apis,
            web_members,
            webs,
        }
    }

    fn proxies(&self) -> usize {
        self.apis.len() + self.webs.len()
    }

    /// Waits until every proxy runs config `version` and both api endpoints
    /// are registered.
    fn converge(&self, version: u64) {
        self.control
            .wait_converged(self.proxies(), 2, version, Duration::from_secs(20));
    }

    fn web(&self) -> &Proxy {
        &self.webs[0]
    }
}

/// Sends `n` GETs for service api through `web`'s outbound, on one
/// connection; every answer must be 200. Counts answers by `x-origin`.
fn tally(web: &Proxy, n: usize, path: &str, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut c = web.outbound_client();
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let mut req = Request::get(path).host("api");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let r = c.request(&req);
        assert_eq!(
            r.status,
            200,
            "request {i} ({path}, {headers:?}) through {}: {} {:?} {:?}",
            web.outbound(),
            r.status,
            r.header("coremesh-error"),
            r.body_str()
        );
        let origin = r.header("x-origin").unwrap_or("?").to_string();
        *counts.entry(origin).or_insert(0) += 1;
    }
    counts
}

fn count(t: &BTreeMap<String, usize>, origin: &str) -> usize {
    t.get(origin).copied().unwrap_or(0)
}

/// Continuous GETs for api through one web proxy until stopped; every
/// failure (transport error or a status other than 200) is recorded.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    by_origin: Arc<Mutex<BTreeMap<String, usize>>>,
    thread: JoinHandle<Vec<String>>,
}

impl Load {
    fn start(outbound: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let by_origin = Arc::new(Mutex::new(BTreeMap::new()));
        let (st, se, bo) = (stop.clone(), sent.clone(), by_origin.clone());
        let thread = std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut conn: Option<Client> = None;
            while !st.load(Ordering::SeqCst) {
                let n = se.fetch_add(1, Ordering::SeqCst);
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Client::try_connect(outbound) {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            failures.push(format!("request {n}: connect: {e}"));
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    },
                };
                c.set_read_timeout(Duration::from_secs(10));
                let req = Request::get(&format!("/load/{n}")).host("api");
                let result = c
                    .try_send(&req.to_bytes())
                    .and_then(|()| c.try_read_response());
                match result {
                    Ok(r) if r.status == 200 => {
                        let origin = r.header("x-origin").unwrap_or("?").to_string();
                        *bo.lock().expect("lock").entry(origin).or_insert(0) += 1;
                        if r.header_has_token("connection", "close") {
                            conn = None;
                        }
                    }
                    Ok(r) => {
                        failures.push(format!(
                            "request {n}: {} {:?} {:?}",
                            r.status,
                            r.header("coremesh-error"),
                            r.body_str()
                        ));
                        conn = None;
                    }
                    Err(e) => {
                        failures.push(format!("request {n}: {e}"));
                        conn = None;
                    }
                }
                // A steady trickle, not a flood: this machine has 2 cores.
                std::thread::sleep(Duration::from_millis(5));
            }
            failures
        });
        Load {
            stop,
            sent,
            by_origin,
            thread,
        }
    }

    /// Waits until `more` further requests have been sent.
    fn wait_more(&self, more: usize) {
        let target = self.sent.load(Ordering::SeqCst) + more;
        let done = wait_for(SOON, || {
            (self.sent.load(Ordering::SeqCst) >= target).then_some(())
        });
        assert!(done.is_some(), "the load stalled");
    }

    fn by_origin(&self) -> BTreeMap<String, usize> {
        self.by_origin.lock().expect("lock").clone()
    }

    /// Stops; returns how many were sent and the failures.
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.thread.join().expect("load thread");
        (self.sent.load(Ordering::SeqCst), failures)
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The row of `meshctl status` (or a table) that mentions `needle`.
fn row<'a>(table: &'a str, needle: &str) -> Option<&'a str> {
    table.lines().skip(1).find(|l| l.contains(needle))
}

// ---- joining ----

#[test]
fn a_proxy_joins_with_a_token_and_meshctl_status_shows_it() {
    let control = Control::start();
    let app = Origin::start("api-v1");
    let member = control.member("api", "api-node-1");
    let proxy = api_sidecar(&control, &member, &app, "v1");

    control.wait_converged(1, 1, 0, SOON);
    assert!(
        proxy
            .wait_for_log(0, SOON, |l| l.contains("joined control"))
            .is_some(),
        "the proxy should log that it joined"
    );

    let status = control.meshctl(&["status"]).ok();
    let line = row(&status.stdout, "api-node-1").unwrap_or_else(|| {
        panic!(
            "meshctl status does not list node api-node-1:\n{}",
            status.stdout
        )
    });
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[0], "api", "service column:\n{}", status.stdout);
    assert!(
        line.contains(&proxy.inbound().to_string()),
        "status shows the registered inbound address {}:\n{}",
        proxy.inbound(),
        status.stdout
    );
    assert!(
        line.contains("ACK"),
        "status shows the ACK:\n{}",
        status.stdout
    );
    // APPLIED: the config version `meshctl history` lists (`v7`), and
    // how long ago the proxy applied it (`2m ago`), not the raw snapshot
    // timestamp.
    let applied = control
        .proxies()
        .iter()
        .find(|p| p["node"] == "api-node-1")
        .and_then(|p| p["applied_config_version"].as_u64())
        .unwrap_or_else(|| panic!("no applied config version: {:?}", control.proxies()));
    assert_eq!(
        (cols[4], cols[6]),
        (format!("v{applied},").as_str(), "ago"),
        "status shows the applied config version (`meshctl history`'s VERSION), and how long ago, got {:?}:\n{}",
        &cols[4..7],
        status.stdout
    );
    assert!(
        cols[5].ends_with('s') || cols[5].ends_with('m'),
        "an age such as 3s or 2m: {:?}",
        cols[5]
    );
    assert!(
        line.contains("in "),
        "certificate expiry shown:\n{}",
        status.stdout
    );

    let eps = control.endpoints();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0]["service"], "api");
    assert_eq!(eps[0]["address"], proxy.inbound().to_string());
    assert_eq!(eps[0]["labels"]["version"], "v1");

    // The key never left the host; it and the certificate are private.
    for f in [member.key_path(), member.cert_path()] {
        assert_eq!(mode(&f), 0o600, "{} mode", f.display());
    }
    let cert = std::fs::read_to_string(member.cert_path()).expect("cert.pem");
    assert!(cert.contains("BEGIN CERTIFICATE"), "{cert}");
    assert!(
        member.snapshot_path().is_file(),
        "the applied snapshot is persisted"
    );
}

// ---- policy ----

#[test]
fn an_applied_route_steers_traffic_on_every_proxy() {
    let mesh = Mesh::start(Control::start(), 2);
    let version = mesh.control.apply(EXAMPLE);
    mesh.converge(version);

    for web in &mesh.webs {
        // First rule: the canary header goes to v2 only.
        let t = tally(web, 30, "/canary", &[("x-canary", "true")]);
        assert_eq!(
            count(&t, "api-v2"),
            30,
            "x-canary: true through {}: {t:?}",
            web.outbound()
        );

        // Second rule: 90/10 between v1 and v2.
        let t = tally(web, 200, "/split", &[]);
        let (v1, v2) = (count(&t, "api-v1"), count(&t, "api-v2"));
        assert_eq!(v1 + v2, 200, "{t:?}");
        assert!(
            (150..=195).contains(&v1) && v2 >= 5,
            "weights 90/10 over 200 requests through {}: v1 {v1}, v2 {v2}",
            web.outbound()
        );
    }
    assert!(mesh.v1.requests() > 0 && mesh.v2.requests() > 0);

    // A Route whose rules do not match every path: the rest is 404.
    let narrower = r#"
kind: Route
name: api-canary
service: api
rules:
  - match: { headers: { x-canary: "true" } }
    backends: [ { subset: { version: v2 } } ]
  - match: { pathPrefix: /app/ }
    backends: [ { subset: { version: v1 } } ]
"#;
    let version = mesh.control.apply(narrower);
    mesh.converge(version);
    for web in &mesh.webs {
        let mut c = web.outbound_client();
        let r = c.get("api", "/other");
        assert_eq!(r.status, 404, "{:?}", r.body_str());
        assert_eq!(
            r.header("coremesh-error")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("no route"),
            "{:?}",
            r.headers
        );
        let r = c.get("api", "/app/x");
        assert_eq!(r.status, 200, "{:?}", r.body_str());
        assert_eq!(r.header("x-origin"), Some("api-v1"));
    }
}

#[test]
fn a_route_timeout_answers_504_when_the_app_is_slower() {
    let mesh = Mesh::start(Control::start(), 1);
    let route = r#"kind: Service
name: api
---
kind: Route
name: api-slow
service: api
rules:
  - match: { pathPrefix: /delay/ }
    timeout: 300ms
    backends: [ { subset: { version: v1 } } ]
  - backends: [ { subset: { version: v1 } } ]
"#;
    let version = mesh.control.apply(route);
    mesh.converge(version);
    let web = &mesh.webs[0];
    let mut c = web.outbound_client();
    let start = std::time::Instant::now();
    let r = c.get("api", "/delay/2000");
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{:?}", r.body_str());
    assert_eq!(
        r.header("coremesh-error"),
        Some("upstream timeout"),
        "{:?}",
        r.headers
    );
    // The rule's 300 ms answered, not the app's 2 s (nor timeouts.request).
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    // A path the timeout does not cover waits for the app.
    let mut c = web.outbound_client();
    let r = c.get("api", "/slow-but-fine");
    assert_eq!(r.status, 200, "{:?}", r.body_str());
}

#[test]
fn a_per_caller_rate_limit_gives_each_caller_its_own_bucket() {
    let mesh = Mesh::start(Control::start(), 1);
    let ops_member = mesh.control.member("ops", "ops-1");
    let ops = ProxyBuilder::new("ops")
        .outbound()
        .control(&mesh.control.section(&ops_member).calls(&["api"]))
        .start();
    let version = mesh.control.apply(
        r#"kind: Service
name: api
---
kind: Resilience
service: api
rateLimit: { requestsPerSecond: 1, burst: 5, per: caller }
"#,
    );
    mesh.control.wait_applied(
        mesh.proxies() + 1,
        2,
        version,
        &["api"],
        Duration::from_secs(20),
    );
    // Each api proxy keeps a bucket per caller identity: web spends its
    // burst on both endpoints, and is then refused; ops still gets through.
    let statuses = |p: &Proxy, n: usize| -> Vec<u16> {
        let mut c = p.outbound_client();
        (0..n).map(|_| c.get("api", "/limited").status).collect()
    };
    let web = statuses(mesh.web(), 30);
    let refused = web.iter().filter(|&&s| s == 429).count();
    assert!(
        refused >= 15 && web.iter().all(|&s| s == 200 || s == 429),
        "web over its buckets (2 endpoints x burst 5) is refused: {web:?}"
    );
    let ops = statuses(&ops, 4);
    assert_eq!(ops, vec![200; 4], "ops has buckets of its own");
    let mut c = mesh.web().outbound_client();
    let r = c.get("api", "/limited");
    assert_eq!(r.status, 429, "web is still over its rate");
    assert_eq!(r.header("coremesh-error"), Some("rate limited"));
}

#[test]
fn meshctl_check_flags_certificates_close_to_expiry() {
    // Certificates of 30 minutes: every one is within check's default 1 h.
    let mesh = Mesh::start(
        ControlBuilder::new().arg("--cert-lifetime", "30m").start(),
        1,
    );
    let version = mesh.control.apply(EXAMPLE);
    mesh.converge(version);
    let out = mesh.control.meshctl(&["check"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let expiring: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL") && l.contains("certificate expires in"))
        .collect();
    assert_eq!(
        expiring.len(),
        mesh.proxies(),
        "one per proxy:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("ok    control is reachable"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("endpoints are healthy"),
        "{}",
        out.stdout
    );
    // Every proxy reported its clock, and they are all in step here.
    assert!(
        out.stdout.contains(&format!(
            "ok    clocks of {} proxies within 1.0s of control's",
            mesh.proxies()
        )),
        "{}",
        out.stdout
    );
    // With a tighter threshold nothing is flagged.
    let out = mesh.control.meshctl(&["check", "--cert-warn", "5m"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout.contains("the mesh looks healthy"),
        "{}",
        out.stdout
    );
}

#[test]
fn an_invalid_resource_is_rejected_with_where_and_why_and_nothing_changes() {
    let control = Control::start();
    let version = control.apply(EXAMPLE);
    let routes = control.get_json("routes");
    let services = control.get_json("services");
    let history = control.meshctl(&["history"]).ok().stdout;

    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "weight over the maximum",
            "kind: Service\nname: api\n---\nkind: Route\nname: api-canary\nservice: api\nrules:\n  - backends:\n      - { subset: { version: v1 }, weight: 100001 }\n",
            &["document 2", "route/api-canary", "rules[0].backends[0].weight", "100000"],
        ),
        (
            "a route for a service that does not exist",
            "kind: Route\nname: billing-route\nservice: billing\nrules:\n  - backends: [ {} ]\n",
            &["route/billing-route", "service", "billing"],
        ),
        (
            "a misspelt field",
            "kind: Route\nname: api-canary\nservice: api\nrules:\n  - backends: [ {} ]\n    retries: { attempts: 2, perTryTimout: 500ms }\n",
            &["document 1", "perTryTimout"],
        ),
        (
            "a path that is not absolute",
            "kind: Service\nname: api\n---\nkind: Route\nname: api-canary\nservice: api\nrules:\n  - match: { pathPrefix: app }\n    backends: [ {} ]\n",
            &["document 2", "rules[0].match.pathPrefix", "must start with '/'"],
        ),
    ];
    for (what, yaml, wanted) in cases {
        let out = control.try_apply(yaml);
        assert_eq!(
            out.code, 1,
            "{what}: meshctl apply should exit 1\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        for w in wanted {
            assert!(
                out.stderr.contains(w),
                "{what}: the error should mention {w:?}:\n{}",
                out.stderr
            );
        }
        assert!(
            out.stderr.lines().count() <= 3,
            "{what}: a short message:\n{}",
            out.stderr
        );
    }
    // Same through stdin.
    let out = control.meshctl_stdin(&["apply", "-f", "-"], "kind: Service\nname: Bad_Name\n");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("name"), "{}", out.stderr);

    assert_eq!(control.get_json("routes"), routes, "routes changed");
    // What `get -o yaml` prints applies back as is, changing nothing.
    let yaml = format!(
        "{}---\n{}",
        control
            .meshctl(&["get", "services", "-o", "yaml"])
            .ok()
            .stdout,
        control
            .meshctl(&["get", "routes", "-o", "yaml"])
            .ok()
            .stdout
    );
    let out = control.meshctl_stdin(&["apply", "-f", "-"], &yaml).ok();
    assert!(out.stdout.contains("unchanged"), "{}\n{yaml}", out.stdout);
    assert_eq!(control.get_json("services"), services, "services changed");
    assert_eq!(control.meshctl(&["history"]).ok().stdout, history);
    assert_eq!(control.config_version(), version);
}

// ---- control outages ----

#[test]
fn kill_9_of_control_keeps_traffic_flowing_and_a_restart_reconverges_without_tokens() {
    // The grace must outlast the proxies' reconnection so no endpoint is
    // withdrawn; held proxies get their snapshot when it ends, so it also
    // bounds the reconvergence. A proxy notices the restart with its next
    // packet (keep-alive every 1 s), or by idle timeout (3 s) if control
    // did not answer with a stateless reset, and reconnects in a fraction
    // of a second: 10 s is generous.
    let mut mesh = Mesh::start(ControlBuilder::new().grace("10s").start(), 1);
    let version = mesh.control.apply(EXAMPLE);
    mesh.converge(version);
    let routes = mesh.control.get_json("routes");
    let services = mesh.control.get_json("services");
    let history = mesh.control.meshctl(&["history"]).ok().stdout;
    let endpoints = mesh.control.endpoint_addrs("api");
    assert_eq!(endpoints.len(), 2);

    let load = Load::start(mesh.web().outbound());
    load.wait_more(50);

    mesh.control.kill9();
    let out = mesh.control.meshctl(&["status"]);
    assert_eq!(
        out.code, 2,
        "meshctl with control down exits 2: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("cannot reach control"),
        "{}",
        out.stderr
    );
    load.wait_more(100);
    let before = load.by_origin();

    // The proxies must come back with their certificates alone.
    for m in mesh.api_members.iter().chain(&mesh.web_members) {
        std::fs::remove_file(m.token_file()).expect("remove token file");
    }
    let skip = mesh.control.log_lines().len();
    let proxy_skips: Vec<usize> = mesh
        .apis
        .iter()
        .chain(&mesh.webs)
        .map(|p| p.log_lines().len())
        .collect();
    let restarted = Instant::now();
    mesh.control.restart();
    assert_eq!(
        mesh.control.get_json("routes"),
        routes,
        "the store lost routes"
    );
    assert_eq!(mesh.control.get_json("services"), services);
    assert_eq!(mesh.control.meshctl(&["history"]).ok().stdout, history);

    // The restarted control keeps its QUIC reset key (data dir), so it
    // answers the proxies' next packet on their old connections with a
    // stateless reset: they reconnect at once instead of waiting out their
    // idle timeout.
    for (p, skip) in mesh.apis.iter().chain(&mesh.webs).zip(proxy_skips) {
        let line = p.wait_for_log(skip, Duration::from_secs(30), |l| {
            l.contains("connection to control lost")
        });
        let line = line
            .unwrap_or_else(|| panic!("a proxy did not notice the restart:\n{}", p.log_tail(20)));
        assert!(
            line.contains("reset by peer"),
            "the proxy should learn of the restart from control's stateless reset: {line}"
        );
    }
    wait_for(Duration::from_secs(30), || {
        let connected = mesh
            .control
            .proxies()
            .iter()
            .filter(|p| p["connected"] == true)
            .count();
        (connected == mesh.proxies()).then_some(())
    })
    .expect("every proxy reconnects");
    // For the record (measured: ~1.8 s with the stateless reset, ~11.8 s
    // by idle timeout before control kept its key).
    eprintln!("reconnected {:?} after the restart", restarted.elapsed());
    // Still in the grace period: status shows what each proxy said it runs.
    if restarted.elapsed() < Duration::from_secs(8) {
        let status = mesh.control.meshctl(&["status"]).ok().stdout;
        assert!(
            status.contains("held: control's grace period") && status.contains("(as it said)"),
            "{status}"
        );
    }
    mesh.control
        .wait_converged(mesh.proxies(), 2, version, Duration::from_secs(45));
    eprintln!("reconverged {:?} after the restart", restarted.elapsed());
    assert_eq!(mesh.control.endpoint_addrs("api"), endpoints);
    assert!(
        !mesh.control.log_lines()[skip..]
            .iter()
            .any(|l| l.contains("proxy joined")),
        "no proxy should join again after a control restart"
    );
    load.wait_more(100);
    let after = load.by_origin();
    let (sent, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed across the control restart: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    // Both versions kept being used: no endpoint was withdrawn.
    for origin in ["api-v1", "api-v2"] {
        assert!(
            count(&after, origin) > count(&before, origin),
            "{origin} got no requests after the restart: before {before:?}, after {after:?}"
        );
    }
    // And the route still steers.
    let t = tally(mesh.web(), 20, "/after", &[("x-canary", "true")]);
    assert_eq!(count(&t, "api-v2"), 20, "{t:?}");
}

#[test]
fn a_proxy_restarted_while_control_is_down_serves_its_persisted_snapshot() {
    let mut mesh = Mesh::start(Control::start(), 1);
    let version = mesh.control.apply(EXAMPLE);
    mesh.converge(version);
    let web_member = &mesh.web_members[0];
    let snap = std::fs::read_to_string(web_member.snapshot_path()).expect("snapshot.json");
    assert!(
        snap.contains("api-canary"),
        "the persisted snapshot has the route: {snap}"
    );
    assert_eq!(mode(&web_member.snapshot_path()), 0o600);

    mesh.control.kill9();
    drop(mesh.webs.pop());
    std::fs::remove_file(web_member.token_file()).expect("remove token file");
    let web = web_sidecar(&mesh.control, web_member);
    assert!(
        web.wait_for_log(0, SOON, |l| l.contains("last good snapshot"))
            .is_some(),
        "the restarted proxy should say it serves its persisted snapshot"
    );

    let t = tally(&web, 20, "/canary", &[("x-canary", "true")]);
    assert_eq!(count(&t, "api-v2"), 20, "{t:?}");
    let t = tally(&web, 100, "/split", &[]);
    assert!(
        count(&t, "api-v1") >= 70 && count(&t, "api-v1") < 100,
        "the 90/10 split from the snapshot: {t:?}"
    );
}

// ---- lifecycle ----

#[test]
fn a_stopped_proxy_is_withdrawn_and_a_rolling_restart_fails_no_request() {
    let mut mesh = Mesh::start(Control::start(), 1);
    // No Route: the service balances across all its endpoints (round-robin,
    // so that 20 requests are sure to reach both; the default P2C-EWMA
    // favours whichever answered faster).
    let version = mesh.control.apply(ROUND_ROBIN_API);
    mesh.converge(version);
    let t = tally(mesh.web(), 20, "/both", &[]);
    assert!(count(&t, "api-v1") > 0 && count(&t, "api-v2") > 0, "{t:?}");

    let load = Load::start(mesh.web().outbound());
    load.wait_more(50);

    // Stop the v2 instance.
    let mut stopped = mesh.apis.pop().expect("v2 proxy");
    let gone = stopped.inbound();
    stopped.signal(libc::SIGTERM);
    let status = stopped
        .wait_exit(SOON)
        .expect("the proxy exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", stopped.log_tail(20));
    assert!(
        stopped.log_text().contains("deregistered"),
        "it deregistered before exiting:\n{}",
        stopped.log_tail(20)
    );
    assert!(
        !stopped.log_text().contains("reconnecting"),
        "a stopping proxy does not talk of reconnecting:\n{}",
        stopped.log_tail(20)
    );
    let left = wait_for(SOON, || {
        let eps = mesh.control.endpoint_addrs("api");
        (!eps.contains(&gone)).then_some(eps)
    })
    .expect("meshctl get endpoints still lists the stopped proxy");
    assert_eq!(left, vec![mesh.apis[0].inbound()]);
    let t = tally(mesh.web(), 20, "/one", &[]);
    assert_eq!(count(&t, "api-v1"), 20, "only v1 is left: {t:?}");
    load.wait_more(50);

    // Its replacement joins and takes traffic again.
    let member = mesh.control.member("api", "api-v2-b");
    mesh.apis
        .push(api_sidecar(&mesh.control, &member, &mesh.v2, "v2"));
    mesh.api_members.push(member);
    let before = mesh.v2.requests();
    mesh.converge(version);
    let reached = wait_for(SOON, || (mesh.v2.requests() > before + 5).then_some(()));
    load.wait_more(50);
    let (sent, failures) = load.finish();
    assert!(reached.is_some(), "the new v2 instance gets traffic");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during the rolling restart: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    drop(stopped);
}

#[test]
fn a_disconnected_proxy_is_listed_with_when_it_left_then_forgotten() {
    let control = ControlBuilder::new().arg("--forget-after", "4s").start();
    let mut mesh = Mesh::start(control, 0);
    let version = mesh.control.apply("kind: Service\nname: api\n");
    mesh.converge(version);

    let mut stopped = mesh.apis.pop().expect("v2 proxy");
    stopped.signal(libc::SIGTERM);
    stopped
        .wait_exit(SOON)
        .expect("the proxy exits after SIGTERM");
    let row_of = |control: &Control| {
        control
            .proxies()
            .into_iter()
            .find(|p| p["node"] == "api-v2-a")
    };
    let left = wait_for(SOON, || {
        row_of(&mesh.control).filter(|p| p["connected"] == false)
    })
    .expect("the stopped proxy is listed as disconnected");
    assert!(
        left["last_seen"].as_u64().is_some(),
        "a disconnected row says when the proxy was last seen: {left}"
    );
    let table = mesh.control.meshctl(&["status"]).ok().stdout;
    let line = row(&table, "api-v2-a").unwrap_or_else(|| panic!("no api-v2-a row:\n{table}"));
    assert!(line.contains(" no (left "), "{table}");
    assert!(
        !line.contains(" true ") && (line.contains("- (was true)") || line.contains(" - ")),
        "a proxy that left is not shown healthy: {table}"
    );

    // After --forget-after, the row goes; the connected proxy stays.
    let gone = wait_for(SOON, || row_of(&mesh.control).is_none().then_some(()));
    assert!(
        gone.is_some(),
        "control should forget a proxy disconnected for 4 s: {:?}",
        row_of(&mesh.control)
    );
    let nodes: Vec<serde_json::Value> = mesh
        .control
        .proxies()
        .iter()
        .map(|p| p["node"].clone())
        .collect();
    assert_eq!(nodes, ["api-v1-a"]);
}

#[test]
fn rollback_restores_the_earlier_routes_everywhere() {
    let mesh = Mesh::start(Control::start(), 2);
    let good = mesh.control.apply(EXAMPLE);
    mesh.converge(good);
    let routes_at_good = mesh.control.get_json("routes");

    let all_v1 = "kind: Route\nname: api-canary\nservice: api\nrules:\n  - backends: [ { subset: { version: v1 } } ]\n";
    let bad = mesh.control.apply(all_v1);
    assert!(bad > good);
    mesh.converge(bad);
    for web in &mesh.webs {
        let t = tally(web, 10, "/c", &[("x-canary", "true")]);
        assert_eq!(
            count(&t, "api-v1"),
            10,
            "the new route sends everything to v1: {t:?}"
        );
    }

    let out = mesh
        .control
        .meshctl(&["rollback", "--to", &good.to_string()])
        .ok();
    let restored = coremesh_e2e::control::version_in(&out.stdout).expect("a version");
    assert!(
        restored > bad,
        "a rollback is a new version: {}",
        out.stdout
    );
    assert!(out.stdout.contains("route/api-canary"), "{}", out.stdout);
    mesh.converge(restored);
    assert_eq!(mesh.control.get_json("routes"), routes_at_good);
    for web in &mesh.webs {
        let t = tally(web, 10, "/c", &[("x-canary", "true")]);
        assert_eq!(count(&t, "api-v2"), 10, "the canary rule is back: {t:?}");
    }
    let history = mesh.control.meshctl(&["history"]).ok().stdout;
    let last = row(&history, &format!("rollback to {good}"))
        .unwrap_or_else(|| panic!("history shows the rollback:\n{history}"));
    assert!(last.starts_with(&restored.to_string()), "{history}");

    // Deleting the Route: the service balances across all its endpoints.
    let out = mesh.control.meshctl(&["delete", "service", "api"]);
    assert_eq!(
        out.code, 1,
        "a Service with a Route cannot go: {}",
        out.stdout
    );
    assert!(out.stderr.contains("route/api-canary"), "{}", out.stderr);
    let out = mesh
        .control
        .meshctl(&["delete", "route", "api-canary"])
        .ok();
    let deleted = coremesh_e2e::control::version_in(&out.stdout).expect("a version");
    mesh.converge(deleted);
    assert_eq!(mesh.control.get_json("routes"), serde_json::json!([]));
    // Round-robin, so 20 requests surely reach both (P2C-EWMA, the
    // default, favours whichever answered faster).
    let rr = mesh
        .control
        .apply("kind: Resilience\nservice: api\nloadBalancer: round-robin\n");
    mesh.converge(rr);
    let t = tally(mesh.web(), 20, "/c", &[("x-canary", "true")]);
    assert!(
        count(&t, "api-v1") > 0 && count(&t, "api-v2") > 0,
        "without a Route both versions serve: {t:?}"
    );
}

/// Waits until `meshctl get proxies` shows `node` with `pred` true of its
/// status object; panics with the last status seen.
fn wait_proxy(
    control: &Control,
    node: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for(SOON, || {
        last = control
            .proxies()
            .into_iter()
            .find(|p| p["node"] == node)
            .unwrap_or_default();
        pred(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("{node} did not get to {what}; last status: {last}"))
}

#[test]
fn a_snapshot_the_proxy_cannot_apply_is_nacked_with_the_reason_and_the_last_good_policy_stays() {
    // A web sidecar that calls api (from control) and db, which its own
    // proxy.toml defines statically.
    let mut mesh = Mesh::start(Control::start(), 0);
    let db = Origin::start("db-static");
    let member = mesh.control.member("web", "web-db");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("db", &[db.addr()])
        .control(&mesh.control.section(&member).calls(&["api", "db"]))
        .start();
    mesh.web_members.push(member);
    mesh.webs.push(web);
    let good = mesh.control.apply(EXAMPLE);
    mesh.converge(good);
    let get_db = |web: &Proxy| {
        let r = web.outbound_client().get("db", "/db");
        assert_eq!(r.status, 200, "db through the web proxy: {r:?}");
        r.header("x-origin").unwrap_or_default().to_string()
    };
    assert_eq!(get_db(mesh.web()), "db-static");

    // Control now defines db too, and sends everything for api to v2.
    let conflict = "kind: Service\nname: db\n---\nkind: Route\nname: api-canary\nservice: api\nrules:\n  - backends: [ { subset: { version: v2 } } ]\n";
    let bad = mesh.control.apply(conflict);
    assert!(bad > good);
    let status = wait_proxy(&mesh.control, "web-db", "a NACK", |p| !p["nack"].is_null());
    let reason = status["nack"].as_str().unwrap_or_default();
    assert!(
        reason.contains("service \"db\" is defined both in")
            && reason.contains("proxy.toml [[services]] and by control; remove one of them"),
        "the NACK says what conflicts and what to do: {reason}"
    );
    assert_eq!(
        status["applied_config_version"], good,
        "the web proxy still runs the last good config: {status}"
    );
    // meshctl status shows the NACK and its reason on the web proxy's row.
    let table = mesh.control.meshctl(&["status"]).ok().stdout;
    let line = row(&table, "web-db").unwrap_or_else(|| panic!("no web-db row:\n{table}"));
    assert!(
        line.contains("NACK: version ") && line.contains("is defined both in"),
        "{table}"
    );
    // meshctl check flags it, with what to do, and exits 1.
    let out = mesh.control.meshctl(&["check"]);
    assert_eq!(out.code, 1, "check with a NACKing proxy:\n{}", out.stdout);
    let finding = out
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("web-db") && l.contains("NACK"))
        .unwrap_or_else(|| panic!("check names the NACKing proxy:\n{}", out.stdout));
    assert!(finding.contains("is defined both in"), "{finding}");
    assert!(
        out.stdout.contains("fix: fix the resource"),
        "{}",
        out.stdout
    );
    // The api proxies could apply it.
    for m in &mesh.api_members {
        wait_proxy(&mesh.control, &m.node, "an ACK of the new config", |p| {
            p["applied_config_version"] == bad && p["nack"].is_null()
        });
    }
    // Traffic goes on under the previous policy: the 90/10 split (the new
    // route would send nothing to v1), and db from proxy.toml.
    let t = tally(mesh.web(), 20, "/still", &[]);
    assert!(
        count(&t, "api-v1") > 0,
        "the NACKed route must not be in force: {t:?}"
    );
    assert_eq!(get_db(mesh.web()), "db-static");
    let config = mesh.web().admin_get("/config").json();
    assert!(
        config["control"]["last_nack"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("defined both")),
        "/config shows the last NACK: {}",
        config["control"]
    );

    // Without the conflict, the next snapshot is ACKed and in force.
    let out = mesh.control.meshctl(&["delete", "service", "db"]).ok();
    let fixed = coremesh_e2e::control::version_in(&out.stdout).expect("a version");
    mesh.converge(fixed);
    let out = mesh.control.meshctl(&["check", "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("check -o json: {e}:\n{}", out.stdout));
    assert_eq!(
        (out.code, &doc["ok"]),
        (0, &serde_json::Value::Bool(true)),
        "a converged mesh checks clean: {doc:#}"
    );
    let t = tally(mesh.web(), 10, "/fixed", &[]);
    assert_eq!(count(&t, "api-v2"), 10, "the new route is in force: {t:?}");
    assert_eq!(get_db(mesh.web()), "db-static");

    // The other way round: a reload of proxy.toml that defines a service
    // control defines is refused, and the running configuration stays.
    let web = mesh.web();
    let skip = web.log_lines().len();
    let api = mesh.apis[0].inbound();
    web.write_config(&web.builder().clone().service("api", &[api]).render());
    web.signal(libc::SIGHUP);
    let line = web.wait_for_log(skip, SOON, |l| l.contains("reload rejected"));
    let line = line.unwrap_or_else(|| panic!("no rejected reload:\n{}", web.log_tail(20)));
    assert!(
        line.contains("[[services]] \"api\": control defines this service too"),
        "{line}"
    );
    let t = tally(mesh.web(), 10, "/after-reload", &[]);
    assert_eq!(
        count(&t, "api-v2"),
        10,
        "control's route still applies: {t:?}"
    );
}

// ---- tokens ----

/// The token id: `cmjt1.<id>.<secret>.<fingerprint>`.
fn token_id(token: &str) -> &str {
    token.split('.').nth(1).expect("token id")
}

/// Starts an api sidecar that should not get in, and waits for its log to
/// say `why`.
fn refused(control: &Control, member: &Member, app: &Origin, why: &str) -> Proxy {
    let p = api_sidecar(control, member, app, "v1");
    let line = p.wait_for_log(0, SOON, |l| l.contains(why));
    assert!(
        line.is_some(),
        "the proxy's log should say {why:?}:\n{}",
        p.log_tail(20)
    );
    // A token control refused says how to get a new one, once.
    let line = line.unwrap_or_default();
    let hints = line.matches("meshctl token create").count();
    let refused_token = ["used up", "expired", "revoked"].contains(&why);
    assert_eq!(
        hints,
        usize::from(refused_token),
        "how to get a new token is said once: {line}"
    );
    assert!(
        !member.cert_path().exists(),
        "no certificate without a join"
    );
    p
}

#[test]
fn used_expired_and_revoked_tokens_are_refused_and_token_list_says_so() {
    let control = Control::start();
    let app = Origin::start("api-v1");

    let used = control.token("api", &["--uses", "1"]);
    let first = Member::new("api", "first");
    first.write_token(&used);
    let _first = api_sidecar(&control, &first, &app, "v1");
    control.wait_converged(1, 1, 0, SOON);

    let again = Member::new("api", "second");
    again.write_token(&used);
    let _p1 = refused(&control, &again, &app, "used up");

    let expired = control.token("api", &["--ttl", "1s"]);
    let shows_expired = wait_for(SOON, || {
        let list = control.meshctl(&["token", "list"]).ok().stdout;
        row(&list, token_id(&expired))
            .is_some_and(|r| r.contains("expired"))
            .then_some(())
    });
    assert!(
        shows_expired.is_some(),
        "token list never showed the 1 s token as expired"
    );
    let late = Member::new("api", "late");
    late.write_token(&expired);
    let _p2 = refused(&control, &late, &app, "expired");

    let revoked = control.token("api", &[]);
    let out = control
        .meshctl(&["token", "revoke", token_id(&revoked)])
        .ok();
    assert!(out.stdout.contains(token_id(&revoked)), "{}", out.stdout);
    let banned = Member::new("api", "banned");
    banned.write_token(&revoked);
    let _p3 = refused(&control, &banned, &app, "revoked");

    // Control says why too.
    for why in ["used up", "expired", "revoked"] {
        assert!(
            control.wait_for_log(0, SOON, |l| l.contains(why)).is_some(),
            "control's log should say {why:?}:\n{}",
            control.log_tail(20)
        );
    }

    let list = control.meshctl(&["token", "list"]).ok().stdout;
    for (token, state) in [
        (&used, "used up"),
        (&expired, "expired"),
        (&revoked, "revoked"),
    ] {
        let r = row(&list, token_id(token))
            .unwrap_or_else(|| panic!("token list lacks {}:\n{list}", token_id(token)));
        assert!(
            r.contains(state),
            "token {} should be {state}:\n{list}",
            token_id(token)
        );
    }
    let status = control.meshctl(&["status"]).ok().stdout;
    for node in ["second", "late", "banned"] {
        assert!(
            row(&status, node).is_none(),
            "{node} must not be in status:\n{status}"
        );
    }
    assert_eq!(control.endpoints().len(), 1);
    let unknown = control.meshctl(&["token", "revoke", "nosuchtoken"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
}

#[test]
fn a_token_for_another_control_is_refused_before_anything_is_sent() {
    let control = Control::start();
    let other = Control::start();
    let app = Origin::start("api-v1");
    let token = other.token("api", &[]);
    let member = Member::new("api", "misdirected");
    member.write_token(&token);
    let _p = refused(&control, &member, &app, "does not match");
    // The token was never presented: it is still unused at its own control.
    let list = other.meshctl(&["token", "list"]).ok().stdout;
    let r = row(&list, token_id(&token)).expect("listed");
    assert!(r.contains("active"), "{list}");
    assert!(control.proxies().is_empty());
}

#[test]
fn a_certificate_for_one_service_cannot_act_as_another() {
    let control = Control::start();
    let app = Origin::start("api-v1");
    let member = control.member("api", "api-1");
    let api = api_sidecar(&control, &member, &app, "v1");
    control.wait_converged(1, 1, 0, SOON);
    drop(api);

    // The same state_dir (api's certificate) under a proxy that says it is web.
    let impostor = ProxyBuilder::new("web")
        .inbound(app.addr())
        .control(&control.section(&member))
        .start();
    let line = impostor.wait_for_log(0, SOON, |l| l.contains("refused the session"));
    assert!(line.is_some(), "{}", impostor.log_tail(20));
    let status = control.meshctl(&["status"]).ok().stdout;
    assert!(
        !status.lines().skip(1).any(|l| l.starts_with("web")),
        "no web proxy may appear:\n{status}"
    );
    assert!(
        control.endpoints().iter().all(|e| e["service"] == "api"),
        "{:?}",
        control.endpoints()
    );
}

// ---- registration and health ----

/// An api sidecar whose app is checked with `GET path` every 200 ms (the
/// origin answers `/status/503` with 503, anything else with 200).
fn checked_sidecar(
    control: &Control,
    member: &Member,
    app: &Origin,
    version: &str,
    path: &str,
) -> Proxy {
    let section = control
        .section(member)
        .health("kind", "\"http\"")
        .health("path", &format!("{path:?}"))
        .health("interval", "\"200ms\"")
        .health("timeout", "\"1s\"");
    ProxyBuilder::new(&member.service)
        .inbound(app.addr())
        .labels(&[("version", version)])
        .control(&section)
        .start()
}

#[test]
fn unhealthy_endpoints_are_withdrawn_but_a_service_never_loses_all_of_them() {
    let control = Control::start();
    let version = control.apply("kind: Service\nname: api\n---\nkind: Service\nname: cache\n");
    let (v1, v2, cache) = (
        Origin::start("api-v1"),
        Origin::start("api-v2"),
        Origin::start("cache"),
    );
    let m1 = control.member("api", "api-v1-a");
    let m2 = control.member("api", "api-v2-a");
    let mc = control.member("cache", "cache-a");
    let _p1 = checked_sidecar(&control, &m1, &v1, "v1", "/healthz");
    let p2 = checked_sidecar(&control, &m2, &v2, "v2", "/status/503");
    let _pc = checked_sidecar(&control, &mc, &cache, "v1", "/status/503");
    let wm = control.member("web", "web-0");
    let web = ProxyBuilder::new("web")
        .outbound()
        .control(&control.section(&wm).calls(&["api", "cache"]))
        .start();

    // Health is reported with the heartbeats (every few seconds).
    let health = |service: &str, address: SocketAddr| {
        control
            .endpoints()
            .into_iter()
            .find(|e| e["service"] == service && e["address"] == address.to_string())
            .map(|e| e["healthy"].clone())
    };
    let seen = wait_for(Duration::from_secs(15), || {
        (health("api", p2.inbound()) == Some(false.into())
            && health("cache", _pc.inbound()) == Some(false.into()))
        .then_some(())
    });
    assert!(
        seen.is_some(),
        "meshctl get endpoints should show the failing apps unhealthy: {:?}",
        control.endpoints()
    );
    control.wait_converged(4, 3, version, SOON);
    let table = control.meshctl(&["get", "endpoints"]).ok().stdout;
    let r = row(&table, &p2.inbound().to_string()).expect("listed");
    assert!(r.contains("false"), "{table}");
    // Control says why, once per flip, naming the endpoint, and whether
    // callers still use it.
    let logged = |what: &str, address: SocketAddr| {
        control
            .log_lines()
            .into_iter()
            .any(|l| l.contains(what) && l.contains(&address.to_string()))
    };
    // (v2 may flip before v1 has registered, when it is still the only
    // endpoint of api: then it is kept at that moment.)
    assert!(
        (logged(
            "endpoint withdrawn: its app fails its health check",
            p2.inbound()
        ) || logged("endpoint unhealthy but kept", p2.inbound()))
            && logged("endpoint unhealthy but kept", _pc.inbound()),
        "{}",
        control.log_lines().join("\n")
    );

    // api: only the healthy v1 is used.
    let t = tally(&web, 20, "/healthy-only", &[]);
    assert_eq!(
        count(&t, "api-v1"),
        20,
        "the unhealthy v2 endpoint is withdrawn: {t:?}"
    );
    // cache: its only endpoint is unhealthy, and stays (fail open).
    let mut c = web.outbound_client();
    for _ in 0..5 {
        let r = c.get("cache", "/fail-open");
        assert_eq!(
            r.status,
            200,
            "{:?} {:?}",
            r.header("coremesh-error"),
            r.body_str()
        );
        assert_eq!(r.header("x-origin"), Some("cache"));
    }
}

#[test]
fn a_proxy_that_dies_without_a_word_is_removed_after_missed_heartbeats() {
    // Heartbeats come every 5 s; three seconds of grace after the start.
    let control = ControlBuilder::new()
        .heartbeat_timeout("8s")
        .grace("3s")
        .start();
    let mut mesh = Mesh::start(control, 1);
    let version = mesh.control.apply(ROUND_ROBIN_API);
    mesh.converge(version);
    let t = tally(mesh.web(), 20, "/both", &[]);
    assert!(count(&t, "api-v1") > 0 && count(&t, "api-v2") > 0, "{t:?}");

    let web_applied = |control: &Control| {
        let ps = control.proxies();
        let web = ps
            .iter()
            .find(|p| p["node"] == "web-0")
            .expect("web-0 listed");
        (
            web["applied_version"].as_u64(),
            web["sent_version"].as_u64(),
        )
    };
    let (before, _) = web_applied(&mesh.control);

    let dead = mesh.apis.pop().expect("v2 proxy");
    let gone = dead.inbound();
    drop(dead); // SIGKILL: no deregistration
    let left = wait_for(Duration::from_secs(20), || {
        let eps = mesh.control.endpoint_addrs("api");
        (!eps.contains(&gone)).then_some(eps)
    })
    .expect("the dead proxy's endpoint should expire after 8 s without heartbeats");
    assert_eq!(left, vec![mesh.apis[0].inbound()]);
    // The web proxy is sent the shorter endpoint list and applies it. (The
    // dead proxy's session may still count as connected until its QUIC idle
    // timeout, so this waits on web-0 alone.)
    let acked = wait_for(SOON, || {
        let (applied, sent) = web_applied(&mesh.control);
        (applied > before && applied == sent).then_some(())
    });
    assert!(acked.is_some(), "web-0 never applied a newer snapshot");
    let t = tally(mesh.web(), 20, "/one", &[]);
    assert_eq!(count(&t, "api-v1"), 20, "{t:?}");
}

#[test]
fn meshctl_exit_codes_tell_rejected_input_from_an_unreachable_control() {
    let control = Control::start();
    // 1: input rejected (by control, or on the command line).
    for args in [
        &["delete", "route", "nosuch"][..],
        &["rollback", "--to", "99"],
        &["token", "create", "--service", "Not_A_Name"],
        &["get", "nosuchkind"],
        &["nosuchcommand"],
    ] {
        let out = control.meshctl(args);
        assert_eq!(
            out.code, 1,
            "meshctl {args:?}: {}{}",
            out.stdout, out.stderr
        );
        assert!(!out.stderr.trim().is_empty(), "meshctl {args:?} says why");
    }
    // 2: nothing answers at --api.
    let unreachable = Command::new(coremesh_e2e::control::meshctl_bin())
        .args(["--api", &format!("https://{}", coremesh_e2e::unused_port())])
        .arg("--data-dir")
        .arg(control.data_dir())
        .arg("status")
        .output()
        .expect("run meshctl");
    assert_eq!(unreachable.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.contains("cannot reach control"), "{stderr}");
    // A wrong credential is refused (1), and says what to check.
    let other = coremesh_e2e::TempDir::new("cred");
    other.write("operator.credential", "00ff");
    let api_ca =
        std::fs::read_to_string(control.data_dir().join("api-ca.pem")).expect("api-ca.pem");
    other.write("api-ca.pem", &api_ca);
    let out = Command::new(coremesh_e2e::control::meshctl_bin())
        .args(["--api", &control.api_url(), "--data-dir"])
        .arg(other.path())
        .arg("status")
        .output()
        .expect("run meshctl");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("credential"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 90/10 split without retries: only failover within the try itself.
const SPLIT_NO_RETRIES: &str = r#"kind: Service
name: api
---
kind: Route
name: api-split
service: api
rules:
  - backends:
      - { subset: { version: v1 }, weight: 90 }
      - { subset: { version: v2 }, weight: 10 }
"#;

#[test]
fn a_subset_whose_only_endpoint_died_gives_its_share_to_the_other_at_once() {
    let mut mesh = Mesh::start(Control::start(), 1);
    let version = mesh.control.apply(SPLIT_NO_RETRIES);
    mesh.converge(version);
    let t = tally(mesh.web(), 50, "/", &[]);
    assert!(count(&t, "api-v1") > 0, "{t:?}");
    // kill -9 of api v1's sidecar, the only endpoint of subset v1. Control
    // still lists it (it withdraws an endpoint after missed heartbeats), so
    // the web proxy finds out by itself: the refused connection moves that
    // try to v2, and v1 is left out of the next picks.
    drop(mesh.apis.remove(0));
    let t = tally(mesh.web(), 100, "/", &[]);
    assert_eq!(count(&t, "api-v2"), 100, "{t:?}");
}

#[test]
fn a_dead_app_behind_a_live_sidecar_costs_no_idempotent_request() {
    let mut mesh = Mesh::start(Control::start(), 1);
    let version = mesh.control.apply(SPLIT_NO_RETRIES);
    mesh.converge(version);
    let t = tally(mesh.web(), 50, "/", &[]);
    assert!(count(&t, "api-v1") > 0, "{t:?}");
    // The v1 app dies; its sidecar lives on and answers 502 `upstream
    // connection refused`. The app never saw those requests: the web proxy
    // moves each to v2, and leaves v1 out of its next picks.
    let v1 = std::mem::replace(&mut mesh.v1, Origin::start("unused"));
    drop(v1);
    let t = tally(mesh.web(), 100, "/", &[]);
    assert_eq!(count(&t, "api-v2"), 100, "{t:?}");
}

#[test]
fn a_strict_split_never_moves_a_request_to_the_other_subset() {
    let mut mesh = Mesh::start(Control::start(), 1);
    let strict = SPLIT_NO_RETRIES.replace("  - backends:", "  - failover: strict\n    backends:");
    let version = mesh.control.apply(&strict);
    mesh.converge(version);
    drop(mesh.apis.remove(0));
    // Requests drawn for v1 (90%) fail: they may not cross to v2.
    let mut c = mesh.web().outbound_client();
    let (mut v2, mut failed) = (0, 0);
    for _ in 0..100 {
        let r = c.get("api", "/");
        match r.status {
            200 => {
                assert_eq!(r.header("x-origin"), Some("api-v2"));
                v2 += 1;
            }
            502 | 504 => failed += 1,
            s => panic!("answered {s}: {:?}", r.body_str()),
        }
    }
    assert!(failed > 50 && v2 > 0, "v2 {v2}, failed {failed}");
    // What meshctl shows is what was applied.
    let routes = mesh
        .control
        .meshctl(&["get", "routes", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(routes.contains("failover: strict"), "{routes}");
}

#[test]
fn an_app_cannot_speak_for_its_sidecar() {
    let mesh = Mesh::start(Control::start(), 1);
    let version = mesh.control.apply(SPLIT_NO_RETRIES);
    mesh.converge(version);
    // The app's own 502 with the sidecar's header: the header is dropped
    // on the way out, so the caller relays the app's answer as it is (no
    // move to another endpoint, nothing marked down).
    let mut c = mesh.web().outbound_client();
    for _ in 0..10 {
        let r = c.get("api", "/forged-error");
        assert_eq!(r.status, 502, "{:?}", r.body_str());
        assert_eq!(r.header("coremesh-error"), None, "{:?}", r.headers);
        assert!(r.header("x-origin").is_some(), "the app's own answer");
    }
    let t = tally(mesh.web(), 50, "/", &[]);
    assert!(count(&t, "api-v1") > 0, "v1 was not marked down: {t:?}");
}

#[test]
fn a_route_timeout_answers_504_while_the_app_is_still_busy() {
    let mesh = Mesh::start(Control::start(), 1);
    let route = "kind: Service\nname: api\n---\nkind: Route\nname: api-slow\nservice: api\nrules:\n  - match: { pathPrefix: /slow/ }\n    timeout: 300ms\n    backends: [ {} ]\n  - backends: [ {} ]\n";
    let version = mesh.control.apply(route);
    mesh.converge(version);
    // Every answer of the app now takes a second.
    mesh.v1.set_delay(Duration::from_secs(1));
    mesh.v2.set_delay(Duration::from_secs(1));
    let mut c = mesh.web().outbound_client();
    let r = c.get("api", "/slow/x");
    assert_eq!(r.status, 504, "{:?}", r.body_str());
    assert_eq!(r.header("coremesh-error"), Some("upstream timeout"));
    // The other rule has no timeout of its own: the second is waited for.
    let mut c = mesh.web().outbound_client();
    let r = c.get("api", "/other");
    assert_eq!(r.status, 200, "{:?}", r.body_str());
}
