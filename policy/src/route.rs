//! Outbound routing: the request's authority picks a mesh service, and the
//! service's Route picks a rule.
//!
//! The authority comes from an absolute-form target (`GET http://api/x`, as
//! sent by clients honouring `http_proxy`), the `Host` field or h2's
//! `:authority`. `api`, `api.mesh`, `API.mesh.` and any of them with a port
//! all name service `api`. Anything else is refused, or with `[outbound]
//! passthrough = true` forwarded to the host it names.
//!
//! Both read the request through [`RequestView`], so one routing serves
//! every protocol.

use crate::error::ErrorKind;
use crate::routing::{CompiledRule, RoutingTable, ServiceRoutes};

/// What routing and authorization read of a request, whatever its protocol.
/// The codec's request type implements it (a thin wrapper over the parsed
/// head and its buffer for HTTP/1.1).
pub trait RequestView {
    /// The method token as sent (`GET`, `CONNECT`, ...).
    fn method(&self) -> &[u8];
    /// `host[:port]`, syntactically valid, if the request has one.
    fn authority(&self) -> Option<&[u8]>;
    /// The target's path and query as sent (empty for an absolute-form
    /// target without a path, and for CONNECT).
    fn path_and_query(&self) -> &[u8];
    /// The first value of field `name` (ASCII case-insensitive), trimmed.
    fn header(&self, name: &str) -> Option<&[u8]>;

    fn is_connect(&self) -> bool {
        self.method() == b"CONNECT"
    }
}

/// Where an outbound request goes; `S` is the proxy's static service type.
#[derive(Debug)]
pub enum Target<'a, S> {
    /// A mesh service from control's routing table.
    Routed(&'a ServiceRoutes),
    /// A mesh service from the static configuration.
    Service(&'a S),
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

/// `host` and the port of an authority (`[v6]:port`, `name:port`, `name`);
/// `None` if the port is not a number. The codecs have validated it.
fn split_authority(a: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let (host, rest) = match a.strip_prefix(b"[") {
        Some(inner) => {
            let close = inner.iter().position(|&b| b == b']')?;
            (&inner[..close], &inner[close + 1..])
        }
        None => match a.iter().position(|&b| b == b':') {
            Some(i) => (&a[..i], &a[i..]),
            None => (a, &a[a.len()..]),
        },
    };
    let port = match rest {
        [] | [b':'] => None,
        [b':', digits @ ..] => Some(std::str::from_utf8(digits).ok()?.parse().ok()?),
        _ => return None,
    };
    Some((host, port))
}

/// The static services an outbound request may name, and whether anything
/// else is forwarded (`[outbound] passthrough`).
pub struct Statics<'a, S> {
    pub services: &'a [S],
    pub name: fn(&S) -> &str,
    pub passthrough: bool,
}

/// Routes an outbound request: control's table first, then the static
/// services, then passthrough.
pub fn outbound<'a, S>(
    statics: &Statics<'a, S>,
    table: Option<&'a RoutingTable>,
    req: &impl RequestView,
) -> Result<Target<'a, S>, ErrorKind> {
    let authority = req.authority().ok_or(ErrorKind::NoAuthority)?;
    let (host, port) = split_authority(authority).ok_or(ErrorKind::NoAuthority)?;
    if host.is_empty() {
        return Err(ErrorKind::NoAuthority);
    }
    let name = mesh_name(host);
    let connect = req.is_connect();
    if !connect {
        if let Some(svc) = table.and_then(|t| t.service(name)) {
            return Ok(Target::Routed(svc));
        }
        if let Some(svc) = statics
            .services
            .iter()
            .find(|s| (statics.name)(s).as_bytes().eq_ignore_ascii_case(name))
        {
            return Ok(Target::Service(svc));
        }
    }
    if !statics.passthrough {
        return Err(if connect {
            ErrorKind::ConnectNotAllowed
        } else {
            ErrorKind::UnknownService
        });
    }
    let host = std::str::from_utf8(host).map_err(|_| ErrorKind::NoAuthority)?;
    let default_port = if connect { 443 } else { 80 };
    Ok(Target::Passthrough {
        host: host.to_ascii_lowercase(),
        port: port.unwrap_or(default_port),
    })
}

