use std::time::Duration;

use super::*;
use crate::resource::validation::tests::{set, set_err};
use crate::resource::{
    parse_documents, to_yaml, validate, Resource, ResourceError, RESILIENCE_EXAMPLE,
};

/// `kind: Resilience` for `api` with `body` (YAML lines), parsed.
fn parse(body: &str) -> Result<Resilience, ResourceError> {
    let text = format!("kind: Resilience\nservice: api\n{body}");
    match parse_documents(&text)?.pop() {
        Some(Resource::Resilience(r)) => Ok(r),
        other => panic!("{other:?}"),
    }
}

fn err(body: &str) -> String {
    parse(body).unwrap_err().to_string()
}

/// What an error about `field` starts with.
fn prefix(field: &str) -> String {
    format!("document 1 (resilience/api): {field}: ")
}

#[test]
fn parses_the_issue_example() {
    let rs = parse_documents(RESILIENCE_EXAMPLE).unwrap();
    let Resource::Resilience(r) = &rs[2] else {
        panic!("{rs:?}")
    };
    assert_eq!(rs[2].kind(), "Resilience");
    assert_eq!(rs[2].kind_name(), "resilience/api");
    assert_eq!(rs[2].name(), "api");
    assert_eq!(
        *r,
        Resilience {
            name: None,
            service: "api".into(),
            load_balancer: LoadBalancer::P2cEwma,
            circuit_breaker: Some(CircuitBreaker {
                max_connections: Some(1000),
                max_pending: Some(100),
                max_requests: Some(1000),
            }),
            outlier_detection: Some(OutlierDetection {
                consecutive_failures: 5,
                base_ejection: Duration::from_secs(30),
                max_ejected_percent: 50,
            }),
            health_check: Some(HealthCheck {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                unhealthy_threshold: 3,
                healthy_threshold: 2,
            }),
            retry_budget: RetryBudget {
                ratio: 0.2,
                min_per_second: 10,
            },
            rate_limit: Some(RateLimit {
                requests_per_second: 100,
                burst: Some(20),
                per: RateLimitKey::Service,
            }),
            faults: Some(Faults {
                abort: Some(Abort {
                    percent: 5.0,
                    status: 503,
                }),
                delay: Some(Delay {
                    percent: 10.0,
                    duration: Duration::from_millis(100),
                }),
            }),
            mirror: Some(Mirror {
                service: "api-shadow".into(),
                percent: 10.0,
            }),
        }
    );
    set(RESILIENCE_EXAMPLE).validate().unwrap();

    // YAML and JSON round trips.
    let yaml = to_yaml(&rs);
    assert!(yaml.contains("kind: Resilience\nservice: api\n"), "{yaml}");
    assert!(yaml.contains("baseEjection: 30s\n"), "{yaml}");
    assert_eq!(parse_documents(&yaml).unwrap(), rs);
    let json = serde_json::to_string(r).unwrap();
    assert_eq!(serde_json::from_str::<Resilience>(&json).unwrap(), *r);
}

#[test]
fn names_default_to_the_service() {
    let r = parse("").unwrap();
    assert_eq!((r.name.as_deref(), r.name()), (None, "api"));
    let rs = parse_documents("kind: Resilience\nname: api-tuning\nservice: api\n").unwrap();
    assert_eq!(rs[0].kind_name(), "resilience/api-tuning");
    // Errors name it the same way.
    let e = parse_documents("kind: Resilience\nservice: api\nport: 1\n").unwrap_err();
    assert!(
        e.to_string().starts_with("document 1 (resilience/api)"),
        "{e}"
    );
    let e = parse_documents("kind: Resilience\nname: t\nservice: api\nport: 1\n").unwrap_err();
    assert!(
        e.to_string().starts_with("document 1 (resilience/t)"),
        "{e}"
    );
    assert_eq!(
        parse_documents("kind: Resilience\nname: T\nservice: api\n")
            .unwrap_err()
            .field,
        "name"
    );
    let e = parse_documents("kind: Resilience\nloadBalancer: round-robin\n").unwrap_err();
    assert!(e.to_string().contains("missing field `service`"), "{e}");
    assert_eq!(
        parse_documents("kind: Resilience\nservice: Api\n")
            .unwrap_err()
            .field,
        "service"
    );
}

