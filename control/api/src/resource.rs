//! Resources: what an operator applies (`meshctl apply -f`), YAML in the style
//! of kubectl, several documents per file separated by `---`, each with
//! `apiVersion: coremesh/v1` (assumed when absent).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The only API version so far.
pub const API_VERSION: &str = "coremesh/v1";

/// One applied resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    Service(Service),
    Route(Route),
    AccessPolicy(AccessPolicy),
    Resilience(Resilience),
    MeshConfig(MeshConfig),
}

/// `kind: Service`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// The port the service's app listens on, on every host it runs on.
    /// With it, a connection that a proxy intercepts (nftables redirect)
    /// belongs to this service when its original destination is this port
    /// at the host address of one of the service's endpoints, or at one of
    /// [`Service::addresses`]. Absent: the service is reached by name only.
    /// Skipped when absent, so resources and snapshots without it read and
    /// serialize as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Virtual IPs of the service (addresses no host has, e.g. the one its
    /// DNS name resolves to): an intercepted connection to one of them at
    /// [`Service::port`] belongs to this service too. Needs `port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

/// `kind: Route`: how traffic addressed to `service` is routed. At most one
/// Route per service. Rules are tried in order; the first match wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    pub name: String,
    pub service: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Absent: matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<Match>,
    /// Total time for the request (all tries), e.g. `2s`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// What happens when every endpoint of a backend is ejected, unhealthy
    /// or down: its share goes to the rule's other backends
    /// (`spill-over`, the default), or requests drawn for it still go to
    /// it (`strict`: a request never crosses subsets, also not on retry).
    #[serde(default, skip_serializing_if = "Failover::is_default")]
    pub failover: Failover,
    pub backends: Vec<Backend>,
}

/// [`Rule::failover`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failover {
    #[default]
    SpillOver,
    Strict,
}

impl Failover {
    fn is_default(&self) -> bool {
        *self == Failover::SpillOver
    }
}

/// All present conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    /// Exact path (without the query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix, segment-agnostic (`/api` matches `/api/x` and `/apix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Regular expression the whole path (without the query) must match:
    /// the syntax of the `regex` crate, anchored at both ends and compiled
    /// by [`compile_regex`] (`/v[0-9]+/users/[^/]+` matches `/v2/users/7`,
    /// not `/v2/users/7/x`). At most one of `path`, `pathPrefix` and
    /// `pathRegex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// A gRPC service and, optionally, one of its methods: sugar for the
    /// path (`{service: pkg.Greeter, method: SayHello}` is the exact path
    /// `/pkg.Greeter/SayHello`; without `method`, the prefix
    /// `/pkg.Greeter/`). Not with another path condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMatch>,
    /// Header name (case-insensitive) -> condition: an exact value
    /// (`x-canary: "true"`), `{ regex: "..." }` or `{ present: true }` /
    /// `{ present: false }` (see [`ValueMatch`]). A header sent on several
    /// lines is judged by its first line.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueMatch>,
    /// Query parameter name -> condition, as for `headers`. Names and
    /// values are compared as sent, without percent-decoding (`a%20b`
    /// stays `a%20b`, `+` stays `+`); names are case-sensitive; a
    /// parameter given several times is judged by its first occurrence;
    /// `?debug` (no `=`) is present with the empty value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, ValueMatch>,
    /// Methods (uppercase); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// A rule's gRPC condition (see [`Match::grpc`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMatch {
    /// The fully qualified service name (`package.Service`).
    pub service: String,
    /// The method name; absent: every method of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl GrpcMatch {
    /// The path condition it stands for: `(path, exact)`.
    pub fn path(&self) -> (String, bool) {
        match &self.method {
            Some(m) => (format!("/{}/{m}", self.service), true),
            None => (format!("/{}/", self.service), false),
        }
    }
}

