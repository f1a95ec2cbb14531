//! Traffic management and resilience (issue 6, section 3), with the numbers
//! a user would check: canary splits and header overrides, retries and
//! their budget, per-try timeouts, the circuit breaker, outlier ejection,
//! active health checks, P2C-EWMA balancing, the inbound rate limit,
//! mirroring and fault injection.
//!
//! ```text
//!  Client ──▶ web proxy [outbound] ══mTLS══▶ api proxy (version=v1) [inbound] ──▶ origin api-v1
//!  (threads)   Route, Resilience     ╠═════▶ api proxy (version=v2) [inbound] ──▶ origin api-v2
//!                                    ╚═════▶ api-shadow proxy (mirror tests)  ──▶ origin shadow
//!                 ▲                                  ▲
//!                 └──── QUIC: join, snapshots ───────┴──── coremesh-control ◀── meshctl apply
//! ```
//!
//! Every origin names itself in `x-origin` (its 503s too), so a response
//! says which endpoint answered it; the origins count what reached them
//! (requests, and requests in flight at once).
//!
//! Every scenario runs twice, with `cores = 1` and `cores = 2` on every
//! proxy of its mesh: what a Resilience block limits is per proxy, so a
//! two-shard proxy must behave as one (outbound features are the web
//! proxy's; the rate limit is the api proxy's).
//!
//! Percentages are compared in absolute points, as the issue states them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coremesh_e2e::util::wait_for;
use coremesh_e2e::{
    Client, Control, ControlBuilder, Member, MeshProxy, Origin, Proxy, ProxyBuilder, Request,
};

/// Bound on the mesh converging after a start or an apply.
const CONVERGE: Duration = Duration::from_secs(30);

// ---- the mesh ----

/// What a scenario's mesh has besides control and the web proxy.
struct MeshSpec {
    cores: usize,
    /// The web proxy's cores (default: `cores`).
    web_cores: Option<usize>,
    /// One api endpoint per version label.
    versions: &'static [&'static str],
    /// `[control.health]` of the api proxies: HTTP `GET /healthz` to their
    /// app at this interval (None: the default TCP check every 5 s).
    app_check: Option<&'static str>,
    /// An `api-shadow` service with one endpoint (mirroring).
    shadow: bool,
    /// The web proxy's `[upstream] multiplex`.
    multiplex: bool,
}

impl MeshSpec {
    fn new(cores: usize, versions: &'static [&'static str]) -> MeshSpec {
        MeshSpec {
            cores,
            web_cores: None,
            versions,
            app_check: None,
            shadow: false,
            multiplex: false,
        }
    }
}

/// Control, api endpoints (proxy in front of an origin each), optionally
/// the shadow, and one web proxy that calls api.
struct Mesh {
    control: Control,
    /// The api origins, in the order of `MeshSpec::versions`.
    apps: Vec<Origin>,
    apis: Vec<Proxy>,
    shadow: Option<(Origin, Proxy)>,
    web: Proxy,
    /// Their state dirs live as long as the proxies.
    _members: Vec<Member>,
}

impl Mesh {
    fn start(spec: MeshSpec) -> Mesh {
        let control = ControlBuilder::new().start();
        let mut members = Vec::new();
        let mut apps = Vec::new();
        let mut apis = Vec::new();
        for v in spec.versions {
            let app = Origin::start(&format!("api-{v}"));
            let m = control.member("api", &format!("api-{v}"));
            let mut section = control.section(&m);
            if let Some(interval) = spec.app_check {
                section = section
                    .health("kind", "\"http\"")
                    .health("path", "\"/healthz\"")
                    .health("interval", &format!("{interval:?}"))
                    .health("timeout", "\"1s\"");
            }
            apis.push(
                ProxyBuilder::new("api")
                    .cores(spec.cores)
                    .inbound(app.addr())
                    .labels(&[("version", v)])
                    .control(&section)
                    .start(),
            );
            apps.push(app);
            members.push(m);
        }
        let shadow = spec.shadow.then(|| {
            let app = Origin::start("shadow");
            let m = control.member("api-shadow", "api-shadow-1");
            let p = ProxyBuilder::new("api-shadow")
                .cores(spec.cores)
                .inbound(app.addr())
                .control(&control.section(&m))
                .start();
            members.push(m);
            (app, p)
        });
        let wm = control.member("web", "web-1");
        let web = ProxyBuilder::new("web")
            .cores(spec.web_cores.unwrap_or(spec.cores))
            .upstream("multiplex", &spec.multiplex.to_string())
            .outbound()
            .control(&control.section(&wm).calls(&["api"]))
            .start();
        members.push(wm);
        Mesh {
            control,
            apps,
            apis,
            shadow,
            web,
            _members: members,
        }
    }

