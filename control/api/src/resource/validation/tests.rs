use super::*;
use crate::resource::parse_documents;

/// A Service, then a Route whose second rule is `rule`, parsed; the error text.
fn route_err(rule: &str) -> String {
    let text = format!(
        "kind: Service\nname: api\n---\nkind: Route\nname: api-canary\nservice: api\nrules:\n  - backends: [{{}}]\n{rule}"
    );
    parse_documents(&text).unwrap_err().to_string()
}

fn prefix(field: &str) -> String {
    format!("document 2 (route/api-canary): {field}: ")
}

#[test]
fn zero_weights_everywhere_in_a_rule() {
    assert_eq!(
        route_err("  - backends: [ { weight: 0 } ]\n"),
        "document 2 (route/api-canary): rules[1].backends[0].weight: 0 for every backend of the rule; at least one must be > 0"
    );
    // One non-zero weight is enough.
    let ok = "kind: Service\nname: api\n---\nkind: Route\nname: r\nservice: api\nrules:\n  - backends: [{weight: 0}, {weight: 3}]\n";
    assert!(parse_documents(ok).is_ok());
}

#[test]
fn weight_bounds() {
    let e = route_err("  - backends: [ { weight: 100001 } ]\n");
    assert!(e.starts_with(&prefix("rules[1].backends[0].weight")), "{e}");
    assert!(e.ends_with("100001 is over the maximum of 100000"), "{e}");
    let e = route_err("  - backends: [ { weight: -1 } ]\n");
    assert!(
        e.contains("rules[1].backends[0].weight: invalid type"),
        "{e}"
    );
}

#[test]
fn names_are_dns_labels() {
    for bad in ["Api", "-api", "api-", "a_b", "a.b", "\"\""] {
        let text = format!("kind: Service\nname: {bad}\n");
        let e = parse_documents(&text).unwrap_err();
        assert_eq!(e.field, "name", "{bad}: {e}");
    }
    let long = "a".repeat(64);
    let e = parse_documents(&format!("kind: Service\nname: {long}\n")).unwrap_err();
    assert!(
        e.to_string().ends_with("name: 64 characters; at most 63"),
        "{e}"
    );
    for good in ["a", "api", "api-v2", "0", &"a".repeat(63)] {
        let text = format!("kind: Service\nname: {good}\n");
        assert!(parse_documents(&text).is_ok(), "{good}");
    }
    let text = "kind: Route\nname: r\nservice: API\nrules: [{backends: [{}]}]\n";
    assert_eq!(parse_documents(text).unwrap_err().field, "service");
}

#[test]
fn rules_and_backends_are_not_empty() {
    let text = "kind: Route\nname: r\nservice: api\nrules: []\n";
    assert_eq!(
        parse_documents(text).unwrap_err().to_string(),
        "document 1 (route/r): rules: empty; a Route needs at least one rule"
    );
    assert_eq!(
        route_err("  - backends: []\n"),
        format!(
            "{}empty; a rule needs at least one backend",
            prefix("rules[1].backends")
        )
    );
}

#[test]
fn paths_start_with_a_slash() {
    let e = route_err("  - match: { path: api }\n    backends: [{}]\n");
    assert_eq!(
        e,
        format!(
            "{}\"api\" must start with '/'",
            prefix("rules[1].match.path")
        )
    );
    let e = route_err("  - match: { pathPrefix: api/ }\n    backends: [{}]\n");
    assert!(e.starts_with(&prefix("rules[1].match.pathPrefix")), "{e}");
    let e = route_err("  - match: { path: \"/a b\" }\n    backends: [{}]\n");
    assert!(e.ends_with("contains a space or control character"), "{e}");
}

