//! Endpoint state and limit splits, decided once per proxy on the agent
//! thread (docs/design.md) and broadcast to every shard:
//!
//! * **Outlier ejection**: the shards' per-endpoint outcome reports (every
//!   200 ms, outcomes.rs) feed the [`OutlierDetector`] of each service with
//!   `outlierDetection`.
//! * **Active health**: shard 0 probes the endpoints of each service with a
//!   `healthCheck` (probe.rs) and the results feed its [`HealthTracker`].
//! * The union of ejected and unhealthy endpoints goes to every shard
//!   (`ShardMsg::Excluded`) whenever it changes; balancers skip them, failing
//!   open when nothing else is left.
//! * **Limit splits**: once a second the shards report the demand on each
//!   service's circuit breaker, retry budget reserve and rate limit; each
//!   limit is re-split across the shards from that (resilience/shares.rs)
//!   and new shares go out when they change (`ShardMsg::Share`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::msg::ProbeTarget;
use crate::msg::{ShardHandle, ShardMsg};
use crate::resilience::{
    pool_cap, reserve_total, ConcurrencyReport, ConcurrencySplit, HealthTracker, Limit, Outcomes,
    OutlierDetector, PoolReport, RateSplit, TokenPool,
};
use crate::shard::outcomes::Counts;
use crate::traffic::{ServiceDemand, ServicePolicy, ShareOf, ShareUpdate};

/// One service's splits.
struct Splits {
    breaker: [Option<ConcurrencySplit>; 3],
    budget: ConcurrencySplit,
    rate: Option<RateSplit>,
    /// Tokens the shards could not use (per-service rate limits, more than
    /// one shard; resilience/ratelimit.rs).
    pool: Option<TokenPool>,
    /// The latest report of each shard.
    reports: Vec<Option<ServiceDemand>>,
    policy: Arc<ServicePolicy>,
}

pub struct Traffic {
    shards: Vec<ShardHandle>,
    outlier: RefCell<OutlierDetector>,
    health: RefCell<HealthTracker>,
    /// Which services an endpoint serves (an outcome report names only the
    /// address).
    services_of: RefCell<HashMap<SocketAddr, Vec<Arc<str>>>>,
    splits: RefCell<HashMap<String, Splits>>,
    excluded: RefCell<Arc<HashSet<SocketAddr>>>,
    probes: RefCell<Arc<Vec<ProbeTarget>>>,
}

impl Traffic {
    pub fn new(shards: Vec<ShardHandle>) -> Traffic {
        Traffic {
            shards,
            outlier: RefCell::new(OutlierDetector::new()),
            health: RefCell::new(HealthTracker::new()),
            services_of: RefCell::new(HashMap::new()),
            splits: RefCell::new(HashMap::new()),
            excluded: RefCell::new(Arc::default()),
            probes: RefCell::new(Arc::default()),
        }
    }

