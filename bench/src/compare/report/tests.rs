use super::*;
use crate::load::Errors;

fn s(round: usize, target: &str, cpu: f64) -> Sample {
    Sample {
        round,
        scenario: Scenario::Small,
        target: target.into(),
        target_rate: 0.0,
        achieved_rps: 1000.0 * round as f64,
        responses_total: 10,
        unsent: 0,
        latency_us: Default::default(),
        errors: Errors::default(),
        proxy_cpu_us_per_req: Some(cpu),
        proxy_user_us_per_req: None,
        proxy_sys_us_per_req: None,
        proxy_context_switches_per_req: None,
        tcp_segments_per_req: None,
        proxy_syscalls_per_req: None,
        proxy_cores_used: Some(1.0),
        generator_cores_used: 0.5,
        generator_us_per_req: 1.0,
        origin_cores_used: 0.5,
    }
}

#[test]
fn policy_cost_against_plain_plus_five_percent_and_the_band() {
    // Twin 2% off in plain, 1% in full: band 2%, limit 1.07.
    let c = policy_cost((10.0, Some(10.2)), (10.6, Some(10.5)));
    assert!((c.band - 0.02).abs() < 1e-9, "{c:?}");
    assert!((c.limit - 1.07).abs() < 1e-9, "{c:?}");
    assert!((c.ratio - 1.06).abs() < 1e-9 && c.met, "{c:?}");
    assert!((c.ratio_aa.unwrap() - 10.5 / 10.2).abs() < 1e-9);
    let c = policy_cost((10.0, Some(10.0)), (10.8, Some(10.8)));
    assert!(!c.met && c.band == 0.0, "{c:?}");
    // Without the twin the band is 0.
    let c = policy_cost((10.0, None), (10.4, None));
    assert!(c.met && c.ratio_aa.is_none() && c.band == 0.0);
    // Cheaper than plain is met.
    assert!(policy_cost((10.0, Some(9.9)), (9.0, Some(9.1))).met);
}

#[test]
fn mesh_verdict_against_the_best_peer() {
    let peers = vec![("nginx".to_string(), 40.0), ("haproxy".to_string(), 30.0)];
    let v = mesh_verdict(24.0, Some(24.6), &peers).unwrap();
    assert_eq!(v.best_peer, "haproxy");
    assert!((v.ratio - 0.8).abs() < 1e-9 && v.met && !v.aim_met, "{v:?}");
    assert!((v.band.unwrap() - 0.025).abs() < 1e-9);
    let v = mesh_verdict(28.0, None, &peers).unwrap();
    assert!(!v.met && v.band.is_none(), "{v:?}");
    assert!(mesh_verdict(20.0, None, &peers).unwrap().aim_met);
    assert!(mesh_verdict(20.0, None, &[]).is_none());
}

#[test]
fn medians() {
    assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    assert!(median(&mut []).is_nan());
}

#[test]
fn ratios_against_coremesh() {
    let samples = vec![
        s(1, COREMESH, 10.0),
        s(2, COREMESH, 12.0),
        s(3, COREMESH, 11.0),
        s(1, "nginx", 15.0),
        s(2, "nginx", 17.0),
        s(3, "nginx", 16.5),
    ];
    let sum = summarize(&samples, &[]);
    let n = sum
        .iter()
        .find(|x| x.target == "nginx" && x.metric == "proxy_cpu_us_per_req")
        .unwrap();
    assert_eq!((n.median, n.min, n.max, n.n), (16.5, 15.0, 17.0, 3));
    assert!((n.ratio_vs_coremesh.unwrap() - 1.5).abs() < 1e-9);
    let c = sum
        .iter()
        .find(|x| x.target == COREMESH && x.metric == "rps")
        .unwrap();
    assert_eq!(c.ratio_vs_coremesh, Some(1.0));
}

#[test]
fn the_cpu_split_shows_user_and_kernel_medians() {
    let mut samples = Vec::new();
    for (round, (u, k)) in [(3.0, 12.0), (4.0, 16.0), (5.0, 20.0)]
        .into_iter()
        .enumerate()
    {
        let mut x = s(round + 1, COREMESH, u + k);
        x.proxy_user_us_per_req = Some(u);
        x.proxy_sys_us_per_req = Some(k);
        samples.push(x);
    }
    // A target from results written before the split has no cell.
    samples.push(s(1, "nginx", 20.0));
    let r = results(samples);
    let (cm, ng) = (COREMESH.to_string(), "nginx".to_string());
    let md = cpu_split(&r, &[&cm, &ng]);
    assert!(md.contains("| proxy | small |"), "{md}");
    assert!(
        md.contains("| coremesh | 4.00 / 16.00 (80% kernel) |"),
        "{md}"
    );
    assert!(md.contains("| nginx | - |"), "{md}");
    assert_eq!(cpu_split(&r, &[]), "");
}