#[test]
fn header_names_are_tokens() {
    let e = route_err("  - match: { headers: { \"x canary\": \"1\" } }\n    backends: [{}]\n");
    assert!(
        e.starts_with(&prefix("rules[1].match.headers.x canary")),
        "{e}"
    );
    let e = route_err("  - match: { headers: { \"x:y\": \"1\" } }\n    backends: [{}]\n");
    assert!(e.contains("not a valid header name"), "{e}");
    let e = route_err("  - match: { headers: { x: \"a\\nb\" } }\n    backends: [{}]\n");
    assert!(e.ends_with("the value contains a control character"), "{e}");
}

#[test]
fn methods_are_uppercase_tokens() {
    let e = route_err("  - match: { methods: [GET, post] }\n    backends: [{}]\n");
    assert_eq!(
        e,
        format!(
            "{}\"post\" is not an uppercase method such as GET or POST",
            prefix("rules[1].match.methods[1]")
        )
    );
    let e = route_err("  - match: { methods: [\"GE T\"] }\n    backends: [{}]\n");
    assert!(e.starts_with(&prefix("rules[1].match.methods[0]")), "{e}");
    let e = route_err("  - match: { methods: [\"\"] }\n    backends: [{}]\n");
    assert!(e.starts_with(&prefix("rules[1].match.methods[0]")), "{e}");
}

#[test]
fn retries_and_timeouts() {
    let e = route_err("  - retries: { attempts: 11 }\n    backends: [{}]\n");
    assert_eq!(
        e,
        format!(
            "{}11 is over the maximum of 10",
            prefix("rules[1].retries.attempts")
        )
    );
    assert!(!route_err("  - retries: { attempts: 10 }\n    backends: []\n").contains("attempts"));
    let e = route_err("  - timeout: 0s\n    backends: [{}]\n");
    assert_eq!(
        e,
        format!("{}must be greater than 0", prefix("rules[1].timeout"))
    );
    let e = route_err("  - retries: { attempts: 1, perTryTimeout: 0ms }\n    backends: [{}]\n");
    assert_eq!(
        e,
        format!(
            "{}must be greater than 0",
            prefix("rules[1].retries.perTryTimeout")
        )
    );
}

#[test]
fn validate_works_without_a_document() {
    let r = Resource::Service(Service {
        name: "Bad".into(),
        protocol: Default::default(),
        port: None,
        addresses: Vec::new(),
    });
    let e = validate(&r).unwrap_err();
    assert_eq!(e.document, None);
    assert!(e.to_string().starts_with("service/Bad: name: "), "{e}");
}

/// Every resource of `text`, by kind.
#[derive(Default)]
pub(crate) struct Set {
    pub services: Vec<Service>,
    pub routes: Vec<Route>,
    pub policies: Vec<AccessPolicy>,
    pub resiliences: Vec<Resilience>,
}

impl Set {
    pub(crate) fn validate(&self) -> Result<(), ResourceError> {
        validate_set(
            &self.services,
            &self.routes,
            &self.policies,
            &self.resiliences,
        )
    }
}

pub(crate) fn set(text: &str) -> Set {
    let mut set = Set::default();
    for r in parse_documents(text).unwrap() {
        match r {
            Resource::Service(s) => set.services.push(s),
            Resource::Route(r) => set.routes.push(r),
            Resource::AccessPolicy(p) => set.policies.push(p),
            Resource::Resilience(r) => set.resiliences.push(r),
            Resource::MeshConfig(_) => {}
        }
    }
    set
}

pub(crate) fn set_err(text: &str) -> String {
    set(text).validate().unwrap_err().to_string()
}

#[test]
fn set_rules() {
    set(crate::resource::EXAMPLE).validate().unwrap();

    assert_eq!(
        set_err("kind: Route\nname: r\nservice: web\nrules: [{backends: [{}]}]\n"),
        "route/r: service: service \"web\" does not exist; apply a `kind: Service` named web first"
    );

    let text = "kind: Service\nname: api\n---\nkind: Route\nname: a\nservice: api\nrules: [{backends: [{}]}]\n---\nkind: Route\nname: b\nservice: api\nrules: [{backends: [{}]}]\n";
    assert_eq!(
        set_err(text),
        "route/b: service: service api already has route/a; at most one Route per service (merge the rules into one)"
    );

    assert_eq!(
        set_err("kind: Service\nname: api\n---\nkind: Service\nname: api\n"),
        "service/api: name: defined twice"
    );
}

