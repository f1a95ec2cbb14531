//! One request through its phases, carried by a [`RequestCtx`]:
//!
//! ```text
//! head ──▶ authorize (inbound: probe, AccessPolicy, rate limit)
//!      ──▶ route (outbound: authority → service → rule → backends)
//!      ──▶ before upstream (faults, mirror, hash key)
//!      ──▶ attempt (exchange.rs: tries, each over one connection)
//!      ──▶ relay (exchange.rs, relay.rs) or answer (answer.rs)
//!      ──▶ log (stats and access log)
//! ```
//!
//! The decisions are the policy crate's (`coremesh_policy`); this module
//! reads the request, asks, and does what it is told. A phase that refuses
//! the request returns an [`Answer`], written in one place
//! ([`RequestCtx::answer`]).

use super::ctx::{Exchange, Tunnel, H1};
use super::exchange::exchange;
use super::relay::{connect_tunnel, tunnel};
use super::*;
use crate::attempt::{Attempts, TryPolicy};
use crate::error::Answer;

/// Where the route phase sends a request.
pub(super) struct Routed<'p> {
    pub(super) endpoints: Endpoints<'p>,
    pub(super) policy: TryPolicy,
}

/// Serves one request whose head is at the start of `cbuf` and began to
/// arrive at `start`. Returns, besides what comes next, when it ended.
pub(super) async fn handle(
    shard: &Shard,
    cfg: &Arc<Config>,
    client_slot: &mut Option<Conn>,
    (dir, dest): (Direction, Option<&str>),
    (head, start): (RequestHead, Instant),
    cbuf: Buf,
    scratch: &mut Scratch,
) -> (Next, Buf, Instant) {
    let table = shard.routes();
    let Some(client) = client_slot.as_mut() else {
        return (Next::Close, cbuf, start);
    };
    let mut ctx = RequestCtx {
        shard,
        cfg,
        table: table.as_ref().map(|t| &***t),
        dir,
        ex: Exchange {
            start,
            end: None,
            idle: cfg.timeouts.idle,
            status: 0,
            bytes_in: head.head_len as u64,
            bytes_out: 0,
            upstream: None,
        },
        head,
        client,
        scratch,
        service: "unknown",
        dest,
    };
    ctx.identity_header(&cbuf);
    // The access log needs the request line's fields after the buffer has
    // been reused for the body, so it gets a copy (only when it is enabled).
    let logged = shard
        .access_log
        .borrow()
        .is_some()
        .then(|| LoggedRequest::new(&ctx.head, &cbuf));
    let tunnel_request = ctx.head.upgrade || ctx.head.method == Method::Connect;
    // The phases' future is built where it is awaited (twice, not once into
    // a local moved later): a local that is moved into the timeout keeps a
    // slot of its own in this future (rust-lang/rust#62958), measured at
    // 11.5 KiB against 6 KiB, all of it copied on every request.
    let (next, cbuf) = if tunnel_request {
        // Tunnels are bounded by `timeouts.idle`, not by a total.
        ctx.forward(cbuf).await
    } else {
        let total = cfg.timeouts.total;
        match runtime::timeout_at(after(start, total), ctx.forward(cbuf)).await {
            Ok(r) => r,
            Err(_) => ctx.total_timeout().await,
        }
    };
    let RequestCtx {
        mut ex, service, ..
    } = ctx;
    let next = match next {
        Next::Tunnel(t) => {
            if let Some(client) = client_slot.take() {
                let Tunnel {
                    up,
                    client_pending,
                    up_pending,
                } = *t;
                let (a, b) =
                    Box::pin(tunnel(shard, cfg, client, up, client_pending, up_pending)).await;
                ex.bytes_in += a;
                ex.bytes_out += b;
            }
            Next::Close
        }
        n => n,
    };
    let end = *ex.end.get_or_insert_with(Instant::now);
    shard.record(dir, service, logged.as_ref(), &ex);
    (next, cbuf, end)
}

