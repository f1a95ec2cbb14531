use super::*;

#[test]
fn one_line_per_interval_with_the_count_left_out() {
    let t0 = Instant::now();
    let s = |ms: u64| t0 + Duration::from_millis(ms);
    let mut r = LogRate::new(Duration::from_secs(5));
    assert_eq!(r.hit(s(0)), Some(0));
    // 20 a second for 5 s: all counted, none logged.
    for i in 1..100 {
        assert_eq!(r.hit(s(i * 50)), None);
    }
    assert_eq!(r.hit(s(5_000)), Some(99));
    assert_eq!(r.hit(s(5_001)), None);
    // A quiet spell: the next occurrence logs at once.
    assert_eq!(r.hit(s(60_000)), Some(1));
    assert_eq!(r.hit(s(60_000)), None);
}

#[test]
fn a_clock_that_goes_back_never_logs_twice_in_a_row() {
    let t0 = Instant::now() + Duration::from_secs(10);
    let mut r = LogRate::new(Duration::from_secs(5));
    assert_eq!(r.hit(t0), Some(0));
    assert_eq!(r.hit(t0 - Duration::from_secs(3)), None);
}
