use super::*;

fn sample(target: &str, rps: f64) -> Sample {
    Sample {
        round: 1,
        scenario: Scenario::Small,
        target: target.into(),
        target_rate: 0.0,
        achieved_rps: rps,
        responses_total: 1,
        unsent: 0,
        latency_us: Default::default(),
        errors: Default::default(),
        proxy_cpu_us_per_req: None,
        proxy_user_us_per_req: None,
        proxy_sys_us_per_req: None,
        proxy_context_switches_per_req: None,
        tcp_segments_per_req: None,
        proxy_syscalls_per_req: None,
        proxy_cores_used: None,
        generator_cores_used: 0.0,
        generator_us_per_req: 0.0,
        origin_cores_used: 0.0,
    }
}

#[test]
fn fixed_rate_is_a_quarter_of_the_slowest_proxy() {
    let s = vec![
        sample(DIRECT, 90_000.0),
        sample("nginx", 41_234.0),
        sample("coremesh", 60_000.0),
    ];
    assert_eq!(pick_rate(&s, Scenario::Small), 10_000.0);
    assert_eq!(
        pick_rate(&[sample(DIRECT, 9_876.0)], Scenario::Small),
        2_400.0
    );
    assert_eq!(pick_rate(&[], Scenario::Small), 1000.0);
    // mtls-rate's comes from the pairs' mtls throughput only.
    let mut m = sample("nginx", 20_000.0);
    m.scenario = Scenario::Mtls;
    let mut all = s.clone();
    all.push(m);
    assert_eq!(pick_rate(&all, Scenario::Mtls), 5_000.0);
    assert_eq!(pick_rate(&all, Scenario::Small), 10_000.0);
}

#[test]
fn the_policy_pair_swaps_places_every_other_round() {
    use Scenario::*;
    let s = [Small, PolicyPlain, PolicyFull];
    assert_eq!(round_order(&s, 1), [Small, PolicyPlain, PolicyFull]);
    assert_eq!(round_order(&s, 2), [Small, PolicyFull, PolicyPlain]);
    assert_eq!(round_order(&s, 3), s);
    assert_eq!(round_order(&[Small, PolicyFull], 2), [Small, PolicyFull]);
}

#[test]
fn the_proxies_take_turns_after_the_baseline() {
    let v = || vec!["direct", "a", "b", "c"];
    let base = |t: &&str| *t == "direct";
    assert_eq!(rotate_for_round(v(), 1, base), ["direct", "a", "b", "c"]);
    assert_eq!(rotate_for_round(v(), 2, base), ["direct", "b", "c", "a"]);
    assert_eq!(rotate_for_round(v(), 3, base), ["direct", "c", "a", "b"]);
    assert_eq!(rotate_for_round(v(), 4, base), ["direct", "a", "b", "c"]);
    // Without a baseline every target takes turns; one or none is kept.
    assert_eq!(rotate_for_round(vec!["a", "b"], 2, base), ["b", "a"]);
    assert_eq!(rotate_for_round(vec!["direct"], 2, base), ["direct"]);
    assert!(rotate_for_round(Vec::<&str>::new(), 2, base).is_empty());
}

#[test]
fn scenario_names_round_trip() {
    for s in Scenario::ALL {
        assert_eq!(Scenario::parse(s.name()), Some(s));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, format!("\"{}\"", s.name()));
    }
}

#[test]
fn tracing_targets_are_named_by_ratio_and_get_a_tracing_section() {
    assert_eq!(tracing_label(0.01), "coremesh-trace-0.01");
    assert_eq!(tracing_label(1.0), "coremesh-trace-1");
    assert_eq!(tracing_ratio("coremesh-trace-0.01"), Some(0.01));
    assert_eq!(tracing_ratio("coremesh-trace-1"), Some(1.0));
    // Their idle and burst instances too.
    assert_eq!(tracing_ratio("coremesh-trace-1-idle"), Some(1.0));
    assert_eq!(tracing_ratio("coremesh"), None);
    assert_eq!(tracing_ratio("coremesh#2"), None);
    let base = proxies::config(
        proxies::Kind::Coremesh,
        0,
        "127.0.0.1:1".parse().unwrap(),
        Path::new("/tmp"),
        4096,
    );
    for r in [0.01, 1.0] {
        let text = format!("{base}{}", tracing_toml(r, "http://127.0.0.1:4318"));
        let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["tracing"]["sampling"].as_float(), Some(r), "{text}");
        assert_eq!(
            v["tracing"]["collector"].as_str(),
            Some("http://127.0.0.1:4318")
        );
    }
}
