//! One HTTP/2 stream through the request phases, as an HTTP/1.1 request
//! goes through them (forward/request.rs, exchange.rs), with the same
//! policy decisions:
//!
//! ```text
//! headers ──▶ authorize (inbound: probe, AccessPolicy, rate limit)
//!         ──▶ route (outbound: :authority → service → rule → backends)
//!         ──▶ tries: each picks an endpoint (per stream, by the rule's
//!             weights), takes a pooled h2 connection with room or opens
//!             one, sends the head, pumps the body, waits for the answer
//!         ──▶ relay (response DATA and trailers, while the request body
//!             may still stream: bidirectional calls) or answer locally
//!         ──▶ record (stats and access log)
//! ```
//!
//! Deadlines: the route's `timeout` and `perTryTimeout` bound the wait for
//! the response head; a streaming response is then bounded by
//! `timeouts.idle` of silence both ways, never cut while data moves. A gRPC
//! call's `grpc-timeout` bounds the whole call (the smaller of it and the
//! route's timeout bounds the head), and goes upstream reduced by the time
//! spent.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};

use super::answer::{send_local, COREMESH_ERROR, GRPC_MESSAGE, GRPC_STATUS};
use super::body::{relay, BodyStat, ReqBody, Stop};
use super::upstream::for_try;
use super::{left, ConnInfo, StreamGuard, CARRIED_HTTP1};
use crate::attempt::{after, Attempts, TryPolicy};
use crate::config::Config;
use crate::error::{Answer, ErrorKind, ProxyError};
use crate::forward::ctx::Exchange;
use crate::forward::phases::{
    denied, hash_key, rate_admits, route_request, Caller, LoggedRequest, Routed,
};
use crate::forward::tries::{self, Connected, GiveUp, Last, Plan, Protocol, TryFail};
use crate::forward::upstream::{Endpoints, Tried};
use crate::forward::PROBE_PATH;
use crate::grpc;
use crate::route::RequestView;
use crate::routing::RoutingTable;
use crate::runtime;
use crate::shard::h2pool::StreamSlot;
use crate::shard::Shard;
use crate::stats::{Direction, ResetBy};

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The timer of a call without a deadline (a year: timers take an instant
/// computed from now, which must not overflow).
const NO_DEADLINE: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Serves one stream to its end and records it.
pub(super) async fn serve_stream(
    shard: Rc<Shard>,
    info: Rc<ConnInfo>,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    _slot: StreamGuard,
) {
    let start = Instant::now();
    let cfg = shard.config();
    let table = shard.routes();
    let (mut parts, recv) = req.into_parts();
    crate::forward::request_id::h2(&mut parts.headers, &shard.request_ids);
    let is_grpc = grpc::is_grpc(parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes));
    let view = H2View {
        parts: &parts,
        dest: info.dest.as_deref().map(str::as_bytes),
    };
    let mut logged = shard.logs_requests().then(|| LoggedRequest {
        method: view.method().to_vec(),
        authority: view.authority().unwrap_or_default().to_vec(),
        path: view.path_and_query().to_vec(),
        protocol: "HTTP/2",
        grpc_status: None,
        request_id: crate::forward::request_id::of_h2(&parts.headers).to_vec(),
        trace_id: view
            .header("traceparent")
            .and_then(crate::accesslog::trace_id),
        caller: Caller::of(&shard, info.dir, info.peer.as_ref()),
    });
    let tapped = shard
        .tap
        .begin(info.dir, &view, info.peer.as_deref(), start);
    let mut call = Call {
        shard: &shard,
        cfg: &cfg,
        table: table.as_ref().map(|t| &***t),
        info: &info,
        view,
        is_grpc,
        respond,
        ex: Exchange {
            start,
            end: None,
            idle: cfg.timeouts.idle,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream: None,
        },
        service: "unknown",
        grpc_status: None,
        charge: None,
    };
    shard.stats.borrow_mut().h2.stream(info.dir);
    call.charge = admit(call.shard, call.cfg, call.info, call.view.parts, &recv);
    match call.charge {
        Some(_) => call.run(recv).await,
        None => call.answer(&Answer::Error(ErrorKind::BufferBudget)),
    }
    let Call {
        ex,
        service,
        grpc_status,
        ..
    } = call;
    if let Some(l) = logged.as_mut() {
        l.grpc_status = grpc_status;
    }
    if is_grpc {
        shard
            .stats
            .borrow_mut()
            .h2
            .grpc(info.dir, service, grpc_status);
    }
    shard.record(info.dir, service, logged.as_ref(), &ex);
    let latency = ex
        .end
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(ex.start);
    shard.tap.finish(tapped, service, ex.status, latency);
}

