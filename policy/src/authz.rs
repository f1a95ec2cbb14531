//! Authorization of inbound requests: the "authorize" phase, between decode
//! and route. Who may call this proxy's service, by the caller's identity
//! (the SPIFFE ID of its verified certificate), the method and the path.
//!
//! Sans-I/O, in two steps:
//!
//! * [`Authz::compile`], once per snapshot (or static config): the
//!   AccessPolicy of this proxy's own service, if any, and the mesh default
//!   become a table. Bare service names in `from` are expanded to
//!   `spiffe://<trust domain>/service/<name>` here, so a request compares
//!   bytes only. The agent compiles and hands every shard the same `Arc`.
//! * [`Authz::check`], per request: no allocation, no lock, no clock.
//!
//! Semantics (issue 5, "Authorization"):
//!
//! * No AccessPolicy: the mesh default decides (allow, unless a MeshConfig
//!   says `defaultAccess: deny`). A denial names [`MESH_DEFAULT`].
//! * An AccessPolicy: its rules are allow rules, tried in order; the first
//!   whose `from`, `methods` and path all match allows the request. When
//!   none does, the policy's `default` decides, and a denial names the
//!   policy.
//!
//! Paths are matched without their query. A path with a dot segment (`.`
//! or `..`, also percent-encoded, after `\` or before `;`, as in
//! `/v1/%2e%2e;/admin`) never matches a rule with a path condition: the app
//! might resolve it outside the prefix the rule allows. Such a request can
//! still be allowed by a rule without a path condition, or by the default.

use coremesh_api::resource::{self, Access, AccessPolicy, Resource};
use coremesh_api::snapshot::Snapshot;

/// What a denial names when no AccessPolicy applies.
pub const MESH_DEFAULT: &str = "mesh default";

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    Allow,
    /// 403, `coremesh-error: forbidden by policy <policy>`; `policy` is the
    /// AccessPolicy's name or [`MESH_DEFAULT`] (also the metrics label).
    Deny {
        policy: &'a str,
    },
}

impl Decision<'_> {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// A compiled AccessPolicy (or its absence) and the mesh default.
/// Immutable; shared by the shards through an `Arc`.
#[derive(Debug, Clone)]
pub struct Authz {
    /// The AccessPolicy's name, or [`MESH_DEFAULT`].
    policy: Box<str>,
    rules: Box<[CompiledRule]>,
    /// When no rule allows.
    default: Access,
    /// Whether some rule looks at the path (so the path is only scanned for
    /// dot segments when it matters).
    paths: bool,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    callers: Callers,
    /// Empty: any method.
    methods: Box<[Box<[u8]>]>,
    path: PathMatch,
}

#[derive(Debug, Clone)]
enum Callers {
    /// `*`: any authenticated caller.
    Any,
    /// Full SPIFFE IDs.
    Ids(Box<[Box<str>]>),
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
}

impl Default for Authz {
    /// No policy, mesh default allow: every authenticated caller.
    fn default() -> Authz {
        Authz {
            policy: MESH_DEFAULT.into(),
            rules: Box::new([]),
            default: Access::Allow,
            paths: false,
        }
    }
}

impl Authz {
    /// Compiles `policy` (the AccessPolicy of this proxy's own service, if
    /// it has one) and `mesh_default` (the MeshConfig's `defaultAccess`) for
    /// a proxy in `trust_domain`. The error (the NACK reason) says what is
    /// wrong: a policy control should not have sent, or a bad trust domain.
    pub fn compile(
        policy: Option<&AccessPolicy>,
        mesh_default: Access,
        trust_domain: &str,
    ) -> Result<Authz, String> {
        resource::check_trust_domain(trust_domain)
            .map_err(|e| format!("authorization: trust domain: {e}"))?;
        let Some(policy) = policy else {
            return Ok(Authz {
                default: mesh_default,
                ..Authz::default()
            });
        };
        resource::validate(&Resource::AccessPolicy(policy.clone()))
            .map_err(|e| format!("authorization: {e}"))?;
        let rules: Box<[CompiledRule]> = policy
            .rules
            .iter()
            .map(|r| {
                let callers = if r.from.iter().any(|f| f == "*") {
                    Callers::Any
                } else {
                    Callers::Ids(
                        r.from
                            .iter()
                            .map(|f| {
                                if f.starts_with("spiffe://") {
                                    f.as_str().into()
                                } else {
                                    format!("spiffe://{trust_domain}/service/{f}").into()
                                }
                            })
                            .collect(),
                    )
                };
                let path = match (&r.path, &r.path_prefix) {
                    (Some(p), _) => PathMatch::Exact(p.as_bytes().into()),
                    (None, Some(p)) => PathMatch::Prefix(p.as_bytes().into()),
                    (None, None) => PathMatch::Any,
                };
                CompiledRule {
                    callers,
                    methods: r.methods.iter().map(|m| m.as_bytes().into()).collect(),
                    path,
                }
            })
            .collect();
        Ok(Authz {
            policy: policy.name.as_str().into(),
            paths: rules.iter().any(|r| !matches!(r.path, PathMatch::Any)),
            rules,
            default: policy.default,
        })
    }

