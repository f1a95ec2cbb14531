use super::*;

const EXAMPLE: &str = "
kind: Service
name: api
protocol: http
---
kind: Route
name: api-canary
service: api
rules:
  - match: { headers: { x-canary: \"true\" } }
    backends: [ { subset: { version: v2 } } ]
  - match: { pathPrefix: / }
    timeout: 2s
    retries: { attempts: 2, perTryTimeout: 500ms, on: [connect-failure, reset, 5xx] }
    backends:
      - { subset: { version: v1 }, weight: 90 }
      - { subset: { version: v2 }, weight: 10 }
";

fn docs(text: &str) -> Vec<Resource> {
    resource::parse_documents(text).expect("parses")
}

#[test]
fn apply_creates_then_is_idempotent() {
    let plan = plan_apply(&Config::default(), docs(EXAMPLE)).unwrap();
    assert_eq!(plan.changed, ["route/api-canary", "service/api"]);
    assert_eq!(plan.summary, "apply route/api-canary, service/api");
    let again = plan_apply(&plan.config, docs(EXAMPLE)).unwrap();
    assert!(again.changed.is_empty());
    assert_eq!(again.config, plan.config);
}

#[test]
fn route_without_service_is_rejected_with_its_name() {
    let text = "kind: Route\nname: r\nservice: nope\nrules:\n  - backends: [ {} ]\n";
    let err = plan_apply(&Config::default(), docs(text)).unwrap_err();
    assert_eq!(err.kind, crate::ErrorKind::Rejected);
    assert!(err.message.contains("route/r"), "{err}");
    assert!(err.message.contains("service"), "{err}");
}

#[test]
fn duplicate_in_one_apply_is_rejected() {
    let text = "kind: Service\nname: a\n---\nkind: Service\nname: a\n";
    let err = plan_apply(&Config::default(), docs(text)).unwrap_err();
    assert!(err.message.contains("document 2"), "{err}");
}

#[test]
fn delete_refuses_to_orphan_a_route() {
    let c = plan_apply(&Config::default(), docs(EXAMPLE))
        .unwrap()
        .config;
    let err = plan_delete(&c, "service", "api").unwrap_err();
    assert_eq!(err.kind, crate::ErrorKind::Rejected);
    let p = plan_delete(&c, "route", "api-canary").unwrap();
    assert_eq!(p.changed, ["route/api-canary"]);
    assert!(p.config.routes.is_empty());
    assert_eq!(
        plan_delete(&c, "route", "zz").unwrap_err().kind,
        crate::ErrorKind::NotFound
    );
    assert_eq!(
        plan_delete(&c, "gateway", "g").unwrap_err().message,
        "unknown kind \"gateway\": use service, route, accesspolicy, resilience or meshconfig"
    );
}

const ACCESS: &str = "
kind: AccessPolicy
name: api-access
service: api
default: deny
rules:
  - from: [web]
    methods: [GET, POST]
    pathPrefix: /v1/
---
kind: MeshConfig
name: mesh
defaultAccess: deny
";

#[test]
fn access_policies_and_mesh_config_apply_diff_and_delete() {
    let base = plan_apply(&Config::default(), docs(EXAMPLE))
        .unwrap()
        .config;
    assert_eq!(base.default_access(), Access::Allow);
    let plan = plan_apply(&base, docs(ACCESS)).unwrap();
    assert_eq!(plan.changed, ["accesspolicy/api-access", "meshconfig/mesh"]);
    let c = plan.config;
    assert_eq!(c.access_policy("api").unwrap().name, "api-access");
    assert!(c.access_policy("web").is_none());
    assert_eq!(c.default_access(), Access::Deny);
    assert_eq!(
        c.resources()
            .iter()
            .map(Resource::kind_name)
            .collect::<Vec<_>>(),
        [
            "service/api",
            "route/api-canary",
            "accesspolicy/api-access",
            "meshconfig/mesh"
        ]
    );
    // Idempotent, then a change is one changed resource.
    assert!(plan_apply(&c, docs(ACCESS)).unwrap().changed.is_empty());
    let looser = ACCESS.replace("default: deny", "default: allow");
    let p = plan_apply(&c, docs(&looser)).unwrap();
    assert_eq!(p.changed, ["accesspolicy/api-access"]);

    // The policy's service cannot go while the policy stays.
    let e = plan_delete(&c, "route", "api-canary")
        .and_then(|p| plan_delete(&p.config, "service", "api"))
        .unwrap_err();
    assert_eq!(e.kind, crate::ErrorKind::Rejected);
    assert!(e.message.contains("accesspolicy/api-access"), "{e}");
    let p = plan_delete(&c, "AccessPolicies", "api-access").unwrap();
    assert_eq!(p.changed, ["accesspolicy/api-access"]);
    assert!(p.config.access_policies.is_empty());
    let p = plan_delete(&p.config, "meshconfig", "mesh").unwrap();
    assert_eq!(p.config.default_access(), Access::Allow);
    assert_eq!(p.config.mesh, None);

    // Rolling back to the version before restores nothing else.
    let back = plan_rollback(&c, base.clone(), 1);
    assert_eq!(back.changed, ["accesspolicy/api-access", "meshconfig/mesh"]);
    assert_eq!(back.config, base);
}

#[test]
fn access_policy_without_service_is_rejected() {
    let text = "kind: AccessPolicy\nname: p\nservice: nope\n";
    let err = plan_apply(&Config::default(), docs(text)).unwrap_err();
    assert_eq!(err.kind, crate::ErrorKind::Rejected);
    assert_eq!(
            err.message,
            "accesspolicy/p: service: service \"nope\" does not exist; apply a `kind: Service` named nope first"
        );
}

const RESILIENCE: &str = "
kind: Service
name: api-shadow
---
kind: Resilience
service: api
loadBalancer: least-request
circuitBreaker: { maxConnections: 100 }
mirror: { service: api-shadow, percent: 10 }
";

#[test]
fn resiliences_apply_diff_delete_and_roll_back() {
    let base = plan_apply(&Config::default(), docs(EXAMPLE))
        .unwrap()
        .config;
    let plan = plan_apply(&base, docs(RESILIENCE)).unwrap();
    // Named after its service.
    assert_eq!(plan.changed, ["resilience/api", "service/api-shadow"]);
    assert_eq!(plan.summary, "apply resilience/api, service/api-shadow");
    let c = plan.config;
    assert_eq!(c.resilience("api").unwrap().name(), "api");
    assert!(c.resilience("api-shadow").is_none());
    assert_eq!(
        c.resources()
            .iter()
            .map(Resource::kind_name)
            .collect::<Vec<_>>(),
        [
            "service/api",
            "service/api-shadow",
            "route/api-canary",
            "resilience/api"
        ]
    );
    assert!(plan_apply(&c, docs(RESILIENCE)).unwrap().changed.is_empty());
    let changed = RESILIENCE.replace("percent: 10", "percent: 20");
    let p = plan_apply(&c, docs(&changed)).unwrap();
    assert_eq!(p.changed, ["resilience/api"]);

    // Neither its service nor its mirror can go while it stays.
    for service in ["api", "api-shadow"] {
        let c = plan_delete(&c, "route", "api-canary").unwrap().config;
        let e = plan_delete(&c, "service", service).unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::Rejected);
        assert!(
            e.message.starts_with(&format!(
                "cannot delete service/{service}: resilience/api: "
            )),
            "{e}"
        );
    }
    assert_eq!(
            plan_delete(&c, "service", "api-shadow").unwrap_err().message,
            "cannot delete service/api-shadow: resilience/api: mirror.service: service \"api-shadow\" does not exist; apply a `kind: Service` named api-shadow first"
        );
    let p = plan_delete(&c, "Resiliences", "api").unwrap();
    assert_eq!(p.changed, ["resilience/api"]);
    assert!(p.config.resiliences.is_empty());
    plan_delete(&p.config, "service", "api-shadow").unwrap();
    assert_eq!(
        plan_delete(&c, "resilience", "api-shadow")
            .unwrap_err()
            .kind,
        crate::ErrorKind::NotFound
    );

    let back = plan_rollback(&c, base.clone(), 1);
    assert_eq!(back.changed, ["resilience/api", "service/api-shadow"]);
    assert_eq!(back.config, base);
}

#[test]
fn a_named_resilience_is_keyed_by_its_name() {
    let base = plan_apply(&Config::default(), docs(EXAMPLE))
        .unwrap()
        .config;
    let named = "kind: Resilience\nname: api-tuning\nservice: api\n";
    let c = plan_apply(&base, docs(named)).unwrap().config;
    assert_eq!(c.resilience("api").unwrap().name(), "api-tuning");
    assert!(plan_delete(&c, "resilience", "api").is_err());
    plan_delete(&c, "resilience", "api-tuning").unwrap();
    // A second one for the same service, under another name: refused.
    let e = plan_apply(&c, docs("kind: Resilience\nservice: api\n")).unwrap_err();
    assert_eq!(
            e.message,
            "resilience/api-tuning: service: service api already has resilience/api; at most one Resilience per service (merge the blocks into one)"
        );
}

#[test]
fn resilience_without_service_is_rejected() {
    let err = plan_apply(
        &Config::default(),
        docs("kind: Resilience\nservice: nope\n"),
    )
    .unwrap_err();
    assert_eq!(err.kind, crate::ErrorKind::Rejected);
    assert_eq!(
            err.message,
            "resilience/nope: service: service \"nope\" does not exist; apply a `kind: Service` named nope first"
        );
    // What did not come from YAML (the HTTP API also takes JSON) is
    // checked all the same.
    let mut bad = resource::Resilience::new("api");
    bad.faults = Some(resource::Faults {
        abort: Some(resource::Abort {
            percent: 101.0,
            status: 503,
        }),
        delay: None,
    });
    let mut all = docs("kind: Service\nname: api\n");
    all.push(Resource::Resilience(bad));
    let err = plan_apply(&Config::default(), all).unwrap_err();
    assert_eq!(
        err.message,
        "document 2 (resilience/api): faults.abort.percent: 101 is not a percentage (0..=100)"
    );
}

#[test]
fn configs_stored_before_access_policies_still_read() {
    let old = r#"{"services":[{"name":"api","protocol":"http"}],"routes":[]}"#;
    let c: Config = serde_json::from_str(old).unwrap();
    assert!(c.access_policies.is_empty() && c.mesh.is_none());
    assert!(c.resiliences.is_empty());
    // And a config without them is stored as before.
    assert_eq!(serde_json::to_string(&c).unwrap(), old);
}
