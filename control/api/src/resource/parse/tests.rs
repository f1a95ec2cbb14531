use std::time::Duration;

use super::*;
use crate::resource::{
    check_collector, Access, AccessRule, Protocol, RetryOn, ValueMatch, ACCESS_EXAMPLE, EXAMPLE,
};

fn err(text: &str) -> String {
    parse_documents(text).unwrap_err().to_string()
}

#[test]
fn parses_the_issue_example() {
    let rs = parse_documents(EXAMPLE).unwrap();
    assert_eq!(rs.len(), 2);
    let Resource::Service(s) = &rs[0] else {
        panic!("{rs:?}")
    };
    assert_eq!(s.name, "api");
    assert_eq!(s.protocol, Protocol::Http);
    assert_eq!(rs[0].kind_name(), "service/api");
    let Resource::Route(r) = &rs[1] else {
        panic!("{rs:?}")
    };
    assert_eq!(rs[1].kind_name(), "route/api-canary");
    assert_eq!(rs[1].name(), "api-canary");
    assert_eq!(r.service, "api");
    assert_eq!(r.rules.len(), 2);
    let canary = &r.rules[0];
    let m = canary.matches.as_ref().unwrap();
    assert_eq!(m.headers["x-canary"], ValueMatch::Exact("true".into()));
    assert_eq!(canary.backends.len(), 1);
    assert_eq!(canary.backends[0].subset["version"], "v2");
    assert_eq!(canary.backends[0].weight, 1);
    let main = &r.rules[1];
    assert_eq!(
        main.matches.as_ref().unwrap().path_prefix.as_deref(),
        Some("/")
    );
    assert_eq!(main.timeout, Some(Duration::from_secs(2)));
    let retries = main.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, 2);
    assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        retries.on,
        [RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::Status5xx]
    );
    let weights: Vec<u32> = main.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [90, 10]);
}

#[test]
fn api_version_is_optional_and_checked() {
    let with = format!("apiVersion: coremesh/v1\n{EXAMPLE}");
    assert_eq!(
        parse_documents(&with).unwrap(),
        parse_documents(EXAMPLE).unwrap()
    );
    assert_eq!(
        err("apiVersion: coremesh/v2\nkind: Service\nname: api\n"),
        "document 1: apiVersion: \"coremesh/v2\" is not supported; use `apiVersion: coremesh/v1` or leave it out"
    );
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    assert_eq!(parse_documents("").unwrap(), []);
    assert_eq!(parse_documents("# nothing\n").unwrap(), []);
    let text = "---\n# empty\n---\nkind: Service\nname: a\n---\n---\nkind: Service\nname: B\n";
    assert_eq!(
        err(text),
        "document 4 (service/B): name: \"B\" is not a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
    );
    let text = "---\nkind: Service\nname: a\n---\n\n---\nkind: Service\nname: b\n";
    let names: Vec<_> = parse_documents(text)
        .unwrap()
        .iter()
        .map(Resource::kind_name)
        .collect();
    assert_eq!(names, ["service/a", "service/b"]);
}

#[test]
fn kind_is_required_and_known() {
    assert_eq!(
        err("name: api\n"),
        "document 1: kind: missing; expected Service, Route, AccessPolicy, Resilience or MeshConfig"
    );
    assert_eq!(
        err("kind: Service\nname: a\n---\nkind: Gateway\nname: g\n"),
        "document 2: kind: unknown kind \"Gateway\"; expected Service, Route, AccessPolicy, Resilience or MeshConfig"
    );
    assert_eq!(
        err("- kind: Service\n"),
        "document 1: expected a mapping with `kind:` Service, Route, AccessPolicy, Resilience or MeshConfig, found a sequence"
    );
}

#[test]
fn syntax_errors_give_document_and_position() {
    let e = parse_documents("kind: Service\nname: a\n---\nkind: Route\nname: [x\n").unwrap_err();
    assert_eq!(e.document, Some(2));
    let (line, _col) = e.location.unwrap();
    assert!(line >= 5, "{e}");
    assert!(e.to_string().starts_with("document 2 at line "), "{e}");
}

#[test]
fn type_errors_give_field_path_and_position() {
    let text = "kind: Route\nname: r\nservice: api\nrules:\n  - backends:\n      - weight: lots\n";
    let e = parse_documents(text).unwrap_err();
    assert_eq!(e.location.map(|l| l.0), Some(6), "{e}");
    let s = e.to_string();
    assert!(s.starts_with("document 1 (route/r) at line 6:"), "{s}");
    assert!(
        s.contains("rules[0].backends[0].weight: invalid type"),
        "{s}"
    );

    let s = err("kind: Service\nname: api\nprot: 80\n");
    assert!(s.starts_with("document 1 (service/api)"), "{s}");
    assert!(s.contains("unknown field `prot`"), "{s}");

    let s = err("kind: Route\nname: r\nservice: api\n");
    assert!(s.contains("missing field `rules`"), "{s}");

    let s =
        err("kind: Route\nname: r\nservice: api\nrules:\n  - timeout: 2 s\n    backends: [{}]\n");
    // Custom errors are placed at the enclosing mapping.
    assert!(s.contains("rules[0]: \"2 s\": unknown unit"), "{s}");
}