impl<'p> RequestCtx<'p, '_> {
    /// The caller's identity for the app (inbound), in the header the
    /// operator named; a client's own copy of that header never gets
    /// through.
    fn identity_header(&mut self, cbuf: &Buf) {
        self.scratch.extra.clear();
        if self.dir != Direction::Inbound {
            return;
        }
        let cfg = self.cfg;
        let Some(name) = cfg
            .inbound
            .as_ref()
            .and_then(|i| i.identity_header.as_deref())
        else {
            return;
        };
        self.head.drop_header(cbuf, name);
        if let Some(id) = self.client.peer_id() {
            let extra = &mut self.scratch.extra;
            extra.extend_from_slice(name.as_bytes());
            extra.extend_from_slice(b": ");
            extra.extend_from_slice(id.as_bytes());
            extra.extend_from_slice(b"\r\n");
        }
    }

    /// The request's total timeout (`timeouts.total`) passed: the phases'
    /// future (and the buffers it held) was dropped. If no response byte
    /// went out yet the client gets a 504; either way the connection closes.
    async fn total_timeout(&mut self) -> (Next, Buf) {
        tracing::debug!(
            service = %self.service,
            response_started = self.ex.bytes_out > 0,
            "upstream fault answered locally: request total timeout ({:?})",
            self.cfg.timeouts.total
        );
        if self.ex.bytes_out == 0 {
            return self
                .answer_and_close(Answer::TotalTimeout, Vec::new())
                .await;
        }
        self.ex.status = 0;
        (Next::Close, Vec::new())
    }

    /// Every phase after the head: route (or authorize), then the tries.
    async fn forward(&mut self, cbuf: Buf) -> (Next, Buf) {
        let routed = match self.dir {
            Direction::Inbound => self.authorize(&cbuf),
            Direction::Outbound => self.route(&cbuf).await,
        };
        let Routed { endpoints, policy } = match routed {
            Ok(r) => r,
            Err(answer) => return self.answer(answer, cbuf).await,
        };
        if self.head.method == Method::Connect {
            return Box::pin(connect_tunnel(self, cbuf, endpoints)).await;
        }
        let key = match self.before_upstream(&cbuf, &endpoints).await {
            Ok(key) => key,
            Err(answer) => return self.answer(answer, cbuf).await,
        };
        let attempts = Attempts::new(policy, self.ex.start, self.head.method.is_idempotent());
        let upstream_h2 = self.upstream_h2(&endpoints);
        exchange(self, cbuf, endpoints, attempts, key, upstream_h2).await
    }

    /// Whether the request goes upstream as an h2 stream: to an h2c app
    /// (`Some(false)`), or to peer proxies over the multiplexed mesh hop
    /// (`Some(true)`, `[upstream] multiplex`). Upgrades (WebSocket) keep
    /// HTTP/1.1 and a connection of their own.
    fn upstream_h2(&self, endpoints: &Endpoints<'_>) -> Option<bool> {
        if self.head.upgrade {
            return None;
        }
        if upstream_protocol(self.cfg, self.dir, endpoints) == crate::config::AppProtocol::H2c {
            return Some(false);
        }
        let mesh = self.dir == Direction::Outbound && endpoints.mtls().is_some();
        (mesh && self.cfg.upstream.multiplex).then_some(true)
    }

    /// The inbound phases before the app: the proxy's own probe, the
    /// caller's authorization and the service's rate limit.
    fn authorize(&mut self, cbuf: &Buf) -> Result<Routed<'p>, Answer<'p>> {
        let cfg = self.cfg;
        self.service = &cfg.proxy.service;
        let app = cfg.inbound.as_ref().map(|i| i.app.key());
        let app = match app {
            Some(app) if self.head.method != Method::Connect => app,
            _ => return Err(Answer::Error(ErrorKind::ConnectNotAllowed)),
        };
        if self.head.method == Method::Get && cbuf[self.head.path.clone()] == *PROBE_PATH {
            self.service = "probe";
            return Err(Answer::Probe {
                healthy: self.shard.app_healthy.get(),
            });
        }
        if let Some(policy) = self.denied_by(cbuf) {
            return Err(Answer::Denied { policy });
        }
        if !self.rate_admits() {
            return Err(Answer::Error(ErrorKind::RateLimited));
        }
        Ok(Routed {
            endpoints: Endpoints::One(app),
            policy: TryPolicy::single(cfg.timeouts.request),
        })
    }

    /// The caller's SPIFFE ID (from its certificate), method and path
    /// against the service's AccessPolicy. `Some(policy)`: denied by it
    /// (and counted by policy and caller). A plaintext inbound port (a
    /// static proxy without `[tls]`) has no identities to check.
    fn denied_by(&self, cbuf: &Buf) -> Option<&'p str> {
        denied(
            self.shard,
            self.table,
            self.client.is_tls(),
            self.client.peer_id().map(|c| &**c),
            self.head.method_bytes(cbuf),
            &cbuf[self.head.path.clone()],
        )
    }

    /// The proxy's own service's `rateLimit` (per service, or per caller
    /// identity): whether this request may go to the app.
    fn rate_admits(&self) -> bool {
        let caller = self.client.peer_id().map(|c| &**c);
        rate_admits(self.shard, self.service, caller, self.ex.start)
    }

    /// The outbound route (see [`route_request`]).
    async fn route(&mut self, cbuf: &Buf) -> Result<Routed<'p>, Answer<'p>> {
        let req = H1 {
            head: &self.head,
            buf: cbuf,
            service: self.dest.map(str::as_bytes),
        };
        let (service, routed) = route_request(self.shard, self.cfg, self.table, &req).await;
        self.service = service;
        routed
    }

    /// What a mesh service's Resilience policy does before anything goes
    /// upstream: an injected fault (a delay, then perhaps an abort), a
    /// mirrored copy, and the ring-hash key. `Err`: the fault's abort.
    async fn before_upstream(
        &mut self,
        cbuf: &Buf,
        endpoints: &Endpoints<'_>,
    ) -> Result<Option<u64>, Answer<'p>> {
        if self.dir != Direction::Outbound || matches!(endpoints, Endpoints::One(_)) {
            return Ok(None);
        }
        let shard = self.shard;
        let Some(p) = shard.traffic.policy(self.service) else {
            return Ok(None);
        };
        if !p.faults.is_empty() {
            let action = p.faults.decide(&mut || shard.random());
            if let Some(d) = action.delay {
                runtime::sleep(d).await;
            }
            if let Some(status) = action.abort {
                return Err(Answer::Fault { status });
            }
        }
        if let Some((target, bp)) = &p.mirror {
            if shard.random() % 10_000 < u64::from(*bp) {
                mirror::send(shard, self.table, target, &self.head, cbuf);
            }
        }
        let req = H1 {
            head: &self.head,
            buf: cbuf,
            service: None,
        };
        Ok(p.hash_key.as_ref().and_then(|k| hash_key(k, &req)))
    }
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
}

impl LoggedRequest {
    fn new(head: &RequestHead, buf: &[u8]) -> Self {
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
        if let (Some(req), Some(log)) = (req, self.access_log.borrow_mut().as_mut()) {
            log.log(&crate::accesslog::AccessEntry {
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
            });
        }
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