/// Retries of a rule.
///
/// The fields added after the first release are left out when they hold
/// their default, so a Route that does not use them reads the same to a
/// proxy built before them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first try (so `attempts: 2` means up to 3 tries).
    pub attempts: u32,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub per_try_timeout: Option<Duration>,
    /// When to retry; default `[connect-failure, reset]`.
    #[serde(default = "RetryOn::defaults")]
    pub on: Vec<RetryOn>,
    /// The wait before each retry; absent: [`Backoff::default`] (base
    /// 25ms, max 250ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Retry only requests whose method is idempotent (RFC 9110 section
    /// 9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE); default `true`.
    /// `false` also retries POST, PATCH and the rest: only for upstreams
    /// that tolerate a request arriving twice.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub idempotent_only: bool,
    /// The request body is kept for a retry up to this many bytes; a
    /// request whose body is longer is not retried (it streams through
    /// once). Default [`DEFAULT_RETRY_BODY_BYTES`] (64 KiB), at most
    /// [`MAX_RETRY_BODY_BYTES`]; 0 retries only requests without a body.
    #[serde(
        default = "default_retry_body_bytes",
        skip_serializing_if = "is_default_retry_body_bytes"
    )]
    pub max_body_bytes: u64,
}

/// The default of [`Retries::max_body_bytes`]: 64 KiB.
pub const DEFAULT_RETRY_BODY_BYTES: u64 = 64 * 1024;

fn default_retry_body_bytes() -> u64 {
    DEFAULT_RETRY_BODY_BYTES
}

fn is_default_retry_body_bytes(n: &u64) -> bool {
    *n == DEFAULT_RETRY_BODY_BYTES
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Retries {
    /// [`Retries::backoff`], or its default.
    pub fn backoff_or_default(&self) -> Backoff {
        self.backoff.clone().unwrap_or_default()
    }
}

/// Exponential backoff with full jitter between tries: before retry `n`
/// (1, 2, ...) the proxy waits a uniformly random time in
/// `[0, min(max, base * 2^(n-1))]`. The rule's `timeout` still bounds the
/// whole exchange, waits included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    /// Greater than 0; default 25ms.
    #[serde(default = "Backoff::default_base", with = "duration")]
    pub base: Duration,
    /// At least `base`; default 10 times `base` (250ms for the default
    /// base). See [`Backoff::max_or_default`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub max: Option<Duration>,
}

impl Backoff {
    /// The default base: 25ms (as Envoy's retry policy).
    pub const DEFAULT_BASE: Duration = Duration::from_millis(25);

    fn default_base() -> Duration {
        Self::DEFAULT_BASE
    }

    /// `max`, or 10 times `base`.
    pub fn max_or_default(&self) -> Duration {
        self.max.unwrap_or(self.base.saturating_mul(10))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Self::DEFAULT_BASE,
            max: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    #[serde(rename = "5xx")]
    Status5xx,
    /// 502, 503, 504.
    GatewayError,
    /// gRPC: a call that ended with this `grpc-status` (read from the
    /// response headers, or trailers of a response with no message) is
    /// retried: UNAVAILABLE (14).
    Unavailable,
    /// gRPC CANCELLED (1).
    Cancelled,
    /// gRPC DEADLINE_EXCEEDED (4).
    DeadlineExceeded,
    /// gRPC RESOURCE_EXHAUSTED (8).
    ResourceExhausted,
    /// gRPC INTERNAL (13).
    Internal,
}

impl RetryOn {
    pub fn defaults() -> Vec<RetryOn> {
        vec![RetryOn::ConnectFailure, RetryOn::Reset]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// Endpoints whose labels include all of these; absent: every endpoint
    /// of the route's service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset: BTreeMap<String, String>,
    /// Relative weight, 0..=100000; default 1 (equal shares).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `kind: AccessPolicy`: who may call `service`. The inbound proxy of
/// `service` checks every request against it: the first rule whose `from`,
/// `methods` and path all match allows the request; when none matches,
/// `default` decides. At most one AccessPolicy per service; a service
/// without one follows the [`MeshConfig`]'s `defaultAccess`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicy {
    pub name: String,
    /// The service whose inbound requests this policy governs.
    pub service: String,
    /// What happens to a request no rule allows; absent: `deny` (a policy
    /// lists who may call).
    #[serde(default = "Access::deny")]
    pub default: Access,
    /// Tried in order; the first that matches allows the request.
    #[serde(default)]
    pub rules: Vec<AccessRule>,
}

/// One allow rule of an [`AccessPolicy`]; all present conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessRule {
    /// Callers: service names (`web`, meaning
    /// `spiffe://<trust domain>/service/web` in the mesh's trust domain),
    /// full SPIFFE IDs (`spiffe://td/service/web`), or `*` for any
    /// authenticated caller. At least one.
    pub from: Vec<String>,
    /// Methods (uppercase, compared exactly); absent or empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Exact path (without the query); absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix, segment-agnostic (`/v1` matches `/v1/x` and `/v1x`);
    /// absent: any. At most one of `path` and `pathPrefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

/// Allow or deny: an [`AccessPolicy`]'s `default` and the mesh's
/// `defaultAccess`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    Allow,
    Deny,
}

impl Access {
    /// The default of [`AccessPolicy::default`].
    pub fn deny() -> Access {
        Access::Deny
    }

