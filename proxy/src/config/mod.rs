//! Configuration: `proxy.toml` → [`Config`].
//!
//! The file is read once per start or reload and goes through three steps:
//!
//! ```text
//! text ──toml + serde──▶ FileConfig (file.rs: as written, unknown keys rejected)
//!      ──resolve.rs────▶ Config     (validated, defaults filled in, typed)
//!      ──reload.rs─────▶ check_reload(old, new): may a running proxy apply it?
//! ```
//!
//! Every error is one line naming the file, the key and the reason
//! ([`ConfigError`]); the code past this module never sees a string address or
//! duration. [`REFERENCE`] documents every key for `--help` and the README.

mod affinity;
mod duration;
mod error;
mod file;
mod intercept;
mod reference;
mod reload;
mod resolve;
#[cfg(test)]
pub(crate) use resolve::POOLED_BUF;
mod target;
#[cfg(test)]
mod tests;
mod unix;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

pub use error::{ConfigError, ConfigErrorKind};
pub use reference::REFERENCE;
pub use target::{parse_target, HostPort, Target, TargetError};
pub use unix::{AppAddr, ListenAddr, UnixListen, UNIX_APP};

/// Formats a duration as `proxy.toml` writes it (`"500ms"`, `"10s"`, `"2m"`).
pub fn format_duration(d: Duration) -> String {
    duration::format(d)
}

/// The validated configuration of one proxy process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this configuration came from, for messages.
    pub source: PathBuf,
    /// `[proxy]`: identity, shards, admin endpoint.
    pub proxy: ProxyConfig,
    /// `[inbound]`: peer proxies → local app. `None` when the section is absent.
    pub inbound: Option<InboundConfig>,
    /// `[outbound]`: local app → other services. `None` when the section is absent.
    pub outbound: Option<OutboundConfig>,
    /// `[[services]]`, in file order; names are unique.
    pub services: Vec<ServiceConfig>,
    /// `[timeouts]`.
    pub timeouts: Timeouts,
    /// `[limits]`.
    pub limits: Limits,
    /// `[upstream]`.
    pub upstream: UpstreamConfig,
    /// `[control]`: the control plane. `None`: only the static `[[services]]`.
    pub control: Option<ControlConfig>,
    /// `[tls]`: mutual TLS from files (static mode, without `[control]`).
    pub tls: Option<TlsConfig>,
    /// `[[resilience]]`: per-service Resilience blocks for the static
    /// `[[services]]` and this proxy's own service (control's, when there is
    /// a control plane, take precedence for the services it defines).
    pub resilience: Vec<coremesh_api::resource::Resilience>,
    /// `[intercept]`: the app's connections are redirected to this proxy by
    /// nftables (`coremesh-proxy --intercept apply`). `None`: no
    /// interception; the proxy reads no original destinations and marks no
    /// sockets.
    pub intercept: Option<InterceptConfig>,
    /// `[access_log]`: the format, sampling and on/off of the access log
    /// (its file is `[proxy] access_log`).
    pub access_log: AccessLogConfig,
}

/// How access log lines are written (see `accesslog.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Close to the combined log format, then `key=value` pairs.
    Text,
}

impl AccessLogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogFormat::Json => "json",
            AccessLogFormat::Text => "text",
        }
    }
}

/// `[access_log]`: all of it applies on SIGHUP (the file does not: it is
/// opened at start).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// `false`: no line is written (the file stays open).
    pub enabled: bool,
    pub format: AccessLogFormat,
    /// The share of requests logged, `0.0..=1.0`; answers with a 5xx
    /// status, and requests that got no answer, are always logged.
    pub sample: f64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            format: AccessLogFormat::Json,
            sample: 1.0,
        }
    }
}

