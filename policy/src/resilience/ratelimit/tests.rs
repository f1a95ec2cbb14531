use super::lru::NIL;
use super::*;
use crate::resilience::shares::{burst_share, RateSplit};
use crate::resilience::test_rng;
use std::time::{Duration, Instant};

#[test]
fn hundred_rps_over_ten_seconds() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(100_000, 20, t0);
    // Offered: 400 rps, evenly spaced, for 10 s.
    let admitted = (0..4000)
        .filter(|i| b.try_take(t0 + Duration::from_micros(i * 2500)))
        .count();
    assert!((900..=1100).contains(&admitted), "{admitted}");
    // Exactly: burst + rate × 10 s (less the last refill's fraction).
    assert!((1015..=1020).contains(&admitted), "{admitted}");
}

#[test]
fn burst_then_rate() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(10_000, 5, t0);
    assert_eq!((0..10).filter(|_| b.try_take(t0)).count(), 5);
    let t1 = t0 + Duration::from_millis(250);
    assert_eq!((0..10).filter(|_| b.try_take(t1)).count(), 2);
    // Fractional rates: 0.5 rps.
    let mut slow = TokenBucket::new(500, 1, t0);
    assert!(slow.try_take(t0));
    assert!(!slow.try_take(t0 + Duration::from_millis(1999)));
    assert!(slow.try_take(t0 + Duration::from_millis(2000)));
    assert_eq!(slow.take_demand(), 3);
}

#[test]
fn set_keeps_earned_tokens_up_to_the_new_burst() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(1_000, 10, t0);
    assert_eq!((0..10).filter(|_| b.try_take(t0)).count(), 10);
    // 4 s at 1 rps earned 4 tokens; the new burst of 2 keeps 2 of them.
    let t1 = t0 + Duration::from_secs(4);
    b.set(100_000, 2, t1);
    assert_eq!((0..10).filter(|_| b.try_take(t1)).count(), 2);
    // 3 s at 1 rps earned 3; a larger burst keeps all 3.
    let t2 = t1 + Duration::from_secs(3);
    b.set(1_000, 10, t2 - Duration::from_secs(3));
    b.set(100_000, 10, t2);
    assert_eq!((0..10).filter(|_| b.try_take(t2)).count(), 3);
}

/// One bucket per share of `total` (thousandths of a request per
/// second) with its part of `burst`, reporting to a pool when `pooled`.
fn shard_buckets(
    shares: &[u64],
    total: u64,
    burst: u64,
    pooled: bool,
    t0: Instant,
) -> Vec<TokenBucket> {
    shares
        .iter()
        .map(|&s| {
            let mut b = TokenBucket::new(s, burst_share(burst, s, total), t0);
            if pooled {
                b.pool();
            }
            b
        })
        .collect()
}

/// The agent's once-a-period re-split from the buckets' demand, applied
/// to them at `now`.
fn resplit(
    split: &mut RateSplit,
    buckets: &mut [TokenBucket],
    total: u64,
    burst: u64,
    now: Instant,
) {
    let demand: Vec<u64> = buckets.iter_mut().map(|b| b.take_demand()).collect();
    if split.update(&demand) {
        for (b, &s) in buckets.iter_mut().zip(split.shares()) {
            b.set(s, burst_share(burst, s, total), now);
        }
    }
}

/// A simulated 2-shard proxy with 100 rps and a burst of 20 configured:
/// shares rebalanced every second from each shard's demand and, when
/// `pooled`, buckets reporting to a [`TokenPool`] every 250 ms (grants
/// arrive at once); `offered` rps, `skew`% of it on shard
/// `busy(second, request)`. Returns the rps admitted per second.
fn two_shards(offered: u64, skew: u64, pooled: bool, busy: impl Fn(u64, u64) -> usize) -> Vec<u64> {
    let t0 = Instant::now();
    let total = 100_000;
    let burst = 20;
    let mut split = RateSplit::new(total, 2);
    let mut pool = TokenPool::new(pool_cap(total, burst), 2);
    let mut buckets = shard_buckets(split.shares(), total, burst, pooled, t0);
    let mut rng = test_rng(offered + skew);
    let mut per_second = Vec::new();
    let tick = Duration::from_millis(250);
    let mut next_tick = t0 + tick;
    for sec in 0..15 {
        let mut admitted = 0;
        for k in 0..offered {
            let now =
                t0 + Duration::from_secs(sec) + Duration::from_nanos(k * 1_000_000_000 / offered);
            while pooled && next_tick <= now {
                for (i, b) in buckets.iter_mut().enumerate() {
                    if let Some(r) = b.report(next_tick) {
                        b.grant(pool.report(i, r));
                    }
                }
                next_tick += tick;
            }
            let busy = busy(sec, k);
            let i = if rng() % 100 < skew { busy } else { 1 - busy };
            admitted += u64::from(buckets[i].try_take(now));
        }
        per_second.push(admitted);
        let now = t0 + Duration::from_secs(sec + 1);
        resplit(&mut split, &mut buckets, total, burst, now);
    }
    per_second
}

