//! The registry: soft, in-memory state about the fleet. Which proxy
//! sessions exist (or existed since start), which endpoints are registered,
//! their health and heartbeats, what each proxy ACKed or NACKed.
//!
//! Sans-I/O: every method takes `now` and returns whether the fleet's
//! endpoint sets changed (so the hub knows to publish); nothing here touches
//! a socket or a clock.
//!
//! Endpoints are keyed by (service, address): two instances of one service
//! on one node are two endpoints. An endpoint outlives its connection: only
//! a missed heartbeat ([`Registry::expire`]) or a Deregister removes it, and
//! nobody expires during the grace period after control starts, so a control
//! restart never withdraws the fleet.
//!
//! A proxy's row outlives its connection too: a disconnected proxy is shown
//! as such, with when it was last seen, for `forget_after` (then
//! [`Registry::forget`] drops it), so `meshctl status` shows who went away
//! without listing every proxy that ever connected. A reconnecting proxy
//! finds its row by (service, node) through an index, not a scan: at fleet
//! scale every Hello would otherwise walk every row.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use coremesh_api::http::{EndpointStatus, ProxyStatus};
use coremesh_api::snapshot::Endpoint;

use crate::store::registrations::{Change, EndpointKey, EndpointRecord};

/// Every replica's endpoints, read from etcd (registrations shared).
pub type SharedSet = std::sync::Arc<BTreeMap<EndpointKey, EndpointRecord>>;

/// A proxy session's id in the registry (stable across its reconnects).
pub type ProxyId = u64;

#[derive(Debug, Clone)]
struct EndpointEntry {
    node: String,
    labels: BTreeMap<String, String>,
    healthy: bool,
    last_heartbeat: Instant,
    owner: ProxyId,
}

#[derive(Debug, Clone)]
struct ProxyEntry {
    status: ProxyStatus,
    /// (snapshot version, config version) sent and not yet answered.
    in_flight: Vec<(u64, u64)>,
    /// The labels of its last Register, to restore an expired endpoint.
    labels: BTreeMap<String, String>,
    /// When the session ended; `None` while connected.
    disconnected_at: Option<Instant>,
}

pub struct Registry {
    endpoints: BTreeMap<(String, SocketAddr), EndpointEntry>,
    proxies: BTreeMap<ProxyId, ProxyEntry>,
    /// The disconnected proxies by (service, node), lowest id first: where
    /// a reconnecting proxy finds its row.
    idle: HashMap<(String, String), BTreeSet<ProxyId>>,
    /// The disconnected proxies in the order they left, to forget them.
    idle_since: BTreeSet<(Instant, ProxyId)>,
    next_id: ProxyId,
    heartbeat_timeout: Duration,
    /// How long a disconnected proxy's row is kept.
    forget_after: Duration,
    /// No expiry before this instant.
    grace_until: Instant,
    /// With registrations shared through etcd: what this replica's
    /// proxies did to their endpoints, for the store to write
    /// ([`Registry::take_changes`]).
    changes: Option<Vec<Change>>,
    /// With registrations shared: every replica's endpoints, which callers
    /// are sent and `meshctl get endpoints` shows, instead of this
    /// replica's own.
    shared: Option<SharedSet>,
}

impl Registry {
    pub fn new(
        heartbeat_timeout: Duration,
        grace_until: Instant,
        forget_after: Duration,
    ) -> Registry {
        Registry {
            endpoints: BTreeMap::new(),
            proxies: BTreeMap::new(),
            idle: HashMap::new(),
            idle_since: BTreeSet::new(),
            next_id: 1,
            heartbeat_timeout,
            forget_after,
            grace_until,
            changes: None,
            shared: None,
        }
    }

    /// Records changes to this replica's endpoints for sharing
    /// ([`Registry::take_changes`]) and publishes `set` instead of them.
    pub fn share(&mut self, set: SharedSet) {
        self.changes.get_or_insert_with(Vec::new);
        self.shared = Some(set);
    }

    /// The set to publish, when shared (the mirror of etcd changed).
    pub fn set_shared(&mut self, set: SharedSet) {
        self.shared = Some(set);
    }