    /// Whether this is `allow` (the default, skipped when serializing
    /// fields added later).
    pub fn is_allow(&self) -> bool {
        *self == Access::Allow
    }

    /// `allow` or `deny`, as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Allow => "allow",
            Access::Deny => "deny",
        }
    }
}

/// The name of the one [`MeshConfig`] (as Consul's `kind: mesh` entry).
pub const MESH_CONFIG_NAME: &str = "mesh";

/// `kind: MeshConfig`: settings for the whole mesh. There is one, named
/// [`MESH_CONFIG_NAME`]; without it every field has its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    pub name: String,
    /// What a service without an AccessPolicy does with a request from an
    /// authenticated mesh identity; default `allow`.
    #[serde(default)]
    pub default_access: Access,
    /// What a proxy that intercepts its app's connections (nftables) does
    /// with one whose destination is no mesh service: `allow` (the default)
    /// passes it through untouched, `deny` refuses it. Skipped when
    /// `allow`, so a MeshConfig without it serializes as before.
    #[serde(default, skip_serializing_if = "Access::is_allow")]
    pub outbound_policy: Access,
    /// Distributed tracing for the whole mesh (a proxy's `[tracing]`
    /// overrides it); absent: no spans are recorded, though every proxy
    /// still propagates `traceparent`. Skipped when absent, so a
    /// MeshConfig without it serializes as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// `tracing:` of the [`MeshConfig`]: which share of new traces the proxies
/// record, and where they send the spans (OTLP over HTTP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// The share of new traces sampled, `0.0..=1.0`; a request that
    /// arrives with a sampling decision keeps it (parent-based).
    pub sampling: f64,
    /// The OTLP/HTTP collector, `http://host:port`: spans are POSTed to
    /// `<collector>/v1/traces` as protobuf.
    pub collector: String,
}

/// Validation rejects a NaN sampling ratio, so equality is total.
impl Eq for Tracing {}

/// Why a tracing setting is refused ([`check_tracing`]); the caller names
/// where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TracingError {
    #[error("sampling {0} is not between 0.0 and 1.0")]
    Sampling(String),
    #[error("collector {0:?} is not an http:// URL with a host (such as http://10.0.0.9:4318)")]
    Collector(String),
}

/// Checks a sampling ratio: `0.0..=1.0`.
pub fn check_sampling(sampling: f64) -> Result<(), TracingError> {
    if (0.0..=1.0).contains(&sampling) {
        Ok(())
    } else {
        Err(TracingError::Sampling(sampling.to_string()))
    }
}

/// Checks a collector URL: `http://host[:port][/path]` (spans go to
/// `<collector>/v1/traces`); `https` is not offered.
pub fn check_collector(collector: &str) -> Result<(), TracingError> {
    let bad = || TracingError::Collector(collector.to_string());
    let rest = collector.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.strip_prefix('[') {
        // [v6]:port
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
            addr.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            match after {
                "" => ("v6", None),
                p => ("v6", Some(p.strip_prefix(':').ok_or_else(bad)?)),
            }
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if host_ok && port_ok && path_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Durations as strings: `500ms`, `2s`, `1m`, `1h`.
pub mod opt_duration {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Required durations as strings, like [`opt_duration`].
pub mod duration {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a duration (`250ms`, `2s`, `1m`, `1h`) did not parse; each variant
/// holds the text as given (trimmed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{input:?} has no unit (ms, s, m, h)")]
    NoUnit { input: String },
    #[error("{input:?} is not a duration like 500ms or 2s")]
    NotANumber {
        input: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("{input:?}: unknown unit {unit:?} (ms, s, m, h)")]
    UnknownUnit { input: String, unit: String },
    #[error("{input:?} is too large")]
    TooLarge { input: String },
}

/// Parses `250ms`, `2s`, `1m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let input = || s.to_string();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::NoUnit { input: input() })?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|source| DurationError::NotANumber {
        input: input(),
        source,
    })?;
    let secs_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(DurationError::UnknownUnit {
                input: input(),
                unit: unit.to_string(),
            })
        }
    };
    n.checked_mul(secs_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| DurationError::TooLarge { input: input() })
}

