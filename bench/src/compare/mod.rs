//! `coremesh-bench compare`: coremesh side by side with other proxies, in one
//! run, on one machine.
//!
//! Flow:
//! 1. Raise RLIMIT_NOFILE (children inherit it), split the CPUs: the proxies
//!    get `--proxy-cores` (default: the last CPU), the origin and the load
//!    generator get the others.
//! 2. Start the origin (`coremesh-bench origin`, pinned), then every proxy
//!    that is installed, each with a generated configuration written to
//!    `<out dir>/configs/` (see [`proxies`]). A proxy that is missing, fails
//!    to start, or fails the check request is skipped with a note. coremesh
//!    runs twice (`coremesh`, `coremesh#2`): the A/A pair shows the noise
//!    band. A glommio build of coremesh joins when its binary exists.
//!    The policy scenarios (`policy-plain`, `policy-full`) run through a
//!    mesh instead: coremesh-control and, per coremesh run and scenario, a
//!    calling and a called proxy with mutual TLS between them, with and
//!    without 100 Routes and a Resilience block (see [`policy`]).
//!    The mtls scenarios (`mtls`, `mtls-rate`) run through pairs of
//!    processes of each kind: an outbound proxy, mutual TLS 1.3, an inbound
//!    proxy in front of the origin, with harness-made certificates (see
//!    [`mtls`]). With `--app-unix` the origin also listens on a Unix
//!    socket, and a second pair of each kind (`coremesh-unix`, ...) reaches
//!    it there instead of over TCP.
//! 3. Rounds: for each round, for each scenario, for each target (`direct`,
//!    i.e. no proxy, then the proxies): run `coremesh-bench load --json` as a
//!    pinned child and read the proxy's CPU time from /proc around it. Targets
//!    alternate within every scenario (A B C A B C ...), so slow drift of the
//!    machine spreads over all of them instead of biasing one.
//!    The two policy scenarios swap places every other round (plain, full;
//!    full, plain; ...), so drift cannot favour the one that always runs
//!    first.
//!    The `burst` scenario starts a fresh instance of every one-hop proxy
//!    in front of a second origin that delays its responses, and reads the
//!    RSS before, during and after a burst of new connections (see
//!    [`burst`]).
//!    The HTTP/2 scenarios (`h2`, `h2-rate`, `h2-idle`; `grpc`,
//!    `grpc-rate`) run through h2c one-hop proxies and gRPC mesh pairs of
//!    their own, driven by the HTTP/2 load generator (see [`http2`]).
//! 4. Report medians with min-max spread and ratios against coremesh as
//!    markdown (stdout), JSON (`--out`) and SVG (`--svg-dir`).
//!
//! The fixed rate of the latency scenario, unless `--rate` is given, is a
//! quarter of the lowest small-response saturation throughput any proxy
//! reached in round 1 (for `mtls-rate`: of any pair's `mtls` throughput): below every proxy's saturation, and low enough that
//! the load generator and origin, which share their CPUs and pay a sleep and
//! a wake-up per request in open loop (~30 us each in a VM, measured here),
//! are not the queue being measured.

pub mod burst;
pub mod chart;
pub mod http2;
pub mod mtls;
pub mod otlp;
pub mod policy;
pub mod proxies;
pub mod report;
pub mod syscalls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error_chain;
use crate::load::{Errors, LoadReport};
use crate::schedule::LatencySummary;
use crate::sys;
use proxies::{Kind, Pin, ProbeError, Running, StartError};

