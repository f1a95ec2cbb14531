//! The policy-cost scenarios of `compare` (issue 6, item 4): what coremesh
//! pays per request for carrying 100 Routes and a Resilience block, against
//! forwarding without them.
//!
//! Hypothesis: route matching (compiled once per snapshot, allocation-free
//! per request), weighted subset picks, P2C-EWMA balancing, the retry
//! budget, the circuit breaker, outlier detection and a rate limit that
//! never triggers cost no more CPU per request than plain forwarding,
//! beyond 5% plus the A/A noise band.
//!
//! The proxies run as a mesh, because Routes come only from
//! coremesh-control (`proxy.toml` takes `[[resilience]]` for static use,
//! but no routes), and a mesh hop is mutual TLS:
//!
//! ```text
//! load ─▶ web proxy [outbound] ─▶ mutual TLS ─▶ api proxy [inbound] ─▶ origin
//!              ▲                                     ▲
//!              └──── QUIC: join, snapshots ──────────┴──── coremesh-control
//! ```
//!
//! One control for the run (pinned with the origin and the load generator;
//! its CPU is not counted). Each target is its own pair of proxies, both
//! pinned to the proxy CPUs, and its CPU per request is both proxies
//! together. Targets per scenario: `coremesh` and `coremesh#2`, the A/A pair.
//!
//! - `policy-plain`: the api service (`api-plain`, `api-plain-2`) is a
//!   Service and nothing else: no Route, no Resilience. Its web proxy calls
//!   only it.
//! - `policy-full`: the api service (`api-full`, `api-full-2`) has a Route
//!   of five rules (exact path and method, path regex with a header, path
//!   prefix with a query parameter, a header, then the prefix the load's
//!   `/size/128` matches, with a timeout, retries and a 90/10 split over two
//!   label subsets that both select the one api proxy) and a Resilience
//!   (p2c-ewma, circuit breaker, outlier detection, retry budget, and a
//!   1,000,000 req/s rate limit on the api proxy's inbound side; no faults,
//!   no mirror, no active health checks). Its web proxy also calls 99 decoy
//!   services with a Route each, so it holds 100 Routes.
//!
//! Steps: start control on a fresh data directory, apply the resources
//! (written to `<out dir>/configs/policy.yaml`) through the operator API,
//! create a join token per proxy, start the api proxies then the web
//! proxies, wait until control reports every proxy connected with its last
//! snapshot ACKed and every api endpoint registered, then check each pair:
//! a request answers 200, the web proxy's applied snapshot holds the
//! expected Routes and Resilience, and (policy-full) a path no rule matches
//! answers 404, so the Route is in force.

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proxies::{self, file_label, Pin, ProbeError, Running, StartError};
use super::{log, Scenario, Target, TargetInfo, SMALL};
use crate::error_chain;
use crate::mesh::{self, create_dir, q, Control, ControlSpec, Member, MeshError};
use crate::operator::OperatorError;

/// Why the policy mesh could not run at all (control did not start, the
/// resources were refused, the mesh did not converge), or a step of
/// preparing one of its proxies failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("cannot write {}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("applying {}", path.display())]
    Apply {
        path: PathBuf,
        #[source]
        source: Box<OperatorError>,
    },
}

/// A check of a started pair that failed: the pair is skipped.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("GET {path} (Host: {host}) answered {status}, not 200")]
    Status {
        path: String,
        host: String,
        status: u16,
    },
    #[error("GET {path} (Host: {host}) failed")]
    Request {
        path: String,
        host: String,
        #[source]
        source: ProbeError,
    },
    #[error("the {side} proxy's applied snapshot")]
    Snapshot {
        side: &'static str,
        #[source]
        source: MeshError,
    },
    #[error("the web proxy's snapshot lists {endpoints} endpoints of {host}, not 1")]
    Endpoints { endpoints: usize, host: String },
    #[error("the policy did not arrive: the web proxy holds {routes} Routes (want {ROUTES}) and {resilience} Resilience ({host}'s: {has_own}); the api proxy's rate limit is {own_limit:?} (want {RATE_LIMIT})")]
    NotArrived {
        routes: usize,
        resilience: usize,
        host: String,
        has_own: bool,
        own_limit: Option<u32>,
    },
    #[error("GET {UNROUTED} answered {status}: the Route is not in force (no rule matches it: want 404)")]
    Unrouted { status: u16 },
    #[error("GET {UNROUTED}")]
    UnroutedRequest(#[source] ProbeError),
    #[error("plain forwarding should carry no policy, but the web proxy holds {routes} Routes and {resilience} Resilience")]
    NotPlain { routes: usize, resilience: usize },
}