#[test]
fn every_block_is_optional_and_has_defaults() {
    let r = parse("").unwrap();
    assert_eq!(r, Resilience::new("api"));
    assert_eq!(r.load_balancer, LoadBalancer::P2cEwma);
    assert_eq!(
        r.retry_budget,
        RetryBudget {
            ratio: 0.2,
            min_per_second: 10
        }
    );
    assert!(r.http_only_blocks().is_empty());
    // A bare Resilience serializes to its service alone.
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        serde_json::json!({"service": "api"})
    );

    let r = parse("outlierDetection: {}\nhealthCheck: {}\ncircuitBreaker: {}\nrateLimit: { requestsPerSecond: 50 }\nmirror: { service: shadow }\nfaults: {}\n").unwrap();
    assert_eq!(r.outlier_detection, Some(OutlierDetection::default()));
    let o = OutlierDetection::default();
    assert_eq!(
        (
            o.consecutive_failures,
            o.base_ejection,
            o.max_ejected_percent
        ),
        (5, Duration::from_secs(30), 10)
    );
    let h = r.health_check.clone().unwrap();
    assert_eq!(h, HealthCheck::default());
    assert_eq!(
        (
            h.interval,
            h.timeout,
            h.unhealthy_threshold,
            h.healthy_threshold
        ),
        (Duration::from_secs(5), Duration::from_secs(1), 3, 2)
    );
    assert_eq!(r.circuit_breaker, Some(CircuitBreaker::default()));
    let rl = r.rate_limit.clone().unwrap();
    assert_eq!(
        (rl.burst, rl.burst(), rl.per),
        (None, 50, RateLimitKey::Service)
    );
    assert_eq!(r.mirror.as_ref().unwrap().percent, 100.0);
    assert_eq!(r.faults, Some(Faults::default()));
    assert_eq!(r.http_only_blocks(), ["rateLimit", "faults", "mirror"]);
}

#[test]
fn load_balancer_forms() {
    for (yaml, lb) in [
        ("p2c-ewma", LoadBalancer::P2cEwma),
        ("round-robin", LoadBalancer::RoundRobin),
        ("least-request", LoadBalancer::LeastRequest),
        (
            "{ ring-hash: { header: x-user } }",
            LoadBalancer::RingHash(HashKey::Header("x-user".into())),
        ),
        (
            "{ ringHash: { cookie: session } }",
            LoadBalancer::RingHash(HashKey::Cookie("session".into())),
        ),
    ] {
        let r = parse(&format!("loadBalancer: {yaml}\n")).unwrap();
        assert_eq!(r.load_balancer, lb, "{yaml}");
        let back = serde_json::to_value(&r.load_balancer).unwrap();
        assert_eq!(serde_json::from_value::<LoadBalancer>(back).unwrap(), lb);
    }
    let r = parse("loadBalancer: { ringHash: { header: x-user } }\n").unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap()["loadBalancer"],
        serde_json::json!({"ring-hash": {"header": "x-user"}})
    );
    assert_eq!(r.load_balancer.describe(), "ring-hash(header x-user)");
    assert_eq!(r.http_only_blocks(), ["loadBalancer"]);
}

#[test]
fn load_balancer_errors() {
    let e = err("loadBalancer: ring-hash\n");
    assert!(e.contains("ring-hash needs a key: loadBalancer: { ring-hash: { header: NAME } } or { ring-hash: { cookie: NAME } }"), "{e}");
    let e = err("loadBalancer: random\n");
    assert!(e.contains("unknown variant `random`, expected one of `p2c-ewma`, `round-robin`, `least-request`, `ring-hash`"), "{e}");
    let e = err("loadBalancer: { round-robin: {} }\n");
    assert!(
        e.contains("round-robin takes no settings; write `loadBalancer: round-robin`"),
        "{e}"
    );
    let e = err("loadBalancer: { ring-hash: { header: a }, round-robin: x }\n");
    assert!(e.contains("more than one algorithm"), "{e}");
    let e = err("loadBalancer: {}\n");
    assert!(e.contains("ring-hash needs a key"), "{e}");
    let e = err("loadBalancer: { ring-hash: { ip: source } }\n");
    assert!(
        e.contains("unknown field `ip`, expected `header` or `cookie`"),
        "{e}"
    );
    let e = err("loadBalancer: { ring-hash: { header: a, cookie: b } }\n");
    assert!(
        e.contains("both header and cookie; ring-hash hashes one of them"),
        "{e}"
    );
    let e = err("loadBalancer: { ring-hash: {} }\n");
    assert!(e.contains("ring-hash needs a key"), "{e}");
    let e = err("loadBalancer: { ring-hash: header }\n");
    assert!(e.contains("invalid type: string \"header\""), "{e}");
    assert_eq!(
        err("loadBalancer: { ring-hash: { header: \"x user\" } }\n"),
        format!(
            "{}\"x user\" is not a valid name (letters, digits and !#$%&'*+-.^_`|~)",
            prefix("loadBalancer.ring-hash.header")
        )
    );
    let e = err("loadBalancer: { ring-hash: { cookie: \"a;b\" } }\n");
    assert!(
        e.starts_with(&prefix("loadBalancer.ring-hash.cookie")),
        "{e}"
    );
}