#[test]
fn access_policy_set_rules() {
    set(crate::resource::ACCESS_EXAMPLE).validate().unwrap();

    // Like a Route: the service must exist.
    assert_eq!(
        set_err("kind: AccessPolicy\nname: p\nservice: web\n"),
        "accesspolicy/p: service: service \"web\" does not exist; apply a `kind: Service` named web first"
    );
    let two = "kind: Service\nname: api\n---\nkind: AccessPolicy\nname: a\nservice: api\n---\nkind: AccessPolicy\nname: b\nservice: api\n";
    assert_eq!(
        set_err(two),
        "accesspolicy/b: service: service api already has accesspolicy/a; at most one AccessPolicy per service (merge the rules into one)"
    );
    // A Route and an AccessPolicy for the same service do not collide.
    let both = "kind: Service\nname: api\n---\nkind: Route\nname: api\nservice: api\nrules: [{backends: [{}]}]\n---\nkind: AccessPolicy\nname: api\nservice: api\n";
    set(both).validate().unwrap();
}

/// An AccessPolicy for `api` whose only rule is `rule`, parsed; the
/// error text.
fn policy_err(rule: &str) -> String {
    let text = format!(
        "kind: AccessPolicy\nname: api-access\nservice: api\nrules:\n  - from: [web]\n{rule}"
    );
    parse_documents(&text).unwrap_err().to_string()
}

fn policy_prefix(field: &str) -> String {
    format!("document 1 (accesspolicy/api-access): {field}: ")
}

#[test]
fn access_rule_callers() {
    assert_eq!(
        policy_err("  - from: []\n"),
        format!(
            "{}empty; list the callers (service names, SPIFFE IDs, or \"*\" for any mesh identity)",
            policy_prefix("rules[1].from")
        )
    );
    let e = policy_err("  - methods: [GET]\n");
    assert!(e.contains("rules[1]: missing field `from`"), "{e}");
    let e = policy_err("  - from: [web, Web]\n");
    assert!(e.starts_with(&policy_prefix("rules[1].from[1]")), "{e}");
    assert!(
        e.ends_with("a caller is a service name, a SPIFFE ID (spiffe://...) or \"*\""),
        "{e}"
    );
    for bad in [
        "spiffe://",
        "spiffe://td",
        "spiffe://td/",
        "spiffe://TD/service/web",
        "spiffe://td/service//web",
        "spiffe://td/service/../web",
        "spiffe://td/service/web?x=1",
        "spiffe://td:8080/service/web",
        "spiffe://user@td/service/web",
    ] {
        let e = policy_err(&format!("  - from: [\"{bad}\"]\n"));
        assert!(
            e.starts_with(&policy_prefix("rules[1].from[0]")),
            "{bad}: {e}"
        );
        assert!(e.contains("is not a SPIFFE ID"), "{bad}: {e}");
    }
    let ok = "kind: AccessPolicy\nname: p\nservice: api\nrules:\n  - from: [web, \"*\", spiffe://other.td/service/web, spiffe://td/ns/a_b/sa/x.y-z]\n";
    parse_documents(ok).unwrap();
}