/// Charges what a stream may make the proxy hold (shard/budget.rs): a
/// pooled buffer's worth for its head and answer, and, when a body follows,
/// the DATA the h2 layer may keep for it unread (its Content-Length, at
/// most `[limits.h2] stream_window`). The connection's streams share
/// `connection_buffer_budget`. `None`: refused, and answered 503.
fn admit<'s>(
    shard: &'s Shard,
    cfg: &Config,
    info: &ConnInfo,
    parts: &http::request::Parts,
    recv: &RecvStream,
) -> Option<(crate::shard::budget::Charge<'s>, u64, u64)> {
    use crate::shard::budget::{Charge, Refused, REFUSALS};
    let window = u64::from(cfg.limits.h2.stream_window);
    // The largest the body can be: none, its Content-Length, or unknown.
    let bound = if recv.is_end_stream() {
        0
    } else {
        parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    let body = bound.min(window);
    let need = crate::shard::buf::BUF_SIZE + body as usize;
    let conn = Some(info.buffers.clone());
    let charge = Charge::new(&shard.budget, conn, need, cfg.limits.budgets());
    if charge.is_none() {
        REFUSALS.count(Refused::Request);
        crate::lograte::log_limited!(
            tracing::Level::WARN,
            shard = shard.index,
            "HTTP/2 stream refused with 503: buffer budget exhausted ({} of [limits] buffer_budget {} in use on this shard)",
            shard.budget.used(),
            cfg.limits.buffer_budget
        );
    }
    charge.map(|c| (c, body, bound))
}

/// An HTTP/2 request as the policy reads it.
struct H2View<'a> {
    parts: &'a http::request::Parts,
    /// The service of an intercepted connection (routes every request).
    dest: Option<&'a [u8]>,
}

impl RequestView for H2View<'_> {
    fn method(&self) -> &[u8] {
        self.parts.method.as_str().as_bytes()
    }

    fn authority(&self) -> Option<&[u8]> {
        if self.dest.is_some() {
            return self.dest;
        }
        match self.parts.uri.authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => self.header("host"),
        }
    }

    fn path_and_query(&self) -> &[u8] {
        self.parts
            .uri
            .path_and_query()
            .map_or(&b"/"[..], |p| p.as_str().as_bytes())
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.parts
            .headers
            .get(name)
            .map(|v| v.as_bytes().trim_ascii())
    }
}

/// One stream and what serving it needs.
struct Call<'p> {
    shard: &'p Shard,
    cfg: &'p Config,
    table: Option<&'p RoutingTable>,
    info: &'p ConnInfo,
    view: H2View<'p>,
    is_grpc: bool,
    respond: SendResponse<Bytes>,
    ex: Exchange,
    service: &'p str,
    /// The call's final `grpc-status`, once known (gRPC calls).
    grpc_status: Option<u8>,
    /// What the stream holds against the buffer budget (`admit`), how
    /// many body bytes of it may be kept for a retry without charging
    /// more, and the most the body can be.
    charge: Option<(crate::shard::budget::Charge<'p>, u64, u64)>,
}

/// A stream's side of the tries (forward/tries.rs): each try opens a
/// stream on a pooled h2 connection; the request body is pumped from the
/// client as each try needs it, kept for a retry up to `maxBody`.
struct StreamTries<'c, 'p> {
    call: &'c mut Call<'p>,
    body: ReqBody,
    /// The call's own deadline (`grpc-timeout`), which also bounds each
    /// try's wait for the response head.
    call_deadline: Option<Instant>,
}

impl StreamTries<'_, '_> {
    fn try_deadline(&self, plan: &Plan<'_>) -> Instant {
        self.call_deadline
            .map_or(plan.deadline, |d| d.min(plan.deadline))
    }
}

