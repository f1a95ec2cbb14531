//! Outbound routing: the request's authority picks a mesh service.
//!
//! The authority comes from an absolute-form target (`GET http://api/x`, as
//! sent by clients honouring `http_proxy`) or the `Host` field. `api`,
//! `api.mesh`, `API.mesh.` and any of them with a port all name service
//! `api`. Anything else is refused, or with `[outbound] passthrough = true`
//! forwarded to the host it names.

use crate::config::{Config, ServiceConfig};
use crate::error::ErrorKind;
use crate::http1::{split_authority, Method, RequestHead};
use crate::routing::{CompiledRule, RoutingTable, ServiceRoutes};

/// Where an outbound request goes.
#[derive(Debug)]
pub enum Target<'a> {
    /// A mesh service from control's routing table.
    Routed(&'a ServiceRoutes),
    /// A mesh service from the static configuration.
    Service(&'a ServiceConfig),
    /// Not a mesh service; forwarded directly (passthrough).
    Passthrough { host: String, port: u16 },
}

/// The mesh service name an authority's host names, if it has the mesh form.
fn mesh_name(host: &[u8]) -> &[u8] {
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.len() > 5 && host[host.len() - 5..].eq_ignore_ascii_case(b".mesh") {
        &host[..host.len() - 5]
    } else {
        host
    }
}

/// Routes an outbound request: control's table first, then the static
/// `[[services]]`, then passthrough.
pub fn outbound<'a>(
    cfg: &'a Config,
    table: Option<&'a RoutingTable>,
    head: &RequestHead,
    buf: &[u8],
) -> Result<Target<'a>, ErrorKind> {
    let span = head.authority.clone().ok_or(ErrorKind::NoAuthority)?;
    let (host, port) = split_authority(&buf[span]).map_err(|_| ErrorKind::NoAuthority)?;
    if host.is_empty() {
        return Err(ErrorKind::NoAuthority);
    }
    let name = mesh_name(host);
    if head.method != Method::Connect {
        if let Some(svc) = table.and_then(|t| t.service(name)) {
            return Ok(Target::Routed(svc));
        }
        if let Some(svc) = cfg
            .services
            .iter()
            .find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
        {
            return Ok(Target::Service(svc));
        }
    }
    let passthrough = cfg.outbound.as_ref().is_some_and(|o| o.passthrough);
    if !passthrough {
        return Err(if head.method == Method::Connect {
            ErrorKind::ConnectNotAllowed
        } else {
            ErrorKind::UnknownService
        });
    }
    let host = std::str::from_utf8(host).map_err(|_| ErrorKind::NoAuthority)?;
    let default_port = if head.method == Method::Connect {
        443
    } else {
        80
    };
    Ok(Target::Passthrough {
        host: host.to_ascii_lowercase(),
        port: port.unwrap_or(default_port),
    })
}

/// The first rule of a Route that matches the request (`None`: 404 no route).
pub fn match_rule<'a>(
    rules: &'a [CompiledRule],
    head: &RequestHead,
    buf: &[u8],
) -> Option<&'a CompiledRule> {
    let target = &buf[head.path.clone()];
    // The query is not part of the path matched (an absolute-form target's
    // empty path is "/").
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &b""[..]),
    };
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    let method = method_name(head, buf);
    rules.iter().find(|r| {
        r.path.as_ref().is_none_or(|p| p.matches(path))
            && (r.methods.is_empty() || r.methods.iter().any(|m| m.as_bytes() == method))
            && r.headers
                .iter()
                .all(|(k, v)| v.matches(head.header(buf, k)))
            && r.query
                .iter()
                .all(|(k, v)| v.matches(query_param(query, k.as_bytes())))
    })
}

/// The first value of query parameter `name` (as sent, not decoded); a
/// parameter without `=` has the empty value.
fn query_param<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query
        .split(|&b| b == b'&')
        .find_map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) if &pair[..eq] == name => Some(&pair[eq + 1..]),
            None if pair == name => Some(&pair[pair.len()..]),
            _ => None,
        })
}

