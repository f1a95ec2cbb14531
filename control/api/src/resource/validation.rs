//! Validation of resources, one at a time ([`validate`]) and as a set
//! ([`validate_set`]). Errors name the resource, the field path and the
//! reason; [`super::parse_documents`] adds the document.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{
    AccessPolicy, AccessRule, Match, MeshConfig, Resource, ResourceError, Retries, Route, Rule,
    Service, MESH_CONFIG_NAME,
};

/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 100_000;
/// Most retries after the first try.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Longest resource name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Longest SPIFFE ID (SPIFFE ID specification, section 2.3).
const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain (SPIFFE ID specification, section 2.1).
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// (field path, reason)
type Invalid = (String, String);

/// Checks one resource on its own: names, rules, matches, weights, retries,
/// timeouts, callers. Control calls it on everything it accepts, whether
/// from YAML or JSON; a proxy calls it on the AccessPolicy it receives.
pub fn validate(r: &Resource) -> Result<(), ResourceError> {
    let checked = match r {
        Resource::Service(s) => check_name(&s.name).map_err(|reason| ("name".to_string(), reason)),
        Resource::Route(route) => check_route(route),
        Resource::AccessPolicy(p) => check_access_policy(p),
        Resource::MeshConfig(m) => check_mesh_config(m),
    };
    checked.map_err(|(field, reason)| ResourceError::new(r.kind_name(), field, reason))
}

/// Checks rules that span resources, on the whole desired state (the store
/// merged with what is being applied): names are unique per kind, every
/// Route's and AccessPolicy's service exists as a Service, and a service
/// has at most one Route and at most one AccessPolicy.
pub fn validate_set(
    services: &[Service],
    routes: &[Route],
    policies: &[AccessPolicy],
) -> Result<(), ResourceError> {
    let mut known: BTreeSet<&str> = BTreeSet::new();
    for s in services {
        if !known.insert(&s.name) {
            return Err(ResourceError::new(
                format!("service/{}", s.name),
                "name",
                "defined twice",
            ));
        }
    }
    let mut route_names: BTreeSet<&str> = BTreeSet::new();
    // service -> the route that claims it
    let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
    for r in routes {
        let id = format!("route/{}", r.name);
        if !route_names.insert(&r.name) {
            return Err(ResourceError::new(id, "name", "defined twice"));
        }
        if !known.contains(r.service.as_str()) {
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
        if !known.contains(p.service.as_str()) {
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
    Ok(())
}

/// A SPIFFE trust domain (SPIFFE ID specification, section 2.1): lowercase
/// letters, digits, `.`, `-` and `_`, at most 255 characters.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("empty trust domain".into());
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "trust domain of {} characters; at most {MAX_TRUST_DOMAIN_LEN}",
            td.len()
        ));
    }
    if !td
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "{td:?} is not a trust domain: lowercase letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// A SPIFFE ID with a path (SPIFFE ID specification, section 2):
/// `spiffe://<trust domain>/<segment>[/<segment>...]`, segments of letters,
/// digits, `.`, `-` and `_`, none empty, `.` or `..`; no query, fragment,
/// port or user.
pub fn check_spiffe_id(id: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{id:?} is not a SPIFFE ID: {why}"));
    if id.len() > MAX_SPIFFE_ID_LEN {
        return bad(&format!("longer than {MAX_SPIFFE_ID_LEN} characters"));
    }
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return bad("it must start with spiffe://");
    };
    let Some((td, path)) = rest.split_once('/') else {
        return bad("it has no path (spiffe://<trust domain>/service/<name>)");
    };
    if let Err(why) = check_trust_domain(td) {
        return bad(&why);
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return bad("empty, '.' or '..' path segment");
        }
        if !segment
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        {
            return bad(
                "a path segment has a character other than letters, digits, '.', '-' and '_'",
            );
        }
    }
    Ok(())
}

fn check_access_policy(p: &AccessPolicy) -> Result<(), Invalid> {
    check_name(&p.name).map_err(|r| ("name".to_string(), r))?;
    check_name(&p.service).map_err(|r| ("service".to_string(), r))?;
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
            check_spiffe_id(caller)
        } else {
            check_name(caller).map_err(|r| {
                format!("{r}; a caller is a service name, a SPIFFE ID (spiffe://...) or \"*\"")
            })
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
                format!("{p:?} contains '?' or '#'; paths are matched without the query"),
            ));
        }
        if p.split('/').any(|s| s == "." || s == "..") {
            return Err((field.into(), format!("{p:?} has a '.' or '..' segment")));
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
            ),
        ));
    }
    Ok(())
}

