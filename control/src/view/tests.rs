use super::*;
use coremesh_api::resource::{Backend, Protocol, Rule, Service};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

fn config() -> Config {
    let svc = |n: &str| Service {
        name: n.into(),
        protocol: Protocol::Http,
        port: None,
        addresses: Vec::new(),
    };
    Config {
        services: vec![svc("api"), svc("db")],
        routes: vec![Route {
            name: "api-route".into(),
            service: "api".into(),
            rules: vec![Rule {
                matches: None,
                timeout: None,
                retries: None,
                failover: Default::default(),
                backends: vec![Backend {
                    subset: BTreeMap::new(),
                    weight: 1,
                }],
            }],
        }],
        ..Config::default()
    }
}

fn bundle() -> Arc<Vec<String>> {
    Arc::new(vec!["ROOT".to_string()])
}

#[test]
fn view_has_config_and_registered_services_with_fail_open() {
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut reg = Registry::new(Duration::from_secs(15), now, Duration::from_secs(600));
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let p1 = reg.hello("api", "n1", 0);
    let p2 = reg.hello("api", "n2", 0);
    let p3 = reg.hello("cache", "n3", 0);
    reg.register(p1, a, BTreeMap::new(), now, wall);
    reg.register(p2, b, BTreeMap::new(), now, wall);
    reg.register(
        p3,
        "127.0.0.1:3".parse().unwrap(),
        BTreeMap::new(),
        now,
        wall,
    );
    reg.health(p1, false, now, wall);

    let v = compute(&config(), &reg, None, "web", &bundle());
    let names: Vec<&str> = v.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "cache", "db"]);
    let api = &v.services[0];
    assert_eq!(
        api.endpoints.iter().map(|e| e.address).collect::<Vec<_>>(),
        [b]
    );
    assert_eq!(v.routes.len(), 1);

    reg.health(p2, false, now, wall);
    let v = compute(&config(), &reg, None, "web", &bundle());
    assert_eq!(v.services[0].endpoints.len(), 2, "fail open");

    let calls: BTreeSet<String> = ["db".to_string()].into();
    let v = compute(&config(), &reg, Some(&calls), "web", &bundle());
    assert_eq!(v.services.len(), 1);
    assert_eq!(v.services[0].name, "db");
    assert!(v.routes.is_empty(), "api's route is not db's business");
}

#[test]
fn a_proxy_sees_only_its_own_access_policy() {
    use coremesh_api::resource::{AccessRule, MeshConfig};
    let reg = Registry::new(
        Duration::from_secs(15),
        Instant::now(),
        Duration::from_secs(600),
    );
    let mut c = config();
    c.access_policies = vec![AccessPolicy {
        name: "api-access".into(),
        service: "api".into(),
        default: Access::Deny,
        rules: vec![AccessRule {
            from: vec!["web".into()],
            methods: vec![],
            path: None,
            path_prefix: None,
        }],
    }];
    let api = compute(&c, &reg, None, "api", &bundle());
    assert_eq!(api.access_policy.as_ref().unwrap().name, "api-access");
    assert_eq!(api.default_access, Access::Allow);
    let web = compute(&c, &reg, None, "web", &bundle());
    assert_eq!(web.access_policy, None, "web must not learn api's policy");
    assert_ne!(api, web);

    c.mesh = Some(MeshConfig {
        name: "mesh".into(),
        default_access: Access::Deny,
        outbound_policy: Access::Deny,
        tracing: Some(coremesh_api::resource::Tracing {
            sampling: 0.5,
            collector: "http://10.0.0.9:4318".into(),
        }),
    });
    let web = compute(&c, &reg, None, "web", &bundle());
    assert_eq!(web.default_access, Access::Deny);
    assert_eq!(web.outbound_policy, Access::Deny);
    let s = web.snapshot(
        7,
        &ConfigRef {
            version: 3,
            store_id: "s1",
            digest: "d",
        },
    );
    assert_eq!((s.version, s.config_version), (7, 3));
    assert_eq!(s.default_access, Access::Deny);
    assert_eq!(s.trust_bundle, ["ROOT"]);
    assert_eq!(s.access_policy, None);
    // The mesh's tracing goes to every proxy.
    let t = s.tracing.as_deref().expect("tracing in the snapshot");
    assert_eq!(
        (t.sampling, t.collector.as_str()),
        (0.5, "http://10.0.0.9:4318")
    );
}

