//! Validation of resources, one at a time ([`validate`]) and as a set
//! ([`validate_set`]). Errors name the resource, the field path and the
//! reason; [`super::parse_documents`] adds the document.

use std::collections::{BTreeMap, BTreeSet};

use super::matching::check_match;
use super::resilience::check_resilience;
pub use super::syntax::MAX_NAME_LEN;
use super::syntax::{check_methods, check_name, check_paths, check_positive, Invalid};
use super::{
    format_duration, AccessPolicy, AccessRule, MeshConfig, Protocol, Reason, Resilience, Resource,
    ResourceError, Retries, Route, Rule, Service, MESH_CONFIG_NAME,
};

/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 100_000;
/// Most retries after the first try.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Largest [`Retries::max_body_bytes`]: 16 MiB. The body is held in
/// memory until the exchange ends, per request.
pub const MAX_RETRY_BODY_BYTES: u64 = 16 << 20;
/// Longest SPIFFE ID (SPIFFE ID specification, section 2.3).
const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain (SPIFFE ID specification, section 2.1).
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Checks one resource on its own: names, rules, matches (regexes
/// compiled), weights, retries, timeouts, callers, resilience ranges.
/// Control calls it on everything it accepts, whether from YAML or JSON; a
/// proxy calls it on the AccessPolicy it receives.
pub fn validate(r: &Resource) -> Result<(), ResourceError> {
    let checked = match r {
        Resource::Service(s) => check_service(s),
        Resource::Route(route) => check_route(route),
        Resource::AccessPolicy(p) => check_access_policy(p),
        Resource::Resilience(res) => check_resilience(res),
        Resource::MeshConfig(m) => check_mesh_config(m),
    };
    checked.map_err(|(field, reason)| ResourceError::new(r.kind_name(), field, reason))
}

/// Checks rules that span resources, on the whole desired state (the store
/// merged with what is being applied): names are unique per kind, every
/// Route's, AccessPolicy's and Resilience's service exists as a Service, a
/// service has at most one of each, a Resilience's mirror is an existing
/// HTTP service, and a TCP service's Resilience sets no HTTP-only block.
pub fn validate_set(
    services: &[Service],
    routes: &[Route],
    policies: &[AccessPolicy],
    resiliences: &[Resilience],
) -> Result<(), ResourceError> {
    let mut known: BTreeMap<&str, Protocol> = BTreeMap::new();
    for s in services {
        if known.insert(&s.name, s.protocol).is_some() {
            return Err(ResourceError::new(
                format!("service/{}", s.name),
                "name",
                "defined twice",
            ));
        }
    }
    check_virtual_ips(services)?;
    let mut route_names: BTreeSet<&str> = BTreeSet::new();
    // service -> the route that claims it
    let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
    for r in routes {
        let id = format!("route/{}", r.name);
        if !route_names.insert(&r.name) {
            return Err(ResourceError::new(id, "name", "defined twice"));
        }
        if !known.contains_key(r.service.as_str()) {
            return Err(ResourceError::new(
                id,
                "service",
                format!(
                    "service {:?} does not exist; apply a `kind: Service` named {} first",
                    r.service, r.service
                ),
            ));
        }
        if let Some(other) = claimed.insert(&r.service, &r.name) {
            return Err(ResourceError::new(
                id,
                "service",
                format!(
                    "service {} already has route/{other}; at most one Route per service (merge the rules into one)",
                    r.service
                ),
            ));
        }
    }
    let mut policy_names: BTreeSet<&str> = BTreeSet::new();
    let mut governed: BTreeMap<&str, &str> = BTreeMap::new();
    for p in policies {
        let id = format!("accesspolicy/{}", p.name);
        if !policy_names.insert(&p.name) {
            return Err(ResourceError::new(id, "name", "defined twice"));
        }
        // As for a Route: a policy for a service that does not exist is
        // refused, so a typo cannot leave the intended service unprotected.
        if !known.contains_key(p.service.as_str()) {
            return Err(ResourceError::new(
                id,
                "service",
                format!(
                    "service {:?} does not exist; apply a `kind: Service` named {} first",
                    p.service, p.service
                ),
            ));
        }
        if let Some(other) = governed.insert(&p.service, &p.name) {
            return Err(ResourceError::new(
                id,
                "service",
                format!(
                    "service {} already has accesspolicy/{other}; at most one AccessPolicy per service (merge the rules into one)",
                    p.service
                ),
            ));
        }
    }
    let mut resilience_names: BTreeSet<&str> = BTreeSet::new();
    let mut tuned: BTreeMap<&str, &str> = BTreeMap::new();
    for r in resiliences {
        let id = format!("resilience/{}", r.name());
        if !resilience_names.insert(r.name()) {
            return Err(ResourceError::new(id, "name", "defined twice"));
        }
        let Some(protocol) = known.get(r.service.as_str()) else {
            return Err(ResourceError::new(
                id,
                "service",
                format!(
                    "service {:?} does not exist; apply a `kind: Service` named {} first",
                    r.service, r.service
                ),
            ));
        };
        if let Some(other) = tuned.insert(&r.service, r.name()) {
            return Err(ResourceError::new(
                id,
                "service",
                format!(
                    "service {} already has resilience/{other}; at most one Resilience per service (merge the blocks into one)",
                    r.service
                ),
            ));
        }
        if *protocol == Protocol::Tcp {
            if let Some(block) = r.http_only_blocks().first() {
                return Err(ResourceError::new(
                    id,
                    *block,
                    format!(
                        "service {} has protocol tcp; {block} applies to HTTP requests only",
                        r.service
                    ),
                ));
            }
        }
        if let Some(m) = &r.mirror {
            match known.get(m.service.as_str()) {
                None => {
                    return Err(ResourceError::new(
                        id,
                        "mirror.service",
                        format!(
                            "service {:?} does not exist; apply a `kind: Service` named {} first",
                            m.service, m.service
                        ),
                    ))
                }
                Some(Protocol::Tcp) => {
                    return Err(ResourceError::new(
                        id,
                        "mirror.service",
                        format!(
                            "service {} has protocol tcp; only HTTP requests are mirrored, to an HTTP service",
                            m.service
                        ),
                    ))
                }
                Some(Protocol::Http) => {}
            }
        }
    }
    Ok(())
}

/// Why a text is not a SPIFFE trust domain ([`check_trust_domain`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustDomainError {
    #[error("empty trust domain")]
    Empty,
    #[error("trust domain of {len} characters; at most {MAX_TRUST_DOMAIN_LEN}")]
    TooLong { len: usize },
    #[error("{0:?} is not a trust domain: lowercase letters, digits, '.', '-' and '_'")]
    BadCharacter(String),
}