/// The shortest exact form: `250ms`, `2s`, `1m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The example of issue 4, verbatim.
#[cfg(test)]
pub(crate) const EXAMPLE: &str = r#"kind: Service
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

/// The AccessPolicy example of issue 5, verbatim, its service, and a
/// MeshConfig.
#[cfg(test)]
pub(crate) const ACCESS_EXAMPLE: &str = r#"kind: Service
name: api
---
kind: AccessPolicy
name: api-access
service: api
default: deny              # allow | deny
rules:
  - from: [web]            # caller services, or full SPIFFE IDs
    methods: [GET, POST]
    pathPrefix: /v1/
---
kind: MeshConfig
name: mesh
defaultAccess: deny
"#;

/// The Resilience example of issue 6, verbatim, with its service and its
/// mirror.
#[cfg(test)]
pub(crate) const RESILIENCE_EXAMPLE: &str = r#"kind: Service
name: api
---
kind: Service
name: api-shadow
---
kind: Resilience
service: api
loadBalancer: p2c-ewma       # round-robin | least-request | ring-hash (key: header or cookie)
circuitBreaker: { maxConnections: 1000, maxPending: 100, maxRequests: 1000 }
outlierDetection: { consecutiveFailures: 5, baseEjection: 30s, maxEjectedPercent: 50 }
healthCheck: { interval: 5s, timeout: 1s, unhealthyThreshold: 3, healthyThreshold: 2 }
retryBudget: { ratio: 0.2, minPerSecond: 10 }
rateLimit: { requestsPerSecond: 100, burst: 20, per: service }   # or per caller identity
faults: { abort: { percent: 5, status: 503 }, delay: { percent: 10, duration: 100ms } }
mirror: { service: api-shadow, percent: 10 }
"#;

mod matching;
mod parse;
mod resilience;
mod syntax;
mod validation;

pub use matching::{
    compile_regex, RegexError, ValueError, ValueMatch, MAX_REGEX_LEN, REGEX_DFA_SIZE_LIMIT,
    REGEX_SIZE_LIMIT,
};
pub use parse::{parse_documents, to_yaml};
pub use resilience::{
    validate_resilience, Abort, CircuitBreaker, Delay, Faults, HashKey, HealthCheck, LoadBalancer,
    Mirror, OutlierDetection, RateLimit, RateLimitKey, Resilience, ResilienceError, RetryBudget,
    MAX_EJECTION, MAX_RETRY_RATIO, RETRY_BUDGET_WINDOW,
};
pub use syntax::{NameError, RangeError};
pub use validation::{
    check_spiffe_id, check_trust_domain, validate, validate_set, SpiffeIdError, SpiffeIdProblem,
    TrustDomainError, MAX_NAME_LEN, MAX_RETRY_ATTEMPTS, MAX_RETRY_BODY_BYTES, MAX_WEIGHT,
};

/// Every kind, as written in YAML.
pub const KINDS: [&str; 5] = [
    "Service",
    "Route",
    "AccessPolicy",
    "Resilience",
    "MeshConfig",
];