    /// Applies the services and `policy` (Route, Resilience); waits until
    /// every proxy runs it with every endpoint registered.
    fn apply(&self, policy: &str) {
        let mut yaml = String::from("kind: Service\nname: api\n---\nkind: Service\nname: web\n");
        if self.shadow.is_some() {
            yaml += "---\nkind: Service\nname: api-shadow\n";
        }
        if !policy.trim().is_empty() {
            yaml += "---\n";
            yaml += policy;
        }
        let version = self.control.apply(&yaml);
        let proxies = self.apis.len() + usize::from(self.shadow.is_some()) + 1;
        let endpoints = self.apis.len() + usize::from(self.shadow.is_some());
        if policy.trim().is_empty() {
            // Only the Services: control sends a snapshot only to proxies
            // whose view changed, and web's may not have (it may already
            // run config 0 with api's endpoints); api's proxies must move.
            self.control
                .wait_applied(proxies, endpoints, version, &["api"], CONVERGE);
        } else {
            self.control
                .wait_converged(proxies, endpoints, version, CONVERGE);
        }
    }

    fn app(&self, version: &str) -> &Origin {
        self.apps
            .iter()
            .find(|o| o.name() == format!("api-{version}"))
            .unwrap_or_else(|| panic!("no api-{version} in this mesh"))
    }

    /// Requests that reached all the api apps.
    fn upstream_requests(&self) -> usize {
        self.apps.iter().map(Origin::requests).sum()
    }
}

// ---- clients ----

/// What the client saw of one request.
#[derive(Clone, Debug)]
struct Outcome {
    /// 0: no response (connect, write or read failed).
    status: u16,
    /// `x-origin`: which app answered (absent on the proxy's own answers).
    origin: Option<String>,
    /// `coremesh-error`.
    error: Option<String>,
    /// When it was sent, from the start of the load.
    at: Duration,
    took: Duration,
}

impl Outcome {
    fn from(&self, origin: &str) -> bool {
        self.origin.as_deref() == Some(origin)
    }
}

/// A keep-alive connection to a proxy's outbound listener that reconnects
/// after any failure or `Connection: close`.
struct Caller {
    addr: SocketAddr,
    conn: Option<Client>,
}

impl Caller {
    fn new(addr: SocketAddr) -> Caller {
        Caller { addr, conn: None }
    }

    fn send(&mut self, req: &Request, start: Instant) -> Outcome {
        let t0 = Instant::now();
        let at = t0 - start;
        let failed = |why: String| {
            eprintln!("request {} {}: {why}", req.method, req.target);
            Outcome {
                status: 0,
                origin: None,
                error: Some(why),
                at,
                took: t0.elapsed(),
            }
        };
        if self.conn.is_none() {
            match Client::try_connect(self.addr) {
                Ok(mut c) => {
                    c.set_read_timeout(Duration::from_secs(20));
                    self.conn = Some(c);
                }
                Err(e) => return failed(format!("connect: {e}")),
            }
        }
        let c = self.conn.as_mut().expect("connected");
        let res = c
            .try_send(&req.to_bytes())
            .and_then(|()| c.try_read_response());
        match res {
            Ok(r) => {
                if r.header_has_token("connection", "close") {
                    self.conn = None;
                }
                Outcome {
                    status: r.status,
                    origin: r.header("x-origin").map(str::to_string),
                    error: r.header("coremesh-error").map(str::to_string),
                    at,
                    took: t0.elapsed(),
                }
            }
            Err(e) => {
                self.conn = None;
                failed(e.to_string())
            }
        }
    }
}

/// `GET path` for service api.
fn get(path: &str) -> Request {
    Request::get(path).host("api")
}

/// Sends `total` requests (`make(i)`) through `proxy`'s outbound from
/// `threads` keep-alive connections, each waiting for its answer before
/// the next (closed loop). Outcomes in the order of `i`.
fn closed_loop(
    proxy: &Proxy,
    threads: usize,
    total: usize,
    make: impl Fn(usize) -> Request + Sync,
) -> Vec<Outcome> {
    let addr = proxy.outbound();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let mut all: Vec<(usize, Outcome)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut caller = Caller::new(addr);
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= total {
                            return mine;
                        }
                        mine.push((i, caller.send(&make(i), start)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("load thread"))
            .collect()
    });
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, o)| o).collect()
}

/// Like [`closed_loop`], but for `run` instead of a number of requests.
fn closed_loop_for(
    proxy: &Proxy,
    threads: usize,
    run: Duration,
    make: impl Fn(usize) -> Request + Sync,
) -> Vec<Outcome> {
    let addr = proxy.outbound();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut caller = Caller::new(addr);
                    let mut mine = Vec::new();
                    while start.elapsed() < run {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        mine.push(caller.send(&make(i), start));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("load thread"))
            .collect()
    })
}