/// A DNS label: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 characters.
fn check_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    if b.is_empty() {
        return Err("empty; a name is a DNS label such as `api` or `api-v2`".into());
    }
    if b.len() > MAX_NAME_LEN {
        return Err(format!("{} characters; at most {MAX_NAME_LEN}", b.len()));
    }
    if !b.iter().all(ok_char) || b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err(format!(
            "{name:?} is not a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_route(route: &Route) -> Result<(), Invalid> {
    check_name(&route.name).map_err(|r| ("name".to_string(), r))?;
    check_name(&route.service).map_err(|r| ("service".to_string(), r))?;
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
        check_timeout(t).map_err(|r| ("timeout".to_string(), r))?;
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
                format!("{} is over the maximum of {MAX_WEIGHT}", b.weight),
            ));
        }
        if let Some(key) = b.subset.keys().find(|k| k.is_empty()) {
            return Err((
                format!("backends[{j}].subset"),
                format!("empty label name (value {:?})", b.subset[key]),
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

fn check_match(m: &Match) -> Result<(), Invalid> {
    check_paths(&m.path, &m.path_prefix)?;
    for (name, value) in &m.headers {
        if !is_token(name) {
            return Err((
                format!("headers.{name}"),
                format!(
                    "{name:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"
                ),
            ));
        }
        if value.bytes().any(|c| c.is_ascii_control() && c != b'\t') {
            return Err((
                format!("headers.{name}"),
                "the value contains a control character".into(),
            ));
        }
    }
    check_methods(&m.methods)
}

fn check_paths(path: &Option<String>, path_prefix: &Option<String>) -> Result<(), Invalid> {
    for (field, path) in [("path", path), ("pathPrefix", path_prefix)] {
        if let Some(p) = path {
            if !p.starts_with('/') {
                return Err((field.into(), format!("{p:?} must start with '/'")));
            }
            if p.bytes().any(|c| c.is_ascii_control() || c == b' ') {
                return Err((
                    field.into(),
                    format!("{p:?} contains a space or control character"),
                ));
            }
        }
    }
    Ok(())
}

fn check_methods(methods: &[String]) -> Result<(), Invalid> {
    for (j, method) in methods.iter().enumerate() {
        if !is_token(method) || method.bytes().any(|c| c.is_ascii_lowercase()) {
            return Err((
                format!("methods[{j}]"),
                format!("{method:?} is not an uppercase method such as GET or POST"),
            ));
        }
    }
    Ok(())
}

fn check_retries(r: &Retries) -> Result<(), Invalid> {
    if r.attempts > MAX_RETRY_ATTEMPTS {
        return Err((
            "attempts".into(),
            format!("{} is over the maximum of {MAX_RETRY_ATTEMPTS}", r.attempts),
        ));
    }
    if let Some(t) = r.per_try_timeout {
        check_timeout(t).map_err(|reason| ("perTryTimeout".to_string(), reason))?;
    }
    Ok(())
}

fn check_timeout(t: Duration) -> Result<(), String> {
    if t.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(())
}

/// An HTTP token (RFC 9110 section 5.6.2): one or more `tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

#[cfg(test)]
mod tests {
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
        assert!(
            !route_err("  - retries: { attempts: 10 }\n    backends: []\n").contains("attempts")
        );
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
        });
        let e = validate(&r).unwrap_err();
        assert_eq!(e.document, None);
        assert!(e.to_string().starts_with("service/Bad: name: "), "{e}");
    }

    type Set = (Vec<Service>, Vec<Route>, Vec<AccessPolicy>);

    fn set(text: &str) -> Set {
        let mut services = Vec::new();
        let mut routes = Vec::new();
        let mut policies = Vec::new();
        for r in parse_documents(text).unwrap() {
            match r {
                Resource::Service(s) => services.push(s),
                Resource::Route(r) => routes.push(r),
                Resource::AccessPolicy(p) => policies.push(p),
                Resource::MeshConfig(_) => {}
            }
        }
        (services, routes, policies)
    }

    fn set_err(text: &str) -> String {
        let (s, r, p) = set(text);
        validate_set(&s, &r, &p).unwrap_err().to_string()
    }

    #[test]
    fn set_rules() {
        let (s, r, p) = set(crate::resource::EXAMPLE);
        validate_set(&s, &r, &p).unwrap();

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
        let (s, r, p) = set(crate::resource::ACCESS_EXAMPLE);
        validate_set(&s, &r, &p).unwrap();

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
        let (s, r, p) = set(both);
        validate_set(&s, &r, &p).unwrap();
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
        let e =
            parse_documents("kind: AccessPolicy\nname: p\nservice: api\nport: 1\n").unwrap_err();
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
}
