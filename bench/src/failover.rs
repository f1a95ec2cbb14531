//! `coremesh-bench failover` (issue 15, item 7): how the mesh behaves when
//! an endpoint fails, measured from the client's side.
//!
//! The quickstart's topology, every process in its own network namespace
//! "host" with a real address (crate `coremesh-testnet`), so that a link
//! can go down:
//!
//! ```text
//!   host web ─────────────────────────────────────┐   host api-v1-a: proxy ─▶ origin
//!   load ─▶ web proxy [outbound] ─▶ mutual TLS ─▶ ├─▶ host api-v1-b: proxy ─▶ origin
//!                                                 └─▶ host api-v2:   proxy ─▶ origin
//!   host control: coremesh-control (QUIC: joins, snapshots, health reports)
//! ```
//!
//! The load is web's app: GETs (all idempotent) at a fixed rate, open loop,
//! to web's outbound listener on the web host's loopback, from a bench
//! thread that entered the web host. Each origin (`coremesh-bench origin
//! --instance NAME`, on its host's loopback) names itself in an
//! `x-instance` header, so every answer is attributed to the instance that
//! gave it. The resources ([`config::resources_yaml`], written to
//! `<out>/<phase>/mesh.yaml`):
//!
//! ```yaml
//! kind: Route            # api: 90/10 over v1 (api-v1-a, api-v1-b) and v2 (api-v2)
//! rules:
//!   - match: { pathPrefix: / }
//!     timeout: 2s
//!     retries: { attempts: 2, perTryTimeout: 500ms, on: [connect-failure, reset, 5xx] }
//!     failover: spill-over          # `strict` in the strict phases
//!     backends: [ { subset: { version: v1 }, weight: 90 }, { subset: { version: v2 }, weight: 10 } ]
//! ---
//! kind: Resilience       # api, as web's proxy applies it
//! loadBalancer: round-robin   # see below
//! outlierDetection: { consecutiveFailures: 5, baseEjection: 30s, maxEjectedPercent: 50 }
//! healthCheck: { interval: 1s, timeout: 500ms, unhealthyThreshold: 2, healthyThreshold: 2 }
//! retryBudget: { ratio: 0.2, minPerSecond: 10 }
//! ```
//!
//! plus the Services and an AccessPolicy letting web call api. Each api
//! proxy checks its origin (`[control.health]`, HTTP, every second).
//!
//! Round-robin, not the default p2c-ewma: with two endpoints in v1, both
//! are the two choices of every pick, so at this rate (nothing in flight)
//! the one with the lower latency estimate takes nearly all of v1's share
//! (measured: api-v1-a answered 1 of 691 baseline requests, api-v1-b 617),
//! and killing the other one would measure nothing.
//!
//! Phases, one per fault, each on a fresh mesh: control on a new data
//! directory, new proxies and origins (so no ejection, backoff or latency
//! estimate carries over from the previous fault; the n-th ejection in a
//! row lasts n x 30 s), started and checked healthy (converged in
//! control, and a second of load answered by all three instances without
//! a failure). Then `--baseline` of load, the fault, and `--duration` of
//! load (the fault window); then every process is stopped and a link
//! taken down comes back up.
//!
//! - `app-kill`: SIGKILL to api-v1-a's origin; its proxy stays up.
//! - `subset-kill`: SIGKILL to api-v2's origin, the only endpoint of v2
//!   (spill-over: v2's share should move to v1).
//! - `proxy-kill`: SIGKILL to api-v1-a's proxy.
//! - `link-down`: api-v1-a's host link goes down (a partition: packets are
//!   dropped silently).
//! - `control-down+app-kill`, `control-down+link-down`: the same, with
//!   control SIGKILLed 2 s before the baseline starts.
//! - `strict+app-kill`, `strict+subset-kill`: the first two with the
//!   Route's `failover: strict`.
//!
//! Per fault ([`analysis`]): the requests of the fault window (in flight at
//! the fault or intended after it) and those that failed (non-2xx or no
//! response); the time from the fault until the last try that went to the
//! faulty endpoint, from three sightings: an answer of the faulty instance,
//! a try to its proxy's address that failed (the web proxy's debug lines of
//! `coremesh_proxy::forward`, at the failure's time), and a request started
//! after the fault whose last try went there (the web proxy's access log);
//! the time of the last failure; and p99 latency (from the intended send
//! time) before the fault and in the window.

pub mod analysis;
pub mod config;
pub mod report;
pub mod topology;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coremesh_testnet::{Net, NetError, Unavailable};

