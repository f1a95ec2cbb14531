//! `kind: Resilience`: how one service's endpoints are balanced, protected,
//! probed and tested, per proxy. The same struct is what `proxy.toml`'s
//! `[[resilience]]` tables deserialize into (same camelCase keys, durations
//! as strings), checked there by [`validate_resilience`].
//!
//! Who enforces what: the proxies that *call* the service apply
//! `loadBalancer`, `circuitBreaker`, `outlierDetection`, `healthCheck`,
//! `retryBudget`, `faults` and `mirror` to their requests to it; the
//! service's *own* proxies apply `rateLimit` to the requests they receive.
//! Control sends each proxy the Resilience of every service it calls and of
//! its own service ([`crate::snapshot::Snapshot::resilience`]).
//!
//! Every number is per proxy: a proxy with several shards splits limits,
//! budgets and rates across them so that together they behave as one proxy,
//! and decides ejections and health once for all shards (docs/design.md).

use std::time::Duration;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::syntax::{check_name, check_positive, is_token, Invalid, RangeError};
use super::{duration, format_duration, Reason};

/// `kind: Resilience`. At most one per service; every block is optional.
///
/// ```yaml
/// kind: Resilience
/// service: api
/// loadBalancer: p2c-ewma       # round-robin | least-request | { ring-hash: { header: x-user } }
/// circuitBreaker: { maxConnections: 1000, maxPending: 100, maxRequests: 1000 }
/// outlierDetection: { consecutiveFailures: 5, baseEjection: 30s, maxEjectedPercent: 50 }
/// healthCheck: { interval: 5s, timeout: 1s, unhealthyThreshold: 3, healthyThreshold: 2 }
/// retryBudget: { ratio: 0.2, minPerSecond: 10 }
/// rateLimit: { requestsPerSecond: 100, burst: 20, per: service }
/// faults: { abort: { percent: 5, status: 503 }, delay: { percent: 10, duration: 100ms } }
/// mirror: { service: api-shadow, percent: 10 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resilience {
    /// What it is applied, listed and deleted by (`meshctl delete
    /// resilience NAME`, `resilience/NAME` in the history); absent: the
    /// service's name, the natural key since a service has at most one.
    /// See [`Resilience::name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The service whose endpoints (and, for `rateLimit`, whose inbound
    /// requests) this governs.
    pub service: String,
    /// How a calling proxy picks an endpoint; default `p2c-ewma`.
    #[serde(default, skip_serializing_if = "LoadBalancer::is_default")]
    pub load_balancer: LoadBalancer,
    /// Absent: no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Absent: off (no passive ejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Absent: off (no active probes; endpoints follow what control
    /// reports of their apps' health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Bounds the retries of the service's Route; absent: the default
    /// budget (ratio 0.2, 10 per second), which also applies to services
    /// without a Resilience.
    #[serde(default, skip_serializing_if = "RetryBudget::is_default")]
    pub retry_budget: RetryBudget,
    /// Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<Faults>,
    /// Absent: no mirroring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

impl Resilience {
    /// `name`, or else the service: the key of `resilience/NAME`.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.service)
    }

    /// Nothing but the service: every block at its default.
    pub fn new(service: impl Into<String>) -> Resilience {
        Resilience {
            name: None,
            service: service.into(),
            load_balancer: LoadBalancer::default(),
            circuit_breaker: None,
            outlier_detection: None,
            health_check: None,
            retry_budget: RetryBudget::default(),
            rate_limit: None,
            faults: None,
            mirror: None,
        }
    }

    /// The blocks that apply to HTTP requests only, by YAML name, that
    /// this Resilience sets (a TCP service refuses them).
    pub fn http_only_blocks(&self) -> Vec<&'static str> {
        let mut blocks = Vec::new();
        if matches!(self.load_balancer, LoadBalancer::RingHash(_)) {
            blocks.push("loadBalancer");
        }
        if !self.retry_budget.is_default() {
            blocks.push("retryBudget");
        }
        if self.rate_limit.is_some() {
            blocks.push("rateLimit");
        }
        if self.faults.is_some() {
            blocks.push("faults");
        }
        if self.mirror.is_some() {
            blocks.push("mirror");
        }
        blocks
    }
}

