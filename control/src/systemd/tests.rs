use super::*;

#[test]
fn pings_at_half_the_watchdog_period() {
    assert_eq!(
        interval_for(Some(Duration::from_secs(30))),
        Some(Duration::from_secs(15))
    );
}

#[test]
fn no_watchdog_means_no_pings() {
    assert_eq!(interval_for(None), None);
    assert_eq!(interval_for(Some(Duration::ZERO)), None);
}
