use super::*;
use coremesh_api::resource::{parse_documents, AccessRule};

const TD: &str = "coremesh.local";

fn policy(yaml: &str) -> AccessPolicy {
    let text = format!("kind: AccessPolicy\nname: api-access\nservice: api\n{yaml}");
    match parse_documents(&text).unwrap().pop() {
        Some(Resource::AccessPolicy(p)) => p,
        other => panic!("{other:?}"),
    }
}

/// The example, a rule for a caller of another trust domain
/// with an exact path and any method, and a health check anyone may
/// GET.
fn api_access() -> Authz {
    let p = policy(
        "default: deny
rules:
  - from: [web]
    methods: [GET, POST]
    pathPrefix: /v1/
  - from: [spiffe://other.td/service/batch]
    path: /admin/reindex
  - from: [\"*\"]
    methods: [GET]
    path: /healthz
",
    );
    Authz::compile(Some(&p), Access::Allow, TD).unwrap()
}

const WEB: &str = "spiffe://coremesh.local/service/web";
const DB: &str = "spiffe://coremesh.local/service/db";
const BATCH: &str = "spiffe://other.td/service/batch";

#[test]
fn allow_deny_matrix_by_caller_method_and_path() {
    let a = api_access();
    let deny = Decision::Deny {
        policy: "api-access",
    };
    #[rustfmt::skip]
        let cases: &[(&str, &str, &str, bool)] = &[
            // Rule 1: web, GET or POST, under /v1/.
            (WEB, "GET", "/v1/users", true),
            (WEB, "POST", "/v1/users?page=2", true),
            (WEB, "GET", "/v1/", true),
            (WEB, "GET", "/v1/a..b/.well-known/x.json", true),
            (WEB, "GET", "/v1/%2", true),
            (WEB, "DELETE", "/v1/users", false),
            (WEB, "get", "/v1/users", false),
            (WEB, "GET", "/v2/users", false),
            (WEB, "GET", "/v1", false),
            (WEB, "GET", "/v1?/", false),
            (WEB, "GET", "/V1/users", false),
            // Dot segments never match a path rule, however written.
            (WEB, "GET", "/v1/../admin", false),
            (WEB, "GET", "/v1/./users", false),
            (WEB, "GET", "/v1/users/..", false),
            (WEB, "GET", "/v1/%2e%2e/admin", false),
            (WEB, "GET", "/v1/%2E%2e%2fadmin", false),
            (WEB, "GET", "/v1/..;/admin", false),
            (WEB, "GET", "/v1/..%5cadmin", false),
            (WEB, "GET", "/v1/..\\admin", false),
            // Other callers: a bare name is this trust domain only.
            ("spiffe://other.td/service/web", "GET", "/v1/users", false),
            ("spiffe://coremesh.local/service/webx", "GET", "/v1/users", false),
            ("spiffe://coremesh.local/service/we", "GET", "/v1/users", false),
            (DB, "GET", "/v1/users", false),
            ("", "GET", "/v1/users", false),
            // Rule 2: a full SPIFFE ID, any method, an exact path.
            (BATCH, "PUT", "/admin/reindex", true),
            (BATCH, "DELETE", "/admin/reindex?now=1", true),
            (BATCH, "PUT", "/admin/reindex/", false),
            (BATCH, "PUT", "/admin/reindexx", false),
            (BATCH, "GET", "/v1/users", false),
            ("spiffe://coremesh.local/service/batch", "PUT", "/admin/reindex", false),
            // Rule 3: any authenticated caller may GET /healthz.
            (DB, "GET", "/healthz", true),
            (WEB, "GET", "/healthz", true),
            (BATCH, "GET", "/healthz#x", true),
            (DB, "POST", "/healthz", false),
            (DB, "GET", "/healthz/x", false),
            ("", "GET", "/healthz", false),
        ];
    for &(caller, method, path, allowed) in cases {
        let want = if allowed { Decision::Allow } else { deny };
        assert_eq!(
            a.check(caller, method.as_bytes(), path.as_bytes()),
            want,
            "{caller} {method} {path}"
        );
    }
    assert_eq!(a.policy(), "api-access");
    assert!(!a.allows_all());
}

#[test]
fn without_a_policy_the_mesh_default_decides() {
    let open = Authz::compile(None, Access::Allow, TD).unwrap();
    assert!(open.allows_all());
    for caller in [WEB, DB, BATCH, ""] {
        assert_eq!(open.check(caller, b"DELETE", b"/anything"), Decision::Allow);
    }
    assert_eq!(open.policy(), MESH_DEFAULT);
    assert_eq!(Authz::default().check(WEB, b"GET", b"/"), Decision::Allow);

    let closed = Authz::compile(None, Access::Deny, TD).unwrap();
    assert!(!closed.allows_all());
    for caller in [WEB, DB, BATCH, ""] {
        assert_eq!(
            closed.check(caller, b"GET", b"/healthz"),
            Decision::Deny {
                policy: "mesh default"
            }
        );
    }
}

#[test]
fn a_policy_overrides_the_mesh_default() {
    // Mesh-wide deny, but this service's policy allows web.
    let p = policy("rules: [{from: [web]}]\n");
    let a = Authz::compile(Some(&p), Access::Deny, TD).unwrap();
    assert_eq!(a.check(WEB, b"PATCH", b"/x"), Decision::Allow);
    assert_eq!(
        a.check(DB, b"GET", b"/x"),
        Decision::Deny {
            policy: "api-access"
        }
    );
    // A policy whose default is allow allows everyone, mesh deny or not.
    let p = policy("default: allow\nrules: [{from: [web], path: /only}]\n");
    let a = Authz::compile(Some(&p), Access::Deny, TD).unwrap();
    assert!(a.allows_all());
    assert_eq!(a.check(DB, b"GET", b"/other"), Decision::Allow);
    assert_eq!(a.check("", b"GET", b"/v1/../x"), Decision::Allow);
    // No rules, default deny: nobody.
    let a = Authz::compile(Some(&policy("")), Access::Allow, TD).unwrap();
    assert!(!a.check(WEB, b"GET", b"/").is_allow());
}

#[test]
fn a_rule_without_a_path_admits_dot_segments() {
    let p = policy("rules: [{from: [web], methods: [GET]}]\n");
    let a = Authz::compile(Some(&p), Access::Allow, TD).unwrap();
    assert_eq!(a.check(WEB, b"GET", b"/v1/../admin"), Decision::Allow);
}

#[test]
fn compile_refuses_what_control_should_not_send() {
    let bad = AccessPolicy {
        rules: vec![AccessRule {
            from: vec![],
            methods: vec![],
            path: None,
            path_prefix: None,
        }],
        ..policy("")
    };
    let e = Authz::compile(Some(&bad), Access::Allow, TD)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("authorization: accesspolicy/api-access: rules[0].from: empty"),
        "{e}"
    );
    let e = Authz::compile(None, Access::Allow, "Bad Domain")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("authorization: trust domain: "), "{e}");
}