/// Why a text is not a SPIFFE ID ([`check_spiffe_id`]): displays as
/// `"<id>" is not a SPIFFE ID: <problem>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{id:?} is not a SPIFFE ID: {problem}")]
pub struct SpiffeIdError {
    pub id: String,
    #[source]
    pub problem: SpiffeIdProblem,
}

/// What is wrong with a [`SpiffeIdError`]'s ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdProblem {
    #[error("longer than {MAX_SPIFFE_ID_LEN} characters")]
    TooLong,
    #[error("it must start with spiffe://")]
    NoScheme,
    #[error("it has no path (spiffe://<trust domain>/service/<name>)")]
    NoPath,
    #[error(transparent)]
    TrustDomain(#[from] TrustDomainError),
    #[error("empty, '.' or '..' path segment")]
    BadSegment,
    #[error("a path segment has a character other than letters, digits, '.', '-' and '_'")]
    BadSegmentCharacter,
}

/// A SPIFFE trust domain (SPIFFE ID specification, section 2.1): lowercase
/// letters, digits, `.`, `-` and `_`, at most 255 characters.
pub fn check_trust_domain(td: &str) -> Result<(), TrustDomainError> {
    if td.is_empty() {
        return Err(TrustDomainError::Empty);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(TrustDomainError::TooLong { len: td.len() });
    }
    if !td
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_'))
    {
        return Err(TrustDomainError::BadCharacter(td.to_string()));
    }
    Ok(())
}

