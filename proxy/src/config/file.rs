//! `proxy.toml` exactly as written. Every key is optional at this level (even the
//! required ones) so that validation, not serde, reports a missing key, by name.
//! Addresses, durations and numbers stay as written (strings, `i64`) so that an
//! error can quote the value the operator typed. See [`REFERENCE`](super::REFERENCE)
//! for what each key means.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// `[proxy]`: identity, cores, admin endpoint. Required.
    pub proxy: Option<ProxyFile>,
    /// `[inbound]`: traffic from peer proxies to the local app.
    pub inbound: Option<InboundFile>,
    /// `[outbound]`: traffic from the local app to other services.
    pub outbound: Option<OutboundFile>,
    /// `[[services]]`: the services the local app may call, in file order.
    #[serde(default)]
    pub services: Vec<ServiceFile>,
    /// `[timeouts]`.
    pub timeouts: Option<TimeoutsFile>,
    /// `[limits]`.
    pub limits: Option<LimitsFile>,
    /// `[upstream]`.
    pub upstream: Option<UpstreamFile>,
    /// `[control]`: the control plane connection. Without it, only the static
    /// `[[services]]` apply.
    pub control: Option<ControlFile>,
    /// `[tls]`: static-mode mutual TLS from files.
    pub tls: Option<TlsFile>,
    /// `[[resilience]]`: Resilience blocks for static use, exactly as the
    /// control plane's `kind: Resilience` (same camelCase keys).
    #[serde(default)]
    pub resilience: Vec<coremesh_api::resource::Resilience>,
    /// `[intercept]`: transparent interception with nftables.
    pub intercept: Option<InterceptFile>,
    /// `[access_log]`.
    pub access_log: Option<AccessLogFile>,
}

/// `[access_log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLogFile {
    /// The file (the same as `[proxy] access_log`; one of the two).
    pub path: Option<String>,
    /// Whether lines are written.
    pub enabled: Option<bool>,
    /// `"json"` (default) or `"text"`.
    pub format: Option<String>,
    /// The share of requests logged, 0.0..=1.0.
    pub sample: Option<toml::Value>,
}

/// `[intercept]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InterceptFile {
    /// SO_MARK on the proxy's own upstream sockets.
    pub mark: Option<i64>,
    /// Redirect the app's outgoing TCP to `[outbound] listen`.
    pub outbound: Option<bool>,
    /// Ports whose incoming connections go to `[inbound] listen`.
    pub inbound_ports: Option<Vec<i64>>,
    /// Destination ports never redirected on the way out.
    pub exclude_outbound_ports: Option<Vec<i64>>,
    /// Users whose connections are never redirected on the way out.
    pub exclude_uids: Option<Vec<i64>>,
}

/// `[tls]`. Paths are relative to the directory of `proxy.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    /// PEM certificate chain (leaf first, then intermediates). Required.
    pub cert: Option<String>,
    /// PEM private key of the leaf. Required.
    pub key: Option<String>,
    /// PEM trusted roots, one or more. Required.
    pub ca: Option<String>,
}

/// One `[[outbound.tcp]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcpFile {
    /// The TCP service. Required.
    pub service: Option<String>,
    /// Local address the app connects to. Required.
    pub listen: Option<String>,
}

/// `[proxy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyFile {
    /// Name of the service this proxy fronts. Required.
    pub service: Option<String>,
    /// Number of shards (executor threads).
    pub cores: Option<i64>,
    /// CPUs to pin the shards to, one per shard.
    pub cpus: Option<Vec<i64>>,
    /// Admin endpoint address.
    pub admin: Option<String>,
    /// Labels reported with this proxy's stats.
    pub labels: Option<BTreeMap<String, String>>,
    /// How long a shutdown waits for in-flight requests.
    pub drain_timeout: Option<String>,
    /// File to append access log lines to.
    pub access_log: Option<String>,
    /// Unix socket where a successor process takes over the listeners.
    pub upgrade_socket: Option<String>,
}

/// `[inbound]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InboundFile {
    /// Address peer proxies connect to.
    pub listen: Option<String>,
    /// Address of the local app (`unix:/PATH`: a socket file). Required.
    pub app: Option<String>,
    /// Header carrying the caller's SPIFFE ID to the app.
    pub identity_header: Option<String>,
    /// `"http"` (default) or `"tcp"`.
    pub protocol: Option<String>,
    /// `"auto"` (default), `"http1"` or `"h2c"`.
    pub app_protocol: Option<String>,
}

