//! Whole request sequences through the policy, in memory, with simulated
//! time: routing, the attempt decision, balancing and outlier detection
//! together, as the proxy's shards and agent use them, with no sockets and
//! no clock (the quinn-proto way).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coremesh_api::snapshot::Snapshot;
use coremesh_policy::attempt::{Attempts, TryFailure, TryPolicy, Verdict};
use coremesh_policy::balance::{Algorithm, Balancer};
use coremesh_policy::error::ErrorKind;
use coremesh_policy::resilience::{Outcomes, OutlierConfig, OutlierDetector};
use coremesh_policy::route::{self, RequestView, Statics, Target};
use coremesh_policy::routing::RoutingTable;

/// A request as any codec would present it.
struct Req {
    method: &'static str,
    authority: &'static str,
    path: &'static str,
}

impl RequestView for Req {
    fn method(&self) -> &[u8] {
        self.method.as_bytes()
    }
    fn authority(&self) -> Option<&[u8]> {
        Some(self.authority.as_bytes())
    }
    fn path_and_query(&self) -> &[u8] {
        self.path.as_bytes()
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 4143))
}

fn table() -> RoutingTable {
    let snap: Snapshot = serde_json::from_value(serde_json::json!({
        "version": 1,
        "config_version": 1,
        "services": [{
            "name": "api",
            "endpoints": [
                {"address": "10.0.0.1:4143", "labels": {}},
                {"address": "10.0.0.2:4143", "labels": {}},
                {"address": "10.0.0.3:4143", "labels": {}},
            ],
        }],
        "routes": [{
            "name": "api",
            "service": "api",
            "rules": [
                {
                    "match": {"pathPrefix": "/v1/"},
                    "timeout": "2s",
                    "retries": {"attempts": 2, "on": ["connect-failure"],
                                "backoff": {"base": "10ms", "max": "50ms"}},
                    "backends": [{"weight": 100}],
                },
                {"backends": [{"weight": 100}]},
            ],
        }],
    }))
    .expect("snapshot");
    RoutingTable::compile(&snap).expect("compiles")
}

/// The simulated upstreams: which refuse connections.
struct World {
    down: HashSet<SocketAddr>,
}

/// What happened to one request.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    By(SocketAddr, u32),
    Answered(ErrorKind),
}

