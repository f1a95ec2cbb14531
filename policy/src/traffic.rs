//! Per-service traffic policy on a shard: a `Resilience` block compiled once
//! per snapshot ([`ServicePolicy`]), and the shard's running state for each
//! service ([`ServiceState`]: its balancer, circuit breaker, retry budget and
//! rate limiter), kept across snapshots so that latency estimates, permits
//! in flight and budgets survive policy changes.
//!
//! Where each piece acts on a request (forward/):
//!
//! ```text
//!  outbound: route ──▶ faults (abort / delay) ──▶ mirror (copy, detached)
//!            ──▶ breaker (maxRequests: 503 overloaded) ──▶ balancer pick
//!            (eligible: not ejected, not unhealthy, not tried) ──▶ try
//!            ──▶ retry? (budget, backoff) ──▶ balancer end, outcome
//!  inbound:  rateLimit of the proxy's own service (429 rate limited)
//! ```
//!
//! Limits are per proxy: each shard enforces a share, the agent re-splits
//! them from the demand the shards report (resilience/shares.rs).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coremesh_api::resource::{HashKey, LoadBalancer, RateLimitKey, Resilience};
use rustc_hash::FxHashMap;

use crate::balance::{Algorithm, Balancer};
use crate::resilience::{
    reserve_total, CircuitBreaker, ConcurrencyReport, ConcurrencySplit, Faults, HealthConfig,
    KeyedTokenBuckets, Limit, Limits, OutlierConfig, PoolReport, RateSplit, RetryBudget,
    TokenBucket,
};

/// Callers tracked per service for per-caller rate limits (the oldest is
/// forgotten beyond it).
const MAX_CALLERS: usize = 4096;

/// The retry budget without a Resilience block: Linkerd's default.
const DEFAULT_BUDGET_RATIO: f64 = 0.2;
const DEFAULT_BUDGET_MIN_PER_SECOND: f64 = 10.0;

/// A service's Resilience block, compiled.
#[derive(Debug, Clone)]
pub struct ServicePolicy {
    pub service: String,
    pub algorithm: Algorithm,
    /// Ring-hash key: a lowercase header name, or a cookie name.
    pub hash_key: Option<HashKey>,
    /// Circuit-breaker maxima (None: unlimited).
    pub max_connections: Option<u64>,
    pub max_pending: Option<u64>,
    pub max_requests: Option<u64>,
    pub budget_ratio: f64,
    pub budget_min_per_second: f64,
    /// Requests per second in thousandths, burst, per caller identity.
    pub rate: Option<(u64, u64, bool)>,
    pub faults: Faults,
    /// Mirror target and its share in basis points.
    pub mirror: Option<(String, u16)>,
    pub outlier: Option<OutlierConfig>,
    pub health: Option<(HealthConfig, Duration, Duration)>,
}

impl ServicePolicy {
    /// The policy of a service without a Resilience block.
    pub fn default_for(service: &str) -> ServicePolicy {
        ServicePolicy {
            service: service.to_string(),
            algorithm: Algorithm::P2cEwma,
            hash_key: None,
            max_connections: None,
            max_pending: None,
            max_requests: None,
            budget_ratio: DEFAULT_BUDGET_RATIO,
            budget_min_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
            rate: None,
            faults: Faults::new(0.0, 503, 0.0, Duration::ZERO),
            mirror: None,
            outlier: None,
            health: None,
        }
    }

    pub fn compile(r: &Resilience) -> ServicePolicy {
        let mut p = ServicePolicy::default_for(&r.service);
        (p.algorithm, p.hash_key) = match &r.load_balancer {
            LoadBalancer::P2cEwma => (Algorithm::P2cEwma, None),
            LoadBalancer::RoundRobin => (Algorithm::RoundRobin, None),
            LoadBalancer::LeastRequest => (Algorithm::LeastRequest, None),
            LoadBalancer::RingHash(k) => (
                Algorithm::RingHash,
                Some(match k {
                    HashKey::Header(h) => HashKey::Header(h.to_ascii_lowercase()),
                    HashKey::Cookie(c) => HashKey::Cookie(c.clone()),
                }),
            ),
        };
        if let Some(cb) = &r.circuit_breaker {
            p.max_connections = cb.max_connections.map(u64::from);
            p.max_pending = cb.max_pending.map(u64::from);
            p.max_requests = cb.max_requests.map(u64::from);
        }
        p.budget_ratio = r.retry_budget.ratio;
        p.budget_min_per_second = f64::from(r.retry_budget.min_per_second);
        p.rate = r.rate_limit.as_ref().map(|rl| {
            (
                u64::from(rl.requests_per_second) * 1000,
                u64::from(rl.burst()),
                rl.per == RateLimitKey::Caller,
            )
        });
        if let Some(f) = &r.faults {
            let (ap, status) = f
                .abort
                .as_ref()
                .map_or((0.0, 503), |a| (a.percent, a.status));
            let (dp, d) = f
                .delay
                .as_ref()
                .map_or((0.0, Duration::ZERO), |d| (d.percent, d.duration));
            p.faults = Faults::new(ap, status, dp, d);
        }
        p.mirror = r.mirror.as_ref().map(|m| {
            (
                m.service.clone(),
                crate::resilience::fault::basis_points(m.percent),
            )
        });
        p.outlier = r.outlier_detection.as_ref().map(|o| {
            OutlierConfig::new(
                o.consecutive_failures,
                o.base_ejection,
                o.max_ejected_percent.min(100) as u8,
            )
        });
        p.health = r.health_check.as_ref().map(|h| {
            (
                HealthConfig {
                    unhealthy_threshold: h.unhealthy_threshold,
                    healthy_threshold: h.healthy_threshold,
                },
                h.interval,
                h.timeout,
            )
        });
        p
    }