/// Results of `samples` with their summary, for the report's tables.
fn results(samples: Vec<Sample>) -> Results {
    let summary = summarize(&samples, &[]);
    Results {
        command: String::new(),
        machine: String::new(),
        started_at: 0,
        proxy_cores: "1".into(),
        load_cores: "0".into(),
        rounds: 3,
        duration_s: 1.0,
        warmup_s: 0.0,
        connections: 1,
        idle_connections: 0,
        fixed_rate: 0.0,
        mtls_fixed_rate: 0.0,
        h2_fixed_rate: 0.0,
        grpc_fixed_rate: 0.0,
        h2_connections: 8,
        h2_streams: 16,
        targets: Vec::new(),
        notes: Vec::new(),
        samples,
        idle: Vec::new(),
        summary,
    }
}

#[test]
fn kernel_work_shows_segments_and_wake_ups() {
    let mut samples = Vec::new();
    for round in 1..=3 {
        let mut d = s(round, DIRECT, 0.0);
        d.proxy_cpu_us_per_req = None;
        d.tcp_segments_per_req = Some(2.0);
        samples.push(d);
        let mut c = s(round, COREMESH, 10.0);
        c.tcp_segments_per_req = Some(4.0 + round as f64 / 100.0);
        c.proxy_context_switches_per_req = Some(0.1 * round as f64);
        samples.push(c);
    }
    // Results written before these counters have no cell.
    samples.push(s(1, "nginx", 20.0));
    let r = results(samples);
    let order = [
        DIRECT.to_string(),
        COREMESH.to_string(),
        "nginx".to_string(),
    ];
    let md = kernel_work(&r, &order);
    assert!(md.contains("| target | small |"), "{md}");
    assert!(md.contains("| direct | 2.00 / - |"), "{md}");
    assert!(md.contains("| coremesh | 4.02 / 0.20 |"), "{md}");
    assert!(md.contains("| nginx | - |"), "{md}");

    let old = results(vec![s(1, "nginx", 20.0)]);
    assert_eq!(kernel_work(&old, &order), "");
}

/// coremesh's unix pair against the best TCP peer pair (0.75x) and the
/// best unix peer pair (0.9x); coremesh's own pairs are never peers.
#[test]
fn app_unix_verdict_against_tcp_and_unix_peers() {
    let peers = vec![
        ("nginx".to_string(), 40.0),
        ("haproxy".to_string(), 36.0),
        ("nginx-unix".to_string(), 33.0),
        ("haproxy-unix".to_string(), 30.0),
    ];
    let v = app_unix_verdict(26.0, &peers);
    let tcp = v.vs_tcp.unwrap();
    assert_eq!(tcp.best_peer, "haproxy");
    assert!((tcp.ratio - 26.0 / 36.0).abs() < 1e-9 && tcp.met, "{tcp:?}");
    let unix = v.vs_unix.unwrap();
    assert_eq!(unix.best_peer, "haproxy-unix");
    assert!(
        (unix.ratio - 26.0 / 30.0).abs() < 1e-9 && unix.met,
        "{unix:?}"
    );
    let v = app_unix_verdict(28.0, &peers);
    assert!(!v.vs_tcp.unwrap().met && !v.vs_unix.unwrap().met);
    let v = app_unix_verdict(20.0, &peers[..2]);
    assert!(v.vs_tcp.unwrap().met && v.vs_unix.is_none());
}