/// api (mirrors to api-shadow, with a Resilience), db (with a
/// Resilience), api-shadow and web (none); each with one endpoint.
fn mirrored() -> (Config, Registry) {
    use coremesh_api::resource::{CircuitBreaker, Mirror, RateLimit};
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut reg = Registry::new(Duration::from_secs(15), now, Duration::from_secs(600));
    let mut c = config();
    for (i, name) in ["api", "api-shadow", "db", "web"].into_iter().enumerate() {
        if c.service(name).is_none() {
            c.services.push(Service {
                name: name.into(),
                protocol: Protocol::Http,
                port: None,
                addresses: Vec::new(),
            });
        }
        let p = reg.hello(name, "n", 0);
        let addr: SocketAddr = format!("127.0.0.1:{}", i + 1).parse().unwrap();
        reg.register(p, addr, BTreeMap::new(), now, wall);
    }
    c.services.sort_by(|a, b| a.name.cmp(&b.name));
    c.resiliences = vec![
        Resilience {
            mirror: Some(Mirror {
                service: "api-shadow".into(),
                percent: 10.0,
            }),
            circuit_breaker: Some(CircuitBreaker {
                max_requests: Some(10),
                ..CircuitBreaker::default()
            }),
            ..Resilience::new("api")
        },
        Resilience {
            // Named: sorted first in the config, by service in a view.
            name: Some("a-db".into()),
            rate_limit: Some(RateLimit {
                requests_per_second: 100,
                burst: None,
                per: Default::default(),
            }),
            ..Resilience::new("db")
        },
    ];
    c.resiliences.sort_by(|a, b| a.name().cmp(b.name()));
    (c, reg)
}

fn services_of(v: &View) -> Vec<&str> {
    v.services.iter().map(|s| s.name.as_str()).collect()
}

fn resilience_of(v: &View) -> Vec<&str> {
    v.resilience.iter().map(|r| r.service.as_str()).collect()
}

#[test]
fn a_proxy_gets_the_resilience_of_what_it_calls_and_its_own() {
    let (c, reg) = mirrored();
    let calls =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };

    // web calls api: api's Resilience, and api's mirror's endpoints
    // (web never calls api-shadow itself).
    let v = compute(&c, &reg, Some(&calls(&["api"])), "web", &bundle());
    assert_eq!(services_of(&v), ["api", "api-shadow"]);
    assert_eq!(v.services[1].endpoints.len(), 1, "mirror endpoints");
    assert_eq!(resilience_of(&v), ["api"]);
    assert_eq!(v.routes.len(), 1);

    // db's own proxies get db's Resilience (its rate limit) though
    // they call only web; nobody else's.
    let v = compute(&c, &reg, Some(&calls(&["web"])), "db", &bundle());
    assert_eq!(services_of(&v), ["web"]);
    assert_eq!(resilience_of(&v), ["db"]);
    assert_eq!(v.resilience[0].name(), "a-db");

    // web calling db and api: both, sorted by service.
    let v = compute(&c, &reg, Some(&calls(&["db", "api"])), "web", &bundle());
    assert_eq!(services_of(&v), ["api", "api-shadow", "db"]);
    assert_eq!(resilience_of(&v), ["api", "db"]);
    let s = v.snapshot(
        1,
        &ConfigRef {
            version: 1,
            store_id: "s1",
            digest: "d",
        },
    );
    assert_eq!(s.resilience, v.resilience);

    // api calling itself and db: its own once.
    let v = compute(&c, &reg, Some(&calls(&["api", "db"])), "api", &bundle());
    assert_eq!(resilience_of(&v), ["api", "db"]);

    // Without `calls`: everything.
    let v = compute(&c, &reg, None, "web", &bundle());
    assert_eq!(services_of(&v), ["api", "api-shadow", "db", "web"]);
    assert_eq!(resilience_of(&v), ["api", "db"]);

    // Nothing that concerns it: no Resilience, no mirror.
    let v = compute(&c, &reg, Some(&calls(&["web"])), "api-shadow", &bundle());
    assert_eq!(services_of(&v), ["web"]);
    assert!(v.resilience.is_empty());
}

#[test]
fn a_mirror_target_is_not_mirrored_again() {
    use coremesh_api::resource::Mirror;
    let (mut c, reg) = mirrored();
    // api-shadow mirrors to web: a proxy calling api sends copies to
    // api-shadow only.
    c.resiliences.push(Resilience {
        mirror: Some(Mirror {
            service: "web".into(),
            percent: 100.0,
        }),
        ..Resilience::new("api-shadow")
    });
    c.resiliences.sort_by(|a, b| a.name().cmp(b.name()));
    let calls: BTreeSet<String> = ["api".to_string()].into();
    let v = compute(&c, &reg, Some(&calls), "db", &bundle());
    assert_eq!(services_of(&v), ["api", "api-shadow"]);
    assert_eq!(resilience_of(&v), ["api", "api-shadow", "db"]);
}

/// A Service's port and virtual IPs reach the proxies that call it, for
/// interception; a service without a Service resource has neither.
#[test]
fn service_port_and_addresses_reach_the_view() {
    let mut c = config();
    c.services[0].port = Some(8080);
    c.services[0].addresses = vec!["10.96.0.10".parse().unwrap()];
    let reg = Registry::new(
        Duration::from_secs(15),
        Instant::now(),
        Duration::from_secs(600),
    );
    let v = compute(&c, &reg, None, "web", &bundle());
    let first = &v.services[0];
    assert_eq!(first.name, c.services[0].name);
    assert_eq!(first.port, Some(8080));
    assert_eq!(first.addresses, c.services[0].addresses);
    assert!(v.services[1..].iter().all(|s| s.port.is_none()));
}
