//! The open-loop rate scheduler and the latency accounting, sans-I/O.
//!
//! Time is plain nanoseconds on one monotonic clock, passed in by the caller,
//! so the tests below can run a whole load run (including a stalled server)
//! on a simulated clock.
//!
//! Open loop: request `k` of a thread is *intended* to go out at
//! `phase + k / rate`. The event loop sends it as soon as it is due and a
//! connection is free; if every connection is busy, the request waits, and its
//! latency still counts from its intended time. That is what keeps
//! coordinated omission out: a server that stalls for 500 ms does not get to
//! push back the requests a real client population would have sent during the
//! stall; each of them reports the part of the stall it sat through (the
//! correction wrk2 introduced). In closed loop (`rate = 0`) a request is
//! intended when a connection becomes free, which measures service time and
//! maximum throughput instead.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Hands out intended send times.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Nanoseconds between requests; `None` for closed loop. Whole
    /// nanoseconds, so a periodic timer with the same interval fires exactly
    /// at the intended times (the rate is off by at most 1 ns per interval).
    interval: Option<u64>,
    phase: u64,
    /// Index of the next request to hand out.
    next: u64,
    /// No request is intended at or after this time.
    end: u64,
}

impl Schedule {
    /// `rate` requests per second starting at `phase`, none at or after `end`.
    /// A rate of 0 (or less) is closed loop.
    pub fn new(rate: f64, phase: u64, end: u64) -> Self {
        let interval = (rate > 0.0).then(|| ((1e9 / rate).round() as u64).max(1));
        Schedule {
            interval,
            phase,
            next: 0,
            end,
        }
    }

    pub fn is_open_loop(&self) -> bool {
        self.interval.is_some()
    }

    /// Nanoseconds between intended send times (open loop).
    pub fn interval(&self) -> Option<u64> {
        self.interval
    }

    fn time_of(&self, k: u64) -> u64 {
        match self.interval {
            Some(i) => self.phase + k * i,
            None => self.phase,
        }
    }

    /// The intended time of the next request, or `None` once the run's end
    /// is reached. In closed loop, requests are always due (before the end).
    pub fn next_due(&self, now: u64) -> Option<u64> {
        let t = match self.interval {
            Some(_) => self.time_of(self.next),
            None => now.max(self.phase),
        };
        (t < self.end).then_some(t)
    }

    /// Takes the next request if it is due at `now`: returns its intended
    /// send time. Requests missed while no connection was free are handed
    /// out in order, late: the backlog is never dropped.
    pub fn take_due(&mut self, now: u64) -> Option<u64> {
        let t = self.next_due(now)?;
        if t > now {
            return None;
        }
        self.next += 1;
        Some(t)
    }

    /// How many requests are due at `now` and not yet handed out (the
    /// backlog, plus the one just due): what an event loop with that many
    /// idle senders can start at once. Closed loop: 1 until the end (always
    /// one more is due).
    pub fn due(&self, now: u64) -> u64 {
        let Some(i) = self.interval else {
            return u64::from(now < self.end);
        };
        if now < self.phase || self.end <= self.phase {
            return 0;
        }
        let total = (self.end - self.phase).div_ceil(i);
        let by_now = ((now - self.phase) / i + 1).min(total);
        by_now.saturating_sub(self.next)
    }

    /// Requests intended before the end that were never handed out (the
    /// backlog left when the run stopped). Always 0 in closed loop.
    pub fn unsent(&self) -> u64 {
        let Some(i) = self.interval else { return 0 };
        if self.end <= self.phase {
            return 0;
        }
        // Number of k with phase + k*i < end, minus those handed out.
        let total = (self.end - self.phase).div_ceil(i);
        total.saturating_sub(self.next)
    }
}

/// Latency histogram of one thread, in nanoseconds, from intended send time
/// to the last byte of the response.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    /// Responses to requests intended before this are not recorded (warm-up).
    record_from: u64,
}

/// Highest latency tracked: one hour; longer values are clamped.
const MAX_NS: u64 = 3_600_000_000_000;

impl Latency {
    pub fn new(record_from: u64) -> Self {
        // 3 significant digits: 0.1% error at every scale, ~200 KiB.
        let hist = Histogram::new_with_bounds(1, MAX_NS, 3).expect("static bounds are valid");
        Latency { hist, record_from }
    }

    /// Records one response; returns whether it was counted (not warm-up).
    pub fn record(&mut self, intended: u64, done: u64) -> bool {
        if intended < self.record_from {
            return false;
        }
        let ns = done.saturating_sub(intended).clamp(1, MAX_NS);
        // Cannot fail: the value is clamped into the histogram's range.
        let _ = self.hist.record(ns);
        true
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The summary a report prints, in microseconds.
    pub fn summary(&self) -> LatencySummary {
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / 1000.0;
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: self.hist.max() as f64 / 1000.0,
            mean: self.hist.mean() / 1000.0,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[cfg(test)]
mod tests;
