//! Fault injection (`faults: { abort: { percent, status }, delay: { percent,
//! duration } }`), for testing how callers cope.
//!
//! Percentages are resolved to basis points (hundredths of a percent, so
//! 0.01% is the finest step) when the policy is compiled; per request, each
//! configured fault takes one draw uniform in `0..10000` and fires when the
//! draw is below its basis points, so over many requests the share that
//! fires is the configured percentage (the mapping of a 64-bit draw onto
//! 10 000 values is off by at most 10⁻¹⁵). Abort and delay draw
//! independently, as in Envoy and Istio: with both, a request can be delayed
//! and then aborted.

use std::time::Duration;

/// What to do to one request: wait `delay` first, then answer `abort`
/// instead of forwarding. Both `None`: forward as usual.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultAction {
    pub abort: Option<u16>,
    pub delay: Option<Duration>,
}

/// A route's or service's faults, compiled. Built once per snapshot (on the
/// agent, inside the compiled policy); [`Self::decide`] per request on the
/// shard. Costs nothing (not even a draw) when no fault is configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    abort_bp: u16,
    abort_status: u16,
    delay_bp: u16,
    delay: Duration,
}

impl Faults {
    /// `abort_percent`% of requests answered with `abort_status`,
    /// `delay_percent`% delayed by `delay`. Percentages are clamped to
    /// 0..=100 and rounded to 0.01.
    pub fn new(abort_percent: f64, abort_status: u16, delay_percent: f64, delay: Duration) -> Self {
        Faults {
            abort_bp: basis_points(abort_percent),
            abort_status,
            delay_bp: basis_points(delay_percent),
            delay,
        }
    }

    /// Whether any fault can fire (the shard skips `decide` otherwise).
    pub fn is_empty(&self) -> bool {
        self.abort_bp == 0 && self.delay_bp == 0
    }

    /// The faults for one request. Shard, per request that matches the policy,
    /// with its random numbers.
    pub fn decide(&self, rng: &mut impl FnMut() -> u64) -> FaultAction {
        FaultAction {
            abort: (self.abort_bp > 0 && draw(rng) < self.abort_bp).then_some(self.abort_status),
            delay: (self.delay_bp > 0 && draw(rng) < self.delay_bp).then_some(self.delay),
        }
    }
}

/// A percentage as basis points, clamped to 0..=10000 (NaN: 0).
pub fn basis_points(percent: f64) -> u16 {
    if percent.is_nan() {
        return 0;
    }
    (percent.clamp(0.0, 100.0) * 100.0).round() as u16
}

/// A draw uniform in 0..10000 (multiply-shift).
fn draw(rng: &mut impl FnMut() -> u64) -> u16 {
    ((u128::from(rng()) * 10_000) >> 64) as u16
}

#[cfg(test)]
mod tests;