#[test]
fn range_errors_name_their_field() {
    for (body, field, reason) in [
        ("circuitBreaker: { maxConnections: 0 }", "circuitBreaker.maxConnections", "0 would refuse every request; at least 1 (leave it out for no limit)"),
        ("circuitBreaker: { maxRequests: 0 }", "circuitBreaker.maxRequests", "0 would refuse every request; at least 1 (leave it out for no limit)"),
        ("outlierDetection: { consecutiveFailures: 0 }", "outlierDetection.consecutiveFailures", "must be at least 1"),
        ("outlierDetection: { baseEjection: 0s }", "outlierDetection.baseEjection", "must be greater than 0"),
        ("outlierDetection: { maxEjectedPercent: 101 }", "outlierDetection.maxEjectedPercent", "101 is not a percentage (0..=100)"),
        ("healthCheck: { interval: 0s }", "healthCheck.interval", "must be greater than 0"),
        ("healthCheck: { timeout: 0ms }", "healthCheck.timeout", "must be greater than 0"),
        ("healthCheck: { interval: 1s, timeout: 2s }", "healthCheck.timeout", "2s is longer than the interval (1s); a probe must end before the next starts"),
        ("healthCheck: { unhealthyThreshold: 0 }", "healthCheck.unhealthyThreshold", "must be at least 1"),
        ("healthCheck: { healthyThreshold: 0 }", "healthCheck.healthyThreshold", "must be at least 1"),
        ("retryBudget: { ratio: 10.5 }", "retryBudget.ratio", "10.5 is out of range (0..=10 retries per request)"),
        ("retryBudget: { ratio: -0.1 }", "retryBudget.ratio", "-0.1 is out of range (0..=10 retries per request)"),
        ("retryBudget: { ratio: .nan }", "retryBudget.ratio", "NaN is out of range (0..=10 retries per request)"),
        ("rateLimit: { requestsPerSecond: 0 }", "rateLimit.requestsPerSecond", "must be at least 1"),
        ("rateLimit: { requestsPerSecond: 10, burst: 0 }", "rateLimit.burst", "must be at least 1"),
        ("faults: { abort: { percent: 100.5, status: 503 } }", "faults.abort.percent", "100.5 is not a percentage (0..=100)"),
        ("faults: { abort: { percent: -1, status: 503 } }", "faults.abort.percent", "-1 is not a percentage (0..=100)"),
        ("faults: { abort: { percent: 5, status: 200 } }", "faults.abort.status", "200 is not an error status (400..=599)"),
        ("faults: { abort: { percent: 5, status: 600 } }", "faults.abort.status", "600 is not an error status (400..=599)"),
        ("faults: { delay: { percent: .inf, duration: 1s } }", "faults.delay.percent", "inf is not a percentage (0..=100)"),
        ("faults: { delay: { percent: 1, duration: 0s } }", "faults.delay.duration", "must be greater than 0"),
        ("mirror: { service: api }", "mirror.service", "\"api\" is the service itself; mirror to another service (e.g. api-shadow)"),
        ("mirror: { service: Shadow }", "mirror.service", "\"Shadow\" is not a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"),
        ("mirror: { service: shadow, percent: 200 }", "mirror.percent", "200 is not a percentage (0..=100)"),
    ] {
        assert_eq!(err(&format!("{body}\n")), format!("{}{reason}", prefix(field)), "{body}");
    }
    // The edges are fine.
    parse("circuitBreaker: { maxConnections: 1, maxPending: 0, maxRequests: 1 }\noutlierDetection: { consecutiveFailures: 1, baseEjection: 1ms, maxEjectedPercent: 0 }\nhealthCheck: { interval: 1s, timeout: 1s, unhealthyThreshold: 1, healthyThreshold: 1 }\nretryBudget: { ratio: 0, minPerSecond: 0 }\nrateLimit: { requestsPerSecond: 1, burst: 1, per: caller }\nfaults: { abort: { percent: 0.5, status: 400 }, delay: { percent: 100, duration: 1ms } }\nmirror: { service: shadow, percent: 0 }\n").unwrap();
    parse("retryBudget: { ratio: 10 }\nfaults: { abort: { percent: 100, status: 599 } }\n")
        .unwrap();
}

