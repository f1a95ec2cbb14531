//! The policy phases every protocol's request goes through, below the
//! protocols that use them (request.rs for HTTP/1.1, h2/stream.rs for
//! HTTP/2): route, authorize, rate limit, the ring-hash key, and the log
//! phase. Each takes any [`crate::route::RequestView`].

use super::ctx::Exchange;
use super::*;
use crate::attempt::TryPolicy;
use crate::error::Answer;

/// Where the route phase sends a request.
pub(super) struct Routed<'p> {
    pub(super) endpoints: Endpoints<'p>,
    pub(super) policy: TryPolicy,
}

/// The ring-hash key of a request of any protocol (a header's value, or a
/// cookie's), hashed; `None` when the request has none (any endpoint then).
pub(super) fn hash_key<R: crate::route::RequestView>(
    k: &coremesh_api::resource::HashKey,
    req: &R,
) -> Option<u64> {
    use coremesh_api::resource::HashKey;
    let value = match k {
        HashKey::Header(name) => req.header(name)?,
        HashKey::Cookie(name) => req.header("cookie")?.split(|&b| b == b';').find_map(|kv| {
            let kv = kv.trim_ascii();
            let eq = kv.iter().position(|&b| b == b'=')?;
            (&kv[..eq] == name.as_bytes()).then(|| &kv[eq + 1..])
        })?,
    };
    Some(crate::balance::stable_hash(value))
}

/// The request fields the access log shows.
pub(super) struct LoggedRequest {
    pub(super) method: Vec<u8>,
    pub(super) authority: Vec<u8>,
    pub(super) path: Vec<u8>,
    pub(super) protocol: &'static str,
    /// Set once a gRPC call's status is known.
    pub(super) grpc_status: Option<u8>,
    /// The `x-request-id` the request is forwarded with.
    pub(super) request_id: Vec<u8>,
    /// The trace id of the `traceparent` it is forwarded with.
    pub(super) trace_id: Option<[u8; 32]>,
    pub(super) caller: Caller,
}

/// The value of the field line `name` among `extra`'s lines (`name:
/// value` CRLF each, as the proxy writes them).
pub(super) fn added_field<'a>(extra: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    extra.split(|&b| b == b'\n').find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// Who called, for the access log: the peer's SPIFFE ID (inbound), or
/// this proxy's own identity (outbound); both held by reference count.
pub(super) enum Caller {
    None,
    Peer(Rc<str>),
    Own(Rc<crate::tls::ShardTls>),
}

impl Caller {
    /// The caller of a request that came in on `dir` from `peer`.
    pub(super) fn of(shard: &Shard, dir: Direction, peer: Option<&Rc<str>>) -> Caller {
        match dir {
            Direction::Inbound => peer.map_or(Caller::None, |p| Caller::Peer(p.clone())),
            Direction::Outbound => shard.tls().map_or(Caller::None, Caller::Own),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Caller::None => None,
            Caller::Peer(p) => Some(p),
            Caller::Own(t) => Some(&t.identity.spiffe_id),
        }
    }
}

impl LoggedRequest {
    /// The log's copy of an HTTP/1.1 request; `extra` holds the field
    /// lines the proxy adds to the forwarded head, whose `traceparent`,
    /// if it sets one, is the one the request goes upstream with.
    pub(super) fn new(
        head: &RequestHead,
        buf: &[u8],
        extra: &[u8],
        request_id: &[u8],
        caller: Caller,
    ) -> Self {
        let field = |s: &std::ops::Range<usize>| buf.get(s.clone()).unwrap_or(&[]).to_vec();
        LoggedRequest {
            method: head.method_bytes(buf).to_vec(),
            authority: head.authority.as_ref().map(field).unwrap_or_default(),
            path: field(&head.path),
            protocol: match head.version {
                Version::Http10 => "HTTP/1.0",
                Version::Http11 => "HTTP/1.1",
            },
            grpc_status: None,
            request_id: request_id.to_vec(),
            trace_id: added_field(extra, b"traceparent")
                .or_else(|| head.header(buf, "traceparent"))
                .and_then(crate::accesslog::trace_id),
            caller,
        }
    }
}

impl Shard {
    /// The log phase: records a finished request in the stats and the
    /// access log.
    pub(super) fn record(
        &self,
        dir: Direction,
        service: &str,
        req: Option<&LoggedRequest>,
        ex: &Exchange,
    ) {
        let latency = ex
            .end
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(ex.start);
        self.stats
            .borrow_mut()
            .record(dir, service, ex.status, latency, ex.bytes_in, ex.bytes_out);
        let Some(req) = req else { return };
        let mut log = self.access_log.borrow_mut();
        let Some(log) = log.as_mut() else { return };
        let cfg = self.config();
        let opts = &cfg.access_log;
        if !opts.enabled || !self.sampled(opts.sample, ex.status) {
            return;
        }
        log.log(
            &crate::accesslog::AccessEntry {
                direction: dir,
                service,
                method: &req.method,
                authority: &req.authority,
                path: &req.path,
                status: ex.status,
                duration: latency,
                bytes_in: ex.bytes_in,
                bytes_out: ex.bytes_out,
                upstream: ex.upstream,
                core: self.index,
                protocol: req.protocol,
                grpc_status: req.grpc_status,
                request_id: &req.request_id,
                trace_id: req.trace_id.as_ref(),
                caller: req.caller.as_str(),
            },
            opts.format,
        );
    }

