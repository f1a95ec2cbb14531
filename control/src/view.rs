//! What one proxy sees: the services it may call with their endpoints,
//! their routes and their Resiliences (plus the services those mirror to);
//! the AccessPolicy and Resilience of its own service and the mesh's
//! default access; the trust bundle and the revocation list. A pure function of the config, the
//! registry, the proxy's `calls` and its service; the hub turns a view into
//! a versioned [`Snapshot`] and sends it only when it differs from the last
//! one sent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use coremesh_api::resource::{Access, AccessPolicy, Resilience, Route, Service, Tracing};
use coremesh_api::snapshot::{RevokedCert, ServiceEndpoints, Snapshot};

use crate::config::Config;
use crate::registry::Registry;

/// Which config a snapshot reflects: its version, the store that numbers
/// it, and its digest.
#[derive(Debug, Clone, Copy)]
pub struct ConfigRef<'a> {
    pub version: u64,
    pub store_id: &'a str,
    pub digest: &'a str,
}

/// A snapshot without its versions.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub services: Vec<ServiceEndpoints>,
    pub routes: Vec<Route>,
    /// Of the services above and of the proxy's own service: the hub's view
    /// key includes the own service when it has one.
    pub resilience: Vec<Resilience>,
    /// The proxy's own service's policy: two proxies share a view only if
    /// they share this (see the hub's view key).
    pub access_policy: Option<AccessPolicy>,
    pub default_access: Access,
    /// The MeshConfig's `outboundPolicy`.
    pub outbound_policy: Access,
    /// The MeshConfig's `tracing`, the same for every proxy.
    pub tracing: Option<Tracing>,
    /// The same for every proxy (control's CA and extra roots), shared.
    pub trust_bundle: Arc<Vec<String>>,
    /// The same for every proxy (certificates of evicted nodes), shared;
    /// set by the hub ([`View::with_revoked`]).
    pub revoked: Arc<Vec<RevokedCert>>,
}

impl View {
    /// The view with the mesh's revocation list.
    pub fn with_revoked(mut self, revoked: &Arc<Vec<RevokedCert>>) -> View {
        self.revoked = revoked.clone();
        self
    }

    pub fn snapshot(&self, version: u64, config: &ConfigRef<'_>) -> Snapshot {
        Snapshot {
            version,
            config_version: config.version,
            store_id: config.store_id.to_string(),
            config_digest: config.digest.to_string(),
            services: self.services.clone(),
            routes: self.routes.clone(),
            resilience: self.resilience.clone(),
            access_policy: self.access_policy.clone(),
            default_access: self.default_access,
            outbound_policy: self.outbound_policy,
            tracing: self.tracing.clone().map(Box::new),
            trust_bundle: self.trust_bundle.to_vec(),
            revoked: self.revoked.to_vec(),
        }
    }
}

/// Every service of the config plus every service with registered
/// endpoints, restricted to `calls` when given, and the mirror services of
/// those services' Resiliences (a proxy sends them copies even when its
/// app never calls them); each with its endpoints (healthy ones, or all
/// when none is: see [`Registry::endpoints_of`]); the routes and
/// Resiliences of those services; the Resilience of `service` (the proxy's
/// own: its inbound side enforces the rate limit) and its AccessPolicy and
/// no other; the mesh's default access; and `trust_bundle`.
pub fn compute(
    config: &Config,
    registry: &Registry,
    calls: Option<&BTreeSet<String>>,
    service: &str,
    trust_bundle: &Arc<Vec<String>>,
) -> View {
    // A service with endpoints but no Service resource is HTTP and has no
    // port for interception.
    let mut names: BTreeMap<&str, Option<&Service>> = BTreeMap::new();
    for s in &config.services {
        names.insert(&s.name, Some(s));
    }
    for s in registry.services() {
        names.entry(s).or_default();
    }
    let called = |name: &str| match calls {
        Some(c) => c.contains(name),
        None => true,
    };
    // Mirrors of called services are wanted, but not their own mirrors:
    // a copy is never mirrored again.
    let mirrors: BTreeSet<&str> = config
        .resiliences
        .iter()
        .filter(|r| called(&r.service))
        .filter_map(|r| r.mirror.as_ref().map(|m| m.service.as_str()))
        .collect();
    let services: Vec<ServiceEndpoints> = names
        .into_iter()
        .filter(|(name, _)| called(name) || mirrors.contains(name))
        .map(|(name, svc)| ServiceEndpoints {
            name: name.to_string(),
            port: svc.and_then(|s| s.port),
            addresses: svc.map(|s| s.addresses.clone()).unwrap_or_default(),
            protocol: svc.map(|s| s.protocol).unwrap_or_default(),
            endpoints: registry.endpoints_of(name),
        })
        .collect();
    let routes = config
        .routes
        .iter()
        .filter(|r| services.iter().any(|s| s.name == r.service))
        .cloned()
        .collect();
    let mut resilience: Vec<Resilience> = config
        .resiliences
        .iter()
        .filter(|r| r.service == service || services.iter().any(|s| s.name == r.service))
        .cloned()
        .collect();
    // The config sorts by name, which a named Resilience may not share
    // with its service.
    resilience.sort_by(|a, b| a.service.cmp(&b.service));
    View {
        services,
        routes,
        resilience,
        access_policy: config.access_policy(service).cloned(),
        default_access: config.default_access(),
        outbound_policy: config.outbound_policy(),
        tracing: config.mesh.as_ref().and_then(|m| m.tracing.clone()),
        trust_bundle: trust_bundle.clone(),
        revoked: Arc::default(),
    }
}

#[cfg(test)]
mod tests;