/// A SPIFFE ID with a path (SPIFFE ID specification, section 2):
/// `spiffe://<trust domain>/<segment>[/<segment>...]`, segments of letters,
/// digits, `.`, `-` and `_`, none empty, `.` or `..`; no query, fragment,
/// port or user.
pub fn check_spiffe_id(id: &str) -> Result<(), SpiffeIdError> {
    let bad = |problem: SpiffeIdProblem| {
        Err(SpiffeIdError {
            id: id.to_string(),
            problem,
        })
    };
    if id.len() > MAX_SPIFFE_ID_LEN {
        return bad(SpiffeIdProblem::TooLong);
    }
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return bad(SpiffeIdProblem::NoScheme);
    };
    let Some((td, path)) = rest.split_once('/') else {
        return bad(SpiffeIdProblem::NoPath);
    };
    if let Err(e) = check_trust_domain(td) {
        return bad(e.into());
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return bad(SpiffeIdProblem::BadSegment);
        }
        if !segment
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        {
            return bad(SpiffeIdProblem::BadSegmentCharacter);
        }
    }
    Ok(())
}

fn check_access_policy(p: &AccessPolicy) -> Result<(), Invalid> {
    check_name(&p.name).map_err(|r| ("name".to_string(), r.into()))?;
    check_name(&p.service).map_err(|r| ("service".to_string(), r.into()))?;
    for (i, rule) in p.rules.iter().enumerate() {
        check_access_rule(rule)
            .map_err(|(field, reason)| (format!("rules[{i}].{field}"), reason))?;
    }
    Ok(())
}

fn check_access_rule(rule: &AccessRule) -> Result<(), Invalid> {
    if rule.from.is_empty() {
        return Err((
            "from".into(),
            "empty; list the callers (service names, SPIFFE IDs, or \"*\" for any mesh identity)"
                .into(),
        ));
    }
    for (j, caller) in rule.from.iter().enumerate() {
        let checked = if caller == "*" {
            Ok(())
        } else if caller.starts_with("spiffe://") {
            check_spiffe_id(caller).map_err(Reason::from)
        } else {
            check_name(caller).map_err(Reason::Caller)
        };
        checked.map_err(|r| (format!("from[{j}]"), r))?;
    }
    check_methods(&rule.methods)?;
    if rule.path.is_some() && rule.path_prefix.is_some() {
        return Err((
            "pathPrefix".into(),
            "set together with path; give one of path (exact) and pathPrefix".into(),
        ));
    }
    check_paths(&rule.path, &rule.path_prefix)?;
    for (field, path) in [("path", &rule.path), ("pathPrefix", &rule.path_prefix)] {
        let Some(p) = path else { continue };
        // The proxy matches the path without its query, and never lets a
        // path with dot segments match a path rule (see proxy authz), so
        // such a rule could never allow anything.
        if p.contains(['?', '#']) {
            return Err((
                field.into(),
                format!("{p:?} contains '?' or '#'; paths are matched without the query").into(),
            ));
        }
        if p.split('/').any(|s| s == "." || s == "..") {
            return Err((
                field.into(),
                format!("{p:?} has a '.' or '..' segment").into(),
            ));
        }
    }
    Ok(())
}

fn check_service(s: &Service) -> Result<(), Invalid> {
    check_name(&s.name).map_err(|reason| ("name".to_string(), reason.into()))?;
    if s.port == Some(0) {
        return Err(("port".into(), "0 is not a port (1..=65535)".into()));
    }
    if s.port.is_none() && !s.addresses.is_empty() {
        return Err((
            "addresses".into(),
            "virtual IPs need `port`: an intercepted connection is matched by address and port"
                .into(),
        ));
    }
    for (i, a) in s.addresses.iter().enumerate() {
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
            return Err((
                format!("addresses[{i}]"),
                format!("{a} cannot be a virtual IP (unspecified, loopback or multicast)").into(),
            ));
        }
    }
    Ok(())
}