/// Decoy services the policy-full web proxies also call, a Route each.
pub const DECOYS: usize = 99;
/// Routes a policy-full web proxy holds: the decoys' and its api's.
pub const ROUTES: usize = DECOYS + 1;
/// The rate limit of the api services in policy-full: far above what one
/// CPU can forward, so it never refuses a request.
pub const RATE_LIMIT: u32 = 1_000_000;
/// The path the load requests (the response is [`SMALL`] bytes).
fn load_path() -> String {
    format!("/size/{SMALL}")
}
/// A path no rule of the policy-full Route matches.
const UNROUTED: &str = "/unrouted";
/// How long the mesh may take to converge after the last proxy started.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// `coremesh` -> "", `coremesh#2` -> "-2": service names per target.
fn suffix(label: &str) -> String {
    match label.split_once('#') {
        Some((_, n)) => format!("-{n}"),
        None => String::new(),
    }
}

fn short(scenario: Scenario) -> &'static str {
    if scenario == Scenario::PolicyFull {
        "full"
    } else {
        "plain"
    }
}

/// The api service of `label` in `scenario`: `api-full`, `api-plain-2`.
pub fn api_service(scenario: Scenario, label: &str) -> String {
    format!("api-{}{}", short(scenario), suffix(label))
}

fn decoy(i: usize) -> String {
    format!("decoy-{i:02}")
}

/// What the web proxy of `label` in `scenario` calls.
fn calls(scenario: Scenario, label: &str) -> Vec<String> {
    let mut c = vec![api_service(scenario, label)];
    if scenario == Scenario::PolicyFull {
        c.extend((1..=DECOYS).map(decoy));
    }
    c
}

/// The Route of a policy-full api service: the load's `GET /size/128`
/// passes four rules that do not match (an exact path, a regex, a prefix,
/// a header) before the fifth.
fn api_route(service: &str) -> String {
    format!(
        r#"kind: Route
name: {service}
service: {service}
rules:
  - match: {{ path: /admin/reset, methods: [POST] }}
    backends: [ {{ subset: {{ version: v1 }} }} ]
  - match: {{ pathRegex: "/v[0-9]+/users/[^/]+", headers: {{ x-user: {{ present: true }} }} }}
    backends: [ {{ subset: {{ version: v1 }} }} ]
  - match: {{ pathPrefix: /internal/, query: {{ debug: "1" }} }}
    backends: [ {{ subset: {{ zone: a }} }} ]
  - match: {{ headers: {{ x-canary: "true" }} }}
    backends: [ {{ subset: {{ zone: a }} }} ]
  - match: {{ pathPrefix: /size/ }}
    timeout: 5s
    retries: {{ attempts: 2, perTryTimeout: 2s, on: [connect-failure, reset, gateway-error] }}
    backends:
      - {{ subset: {{ version: v1 }}, weight: 90 }}
      - {{ subset: {{ zone: a }}, weight: 10 }}
"#
    )
}

/// The Resilience of a policy-full api service: every block the issue's
/// benchmark names, with limits the load never reaches.
fn api_resilience(service: &str) -> String {
    format!(
        r#"kind: Resilience
service: {service}
loadBalancer: p2c-ewma
circuitBreaker: {{ maxConnections: 100000, maxPending: 100000, maxRequests: 100000 }}
outlierDetection: {{ consecutiveFailures: 5, baseEjection: 30s, maxEjectedPercent: 50 }}
retryBudget: {{ ratio: 0.25, minPerSecond: 20 }}
rateLimit: {{ requestsPerSecond: {RATE_LIMIT}, burst: 100000, per: service }}
"#
    )
}

/// A decoy's Service and Route (it has no endpoints; nothing calls it).
fn decoy_docs(name: &str) -> String {
    format!(
        r#"kind: Service
name: {name}
---
kind: Route
name: {name}
service: {name}
rules:
  - match: {{ headers: {{ x-canary: "true" }} }}
    backends: [ {{ subset: {{ version: v2 }} }} ]
  - match: {{ pathPrefix: /v1/ }}
    retries: {{ attempts: 1 }}
    backends:
      - {{ subset: {{ version: v1 }}, weight: 90 }}
      - {{ subset: {{ version: v2 }}, weight: 10 }}
"#
    )
}

