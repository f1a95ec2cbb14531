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

#[test]
fn due_counts_the_backlog() {
    let mut s = Schedule::new(1000.0, 0, 5 * MS);
    assert_eq!(s.due(0), 1);
    assert_eq!(s.due(MS - 1), 1);
    assert_eq!(s.due(3 * MS), 4);
    s.take_due(3 * MS);
    assert_eq!(s.due(3 * MS), 3);
    // Nothing at or after the end.
    assert_eq!(s.due(100 * MS), 4);
    let closed = Schedule::new(0.0, 0, 5 * MS);
    assert_eq!((closed.due(1), closed.due(5 * MS)), (1, 0));
}