    /// [`Authz::compile`] of a snapshot's `access_policy` and
    /// `default_access`.
    pub fn from_snapshot(snap: &Snapshot, trust_domain: &str) -> Result<Authz, String> {
        Authz::compile(
            snap.access_policy.as_ref(),
            snap.default_access,
            trust_domain,
        )
    }

    /// The AccessPolicy's name, or [`MESH_DEFAULT`].
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Whether every request is allowed whoever sends it (no policy and
    /// the mesh allows, or a policy whose default is allow): the caller
    /// may skip [`Authz::check`].
    pub fn allows_all(&self) -> bool {
        self.default == Access::Allow
    }

    /// Decides one request. `caller` is the full SPIFFE ID from the peer's
    /// verified certificate (empty when there is none: then only the
    /// default can allow); `method` as received (case-sensitive, RFC 9110
    /// 9.1); `path` the request target, query included or not. For a TCP
    /// connection pass empty `method` and `path`: only rules with neither
    /// condition can allow it.
    pub fn check(&self, caller: &str, method: &[u8], path: &[u8]) -> Decision<'_> {
        // Rules only allow, so under an allow default they cannot change
        // the answer.
        if self.default == Access::Deny && !self.rules.is_empty() {
            let path = without_query(path);
            let plain = !self.paths || !has_dot_segment(path);
            if self
                .rules
                .iter()
                .any(|r| r.matches(caller, method, path, plain))
            {
                return Decision::Allow;
            }
        }
        match self.default {
            Access::Allow => Decision::Allow,
            Access::Deny => Decision::Deny {
                policy: &self.policy,
            },
        }
    }
}

impl CompiledRule {
    /// `plain`: the path has no dot segment, so path conditions may match.
    fn matches(&self, caller: &str, method: &[u8], path: &[u8], plain: bool) -> bool {
        let caller_ok = match &self.callers {
            Callers::Any => !caller.is_empty(),
            Callers::Ids(ids) => ids.iter().any(|id| **id == *caller),
        };
        caller_ok
            && (self.methods.is_empty() || self.methods.iter().any(|m| **m == *method))
            && match &self.path {
                PathMatch::Any => true,
                PathMatch::Exact(p) => plain && path == &**p,
                PathMatch::Prefix(p) => plain && path.starts_with(p),
            }
    }
}

/// The trust domain of a SPIFFE ID (`spiffe://<td>/...`), e.g. of this
/// proxy's own identity, for [`Authz::compile`].
#[cfg(test)]
pub fn trust_domain_of(spiffe_id: &str) -> Option<&str> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let td = rest.split('/').next()?;
    resource::check_trust_domain(td).ok().map(|()| td)
}

/// The path without `?query` or `#fragment`.
fn without_query(path: &[u8]) -> &[u8] {
    match path.iter().position(|&c| c == b'?' || c == b'#') {
        Some(end) => &path[..end],
        None => path,
    }
}

/// Whether some segment is `.` or `..` once `%2e` is read as `.`, with
/// `\`, `%2f` and `%5c` also ending a segment and `;...` parameters
/// ignored: the forms servers are known to resolve (RFC 3986 5.2.4, and
/// the `..;/` and backslash tricks against Java and Windows servers).
fn has_dot_segment(path: &[u8]) -> bool {
    let dot_segment = |dots: u8, other: bool| !other && (dots == 1 || dots == 2);
    let (mut dots, mut other, mut params) = (0u8, false, false);
    let mut i = 0;
    while i < path.len() {
        let (c, len) = match path[i] {
            b'%' if i + 2 < path.len() => {
                match [
                    path[i + 1].to_ascii_lowercase(),
                    path[i + 2].to_ascii_lowercase(),
                ] {
                    [b'2', b'e'] => (b'.', 3),
                    [b'2', b'f'] => (b'/', 3),
                    [b'5', b'c'] => (b'\\', 3),
                    _ => (b'%', 1),
                }
            }
            c => (c, 1),
        };
        match c {
            b'/' | b'\\' => {
                if dot_segment(dots, other) {
                    return true;
                }
                (dots, other, params) = (0, false, false);
            }
            _ if params => {}
            b';' => params = true,
            b'.' => dots = dots.saturating_add(1),
            _ => other = true,
        }
        i += len;
    }
    dot_segment(dots, other)
}

#[cfg(test)]
mod tests {
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
        let e = Authz::compile(Some(&bad), Access::Allow, TD).unwrap_err();
        assert!(
            e.starts_with("authorization: accesspolicy/api-access: rules[0].from: empty"),
            "{e}"
        );
        let e = Authz::compile(None, Access::Allow, "Bad Domain").unwrap_err();
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
        let p = policy("rules: [{from: [web], methods: [GET]}, {from: [web], pathPrefix: /}, {from: [batch]}]\n");
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
}