/// Every resource of the run, for the targets `labels` of `scenarios`.
pub fn resources_yaml(scenarios: &[Scenario], labels: &[String]) -> String {
    let mut docs = Vec::new();
    for &sc in scenarios {
        for label in labels {
            let api = api_service(sc, label);
            docs.push(format!("kind: Service\nname: {api}\n"));
            if sc == Scenario::PolicyFull {
                docs.push(api_route(&api));
                docs.push(api_resilience(&api));
            }
        }
    }
    if scenarios.contains(&Scenario::PolicyFull) {
        docs.extend((1..=DECOYS).map(|i| decoy_docs(&decoy(i))));
    }
    docs.join("---\n")
}

/// The web (calling) proxy: one shard, an outbound listener, its policy
/// from control.
fn web_toml(scenario: Scenario, label: &str, control: SocketAddr, m: &Member) -> String {
    format!(
        "# coremesh-bench compare {}: the calling proxy of target {label}.\n\
         # One shard, outbound listener; services, routes and resilience from control.\n\
         [proxy]\n\
         service = \"web\"\n\
         cores = 1\n\
         admin = \"127.0.0.1:0\"\n\
         \n\
         [outbound]\n\
         listen = \"127.0.0.1:0\"\n\
         \n\
         {}",
        scenario.name(),
        m.control_table(control, Some(&calls(scenario, label)))
    )
}

/// The api (called) proxy: one shard, a mutual-TLS inbound listener in
/// front of the origin, labelled for both subsets of the Route.
fn api_toml(
    scenario: Scenario,
    label: &str,
    control: SocketAddr,
    m: &Member,
    origin: SocketAddr,
) -> String {
    format!(
        "# coremesh-bench compare {}: the called proxy of target {label}, in front of the origin.\n\
         # One shard, inbound listener (mutual TLS from control's CA); policy from control.\n\
         [proxy]\n\
         service = {}\n\
         cores = 1\n\
         admin = \"127.0.0.1:0\"\n\
         labels = {{ version = \"v1\", zone = \"a\" }}\n\
         \n\
         [inbound]\n\
         listen = \"127.0.0.1:0\"\n\
         app = {}\n\
         \n\
         {}",
        scenario.name(),
        q(&m.service),
        q(&origin.to_string()),
        m.control_table(control, None)
    )
}

/// The mesh of the policy scenarios, started and checked.
pub(super) struct Mesh {
    /// Stopped after the proxies (see [`Mesh::stop`]).
    pub control: Control,
    pub targets: Vec<(Scenario, Target)>,
    pub infos: Vec<TargetInfo>,
    pub notes: Vec<String>,
}

impl Mesh {
    /// Stops the proxies, then control (a proxy that loses control only
    /// logs it, but in that order nothing is logged at all).
    pub fn stop(&mut self) {
        for (_, t) in &mut self.targets {
            for r in &mut t.running {
                r.stop();
            }
        }
        self.control.running.stop();
    }
}

/// One target while it starts.
struct Pair {
    scenario: Scenario,
    label: String,
    web: Member,
    api: Member,
    web_run: Option<Running>,
    api_run: Option<Running>,
    info: TargetInfo,
}

/// What the mesh of the policy scenarios runs and where.
pub(super) struct MeshSpec<'a> {
    pub scenarios: &'a [Scenario],
    /// The targets: the coremesh runs (`coremesh`, `coremesh#2`).
    pub labels: &'a [String],
    pub proxy_bin: &'a Path,
    pub control_bin: &'a Path,
    pub origin: SocketAddr,
    pub out_dir: &'a Path,
    /// Where the proxies run.
    pub proxies: Pin<'a>,
    /// Where coremesh-control runs (with the origin and the load).
    pub control: Pin<'a>,
}

/// Starts control and a web/api pair per target label and scenario;
/// returns the pairs that answered their checks. A pair that fails is
/// skipped with a note; an error means no pair can run (control did not
/// start, the mesh did not converge).
pub(super) fn start(spec: &MeshSpec<'_>) -> Result<Mesh, PolicyError> {
    let run_dir = spec.out_dir.join("run");
    let configs = spec.out_dir.join("configs");
    create_dir(&configs)?;
    let control = mesh::start_control(ControlSpec {
        cmd: spec.control.command(spec.control_bin),
        bin: spec.control_bin,
        data_dir: &run_dir.join("control-data"),
        run_dir: &run_dir,
        listen: "127.0.0.1:0",
        api: "127.0.0.1:0",
    })?;
    log(&format!(
        "coremesh-control on quic={} api={}",
        control.quic, control.api
    ));
    let mut mesh = Mesh {
        control,
        targets: Vec::new(),
        infos: Vec::new(),
        notes: Vec::new(),
    };
    let version = apply_resources(&mut mesh, spec, &configs)?;
    let mut pairs = prepare_pairs(&mesh.control, spec, &run_dir)?;
    start_proxies(&mut pairs, &mesh.control, spec, &configs);
    let up: Vec<&Pair> = pairs.iter().filter(|p| p.web_run.is_some()).collect();
    converge(&mesh.control, &up, version)?;
    check_pairs(&mut mesh, pairs);
    Ok(mesh)
}