/// `[intercept]`: what the nftables ruleset of this proxy redirects, and
/// how the proxy's own connections are told apart. Needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptConfig {
    /// SO_MARK set on every upstream socket the proxy opens, and the mark
    /// the ruleset lets through unredirected (otherwise the proxy's own
    /// connections would come back to it). Not 0.
    pub mark: u32,
    /// Whether the app's outgoing TCP connections are redirected to
    /// `[outbound] listen` (default: when `[outbound]` is present).
    pub outbound: bool,
    /// Ports whose incoming connections (from other hosts) are redirected
    /// to `[inbound] listen`; default: the port of `[inbound] app`.
    pub inbound_ports: Vec<u16>,
    /// Destination ports the app reaches directly, never redirected.
    pub exclude_outbound_ports: Vec<u16>,
    /// Users whose outgoing connections are never redirected (an option
    /// besides the mark, e.g. for an agent running beside the proxy).
    pub exclude_uids: Vec<u32>,
}

/// `[tls]`: this proxy's certificate, key and trusted roots, re-read on every
/// reload. With it, the inbound listener requires mutual TLS and the static
/// `[[services]]` are called over mutual TLS. A relative path in the file is
/// joined to the directory of [`Config::source`]; the files are not read
/// while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM chain, leaf first; the leaf names `spiffe://<trust-domain>/service/<name>`.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM roots that peer certificates must chain to.
    pub ca: PathBuf,
}

/// One `[[outbound.tcp]]` entry: a TCP service reached through a local listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpUpstreamConfig {
    /// The service (`protocol: tcp`) whose endpoints the bytes go to.
    pub service: String,
    /// Local address the app connects to instead of the service.
    pub listen: SocketAddr,
}

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Name of the service this proxy fronts (DNS-label-like, at most 63 characters).
    pub service: String,
    /// Number of shards, one executor thread each; 1..=256. Equals `cpus.len()`
    /// when `cpus` is given.
    pub cores: usize,
    /// CPUs to pin shard `i` to (`cpus[i]`), distinct and within this process's
    /// allowed CPU set at load time. `None`: shards are not pinned.
    pub cpus: Option<Vec<usize>>,
    /// Admin HTTP endpoint (`/metrics`, `/config`, ...).
    pub admin: SocketAddr,
    /// Labels attached to this proxy's stats; keys and values are non-empty.
    pub labels: BTreeMap<String, String>,
    /// On shutdown, how long to wait for in-flight requests before closing.
    pub drain_timeout: Duration,
    /// Where to append access log lines; `None`: no access log.
    pub access_log: Option<PathBuf>,
    /// The Unix socket on which this proxy hands its listening sockets to a
    /// successor (`coremesh-proxy --upgrade-from PATH`); `None`: no
    /// upgrades in place.
    pub upgrade_socket: Option<PathBuf>,
}

/// `[inbound]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundConfig {
    /// Address peer proxies connect to.
    pub listen: SocketAddr,
    /// The local app that inbound requests are forwarded to: a TCP
    /// address, or a Unix stream socket.
    pub app: AppAddr,
    /// Lowercase name of the header in which the app receives the caller's
    /// SPIFFE ID (mutual TLS only); the proxy removes it from requests first.
    pub identity_header: Option<String>,
    /// What peers may send: HTTP requests (`"http"`, the default), or the
    /// byte stream of a TCP service (`"tcp"`: ALPN `coremesh-tcp`, relayed
    /// to `app` as is). A connection of the other kind is refused, so no
    /// caller can open a raw stream into an HTTP app.
    pub tcp: bool,
    /// What the app speaks (`app_protocol`).
    pub app_protocol: AppProtocol,
}

/// `[inbound] app_protocol`: the protocol requests reach the app in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppProtocol {
    /// The client's own (`"auto"`, the default): HTTP/1.1 as HTTP/1.1, h2
    /// (and gRPC) as h2c with prior knowledge.
    #[default]
    Auto,
    /// HTTP/1.1 only (`"http1"`): h2 requests are translated.
    Http1,
    /// h2c with prior knowledge only (`"h2c"`): HTTP/1.1 requests are
    /// translated (upgrades excepted).
    H2c,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Auto => "auto",
            AppProtocol::Http1 => "http1",
            AppProtocol::H2c => "h2c",
        }
    }
}

/// `[outbound]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    /// Where the local app sends its outgoing HTTP requests: a TCP address
    /// (default `127.0.0.1:4140`) or a Unix socket file; bound even when
    /// the file gives only `[[outbound.tcp]]` entries.
    pub listen: ListenAddr,
    /// Forward requests whose authority names no known service straight to the
    /// address it names, instead of answering 503.
    pub passthrough: bool,
    /// `[[outbound.tcp]]`: local listeners of TCP services.
    pub tcp: Vec<TcpUpstreamConfig>,
}

