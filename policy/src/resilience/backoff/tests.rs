use super::*;
use crate::resilience::test_rng;

#[test]
fn grows_exponentially_up_to_the_max_with_full_jitter() {
    let mut rng = test_rng(11);
    // Envoy's defaults: 25 ms base, 10 x base maximum.
    let (base, max) = (Duration::from_millis(25), Duration::from_millis(250));
    for attempt in 0..6u32 {
        let ceiling = (base * 2u32.pow(attempt)).min(max);
        let draws: Vec<Duration> = (0..4000)
            .map(|_| delay(attempt, base, max, &mut rng))
            .collect();
        assert!(draws.iter().all(|d| *d <= ceiling));
        let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
        // Uniform on [0, ceiling]: mean ceiling / 2, within 5%.
        let half = ceiling / 2;
        assert!(
            mean > half * 95 / 100 && mean < half * 105 / 100,
            "{attempt}: {mean:?}"
        );
        assert!(
            draws.iter().any(|d| *d < ceiling / 10),
            "full jitter reaches near 0"
        );
    }
}

#[test]
fn extremes() {
    let base = Duration::from_millis(25);
    let max = Duration::from_secs(1);
    assert_eq!(delay(500, base, max, &mut || u64::MAX), max);
    assert_eq!(delay(0, base, max, &mut || 0), Duration::ZERO);
    assert_eq!(
        delay(3, Duration::ZERO, max, &mut || u64::MAX),
        Duration::ZERO
    );
    let big = delay(63, Duration::MAX, Duration::MAX, &mut || u64::MAX);
    assert!(big > Duration::from_secs(1 << 33));
}
