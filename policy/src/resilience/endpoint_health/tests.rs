use super::*;

#[test]
fn thresholds_in_both_directions() {
    let e: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::from(([10, 2, 0, i], 80)))
        .collect();
    let mut h = HealthTracker::new();
    let c = HealthConfig {
        unhealthy_threshold: 3,
        healthy_threshold: 2,
    };
    h.configure("api", c, &e);
    assert!(h.take_changes().is_empty(), "new endpoints start healthy");
    assert!(!h.record("api", e[0], false));
    assert!(!h.record("api", e[0], false));
    assert!(!h.record("api", e[0], true), "a success breaks the run");
    assert!(!h.record("api", e[0], false));
    assert!(!h.record("api", e[0], false));
    assert!(h.record("api", e[0], false));
    assert!(!h.is_healthy("api", e[0]));
    let changes = h.take_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].1.as_slice(), &[e[0]]);
    assert!(h.take_changes().is_empty());
    assert!(!h.record("api", e[0], true));
    assert!(!h.record("api", e[0], false));
    assert!(!h.record("api", e[0], true));
    assert!(h.record("api", e[0], true));
    assert!(h.unhealthy("api").unwrap().is_empty());
    assert_eq!(h.take_changes().len(), 1);
    // A removed unhealthy endpoint leaves the set (a change); a new one
    // is healthy.
    for _ in 0..3 {
        h.record("api", e[1], false);
    }
    h.take_changes();
    h.configure("api", c, &[e[0], e[2]]);
    assert_eq!(h.take_changes()[0].1.len(), 0);
    assert!(h.is_healthy("api", e[1]));
    assert!(!h.record("other", e[0], false));
}
