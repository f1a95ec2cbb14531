//! The attempt and relay phases: the tries a request gets ([`Attempts`],
//! from the policy crate, decides after each failure), each on a connection
//! from [`super::upstream`], and one try over one connection
//! ([`over_connection`]): head and first body bytes in one vectored write,
//! the rest of the body streamed, interim responses relayed, the final
//! response relayed from the buffer it was read into.

use super::relay::{body_prefix, dechunk_in_place, relay_request_body, relay_response_body};
use super::tries::{Connected, Failure, GiveUp, Last, Plan, Protocol, TryFail};
use super::upstream::{upstream_conn, ConnectPlan, Endpoints, Tried};
use super::*;
use crate::attempt::{Attempts, TryFailure};
use crate::shard::pool::Permit;

/// Why an exchange with one upstream connection failed.
pub(super) struct Failed {
    err: ProxyError,
    /// Nothing of the response arrived and the request can be sent again on
    /// a fresh connection (a pooled connection the upstream had closed).
    replayable: bool,
    /// A response already started: the client connection must just close.
    response_started: bool,
    /// The whole request went out in the first write and `cbuf` still holds
    /// it, so a retry policy may send it again.
    request_intact: bool,
    cbuf: Buf,
}

impl Failed {
    /// The upstream failed before any of its response reached the client.
    fn upstream(err: ProxyError, request_intact: bool, cbuf: Buf) -> Failed {
        Failed {
            err,
            replayable: false,
            response_started: false,
            request_intact,
            cbuf,
        }
    }

    /// Relaying the response failed after it started (`kind`: whose fault).
    fn started(kind: ErrorKind, cbuf: Buf) -> Failed {
        Failed {
            err: ProxyError::new(kind, "relaying the response"),
            replayable: false,
            response_started: true,
            request_intact: false,
            cbuf,
        }
    }

    /// The client went away while the proxy wrote to it.
    fn gone(cbuf: Buf) -> Failed {
        Failed {
            err: ProxyError::new(ErrorKind::ClientGone, "writing to the client"),
            ..Failed::started(ErrorKind::ClientGone, cbuf)
        }
    }

    /// Whether this failure tells about the endpoint. A pooled connection
    /// reset or closed under the request says nothing (the upstream closes
    /// idle connections when it likes), and a timeout after an upload that
    /// did not go out whole measured the client as much as the endpoint.
    fn says_endpoint_down(&self, reused: bool) -> bool {
        match self.err.kind {
            ErrorKind::UpstreamReset => !reused,
            ErrorKind::UpstreamTimeout => self.request_intact,
            _ => true,
        }
    }

    /// As a failure of a try over an h2 stream (the multiplexed hop's
    /// fallback to HTTP/1.1), and the request's buffer.
    pub(super) fn into_try_fail(self) -> (TryFail, Buf) {
        let fail = TryFail {
            err: self.err,
            replayable: self.replayable,
            request_intact: self.request_intact,
            response_started: self.response_started,
        };
        (fail, self.cbuf)
    }

    /// What the attempt decision needs to know.
    fn as_try(&self) -> TryFailure {
        TryFailure {
            kind: self.err.kind,
            sent: true,
            replayable: self.replayable,
            request_intact: self.request_intact,
            response_started: self.response_started,
        }
    }
}

/// An HTTP/1.1 request's side of the tries (forward/tries.rs): the
/// request's buffer goes to each try and comes back with its failure.
pub(super) struct Http1Tries<'c, 'a, 'b> {
    pub(super) ctx: &'c mut RequestCtx<'a, 'b>,
    pub(super) cbuf: Buf,
}

impl Failure for Failed {
    fn error(&self) -> &ProxyError {
        &self.err
    }

    fn as_try(&self) -> TryFailure {
        Failed::as_try(self)
    }

    fn says_endpoint_down(&self, reused: bool) -> bool {
        Failed::says_endpoint_down(self, reused)
    }
}