#[test]
fn parses_the_access_policy_example() {
    let rs = parse_documents(ACCESS_EXAMPLE).unwrap();
    assert_eq!(rs.len(), 3);
    let Resource::AccessPolicy(p) = &rs[1] else {
        panic!("{rs:?}")
    };
    assert_eq!(rs[1].kind_name(), "accesspolicy/api-access");
    assert_eq!(p.service, "api");
    assert_eq!(p.default, Access::Deny);
    assert_eq!(
        p.rules,
        [AccessRule {
            from: vec!["web".into()],
            methods: vec!["GET".into(), "POST".into()],
            path: None,
            path_prefix: Some("/v1/".into()),
        }]
    );
    let Resource::MeshConfig(m) = &rs[2] else {
        panic!("{rs:?}")
    };
    assert_eq!(rs[2].kind_name(), "meshconfig/mesh");
    assert_eq!(m.default_access, Access::Deny);

    // Defaults: a policy denies what no rule allows; the mesh allows.
    let rs = parse_documents(
        "kind: AccessPolicy\nname: p\nservice: api\n---\nkind: MeshConfig\nname: mesh\n",
    )
    .unwrap();
    let Resource::AccessPolicy(p) = &rs[0] else {
        panic!("{rs:?}")
    };
    assert_eq!((p.default, p.rules.len()), (Access::Deny, 0));
    let Resource::MeshConfig(m) = &rs[1] else {
        panic!("{rs:?}")
    };
    assert_eq!(m.default_access, Access::Allow);

    let yaml = to_yaml(&parse_documents(ACCESS_EXAMPLE).unwrap());
    assert!(yaml.contains("kind: AccessPolicy\n"), "{yaml}");
    assert!(yaml.contains("pathPrefix: /v1/\n"), "{yaml}");
    assert!(yaml.contains("defaultAccess: deny\n"), "{yaml}");
    assert_eq!(
        parse_documents(&yaml).unwrap(),
        parse_documents(ACCESS_EXAMPLE).unwrap()
    );
}

#[test]
fn to_yaml_round_trips() {
    let rs = parse_documents(EXAMPLE).unwrap();
    let yaml = to_yaml(&rs);
    assert!(
        yaml.starts_with("apiVersion: coremesh/v1\nkind: Service\nname: api\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("---\napiVersion: coremesh/v1\nkind: Route\n"),
        "{yaml}"
    );
    assert_eq!(parse_documents(&yaml).unwrap(), rs);
    assert_eq!(to_yaml(&[]), "");
}

#[test]
fn mesh_config_tracing() {
    let rs = parse_documents(
        "kind: MeshConfig\nname: mesh\ntracing: {sampling: 0.01, collector: \"http://10.0.0.9:4318\"}\n",
    )
    .unwrap();
    let Resource::MeshConfig(m) = &rs[0] else {
        panic!("{rs:?}")
    };
    let t = m.tracing.as_ref().unwrap();
    assert_eq!(
        (t.sampling, t.collector.as_str()),
        (0.01, "http://10.0.0.9:4318")
    );
    let yaml = to_yaml(&rs);
    assert!(yaml.contains("collector: http://10.0.0.9:4318"), "{yaml}");
    assert_eq!(parse_documents(&yaml).unwrap(), rs);

    let e = err(
        "kind: MeshConfig\nname: mesh\ntracing: {sampling: 1.5, collector: \"http://c:4318\"}\n",
    );
    assert!(e.contains("tracing.sampling") && e.contains("1.5"), "{e}");
    for bad in [
        "https://c:4318",
        "c:4318",
        "http://",
        "http://c:99999",
        "http://a b",
    ] {
        let e = err(&format!(
            "kind: MeshConfig\nname: mesh\ntracing: {{sampling: 0.5, collector: \"{bad}\"}}\n"
        ));
        assert!(e.contains("tracing.collector"), "{bad}: {e}");
    }
    for good in [
        "http://c:4318",
        "http://[::1]:4318",
        "http://127.0.0.1:4318/otlp",
        "http://collector",
    ] {
        assert_eq!(check_collector(good), Ok(()), "{good}");
    }
}