/// Serves one request at `now` as a shard would: route, then tries picked
/// by the balancer among endpoints outlier detection has not ejected, each
/// failure decided by `Attempts`; outcomes go to the detector as a shard's
/// report would.
fn serve(
    t: &RoutingTable,
    world: &World,
    balancer: &mut Balancer,
    outliers: &mut OutlierDetector,
    req: &Req,
    mut now: Instant,
    rng: &mut impl FnMut() -> u64,
) -> Served {
    let statics: Statics<'_, ()> = Statics {
        services: &[],
        name: |_| "",
        passthrough: false,
    };
    let Ok(Target::Routed(svc)) = route::outbound(&statics, Some(t), req) else {
        panic!("api is routed by the table");
    };
    let rules = svc.rules.as_ref().expect("a Route");
    let rule = route::match_rule(rules, req).expect("a rule matches");
    let mut attempts = Attempts::new(
        TryPolicy::for_rule(Duration::from_secs(15), rule),
        now,
        req.method == "GET",
    );
    let mut tried = Vec::new();
    loop {
        attempts.begin(now);
        let ejected = outliers.ejected("api").cloned();
        let pick = balancer
            .pick(
                &svc.all,
                |a| {
                    !tried.contains(&a)
                        && !ejected.as_ref().is_some_and(|e| e.as_slice().contains(&a))
                },
                None,
                now,
                rng,
            )
            .expect("endpoints");
        tried.push(pick);
        let ok = !world.down.contains(&pick);
        let outcome = Outcomes {
            successes: u64::from(ok),
            failures: u64::from(!ok),
            trailing_failures: u64::from(!ok),
        };
        outliers.record("api", pick, outcome, now);
        if ok {
            return Served::By(pick, tried.len() as u32);
        }
        let failure = TryFailure::connect(ErrorKind::ConnectFailed);
        match attempts.after_failure(&failure, false, now, || true, rng()) {
            Verdict::Retry { backoff, .. } => now += backoff,
            Verdict::Answer { kind, .. } => return Served::Answered(kind),
            v => panic!("{v:?} after a connect failure"),
        }
    }
}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn a_dead_endpoint_costs_retries_until_ejected_then_nothing_until_it_returns() {
    let t = table();
    let t0 = Instant::now();
    let world = World {
        down: [addr(1)].into(),
    };
    let mut balancer = Balancer::new(Algorithm::RoundRobin);
    let mut outliers = OutlierDetector::new();
    let config = OutlierConfig::new(3, Duration::from_secs(10), 50);
    outliers.configure("api", config, &t.service(b"api").unwrap().all, t0);
    let mut rng = rng(7);
    let get = Req {
        method: "GET",
        authority: "api.mesh",
        path: "/v1/users",
    };
    let mut retried = 0;
    let mut to_dead = Vec::new();
    // 30 seconds, a request every 10 ms.
    let mut ejected_at_15s = false;
    for i in 0..3000u32 {
        let now = t0 + Duration::from_millis(u64::from(i) * 10);
        outliers.tick(now);
        if i == 1500 {
            ejected_at_15s = outliers
                .ejected("api")
                .is_some_and(|e| e.as_slice() == [addr(1)]);
        }
        match serve(
            &t,
            &world,
            &mut balancer,
            &mut outliers,
            &get,
            now,
            &mut rng,
        ) {
            Served::By(a, tries) => {
                assert_ne!(a, addr(1));
                if tries > 1 {
                    retried += 1;
                    to_dead.push(now.duration_since(t0));
                }
            }
            Served::Answered(kind) => {
                panic!("request {i} answered {kind:?}: a retry covers one dead endpoint")
            }
        }
    }
    // Three failures in a row eject it (t ≈ 0). Back at 10 s with its
    // streak restarted, three more eject it for 20 s (the second ejection
    // lasts twice as long): the dead endpoint cost six retried requests in
    // 30 s, and no request failed.
    assert_eq!(retried, 6, "{to_dead:?}");
    let second = Duration::from_secs(1);
    assert!(to_dead[..3].iter().all(|d| *d < second), "{to_dead:?}");
    let back = Duration::from_secs(10)..Duration::from_secs(11);
    assert!(to_dead[3..].iter().all(|d| back.contains(d)), "{to_dead:?}");
    assert!(ejected_at_15s, "ejected again at 10 s, for 20 s");
}

#[test]
fn without_a_retry_policy_the_dead_endpoint_is_answered_and_post_is_tried_once() {
    let t = table();
    let t0 = Instant::now();
    let world = World {
        down: [addr(1), addr(2)].into(),
    };
    let mut balancer = Balancer::new(Algorithm::RoundRobin);
    // No outlier detection configured for the service: nothing is ejected.
    let mut outliers = OutlierDetector::new();
    let mut rng = rng(11);
    // The catch-all rule has no retries.
    let other = Req {
        method: "GET",
        authority: "api",
        path: "/health",
    };
    let results: Vec<Served> = (0..6)
        .map(|i| {
            serve(
                &t,
                &world,
                &mut balancer,
                &mut outliers,
                &other,
                t0 + Duration::from_millis(i),
                &mut rng,
            )
        })
        .collect();
    assert_eq!(
        results
            .iter()
            .filter(|r| **r == Served::Answered(ErrorKind::ConnectFailed))
            .count(),
        4,
        "{results:?}"
    );
    // A POST under the retrying rule (idempotent only) gets one try too.
    let post = Req {
        method: "POST",
        authority: "api",
        path: "/v1/users",
    };
    let answered = (0..6)
        .map(|i| {
            serve(
                &t,
                &world,
                &mut balancer,
                &mut outliers,
                &post,
                t0 + Duration::from_millis(i),
                &mut rng,
            )
        })
        .filter(|r| matches!(r, Served::Answered(_)))
        .count();
    assert_eq!(answered, 4);
    // Two dead of three: a GET's two retries always find the live one.
    for i in 0..30 {
        let r = serve(
            &t,
            &world,
            &mut balancer,
            &mut outliers,
            &get_v1(),
            t0 + Duration::from_millis(i),
            &mut rng,
        );
        assert!(matches!(r, Served::By(a, _) if a == addr(3)), "{r:?}");
    }
}

fn get_v1() -> Req {
    Req {
        method: "GET",
        authority: "api",
        path: "/v1/x",
    }
}
