//! Outlier detection (`outlierDetection: { consecutiveFailures, baseEjection,
//! maxEjectedPercent }`): endpoints that keep failing are taken out of
//! balancing for a while, longer each time.
//!
//! Decided once per proxy, on the agent thread, and broadcast to every shard
//! (docs/design.md, "One shard per core": decisions global to the proxy are
//! made once, on the agent thread, and broadcast):
//!
//! ```text
//! shard: crate::shard::outcomes (per endpoint, per response) ──(each period, or at once
//!        when the trailing failures reach consecutiveFailures)──▶ agent
//! agent: OutlierDetector::record(service, addr, outcomes, now)
//!        OutlierDetector::tick(now)    (each period, and at next_deadline)
//!        take_changes() ──▶ (service, EndpointSet of ejected) to every shard
//! ```
//!
//! * **Consecutive failures across shards.** Each shard reports, per
//!   endpoint, its successes, failures, and the failures since its last
//!   success ("trailing"). The detector keeps one streak per endpoint: a
//!   report with any success sets it to that report's trailing failures, a
//!   report of failures only adds them. Reports are processed in arrival
//!   order, so interleavings finer than a report are approximated; a shard
//!   that sends its report as soon as its own trailing count reaches the
//!   threshold makes ejection as quick as the message.
//! * **Ejection time** is `baseEjection × n`, n the number of times the
//!   endpoint was ejected (Envoy's rule), capped at `max_ejection` (300 s by
//!   default, Envoy's `max_ejection_time`). n drops by one for every
//!   `baseEjection` the endpoint then spends in service without being
//!   ejected, so an endpoint that recovered for good starts over at the base.
//! * **maxEjectedPercent.** At most ⌊endpoints × maxEjectedPercent / 100⌋ of
//!   a service's endpoints are ejected at once, and never all of them: with
//!   maxEjectedPercent below 100 / endpoints nothing is ejected (use 50 for
//!   services of two or three endpoints). An endpoint over the threshold
//!   while the quota is full waits, and is ejected at the first `tick` that
//!   has room, if it has not succeeded since. When the endpoint set shrinks
//!   below what the ejected count allows, the ejections closest to their end
//!   are lifted early, so the bound holds at every instant.
//! * An ejected endpoint comes back when its time is up (`tick`), with its
//!   streak cleared.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::EndpointSet;

/// The longest ejection by default (Envoy's `max_ejection_time`).
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);

/// A service's outlier-detection policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row (5xx, gateway errors, connect failures) that eject.
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// The most of a service's endpoints ejected at once, in percent.
    pub max_ejected_percent: u8,
    /// The longest ejection.
    pub max_ejection: Duration,
}

impl OutlierConfig {
    /// A policy with the default cap of [`DEFAULT_MAX_EJECTION`] (or
    /// `base_ejection`, if longer).
    pub fn new(
        consecutive_failures: u32,
        base_ejection: Duration,
        max_ejected_percent: u8,
    ) -> Self {
        OutlierConfig {
            consecutive_failures: consecutive_failures.max(1),
            base_ejection,
            max_ejected_percent: max_ejected_percent.min(100),
            max_ejection: DEFAULT_MAX_EJECTION.max(base_ejection),
        }
    }

    /// How many of `n` endpoints may be ejected at once.
    /// Rounded down, but one at least while the percent is above zero (as
    /// Envoy does, so that a small service can eject its one bad endpoint),
    /// and never the last endpoint.
    fn quota(&self, n: usize) -> usize {
        let q = n * usize::from(self.max_ejected_percent) / 100;
        let q = if self.max_ejected_percent > 0 {
            q.max(1)
        } else {
            q
        };
        q.min(n.saturating_sub(1))
    }
}

/// One endpoint's outcomes on one shard since its last report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub successes: u64,
    pub failures: u64,
    /// Failures after the last success in this report (all of them if there
    /// was no success).
    pub trailing_failures: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Endpoint {
    streak: u64,
    ejected_until: Option<Instant>,
    times: u32,
    back_since: Option<Instant>,
}

#[derive(Debug)]
struct Service {
    config: OutlierConfig,
    endpoints: HashMap<SocketAddr, Endpoint>,
    ejected: EndpointSet,
    changed: bool,
}

impl Service {
    fn ejected_count(&self) -> usize {
        self.endpoints
            .values()
            .filter(|e| e.ejected_until.is_some())
            .count()
    }

    fn try_eject(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let quota = self.config.quota(self.endpoints.len());
        if self.ejected_count() >= quota {
            return false;
        }
        let c = self.config;
        let Some(e) = self.endpoints.get_mut(&addr) else {
            return false;
        };
        if let Some(back) = e.back_since {
            let base = c.base_ejection.as_nanos().max(1);
            let served = now.saturating_duration_since(back).as_nanos() / base;
            e.times = e
                .times
                .saturating_sub(served.min(u128::from(u32::MAX)) as u32);
        }
        e.times = e.times.saturating_add(1);
        let length = c.base_ejection.saturating_mul(e.times).min(c.max_ejection);
        e.ejected_until = Some(now + length);
        self.changed = true;
        true
    }

    fn return_endpoint(e: &mut Endpoint, now: Instant) {
        e.ejected_until = None;
        e.streak = 0;
        e.back_since = Some(now);
    }

