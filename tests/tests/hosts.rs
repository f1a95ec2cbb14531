//! The mesh spread over hosts: control, web, two api v1 instances and one
//! api v2 instance, each in its own network namespace with a real
//! (non-loopback) address, built by `coremesh_testnet`. The quickstart's
//! canary route and access policy; open-loop GETs from the web host; then a
//! fault: an app killed, a subset's only endpoint killed, a host cut off,
//! with control up or stopped.
//!
//! What each test asserts is what a user of web would see: which requests
//! failed, how long the faulty endpoint kept receiving (or delaying)
//! requests, and that the rest of the mesh kept working. The figures are
//! printed (`cargo test -- --nocapture`); the same faults are measured under
//! more load by `coremesh-bench failover`.
//!
//! Namespaces need root. Under CI (`CI=true`) a machine without them fails
//! these tests; elsewhere they are skipped with a message.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coremesh_e2e::control::{Member, MeshProxy};
use coremesh_e2e::openload::{LoadSpec, OpenLoad, Outcome};
use coremesh_e2e::util::under_ci;
use coremesh_e2e::{Control, ControlBuilder, Origin, Proxy, ProxyBuilder};
use coremesh_testnet::{Host, Net};

const HOSTS: [&str; 5] = ["control", "web", "api-v1-a", "api-v1-b", "api-v2"];
/// The api instances: (host and node name, version label).
const APIS: [(&str, &str); 3] = [("api-v1-a", "v1"), ("api-v1-b", "v1"), ("api-v2", "v2")];

/// The quickstart's mesh (scripts/demo/mesh.yaml) for api, without the
/// header rule: 90/10 over v1 and v2, a 2 s route timeout, two retries with
/// a 500 ms per-try timeout, web alone may call api.
const MESH: &str = r#"kind: Service
name: web
---
kind: Service
name: api
---
kind: Route
name: api-canary
service: api
rules:
  - match: { pathPrefix: / }
    timeout: 2s
    retries: { attempts: 2, perTryTimeout: 500ms, on: [connect-failure, reset, 5xx] }
    backends:
      - { subset: { version: v1 }, weight: 90 }
      - { subset: { version: v2 }, weight: 10 }
---
kind: AccessPolicy
name: api-access
service: api
default: deny
rules:
  - from: [web]
---
kind: Resilience
service: api
loadBalancer: p2c-ewma
outlierDetection: { consecutiveFailures: 5, baseEjection: 30s, maxEjectedPercent: 50 }
retryBudget: { ratio: 0.2, minPerSecond: 10 }
"#;

