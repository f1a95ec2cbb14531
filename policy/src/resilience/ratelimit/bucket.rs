//! A token bucket per service or route, and the refill arithmetic shared
//! with the per-caller buckets.

use std::time::Instant;

use super::{PoolReport, TOKEN};

/// The refill arithmetic shared by both kinds of bucket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Level {
    /// Tokens, in 10⁻¹² token.
    pub(super) tokens: u128,
    /// Time of the last refill.
    stamp: Instant,
}

impl Level {
    pub(super) fn full(capacity: u128, now: Instant) -> Self {
        Level {
            tokens: capacity,
            stamp: now,
        }
    }

    /// Credits the time since the last refill; returns what did not fit
    /// under `capacity`.
    fn refill(&mut self, rate_milli: u64, capacity: u128, now: Instant) -> u128 {
        if now <= self.stamp {
            return 0;
        }
        let ns = now.duration_since(self.stamp).as_nanos();
        let full = self
            .tokens
            .saturating_add(ns.saturating_mul(u128::from(rate_milli)));
        self.stamp = now;
        self.tokens = full.min(capacity);
        full - self.tokens
    }

    pub(super) fn try_take(&mut self, rate_milli: u64, capacity: u128, now: Instant) -> bool {
        self.refill(rate_milli, capacity, now);
        self.take()
    }

    fn take(&mut self) -> bool {
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            true
        } else {
            false
        }
    }
}

/// One service's (or route's) rate limit on one shard.
///
/// Created by the shard with its shares; kept across snapshots (update with
/// [`Self::set`]); [`Self::try_take`] per request. No allocation.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_milli: u64,
    capacity: u128,
    level: Level,
    demand: u64,
    /// Whether this bucket reports to the service's [`TokenPool`] (more
    /// than one shard).
    pooled: bool,
    /// Refill thrown away since the last report, in the bucket's unit.
    wasted: u128,
    refused: u64,
    /// Tokens granted from the pool, spent once the bucket is empty.
    credit: u64,
    spent: u64,
}

impl TokenBucket {
    /// A full bucket refilling at `rate_milli` thousandths of a token per
    /// second (100 rps on one shard: 100 000), holding at most `burst` tokens
    /// (at least 1). Shard, when a service first has a `rateLimit`.
    pub fn new(rate_milli: u64, burst: u64, now: Instant) -> Self {
        let capacity = u128::from(burst.max(1)) * TOKEN;
        TokenBucket {
            rate_milli,
            capacity,
            level: Level::full(capacity, now),
            demand: 0,
            pooled: false,
            wasted: 0,
            refused: 0,
            credit: 0,
            spent: 0,
        }
    }

    /// Reports to the service's [`TokenPool`] from now on. Shard, with more
    /// than one shard, when it builds the bucket.
    pub fn pool(&mut self) {
        self.pooled = true;
    }

    /// Refills to `now`, counting what does not fit.
    fn refill(&mut self, now: Instant) {
        let over = self.level.refill(self.rate_milli, self.capacity, now);
        if self.pooled {
            self.wasted = self.wasted.saturating_add(over);
        }
    }

    /// What to report to the pool (refilling to `now` first), and resets
    /// the counts; unspent grants go back with it. `None`: nothing to
    /// report. Shard, every 250 ms, for a pooled bucket.
    pub fn report(&mut self, now: Instant) -> Option<PoolReport> {
        self.refill(now);
        let wasted = (self.wasted / TOKEN) as u64;
        self.wasted %= TOKEN;
        let r = PoolReport {
            wasted,
            refused: std::mem::take(&mut self.refused),
            spent: std::mem::take(&mut self.spent),
            returned: std::mem::take(&mut self.credit),
        };
        (r != PoolReport::default()).then_some(r)
    }

    /// Tokens granted by the pool. Shard, when the agent's grant arrives.
    pub fn grant(&mut self, tokens: u64) {
        self.credit = self.credit.saturating_add(tokens);
    }

    /// New shares (from the agent's rebalance) or a new policy. Shard, when it
    /// applies either. Tokens already earned are kept, up to the new burst.
    pub fn set(&mut self, rate_milli: u64, burst: u64, now: Instant) {
        // Credit the time so far at the old rate before switching.
        self.refill(now);
        self.rate_milli = rate_milli;
        self.capacity = u128::from(burst.max(1)) * TOKEN;
        let kept = self.level.tokens.min(self.capacity);
        if self.pooled {
            // What a smaller burst cannot keep goes to the other shards.
            self.wasted = self.wasted.saturating_add(self.level.tokens - kept);
        }
        self.level.tokens = kept;
    }

    /// Takes a token if there is one. Shard, per request, before routing to
    /// the upstream; `false`: answer 429.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.demand += 1;
        self.refill(now);
        if self.level.take() {
            return true;
        }
        if self.credit > 0 {
            self.credit -= 1;
            self.spent += 1;
            return true;
        }
        if self.pooled {
            self.refused += 1;
        }
        false
    }

    /// Attempts (admitted or not) since the last call: this shard's demand
    /// for the rate split. Shard, once per period, into its report.
    pub fn take_demand(&mut self) -> u64 {
        std::mem::take(&mut self.demand)
    }
}
