use super::*;
use crate::resilience::shares::ConcurrencySplit;

#[test]
fn reserve_allows_min_per_second_times_window() {
    let t0 = Instant::now();
    // 10/s over a 10 s window: 100 retries with no requests at all.
    assert_eq!(reserve_total(10.0), 100_000);
    let mut b = RetryBudget::new(0.2, reserve_total(10.0), t0);
    assert_eq!(b.available(t0), 100);
    let allowed = (0..150).filter(|_| b.try_withdraw(t0)).count();
    assert_eq!(allowed, 100);
    assert_eq!(b.report(t0).in_use, 100_000, "the whole reserve is spent");
    // They come back when their slot leaves the window, not before.
    assert!(!b.try_withdraw(t0 + Duration::from_millis(9_999)));
    assert_eq!(b.available(t0 + Duration::from_millis(10_099)), 0);
    assert_eq!(b.available(t0 + Duration::from_millis(10_100)), 100);
    assert_eq!(b.report(t0 + Duration::from_millis(10_100)).in_use, 0);
}

/// Any 10 s counts the retries made in it, wherever it starts within a
/// slot: retries made at the end of a slot still count 10 s later.
#[test]
fn a_retry_counts_for_at_least_the_window() {
    let t0 = Instant::now();
    let mut b = RetryBudget::new(0.0, reserve_total(1.0), t0);
    let late_in_slot = t0 + Duration::from_millis(99);
    assert_eq!((0..20).filter(|_| b.try_withdraw(late_in_slot)).count(), 10);
    for after in [9_901, 9_950, 9_999] {
        let now = late_in_slot + Duration::from_millis(after);
        assert_eq!(b.available(now), 0, "{after} ms after the retries");
    }
    // Its slot leaves once its end (t0 + 100 ms) is 10 s old.
    assert_eq!(
        b.available(late_in_slot + Duration::from_millis(10_001)),
        10
    );
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
    let r = b.report(t0);
    assert_eq!((r.demand, r.in_use), (70, 0), "the ratio paid for all");
    assert_eq!(b.report(t0).demand, 0);
}

#[test]
fn reserve_cut_stops_retries_until_spent_reserve_leaves() {
    let t0 = Instant::now();
    let mut b = RetryBudget::new(0.0, 50_000, t0);
    assert_eq!((0..60).filter(|_| b.try_withdraw(t0)).count(), 50);
    b.set_reserve(10_000, 3);
    let r = b.report(t0);
    assert_eq!((r.seq, r.in_use), (3, 50_000));
    assert!(!b.try_withdraw(t0 + Duration::from_secs(5)));
    assert_eq!(b.available(t0 + Duration::from_millis(10_100)), 10);
}

/// The bound: against an upstream that always fails, with ratio
/// 0.2 and minPerSecond 10, upstream attempts ≤ (1 + ratio) × requests +
/// minPerSecond × seconds × 1.1. Routes allow 5 attempts; the reserve is
/// split over the shards and rebalanced every second while the traffic
/// swings between them.
#[test]
fn always_failing_upstream_stays_within_the_bound() {
    for (rate, shards, seconds) in [
        (50u64, 1usize, 10u64),
        (200, 1, 10),
        (5, 2, 10),
        (200, 2, 10),
        (1000, 2, 10),
        (30, 2, 60),
        (300, 4, 30),
    ] {
        let t0 = Instant::now();
        let mut split = ConcurrencySplit::new(reserve_total(10.0), shards);
        let mut budgets: Vec<_> = split
            .shares()
            .iter()
            .map(|&s| RetryBudget::new(0.2, s, t0))
            .collect();
        let (mut requests, mut attempts) = (0u64, 0u64);
        for sec in 0..seconds {
            // Three of four requests land on the hot shard, which changes
            // every 2 s.
            let hot = (sec / 2) as usize % shards;
            for k in 0..rate {
                let now =
                    t0 + Duration::from_secs(sec) + Duration::from_nanos(k * 1_000_000_000 / rate);
                let i = if k % 4 == 3 { (hot + 1) % shards } else { hot };
                let b = &mut budgets[i];
                b.deposit(now);
                requests += 1;
                attempts += 1;
                for _ in 1..5 {
                    if !b.try_withdraw(now) {
                        break;
                    }
                    attempts += 1;
                }
            }
            let now = t0 + Duration::from_secs(sec + 1);
            let reports: Vec<_> = budgets.iter_mut().map(|b| b.report(now)).collect();
            if split.update(&reports) {
                for (b, &s) in budgets.iter_mut().zip(split.shares()) {
                    b.set_reserve(s, split.seq());
                }
            }
        }
        let bound = 1.2 * requests as f64 + 10.0 * seconds as f64 * 1.1;
        let case = format!(
            "{rate} rps, {shards} shards, {seconds} s: {requests} requests, {attempts} attempts"
        );
        assert!(attempts as f64 <= bound, "{case} > {bound}");
        // The budget is used, not refusing everything: at least the
        // ratio, and most of the reserve.
        let floor = 1.2 * requests as f64 + 10.0 * seconds as f64 * 0.5;
        assert!(
            attempts as f64 >= floor.min(5.0 * requests as f64),
            "{case}"
        );
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