    /// A new table (or static configuration): the services with their
    /// endpoints and policies.
    pub fn configure(&self, services: &[(String, Vec<SocketAddr>, Arc<ServicePolicy>)]) {
        let now = Instant::now();
        let n = self.shards.len();
        let mut outlier = self.outlier.borrow_mut();
        let mut health = self.health.borrow_mut();
        let mut of: HashMap<SocketAddr, Vec<Arc<str>>> = HashMap::new();
        let mut probes = Vec::new();
        for (name, eps, policy) in services {
            let name_rc: Arc<str> = Arc::from(name.as_str());
            for a in eps {
                of.entry(*a).or_default().push(name_rc.clone());
            }
            if let Some(cfg) = policy.outlier {
                outlier.configure(name, cfg, eps, now);
            }
            if let Some((cfg, interval, timeout)) = policy.health {
                health.configure(name, cfg, eps);
                probes.extend(eps.iter().map(|&addr| ProbeTarget {
                    service: name.clone(),
                    addr,
                    interval,
                    timeout,
                }));
            }
        }
        outlier.retain_services(|s| {
            services
                .iter()
                .any(|(n, _, p)| n == s && p.outlier.is_some())
        });
        health.retain_services(|s| {
            services
                .iter()
                .any(|(n, _, p)| n == s && p.health.is_some())
        });
        *self.services_of.borrow_mut() = of;
        drop((outlier, health));
        // Probes run on shard 0, once per proxy.
        if **self.probes.borrow() != probes {
            let plan = Arc::new(probes);
            *self.probes.borrow_mut() = plan.clone();
            if let Some(h) = self.shards.first() {
                let _ = h.tx.try_send(ShardMsg::Probes(plan));
            }
        }
        // Splits: keep the learnt ones, follow limit changes.
        let mut splits = self.splits.borrow_mut();
        let mut sends = Vec::new();
        splits.retain(|name, _| services.iter().any(|(n, _, _)| n == name));
        for (name, _, policy) in services {
            let sp = splits.entry(name.clone()).or_insert_with(|| Splits {
                breaker: [
                    policy.max_connections.map(|l| ConcurrencySplit::new(l, n)),
                    policy.max_pending.map(|l| ConcurrencySplit::new(l, n)),
                    policy.max_requests.map(|l| ConcurrencySplit::new(l, n)),
                ],
                budget: ConcurrencySplit::new(reserve_total(policy.budget_min_per_second), n),
                rate: policy.rate.map(|(r, _, _)| RateSplit::new(r, n)),
                pool: new_pool(policy, n),
                reports: vec![None; n],
                policy: policy.clone(),
            });
            if !Arc::ptr_eq(&sp.policy, policy) {
                let limits = [
                    policy.max_connections,
                    policy.max_pending,
                    policy.max_requests,
                ];
                // A changed limit's new split goes out at once (the shards
                // themselves only reset to an even split).
                for (i, (slot, limit)) in sp.breaker.iter_mut().zip(limits).enumerate() {
                    match (slot.as_mut(), limit) {
                        (Some(s), Some(l)) => {
                            if s.set_limit(l) {
                                sends.push((
                                    name.clone(),
                                    ShareOf::Breaker(Limit::ALL[i]),
                                    s.shares().to_vec(),
                                    s.seq(),
                                ));
                            }
                        }
                        (_, l) => *slot = l.map(|l| ConcurrencySplit::new(l, n)),
                    }
                }
                if sp
                    .budget
                    .set_limit(reserve_total(policy.budget_min_per_second))
                {
                    sends.push((
                        name.clone(),
                        ShareOf::BudgetReserve,
                        sp.budget.shares().to_vec(),
                        sp.budget.seq(),
                    ));
                }
                match (sp.rate.as_mut(), policy.rate) {
                    (Some(s), Some((r, _, _))) => {
                        if s.set_total(r) {
                            sends.push((name.clone(), ShareOf::Rate, s.shares().to_vec(), 0));
                        }
                    }
                    (_, r) => sp.rate = r.map(|(r, _, _)| RateSplit::new(r, n)),
                }
                match (sp.pool.as_mut(), new_pool(policy, n)) {
                    (Some(p), Some(_)) => {
                        if let Some((r, b, _)) = policy.rate {
                            p.set_cap(pool_cap(r, b));
                        }
                    }
                    (_, fresh) => sp.pool = fresh,
                }
                sp.policy = policy.clone();
            }
        }
        drop(splits);
        for (name, what, shares, seq) in sends {
            self.send(&name, what, &shares, seq);
        }
        self.publish_exclusions(true);
    }

    /// A shard's outcome report.
    pub fn outcomes(&self, counts: Vec<(SocketAddr, Counts)>) {
        let now = Instant::now();
        let of = self.services_of.borrow();
        let mut outlier = self.outlier.borrow_mut();
        for (addr, c) in counts {
            let Some(services) = of.get(&addr) else {
                continue;
            };
            let o = Outcomes {
                successes: u64::from(c.ok),
                failures: u64::from(c.failed),
                trailing_failures: u64::from(if c.ok > 0 {
                    c.in_a_row.min(c.failed)
                } else {
                    c.failed
                }),
            };
            for s in services {
                outlier.record(s, addr, o, now);
            }
        }
        drop((outlier, of));
        self.publish_exclusions(false);
    }

    /// One active health check result.
    pub fn probe(&self, service: &str, addr: SocketAddr, ok: bool) {
        if self.health.borrow_mut().record(service, addr, ok) {
            self.publish_exclusions(false);
        }
    }

    /// Ejections that ran out; call every couple of hundred milliseconds.
    pub fn tick(&self) {
        self.outlier.borrow_mut().tick(Instant::now());
        self.publish_exclusions(false);
    }