    /// Removes `key` from the shared set before etcd confirms it.
    pub fn unshare(&mut self, key: &EndpointKey) {
        if let Some(set) = &mut self.shared {
            if set.contains_key(key) {
                std::sync::Arc::make_mut(set).remove(key);
            }
        }
    }

    /// The shared set published now, if shared.
    pub fn shared(&self) -> Option<&SharedSet> {
        self.shared.as_ref()
    }

    /// What changed since the last call (empty unless shared).
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn record(&mut self, c: impl FnOnce() -> Change) {
        if let Some(changes) = &mut self.changes {
            changes.push(c());
        }
    }

    fn put_change(key: &(String, SocketAddr), e: &EndpointEntry, wall: SystemTime) -> Change {
        Change::Put {
            key: key.clone(),
            node: e.node.clone(),
            labels: e.labels.clone(),
            healthy: e.healthy,
            at_ms: crate::unix_millis(wall),
        }
    }

    /// A session said Hello. A proxy reconnecting (same service and node,
    /// currently disconnected) gets its old entry back: the lowest such id.
    pub fn hello(&mut self, service: &str, node: &str, cert_expiry: u64) -> ProxyId {
        let key = (service.to_string(), node.to_string());
        let reuse = match self.idle.get_mut(&key) {
            Some(ids) => {
                let id = ids.pop_first();
                if ids.is_empty() {
                    self.idle.remove(&key);
                }
                id
            }
            None => None,
        };
        if let Some(id) = reuse {
            if let Some(since) = self.proxies.get(&id).and_then(|p| p.disconnected_at) {
                self.idle_since.remove(&(since, id));
            }
        }
        let id = reuse.unwrap_or_else(|| {
            let id = self.next_id;
            self.next_id += 1;
            id
        });
        let entry = self.proxies.entry(id).or_insert_with(|| ProxyEntry {
            status: ProxyStatus {
                service: service.to_string(),
                node: node.to_string(),
                address: None,
                connected: true,
                sent_version: None,
                applied_version: None,
                applied_config_version: None,
                nack: None,
                last_heartbeat: None,
                healthy: None,
                cert_expiry: None,
                last_seen: None,
                problem: None,
                held_running: None,
                applied_at: None,
                clock_skew_ms: None,
            },
            in_flight: Vec::new(),
            labels: BTreeMap::new(),
            disconnected_at: None,
        });
        entry.status.connected = true;
        entry.status.last_seen = None;
        entry.status.problem = None;
        entry.status.held_running = None;
        entry.status.clock_skew_ms = None;
        entry.disconnected_at = None;
        entry.status.cert_expiry = Some(cert_expiry);
        entry.in_flight.clear();
        id
    }

    /// The session ended at `now` (`wall`): the row stays, shown as
    /// disconnected, for `forget_after`.
    pub fn disconnected(&mut self, id: ProxyId, now: Instant, wall: SystemTime) {
        let Some(p) = self.proxies.get_mut(&id) else {
            return;
        };
        if !p.status.connected {
            return;
        }
        p.status.connected = false;
        p.status.last_seen = Some(crate::unix_secs(wall));
        p.disconnected_at = Some(now);
        self.idle
            .entry((p.status.service.clone(), p.status.node.clone()))
            .or_default()
            .insert(id);
        self.idle_since.insert((now, id));
    }