/// One `[[services]]` entry: a service the local app may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Service name, matched against the request's authority (without port).
    pub name: String,
    /// Addresses of the service's instances; may be empty (requests get 503).
    /// As loaded: the IP literals of `endpoints` only; the agent adds the
    /// addresses of [`ServiceConfig::names`] once resolved, and the shards
    /// only ever see this list.
    pub endpoints: Vec<SocketAddr>,
    /// Entries given as `host:port`, resolved by the agent (at start and
    /// every 30 s).
    pub names: Vec<HostPort>,
    /// What the endpoints speak (`protocol`), as `[inbound] app_protocol`.
    pub protocol: AppProtocol,
}

/// `[timeouts]`. Every value is > 0 and ≤ 24h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Upstream TCP connect.
    pub connect: Duration,
    /// From the first byte of a request until its head is complete (slowloris).
    pub head_read: Duration,
    /// An idle client connection between requests.
    pub keepalive_idle: Duration,
    /// From the request head being sent upstream until the response head arrives.
    pub request: Duration,
    /// No byte moving in either direction during a body transfer or tunnel.
    pub idle: Duration,
    /// A whole HTTP exchange, from the request head received until the
    /// response is complete (tunnels after CONNECT or 101 are bounded by
    /// `idle` instead).
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(1),
            head_read: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(60),
            request: Duration::from_secs(15),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(300),
        }
    }
}

/// `[limits] buffer_budget` default: 256 MiB. A sidecar shares its host
/// with its app; at about 96 KiB per request moving a body (head, response
/// and two body buffers) it still holds some 2,700 such requests at once.
pub const DEFAULT_BUFFER_BUDGET: usize = 256 * 1024 * 1024;

/// `[limits] connection_buffer_budget` default: 32 MiB, room for the
/// largest request body a route may keep for retries (`maxBodyBytes`, at
/// most 16 MiB) beside the head and relay buffers.
pub const DEFAULT_CONNECTION_BUFFER_BUDGET: usize = 32 * 1024 * 1024;

/// `[limits]`: bounds on what a peer may send, enforced by the HTTP/1 codec,
/// and on the buffers the proxy holds for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request or response head in bytes (1024..=1048576); a larger
    /// head is refused.
    pub max_head_bytes: usize,
    /// Longest request line in bytes (256..=max_head_bytes); a longer one is refused.
    pub max_request_line: usize,
    /// Most header fields in one head (1..=512); more are refused.
    pub max_headers: usize,
    /// Bytes of buffers all in-flight requests together may hold
    /// (65536..=2^40); beyond it new requests and streams get 503
    /// `buffer budget exhausted` (shard/budget.rs says what is charged).
    pub buffer_budget: usize,
    /// Bytes of buffers one connection may hold: an HTTP/1.1 request, or an
    /// HTTP/2 connection's streams together (max_head_bytes + 16384 ..=
    /// buffer_budget).
    pub connection_buffer_budget: usize,
    /// `[limits.h2]`: what an HTTP/2 peer may do.
    pub h2: H2Limits,
}

impl Limits {
    /// `(buffer_budget, connection_buffer_budget)`, as shard/budget.rs takes them.
    pub fn budgets(&self) -> (usize, usize) {
        (self.buffer_budget, self.connection_buffer_budget)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 65_536,
            max_request_line: 8_192,
            max_headers: 100,
            buffer_budget: DEFAULT_BUFFER_BUDGET,
            connection_buffer_budget: DEFAULT_CONNECTION_BUFFER_BUDGET,
            h2: H2Limits::default(),
        }
    }
}