/// Writes the resources to `<configs>/policy.yaml` and applies them
/// through the operator API; the config version they made.
fn apply_resources(
    mesh: &mut Mesh,
    spec: &MeshSpec<'_>,
    configs: &Path,
) -> Result<u64, PolicyError> {
    let yaml = resources_yaml(spec.scenarios, spec.labels);
    let yaml_path = configs.join("policy.yaml");
    fs::write(&yaml_path, &yaml).map_err(|source| PolicyError::WriteFile {
        path: yaml_path.clone(),
        source,
    })?;
    let applied = mesh
        .control
        .apply(&yaml)
        .map_err(|source| PolicyError::Apply {
            path: yaml_path.clone(),
            source: Box::new(source),
        })?;
    log(&format!(
        "applied {} ({} resources): config version {}",
        yaml_path.display(),
        applied.changed.len(),
        applied.version
    ));
    mesh.notes.push(format!(
        "policy scenarios: resources applied to coremesh-control from {}",
        yaml_path.display()
    ));
    Ok(applied.version)
}

/// A fresh state directory and a join token for both proxies of every
/// pair, scenario by scenario.
fn prepare_pairs(
    control: &Control,
    spec: &MeshSpec<'_>,
    run_dir: &Path,
) -> Result<Vec<Pair>, PolicyError> {
    let proxy_bin = spec.proxy_bin;
    let mut pairs = Vec::new();
    for &scenario in spec.scenarios {
        for label in spec.labels {
            let name = format!("policy-{}-{}", short(scenario), file_label(label));
            let member = |side: &str, service: &str| -> Result<Member, MeshError> {
                let node = format!("{name}-{side}");
                Member::fresh(service, &node, run_dir.join(&node))
            };
            let web = member("web", "web")?;
            let api = member("api", &api_service(scenario, label))?;
            control.token(&web)?;
            control.token(&api)?;
            pairs.push(Pair {
                scenario,
                label: label.clone(),
                info: TargetInfo {
                    label: label.clone(),
                    kind: "coremesh".into(),
                    binary: Some(proxy_bin.display().to_string()),
                    version: proxies::version(proxy_bin, proxies::Kind::Coremesh),
                    config: None,
                    log: None,
                    topology: scenario.name().into(),
                    inbound_config: None,
                    inbound_log: None,
                    status: "ok".into(),
                    note: String::new(),
                },
                web,
                api,
                web_run: None,
                api_run: None,
            });
        }
    }
    Ok(pairs)
}

/// The api proxies first (their endpoints are registered by the time the
/// web proxies join), then the web proxy of every pair whose api proxy
/// started. One that does not start skips its pair.
fn start_proxies(pairs: &mut [Pair], control: &Control, spec: &MeshSpec<'_>, configs: &Path) {
    let (proxy_bin, pin) = (spec.proxy_bin, spec.proxies);
    for p in pairs.iter_mut() {
        let cfg = configs.join(format!("{}.toml", p.api.node));
        let text = api_toml(p.scenario, &p.label, control.quic, &p.api, spec.origin);
        p.info.inbound_config = Some(cfg.display().to_string());
        p.info.inbound_log = Some(p.api.dir.join("stderr.log").display().to_string());
        match write_and_start(proxy_bin, &cfg, &text, &p.api.dir, "inbound", pin) {
            Ok(r) => p.api_run = Some(r),
            Err(e) => skip(
                &mut p.info,
                format!("api proxy did not start: {}", error_chain(&e)),
            ),
        }
    }
    for p in pairs.iter_mut().filter(|p| p.api_run.is_some()) {
        let cfg = configs.join(format!("{}.toml", p.web.node));
        let text = web_toml(p.scenario, &p.label, control.quic, &p.web);
        p.info.config = Some(cfg.display().to_string());
        p.info.log = Some(p.web.dir.join("stderr.log").display().to_string());
        match write_and_start(proxy_bin, &cfg, &text, &p.web.dir, "outbound", pin) {
            Ok(r) => p.web_run = Some(r),
            Err(e) => skip(
                &mut p.info,
                format!("web proxy did not start: {}", error_chain(&e)),
            ),
        }
    }
}

