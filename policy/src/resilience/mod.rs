//! Resilience: the per-service protections of a `Resilience` block, sans-I/O.
//!
//! Every type here takes `now` and random numbers from its caller and never
//! touches a socket or a clock, so tests drive it deterministically. Two kinds
//! of state, on two kinds of thread (docs/design.md "One shard per core"):
//!
//! **Counted and limited state, per shard** (plain fields or `Cell`s, no
//! atomics; on the request path, no allocation):
//! * [`RetryBudget`] (`retryBudget`): may this request retry?
//! * [`CircuitBreaker`] (`circuitBreaker`): may this request take a
//!   connection, wait for one, go in flight?
//! * [`TokenBucket`] and [`KeyedTokenBuckets`] (`rateLimit`, per service or
//!   route, and per caller).
//! * [`backoff::delay`] and [`Faults`] are stateless.
//!
//! The numbers in a Resilience block are per proxy. Each shard enforces a
//! share of each; the agent re-splits them about once a second from the
//! demand each shard reports ([`shares`]), so the shards together behave as
//! one proxy. How close that keeps the proxy to the configured totals is
//! stated in [`shares`].
//!
//! **Endpoint state, once per proxy, on the agent thread**, broadcast to the
//! shards as [`EndpointSet`]s when it changes:
//! * [`OutlierDetector`] (`outlierDetection`): fed per-endpoint outcome counts
//!   that shards report (`crate::shard::outcomes`).
//! * [`HealthTracker`] (`healthCheck`): fed the agent's own probe results.
//!
//! **Endpoint state of one shard**, with no period and no control:
//! * [`LocalDown`]: an endpoint whose connection was refused, reset or
//!   timed out is kept out of this shard's picks at once, for a backoff.
//!
//! A shard combines them in the balancer's `eligible` filter:
//! `|a| !ejected.contains(a) && !unhealthy.contains(a) && !down(a) && !tried(a)`.
//!
//! ```text
//!  shard (per request)                              agent (per period, ~1 s)
//!  ─────────────────────                            ────────────────────────
//!  limiter.try_take(now)      ─ demand ───────────▶ RateSplit::update
//!  breaker.permit(Requests)   ─ demand, in use ───▶ ConcurrencySplit::update
//!  budget.deposit / try_withdraw ─ demand, spent ─▶ ConcurrencySplit::update (reserve)
//!        ◀──────────────────────────── new shares (only when they change) ─┘
//!  outcomes.record(ok)        ─ Outcomes ─────────▶ OutlierDetector::record
//!                                                   HealthTracker::record (probes)
//!  eligible(addr)             ◀─ EndpointSet ────── take_changes()
//! ```

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod endpoint_health;
pub mod fault;
pub mod local_down;
pub mod outlier;
pub mod ratelimit;
pub mod shares;

use std::net::SocketAddr;
use std::sync::Arc;

pub use breaker::{CircuitBreaker, Limit, Limits, Permit};
pub use budget::{reserve_total, RetryBudget};
pub use endpoint_health::{HealthConfig, HealthTracker};
pub use fault::Faults;
pub use local_down::LocalDown;
pub use outlier::{Outcomes, OutlierConfig, OutlierDetector};
pub use ratelimit::{pool_cap, KeyedTokenBuckets, PoolReport, TokenBucket, TokenPool};
pub use shares::{burst_share, ConcurrencyReport, ConcurrencySplit, RateSplit};

/// An immutable, sorted set of endpoint addresses: what the agent broadcasts
/// to the shards (the ejected or the unhealthy endpoints of a service).
/// Cloning shares it (one `Arc`), so one set goes to every shard.
///
/// Built on the agent thread when a set changes; `contains` is called by the
/// shard in the balancer's `eligible` filter, per candidate endpoint: a linear
/// scan for the few entries these sets usually have, a binary search beyond.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet(Arc<[SocketAddr]>);

impl EndpointSet {
    /// A set of `addrs` (sorted and deduplicated here).
    pub fn new(mut addrs: Vec<SocketAddr>) -> Self {
        addrs.sort_unstable();
        addrs.dedup();
        EndpointSet(addrs.into())
    }

    /// Whether `addr` is in the set. Shard, per candidate in `eligible`.
    #[cfg(test)]
    pub fn contains(&self, addr: SocketAddr) -> bool {
        if self.0.len() <= 8 {
            self.0.contains(&addr)
        } else {
            self.0.binary_search(&addr).is_ok()
        }
    }

    /// The members, sorted.
    pub fn as_slice(&self) -> &[SocketAddr] {
        &self.0
    }

    /// The number of members.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty (the common case: nothing ejected).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Both sets in one, for an agent that broadcasts a single exclusion set
    /// per service (ejected ∪ unhealthy).
    #[cfg(test)]
    pub fn union(&self, other: &EndpointSet) -> EndpointSet {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        EndpointSet::new(self.0.iter().chain(other.0.iter()).copied().collect())
    }
}

/// A deterministic random source for tests (splitmix64).
#[cfg(test)]
pub(crate) fn test_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