/// The rps admitted over seconds 5..15.
fn settled(per_second: &[u64]) -> f64 {
    per_second[5..].iter().sum::<u64>() as f64 / 10.0
}

/// The rate-limit test: 100 rps on a 2-shard proxy admits
/// 100 ± 10 rps averaged over 10 s after a warm-up, however unevenly the
/// traffic is split between the shards; pooled, all of it.
#[test]
fn two_shards_admit_the_configured_rate() {
    for (offered, skew) in [
        (150u64, 50u64),
        (300, 75),
        (1000, 90),
        (120, 97),
        (101, 100),
    ] {
        let alone = settled(&two_shards(offered, skew, false, |_, _| 0));
        assert!(
            (90.0..=110.0).contains(&alone),
            "offered {offered}, skew {skew}%, not pooled: {alone} rps"
        );
        let pooled = settled(&two_shards(offered, skew, true, |_, _| 0));
        assert!(
            (99.0..=101.0).contains(&pooled),
            "offered {offered}, skew {skew}%, pooled: {pooled} rps"
        );
    }
}

/// When the busy shard changes, the one that gained the traffic admits
/// its old share for a period, then catches up over about two more (the
/// documented transient); pooled, it gets what the other shard no longer
/// uses.
#[test]
fn traffic_moving_between_shards_costs_about_two_periods() {
    let alone = two_shards(300, 95, false, |sec, _| usize::from(sec >= 7));
    let lost: u64 = alone[7..11].iter().map(|&a| 100u64.saturating_sub(a)).sum();
    // The shortfall is ~85 rps in the first period; α = ½ halves it each
    // period after: about 2 × 85 in all.
    assert!(lost <= 200, "lost {lost}: {alone:?}");
    let after = alone[11..].iter().sum::<u64>() as f64 / 4.0;
    assert!((90.0..=110.0).contains(&after), "{alone:?}");
    // Pooled, the move costs what refills the bucket that lost its
    // traffic (its burst share, 18) and one report's delay (a quarter
    // second of its share, 22) instead.
    let pooled = two_shards(300, 95, true, |sec, _| usize::from(sec >= 7));
    let moved: u64 = pooled[7..11].iter().sum();
    assert!((360..=410).contains(&moved), "{moved} in 4 s: {pooled:?}");
    let after = pooled[11..].iter().sum::<u64>() as f64 / 4.0;
    assert!((98.0..=102.0).contains(&after), "{pooled:?}");
}

/// Traffic that hops between the shards several times a second (one
/// pooled upstream connection, then the other): per-shard shares cannot
/// follow it, and alone the shards admit well under the rate; pooled, they
/// admit the rate.
#[test]
fn traffic_hopping_between_shards_still_gets_the_rate() {
    // The busy shard changes every 300 ms (90 requests at 300 rps).
    let hop = |_: u64, k: u64| usize::from((k / 90) % 2 == 1);
    let alone = settled(&two_shards(300, 100, false, hop));
    let pooled = settled(&two_shards(300, 100, true, hop));
    assert!(alone < 95.0, "not pooled: {alone} rps");
    assert!((98.0..=101.0).contains(&pooled), "pooled: {pooled} rps");
}

