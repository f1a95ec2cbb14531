//! Retry backoff: exponential with full jitter.
//!
//! The wait before retry number `attempt` (0 for the first retry) is drawn
//! uniformly from `[0, min(max, base × 2^attempt)]`: "full jitter" in AWS's
//! comparison ("Exponential Backoff and Jitter", 2015), which spreads the
//! retries of many clients that failed together the most and finishes the
//! work with the fewest calls. Stateless; nothing allocates.

use std::time::Duration;

/// The wait before retry number `attempt` (0 for the first retry): uniform in
/// `[0, min(max, base × 2^attempt)]`, from one draw of `rng`. Saturates
/// instead of overflowing for any `attempt`.
pub fn delay(
    attempt: u32,
    base: Duration,
    max: Duration,
    rng: &mut impl FnMut() -> u64,
) -> Duration {
    let base_ns = base.as_nanos().min(u128::from(u64::MAX)) as u64;
    let max_ns = max.as_nanos().min(u128::from(u64::MAX)) as u64;
    let ceiling = match 1u64.checked_shl(attempt) {
        Some(factor) => base_ns.saturating_mul(factor),
        None => u64::MAX,
    }
    .min(max_ns);
    // (draw × (ceiling + 1)) >> 64: uniform in 0..=ceiling without division.
    let ns = (u128::from(rng()) * (u128::from(ceiling) + 1)) >> 64;
    Duration::from_nanos(ns as u64)
}

#[cfg(test)]
mod tests;
