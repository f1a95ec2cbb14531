//! Relaying bodies and tunnels: request and response bodies by their
//! framing with one buffer in flight (backpressure), de-chunking for
//! HTTP/1.0 clients, and the two-way tunnel after `CONNECT` or a 101.

use super::upstream::{upstream_conn, ConnectPlan, Tried};
use super::*;
use crate::shard::budget::{self, Charge};
use crate::shard::buf::BufPool;

/// How many of `avail` bytes after the head belong to the request body, and
/// whether the body is complete within them.
pub(super) fn body_prefix(
    framing: Framing,
    avail: &[u8],
    dec: &mut ChunkedDecoder,
) -> Result<(usize, bool), http1::ParseError> {
    Ok(match framing {
        Framing::None | Framing::UntilClose => (0, true),
        Framing::Length(n) => {
            let take = (avail.len() as u64).min(n) as usize;
            (take, take as u64 == n)
        }
        Framing::Chunked => {
            let used = dec.feed(avail)?;
            (used, dec.is_done())
        }
    })
}

/// `CONNECT host:port` with passthrough: 200, then a raw tunnel (run by
/// the connection loop, which owns the client connection).
pub(super) async fn connect_tunnel(
    ctx: &mut RequestCtx<'_, '_>,
    mut cbuf: Buf,
    endpoints: Endpoints<'_>,
) -> (Next, Buf) {
    let mut tried = Tried::default();
    // CONNECT goes to a passthrough host: no service, no breaker slot.
    let now = Instant::now();
    let plan = ConnectPlan {
        fresh_only: true,
        non_idempotent: true,
        key: None,
        now,
        deadline: after(now, ctx.cfg.timeouts.connect),
    };
    let got = upstream_conn(ctx.shard, ctx.cfg, &endpoints, &mut tried, plan).await;
    let up = match got {
        Ok((c, addr, _, _)) => {
            ctx.ex.upstream = Some(addr);
            c
        }
        Err(e) => return ctx.answer_and_close(Answer::Error(e.kind), cbuf).await,
    };
    let ok = super::answer::CONNECTED.to_vec();
    if write_bounded(ctx.client, ok, ctx.ex.idle).await.is_err() {
        return (Next::Close, cbuf);
    }
    ctx.ex.status = 200;
    consume(&mut cbuf, ctx.head.head_len);
    let tunnel = super::ctx::Tunnel {
        up,
        client_pending: cbuf,
        up_pending: Vec::new(),
    };
    (Next::Tunnel(Box::new(tunnel)), Vec::new())
}

/// Relays both ways, first flushing bytes that arrived with the heads.
pub(super) async fn tunnel(
    shard: &Shard,
    cfg: &Config,
    mut client: Conn,
    mut up: Conn,
    cpending: Buf,
    upending: Buf,
) -> (u64, u64) {
    let mut sent = (0, 0);
    if !cpending.is_empty() {
        let n = cpending.len();
        if runtime::timeout(cfg.timeouts.idle, up.write_all(cpending, 0..n))
            .await
            .map_or(true, |r| r.0.is_err())
        {
            return sent;
        }
        sent.0 += n as u64;
    }
    if !upending.is_empty() {
        let n = upending.len();
        if write_bounded(&mut client, upending, cfg.timeouts.idle)
            .await
            .is_err()
        {
            return sent;
        }
        sent.1 += n as u64;
    }
    let (a, b) = Conn::tunnel(
        client,
        up,
        (shard.bufs.get(), shard.bufs.get()),
        cfg.timeouts.idle,
    )
    .await;
    (sent.0 + a, sent.1 + b)
}

