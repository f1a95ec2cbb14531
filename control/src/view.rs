//! What one proxy sees: the services it may call with their endpoints, and
//! their routes. A pure function of the config, the registry and the
//! proxy's `calls`; the hub turns a view into a versioned
//! [`Snapshot`] and sends it only when it differs from the last one sent.

use std::collections::{BTreeMap, BTreeSet};

use coremesh_api::resource::{Protocol, Route};
use coremesh_api::snapshot::{ServiceEndpoints, Snapshot};

use crate::config::Config;
use crate::registry::Registry;

/// A snapshot without its versions.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub services: Vec<ServiceEndpoints>,
    pub routes: Vec<Route>,
}

impl View {
    pub fn snapshot(&self, version: u64, config_version: u64) -> Snapshot {
        Snapshot {
            version,
            config_version,
            services: self.services.clone(),
            routes: self.routes.clone(),
        }
    }
}

/// Every service of the config plus every service with registered
/// endpoints, restricted to `calls` when given; each with its endpoints
/// (healthy ones, or all when none is: see [`Registry::endpoints_of`]); and
/// the routes of those services.
pub fn compute(config: &Config, registry: &Registry, calls: Option<&BTreeSet<String>>) -> View {
    let mut names: BTreeMap<&str, Protocol> = BTreeMap::new();
    for s in &config.services {
        names.insert(&s.name, s.protocol);
    }
    for s in registry.services() {
        names.entry(s).or_default();
    }
    let wanted = |name: &str| match calls {
        Some(c) => c.contains(name),
        None => true,
    };
    let services: Vec<ServiceEndpoints> = names
        .into_iter()
        .filter(|(name, _)| wanted(name))
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
    View { services, routes }
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
        }
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

        let v = compute(&config(), &reg, None);
        let names: Vec<&str> = v.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["api", "cache", "db"]);
        let api = &v.services[0];
        assert_eq!(
            api.endpoints.iter().map(|e| e.address).collect::<Vec<_>>(),
            [b]
        );
        assert_eq!(v.routes.len(), 1);

        reg.health(p2, false, now, wall);
        let v = compute(&config(), &reg, None);
        assert_eq!(v.services[0].endpoints.len(), 2, "fail open");

        let calls: BTreeSet<String> = ["db".to_string()].into();
        let v = compute(&config(), &reg, Some(&calls));
        assert_eq!(v.services.len(), 1);
        assert_eq!(v.services[0].name, "db");
        assert!(v.routes.is_empty(), "api's route is not db's business");
    }
}
