use super::*;
use crate::compare::burst::BurstRss;
use crate::compare::report::summarize;
use crate::compare::COREMESH;

/// A burst sample of `target`: baseline 10 MiB, `per_conn` bytes per idle
/// connection over 2,000 connections, `closed` bytes with nobody connected.
fn sample(round: usize, target: &str, per_conn: f64, closed: u64) -> IdleSample {
    let (n, before) = (2000usize, 10 << 20);
    let after = before + (per_conn * n as f64) as u64;
    IdleSample {
        round,
        scenario: Scenario::Burst,
        target: target.into(),
        connections: n,
        rss_before: before,
        rss_after: after,
        bytes_per_conn: per_conn,
        burst: Some(BurstRss {
            peak: 60 << 20,
            idle_s: 30.0,
            closed,
        }),
    }
}

fn results(idle: Vec<IdleSample>) -> Results {
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
        samples: Vec::new(),
        summary: summarize(&[], &idle),
        idle,
    }
}

#[test]
fn the_table_gives_each_proxy_its_readings_and_the_verdict() {
    let mut idle = Vec::new();
    for round in 1..=3 {
        // coremesh keeps 800 B per connection and gives the rest back;
        // "leaky" keeps 3 KB per connection and 20 MiB once the clients left.
        idle.push(sample(round, COREMESH, 800.0 + round as f64, 10 << 20));
        idle.push(sample(round, "leaky", 3000.0, 30 << 20));
    }
    let r = results(idle);
    let (c, l) = (COREMESH.to_string(), "leaky".to_string());
    let md = markdown(&r, &[&c, &l]);
    assert!(
        md.contains("2000 new connections") && md.contains("idle 30 s"),
        "{md}"
    );
    // Baseline, peak, after idle (10 MiB + 2000 x 802 B), per connection
    // (median, spread), clients gone, the ratio and the verdict.
    assert!(
        md.contains("| coremesh | 10240 KiB | 61440 KiB | 11806 KiB | 802 (801–803) | 10240 KiB | 1.00x | met |"),
        "{md}"
    );
    assert!(md.contains("| leaky |"), "{md}");
    assert!(
        md.contains("**3.74x** | 30720 KiB | 3.00x | missed |"),
        "{md}"
    );
}

#[test]
fn a_proxy_that_keeps_little_per_connection_but_not_the_heap_misses() {
    // 500 B per connection, but 12 MiB against a 10 MiB baseline once the
    // clients are gone: more than 10% kept.
    let r = results(vec![sample(1, COREMESH, 500.0, 12 << 20)]);
    let c = COREMESH.to_string();
    let md = markdown(&r, &[&c]);
    assert!(md.contains("1.20x | missed |"), "{md}");
}

#[test]
fn no_burst_samples_no_table() {
    let mut idle = sample(1, COREMESH, 500.0, 10 << 20);
    idle.scenario = Scenario::Idle;
    idle.burst = None;
    let r = results(vec![idle]);
    let c = COREMESH.to_string();
    assert_eq!(markdown(&r, &[&c]), "");
}
