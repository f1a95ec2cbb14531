//! The latency histogram proxies send to control in their edge summaries:
//! fixed log-linear buckets over microseconds, so histograms from any
//! number of proxies and intervals merge by adding counts, and control
//! computes percentiles over a window of the whole fleet (averaging the
//! proxies' percentiles would not give one).
//!
//! Buckets: `[0,1)` .. `[7,8)` µs one by one, then 8 buckets per power of
//! two (each 1/8 of its octave wide, so a value is known within 12.5%, and
//! a percentile interpolated within its bucket usually much closer), up to
//! 2^27 µs (134 s); longer values land in the last bucket. [`BUCKETS`]
//! buckets in all. The index is computed with a leading-zero count and a
//! shift, no floating point and no search.

/// Number of buckets.
pub const BUCKETS: usize = 8 + 24 * 8;

/// Largest value (µs) with a bucket of its own; longer ones are counted in
/// the last bucket.
pub const MAX_US: u64 = (1 << 27) - 1;

/// The bucket of a latency of `us` microseconds.
pub fn bucket(us: u64) -> usize {
    let us = us.min(MAX_US);
    if us < 8 {
        return us as usize;
    }
    // 3 ..= 26
    let e = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (e - 3)) & 7) as usize;
    8 + (e - 3) * 8 + sub
}

/// The bounds `[low, high)` of bucket `i` in microseconds.
pub fn bounds(i: usize) -> (u64, u64) {
    let i = i.min(BUCKETS - 1);
    if i < 8 {
        return (i as u64, i as u64 + 1);
    }
    let e = (i - 8) / 8 + 3;
    let sub = ((i - 8) % 8) as u64;
    ((8 + sub) << (e - 3), (9 + sub) << (e - 3))
}

/// The `q` quantile (0.0..=1.0) of a sparse histogram (bucket index,
/// count), in milliseconds, interpolated linearly within its bucket; `None`
/// when it holds no value. `sparse` need not be sorted nor free of repeated
/// indexes.
pub fn quantile_ms(sparse: &[(u16, u64)], q: f64) -> Option<f64> {
    let mut dense = vec![0u64; BUCKETS];
    for &(i, n) in sparse {
        if let Some(slot) = dense.get_mut(usize::from(i)) {
            *slot = slot.saturating_add(n);
        }
    }
    quantile_ms_dense(&dense, q)
}

/// [`quantile_ms`] over a dense histogram (`BUCKETS` counts).
pub fn quantile_ms_dense(dense: &[u64], q: f64) -> Option<f64> {
    let total: u64 = dense.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the wanted value, 1-based: the smallest value with at
    // least q of the values at or below it.
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &n) in dense.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let (lo, hi) = bounds(i);
            let within = (rank - seen as f64) / n as f64;
            let us = lo as f64 + within * (hi - lo) as f64;
            return Some(us / 1000.0);
        }
        seen += n;
    }
    // Rounding: the last bucket with values.
    let last = dense.iter().rposition(|&n| n > 0)?;
    Some(bounds(last).1 as f64 / 1000.0)
}

/// A dense histogram's non-empty buckets, as sent on the wire.
pub fn sparse(dense: &[u64]) -> Vec<(u16, u64)> {
    dense
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(i, &n)| (i as u16, n))
        .collect()
}

#[cfg(test)]
mod tests;
