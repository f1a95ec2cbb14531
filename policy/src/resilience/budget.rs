//! Retry budget (`retryBudget: { ratio, minPerSecond }`), as in Finagle and
//! Linkerd: retries may add at most `ratio` of the requests, plus a small
//! reserve so that low-traffic services can still retry at all.
//!
//! Every request deposits `ratio` of a token; every retry withdraws a whole
//! one; deposits and withdrawals count for a sliding window of 10 s (Finagle's
//! and Linkerd's TTL). The balance is
//!
//! ```text
//! minPerSecond × 10 s + ratio × requests(last 10 s) − retries(last 10 s)
//! ```
//!
//! and a retry is allowed while it is at least one token. So in any 10 s
//! window, retries ≤ ratio × requests + minPerSecond × 10 s: against an
//! upstream that fails everything, retries cannot amplify the load by more
//! than `1 + ratio` plus the reserve, however many attempts a route allows.
//!
//! The window is made of 100 ms slots; a slot leaves the window whole, once
//! all of it is 10 s old, so the window is between 10 s and 10.1 s long and
//! every 10 s interval lies within the window at its end: the bound holds
//! for any 10 s, not only for 10 s aligned on slots. (With slots leaving
//! after 9.9 s, a run of 10 s starting at the end of a slot saw its first
//! retries forgotten, and the reserve paid twice, before it ended.) Over a
//! run of T seconds, retries ≤ ratio × requests + minPerSecond × 10 s ×
//! ⌈T / 10 s⌉ (exactly `minPerSecond × T` for whole windows).
//!
//! Per shard: each shard has its own budget per service, with the whole
//! `ratio` (a ratio needs no split: each shard deposits for its own requests)
//! and a share of the reserve (`minPerSecond × 10 s`, [`reserve_total`]). The
//! agent splits the reserve with a [`super::shares::ConcurrencySplit`], not a
//! rate split: reserve a shard has spent stays spent until its retries leave
//! the window, so, like requests in flight, it may only be handed to another
//! shard once it is free. [`RetryBudget::report`] says how much is spent. So
//! the shards' reserves never add up to more than the configured one, and the
//! bound above holds for the proxy, not just per shard.

use std::time::{Duration, Instant};

use super::shares::ConcurrencyReport;

/// Slot length of the sliding window.
const SLOT: Duration = Duration::from_millis(100);
/// Slots in the window: the current one and the 100 before it (10 s), so
/// that a slot leaves only when its end is 10 s old.
const SLOTS: usize = 101;
/// The window in seconds.
pub const WINDOW_SECS: u64 = 10;
/// Token amounts are kept in thousandths, so that `ratio` (three decimals)
/// is exact in integers.
const MILLI: i64 = 1000;

/// The proxy's whole reserve for `minPerSecond`, in thousandths of a retry:
/// `minPerSecond × 10 s × 1000`. What the agent splits over the shards
/// (`ConcurrencySplit::new(reserve_total(min_per_second), shards)`).
pub fn reserve_total(min_per_second: f64) -> u64 {
    (min_per_second.max(0.0) * WINDOW_SECS as f64 * MILLI as f64).round() as u64
}

/// One service's retry budget on one shard.
///
/// Created by the shard with the service's ratio and its reserve share; kept
/// across snapshots. Per request: [`Self::deposit`] once when the request is
/// first sent, then [`Self::try_withdraw`] before each retry. Once per period:
/// [`Self::report`] to the agent, [`Self::set_reserve`] when a new share
/// arrives. No allocation after `new`.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// Deposit per request, in milli-tokens (`ratio × 1000`).
    deposit: i64,
    /// This shard's reserve, in milli-tokens.
    reserve: i64,
    /// The sequence number of the reserve share, echoed in reports.
    seq: u64,
    /// Per slot: (deposits, withdrawals).
    slots: Vec<(u32, u32)>,
    deposits: i64,
    withdrawals: i64,
    origin: Instant,
    /// Absolute number of the current slot since `origin`.
    current: u64,
    /// Requests and retry attempts since the last report.
    demand: u64,
}

