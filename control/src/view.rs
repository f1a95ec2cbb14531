//! What one proxy sees: the services it may call with their endpoints,
//! their routes and their Resiliences (plus the services those mirror to);
//! the AccessPolicy and Resilience of its own service and the mesh's
//! default access; the trust bundle. A pure function of the config, the
//! registry, the proxy's `calls` and its service; the hub turns a view into
//! a versioned [`Snapshot`] and sends it only when it differs from the last
//! one sent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use coremesh_api::resource::{Access, AccessPolicy, Protocol, Resilience, Route};
use coremesh_api::snapshot::{ServiceEndpoints, Snapshot};

use crate::config::Config;
use crate::registry::Registry;

/// Which config a snapshot reflects: its version, the store that numbers
/// it, and its digest.
#[derive(Debug, Clone, Copy)]
pub struct ConfigRef<'a> {
    pub version: u64,
    pub store_id: &'a str,
    pub digest: &'a str,
}

/// A snapshot without its versions.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub services: Vec<ServiceEndpoints>,
    pub routes: Vec<Route>,
    /// Of the services above and of the proxy's own service: the hub's view
    /// key includes the own service when it has one.
    pub resilience: Vec<Resilience>,
    /// The proxy's own service's policy: two proxies share a view only if
    /// they share this (see the hub's view key).
    pub access_policy: Option<AccessPolicy>,
    pub default_access: Access,
    /// The same for every proxy (control's CA and extra roots), shared.
    pub trust_bundle: Arc<Vec<String>>,
}

impl View {
    pub fn snapshot(&self, version: u64, config: &ConfigRef<'_>) -> Snapshot {
        Snapshot {
            version,
            config_version: config.version,
            store_id: config.store_id.to_string(),
            config_digest: config.digest.to_string(),
            services: self.services.clone(),
            routes: self.routes.clone(),
            resilience: self.resilience.clone(),
            access_policy: self.access_policy.clone(),
            default_access: self.default_access,
            trust_bundle: self.trust_bundle.to_vec(),
        }
    }
}

/// Every service of the config plus every service with registered
/// endpoints, restricted to `calls` when given, and the mirror services of
/// those services' Resiliences (a proxy sends them copies even when its
/// app never calls them); each with its endpoints (healthy ones, or all
/// when none is: see [`Registry::endpoints_of`]); the routes and
/// Resiliences of those services; the Resilience of `service` (the proxy's
/// own: its inbound side enforces the rate limit) and its AccessPolicy and
/// no other; the mesh's default access; and `trust_bundle`.
pub fn compute(
    config: &Config,
    registry: &Registry,
    calls: Option<&BTreeSet<String>>,
    service: &str,
    trust_bundle: &Arc<Vec<String>>,
) -> View {
    let mut names: BTreeMap<&str, Protocol> = BTreeMap::new();
    for s in &config.services {
        names.insert(&s.name, s.protocol);
    }
    for s in registry.services() {
        names.entry(s).or_default();
    }
    let called = |name: &str| match calls {
        Some(c) => c.contains(name),
        None => true,
    };
    // Mirrors of called services are wanted, but not their own mirrors:
    // a copy is never mirrored again.
    let mirrors: BTreeSet<&str> = config
        .resiliences
        .iter()
        .filter(|r| called(&r.service))
        .filter_map(|r| r.mirror.as_ref().map(|m| m.service.as_str()))
        .collect();
    let services: Vec<ServiceEndpoints> = names
        .into_iter()
        .filter(|(name, _)| called(name) || mirrors.contains(name))
        .map(|(name, protocol)| ServiceEndpoints {
            name: name.to_string(),
            protocol,
            endpoints: registry.endpoints_of(name),
        })
        .collect();
    let routes = config
        .routes
        .iter()
        .filter(|r| services.iter().any(|s| s.name == r.service))
        .cloned()
        .collect();
    let mut resilience: Vec<Resilience> = config
        .resiliences
        .iter()
        .filter(|r| r.service == service || services.iter().any(|s| s.name == r.service))
        .cloned()
        .collect();
    // The config sorts by name, which a named Resilience may not share
    // with its service.
    resilience.sort_by(|a, b| a.service.cmp(&b.service));
    View {
        services,
        routes,
        resilience,
        access_policy: config.access_policy(service).cloned(),
        default_access: config.default_access(),
        trust_bundle: trust_bundle.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coremesh_api::resource::{Backend, Rule, Service};
    use std::net::SocketAddr;
    use std::time::{Duration, Instant, SystemTime};

    fn config() -> Config {
        let svc = |n: &str| Service {
            name: n.into(),
            protocol: Protocol::Http,
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
        });
        let web = compute(&c, &reg, None, "web", &bundle());
        assert_eq!(web.default_access, Access::Deny);
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
}