/// No two services claim the same virtual IP and port: an intercepted
/// connection to it must belong to one service.
fn check_virtual_ips(services: &[Service]) -> Result<(), ResourceError> {
    let mut claimed: BTreeMap<(std::net::IpAddr, u16), &str> = BTreeMap::new();
    for s in services {
        let Some(port) = s.port else { continue };
        for a in &s.addresses {
            if let Some(other) = claimed.insert((*a, port), &s.name) {
                return Err(ResourceError::new(
                    format!("service/{}", s.name),
                    "addresses",
                    format!("{a} port {port} is already service {other}'s virtual IP"),
                ));
            }
        }
    }
    Ok(())
}

fn check_mesh_config(m: &MeshConfig) -> Result<(), Invalid> {
    if m.name != MESH_CONFIG_NAME {
        return Err((
            "name".into(),
            format!(
                "{:?}: the mesh has one MeshConfig and it is named {MESH_CONFIG_NAME}",
                m.name
            )
            .into(),
        ));
    }
    if let Some(t) = &m.tracing {
        super::check_sampling(t.sampling)
            .map_err(|e| ("tracing.sampling".to_string(), e.into()))?;
        super::check_collector(&t.collector)
            .map_err(|e| ("tracing.collector".to_string(), e.into()))?;
    }
    Ok(())
}

fn check_route(route: &Route) -> Result<(), Invalid> {
    check_name(&route.name).map_err(|r| ("name".to_string(), r.into()))?;
    check_name(&route.service).map_err(|r| ("service".to_string(), r.into()))?;
    if route.rules.is_empty() {
        return Err((
            "rules".into(),
            "empty; a Route needs at least one rule".into(),
        ));
    }
    for (i, rule) in route.rules.iter().enumerate() {
        check_rule(rule).map_err(|(field, reason)| (format!("rules[{i}].{field}"), reason))?;
    }
    Ok(())
}

fn check_rule(rule: &Rule) -> Result<(), Invalid> {
    if let Some(m) = &rule.matches {
        check_match(m).map_err(|(field, reason)| (format!("match.{field}"), reason))?;
    }
    if let Some(t) = rule.timeout {
        check_positive(t).map_err(|r| ("timeout".to_string(), r.into()))?;
    }
    if let Some(retries) = &rule.retries {
        check_retries(retries).map_err(|(field, reason)| (format!("retries.{field}"), reason))?;
    }
    if rule.backends.is_empty() {
        return Err((
            "backends".into(),
            "empty; a rule needs at least one backend".into(),
        ));
    }
    for (j, b) in rule.backends.iter().enumerate() {
        if b.weight > MAX_WEIGHT {
            return Err((
                format!("backends[{j}].weight"),
                format!("{} is over the maximum of {MAX_WEIGHT}", b.weight).into(),
            ));
        }
        if let Some(key) = b.subset.keys().find(|k| k.is_empty()) {
            return Err((
                format!("backends[{j}].subset"),
                format!("empty label name (value {:?})", b.subset[key]).into(),
            ));
        }
    }
    if rule.backends.iter().all(|b| b.weight == 0) {
        return Err((
            "backends[0].weight".into(),
            "0 for every backend of the rule; at least one must be > 0".into(),
        ));
    }
    Ok(())
}

fn check_retries(r: &Retries) -> Result<(), Invalid> {
    if r.attempts > MAX_RETRY_ATTEMPTS {
        return Err((
            "attempts".into(),
            format!("{} is over the maximum of {MAX_RETRY_ATTEMPTS}", r.attempts).into(),
        ));
    }
    if let Some(t) = r.per_try_timeout {
        check_positive(t).map_err(|reason| ("perTryTimeout".to_string(), reason.into()))?;
    }
    if let Some(b) = &r.backoff {
        check_positive(b.base).map_err(|reason| ("backoff.base".to_string(), reason.into()))?;
        if let Some(max) = b.max {
            if max < b.base {
                return Err((
                    "backoff.max".into(),
                    format!(
                        "{} is shorter than base ({})",
                        format_duration(max),
                        format_duration(b.base)
                    )
                    .into(),
                ));
            }
        }
    }
    if r.max_body_bytes > MAX_RETRY_BODY_BYTES {
        return Err((
            "maxBodyBytes".into(),
            format!(
                "{} is over the maximum of {MAX_RETRY_BODY_BYTES} (16 MiB)",
                r.max_body_bytes
            )
            .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
