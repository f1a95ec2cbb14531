//! `coremesh-bench fleet`: many simulated proxy sessions against one
//! coremesh-control, and how long a route change takes to reach them all.
//!
//! Each session is its own QUIC connection with a client certificate, as a
//! proxy's is; thousands share one tokio runtime and a few client
//! endpoints (UDP sockets), since one quinn endpoint demultiplexes many
//! connections.
//!
//! Certificates: one join (one single-use token, one key, one CSR) per
//! service; every session of that service presents the same certificate and
//! key. Control reads a session's service and node from its certificate
//! (the join's node, [`JOIN_NODE`], which each Hello names too), and keeps
//! every session as a proxy of its own (its own row in `GET /v1/proxies`,
//! its own registration); the joins are not what is measured.
//!
//! Topology (defaults): 100 services `fleet-000`..`fleet-099`; session `i`
//! belongs to service `i % services`; the first `endpoints` sessions of each
//! service register an inbound address (127.0.0.1:port, never listened on)
//! with a `version` label, so each service has `endpoints` endpoints; every
//! session of a service calls the same `calls` other services (replicas share
//! their configuration), so control sees `services` distinct views.
//!
//! Run:
//! 1. apply `services` Services and a Route per service (weights v1 90 / v2 10);
//! 2. join once per service; connect the registering sessions first, then
//!    the others (`--concurrency` handshakes at a time); each says Hello,
//!    gets Welcome and a Snapshot, ACKs it, registers, and heartbeats
//!    (Health) every 5 s;
//! 3. wait until no snapshot has arrived for `--settle`;
//! 4. apply the changed Routes (v1 50 / v2 50) of the first `--changed`
//!    services and time, for every session that calls one of them, from the
//!    moment the apply's HTTP answer is read until the session has received
//!    a snapshot with the new config version and written its ACK;
//! 5. cross-check control's own record (`GET /v1/proxies`: the applied config
//!    version of every session) and sample control's RSS and CPU from /proc
//!    throughout.
//!
//! Replicas (`--replicas N --store etcd://...`, see [`replicas`]): the bench
//! starts N controls on the etcd store itself (and, for `etcd://local`, the
//! etcd cluster); session `i` connects to replica `i % N`, service `s` joins
//! through replica `s % N`, both applies go through replica 0 (the others
//! learn of them through their etcd watch), and the report gains one row
//! per replica: its sessions' propagation, its own `GET /v1/proxies` count
//! of its sessions' ACKs, its RSS and CPU.

// The simulator, not the data plane: one lock for the first few error
// messages, taken only when a session fails.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coremesh_api::http::{ProxyStatus, TokenCreated};
use coremesh_api::wire::{self, ControlMsg, FrameDecoder, ProxyMsg, PROTOCOL_VERSION};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::error_chain;
use crate::operator::{apply, http, json, Api, OperatorError};

