use super::*;
use coremesh_api::resource::{parse_documents, validate, validate_set, Resource};

fn labels() -> Vec<String> {
    vec!["coremesh".into(), "coremesh#2".into()]
}

#[test]
fn names_per_target() {
    assert_eq!(api_service(Scenario::PolicyFull, "coremesh"), "api-full");
    assert_eq!(
        api_service(Scenario::PolicyPlain, "coremesh#2"),
        "api-plain-2"
    );
    let c = calls(Scenario::PolicyFull, "coremesh#2");
    assert_eq!(c.len(), ROUTES);
    assert_eq!((c[0].as_str(), c[99].as_str()), ("api-full-2", "decoy-99"));
    assert_eq!(calls(Scenario::PolicyPlain, "coremesh"), ["api-plain"]);
}

/// The resources are what control accepts, and each policy-full web
/// proxy calls exactly 100 services with a Route.
#[test]
fn resources_are_valid_and_give_100_routes() {
    let both = [Scenario::PolicyPlain, Scenario::PolicyFull];
    let docs = parse_documents(&resources_yaml(&both, &labels())).unwrap();
    let (mut services, mut routes, mut resiliences) = (Vec::new(), Vec::new(), Vec::new());
    for d in &docs {
        validate(d).unwrap();
        match d {
            Resource::Service(s) => services.push(s.clone()),
            Resource::Route(r) => routes.push(r.clone()),
            Resource::Resilience(r) => resiliences.push(r.clone()),
            other => panic!("unexpected {}", other.kind_name()),
        }
    }
    validate_set(&services, &routes, &[], &resiliences).unwrap();
    assert_eq!(routes.len(), 2 + DECOYS);
    let routed: BTreeSet<String> = docs
        .iter()
        .filter_map(|r| match r {
            Resource::Route(r) => Some(r.service.clone()),
            _ => None,
        })
        .collect();
    for label in labels() {
        let c = calls(Scenario::PolicyFull, &label);
        assert_eq!(c.iter().filter(|s| routed.contains(*s)).count(), ROUTES);
        let plain = api_service(Scenario::PolicyPlain, &label);
        assert!(!routed.contains(&plain));
    }
    let res: Vec<_> = docs
        .iter()
        .filter_map(|r| match r {
            Resource::Resilience(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(res.len(), 2);
    for r in res {
        assert!(r.service.starts_with("api-full"));
        assert!(r.faults.is_none() && r.mirror.is_none() && r.health_check.is_none());
        assert_eq!(
            r.rate_limit.as_ref().unwrap().requests_per_second,
            RATE_LIMIT
        );
        assert!(r.circuit_breaker.is_some() && r.outlier_detection.is_some());
    }
    // Only plain: no Route, no Resilience at all.
    let plain = resources_yaml(&[Scenario::PolicyPlain], &labels());
    assert!(!plain.contains("kind: Route") && !plain.contains("kind: Resilience"));
}

#[test]
fn proxy_configs() {
    let m = Member {
        service: "api-full".into(),
        node: "policy-full-coremesh-api".into(),
        dir: PathBuf::from("/tmp/x"),
    };
    let control: SocketAddr = "127.0.0.1:7443".parse().unwrap();
    let origin: SocketAddr = "127.0.0.1:9999".parse().unwrap();
    let api = api_toml(Scenario::PolicyFull, "coremesh", control, &m, origin);
    assert!(api.contains("service = \"api-full\""), "{api}");
    assert!(api.contains("app = \"127.0.0.1:9999\""), "{api}");
    assert!(
        api.contains("labels = { version = \"v1\", zone = \"a\" }"),
        "{api}"
    );
    assert!(!api.contains("calls"), "{api}");
    let web = web_toml(Scenario::PolicyFull, "coremesh", control, &m);
    assert!(
        web.contains("[outbound]\nlisten = \"127.0.0.1:0\""),
        "{web}"
    );
    assert!(web.contains("calls = [\"api-full\", \"decoy-01\""), "{web}");
    assert!(web.contains("token_file = \"/tmp/x/join.token\""), "{web}");
    for t in [&api, &web] {
        assert!(t.contains("cores = 1\n"));
        assert!(t.parse::<toml::Table>().is_ok(), "{t}");
    }
}