/// The test hosts, or `None` (skipped) where namespaces are unavailable
/// outside CI.
fn net() -> Option<Net> {
    match coremesh_testnet::available() {
        Ok(()) => Some(Net::new(&HOSTS).expect("build the test hosts")),
        Err(e) if under_ci() => panic!("{e}; CI must run the multi-host tests (they need root)"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// The running mesh. Fields drop in order: processes first, the hosts last.
struct HostMesh {
    control: Control,
    web: Proxy,
    apis: BTreeMap<&'static str, Proxy>,
    apps: BTreeMap<&'static str, Origin>,
    _members: Vec<Member>,
    net: Net,
}

impl HostMesh {
    fn start(net: Net, mesh_yaml: &str) -> HostMesh {
        let control = ControlBuilder::new().on_host(net.host("control")).start();
        let version = control.apply(mesh_yaml);
        let mut members = Vec::new();
        let (mut apps, mut apis) = (BTreeMap::new(), BTreeMap::new());
        for (node, version) in APIS {
            let host = net.host(node);
            let app = Origin::start_on(host, node);
            let member = control.member("api", node);
            let section = control
                .section(&member)
                .health("kind", "\"http\"")
                .health("path", "\"/\"")
                .health("interval", "\"500ms\"")
                .health("timeout", "\"400ms\"");
            let proxy = ProxyBuilder::new("api")
                .on_host(host)
                .inbound_on(SocketAddr::new(host.addr(), 0), app.addr())
                .labels(&[("version", version)])
                .control(&section)
                .start();
            apps.insert(node, app);
            apis.insert(node, proxy);
            members.push(member);
        }
        let member = control.member("web", "web");
        let web = ProxyBuilder::new("web")
            .on_host(net.host("web"))
            .outbound()
            .control(&control.section(&member).calls(&["api"]))
            .start();
        members.push(member);
        control.wait_converged(4, 3, version, Duration::from_secs(30));
        HostMesh {
            control,
            web,
            apis,
            apps,
            _members: members,
            net,
        }
    }

    fn host(&self, name: &str) -> &Host {
        self.net.host(name)
    }

    fn load(&self, per_second: f64) -> OpenLoad {
        OpenLoad::start(LoadSpec {
            netns: self.web.netns().map(str::to_string),
            target: self.web.outbound(),
            authority: "api".into(),
            path: "/".into(),
            per_second,
            workers: 32,
            retry_stale: false,
        })
    }
}

/// Samples a proxy's inbound request count every 50 ms, from inside its
/// host (its admin endpoint is on that host's loopback, reachable even
/// while the host's link is down).
struct Arrivals {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<(Instant, f64)>>>,
}

impl Arrivals {
    fn watch(proxy: &Proxy) -> Arrivals {
        let (ns, admin) = (proxy.netns().expect("on a host").to_string(), proxy.admin());
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            coremesh_testnet::enter_netns(&ns, || {
                let mut samples = Vec::new();
                while !st.load(Ordering::SeqCst) {
                    if let Some(n) = inbound_requests(admin) {
                        samples.push((Instant::now(), n));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                samples
            })
        });
        Arrivals {
            stop,
            thread: Some(thread),
        }
    }

    /// Every growth of the count after `from`: (time since `from`, how
    /// many requests arrived in that sample).
    fn after(mut self, from: Instant) -> Vec<(Duration, f64)> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("watched once");
        let samples = thread.join().expect("arrivals watcher");
        samples
            .windows(2)
            .filter(|p| p[1].1 > p[0].1 && p[1].0 > from)
            .map(|p| (p[1].0 - from, p[1].1 - p[0].1))
            .collect()
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn inbound_requests(admin: SocketAddr) -> Option<f64> {
    use coremesh_e2e::{Client, Metrics, Request};
    let mut c = Client::try_connect(admin).ok()?;
    c.set_read_timeout(Duration::from_secs(2));
    c.try_send(
        &Request::get("/metrics")
            .host("localhost")
            .header("Connection", "close")
            .to_bytes(),
    )
    .ok()?;
    let r = c.try_read_response().ok()?;
    let m = Metrics::parse(&r.body_str());
    Some(m.sum("coremesh_requests_total", &[("direction", "inbound")]))
}

/// The endpoint was left within `within` of the fault: later arrivals are
/// only the shard's probes after its backoff (one request each, at 1 s and
/// 3 s, re-tried elsewhere when the probe fails) until control withdraws
/// the endpoint; three at most in the 4 s watched.
fn assert_left_within(arrived: &[(Duration, f64)], within: Duration) {
    let late: f64 = arrived
        .iter()
        .filter(|(t, _)| *t > within)
        .map(|(_, n)| n)
        .sum();
    assert!(
        late <= 3.0,
        "requests kept arriving after {within:?}: {arrived:?}"
    );
}

/// What a fault cost, as seen from web.
struct Report {
    outcomes: Vec<Outcome>,
    fault_at: Instant,
}

impl Report {
    /// The report of a test that was skipped.
    fn empty() -> Report {
        Report {
            outcomes: Vec::new(),
            fault_at: Instant::now(),
        }
    }
    /// Requests meant to be sent at or after the fault.
    fn after(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.intended >= self.fault_at)
    }
    fn failed(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| !o.ok()).collect()
    }
    /// From the fault until the last request (meant to be sent after the
    /// fault) that took longer than `slow`: the time requests kept meeting
    /// the faulty endpoint.
    fn last_slow(&self, slow: Duration) -> Duration {
        self.after()
            .filter(|o| o.latency > slow)
            .map(|o| o.intended - self.fault_at)
            .max()
            .unwrap_or(Duration::ZERO)
    }
    fn by_origin(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for o in self.after() {
            if let Some(origin) = o.origin() {
                *m.entry(origin.to_string()).or_insert(0) += 1;
            }
        }
        m
    }
    fn print(&self, what: &str) {
        let failed: Vec<String> = self
            .failed()
            .iter()
            .map(|o| {
                format!(
                    "#{} {:?}: {:?}",
                    o.seq,
                    o.intended.checked_duration_since(self.fault_at),
                    o.result
                )
            })
            .collect();
        eprintln!(
            "{what}: {} requests, {} after the fault, failed {:?}; slow (>300 ms) until {:?} after; answered after the fault by {:?}",
            self.outcomes.len(),
            self.after().count(),
            failed,
            self.last_slow(Duration::from_millis(300)),
            self.by_origin(),
        );
    }
}

/// 2 s of load at 40 req/s, `fault`, then `after` of load.
fn under_load(mesh: &mut HostMesh, after: Duration, fault: impl FnOnce(&mut HostMesh)) -> Report {
    let load = mesh.load(40.0);
    std::thread::sleep(Duration::from_secs(2));
    let fault_at = Instant::now();
    fault(mesh);
    std::thread::sleep(after);
    Report {
        outcomes: load.stop(),
        fault_at,
    }
}

/// `node`'s app is killed under load (its sidecar lives on), with control
/// up or stopped first, the route's failover as given.
fn app_kill(node: &'static str, control_stopped: bool, strict: bool) -> Report {
    let Some(net) = net() else {
        return Report::empty();
    };
    let yaml = if strict {
        strict_mesh()
    } else {
        MESH.to_string()
    };
    let mut mesh = HostMesh::start(net, &yaml);
    if control_stopped {
        mesh.control.kill9();
    }
    let arrivals = Arrivals::watch(&mesh.apis[node]);
    let report = under_load(&mut mesh, Duration::from_secs(4), |m| {
        drop(m.apps.remove(node));
    });
    let arrived = arrivals.after(report.fault_at);
    let what =
        format!("{node}'s app killed (control stopped: {control_stopped}, strict: {strict})");
    report.print(&what);
    eprintln!("{what}: requests reaching its sidecar after the kill: {arrived:?}");
    let failed = report.failed();
    assert!(failed.is_empty(), "{what}: {failed:?}");
    assert_left_within(&arrived, Duration::from_secs(1));
    assert_eq!(report.by_origin().get(node), None, "{what}");
    report
}

/// `MESH` with the route's `failover: strict`.
fn strict_mesh() -> String {
    MESH.replace("    backends:", "    failover: strict\n    backends:")
}

fn link_down(control_stopped: bool, strict: bool) {
    let Some(net) = net() else { return };
    let yaml = if strict {
        strict_mesh()
    } else {
        MESH.to_string()
    };
    let mut mesh = HostMesh::start(net, &yaml);
    if control_stopped {
        mesh.control.kill9();
    }
    let report = under_load(&mut mesh, Duration::from_secs(6), |m| {
        m.host("api-v1-a").link_down().expect("link down");
    });
    let what = format!("link down (control stopped: {control_stopped}, strict: {strict})");
    report.print(&what);
    // Only requests in flight when the link went down may fail.
    for o in report.failed() {
        assert!(o.intended < report.fault_at, "{what}: {o:?}");
    }
    // Requests that met the dead host waited out a try (500 ms) before
    // moving on; within 2 s none meets it any more.
    let slow = report.last_slow(Duration::from_millis(300));
    assert!(
        slow < Duration::from_secs(2),
        "{what}: slow requests until {slow:?} after"
    );
}

/// The mesh without the route's timeout and retries: only the proxy's
/// defaults decide how long a request waits for a partitioned host.
fn mesh_without_route_limits() -> String {
    MESH.replace("    timeout: 2s\n", "").replace(
        "    retries: { attempts: 2, perTryTimeout: 500ms, on: [connect-failure, reset, 5xx] }\n",
        "",
    )
}

/// The tests, in a module of their own so scripts/test.sh can run them
/// apart from the rest (`--skip on_hosts::`).
mod on_hosts {
    use super::*;

    #[test]
    fn calls_across_hosts_hold_mutual_tls_authorization_and_the_split() {
        let Some(net) = net() else { return };
        let mesh = HostMesh::start(net, MESH);
        // Every endpoint registered with its host's own address.
        let addrs = mesh.control.endpoint_addrs("api");
        for (node, _) in APIS {
            let ip = mesh.host(node).addr();
            assert!(
                addrs.iter().any(|a| a.ip() == ip),
                "{node} ({ip}) not in {addrs:?}"
            );
        }
        let load = mesh.load(100.0);
        std::thread::sleep(Duration::from_secs(4));
        let outcomes = load.stop();
        assert!(
            outcomes.iter().all(Outcome::ok),
            "{:?}",
            outcomes.iter().find(|o| !o.ok())
        );
        let v2 = outcomes
            .iter()
            .filter(|o| o.origin() == Some("api-v2"))
            .count();
        let share = v2 as f64 / outcomes.len() as f64;
        assert!(
            (0.03..=0.2).contains(&share),
            "v2 got {v2} of {}",
            outcomes.len()
        );
        // The hops were mutual TLS: every api sidecar that served (p2c-ewma
        // may leave one v1 instance idle at this low rate) counted inbound
        // handshakes; and a caller that is not web is refused by policy.
        let mut served_total = 0.0;
        for (node, p) in &mesh.apis {
            let m = p.metrics();
            let served = m.sum("coremesh_requests_total", &[("direction", "inbound")]);
            let handshakes = m.sum("coremesh_tls_handshakes_total", &[("direction", "inbound")]);
            assert!(
                served == 0.0 || handshakes >= 1.0,
                "{node}: {served} {handshakes}"
            );
            served_total += served;
        }
        assert!(served_total >= outcomes.len() as f64);
        let db_member = mesh.control.member("db", "db");
        let db = ProxyBuilder::new("db")
            .on_host(mesh.host("control"))
            .outbound()
            .control(&mesh.control.section(&db_member).calls(&["api"]))
            .start();
        let r = coremesh_e2e::util::wait_for(Duration::from_secs(15), || {
            let r = db.outbound_client().get("api", "/");
            (r.status != 503 && r.status != 404).then_some(r)
        })
        .expect("db's proxy learns api's endpoints");
        assert_eq!(r.status, 403, "{:?}", r.body_str());
    }

    #[test]
    fn a_killed_app_costs_no_request_and_is_left_within_a_second() {
        app_kill("api-v1-a", false, false);
    }

    #[test]
    fn with_control_stopped_a_killed_app_is_still_left_at_once() {
        app_kill("api-v1-a", true, false);
    }

    #[test]
    fn a_strict_route_leaves_a_killed_app_within_its_subset() {
        let r = app_kill("api-v1-a", false, true);
        // v1's share stayed in v1: api-v1-b answered about 90%.
        if let Some(v1b) = r.by_origin().get("api-v1-b") {
            assert!(
                *v1b as f64 > 0.75 * r.after().count() as f64,
                "{:?}",
                r.by_origin()
            );
        }
    }

    #[test]
    fn a_subsets_only_endpoint_killed_spills_over_without_a_failure() {
        app_kill("api-v2", false, false);
    }

    #[test]
    fn with_control_stopped_a_subsets_only_endpoint_still_spills_over() {
        app_kill("api-v2", true, false);
    }

    #[test]
    fn a_host_cut_off_costs_only_requests_in_flight_and_is_left_within_two_seconds() {
        link_down(false, false);
    }

    #[test]
    fn a_strict_route_leaves_a_host_cut_off_within_its_subset() {
        link_down(false, true);
    }

    #[test]
    fn with_control_stopped_a_host_cut_off_is_still_left() {
        link_down(true, false);
    }

    #[test]
    fn a_loopback_registration_from_another_host_is_refused_and_shown() {
        let Some(net) = net() else { return };
        let mut mesh = HostMesh::start(net, MESH);
        // A second sidecar on api-v1-b's host, its inbound on that host's
        // loopback and no `advertise`: no other host could reach it there.
        let host = mesh.host("api-v1-b");
        let app = Origin::start_on(host, "api-v1-c");
        let member = mesh.control.member("api", "api-v1-c");
        let builder = ProxyBuilder::new("api")
            .on_host(host)
            .inbound(app.addr())
            .labels(&[("version", "v1")])
            .control(&mesh.control.section(&member));
        let (status, check) = builder.check();
        assert!(
            status.success() && check.contains("a loopback address"),
            "{check}"
        );
        let proxy = builder.start();
        let shown = coremesh_e2e::util::wait_for(Duration::from_secs(15), || {
            let out = mesh.control.meshctl(&["status"]).ok().stdout;
            out.contains("MISCONFIGURED").then_some(out)
        })
        .expect("meshctl status shows the misconfigured proxy");
        assert!(
            shown.contains("api-v1-c") && shown.contains("loopback"),
            "{shown}"
        );
        // Not an endpoint: callers never get its loopback address.
        let addrs = mesh.control.endpoint_addrs("api");
        assert!(addrs.iter().all(|a| !a.ip().is_loopback()), "{addrs:?}");
        assert_eq!(addrs.len(), 3, "{addrs:?}");
        // The proxy says so too, and does not claim to be registered.
        let log = proxy.log_text();
        assert!(
            log.contains("not registered: control at") && log.contains("refuses 127.0.0.1"),
            "{log}"
        );
        assert!(!log.contains("registered 127.0.0.1"), "{log}");
        mesh.apps.insert("api-v1-c", app);
        mesh.apis.insert("api-v1-c", proxy);
    }

    #[test]
    fn without_route_timeouts_a_host_cut_off_fails_in_seconds_not_at_the_request_timeout() {
        let Some(net) = net() else { return };
        let mut mesh = HostMesh::start(net, &mesh_without_route_limits());
        let report = under_load(&mut mesh, Duration::from_secs(6), |m| {
            m.host("api-v1-a").link_down().expect("link down");
        });
        report.print("link down, no route timeout");
        // Requests on connections to the dead host end once the kernel gives up
        // on them (keepalive, TCP_USER_TIMEOUT: 2 s), with no retry to hide
        // them; later ones go elsewhere.
        let (fault, limit) = (report.fault_at, Duration::from_secs(3));
        for o in report.failed() {
            let ended = o.intended + o.latency;
            assert!(ended < fault + limit + Duration::from_millis(500), "{o:?}");
            assert!(o.intended < fault + limit, "{o:?}");
        }
        let slow = report.last_slow(Duration::from_millis(300));
        assert!(slow < limit, "slow requests until {slow:?} after");
    }
}