#[test]
fn type_and_unknown_field_errors() {
    for (body, needle) in [
        ("timeout: 2s", "unknown field `timeout`"),
        (
            "circuitBreaker: { maxConnection: 1 }",
            "unknown field `maxConnection`",
        ),
        (
            "outlierDetection: { consecutive5xx: 1 }",
            "unknown field `consecutive5xx`",
        ),
        ("healthCheck: { path: /healthz }", "unknown field `path`"),
        ("retryBudget: { ttl: 10s }", "unknown field `ttl`"),
        (
            "rateLimit: { requestsPerSecond: 1, per: route }",
            "unknown variant `route`, expected `service` or `caller`",
        ),
        (
            "rateLimit: { burst: 5 }",
            "missing field `requestsPerSecond`",
        ),
        (
            "faults: { abort: { percent: 5 } }",
            "missing field `status`",
        ),
        (
            "faults: { abort: { status: 503 } }",
            "missing field `percent`",
        ),
        (
            "faults: { delay: { percent: 5 } }",
            "missing field `duration`",
        ),
        ("faults: { reset: { percent: 5 } }", "unknown field `reset`"),
        (
            "faults: { delay: { percent: 5, duration: 100 } }",
            "has no unit",
        ),
        ("mirror: { percent: 5 }", "missing field `service`"),
        ("healthCheck: { interval: 5 s }", "unknown unit"),
        // Too large for the clock: refused, never wrapped or panicking.
        (
            "healthCheck: { interval: 18446744073709551615h }",
            "is too large",
        ),
        (
            "circuitBreaker: { maxConnections: -1 }",
            "invalid type: integer `-1`, expected u32",
        ),
        (
            "faults: { abort: { percent: 5, status: 70000 } }",
            "invalid value",
        ),
    ] {
        let e = err(&format!("{body}\n"));
        assert!(e.starts_with("document 1 (resilience/api)"), "{body}: {e}");
        assert!(e.contains(needle), "{body}: {e}");
    }
}

#[test]
fn validate_resilience_prefixes_the_location() {
    let mut r = Resilience::new("api");
    validate_resilience(&r, "proxy.toml: [[resilience]] 1").unwrap();
    r.mirror = Some(Mirror {
        service: "api".into(),
        percent: 10.0,
    });
    assert_eq!(
        validate_resilience(&r, "proxy.toml: [[resilience]] 1")
            .unwrap_err()
            .to_string(),
        "proxy.toml: [[resilience]] 1: mirror.service: \"api\" is the service itself; mirror to another service (e.g. api-shadow)"
    );
    assert_eq!(
        validate_resilience(&r, "").unwrap_err().to_string(),
        "mirror.service: \"api\" is the service itself; mirror to another service (e.g. api-shadow)"
    );
    // validate() says the same about the resource.
    let e = validate(&Resource::Resilience(r)).unwrap_err();
    assert_eq!(e.resource.as_deref(), Some("resilience/api"));
    assert_eq!(e.field, "mirror.service");
}

/// proxy.toml's `[[resilience]]` tables: the same struct, the same
/// camelCase keys, durations as strings.
#[test]
fn reads_from_toml() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        resilience: Vec<Resilience>,
    }
    let text = r#"
[[resilience]]
service = "api"
loadBalancer = "p2c-ewma"
circuitBreaker = { maxConnections = 1000, maxPending = 100, maxRequests = 1000 }
outlierDetection = { consecutiveFailures = 5, baseEjection = "30s", maxEjectedPercent = 50 }
healthCheck = { interval = "5s", timeout = "1s", unhealthyThreshold = 3, healthyThreshold = 2 }
retryBudget = { ratio = 0.2, minPerSecond = 10 }
rateLimit = { requestsPerSecond = 100, burst = 20, per = "service" }
faults = { abort = { percent = 5, status = 503 }, delay = { percent = 10, duration = "100ms" } }
mirror = { service = "api-shadow", percent = 10 }

[[resilience]]
service = "db"
loadBalancer = { ring-hash = { cookie = "session" } }