/// The balancing algorithm. In YAML a plain string, except ring-hash,
/// which names its key: `loadBalancer: { ring-hash: { header: x-user } }`
/// or `{ ring-hash: { cookie: session } }` (`ringHash` is accepted for
/// `ring-hash`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    /// `p2c-ewma`: of two endpoints picked at random, the one with the
    /// lower peak-EWMA latency (times requests in flight), as Linkerd does.
    #[default]
    P2cEwma,
    /// `round-robin`: each endpoint in turn.
    RoundRobin,
    /// `least-request`: of two endpoints picked at random, the one with
    /// fewer requests in flight.
    LeastRequest,
    /// `ring-hash`: consistent hashing of the key onto a ring of the
    /// endpoints, so a key keeps its endpoint while the set changes
    /// around it (only about 1/n of the keys move when an endpoint comes
    /// or goes). Requests without the key go to a random endpoint.
    RingHash(HashKey),
}

/// What ring-hash hashes: `{ header: NAME }` or `{ cookie: NAME }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HashKeyForm", into = "HashKeyForm")]
pub enum HashKey {
    /// The value of this request header (name case-insensitive; the first
    /// line if sent on several).
    Header(String),
    /// The value of this cookie (from the `Cookie` header; name
    /// case-sensitive).
    Cookie(String),
}

/// [`HashKey`] as written: a mapping with one of the keys. (serde's
/// externally tagged enums are YAML tags in serde_norway, `!header x`,
/// not the mapping operators write.)
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HashKeyForm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cookie: Option<String>,
}

impl TryFrom<HashKeyForm> for HashKey {
    type Error = &'static str;

    fn try_from(f: HashKeyForm) -> Result<HashKey, Self::Error> {
        match (f.header, f.cookie) {
            (Some(h), None) => Ok(HashKey::Header(h)),
            (None, Some(c)) => Ok(HashKey::Cookie(c)),
            (Some(_), Some(_)) => Err("both header and cookie; ring-hash hashes one of them"),
            (None, None) => Err(RING_HASH_NEEDS_KEY),
        }
    }
}

impl From<HashKey> for HashKeyForm {
    fn from(k: HashKey) -> HashKeyForm {
        match k {
            HashKey::Header(h) => HashKeyForm {
                header: Some(h),
                cookie: None,
            },
            HashKey::Cookie(c) => HashKeyForm {
                header: None,
                cookie: Some(c),
            },
        }
    }
}

impl LoadBalancer {
    /// As written in YAML, for tables and messages: `p2c-ewma`,
    /// `ring-hash(header x-user)`.
    pub fn describe(&self) -> String {
        match self {
            LoadBalancer::P2cEwma => "p2c-ewma".into(),
            LoadBalancer::RoundRobin => "round-robin".into(),
            LoadBalancer::LeastRequest => "least-request".into(),
            LoadBalancer::RingHash(HashKey::Header(h)) => format!("ring-hash(header {h})"),
            LoadBalancer::RingHash(HashKey::Cookie(c)) => format!("ring-hash(cookie {c})"),
        }
    }

    fn is_default(&self) -> bool {
        *self == LoadBalancer::P2cEwma
    }
}

const BALANCERS: &[&str] = &["p2c-ewma", "round-robin", "least-request", "ring-hash"];
const RING_HASH_NEEDS_KEY: &str = "ring-hash needs a key: loadBalancer: { ring-hash: { header: NAME } } or { ring-hash: { cookie: NAME } }";

impl Serialize for LoadBalancer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LoadBalancer::P2cEwma => s.serialize_str("p2c-ewma"),
            LoadBalancer::RoundRobin => s.serialize_str("round-robin"),
            LoadBalancer::LeastRequest => s.serialize_str("least-request"),
            LoadBalancer::RingHash(key) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("ring-hash", key)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for LoadBalancer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LoadBalancer;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("p2c-ewma, round-robin, least-request or { ring-hash: { header|cookie: NAME } }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<LoadBalancer, E> {
                match v {
                    "p2c-ewma" => Ok(LoadBalancer::P2cEwma),
                    "round-robin" => Ok(LoadBalancer::RoundRobin),
                    "least-request" => Ok(LoadBalancer::LeastRequest),
                    "ring-hash" | "ringHash" => Err(E::custom(RING_HASH_NEEDS_KEY)),
                    other => Err(E::unknown_variant(other, BALANCERS)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LoadBalancer, A::Error> {
                let Some(name) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(RING_HASH_NEEDS_KEY));
                };
                let lb = match name.as_str() {
                    "ring-hash" | "ringHash" => LoadBalancer::RingHash(map.next_value()?),
                    "p2c-ewma" | "round-robin" | "least-request" => {
                        return Err(de::Error::custom(format!(
                            "{name} takes no settings; write `loadBalancer: {name}`"
                        )))
                    }
                    other => return Err(de::Error::unknown_variant(other, BALANCERS)),
                };
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(
                        "more than one algorithm; give one (a mapping is only for ring-hash)",
                    ));
                }
                Ok(lb)
            }
        }
        d.deserialize_any(V)
    }
}

