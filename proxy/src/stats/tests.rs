use super::*;

fn sample(core: usize) -> ShardStats {
    let mut st = ShardStats::new(core);
    st.conn_opened(Direction::Outbound);
    st.conn_opened(Direction::Outbound);
    st.conn_closed(Direction::Outbound);
    st.conn_opened(Direction::Inbound);
    let ms = Duration::from_millis;
    st.record(Direction::Outbound, "api", 200, ms(3), 100, 1000);
    st.record(Direction::Outbound, "api", 200, ms(30), 100, 1000);
    st.record(Direction::Outbound, "api", 503, ms(300), 100, 20);
    st.record(Direction::Outbound, "we\"ird\\na\nme", 0, ms(20_000), 1, 0);
    st.record(
        Direction::Inbound,
        "web",
        404,
        Duration::from_micros(50),
        10,
        5,
    );
    st
}

/// Finds the value of the sample line that starts with `prefix`.
fn value_of(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn counts_classes_and_connections() {
    let snap = sample(3).snapshot();
    assert_eq!(snap.core, 3);
    assert_eq!(snap.requests(), 5);
    assert_eq!(snap.connections_open(Direction::Outbound), 1);
    assert_eq!(snap.connections_total(Direction::Outbound), 2);
    assert_eq!(snap.connections_open(Direction::Inbound), 1);
    let mut out = String::new();
    render_prometheus(&[snap], &mut out);
    let api = r#"direction="outbound",service="api""#;
    assert_eq!(
        value_of(
            &out,
            &format!(r#"coremesh_requests_total{{{api},class="2xx",core="3"}}"#)
        ),
        2.0
    );
    assert_eq!(
        value_of(
            &out,
            &format!(r#"coremesh_requests_total{{{api},class="5xx",core="3"}}"#)
        ),
        1.0
    );
    assert!(
        out.contains(r#"service="we\"ird\\na\nme",class="none",core="3"} 1"#),
        "{out}"
    );
    assert_eq!(
        value_of(&out, r#"coremesh_shard_requests_total{core="3"}"#),
        5.0
    );
    assert_eq!(
        value_of(
            &out,
            r#"coremesh_connections_open{direction="outbound",core="3"}"#
        ),
        1.0
    );
    assert_eq!(
        value_of(
            &out,
            &format!(r#"coremesh_request_bytes_total{{{api},core="3"}}"#)
        ),
        300.0
    );
    assert_eq!(
        value_of(
            &out,
            &format!(r#"coremesh_response_bytes_total{{{api},core="3"}}"#)
        ),
        2020.0
    );
}

#[test]
fn histogram_merges_cores_and_is_cumulative() {
    let snaps = [sample(0).snapshot(), sample(1).snapshot()];
    let mut out = String::new();
    render_prometheus(&snaps, &mut out);
    let b = r#"coremesh_request_duration_seconds_bucket{direction="outbound",service="api",le="#;
    // Two cores x (3 ms, 30 ms, 300 ms).
    assert_eq!(value_of(&out, &format!(r#"{b}"0.0025"}}"#)), 0.0);
    assert_eq!(value_of(&out, &format!(r#"{b}"0.005"}}"#)), 2.0);
    assert_eq!(value_of(&out, &format!(r#"{b}"0.05"}}"#)), 4.0);
    assert_eq!(value_of(&out, &format!(r#"{b}"0.5"}}"#)), 6.0);
    assert_eq!(value_of(&out, &format!(r#"{b}"10"}}"#)), 6.0);
    assert_eq!(value_of(&out, &format!(r#"{b}"+Inf"}}"#)), 6.0);
    let sum = value_of(
        &out,
        r#"coremesh_request_duration_seconds_sum{direction="outbound",service="api"}"#,
    );
    assert!((sum - 0.666).abs() < 1e-9, "{sum}");
    // 20 s is past the last finite bucket.
    let w = r#"coremesh_request_duration_seconds_bucket{direction="outbound",service="we\"ird\\na\nme",le="#;
    assert_eq!(value_of(&out, &format!(r#"{w}"10"}}"#)), 0.0);
    assert_eq!(value_of(&out, &format!(r#"{w}"+Inf"}}"#)), 2.0);
    // One histogram per (direction, service), not per core.
    assert_eq!(out.matches(&format!(r#"{b}"+Inf"}}"#)).count(), 1);
}

#[test]
fn caps_distinct_services() {
    let mut st = ShardStats::new(0);
    for i in 0..MAX_SERVICES + 10 {
        st.record(
            Direction::Outbound,
            &format!("svc{i}"),
            200,
            Duration::ZERO,
            0,
            0,
        );
    }
    st.record(Direction::Outbound, "svc0", 200, Duration::ZERO, 0, 0);
    let snap = st.snapshot();
    assert_eq!(snap.services.len(), MAX_SERVICES + 1);
    let other = snap
        .services
        .iter()
        .find(|s| &*s.service == OTHER_SERVICE)
        .unwrap();
    assert_eq!(other.by_class[2], 10);
    let svc0 = snap
        .services
        .iter()
        .find(|s| &*s.service == "svc0")
        .unwrap();
    assert_eq!(svc0.by_class[2], 2);
}

#[test]
fn cores_json_shape() {
    let v = cores_json(&[sample(1).snapshot(), ShardStats::new(0).snapshot()]);
    let cores = v["cores"].as_array().unwrap();
    assert_eq!(cores[0]["core"], 0);
    assert_eq!(cores[0]["requests"], 0);
    assert_eq!(cores[0]["latency_us"]["p50"], 0);
    assert_eq!(cores[1]["core"], 1);
    assert_eq!(cores[1]["requests"], 5);
    assert_eq!(cores[1]["connections_open"]["outbound"], 1);
    assert_eq!(cores[1]["connections_total"]["outbound"], 2);
    let p50 = cores[1]["latency_us"]["p50"].as_u64().unwrap();
    assert!((29_000..=31_000).contains(&p50), "{p50}");
    assert!(cores[1]["latency_us"]["p99"].as_u64().unwrap() >= 19_000_000);
}

/// `promtool check metrics` reads the exposition on stdin and prints
/// errors and lint warnings; it must print nothing. Skipped (with a note)
/// where promtool is not installed.
#[test]
fn promtool_accepts_output() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let mut out = String::new();
    render_prometheus(&[sample(0).snapshot(), sample(1).snapshot()], &mut out);
    let mut empty = String::new();
    render_prometheus(&[], &mut empty);
    for text in [out, empty] {
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("promtool not run ({e}); skipping");
                return;
            }
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let res = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
        assert!(
            res.status.success() && said.trim().is_empty(),
            "{said}\n{text}"
        );
    }
}