/// The app-unix table puts each unix pair beside its TCP twin with the
/// segments it saves, and the TCP mesh-hop verdict ignores unix pairs.
#[test]
fn app_unix_table_and_targets() {
    let mut samples = Vec::new();
    let pairs = [
        (DIRECT, 0.0, 2.0),
        (COREMESH, 30.0, 6.0),
        ("haproxy", 40.0, 6.0),
        ("coremesh-unix", 25.0, 4.0),
        ("haproxy-unix", 32.0, 4.0),
    ];
    for round in 1..=3 {
        for (t, cpu, segs) in pairs {
            let mut x = s(round, t, cpu);
            x.scenario = Scenario::Mtls;
            x.tcp_segments_per_req = Some(segs);
            x.proxy_context_switches_per_req = Some(1.0);
            x.proxy_syscalls_per_req = (t != DIRECT).then_some(8.0);
            if t == DIRECT {
                x.proxy_cpu_us_per_req = None;
            }
            samples.push(x);
        }
    }
    let r = results(samples);
    let md = app_unix_md(&r);
    assert!(
        md.contains("| coremesh-unix | 25.00 (25.00–25.00) **0.83x** | 0.83x | "),
        "{md}"
    );
    assert!(md.contains("| 4.00 (2.00) | 1.00 | 8.00 |"), "{md}");
    assert!(
        md.contains("| haproxy-unix | 32.00 (32.00–32.00) **1.07x** | 0.80x | "),
        "{md}"
    );
    assert!(
        md.contains("best TCP peer haproxy 40.00 us = **0.62x** (at most 0.75x: met)"),
        "{md}"
    );
    assert!(
        md.contains("best unix peer haproxy-unix 32.00 us = **0.78x** (at most 0.9x: met)"),
        "{md}"
    );
    // The TCP verdict still compares coremesh with haproxy, not haproxy-unix.
    let mesh = mtls_md(&r);
    assert!(
        mesh.contains("coremesh 30.00 us / haproxy 40.00 us = **0.75x**"),
        "{mesh}"
    );
    // Kernel work shows the system calls when counted.
    let order = target_order(&r);
    let k = kernel_work(&r, &order);
    assert!(k.contains("/ proxy system calls"), "{k}");
    assert!(k.contains("| coremesh-unix | 4.00 / 1.00 / 8.00 |"), "{k}");
    assert!(k.contains("| direct | 2.00 / 1.00 / - |"), "{k}");
    // Without unix pairs there is no table.
    let tcp_only = results(
        r.samples
            .iter()
            .filter(|s| !is_app_unix(&s.target))
            .cloned()
            .collect(),
    );
    assert_eq!(app_unix_md(&tcp_only), "");
}

#[test]
fn http2_tables_and_issue_14_targets() {
    let mut samples = Vec::new();
    for round in 1..=3 {
        for (t, cpu, p99) in [
            (DIRECT, None, 100.0),
            (COREMESH, Some(10.0), 300.0),
            ("coremesh#2", Some(10.5), 310.0),
            ("nginx", Some(20.0), 250.0),
            ("haproxy", Some(15.0), 400.0),
        ] {
            for sc in [Scenario::H2, Scenario::H2Rate] {
                let mut x = s(round, t, 0.0);
                x.scenario = sc;
                x.proxy_cpu_us_per_req = cpu;
                x.latency_us.p99 = p99;
                samples.push(x);
            }
        }
    }
    let idle: Vec<IdleSample> = [(COREMESH, 3000.0), ("nginx", 2000.0)]
        .into_iter()
        .map(|(t, b)| IdleSample {
            round: 1,
            scenario: Scenario::H2Idle,
            target: t.into(),
            connections: 100,
            rss_before: 0,
            rss_after: 0,
            bytes_per_conn: b,
            burst: None,
        })
        .collect();
    let mut r = results(samples);
    r.summary = summarize(&r.samples, &idle);
    r.idle = idle;
    r.h2_fixed_rate = 2000.0;
    let md = http2::h2_md(&r);
    assert!(md.contains("### HTTP/2: h2c through one proxy"), "{md}");
    assert!(md.contains("8 connections x 16 concurrent streams"), "{md}");
    assert!(
        md.contains("| haproxy | 15.00 (15.00–15.00) **1.50x** | 1.00x |"),
        "{md}"
    );
    // 10 / 15 = 0.67x: under 0.8x, not the 0.6x aim.
    assert!(
        md.contains("coremesh 10.00 us / haproxy 15.00 us = **0.67x**: met (aim 0.6x: not reached). A/A band (coremesh#2 vs coremesh): 5.0%."),
        "{md}"
    );
    assert!(md.contains("At a fixed 2000 req/s"), "{md}");
    // Added p99: coremesh 200 us against nginx's 150 us.
    assert!(
        md.contains("h2-rate: coremesh 200 us (coremesh#2: 210 us) vs nginx 150 us: missed."),
        "{md}"
    );
    assert!(md.contains("| coremesh | 3000 | 1.50x |"), "{md}");
    assert!(md.contains("= **1.50x**: met."), "{md}");
    // Nothing of gRPC ran: no gRPC section.
    assert!(!md.contains("gRPC mesh hop"), "{md}");
    // The HTTP/1.1 idle table is not the h2c one.
    assert_eq!(idle_md(&r, &[]), "");
}

#[test]
fn idle_samples_written_before_http2_are_http1() {
    let old = r#"{"round":1,"target":"nginx","connections":5000,"rss_before":1,"rss_after":2,"bytes_per_conn":1.5}"#;
    let s: IdleSample = serde_json::from_str(old).unwrap();
    assert_eq!(s.scenario, Scenario::Idle);
}
