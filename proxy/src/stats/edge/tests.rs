use super::*;

fn web_api(subset: &str) -> EdgeRef<'_> {
    EdgeRef {
        dir: Direction::Outbound,
        source: "web",
        destination: "api",
        route: "api-canary#1",
        subset,
        protocol: EdgeProtocol::Http,
    }
}

#[test]
fn requests_are_counted_per_edge_and_status_class() {
    let mut s = EdgeStats::default();
    for _ in 0..9 {
        s.record(
            &web_api("version=v1"),
            Outcome::Http(200),
            Duration::from_millis(2),
            10,
            20,
        );
    }
    s.record(
        &web_api("version=v2"),
        Outcome::Http(503),
        Duration::from_millis(30),
        10,
        20,
    );
    let mut out = String::new();
    render([&s.snapshot()], &mut out);
    assert!(out.contains(
        "coremesh_edge_requests_total{direction=\"outbound\",source=\"web\",destination=\"api\",route=\"api-canary#1\",subset=\"version=v1\",protocol=\"http\",status=\"2xx\"} 9\n"
    ), "{out}");
    assert!(out.contains("subset=\"version=v2\",protocol=\"http\",status=\"5xx\"} 1\n"));
    assert!(out.contains("coremesh_edge_request_duration_seconds_bucket{direction=\"outbound\",source=\"web\",destination=\"api\",route=\"api-canary#1\",subset=\"version=v1\",protocol=\"http\",le=\"0.0025\"} 9\n"), "{out}");
    assert!(out.contains("coremesh_edge_request_bytes_total{direction=\"outbound\",source=\"web\",destination=\"api\",route=\"api-canary#1\",subset=\"version=v1\",protocol=\"http\"} 90\n"));
    assert!(out.contains("coremesh_edge_overflow_total 0\n"));
}

#[test]
fn grpc_and_tcp_edges_use_their_own_statuses() {
    let mut s = EdgeStats::default();
    let grpc = EdgeRef {
        protocol: EdgeProtocol::Grpc,
        ..web_api("")
    };
    s.record(
        &grpc,
        Outcome::Grpc(Some(0)),
        Duration::from_millis(1),
        0,
        0,
    );
    s.record(
        &grpc,
        Outcome::Grpc(Some(14)),
        Duration::from_millis(1),
        0,
        0,
    );
    s.record(&grpc, Outcome::Grpc(None), Duration::from_millis(1), 0, 0);
    let db = EdgeRef {
        dir: Direction::Outbound,
        source: "api",
        destination: "db",
        route: "",
        subset: "",
        protocol: EdgeProtocol::Tcp,
    };
    s.record(&db, Outcome::Tcp(true), Duration::from_secs(3), 100, 200);
    s.record(&db, Outcome::Tcp(false), Duration::ZERO, 0, 0);
    let mut out = String::new();
    render([&s.snapshot()], &mut out);
    for status in ["0", "14", "none"] {
        assert!(
            out.contains(&format!("protocol=\"grpc\",status=\"{status}\"}} 1\n")),
            "{out}"
        );
    }
    assert!(out.contains("coremesh_edge_tcp_connections_total{direction=\"outbound\",source=\"api\",destination=\"db\",subset=\"\",protocol=\"tcp\",result=\"ok\"} 1\n"), "{out}");
    assert!(out.contains("result=\"failed\"} 1\n"));
    assert!(out.contains("coremesh_edge_tcp_sent_bytes_total{direction=\"outbound\",source=\"api\",destination=\"db\",subset=\"\",protocol=\"tcp\"} 100\n"));

    let mut st = SummaryState::default();
    let sums = st.delta([&s.snapshot()]);
    let g = sums
        .iter()
        .find(|e| e.protocol == EdgeProtocol::Grpc)
        .unwrap();
    assert_eq!((g.requests, g.failures), (3, 2));
    let t = sums
        .iter()
        .find(|e| e.protocol == EdgeProtocol::Tcp)
        .unwrap();
    assert_eq!((t.requests, t.failures), (2, 1));
}

#[test]
fn edges_past_the_cap_go_to_the_overflow_edge() {
    let mut s = EdgeStats::default();
    let names: Vec<String> = (0..MAX_EDGES + 10).map(|i| format!("svc{i}")).collect();
    for n in &names {
        let e = EdgeRef {
            destination: n,
            ..web_api("")
        };
        s.record(&e, Outcome::Http(200), Duration::from_millis(1), 0, 0);
    }
    assert_eq!(s.edges.len(), MAX_EDGES + 1);
    let mut out = String::new();
    render([&s.snapshot()], &mut out);
    assert!(out.contains("coremesh_edge_overflow_total 10\n"));
    assert!(out.contains("source=\"other\",destination=\"other\""));
}

#[test]
fn summaries_carry_what_changed_since_the_last_one_merged_over_cores() {
    let mut a = EdgeStats::default();
    let mut b = EdgeStats::default();
    for _ in 0..90 {
        a.record(
            &web_api("version=v1"),
            Outcome::Http(200),
            Duration::from_millis(1),
            0,
            0,
        );
    }
    for _ in 0..10 {
        b.record(
            &web_api("version=v1"),
            Outcome::Http(500),
            Duration::from_millis(8),
            0,
            0,
        );
    }
    let mut st = SummaryState::default();
    let first = st.delta([&a.snapshot(), &b.snapshot()]);
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].requests, first[0].failures), (100, 10));
    let p50 = latency::quantile_ms(&first[0].latency, 0.5).unwrap();
    let p99 = latency::quantile_ms(&first[0].latency, 0.99).unwrap();
    assert!((0.9..1.2).contains(&p50), "{p50}");
    assert!((7.0..9.0).contains(&p99), "{p99}");
    // Nothing new: nothing sent.
    assert!(st.delta([&a.snapshot(), &b.snapshot()]).is_empty());
    a.record(
        &web_api("version=v1"),
        Outcome::Http(200),
        Duration::from_millis(1),
        0,
        0,
    );
    let next = st.delta([&a.snapshot(), &b.snapshot()]);
    assert_eq!((next[0].requests, next[0].failures), (1, 0));
    assert_eq!(next[0].latency.iter().map(|(_, n)| n).sum::<u64>(), 1);
}