#[test]
fn from_a_snapshot() {
    let snap = Snapshot {
        access_policy: Some(policy("rules: [{from: [web]}]\n")),
        default_access: Access::Allow,
        ..Snapshot::default()
    };
    let a = Authz::from_snapshot(&snap, TD).unwrap();
    assert!(a.check(WEB, b"GET", b"/").is_allow());
    assert!(!a.check(DB, b"GET", b"/").is_allow());
    let snap = Snapshot {
        default_access: Access::Deny,
        ..Snapshot::default()
    };
    let a = Authz::from_snapshot(&snap, TD).unwrap();
    assert_eq!(
        a.check(WEB, b"GET", b"/"),
        Decision::Deny {
            policy: MESH_DEFAULT
        }
    );
}

#[test]
fn tcp_connections_match_by_caller_only() {
    // A TCP connection has no method or path: only rules without
    // either can allow it.
    let p = policy(
        "rules: [{from: [web], methods: [GET]}, {from: [web], pathPrefix: /}, {from: [batch]}]\n",
    );
    let a = Authz::compile(Some(&p), Access::Allow, TD).unwrap();
    assert!(!a.check(WEB, b"", b"").is_allow());
    assert!(a
        .check("spiffe://coremesh.local/service/batch", b"", b"")
        .is_allow());
}

#[test]
fn trust_domains() {
    assert_eq!(trust_domain_of(WEB), Some(TD));
    assert_eq!(trust_domain_of("spiffe://td"), Some("td"));
    assert_eq!(trust_domain_of("spiffe://TD/service/a"), None);
    assert_eq!(trust_domain_of("https://td/service/a"), None);
    assert_eq!(trust_domain_of("spiffe:///service/a"), None);
}

#[test]
fn dot_segments() {
    for p in [
        ".",
        "..",
        "/.",
        "/..",
        "/a/./b",
        "/a/../b",
        "/a/..",
        "/%2e",
        "/%2E%2E/",
        "/a/.%2e/b",
        "/a/..;x/b",
        "/a/.;/b",
        "\\..\\",
        "/a%2f..%2fb",
        "/a/..%5c",
    ] {
        assert!(has_dot_segment(p.as_bytes()), "{p}");
    }
    for p in [
        "",
        "/",
        "/a",
        "/a/b/",
        "/...",
        "/a/.../b",
        "/.a",
        "/a./",
        "/a/..b",
        "/%2e%2e%2e",
        "/%2ex",
        "/a;..",
        "/a/%",
        "/a/%2",
        "/a/%zz",
        "//a",
    ] {
        assert!(!has_dot_segment(p.as_bytes()), "{p}");
    }
    assert_eq!(without_query(b"/a?b#c"), b"/a");
    assert_eq!(without_query(b"/a#c?d"), b"/a");
}
