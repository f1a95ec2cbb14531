use super::*;

fn eps(n: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([10, 1, 0, i as u8], 80)))
        .collect()
}

fn fail(n: u64) -> Outcomes {
    Outcomes {
        successes: 0,
        failures: n,
        trailing_failures: n,
    }
}

const OK: Outcomes = Outcomes {
    successes: 1,
    failures: 0,
    trailing_failures: 0,
};

#[test]
fn consecutive_failures_across_shards_eject() {
    let t = Instant::now();
    let e = eps(4);
    let mut d = OutlierDetector::new();
    d.configure(
        "api",
        OutlierConfig::new(5, Duration::from_secs(30), 50),
        &e,
        t,
    );
    assert!(d.take_changes().is_empty());
    // Shard 0: 3 failures, shard 1: a success then 2 failures → streak 2.
    d.record("api", e[0], fail(3), t);
    d.record(
        "api",
        e[0],
        Outcomes {
            successes: 1,
            failures: 2,
            trailing_failures: 2,
        },
        t,
    );
    assert!(d.ejected("api").unwrap().is_empty());
    d.record("api", e[0], fail(2), t);
    assert!(d.ejected("api").unwrap().is_empty());
    d.record("api", e[0], fail(1), t);
    assert_eq!(d.ejected("api").unwrap().as_slice(), &[e[0]]);
    let changes = d.take_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(&*changes[0].0, "api");
    assert!(changes[0].1.contains(e[0]));
    assert!(d.take_changes().is_empty(), "only changes are broadcast");
    // Unknown services and endpoints are ignored.
    d.record("nope", e[0], fail(9), t);
    d.record("api", SocketAddr::from(([1, 1, 1, 1], 1)), fail(9), t);
    assert!(d.take_changes().is_empty());
}

#[test]
fn ejection_backs_off_and_returns() {
    let t0 = Instant::now();
    let base = Duration::from_secs(30);
    let e = eps(2);
    let mut d = OutlierDetector::new();
    d.configure("api", OutlierConfig::new(5, base, 50), &e, t0);
    let mut now = t0;
    for n in 1..=12u32 {
        d.record("api", e[1], fail(5), now);
        assert!(d.ejected("api").unwrap().contains(e[1]), "ejection {n}");
        let length = (base * n).min(DEFAULT_MAX_EJECTION);
        assert_eq!(d.next_deadline(), Some(now + length));
        d.tick(now + length - Duration::from_millis(1));
        assert!(d.ejected("api").unwrap().contains(e[1]));
        now += length;
        d.tick(now);
        assert!(
            d.ejected("api").unwrap().is_empty(),
            "back after {length:?}"
        );
    }
    assert_eq!(d.times_ejected("api", e[1]), 12);
    // In service for 5 × base: the multiplier drops by 5.
    now += base * 5;
    d.record("api", e[1], fail(5), now);
    assert_eq!(d.times_ejected("api", e[1]), 8);
    // A success resets the streak.
    now += DEFAULT_MAX_EJECTION;
    d.tick(now);
    d.record("api", e[1], fail(4), now);
    d.record("api", e[1], OK, now);
    d.record("api", e[1], fail(4), now);
    assert!(d.ejected("api").unwrap().is_empty());
}

#[test]
fn max_ejected_percent_bounds_ejections() {
    let t = Instant::now();
    let e = eps(10);
    let mut d = OutlierDetector::new();
    d.configure(
        "api",
        OutlierConfig::new(1, Duration::from_secs(10), 30),
        &e,
        t,
    );
    for a in &e {
        d.record("api", *a, fail(1), t);
    }
    assert_eq!(d.ejected("api").unwrap().len(), 3);
    // The quota frees up when the first ones return; the waiting ones
    // (still failing) are ejected at that tick.
    d.tick(t + Duration::from_secs(10));
    let now_ejected = d.ejected("api").unwrap().clone();
    assert_eq!(now_ejected.len(), 3);
    assert!(!now_ejected.contains(e[0]));
    // 100% never ejects the last endpoint; 1 endpoint is never ejected.
    let mut d = OutlierDetector::new();
    d.configure(
        "two",
        OutlierConfig::new(1, Duration::from_secs(10), 100),
        &e[..2],
        t,
    );
    d.configure(
        "one",
        OutlierConfig::new(1, Duration::from_secs(10), 100),
        &e[..1],
        t,
    );
    d.record("two", e[0], fail(1), t);
    d.record("two", e[1], fail(1), t);
    d.record("one", e[0], fail(1), t);
    assert_eq!(d.ejected("two").unwrap().len(), 1);
    assert!(d.ejected("one").unwrap().is_empty());
    // Below 100 / n percent one endpoint may still go (as in Envoy),
    // but not two; 0% ejects nothing.
    let mut d = OutlierDetector::new();
    d.configure(
        "api",
        OutlierConfig::new(1, Duration::from_secs(10), 10),
        &e[..5],
        t,
    );
    d.record("api", e[0], fail(9), t);
    d.record("api", e[1], fail(9), t);
    assert_eq!(d.ejected("api").unwrap().len(), 1);
    let mut d = OutlierDetector::new();
    d.configure(
        "api",
        OutlierConfig::new(1, Duration::from_secs(10), 0),
        &e[..5],
        t,
    );
    d.record("api", e[0], fail(9), t);
    assert!(d.ejected("api").unwrap().is_empty());
}

#[test]
fn shrinking_endpoint_set_keeps_the_bound() {
    let t = Instant::now();
    let e = eps(10);
    let mut d = OutlierDetector::new();
    let c = OutlierConfig::new(1, Duration::from_secs(10), 50);
    d.configure("api", c, &e, t);
    for (k, a) in e.iter().enumerate().take(5) {
        d.record("api", *a, fail(1), t + Duration::from_secs(k as u64));
    }
    assert_eq!(d.ejected("api").unwrap().len(), 5);
    d.take_changes();
    // Four endpoints left, two of them ejected (e[3], e[4]) → quota 2 holds.
    d.configure("api", c, &e[3..7], t + Duration::from_secs(5));
    assert_eq!(d.ejected("api").unwrap().as_slice(), &[e[3], e[4]]);
    assert_eq!(d.take_changes().len(), 1);
    // Two endpoints, both ejected → quota 1: the one ending first returns.
    d.configure("api", c, &e[3..5], t + Duration::from_secs(5));
    assert_eq!(d.ejected("api").unwrap().as_slice(), &[e[4]]);
    d.retain_services(|_| false);
    assert!(d.ejected("api").is_none());
}
