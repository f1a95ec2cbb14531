//! JSON bodies of control's HTTP API (`meshctl` and the dashboard). Every
//! request carries `Authorization: Bearer <operator credential>`, or the
//! dashboard's session cookie `coremesh_session` (from `POST /ui/login`
//! with a [`LoginRequest`]); with the cookie, a request other than GET also
//! carries `X-Coremesh-Csrf: 1`.
//!
//! | method | path | body | answer |
//! | --- | --- | --- | --- |
//! | POST | /v1/apply | YAML documents | [`ApplyResult`] |
//! | GET | /v1/services, /v1/routes, /v1/accesspolicies, /v1/resiliences, /v1/meshconfig | - | `[Resource]` |
//! | DELETE | /v1/{services,routes,accesspolicies,resiliences,meshconfig}/NAME | - | [`ApplyResult`] |
//! | GET | /v1/proxies | - | `[ProxyStatus]` |
//! | GET | /v1/endpoints | - | `[EndpointStatus]` |
//! | GET | /v1/history | - | `[HistoryEntry]` |
//! | GET | /v1/history/VERSION | - | `[Resource]`: every resource as of that version |
//! | POST | /v1/rollback | [`RollbackRequest`] | [`ApplyResult`] |
//! | POST | /v1/tokens | [`TokenRequest`] | [`TokenCreated`] |
//! | GET | /v1/tokens | - | `[TokenInfo]` |
//! | DELETE | /v1/tokens/ID | - | `{}` |
//! | GET | /v1/nodes | - | `[NodeStatus]` |
//! | POST | /v1/nodes/NAME/evict | - | [`NodeEvicted`] |
//! | POST | /v1/nodes/NAME/readmit | - | [`NodeReadmitted`] |
//! | GET | /v1/tap/SERVICE?path=P&max_rps=N | - | a stream of [`TapEvent`] lines |
//! | GET | /v1/edges?window=10s\|1m | - | [`EdgesView`] |
//! | GET | /v1/edges/series?source=S&destination=D | - | [`EdgeSeries`] |
//! | GET | /metrics | - | Prometheus text: the fleet view |
//!
//! Errors: 400 (input rejected: [`ErrorBody`] says what and where), 401,
//! 403 (the cookie without the CSRF header), 404, 500.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// The new version (unchanged if nothing changed).
    pub version: u64,
    /// `kind/name` of each resource created, changed or deleted.
    pub changed: Vec<String>,
}

/// `POST /ui/login`: the operator credential (what
/// `<data-dir>/operator.credential` holds), answered with the session
/// cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub to: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    /// Unix seconds.
    pub at: u64,
    /// What the change was, e.g. `apply service/api, route/api-canary` or `rollback to 3`.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub service: String,
    pub node: String,
    /// Registered inbound address, if any.
    pub address: Option<SocketAddr>,
    pub connected: bool,
    /// Last snapshot version sent, and the config version it carried.
    pub sent_version: Option<u64>,
    /// Last ACKed snapshot version and its config version.
    pub applied_version: Option<u64>,
    pub applied_config_version: Option<u64>,
    /// Set when the last answer was a NACK.
    pub nack: Option<String>,
    /// Unix seconds of the last heartbeat.
    pub last_heartbeat: Option<u64>,
    pub healthy: Option<bool>,
    /// Unix seconds when its certificate expires.
    pub cert_expiry: Option<u64>,
    /// Unix seconds when its session ended; set while it is disconnected
    /// (control forgets a proxy disconnected for `--forget-after`).
    pub last_seen: Option<u64>,
    /// What is wrong with how the proxy is set up, as control sees it (a
    /// registration refused, say); absent when nothing is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The snapshot version the proxy said it runs when it connected while
    /// control held its session (the grace period after control started):
    /// its last known state, until control sends it a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_running: Option<u64>,
    /// Unix seconds when the proxy ACKed its last applied snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<u64>,
    /// The proxy's wall clock minus control's, in milliseconds, as of its
    /// last Clock message (accurate to the one-way network delay); absent
    /// for a proxy too old to send one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
}