impl Protocol for Http1Tries<'_, '_, '_> {
    type Conn = (Conn, Option<Permit>);
    type Fail = Failed;
    type Done = (Next, Buf);

    fn exchange_record(&self) -> &super::ctx::Exchange {
        &self.ctx.ex
    }

    fn trace_rec(&mut self) -> Option<&mut crate::trace::Recording> {
        self.ctx.ex.trace.rec.as_deref_mut()
    }

    async fn connect(
        &mut self,
        endpoints: &Endpoints<'_>,
        tried: &mut Tried,
        plan: &Plan<'_>,
    ) -> Result<Connected<Self::Conn>, ProxyError> {
        let connect = ConnectPlan {
            fresh_only: plan.fresh_only,
            non_idempotent: !plan.attempts.idempotent(),
            key: plan.key,
            now: plan.now,
            deadline: plan.deadline,
        };
        let (up, addr, reused, permit) =
            upstream_conn(self.ctx.shard, self.ctx.cfg, endpoints, tried, connect).await?;
        self.ctx.ex.upstream = Some(addr);
        self.ctx.ex.backend = tried.backend();
        Ok(Connected {
            conn: (up, permit),
            addr,
            reused,
        })
    }

    async fn exchange(
        &mut self,
        c: Connected<Self::Conn>,
        endpoints: &Endpoints<'_>,
        plan: &Plan<'_>,
    ) -> Result<(Next, Buf), Failed> {
        let retry_status = RetryStatus::of(plan);
        let (up, permit) = c.conn;
        let conn = TryConn {
            up,
            permit,
            addr: c.addr,
            peer: endpoints.mtls().is_some() && plan.attempts.may_move(plan.now),
        };
        let cbuf = std::mem::take(&mut self.cbuf);
        over_connection(self.ctx, cbuf, conn, plan.deadline, retry_status)
            .await
            .map_err(|mut f| {
                self.cbuf = std::mem::take(&mut f.cbuf);
                f
            })
    }

    async fn give_up(
        &mut self,
        how: GiveUp,
        last: Last<Failed>,
        addr: Option<SocketAddr>,
    ) -> (Next, Buf) {
        let cbuf = std::mem::take(&mut self.cbuf);
        give_up_http1(self.ctx, cbuf, how, last.error(), addr).await
    }
}

/// The tries of an HTTP/1.1 request gave up: the client gets the proxy's
/// answer, or its connection closes.
pub(super) async fn give_up_http1(
    ctx: &mut RequestCtx<'_, '_>,
    cbuf: Buf,
    how: GiveUp,
    err: &ProxyError,
    addr: Option<SocketAddr>,
) -> (Next, Buf) {
    match how {
        GiveUp::Close => {
            debug_fault(ctx, addr, err, true);
            ctx.ex.status = 0;
            (Next::Close, cbuf)
        }
        GiveUp::Answer { kind, close } => {
            ctx.ex.status = kind.status();
            debug_fault(ctx, addr, err, false);
            if close {
                ctx.answer_and_close(Answer::Error(kind), cbuf).await
            } else {
                ctx.answer(Answer::Error(kind), cbuf).await
            }
        }
    }
}

/// Every upstream fault the proxy answers itself, at debug level (warnings
/// about connect failures are rate-limited in `upstream`).
fn debug_fault(
    ctx: &RequestCtx<'_, '_>,
    addr: Option<SocketAddr>,
    err: &ProxyError,
    started: bool,
) {
    tracing::debug!(
        ?addr,
        service = %ctx.service,
        status = err.kind.status(),
        response_started = started,
        "upstream fault answered locally: {err}"
    );
}

/// A request body this large, even when it goes out whole with the head,
/// may not fit the peer's receive buffer: the dead-peer timeout is lifted
/// for it as for a streaming one.
const PATIENT_ABOVE: usize = 64 * 1024;

