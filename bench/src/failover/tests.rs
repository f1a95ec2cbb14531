use super::analysis::*;
use super::config::*;
use super::*;
use crate::http::Tag;
use crate::load::Failure;
use crate::mesh::Member;
use coremesh_api::resource::{self as res, parse_documents, validate, validate_set, Resource};
use std::net::SocketAddr;
use std::path::Path;

const MS: u64 = 1_000_000;

fn ok(intended_ms: u64, done_ms: u64, who: &str) -> Outcome {
    Outcome {
        intended: intended_ms * MS,
        done: done_ms * MS,
        result: Ok(200),
        instance: Tag::new(who.as_bytes()),
    }
}

fn failed(intended_ms: u64, done_ms: u64, result: Result<u16, Failure>) -> Outcome {
    Outcome {
        intended: intended_ms * MS,
        done: done_ms * MS,
        result,
        instance: None,
    }
}

/// The resources are what control accepts: one Route splitting 90/10
/// with retries, in the failover mode asked for, and a Resilience with
/// outlier detection and health checks.
#[test]
fn resources_are_valid() {
    for (mode, want) in [
        (Failover::SpillOver, res::Failover::SpillOver),
        (Failover::Strict, res::Failover::Strict),
    ] {
        let docs = parse_documents(&resources_yaml(mode)).unwrap();
        let (mut services, mut routes, mut policies, mut resiliences) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for d in &docs {
            validate(d).unwrap();
            match d {
                Resource::Service(s) => services.push(s.clone()),
                Resource::Route(r) => routes.push(r.clone()),
                Resource::AccessPolicy(p) => policies.push(p.clone()),
                Resource::Resilience(r) => resiliences.push(r.clone()),
                other => panic!("unexpected {}", other.kind_name()),
            }
        }
        validate_set(&services, &routes, &policies, &resiliences).unwrap();
        assert_eq!((services.len(), routes.len(), policies.len()), (2, 1, 1));
        let rule = &routes[0].rules[0];
        assert_eq!(rule.failover, want);
        let weights: Vec<u32> = rule.backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [90, 10]);
        assert_eq!(rule.retries.as_ref().unwrap().attempts, 2);
        let r = &resiliences[0];
        assert!(r.outlier_detection.is_some() && r.health_check.is_some());
    }
}