use self::analysis::{FaultResult, Window};
use self::config::Failover;
use self::topology::{Bins, PhaseMesh};
use crate::compare::proxies::StartError;
use crate::load::{self, Outcome};
use crate::mesh::MeshError;
use crate::operator::OperatorError;
use crate::sys;

/// The hosts of the test network.
pub const HOSTS: [&str; 5] = ["control", "web", "api-v1-a", "api-v1-b", "api-v2"];
/// How long control is down before a control-down phase's baseline.
const CONTROL_DOWN_SETTLE: Duration = Duration::from_secs(2);
/// Load before the baseline is counted on (connections opening).
const LOAD_SETUP: Duration = Duration::from_millis(500);

/// Why the failover run stopped.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("the failover scenario needs network namespaces")]
    Unavailable(#[source] Unavailable),
    #[error("building the test network ({})", HOSTS.join(", "))]
    Net(#[source] NetError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("applying {}", path.display())]
    Apply {
        path: PathBuf,
        #[source]
        source: Box<OperatorError>,
    },
    #[error("{what} did not start")]
    Start {
        what: String,
        #[source]
        source: StartError,
    },
    #[error("the origin of {instance} printed no `listening on ADDR` line within 15 s; see {}", log.display())]
    NoOrigin { instance: String, log: PathBuf },
    #[error(
        "the mesh did not answer from every instance without failures within {timeout:?}: {last}"
    )]
    NotHealthy { timeout: Duration, last: String },
    #[error("cannot write {}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the log {}", path.display())]
    ReadLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("taking {host}'s link down")]
    Fault {
        host: String,
        #[source]
        source: NetError,
    },
    #[error("phase {phase}: the load through web failed")]
    Load {
        phase: String,
        #[source]
        source: std::io::Error,
    },
    #[error("phase {phase}")]
    Phase {
        phase: String,
        #[source]
        source: Box<FailoverError>,
    },
}

/// What fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    AppKill,
    SubsetKill,
    ProxyKill,
    LinkDown,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::AppKill => "app-kill",
            Fault::SubsetKill => "subset-kill",
            Fault::ProxyKill => "proxy-kill",
            Fault::LinkDown => "link-down",
        }
    }

    /// The instance it hits.
    pub fn instance(self) -> &'static str {
        match self {
            Fault::SubsetKill => "api-v2",
            _ => "api-v1-a",
        }
    }
}

/// One phase: a fault, with control up or down, under a failover mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub fault: Fault,
    pub control_down: bool,
    pub failover: Failover,
}

impl Case {
    const fn new(fault: Fault, control_down: bool, failover: Failover) -> Case {
        Case {
            fault,
            control_down,
            failover,
        }
    }

    /// Every phase, in the order they run.
    pub const ALL: [Case; 8] = [
        Case::new(Fault::AppKill, false, Failover::SpillOver),
        Case::new(Fault::SubsetKill, false, Failover::SpillOver),
        Case::new(Fault::ProxyKill, false, Failover::SpillOver),
        Case::new(Fault::LinkDown, false, Failover::SpillOver),
        Case::new(Fault::AppKill, true, Failover::SpillOver),
        Case::new(Fault::LinkDown, true, Failover::SpillOver),
        Case::new(Fault::AppKill, false, Failover::Strict),
        Case::new(Fault::SubsetKill, false, Failover::Strict),
    ];

    /// `app-kill`, `control-down+link-down`, `strict+subset-kill`.
    pub fn name(self) -> String {
        let mut n = String::new();
        if self.failover == Failover::Strict {
            n += "strict+";
        }
        if self.control_down {
            n += "control-down+";
        }
        n + self.fault.name()
    }