/// What lets a try drop a response whose status the retry policy retries
/// (`on: [5xx]`, `[gateway-error]`): the drop happens only once the retry is
/// certain, that is the whole request is still at hand to send again and
/// the retry budget has granted (and counted) the retry. Otherwise the
/// response is relayed: the last answer stands, rather than a 502 of the
/// proxy's own in place of the app's answer.
pub(super) struct RetryStatus<'a> {
    attempts: &'a Attempts,
    /// Withdraws a retry from the service's budget; `false`: over budget.
    budget: &'a dyn Fn() -> bool,
}

impl<'a> RetryStatus<'a> {
    /// What a try's plan allows, when the rule retries some status.
    pub(super) fn of(plan: &Plan<'a>) -> Option<RetryStatus<'a>> {
        plan.attempts.retries_some_status().then_some(RetryStatus {
            attempts: plan.attempts,
            budget: plan.budget,
        })
    }
}

/// Reads the rest of a request body of at most `limit` bytes into `cbuf`
/// (a retry sends the buffer again; see `Failed::request_intact`). Larger
/// or chunked bodies are left to stream: such a request is tried once.
/// `Err`: the client went away or stalled past `timeouts.idle`.
pub(super) async fn buffer_body(
    ctx: &mut RequestCtx<'_, '_>,
    mut cbuf: Buf,
    limit: u64,
) -> Result<Buf, Buf> {
    let (shard, cfg, head) = (ctx.shard, ctx.cfg, &ctx.head);
    let Framing::Length(n) = head.framing else {
        return Ok(cbuf);
    };
    let want = head.head_len + n as usize;
    if n > limit || cbuf.len() >= want {
        return Ok(cbuf);
    }
    if cbuf.capacity() < want {
        // Kept for retries only within the buffer budget: refused, the body
        // streams as it would past maxBody (and the request is not retried).
        let more = want.max(crate::shard::buf::LARGE_BUF_SIZE) - cbuf.capacity();
        if ctx.charge.as_ref().is_some_and(|c| !c.grow_extra(more)) {
            return Ok(cbuf);
        }
        let mut big = if want <= crate::shard::buf::LARGE_BUF_SIZE {
            shard.bufs.get_large()
        } else {
            Vec::with_capacity(want)
        };
        big.extend_from_slice(&cbuf);
        shard.bufs.put(std::mem::replace(&mut cbuf, big));
    }
    let client = &mut *ctx.client;
    if head.expect_continue && head.version == Version::Http11 {
        // The client holds its body back until told to send it; the
        // upstream's own 100 is dropped later as a duplicate.
        let cont = super::answer::CONTINUE.to_vec();
        if write_bounded(client, cont, cfg.timeouts.idle)
            .await
            .is_err()
        {
            return Err(cbuf);
        }
    }
    while cbuf.len() < want {
        let (res, back) = match runtime::timeout(cfg.timeouts.idle, client.read(cbuf)).await {
            Ok(r) => r,
            Err(_) => return Err(Vec::new()),
        };
        cbuf = back;
        match res {
            Ok(0) | Err(_) => return Err(cbuf),
            Ok(_) => {}
        }
    }
    Ok(cbuf)
}

/// The connection one try runs on.
pub(super) struct TryConn {
    pub(super) up: Conn,
    /// Its slot under the service's `maxConnections`.
    pub(super) permit: Option<Permit>,
    pub(super) addr: SocketAddr,
    /// The upstream is a peer proxy (mutual TLS), whose own error answers
    /// say whether its app saw the request, and the request could move to
    /// another endpoint if it did not. Otherwise such an answer is relayed.
    pub(super) peer: bool,
}

/// One attempt of a request over `conn`, until `deadline` for the response
/// head: send the request, read the response head, relay the response.
pub(super) async fn over_connection(
    ctx: &mut RequestCtx<'_, '_>,
    cbuf: Buf,
    conn: TryConn,
    deadline: Instant,
    retry: Option<RetryStatus<'_>>,
) -> Result<(Next, Buf), Failed> {
    let shard = ctx.shard;
    let TryConn {
        mut up,
        permit: conn_permit,
        addr,
        peer,
    } = conn;
    let mut sent = send_request(ctx, cbuf, &mut up).await?;
    let (mut resp, mut ubuf) = response_head(ctx, &mut up, &mut sent, deadline).await?;
    if let Some(rec) = ctx.ex.trace.rec.as_mut() {
        rec.first_byte(Instant::now());
    }
    let tunnel = resp.switching && ctx.head.upgrade;
    if up.is_tls() && sent.patient != tunnel {
        // Answered: the upload is over (or a tunnel starts, where either
        // side may stop reading for as long as it likes).
        runtime::peer_patience(up.raw_fd(), tunnel);
    }
    if ctx.dir == Direction::Inbound {
        // `coremesh-error` is this proxy's own word to its callers (they
        // act on it: see `app_unreachable`); the app cannot speak it.
        resp.drop_proxy_error(&ubuf);
    }
    if peer && sent.body_done && app_unreachable(&resp, &ubuf) {
        // The peer proxy could not connect to its app: the app never saw
        // the request, which can go to another endpoint.
        shard.bufs.put(ubuf);
        let context = "the peer proxy could not reach its app";
        return Err(sent.fail(ErrorKind::PeerAppUnreachable, context, true));
    }
    ctx.ex.status = resp.status;
    if sent.body_done
        && retry.is_some_and(|r| r.attempts.retries_status(resp.status) && (r.budget)())
    {
        // Another try answers instead; this response is dropped with its
        // connection (its body is never read).
        shard.bufs.put(ubuf);
        return Err(sent.fail(ErrorKind::RetryableStatus, "response status", true));
    }
    if sent.body_cut {
        // Where the rest of the body (and any next request) starts is lost.
        sent.cbuf.clear();
        if resp.switching {
            shard.bufs.put(ubuf);
            return Err(sent.fail(ErrorKind::UpstreamReset, "relaying request body", false));
        }
    } else {
        consume(&mut sent.cbuf, sent.consumed);
    }

    // 101: both sides switch protocols; the connection becomes a tunnel.
    if tunnel {
        resp.plan_forward(&ubuf, false, false, &mut ctx.scratch.plan);
        let out = ctx.scratch.plan.to_vec(&ubuf);
        ctx.ex.bytes_out += out.len() as u64;
        if write_bounded(ctx.client, out, ctx.ex.idle).await.is_err() {
            shard.bufs.put(ubuf);
            return Ok((Next::Close, sent.cbuf));
        }
        consume(&mut ubuf, resp.head_len);
        let tunnel = super::ctx::Tunnel {
            up,
            client_pending: sent.cbuf,
            up_pending: ubuf,
        };
        return Ok((Next::Tunnel(Box::new(tunnel)), Vec::new()));
    }

    let (close, reusable) = relay_response(ctx, &mut up, &resp, ubuf, &mut sent).await?;
    // The request's second clock reading (see `Exchange`).
    let end = *ctx.ex.end.insert(Instant::now());
    let max_idle = ctx.cfg.upstream.max_idle_per_endpoint;
    if reusable && max_idle > 0 {
        // Idle, a TLS connection holds no buffers (see tls/session.rs).
        up.release_idle_state();
        shard.pool.put(addr, up, conn_permit, end, max_idle);
    }
    Ok((if close { Next::Close } else { Next::KeepAlive }, sent.cbuf))
}

/// Whether a peer proxy's response is its own answer that it could not
/// connect to its app (`502 upstream connection refused`, `504 upstream
/// connect timeout`). The peer drops the header from its app's responses,
/// so it is the peer's own; still, what this allows is limited to what a
/// retry of an idempotent request allows.
fn app_unreachable(resp: &ResponseHead, ubuf: &[u8]) -> bool {
    matches!(resp.status, 502 | 504)
        && resp.proxy_error(ubuf).is_some_and(|e| {
            e == ErrorKind::ConnectFailed.text().as_bytes()
                || e == ErrorKind::ConnectTimeout.text().as_bytes()
        })
}

/// What a try has sent of the request.
struct Sent {
    /// The request, kept until the try succeeds (a retry sends it again).
    cbuf: Buf,
    /// Where the next pipelined request starts in `cbuf`.
    consumed: usize,
    /// The whole body went out with the head (the request is intact in
    /// `cbuf`).
    body_done: bool,
    /// The upstream reset the connection while the body was streaming: it
    /// may have answered early (a 413 or 401 before the whole upload) and
    /// closed. That answer, when it is there, goes to the client (and both
    /// connections close after it); without one, it is a 502.
    body_cut: bool,
    /// The upstream is a peer proxy whose dead-peer user timeout was lifted
    /// while the body streams (see `runtime::peer_patience`); restored
    /// once its answer starts.
    patient: bool,
}

impl Sent {
    /// The try failed before any of the response reached the client.
    fn fail(&mut self, kind: ErrorKind, context: &'static str, intact: bool) -> Failed {
        let err = ProxyError::new(kind, context);
        Failed::upstream(
            err,
            intact && self.body_done,
            std::mem::take(&mut self.cbuf),
        )
    }
}

/// The send phase: the head and the body bytes that came with it in one
/// vectored write, then the rest of the body streamed with one buffer in
/// flight.
async fn send_request(
    ctx: &mut RequestCtx<'_, '_>,
    cbuf: Buf,
    up: &mut Conn,
) -> Result<Sent, Failed> {
    let RequestCtx {
        shard,
        cfg,
        head,
        client,
        scratch,
        ex,
        charge,
        ..
    } = ctx;
    let idle = cfg.timeouts.idle;
    let mut dec = ChunkedDecoder::new();
    // The exchange checked the chunked body's first bytes before any try.
    let Ok((first_body, body_done)) = body_prefix(head.framing, &cbuf[head.head_len..], &mut dec)
    else {
        let err = ProxyError::new(ErrorKind::ClientGone, "invalid chunked body");
        return Err(Failed::upstream(err, false, cbuf));
    };
    ex.bytes_in = (head.head_len + first_body) as u64;
    head.plan_forward(&cbuf, &scratch.extra, &mut scratch.plan);
    // A peer proxy may keep its window closed while its app reads a large
    // upload slowly; that is no dead peer (see `runtime::peer_patience`).
    let patient = up.is_tls() && (!body_done || first_body > PATIENT_ABOVE);
    if patient {
        runtime::peer_patience(up.raw_fd(), true);
    }
    let v = scratch.vectored(cbuf, head.head_len..head.head_len + first_body);
    let (res, v) = match runtime::timeout(idle, up.write_vectored(v)).await {
        Ok(x) => x,
        Err(_) => {
            // The write future was dropped with the buffers; start over.
            let err = ProxyError::new(ErrorKind::Idle, "writing request head");
            return Err(Failed::upstream(err, false, Vec::new()));
        }
    };
    let mut sent = Sent {
        cbuf: scratch.give_back(v),
        consumed: head.head_len + first_body,
        body_done,
        body_cut: false,
        patient,
    };
    if let Err(e) = res {
        let err = ProxyError::io(ErrorKind::UpstreamReset, "writing request head", e);
        return Err(Failed {
            replayable: body_done,
            ..Failed::upstream(err, body_done, sent.cbuf)
        });
    }
    if body_done {
        return Ok(sent);
    }
    if head.expect_continue && head.version == Version::Http11 {
        // The proxy answers 100 itself once the upstream is connected, so
        // the client never waits on an upstream that ignores Expect.
        let cont = super::answer::CONTINUE.to_vec();
        if write_bounded(client, cont, idle).await.is_err() {
            return Err(Failed::gone(sent.cbuf));
        }
    }
    let relayed = Box::pin(relay_request_body(
        client,
        up,
        head.framing,
        first_body,
        dec,
        sent.cbuf,
        idle,
        (&shard.bufs, charge.as_ref()),
    ))
    .await;
    match relayed {
        Ok((b, moved, leftover_from)) => {
            sent.cbuf = b;
            ex.bytes_in += moved;
            sent.consumed = leftover_from;
        }
        Err((ErrorKind::UpstreamReset, b)) => {
            sent.body_cut = true;
            sent.cbuf = b;
        }
        Err((kind, b)) => {
            let err = ProxyError::new(kind, "relaying request body");
            return Err(Failed::upstream(err, false, b));
        }
    }
    Ok(sent)
}

/// The response head phase: reads until a final response head, relaying
/// interim responses (a duplicate 100 dropped, none to an HTTP/1.0 client).
async fn response_head(
    ctx: &mut RequestCtx<'_, '_>,
    up: &mut Conn,
    sent: &mut Sent,
    deadline: Instant,
) -> Result<(ResponseHead, Buf), Failed> {
    let (shard, head) = (ctx.shard, &ctx.head);
    let limits = limits(ctx.cfg);
    let mut ubuf = shard.bufs.get();
    let mut sent_continue = head.expect_continue && head.version == Version::Http11;
    loop {
        match http1::parse_response(&ubuf, head.method, &limits) {
            Ok(Some(r)) if r.interim => {
                if r.status == 100 && sent_continue {
                    sent_continue = false; // drop the duplicate 100
                } else if head.version == Version::Http10 {
                    // RFC 9110 15.2: no 1xx to an HTTP/1.0 client.
                } else {
                    let copy = ubuf[..r.head_len].to_vec();
                    if write_bounded(ctx.client, copy, ctx.ex.idle).await.is_err() {
                        shard.bufs.put(ubuf);
                        return Err(Failed::gone(std::mem::take(&mut sent.cbuf)));
                    }
                }
                consume(&mut ubuf, r.head_len);
                continue;
            }
            Ok(Some(r)) if r.switching && !head.upgrade => {
                // A 101 nobody asked for: the client would believe the
                // protocol switched while the proxy keeps parsing HTTP.
                shard.bufs.put(ubuf);
                return Err(sent.fail(ErrorKind::BadResponse, "unsolicited 101", false));
            }
            Ok(Some(r)) => return Ok((r, ubuf)),
            Ok(None) => {}
            Err(_) => {
                shard.bufs.put(ubuf);
                return Err(sent.fail(ErrorKind::BadResponse, "parsing response head", true));
            }
        }
        if ubuf.len() == ubuf.capacity() {
            let grow = limits.max_head_bytes.saturating_sub(ubuf.capacity());
            if ctx.charge.as_ref().is_some_and(|c| !c.grow(grow)) {
                shard.bufs.put(ubuf);
                let growing = "growing the response head buffer";
                return Err(sent.fail(ErrorKind::BufferBudget, growing, false));
            }
            let mut big = Vec::with_capacity(limits.max_head_bytes.max(ubuf.len() + 1));
            big.extend_from_slice(&ubuf);
            shard.bufs.put(std::mem::replace(&mut ubuf, big));
        }
        let had = ubuf.len();
        let (res, back) = match runtime::timeout_at(deadline, up.read(ubuf)).await {
            Ok(x) => x,
            Err(_) => {
                let waiting = "waiting for the response head";
                return Err(sent.fail(ErrorKind::UpstreamTimeout, waiting, true));
            }
        };
        ubuf = back;
        match res {
            Ok(0) | Err(_) if sent.body_cut => {
                shard.bufs.put(ubuf);
                let relaying = "relaying request body";
                return Err(sent.fail(ErrorKind::UpstreamReset, relaying, false));
            }
            Ok(0) | Err(_) => {
                shard.bufs.put(ubuf);
                let replayable = had == 0 && head.method.is_idempotent() && sent.body_done;
                let waiting = "waiting for the response head";
                return Err(Failed {
                    replayable,
                    ..sent.fail(ErrorKind::UpstreamReset, waiting, true)
                });
            }
            Ok(_) => {}
        }
    }
}

/// The relay phase: the final response's head (and the body bytes that
/// came with it) in one write, then its body by its framing. Returns
/// whether the client connection closes after it, and whether the
/// upstream connection can go back to the pool.
async fn relay_response(
    ctx: &mut RequestCtx<'_, '_>,
    up: &mut Conn,
    resp: &ResponseHead,
    mut ubuf: Buf,
    sent: &mut Sent,
) -> Result<(bool, bool), Failed> {
    let RequestCtx {
        shard,
        cfg,
        head,
        client,
        scratch,
        ex,
        charge,
        ..
    } = ctx;
    let mut rdec = ChunkedDecoder::new();
    // An HTTP/1.0 client cannot parse chunked framing: it gets the data,
    // delimited by closing the connection.
    let dechunk = resp.framing == Framing::Chunked && head.version == Version::Http10;
    let prefix = match resp.framing {
        Framing::UntilClose => Ok((ubuf.len() - resp.head_len, false)),
        Framing::Chunked if dechunk => dechunk_in_place(&mut rdec, &mut ubuf, resp.head_len)
            .map(|(data, _used)| (data, rdec.is_done())),
        f => body_prefix(f, &ubuf[resp.head_len..], &mut rdec),
    };
    let Ok((first, resp_done)) = prefix else {
        shard.bufs.put(ubuf);
        return Err(sent.fail(ErrorKind::BadResponse, "parsing response body", true));
    };
    let extra_bytes = !dechunk && ubuf.len() > resp.head_len + first;
    let close = sent.body_cut
        || !head.keep_alive
        || resp.framing == Framing::UntilClose
        || dechunk
        || shard.draining.get();
    let keep_10 = head.version == Version::Http10 && !close;
    if dechunk {
        resp.plan_forward_unchunked(&ubuf, &mut scratch.plan);
    } else {
        resp.plan_forward(&ubuf, close, keep_10, &mut scratch.plan);
    }
    let v = scratch.vectored(ubuf, resp.head_len..resp.head_len + first);
    ex.bytes_out += v.remaining() as u64;
    let idle = cfg.timeouts.idle;
    let started = |kind, sent: &mut Sent| Failed::started(kind, std::mem::take(&mut sent.cbuf));
    let (res, v) = match runtime::timeout(idle, client.write_vectored(v)).await {
        Ok(x) => x,
        Err(_) => return Err(started(ErrorKind::Idle, sent)),
    };
    let ubuf = scratch.give_back(v);
    if res.is_err() {
        shard.bufs.put(ubuf);
        return Err(started(ErrorKind::ClientGone, sent));
    }
    let mut reusable = resp.keep_alive && !extra_bytes && !sent.body_cut;
    if resp_done {
        shard.bufs.put(ubuf);
        return Ok((close, reusable));
    }
    let relayed = Box::pin(relay_response_body(
        client,
        up,
        resp.framing,
        dechunk,
        first,
        rdec,
        ubuf,
        idle,
        (&shard.bufs, charge.as_ref()),
    ))
    .await;
    match relayed {
        Ok((b, moved, extra)) => {
            ex.bytes_out += moved;
            shard.bufs.put(b);
            reusable &= !extra;
            Ok((close, reusable))
        }
        Err((kind, b)) => {
            shard.bufs.put(b);
            Err(started(kind, sent))
        }
    }
}
