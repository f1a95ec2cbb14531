//! Exchanging one request with an upstream: the tries a Route rule's retry
//! policy allows ([`TryPolicy`]), each on a connection from
//! [`super::upstream`], and one try over one connection
//! ([`over_connection`]): head and first body bytes in one vectored write,
//! the rest of the body streamed, interim responses relayed, the final
//! response relayed from the buffer it was read into.

use super::relay::{
    body_prefix, dechunk_in_place, relay_request_body, relay_response_body, tunnel,
};
use super::upstream::{upstream_conn, Endpoints, InFlight, Tried};
use super::*;
use crate::routing::CompiledRule;
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

/// How many tries a request gets and when (a Route rule's `timeout` and
/// `retries`; without one, a single try bounded by `timeouts.request`).
pub(super) struct TryPolicy {
    /// From the request head sent until a response head, all tries together.
    total: Duration,
    per_try: Option<Duration>,
    /// Tries after the first.
    retries: u32,
    on_connect: bool,
    on_reset: bool,
    on_5xx: bool,
    on_gateway: bool,
    /// Backoff before retry n: uniformly random up to
    /// `min(backoff_max, backoff_base × 2^(n-1))` (full jitter).
    backoff_base: Duration,
    backoff_max: Duration,
    /// Retry requests whose method is not idempotent too.
    pub(super) non_idempotent: bool,
    /// A request body up to this size is read completely before the first
    /// try, so that a retry can send it again; a larger one is not retried.
    pub(super) max_body: u64,
}

/// Default of [`TryPolicy::max_body`].
pub(super) const RETRY_BODY_LIMIT: u64 = 64 * 1024;

impl TryPolicy {
    pub(super) fn single(cfg: &Config) -> Self {
        TryPolicy {
            total: cfg.timeouts.request,
            per_try: None,
            retries: 0,
            on_connect: false,
            on_reset: false,
            on_5xx: false,
            on_gateway: false,
            backoff_base: Duration::ZERO,
            backoff_max: Duration::ZERO,
            non_idempotent: false,
            max_body: RETRY_BODY_LIMIT,
        }
    }

    pub(super) fn for_rule(cfg: &Config, rule: &CompiledRule) -> Self {
        let mut p = TryPolicy::single(cfg);
        if let Some(t) = rule.timeout {
            p.total = t;
        }
        if let Some(r) = &rule.retries {
            p.retries = r.attempts;
            p.per_try = r.per_try_timeout;
            p.backoff_base = r.backoff_base;
            p.backoff_max = r.backoff_max;
            p.non_idempotent = !r.idempotent_only;
            p.max_body = r.max_body;
            for on in &r.on {
                match on {
                    RetryOn::ConnectFailure => p.on_connect = true,
                    RetryOn::Reset => p.on_reset = true,
                    RetryOn::Status5xx => p.on_5xx = true,
                    RetryOn::GatewayError => p.on_gateway = true,
                }
            }
        }
        p
    }

    /// The wait before retry `n` (1-based), full jitter.
    fn backoff(&self, n: u32, draw: u64) -> Duration {
        crate::resilience::backoff::delay(
            n.saturating_sub(1),
            self.backoff_base,
            self.backoff_max,
            &mut || draw,
        )
    }

    /// Whether a final response with `status` is retried (when tries remain).
    fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway && matches!(status, 502..=504))
    }

    /// Whether a failed try is retried (when tries remain).
    fn retries_error(&self, kind: ErrorKind) -> bool {
        match kind {
            // The error says whether another endpoint may help; the rule
            // says whether to try one.
            k if k.retryable() => self.on_connect,
            ErrorKind::UpstreamReset => self.on_reset,
            // A per-try timeout counts as a gateway error (as in Envoy).
            ErrorKind::UpstreamTimeout => self.on_5xx || self.on_gateway,
            ErrorKind::RetryableStatus => true,
            _ => false,
        }
    }
}