    /// Sends every shard the union of ejected and unhealthy endpoints when
    /// it changed (or `force`).
    fn publish_exclusions(&self, force: bool) {
        let mut outlier = self.outlier.borrow_mut();
        let mut health = self.health.borrow_mut();
        let changed = !outlier.take_changes().is_empty() | !health.take_changes().is_empty();
        if !changed && !force {
            return;
        }
        let mut set = HashSet::new();
        let of = self.services_of.borrow();
        for services in of.values() {
            for s in services {
                if let Some(e) = outlier.ejected(s) {
                    set.extend(e.as_slice().iter().copied());
                }
                if let Some(u) = health.unhealthy(s) {
                    set.extend(u.as_slice().iter().copied());
                }
            }
        }
        if !force && set == **self.excluded.borrow() {
            return;
        }
        if set != **self.excluded.borrow() {
            tracing::info!(
                endpoints = ?set,
                "endpoints out of rotation (ejected or failing health checks)"
            );
        }
        let set = Arc::new(set);
        *self.excluded.borrow_mut() = set.clone();
        for h in &self.shards {
            let _ = h.tx.try_send(ShardMsg::Excluded(set.clone()));
        }
    }

    /// A shard's demand report for the last period.
    pub fn demand(&self, shard: usize, reports: Vec<ServiceDemand>) {
        let mut splits = self.splits.borrow_mut();
        for r in reports {
            if let Some(sp) = splits.get_mut(&r.service) {
                if let Some(slot) = sp.reports.get_mut(shard) {
                    *slot = Some(r);
                }
            }
        }
    }

    /// A shard's rate-limit token report: the pool takes what it threw away
    /// and grants it what it lacked.
    pub fn pool(&self, shard: usize, reports: Vec<(String, PoolReport)>) {
        let mut splits = self.splits.borrow_mut();
        for (service, r) in reports {
            let Some(pool) = splits.get_mut(&service).and_then(|sp| sp.pool.as_mut()) else {
                continue;
            };
            let tokens = pool.report(shard, r);
            if tokens > 0 {
                if let Some(h) = self.shards.get(shard) {
                    let _ = h.tx.try_send(ShardMsg::Grant { service, tokens });
                }
            }
        }
    }

    /// Re-splits every limit from the latest reports; sends what changed.
    pub fn resplit(&self) {
        let mut splits = self.splits.borrow_mut();
        for (name, sp) in splits.iter_mut() {
            if sp.reports.iter().any(Option::is_none) {
                continue;
            }
            let reports: Vec<ServiceDemand> =
                sp.reports.iter_mut().filter_map(Option::take).collect();
            for (i, slot) in sp.breaker.iter_mut().enumerate() {
                if let Some(split) = slot {
                    let r: Vec<ConcurrencyReport> = reports.iter().map(|d| d.breaker[i]).collect();
                    if split.update(&r) {
                        self.send(
                            name,
                            ShareOf::Breaker(Limit::ALL[i]),
                            split.shares(),
                            split.seq(),
                        );
                    }
                }
            }
            let r: Vec<ConcurrencyReport> = reports.iter().map(|d| d.budget).collect();
            if sp.budget.update(&r) {
                self.send(
                    name,
                    ShareOf::BudgetReserve,
                    sp.budget.shares(),
                    sp.budget.seq(),
                );
            }
            if let Some(rate) = sp.rate.as_mut() {
                let d: Vec<u64> = reports.iter().map(|d| d.rate).collect();
                if rate.update(&d) {
                    self.send(name, ShareOf::Rate, rate.shares(), 0);
                }
            }
        }
    }

    fn send(&self, service: &str, what: ShareOf, shares: &[u64], seq: u64) {
        let u = Arc::new(ShareUpdate {
            service: service.to_string(),
            what,
            shares: shares.to_vec(),
            seq,
        });
        for h in &self.shards {
            let _ = h.tx.try_send(ShardMsg::Share(u.clone()));
        }
    }
}

/// A token pool for a per-service rate limit on more than one shard.
fn new_pool(policy: &ServicePolicy, shards: usize) -> Option<TokenPool> {
    match policy.rate {
        Some((rate, burst, false)) if shards > 1 => {
            Some(TokenPool::new(pool_cap(rate, burst), shards))
        }
        _ => None,
    }
}