/// `[limits.h2]`: bounds on an HTTP/2 peer, each against one attack
/// (the header list is bounded by `max_head_bytes`, which also bounds
/// CONTINUATION frames and HPACK bombs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    /// Streams a client may have open at once on one connection; more are
    /// refused with REFUSED_STREAM (1..=65535).
    pub max_concurrent_streams: u32,
    /// Flow-control window per stream, in bytes: what a peer may send
    /// before the proxy passed it on, so what a slow reader makes the
    /// proxy hold per stream (16384..=16777216).
    pub stream_window: u32,
    /// Flow-control window per client connection, all its streams together
    /// (stream_window..=2147483647).
    pub connection_window: u32,
    /// Flow-control window per upstream connection, shared by the many
    /// clients' streams it carries (stream_window..=2147483647).
    pub upstream_connection_window: u32,
    /// Streams a client may reset before the proxy accepted them, at once
    /// (rapid reset, CVE-2023-44487); beyond it, GOAWAY ENHANCE_YOUR_CALM
    /// (1..=10000).
    pub max_pending_resets: usize,
    /// Streams the proxy may reset for a client's protocol errors before it
    /// ends the connection with ENHANCE_YOUR_CALM (1..=100000).
    pub max_local_resets: usize,
    /// SETTINGS frames (not ACKs) a peer may send in a second; beyond it
    /// the connection is closed (1..=100000).
    pub max_settings_per_second: u32,
    /// PING frames (not ACKs) a peer may send in a second (1..=100000).
    pub max_pings_per_second: u32,
    /// Empty DATA frames without END_STREAM a peer may send in a second
    /// (1..=100000).
    pub max_empty_frames_per_second: u32,
}

impl Default for H2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
            // Many clients' streams share one upstream connection: with a
            // window of a few streams' worth, a handful of clients that stop
            // reading (each stalled stream holds its stream window) would
            // leave no window for anyone else's answers on it. 16 MiB takes
            // 64 stalled streams; what the proxy holds stays bounded per
            // stream by the stream window.
            upstream_connection_window: 16 * 1024 * 1024,
            max_pending_resets: 32,
            max_local_resets: 256,
            max_settings_per_second: 100,
            max_pings_per_second: 100,
            max_empty_frames_per_second: 100,
        }
    }
}

/// `[upstream]`: connection pooling towards endpoints and the local app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// How long an idle pooled upstream connection is kept (> 0, ≤ 24h).
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections per endpoint, on each shard; 0 disables pooling.
    pub max_idle_per_endpoint: usize,
    /// HTTP/1.1 requests to peer proxies ride shared h2 connections over
    /// mutual TLS (the multiplexed mesh hop); off (the default): one
    /// HTTP/1.1 connection per request in flight.
    pub multiplex: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            pool_idle_timeout: Duration::from_secs(30),
            max_idle_per_endpoint: 64,
            multiplex: false,
        }
    }
}

/// `[control]`: where control is and what this proxy tells it. Every key needs
/// a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Control's QUIC addresses, in order; the first reachable one is used.
    /// Host names are resolved each time the proxy connects. Never empty.
    pub addresses: Vec<Target>,
    /// The join token, read (and trimmed) only while `state_dir` holds no
    /// certificate.
    pub token_file: Option<PathBuf>,
    /// Certificate, key, CA and the last good snapshot (created mode 0700,
    /// files 0600).
    pub state_dir: PathBuf,
    /// Node name reported to control; defaults to the host name.
    pub node: String,
    /// The address registered as this proxy's endpoint; `None`: the bound
    /// `[inbound] listen` address (with a wildcard IP replaced by the local IP
    /// of the connection to control).
    pub advertise: Option<SocketAddr>,
    /// The services the local app calls (control sends only their routes and
    /// endpoints); `None`: all services.
    pub calls: Option<Vec<String>>,
    /// Accept snapshots from a control store other than the one whose
    /// policy the proxy runs (a store migration). Off: such snapshots are
    /// refused (NACK) and the running policy stays.
    pub allow_store_change: bool,
    /// `[control.health]`: how the local app is checked.
    pub health: HealthConfig,
}

/// `[control.health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    /// Path of the HTTP check (starts with `/`).
    pub path: String,
    /// The service a gRPC check asks about; empty: the server as a whole.
    pub grpc_service: String,
    /// Time between two checks (> 0).
    pub interval: Duration,
    /// Time one check may take (> 0).
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            kind: HealthKind::Tcp,
            path: "/healthz".to_owned(),
            grpc_service: String::new(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }
}