    pub fn parse(name: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// What `coremesh-bench failover` runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub cases: Vec<Case>,
    pub rate: f64,
    pub baseline: Duration,
    /// The fault window.
    pub duration: Duration,
    pub bins: Bins,
    pub out_dir: PathBuf,
    pub command: String,
}

pub(crate) fn log(msg: &str) {
    eprintln!("[failover] {msg}");
}

/// Runs every phase of `opts` and reports.
pub fn run(opts: &Options) -> Result<report::Report, FailoverError> {
    coremesh_testnet::available().map_err(FailoverError::Unavailable)?;
    sys::raise_nofile(65_536);
    let net = Net::new(&HOSTS).map_err(FailoverError::Net)?;
    let mut results = Vec::new();
    for &case in &opts.cases {
        log(&format!("phase {}", case.name()));
        let r = run_case(&net, opts, case).map_err(|source| FailoverError::Phase {
            phase: case.name(),
            source: Box::new(source),
        })?;
        log(&format!(
            "phase {}: {} of {} failed, last try to {} at {:?} ms, p99 {:.2} -> {:.2} ms",
            case.name(),
            r.during.failed,
            r.during.requests,
            r.faulty,
            r.last_to_faulty_ms,
            r.before.p99_ms,
            r.during.p99_ms
        ));
        results.push(r);
    }
    Ok(report::Report {
        command: opts.command.clone(),
        rate: opts.rate,
        baseline_s: opts.baseline.as_secs_f64(),
        window_s: opts.duration.as_secs_f64(),
        resources: config::resources_yaml(Failover::SpillOver),
        results,
    })
}

/// What the load of a phase saw, and when the fault came (monotonic and
/// wall clock).
struct Observed {
    outcomes: Vec<Outcome>,
    fault_mono: u64,
    fault_unix_ns: i128,
}

/// One phase: a fresh mesh, the load, the fault in its middle.
fn run_case(net: &Net, opts: &Options, case: Case) -> Result<FaultResult, FailoverError> {
    let dir = opts.out_dir.join(case.name());
    crate::mesh::fresh_dir(&dir)?;
    let mut mesh = topology::start(net, &opts.bins, case.failover, &dir)?;
    let mut notes = Vec::new();
    if case.control_down {
        mesh.kill_control();
        log("control SIGKILLed");
        std::thread::sleep(CONTROL_DOWN_SETTLE);
    }
    let faulty = case.fault.instance();
    let faulty_addr = topology::inbound_of(&mesh, faulty).to_string();
    let observed = load_and_fault(net, opts, case, &mut mesh);
    // Stops every process, so the web proxy writes out its access log.
    let web_dir = mesh.web.log_path.clone();
    let access_path = mesh.web_access_log.clone();
    drop(mesh);
    let observed = observed?;
    let window = Window {
        fault: observed.fault_mono,
        end: observed.fault_mono + opts.duration.as_nanos() as u64,
    };
    let (before, during) = analysis::split(&observed.outcomes, window);
    let stderr_log = read_log(&web_dir)?;
    let access_log = read_log(&access_path)?;
    let fault_ns = observed.fault_unix_ns;
    let answer = analysis::last_answer_by(&observed.outcomes, window, faulty);
    let failed = analysis::last_after(&analysis::failed_tries(&stderr_log, &faulty_addr), fault_ns);
    let last = analysis::last_after(&analysis::last_tries(&access_log, &faulty_addr), fault_ns);
    let seen = analysis::last_to_faulty(answer, failed, last);
    if before.failed > 0 {
        notes.push(format!(
            "{} failures before the fault: {:?}",
            before.failed, before.failures
        ));
    }
    Ok(FaultResult {
        fault: case.name(),
        faulty: faulty.to_string(),
        faulty_addr,
        failover: case.failover.name().to_string(),
        control_up: !case.control_down,
        last_failure_ms: analysis::last_failure(&observed.outcomes, window),
        before,
        during,
        last_to_faulty_ms: seen.map(|s| s.0),
        last_to_faulty_seen: seen.map(|s| s.1),
        window_s: opts.duration.as_secs_f64(),
        notes,
    })
}

/// Runs the load in the web host, injects the fault after the baseline,
/// and brings a link taken down back up once the load is over.
fn load_and_fault(
    net: &Net,
    opts: &Options,
    case: Case,
    mesh: &mut PhaseMesh,
) -> Result<Observed, FailoverError> {
    let total = LOAD_SETUP + opts.baseline + opts.duration;
    // Enough connections for every request of 2.5 s (the Route's 2 s
    // timeout and then some) to be in flight at once: open loop holds.
    let conns = ((opts.rate * 2.5).ceil() as usize).clamp(16, 4096);
    let cfg = topology::load_config(mesh.web.addr, opts.rate, total, conns);
    let web = net.host("web");
    let phase = case.name();
    std::thread::scope(|s| {
        let load = s.spawn(|| web.enter(|| load::run_with_timeline(&cfg)));
        std::thread::sleep(LOAD_SETUP + opts.baseline);
        let fault_mono = sys::now_ns();
        let fault_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let injected = mesh.inject(net, case.fault, case.fault.instance());
        log(&format!(
            "{} injected into {}",
            case.fault.name(),
            case.fault.instance()
        ));
        let res = load.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        // The link comes back up here (the guard drops), after the load.
        let _link = injected?;
        let (_, outcomes) = res.map_err(|source| FailoverError::Load { phase, source })?;
        Ok(Observed {
            outcomes,
            fault_mono,
            fault_unix_ns,
        })
    })
}

fn read_log(path: &std::path::Path) -> Result<String, FailoverError> {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|source| FailoverError::ReadLog {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests;