impl Protocol for StreamTries<'_, '_> {
    type Conn = Rc<crate::shard::h2pool::H2Up>;
    type Fail = TryFail;
    type Done = ();

    fn exchange_record(&self) -> &Exchange {
        &self.call.ex
    }

    async fn connect(
        &mut self,
        endpoints: &Endpoints<'_>,
        tried: &mut Tried,
        plan: &Plan<'_>,
    ) -> Result<Connected<Self::Conn>, ProxyError> {
        let deadline = self.try_deadline(plan);
        let c = for_try(
            self.call.shard,
            self.call.cfg,
            endpoints,
            tried,
            plan,
            deadline,
        )
        .await;
        self.call.ex.upstream = tried.last();
        c
    }

    async fn exchange(
        &mut self,
        c: Connected<Self::Conn>,
        endpoints: &Endpoints<'_>,
        plan: &Plan<'_>,
    ) -> Result<(), TryFail> {
        let slot = StreamSlot::new(c.conn);
        let try_plan = TryPlan {
            attempts: plan.attempts,
            budget: plan.budget,
            deadline: self.try_deadline(plan),
            call_deadline: self.call_deadline,
            peer_hop: endpoints.mtls().is_some(),
        };
        // Boxed: the try's futures (the body pump, the relay, their
        // timers) would otherwise be part of every stream's task, copied
        // whole when it is spawned.
        Box::pin(self.call.one_try(&slot, &mut self.body, try_plan)).await
    }

    async fn give_up(&mut self, how: GiveUp, last: Last<TryFail>, addr: Option<SocketAddr>) {
        let call = &mut *self.call;
        let err = last.error();
        if let Last::Tried(f) = &last {
            if f.response_started {
                // The client has its answer (or the reset) already.
                if call.ex.status == 0 {
                    call.ex.status = err.kind.status();
                }
                tracing::debug!(?addr, "HTTP/2 stream ended early: {err}");
                return;
            }
        }
        match how {
            GiveUp::Close => {
                call.ex.status = err.kind.status();
                call.respond.send_reset(Reason::INTERNAL_ERROR);
                call.count_reset(ResetBy::Proxy);
            }
            GiveUp::Answer { kind, .. } => {
                tracing::debug!(?addr, service = %call.service, "upstream fault answered locally: {err}");
                call.answer(&Answer::Error(kind));
            }
        }
    }
}

impl<'p> Call<'p> {
    async fn run(&mut self, recv: RecvStream) {
        let routed = match self.info.dir {
            Direction::Inbound => self.authorize(),
            Direction::Outbound => {
                let (service, routed) =
                    route_request(self.shard, self.cfg, self.table, &self.view).await;
                self.service = service;
                routed
            }
        };
        let Routed { endpoints, policy } = match routed {
            Ok(r) => r,
            Err(answer) => return self.answer(&answer),
        };
        let proto = crate::forward::upstream_protocol(self.cfg, self.info.dir, &endpoints);
        // An HTTP/1.1 request a peer proxy carried over the multiplexed
        // hop: the app gets HTTP/1.1, unless it speaks only h2c.
        let carried = self.info.peer.is_some()
            && self.info.dir == Direction::Inbound
            && self.view.parts.headers.contains_key(CARRIED_HTTP1);
        let to_http1 = proto == crate::config::AppProtocol::Http1
            || (carried && proto == crate::config::AppProtocol::Auto);
        if to_http1 {
            let deadline = after(self.ex.start, policy.total);
            return Box::pin(self.via_http1(&endpoints, recv, deadline)).await;
        }
        if self.view.parts.method == http::Method::CONNECT {
            // Extended CONNECT is not offered in SETTINGS, so only a plain
            // CONNECT can get here: tunnels over h2 are not carried.
            return self.answer(&Answer::Error(ErrorKind::ConnectNotAllowed));
        }
        let service = endpoints.service();
        let _permit = match service {
            Some(name) => match self.shard.traffic.with(name, |s| {
                s.breaker.permit(crate::resilience::Limit::Requests)
            }) {
                Some(None) => return self.answer(&Answer::Error(ErrorKind::Overloaded)),
                Some(permit) => permit,
                None => None,
            },
            None => None,
        };
        if let Some(name) = service {
            self.shard
                .traffic
                .with(name, |s| s.budget.deposit(self.ex.start));
        }
        let m = &self.view.parts.method;
        let idempotent = self.is_grpc
            || matches!(
                *m,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::PUT
                    | http::Method::DELETE
                    | http::Method::OPTIONS
                    | http::Method::TRACE
            );
        let key = match self.before_upstream(&endpoints).await {
            Ok(key) => key,
            Err(answer) => return self.answer(&answer),
        };
        let attempts = Attempts::new(policy, self.ex.start, idempotent);
        let mut limit = if attempts.may_retry_at_all() {
            attempts.policy().max_body
        } else {
            0
        };
        // The body kept for a retry stays within the buffer budget: what
        // the stream was charged for its unread DATA covers that much;
        // beyond it, more is charged or the body is kept no further (the
        // request is then not retried once part of it is gone).
        if let Some((charge, covered, bound)) = &self.charge {
            let kept = limit.min(*bound);
            if kept > *covered {
                let more = usize::try_from(kept - covered).unwrap_or(usize::MAX);
                if !charge.grow_extra(more) {
                    limit = *covered;
                }
            }
        }
        let body = ReqBody::new(recv, limit, self.identity_field());
        let (shard, start) = (self.shard, self.ex.start);
        let call_deadline = self.call_deadline();
        let mut p = StreamTries {
            call: self,
            body,
            call_deadline,
        };
        tries::run(&mut p, shard, &endpoints, attempts, key, start).await;
    }

