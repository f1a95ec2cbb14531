//! Routing tables from the control plane.
//!
//! A [`Snapshot`] from control is compiled once, on the agent thread, into a
//! [`RoutingTable`]: per service, its rules (first match wins) with their
//! matches, timeouts and retry policies, and each rule's weighted backends
//! resolved to endpoint lists by their subset labels. Shards receive the
//! table as an immutable `Arc` (prepare on every shard, then commit, so all
//! cores switch together) and look services up in it per request.
//! Without a table (no `[control]`), the static `[[services]]` apply.
//!
//! A service is defined either statically or by control, never by both:
//! control's table is looked up first, so a static definition of the same
//! name would be silently shadowed. [`StaticServices`] refuses a snapshot
//! that defines a static service (the proxy NACKs it and keeps its last good
//! table) and a reload that adds a service the table in force defines.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;

use coremesh_api::resource::{compile_regex, Resilience, RetryOn, Route, ValueMatch};
use coremesh_api::snapshot::Snapshot;

use crate::error::{Cause, CompileError, StaticConflict};
use crate::traffic::ServicePolicy;

/// A compiled snapshot.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    pub version: u64,
    pub config_version: u64,
    /// FxHash: looked up by the request's authority on every outbound
    /// request (lookups only; the keys come from control's snapshot).
    services: FxHashMap<String, ServiceRoutes>,
    /// Who may call this proxy's service (its AccessPolicy and the mesh
    /// default), enforced on the inbound side; set by the agent, which knows
    /// the trust domain (see agent/apply.rs).
    pub authz: crate::authz::Authz,
    /// Resilience blocks, compiled, by lowercase service name (the services
    /// called, and this proxy's own for its inbound rate limit).
    pub policies: HashMap<String, Arc<ServicePolicy>>,
    /// Intercepted connections (nftables redirect): an original
    /// destination and the lowercase name of the service it belongs to.
    /// Built from the services' `port`: every endpoint's host address and
    /// every virtual IP, at that port. Looked up once per intercepted
    /// connection, never per request.
    destinations: FxHashMap<SocketAddr, String>,
    /// The MeshConfig's `outboundPolicy: deny`: an intercepted connection
    /// to a destination that is no mesh service is refused, not passed
    /// through.
    pub outbound_deny: bool,
    /// The MeshConfig's `tracing` (the proxy's `[tracing]` overrides it).
    pub tracing: Option<coremesh_api::resource::Tracing>,
}

/// How requests to one service are routed.
#[derive(Debug, Clone)]
pub struct ServiceRoutes {
    pub name: String,
    /// Every endpoint of the service (the default when it has no Route).
    pub all: Vec<SocketAddr>,
    /// The service's Route, compiled; `None`: balance across `all`.
    pub rules: Option<Vec<CompiledRule>>,
    /// `protocol: tcp`: a byte stream, not HTTP requests.
    pub tcp: bool,
    /// The name of the service's Route (a span's `http.route`).
    pub route: Option<String>,
}

/// One rule of a Route. Regular expressions are compiled here, once per
/// snapshot; every shard gets its own copy of the table (see
/// `ShardMsg::Prepare`), so their match caches are never shared by cores.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// `ROUTE#INDEX` (the Route's name and the rule's position): the
    /// `route` label of the per-edge metrics.
    pub name: String,
    pub path: Option<PathMatch>,
    /// Lowercase header name and its condition.
    pub headers: Vec<(String, ValueMatcher)>,
    /// Query parameter name (as sent) and its condition.
    pub query: Vec<(String, ValueMatcher)>,
    pub methods: Vec<String>,
    pub timeout: Option<Duration>,
    pub retries: Option<RetryPolicy>,
    /// `failover: strict`: a request stays in the backend drawn for it, even
    /// when none of its endpoints is usable (no spill-over).
    pub strict: bool,
    /// Backends with their weights and endpoints.
    pub backends: Vec<WeightedBackend>,
}

/// How a rule matches the path (without the query).
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Anchored at both ends.
    Regex(regex::bytes::Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Exact(p) => p.as_bytes() == path,
            PathMatch::Prefix(p) => path.starts_with(p.as_bytes()),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// A condition on a header or query parameter value.
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    Exact(String),
    /// Anchored at both ends.
    Regex(regex::bytes::Regex),
    /// `true`: present (any value); `false`: absent.
    Present(bool),
}

impl ValueMatcher {
    /// Whether the first value found (`None`: absent) satisfies it.
    pub fn matches(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (ValueMatcher::Present(want), v) => v.is_some() == *want,
            (ValueMatcher::Exact(e), Some(v)) => e.as_bytes() == v,
            (ValueMatcher::Regex(r), Some(v)) => r.is_match(v),
            (_, None) => false,
        }
    }

    fn compile(
        v: &ValueMatch,
        at: impl FnOnce(Cause) -> CompileError,
    ) -> Result<ValueMatcher, CompileError> {
        Ok(match v {
            ValueMatch::Exact(s) => ValueMatcher::Exact(s.clone()),
            ValueMatch::Regex(r) => {
                ValueMatcher::Regex(compile_regex(r).map_err(|e| at(e.into()))?)
            }
            ValueMatch::Present(p) => ValueMatcher::Present(*p),
        })
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: Vec<RetryOn>,
    /// Exponential backoff with full jitter: the n-th retry waits a random
    /// time up to `min(backoff_max, backoff_base × 2^(n-1))`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub idempotent_only: bool,
    pub max_body: u64,
}