/// Four shards, all traffic on one, reports at staggered times (as each
/// shard's own timer runs): the pool passes on what the three idle shards
/// throw away, so the proxy admits its rate; when the busy shard changes
/// every 2 s, each move costs a few tokens pooled, and most of the rate
/// alone (shares move by half the gap per second).
#[test]
fn four_shards_with_one_busy_get_the_rate() {
    let run = |pooled: bool, hop: u64| -> f64 {
        let t0 = Instant::now();
        let (n, total, burst, offered) = (4usize, 100_000u64, 20u64, 300u64);
        let mut split = RateSplit::new(total, n);
        let mut pool = TokenPool::new(pool_cap(total, burst), n);
        let mut buckets = shard_buckets(split.shares(), total, burst, pooled, t0);
        // Shard i reports at i × 62.5 ms past each quarter second.
        let mut next: Vec<Instant> = (0..n)
            .map(|i| t0 + Duration::from_micros(250_000 + 62_500 * i as u64))
            .collect();
        let mut admitted = 0;
        for sec in 0..15u64 {
            for k in 0..offered {
                let now = t0
                    + Duration::from_secs(sec)
                    + Duration::from_nanos(k * 1_000_000_000 / offered);
                for (i, b) in buckets.iter_mut().enumerate() {
                    while pooled && next[i] <= now {
                        if let Some(r) = b.report(next[i]) {
                            b.grant(pool.report(i, r));
                        }
                        next[i] += Duration::from_millis(250);
                    }
                }
                let busy = (sec / hop) as usize % n;
                let ok = buckets[busy].try_take(now);
                if sec >= 5 {
                    admitted += u64::from(ok);
                }
            }
            let now = t0 + Duration::from_secs(sec + 1);
            resplit(&mut split, &mut buckets, total, burst, now);
        }
        admitted as f64 / 10.0
    };
    let (alone, pooled) = (run(false, 100), run(true, 100));
    assert!(alone < 93.0, "one busy shard, not pooled: {alone} rps");
    assert!(
        (99.0..=101.0).contains(&pooled),
        "one busy shard: {pooled} rps"
    );
    let (alone, pooled) = (run(false, 2), run(true, 2));
    assert!(alone < 50.0, "moving every 2 s, not pooled: {alone} rps");
    assert!(
        (90.0..=101.0).contains(&pooled),
        "moving every 2 s: {pooled} rps"
    );
}

/// The pool only moves tokens: after a long quiet spell (both buckets
/// and the pool full), a burst and the next second admit at most
/// burst + N + 2 × pool cap + the rate.
#[test]
fn the_pool_never_makes_tokens() {
    let t0 = Instant::now();
    let (total, burst) = (100_000, 20);
    let cap = pool_cap(total, burst);
    assert_eq!(cap, 25, "a quarter second of 100 rps");
    let mut pool = TokenPool::new(cap, 2);
    let mut buckets = shard_buckets(&[50_000, 50_000], total, burst, true, t0);
    let mut report = |buckets: &mut Vec<TokenBucket>, at: Instant| {
        for (i, b) in buckets.iter_mut().enumerate() {
            if let Some(r) = b.report(at) {
                b.grant(pool.report(i, r));
            }
        }
    };
    let quiet = t0 + Duration::from_secs(60);
    report(&mut buckets, quiet);
    // 400 rps for 1 s, reports every 250 ms.
    let mut admitted = 0;
    for i in 0..400u64 {
        let now = quiet + Duration::from_micros(i * 2500);
        if i % 100 == 99 {
            report(&mut buckets, now);
        }
        admitted += u64::from(buckets[(i % 2) as usize].try_take(now));
    }
    assert!(
        admitted <= burst + 2 + 2 * cap + 100,
        "{admitted} admitted in a second after a quiet spell"
    );
    assert!(admitted >= burst + cap + 95, "{admitted}: the pool is used");
}