/// `[outbound]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutboundFile {
    /// Address the local app sends its requests to (`unix:/PATH`: a socket file).
    pub listen: Option<String>,
    /// Permission bits of a `unix:` listen socket file, an octal string.
    pub listen_mode: Option<toml::Value>,
    /// Owner of a `unix:` listen socket file: a user name or id.
    pub listen_owner: Option<toml::Value>,
    /// Group of a `unix:` listen socket file: a group name or id.
    pub listen_group: Option<toml::Value>,
    /// Forward requests for unknown services to the address they name.
    pub passthrough: Option<bool>,
    /// `[[outbound.tcp]]`: a local listener per TCP service. In TOML an
    /// `[[outbound.tcp]]` entry creates `[outbound]` too, so `listen` keeps
    /// its default when the file has no `[outbound]` header.
    #[serde(default)]
    pub tcp: Vec<TcpFile>,
}

/// One `[[services]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceFile {
    /// Service name, matched against the request's authority. Required.
    pub name: Option<String>,
    /// Addresses of the service's instances.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `"auto"` (default), `"http1"` or `"h2c"`.
    pub protocol: Option<String>,
}

/// `[timeouts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsFile {
    /// Upstream TCP connect.
    pub connect: Option<String>,
    /// First byte of a request until its head is complete.
    pub head_read: Option<String>,
    /// Idle client connection between requests.
    pub keepalive_idle: Option<String>,
    /// Request head sent upstream until the response head arrives.
    pub request: Option<String>,
    /// No byte moving either way during a body transfer or tunnel.
    pub idle: Option<String>,
    /// A whole HTTP exchange: request head received until response complete.
    pub total: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    /// Largest request or response head, in bytes.
    pub max_head_bytes: Option<i64>,
    /// Longest request line, in bytes.
    pub max_request_line: Option<i64>,
    /// Most header fields in one head.
    pub max_headers: Option<i64>,
    /// Bytes of buffers all in-flight requests may hold.
    pub buffer_budget: Option<i64>,
    /// Bytes of buffers one connection may hold.
    pub connection_buffer_budget: Option<i64>,
    /// `[limits.h2]`.
    pub h2: Option<H2LimitsFile>,
}

/// `[limits.h2]` (see `config::H2Limits` for what each bounds).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct H2LimitsFile {
    pub max_concurrent_streams: Option<i64>,
    pub stream_window: Option<i64>,
    pub connection_window: Option<i64>,
    pub upstream_connection_window: Option<i64>,
    pub max_pending_resets: Option<i64>,
    pub max_local_resets: Option<i64>,
    pub max_settings_per_second: Option<i64>,
    pub max_pings_per_second: Option<i64>,
    pub max_empty_frames_per_second: Option<i64>,
}

/// `[upstream]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamFile {
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Option<String>,
    /// Most idle pooled connections per endpoint, per shard.
    pub max_idle_per_endpoint: Option<i64>,
    /// HTTP/1.1 to peer proxies over shared h2 connections.
    pub multiplex: Option<bool>,
}

/// `[control]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControlFile {
    /// Control's QUIC address: a string, or a list of strings (the first
    /// reachable one is used). Kept as a TOML value so that the error can say
    /// which shapes are accepted. Required.
    pub address: Option<toml::Value>,
    /// The join token, read only while `state_dir` holds no certificate.
    pub token_file: Option<String>,
    /// Certificate, key, CA and the last good snapshot. Required.
    pub state_dir: Option<String>,
    /// Node name reported to control.
    pub node: Option<String>,
    /// The address registered as this proxy's endpoint.
    pub advertise: Option<String>,
    /// The services the local app calls.
    pub calls: Option<Vec<String>>,
    /// Accept a snapshot from a control store other than the one whose
    /// policy this proxy runs.
    pub allow_store_change: Option<bool>,
    /// `[control.health]`.
    pub health: Option<HealthFile>,
}

/// `[control.health]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthFile {
    /// `"tcp"`, `"http"` or `"grpc"`.
    pub kind: Option<String>,
    /// Path of the HTTP check.
    pub path: Option<String>,
    /// The service a gRPC check asks about (grpc.health.v1).
    pub service: Option<String>,
    /// Time between checks.
    pub interval: Option<String>,
    /// Time one check may take.
    pub timeout: Option<String>,
}