/// Why a fleet run stopped.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("--sessions, --services, --sockets and --concurrency must be at least 1")]
    Zero,
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a PEM certificate", path.display())]
    CaPem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: not a usable CA certificate", path.display())]
    CaCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// An apply of the starting or of the measured configuration.
    #[error("applying the {what} configuration")]
    Apply {
        what: &'static str,
        #[source]
        source: OperatorError,
    },
    #[error("the apply task")]
    ApplyTask(#[source] tokio::task::JoinError),
    #[error("the apply made config version {got}, expected {want} (another writer?)")]
    Version { got: u64, want: u64 },
    #[error("cannot start the tokio runtime")]
    Runtime(#[source] std::io::Error),
    #[error("client endpoint {index}")]
    Endpoint {
        index: usize,
        #[source]
        source: EndpointError,
    },
    #[error("join token for {service}")]
    Token {
        service: String,
        #[source]
        source: OperatorError,
    },
    #[error("join of {service}")]
    Join {
        service: String,
        #[source]
        source: JoinError,
    },
    #[error("join task")]
    JoinTask(#[source] tokio::task::JoinError),
    #[error("starting the control replicas")]
    Replicas(#[source] Box<replicas::ReplicasError>),
    #[error("control replica {index} (API {api})")]
    ReplicaAccess {
        index: usize,
        api: SocketAddr,
        #[source]
        source: Box<OperatorError>,
    },
}

/// Why a client UDP socket and QUIC endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("UDP socket")]
    Socket(#[source] std::io::Error),
    #[error("UDP bind")]
    Bind(#[source] std::io::Error),
    #[error("no async runtime")]
    NoRuntime,
    #[error("QUIC endpoint")]
    Quic(#[source] std::io::Error),
}

/// Why the one join of a service failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("key")]
    Key(#[source] rcgen::Error),
    #[error("CSR")]
    Csr(#[source] rcgen::Error),
    #[error("TLS")]
    Tls(#[source] rustls::Error),
    #[error("QUIC TLS")]
    QuicTls(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("join connect")]
    Connect(#[source] quinn::ConnectError),
    #[error("join handshake")]
    Handshake(#[source] quinn::ConnectionError),
    #[error("join stream")]
    Stream(#[source] quinn::ConnectionError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("answered {answer}")]
    Answer { answer: String },
    #[error("certificate")]
    Certificate(#[source] rustls::pki_types::pem::Error),
    #[error("key")]
    KeyPem(#[source] rustls::pki_types::pem::Error),
    #[error("client cert")]
    ClientCert(#[source] rustls::Error),
}

/// Reading or writing control protocol frames on a stream.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("read")]
    Read(#[source] quinn::ReadError),
    #[error("write")]
    Write(#[source] quinn::WriteError),
    #[error("decoding a frame")]
    Decode(#[source] wire::FrameError),
    #[error("encoding a frame")]
    Encode(#[source] wire::FrameError),
}

/// Why one simulated session ended early (counted and, for the first few,
/// kept in the report).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connect")]
    Connect(#[source] quinn::ConnectError),
    #[error("handshake")]
    Handshake(#[source] quinn::ConnectionError),
    #[error("stream")]
    Stream(#[source] quinn::ConnectionError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("control ended the stream")]
    Ended,
    #[error("snapshot before welcome")]
    SnapshotBeforeWelcome,
    #[error("control: {message}")]
    Control { message: String },
    #[error("unexpected {kind}")]
    Unexpected { kind: String },
}

/// The node every join names, so every session's certificate names it.
pub const JOIN_NODE: &str = "fleet-bench";
/// The name control's QUIC certificate is issued for.
const SERVER_NAME: &str = "coremesh-control";
const HEARTBEAT: Duration = Duration::from_secs(5);
/// First port of the fake endpoint addresses.
const BASE_PORT: u16 = 20000;

/// What to run.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub sessions: usize,
    pub control: SocketAddr,
    pub api: SocketAddr,
    pub data_dir: PathBuf,
    pub services: usize,
    pub endpoints: usize,
    pub calls: usize,
    /// Services whose Route the measured apply changes.
    pub changed: usize,
    pub control_pid: Option<u32>,
    /// Client UDP sockets the sessions are spread over.
    pub sockets: usize,
    /// Handshakes in flight during the ramp.
    pub concurrency: usize,
    /// Quiet time (no snapshot arriving) before the measured apply.
    pub settle: Duration,
    /// How long to wait for every affected session after the apply.
    pub timeout: Duration,
    pub threads: usize,
    /// Ask control for compressed snapshots, as the proxy does.
    pub compression: bool,
    /// Start this many control replicas on an etcd store instead of using
    /// the running control of `control`, `api`, `data_dir`, `control_pid`.
    pub replicas: Option<replicas::ReplicasConfig>,
}

/// Propagation latency summary, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// The first session to have it.
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Control's resource use, from /proc/PID.
#[derive(Debug, Clone, Serialize)]
pub struct ControlUsage {
    pub pid: u32,
    /// RSS when the fleet was connected and settled, before the apply.
    pub rss_settled_mib: f64,
    /// Highest RSS sampled (every 100 ms) during the whole run.
    pub rss_peak_sampled_mib: f64,
    /// The kernel's high-water mark (VmHWM) at the end: the true peak.
    pub rss_hwm_mib: f64,
    /// CPU seconds (user + system) while sessions connected and settled.
    pub cpu_ramp_s: f64,
    /// CPU seconds from the apply request until the last affected session
    /// had the new version.
    pub cpu_propagation_s: f64,
    /// Average CPU use over the idle (heartbeat-only) window after the
    /// propagation, in percent of one core.
    pub cpu_idle_pct: f64,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub command: String,
    pub sessions: usize,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub registered_endpoints: usize,
    pub calls_per_session: usize,
    pub distinct_views: usize,
    pub certificates: String,
    pub connected: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    pub ramp_s: f64,
    pub settle_s: f64,
    pub snapshots_during_ramp: u64,
    /// What the sessions asked for in their Hello: "zstd" or "none".
    pub compression: String,
    /// Snapshots received in all, and how many of them came compressed.
    pub snapshots: u64,
    pub compressed_snapshots: u64,
    pub changed_routes: usize,
    pub config_version: u64,
    /// Time the apply request took (HTTP round trip including the store's fsync).
    pub apply_ms: f64,
    pub affected: usize,
    pub reached: usize,
    /// Snapshots with the new version that arrived before the apply's
    /// answer did (counted as 0 ms).
    pub before_apply_returned: usize,
    pub propagation: Option<Percentiles>,
    /// The same, counted from when the apply request was sent.
    pub propagation_from_request: Option<Percentiles>,
    /// Sessions whose ACK of the new config version control has recorded
    /// (`GET /v1/proxies`).
    pub control_recorded_acks: Option<usize>,
    pub control: Option<ControlUsage>,
    /// This process's CPU seconds in the same window (the simulated proxies
    /// share the machine's cores with control).
    pub bench_cpu_propagation_s: f64,
    /// With `--replicas`: the etcd store the replicas shared, and the key
    /// prefix of this run.
    pub store: Option<String>,
    pub etcd_prefix: Option<String>,
    /// With `--replicas`: one row per replica (session `i` on replica
    /// `i % N`; the applies went through replica 0). Empty otherwise.
    pub replicas: Vec<ReplicaRow>,
}

/// One control replica's share of the run.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaRow {
    pub index: usize,
    pub quic: SocketAddr,
    pub api: SocketAddr,
    /// Its sessions, connected ones, and those the apply affected.
    pub sessions: usize,
    pub connected: usize,
    pub affected: usize,
    pub reached: usize,
    /// From the apply's answer (read from replica 0) to its sessions' ACKs.
    pub propagation: Option<Percentiles>,
    /// Its own sessions that its `GET /v1/proxies` lists as connected with
    /// the new config version applied.
    pub recorded_acks: Option<usize>,
    pub usage: Option<ControlUsage>,
}

impl FleetReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "fleet: {}", self.command);
        let _ = writeln!(
            s,
            "  sessions {} ({} connected, {} failed) | {} services x {} endpoints ({} registered) | {} calls each | {} distinct views",
            self.sessions,
            self.connected,
            self.failed,
            self.services,
            self.endpoints_per_service,
            self.registered_endpoints,
            self.calls_per_session,
            self.distinct_views
        );
        let _ = writeln!(s, "  certificates: {}", self.certificates);
        let _ = writeln!(
            s,
            "  ramp {:.1} s, settle {:.1} s, {} snapshots during ramp",
            self.ramp_s, self.settle_s, self.snapshots_during_ramp
        );
        let _ = writeln!(
            s,
            "  snapshot compression asked: {}; {} of {} snapshots arrived compressed",
            self.compression, self.compressed_snapshots, self.snapshots
        );
        let _ = writeln!(
            s,
            "  apply: {} routes changed -> config version {} in {:.1} ms",
            self.changed_routes, self.config_version, self.apply_ms
        );
        let _ = writeln!(
            s,
            "  propagation to {}/{} affected sessions ({} before the apply returned):",
            self.reached, self.affected, self.before_apply_returned
        );
        if let Some(p) = &self.propagation {
            let _ = writeln!(
                s,
                "    from apply returned: min {:.1} ms  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                p.min_ms, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
            );
        }
        if let Some(p) = &self.propagation_from_request {
            let _ = writeln!(
                s,
                "    from apply sent:     min {:.1} ms  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                p.min_ms, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
            );
        }
        if let Some(n) = self.control_recorded_acks {
            let _ = writeln!(s, "  control recorded the ACK of {n} sessions");
        }
        if let Some(c) = &self.control {
            let _ = writeln!(
                s,
                "  control pid {}: RSS settled {:.0} MiB, peak {:.0} MiB (sampled) / {:.0} MiB (VmHWM); CPU ramp {:.1} s, propagation {:.2} s, idle {:.1}%",
                c.pid,
                c.rss_settled_mib,
                c.rss_peak_sampled_mib,
                c.rss_hwm_mib,
                c.cpu_ramp_s,
                c.cpu_propagation_s,
                c.cpu_idle_pct
            );
        }
        let _ = writeln!(
            s,
            "  bench (simulated proxies) CPU during propagation: {:.2} s",
            self.bench_cpu_propagation_s
        );
        if !self.replicas.is_empty() {
            s += &self.replica_table();
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        s
    }
}

impl FleetReport {
    /// The replica rows as a markdown table (after a line naming the
    /// store), propagation counted from the apply's answer.
    pub fn replica_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n  store {} prefix {}; applies through replica 0\n",
            self.store.as_deref().unwrap_or("-"),
            self.etcd_prefix.as_deref().unwrap_or("-")
        );
        s += "| replica | sessions (connected) | reached / affected | ACKs in its /v1/proxies | min | p50 | p90 | p99 | max | RSS settled / peak (VmHWM) | CPU ramp / propagation / idle |\n";
        s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
        let ms = |p: &Option<Percentiles>, f: fn(&Percentiles) -> f64| {
            p.as_ref()
                .map_or("-".to_string(), |p| format!("{:.0} ms", f(p)))
        };
        for r in &self.replicas {
            let usage = r
                .usage
                .as_ref()
                .map_or(("-".to_string(), "-".to_string()), |u| {
                    (
                        format!("{:.0} / {:.0} MiB", u.rss_settled_mib, u.rss_hwm_mib),
                        format!(
                            "{:.1} s / {:.2} s / {:.1}%",
                            u.cpu_ramp_s, u.cpu_propagation_s, u.cpu_idle_pct
                        ),
                    )
                });
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.index,
                r.sessions,
                r.connected,
                r.reached,
                r.affected,
                r.recorded_acks.map_or("-".to_string(), |n| n.to_string()),
                ms(&r.propagation, |p| p.min_ms),
                ms(&r.propagation, |p| p.p50_ms),
                ms(&r.propagation, |p| p.p90_ms),
                ms(&r.propagation, |p| p.p99_ms),
                ms(&r.propagation, |p| p.max_ms),
                usage.0,
                usage.1
            );
        }
        if let Some(p) = &self.propagation {
            let _ = writeln!(
                s,
                "| all | {} ({}) | {} / {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | | |",
                self.sessions,
                self.connected,
                self.reached,
                self.affected,
                self.control_recorded_acks
                    .map_or("-".to_string(), |n| n.to_string()),
                p.min_ms,
                p.p50_ms,
                p.p90_ms,
                p.p99_ms,
                p.max_ms
            );
        }
        s
    }
}

pub fn service_name(i: usize) -> String {
    format!("fleet-{i:03}")
}

/// The services service `s` calls: `calls` others, spread over the ring.
pub fn calls_of(s: usize, services: usize, calls: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(calls);
    let mut k = 1;
    while out.len() < calls.min(services.saturating_sub(1)) {
        let c = (s + k * 7) % services;
        if c != s && !out.contains(&c) {
            out.push(c);
        }
        k += 1;
    }
    out
}

/// The YAML of every Service and Route; routes of services below `changed`
/// get the `changed` weights.
pub fn config_yaml(services: usize, changed: usize) -> String {
    let mut y = String::new();
    for i in 0..services {
        let name = service_name(i);
        let (w1, w2) = if i < changed { (50, 50) } else { (90, 10) };
        let _ = write!(
            y,
            "kind: Service\nname: {name}\nprotocol: http\n---\n\
             kind: Route\nname: {name}-route\nservice: {name}\nrules:\n  - backends:\n      \
             - {{ subset: {{ version: v1 }}, weight: {w1} }}\n      \
             - {{ subset: {{ version: v2 }}, weight: {w2} }}\n---\n"
        );
    }
    y
}

/// Sorted-sample percentile (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn percentiles(mut ms: Vec<f64>) -> Option<Percentiles> {
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Some(Percentiles {
        min_ms: ms[0],
        p50_ms: percentile(&ms, 50.0),
        p90_ms: percentile(&ms, 90.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: percentile(&ms, 100.0),
    })
}

// ---- control's /proc ----

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split(' ').nth(1).and_then(|r| r.parse::<u64>().ok()))
        .map_or(0, |p| p * page_size())
}

fn hwm_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn cpu_seconds(pid: u32) -> f64 {
    crate::sys::tree_cpu_seconds(pid)
}

/// The coremesh-control process started with this data directory.
fn find_control(data_dir: &Path) -> Option<u32> {
    let want = std::fs::canonicalize(data_dir).unwrap_or(data_dir.to_path_buf());
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if !args
            .first()
            .is_some_and(|a| a.ends_with("coremesh-control"))
        {
            continue;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let dir = args
            .iter()
            .position(|a| a == "--data-dir")
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| {
                args.iter()
                    .find_map(|a| a.strip_prefix("--data-dir=").map(str::to_string))
            });
        if let Some(d) = dir {
            let p = cwd.join(d);
            if std::fs::canonicalize(&p).unwrap_or(p) == want {
                return Some(pid);
            }
        }
    }
    None
}

// ---- QUIC ----

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(60)).expect("60 s fits"),
    ));
    t.keep_alive_interval(None);
    t
}

fn tls_builder(
    roots: &Arc<rustls::RootCertStore>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, JoinError>
{
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(JoinError::Tls)?
    .with_root_certificates(roots.clone()))
}

fn quic_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, JoinError> {
    let mut tls = tls;
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(JoinError::QuicTls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport()));
    Ok(cfg)
}

fn client_endpoint() -> Result<quinn::Endpoint, EndpointError> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(EndpointError::Socket)?;
    // Bursts of thousands of snapshots: let the kernel queue them.
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .map_err(EndpointError::Bind)?;
    let runtime = quinn::default_runtime().ok_or(EndpointError::NoRuntime)?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, sock.into(), runtime)
        .map_err(EndpointError::Quic)
}

struct Frames {
    recv: quinn::RecvStream,
    dec: FrameDecoder,
}

/// What a session reads of a control message: its type and the snapshot
/// versions; the rest (services, routes) is skipped, not built, so that
/// thousands of simulated proxies cost the simulator as little as possible.
#[derive(Debug, serde::Deserialize)]
struct Brief {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    config_version: u64,
    #[serde(default)]
    message: Option<String>,
}

impl Frames {
    /// Cancel-safe: a chunk is only taken once it is there.
    async fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        loop {
            if let Some(m) = self.dec.next::<T>().map_err(WireError::Decode)? {
                return Ok(Some(m));
            }
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(c)) => self.dec.push(&c.bytes),
                Ok(None) => return Ok(None),
                Err(e) => return Err(WireError::Read(e)),
            }
        }
    }
}