/// Limits on what one proxy has outstanding towards the service (all its
/// endpoints together), split across the proxy's shards. A request over a
/// limit is answered at once with 503 and `coremesh-error: overloaded`.
/// Every field absent: unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Most connections open to the service's endpoints; at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection while `maxConnections` are
    /// all busy; 0: none waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
    /// Most requests in flight to the service, retries included; at
    /// least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
}

/// The longest an ejection lasts however often an endpoint is ejected
/// (unless `baseEjection` is longer): 5 minutes, as Envoy's default.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Passive ejection of failing endpoints, decided once per proxy (on the
/// agent thread) from what every shard saw, and applied on all shards.
///
/// A failure is a connect failure, a reset, a timeout or a 5xx response
/// from the endpoint; any other response resets the count. An endpoint
/// ejected for the n-th time in a row stays out `n × baseEjection`, at
/// most [`MAX_EJECTION`] (or `baseEjection`, if longer); n goes back to 0
/// once it has served `baseEjection` without being ejected again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Failures in a row that eject an endpoint; default 5, at least 1.
    #[serde(default = "OutlierDetection::default_failures")]
    pub consecutive_failures: u32,
    /// How long a first ejection lasts; default 30s, more than 0.
    #[serde(default = "OutlierDetection::default_base", with = "duration")]
    pub base_ejection: Duration,
    /// Most of the service's endpoints out at once, in percent (0..=100),
    /// rounded down but never below one endpoint (0: never eject, only
    /// count); default 10, as Envoy.
    #[serde(default = "OutlierDetection::default_percent")]
    pub max_ejected_percent: u32,
}

impl OutlierDetection {
    fn default_failures() -> u32 {
        5
    }

    fn default_base() -> Duration {
        Duration::from_secs(30)
    }

    fn default_percent() -> u32 {
        10
    }

    /// How many of `endpoints` may be ejected at once.
    pub fn max_ejected(&self, endpoints: usize) -> usize {
        if self.max_ejected_percent == 0 || endpoints == 0 {
            return 0;
        }
        (endpoints * self.max_ejected_percent as usize / 100).max(1)
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: Self::default_failures(),
            base_ejection: Self::default_base(),
            max_ejected_percent: Self::default_percent(),
        }
    }
}

/// Active health checks: the calling proxy (its agent thread) probes each
/// endpoint's proxy, which answers from its own view of its app's health,
/// so a probe never reaches the app and never meets its authorization.
/// Endpoints start healthy; the verdict applies on all shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// Time between two probes of one endpoint; default 5s, more than 0.
    #[serde(default = "HealthCheck::default_interval", with = "duration")]
    pub interval: Duration,
    /// A probe not answered within this fails; default 1s, more than 0
    /// and at most `interval`.
    #[serde(default = "HealthCheck::default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Failed probes in a row that take an endpoint out; default 3, at
    /// least 1.
    #[serde(default = "HealthCheck::default_unhealthy")]
    pub unhealthy_threshold: u32,
    /// Passed probes in a row that bring it back; default 2, at least 1.
    #[serde(default = "HealthCheck::default_healthy")]
    pub healthy_threshold: u32,
}

impl HealthCheck {
    fn default_interval() -> Duration {
        Duration::from_secs(5)
    }

    fn default_timeout() -> Duration {
        Duration::from_secs(1)
    }

    fn default_unhealthy() -> u32 {
        3
    }

    fn default_healthy() -> u32 {
        2
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval: Self::default_interval(),
            timeout: Self::default_timeout(),
            unhealthy_threshold: Self::default_unhealthy(),
            healthy_threshold: Self::default_healthy(),
        }
    }
}

/// The window a retry budget counts over: 10 seconds, as Linkerd's.
pub const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Largest [`RetryBudget::ratio`].
pub const MAX_RETRY_RATIO: f64 = 10.0;