    /// Shard `index`'s starting shares of the breaker limits (the agent's
    /// splits start from the same even split).
    fn breaker_shares(&self, shards: usize, index: usize) -> Limits {
        let share = |limit: Option<u64>| {
            limit.map_or(u64::MAX / 4, |l| {
                ConcurrencySplit::new(l, shards).shares()[index]
            })
        };
        Limits {
            max_connections: share(self.max_connections),
            max_pending: share(self.max_pending),
            max_requests: share(self.max_requests),
        }
    }
}

/// What a service's inbound rate limit keeps on one shard.
pub enum Limiter {
    Service(TokenBucket),
    Caller(KeyedTokenBuckets),
}

/// One service's running state on one shard.
pub struct ServiceState {
    pub policy: Arc<ServicePolicy>,
    pub balancer: Balancer,
    pub breaker: Rc<CircuitBreaker>,
    pub budget: RetryBudget,
    pub limiter: Option<Limiter>,
    endpoints: Vec<SocketAddr>,
}

/// What a shard reports for one service each period (see agent/traffic.rs).
#[derive(Debug, Clone)]
pub struct ServiceDemand {
    pub service: String,
    pub breaker: [ConcurrencyReport; 3],
    pub budget: ConcurrencyReport,
    /// Rate-limit attempts since the last report.
    pub rate: u64,
}

/// A new split of one limit, from the agent.
#[derive(Debug, Clone)]
pub struct ShareUpdate {
    pub service: String,
    pub what: ShareOf,
    pub shares: Vec<u64>,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareOf {
    Breaker(Limit),
    BudgetReserve,
    Rate,
}

/// Every service's state on one shard.
pub struct ShardTraffic {
    index: usize,
    shards: usize,
    /// FxHash: looked up by name several times per request (breaker,
    /// budget, balancer pick and end); the names are the operator's.
    services: RefCell<FxHashMap<String, ServiceState>>,
}

impl ShardTraffic {
    pub fn new(index: usize, shards: usize) -> ShardTraffic {
        ShardTraffic {
            index,
            shards: shards.max(1),
            services: RefCell::new(FxHashMap::default()),
        }
    }

    /// Brings the states in line with a new table: `services` are
    /// (name, endpoints, policy), `own` the proxy's own service (whose rate
    /// limit pools its shards' tokens). States of services that went away
    /// are dropped; the rest keep what they learned.
    pub fn sync(
        &self,
        services: &[(String, Vec<SocketAddr>, Arc<ServicePolicy>)],
        own: &str,
        now: Instant,
    ) {
        let mut map = self.services.borrow_mut();
        map.retain(|name, _| services.iter().any(|(n, _, _)| n == name));
        for (name, endpoints, policy) in services {
            let st = map.entry(name.clone()).or_insert_with(|| ServiceState {
                policy: policy.clone(),
                balancer: Balancer::new(policy.algorithm),
                breaker: Rc::new(CircuitBreaker::new(
                    policy.breaker_shares(self.shards, self.index),
                )),
                budget: RetryBudget::new(
                    policy.budget_ratio,
                    reserve_share(policy.budget_min_per_second, self.shards, self.index),
                    now,
                ),
                limiter: None,
                endpoints: Vec::new(),
            });
            if st.balancer.algorithm() != policy.algorithm {
                st.balancer = Balancer::new(policy.algorithm);
                st.endpoints.clear();
            }
            if st.endpoints != *endpoints {
                st.balancer.update(endpoints, now);
                st.endpoints = endpoints.clone();
            }
            if st.policy.max_requests != policy.max_requests
                || st.policy.max_pending != policy.max_pending
                || st.policy.max_connections != policy.max_connections
            {
                let s = policy.breaker_shares(self.shards, self.index);
                st.breaker
                    .set_share(Limit::Connections, s.max_connections, 0);
                st.breaker.set_share(Limit::Pending, s.max_pending, 0);
                st.breaker.set_share(Limit::Requests, s.max_requests, 0);
            }
            if st.policy.budget_ratio != policy.budget_ratio {
                st.budget.set_ratio(policy.budget_ratio);
            }
            if st.policy.budget_min_per_second != policy.budget_min_per_second {
                st.budget.set_reserve(
                    reserve_share(policy.budget_min_per_second, self.shards, self.index),
                    0,
                );
            }
            // The limiter keeps its learned share unless the limit itself
            // changed (a new table or a reload alone does not reset it: the
            // agent would not resend a split that did not move).
            if st.limiter.is_none() || st.policy.rate != policy.rate {
                st.limiter = match (policy.rate, st.limiter.take()) {
                    (None, _) => None,
                    (Some((rate, burst, per_caller)), old) => {
                        let share = RateSplit::new(rate, self.shards).shares()[self.index];
                        let b = crate::resilience::burst_share(burst, share, rate);
                        match (per_caller, old) {
                            (false, Some(Limiter::Service(mut t))) => {
                                t.set(share, b, now);
                                Some(Limiter::Service(t))
                            }
                            (true, Some(Limiter::Caller(mut k))) => {
                                k.set(share, b);
                                Some(Limiter::Caller(k))
                            }
                            (false, _) => Some(Limiter::Service(TokenBucket::new(share, b, now))),
                            (true, _) => Some(Limiter::Caller(KeyedTokenBuckets::new(
                                share,
                                b,
                                MAX_CALLERS,
                            ))),
                        }
                    }
                };
            }
            // Only the proxy's own service's limit is charged (on its inbound
            // side), so only that one pools its shards' tokens.
            if let Some(Limiter::Service(t)) = &mut st.limiter {
                if self.shards > 1 && name.eq_ignore_ascii_case(own) {
                    t.pool();
                }
            }
            st.policy = policy.clone();
        }
    }