async fn write(send: &mut quinn::SendStream, msg: &ProxyMsg) -> Result<(), WireError> {
    let mut buf = Vec::new();
    wire::encode(msg, &mut buf).map_err(WireError::Encode)?;
    send.write_all(&buf).await.map_err(WireError::Write)
}

/// One join: a key and CSR made here, a token from the API; returns the
/// session client config for the service.
async fn join(
    ep: &quinn::Endpoint,
    control: SocketAddr,
    token: String,
    service: &str,
    roots: &Arc<rustls::RootCertStore>,
) -> Result<quinn::ClientConfig, JoinError> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(JoinError::Key)?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, service);
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(JoinError::Csr)?;
    let cfg = quic_config(tls_builder(roots)?.with_no_client_auth())?;
    let conn = ep
        .connect_with(cfg, control, SERVER_NAME)
        .map_err(JoinError::Connect)?
        .await
        .map_err(JoinError::Handshake)?;
    let (mut send, recv) = conn.open_bi().await.map_err(JoinError::Stream)?;
    write(
        &mut send,
        &ProxyMsg::Join {
            protocol: PROTOCOL_VERSION,
            token,
            csr_pem,
            node: JOIN_NODE.into(),
        },
    )
    .await?;
    let mut frames = Frames {
        recv,
        dec: FrameDecoder::new(wire::MAX_FRAME),
    };
    let cert_pem = match frames.next::<ControlMsg>().await? {
        Some(ControlMsg::Joined { cert_pem, .. }) => cert_pem,
        other => {
            return Err(JoinError::Answer {
                answer: format!("{other:?}"),
            })
        }
    };
    conn.close(0u32.into(), b"joined");
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(JoinError::Certificate)?;
    let key =
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(JoinError::KeyPem)?;
    quic_config(
        tls_builder(roots)?
            .with_client_auth_cert(chain, key)
            .map_err(JoinError::ClientCert)?,
    )
}

