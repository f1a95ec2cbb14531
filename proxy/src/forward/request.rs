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
use super::exchange::{buffer_body, Http1Tries};
use super::phases::{denied, hash_key, rate_admits, route_request, Caller, LoggedRequest, Routed};
use super::relay::{body_prefix, connect_tunnel, tunnel};
use super::request_id;
use super::to_h2::H2Tries;
use super::tries;
use super::*;
use crate::attempt::{Attempts, TryPolicy};
use crate::error::Answer;

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
    let tunnel_request = head.upgrade || head.method == Method::Connect;
    let charge = admit(shard, cfg, &cbuf, tunnel_request);
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
        charge,
    };
    ctx.identity_header(&cbuf);
    ctx.scratch.request_id = request_id::http1(
        &mut ctx.head,
        &cbuf,
        &shard.request_ids,
        &mut ctx.scratch.extra,
    );
    // The access log needs the request line's fields after the buffer has
    // been reused for the body, so it gets a copy (only when it is enabled).
    let logged = shard.logs_requests().then(|| {
        let id = request_id::of_http1(&ctx.head, &cbuf, ctx.scratch.request_id.as_ref());
        let caller = Caller::of(shard, dir, ctx.client.peer_id());
        LoggedRequest::new(&ctx.head, &cbuf, &ctx.scratch.extra, id, caller)
    });
    let tapped = shard.tap.begin(
        dir,
        &H1 {
            head: &ctx.head,
            buf: &cbuf,
            service: None,
        },
        ctx.client.peer_id().map(|c| &**c),
        start,
    );
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
    // The charge covers the tunnel's buffers too, so it lives until the end.
    let RequestCtx {
        mut ex,
        service,
        charge: _charge,
        ..
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
    let latency = end.saturating_duration_since(ex.start);
    shard.tap.finish(tapped, service, ex.status, latency);
    (next, cbuf, end)
}

/// Charges what a request holds from its head on (shard/budget.rs): the
/// head's buffer and a buffer for the response head, and for a tunnel its
/// two relay buffers. `None`: over `[limits] buffer_budget` (or the
/// connection's), and the request is answered 503.
fn admit<'p>(
    shard: &'p Shard,
    cfg: &Config,
    cbuf: &Buf,
    tunnel: bool,
) -> Option<crate::shard::budget::Charge<'p>> {
    use crate::shard::budget::{Charge, Refused, REFUSALS};
    let tunnel_bufs = if tunnel { 2 * BUF_SIZE } else { 0 };
    let need = cbuf.capacity() + BUF_SIZE + tunnel_bufs;
    let charge = Charge::new(&shard.budget, None, need, cfg.limits.budgets());
    if charge.is_none() {
        REFUSALS.count(Refused::Request);
        crate::lograte::log_limited!(
            tracing::Level::WARN,
            shard = shard.index,
            "request refused with 503: buffer budget exhausted ({} of [limits] buffer_budget {} in use on this shard)",
            shard.budget.used(),
            cfg.limits.buffer_budget
        );
    }
    charge
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
        if self.charge.is_none() {
            return self
                .answer(Answer::Error(ErrorKind::BufferBudget), cbuf)
                .await;
        }
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

/// Forwards a request and its response over a pooled or new upstream
/// connection, trying again as `attempts` decides. Only idempotent requests
/// whose whole body went out in the first write are ever sent twice.
pub(super) async fn exchange(
    ctx: &mut RequestCtx<'_, '_>,
    mut cbuf: Buf,
    endpoints: Endpoints<'_>,
    attempts: Attempts,
    key: Option<u64>,
    upstream_h2: Option<bool>,
) -> (Next, Buf) {
    let shard = ctx.shard;
    let service = endpoints.service();
    // maxRequests: this request holds a slot until it is done.
    let _permit = match service {
        Some(name) => match shard.traffic.with(name, |s| {
            s.breaker.permit(crate::resilience::Limit::Requests)
        }) {
            Some(None) => return ctx.answer(Answer::Error(ErrorKind::Overloaded), cbuf).await,
            Some(permit) => permit,
            None => None,
        },
        None => None,
    };
    if let Some(name) = service {
        shard.traffic.with(name, |s| s.budget.deposit(ctx.ex.start));
    }
    if attempts.may_retry_at_all() {
        let limit = attempts.policy().max_body;
        cbuf = match Box::pin(buffer_body(ctx, cbuf, limit)).await {
            Ok(b) => b,
            Err(b) => return (Next::Close, b),
        };
    }
    // A chunked body whose first bytes are malformed is refused before any
    // upstream is involved.
    let prefix = &cbuf[ctx.head.head_len..];
    if body_prefix(ctx.head.framing, prefix, &mut ChunkedDecoder::new()).is_err() {
        let answer = Answer::Refused {
            status: 400,
            reason: "invalid chunked body",
        };
        return ctx.answer_and_close(answer, cbuf).await;
    }
    let start = ctx.ex.start;
    if let Some(carried) = upstream_h2 {
        let Some(first) = ctx.h2_request(&cbuf) else {
            let answer = Answer::Refused {
                status: 400,
                reason: "request fields cannot be carried over HTTP/2",
            };
            return ctx.answer_and_close(answer, cbuf).await;
        };
        let mut p = H2Tries {
            ctx,
            cbuf,
            first: Some(first),
            carried,
        };
        return Box::pin(tries::run(&mut p, shard, &endpoints, attempts, key, start)).await;
    }
    let mut p = Http1Tries { ctx, cbuf };
    tries::run(&mut p, shard, &endpoints, attempts, key, start).await
}
