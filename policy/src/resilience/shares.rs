//! Splitting per-proxy limits across shards.
//!
//! The numbers in a Resilience block are per proxy, but each shard enforces
//! its limits alone, with no shared counter (docs/design.md "One shard per core").
//! So each limit is split into per-shard shares, and the agent re-splits it
//! once per period (about a second) in proportion to the demand each shard
//! reported for the last period:
//!
//! * demand is what the shard was *asked*, not what it admitted: requests
//!   that reached the breaker (admitted or not), token-bucket attempts
//!   (taken or refused), requests and retries that consulted the budget.
//!   Demand does not depend on the shares, so there is no feedback loop to
//!   oscillate; smoothing (an EWMA over periods, α = ½) and a dead band (a
//!   split changes only when some share would move by more than 0.5% of the
//!   total, and by more than 1) only filter noise and save broadcasts;
//! * every shard keeps a floor, so a shard that gets traffic again is never
//!   at zero: [`rate_floor`] = total / (10 N) for rates, [`concurrency_floor`]
//!   = max(1, limit / (10 N)) for concurrency limits;
//! * the rest goes in proportion to demand, rounded by largest remainder so
//!   the shares add up exactly ([`rebalance`]).
//!
//! # How close to the configured totals the proxy stays
//!
//! (N = number of shards, period = how often the agent rebalances, 1 s
//! recommended; the README quotes this.)
//!
//! * **Concurrency** (`circuitBreaker` maxConnections, maxPending,
//!   maxRequests): the shares add up to max(limit, N), and
//!   [`ConcurrencySplit`] raises a shard's share only out of capacity the
//!   other shards have been seen to release (a shard whose share was cut may
//!   still hold more until its requests finish). So at every instant, across
//!   all shards, at most max(limit, N) ≤ limit + N connections / pending
//!   requests / requests in flight exist, whatever the traffic does. The
//!   price is on the other side: a shard refuses once its own share is in
//!   use, even while another shard's share is idle, so the proxy can refuse
//!   before the proxy-wide count reaches the limit: the floors of shards
//!   that do not use them (≤ (N−1)/(10 N) of the limit, 5% for 2 shards)
//!   are unavailable to the others, one shard's momentary peaks are not
//!   absorbed by the others' headroom, and after traffic moves between
//!   shards the shard that gained it has its old share for a period or two.
//!   A circuit breaker is an overload guard: configure it with headroom.
//! * **Retry budget** (`retryBudget` minPerSecond): the reserve
//!   (minPerSecond × 10 s) is split the same safe way (reserve a shard has
//!   spent counts as in use until its retries leave the 10 s window), so
//!   retries ≤ ratio × requests + minPerSecond × 10 s in any 10 s window,
//!   proxy-wide, exactly as for a single budget; over a run of T s, retries ≤
//!   ratio × requests + minPerSecond × 10 s × ⌈T / 10 s⌉.
//! * **Rates** (`rateLimit` requestsPerSecond and burst): the rate shares add
//!   up exactly to the configured rate (in thousandths of a request per
//!   second) and the bursts to at most burst + N ([`burst_share`]), so over
//!   any interval of T seconds the proxy admits at most rate × T + burst + N
//!   (plus, while a new split is in flight to the shards, the change times
//!   the message delay: microseconds). When the split of traffic between
//!   shards is steady, it admits at least
//!   min(offered, rate × (1 − (N−1)/(10 N)) − N × 0.5% of rate): a shard that
//!   gets less than its share leaves at most its floor unused, at most N−1
//!   shards can, and the dead band costs up to 0.5% per shard. For 2 shards:
//!   at least 94% of the rate (measured in the tests: 95-100%), and all of it
//!   when the traffic is even, which the acceptor aims for. When traffic
//!   moves between shards, the shard that gained it admits only its old share
//!   for the rest of that period, then catches up (EWMA α = ½): about two
//!   periods' worth of the shortfall is lost in all.
//!   Per-service rate limits recover most of those losses through their
//!   token pool (ratelimit.rs: what a full bucket throws away is granted, by
//!   message every 250 ms, to a shard that refuses), which adds at most
//!   `pool_cap` to the upper bound; per-caller limits have the bounds above.
//!
//! All of this runs on the agent thread (allocation is fine there); the shards
//! only apply the shares they are sent.

use std::collections::VecDeque;

