use super::*;

#[test]
fn every_value_lands_in_the_bucket_whose_bounds_hold_it() {
    let mut v = 0u64;
    while v <= MAX_US {
        let (lo, hi) = bounds(bucket(v));
        assert!(lo <= v && v < hi, "{v} in [{lo},{hi})");
        v = v * 9 / 8 + 1;
    }
    assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    assert_eq!(bounds(BUCKETS - 1).1, MAX_US + 1);
}

#[test]
fn buckets_are_contiguous_and_at_most_an_eighth_wide() {
    for i in 1..BUCKETS {
        assert_eq!(bounds(i - 1).1, bounds(i).0);
        let (lo, hi) = bounds(i);
        assert!(lo < 8 || (hi - lo) * 8 <= lo, "bucket {i}: [{lo},{hi})");
    }
}

#[test]
fn quantiles_of_a_known_distribution_are_within_the_bucket_width() {
    // 1..=1000 ms, one each.
    let mut dense = vec![0u64; BUCKETS];
    for ms in 1..=1000u64 {
        dense[bucket(ms * 1000)] += 1;
    }
    for (q, want) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
        let got = quantile_ms_dense(&dense, q).unwrap();
        assert!((got - want).abs() / want < 0.07, "q{q}: {got} vs {want}");
    }
    assert_eq!(quantile_ms_dense(&vec![0; BUCKETS], 0.5), None);
    // Sparse and dense agree, and repeated indexes add up.
    let mut sp = sparse(&dense);
    let (i, n) = sp[0];
    sp.push((i, 0));
    assert_eq!(quantile_ms(&sp, 0.99), quantile_ms_dense(&dense, 0.99));
    let _ = n;
    // Out-of-range indexes from a peer are ignored.
    assert_eq!(quantile_ms(&[(u16::MAX, 5)], 0.5), None);
}
