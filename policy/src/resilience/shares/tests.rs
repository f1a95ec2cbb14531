use super::*;
use crate::resilience::test_rng;

#[test]
fn rebalance_respects_floor_and_total() {
    assert_eq!(rebalance(1000, &[300, 100], 50), vec![725, 275]);
    assert_eq!(rebalance(1000, &[0, 0, 0], 10), vec![334, 333, 333]);
    assert_eq!(rebalance(10, &[1, 0, 0], 1), vec![8, 1, 1]);
    // Less than the floors: everyone gets the floor.
    assert_eq!(rebalance(2, &[5, 5, 5], 1), vec![1, 1, 1]);
    assert!(rebalance(5, &[], 1).is_empty());
    let mut rng = test_rng(21);
    for _ in 0..500 {
        let n = 1 + (rng() % 8) as usize;
        let total = rng() % 100_000;
        let floor = rate_floor(total, n);
        let demand: Vec<u64> = (0..n).map(|_| rng() % 1000).collect();
        let s = rebalance(total, &demand, floor);
        assert_eq!(s.iter().sum::<u64>(), total.max(floor * n as u64));
        assert!(s.iter().all(|&x| x >= floor));
    }
}

#[test]
fn rate_split_converges_and_stops_changing() {
    let mut r = RateSplit::new(100_000, 2);
    assert_eq!(r.shares(), &[50_000, 50_000]);
    let mut changes = Vec::new();
    for period in 0..30 {
        if r.update(&[300, 100]) {
            changes.push(period);
        }
    }
    // Exact split: floor 5000 + 90 000 × 3/4.
    let exact = [72_500u64, 27_500];
    for (s, e) in r.shares().iter().zip(exact) {
        assert!(s.abs_diff(e) <= 500, "{:?}", r.shares());
    }
    assert_eq!(r.shares().iter().sum::<u64>(), 100_000);
    assert!(
        changes.len() <= 8 && changes.iter().all(|&p| p < 10),
        "{changes:?}"
    );
    // Noise around a split does not cause changes.
    let mut rng = test_rng(5);
    let mut noisy = 0;
    for _ in 0..50 {
        let d = [300 + rng() % 4, 100 + rng() % 4];
        noisy += usize::from(r.update(&d));
    }
    assert_eq!(noisy, 0);
}

#[test]
fn concurrency_split_starts_even_with_floors() {
    let c = ConcurrencySplit::new(1000, 2);
    assert_eq!(c.shares(), &[500, 500]);
    let c = ConcurrencySplit::new(1, 2);
    assert_eq!(c.shares(), &[1, 1]);
    assert_eq!(c.cap(), 2);
    let c = ConcurrencySplit::new(5, 4);
    assert_eq!(c.shares().iter().sum::<u64>(), 5);
    assert!(c.shares().iter().all(|&s| s >= 1));
}

/// Shards hold what their share allows, report late and out of step;
/// traffic swings between them. The proxy-wide count never passes
/// max(limit, N), and the split follows the traffic.
#[test]
fn concurrency_split_never_exceeds_the_cap() {
    let mut rng = test_rng(33);
    for (limit, shards) in [(100u64, 2usize), (10, 4), (1, 2), (1000, 3)] {
        let mut split = ConcurrencySplit::new(limit, shards);
        // What each shard has applied (seq, share) and holds.
        let mut applied: Vec<(u64, u64)> = split.shares().iter().map(|&s| (0, s)).collect();
        let mut in_use = vec![0u64; shards];
        // Messages in transit: (deliver at period, shard, seq, share).
        let mut transit: Vec<(u32, usize, u64, u64)> = Vec::new();
        for period in 0..400u32 {
            // Traffic: one hot shard that changes every 50 periods.
            let hot = (period / 50) as usize % shards;
            for _ in 0..20 {
                for (i, u) in in_use.iter_mut().enumerate() {
                    let want = if i == hot { limit } else { limit / 20 };
                    // Each shard fills up to its share (if it wants),
                    // releases some at random.
                    if *u < applied[i].1 && *u < want {
                        *u += 1;
                    }
                    if *u > 0 && rng() % 3 == 0 {
                        *u -= 1;
                    }
                }
                // Deliver due messages.
                transit.retain(|&(at, i, seq, share)| {
                    if at <= period && seq > applied[i].0 {
                        applied[i] = (seq, share);
                    }
                    at > period
                });
                let total: u64 = in_use.iter().sum();
                assert!(
                    total <= limit.max(shards as u64),
                    "{limit}/{shards}: {total}"
                );
            }
            // Reports, some shards a period late (stale seq / in_use).
            let reports: Vec<_> = (0..shards)
                .map(|i| ConcurrencyReport {
                    seq: applied[i].0,
                    in_use: in_use[i],
                    demand: if i == hot { 1000 } else { 50 },
                })
                .collect();
            if split.update(&reports) {
                for (i, &share) in split.shares().iter().enumerate() {
                    let delay = (rng() % 3) as u32;
                    transit.push((period + delay, i, split.seq(), share));
                }
            }
            assert!(split.shares().iter().all(|&s| s >= 1));
        }
        // At the end the hot shard holds most of the limit.
        let hot = (399 / 50) as usize % shards;
        if limit >= 10 * shards as u64 {
            assert!(split.shares()[hot] * 2 > limit, "{:?}", split.shares());
        }
    }
}

#[test]
fn burst_shares() {
    assert_eq!(burst_share(20, 50_000, 100_000), 10);
    assert_eq!(burst_share(20, 5_000, 100_000), 1);
    assert_eq!(burst_share(3, 1, 100_000), 1);
    assert_eq!(burst_share(0, 1, 2), 1);
}

#[test]
fn set_limit_moves_shares_safely() {
    let mut c = ConcurrencySplit::new(100, 2);
    assert!(c.set_limit(40));
    assert_eq!(c.shares(), &[20, 20]);
    // Raising needs the shards to confirm the cut first: still bounded by
    // what they may hold (20 each), room 160 → the raise goes through.
    assert!(c.set_limit(200));
    assert_eq!(c.shares(), &[100, 100]);
    // Shard 0 gets the traffic: shard 1 is cut at once, shard 0 is raised
    // only once shard 1 has reported the cut applied.
    let mut c = ConcurrencySplit::new(100, 2);
    let r = |seq, in_use, demand| ConcurrencyReport {
        seq,
        in_use,
        demand,
    };
    assert!(c.update(&[r(0, 0, 1000), r(0, 0, 1)]));
    assert_eq!(c.shares(), &[50, 5]);
    assert!(c.update(&[r(0, 0, 1000), r(c.seq(), 0, 1)]));
    assert_eq!(c.shares(), &[95, 5]);
    // Shard 0 fills its share; then the traffic moves to shard 1. Shard 0
    // is cut at once but drains slowly: shard 1 grows only as it drains.
    let mut in_use0 = 95;
    let mut seq0 = c.seq();
    for _ in 0..12 {
        c.update(&[r(seq0, in_use0, 1), r(c.seq(), 5, 1000)]);
        seq0 = c.seq();
        assert!(
            c.shares()[1] + in_use0.max(c.shares()[0]) <= 100,
            "{:?} {in_use0}",
            c.shares()
        );
        in_use0 = in_use0.saturating_sub(15).max(c.shares()[0]);
    }
    assert_eq!(c.shares(), &[5, 95]);
}