/// Offers `rate` requests per second for `run` from `threads` connections,
/// on a fixed schedule whatever the answers (open loop; a thread that falls
/// behind sends at once until it catches up, and stops at `run` whatever is
/// left of its schedule).
fn open_loop(
    proxy: &Proxy,
    threads: usize,
    rate: f64,
    run: Duration,
    make: impl Fn(usize) -> Request + Sync,
) -> Vec<Outcome> {
    let addr = proxy.outbound();
    let start = Instant::now();
    let every = Duration::from_secs_f64(threads as f64 / rate);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let make = &make;
                s.spawn(move || {
                    let mut caller = Caller::new(addr);
                    let mut mine = Vec::new();
                    // Threads start evenly spread over one period.
                    let mut due = every.mul_f64(t as f64 / threads as f64);
                    let mut n = 0;
                    while due < run && start.elapsed() < run {
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            std::thread::sleep(wait);
                        }
                        mine.push(caller.send(&make(n * threads + t), start));
                        n += 1;
                        due += every;
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("load thread"))
            .collect()
    })
}

/// Outcomes counted by (status, origin or the proxy's error).
fn summary(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        let who = o
            .origin
            .clone()
            .or_else(|| o.error.clone())
            .unwrap_or_default();
        *m.entry(format!("{} {who}", o.status)).or_insert(0) += 1;
    }
    m
}