/// How the local app is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    /// A TCP connect to `[inbound] app` succeeds.
    Tcp,
    /// `GET <path>` to `[inbound] app` answers 2xx or 3xx.
    Http,
    /// grpc.health.v1 `Check` over h2c answers SERVING.
    Grpc,
}

impl HealthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthKind::Tcp => "tcp",
            HealthKind::Http => "http",
            HealthKind::Grpc => "grpc",
        }
    }
}

impl Config {
    /// Reads and parses `path`. A read failure names the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, &e))?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`; `path` is only used in messages and kept as
    /// [`Config::source`]. `cpus` is checked against this process's current CPU
    /// affinity.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_cpus(path, text, affinity::allowed_cpus)
    }

    /// The host name, the default `[control] node`.
    fn hostname() -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// [`Config::parse`] with the allowed CPU set supplied (tests use a fixed one).
    fn parse_with_cpus(
        path: &Path,
        text: &str,
        allowed_cpus: impl FnOnce() -> std::io::Result<Vec<usize>>,
    ) -> Result<Config, ConfigError> {
        let file: file::FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::toml(path, text, &e))?;
        resolve::resolve(path, file, allowed_cpus, Self::hostname)
    }

    /// Checks that `new` only changes keys that can be applied without a
    /// restart; otherwise an error naming the key, e.g.
    /// `proxy.toml: [proxy] cores: changed from 1 to 2; this key needs a restart`.
    pub fn check_reload(&self, new: &Config) -> Result<(), ConfigError> {
        reload::check(self, new)
    }

    /// The effective configuration (defaults filled in) as JSON for the admin
    /// `/config` endpoint; durations as strings like `"10s"`/`"500ms"`, absent
    /// optional values and sections as `null`. The agent adds the applied
    /// snapshot's `version` and `config_version` to the `control` object.
    pub fn to_json(&self) -> serde_json::Value {
        let d = |d: Duration| duration::format(d);
        let p = &self.proxy;
        json!({
            "source": self.source.display().to_string(),
            "proxy": {
                "service": p.service,
                "cores": p.cores,
                "cpus": p.cpus,
                "admin": p.admin.to_string(),
                "labels": p.labels,
                "drain_timeout": d(p.drain_timeout),
                "access_log": p.access_log.as_ref().map(|p| p.display().to_string()),
                "upgrade_socket": p.upgrade_socket.as_ref().map(|p| p.display().to_string()),
            },
            "access_log": {
                "path": p.access_log.as_ref().map(|p| p.display().to_string()),
                "enabled": self.access_log.enabled,
                "format": self.access_log.format.as_str(),
                "sample": self.access_log.sample,
            },
            "inbound": self.inbound.as_ref().map(|i| json!({
                "listen": i.listen.to_string(),
                "app": i.app.to_string(),
                "identity_header": i.identity_header,
                "app_protocol": i.app_protocol.as_str(),
            })),
            "outbound": self.outbound.as_ref().map(|o| json!({
                "listen": o.listen.to_string(),
                "listen_mode": match &o.listen {
                    ListenAddr::Unix(UnixListen { mode: Some(m), .. }) => Some(format!("{m:04o}")),
                    _ => None,
                },
                "listen_owner": match &o.listen { ListenAddr::Unix(u) => u.owner, _ => None },
                "listen_group": match &o.listen { ListenAddr::Unix(u) => u.group, _ => None },
                "passthrough": o.passthrough,
                "tcp": o.tcp.iter().map(|t| json!({
                    "service": t.service,
                    "listen": t.listen.to_string(),
                })).collect::<Vec<_>>(),
            })),
            "resilience": serde_json::to_value(&self.resilience).unwrap_or_default(),
            "tls": self.tls.as_ref().map(|t| json!({
                "cert": t.cert.display().to_string(),
                "key": t.key.display().to_string(),
                "ca": t.ca.display().to_string(),
            })),
            "intercept": self.intercept.as_ref().map(|i| json!({
                "mark": i.mark,
                "outbound": i.outbound,
                "inbound_ports": i.inbound_ports,
                "exclude_outbound_ports": i.exclude_outbound_ports,
                "exclude_uids": i.exclude_uids,
            })),
            "services": self.services.iter().map(|s| json!({
                "name": s.name,
                "endpoints": s.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "names": s.names.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "timeouts": {
                "connect": d(self.timeouts.connect),
                "head_read": d(self.timeouts.head_read),
                "keepalive_idle": d(self.timeouts.keepalive_idle),
                "request": d(self.timeouts.request),
                "idle": d(self.timeouts.idle),
                "total": d(self.timeouts.total),
            },
            "limits": {
                "max_head_bytes": self.limits.max_head_bytes,
                "max_request_line": self.limits.max_request_line,
                "max_headers": self.limits.max_headers,
                "buffer_budget": self.limits.buffer_budget,
                "connection_buffer_budget": self.limits.connection_buffer_budget,
                "h2": {
                    "max_concurrent_streams": self.limits.h2.max_concurrent_streams,
                    "stream_window": self.limits.h2.stream_window,
                    "connection_window": self.limits.h2.connection_window,
                    "upstream_connection_window": self.limits.h2.upstream_connection_window,
                    "max_pending_resets": self.limits.h2.max_pending_resets,
                    "max_local_resets": self.limits.h2.max_local_resets,
                    "max_settings_per_second": self.limits.h2.max_settings_per_second,
                    "max_pings_per_second": self.limits.h2.max_pings_per_second,
                    "max_empty_frames_per_second": self.limits.h2.max_empty_frames_per_second,
                },
            },
            "upstream": {
                "pool_idle_timeout": d(self.upstream.pool_idle_timeout),
                "max_idle_per_endpoint": self.upstream.max_idle_per_endpoint,
                "multiplex": self.upstream.multiplex,
            },
            "control": self.control.as_ref().map(|c| json!({
                "address": c.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "token_file": c.token_file.as_ref().map(|p| p.display().to_string()),
                "state_dir": c.state_dir.display().to_string(),
                "node": c.node,
                "advertise": c.advertise.map(|a| a.to_string()),
                "calls": c.calls,
                "health": {
                    "kind": c.health.kind.as_str(),
                    "path": c.health.path,
                    "service": c.health.grpc_service,
                    "interval": d(c.health.interval),
                    "timeout": d(c.health.timeout),
                },
            })),
        })
    }

    /// The `[[services]]` entry called `name`, if any.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl Config {
    /// What is valid but almost certainly wrong: `--check` prints these
    /// and the proxy logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let (Some(c), Some(i)) = (&self.control, &self.inbound) {
            let registers = c.advertise.unwrap_or(i.listen);
            // Only when every control address is on another host: with a
            // loopback one among them, control may well be local.
            let all_remote = c.addresses.iter().all(|a| !a.is_loopback());
            let remote = c.addresses.first().filter(|_| all_remote);
            if let (true, Some(remote)) = (registers.ip().is_loopback(), remote) {
                warnings.push(format!(
                    "{}: [control] advertise: this proxy would register {registers}, a loopback address, with control at {remote} on another host; proxies on other hosts cannot reach it there (control refuses it): set [control] advertise to an address they reach",
                    self.source.display()
                ));
            }
        }
        warnings
    }

    /// The static `[[services]]` a snapshot may not define too.
    pub(crate) fn static_services(&self) -> coremesh_policy::routing::StaticServices {
        coremesh_policy::routing::StaticServices::new(
            self.source.display().to_string(),
            self.services.iter().map(|s| s.name.as_str()),
        )
    }

    /// The services this proxy balances and limits, with `table` in force
    /// ([`coremesh_policy::routing::service_list`]).
    pub(crate) fn service_list(
        &self,
        table: Option<&coremesh_policy::routing::RoutingTable>,
    ) -> Vec<(
        String,
        Vec<std::net::SocketAddr>,
        std::sync::Arc<coremesh_policy::traffic::ServicePolicy>,
    )> {
        coremesh_policy::routing::service_list(
            table,
            self.services
                .iter()
                .map(|s| (s.name.as_str(), s.endpoints.as_slice())),
            &self.resilience,
            &self.proxy.service,
        )
    }
}