/// Shared between the session tasks and the driver.
struct Shared {
    base: Instant,
    ready: AtomicUsize,
    failed: AtomicUsize,
    errors: Mutex<Vec<String>>,
    snapshots: AtomicU64,
    compressed_snapshots: AtomicU64,
    /// What each Hello lists in `compression`.
    compression: Vec<String>,
    /// Nanoseconds since `base` of the last snapshot received.
    last_snapshot: AtomicU64,
    /// The config version being waited for (0: none yet).
    target: AtomicU64,
    /// Per session: nanoseconds since `base` (+1) when it had ACKed a
    /// snapshot with `target`; 0: not yet.
    reached: Vec<AtomicU64>,
    reached_count: AtomicUsize,
    /// Ready sessions per control (session `i` on control `i % len`).
    ready_on: Vec<AtomicUsize>,
    stop: AtomicBool,
    stopped: tokio::sync::Notify,
}

impl Shared {
    fn new(cfg: &FleetConfig, controls: usize) -> Shared {
        Shared {
            base: Instant::now(),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
            snapshots: AtomicU64::new(0),
            compressed_snapshots: AtomicU64::new(0),
            compression: if cfg.compression {
                vec![wire::ZSTD.to_string()]
            } else {
                Vec::new()
            },
            last_snapshot: AtomicU64::new(0),
            target: AtomicU64::new(0),
            reached: (0..cfg.sessions).map(|_| AtomicU64::new(0)).collect(),
            reached_count: AtomicUsize::new(0),
            ready_on: (0..controls.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            stop: AtomicBool::new(false),
            stopped: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn fail(&self, e: &SessionError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 10 {
            errors.push(error_chain(e));
        }
    }
}

struct SessionSpec {
    idx: usize,
    service: String,
    calls: Vec<String>,
    register: Option<(SocketAddr, BTreeMap<String, String>)>,
}

async fn session(
    spec: SessionSpec,
    ep: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    control: SocketAddr,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    if let Err(e) = session_inner(spec, ep, cfg, control, &shared, permit).await {
        // Once the run is over, the endpoints close under sessions that
        // were mid-read: not a failure.
        if !shared.stop.load(Ordering::Acquire) {
            shared.fail(&e);
        }
    }
}

async fn session_inner(
    spec: SessionSpec,
    ep: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    control: SocketAddr,
    shared: &Shared,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), SessionError> {
    let conn = ep
        .connect_with(cfg, control, SERVER_NAME)
        .map_err(SessionError::Connect)?
        .await
        .map_err(SessionError::Handshake)?;
    let (mut send, recv) = conn.open_bi().await.map_err(SessionError::Stream)?;
    let mut frames = Frames {
        recv,
        dec: FrameDecoder::new(wire::MAX_FRAME),
    };
    write(
        &mut send,
        &ProxyMsg::Hello {
            protocol: PROTOCOL_VERSION,
            service: spec.service.clone(),
            node: JOIN_NODE.into(),
            version: None,
            calls: Some(spec.calls.clone()),
            compression: shared.compression.clone(),
        },
    )
    .await?;
    let mut permit = Some(permit);
    let mut welcomed = false;
    let mut compressed = 0;
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT,
        HEARTBEAT + Duration::from_millis((spec.idx % 1000) as u64),
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::select! {
            msg = frames.next::<Brief>() => {
                let s = msg?.ok_or(SessionError::Ended)?;
                match s.kind.as_str() {
                    "welcome" => welcomed = true,
                    "snapshot" => {
                        if !welcomed {
                            return Err(SessionError::SnapshotBeforeWelcome);
                        }
                        write(&mut send, &ProxyMsg::Ack { version: s.version }).await?;
                        let now = shared.now();
                        shared.snapshots.fetch_add(1, Ordering::Relaxed);
                        if frames.dec.compressed_frames() > compressed {
                            compressed = frames.dec.compressed_frames();
                            shared.compressed_snapshots.fetch_add(1, Ordering::Relaxed);
                        }
                        shared.last_snapshot.fetch_max(now, Ordering::Relaxed);
                        let target = shared.target.load(Ordering::Acquire);
                        if target != 0
                            && s.config_version >= target
                            && shared.reached[spec.idx].load(Ordering::Relaxed) == 0
                        {
                            shared.reached[spec.idx].store(now + 1, Ordering::Release);
                            shared.reached_count.fetch_add(1, Ordering::AcqRel);
                        }
                        if permit.is_some() {
                            if let Some((address, labels)) = &spec.register {
                                write(&mut send, &ProxyMsg::Register {
                                    address: *address,
                                    labels: labels.clone(),
                                })
                                .await?;
                            }
                            permit = None;
                            shared.ready_on[spec.idx % shared.ready_on.len()]
                                .fetch_add(1, Ordering::Relaxed);
                            shared.ready.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    "error" => {
                        return Err(SessionError::Control { message: s.message.unwrap_or_default() })
                    }
                    other => return Err(SessionError::Unexpected { kind: other.to_string() }),
                }
            }
            _ = heartbeat.tick() => {
                write(&mut send, &ProxyMsg::Health { healthy: true, detail: String::new() }).await?;
            }
            _ = shared.stopped.notified() => {}
        }
    }
    conn.close(0u32.into(), b"bench done");
    Ok(())
}

/// Samples control's RSS until stopped; returns the peak.
fn spawn_sampler(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_bytes(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        peak
    })
}

/// What the run needs from the controls' data directories, and their pids.
struct Access {
    /// One control, or the replicas (the applies go through the first).
    nodes: Vec<Node>,
    /// The CA the controls share.
    roots: Arc<rustls::RootCertStore>,
}

/// One control: where sessions connect, its API and credential, its pid.
struct Node {
    quic: SocketAddr,
    /// Control's API, verified with the data directory's `api-ca.pem`.
    api: Api,
    credential: String,
    /// None: control's RSS and CPU are not reported.
    pid: Option<u32>,
}

/// Control's resource use, watched from the start of the sessions: its
/// RSS sampled in the background, its CPU read at each phase boundary.
struct ControlWatch {
    pid: Option<u32>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<u64>>,
    /// CPU seconds when the watch started.
    cpu0: f64,
}

impl ControlWatch {
    fn start(pid: Option<u32>) -> ControlWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = pid.map(|p| spawn_sampler(p, stop.clone()));
        ControlWatch {
            pid,
            stop,
            sampler,
            cpu0: pid.map_or(0.0, cpu_seconds),
        }
    }

    /// Control's CPU seconds now (0 without a pid).
    fn cpu(&self) -> f64 {
        self.pid.map_or(0.0, cpu_seconds)
    }

    /// Control's RSS now (0 without a pid).
    fn rss(&self) -> u64 {
        self.pid.map_or(0, rss_bytes)
    }

    /// Stops the sampler; the peak RSS it saw.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.and_then(|h| h.join().ok()).unwrap_or(0)
    }
}

/// The sessions of the run, in the order they connect.
struct Plan {
    /// Registering sessions first.
    specs: Vec<SessionSpec>,
    /// Sessions that register an endpoint.
    registered: usize,
    /// Per session index: whether it calls a service the measured apply
    /// changes.
    affected: Vec<bool>,
}

/// The session tasks, started and ready (or failed).
struct Ramped {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ramp_s: f64,
}

/// The quiet time after the ramp.
struct Settled {
    settle_s: f64,
    snapshots_during_ramp: u64,
    /// Each control's RSS and CPU seconds once settled.
    rss: Vec<u64>,
    cpu: Vec<f64>,
}

/// What the measured apply changes and who must see it.
struct Change {
    /// The first `services` services get the changed Route weights.
    services: usize,
    /// The config version the apply must make.
    version: u64,
    /// Sessions that call one of those services.
    affected: usize,
}

/// The measured apply and the window of its propagation.
struct Applied {
    /// The config version the apply made.
    version: u64,
    /// Nanoseconds since `Shared::base` when the apply was sent and when
    /// its answer was read.
    sent_ns: u64,
    returned_ns: u64,
    /// Sessions that call a changed service.
    affected: usize,
    /// Each control's CPU seconds when the last affected session had the
    /// new version (or the timeout passed), and after the idle window.
    cpu_propagated: Vec<f64>,
    cpu_idle_end: Vec<f64>,
    idle: Duration,
    /// This process's CPU seconds over the propagation.
    bench_cpu_s: f64,
}

/// When the affected sessions had the new version.
struct Propagation {
    /// Milliseconds from the apply's answer (0 if before it).
    from_returned: Vec<f64>,
    /// Milliseconds from the apply request.
    from_sent: Vec<f64>,
    /// How many had it before the apply's answer was read.
    early: usize,
}

pub fn run(cfg: &FleetConfig, command: String) -> Result<FleetReport, FleetError> {
    // Declared first, dropped last: the replicas outlive every session.
    let started = cfg
        .replicas
        .as_ref()
        .map(replicas::start)
        .transpose()
        .map_err(|e| FleetError::Replicas(Box::new(e)))?;
    let access = prepare(cfg, started.as_ref())?;
    let n = access.nodes.len();
    let first = &access.nodes[0];

    // 1. The starting config.
    let changed = cfg.changed.min(cfg.services);
    let v0 =
        apply(&first.api, &first.credential, &config_yaml(cfg.services, 0)).map_err(|source| {
            FleetError::Apply {
                what: "starting",
                source,
            }
        })?;
    eprintln!("[fleet] config version {} (v1 90 / v2 10)", v0.version);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()
        .map_err(FleetError::Runtime)?;
    let shared = Arc::new(Shared::new(cfg, n));
    let watches: Vec<ControlWatch> = access
        .nodes
        .iter()
        .map(|node| ControlWatch::start(node.pid))
        .collect();
    let _guard = rt.enter();
    let endpoints = (0..cfg.sockets)
        .map(|index| client_endpoint().map_err(|source| FleetError::Endpoint { index, source }))
        .collect::<Result<Vec<_>, _>>()?;

    // 2. Joins, one per service.
    let configs = join_services(&rt, cfg, &access, &endpoints)?;
    let plan = Plan::new(cfg, changed);

    // 3. Ramp and settle.
    let quics: Vec<SocketAddr> = access.nodes.iter().map(|node| node.quic).collect();
    let ramped = ramp(&rt, cfg, plan.specs, &endpoints, &configs, &quics, &shared);
    let settled = settle(&rt, cfg, &shared, &watches);

    // 4. The measured apply (through the first control).
    let change = Change {
        services: changed,
        version: v0.version + 1,
        affected: plan.affected.iter().filter(|a| **a).count(),
    };
    let applied = measured_apply(&rt, cfg, first, &shared, &watches, &change)?;
    let propagation = propagation(&shared, &plan.affected, &applied, |_| true);

    // 5. Each control's own record of its own sessions.
    let recorded: Vec<Option<usize>> = access
        .nodes
        .iter()
        .map(|node| recorded_acks(node, change.version))
        .collect();

    let cpu0: Vec<f64> = watches.iter().map(|w| w.cpu0).collect();
    let peaks = shut_down(&rt, &shared, watches, &endpoints, ramped.tasks);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let usage = |k: usize| {
        access.nodes[k].pid.map(|pid| ControlUsage {
            pid,
            rss_settled_mib: mib(settled.rss[k]),
            rss_peak_sampled_mib: mib(peaks[k]),
            rss_hwm_mib: mib(hwm_bytes(pid)),
            cpu_ramp_s: settled.cpu[k] - cpu0[k],
            cpu_propagation_s: applied.cpu_propagated[k] - settled.cpu[k],
            cpu_idle_pct: (applied.cpu_idle_end[k] - applied.cpu_propagated[k])
                / applied.idle.as_secs_f64()
                * 100.0,
        })
    };
    let rows: Vec<ReplicaRow> = match &started {
        None => Vec::new(),
        Some(_) => (0..n)
            .map(|k| {
                let mine = propagation_of(&shared, &plan.affected, &applied, k, n);
                ReplicaRow {
                    index: k,
                    quic: access.nodes[k].quic,
                    api: access.nodes[k].api.addr,
                    sessions: (0..cfg.sessions).filter(|i| i % n == k).count(),
                    connected: shared.ready_on[k].load(Ordering::Relaxed),
                    affected: (0..cfg.sessions)
                        .filter(|i| i % n == k && plan.affected[*i])
                        .count(),
                    reached: mine.from_returned.len(),
                    propagation: percentiles(mine.from_returned),
                    recorded_acks: recorded[k],
                    usage: usage(k),
                }
            })
            .collect(),
    };
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(FleetReport {
        command,
        sessions: cfg.sessions,
        services: cfg.services,
        endpoints_per_service: cfg.endpoints,
        registered_endpoints: plan.registered,
        calls_per_session: cfg.calls,
        distinct_views: cfg.services,
        certificates: format!(
            "one join per service ({} joins); each session of a service reuses its certificate and key",
            cfg.services
        ),
        connected: shared.ready.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        errors,
        ramp_s: ramped.ramp_s,
        settle_s: settled.settle_s,
        snapshots_during_ramp: settled.snapshots_during_ramp,
        compression: if cfg.compression { wire::ZSTD } else { "none" }.to_string(),
        snapshots: shared.snapshots.load(Ordering::Relaxed),
        compressed_snapshots: shared.compressed_snapshots.load(Ordering::Relaxed),
        changed_routes: changed,
        config_version: applied.version,
        apply_ms: (applied.returned_ns - applied.sent_ns) as f64 / 1e6,
        affected: applied.affected,
        reached: propagation.from_returned.len(),
        before_apply_returned: propagation.early,
        propagation: percentiles(propagation.from_returned),
        propagation_from_request: percentiles(propagation.from_sent),
        control_recorded_acks: recorded.iter().copied().sum(),
        control: if started.is_none() { usage(0) } else { None },
        bench_cpu_propagation_s: applied.bench_cpu_s,
        store: started.as_ref().map(|r| r.store.clone()),
        etcd_prefix: started.as_ref().map(|r| r.prefix.clone()),
        replicas: rows,
    })
}

/// Checks the counts; reads the operator credentials and the controls'
/// CA; finds control's pid (one control); raises RLIMIT_NOFILE.
fn prepare(cfg: &FleetConfig, started: Option<&replicas::Replicas>) -> Result<Access, FleetError> {
    if cfg.services == 0 || cfg.sessions == 0 || cfg.sockets == 0 || cfg.concurrency == 0 {
        return Err(FleetError::Zero);
    }
    let (nodes, ca_dir) = match started {
        Some(set) => {
            let nodes = set
                .controls
                .iter()
                .zip(&set.data_dirs)
                .enumerate()
                .map(|(index, (c, dir))| {
                    node(c.quic, c.api, dir, Some(c.running.pid())).map_err(|e| match e {
                        FleetError::Apply { source, .. } => FleetError::ReplicaAccess {
                            index,
                            api: c.api,
                            source: Box::new(source),
                        },
                        other => other,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (nodes, set.data_dirs[0].clone())
        }
        None => {
            let pid = cfg.control_pid.or_else(|| find_control(&cfg.data_dir));
            if pid.is_none() {
                eprintln!("[fleet] control's pid not found (pass --control-pid): no RSS/CPU");
            }
            let one = node(cfg.control, cfg.api, &cfg.data_dir, pid)?;
            (vec![one], cfg.data_dir.clone())
        }
    };
    let ca_path = ca_dir.join("ca.pem");
    let ca_pem = std::fs::read(&ca_path).map_err(|source| FleetError::Read {
        path: ca_path.clone(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|source| FleetError::CaPem {
            path: ca_path.clone(),
            source,
        })?;
        roots.add(c).map_err(|source| FleetError::CaCert {
            path: ca_path.clone(),
            source,
        })?;
    }
    crate::sys::raise_nofile(65536);
    Ok(Access {
        nodes,
        roots: Arc::new(roots),
    })
}

/// A control whose data directory is `data_dir`: its operator credential
/// and API client.
fn node(
    quic: SocketAddr,
    api: SocketAddr,
    data_dir: &Path,
    pid: Option<u32>,
) -> Result<Node, FleetError> {
    let cred_path = data_dir.join("operator.credential");
    let credential = std::fs::read_to_string(&cred_path)
        .map_err(|source| FleetError::Read {
            path: cred_path,
            source,
        })?
        .trim()
        .to_string();
    let api = Api::new(api, data_dir).map_err(|source| FleetError::Apply {
        what: "starting",
        source,
    })?;
    Ok(Node {
        quic,
        api,
        credential,
        pid,
    })
}

/// One join per service (a token from the API, then a join over QUIC, all
/// services at once; service `s` through control `s % controls`); the
/// client config of each service's sessions.
fn join_services(
    rt: &tokio::runtime::Runtime,
    cfg: &FleetConfig,
    access: &Access,
    endpoints: &[quinn::Endpoint],
) -> Result<Vec<quinn::ClientConfig>, FleetError> {
    let t_join = Instant::now();
    let mut configs = Vec::with_capacity(cfg.services);
    rt.block_on(async {
        let mut joins = Vec::new();
        for s in 0..cfg.services {
            let name = service_name(s);
            let via = &access.nodes[s % access.nodes.len()];
            let body = serde_json::json!({"service": name, "uses": 1, "ttl_secs": 600});
            let created: TokenCreated = json(
                &via.api,
                &via.credential,
                "POST",
                "/v1/tokens",
                body.to_string().as_bytes(),
            )
            .map_err(|source| FleetError::Token {
                service: name.clone(),
                source,
            })?;
            let ep = endpoints[s % endpoints.len()].clone();
            let control = via.quic;
            let roots = access.roots.clone();
            joins.push(tokio::spawn(async move {
                join(&ep, control, created.token, &name, &roots)
                    .await
                    .map_err(|source| FleetError::Join {
                        service: name,
                        source,
                    })
            }));
        }
        for j in joins {
            configs.push(j.await.map_err(FleetError::JoinTask)??);
        }
        Ok::<(), FleetError>(())
    })?;
    eprintln!(
        "[fleet] {} joins in {:.1} s",
        cfg.services,
        t_join.elapsed().as_secs_f64()
    );
    Ok(configs)
}

impl Plan {
    /// Session `i` belongs to service `i % services`; its replica number
    /// `i / services` below `endpoints` registers an endpoint (the first
    /// half `v1`, the rest `v2`).
    fn new(cfg: &FleetConfig, changed: usize) -> Plan {
        let mut specs: Vec<SessionSpec> = (0..cfg.sessions)
            .map(|i| {
                let s = i % cfg.services;
                let replica = i / cfg.services;
                let register = (replica < cfg.endpoints).then(|| {
                    let port = BASE_PORT + (s * cfg.endpoints + replica) as u16;
                    let version = if replica < cfg.endpoints.div_ceil(2) {
                        "v1"
                    } else {
                        "v2"
                    };
                    (
                        SocketAddr::from(([127, 0, 0, 1], port)),
                        [("version".to_string(), version.to_string())].into(),
                    )
                });
                SessionSpec {
                    idx: i,
                    service: service_name(s),
                    calls: calls_of(s, cfg.services, cfg.calls)
                        .into_iter()
                        .map(service_name)
                        .collect(),
                    register,
                }
            })
            .collect();
        specs.sort_by_key(|s| (s.register.is_none(), s.idx));
        let registered = specs.iter().filter(|s| s.register.is_some()).count();
        let affected: Vec<bool> = (0..cfg.sessions)
            .map(|i| {
                calls_of(i % cfg.services, cfg.services, cfg.calls)
                    .iter()
                    .any(|c| *c < changed)
            })
            .collect();
        Plan {
            specs,
            registered,
            affected,
        }
    }
}

/// Starts every session (`--concurrency` handshakes at a time; session
/// `i` connects to `quics[i % len]`) and waits until each is ready or has
/// failed.
fn ramp(
    rt: &tokio::runtime::Runtime,
    cfg: &FleetConfig,
    specs: Vec<SessionSpec>,
    endpoints: &[quinn::Endpoint],
    configs: &[quinn::ClientConfig],
    quics: &[SocketAddr],
    shared: &Arc<Shared>,
) -> Ramped {
    let t_ramp = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency));
    let mut tasks = Vec::with_capacity(cfg.sessions);
    rt.block_on(async {
        for (n, spec) in specs.into_iter().enumerate() {
            let permit = sem.clone().acquire_owned().await.expect("semaphore open");
            let svc = spec.idx % cfg.services;
            let quic = quics[spec.idx % quics.len()];
            tasks.push(tokio::spawn(session(
                spec,
                endpoints[n % endpoints.len()].clone(),
                configs[svc].clone(),
                quic,
                shared.clone(),
                permit,
            )));
            if n % 1000 == 999 {
                eprintln!(
                    "[fleet] {} started, {} ready, {} failed, {:.1} s",
                    n + 1,
                    shared.ready.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed),
                    t_ramp.elapsed().as_secs_f64()
                );
            }
        }
        while shared.ready.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire)
            < cfg.sessions
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let ramp_s = t_ramp.elapsed().as_secs_f64();
    eprintln!(
        "[fleet] {} ready, {} failed after {ramp_s:.1} s; settling",
        shared.ready.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed)
    );
    Ramped { tasks, ramp_s }
}

/// Waits until no snapshot has arrived for `--settle` (120 s at most).
fn settle(
    rt: &tokio::runtime::Runtime,
    cfg: &FleetConfig,
    shared: &Shared,
    watches: &[ControlWatch],
) -> Settled {
    let t_settle = Instant::now();
    rt.block_on(async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let quiet = shared
                .now()
                .saturating_sub(shared.last_snapshot.load(Ordering::Acquire));
            if quiet >= cfg.settle.as_nanos() as u64
                || t_settle.elapsed() > Duration::from_secs(120)
            {
                break;
            }
        }
    });
    Settled {
        settle_s: t_settle.elapsed().as_secs_f64(),
        snapshots_during_ramp: shared.snapshots.load(Ordering::Relaxed),
        rss: watches.iter().map(ControlWatch::rss).collect(),
        cpu: watches.iter().map(ControlWatch::cpu).collect(),
    }
}

/// Applies `change` (which must make its config version), waits until
/// its affected sessions have it or `--timeout` passes, then an idle
/// window of heartbeats.
fn measured_apply(
    rt: &tokio::runtime::Runtime,
    cfg: &FleetConfig,
    via: &Node,
    shared: &Shared,
    watches: &[ControlWatch],
    change: &Change,
) -> Result<Applied, FleetError> {
    let target = change.version;
    shared.target.store(target, Ordering::Release);
    let yaml = config_yaml(cfg.services, change.services);
    let api = via.api.clone();
    let bench_cpu1 = {
        let (u, s) = crate::sys::self_cpu_seconds();
        u + s
    };
    let sent_ns = shared.now();
    let result = rt.block_on(async {
        let cred = via.credential.clone();
        tokio::task::spawn_blocking(move || apply(&api, &cred, &yaml))
            .await
            .map_err(FleetError::ApplyTask)?
            .map_err(|source| FleetError::Apply {
                what: "measured",
                source,
            })
    })?;
    let returned_ns = shared.now();
    // For reading the controls' logs against the run.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "[fleet] measured apply answered at {}.{:06} (Unix time)",
        wall.as_secs(),
        wall.subsec_micros()
    );
    if result.version != target {
        return Err(FleetError::Version {
            got: result.version,
            want: target,
        });
    }
    let deadline = Instant::now() + cfg.timeout;
    rt.block_on(async {
        while shared.reached_count.load(Ordering::Acquire) < change.affected
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let cpu_propagated = watches.iter().map(ControlWatch::cpu).collect();
    let bench_cpu2 = {
        let (u, s) = crate::sys::self_cpu_seconds();
        u + s
    };
    // Idle window: heartbeats only.
    let idle = Duration::from_secs(5);
    std::thread::sleep(idle);
    Ok(Applied {
        version: result.version,
        sent_ns,
        returned_ns,
        affected: change.affected,
        cpu_propagated,
        cpu_idle_end: watches.iter().map(ControlWatch::cpu).collect(),
        idle,
        bench_cpu_s: bench_cpu2 - bench_cpu1,
    })
}

/// When each affected session of control `k` of `n` had the new version.
fn propagation_of(
    shared: &Shared,
    affected: &[bool],
    applied: &Applied,
    k: usize,
    n: usize,
) -> Propagation {
    propagation(shared, affected, applied, |i| i % n == k)
}

/// When each affected session (of those `keep` takes) had the new
/// version, from the apply's answer and from its request.
fn propagation(
    shared: &Shared,
    affected: &[bool],
    applied: &Applied,
    keep: impl Fn(usize) -> bool,
) -> Propagation {
    let mut p = Propagation {
        from_returned: Vec::new(),
        from_sent: Vec::new(),
        early: 0,
    };
    for (i, r) in shared.reached.iter().enumerate() {
        let r = r.load(Ordering::Acquire);
        if r == 0 || !affected[i] || !keep(i) {
            continue;
        }
        let at = r - 1;
        if at < applied.returned_ns {
            p.early += 1;
        }
        p.from_returned
            .push(at.saturating_sub(applied.returned_ns) as f64 / 1e6);
        p.from_sent
            .push(at.saturating_sub(applied.sent_ns) as f64 / 1e6);
    }
    p
}

/// Sessions connected to this control whose ACK of config version
/// `target` it has recorded (`GET /v1/proxies`: rows of [`JOIN_NODE`]
/// connected, with that config version applied); None if it could not
/// say.
fn recorded_acks(node: &Node, target: u64) -> Option<usize> {
    http(&node.api, &node.credential, "GET", "/v1/proxies", b"")
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<ProxyStatus>>(&b).ok())
        .map(|ps| {
            ps.iter()
                .filter(|p| {
                    p.connected && p.node == JOIN_NODE && p.applied_config_version == Some(target)
                })
                .count()
        })
}

/// Stops the sessions and the RSS samplers, closes the endpoints, and
/// gives each session task a second to finish; each control's peak RSS
/// sampled.
fn shut_down(
    rt: &tokio::runtime::Runtime,
    shared: &Shared,
    watches: Vec<ControlWatch>,
    endpoints: &[quinn::Endpoint],
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> Vec<u64> {
    shared.stop.store(true, Ordering::Release);
    shared.stopped.notify_waiters();
    let peak = watches.into_iter().map(ControlWatch::stop).collect();
    rt.block_on(async {
        for ep in endpoints {
            ep.close(0u32.into(), b"bench done");
        }
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    });
    peak
}

pub mod replicas;
#[cfg(test)]
mod tests;