impl RetryBudget {
    /// A budget with `ratio` (0.2: retries may add 20% to the requests) and
    /// this shard's share of the reserve in thousandths of a retry (from the
    /// agent's split of [`reserve_total`], sequence 0; `minPerSecond` 10 on
    /// 2 shards: 50 000 each). Shard, when a service first has a budget.
    pub fn new(ratio: f64, reserve_milli: u64, now: Instant) -> Self {
        let mut b = RetryBudget {
            deposit: 0,
            reserve: 0,
            seq: 0,
            slots: vec![(0, 0); SLOTS],
            deposits: 0,
            withdrawals: 0,
            origin: now,
            current: 0,
            demand: 0,
        };
        b.set_ratio(ratio);
        b.set_reserve(reserve_milli, 0);
        b
    }

    /// A new ratio (policy change). Shard. Keeps the window.
    pub fn set_ratio(&mut self, ratio: f64) {
        self.deposit = (ratio.max(0.0) * MILLI as f64).round() as i64;
    }

    /// A new reserve share with its sequence number (the agent's rebalance,
    /// or a policy change). Shard, when it arrives. Keeps the window: a cut
    /// below what this shard has spent just stops its retries until the
    /// spent reserve leaves the window.
    pub fn set_reserve(&mut self, reserve_milli: u64, seq: u64) {
        self.reserve = reserve_milli.min(i64::MAX as u64) as i64;
        self.seq = seq;
    }

    /// A request was sent (its first attempt, not a retry). Shard, once per
    /// request.
    pub fn deposit(&mut self, now: Instant) {
        self.advance(now);
        let slot = &mut self.slots[(self.current % SLOTS as u64) as usize];
        slot.0 = slot.0.saturating_add(1);
        self.deposits += 1;
        self.demand += 1;
    }

    /// Whether a retry may be sent now; if so, it is counted. Shard, before
    /// each retry (after the route's attempt limit and the retry conditions
    /// said yes). `false` means: answer with the last attempt's result.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        self.advance(now);
        self.demand += 1;
        if self.balance() < MILLI {
            return false;
        }
        let slot = &mut self.slots[(self.current % SLOTS as u64) as usize];
        slot.1 = slot.1.saturating_add(1);
        self.withdrawals += 1;
        true
    }

    /// Whole retries the budget would allow now. For stats and tests.
    #[cfg(test)]
    pub fn available(&mut self, now: Instant) -> u64 {
        self.advance(now);
        (self.balance().max(0) / MILLI) as u64
    }

    /// The shard's report for the agent's reserve split: the share sequence
    /// applied, the reserve spent now (retries in the window beyond what the
    /// ratio paid for, in thousandths), and the requests and retry attempts
    /// since the last report (which this resets). Shard, once per period.
    pub fn report(&mut self, now: Instant) -> ConcurrencyReport {
        self.advance(now);
        ConcurrencyReport {
            seq: self.seq,
            in_use: (MILLI * self.withdrawals - self.deposit * self.deposits).max(0) as u64,
            demand: std::mem::take(&mut self.demand),
        }
    }

    fn balance(&self) -> i64 {
        self.reserve + self.deposit * self.deposits - MILLI * self.withdrawals
    }

    /// Moves the window to `now`, dropping the slots that left it.
    fn advance(&mut self, now: Instant) {
        let slot = (now.saturating_duration_since(self.origin).as_nanos() / SLOT.as_nanos()) as u64;
        if slot <= self.current {
            return;
        }
        let expired = (slot - self.current).min(SLOTS as u64);
        for k in 1..=expired {
            let s = &mut self.slots[((self.current + k) % SLOTS as u64) as usize];
            self.deposits -= i64::from(s.0);
            self.withdrawals -= i64::from(s.1);
            *s = (0, 0);
        }
        self.current = slot;
    }
}

#[cfg(test)]
mod tests;