/// Keeps retries from amplifying an outage: over any
/// [`RETRY_BUDGET_WINDOW`], one proxy's retries to the service stay at or
/// below `ratio × requests + minPerSecond × 10` (requests counted without
/// their retries); a retry over budget is not made and the last answer
/// stands. It applies to every service whose Route has retries, with the
/// default (ratio 0.2, 10 per second) when no Resilience gives one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed per request, 0..=10; default 0.2.
    #[serde(default = "RetryBudget::default_ratio")]
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic, so that light
    /// traffic can still retry; default 10.
    #[serde(default = "RetryBudget::default_min")]
    pub min_per_second: u32,
}

impl RetryBudget {
    fn default_ratio() -> f64 {
        0.2
    }

    fn default_min() -> u32 {
        10
    }

    fn is_default(&self) -> bool {
        *self == RetryBudget::default()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: Self::default_ratio(),
            min_per_second: Self::default_min(),
        }
    }
}

/// A local rate limit, enforced by the service's own proxies on the
/// requests they receive: a token bucket of `burst` tokens refilled at
/// `requestsPerSecond`, per proxy (split across its shards and rebalanced
/// from the traffic each sees). A request with no token left gets 429 with
/// `coremesh-error: rate limited`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// At least 1.
    pub requests_per_second: u32,
    /// The bucket's size (requests admitted at once after a quiet spell);
    /// at least 1; default `requestsPerSecond`. See [`RateLimit::burst`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket for all callers (`service`, default) or one per caller
    /// identity (`caller`, each with the whole rate).
    #[serde(default)]
    pub per: RateLimitKey,
}

impl RateLimit {
    /// `burst`, or one second's worth of requests.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second)
    }
}

/// What a [`RateLimit`] bucket is kept per.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitKey {
    /// One bucket for the proxy.
    #[default]
    Service,
    /// One bucket per caller SPIFFE ID (from its certificate).
    Caller,
}

/// Faults injected by the calling proxies into their requests to the
/// service, for testing how callers cope. Each applies to a random share
/// of requests, drawn independently (a request may be delayed and then
/// aborted); a request is delayed before it is sent, and an aborted one
/// is never sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
}

/// Answer `percent` of requests with `status` (and `coremesh-error: fault
/// injected`) instead of sending them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    /// 0..=100, fractions allowed (`0.5`).
    pub percent: f64,
    /// An error status, 400..=599.
    pub status: u16,
}

/// Hold `percent` of requests for `duration` before sending them (the
/// rule's timeout counts the wait).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// 0..=100, fractions allowed.
    pub percent: f64,
    /// More than 0.
    #[serde(with = "duration")]
    pub duration: Duration,
}

/// Copy `percent` of the requests to the service to another service, fire
/// and forget: the copy goes to an endpoint of `service` (no Route, no
/// retries, no faults, never mirrored again), its answer is discarded, and
/// the original is never slowed by it (a copy the proxy cannot send
/// without holding up the original is dropped). Requests with a body over 64 KiB are not copied. The
/// mirror service sees the calling proxy's identity: its AccessPolicy must
/// allow it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// An HTTP service other than this one; control sends every proxy
    /// that calls this service the mirror's endpoints too.
    pub service: String,
    /// 0..=100, fractions allowed; default 100.
    #[serde(default = "Mirror::all")]
    pub percent: f64,
}

impl Mirror {
    fn all() -> f64 {
        100.0
    }
}

/// Why [`validate_resilience`] refused a Resilience: where (`at`, as the
/// caller gave it, and the field) and why. Displays as `<at>: <field>:
/// <reason>`, leaving out what is empty.
#[derive(Debug, Clone, PartialEq)]
pub struct ResilienceError {
    /// The caller's location, e.g. `proxy.toml: [[resilience]] 2`; may be
    /// empty.
    pub at: String,
    /// Path of the offending field, e.g. `faults.abort.percent`.
    pub field: String,
    pub reason: Reason,
}

impl std::fmt::Display for ResilienceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in [&self.at, &self.field] {
            if !part.is_empty() {
                write!(f, "{part}: ")?;
            }
        }
        write!(f, "{}", self.reason)
    }
}

impl std::error::Error for ResilienceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.reason {
            Reason::Message(_) => None,
            typed => Some(typed),
        }
    }
}

/// Checks a Resilience on its own (ranges, names, the mirror not being the
/// service itself); `at` prefixes the error, e.g. `proxy.toml:
/// [[resilience]] 2` gives `proxy.toml: [[resilience]] 2: faults.abort.percent:
/// 120 is not a percentage (0..=100)`. What needs other resources (the
/// service and the mirror exist, and speak HTTP) is
/// [`super::validate_set`]'s job in control; a proxy with static config
/// checks those against its own `[[services]]`.
pub fn validate_resilience(r: &Resilience, at: &str) -> Result<(), ResilienceError> {
    check_resilience(r).map_err(|(field, reason)| ResilienceError {
        at: at.to_string(),
        field,
        reason,
    })
}