#[test]
fn access_rule_methods_and_paths() {
    let e = policy_err("  - from: [web]\n    methods: [get]\n");
    assert_eq!(
        e,
        format!(
            "{}\"get\" is not an uppercase method such as GET or POST",
            policy_prefix("rules[1].methods[0]")
        )
    );
    let e = policy_err("  - from: [web]\n    path: v1\n");
    assert_eq!(
        e,
        format!(
            "{}\"v1\" must start with '/'",
            policy_prefix("rules[1].path")
        )
    );
    let e = policy_err("  - from: [web]\n    path: /v1\n    pathPrefix: /v1/\n");
    assert_eq!(
        e,
        format!(
            "{}set together with path; give one of path (exact) and pathPrefix",
            policy_prefix("rules[1].pathPrefix")
        )
    );
    let e = policy_err("  - from: [web]\n    pathPrefix: /v1?x\n");
    assert!(e.starts_with(&policy_prefix("rules[1].pathPrefix")), "{e}");
    assert!(e.ends_with("paths are matched without the query"), "{e}");
    let e = policy_err("  - from: [web]\n    path: /v1/../admin\n");
    assert!(e.ends_with("has a '.' or '..' segment"), "{e}");
    let e = policy_err("  - from: [web]\n    host: api\n");
    assert!(e.contains("rules[1]: unknown field `host`"), "{e}");
}

#[test]
fn access_policy_fields() {
    let e = parse_documents("kind: AccessPolicy\nname: p\nservice: api\ndefault: maybe\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("document 1 (accesspolicy/p)"), "{e}");
    assert!(e.contains("unknown variant `maybe`"), "{e}");
    let e = parse_documents("kind: AccessPolicy\nname: p\nservice: Api\n").unwrap_err();
    assert_eq!(e.field, "service");
    let e = parse_documents("kind: AccessPolicy\nname: p\n").unwrap_err();
    assert!(e.to_string().contains("missing field `service`"), "{e}");
    let e = parse_documents("kind: AccessPolicy\nname: p\nservice: api\nport: 1\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `port`"), "{e}");
}

#[test]
fn mesh_config_is_named_mesh() {
    assert_eq!(
        parse_documents("kind: MeshConfig\nname: global\n")
            .unwrap_err()
            .to_string(),
        "document 1 (meshconfig/global): name: \"global\": the mesh has one MeshConfig and it is named mesh"
    );
    let e = parse_documents("kind: MeshConfig\nname: mesh\ndefaultAccess: nope\n").unwrap_err();
    assert!(e.to_string().contains("unknown variant `nope`"), "{e}");
    let e = parse_documents("kind: MeshConfig\nname: mesh\ndefault: deny\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `default`"), "{e}");
}