/// Forwards a request and its response over a pooled or new upstream
/// connection, trying again as `policy` allows. Only idempotent requests
/// whose whole body went out in the first write are ever sent twice.
#[allow(clippy::too_many_arguments)] // one call site; the phases share these
pub(super) async fn exchange(
    shard: &Shard,
    cfg: &Config,
    client_slot: &mut Option<Conn>,
    head: &RequestHead,
    mut cbuf: Buf,
    endpoints: Endpoints<'_>,
    policy: &TryPolicy,
    key: Option<u64>,
    scratch: &mut Scratch,
    ex: &mut Exchange,
) -> (Next, Buf) {
    let mut fresh_only = false;
    let deadline = super::after(ex.start, policy.total);
    let idempotent = head.method.is_idempotent() || policy.non_idempotent;
    let service = endpoints.service();
    // maxRequests: this request holds a slot until it is done.
    let _permit = match service {
        Some(name) => match shard.traffic.with(name, |s| {
            s.breaker.permit(crate::resilience::Limit::Requests)
        }) {
            Some(None) => {
                let kind = ErrorKind::Overloaded;
                ex.status = kind.status();
                let client = client_slot.as_mut().expect("client connection present");
                let close = !head.keep_alive || head.framing != Framing::None;
                let res = write_error(client, kind.status(), kind.text(), close, ex.idle).await;
                if close || res.is_err() {
                    return (Next::Close, cbuf);
                }
                consume(&mut cbuf, head.head_len);
                return (Next::KeepAlive, cbuf);
            }
            Some(permit) => permit,
            None => None,
        },
        None => None,
    };
    if let Some(name) = service {
        shard.traffic.with(name, |s| s.budget.deposit(ex.start));
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
    if policy.retries > 0 && idempotent {
        cbuf = match Box::pin(buffer_body(
            shard,
            cfg,
            client_slot,
            head,
            cbuf,
            policy.max_body,
        ))
        .await
        {
            Ok(b) => b,
            Err(b) => return (Next::Close, b),
        };
    }
    let mut tries = 0u32;
    // The first try uses the request's clock reading; each later one (after
    // a failure, a backoff) reads the clock again.
    let mut first = Some(ex.start);
    loop {
        let now = first.take().unwrap_or_else(Instant::now);
        let can_retry = tries < policy.retries && idempotent && now < deadline;
        let conn = upstream_conn(
            shard,
            cfg,
            &endpoints,
            fresh_only,
            !idempotent,
            &mut tried,
            key,
            now,
        )
        .await;
        let (up, addr, reused, conn_permit) = match conn {
            Ok(x) => x,
            Err(e) if can_retry && policy.retries_error(e.kind) && budget_allows() => {
                tries += 1;
                backoff(shard, policy, tries, deadline).await;
                continue;
            }
            Err(e) => {
                ex.status = e.kind.status();
                tracing::debug!(
                    service = %service.unwrap_or("-"),
                    status = ex.status,
                    "upstream fault answered locally: {e}"
                );
                let client = client_slot.as_mut().expect("client connection present");
                let close = !head.keep_alive || head.framing != Framing::None;
                let _ = write_error(client, e.kind.status(), e.kind.text(), close, ex.idle).await;
                if close {
                    return (Next::Close, cbuf);
                }
                consume(&mut cbuf, head.head_len);
                return (Next::KeepAlive, cbuf);
            }
        };
        ex.upstream = Some(addr);
        let try_deadline = match policy.per_try {
            Some(p) => deadline.min(super::after(now, p)),
            None => deadline,
        };
        let retry_status =
            (can_retry && (policy.on_5xx || policy.on_gateway)).then_some(RetryStatus {
                policy,
                budget: &budget_allows,
            });
        let flight = InFlight::start(shard, service, addr, now);
        let res = over_connection(
            shard,
            cfg,
            client_slot,
            head,
            cbuf,
            up,
            conn_permit,
            addr,
            scratch,
            ex,
            try_deadline,
            retry_status,
        )
        .await;
        let ok = match &res {
            Ok(_) => ex.status < 500,
            Err(f) => f.err.kind.blame() != crate::error::Blame::Upstream,
        };
        flight.end(ok, ex.end);
        if endpoints.tracked() {
            shard.outcomes.record(addr, ok);
        }
        match res {
            Ok((next, b)) => return (next, b),
            Err(f) => {
                cbuf = f.cbuf;
                if reused && f.replayable && !fresh_only {
                    // RFC 9112 9.3.1: a request on a connection the server
                    // closed while idle may be retried on a new one.
                    fresh_only = true;
                    continue;
                }
                fresh_only = false;
                // A retryable status was only dropped once its retry had
                // been granted by the budget (see `RetryStatus`).
                if can_retry
                    && f.request_intact
                    && !f.response_started
                    && policy.retries_error(f.err.kind)
                    && (f.err.kind == ErrorKind::RetryableStatus || budget_allows())
                {
                    tracing::debug!(%addr, try = tries + 1, "retrying: {}", f.err);
                    tries += 1;
                    backoff(shard, policy, tries, deadline).await;
                    continue;
                }
                ex.status = f.err.kind.status();
                tracing::debug!(
                    %addr,
                    service = %service.unwrap_or("-"),
                    status = ex.status,
                    response_started = f.response_started,
                    "upstream fault answered locally: {}",
                    f.err
                );
                if f.response_started {
                    ex.status = 0;
                    return (Next::Close, cbuf);
                }
                let client = match client_slot.as_mut() {
                    Some(c) => c,
                    None => return (Next::Close, cbuf),
                };
                let _ = write_error(
                    client,
                    f.err.kind.status(),
                    f.err.kind.text(),
                    true,
                    ex.idle,
                )
                .await;
                return (Next::Close, cbuf);
            }
        }
    }
}

/// What lets a try drop a response whose status the retry policy retries
/// (`on: [5xx]`, `[gateway-error]`): the drop happens only once the retry is
/// certain, that is the whole request is still at hand to send again and
/// the retry budget has granted (and counted) the retry. Otherwise the
/// response is relayed: the last answer stands, rather than a 502 of the
/// proxy's own in place of the app's answer.
pub(super) struct RetryStatus<'a> {
    policy: &'a TryPolicy,
    /// Withdraws a retry from the service's budget; `false`: over budget.
    budget: &'a dyn Fn() -> bool,
}