#[derive(Debug, Clone)]
pub struct WeightedBackend {
    pub weight: u32,
    pub endpoints: Vec<SocketAddr>,
    /// The subset selector as `k=v` joined by `,` in key order (empty:
    /// the whole service): the `subset` of the per-edge metrics.
    pub subset: String,
}

impl RoutingTable {
    /// Compiles a snapshot; the error is the NACK reason.
    pub fn compile(snap: &Snapshot) -> Result<RoutingTable, CompileError> {
        let mut services = FxHashMap::default();
        for s in &snap.services {
            services.insert(
                s.name.to_ascii_lowercase(),
                ServiceRoutes {
                    name: s.name.clone(),
                    all: s.endpoints.iter().map(|e| e.address).collect(),
                    rules: None,
                    tcp: s.protocol == coremesh_api::resource::Protocol::Tcp,
                    route: None,
                },
            );
        }
        for r in &snap.routes {
            compile_route(r, snap, &mut services)?;
        }
        Ok(RoutingTable {
            version: snap.version,
            config_version: snap.config_version,
            services,
            authz: crate::authz::Authz::default(),
            policies: snap
                .resilience
                .iter()
                .map(|r| {
                    (
                        r.service.to_ascii_lowercase(),
                        Arc::new(ServicePolicy::compile(r)),
                    )
                })
                .collect(),
            destinations: destinations(snap),
            outbound_deny: snap.outbound_policy == coremesh_api::resource::Access::Deny,
            tracing: snap.tracing.as_deref().cloned(),
        })
    }

    /// The service an intercepted connection's original destination
    /// belongs to (see [`RoutingTable::destinations`]).
    pub fn service_at(&self, dst: SocketAddr) -> Option<&ServiceRoutes> {
        let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        self.services.get(self.destinations.get(&dst)?)
    }

    /// Names of the services in the table, lowercase.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// The routes of a service (name compared case-insensitively).
    pub fn service(&self, name: &[u8]) -> Option<&ServiceRoutes> {
        let name = std::str::from_utf8(name).ok()?;
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.services.get(&name.to_ascii_lowercase())
        } else {
            self.services.get(name)
        }
    }
}

/// Original destination -> service, for interception. Services are taken
/// in snapshot order (sorted by name); when two claim the same address and
/// port (two services on one host with the same `port`, a misconfiguration
/// control cannot see, as endpoints come and go), the first keeps it.
fn destinations(snap: &Snapshot) -> FxHashMap<SocketAddr, String> {
    let mut map = FxHashMap::default();
    for s in &snap.services {
        let Some(port) = s.port else { continue };
        let hosts = s.endpoints.iter().map(|e| e.address.ip());
        for ip in s.addresses.iter().copied().chain(hosts) {
            map.entry(SocketAddr::new(ip.to_canonical(), port))
                .or_insert_with(|| s.name.to_ascii_lowercase());
        }
    }
    map
}

