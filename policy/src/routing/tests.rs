use super::*;
use coremesh_api::resource::Protocol;
use coremesh_api::snapshot::ServiceEndpoints;

fn snapshot(names: &[&str]) -> Snapshot {
    Snapshot {
        version: 7,
        config_version: 3,
        services: names
            .iter()
            .map(|n| ServiceEndpoints {
                name: n.to_string(),
                port: None,
                addresses: Vec::new(),
                protocol: Protocol::Http,
                endpoints: vec![],
            })
            .collect(),
        routes: vec![],
        ..Snapshot::default()
    }
}

fn statics(names: &[&str]) -> StaticServices {
    StaticServices {
        source: "/etc/coremesh/proxy.toml".into(),
        names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
    }
}

#[test]
fn a_service_defined_statically_and_by_control_is_refused() {
    let s = statics(&["db", "cache"]);
    assert_eq!(s.check_snapshot(&snapshot(&["api"])), Ok(()));
    assert_eq!(
        StaticServices::default().check_snapshot(&snapshot(&["db"])),
        Ok(())
    );
    assert_eq!(
        s.check_snapshot(&snapshot(&["api", "DB"]))
            .map_err(|e| e.to_string()),
        Err(
            "service \"db\" is defined both in /etc/coremesh/proxy.toml [[services]] \
             and by control; remove one of them"
                .into()
        )
    );
    let err = s
        .check_snapshot(&snapshot(&["db", "cache"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("services \"cache\", \"db\" are defined both"),
        "{err}"
    );
}

#[test]
fn a_reload_may_not_define_a_service_of_the_table_in_force() {
    let table = RoutingTable::compile(&snapshot(&["api", "db"])).unwrap();
    assert_eq!(statics(&["cache"]).check_table(&table), Ok(()));
    assert_eq!(
        statics(&["Db"])
            .check_table(&table)
            .map_err(|e| e.to_string()),
        Err(
            "/etc/coremesh/proxy.toml: [[services]] \"db\": control defines this \
             service too (snapshot version 7); remove one of them"
                .into()
        )
    );
}

/// An intercepted connection's original destination names the service
/// whose `port` it is at an endpoint's host or a virtual IP; nothing else
/// does (another port, a service without `port`, an unknown address).
#[test]
fn original_destinations_map_to_services() {
    let snap: Snapshot = serde_json::from_value(serde_json::json!({
        "version": 1, "config_version": 1, "outbound_policy": "deny",
        "services": [
            {"name": "API", "port": 8080, "addresses": ["10.96.0.10"], "endpoints": [
                {"address": "10.0.0.5:4143"}, {"address": "[fd00::5]:4143"}]},
            {"name": "db", "protocol": "tcp", "port": 5432, "endpoints": [{"address": "10.0.0.6:4143"}]},
            {"name": "cache", "endpoints": [{"address": "10.0.0.7:4143"}]},
        ],
    }))
    .unwrap();
    let t = RoutingTable::compile(&snap).unwrap();
    let at = |a: &str| {
        t.service_at(a.parse().unwrap())
            .map(|s| (s.name.as_str(), s.tcp))
    };
    assert_eq!(at("10.0.0.5:8080"), Some(("API", false)));
    assert_eq!(at("10.96.0.10:8080"), Some(("API", false)));
    assert_eq!(at("[fd00::5]:8080"), Some(("API", false)));
    assert_eq!(at("[::ffff:10.0.0.5]:8080"), Some(("API", false)));
    assert_eq!(at("10.0.0.6:5432"), Some(("db", true)));
    assert_eq!(at("10.0.0.5:4143"), None);
    assert_eq!(at("10.0.0.6:8080"), None);
    assert_eq!(at("10.0.0.7:80"), None);
    assert!(t.outbound_deny);
    assert!(
        !RoutingTable::compile(&snapshot(&["api"]))
            .unwrap()
            .outbound_deny
    );
}

/// Each rule is named `ROUTE#INDEX` and each backend carries its subset
/// as `k=v` in key order: the labels of the per-edge metrics.
#[test]
fn rules_and_backends_carry_their_edge_labels() {
    let docs = coremesh_api::resource::parse_documents(
        "kind: Route\nname: api-canary\nservice: api\nrules:\n  - match: { headers: { x-canary: \"true\" } }\n    backends: [ { subset: { zone: a, version: v2 } } ]\n  - backends:\n      - { subset: { version: v1 }, weight: 90 }\n      - { weight: 10 }\n",
    )
    .unwrap();
    let route = match docs.into_iter().next() {
        Some(coremesh_api::resource::Resource::Route(r)) => r,
        other => panic!("{other:?}"),
    };
    let mut snap = snapshot(&["api"]);
    snap.routes = vec![route];
    let table = RoutingTable::compile(&snap).unwrap();
    let rules = table
        .service(b"api")
        .and_then(|s| s.rules.as_ref())
        .unwrap();
    assert_eq!(rules[0].name, "api-canary#0");
    assert_eq!(rules[0].backends[0].subset, "version=v2,zone=a");
    assert_eq!(rules[1].name, "api-canary#1");
    assert_eq!(rules[1].backends[0].subset, "version=v1");
    assert_eq!(rules[1].backends[1].subset, "");
}
