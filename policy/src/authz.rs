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

use crate::error::CompileError;

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
    ) -> Result<Authz, CompileError> {
        resource::check_trust_domain(trust_domain)
            .map_err(|e| CompileError::TrustDomain(e.into()))?;
        let Some(policy) = policy else {
            return Ok(Authz {
                default: mesh_default,
                ..Authz::default()
            });
        };
        resource::validate(&Resource::AccessPolicy(policy.clone()))
            .map_err(|e| CompileError::AccessPolicy(e.into()))?;
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
    pub fn from_snapshot(snap: &Snapshot, trust_domain: &str) -> Result<Authz, CompileError> {
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
mod tests;