#[test]
fn proxy_configs_parse_and_say_where() {
    let m = Member {
        service: "api".into(),
        node: "api-v1-a".into(),
        dir: "/tmp/f/api-v1-a".into(),
    };
    let control: SocketAddr = "10.77.0.2:7443".parse().unwrap();
    let api = api_toml(
        control,
        &m,
        "v1",
        "10.77.0.4:0".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    );
    let t: toml::Table = api.parse().unwrap();
    assert_eq!(t["inbound"]["listen"].as_str(), Some("10.77.0.4:0"));
    assert_eq!(t["inbound"]["app"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(t["proxy"]["labels"]["version"].as_str(), Some("v1"));
    assert_eq!(t["control"]["node"].as_str(), Some("api-v1-a"));
    assert_eq!(t["control"]["health"]["kind"].as_str(), Some("http"));
    let web = web_toml(control, &m, Path::new("/tmp/f/web/access.log"));
    let t: toml::Table = web.parse().unwrap();
    assert_eq!(t["outbound"]["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(t["control"]["address"].as_str(), Some("10.77.0.2:7443"));
    assert_eq!(t["control"]["calls"].as_array().unwrap().len(), 1);
    assert_eq!(
        t["proxy"]["access_log"].as_str(),
        Some("/tmp/f/web/access.log")
    );
}

#[test]
fn case_names_round_trip_and_hit_the_right_instance() {
    let names: Vec<String> = Case::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "app-kill",
            "subset-kill",
            "proxy-kill",
            "link-down",
            "control-down+app-kill",
            "control-down+link-down",
            "strict+app-kill",
            "strict+subset-kill"
        ]
    );
    for c in Case::ALL {
        assert_eq!(Case::parse(&c.name()), Some(c));
    }
    assert!(Case::parse("app-kil").is_none());
    assert_eq!(Fault::SubsetKill.instance(), "api-v2");
    assert_eq!(Fault::LinkDown.instance(), "api-v1-a");
}

#[test]
fn percentiles_are_nearest_rank() {
    let v: Vec<u64> = (1..=100).collect();
    assert_eq!(percentile(&v, 0.99), 99);
    assert_eq!(percentile(&v, 0.50), 50);
    assert_eq!(percentile(&v, 1.0), 100);
    assert_eq!(percentile(&[7], 0.99), 7);
    assert_eq!(percentile(&[], 0.99), 0);
}

/// A request in flight at the fault belongs to the fault window; one
/// intended after the window's end to neither side.
#[test]
fn the_fault_splits_the_timeline() {
    let w = Window {
        fault: 1000 * MS,
        end: 2000 * MS,
    };
    let t = vec![
        ok(0, 1, "api-v1-a"),
        ok(500, 502, "api-v1-b"),
        failed(990, 1003, Err(Failure::Read)),
        ok(995, 1400, "api-v1-a"),
        failed(1100, 1100, Ok(503)),
        ok(1200, 1201, "api-v1-b"),
        ok(2000, 2001, "api-v1-a"),
    ];
    let (before, during) = split(&t, w);
    assert_eq!((before.requests, before.failed), (2, 0));
    assert_eq!(before.answered_by["api-v1-a"], 1);
    assert_eq!((during.requests, during.failed), (4, 2));
    assert_eq!(during.failures["read"], 1);
    assert_eq!(during.failures["503"], 1);
    assert_eq!(during.answered_by["api-v1-b"], 1);
    assert_eq!(during.max_ms, 405.0);
    assert_eq!(last_answer_by(&t, w, "api-v1-a"), Some(400.0));
    assert_eq!(last_answer_by(&t, w, "api-v2"), None);
    assert_eq!(last_failure(&t, w), Some(100.0));
    let quiet = [ok(1100, 1101, "api-v1-b")];
    assert_eq!(last_failure(&quiet, w), None);
}

#[test]
fn utc_times_parse() {
    assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_utc("2026-12-05T10:11:12.123456Z"),
        Some(1_796_465_472_123_456_000)
    );
    assert_eq!(
        parse_utc("2000-03-01T00:00:01.5Z"),
        Some(951_868_801_500_000_000)
    );
    for bad in [
        "2026-12-05T10:11:12",
        "2026-13-05T10:11:12Z",
        "x",
        "2026-12-05T10:11:12.1a2Z",
    ] {
        assert_eq!(parse_utc(bad), None, "{bad}");
    }
}

/// The web proxy's debug lines about tries name the endpoint; other
/// lines, other levels and a port that only starts the same are not tries
/// to it.
#[test]
fn failed_tries_come_from_the_request_path_debug_lines() {
    let log = "\
2026-12-05T10:00:00.100000Z DEBUG coremesh_proxy::forward::exchange: retrying: upstream 502 addr=Some(10.77.0.4:4143) try=1
2026-12-05T10:00:00.200000Z DEBUG coremesh_proxy::forward::upstream: upstream connect failed: refused addr=10.77.0.4:4143
2026-12-05T10:00:00.300000Z  INFO coremesh_proxy::agent: endpoint 10.77.0.4:4143 unhealthy
2026-12-05T10:00:00.400000Z DEBUG coremesh_proxy::forward::exchange: moving to another endpoint addr=Some(10.77.0.4:41430)
2026-12-05T10:00:00.500000Z DEBUG coremesh_proxy::forward::exchange: moving to another endpoint addr=Some(10.77.0.5:4143)
";
    let t = failed_tries(log, "10.77.0.4:4143");
    let base = parse_utc("2026-12-05T10:00:00Z").unwrap();
    assert_eq!(t, [base + 100_000_000, base + 200_000_000]);
    assert_eq!(last_after(&t, base + 150_000_000), Some(50.0));
    assert_eq!(last_after(&t, base + 250_000_000), None);
}

#[test]
fn last_tries_come_from_the_access_log_upstream() {
    let log = r#"{"ts":"2026-12-05T10:00:01.000Z","core":0,"direction":"outbound","service":"api","method":"GET","authority":"api","path":"/size/128","status":200,"duration_us":250000,"bytes_in":40,"bytes_out":200,"upstream":"10.77.0.4:4143"}
{"ts":"2026-12-05T10:00:02.000Z","core":0,"direction":"outbound","service":"api","method":"GET","authority":"api","path":"/size/128","status":200,"duration_us":1000,"bytes_in":40,"bytes_out":200,"upstream":"10.77.0.5:4143"}
{"ts":"2026-12-05T10:00:03.000Z","core":0,"direction":"outbound","service":"api","method":"GET","authority":"api","path":"/size/128","status":0,"duration_us":1000,"bytes_in":40,"bytes_out":0,"upstream":null}
not json
"#;
    let base = parse_utc("2026-12-05T10:00:00Z").unwrap();
    assert_eq!(last_tries(log, "10.77.0.4:4143"), [base + 750_000_000]);
}

#[test]
fn the_latest_sighting_wins() {
    assert_eq!(last_to_faulty(None, None, None), None);
    assert_eq!(
        last_to_faulty(Some(5.0), Some(120.0), Some(30.0)),
        Some((120.0, Seen::FailedTry))
    );
    assert_eq!(
        last_to_faulty(Some(5.0), None, Some(30.0)),
        Some((30.0, Seen::LastTry))
    );
}

#[test]
fn the_report_has_a_row_per_fault() {
    let w = Window {
        fault: 1000 * MS,
        end: 2000 * MS,
    };
    let t = vec![ok(0, 2, "api-v1-a"), failed(1100, 1100, Ok(503))];
    let (before, during) = split(&t, w);
    let r = report::Report {
        command: "coremesh-bench failover".into(),
        rate: 200.0,
        baseline_s: 5.0,
        window_s: 10.0,
        resources: String::new(),
        results: vec![FaultResult {
            fault: "app-kill".into(),
            faulty: "api-v1-a".into(),
            faulty_addr: "10.77.0.4:4143".into(),
            failover: "spill-over".into(),
            control_up: true,
            before,
            during,
            last_to_faulty_ms: Some(812.4),
            last_to_faulty_seen: Some(Seen::FailedTry),
            last_failure_ms: Some(100.0),
            window_s: 10.0,
            notes: vec!["a note".into()],
        }],
    };
    let md = report::markdown(&r);
    let row = md.lines().find(|l| l.starts_with("| app-kill")).unwrap();
    assert!(
        row.contains("| 812 (failed try) | 100 | 2.00 | 0.00 | -2.00 |"),
        "{row}"
    );
    assert!(row.contains("| 1 | 1 | 503: 1 |"), "{row}");
    assert!(md.contains("- app-kill: a note"), "{md}");
}