    /// Lifts ejections closest to their end until within the quota.
    fn enforce_quota(&mut self, now: Instant) {
        let quota = self.config.quota(self.endpoints.len());
        while self.ejected_count() > quota {
            let Some(e) = self
                .endpoints
                .values_mut()
                .filter(|e| e.ejected_until.is_some())
                .min_by_key(|e| e.ejected_until)
            else {
                break;
            };
            Self::return_endpoint(e, now);
            self.changed = true;
        }
    }

    fn refresh_set(&mut self) {
        let set = EndpointSet::new(
            self.endpoints
                .iter()
                .filter(|(_, e)| e.ejected_until.is_some())
                .map(|(a, _)| *a)
                .collect(),
        );
        if set != self.ejected {
            self.ejected = set;
            self.changed = true;
        }
    }
}

/// The proxy's outlier detector: per service, per endpoint failure streaks
/// and ejections. Agent thread, one per proxy.
#[derive(Debug, Default)]
pub struct OutlierDetector {
    services: HashMap<Arc<str>, Service>,
}

impl OutlierDetector {
    /// An empty detector. Agent, at start.
    pub fn new() -> Self {
        OutlierDetector::default()
    }

    /// Sets a service's policy and endpoints. Agent, for each service with
    /// `outlierDetection` in every snapshot it applies. Endpoints that stay
    /// keep their streak and ejection; removed ones are forgotten; new ones
    /// start in service.
    pub fn configure(
        &mut self,
        service: &str,
        config: OutlierConfig,
        endpoints: &[SocketAddr],
        now: Instant,
    ) {
        let s = self
            .services
            .entry(Arc::from(service))
            .or_insert_with(|| Service {
                config,
                endpoints: HashMap::new(),
                ejected: EndpointSet::default(),
                changed: false,
            });
        s.config = config;
        let keep: HashSet<SocketAddr> = endpoints.iter().copied().collect();
        s.endpoints.retain(|a, _| keep.contains(a));
        for a in endpoints {
            s.endpoints.entry(*a).or_default();
        }
        s.enforce_quota(now);
        s.refresh_set();
    }

    /// Forgets the services `keep` rejects (no longer in the snapshot, or no
    /// longer with outlier detection). Agent, after applying a snapshot.
    pub fn retain_services(&mut self, keep: impl Fn(&str) -> bool) {
        self.services.retain(|name, _| keep(name));
    }

    /// One shard's outcomes for one endpoint. Agent, per report received;
    /// reports about unknown services or endpoints are ignored. May eject the
    /// endpoint (see [`Self::take_changes`]).
    pub fn record(&mut self, service: &str, addr: SocketAddr, outcomes: Outcomes, now: Instant) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        let threshold = u64::from(s.config.consecutive_failures.max(1));
        let Some(e) = s.endpoints.get_mut(&addr) else {
            return;
        };
        if e.ejected_until.is_some() {
            // Late answers from before the ejection; the streak restarts on return.
            return;
        }
        if outcomes.successes > 0 {
            e.streak = outcomes.trailing_failures;
        } else {
            e.streak = e.streak.saturating_add(outcomes.failures);
        }
        if e.streak >= threshold && s.try_eject(addr, now) {
            s.refresh_set();
        }
    }

    /// Returns endpoints whose ejection is over, and ejects waiting ones if
    /// the quota now has room. Agent, once per period and at
    /// [`Self::next_deadline`].
    pub fn tick(&mut self, now: Instant) {
        for s in self.services.values_mut() {
            let mut any = false;
            for e in s.endpoints.values_mut() {
                if e.ejected_until.is_some_and(|t| t <= now) {
                    Service::return_endpoint(e, now);
                    any = true;
                }
            }
            let threshold = u64::from(s.config.consecutive_failures.max(1));
            let mut waiting: Vec<(u64, SocketAddr)> = s
                .endpoints
                .iter()
                .filter(|(_, e)| e.ejected_until.is_none() && e.streak >= threshold)
                .map(|(a, e)| (e.streak, *a))
                .collect();
            waiting.sort_unstable_by(|x, y| y.cmp(x));
            for (_, a) in waiting {
                any |= s.try_eject(a, now);
            }
            if any {
                s.refresh_set();
            }
        }
    }

    /// When the next ejection ends (the agent's next timer), if any.
    #[cfg(test)]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services
            .values()
            .flat_map(|s| s.endpoints.values().filter_map(|e| e.ejected_until))
            .min()
    }

    /// A service's ejected endpoints now.
    pub fn ejected(&self, service: &str) -> Option<&EndpointSet> {
        self.services.get(service).map(|s| &s.ejected)
    }

    /// How many times `addr` has been ejected, as the backoff counts it (after
    /// the reduction for time in service, as of its last ejection).
    #[cfg(test)]
    pub fn times_ejected(&self, service: &str, addr: SocketAddr) -> u32 {
        self.services
            .get(service)
            .and_then(|s| s.endpoints.get(&addr))
            .map_or(0, |e| e.times)
    }

    /// The services whose ejected set changed since the last call, with the
    /// new set. Agent, after `record`s and `tick`s: broadcast these, and only
    /// these, to every shard.
    pub fn take_changes(&mut self) -> Vec<(Arc<str>, EndpointSet)> {
        let mut out: Vec<(Arc<str>, EndpointSet)> = self
            .services
            .iter_mut()
            .filter_map(|(n, s)| {
                std::mem::take(&mut s.changed).then(|| (n.clone(), s.ejected.clone()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests;