fn method_name<'a>(head: &RequestHead, buf: &'a [u8]) -> &'a [u8] {
    let line = &buf[..head.target.start];
    let line = line.trim_ascii();
    let start = line.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    &line[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http1::{parse_request, Limits};
    use crate::routing::{PathMatch, ValueMatcher};

    fn rule(path_prefix: Option<&str>, headers: &[(&str, &str)], methods: &[&str]) -> CompiledRule {
        CompiledRule {
            path: path_prefix.map(|p| PathMatch::Prefix(p.to_string())),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), ValueMatcher::Exact(v.to_string())))
                .collect(),
            query: Vec::new(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            timeout: None,
            retries: None,
            backends: Vec::new(),
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            rule(None, &[("x-canary", "true")], &[]),
            rule(Some("/v1/"), &[], &["GET"]),
            rule(Some("/"), &[], &[]),
        ];
        let lim = Limits::default();
        let at = |raw: &[u8]| {
            let h = parse_request(raw, &lim).unwrap().unwrap();
            match_rule(&rules, &h, raw)
                .map(|r| rules.iter().position(|x| std::ptr::eq(x, r)).unwrap())
        };
        assert_eq!(
            at(b"GET /v1/x HTTP/1.1\r\nHost: api\r\nX-Canary: true\r\n\r\n"),
            Some(0)
        );
        assert_eq!(at(b"GET /v1/x?q=1 HTTP/1.1\r\nHost: api\r\n\r\n"), Some(1));
        assert_eq!(
            at(b"POST /v1/x HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n"),
            Some(2)
        );
        assert_eq!(
            at(b"\r\nGET http://api HTTP/1.1\r\nHost: api\r\n\r\n"),
            Some(2)
        );
        let only_v1 = vec![rule(Some("/v1/"), &[], &[])];
        let raw = b"GET /v2 HTTP/1.1\r\nHost: api\r\n\r\n";
        let h = parse_request(raw, &lim).unwrap().unwrap();
        assert!(match_rule(&only_v1, &h, raw).is_none());
    }

    #[test]
    fn regex_paths_header_conditions_and_query_parameters() {
        let re = |p: &str| coremesh_api::resource::compile_regex(p).unwrap();
        let mut r = rule(None, &[], &[]);
        r.path = Some(PathMatch::Regex(re("/v[0-9]+/users/[^/]+")));
        r.headers = vec![
            ("x-user".into(), ValueMatcher::Regex(re("u-[0-9]+"))),
            ("x-debug".into(), ValueMatcher::Present(false)),
        ];
        r.query = vec![
            ("env".into(), ValueMatcher::Exact("prod".into())),
            ("trace".into(), ValueMatcher::Present(true)),
        ];
        let rules = vec![r];
        let lim = Limits::default();
        let hit = |raw: &[u8]| {
            let h = parse_request(raw, &lim).unwrap().unwrap();
            match_rule(&rules, &h, raw).is_some()
        };
        assert!(hit(
            b"GET /v2/users/7?env=prod&trace HTTP/1.1\r\nHost: a\r\nX-User: u-12\r\n\r\n"
        ));
        assert!(hit(
            b"GET /v2/users/7?trace=1&env=prod&env=dev HTTP/1.1\r\nHost: a\r\nX-User: u-1\r\n\r\n"
        ));
        // The regex is anchored: no extra segment, no partial header value.
        assert!(!hit(
            b"GET /v2/users/7/x?env=prod&trace HTTP/1.1\r\nHost: a\r\nX-User: u-12\r\n\r\n"
        ));
        assert!(!hit(
            b"GET /v2/users/7?env=prod&trace HTTP/1.1\r\nHost: a\r\nX-User: xu-12\r\n\r\n"
        ));
        // An absent header required absent, a missing or different parameter.
        assert!(!hit(b"GET /v2/users/7?env=prod&trace HTTP/1.1\r\nHost: a\r\nX-User: u-1\r\nX-Debug: 1\r\n\r\n"));
        assert!(!hit(
            b"GET /v2/users/7?env=prod HTTP/1.1\r\nHost: a\r\nX-User: u-1\r\n\r\n"
        ));
        assert!(!hit(
            b"GET /v2/users/7?env=dev&env=prod&trace HTTP/1.1\r\nHost: a\r\nX-User: u-1\r\n\r\n"
        ));
        assert_eq!(query_param(b"a=1&b&c=", b"b"), Some(&b""[..]));
        assert_eq!(query_param(b"a=1&b&c=", b"c"), Some(&b""[..]));
        assert_eq!(query_param(b"a=1&b&c=", b"d"), None);
    }

    #[test]
    fn mesh_suffix_is_optional() {
        assert_eq!(mesh_name(b"api"), b"api");
        assert_eq!(mesh_name(b"api.mesh"), b"api");
        assert_eq!(mesh_name(b"api.MESH."), b"api");
        assert_eq!(mesh_name(b".mesh"), b".mesh");
        assert_eq!(mesh_name(b"example.com"), b"example.com");
    }
}