/// One line of `GET /v1/tap/SERVICE`: newline-delimited JSON, for as long
/// as the client keeps the connection open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TapEvent {
    /// A request through one of the service's proxies.
    Request(TapRequest),
    /// Sent when the tap starts and every few seconds after: who is
    /// tapped, and what was left out.
    Status(TapStatus),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRequest {
    /// Unix milliseconds when the request began.
    pub at_ms: u64,
    /// The node of the proxy that saw it.
    pub node: String,
    /// `inbound` (a call to the service) or `outbound` (a call it made).
    pub direction: String,
    /// The caller's SPIFFE ID; `None` when unknown (a plaintext port).
    pub caller: Option<String>,
    /// Where the request went: the tapped service (inbound) or the one
    /// it called (outbound).
    pub service: String,
    pub method: String,
    pub authority: String,
    /// Without the query.
    pub path: String,
    /// 0: no response was sent.
    pub status: u16,
    pub latency_us: u64,
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapStatus {
    pub service: String,
    /// Connected proxies of the service that are tapped.
    pub proxies: usize,
    /// Nodes of connected proxies too old to tap.
    #[serde(default)]
    pub untapped: Vec<String>,
    /// Requests left out so far: over `max_rps`, or queues full.
    pub dropped: u64,
}

/// This control process and its link to the store, as `GET /v1/replica`
/// shows it (`meshctl status`'s first line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// `--replica-name` (or its default); absent with the redb store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// `redb`, or `etcd://HOST:PORT,...`.
    pub store: String,
    /// Since when (unix seconds) this replica has not heard from etcd;
    /// absent while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_off_since: Option<u64>,
    /// Why, in etcd's words (with `cut_off_since`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Whether this replica pushes changes to its proxies (not while cut
    /// off: they keep their last snapshot).
    pub pushing: bool,
}

/// Control's certificate authority, as `GET /v1/ca` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaStatus {
    pub trust_domain: String,
    /// SHA-256 of the trust anchor (what join tokens pin).
    pub fingerprint: String,
    /// Unix seconds when the issuing chain expires.
    pub not_after: u64,
    /// Control's own clock (Unix seconds) when it answered.
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub service: String,
    pub address: SocketAddr,
    pub node: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub healthy: bool,
    /// The control replica whose proxy registered it (registrations shared
    /// through etcd); absent with one control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub service: String,
    /// Seconds; default 3600.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Default 1.
    #[serde(default)]
    pub uses: Option<u32>,
    /// Create it although no Service resource defines `service` (yet).
    /// Without it, such a request is refused: a token for a service nobody
    /// defined is usually a typo, or an identity no policy mentions.
    #[serde(default)]
    pub allow_undefined: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: String,
    /// The whole token, to hand to the proxy (shown once).
    pub token: String,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub service: String,
    pub expires_at: u64,
    pub uses_left: u32,
    pub revoked: bool,
}

/// A node control issued certificates to, or evicted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// Unix seconds when it was evicted; absent while it is a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted_at: Option<u64>,
    /// Certificates issued to it that are valid and not revoked.
    pub certificates: usize,
    /// Its certificates revoked and not yet expired.
    pub revoked: usize,
}

/// What `meshctl node evict` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvicted {
    pub node: String,
    /// Unix seconds of the eviction (the first one, if it was evicted
    /// before).
    pub evicted_at: u64,
    /// It was already evicted.
    pub already: bool,
    /// Its revoked certificates that have not expired yet (serials).
    pub revoked: Vec<crate::snapshot::RevokedCert>,
    /// Control sessions of its proxies that control closed.
    pub sessions_closed: usize,
    /// Its endpoints withdrawn from every other proxy's snapshots.
    pub endpoints_withdrawn: usize,
}

/// What `meshctl node readmit` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReadmitted {
    pub node: String,
    /// Its certificates that stay revoked until they expire.
    pub still_revoked: usize,
}

/// `GET /v1/edges`: the fleet's edges over the last `window`, merged over
/// every proxy that reported them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgesView {
    /// `10s` or `1m`.
    pub window: String,
    /// Control's clock (Unix milliseconds) when it answered.
    pub generated_at_ms: u64,
    /// Sorted by (source, destination, subset, protocol).
    pub edges: Vec<EdgeView>,
}

/// One (source, destination, subset, protocol) over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeView {
    pub source: String,
    pub destination: String,
    /// The Route backend's subset as `k=v` joined by `,` in key order;
    /// empty when the route picked no subset.
    pub subset: String,
    /// `http`, `grpc` or `tcp`.
    pub protocol: String,
    /// Requests per second: `requests` / the window.
    pub rps: f64,
    /// (requests - failures) / requests; 1 when there were none.
    pub success_rate: f64,
    /// Latency percentiles in milliseconds (0 without requests).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Within the window.
    pub requests: u64,
    /// 5xx, a gRPC status other than OK, or a failed TCP connection.
    pub failures: u64,
}

/// `GET /v1/edges/series`: one source-destination pair over the last hour
/// at 10 s steps, summed over subsets and protocols.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeSeries {
    pub source: String,
    pub destination: String,
    /// Oldest first; only steps with traffic.
    pub points: Vec<EdgePoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgePoint {
    /// Start of the 10 s step (Unix milliseconds).
    pub t_ms: u64,
    pub rps: f64,
    pub success_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}