/// The split of `total` over `demand.len()` shards: each gets `floor`, the
/// rest goes in proportion to `demand` (evenly when all demand is zero),
/// rounded by largest remainder (ties to the lower index). The shares add up
/// to exactly max(total, floor × N). Pure; any thread.
pub fn rebalance(total: u64, demand: &[u64], floor: u64) -> Vec<u64> {
    let n = demand.len();
    if n == 0 {
        return Vec::new();
    }
    let rest = u128::from(total.saturating_sub(floor.saturating_mul(n as u64)));
    let weights: Vec<u128> = if demand.iter().all(|&d| d == 0) {
        vec![1; n]
    } else {
        demand.iter().map(|&d| u128::from(d)).collect()
    };
    let sum: u128 = weights.iter().sum();
    let mut shares: Vec<u64> = weights
        .iter()
        .map(|w| floor + (rest * w / sum) as u64)
        .collect();
    let given: u128 = weights.iter().map(|w| rest * w / sum).sum();
    let mut order: Vec<usize> = (0..n).collect();
    // Largest remainder first; stable sort keeps ties in index order.
    order.sort_by_key(|&i| std::cmp::Reverse(rest * weights[i] % sum));
    for &i in order.iter().take((rest - given) as usize) {
        shares[i] += 1;
    }
    shares
}

/// The floor of a rate share: a tenth of an even share.
pub fn rate_floor(total: u64, shards: usize) -> u64 {
    total / (10 * shards.max(1) as u64)
}

/// The floor of a concurrency share: a tenth of an even share, and at least 1
/// so every shard can make progress (the "limit plus one per shard").
pub fn concurrency_floor(limit: u64, shards: usize) -> u64 {
    (limit / (10 * shards.max(1) as u64)).max(1)
}

/// The burst (token-bucket capacity) that goes with a rate share: the same
/// fraction of the configured burst, rounded up, and at least one token (a
/// bucket that cannot hold one token never admits). The bursts of all shards
/// add up to at most `burst + N`. Shard or agent, when shares change.
pub fn burst_share(burst: u64, rate_share: u64, rate_total: u64) -> u64 {
    if rate_total == 0 {
        return 1;
    }
    let b = (u128::from(burst) * u128::from(rate_share)).div_ceil(u128::from(rate_total));
    (b as u64).max(1)
}

/// Smoothed demand and the proportional target it gives.
#[derive(Debug, Clone)]
struct Smoothed {
    total: u64,
    floor: u64,
    demand: Vec<f64>,
    target: Vec<u64>,
}

impl Smoothed {
    fn new(total: u64, floor: u64, shards: usize) -> Self {
        let shards = shards.max(1);
        Smoothed {
            total,
            floor,
            demand: vec![0.0; shards],
            target: rebalance(total, &vec![0; shards], floor),
        }
    }

    /// Folds in one period's demand; returns whether the target moved past
    /// the dead band.
    fn observe(&mut self, demand: impl Iterator<Item = u64>) -> bool {
        for (s, d) in self.demand.iter_mut().zip(demand) {
            *s = 0.5 * *s + 0.5 * d as f64;
        }
        self.retarget(false)
    }

    fn retarget(&mut self, force: bool) -> bool {
        // Thousandths keep the proportions of small demands.
        let weights: Vec<u64> = self
            .demand
            .iter()
            .map(|d| (d * 1000.0).round() as u64)
            .collect();
        let next = rebalance(self.total, &weights, self.floor);
        let band = (self.total / 200).max(1);
        let moved = self
            .target
            .iter()
            .zip(&next)
            .any(|(a, b)| a.abs_diff(*b) > band);
        if (moved || force) && next != self.target {
            self.target = next;
            return true;
        }
        false
    }
}

/// The split of one rate (a `rateLimit` rate, a budget's `minPerSecond`, in
/// thousandths per second) over the shards.
///
/// Agent thread, one per limited service (or route) and rate. Each period:
/// collect each shard's demand for it, call [`Self::update`], and when it
/// returns `true` send every shard its entry of [`Self::shares`].
#[derive(Debug, Clone)]
pub struct RateSplit {
    s: Smoothed,
}

impl RateSplit {
    /// An even split of `total` over `shards`, with floor [`rate_floor`]. The
    /// shards start with [`Self::shares`].
    pub fn new(total: u64, shards: usize) -> Self {
        RateSplit {
            s: Smoothed::new(total, rate_floor(total, shards), shards),
        }
    }

    /// The current shares, one per shard; they add up to the total.
    pub fn shares(&self) -> &[u64] {
        &self.s.target
    }

    /// One period's demand per shard (index = shard). Returns whether the
    /// shares changed (then broadcast them).
    pub fn update(&mut self, demand: &[u64]) -> bool {
        self.s.observe(demand.iter().copied())
    }

    /// A new configured total (policy change); keeps the learnt demand.
    /// Returns whether the shares changed.
    pub fn set_total(&mut self, total: u64) -> bool {
        self.s.total = total;
        self.s.floor = rate_floor(total, self.s.demand.len());
        self.s.retarget(true)
    }
}

/// What a shard reports about one concurrency limit each period (see
/// [`super::CircuitBreaker::report`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConcurrencyReport {
    /// The sequence number of the share the shard has applied.
    pub seq: u64,
    /// How many are in use on the shard now.
    pub in_use: u64,
    /// Attempts to acquire (granted or refused) since the last report.
    pub demand: u64,
}

/// Unacknowledged shares kept per shard before they are merged (a shard that
/// stops reporting must not make the agent's memory grow).
const HISTORY: usize = 16;