    /// The service's Resilience before any upstream (outbound): an
    /// injected fault, and the ring-hash key. (Mirroring copies HTTP/1.1
    /// requests only.)
    async fn before_upstream(&self, endpoints: &Endpoints<'_>) -> Result<Option<u64>, Answer<'p>> {
        if self.info.dir != Direction::Outbound || matches!(endpoints, Endpoints::One(_)) {
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
        Ok(p.hash_key.as_ref().and_then(|k| hash_key(k, &self.view)))
    }

    /// The inbound phases before the app: the proxy's own probe, the
    /// caller's authorization and the service's rate limit.
    fn authorize(&mut self) -> Result<Routed<'p>, Answer<'p>> {
        let cfg = self.cfg;
        self.service = &cfg.proxy.service;
        let Some(app) = cfg.inbound.as_ref().map(|i| i.app.key()) else {
            return Err(Answer::Error(ErrorKind::ConnectNotAllowed));
        };
        let path = self.view.path_and_query();
        if self.view.parts.method == http::Method::GET && path == PROBE_PATH {
            self.service = "probe";
            return Err(Answer::Probe {
                healthy: self.shard.app_healthy.get(),
            });
        }
        let caller = self.info.peer.as_deref();
        let method = self.view.method();
        if let Some(policy) = denied(self.shard, self.table, self.info.tls, caller, method, path) {
            return Err(Answer::Denied { policy });
        }
        if !rate_admits(self.shard, self.service, caller, self.ex.start) {
            return Err(Answer::Error(ErrorKind::RateLimited));
        }
        Ok(Routed {
            endpoints: Endpoints::One(app),
            policy: TryPolicy::single(cfg.timeouts.request),
        })
    }

    fn answer(&mut self, answer: &Answer<'_>) {
        self.ex.status = answer.status();
        if self.is_grpc {
            self.grpc_status = Some(grpc::answer_code(answer).as_u8());
        }
        self.ex.bytes_out += send_local(&mut self.respond, answer, self.is_grpc);
        self.ex.end = Some(Instant::now());
    }

    fn count_reset(&self, by: ResetBy) {
        self.shard.stats.borrow_mut().h2.reset(self.info.dir, by);
    }

    /// The call's own deadline (`grpc-timeout`), if it has one.
    fn call_deadline(&self) -> Option<Instant> {
        if !self.is_grpc {
            return None;
        }
        let t = self.view.parts.headers.get(GRPC_TIMEOUT)?;
        grpc::parse_timeout(t.as_bytes()).map(|d| after(self.ex.start, d))
    }

    /// The field that carries the caller's identity to the app (inbound,
    /// when the operator named one): the proxy sets it, a client's own
    /// copy never gets through.
    fn identity_field(&self) -> Option<HeaderName> {
        if self.info.dir != Direction::Inbound {
            return None;
        }
        let name = self.cfg.inbound.as_ref()?.identity_header.as_deref()?;
        HeaderName::from_bytes(name.as_bytes()).ok()
    }

    /// The request head for the upstream: the client's, less hop-by-hop
    /// fields; inbound, with the caller's identity in the operator's
    /// header; with what is left of a gRPC call's deadline.
    fn upstream_request(&self, call_deadline: Option<Instant>) -> http::Request<()> {
        let parts = self.view.parts;
        let mut uri = parts.uri.clone();
        if uri.scheme().is_none() || uri.authority().is_none() {
            let mut p = uri.into_parts();
            p.scheme.get_or_insert(http::uri::Scheme::HTTP);
            if p.authority.is_none() {
                let host = self.view.authority().unwrap_or(b"localhost");
                p.authority = http::uri::Authority::try_from(host).ok();
            }
            if p.path_and_query.is_none() {
                p.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            uri = http::Uri::from_parts(p).unwrap_or_default();
        }
        let mut req = http::Request::new(());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        for (name, value) in &parts.headers {
            if !hop_by_hop(name, value) {
                h.append(name, value.clone());
            }
        }
        h.remove(http::header::HOST);
        if let Some(name) = self.identity_field() {
            h.remove(&name);
            if let Some(v) = self
                .info
                .peer
                .as_deref()
                .and_then(|id| HeaderValue::from_str(id).ok())
            {
                h.insert(name, v);
            }
        }
        if let Some(d) = call_deadline {
            if let Ok(v) = HeaderValue::from_str(&grpc::format_timeout(left(d))) {
                h.insert(GRPC_TIMEOUT, v);
            }
        }
        req
    }
}

/// Fields that belong to one connection (RFC 9113, section 8.2.2), which
/// HTTP/2 forbids; `te` passes only as `trailers`.
fn hop_by_hop(name: &HeaderName, value: &HeaderValue) -> bool {
    match name.as_str() {
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        | CARRIED_HTTP1 => true,
        "te" => value.as_bytes() != b"trailers",
        _ => false,
    }
}

/// What one try is allowed.
struct TryPlan<'a> {
    attempts: &'a Attempts,
    /// Withdraws a retry from the service's budget; `false`: over budget.
    budget: &'a dyn Fn() -> bool,
    /// The response head must arrive by then.
    deadline: Instant,
    /// The whole call must end by then (gRPC).
    call_deadline: Option<Instant>,
    /// The upstream is a peer proxy (mutual TLS).
    peer_hop: bool,
}

/// What stopped the wait for the response head.
enum Waited {
    Head(Result<http::Response<RecvStream>, h2::Error>),
    Pumped(Result<(), Stop>),
    ClientReset,
    Timeout,
}

/// The two flows of a try once the answer's head is relayed: the answer
/// to the client, and what is left of the request body to the upstream.
struct Flows<'r, 'p, R, P> {
    relay: std::pin::Pin<&'r mut R>,
    pump: std::pin::Pin<&'p mut P>,
    pump_done: bool,
    last: &'r Cell<Instant>,
}

/// What stopped the relay of the response.
enum Relayed {
    Done(Result<Option<http::HeaderMap>, Stop>),
    Pumped(Result<(), Stop>),
    Deadline,
    Idle,
}

impl Call<'_> {
    /// One try on one upstream connection: open a stream, send the body
    /// while waiting for the answer's head, judge it (retry or relay), then
    /// relay the answer while the body may still stream.
    async fn one_try(
        &mut self,
        slot: &StreamSlot,
        body: &mut ReqBody,
        plan: TryPlan<'_>,
    ) -> Result<(), TryFail> {
        let (resp_fut, mut up_send, eos) = self.open_stream(slot, body, &plan).await?;
        let stat = body.stat();
        let last = Cell::new(Instant::now());
        let mut pump = std::pin::pin!(async {
            if eos {
                Ok(())
            } else {
                body.pump(&mut up_send, &last).await
            }
        });
        let mut pump_done = false;
        let head = self
            .wait_head(
                resp_fut,
                pump.as_mut(),
                &mut pump_done,
                &stat,
                plan.deadline,
            )
            .await?;
        let (rparts, mut up_recv) = self.judge_head(head, &stat, &plan)?;
        let end = up_recv.is_end_stream();
        let head = http::Response::from_parts(rparts, ());
        let mut client_send = match self.respond.send_response(head, end) {
            Ok(s) => s,
            Err(_) => {
                return Err(TryFail::started(
                    ErrorKind::ClientGone,
                    "the client reset the stream",
                ))
            }
        };
        self.ex.bytes_in = stat.received();
        if end {
            self.ex.end = Some(Instant::now());
            return Ok(());
        }
        let moved = Cell::new(0u64);
        let outcome = {
            let relay = std::pin::pin!(relay(&mut up_recv, &mut client_send, &last, &moved));
            let flows = Flows {
                relay,
                pump: pump.as_mut(),
                pump_done,
                last: &last,
            };
            self.relay_phase(flows, plan.call_deadline).await
        };
        self.ex.bytes_in = stat.received();
        self.ex.bytes_out = moved.get();
        self.finish(outcome, &mut client_send)
    }

    /// A stream on the connection, with the request head sent; and whether
    /// the head ended the request (no body).
    async fn open_stream(
        &self,
        slot: &StreamSlot,
        body: &ReqBody,
        plan: &TryPlan<'_>,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>, bool), TryFail> {
        let closed = || TryFail {
            replayable: true,
            ..TryFail::new(
                ErrorKind::UpstreamReset,
                "HTTP/2 connection closed",
                body.replayable(),
            )
        };
        let req = self.upstream_request(plan.call_deadline);
        let ready = runtime::timeout_at(plan.deadline, slot.conn().send.clone().ready()).await;
        let mut send = match ready {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => {
                slot.connection_gone();
                return Err(closed());
            }
            Err(_) => {
                return Err(TryFail::new(
                    ErrorKind::UpstreamTimeout,
                    "no stream free on the upstream connection",
                    body.replayable(),
                ))
            }
        };
        let eos = body.is_empty();
        match send.send_request(req, eos) {
            Ok((resp, up_send)) => Ok((resp, up_send, eos)),
            Err(_) => {
                slot.connection_gone();
                Err(closed())
            }
        }
    }

    /// Waits for the response head while the body pump runs, watching the
    /// client for a reset and the try's deadline.
    async fn wait_head<P>(
        &mut self,
        resp_fut: h2::client::ResponseFuture,
        mut pump: std::pin::Pin<&mut P>,
        pump_done: &mut bool,
        stat: &BodyStat,
        deadline: Instant,
    ) -> Result<http::Response<RecvStream>, TryFail>
    where
        P: Future<Output = Result<(), Stop>>,
    {
        let mut resp_fut = std::pin::pin!(resp_fut);
        let mut timer = std::pin::pin!(runtime::sleep(left(deadline)));
        let head = loop {
            let respond = &mut self.respond;
            let done = *pump_done;
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = resp_fut.as_mut().poll(cx) {
                    return Poll::Ready(Waited::Head(r));
                }
                if !done {
                    if let Poll::Ready(r) = pump.as_mut().poll(cx) {
                        return Poll::Ready(Waited::Pumped(r));
                    }
                }
                if respond.poll_reset(cx).is_ready() {
                    return Poll::Ready(Waited::ClientReset);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Waited::Timeout);
                }
                Poll::Pending
            })
            .await;
            match event {
                Waited::Head(r) => break r,
                Waited::Pumped(Ok(())) | Waited::Pumped(Err(Stop::To)) => *pump_done = true,
                Waited::Pumped(Err(Stop::From(_))) | Waited::ClientReset => {
                    // The client cancelled: dropping the upstream stream's
                    // handles resets it (CANCEL).
                    self.count_reset(ResetBy::Client);
                    return Err(TryFail::started(
                        ErrorKind::ClientGone,
                        "the client reset the stream",
                    ));
                }
                Waited::Timeout => {
                    return Err(TryFail::new(
                        ErrorKind::UpstreamTimeout,
                        "no HTTP/2 response head in time",
                        stat.replayable(),
                    ))
                }
            }
        };
        head.map_err(|e| self.head_failed(&e, stat.replayable()))
    }

    /// What the answer's head says: the peer proxy could not reach its
    /// app, or a status the rule retries (the try fails, for the next one),
    /// or an answer to relay (its head, cleaned).
    fn judge_head(
        &mut self,
        resp: http::Response<RecvStream>,
        stat: &BodyStat,
        plan: &TryPlan<'_>,
    ) -> Result<(http::response::Parts, RecvStream), TryFail> {
        let (mut rparts, up_recv) = resp.into_parts();
        if self.info.dir == Direction::Inbound {
            // `coremesh-error` is this proxy's word to its callers; the
            // app cannot speak it.
            rparts.headers.remove(COREMESH_ERROR);
        }
        let end = up_recv.is_end_stream();
        if plan.peer_hop && app_unreachable(&rparts.headers) && stat.replayable() {
            return Err(TryFail::new(
                ErrorKind::PeerAppUnreachable,
                "the peer proxy could not reach its app",
                true,
            ));
        }
        let status = rparts.status.as_u16();
        let grpc_retry = self.is_grpc
            && end
            && rparts
                .headers
                .get(GRPC_STATUS)
                .is_some_and(|g| plan.attempts.retries_grpc(g.as_bytes()));
        if stat.replayable()
            && (grpc_retry || plan.attempts.retries_status(status))
            && (plan.budget)()
        {
            return Err(TryFail::new(
                ErrorKind::RetryableStatus,
                "retried status",
                true,
            ));
        }
        self.ex.status = status;
        if self.is_grpc {
            self.grpc_status = grpc_code(rparts.headers.get(GRPC_STATUS));
        }
        for name in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
            rparts.headers.remove(name);
        }
        Ok((rparts, up_recv))
    }

    /// Runs the response relay and what is left of the body pump until the
    /// response ends, the call's deadline passes, or nothing moves either
    /// way for `timeouts.idle`.
    async fn relay_phase<R, P>(
        &self,
        mut f: Flows<'_, '_, R, P>,
        call_deadline: Option<Instant>,
    ) -> Relayed
    where
        R: Future<Output = Result<Option<http::HeaderMap>, Stop>>,
        P: Future<Output = Result<(), Stop>>,
    {
        let idle = self.cfg.timeouts.idle;
        let mut deadline = std::pin::pin!(runtime::sleep(call_deadline.map_or(NO_DEADLINE, left)));
        let tick = (idle / 4).clamp(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_secs(1),
        );
        let mut idle_timer = std::pin::pin!(runtime::sleep(tick));
        loop {
            let done = f.pump_done;
            let (relay, pump) = (&mut f.relay, &mut f.pump);
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = relay.as_mut().poll(cx) {
                    return Poll::Ready(Relayed::Done(r));
                }
                if !done {
                    if let Poll::Ready(r) = pump.as_mut().poll(cx) {
                        return Poll::Ready(Relayed::Pumped(r));
                    }
                }
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Relayed::Deadline);
                }
                if idle_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Relayed::Idle);
                }
                Poll::Pending
            })
            .await;
            match event {
                Relayed::Pumped(Ok(())) | Relayed::Pumped(Err(Stop::To)) => f.pump_done = true,
                Relayed::Pumped(Err(Stop::From(_))) => return Relayed::Pumped(Err(Stop::To)),
                Relayed::Idle if f.last.get().elapsed() < idle => {
                    idle_timer.set(runtime::sleep(tick));
                }
                other => return other,
            }
        }
    }

    /// Ends the client's stream as the relay ended.
    fn finish(
        &mut self,
        outcome: Relayed,
        client_send: &mut h2::SendStream<Bytes>,
    ) -> Result<(), TryFail> {
        match outcome {
            Relayed::Done(Ok(trailers)) => {
                if self.is_grpc {
                    self.grpc_status = trailers
                        .as_ref()
                        .and_then(|t| grpc_code(t.get(GRPC_STATUS)))
                        .or(self.grpc_status);
                }
                self.ex.end = Some(Instant::now());
                Ok(())
            }
            Relayed::Done(Err(Stop::From(e)))
                if self.is_grpc && !(e.is_reset() && e.is_remote()) =>
            {
                // The upstream's connection died mid-call (its process
                // went away): a gRPC client gets UNAVAILABLE, as it would
                // from the dead server's own socket, not a reset.
                let mut t = http::HeaderMap::new();
                t.insert(
                    GRPC_STATUS,
                    HeaderValue::from(u16::from(grpc::Code::Unavailable.as_u8())),
                );
                t.insert(
                    GRPC_MESSAGE,
                    HeaderValue::from_static("upstream connection reset"),
                );
                t.insert(
                    COREMESH_ERROR,
                    HeaderValue::from_static("upstream connection reset"),
                );
                if client_send.send_trailers(t).is_err() {
                    client_send.send_reset(Reason::CANCEL);
                }
                self.grpc_status = Some(grpc::Code::Unavailable.as_u8());
                Err(TryFail::started(
                    ErrorKind::UpstreamReset,
                    "the upstream connection failed mid-stream",
                ))
            }
            Relayed::Done(Err(Stop::From(e))) => {
                client_send.send_reset(e.reason().unwrap_or(Reason::INTERNAL_ERROR));
                self.count_reset(ResetBy::Upstream);
                Err(TryFail::started(
                    ErrorKind::UpstreamReset,
                    "the upstream reset the stream",
                ))
            }
            Relayed::Done(Err(Stop::To)) | Relayed::Pumped(_) => {
                client_send.send_reset(Reason::CANCEL);
                self.count_reset(ResetBy::Client);
                Err(TryFail::started(
                    ErrorKind::ClientGone,
                    "the client reset the stream",
                ))
            }
            Relayed::Deadline => {
                let mut t = http::HeaderMap::new();
                t.insert(
                    GRPC_STATUS,
                    HeaderValue::from(u16::from(grpc::Code::DeadlineExceeded.as_u8())),
                );
                t.insert(GRPC_MESSAGE, HeaderValue::from_static("deadline exceeded"));
                t.insert(COREMESH_ERROR, HeaderValue::from_static("upstream timeout"));
                if client_send.send_trailers(t).is_err() {
                    client_send.send_reset(Reason::CANCEL);
                }
                self.grpc_status = Some(grpc::Code::DeadlineExceeded.as_u8());
                self.count_reset(ResetBy::Proxy);
                Err(TryFail::started(
                    ErrorKind::UpstreamTimeout,
                    "the call's deadline passed",
                ))
            }
            Relayed::Idle => {
                client_send.send_reset(Reason::CANCEL);
                self.count_reset(ResetBy::Proxy);
                Err(TryFail::started(
                    ErrorKind::Idle,
                    "nothing moved on the stream",
                ))
            }
        }
    }

    /// The upstream failed the stream before its response head. A reset
    /// the upstream chose (other than REFUSED_STREAM, which says the
    /// request was not processed) is passed on to the client as it is.
    fn head_failed(&mut self, e: &h2::Error, intact: bool) -> TryFail {
        let refused = e.reason() == Some(Reason::REFUSED_STREAM);
        if e.is_reset() && e.is_remote() && !refused {
            let reason = e.reason().unwrap_or(Reason::INTERNAL_ERROR);
            self.respond.send_reset(reason);
            self.count_reset(ResetBy::Upstream);
            return TryFail::started(ErrorKind::UpstreamReset, "the upstream reset the stream");
        }
        TryFail {
            replayable: refused || e.is_go_away(),
            ..TryFail::new(
                ErrorKind::UpstreamReset,
                "the HTTP/2 upstream failed",
                intact,
            )
        }
    }
}

/// A `grpc-status` value as a code.
fn grpc_code(v: Option<&HeaderValue>) -> Option<u8> {
    std::str::from_utf8(v?.as_bytes()).ok()?.trim().parse().ok()
}

/// A peer proxy's own answer that it could not connect to its app.
fn app_unreachable(h: &http::HeaderMap) -> bool {
    h.get(COREMESH_ERROR).is_some_and(|e| {
        e.as_bytes() == ErrorKind::ConnectFailed.text().as_bytes()
            || e.as_bytes() == ErrorKind::ConnectTimeout.text().as_bytes()
    })
}

mod to_http1;