/// Streams the rest of a request body from `client` to `up`. `sent` body
/// bytes went out with the head. Returns the buffer (holding, from the
/// returned offset on, bytes that belong to the next request), the body bytes
/// moved here, and that offset.
#[allow(clippy::too_many_arguments)] // one call site; the relay's whole state
pub(super) async fn relay_request_body(
    client: &mut Conn,
    up: &mut Conn,
    framing: Framing,
    sent: usize,
    mut dec: ChunkedDecoder,
    mut b: Buf,
    idle: Duration,
    (bufs, charge): (&BufPool, Option<&Charge<'_>>),
) -> Result<(Buf, u64, usize), (ErrorKind, Buf)> {
    let mut remaining = match framing {
        Framing::Length(n) => n - sent as u64,
        _ => u64::MAX,
    };
    let mut moved = 0u64;
    if b.capacity() < BUF_SIZE {
        b.reserve(BUF_SIZE);
    }
    let mut filled = 0;
    loop {
        b.clear();
        budget::grow_for_body(bufs, charge, &mut b, filled);
        let (res, back) = match runtime::timeout(idle, client.read(b)).await {
            Ok(x) => x,
            Err(_) => return Err((ErrorKind::Idle, Vec::new())),
        };
        b = back;
        let n = match res {
            Ok(0) | Err(_) => return Err((ErrorKind::ClientGone, b)),
            Ok(n) => n,
        };
        filled = n;
        let (take, done) = match framing {
            Framing::Length(_) => {
                let take = (n as u64).min(remaining) as usize;
                remaining -= take as u64;
                (take, remaining == 0)
            }
            _ => match dec.feed(&b[..n]) {
                Ok(used) => (used, dec.is_done()),
                Err(_) => return Err((ErrorKind::ClientGone, b)),
            },
        };
        let (res, back) = match runtime::timeout(idle, up.write_all(b, 0..take)).await {
            Ok(x) => x,
            Err(_) => return Err((ErrorKind::Idle, Vec::new())),
        };
        b = back;
        if res.is_err() {
            return Err((ErrorKind::UpstreamReset, b));
        }
        moved += take as u64;
        if done {
            return Ok((b, moved, take));
        }
    }
}

#[allow(clippy::too_many_arguments)] // one call site; the relay's whole state
/// Streams the rest of a response body from `up` to `client` (de-chunked
/// when `dechunk`). Returns the
/// buffer, the bytes moved, and whether the upstream sent bytes past the end
/// of the response (then its connection is not reused).
pub(super) async fn relay_response_body(
    client: &mut Conn,
    up: &mut Conn,
    framing: Framing,
    dechunk: bool,
    sent: usize,
    mut dec: ChunkedDecoder,
    mut b: Buf,
    idle: Duration,
    (bufs, charge): (&BufPool, Option<&Charge<'_>>),
) -> Result<(Buf, u64, bool), (ErrorKind, Buf)> {
    let mut remaining = match framing {
        Framing::Length(n) => n - sent as u64,
        _ => u64::MAX,
    };
    let mut moved = 0u64;
    // The read that brought the head may already have filled the buffer.
    let mut filled = b.len();
    loop {
        b.clear();
        budget::grow_for_body(bufs, charge, &mut b, filled);
        let (res, back) = match runtime::timeout(idle, up.read(b)).await {
            Ok(x) => x,
            Err(_) => return Err((ErrorKind::Idle, Vec::new())),
        };
        b = back;
        let mut extra = false;
        let n = match res {
            Ok(0) if framing == Framing::UntilClose => return Ok((b, moved, false)),
            Ok(0) | Err(_) => return Err((ErrorKind::UpstreamReset, b)),
            Ok(n) => n,
        };
        filled = n;
        let (take, done) = match framing {
            Framing::Length(_) => {
                let take = (n as u64).min(remaining) as usize;
                remaining -= take as u64;
                (take, remaining == 0)
            }
            Framing::Chunked if dechunk => match dechunk_in_place(&mut dec, &mut b, 0) {
                Ok((data, used)) => {
                    extra = used < n;
                    (data, dec.is_done())
                }
                Err(_) => return Err((ErrorKind::BadResponse, b)),
            },
            Framing::Chunked => match dec.feed(&b[..n]) {
                Ok(used) => (used, dec.is_done()),
                Err(_) => return Err((ErrorKind::BadResponse, b)),
            },
            _ => (n, false),
        };
        let (res, back) = match runtime::timeout(idle, client.write_all(b, 0..take)).await {
            Ok(x) => x,
            Err(_) => return Err((ErrorKind::Idle, Vec::new())),
        };
        b = back;
        if res.is_err() {
            return Err((ErrorKind::ClientGone, b));
        }
        moved += take as u64;
        if done {
            return Ok((b, moved, extra || (!dechunk && take < n)));
        }
    }
}

/// Decodes the chunked bytes of `b[from..]` and moves their data down to
/// start at `from` (data only moves towards the front). Returns the data
/// length and how many encoded bytes were consumed; `b` is truncated to
/// `from + data`. Only HTTP/1.0 clients of chunked responses take this path,
/// so the span list's allocation does not matter.
pub(super) fn dechunk_in_place(
    dec: &mut ChunkedDecoder,
    b: &mut Buf,
    from: usize,
) -> Result<(usize, usize), http1::ParseError> {
    let mut spans = Vec::new();
    let used = dec.feed_with(&b[from..], |r| spans.push(r))?;
    let mut out = from;
    for r in spans {
        b.copy_within(from + r.start..from + r.end, out);
        out += r.len();
    }
    b.truncate(out);
    Ok((out - from, used))
}