/// Checks every started pair: the ones that pass become the mesh's
/// targets, the others are skipped with the reason.
fn check_pairs(mesh: &mut Mesh, pairs: Vec<Pair>) {
    for mut p in pairs {
        let (Some(web), Some(api)) = (p.web_run.take(), p.api_run.take()) else {
            mesh.infos.push(p.info);
            continue;
        };
        let host = api_service(p.scenario, &p.label);
        match check(&p, web.addr, &host) {
            Ok(note) => {
                log(&format!("{} {}: {note}", p.scenario.name(), p.label));
                mesh.notes
                    .push(format!("{} {}: {note}", p.scenario.name(), p.label));
                mesh.targets.push((
                    p.scenario,
                    Target {
                        label: p.label.clone(),
                        running: vec![web, api],
                        start: None,
                        host,
                    },
                ));
            }
            Err(e) => skip(&mut p.info, error_chain(&e)),
        }
        mesh.infos.push(p.info);
    }
}

fn skip(info: &mut TargetInfo, note: String) {
    log(&format!(
        "skipping {} ({}): {note}",
        info.label, info.topology
    ));
    info.status = "skipped".into();
    info.note = note;
}

fn write_and_start(
    bin: &Path,
    config: &Path,
    text: &str,
    dir: &Path,
    listener: &str,
    pin: Pin<'_>,
) -> Result<Running, StartError> {
    proxies::write_config(config, text)?;
    proxies::start_coremesh(
        bin,
        config.to_path_buf(),
        dir.join("stderr.log"),
        listener,
        pin,
    )
}

/// Waits until control lists every proxy of `pairs` as connected and
/// current at config version `version`, and every api proxy as an
/// endpoint ([`mesh::converge`]).
fn converge(control: &Control, pairs: &[&Pair], version: u64) -> Result<(), PolicyError> {
    let nodes: BTreeSet<&str> = pairs
        .iter()
        .flat_map(|p| [p.web.node.as_str(), p.api.node.as_str()])
        .collect();
    let apis: BTreeSet<&str> = pairs.iter().map(|p| p.api.node.as_str()).collect();
    let took = mesh::converge(control, &nodes, &apis, version, CONVERGE_TIMEOUT)?;
    log(&format!(
        "mesh converged in {:.1} s: {} proxies, {} api endpoints",
        took.as_secs_f64(),
        nodes.len(),
        apis.len()
    ));
    Ok(())
}

/// The checks of one pair; the note says what its proxies hold.
fn check(p: &Pair, web: SocketAddr, host: &str) -> Result<String, CheckError> {
    let path = load_path();
    match proxies::probe_host(web, &path, host) {
        Ok(200) => {}
        Ok(status) => {
            return Err(CheckError::Status {
                path,
                host: host.into(),
                status,
            })
        }
        Err(source) => {
            return Err(CheckError::Request {
                path,
                host: host.into(),
                source,
            })
        }
    }
    let snap = p.web.snapshot().map_err(|source| CheckError::Snapshot {
        side: "web",
        source,
    })?;
    let endpoints = snap
        .services
        .iter()
        .find(|s| s.name == host)
        .map_or(0, |s| s.endpoints.len());
    if endpoints != 1 {
        return Err(CheckError::Endpoints {
            endpoints,
            host: host.into(),
        });
    }
    let (routes, resilience) = (snap.routes.len(), snap.resilience.len());
    let api_snap = p.api.snapshot().map_err(|source| CheckError::Snapshot {
        side: "api",
        source,
    })?;
    let own_limit = api_snap
        .resilience
        .iter()
        .find(|r| r.service == host)
        .and_then(|r| r.rate_limit.as_ref())
        .map(|l| l.requests_per_second);
    if p.scenario == Scenario::PolicyFull {
        let has_own = snap.resilience.iter().any(|r| r.service == host);
        if routes != ROUTES || !has_own || own_limit != Some(RATE_LIMIT) {
            return Err(CheckError::NotArrived {
                routes,
                resilience,
                host: host.into(),
                has_own,
                own_limit,
            });
        }
        match proxies::probe_host(web, UNROUTED, host) {
            Ok(404) => {}
            Ok(status) => return Err(CheckError::Unrouted { status }),
            Err(e) => return Err(CheckError::UnroutedRequest(e)),
        }
    } else if routes != 0 || resilience != 0 || own_limit.is_some() {
        return Err(CheckError::NotPlain { routes, resilience });
    }
    Ok(format!(
        "web proxy holds {routes} Routes and {resilience} Resilience (snapshot {}, config version {}); api proxy's rate limit: {}",
        snap.version,
        snap.config_version,
        own_limit.map_or("none".into(), |l| format!("{l} req/s"))
    ))
}

#[cfg(test)]
mod tests;