/// `part` of `whole`, in percent.
fn percent(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

/// Asserts `got` is `want` ± `points` (absolute percentage points).
fn assert_percent(what: &str, got: f64, want: f64, points: f64, detail: &BTreeMap<String, usize>) {
    assert!(
        (got - want).abs() <= points,
        "{what}: {got:.2}% where {want}% ± {points} points were expected; outcomes: {detail:?}"
    );
}

/// Runs each scenario (a fn taking `cores`) as two tests, `on_1_core::NAME`
/// and `on_2_cores::NAME`.
macro_rules! with_1_and_2_cores {
    ($($name:ident),* $(,)?) => {
        mod on_1_core {
            $( #[test] fn $name() { super::$name(1) } )*
        }
        mod on_2_cores {
            $( #[test] fn $name() { super::$name(2) } )*
        }
    };
}

with_1_and_2_cores!(
    canary_split_sends_10_percent_to_v2_and_the_header_override_always,
    retries_within_budget_hide_an_upstream_failing_one_request_in_three,
    the_retry_budget_bounds_attempts_against_an_upstream_that_always_fails,
    a_per_try_timeout_retries_on_the_healthy_endpoint,
    the_circuit_breaker_bounds_concurrent_upstream_requests,
    outlier_ejection_moves_traffic_off_a_failing_endpoint_and_back,
    an_endpoint_failing_its_health_check_stops_receiving_traffic,
    p2c_ewma_sends_the_slow_endpoint_under_10_percent,
    the_rate_limit_admits_100_rps,
    mirrored_requests_arrive_at_the_shadow_and_never_slow_the_primary,
    fault_percentages_hold_over_2000_requests,
);

/// All of a 2-core api proxy's traffic reaches one of its shards (one caller
/// thread through a 1-core web proxy: one pooled connection). The other
/// shard's share of the limit (at least its floor, 5 of the 100 rps) would
/// go unused; the shards' token pool hands it to the busy shard, so the
/// limit still admits its rate.
#[test]
fn a_rate_limit_gets_its_rate_when_one_shard_has_all_the_traffic() {
    let mut spec = MeshSpec::new(2, &["v1"]);
    spec.web_cores = Some(1);
    let mesh = Mesh::start(spec);
    let run = limited_run(&mesh, 2, 1, 200.0, Duration::from_secs(3), "one-shard");
    let (offered, admitted, t) = (run.offered, run.admitted, &run.summary);
    assert!(
        offered >= 150.0,
        "the load offered only {offered:.0} rps: {t:?}"
    );
    assert!(
        (97.0..=103.0).contains(&admitted),
        "a 100 rps limit admitted {admitted:.1} rps (offered {offered:.0} rps, api shards saw \
         {:?}); 100 ± 3 expected: {t:?}",
        run.per_shard
    );
    assert!(
        run.measured
            .iter()
            .all(|o| o.status == 200 || o.status == 429),
        "every request is admitted or limited: {t:?}"
    );
}

// ---- routing ----

const CANARY: &str = r#"kind: Route
name: api-canary
service: api
rules:
  - match: { headers: { x-canary: "true" } }
    backends: [ { subset: { version: v2 } } ]
  - backends:
      - { subset: { version: v1 }, weight: 90 }
      - { subset: { version: v2 }, weight: 10 }
"#;

fn canary_split_sends_10_percent_to_v2_and_the_header_override_always(cores: usize) {
    let mesh = Mesh::start(MeshSpec::new(cores, &["v1", "v2"]));
    mesh.apply(CANARY);

    let started = Instant::now();
    let split = closed_loop(&mesh.web, 8, 10_000, |i| get(&format!("/split/{i}")));
    let took = started.elapsed();
    let t = summary(&split);
    let ok = split.iter().filter(|o| o.status == 200).count();
    assert_eq!(ok, 10_000, "every request is answered by an app: {t:?}");
    let v2 = split.iter().filter(|o| o.from("api-v2")).count();
    assert_percent(
        "share of v2 under the 90/10 split",
        percent(v2, 10_000),
        10.0,
        2.0,
        &t,
    );
    eprintln!("10,000 requests in {took:?}: {t:?}");

    let canary = closed_loop(&mesh.web, 4, 500, |i| {
        get(&format!("/canary/{i}")).header("x-canary", "true")
    });
    let t = summary(&canary);
    assert!(
        canary.iter().all(|o| o.status == 200 && o.from("api-v2")),
        "x-canary: true always reaches v2: {t:?}"
    );
}

// ---- retries ----

/// Retries on 5xx with a short backoff; `budget` is the Resilience's
/// `retryBudget` line (or nothing for the default).
fn retrying(attempts: u32, budget: &str) -> String {
    format!(
        r#"kind: Route
name: api-retries
service: api
rules:
  - retries: {{ attempts: {attempts}, on: [5xx], backoff: {{ base: 1ms, max: 5ms }} }}
    backends: [ {{}} ]
---
kind: Resilience
service: api
loadBalancer: round-robin
{budget}
"#
    )
}

/// The app fails every third request it receives. One caller at a time, so
/// that pattern is what the proxy sees: a retry is the app's next request,
/// and succeeds. (With concurrent callers and backoff, other requests reach
/// the app between two tries of one request, the failures become close to
/// independent, and three tries fail together about (1/3)^3 = 3.7% of the
/// time whatever the proxy does: the issue's "fewer than 1%" is a claim
/// about this pattern.) The retries needed (one request in two, once the
/// app's failures are retried) are far above the default ratio of 0.2: the
/// budget's ratio of 1.0 is what lets them all through.
fn retries_within_budget_hide_an_upstream_failing_one_request_in_three(cores: usize) {
    let mesh = Mesh::start(MeshSpec::new(cores, &["v1"]));
    mesh.apply(&retrying(
        2,
        "retryBudget: { ratio: 1.0, minPerSecond: 10 }",
    ));
    let app = mesh.app("v1");
    app.fail_every(3);
    let n = 2_000;
    let out = closed_loop(&mesh.web, 1, n, |i| get(&format!("/flaky/{i}")));
    let t = summary(&out);
    let errors = out.iter().filter(|o| o.status != 200).count();
    assert!(
        percent(errors, n) < 1.0,
        "{errors} of {n} requests failed ({:.2}%), fewer than 1% expected: {t:?}",
        percent(errors, n)
    );
    // The app failed one request in three: 1.5 attempts per request.
    let attempts = app.requests();
    assert!(
        attempts * 10 >= n * 14,
        "{attempts} attempts for {n} requests: the app's failures should have been retried"
    );
}

fn the_retry_budget_bounds_attempts_against_an_upstream_that_always_fails(cores: usize) {
    let mesh = Mesh::start(MeshSpec::new(cores, &["v1", "v2"]));
    // The default budget: ratio 0.2, minPerSecond 10.
    mesh.apply(&retrying(3, ""));
    for app in &mesh.apps {
        app.set_failing(true);
    }
    let run = Duration::from_secs(10);
    let started = Instant::now();
    let out = closed_loop_for(&mesh.web, 4, run, |i| get(&format!("/down/{i}")));
    let seconds = started.elapsed().as_secs_f64();
    let t = summary(&out);
    let requests = out.len();
    assert!(
        out.iter().all(|o| o.status == 503),
        "the apps' 503s reach the client: {t:?}"
    );
    // Let the last attempts land before counting them.
    std::thread::sleep(Duration::from_millis(200));
    let attempts = mesh.upstream_requests();
    let (ratio, min_per_second) = (0.2, 10.0);
    let bound = (1.0 + ratio) * requests as f64 + min_per_second * seconds * 1.1;
    eprintln!(
        "{requests} requests in {seconds:.2}s made {attempts} upstream attempts (bound {bound:.0})"
    );
    assert!(
        attempts as f64 <= bound,
        "{attempts} upstream attempts for {requests} requests in {seconds:.2}s; the budget allows \
         at most (1 + {ratio}) x requests + {min_per_second}/s x seconds x 1.1 = {bound:.0}"
    );
    assert!(
        attempts > requests,
        "{attempts} attempts for {requests} requests: the budget should still allow some retries"
    );
}

fn a_per_try_timeout_retries_on_the_healthy_endpoint(cores: usize) {
    let mesh = Mesh::start(MeshSpec::new(cores, &["v1", "v2"]));
    mesh.apply(
        r#"kind: Route
name: api-per-try
service: api
rules:
  - timeout: 10s
    retries: { attempts: 1, perTryTimeout: 300ms, on: [gateway-error] }
    backends: [ {} ]
---
kind: Resilience
service: api
loadBalancer: round-robin
"#,
    );
    let slow = Duration::from_secs(3);
    mesh.app("v1").set_delay(slow);
    let n = 20;
    let out = closed_loop(&mesh.web, 1, n, |i| get(&format!("/per-try/{i}")));
    let t = summary(&out);
    for o in &out {
        assert!(
            o.status == 200 && o.from("api-v2"),
            "every request ends on the fast endpoint: {o:?}; all: {t:?}"
        );
        assert!(
            o.took < slow - Duration::from_millis(500),
            "a timed-out try does not wait for the slow endpoint: {o:?}"
        );
    }
    assert!(
        mesh.app("v1").requests() >= 1,
        "round-robin sends first tries to the slow endpoint too; none reached it"
    );
}

// ---- protection ----

fn the_circuit_breaker_bounds_concurrent_upstream_requests(cores: usize) {
    let mesh = Mesh::start(MeshSpec::new(cores, &["v1"]));
    let max_requests = 4;
    mesh.apply(&format!(
        "kind: Resilience\nservice: api\ncircuitBreaker: {{ maxRequests: {max_requests} }}\n"
    ));
    let app = mesh.app("v1");
    // Each admitted request holds its slot for a second; 24 callers each
    // try every 40 ms (a caller held up by an admitted request catches up
    // at once).
    let hold = Duration::from_secs(1);
    app.set_delay(hold);
    app.reset_peak_in_flight();
    let out = open_loop(&mesh.web, 24, 600.0, Duration::from_secs(4), |i| {
        get(&format!("/breaker/{i}"))
    });
    let t = summary(&out);
    let peak = app.peak_in_flight();
    let limit = max_requests + cores;
    eprintln!("peak concurrency at the app {peak} (limit {limit}): {t:?}");
    assert!(
        peak <= limit,
        "{peak} requests reached the app at once; maxRequests {max_requests} + one per shard \
         allows {limit}: {t:?}"
    );
    assert!(
        peak >= 2,
        "the app saw no concurrency at all (peak {peak}): {t:?}"
    );
    let overloaded = out
        .iter()
        .filter(|o| o.status == 503 && o.error.as_deref() == Some("overloaded"))
        .count();
    let ok = out.iter().filter(|o| o.status == 200).count();
    assert!(
        overloaded > 0,
        "24 callers over a limit of {max_requests} get 503 overloaded: {t:?}"
    );
    assert!(ok > 0, "requests within the limit get through: {t:?}");
    assert_eq!(ok + overloaded, out.len(), "nothing else happens: {t:?}");
    // An overflow is answered at once, not after waiting for a slot: all
    // but a few (a loaded machine) well within the app's hold time.
    let mut took: Vec<Duration> = out
        .iter()
        .filter(|o| o.error.as_deref() == Some("overloaded"))
        .map(|o| o.took)
        .collect();
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    assert!(
        p99 < hold / 4,
        "99% of the overflows should be answered within {:?}, not after waiting on the \
         app ({hold:?}); p99 {p99:?}",
        hold / 4
    );
}

/// One request every `pause` from one connection until `done` says so
/// (given the outcomes so far) or `limit` passes; returns the outcomes.
fn probe_until(
    proxy: &Proxy,
    pause: Duration,
    limit: Duration,
    mut done: impl FnMut(&[Outcome]) -> bool,
) -> (Vec<Outcome>, bool) {
    let mut caller = Caller::new(proxy.outbound());
    let start = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < limit {
        out.push(caller.send(&get(&format!("/probe/{}", out.len())), start));
        if done(&out) {
            return (out, true);
        }
        std::thread::sleep(pause);
    }
    (out, false)
}

/// Asserts the web proxy itself took the endpoint of `version` out of
/// rotation (its log says so), rather than control withdrawing it.
fn assert_out_of_rotation(mesh: &Mesh, version: &str) {
    let i = mesh
        .apps
        .iter()
        .position(|o| o.name() == format!("api-{version}"))
        .expect("version in the mesh");
    let addr = mesh.apis[i].inbound().to_string();
    let line = mesh.web.wait_for_log(0, Duration::from_secs(2), |l| {
        l.contains("out of rotation") && l.contains(&addr)
    });
    assert!(
        line.is_some(),
        "the web proxy never logged {addr} ({version}) out of rotation:\n{}",
        mesh.web.log_tail(20)
    );
}

/// Whether the last `n` outcomes all satisfy `f`.
fn last_n(out: &[Outcome], n: usize, f: impl Fn(&Outcome) -> bool) -> bool {
    out.len() >= n && out[out.len() - n..].iter().all(f)
}

fn outlier_ejection_moves_traffic_off_a_failing_endpoint_and_back(cores: usize) {
    let mesh = Mesh::start(MeshSpec::new(cores, &["v1", "v2"]));
    mesh.apply(
        r#"kind: Resilience
service: api
loadBalancer: round-robin
outlierDetection: { consecutiveFailures: 3, baseEjection: 2s, maxEjectedPercent: 50 }
"#,
    );
    let pause = Duration::from_millis(5);
    // Both endpoints serve.
    let (out, _) = probe_until(&mesh.web, pause, Duration::from_secs(1), |o| o.len() >= 20);
    let t = summary(&out);
    assert!(out.iter().all(|o| o.status == 200), "{t:?}");
    assert!(out.iter().any(|o| o.from("api-v2")), "{t:?}");

    // v2 fails everything: after a few failures it is ejected, and a long
    // run of requests is served by v1 alone.
    mesh.app("v2").set_failing(true);
    let (out, moved) = probe_until(&mesh.web, pause, Duration::from_secs(10), |o| {
        last_n(o, 100, |o| o.status == 200 && o.from("api-v1"))
    });
    let t = summary(&out);
    assert!(
        moved,
        "within 10 s, 100 requests in a row should go to v1 only: {t:?}\n{}",
        mesh.web.log_tail(20)
    );
    let failed = out.iter().filter(|o| o.status != 200).count();
    assert!(
        failed < out.len() / 2,
        "ejection keeps most requests off the failing endpoint: {t:?}"
    );
    assert_out_of_rotation(&mesh, "v2");

    // v2 recovers: once its ejection runs out it serves again.
    mesh.app("v2").set_failing(false);
    let recovered_at = Instant::now();
    let (out, back) = probe_until(&mesh.web, pause, Duration::from_secs(30), |o| {
        last_n(o, 20, |o| o.status == 200) && o.iter().rev().take(20).any(|o| o.from("api-v2"))
    });
    let t = summary(&out);
    assert!(
        back,
        "v2 should serve again after its ejection ends: {t:?}\n{}",
        mesh.web.log_tail(20)
    );
    eprintln!(
        "v2 back in rotation {:?} after it recovered",
        recovered_at.elapsed()
    );
    let (out, _) = probe_until(&mesh.web, pause, Duration::from_secs(5), |o| o.len() >= 40);
    let t = summary(&out);
    let v2 = out.iter().filter(|o| o.from("api-v2")).count();
    assert!(
        out.iter().all(|o| o.status == 200) && v2 >= 10,
        "round-robin over both again: {t:?}"
    );
}

fn an_endpoint_failing_its_health_check_stops_receiving_traffic(cores: usize) {
    let mut spec = MeshSpec::new(cores, &["v1", "v2"]);
    // The api proxies check their apps (GET /healthz) every 200 ms.
    spec.app_check = Some("200ms");
    let mesh = Mesh::start(spec);
    let (interval, unhealthy, healthy) = (Duration::from_millis(500), 2u32, 2u32);
    mesh.apply(&format!(
        r#"kind: Resilience
service: api
loadBalancer: round-robin
healthCheck: {{ interval: {}ms, timeout: 250ms, unhealthyThreshold: {unhealthy}, healthyThreshold: {healthy} }}
"#,
        interval.as_millis()
    ));
    let pause = Duration::from_millis(5);
    let (out, _) = probe_until(&mesh.web, pause, Duration::from_secs(1), |o| o.len() >= 20);
    let t = summary(&out);
    assert!(
        out.iter().all(|o| o.status == 200) && out.iter().any(|o| o.from("api-v2")),
        "{t:?}"
    );

    // v2's app fails (its health endpoint too): its proxy sees it within
    // 200 ms, the web proxy's probes within `unhealthy` intervals more.
    mesh.app("v2").set_failing(true);
    let (out, _) = probe_until(&mesh.web, pause, Duration::from_secs(8), |_| false);
    let t = summary(&out);
    let last_to_v2 = out.iter().rev().find(|o| o.from("api-v2")).map(|o| o.at);
    let expected = Duration::from_millis(200) + interval * (unhealthy + 1);
    let bound = expected + Duration::from_secs(2);
    eprintln!("last request to v2 {last_to_v2:?} after it failed (thresholds: {expected:?})");
    assert!(
        last_to_v2.is_none_or(|at| at <= bound),
        "v2 still got requests {last_to_v2:?} after its app failed; the health check \
         (interval {interval:?}, unhealthyThreshold {unhealthy}) should take it out within \
         about {expected:?}: {t:?}\n{}",
        mesh.web.log_tail(20)
    );
    let late = out.iter().filter(|o| o.at > bound).collect::<Vec<_>>();
    assert!(
        late.len() > 100 && late.iter().all(|o| o.status == 200 && o.from("api-v1")),
        "after that, v1 serves everything: {t:?}"
    );
    assert_out_of_rotation(&mesh, "v2");

    // Healthy again: it comes back after `healthy` good probes (or when
    // control hears of it; generous).
    mesh.app("v2").set_failing(false);
    let (out, back) = probe_until(&mesh.web, pause, Duration::from_secs(20), |o| {
        o.last()
            .is_some_and(|o| o.status == 200 && o.from("api-v2"))
    });
    assert!(back, "v2 never came back: {:?}", summary(&out));
}

// ---- balancing ----

fn p2c_ewma_sends_the_slow_endpoint_under_10_percent(cores: usize) {
    let mesh = Mesh::start(MeshSpec::new(cores, &["v1", "v2"]));
    // No Resilience: p2c-ewma is the default.
    mesh.apply("");
    mesh.app("v1").set_delay(Duration::from_millis(50));
    mesh.app("v2").set_delay(Duration::from_millis(1));
    let n = 1_000;
    let out = closed_loop(&mesh.web, 4, n, |i| get(&format!("/p2c/{i}")));
    let t = summary(&out);
    assert!(out.iter().all(|o| o.status == 200), "{t:?}");
    let slow = out.iter().filter(|o| o.from("api-v1")).count();
    eprintln!("the 50 ms endpoint got {:.1}%: {t:?}", percent(slow, n));
    assert!(
        percent(slow, n) < 10.0,
        "the 50 ms endpoint got {:.1}% of requests, less than 10% expected: {t:?}",
        percent(slow, n)
    );
}

// ---- rate limiting ----

fn the_rate_limit_admits_100_rps(cores: usize) {
    let mesh = Mesh::start(MeshSpec::new(cores, &["v1"]));
    let run = limited_run(&mesh, cores, 6, 250.0, Duration::from_secs(2), "limited");
    let (offered, admitted, t) = (run.offered, run.admitted, &run.summary);
    let measured = &run.measured;
    assert!(
        offered >= 200.0,
        "the load offered only {offered:.0} rps: {t:?}"
    );
    let limited: Vec<_> = measured.iter().filter(|o| o.status == 429).collect();
    assert!(
        (90.0..=110.0).contains(&admitted),
        "a 100 rps limit admitted {admitted:.1} rps (offered {offered:.0} rps); 100 ± 10 expected: {t:?}"
    );
    assert!(
        limited
            .iter()
            .all(|o| o.error.as_deref() == Some("rate limited")),
        "429s say why: {t:?}"
    );
    assert_eq!(
        measured.len(),
        measured.iter().filter(|o| o.status == 200).count() + limited.len(),
        "every request is admitted or limited: {t:?}"
    );
}

/// What a load against api's 100 rps limit (burst 20) saw over 10 s after
/// its warm-up.
struct LimitedRun {
    /// The outcomes after the warm-up.
    measured: Vec<Outcome>,
    summary: BTreeMap<String, usize>,
    /// Requests per second offered and admitted (200) after the warm-up.
    offered: f64,
    admitted: f64,
    /// Requests each of the api proxy's shards saw, warm-up included.
    per_shard: Vec<f64>,
}

/// Applies api's 100 rps limit, then offers `rate` rps from `threads` open
/// loop callers (paths `/{path}/N`) for `warm_up` and 10 s more, and counts.
fn limited_run(
    mesh: &Mesh,
    api_cores: usize,
    threads: usize,
    rate: f64,
    warm_up: Duration,
    path: &str,
) -> LimitedRun {
    mesh.apply(
        "kind: Resilience\nservice: api\nrateLimit: { requestsPerSecond: 100, burst: 20 }\n",
    );
    let window = Duration::from_secs(10);
    let out = open_loop(&mesh.web, threads, rate, warm_up + window, |i| {
        get(&format!("/{path}/{i}"))
    });
    let summary = summary(&out);
    let measured: Vec<Outcome> = out.into_iter().filter(|o| o.at >= warm_up).collect();
    let offered = measured.len() as f64 / window.as_secs_f64();
    let admitted =
        measured.iter().filter(|o| o.status == 200).count() as f64 / window.as_secs_f64();
    let metrics = mesh.apis[0].metrics();
    let per_shard: Vec<f64> = (0..api_cores)
        .map(|c| metrics.sum("coremesh_shard_requests_total", &[("core", &c.to_string())]))
        .collect();
    eprintln!(
        "offered {offered:.0} rps, admitted {admitted:.1} rps, api shards saw {per_shard:?}: \
         {summary:?}"
    );
    LimitedRun {
        measured,
        summary,
        offered,
        admitted,
        per_shard,
    }
}

// ---- mirroring and faults ----

fn mirrored_requests_arrive_at_the_shadow_and_never_slow_the_primary(cores: usize) {
    let mut spec = MeshSpec::new(cores, &["v1"]);
    spec.shadow = true;
    let mesh = Mesh::start(spec);
    mesh.apply("kind: Resilience\nservice: api\nmirror: { service: api-shadow, percent: 100 }\n");
    let (shadow, _) = mesh.shadow.as_ref().expect("shadow");

    let n = 50;
    let mut caller = Caller::new(mesh.web.outbound());
    let start = Instant::now();
    for i in 0..n {
        let req = Request::post(&format!("/mirror/{i}"))
            .host("api")
            .header("x-trace", &i.to_string())
            .body(format!("copy {i}"));
        let o = caller.send(&req, start);
        assert!(
            o.status == 200 && o.from("api-v1"),
            "the primary answers: {o:?}"
        );
    }
    let arrived = wait_for(Duration::from_secs(10), || {
        (shadow.requests() >= n).then_some(())
    });
    let got = shadow.received();
    assert!(
        arrived.is_some(),
        "{} of {n} mirrored requests reached the shadow: {:?}",
        got.len(),
        got.iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    for i in 0..n {
        let copy = got
            .iter()
            .find(|r| r.target == format!("/mirror/{i}"))
            .unwrap_or_else(|| panic!("no copy of /mirror/{i}"));
        assert_eq!(copy.method, "POST");
        assert_eq!(copy.header("x-trace"), Some(i.to_string().as_str()));
        assert_eq!(copy.body, format!("copy {i}").into_bytes());
        // The copy is part of the request's trace (the same trace id as
        // the primary's, from the traceparent web's proxy added).
        let primary = mesh
            .app("v1")
            .received()
            .into_iter()
            .find(|r| r.target == format!("/mirror/{i}"))
            .expect("the primary got it");
        let trace = |r: &coremesh_e2e::Received| {
            r.header("traceparent")
                .and_then(|t| t.get(3..35))
                .map(str::to_string)
        };
        assert!(trace(copy).is_some(), "{copy:?}");
        assert_eq!(trace(copy), trace(&primary));
    }
    assert_eq!(
        mesh.app("v1").requests(),
        n,
        "the primary got each request once"
    );

    // A slow shadow does not slow the primary.
    shadow.set_delay(Duration::from_secs(2));
    let out = closed_loop(&mesh.web, 1, 10, |i| {
        get(&format!("/while-shadow-slow/{i}"))
    });
    for o in &out {
        assert!(o.status == 200 && o.from("api-v1"), "{o:?}");
        assert!(
            o.took < Duration::from_secs(1),
            "the primary waited on the 2 s shadow: {o:?}"
        );
    }
}

fn fault_percentages_hold_over_2000_requests(cores: usize) {
    let mesh = Mesh::start(MeshSpec::new(cores, &["v1"]));
    let (abort_pct, delay_pct, delay) = (10.0, 20.0, Duration::from_millis(200));
    mesh.apply(&format!(
        r#"kind: Resilience
service: api
faults:
  abort: {{ percent: {abort_pct}, status: 503 }}
  delay: {{ percent: {delay_pct}, duration: {}ms }}
"#,
        delay.as_millis()
    ));
    let n = 2_000;
    let out = closed_loop(&mesh.web, 16, n, |i| get(&format!("/faults/{i}")));
    let t = summary(&out);
    let aborted = out
        .iter()
        .filter(|o| o.status == 503 && o.error.as_deref() == Some("fault injected"))
        .count();
    let ok = out.iter().filter(|o| o.status == 200).count();
    assert_eq!(aborted + ok, n, "requests are aborted or answered: {t:?}");
    assert_percent("aborted", percent(aborted, n), abort_pct, 3.0, &t);
    // A delayed request takes at least the delay; others take a few ms.
    let delayed = out.iter().filter(|o| o.took >= delay).count();
    eprintln!(
        "aborted {:.2}%, delayed {:.2}%: {t:?}",
        percent(aborted, n),
        percent(delayed, n)
    );
    assert_percent("delayed", percent(delayed, n), delay_pct, 3.0, &t);
    // An aborted request is never sent.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        mesh.app("v1").requests(),
        ok,
        "aborted requests never reach the app"
    );
}

/// kill -9 of one of two api proxies under load, with the multiplexed mesh
/// hop: the dropped h2 connection fails only the requests it had in
/// flight, and the route's retries send them to the other endpoint. No
/// idempotent request fails.
#[test]
fn a_killed_peer_costs_no_idempotent_request_over_the_multiplexed_hop() {
    let mesh = Mesh::start(MeshSpec {
        multiplex: true,
        ..MeshSpec::new(1, &["v1", "v2"])
    });
    mesh.apply(
        r#"kind: Route
name: api-retries
service: api
rules:
  - retries: { attempts: 3, on: [connect-failure, reset, 5xx], backoff: { base: 1ms, max: 5ms } }
    backends: [ {} ]
"#,
    );
    let out = std::thread::scope(|s| {
        let load = s.spawn(|| {
            closed_loop_for(&mesh.web, 8, Duration::from_secs(4), |i| {
                get(&format!("/delay/10/{i}"))
            })
        });
        std::thread::sleep(Duration::from_millis(1500));
        mesh.apis[0].signal(libc::SIGKILL);
        load.join().expect("load")
    });
    let t = summary(&out);
    let failed: Vec<&Outcome> = out.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?} ({t:?})",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let by = |v: &str| {
        out.iter()
            .filter(|o| o.origin.as_deref() == Some(v))
            .count()
    };
    assert!(by("api-v1") > 0 && by("api-v2") > 0, "{t:?}");
    let after: Vec<&Outcome> = out
        .iter()
        .filter(|o| o.at > Duration::from_millis(2500))
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|o| o.origin.as_deref() == Some("api-v2")),
        "after the kill, v2 answers: {t:?}"
    );
}
