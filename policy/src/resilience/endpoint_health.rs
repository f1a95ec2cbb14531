//! Active health checks (`healthCheck: { interval, timeout,
//! unhealthyThreshold, healthyThreshold }`): the bookkeeping side.
//!
//! The agent probes each endpoint's proxy every `interval` (a probe that
//! takes longer than `timeout` counts as failed; that endpoint's proxy
//! answers from its own view of its app, so a probe never reaches the app).
//! This module only turns probe results into health:
//!
//! * `unhealthyThreshold` failed probes in a row make a healthy endpoint
//!   unhealthy; `healthyThreshold` successful ones in a row make it healthy
//!   again. A result that agrees with the current state resets the run.
//! * New endpoints start healthy, so traffic is not held back until the
//!   first probes answer (outlier detection covers the gap).
//!
//! Agent thread, one per proxy; like the outlier detector, it hands out only
//! the services whose unhealthy set changed, for the agent to broadcast.
//! An endpoint that fails its checks stops receiving traffic after
//! `unhealthyThreshold × interval` (+ `timeout`, + one broadcast).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use super::EndpointSet;

/// A service's health-check thresholds (the probe interval and timeout are
/// the prober's business).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

#[derive(Clone, Copy, Debug)]
struct Endpoint {
    healthy: bool,
    /// Results in a row that disagree with `healthy`.
    run: u32,
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint {
            healthy: true,
            run: 0,
        }
    }
}

#[derive(Debug)]
struct Service {
    config: HealthConfig,
    endpoints: HashMap<SocketAddr, Endpoint>,
    unhealthy: EndpointSet,
    changed: bool,
}

impl Service {
    fn refresh_set(&mut self) {
        let set = EndpointSet::new(
            self.endpoints
                .iter()
                .filter(|(_, e)| !e.healthy)
                .map(|(a, _)| *a)
                .collect(),
        );
        if set != self.unhealthy {
            self.unhealthy = set;
            self.changed = true;
        }
    }
}

/// Per service, per endpoint health from active probes. Agent thread, one per
/// proxy.
#[derive(Debug, Default)]
pub struct HealthTracker {
    services: HashMap<Arc<str>, Service>,
}

impl HealthTracker {
    /// An empty tracker. Agent, at start.
    pub fn new() -> Self {
        HealthTracker::default()
    }

    /// Sets a service's thresholds and endpoints (the ones to probe). Agent,
    /// for each service with `healthCheck` in every snapshot it applies.
    /// Endpoints that stay keep their health; new ones start healthy.
    pub fn configure(&mut self, service: &str, config: HealthConfig, endpoints: &[SocketAddr]) {
        let s = self
            .services
            .entry(Arc::from(service))
            .or_insert_with(|| Service {
                config,
                endpoints: HashMap::new(),
                unhealthy: EndpointSet::default(),
                changed: false,
            });
        s.config = config;
        let keep: HashSet<SocketAddr> = endpoints.iter().copied().collect();
        s.endpoints.retain(|a, _| keep.contains(a));
        for a in endpoints {
            s.endpoints.entry(*a).or_default();
        }
        s.refresh_set();
    }

    /// Forgets the services `keep` rejects. Agent, after applying a snapshot.
    pub fn retain_services(&mut self, keep: impl Fn(&str) -> bool) {
        self.services.retain(|name, _| keep(name));
    }

    /// One probe's result (`ok = false` for a failure or a timeout). Agent,
    /// per probe. Returns whether the endpoint's health changed. Results for
    /// unknown services or endpoints are ignored.
    pub fn record(&mut self, service: &str, addr: SocketAddr, ok: bool) -> bool {
        let Some(s) = self.services.get_mut(service) else {
            return false;
        };
        let c = s.config;
        let Some(e) = s.endpoints.get_mut(&addr) else {
            return false;
        };
        if ok == e.healthy {
            e.run = 0;
            return false;
        }
        e.run += 1;
        let threshold = if e.healthy {
            c.unhealthy_threshold
        } else {
            c.healthy_threshold
        };
        if e.run < threshold.max(1) {
            return false;
        }
        e.healthy = ok;
        e.run = 0;
        s.refresh_set();
        true
    }

    /// Whether `addr` of `service` is healthy (unknown ones are).
    #[cfg(test)]
    pub fn is_healthy(&self, service: &str, addr: SocketAddr) -> bool {
        self.services
            .get(service)
            .and_then(|s| s.endpoints.get(&addr))
            .is_none_or(|e| e.healthy)
    }

    /// A service's unhealthy endpoints now.
    pub fn unhealthy(&self, service: &str) -> Option<&EndpointSet> {
        self.services.get(service).map(|s| &s.unhealthy)
    }

    /// The services whose unhealthy set changed since the last call, with the
    /// new set. Agent, after recording probe results: broadcast these, and
    /// only these, to every shard.
    pub fn take_changes(&mut self) -> Vec<(Arc<str>, EndpointSet)> {
        let mut out: Vec<(Arc<str>, EndpointSet)> = self
            .services
            .iter_mut()
            .filter_map(|(n, s)| {
                std::mem::take(&mut s.changed).then(|| (n.clone(), s.unhealthy.clone()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests;