/// Why a comparison stopped. (A proxy that fails to start or to answer
/// is not one: it is skipped with a note.)
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resolve {}", path.display())]
    Canonicalize {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find own binary")]
    OwnBinary(#[source] std::io::Error),
    #[error("the origin did not start")]
    OriginStart(#[source] StartError),
    #[error("cannot read the origin's address from its stdout")]
    OriginStdout(#[source] std::io::Error),
    #[error("origin printed {line:?}, not its address")]
    OriginAddress { line: String },
    #[error("the origin does not answer")]
    OriginSilent(#[source] ProbeError),
    #[error("cannot run load through {target}")]
    LoadSpawn {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("load through {target} failed: {status}")]
    LoadFailed {
        target: String,
        status: std::process::ExitStatus,
    },
    #[error("load through {target}: unreadable report")]
    LoadReport {
        target: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding the results")]
    Encode(#[source] serde_json::Error),
    #[error("cannot write {}", path.display())]
    WriteResults {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
}

/// Why one idle-connection measurement did not happen (noted, not fatal).
#[derive(Debug, thiserror::Error)]
pub enum IdleError {
    #[error("the fresh instance did not start")]
    Start(#[source] StartError),
    #[error("warm-up request")]
    Warmup(#[source] ProbeError),
    #[error("connection {index}")]
    Connection {
        index: usize,
        #[source]
        source: ProbeError,
    },
    #[error("connection {index}: status {status}")]
    Status { index: usize, status: u16 },
}

fn create_dir(path: &Path) -> Result<(), CompareError> {
    std::fs::create_dir_all(path).map_err(|source| CompareError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Command-line options of `compare`.
#[derive(Debug, Clone)]
pub struct Options {
    pub proxies: Vec<String>,
    pub rounds: usize,
    pub proxy_cores: Option<Vec<usize>>,
    pub out: PathBuf,
    pub svg_dir: Option<PathBuf>,
    pub coremesh_bin: PathBuf,
    pub coremesh_glommio_bin: PathBuf,
    /// coremesh-control, for the policy scenarios.
    pub control_bin: PathBuf,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub rate: Option<f64>,
    pub idle_conns: usize,
    /// The burst scenario: connections in the burst, and how long they
    /// then sit idle before RSS is read.
    pub burst_conns: usize,
    pub burst_idle: Duration,
    pub scenarios: Vec<Scenario>,
    /// Run coremesh a second time as `coremesh#2`.
    pub aa: bool,
    /// The mtls scenarios also run `<kind>-unix` pairs, whose inbound
    /// proxy reaches the origin over a Unix socket (see [`mtls`]).
    pub app_unix: bool,
    /// Count the proxies' system calls per request with `perf stat` (see
    /// [`syscalls`]); costs them a little CPU per system call.
    pub count_syscalls: bool,
    /// Sampling ratios of the `coremesh-trace-R` one-hop targets (tracing
    /// on, exporting to [`otlp`]'s sink); none by default.
    pub tracing: Vec<f64>,
    /// HTTP/2 scenarios: client connections, and concurrent streams on each.
    pub h2_connections: usize,
    pub h2_streams: usize,
    /// gRPC scenarios: a `grpc-timeout` (deadline) on every call; none by
    /// default.
    pub grpc_timeout: Option<Duration>,
    /// The command line, recorded in the results.
    pub command: String,
}

/// What one measurement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 128-byte responses over keep-alive, closed loop (saturation).
    Small,
    /// 128-byte responses over keep-alive at a fixed rate (latency).
    Rate,
    /// 16 KiB responses, saturation.
    #[serde(rename = "16k")]
    Body16k,
    /// 1 MiB responses, saturation.
    #[serde(rename = "1m")]
    Body1m,
    /// A new client connection per request, saturation.
    Newconn,
    /// RSS per idle keep-alive client connection.
    Idle,
    /// 128-byte responses through a mesh pair (web proxy -> mutual TLS ->
    /// api proxy) whose api service has no Route and no Resilience,
    /// saturation.
    #[serde(rename = "policy-plain")]
    PolicyPlain,
    /// The same with 100 Routes and a Resilience block (see [`policy`]).
    #[serde(rename = "policy-full")]
    PolicyFull,
    /// 128-byte responses through a two-hop pair of each proxy kind
    /// (outbound proxy -> mutual TLS 1.3 -> inbound proxy), saturation.
    Mtls,
    /// The same at a fixed rate (latency).
    #[serde(rename = "mtls-rate")]
    MtlsRate,
    /// h2c through one proxy (h2c to the origin), N connections x M
    /// streams, 128 B responses, saturation.
    H2,
    /// The same at a fixed rate (latency).
    #[serde(rename = "h2-rate")]
    H2Rate,
    /// RSS per idle h2c client connection of a one-hop proxy.
    #[serde(rename = "h2-idle")]
    H2Idle,
    /// RSS of a one-hop proxy before, during and after a burst of new
    /// connections, and per connection once they sit idle (see [`burst`]).
    Burst,
    /// Unary gRPC through the mutual-TLS mesh pair (h2 on every hop),
    /// saturation.
    Grpc,
    /// The same at a fixed rate (latency).
    #[serde(rename = "grpc-rate")]
    GrpcRate,
}

impl Scenario {
    pub const ALL: [Scenario; 16] = [
        Scenario::Small,
        Scenario::Rate,
        Scenario::Body16k,
        Scenario::Body1m,
        Scenario::Newconn,
        Scenario::Idle,
        Scenario::PolicyPlain,
        Scenario::PolicyFull,
        Scenario::Mtls,
        Scenario::MtlsRate,
        Scenario::H2,
        Scenario::H2Rate,
        Scenario::H2Idle,
        Scenario::Burst,
        Scenario::Grpc,
        Scenario::GrpcRate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Small => "small",
            Scenario::Rate => "rate",
            Scenario::Body16k => "16k",
            Scenario::Body1m => "1m",
            Scenario::Newconn => "newconn",
            Scenario::Idle => "idle",
            Scenario::PolicyPlain => "policy-plain",
            Scenario::PolicyFull => "policy-full",
            Scenario::Mtls => "mtls",
            Scenario::MtlsRate => "mtls-rate",
            Scenario::H2 => "h2",
            Scenario::H2Rate => "h2-rate",
            Scenario::H2Idle => "h2-idle",
            Scenario::Burst => "burst",
            Scenario::Grpc => "grpc",
            Scenario::GrpcRate => "grpc-rate",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Through the mesh pairs of [`policy`] rather than one-hop proxies.
    pub fn is_policy(self) -> bool {
        matches!(self, Scenario::PolicyPlain | Scenario::PolicyFull)
    }

    /// Through the two-hop mutual TLS pairs of [`mtls`].
    pub fn is_mtls(self) -> bool {
        matches!(self, Scenario::Mtls | Scenario::MtlsRate)
    }

    /// h2c load through the one-hop HTTP/2 proxies of [`http2`].
    pub fn is_h2(self) -> bool {
        matches!(self, Scenario::H2 | Scenario::H2Rate)
    }

    /// gRPC load through the pairs of [`http2`].
    pub fn is_grpc(self) -> bool {
        matches!(self, Scenario::Grpc | Scenario::GrpcRate)
    }

    /// Any of the HTTP/2 scenarios.
    pub fn is_http2(self) -> bool {
        self.is_h2() || self.is_grpc() || self == Scenario::H2Idle
    }

    /// Through the one-hop (HTTP/1.1) proxies.
    pub fn is_one_hop(self) -> bool {
        !self.is_policy() && !self.is_mtls() && !self.is_http2()
    }

    /// The fixed-rate scenario's saturation twin, whose round-1 throughput
    /// sets its rate.
    pub fn saturation(self) -> Option<Scenario> {
        match self {
            Scenario::Rate => Some(Scenario::Small),
            Scenario::MtlsRate => Some(Scenario::Mtls),
            Scenario::H2Rate => Some(Scenario::H2),
            Scenario::GrpcRate => Some(Scenario::Grpc),
            _ => None,
        }
    }

    /// Response body size.
    fn body(self) -> usize {
        match self {
            Scenario::Body16k => 16 * 1024,
            Scenario::Body1m => 1024 * 1024,
            _ => SMALL,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Small => "128 B responses, keep-alive, max throughput",
            Scenario::Rate => "128 B responses, keep-alive, fixed rate",
            Scenario::Body16k => "16 KiB responses, keep-alive, max throughput",
            Scenario::Body1m => "1 MiB responses, keep-alive, max throughput",
            Scenario::Newconn => "128 B responses, new connection per request, max throughput",
            Scenario::Idle => "idle keep-alive connections",
            Scenario::PolicyPlain => {
                "128 B responses, web proxy -> mutual TLS -> api proxy, no Route or Resilience, max throughput"
            }
            Scenario::PolicyFull => {
                "128 B responses, web proxy -> mutual TLS -> api proxy, 100 Routes and a Resilience, max throughput"
            }
            Scenario::Mtls => {
                "128 B responses, outbound proxy -> mutual TLS 1.3 -> inbound proxy, max throughput"
            }
            Scenario::MtlsRate => {
                "128 B responses, outbound proxy -> mutual TLS 1.3 -> inbound proxy, fixed rate"
            }
            Scenario::H2 => "h2c through one proxy, N connections x M streams, 128 B responses, max throughput",
            Scenario::H2Rate => "h2c through one proxy, N connections x M streams, 128 B responses, fixed rate",
            Scenario::H2Idle => "idle h2c client connections",
            Scenario::Burst => "RSS after a burst of new connections, then idle",
            Scenario::Grpc => {
                "unary gRPC, outbound proxy -> h2 over mutual TLS 1.3 -> inbound proxy, max throughput"
            }
            Scenario::GrpcRate => {
                "unary gRPC, outbound proxy -> h2 over mutual TLS 1.3 -> inbound proxy, fixed rate"
            }
        }
    }
}

const SMALL: usize = 128;
pub const DIRECT: &str = "direct";
pub const COREMESH: &str = "coremesh";

/// One load measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub round: usize,
    pub scenario: Scenario,
    pub target: String,
    /// Requests per second asked for (0 = closed loop).
    pub target_rate: f64,
    pub achieved_rps: f64,
    pub responses_total: u64,
    pub unsent: u64,
    pub latency_us: LatencySummary,
    pub errors: Errors,
    /// Proxy CPU (user + sys, all threads and children) per response.
    pub proxy_cpu_us_per_req: Option<f64>,
    /// The user-space part of `proxy_cpu_us_per_req` (the kernel's tick
    /// sampled split; absent in results written before it was recorded).
    #[serde(default)]
    pub proxy_user_us_per_req: Option<f64>,
    /// The kernel part of `proxy_cpu_us_per_req` (system calls, the TCP
    /// stack, softirqs run on the proxy's behalf).
    #[serde(default)]
    pub proxy_sys_us_per_req: Option<f64>,
    /// Context switches of the proxy's threads per response: its wake-ups
    /// (below 1 when a wake-up serves several requests at saturation).
    #[serde(default)]
    pub proxy_context_switches_per_req: Option<f64>,
    /// TCP segments the machine sent per response, every hop of the run
    /// together (generator, proxies, origin); the same for every proxy
    /// unless one splits writes or sends extra acknowledgements.
    #[serde(default)]
    pub tcp_segments_per_req: Option<f64>,
    /// System calls of the target's proxy processes per response
    /// (`--count-syscalls`; an io_uring submission counts once).
    #[serde(default)]
    pub proxy_syscalls_per_req: Option<f64>,
    /// Proxy CPU seconds per wall second during the run.
    pub proxy_cores_used: Option<f64>,
    pub generator_cores_used: f64,
    pub generator_us_per_req: f64,
    /// Origin CPU seconds per wall second (it shares CPUs with the generator).
    pub origin_cores_used: f64,
}

/// One idle-connection memory measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleSample {
    pub round: usize,
    /// `idle` (HTTP/1.1 keep-alive) or `h2-idle` (h2c).
    #[serde(default = "idle_scenario")]
    pub scenario: Scenario,
    pub target: String,
    pub connections: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub bytes_per_conn: f64,
    /// The burst scenario's other readings (none for `idle`, `h2-idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<burst::BurstRss>,
}

fn idle_scenario() -> Scenario {
    Scenario::Idle
}

/// A proxy the run tried to use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    pub label: String,
    pub kind: String,
    pub binary: Option<String>,
    pub version: String,
    pub config: Option<String>,
    pub log: Option<String>,
    /// "proxy" (one hop), the policy scenario of a mesh pair, or "mtls"
    /// (a two-hop pair; `config` and `log` are the outbound (web) proxy's,
    /// `inbound_*` the inbound (api) proxy's).
    #[serde(default)]
    pub topology: String,
    #[serde(default)]
    pub inbound_config: Option<String>,
    #[serde(default)]
    pub inbound_log: Option<String>,
    /// "ok" or "skipped".
    pub status: String,
    pub note: String,
}

/// Everything `--out` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub command: String,
    pub machine: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub proxy_cores: String,
    pub load_cores: String,
    pub rounds: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    pub idle_connections: usize,
    pub fixed_rate: f64,
    /// The fixed rate of `mtls-rate` (0 when it did not run).
    #[serde(default)]
    pub mtls_fixed_rate: f64,
    /// The fixed rates of `h2-rate` and `grpc-rate` (0 when not run).
    #[serde(default)]
    pub h2_fixed_rate: f64,
    #[serde(default)]
    pub grpc_fixed_rate: f64,
    /// The HTTP/2 scenarios' load: connections x streams per connection.
    #[serde(default)]
    pub h2_connections: usize,
    #[serde(default)]
    pub h2_streams: usize,
    pub targets: Vec<TargetInfo>,
    pub notes: Vec<String>,
    pub samples: Vec<Sample>,
    pub idle: Vec<IdleSample>,
    pub summary: Vec<report::Summary>,
}

struct Target {
    label: String,
    /// The proxy processes of this target, the one the load connects to
    /// first; empty for `direct`. Their CPU is counted together.
    running: Vec<Running>,
    /// How to start another instance (for the idle scenario).
    start: Option<(Kind, PathBuf)>,
    /// The `Host` the load sends (the service a mesh pair routes by).
    host: String,
}

impl Target {
    fn direct() -> Target {
        Target {
            label: DIRECT.into(),
            running: Vec::new(),
            start: None,
            host: ORIGIN_HOST.into(),
        }
    }
    fn addr(&self, origin: SocketAddr) -> SocketAddr {
        self.running.first().map_or(origin, |r| r.addr)
    }
    fn pids(&self) -> Vec<u32> {
        self.running.iter().map(Running::pid).collect()
    }
}

/// The `Host` of the one-hop scenarios.
pub(crate) const ORIGIN_HOST: &str = "origin";

/// User and system CPU seconds of every process tree in `pids`, together.
fn cpu_times(pids: &[u32]) -> sys::CpuTimes {
    pids.iter()
        .map(|p| sys::tree_cpu_times(*p))
        .fold(sys::CpuTimes::default(), |a, b| a + b)
}

/// Context switches of every process tree in `pids`, together.
fn context_switches(pids: &[u32]) -> u64 {
    pids.iter().map(|p| sys::tree_context_switches(*p)).sum()
}

/// The targets of one scenario in `round`'s order: a baseline (`is_base`)
/// stays first, the proxies after it start one place later every round
/// (A B C, B C A, C A B, ...), so none always runs in the slot right after
/// the baseline, and whatever that slot costs is spread over all of them.
fn rotate_for_round<T>(mut v: Vec<T>, round: usize, is_base: impl Fn(&T) -> bool) -> Vec<T> {
    let base = v.iter().take_while(|t| is_base(t)).count();
    let proxies = &mut v[base..];
    if !proxies.is_empty() {
        let by = round.saturating_sub(1) % proxies.len();
        proxies.rotate_left(by);
    }
    v
}

/// The order of `scenarios` in `round`: the policy pair swaps places on
/// even rounds (ABBA...), the rest keep theirs.
fn round_order(scenarios: &[Scenario], round: usize) -> Vec<Scenario> {
    let mut v = scenarios.to_vec();
    if round % 2 == 0 {
        let plain = v.iter().position(|s| *s == Scenario::PolicyPlain);
        let full = v.iter().position(|s| *s == Scenario::PolicyFull);
        if let (Some(a), Some(b)) = (plain, full) {
            v.swap(a, b);
        }
    }
    v
}

fn log(msg: &str) {
    eprintln!("[compare] {msg}");
}

/// Where the run keeps its files and how it pins its processes: from the
/// options and the machine, before anything starts.
struct Setup {
    /// `--out`'s directory, absolute.
    out_dir: PathBuf,
    /// RLIMIT_NOFILE after raising it (the proxies' limits follow it).
    nofile: u64,
    /// The proxies' CPUs, as a taskset list.
    proxy_cpus: String,
    /// The origin's and the load generator's CPUs, as a taskset list.
    load_cpus: String,
    taskset: Option<PathBuf>,
    /// perf, when `--count-syscalls` asked for it and it is installed.
    perf: Option<PathBuf>,
    /// This binary: the origin and the load generator are its subcommands.
    exe: PathBuf,
    /// The collector of the `coremesh-trace-R` targets (`--tracing`).
    otlp: Option<otlp::OtlpSink>,
}

impl Setup {
    /// TOML appended to the generated configuration of the target
    /// `label` (its idle and burst instances too): `[tracing]` for a
    /// `coremesh-trace-R` target.
    fn extra_config(&self, label: &str) -> String {
        match (tracing_ratio(label), &self.otlp) {
            (Some(r), Some(sink)) => tracing_toml(r, &sink.url()),
            _ => String::new(),
        }
    }

    /// Where the proxies run.
    fn proxy_pin(&self) -> Pin<'_> {
        Pin {
            cpus: &self.proxy_cpus,
            taskset: self.taskset.as_deref(),
        }
    }

    /// Where the origin, the load generator (and coremesh-control) run.
    fn load_pin(&self) -> Pin<'_> {
        Pin {
            cpus: &self.load_cpus,
            taskset: self.taskset.as_deref(),
        }
    }
}

/// Every target of the run, started and checked. The fields drop (and
/// stop their processes) in this order if the run ends early.
struct Started {
    /// The targets of the HTTP/2 scenarios.
    h2: Option<http2::Set>,
    /// The pairs of the mtls scenarios.
    pairs: Option<mtls::Pairs>,
    /// The mesh of the policy scenarios.
    mesh: Option<policy::Mesh>,
    /// `direct`, then the one-hop proxies.
    one_hop: Vec<Target>,
    /// The baseline of the mtls scenarios.
    direct: Target,
    /// Every proxy the run tried, skipped ones with the reason.
    infos: Vec<TargetInfo>,
}

impl Started {
    /// The targets `s` runs through.
    fn targets_for(&self, s: Scenario) -> Vec<&Target> {
        if s.is_policy() {
            self.mesh.as_ref().map_or(Vec::new(), |m| {
                m.targets
                    .iter()
                    .filter(|(sc, _)| *sc == s)
                    .map(|(_, t)| t)
                    .collect()
            })
        } else if s.is_mtls() {
            std::iter::once(&self.direct)
                .chain(self.pairs.as_ref().map_or(&[][..], |p| &p.targets[..]))
                .collect()
        } else if s.is_h2() {
            std::iter::once(&self.direct)
                .chain(self.h2.as_ref().map_or(&[][..], |p| &p.one_hop[..]))
                .collect()
        } else if s.is_grpc() {
            std::iter::once(&self.direct)
                .chain(self.h2.as_ref().map_or(&[][..], |p| &p.pairs[..]))
                .collect()
        } else if s == Scenario::H2Idle {
            Vec::new()
        } else {
            self.one_hop.iter().collect()
        }
    }

    /// Stops every proxy: the one-hop ones, the mesh, then the pairs,
    /// after noting what coremesh's inbound proxies saw of `samples`.
    fn stop(&mut self, samples: &[Sample], notes: &mut Vec<String>) {
        for t in &mut self.one_hop {
            for r in &mut t.running {
                r.stop();
            }
        }
        if let Some(m) = self.mesh.as_mut() {
            m.stop();
        }
        if let Some(h) = self.h2.as_mut() {
            // Whether the coremesh gRPC pairs pooled their mesh connections
            // and resumed sessions, as for the mtls pairs.
            for t in h.pairs.iter().filter(|t| t.label.starts_with(COREMESH)) {
                if let Some(inbound) = t.running.get(1) {
                    let requests: u64 = samples
                        .iter()
                        .filter(|s| s.scenario.is_grpc() && s.target == t.label)
                        .map(|s| s.responses_total)
                        .sum();
                    match mtls::coremesh_handshakes(&inbound.log_path) {
                        Ok((full, resumed)) => notes.push(format!(
                            "grpc {}: the inbound proxy made {full} full and {resumed} resumed TLS handshakes for {requests} measured calls (plus warm-ups and checks)",
                            t.label
                        )),
                        Err(e) => notes.push(format!(
                            "grpc {}: handshake counters: {}",
                            t.label,
                            error_chain(&e)
                        )),
                    }
                }
            }
            h.stop();
        }
        if let Some(p) = self.pairs.as_mut() {
            // What coremesh's inbound proxies saw: whether pooling and
            // session resumption held (a handshake per request would show).
            for t in p.targets.iter().filter(|t| t.label.starts_with(COREMESH)) {
                if let Some(inbound) = t.running.get(1) {
                    let requests: u64 = samples
                        .iter()
                        .filter(|s| s.scenario.is_mtls() && s.target == t.label)
                        .map(|s| s.responses_total)
                        .sum();
                    match mtls::coremesh_handshakes(&inbound.log_path) {
                        Ok((full, resumed)) => notes.push(format!(
                            "mtls {}: the inbound proxy made {full} full and {resumed} resumed TLS handshakes for {requests} measured requests (plus warm-ups and checks)",
                            t.label
                        )),
                        Err(e) => notes.push(format!(
                            "mtls {}: handshake counters: {}",
                            t.label,
                            error_chain(&e)
                        )),
                    }
                }
            }
            for t in &mut p.targets {
                for r in &mut t.running {
                    r.stop();
                }
            }
        }
    }
}

/// What the rounds measured, and the fixed rates they ran at.
struct Measured {
    samples: Vec<Sample>,
    idle: Vec<IdleSample>,
    /// The fixed rate of `rate` (one hop); 0 until known.
    rate: f64,
    /// The fixed rate of `mtls-rate` (the pairs); 0 until known.
    mtls_rate: f64,
    /// The fixed rates of `h2-rate` and `grpc-rate`; 0 until known.
    h2_rate: f64,
    grpc_rate: f64,
}

impl Measured {
    /// The rate `scenario` runs at: its fixed rate, picked from this run's
    /// saturation samples the first time it is needed, or 0 (closed loop).
    fn rate_for(&mut self, scenario: Scenario) -> f64 {
        let slot = match scenario {
            Scenario::Rate => &mut self.rate,
            Scenario::MtlsRate => &mut self.mtls_rate,
            Scenario::H2Rate => &mut self.h2_rate,
            Scenario::GrpcRate => &mut self.grpc_rate,
            _ => return 0.0,
        };
        if *slot <= 0.0 {
            *slot = pick_rate(
                &self.samples,
                scenario.saturation().unwrap_or(Scenario::Small),
            );
            log(&format!(
                "fixed rate for {}: {:.0} req/s",
                scenario.name(),
                *slot
            ));
        }
        *slot
    }
}

/// What every load run shares: the setup, the options, the origin.
struct Runner<'a> {
    setup: &'a Setup,
    opts: &'a Options,
    origin: SocketAddr,
    origin_pid: u32,
}

/// Runs the comparison; returns the results after printing the markdown.
pub fn run(opts: &Options) -> Result<Results, CompareError> {
    let started_at = Instant::now();
    let mut notes = Vec::new();
    let setup = prepare(opts, &mut notes)?;
    let origin_unix = (opts.app_unix && opts.scenarios.iter().any(|s| s.is_mtls()))
        .then(|| setup.out_dir.join("run").join("origin.sock"));
    let origin = start_origin(&setup, origin_unix.as_deref(), Duration::ZERO)?;
    log(&format!("origin on {}", origin.addr));
    let mut started = start_targets(
        opts,
        &setup,
        (origin.addr, origin_unix.as_deref()),
        &mut notes,
    );
    if let Err(e) = proxies::probe(origin.addr, "/") {
        return Err(CompareError::OriginSilent(e));
    }
    let runner = Runner {
        setup: &setup,
        opts,
        origin: origin.addr,
        origin_pid: origin.pid(),
    };
    let measured = measure_rounds(&runner, &started, &mut notes)?;
    started.stop(&measured.samples, &mut notes);
    drop(origin);
    if let Some(sink) = &setup.otlp {
        let c = sink.counts();
        notes.push(format!(
            "--tracing: the OTLP sink received {} exports ({} bytes of spans){}",
            c.requests.load(std::sync::atomic::Ordering::Relaxed),
            c.bytes.load(std::sync::atomic::Ordering::Relaxed),
            match c.rejected.load(std::sync::atomic::Ordering::Relaxed) {
                0 => String::new(),
                n => format!(", and refused {n} other requests"),
            }
        ));
    }
    let results = summarise(opts, setup, started_at, started.infos, notes, measured);
    write_results(opts, &results)?;
    Ok(results)
}

/// The output directory, the file-descriptor limit, the CPU split, taskset
/// and this binary; notes what falls short.
fn prepare(opts: &Options, notes: &mut Vec<String>) -> Result<Setup, CompareError> {
    let out_dir = opts.out.parent().map(Path::to_path_buf).unwrap_or_default();
    let out_dir = if out_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out_dir
    };
    create_dir(&out_dir)?;
    // Absolute: generated configs name their certificates and state
    // directories by this path, and proxies resolve relative paths against
    // their config's directory, not ours.
    let out_dir = out_dir
        .canonicalize()
        .map_err(|source| CompareError::Canonicalize {
            path: out_dir.clone(),
            source,
        })?;

    let nofile = sys::raise_nofile(1 << 20);
    if proxies::max_conns(nofile) < opts.idle_conns as u64 + 100 {
        notes.push(format!(
            "RLIMIT_NOFILE is only {nofile}: the idle scenario may open fewer connections"
        ));
    }

    // CPUs.
    let allowed = sys::allowed_cpus();
    let proxy_cpus = match &opts.proxy_cores {
        Some(c) => c.clone(),
        None => vec![*allowed.last().unwrap_or(&0)],
    };
    let mut load_cpus: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !proxy_cpus.contains(c))
        .collect();
    if load_cpus.is_empty() {
        notes.push(
            "only one CPU: the proxy shares it with the origin and the load generator".into(),
        );
        load_cpus = allowed.clone();
    }
    let (pc, lc) = (sys::cpu_list(&proxy_cpus), sys::cpu_list(&load_cpus));
    let taskset = proxies::find_on_path("taskset");
    if taskset.is_none() {
        notes.push("taskset not found (util-linux): nothing is pinned".into());
    }
    log(&format!(
        "proxy CPUs {pc}; origin and load generator CPUs {lc}"
    ));

    let perf = opts
        .count_syscalls
        .then(|| proxies::find_on_path("perf"))
        .flatten();
    if opts.count_syscalls {
        notes.push(match &perf {
            Some(_) => "--count-syscalls: system calls counted by `perf stat -e raw_syscalls:sys_enter` on the proxies during every measurement; the tracepoint costs each system call a little, so read CPU ratios from a run without it".into(),
            None => "--count-syscalls: perf not found: system calls not counted".into(),
        });
    }

    let exe = std::env::current_exe().map_err(CompareError::OwnBinary)?;
    let otlp = if opts.tracing.is_empty() {
        None
    } else {
        match otlp::OtlpSink::start(load_cpus.clone()) {
            Ok(sink) => {
                log(&format!(
                    "OTLP sink for the tracing targets on {}",
                    sink.url()
                ));
                Some(sink)
            }
            Err(e) => {
                notes.push(format!(
                    "--tracing: cannot start the OTLP sink ({e}); the tracing targets export nowhere"
                ));
                None
            }
        }
    };
    Ok(Setup {
        out_dir,
        nofile,
        proxy_cpus: pc,
        load_cpus: lc,
        taskset,
        perf,
        exe,
        otlp,
    })
}

/// Proxies: one-hop targets for the plain scenarios, mesh pairs for the
/// policy ones, two-hop pairs for the mtls ones. What does not start or
/// answer is skipped with a note.
fn start_targets(
    opts: &Options,
    setup: &Setup,
    (origin, origin_unix): (SocketAddr, Option<&Path>),
    notes: &mut Vec<String>,
) -> Started {
    let mut infos = Vec::new();
    let resolved = resolve_proxies(opts, &mut infos);
    let one_hop = start_one_hop(opts, setup, origin, &resolved, &mut infos);
    let mesh = start_mesh(opts, setup, origin, &resolved, &mut infos, notes);
    let pairs = start_pairs(
        opts,
        setup,
        (origin, origin_unix),
        &resolved,
        &mut infos,
        notes,
    );
    let h2 = start_http2(opts, setup, origin, &resolved, &mut infos, notes);
    Started {
        h2,
        pairs,
        mesh,
        one_hop,
        direct: Target::direct(),
        infos,
    }
}

/// `direct`, then every resolved proxy that starts and answers the check
/// request (none unless a one-hop scenario runs).
fn start_one_hop(
    opts: &Options,
    setup: &Setup,
    origin: SocketAddr,
    resolved: &[(String, Kind, PathBuf)],
    infos: &mut Vec<TargetInfo>,
) -> Vec<Target> {
    let one_hop_wanted = opts.scenarios.iter().any(|s| s.is_one_hop());
    let mut targets = vec![Target::direct()];
    for (label, kind, bin) in resolved.iter().filter(|_| one_hop_wanted).cloned() {
        let version = proxies::version(&bin, kind);
        let mut info = TargetInfo {
            label: label.clone(),
            kind: kind.name().into(),
            binary: Some(bin.display().to_string()),
            version,
            config: None,
            log: None,
            topology: "proxy".into(),
            inbound_config: None,
            inbound_log: None,
            status: "ok".into(),
            note: String::new(),
        };
        log(&format!("starting {label} ({})", bin.display()));
        match proxies::start(
            setup.nofile,
            kind,
            &label,
            &bin,
            origin,
            &setup.out_dir,
            setup.proxy_pin(),
            &setup.extra_config(&label),
        ) {
            Ok(r) => {
                info.config = Some(r.config_path.display().to_string());
                info.log = Some(r.log_path.display().to_string());
                match proxies::probe(r.addr, &format!("/size/{SMALL}")) {
                    Ok(200) => targets.push(Target {
                        label: label.clone(),
                        running: vec![r],
                        start: Some((kind, bin.clone())),
                        host: ORIGIN_HOST.into(),
                    }),
                    Ok(s) => skip(&mut info, format!("check request got status {s}, not 200")),
                    Err(e) => skip(
                        &mut info,
                        format!("check request failed: {}", error_chain(&e)),
                    ),
                }
            }
            Err(e) => skip(&mut info, format!("did not start: {}", error_chain(&e))),
        }
        infos.push(info);
    }
    targets
}

/// The mesh of the policy scenarios, if any runs and it can: the coremesh
/// runs of the default build and coremesh-control are needed.
fn start_mesh(
    opts: &Options,
    setup: &Setup,
    origin: SocketAddr,
    resolved: &[(String, Kind, PathBuf)],
    infos: &mut Vec<TargetInfo>,
    notes: &mut Vec<String>,
) -> Option<policy::Mesh> {
    let policy_scenarios: Vec<Scenario> = [Scenario::PolicyPlain, Scenario::PolicyFull]
        .into_iter()
        .filter(|s| opts.scenarios.contains(s))
        .collect();
    if policy_scenarios.is_empty() {
        return None;
    }
    // The coremesh runs of the default build (coremesh, coremesh#2).
    let labels: Vec<String> = resolved
        .iter()
        .filter(|(_, kind, bin)| *kind == Kind::Coremesh && *bin == opts.coremesh_bin)
        .map(|(label, _, _)| label.clone())
        .collect();
    if labels.is_empty() {
        notes.push("policy scenarios: no coremesh binary, nothing to run".into());
        return None;
    }
    if !proxies::is_executable(&opts.control_bin) {
        notes.push(format!(
            "policy scenarios: {} not found; build it with `cargo build --release -p coremesh-control` or pass --control-bin",
            opts.control_bin.display()
        ));
        return None;
    }
    log("starting the policy mesh (coremesh-control, a web and an api proxy per target)");
    match policy::start(&policy::MeshSpec {
        scenarios: &policy_scenarios,
        labels: &labels,
        proxy_bin: &opts.coremesh_bin,
        control_bin: &opts.control_bin,
        origin,
        out_dir: &setup.out_dir,
        proxies: setup.proxy_pin(),
        control: setup.load_pin(),
    }) {
        Ok(m) => {
            infos.extend(m.infos.iter().cloned());
            notes.extend(m.notes.iter().cloned());
            Some(m)
        }
        Err(e) => {
            notes.push(format!("policy scenarios: not run: {}", error_chain(&e)));
            None
        }
    }
}

/// The pairs of the mtls scenarios, if any runs.
fn start_pairs(
    opts: &Options,
    setup: &Setup,
    origin: (SocketAddr, Option<&Path>),
    resolved: &[(String, Kind, PathBuf)],
    infos: &mut Vec<TargetInfo>,
    notes: &mut Vec<String>,
) -> Option<mtls::Pairs> {
    if !opts.scenarios.iter().any(|s| s.is_mtls()) {
        return None;
    }
    log("starting the mtls pairs (outbound proxy -> mutual TLS 1.3 -> inbound proxy)");
    match mtls::start(
        resolved,
        origin,
        &setup.out_dir,
        setup.nofile,
        setup.proxy_pin(),
    ) {
        Ok(p) => {
            infos.extend(p.infos.iter().cloned());
            notes.extend(p.notes.iter().cloned());
            Some(p)
        }
        Err(e) => {
            notes.push(format!("mtls scenarios: not run: {}", error_chain(&e)));
            None
        }
    }
}

/// The targets of the HTTP/2 scenarios, if any runs.
fn start_http2(
    opts: &Options,
    setup: &Setup,
    origin: SocketAddr,
    resolved: &[(String, Kind, PathBuf)],
    infos: &mut Vec<TargetInfo>,
    notes: &mut Vec<String>,
) -> Option<http2::Set> {
    let one_hop = opts
        .scenarios
        .iter()
        .any(|s| s.is_h2() || *s == Scenario::H2Idle);
    let pairs = opts.scenarios.iter().any(|s| s.is_grpc());
    if !one_hop && !pairs {
        return None;
    }
    if let (true, Some(t)) = (pairs, opts.grpc_timeout) {
        notes.push(format!(
            "grpc scenarios: every call carried grpc-timeout: {} (--grpc-timeout)",
            http2::grpc_timeout(t)
        ));
    }
    log("starting the HTTP/2 targets (h2c one hop; gRPC outbound -> h2 over mutual TLS 1.3 -> inbound)");
    match http2::start(
        resolved,
        origin,
        &setup.out_dir,
        setup.nofile,
        setup.proxy_pin(),
        (one_hop, pairs),
    ) {
        Ok(h) => {
            infos.extend(h.infos.iter().cloned());
            notes.extend(h.notes.iter().cloned());
            Some(h)
        }
        Err(e) => {
            notes.push(format!("HTTP/2 scenarios: not run: {}", error_chain(&e)));
            None
        }
    }
}

/// The fixed rates, then every round: each load scenario through each of
/// its targets, then (if asked) the idle connections.
fn measure_rounds(
    r: &Runner<'_>,
    started: &Started,
    notes: &mut Vec<String>,
) -> Result<Measured, CompareError> {
    let opts = r.opts;
    let load_scenarios: Vec<Scenario> = opts
        .scenarios
        .iter()
        .copied()
        .filter(|s| !matches!(s, Scenario::Idle | Scenario::H2Idle | Scenario::Burst))
        .collect();
    let mut m = Measured {
        samples: Vec::new(),
        idle: Vec::new(),
        rate: opts.rate.unwrap_or(0.0),
        mtls_rate: opts.rate.unwrap_or(0.0),
        h2_rate: opts.rate.unwrap_or(0.0),
        grpc_rate: opts.rate.unwrap_or(0.0),
    };
    calibrate(r, started, &load_scenarios, &mut m)?;
    // The burst's own origin, which holds every response a moment.
    let burst_origin = if opts.scenarios.contains(&Scenario::Burst) {
        let o = start_origin(r.setup, None, burst::ORIGIN_DELAY)?;
        log(&format!(
            "burst origin (responses delayed {} ms) on {}",
            burst::ORIGIN_DELAY.as_millis(),
            o.addr
        ));
        Some(o)
    } else {
        None
    };
    for round in 1..=opts.rounds {
        for scenario in round_order(&load_scenarios, round) {
            let rate = m.rate_for(scenario);
            let targets = started.targets_for(scenario);
            for t in rotate_for_round(targets, round, |t| t.label == DIRECT) {
                let s = r.measure(t, scenario, rate, round, false)?;
                log(&format!(
                    "round {round} {:<12} {:<18} {:>9.0} req/s  p99 {:>9}  proxy {}  errors {}",
                    scenario.name(),
                    t.label,
                    s.achieved_rps,
                    crate::load::fmt_us(s.latency_us.p99),
                    s.proxy_cpu_us_per_req
                        .map_or("-".into(), |c| format!("{c:.2} us/req")),
                    s.errors.describe()
                ));
                m.samples.push(s);
            }
        }
        if opts.scenarios.contains(&Scenario::Idle) {
            measure_idle(r, &started.one_hop, round, &mut m.idle, notes);
        }
        if let Some(o) = &burst_origin {
            burst::measure(r, &started.one_hop, o.addr, round, &mut m.idle, notes);
        }
        if let (true, Some(h)) = (opts.scenarios.contains(&Scenario::H2Idle), &started.h2) {
            http2::measure_idle(
                h,
                opts.idle_conns,
                round,
                r.setup.proxy_pin(),
                &mut m.idle,
                notes,
            );
        }
    }
    Ok(m)
}

/// Fixed rates (`rate` for one hop, `mtls-rate` for the pairs) that cannot
/// wait for round 1's saturation twin: unless the twin runs first in round
/// 1, a short saturation measurement made here sets the rate.
fn calibrate(
    r: &Runner<'_>,
    started: &Started,
    load_scenarios: &[Scenario],
    m: &mut Measured,
) -> Result<(), CompareError> {
    for (fixed, slot) in [
        (Scenario::Rate, &mut m.rate),
        (Scenario::MtlsRate, &mut m.mtls_rate),
        (Scenario::H2Rate, &mut m.h2_rate),
        (Scenario::GrpcRate, &mut m.grpc_rate),
    ] {
        let Some(sat) = fixed.saturation() else {
            continue;
        };
        let pos = |s: Scenario| load_scenarios.iter().position(|x| *x == s);
        let calibrate = match (pos(fixed), pos(sat)) {
            (Some(f), Some(s)) => s > f,
            (Some(_), None) => true,
            _ => false,
        };
        if r.opts.rate.is_some() || !calibrate {
            continue;
        }
        let mut cal = Vec::new();
        for t in started.targets_for(sat) {
            cal.push(r.measure(t, sat, 0.0, 0, true)?);
        }
        *slot = pick_rate(&cal, sat);
        log(&format!(
            "fixed rate for {}: {:.0} req/s",
            fixed.name(),
            *slot
        ));
    }
    Ok(())
}

/// The idle scenario of one round: RSS per idle connection of a fresh
/// instance of every one-hop proxy. A failure is a note.
fn measure_idle(
    r: &Runner<'_>,
    targets: &[Target],
    round: usize,
    idle: &mut Vec<IdleSample>,
    notes: &mut Vec<String>,
) {
    let setup = r.setup;
    for t in targets {
        let Some((kind, bin)) = &t.start else {
            continue;
        };
        // A fresh instance: one that served the load runs has freed
        // memory its allocator would reuse for the new connections,
        // which hides their cost (measured here: round 1 ~1.6 KB per
        // connection, later rounds near 0 on the same process).
        let fresh = proxies::start(
            setup.nofile,
            *kind,
            &format!("{}-idle", t.label),
            bin,
            r.origin,
            &setup.out_dir,
            setup.proxy_pin(),
            &setup.extra_config(&t.label),
        );
        let measured = fresh.map_err(IdleError::Start).and_then(|mut p| {
            let s = idle_rss(&p, &t.label, r.opts.idle_conns, round);
            p.stop();
            s
        });
        match measured {
            Ok(s) => {
                log(&format!(
                    "round {round} idle     {:<18} {} conns: {:.0} bytes/conn",
                    t.label, s.connections, s.bytes_per_conn
                ));
                idle.push(s);
            }
            Err(e) => notes.push(format!(
                "{} idle round {round}: {}",
                t.label,
                error_chain(&e)
            )),
        }
    }
}

/// The results: the samples, their summary and how they were made.
fn summarise(
    opts: &Options,
    setup: Setup,
    started_at: Instant,
    targets: Vec<TargetInfo>,
    notes: Vec<String>,
    m: Measured,
) -> Results {
    let summary = report::summarize(&m.samples, &m.idle);
    Results {
        command: opts.command.clone(),
        machine: sys::machine_description(),
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .saturating_sub(started_at.elapsed().as_secs()),
        proxy_cores: setup.proxy_cpus,
        load_cores: setup.load_cpus,
        rounds: opts.rounds,
        duration_s: opts.duration.as_secs_f64(),
        warmup_s: opts.warmup.as_secs_f64(),
        connections: opts.connections,
        idle_connections: opts.idle_conns,
        fixed_rate: m.rate,
        mtls_fixed_rate: m.mtls_rate,
        h2_fixed_rate: m.h2_rate,
        grpc_fixed_rate: m.grpc_rate,
        h2_connections: opts.h2_connections,
        h2_streams: opts.h2_streams,
        targets,
        notes,
        samples: m.samples,
        idle: m.idle,
        summary,
    }
}

/// `--out` (JSON) and, if asked, the charts in `--svg-dir`.
fn write_results(opts: &Options, results: &Results) -> Result<(), CompareError> {
    let json = serde_json::to_string_pretty(results).map_err(CompareError::Encode)?;
    std::fs::write(&opts.out, json + "\n").map_err(|source| CompareError::WriteResults {
        path: opts.out.clone(),
        source,
    })?;
    if let Some(dir) = &opts.svg_dir {
        create_dir(dir)?;
        chart::write_all(results, dir)?;
    }
    Ok(())
}

fn skip(info: &mut TargetInfo, note: String) {
    log(&format!("skipping {}: {note}", info.label));
    info.status = "skipped".into();
    info.note = note;
}

/// Label prefix of the tracing targets (`--tracing`).
pub const TRACE_PREFIX: &str = "coremesh-trace-";

/// The label of the tracing target with sampling ratio `r`:
/// `coremesh-trace-0.01`, `coremesh-trace-1`.
pub fn tracing_label(r: f64) -> String {
    format!("{TRACE_PREFIX}{r}")
}

/// The sampling ratio of a tracing target's label (or of its idle and
/// burst instances', `coremesh-trace-1-idle`).
pub fn tracing_ratio(label: &str) -> Option<f64> {
    let rest = label.strip_prefix(TRACE_PREFIX)?;
    let end = rest.find(['-', '#']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The proxy's `[tracing]` section (issue 17's contract T): sample `r` of
/// the requests, export to `collector`.
pub fn tracing_toml(r: f64, collector: &str) -> String {
    format!("\n[tracing]\nsampling = {r:?}\ncollector = \"{collector}\"\n")
}

/// The proxies asked for that are installed, with labels; notes the rest.
fn resolve_proxies(opts: &Options, infos: &mut Vec<TargetInfo>) -> Vec<(String, Kind, PathBuf)> {
    let mut out = Vec::new();
    for name in &opts.proxies {
        let missing = |infos: &mut Vec<TargetInfo>, label: &str, kind: &str, note: String| {
            log(&format!("skipping {label}: {note}"));
            infos.push(TargetInfo {
                label: label.into(),
                kind: kind.into(),
                binary: None,
                version: String::new(),
                config: None,
                log: None,
                topology: String::new(),
                inbound_config: None,
                inbound_log: None,
                status: "skipped".into(),
                note,
            });
        };
        if name == "coremesh-glommio" {
            continue; // added with coremesh below
        }
        let Some(kind) = Kind::parse(name) else {
            missing(
                infos,
                name,
                name,
                "unknown proxy (known: coremesh, nginx, haproxy, envoy, caddy)".into(),
            );
            continue;
        };
        if kind == Kind::Coremesh {
            if proxies::is_executable(&opts.coremesh_bin) {
                out.push((COREMESH.to_string(), kind, opts.coremesh_bin.clone()));
                if opts.aa {
                    out.push((format!("{COREMESH}#2"), kind, opts.coremesh_bin.clone()));
                }
                for &r in &opts.tracing {
                    out.push((tracing_label(r), kind, opts.coremesh_bin.clone()));
                }
            } else {
                missing(
                    infos,
                    COREMESH,
                    "coremesh",
                    format!(
                        "{} not found; build it with `cargo build --release -p coremesh-proxy` or pass --coremesh-bin",
                        opts.coremesh_bin.display()
                    ),
                );
            }
            if proxies::is_executable(&opts.coremesh_glommio_bin) {
                out.push((
                    "coremesh-glommio".into(),
                    kind,
                    opts.coremesh_glommio_bin.clone(),
                ));
            } else {
                missing(
                    infos,
                    "coremesh-glommio",
                    "coremesh",
                    format!(
                        "{} not found; build it with `cargo build --release -p coremesh-proxy --features runtime-glommio --target-dir target/glommio`",
                        opts.coremesh_glommio_bin.display()
                    ),
                );
            }
            continue;
        }
        match proxies::find_on_path(kind.name()) {
            Some(bin) => out.push((kind.name().to_string(), kind, bin)),
            None => missing(
                infos,
                kind.name(),
                kind.name(),
                format!("`{}` is not installed (not on PATH)", kind.name()),
            ),
        }
    }
    out
}

/// Starts `coremesh-bench origin` on the load CPUs, also listening on the
/// Unix socket `unix` if given, each response held `delay`; its TCP
/// address is the first line it prints.
fn start_origin(
    setup: &Setup,
    unix: Option<&Path>,
    delay: Duration,
) -> Result<Running, CompareError> {
    use std::io::BufRead;
    let (exe, dir) = (&setup.exe, &setup.out_dir);
    let log_path = dir.join("run").join(if delay.is_zero() {
        "origin.log".to_string()
    } else {
        format!("origin-delay-{}ms.log", delay.as_millis())
    });
    proxies::create_dir(&dir.join("run")).map_err(CompareError::OriginStart)?;
    let log = std::fs::File::create(&log_path).map_err(|source| {
        CompareError::OriginStart(StartError::Log {
            path: log_path.clone(),
            source,
        })
    })?;
    let mut child = setup
        .load_pin()
        .command(exe)
        .args([
            "origin",
            "--listen",
            "127.0.0.1:0",
            "--body-size",
            &SMALL.to_string(),
            "--delay",
            &format!("{}ms", delay.as_millis()),
        ])
        .args(
            unix.iter()
                .flat_map(|p| [std::ffi::OsStr::new("--unix"), p.as_os_str()]),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|source| {
            CompareError::OriginStart(StartError::Spawn {
                bin: exe.to_path_buf(),
                source,
            })
        })?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(CompareError::OriginStdout)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| CompareError::OriginAddress { line: line.clone() })?;
    Ok(Running {
        child,
        addr,
        config_path: PathBuf::new(),
        log_path,
    })
}

/// A quarter of the lowest throughput in `scenario` (a saturation one) of
/// any proxy (or of the direct path, if no proxy ran), rounded down to two
/// significant digits.
fn pick_rate(samples: &[Sample], scenario: Scenario) -> f64 {
    let sat = |proxies_only: bool| {
        samples
            .iter()
            .filter(|s| s.scenario == scenario && s.achieved_rps > 0.0)
            .filter(|s| !proxies_only || s.target != DIRECT)
            .map(|s| s.achieved_rps)
            .fold(f64::INFINITY, f64::min)
    };
    let mut min = sat(true);
    if !min.is_finite() {
        min = sat(false);
    }
    if !min.is_finite() {
        return 1000.0;
    }
    let quarter = min / 4.0;
    let mag = 10f64.powf(quarter.log10().floor() - 1.0);
    ((quarter / mag).floor() * mag).max(100.0)
}

impl Runner<'_> {
    /// Runs one load measurement through `target`: `coremesh-bench load` as
    /// a pinned child, the proxies' CPU time, context switches and the
    /// machine's TCP segments read around it. `calibrate`: a short run
    /// (2 s, 0.5 s warm-up) to pick a fixed rate.
    fn measure(
        &self,
        target: &Target,
        scenario: Scenario,
        rate: f64,
        round: usize,
        calibrate: bool,
    ) -> Result<Sample, CompareError> {
        let (opts, setup) = (self.opts, self.setup);
        let (origin, origin_pid) = (self.origin, self.origin_pid);
        let addr = target.addr(origin);
        let (duration, warmup) = if calibrate {
            (Duration::from_secs(2), Duration::from_millis(500))
        } else {
            (opts.duration, opts.warmup)
        };
        let mut cmd = setup.load_pin().command(&setup.exe);
        cmd.args(["load", "--json", "--header"])
            .arg(format!("Host: {}", target.host))
            .arg("--url")
            .arg(format!("http://{addr}/size/{}", scenario.body()))
            .arg("--rate")
            .arg(format!("{rate}"))
            .arg("--duration")
            .arg(format!("{}ms", duration.as_millis()))
            .arg("--warmup")
            .arg(format!("{}ms", warmup.as_millis()));
        if scenario.is_h2() || scenario.is_grpc() {
            cmd.arg(if scenario.is_grpc() { "--grpc" } else { "--h2" })
                .arg("--connections")
                .arg(opts.h2_connections.to_string())
                .arg("--streams")
                .arg(opts.h2_streams.to_string())
                .arg("--grpc-size")
                .arg(http2::GRPC_REPLY.to_string());
            if let (true, Some(t)) = (scenario.is_grpc(), opts.grpc_timeout) {
                cmd.arg("--header")
                    .arg(format!("grpc-timeout: {}", http2::grpc_timeout(t)));
            }
        } else {
            cmd.arg("--connections").arg(opts.connections.to_string());
        }
        if scenario == Scenario::Newconn {
            cmd.arg("--new-conn");
        }
        let pids = target.pids();
        let counter = match (&setup.perf, pids.is_empty() || calibrate) {
            (Some(perf), false) => {
                let out = setup.out_dir.join("run").join(format!(
                    "syscalls-{}-{}.csv",
                    proxies::file_label(&target.label),
                    scenario.name()
                ));
                match syscalls::start(perf, &pids, &out) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        log(&format!("{}: {}", target.label, error_chain(&e)));
                        None
                    }
                }
            }
            _ => None,
        };
        let cpu0 = cpu_times(&pids);
        let switches0 = context_switches(&pids);
        let segments0 = sys::tcp_out_segments();
        let origin0 = sys::tree_cpu_seconds(origin_pid);
        let out =
            cmd.stderr(Stdio::inherit())
                .output()
                .map_err(|source| CompareError::LoadSpawn {
                    target: target.label.clone(),
                    source,
                })?;
        let cpu1 = cpu_times(&pids);
        let switches1 = context_switches(&pids);
        let segments1 = sys::tcp_out_segments();
        let origin_cpu = sys::tree_cpu_seconds(origin_pid) - origin0;
        let syscalls = counter.and_then(|c| match c.finish() {
            Ok(n) => Some(n),
            Err(e) => {
                log(&format!("{}: {}", target.label, error_chain(&e)));
                None
            }
        });
        if !out.status.success() {
            return Err(CompareError::LoadFailed {
                target: target.label.clone(),
                status: out.status,
            });
        }
        let rep: LoadReport =
            serde_json::from_slice(&out.stdout).map_err(|source| CompareError::LoadReport {
                target: target.label.clone(),
                source,
            })?;
        // The load's own run time (connect, warm-up, measure, drain), not the
        // child's lifetime, which adds process start-up.
        let wall = rep.wall_s.max(1e-3);
        // All of the target's proxies together (both of a mesh pair).
        let proxy_cpu = (!pids.is_empty()).then_some(cpu1 - cpu0);
        let per_response =
            |n: f64| (rep.responses_total > 0).then(|| n / rep.responses_total as f64);
        let per_req = |seconds: f64| per_response(seconds * 1e6);
        Ok(Sample {
            round,
            scenario,
            target: target.label.clone(),
            target_rate: rate,
            achieved_rps: rep.achieved_rate,
            responses_total: rep.responses_total,
            unsent: rep.unsent,
            latency_us: rep.latency_us,
            errors: rep.errors,
            proxy_cpu_us_per_req: proxy_cpu.and_then(|c| per_req(c.total())),
            proxy_user_us_per_req: proxy_cpu.and_then(|c| per_req(c.user)),
            proxy_sys_us_per_req: proxy_cpu.and_then(|c| per_req(c.sys)),
            proxy_context_switches_per_req: (!pids.is_empty())
                .then_some(switches1.saturating_sub(switches0))
                .and_then(|n| per_response(n as f64)),
            tcp_segments_per_req: segments0
                .zip(segments1)
                .and_then(|(a, b)| per_response(b.saturating_sub(a) as f64)),
            proxy_syscalls_per_req: syscalls.and_then(|n| per_response(n as f64)),
            proxy_cores_used: proxy_cpu.map(|c| c.total() / wall),
            generator_cores_used: rep.generator.cores_used,
            generator_us_per_req: rep.generator.us_per_request,
            origin_cores_used: origin_cpu / wall,
        })
    }
}