[resilience.retryBudget]
ratio = 1
"#;
    let file: File = toml::from_str(text).unwrap();
    let yaml = parse_documents(RESILIENCE_EXAMPLE).unwrap();
    assert_eq!(Resource::Resilience(file.resilience[0].clone()), yaml[2]);
    let db = &file.resilience[1];
    assert_eq!(
        db.load_balancer,
        LoadBalancer::RingHash(HashKey::Cookie("session".into()))
    );
    assert_eq!(db.retry_budget.ratio, 1.0);
    for r in &file.resilience {
        validate_resilience(r, "proxy.toml").unwrap();
    }

    for (bad, needle) in [
        (
            "[[resilience]]\nservice = \"api\"\nload_balancer = \"p2c-ewma\"\n",
            "unknown field `load_balancer`",
        ),
        (
            "[[resilience]]\nservice = \"api\"\nhealthCheck = { interval = 5 }\n",
            "invalid type: integer `5`, expected a string",
        ),
        (
            "[[resilience]]\nservice = \"api\"\nloadBalancer = \"ring-hash\"\n",
            "ring-hash needs a key",
        ),
    ] {
        let e = toml::from_str::<File>(bad).err().unwrap().to_string();
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

#[test]
fn max_ejected_rounds_down_but_allows_one() {
    let o = |p| OutlierDetection {
        max_ejected_percent: p,
        ..OutlierDetection::default()
    };
    assert_eq!(o(10).max_ejected(2), 1);
    assert_eq!(o(10).max_ejected(25), 2);
    assert_eq!(o(50).max_ejected(5), 2);
    assert_eq!(o(100).max_ejected(5), 5);
    assert_eq!(o(0).max_ejected(5), 0);
    assert_eq!(o(50).max_ejected(0), 0);
}

#[test]
fn set_rules() {
    let base = "kind: Service\nname: api\n---\nkind: Service\nname: db\nprotocol: tcp\n---\nkind: Service\nname: shadow\n---\n";
    let ok = |extra: &str| set(&format!("{base}{extra}")).validate().unwrap();
    let no = |extra: &str| set_err(&format!("{base}{extra}"));

    ok("kind: Resilience\nservice: api\nmirror: { service: shadow }\n");
    // A TCP service takes the blocks that are about connections and endpoints.
    ok("kind: Resilience\nservice: db\nloadBalancer: least-request\ncircuitBreaker: { maxConnections: 10 }\noutlierDetection: {}\nhealthCheck: {}\n");
    // Route, AccessPolicy and Resilience of one service do not collide.
    ok("kind: Route\nname: api\nservice: api\nrules: [{backends: [{}]}]\n---\nkind: AccessPolicy\nname: api\nservice: api\n---\nkind: Resilience\nservice: api\n");

    assert_eq!(
        no("kind: Resilience\nservice: web\n"),
        "resilience/web: service: service \"web\" does not exist; apply a `kind: Service` named web first"
    );
    assert_eq!(
        no("kind: Resilience\nservice: api\n---\nkind: Resilience\nname: api-2\nservice: api\n"),
        "resilience/api-2: service: service api already has resilience/api; at most one Resilience per service (merge the blocks into one)"
    );
    assert_eq!(
        no("kind: Resilience\nname: x\nservice: api\n---\nkind: Resilience\nname: x\nservice: shadow\n"),
        "resilience/x: name: defined twice"
    );
    assert_eq!(
        no("kind: Resilience\nservice: api\nmirror: { service: nope }\n"),
        "resilience/api: mirror.service: service \"nope\" does not exist; apply a `kind: Service` named nope first"
    );
    assert_eq!(
        no("kind: Resilience\nservice: api\nmirror: { service: db }\n"),
        "resilience/api: mirror.service: service db has protocol tcp; only HTTP requests are mirrored, to an HTTP service"
    );
    for (block, yaml) in [
        ("loadBalancer", "loadBalancer: { ring-hash: { header: x } }"),
        ("retryBudget", "retryBudget: { ratio: 1 }"),
        ("rateLimit", "rateLimit: { requestsPerSecond: 5 }"),
        ("faults", "faults: { abort: { percent: 1, status: 503 } }"),
        ("mirror", "mirror: { service: shadow }"),
    ] {
        assert_eq!(
            no(&format!("kind: Resilience\nservice: db\n{yaml}\n")),
            format!("resilience/db: {block}: service db has protocol tcp; {block} applies to HTTP requests only")
        );
    }
}
