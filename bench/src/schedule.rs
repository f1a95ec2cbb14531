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
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    #[test]
    fn open_loop_spacing_and_count() {
        let mut s = Schedule::new(20_000.0, 7, 7 + S);
        let mut times = Vec::new();
        while let Some(t) = s.take_due(u64::MAX) {
            times.push(t);
        }
        assert_eq!(times.len(), 20_000);
        assert_eq!(times[0], 7);
        assert!(times.windows(2).all(|w| w[1] - w[0] == 50_000));
        assert_eq!(s.unsent(), 0);
        assert_eq!(s.next_due(u64::MAX), None);
    }

    #[test]
    fn nothing_is_handed_out_early_and_the_backlog_is_kept() {
        let mut s = Schedule::new(1000.0, 0, S);
        assert_eq!(s.take_due(0), Some(0));
        assert_eq!(s.take_due(999_999), None);
        assert_eq!(s.next_due(999_999), Some(MS));
        // Nobody asked for 10 ms (all connections busy): ten requests are
        // now overdue and come out in order with their original times.
        let late: Vec<_> = std::iter::from_fn(|| s.take_due(10 * MS + 1)).collect();
        assert_eq!(late, (1..=10).map(|k| k * MS).collect::<Vec<_>>());
        assert_eq!(s.unsent(), 989);
    }

    #[test]
    fn fractional_rates_stay_within_a_nanosecond_per_request() {
        // 3 requests per second: the interval rounds to 333_333_333 ns, so
        // request k is at most k ns early, and 1000 s hold 3000 of them
        // (plus one that the 1 us of accumulated rounding lets in).
        let mut s = Schedule::new(3.0, 0, 1000 * S);
        let times: Vec<u64> = std::iter::from_fn(|| s.take_due(u64::MAX)).collect();
        assert!((3000..=3001).contains(&times.len()), "{}", times.len());
        let exact = |k: u64| k * S / 3;
        assert!(times
            .iter()
            .enumerate()
            .all(|(k, &t)| exact(k as u64) - t <= k as u64));
    }

    #[test]
    fn closed_loop_is_due_whenever_asked_until_the_end() {
        let mut s = Schedule::new(0.0, 5, 100);
        assert!(!s.is_open_loop());
        assert_eq!(s.take_due(1), None, "not before the start");
        assert_eq!(s.take_due(10), Some(10));
        assert_eq!(s.take_due(10), Some(10));
        assert_eq!(s.take_due(100), None);
        assert_eq!(s.unsent(), 0);
    }

    #[test]
    fn warm_up_is_not_recorded() {
        let mut l = Latency::new(S);
        assert!(!l.record(S - 1, S + MS));
        assert!(l.record(S, S + MS));
        assert_eq!(l.count(), 1);
        let s = l.summary();
        assert!((s.p50 - 1000.0).abs() < 1.0, "{s:?}");
    }

    /// A discrete-event run of the real scheduler and accounting against a
    /// simulated server with one connection, using the event loop's rule:
    /// send when a request is due and the connection is free.
    ///
    /// The server answers in 100 us, except that it freezes from 1.0 s to
    /// 1.5 s: a request in service then finishes at 1.5 s + 100 us.
    /// Returns (corrected, uncorrected) latencies: from the intended time,
    /// and from the actual send time as a closed-loop tool would measure.
    fn stalled_run(rate: f64) -> (Latency, Latency, u64) {
        let service = 100_000;
        let (stall_from, stall_to) = (S, S + 500 * MS);
        let end = 3 * S;
        let mut sched = Schedule::new(rate, 0, end);
        let mut corrected = Latency::new(0);
        let mut naive = Latency::new(0);
        let mut now = 0;
        while let Some(due) = sched.next_due(now) {
            now = now.max(due);
            let intended = sched.take_due(now).expect("due");
            let sent = now;
            let mut done = sent + service;
            if done > stall_from && sent < stall_to {
                done = done.max(stall_to + service);
            }
            corrected.record(intended, done);
            naive.record(sent, done);
            // The single connection is busy until the response is back.
            now = done;
        }
        (corrected, naive, sched.unsent())
    }

    #[test]
    fn a_stall_shows_in_corrected_latency_and_hides_in_naive_latency() {
        let (corrected, naive, unsent) = stalled_run(1000.0);
        assert_eq!(unsent, 0, "the backlog after the stall is caught up");
        assert_eq!(corrected.count(), 3000);
        assert_eq!(naive.count(), 3000);

        let c = corrected.summary();
        let n = naive.summary();
        // ~500 of 3000 requests (17%) were due during the stall; they waited
        // on average ~250 ms. Corrected p90 and p99 see it.
        assert!(c.p90 > 100_000.0, "corrected {c:?}");
        assert!(c.p99 > 400_000.0, "corrected {c:?}");
        assert!(c.max >= 500_000.0 && c.max < 502_000.0, "corrected {c:?}");
        // The naive view has one slow request out of 3000: its p99 is the
        // healthy service time, the stall is only in the max.
        assert!(n.p99 < 200.0, "naive {n:?}");
        assert!(n.max >= 500_000.0, "naive {n:?}");
    }

    #[test]
    fn merging_threads_adds_counts() {
        let mut a = Latency::new(0);
        let mut b = Latency::new(0);
        a.record(0, MS);
        b.record(0, 3 * MS);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert!((a.summary().max - 3000.0).abs() < 5.0);
    }
}
