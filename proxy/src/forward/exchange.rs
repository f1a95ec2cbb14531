//! The attempt and relay phases: the tries a request gets ([`Attempts`],
//! from the policy crate, decides after each failure), each on a connection
//! from [`super::upstream`], and one try over one connection
//! ([`over_connection`]): head and first body bytes in one vectored write,
//! the rest of the body streamed, interim responses relayed, the final
//! response relayed from the buffer it was read into.

use super::relay::{body_prefix, dechunk_in_place, relay_request_body, relay_response_body};
use super::upstream::{upstream_conn, Endpoints, InFlight, Tried};
use super::*;
use crate::attempt::{Attempts, TryFailure, Verdict};
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

/// Forwards a request and its response over a pooled or new upstream
/// connection, trying again as `attempts` decides. Only idempotent requests
/// whose whole body went out in the first write are ever sent twice.
pub(super) async fn exchange(
    ctx: &mut RequestCtx<'_, '_>,
    mut cbuf: Buf,
    endpoints: Endpoints<'_>,
    mut attempts: Attempts,
    key: Option<u64>,
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
    // A retry spends the service's retry budget; an exhausted budget ends
    // the tries (an outage is not amplified).
    let budget_allows = || {
        service.is_none_or(|name| {
            shard
                .traffic
                .with(name, |s| s.budget.try_withdraw(Instant::now()))
                .unwrap_or(true)
        })
    };
    let mut tried = Tried::default();
    if attempts.may_retry_at_all() {
        let limit = attempts.policy().max_body;
        cbuf = match Box::pin(buffer_body(ctx, cbuf, limit)).await {
            Ok(b) => b,
            Err(b) => return (Next::Close, b),
        };
    }
    // The first try uses the request's clock reading; each later one (after
    // a failure, a backoff) reads the clock again.
    let mut first = Some(ctx.ex.start);
    loop {
        let now = first.take().unwrap_or_else(Instant::now);
        let (fresh_only, try_deadline) = attempts.begin(now);
        let non_idempotent = !attempts.idempotent();
        let conn = upstream_conn(
            shard,
            ctx.cfg,
            &endpoints,
            fresh_only,
            non_idempotent,
            &mut tried,
            key,
            now,
        )
        .await;
        let (failure, reused) = match conn {
            Ok((up, addr, reused, conn_permit)) => {
                ctx.ex.upstream = Some(addr);
                let retry_status = attempts.retries_some_status().then_some(RetryStatus {
                    attempts: &attempts,
                    budget: &budget_allows,
                });
                let flight = InFlight::start(shard, service, addr, now);
                let res =
                    over_connection(ctx, cbuf, up, conn_permit, addr, try_deadline, retry_status)
                        .await;
                let ok = match &res {
                    Ok(_) => ctx.ex.status < 500,
                    Err(f) => f.err.kind.blame() != crate::error::Blame::Upstream,
                };
                flight.end(ok, ctx.ex.end);
                if endpoints.tracked() {
                    shard.outcomes.record(addr, ok);
                }
                match res {
                    Ok(done) => return done,
                    Err(mut f) => {
                        cbuf = std::mem::take(&mut f.cbuf);
                        ((f.as_try(), f.err, Some(addr)), reused)
                    }
                }
            }
            Err(e) => ((TryFailure::connect(e.kind), e, None), false),
        };
        let (failure, err, addr) = failure;
        let verdict = attempts.after_failure(
            &failure,
            reused,
            Instant::now(),
            budget_allows,
            shard.random(),
        );
        match verdict {
            Verdict::Replay => continue,
            Verdict::Retry {
                try_number,
                backoff,
            } => {
                tracing::debug!(?addr, try = try_number, "retrying: {err}");
                if !backoff.is_zero() {
                    runtime::sleep(backoff).await;
                }
            }
            Verdict::Close => {
                debug_fault(ctx, addr, &err, true);
                ctx.ex.status = 0;
                return (Next::Close, cbuf);
            }
            Verdict::Answer { kind, close } => {
                ctx.ex.status = kind.status();
                debug_fault(ctx, addr, &err, false);
                return if close {
                    ctx.answer_and_close(Answer::Error(kind), cbuf).await
                } else {
                    ctx.answer(Answer::Error(kind), cbuf).await
                };
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

/// Reads the rest of a request body of at most `limit` bytes into `cbuf`
/// (a retry sends the buffer again; see `Failed::request_intact`). Larger
/// or chunked bodies are left to stream: such a request is tried once.
/// `Err`: the client went away or stalled past `timeouts.idle`.
async fn buffer_body(ctx: &mut RequestCtx<'_, '_>, mut cbuf: Buf, limit: u64) -> Result<Buf, Buf> {
    let (shard, cfg, head) = (ctx.shard, ctx.cfg, &ctx.head);
    let Framing::Length(n) = head.framing else {
        return Ok(cbuf);
    };
    let want = head.head_len + n as usize;
    if n > limit || cbuf.len() >= want {
        return Ok(cbuf);
    }
    if cbuf.capacity() < want {
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
        let cont = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
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

/// One attempt of a request over `up`, until `deadline` for the response
/// head.
pub(super) async fn over_connection(
    ctx: &mut RequestCtx<'_, '_>,
    cbuf: Buf,
    mut up: Conn,
    conn_permit: Option<Permit>,
    addr: SocketAddr,
    deadline: Instant,
    retry: Option<RetryStatus<'_>>,
) -> Result<(Next, Buf), Failed> {
    let (shard, cfg) = (ctx.shard, ctx.cfg);
    let RequestCtx {
        head,
        client,
        scratch,
        ex,
        ..
    } = ctx;
    let head = &*head;
    let t = &cfg.timeouts;
    let limits = limits(cfg);
    let mut dec = ChunkedDecoder::new();
    let (first_body, body_done) = match body_prefix(head.framing, &cbuf[head.head_len..], &mut dec)
    {
        Ok(x) => x,
        Err(e) => {
            // The chunked body's first bytes are malformed: nothing was sent.
            let answer = Answer::Refused {
                status: 400,
                reason: "invalid chunked body",
            };
            let _ = e;
            ex.status = answer.status();
            let _ = write_answer(client, &answer, true, ex.idle).await;
            return Ok((Next::Close, cbuf));
        }
    };
    ex.bytes_in = (head.head_len + first_body) as u64;

    // Forward the head and the body bytes that came with it, in one write.
    head.plan_forward(&cbuf, &scratch.extra, &mut scratch.plan);
    let v = scratch.vectored(cbuf, head.head_len..head.head_len + first_body);
    let (res, v) = match runtime::timeout(t.idle, up.write_vectored(v)).await {
        Ok(x) => x,
        Err(_) => {
            // The write future was dropped with the buffers; start over.
            let err = ProxyError::new(ErrorKind::Idle, "writing request head");
            return Err(Failed::upstream(err, false, Vec::new()));
        }
    };
    let mut cbuf = scratch.give_back(v);
    if let Err(e) = res {
        let err = ProxyError::io(ErrorKind::UpstreamReset, "writing request head", e);
        return Err(Failed {
            replayable: body_done,
            ..Failed::upstream(err, body_done, cbuf)
        });
    }

    // The rest of the body, streamed with one buffer in flight.
    let mut consumed = head.head_len + first_body;
    // The upstream reset the connection while the body was streaming: it
    // may have answered early (a 413 or 401 before the whole upload) and
    // closed. That answer, when it is there, goes to the client (and both
    // connections close after it); without one, it is a 502 as before.
    let mut body_cut = false;
    if !body_done {
        if head.expect_continue && head.version == Version::Http11 {
            // The proxy answers 100 itself once the upstream is connected, so
            // the client never waits on an upstream that ignores Expect.
            let cont = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            if write_bounded(client, cont, t.idle).await.is_err() {
                return Err(Failed::gone(cbuf));
            }
        }
        match Box::pin(relay_request_body(
            client,
            &mut up,
            head.framing,
            first_body,
            dec,
            cbuf,
            t.idle,
            &shard.bufs,
        ))
        .await
        {
            Ok((b, moved, leftover_from)) => {
                cbuf = b;
                ex.bytes_in += moved;
                consumed = leftover_from;
            }
            Err((ErrorKind::UpstreamReset, b)) => {
                body_cut = true;
                cbuf = b;
            }
            Err((kind, b)) => {
                let err = ProxyError::new(kind, "relaying request body");
                return Err(Failed::upstream(err, false, b));
            }
        }
    }
    let cut = |cbuf: Buf| {
        let err = ProxyError::new(ErrorKind::UpstreamReset, "relaying request body");
        Failed::upstream(err, false, cbuf)
    };
    // `cbuf` keeps the request until the exchange succeeds (a retry sends it
    // again); `consumed` is where the next pipelined request starts.

    // Response head (interim responses are relayed as they come).
    let mut ubuf = shard.bufs.get();
    let mut sent_continue = head.expect_continue && head.version == Version::Http11;
    let resp: ResponseHead = loop {
        match http1::parse_response(&ubuf, head.method, &limits) {
            Ok(Some(r)) if r.interim => {
                if r.status == 100 && sent_continue {
                    sent_continue = false; // drop the duplicate 100
                } else if head.version == Version::Http10 {
                    // RFC 9110 15.2: no 1xx to an HTTP/1.0 client.
                } else {
                    let n = r.head_len;
                    let copy = ubuf[..n].to_vec();
                    let _ = n;
                    if write_bounded(client, copy, t.idle).await.is_err() {
                        shard.bufs.put(ubuf);
                        return Err(Failed::gone(cbuf));
                    }
                }
                consume(&mut ubuf, r.head_len);
                continue;
            }
            Ok(Some(r)) if r.switching && !head.upgrade => {
                // A 101 nobody asked for: the client would believe the
                // protocol switched while the proxy keeps parsing HTTP.
                shard.bufs.put(ubuf);
                let err = ProxyError::new(ErrorKind::BadResponse, "unsolicited 101");
                return Err(Failed::upstream(err, false, cbuf));
            }
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(_) => {
                shard.bufs.put(ubuf);
                let err = ProxyError::new(ErrorKind::BadResponse, "parsing response head");
                return Err(Failed::upstream(err, body_done, cbuf));
            }
        }
        if ubuf.len() == ubuf.capacity() {
            let mut big = Vec::with_capacity(limits.max_head_bytes.max(ubuf.len() + 1));
            big.extend_from_slice(&ubuf);
            shard.bufs.put(std::mem::replace(&mut ubuf, big));
        }
        let had = ubuf.len();
        let (res, back) = match runtime::timeout_at(deadline, up.read(ubuf)).await {
            Ok(x) => x,
            Err(_) => {
                let err =
                    ProxyError::new(ErrorKind::UpstreamTimeout, "waiting for the response head");
                return Err(Failed::upstream(err, body_done, cbuf));
            }
        };
        ubuf = back;
        match res {
            Ok(0) | Err(_) if body_cut => {
                shard.bufs.put(ubuf);
                return Err(cut(cbuf));
            }
            Ok(0) | Err(_) => {
                shard.bufs.put(ubuf);
                let err =
                    ProxyError::new(ErrorKind::UpstreamReset, "waiting for the response head");
                return Err(Failed {
                    replayable: had == 0 && head.method.is_idempotent() && body_done,
                    ..Failed::upstream(err, body_done, cbuf)
                });
            }
            Ok(_) => {}
        }
    };
    ex.status = resp.status;
    if body_done && retry.is_some_and(|r| r.attempts.retries_status(resp.status) && (r.budget)()) {
        // Another try answers instead; this response is dropped with its
        // connection (its body is never read).
        shard.bufs.put(ubuf);
        let err = ProxyError::new(ErrorKind::RetryableStatus, "response status");
        return Err(Failed::upstream(err, body_done, cbuf));
    }
    if body_cut {
        // Where the rest of the body (and any next request) starts is lost.
        cbuf.clear();
        if resp.switching {
            shard.bufs.put(ubuf);
            return Err(cut(cbuf));
        }
    } else {
        consume(&mut cbuf, consumed);
    }

    // 101: both sides switch protocols; the connection becomes a tunnel.
    if resp.switching && head.upgrade {
        resp.plan_forward(&ubuf, false, false, &mut scratch.plan);
        let out = scratch.plan.to_vec(&ubuf);
        let n = out.len();
        ex.bytes_out += n as u64;
        if write_bounded(client, out, t.idle).await.is_err() {
            shard.bufs.put(ubuf);
            return Ok((Next::Close, cbuf));
        }
        consume(&mut ubuf, resp.head_len);
        let tunnel = super::request::Tunnel {
            up,
            client_pending: cbuf,
            up_pending: ubuf,
        };
        return Ok((Next::Tunnel(Box::new(tunnel)), Vec::new()));
    }

    // Final response: head (and the body bytes that came with it) in one write.
    let mut rdec = ChunkedDecoder::new();
    // An HTTP/1.0 client cannot parse chunked framing: it gets the data,
    // delimited by closing the connection.
    let dechunk = resp.framing == Framing::Chunked && head.version == Version::Http10;
    let (first, resp_done) = match resp.framing {
        Framing::UntilClose => (ubuf.len() - resp.head_len, false),
        Framing::Chunked if dechunk => {
            match dechunk_in_place(&mut rdec, &mut ubuf, resp.head_len) {
                Ok((data, _used)) => (data, rdec.is_done()),
                Err(_) => {
                    shard.bufs.put(ubuf);
                    let err = ProxyError::new(ErrorKind::BadResponse, "parsing response body");
                    return Err(Failed::upstream(err, body_done, cbuf));
                }
            }
        }
        f => match body_prefix(f, &ubuf[resp.head_len..], &mut rdec) {
            Ok(x) => x,
            Err(_) => {
                shard.bufs.put(ubuf);
                let err = ProxyError::new(ErrorKind::BadResponse, "parsing response body");
                return Err(Failed::upstream(err, body_done, cbuf));
            }
        },
    };
    let extra_bytes = !dechunk && ubuf.len() > resp.head_len + first;
    let close = body_cut
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
    let (res, v) = match runtime::timeout(t.idle, client.write_vectored(v)).await {
        Ok(x) => x,
        Err(_) => return Err(Failed::started(ErrorKind::Idle, cbuf)),
    };
    let ubuf = scratch.give_back(v);
    if res.is_err() {
        shard.bufs.put(ubuf);
        return Err(Failed::started(ErrorKind::ClientGone, cbuf));
    }
    let mut reusable = resp.keep_alive && !extra_bytes && !body_cut;
    if !resp_done {
        match Box::pin(relay_response_body(
            client,
            &mut up,
            resp.framing,
            dechunk,
            first,
            rdec,
            ubuf,
            t.idle,
            &shard.bufs,
        ))
        .await
        {
            Ok((b, moved, extra)) => {
                ex.bytes_out += moved;
                shard.bufs.put(b);
                reusable &= !extra;
            }
            Err((kind, b)) => {
                shard.bufs.put(b);
                return Err(Failed::started(kind, cbuf));
            }
        }
    } else {
        shard.bufs.put(ubuf);
    }
    // The request's second clock reading (see `Exchange`).
    let end = *ex.end.insert(Instant::now());
    if reusable && cfg.upstream.max_idle_per_endpoint > 0 {
        // Idle, a TLS connection holds no buffers (see tls/session.rs).
        up.release_idle_state();
        shard.pool.put(
            addr,
            up,
            conn_permit,
            end,
            cfg.upstream.max_idle_per_endpoint,
        );
    }
    Ok((if close { Next::Close } else { Next::KeepAlive }, cbuf))
}