    /// What each pooled service bucket has to tell the agent's pool
    /// (resilience/ratelimit.rs). Shard, every 250 ms.
    pub fn pool_reports(&self, now: Instant) -> Vec<(String, PoolReport)> {
        let mut map = self.services.borrow_mut();
        map.iter_mut()
            .filter_map(|(name, s)| match &mut s.limiter {
                Some(Limiter::Service(t)) => t.report(now).map(|r| (name.clone(), r)),
                _ => None,
            })
            .collect()
    }

    /// Tokens the agent's pool granted to `service`'s bucket here; `false`
    /// when there is no such bucket any more (a new policy came first): hand
    /// them back so the pool does not count them out for ever.
    pub fn grant(&self, service: &str, tokens: u64) -> bool {
        match self.services.borrow_mut().get_mut(service) {
            Some(ServiceState {
                limiter: Some(Limiter::Service(t)),
                ..
            }) => {
                t.grant(tokens);
                true
            }
            _ => false,
        }
    }

    /// Runs `f` on `service`'s state (`None`: no such service).
    pub fn with<R>(&self, service: &str, f: impl FnOnce(&mut ServiceState) -> R) -> Option<R> {
        self.services.borrow_mut().get_mut(service).map(f)
    }

    /// The policy of `service`.
    pub fn policy(&self, service: &str) -> Option<Arc<ServicePolicy>> {
        self.services
            .borrow()
            .get(service)
            .map(|s| s.policy.clone())
    }

    /// This period's demand, for the agent's re-splitting.
    pub fn demand(&self, now: Instant) -> Vec<ServiceDemand> {
        let mut map = self.services.borrow_mut();
        map.iter_mut()
            .filter(|(_, s)| {
                s.policy.max_requests.is_some()
                    || s.policy.max_pending.is_some()
                    || s.policy.max_connections.is_some()
                    || s.policy.rate.is_some()
                    || self.shards > 1
            })
            .map(|(name, s)| ServiceDemand {
                service: name.clone(),
                breaker: Limit::ALL.map(|l| s.breaker.report(l)),
                budget: s.budget.report(now),
                rate: match &mut s.limiter {
                    Some(Limiter::Service(t)) => t.take_demand(),
                    Some(Limiter::Caller(k)) => k.take_demand(),
                    None => 0,
                },
            })
            .collect()
    }

    /// Applies this shard's entry of a new split.
    pub fn apply_share(&self, u: &ShareUpdate, now: Instant) {
        let Some(&share) = u.shares.get(self.index) else {
            return;
        };
        let mut map = self.services.borrow_mut();
        let Some(s) = map.get_mut(&u.service) else {
            return;
        };
        match u.what {
            ShareOf::Breaker(l) => s.breaker.set_share(l, share, u.seq),
            ShareOf::BudgetReserve => s.budget.set_reserve(share, u.seq),
            ShareOf::Rate => {
                if let Some((rate, burst, _)) = s.policy.rate {
                    let b = crate::resilience::burst_share(burst, share, rate);
                    match &mut s.limiter {
                        Some(Limiter::Service(t)) => t.set(share, b, now),
                        Some(Limiter::Caller(k)) => k.set(share, b),
                        None => {}
                    }
                }
            }
        }
    }
}

fn reserve_share(min_per_second: f64, shards: usize, index: usize) -> u64 {
    ConcurrencySplit::new(reserve_total(min_per_second), shards).shares()[index]
}