fn compile_route(
    r: &Route,
    snap: &Snapshot,
    services: &mut FxHashMap<String, ServiceRoutes>,
) -> Result<(), CompileError> {
    let key = r.service.to_ascii_lowercase();
    let svc = snap
        .services
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(&r.service))
        .ok_or_else(|| CompileError::UnknownService {
            route: r.name.clone(),
            service: r.service.clone(),
        })?;
    let mut rules = Vec::with_capacity(r.rules.len());
    for (i, rule) in r.rules.iter().enumerate() {
        let m = rule.matches.clone().unwrap_or_default();
        if let Some(p) = m.path.as_ref().or(m.path_prefix.as_ref()) {
            if !p.starts_with('/') {
                return Err(CompileError::RelativePath {
                    route: r.name.clone(),
                    rule: i,
                    path: p.clone(),
                });
            }
        }
        let bad_regex = |field: String| {
            move |cause: Cause| CompileError::BadRegex {
                route: r.name.clone(),
                rule: i,
                field,
                cause,
            }
        };
        let path = match (&m.path, &m.path_prefix, &m.path_regex, &m.grpc) {
            (Some(p), None, None, None) => Some(PathMatch::Exact(p.clone())),
            (None, Some(p), None, None) => Some(PathMatch::Prefix(p.clone())),
            (None, None, Some(re), None) => Some(PathMatch::Regex(
                compile_regex(re).map_err(|e| bad_regex("pathRegex".into())(e.into()))?,
            )),
            (None, None, None, Some(g)) => Some(match g.path() {
                (p, true) => PathMatch::Exact(p),
                (p, false) => PathMatch::Prefix(p),
            }),
            (None, None, None, None) => None,
            _ => {
                return Err(CompileError::PathConflict {
                    route: r.name.clone(),
                    rule: i,
                })
            }
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for (k, v) in &m.headers {
            headers.push((
                k.to_ascii_lowercase(),
                ValueMatcher::compile(v, bad_regex(format!("headers.{k}")))?,
            ));
        }
        let mut query = Vec::with_capacity(m.query.len());
        for (k, v) in &m.query {
            query.push((
                k.clone(),
                ValueMatcher::compile(v, bad_regex(format!("query.{k}")))?,
            ));
        }
        let backends = rule
            .backends
            .iter()
            .map(|b| WeightedBackend {
                weight: b.weight,
                endpoints: svc
                    .endpoints
                    .iter()
                    .filter(|e| b.subset.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                    .map(|e| e.address)
                    .collect(),
                subset: b
                    .subset
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            })
            .collect();
        rules.push(CompiledRule {
            name: format!("{}#{i}", r.name),
            path,
            headers,
            query,
            methods: m.methods,
            timeout: rule.timeout,
            retries: rule.retries.as_ref().map(|r| {
                let backoff = r.backoff_or_default();
                RetryPolicy {
                    attempts: r.attempts,
                    per_try_timeout: r.per_try_timeout,
                    on: r.on.clone(),
                    backoff_base: backoff.base,
                    backoff_max: backoff.max_or_default(),
                    idempotent_only: r.idempotent_only,
                    max_body: r.max_body_bytes,
                }
            }),
            strict: rule.failover == coremesh_api::resource::Failover::Strict,
            backends,
        });
    }
    if let Some(s) = services.get_mut(&key) {
        s.rules = Some(rules);
        s.route = Some(r.name.clone());
    }
    Ok(())
}

/// The names of a configuration's static `[[services]]` and the file they
/// come from: the services control may not define too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticServices {
    source: String,
    /// Lowercase, as lookups compare names case-insensitively.
    names: BTreeSet<String>,
}

impl StaticServices {
    /// The services named in `source` (proxy.toml).
    pub fn new<'n>(source: String, names: impl IntoIterator<Item = &'n str>) -> StaticServices {
        StaticServices {
            source,
            names: names.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    /// Refuses a snapshot that defines one of these services; the error is
    /// the NACK reason.
    pub fn check_snapshot(&self, snap: &Snapshot) -> Result<(), StaticConflict> {
        let both: BTreeSet<String> = snap
            .services
            .iter()
            .map(|s| s.name.to_ascii_lowercase())
            .filter(|n| self.names.contains(n))
            .collect();
        if both.is_empty() {
            return Ok(());
        }
        Err(StaticConflict::InSnapshot {
            names: both.into_iter().collect(),
            file: self.source.clone(),
        })
    }

    /// Refuses a configuration (a reload) that defines statically a service
    /// of the table in force.
    pub fn check_table(&self, table: &RoutingTable) -> Result<(), StaticConflict> {
        let mut both: Vec<&str> = table
            .service_names()
            .filter(|n| self.names.contains(*n))
            .collect();
        both.sort_unstable();
        match both.first() {
            None => Ok(()),
            Some(first) => Err(StaticConflict::InReload {
                name: first.to_string(),
                file: self.source.clone(),
                version: table.version,
            }),
        }
    }
}

/// The services a proxy balances and limits: those of the table, the
/// static `[[services]]` (`statics`, with their endpoints), and its own
/// (`own`, for its inbound rate limit), each with its Resilience policy (the
/// table's, else the static `resilience`) or the default.
pub fn service_list<'s>(
    table: Option<&RoutingTable>,
    statics: impl IntoIterator<Item = (&'s str, &'s [SocketAddr])>,
    resilience: &[Resilience],
    own: &str,
) -> Vec<(String, Vec<SocketAddr>, Arc<ServicePolicy>)> {
    let policy = |name: &str| {
        table
            .and_then(|t| t.policies.get(&name.to_ascii_lowercase()).cloned())
            .or_else(|| {
                resilience
                    .iter()
                    .find(|r| r.service.eq_ignore_ascii_case(name))
                    .map(|r| Arc::new(ServicePolicy::compile(r)))
            })
            .unwrap_or_else(|| Arc::new(ServicePolicy::default_for(name)))
    };
    let mut list: Vec<(String, Vec<SocketAddr>, Arc<ServicePolicy>)> = Vec::new();
    if let Some(t) = table {
        for name in t.service_names() {
            if let Some(s) = t.service(name.as_bytes()) {
                list.push((s.name.clone(), s.all.clone(), policy(&s.name)));
            }
        }
    }
    for (name, endpoints) in statics {
        if !list.iter().any(|(n, _, _)| n.eq_ignore_ascii_case(name)) {
            list.push((name.to_string(), endpoints.to_vec(), policy(name)));
        }
    }
    if !list.iter().any(|(n, _, _)| n.eq_ignore_ascii_case(own)) {
        list.push((own.to_string(), Vec::new(), policy(own)));
    }
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list
}

#[cfg(test)]
mod tests;