/// The split of one concurrency limit (a `circuitBreaker` max) over the
/// shards, changed only in ways that keep the proxy-wide count at or below
/// max(limit, N) at every instant.
///
/// Why that needs care: a shard whose share is cut keeps the requests it
/// already has in flight, and shares reach the shards at different times. So
/// the agent bounds what each shard may hold by the largest of: the share it
/// last reported applying, what it reported in use, and every share sent to
/// it since. A shard's share goes up only by as much as the sum of those
/// bounds stays under the cap; cuts go out at once.
///
/// Agent thread, one per service and limit. The shards start with
/// [`Self::shares`] at sequence 0. Each period: call [`Self::update`] with
/// every shard's report; when it returns `true`, send every shard its entry of
/// [`Self::shares`] with [`Self::seq`].
#[derive(Debug, Clone)]
pub struct ConcurrencySplit {
    s: Smoothed,
    cap: u64,
    seq: u64,
    sent: Vec<u64>,
    /// Per shard: (seq, share) sent but not yet reported applied.
    unacked: Vec<VecDeque<(u64, u64)>>,
    applied: Vec<u64>,
    in_use: Vec<u64>,
}

impl ConcurrencySplit {
    /// An even split of `limit` over `shards` with floor
    /// [`concurrency_floor`]; the shards start with [`Self::shares`].
    pub fn new(limit: u64, shards: usize) -> Self {
        let shards = shards.max(1);
        let s = Smoothed::new(limit, concurrency_floor(limit, shards), shards);
        let sent = s.target.clone();
        ConcurrencySplit {
            cap: limit.max(shards as u64),
            s,
            seq: 0,
            applied: sent.clone(),
            sent,
            unacked: vec![VecDeque::new(); shards],
            in_use: vec![0; shards],
        }
    }

    /// The shares as last sent, one per shard; they add up to at most
    /// max(limit, N).
    pub fn shares(&self) -> &[u64] {
        &self.sent
    }

    /// The sequence number of [`Self::shares`]; shards echo the one they
    /// applied in their reports.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The most the proxy can have in use: max(limit, N).
    #[cfg(test)]
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// One period's reports, one per shard (index = shard). Returns whether
    /// the shares changed (then broadcast them with the new `seq`).
    pub fn update(&mut self, reports: &[ConcurrencyReport]) -> bool {
        for (i, r) in reports.iter().enumerate().take(self.sent.len()) {
            let q = &mut self.unacked[i];
            while q.front().is_some_and(|&(seq, _)| seq <= r.seq) {
                self.applied[i] = q.pop_front().map_or(self.applied[i], |e| e.1);
            }
            self.in_use[i] = r.in_use;
        }
        self.s.observe(reports.iter().map(|r| r.demand));
        self.plan()
    }

    /// A new configured limit (policy change). Returns whether the shares
    /// changed; as with `update`, raises wait for room.
    pub fn set_limit(&mut self, limit: u64) -> bool {
        let n = self.sent.len();
        self.s.total = limit;
        self.s.floor = concurrency_floor(limit, n);
        self.cap = limit.max(n as u64);
        self.s.retarget(true);
        self.plan()
    }

    /// The most shard `i` may hold, as far as the agent knows.
    fn bound(&self, i: usize) -> u64 {
        let pending = self.unacked[i].iter().map(|e| e.1).max().unwrap_or(0);
        self.applied[i]
            .max(self.in_use[i])
            .max(pending)
            .max(self.sent[i])
    }

    /// Moves `sent` toward the target: cuts at once, raises within the room
    /// the bounds leave under the cap.
    fn plan(&mut self) -> bool {
        let n = self.sent.len();
        let mut next = self.sent.clone();
        for (s, t) in next.iter_mut().zip(&self.s.target) {
            *s = (*s).min(*t);
        }
        let mut bounds: Vec<u64> = (0..n).map(|i| self.bound(i)).collect();
        let mut room = self.cap.saturating_sub(bounds.iter().sum());
        let mut raise: Vec<usize> = (0..n).filter(|&i| self.s.target[i] > next[i]).collect();
        raise.sort_by_key(|&i| std::cmp::Reverse(self.s.target[i] - next[i]));
        for i in raise {
            let x = self.s.target[i].min(bounds[i] + room);
            if x > next[i] {
                room -= x.saturating_sub(bounds[i]);
                bounds[i] = bounds[i].max(x);
                next[i] = x;
            }
        }
        if next == self.sent {
            return false;
        }
        self.seq += 1;
        for (i, &v) in next.iter().enumerate() {
            let q = &mut self.unacked[i];
            q.push_back((self.seq, v));
            if q.len() > HISTORY {
                // Merge the two oldest, keeping the larger share.
                let (_, a) = q.pop_front().unwrap_or_default();
                if let Some(b) = q.front_mut() {
                    b.1 = b.1.max(a);
                }
            }
        }
        self.sent = next;
        true
    }
}

#[cfg(test)]
mod tests;