#[test]
fn errors_keep_their_cause() {
    use std::error::Error as _;

    use crate::resource::{
        parse_duration, DurationError, NameError, Reason, RegexError, SpiffeIdProblem,
        TrustDomainError,
    };

    // A regular expression that does not compile: the ResourceError's
    // source is the typed reason, and below it the regex crate's error.
    let text = "kind: Service\nname: api\n---\nkind: Route\nname: r\nservice: api\nrules:\n  - match: { pathRegex: \"/v(\" }\n    backends: [{}]\n";
    let e = parse_documents(text).unwrap_err();
    assert_eq!(e.field, "rules[0].match.pathRegex");
    assert!(
        matches!(&e.reason, Reason::Regex(r) if matches!(**r, RegexError::Invalid { .. })),
        "{e:?}"
    );
    let reason = e.source().expect("the reason");
    assert_eq!(reason.to_string(), e.reason.to_string());
    let regex = reason.source().expect("the regex crate's error");
    assert!(regex.downcast_ref::<regex::Error>().is_some(), "{regex:?}");
    assert!(e.to_string().ends_with(&reason.to_string()), "{e}");

    // A reason in words has nothing underneath.
    let e = parse_documents("kind: Service\nname: api\n---\nkind: Service\nname: api\n")
        .and_then(|rs| {
            let services: Vec<_> = rs
                .into_iter()
                .filter_map(|r| match r {
                    Resource::Service(s) => Some(s),
                    _ => None,
                })
                .collect();
            validate_set(&services, &[], &[], &[])
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "service/api: name: defined twice");
    assert!(e.source().is_none());

    // A caller that is not a name keeps the name's error.
    let e = policy_err("  - from: [Web]\n");
    assert!(e.contains("\"Web\" is not a DNS label"), "{e}");
    let r = Resource::AccessPolicy(AccessPolicy {
        name: "p".into(),
        service: "api".into(),
        default: crate::resource::Access::Deny,
        rules: vec![AccessRule {
            from: vec!["Web".into()],
            methods: vec![],
            path: None,
            path_prefix: None,
        }],
    });
    let e = validate(&r).unwrap_err();
    assert!(
        matches!(&e.reason, Reason::Caller(NameError::NotDnsLabel { name }) if name == "Web"),
        "{e:?}"
    );

    // A SPIFFE ID whose trust domain is wrong says so, and keeps why.
    let e = check_spiffe_id("spiffe://TD/service/web").unwrap_err();
    assert_eq!(
        e.problem,
        SpiffeIdProblem::TrustDomain(TrustDomainError::BadCharacter("TD".into()))
    );
    assert_eq!(
        e.to_string(),
        "\"spiffe://TD/service/web\" is not a SPIFFE ID: \"TD\" is not a trust domain: lowercase letters, digits, '.', '-' and '_'"
    );

    // A duration that is not a number keeps the integer parser's error.
    let e = parse_duration("99999999999999999999s").unwrap_err();
    assert!(matches!(e, DurationError::NotANumber { .. }), "{e:?}");
    assert!(e.source().is_some());
    assert_eq!(
        e.to_string(),
        "\"99999999999999999999s\" is not a duration like 500ms or 2s"
    );
}

/// `port` and `addresses` (interception) are optional; a Service without
/// them reads as before, and bad values are refused with the field named.
#[test]
fn service_port_and_virtual_ips() {
    let ok =
        parse_documents("kind: Service\nname: api\nport: 8080\naddresses: [10.96.0.10]\n").unwrap();
    let Resource::Service(s) = &ok[0] else {
        panic!("{ok:?}")
    };
    assert_eq!(s.port, Some(8080));
    assert_eq!(
        s.addresses,
        vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    let plain = parse_documents("kind: Service\nname: api\n").unwrap();
    assert!(
        matches!(&plain[0], Resource::Service(s) if s.port.is_none() && s.addresses.is_empty())
    );
    let yaml = serde_json::to_string(&plain[0]).unwrap();
    assert!(
        !yaml.contains("port") && !yaml.contains("addresses"),
        "{yaml}"
    );

    let err = |t: &str| parse_documents(t).unwrap_err().to_string();
    assert_eq!(
        err("kind: Service\nname: api\nport: 0\n"),
        "document 1 (service/api): port: 0 is not a port (1..=65535)"
    );
    assert!(err("kind: Service\nname: api\naddresses: [10.96.0.10]\n")
        .starts_with("document 1 (service/api): addresses: virtual IPs need `port`"));
    assert!(
        err("kind: Service\nname: api\nport: 80\naddresses: [127.0.0.1]\n").starts_with(
            "document 1 (service/api): addresses[0]: 127.0.0.1 cannot be a virtual IP"
        )
    );
    assert_eq!(
        set_err("kind: Service\nname: a\nport: 80\naddresses: [10.96.0.10]\n---\nkind: Service\nname: b\nport: 80\naddresses: [10.96.0.10]\n"),
        "service/b: addresses: 10.96.0.10 port 80 is already service a's virtual IP"
    );
}

#[test]
fn mesh_config_outbound_policy() {
    let r = parse_documents("kind: MeshConfig\nname: mesh\noutboundPolicy: deny\n").unwrap();
    assert!(
        matches!(&r[0], Resource::MeshConfig(m) if m.outbound_policy == crate::resource::Access::Deny)
    );
    let r = parse_documents("kind: MeshConfig\nname: mesh\n").unwrap();
    assert!(
        matches!(&r[0], Resource::MeshConfig(m) if m.outbound_policy == crate::resource::Access::Allow)
    );
    assert!(!serde_json::to_string(&r[0]).unwrap().contains("outbound"));
}
