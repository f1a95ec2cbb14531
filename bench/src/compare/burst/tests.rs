use super::*;

#[test]
fn the_scenario_is_named_burst_and_runs_through_the_one_hop_proxies() {
    assert_eq!(Scenario::parse("burst"), Some(Scenario::Burst));
    assert!(Scenario::Burst.is_one_hop());
    assert!(!Scenario::Burst.is_http2());
}