/// Waits before retry `n`, never past the request's deadline.
async fn backoff(shard: &Shard, policy: &TryPolicy, n: u32, deadline: Instant) {
    let wait = policy
        .backoff(n, shard.random())
        .min(deadline.saturating_duration_since(Instant::now()));
    if !wait.is_zero() {
        runtime::sleep(wait).await;
    }
}

/// Reads the rest of a request body of at most `limit` bytes into `cbuf`
/// (a retry sends the buffer again; see `Failed::request_intact`). Larger
/// or chunked bodies are left to stream: such a request is tried once.
/// `Err`: the client went away or stalled past `timeouts.idle`.
async fn buffer_body(
    shard: &Shard,
    cfg: &Config,
    client_slot: &mut Option<Conn>,
    head: &RequestHead,
    mut cbuf: Buf,
    limit: u64,
) -> Result<Buf, Buf> {
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
    let Some(client) = client_slot.as_mut() else {
        return Err(cbuf);
    };
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

/// One attempt of a request over `up`.
#[allow(clippy::too_many_arguments)] // one call site; the phases share these
pub(super) async fn over_connection(
    shard: &Shard,
    cfg: &Config,
    client_slot: &mut Option<Conn>,
    head: &RequestHead,
    cbuf: Buf,
    mut up: Conn,
    conn_permit: Option<Permit>,
    addr: SocketAddr,
    scratch: &mut Scratch,
    ex: &mut Exchange,
    deadline: Instant,
    retry: Option<RetryStatus<'_>>,
) -> Result<(Next, Buf), Failed> {
    let t = &cfg.timeouts;
    let limits = limits(cfg);
    let mut dec = ChunkedDecoder::new();
    let (first_body, body_done) = match body_prefix(head.framing, &cbuf[head.head_len..], &mut dec)
    {
        Ok(x) => x,
        Err(_) => {
            // The chunked body's first bytes are malformed: nothing was sent.
            let client = client_slot.as_mut().expect("client connection present");
            let _ = write_error(client, 400, "invalid chunked body", true, ex.idle).await;
            ex.status = 400;
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
            return Err(Failed {
                err: ProxyError::new(ErrorKind::Idle, "writing request head"),
                replayable: false,
                response_started: false,
                request_intact: false,
                cbuf: Vec::new(),
            });
        }
    };
    let mut cbuf = scratch.give_back(v);
    if let Err(e) = res {
        return Err(Failed {
            err: ProxyError::io(ErrorKind::UpstreamReset, "writing request head", e),
            replayable: body_done,
            response_started: false,
            request_intact: body_done,
            cbuf,
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
        let client = client_slot.as_mut().expect("client connection present");
        if head.expect_continue && head.version == Version::Http11 {
            // The proxy answers 100 itself once the upstream is connected, so
            // the client never waits on an upstream that ignores Expect.
            let cont = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            if write_bounded(client, cont, t.idle).await.is_err() {
                return Err(gone(cbuf));
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
                return Err(Failed {
                    err: ProxyError::new(kind, "relaying request body"),
                    replayable: false,
                    response_started: false,
                    request_intact: false,
                    cbuf: b,
                })
            }
        }
    }
    let cut = |cbuf: Buf| Failed {
        err: ProxyError::new(ErrorKind::UpstreamReset, "relaying request body"),
        replayable: false,
        response_started: false,
        request_intact: false,
        cbuf,
    };
    // `cbuf` keeps the request until the exchange succeeds (a retry sends it
    // again); `consumed` is where the next pipelined request starts.

    // Response head (interim responses are relayed as they come).
    let mut ubuf = shard.bufs.get();
    let mut sent_continue = head.expect_continue && head.version == Version::Http11;
    let resp: ResponseHead = loop {
        match http1::parse_response(&ubuf, head.method, &limits) {
            Ok(Some(r)) if r.interim => {
                let client = client_slot.as_mut().expect("client connection present");
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
                        return Err(gone(cbuf));
                    }
                }
                consume(&mut ubuf, r.head_len);
                continue;
            }
            Ok(Some(r)) if r.switching && !head.upgrade => {
                // A 101 nobody asked for: the client would believe the
                // protocol switched while the proxy keeps parsing HTTP.
                shard.bufs.put(ubuf);
                return Err(Failed {
                    err: ProxyError::new(ErrorKind::BadResponse, "unsolicited 101"),
                    replayable: false,
                    response_started: false,
                    request_intact: false,
                    cbuf,
                });
            }
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(_) => {
                shard.bufs.put(ubuf);
                return Err(Failed {
                    err: ProxyError::new(ErrorKind::BadResponse, "parsing response head"),
                    replayable: false,
                    response_started: false,
                    request_intact: body_done,
                    cbuf,
                });
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
                return Err(Failed {
                    err: ProxyError::new(
                        ErrorKind::UpstreamTimeout,
                        "waiting for the response head",
                    ),
                    replayable: false,
                    response_started: false,
                    request_intact: body_done,
                    cbuf,
                })
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
                return Err(Failed {
                    err: ProxyError::new(ErrorKind::UpstreamReset, "waiting for the response head"),
                    replayable: had == 0 && head.method.is_idempotent() && body_done,
                    response_started: false,
                    request_intact: body_done,
                    cbuf,
                });
            }
            Ok(_) => {}
        }
    };
    ex.status = resp.status;
    if body_done && retry.is_some_and(|r| r.policy.retries_status(resp.status) && (r.budget)()) {
        // Another try answers instead; this response is dropped with its
        // connection (its body is never read).
        shard.bufs.put(ubuf);
        return Err(Failed {
            err: ProxyError::new(ErrorKind::RetryableStatus, "response status"),
            replayable: false,
            response_started: false,
            request_intact: body_done,
            cbuf,
        });
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
        let mut client = client_slot.take().expect("client connection present");
        resp.plan_forward(&ubuf, false, false, &mut scratch.plan);
        let out = scratch.plan.to_vec(&ubuf);
        let n = out.len();
        ex.bytes_out += n as u64;
        if write_bounded(&mut client, out, t.idle).await.is_err() {
            shard.bufs.put(ubuf);
            return Ok((Next::Close, cbuf));
        }
        consume(&mut ubuf, resp.head_len);
        let (a, b) = Box::pin(tunnel(shard, cfg, client, up, cbuf, ubuf)).await;
        ex.bytes_in += a;
        ex.bytes_out += b;
        return Ok((Next::Close, Vec::new()));
    }

    // Final response: head (and the body bytes that came with it) in one write.
    let client = client_slot.as_mut().expect("client connection present");
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
                    return Err(Failed {
                        err: ProxyError::new(ErrorKind::BadResponse, "parsing response body"),
                        replayable: false,
                        response_started: false,
                        request_intact: body_done,
                        cbuf,
                    });
                }
            }
        }
        f => match body_prefix(f, &ubuf[resp.head_len..], &mut rdec) {
            Ok(x) => x,
            Err(_) => {
                shard.bufs.put(ubuf);
                return Err(Failed {
                    err: ProxyError::new(ErrorKind::BadResponse, "parsing response body"),
                    replayable: false,
                    response_started: false,
                    request_intact: body_done,
                    cbuf,
                });
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
        Err(_) => return Err(started(ErrorKind::Idle, cbuf)),
    };
    let ubuf = scratch.give_back(v);
    if res.is_err() {
        shard.bufs.put(ubuf);
        return Err(started(ErrorKind::ClientGone, cbuf));
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
                return Err(started(kind, cbuf));
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

pub(super) fn gone(cbuf: Buf) -> Failed {
    Failed {
        err: ProxyError::new(ErrorKind::ClientGone, "writing to the client"),
        replayable: false,
        response_started: true,
        request_intact: false,
        cbuf,
    }
}

pub(super) fn started(kind: ErrorKind, cbuf: Buf) -> Failed {
    Failed {
        err: ProxyError::new(kind, "relaying the response"),
        replayable: false,
        response_started: true,
        request_intact: false,
        cbuf,
    }
}
