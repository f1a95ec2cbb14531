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
//! The window is 100 slots of 100 ms; a slot leaves the window whole, so the
//! window is between 9.9 s and 10 s long. Over a run of T seconds, retries ≤
//! ratio × requests + minPerSecond × 10 s × ⌈T / 10 s⌉ (exactly
//! `minPerSecond × T` for whole windows).
//!
//! Per shard: each shard has its own budget per service, with the whole
//! `ratio` (a ratio needs no split: each shard deposits for its own requests)
//! and a share of `minPerSecond` from [`super::shares::RateSplit`], so the
//! reserves of all shards add up to the configured one.

use std::time::{Duration, Instant};

/// Slot length of the sliding window.
const SLOT: Duration = Duration::from_millis(100);
/// Slots in the window: 100 × 100 ms = 10 s.
const SLOTS: usize = 100;
/// Token amounts are kept in thousandths, so that `ratio` (three decimals)
/// is exact in integers.
const MILLI: i64 = 1000;

/// One service's retry budget on one shard.
///
/// Created by the shard with the service's policy and its share of
/// `minPerSecond` (kept across snapshots; update it with [`Self::set`]). Per
/// request: [`Self::deposit`] once when the request is first sent, then
/// [`Self::try_withdraw`] before each retry. No allocation after `new`.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// Deposit per request, in milli-tokens (`ratio × 1000`).
    deposit: i64,
    /// The reserve, in milli-tokens: this shard's `minPerSecond` share × 10 s.
    reserve: i64,
    /// Per slot: (deposits, withdrawals).
    slots: Vec<(u32, u32)>,
    deposits: i64,
    withdrawals: i64,
    origin: Instant,
    /// Absolute number of the current slot since `origin`.
    current: u64,
    /// Requests and retry attempts since the last `take_demand`.
    demand: u64,
}

impl RetryBudget {
    /// A budget with `ratio` (e.g. 0.2: retries may add 20% to the requests)
    /// and this shard's share of `minPerSecond`, in thousandths of a retry per
    /// second (`10 retries/s` split over 2 shards: 5000 each). Shard, when the
    /// service's policy first has a retry budget.
    pub fn new(ratio: f64, min_per_second_milli: u64, now: Instant) -> Self {
        let mut b = RetryBudget {
            deposit: 0,
            reserve: 0,
            slots: vec![(0, 0); SLOTS],
            deposits: 0,
            withdrawals: 0,
            origin: now,
            current: 0,
            demand: 0,
        };
        b.set(ratio, min_per_second_milli);
        b
    }

    /// New parameters: a new policy, or a new `minPerSecond` share from the
    /// agent's rebalance. Shard, when it applies either. Keeps the window.
    pub fn set(&mut self, ratio: f64, min_per_second_milli: u64) {
        self.deposit = (ratio.max(0.0) * MILLI as f64).round() as i64;
        let window_secs = (SLOTS as u64 * SLOT.as_millis() as u64 / 1000) as i64;
        self.reserve = (min_per_second_milli as i64).saturating_mul(window_secs);
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
    pub fn available(&mut self, now: Instant) -> u64 {
        self.advance(now);
        (self.balance().max(0) / MILLI) as u64
    }

    /// Requests and retry attempts (allowed or not) since the last call: this
    /// shard's demand for the `minPerSecond` split. Shard, once per period,
    /// into its report to the agent.
    pub fn take_demand(&mut self) -> u64 {
        std::mem::take(&mut self.demand)
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
mod tests {
    use super::*;

    #[test]
    fn reserve_allows_min_per_second_times_window() {
        let t0 = Instant::now();
        // 10/s over a 10 s window: 100 retries with no requests at all.
        let mut b = RetryBudget::new(0.2, 10_000, t0);
        assert_eq!(b.available(t0), 100);
        let allowed = (0..150).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(allowed, 100);
        // They come back when their slot leaves the window, not before.
        assert!(!b.try_withdraw(t0 + Duration::from_millis(9_999)));
        assert_eq!(b.available(t0 + Duration::from_secs(10)), 100);
    }

    #[test]
    fn ratio_of_requests() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 0, t0);
        for _ in 0..50 {
            b.deposit(t0);
        }
        assert_eq!(b.available(t0), 10);
        assert_eq!((0..20).filter(|_| b.try_withdraw(t0)).count(), 10);
        assert_eq!(b.take_demand(), 70);
        assert_eq!(b.take_demand(), 0);
    }

    /// The issue's bound: against an upstream that always fails, with ratio
    /// 0.2 and minPerSecond 10, over 10 s of requests, upstream attempts ≤
    /// (1 + ratio) × requests + minPerSecond × seconds × 1.1. Split over two
    /// shards with uneven traffic, and with routes allowing many attempts.
    #[test]
    fn always_failing_upstream_stays_within_the_bound() {
        for (rate, shards) in [(50u64, 1usize), (200, 1), (200, 2), (1000, 2)] {
            let t0 = Instant::now();
            // minPerSecond 10 split 5 + 5 (or 10 on one shard).
            let share = 10_000 / shards as u64;
            let mut budgets: Vec<_> = (0..shards)
                .map(|_| RetryBudget::new(0.2, share, t0))
                .collect();
            let (mut requests, mut attempts) = (0u64, 0u64);
            for i in 0..rate * 10 {
                let now = t0 + Duration::from_nanos(i * 1_000_000_000 / rate);
                // Three of four requests land on shard 0.
                let b = &mut budgets[if i % 4 == 3 { shards - 1 } else { 0 }];
                b.deposit(now);
                requests += 1;
                attempts += 1;
                // attempts: 5 per request, every one fails.
                for _ in 1..5 {
                    if !b.try_withdraw(now) {
                        break;
                    }
                    attempts += 1;
                }
            }
            let bound = 1.2 * requests as f64 + 10.0 * 10.0 * 1.1;
            assert!(
                attempts as f64 <= bound,
                "{rate} rps, {shards} shards: {attempts} > {bound}"
            );
            // And the budget is actually used (not refusing everything).
            assert!(attempts as f64 >= 1.2 * requests as f64, "{attempts}");
        }
    }

    #[test]
    fn long_idle_gap_clears_the_window() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(1.0, 0, t0);
        for _ in 0..30 {
            b.deposit(t0);
        }
        assert_eq!(b.available(t0 + Duration::from_secs(5)), 30);
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), 0);
    }
}