/// Opens `n` keep-alive connections to a freshly started proxy, one request
/// each, in sequence; waits 2 s; RSS delta of the proxy's process tree / n.
/// A few requests first warm up what every proxy allocates once (the
/// upstream connection, first buffers), so it is not charged to the idle
/// connections.
fn idle_rss(r: &Running, label: &str, n: usize, round: usize) -> Result<IdleSample, IdleError> {
    let pid = r.pid();
    let path = format!("/size/{SMALL}");
    for _ in 0..20 {
        proxies::probe(r.addr, &path).map_err(IdleError::Warmup)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = sys::tree_rss_bytes(pid);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let opened = proxies::connect(r.addr)
            .and_then(|mut s| proxies::request_on(&mut s, &path).map(|st| (s, st)));
        match opened {
            Ok((s, 200)) => {
                set_linger_zero(&s);
                conns.push(s);
            }
            Ok((_, status)) => return Err(IdleError::Status { index: i, status }),
            Err(source) => return Err(IdleError::Connection { index: i, source }),
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = sys::tree_rss_bytes(pid);
    let count = conns.len();
    drop(conns);
    // Let the proxy notice the closes before the next measurement.
    std::thread::sleep(Duration::from_millis(500));
    Ok(IdleSample {
        round,
        scenario: Scenario::Idle,
        target: label.to_string(),
        connections: count,
        rss_before: before,
        rss_after: after,
        bytes_per_conn: (after as f64 - before as f64) / count.max(1) as f64,
        burst: None,
    })
}

/// Close with RST: thousands of sockets per round would otherwise sit in
/// TIME_WAIT on the harness's side.
fn set_linger_zero(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests;