    /// Whether the access log takes requests now: a file, and `enabled`.
    /// Requests copy what the log shows only then.
    pub(super) fn logs_requests(&self) -> bool {
        self.access_log.borrow().is_some() && self.config().access_log.enabled
    }

    /// `[access_log] sample`: whether this request's line is written. An
    /// answer with a 5xx status, or none at all (status 0), always is.
    fn sampled(&self, sample: f64, status: u16) -> bool {
        if sample >= 1.0 || status == 0 || status >= 500 {
            return true;
        }
        // 53 random bits as a fraction in [0, 1).
        sample > 0.0 && (self.random() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) < sample
    }
}

/// The outbound route of any protocol's request: control's table, the static services, or
/// passthrough; then the service's Route rule and its backends.
pub(super) async fn route_request<'p, R: crate::route::RequestView>(
    shard: &'p Shard,
    cfg: &'p Config,
    table: Option<&'p RoutingTable>,
    req: &R,
) -> (&'p str, Result<Routed<'p>, Answer<'p>>) {
    let statics = crate::route::Statics {
        services: &cfg.services,
        name: |s: &crate::config::ServiceConfig| s.name.as_str(),
        passthrough: cfg.outbound.as_ref().is_some_and(|o| o.passthrough),
    };
    let single = TryPolicy::single(cfg.timeouts.request);
    let target = crate::route::outbound(&statics, table, req);
    let (service, routed) = match target {
        Ok(Target::Routed(sr)) => (
            &*sr.name,
            match &sr.rules {
                None if sr.all.is_empty() => Err(Answer::Error(ErrorKind::NoEndpoints)),
                None => Ok(Routed {
                    endpoints: Endpoints::Service(&sr.name, &sr.all, true),
                    policy: single,
                }),
                Some(rules) => match crate::route::match_rule(rules, req) {
                    None => Err(Answer::Error(ErrorKind::NoRoute)),
                    Some(rule)
                        if rule
                            .backends
                            .iter()
                            .all(|b| b.weight == 0 || b.endpoints.is_empty()) =>
                    {
                        Err(Answer::Error(ErrorKind::NoHealthyEndpoints))
                    }
                    Some(rule) => {
                        // A strict rule's backend is drawn here, once:
                        // one without endpoints is this request's 503.
                        let strict = rule
                            .strict
                            .then(|| crate::route::strict_backend(rule, shard.random()))
                            .flatten();
                        match strict {
                            Some(b) if rule.backends[b].endpoints.is_empty() => {
                                Err(Answer::Error(ErrorKind::NoHealthyEndpoints))
                            }
                            _ => Ok(Routed {
                                endpoints: Endpoints::Rule(&sr.name, rule, &sr.all, strict),
                                policy: TryPolicy::for_rule(cfg.timeouts.request, rule),
                            }),
                        }
                    }
                },
            },
        ),
        Ok(Target::Service(svc)) if svc.endpoints.is_empty() => {
            (&*svc.name, Err(Answer::Error(ErrorKind::NoEndpoints)))
        }
        Ok(Target::Service(svc)) => (
            &*svc.name,
            Ok(Routed {
                endpoints: Endpoints::Service(&svc.name, &svc.endpoints, static_mtls(cfg)),
                policy: single,
            }),
        ),
        Ok(Target::Passthrough { host, port }) => ("passthrough", {
            match shard.resolve(&host, port).await {
                Ok(addr) if shard.is_own(addr) => Err(Answer::Error(ErrorKind::LoopDetected)),
                // Nothing listens on port 0 (and it is how a Unix-socket
                // app is known, config::UNIX_APP).
                Ok(addr) if addr.port() == 0 => Err(Answer::Error(ErrorKind::ResolveFailed)),
                Ok(addr) => Ok(Routed {
                    endpoints: Endpoints::One(addr),
                    policy: single,
                }),
                Err(_) => Err(Answer::Error(ErrorKind::ResolveFailed)),
            }
        }),
        Err(kind) => ("unknown", Err(Answer::Error(kind))),
    };
    (service, routed)
}

/// The AccessPolicy decision for a request of any protocol: the caller's
/// SPIFFE ID (from its certificate), method and path. `Some(policy)`:
/// denied by it (and counted by policy and caller). A plaintext inbound
/// port (a static proxy without `[tls]`) has no identities to check.
pub(super) fn denied<'p>(
    shard: &Shard,
    table: Option<&'p RoutingTable>,
    tls: bool,
    caller: Option<&str>,
    method: &[u8],
    path: &[u8],
) -> Option<&'p str> {
    let table = table?;
    if table.authz.allows_all() || !tls {
        return None;
    }
    let caller = caller.unwrap_or("");
    match table.authz.check(caller, method, path) {
        crate::authz::Decision::Allow => None,
        crate::authz::Decision::Deny { policy } => {
            shard.stats.borrow_mut().mesh.denied(policy, caller);
            Some(policy)
        }
    }
}

/// `service`'s `rateLimit` (per service, or per caller identity): whether
/// a request at `now` may go on.
pub(super) fn rate_admits(
    shard: &Shard,
    service: &str,
    caller: Option<&str>,
    now: Instant,
) -> bool {
    shard
        .traffic
        .with(service, |s| match &mut s.limiter {
            None => true,
            Some(crate::traffic::Limiter::Service(t)) => t.try_take(now),
            Some(crate::traffic::Limiter::Caller(k)) => {
                k.try_take(caller.map(str::as_bytes).unwrap_or(b""), now)
            }
        })
        .unwrap_or(true)
}
