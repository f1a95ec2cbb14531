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
use std::net::SocketAddr;

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

/// The backend of `rule` a try goes to, by index: drawn by weight (`draw`,
/// uniform) among the backends that have an endpoint `usable` for this try
/// (not ejected, unhealthy, down or already tried by this request), so the
/// share of a backend with none goes to the others in proportion
/// (spill-over). `prefer`, the backend of the request's previous try, is
/// kept while it has a usable endpoint: a retry stays in its subset first.
///
/// `None`: no backend has a usable endpoint; see [`fail_open_backend`].
pub fn pick_backend(
    rule: &CompiledRule,
    prefer: Option<usize>,
    draw: u64,
    usable: impl Fn(SocketAddr) -> bool,
) -> Option<usize> {
    let has_usable = |i: usize| {
        let b = &rule.backends[i];
        b.weight > 0 && b.endpoints.iter().any(|&a| usable(a))
    };
    if let Some(p) = prefer.filter(|&p| p < rule.backends.len() && has_usable(p)) {
        return Some(p);
    }
    weighted(rule, draw, has_usable)
}

/// The backend when none has a usable endpoint: drawn by weight among those
/// with endpoints at all. Failing open beats refusing: an ejection or a
/// backoff may be wrong, and the request is tried anyway.
pub fn fail_open_backend(rule: &CompiledRule, draw: u64) -> Option<usize> {
    weighted(rule, draw, |i| {
        let b = &rule.backends[i];
        b.weight > 0 && !b.endpoints.is_empty()
    })
}

/// The backend of a `failover: strict` rule for a request: drawn by weight
/// among every backend with a weight, whether it has endpoints or not (a
/// subset with none is that request's answer, 503 `no healthy endpoints`,
/// never another subset).
pub fn strict_backend(rule: &CompiledRule, draw: u64) -> Option<usize> {
    weighted(rule, draw, |i| rule.backends[i].weight > 0)
}

fn weighted(rule: &CompiledRule, draw: u64, take: impl Fn(usize) -> bool) -> Option<usize> {
    let total: u64 = (0..rule.backends.len())
        .filter(|&i| take(i))
        .map(|i| u64::from(rule.backends[i].weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut draw = draw % total;
    for i in (0..rule.backends.len()).filter(|&i| take(i)) {
        let w = u64::from(rule.backends[i].weight);
        if draw < w {
            return Some(i);
        }
        draw -= w;
    }
    None
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
mod tests;
