use super::*;

fn summary(
    dir: EdgeDirection,
    source: &str,
    subset: &str,
    requests: u64,
    failures: u64,
    ms: u64,
) -> EdgeSummary {
    EdgeSummary {
        direction: dir,
        source: source.into(),
        destination: "api".into(),
        subset: subset.into(),
        protocol: EdgeProtocol::Http,
        requests,
        failures,
        latency: vec![(latency::bucket(ms * 1000) as u16, requests)],
    }
}

const T0: u64 = 1_796_474_440_000;

#[test]
fn summaries_from_several_proxies_merge_and_inbound_reports_do_not_count_twice() {
    let f = Fleet::default();
    let now = Instant::now();
    // Two web proxies report their outbound calls; api's proxy reports the
    // same calls inbound, and one from a caller without a proxy.
    f.record_at(
        "web",
        &[summary(
            EdgeDirection::Outbound,
            "web",
            "version=v1",
            90,
            0,
            2,
        )],
        T0 + 1000,
        now,
    );
    f.record_at(
        "web",
        &[summary(
            EdgeDirection::Outbound,
            "web",
            "version=v1",
            90,
            9,
            20,
        )],
        T0 + 2000,
        now,
    );
    f.record_at(
        "web",
        &[summary(
            EdgeDirection::Outbound,
            "web",
            "version=v2",
            20,
            0,
            2,
        )],
        T0 + 3000,
        now,
    );
    f.record_at(
        "api",
        &[
            summary(EdgeDirection::Inbound, "web", "", 200, 9, 2),
            summary(EdgeDirection::Inbound, "unknown", "", 7, 0, 1),
        ],
        T0 + 4000,
        now,
    );
    let v = f.edges_at(Window::TenSeconds, T0 + 5000, now);
    assert_eq!(v.window, "10s");
    let got: Vec<(&str, &str, u64, u64)> = v
        .edges
        .iter()
        .map(|e| (e.source.as_str(), e.subset.as_str(), e.requests, e.failures))
        .collect();
    assert_eq!(
        got,
        vec![
            ("unknown", "", 7, 0),
            ("web", "version=v1", 180, 9),
            ("web", "version=v2", 20, 0)
        ]
    );
    let v1 = &v.edges[1];
    assert!((v1.success_rate - 0.95).abs() < 1e-9);
    assert!((v1.rps - 18.0).abs() < 1e-9, "{}", v1.rps);
    // Half the calls took 2 ms, half 20 ms (within a bucket's width).
    assert!(
        (1.7..2.3).contains(&v1.p50_ms) || (17.0..23.0).contains(&v1.p50_ms),
        "{}",
        v1.p50_ms
    );
    assert!((17.0..23.0).contains(&v1.p99_ms), "{}", v1.p99_ms);

    let mut prom = String::new();
    f.render_prometheus(&mut prom);
    assert!(prom.contains(
        "coremesh_fleet_edge_requests_total{source=\"web\",destination=\"api\",subset=\"version=v1\",protocol=\"http\"} 180\n"
    ), "{prom}");
    assert!(prom.contains("coremesh_fleet_summaries_total 4\n"));
}

#[test]
fn windows_and_series_use_the_kept_steps() {
    let f = Fleet::default();
    let now = Instant::now();
    for i in 0..12u64 {
        f.record_at(
            "web",
            &[summary(EdgeDirection::Outbound, "web", "", 10, 0, 1)],
            T0 + i * 5000,
            now,
        );
    }
    // 60 s of traffic, the last step 55 s in.
    // The 10 s window holds the steps that overlap it: the current one
    // (from 50 s) and the one before; the rate is over the 16 s they span.
    let ten = f.edges_at(Window::TenSeconds, T0 + 56_000, now);
    assert_eq!(ten.edges[0].requests, 40);
    assert!(
        (ten.edges[0].rps - 2.5).abs() < 1e-9,
        "{}",
        ten.edges[0].rps
    );
    let minute = f.edges_at(Window::OneMinute, T0 + 56_000, now);
    assert_eq!(minute.edges[0].requests, 120);
    let s = f.series("web", "api");
    assert_eq!(s.points.len(), 6);
    assert!(s.points.iter().all(|p| (p.rps - 2.0).abs() < 1e-9));
    assert!(f.series("web", "db").points.is_empty());
}

#[test]
fn history_is_bounded() {
    let f = Fleet::default();
    let now = Instant::now();
    for i in 0..(STEPS as u64 + 20) {
        f.record_at(
            "web",
            &[summary(EdgeDirection::Outbound, "web", "", 1, 0, 1)],
            T0 + i * STEP_MS,
            now,
        );
    }
    assert_eq!(f.lock().steps.len(), STEPS);
    let many: Vec<EdgeSummary> = (0..MAX_EDGES + 5)
        .map(|i| summary(EdgeDirection::Outbound, &format!("s{i}"), "", 1, 0, 1))
        .collect();
    f.record_at("web", &many, T0 + (STEPS as u64 + 30) * STEP_MS, now);
    assert!(f.lock().steps.back().unwrap().edges.len() <= MAX_EDGES);
    assert!(f.lock().dropped >= 5);
}

#[test]
fn windows_parse() {
    assert_eq!(Window::parse("10s"), Some(Window::TenSeconds));
    assert_eq!(Window::parse("1m"), Some(Window::OneMinute));
    assert_eq!(Window::parse("5m"), None);
}