/// The first rule of a Route that matches the request (`None`: 404 no route).
pub fn match_rule<'a>(
    rules: &'a [CompiledRule],
    req: &impl RequestView,
) -> Option<&'a CompiledRule> {
    let target = req.path_and_query();
    // The query is not part of the path matched (an absolute-form target's
    // empty path is "/").
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &b""[..]),
    };
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    let method = req.method();
    rules.iter().find(|r| {
        r.path.as_ref().is_none_or(|p| p.matches(path))
            && (r.methods.is_empty() || r.methods.iter().any(|m| m.as_bytes() == method))
            && r.headers.iter().all(|(k, v)| v.matches(req.header(k)))
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::routing::{PathMatch, ValueMatcher};

    /// A request written as HTTP/1.1 text (the tests read best that way),
    /// split the simple way: enough for well-formed heads.
    struct Text(&'static [u8]);

    impl Text {
        fn lines(&self) -> impl Iterator<Item = &[u8]> {
            self.0
                .split(|&b| b == b'\n')
                .map(|l| l.trim_ascii())
                .skip_while(|l| l.is_empty())
        }
        fn target(&self) -> &[u8] {
            let line = self.lines().next().unwrap();
            line.split(|&b| b == b' ').nth(1).unwrap()
        }
    }

    impl RequestView for Text {
        fn method(&self) -> &[u8] {
            self.lines()
                .next()
                .unwrap()
                .split(|&b| b == b' ')
                .next()
                .unwrap()
        }
        fn authority(&self) -> Option<&[u8]> {
            self.header("host")
        }
        fn path_and_query(&self) -> &[u8] {
            let t = self.target();
            match t.strip_prefix(b"http://") {
                Some(rest) => {
                    &rest[rest
                        .iter()
                        .position(|&b| b == b'/' || b == b'?')
                        .unwrap_or(rest.len())..]
                }
                None => t,
            }
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.lines()
                .skip(1)
                .take_while(|l| !l.is_empty())
                .find_map(|l| {
                    let colon = l.iter().position(|&b| b == b':')?;
                    l[..colon]
                        .eq_ignore_ascii_case(name.as_bytes())
                        .then(|| l[colon + 1..].trim_ascii())
                })
        }
    }

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
        let at = |raw: &'static [u8]| {
            match_rule(&rules, &Text(raw))
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
        assert!(match_rule(&only_v1, &Text(b"GET /v2 HTTP/1.1\r\nHost: api\r\n\r\n")).is_none());
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
        let hit = |raw: &'static [u8]| match_rule(&rules, &Text(raw)).is_some();
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

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority(b"api"), Some((&b"api"[..], None)));
        assert_eq!(
            split_authority(b"api:8080"),
            Some((&b"api"[..], Some(8080)))
        );
        assert_eq!(
            split_authority(b"[::1]:443"),
            Some((&b"::1"[..], Some(443)))
        );
        assert_eq!(split_authority(b"[::1]"), Some((&b"::1"[..], None)));
        assert_eq!(split_authority(b"api:"), Some((&b"api"[..], None)));
        assert_eq!(split_authority(b"api:99999"), None);
        assert_eq!(split_authority(b"[::1"), None);
    }

    struct Static(&'static str);

    #[test]
    fn the_table_then_static_services_then_passthrough() {
        let table = RoutingTable::compile(&coremesh_api::snapshot::Snapshot::default()).unwrap();
        let services = [Static("db")];
        let mut statics = Statics {
            services: &services,
            name: |s: &Static| s.0,
            passthrough: false,
        };
        let go = |statics: &Statics<'_, Static>, raw: &'static [u8]| match outbound(
            statics,
            Some(&table),
            &Text(raw),
        ) {
            Ok(Target::Service(s)) => Ok(s.0.to_string()),
            Ok(Target::Passthrough { host, port }) => Ok(format!("{host}:{port}")),
            Ok(Target::Routed(r)) => Ok(format!("routed {}", r.name)),
            Err(e) => Err(e),
        };
        assert_eq!(
            go(&statics, b"GET / HTTP/1.1\r\nHost: DB.mesh.:81\r\n\r\n"),
            Ok("db".into())
        );
        assert_eq!(
            go(&statics, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            Err(ErrorKind::UnknownService)
        );
        assert_eq!(
            go(&statics, b"CONNECT db:443 HTTP/1.1\r\nHost: db:443\r\n\r\n"),
            Err(ErrorKind::ConnectNotAllowed)
        );
        assert_eq!(
            go(&statics, b"GET / HTTP/1.0\r\n\r\n"),
            Err(ErrorKind::NoAuthority)
        );
        statics.passthrough = true;
        assert_eq!(
            go(&statics, b"GET / HTTP/1.1\r\nHost: Example.com\r\n\r\n"),
            Ok("example.com:80".into())
        );
        assert_eq!(
            go(
                &statics,
                b"CONNECT db:8443 HTTP/1.1\r\nHost: db:8443\r\n\r\n"
            ),
            Ok("db:8443".into())
        );
    }
}
