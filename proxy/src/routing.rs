//! Routing tables from the control plane.
//!
//! A [`Snapshot`] from control is compiled once, on the agent thread, into a
//! [`RoutingTable`]: per service, its rules (first match wins) with their
//! matches, timeouts and retry policies, and each rule's weighted backends
//! resolved to endpoint lists by their subset labels. Shards receive the
//! table as an immutable `Arc` (prepare on every shard, then commit, so all
//! cores switch together) and look services up in it per request.
//! Without a table (no `[control]`), the static `[[services]]` apply.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use coremesh_api::resource::{RetryOn, Route};
use coremesh_api::snapshot::Snapshot;

/// A compiled snapshot.
#[derive(Debug)]
pub struct RoutingTable {
    pub version: u64,
    pub config_version: u64,
    services: HashMap<String, ServiceRoutes>,
    /// Who may call this proxy's service (its AccessPolicy and the mesh
    /// default), enforced on the inbound side; set by the agent, which knows
    /// the trust domain (see agent/apply.rs).
    pub authz: crate::authz::Authz,
}

/// How requests to one service are routed.
#[derive(Debug)]
pub struct ServiceRoutes {
    pub name: String,
    /// Every endpoint of the service (the default when it has no Route).
    pub all: Vec<SocketAddr>,
    /// The service's Route, compiled; `None`: balance across `all`.
    pub rules: Option<Vec<CompiledRule>>,
}

/// One rule of a Route.
#[derive(Debug)]
pub struct CompiledRule {
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    /// Lowercase header name and the exact value.
    pub headers: Vec<(String, String)>,
    pub methods: Vec<String>,
    pub timeout: Option<Duration>,
    pub retries: Option<RetryPolicy>,
    /// Backends with their weights and endpoints.
    pub backends: Vec<WeightedBackend>,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: Vec<RetryOn>,
}

#[derive(Debug)]
pub struct WeightedBackend {
    pub weight: u32,
    pub endpoints: Vec<SocketAddr>,
}

impl RoutingTable {
    /// Compiles a snapshot; the error is the NACK reason.
    pub fn compile(snap: &Snapshot) -> Result<RoutingTable, String> {
        let mut services = HashMap::new();
        for s in &snap.services {
            services.insert(
                s.name.to_ascii_lowercase(),
                ServiceRoutes {
                    name: s.name.clone(),
                    all: s.endpoints.iter().map(|e| e.address).collect(),
                    rules: None,
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
        })
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

fn compile_route(
    r: &Route,
    snap: &Snapshot,
    services: &mut HashMap<String, ServiceRoutes>,
) -> Result<(), String> {
    let key = r.service.to_ascii_lowercase();
    let svc = snap
        .services
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(&r.service))
        .ok_or_else(|| {
            format!(
                "route {}: service {} is not in the snapshot",
                r.name, r.service
            )
        })?;
    let mut rules = Vec::with_capacity(r.rules.len());
    for (i, rule) in r.rules.iter().enumerate() {
        let m = rule.matches.clone().unwrap_or_default();
        if let Some(p) = m.path.as_ref().or(m.path_prefix.as_ref()) {
            if !p.starts_with('/') {
                return Err(format!(
                    "route {}: rules[{i}]: path {p:?} must start with /",
                    r.name
                ));
            }
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
            })
            .collect();
        rules.push(CompiledRule {
            path: m.path,
            path_prefix: m.path_prefix,
            headers: m
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            methods: m.methods,
            timeout: rule.timeout,
            retries: rule.retries.as_ref().map(|r| RetryPolicy {
                attempts: r.attempts,
                per_try_timeout: r.per_try_timeout,
                on: r.on.clone(),
            }),
            backends,
        });
    }
    if let Some(s) = services.get_mut(&key) {
        s.rules = Some(rules);
    }
    Ok(())
}