/// Grants are accounted until spent or returned, so a report that
/// crosses a grant in flight cannot make room for more than the cap.
#[test]
fn pool_grants_stay_within_the_cap() {
    let mut pool = TokenPool::new(10, 2);
    let wasted = |n| PoolReport {
        wasted: n,
        ..PoolReport::default()
    };
    assert_eq!(pool.report(0, wasted(100)), 0);
    assert_eq!(pool.held(), 10, "capped");
    let refused = PoolReport {
        refused: 4,
        ..PoolReport::default()
    };
    assert_eq!(pool.report(1, refused), 4);
    assert_eq!(pool.held(), 6);
    // Shard 1 reports again before the grant arrived: the 4 are still
    // out, and the pool refills to its cap.
    assert_eq!(pool.report(1, wasted(100)), 0);
    assert_eq!(pool.held(), 10);
    // Grants out stay within the cap: room for 6 more.
    let many = PoolReport {
        refused: 100,
        ..PoolReport::default()
    };
    assert_eq!(pool.report(0, many), 6);
    assert_eq!(pool.held(), 4);
    // Shard 0 spent its 6; it gets 4 (what the pool has) of the 6 it
    // needed.
    let spent6 = PoolReport {
        spent: 6,
        ..PoolReport::default()
    };
    assert_eq!(pool.report(0, spent6), 4);
    assert_eq!(pool.held(), 0);
    // It spent 1 and returns 3.
    let back = PoolReport {
        spent: 1,
        returned: 3,
        ..PoolReport::default()
    };
    assert_eq!(pool.report(1, back), 1, "it needed 1 more than its own");
    assert_eq!(pool.held(), 2, "3 returned - 1 granted");
    pool.report(0, wasted(100));
    assert_eq!(pool.held(), 10);
    pool.set_cap(2);
    assert_eq!(pool.held(), 2);
    // 4 (shard 0) and 1 (shard 1) are out, over the new cap: no grant
    // until they come back.
    assert_eq!(pool.report(0, many), 0);
    assert_eq!(pool.report(7, wasted(1)), 0, "no such shard");
}

/// A bucket spends its grant only when empty, counts what it refuses and
/// throws away, and hands unspent grants back.
#[test]
fn a_pooled_bucket_reports_what_it_wasted_spent_and_refused() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(10_000, 2, t0);
    b.pool();
    assert_eq!(b.report(t0), None, "nothing yet");
    // 1 s at 10 rps into a full bucket of 2: 10 thrown away.
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(
        b.report(t1),
        Some(PoolReport {
            wasted: 10,
            ..PoolReport::default()
        })
    );
    b.grant(3);
    let taken = (0..6).filter(|_| b.try_take(t1)).count();
    assert_eq!(taken, 5, "2 of its own, then 3 granted");
    assert_eq!(
        b.report(t1),
        Some(PoolReport {
            wasted: 0,
            refused: 1,
            spent: 3,
            returned: 0
        })
    );
    b.grant(4);
    assert!(b.try_take(t1 + Duration::from_millis(100)), "its own token");
    let r = b.report(t1 + Duration::from_millis(100)).unwrap();
    assert_eq!((r.spent, r.returned), (0, 4));
    // Not pooled: nothing is counted.
    let mut alone = TokenBucket::new(10_000, 2, t0);
    assert!(alone.try_take(t1) && alone.try_take(t1) && !alone.try_take(t1));
    assert_eq!(alone.report(t1), None);
}

#[test]
fn keyed_buckets_limit_each_caller() {
    let t0 = Instant::now();
    let mut k = KeyedTokenBuckets::new(1_000, 3, 16);
    assert_eq!((0..5).filter(|_| k.try_take(b"alice", t0)).count(), 3);
    assert_eq!((0..5).filter(|_| k.try_take(b"bob", t0)).count(), 3);
    assert!(!k.try_take(b"alice", t0));
    assert!(k.try_take(b"alice", t0 + Duration::from_secs(1)));
    assert_eq!(k.len(), 2);
}

#[test]
fn keyed_buckets_evict_least_recently_used_and_never_grow() {
    let t0 = Instant::now();
    let cap = 64;
    let mut k = KeyedTokenBuckets::new(1_000, 2, cap);
    let index_len = k.index.len();
    let entries_capacity = k.entries.capacity();
    let mut rng = test_rng(77);
    // "hot" is used between every other key and drained: it must never be
    // evicted (it would come back full).
    assert!(k.try_take(b"hot", t0) && k.try_take(b"hot", t0));
    for i in 0..20_000u64 {
        let key = (rng() % 500).to_le_bytes();
        k.try_take(&key, t0);
        assert!(!k.try_take(b"hot", t0), "hot evicted at {i}");
        assert!(k.len() <= cap);
    }
    assert_eq!(k.len(), cap);
    assert_eq!(k.entries.capacity(), entries_capacity, "no reallocation");
    assert_eq!(k.index.len(), index_len);
    // The index and the LRU list agree with the entries.
    let indexed = k.index.iter().filter(|&&s| s != NIL).count();
    assert_eq!(indexed, cap);
    for (slot, e) in k.entries.iter().enumerate() {
        assert_eq!(k.find(e.key), Ok(slot as u32));
    }
    let mut n = 0;
    let mut s = k.head;
    while s != NIL {
        n += 1;
        s = k.entries[s as usize].next;
    }
    assert_eq!(n, cap);
}