pub(super) fn check_resilience(r: &Resilience) -> Result<(), Invalid> {
    fn at<R: Into<Reason>>(field: &'static str) -> impl Fn(R) -> Invalid {
        move |reason| (field.to_string(), reason.into())
    }
    if let Some(name) = &r.name {
        check_name(name).map_err(at("name"))?;
    }
    check_name(&r.service).map_err(at("service"))?;
    if let LoadBalancer::RingHash(key) = &r.load_balancer {
        let (field, name) = match key {
            HashKey::Header(h) => ("loadBalancer.ring-hash.header", h),
            HashKey::Cookie(c) => ("loadBalancer.ring-hash.cookie", c),
        };
        if !is_token(name) {
            return Err(at(field)(format!(
                "{name:?} is not a valid name (letters, digits and !#$%&'*+-.^_`|~)"
            )));
        }
    }
    if let Some(cb) = &r.circuit_breaker {
        for (field, limit) in [
            ("circuitBreaker.maxConnections", cb.max_connections),
            ("circuitBreaker.maxRequests", cb.max_requests),
        ] {
            if limit == Some(0) {
                return Err(at(field)(
                    "0 would refuse every request; at least 1 (leave it out for no limit)",
                ));
            }
        }
    }
    if let Some(o) = &r.outlier_detection {
        at_least_one(o.consecutive_failures).map_err(at("outlierDetection.consecutiveFailures"))?;
        check_positive(o.base_ejection).map_err(at("outlierDetection.baseEjection"))?;
        if o.max_ejected_percent > 100 {
            return Err(at("outlierDetection.maxEjectedPercent")(format!(
                "{} is not a percentage (0..=100)",
                o.max_ejected_percent
            )));
        }
    }
    if let Some(h) = &r.health_check {
        check_positive(h.interval).map_err(at("healthCheck.interval"))?;
        check_positive(h.timeout).map_err(at("healthCheck.timeout"))?;
        if h.timeout > h.interval {
            return Err(at("healthCheck.timeout")(format!(
                "{} is longer than the interval ({}); a probe must end before the next starts",
                format_duration(h.timeout),
                format_duration(h.interval)
            )));
        }
        at_least_one(h.unhealthy_threshold).map_err(at("healthCheck.unhealthyThreshold"))?;
        at_least_one(h.healthy_threshold).map_err(at("healthCheck.healthyThreshold"))?;
    }
    let ratio = r.retry_budget.ratio;
    if !(0.0..=MAX_RETRY_RATIO).contains(&ratio) {
        return Err(at("retryBudget.ratio")(format!(
            "{ratio} is out of range (0..={MAX_RETRY_RATIO} retries per request)"
        )));
    }
    if let Some(rl) = &r.rate_limit {
        at_least_one(rl.requests_per_second).map_err(at("rateLimit.requestsPerSecond"))?;
        if let Some(burst) = rl.burst {
            at_least_one(burst).map_err(at("rateLimit.burst"))?;
        }
    }
    if let Some(f) = &r.faults {
        if let Some(a) = &f.abort {
            percent(a.percent).map_err(at("faults.abort.percent"))?;
            if !(400..=599).contains(&a.status) {
                return Err(at("faults.abort.status")(format!(
                    "{} is not an error status (400..=599)",
                    a.status
                )));
            }
        }
        if let Some(d) = &f.delay {
            percent(d.percent).map_err(at("faults.delay.percent"))?;
            check_positive(d.duration).map_err(at("faults.delay.duration"))?;
        }
    }
    if let Some(m) = &r.mirror {
        check_name(&m.service).map_err(at("mirror.service"))?;
        if m.service == r.service {
            return Err(at("mirror.service")(format!(
                "{:?} is the service itself; mirror to another service (e.g. {}-shadow)",
                m.service, r.service
            )));
        }
        percent(m.percent).map_err(at("mirror.percent"))?;
    }
    Ok(())
}

fn at_least_one(n: u32) -> Result<(), RangeError> {
    if n == 0 {
        return Err(RangeError::Zero);
    }
    Ok(())
}

fn percent(p: f64) -> Result<(), RangeError> {
    if !(0.0..=100.0).contains(&p) {
        return Err(RangeError::NotPercent(p));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