    /// Drops the rows of proxies disconnected for `forget_after` or longer.
    /// Their endpoints are not touched (heartbeats expire those). Returns
    /// how many were dropped.
    pub fn forget(&mut self, now: Instant) -> usize {
        let mut forgotten = 0;
        while let Some(&(since, id)) = self.idle_since.first() {
            if now.saturating_duration_since(since) < self.forget_after {
                break;
            }
            self.idle_since.pop_first();
            let Some(p) = self.proxies.remove(&id) else {
                continue;
            };
            let key = (p.status.service, p.status.node);
            if let Some(ids) = self.idle.get_mut(&key) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.idle.remove(&key);
                }
            }
            tracing::info!(service = %key.0, node = %key.1, proxy = id, "forgot a disconnected proxy");
            forgotten += 1;
        }
        forgotten
    }

    /// The proxy's clock said `proxy_ms` when control's said `control_ms`.
    pub fn clock(&mut self, id: ProxyId, proxy_ms: u64, control_ms: u64) {
        if let Some(p) = self.proxies.get_mut(&id) {
            p.status.clock_skew_ms = Some(proxy_ms as i64 - control_ms as i64);
        }
    }

    pub fn set_cert_expiry(&mut self, id: ProxyId, not_after: u64) {
        if let Some(p) = self.proxies.get_mut(&id) {
            p.status.cert_expiry = Some(not_after);
        }
    }

    /// The session is held for the grace period; the proxy runs
    /// `running` (its persisted snapshot), as far as it said.
    pub fn held(&mut self, id: ProxyId, running: u64) {
        if let Some(p) = self.proxies.get_mut(&id) {
            p.status.held_running = Some(running);
        }
    }

    pub fn sent(&mut self, id: ProxyId, version: u64, config_version: u64) {
        if let Some(p) = self.proxies.get_mut(&id) {
            p.status.held_running = None;
            p.status.sent_version = Some(version);
            p.in_flight.push((version, config_version));
            // A proxy that never answers must not grow this without bound.
            if p.in_flight.len() > 64 {
                p.in_flight.remove(0);
            }
        }
    }

    fn answered(p: &mut ProxyEntry, version: u64) -> Option<u64> {
        let config = p
            .in_flight
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, c)| *c);
        p.in_flight.retain(|(v, _)| *v > version);
        config
    }

    pub fn ack(&mut self, id: ProxyId, version: u64) {
        if let Some(p) = self.proxies.get_mut(&id) {
            let config = Self::answered(p, version);
            p.status.applied_version = Some(version);
            p.status.applied_at = Some(crate::unix_secs(SystemTime::now()));
            if config.is_some() {
                p.status.applied_config_version = config;
            }
            p.status.nack = None;
        }
    }

    /// Records what is wrong with the proxy's setup (shown by `meshctl
    /// status` until its next session).
    pub fn problem(&mut self, id: ProxyId, problem: String) {
        if let Some(p) = self.proxies.get_mut(&id) {
            p.status.problem = Some(problem);
        }
    }

    pub fn nack(&mut self, id: ProxyId, version: u64, reason: &str) {
        if let Some(p) = self.proxies.get_mut(&id) {
            Self::answered(p, version);
            p.status.nack = Some(format!("version {version}: {reason}"));
        }
    }

    /// Registers (or moves) the proxy's endpoint. Counts as a heartbeat.
    pub fn register(
        &mut self,
        id: ProxyId,
        address: SocketAddr,
        labels: BTreeMap<String, String>,
        now: Instant,
        wall: SystemTime,
    ) -> bool {
        let Some(p) = self.proxies.get_mut(&id) else {
            return false;
        };
        let service = p.status.service.clone();
        let node = p.status.node.clone();
        let mut changed = false;
        // A previous address of this entry is not withdrawn here: entries are
        // matched to reconnecting sessions by (service, node), so two
        // instances on one node may swap entries after a reconnect, and the
        // "old" address can be the other instance's live endpoint. An
        // address nobody heartbeats any more expires on its own.
        let _ = p.status.address.replace(address);
        let healthy = p.status.healthy.unwrap_or(true);
        p.labels = labels.clone();
        p.status.last_heartbeat = Some(crate::unix_secs(wall));
        // A registration whose owner is another session (an instance that
        // restarted on the same address) is taken over.
        let new = EndpointEntry {
            node,
            labels,
            healthy,
            last_heartbeat: now,
            owner: id,
        };
        let key = (service, address);
        self.record(|| Self::put_change(&key, &new, wall));
        match self.endpoints.get_mut(&key) {
            Some(e) => {
                changed |= e.labels != new.labels || e.healthy != new.healthy || e.node != new.node;
                *e = new;
            }
            None => {
                self.endpoints.insert(key, new);
                changed = true;
            }
        }
        changed
    }

    /// A heartbeat with the app's health. True if an endpoint's health
    /// flipped (or it came back after expiring).
    pub fn health(&mut self, id: ProxyId, healthy: bool, now: Instant, wall: SystemTime) -> bool {
        let Some(p) = self.proxies.get_mut(&id) else {
            return false;
        };
        p.status.healthy = Some(healthy);
        p.status.last_heartbeat = Some(crate::unix_secs(wall));
        let Some(address) = p.status.address else {
            return false;
        };
        let key = (p.status.service.clone(), address);
        match self.endpoints.get_mut(&key) {
            Some(e) if e.owner == id => {
                e.last_heartbeat = now;
                let flipped = e.healthy != healthy;
                e.healthy = healthy;
                let change = if flipped {
                    Self::put_change(&key, e, wall)
                } else {
                    Change::Beat {
                        key: key.clone(),
                        at_ms: crate::unix_millis(wall),
                    }
                };
                self.record(|| change);
                if flipped {
                    self.log_flip(&key, healthy);
                }
                flipped
            }
            Some(_) => false,
            None => {
                // Expired while the proxy was cut off; its heartbeat brings
                // it back.
                let labels = p.labels.clone();
                let node = p.status.node.clone();
                let e = EndpointEntry {
                    node,
                    labels,
                    healthy,
                    last_heartbeat: now,
                    owner: id,
                };
                self.record(|| Self::put_change(&key, &e, wall));
                self.endpoints.insert(key, e);
                true
            }
        }
    }

    /// Says what a health flip of endpoint `key` does to the service's
    /// callers: an unhealthy endpoint is withdrawn, unless none of the
    /// service's endpoints is healthy (then all stay: fail open).
    fn log_flip(&self, key: &(String, SocketAddr), healthy: bool) {
        let (service, address) = key;
        let node = self.endpoints.get(key).map_or("", |e| e.node.as_str());
        if healthy {
            tracing::info!(%service, %address, %node, "endpoint readmitted: its app passes its health check again");
            return;
        }
        let any_healthy = self
            .endpoints
            .iter()
            .any(|((s, _), e)| s == service && e.healthy);
        if any_healthy {
            tracing::warn!(%service, %address, %node, "endpoint withdrawn: its app fails its health check");
        } else {
            tracing::warn!(%service, %address, %node, "endpoint unhealthy but kept: no endpoint of the service is healthy (fail open)");
        }
    }

    /// Withdraws the proxy's endpoint. True if there was one.
    pub fn deregister(&mut self, id: ProxyId) -> bool {
        let Some(p) = self.proxies.get_mut(&id) else {
            return false;
        };
        let Some(address) = p.status.address.take() else {
            return false;
        };
        let key = (p.status.service.clone(), address);
        match self.endpoints.get(&key) {
            Some(e) if e.owner == id => {
                self.endpoints.remove(&key);
                self.unshare(&key);
                self.record(|| Change::Remove { key });
                true
            }
            _ => false,
        }
    }

    /// Lets go of the session's endpoint without withdrawing it: this
    /// replica, cut off from etcd, closed the session so that the proxy
    /// registers with another ([`crate::hub::Hub`]'s hand-over). It leaves
    /// this replica's registrations (never refreshed, put back or deleted
    /// from here again) and stays in the shared set: its record in etcd
    /// stays until the next replica puts it, or until the leader of
    /// `withdraw` finds its heartbeat stale.
    pub fn release(&mut self, id: ProxyId) {
        let Some(p) = self.proxies.get_mut(&id) else {
            return;
        };
        let Some(address) = p.status.address.take() else {
            return;
        };
        let key = (p.status.service.clone(), address);
        if self.endpoints.get(&key).is_some_and(|e| e.owner == id) {
            self.endpoints.remove(&key);
            self.record(|| Change::Forget { key });
        }
    }

    /// The connected proxies on `node`.
    pub fn connected_on(&self, node: &str) -> Vec<ProxyId> {
        self.proxies
            .iter()
            .filter(|(_, p)| p.status.connected && p.status.node == node)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Withdraws every endpoint registered from `node` (it was evicted);
    /// how many there were.
    pub fn withdraw_node(&mut self, node: &str) -> usize {
        let before = self.endpoints.len();
        let mut gone = Vec::new();
        self.endpoints.retain(|(service, address), e| {
            let keep = e.node != node;
            if !keep {
                tracing::warn!(%service, %address, %node, "endpoint withdrawn: its node was evicted");
                gone.push((service.clone(), *address));
            }
            keep
        });
        for key in gone {
            self.unshare(&key);
            self.record(|| Change::Remove { key });
        }
        before - self.endpoints.len()
    }

    /// Removes endpoints whose heartbeat is older than the timeout, unless
    /// still in the grace period. True if any was removed.
    pub fn expire(&mut self, now: Instant) -> bool {
        if now < self.grace_until {
            return false;
        }
        let timeout = self.heartbeat_timeout;
        let before = self.endpoints.len();
        let shared = self.changes.is_some();
        let mut gone = Vec::new();
        self.endpoints.retain(|(service, addr), e| {
            let alive = now.saturating_duration_since(e.last_heartbeat) <= timeout;
            if !alive {
                if shared {
                    // The leader of election withdraw removes it from etcd.
                    tracing::info!(%service, address = %addr, node = %e.node, "no heartbeat: this replica stops refreshing the endpoint");
                } else {
                    tracing::info!(%service, address = %addr, node = %e.node, "endpoint expired: no heartbeat");
                }
                gone.push((service.clone(), *addr));
            }
            alive
        });
        for key in gone {
            self.record(|| Change::Forget { key });
        }
        // Shared: what callers see changes when etcd does.
        !shared && self.endpoints.len() != before
    }

    pub fn in_grace(&self, now: Instant) -> bool {
        now < self.grace_until
    }

    /// Services with at least one registered endpoint.
    pub fn services(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        let mut last: Option<&str> = None;
        let keys: Box<dyn Iterator<Item = &(String, SocketAddr)>> = match &self.shared {
            Some(set) => Box::new(set.keys()),
            None => Box::new(self.endpoints.keys()),
        };
        Box::new(keys.filter_map(move |(s, _)| {
            if last == Some(s.as_str()) {
                None
            } else {
                last = Some(s.as_str());
                Some(s.as_str())
            }
        }))
    }

    /// The endpoints of `service` a caller should use: the healthy ones, or
    /// all of them when none is healthy (fail open: a health checker that
    /// is wrong everywhere must not make the service vanish).
    pub fn endpoints_of(&self, service: &str) -> Vec<Endpoint> {
        let from = (service.to_string(), SocketAddr::from(([0, 0, 0, 0], 0)));
        let all: Vec<Endpoint> = match &self.shared {
            Some(set) => set
                .range(from..)
                .take_while(|((s, _), _)| s == service)
                .map(|((_, a), e)| Endpoint {
                    address: *a,
                    labels: e.labels.clone(),
                    node: e.node.clone(),
                    healthy: e.healthy,
                })
                .collect(),
            None => self
                .endpoints
                .range(from..)
                .take_while(|((s, _), _)| s == service)
                .map(|((_, a), e)| Endpoint {
                    address: *a,
                    labels: e.labels.clone(),
                    node: e.node.clone(),
                    healthy: e.healthy,
                })
                .collect(),
        };
        let any_healthy = all.iter().any(|e| e.healthy);
        all.into_iter()
            .filter(|e| e.healthy || !any_healthy)
            .collect()
    }

    pub fn proxy_statuses(&self) -> Vec<ProxyStatus> {
        self.proxies.values().map(|p| p.status.clone()).collect()
    }

    pub fn endpoint_statuses(&self) -> Vec<EndpointStatus> {
        if let Some(set) = &self.shared {
            return set
                .iter()
                .map(|((service, address), e)| EndpointStatus {
                    service: service.clone(),
                    address: *address,
                    node: e.node.clone(),
                    labels: e.labels.clone(),
                    healthy: e.healthy,
                    replica: Some(e.replica.clone()),
                })
                .collect();
        }
        self.endpoints
            .iter()
            .map(|((service, address), e)| EndpointStatus {
                service: service.clone(),
                address: *address,
                node: e.node.clone(),
                labels: e.labels.clone(),
                healthy: e.healthy,
                replica: None,
            })
            .collect()
    }
}

/// Why control refuses to register `address` for a proxy whose session
/// comes from `remote`: a loopback address from a proxy on another host
/// (callers elsewhere would connect to their own loopback).
pub fn registration_problem(address: SocketAddr, remote: SocketAddr) -> Option<String> {
    let from = remote.ip().to_canonical();
    coremesh_api::wire::loopback_from_afar(address, remote).then(|| {
        format!(
            "registration of {address} refused: a loopback address, from a proxy that reaches control from {from}; set [control] advertise (or an [inbound] listen address other hosts reach)"
        )
    })
}

#[cfg(test)]
mod tests;