impl Resource {
    /// The kind as written in YAML: `Service`, `Route`, `AccessPolicy`,
    /// `Resilience`, `MeshConfig`.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Service(_) => "Service",
            Resource::Route(_) => "Route",
            Resource::AccessPolicy(_) => "AccessPolicy",
            Resource::Resilience(_) => "Resilience",
            Resource::MeshConfig(_) => "MeshConfig",
        }
    }

    /// The name the resource is applied, deleted and listed by; for a
    /// Resilience, its `name` or else its service ([`Resilience::name`]).
    pub fn name(&self) -> &str {
        match self {
            Resource::Service(s) => &s.name,
            Resource::Route(r) => &r.name,
            Resource::AccessPolicy(p) => &p.name,
            Resource::Resilience(r) => r.name(),
            Resource::MeshConfig(m) => &m.name,
        }
    }

    /// `service/api`, `route/api-canary`, `accesspolicy/api-access`,
    /// `resilience/api`, `meshconfig/mesh`: how meshctl and the history
    /// name it.
    pub fn kind_name(&self) -> String {
        format!("{}/{}", self.kind().to_ascii_lowercase(), self.name())
    }
}

/// Why a resource file, a resource or a set of resources was refused.
///
/// Displays as `document 2 (route/api-canary): rules[1].backends[0].weight:
/// <reason>`; each part is left out when unknown. Its [`source`] is the
/// typed [`Reason`] (and through it, e.g., the `regex` crate's error), when
/// the reason is more than a sentence.
///
/// [`source`]: std::error::Error::source
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceError {
    /// 1-based index of the YAML document, when parsing a file.
    pub document: Option<usize>,
    /// `kind/name`, when known.
    pub resource: Option<String>,
    /// 1-based line and column in the file, for syntax and type errors.
    pub location: Option<(usize, usize)>,
    /// Path of the offending field, e.g. `rules[1].backends[0].weight`;
    /// empty when the error is about the whole resource.
    pub field: String,
    pub reason: Reason,
}

/// What is wrong with a field, without saying which field.
///
/// The typed variants are the shared checks (names, regular expressions,
/// SPIFFE IDs, ranges, values); they display as their inner error and are
/// the [`std::error::Error::source`] of the [`ResourceError`] that holds
/// them. [`Reason::Message`] is a rule's own sentence (`defined twice`,
/// `empty; a Route needs at least one rule`), with nothing underneath.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// A resource name or a service it refers to.
    #[error(transparent)]
    Name(#[from] NameError),
    /// An AccessPolicy caller that is neither `*`, a SPIFFE ID nor a
    /// service name.
    #[error("{0}; a caller is a service name, a SPIFFE ID (spiffe://...) or \"*\"")]
    Caller(#[source] NameError),
    // Boxed, the two big ones: a ResourceError stays small enough to
    // return by value.
    #[error(transparent)]
    Regex(Box<RegexError>),
    #[error(transparent)]
    SpiffeId(Box<SpiffeIdError>),
    /// A count, duration or percentage out of its range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A header or query value that can never match as sent.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A MeshConfig's tracing setting.
    #[error(transparent)]
    Tracing(#[from] TracingError),
    /// The reason in words, with no error underneath: a rule about this
    /// field or about the set, or the YAML parser's message.
    #[error("{0}")]
    Message(String),
}

impl From<RegexError> for Reason {
    fn from(e: RegexError) -> Self {
        Reason::Regex(Box::new(e))
    }
}

impl From<SpiffeIdError> for Reason {
    fn from(e: SpiffeIdError) -> Self {
        Reason::SpiffeId(Box::new(e))
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Self {
        Reason::Message(s)
    }
}

impl From<&str> for Reason {
    fn from(s: &str) -> Self {
        Reason::Message(s.to_string())
    }
}

impl ResourceError {
    /// An error about `field` of resource `kind_name`.
    pub fn new(
        resource: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<Reason>,
    ) -> Self {
        ResourceError {
            document: None,
            resource: Some(resource.into()),
            location: None,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for ResourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = "";
        if let Some(n) = self.document {
            write!(f, "document {n}")?;
            sep = " ";
        }
        if let Some(r) = &self.resource {
            if self.document.is_some() {
                write!(f, " ({r})")?;
            } else {
                f.write_str(r)?;
            }
            sep = " ";
        }
        if let Some((line, col)) = self.location {
            write!(f, "{sep}at line {line}:{col}")?;
            sep = " ";
        }
        if !sep.is_empty() {
            f.write_str(": ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.reason)
    }
}

impl std::error::Error for ResourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.reason {
            Reason::Message(_) => None,
            typed => Some(typed),
        }
    }
}
