use super::*;
use crate::resilience::test_rng;

#[test]
fn percentages_hold_over_many_draws() {
    let mut rng = test_rng(99);
    for (abort, delay) in [(5.0, 10.0), (50.0, 0.5), (0.0, 100.0), (33.33, 66.67)] {
        let f = Faults::new(abort, 503, delay, Duration::from_millis(100));
        let n = 100_000;
        let (mut aborts, mut delays) = (0u32, 0u32);
        for _ in 0..n {
            let a = f.decide(&mut rng);
            aborts += u32::from(a.abort == Some(503));
            delays += u32::from(a.delay == Some(Duration::from_millis(100)));
        }
        let pa = f64::from(aborts) * 100.0 / f64::from(n);
        let pd = f64::from(delays) * 100.0 / f64::from(n);
        assert!((pa - abort).abs() < 1.0, "abort {abort}%: {pa}%");
        assert!((pd - delay).abs() < 1.0, "delay {delay}%: {pd}%");
    }
}

#[test]
fn edges() {
    let mut rng = test_rng(1);
    assert!(Faults::default().is_empty());
    assert_eq!(Faults::default().decide(&mut rng), FaultAction::default());
    assert_eq!(basis_points(0.01), 1);
    assert_eq!(basis_points(150.0), 10_000);
    assert_eq!(basis_points(-1.0), 0);
    assert_eq!(basis_points(f64::NAN), 0);
    // 100% always fires, whatever the draw; 0.01% fires only on the lowest.
    let all = Faults::new(100.0, 500, 0.0, Duration::ZERO).decide(&mut || u64::MAX);
    assert_eq!(all.abort, Some(500));
    let rare = Faults::new(0.01, 500, 0.0, Duration::ZERO);
    assert_eq!(
        rare.decide(&mut || (u64::MAX / 10_000) - 1).abort,
        Some(500)
    );
    assert_eq!(rare.decide(&mut || (u64::MAX / 10_000) + 2).abort, None);
}
