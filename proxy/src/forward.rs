//! The HTTP/1.1 forwarding loop: one task per client connection.
//!
//! Phases of a request, in order: decode (read the head into a pooled buffer
//! and parse it in place), route (authority → service, or the local app),
//! balance (round-robin endpoint), forward (vectored head write with the first
//! body bytes, then the body relayed from the buffer it was read into), relay
//! the response the same way, record (stats and access log).
//!
//! Connection states:
//!
//! ```text
//!  accepted ──readable──▶ reading head ──complete──▶ forwarding ──done──▶ lingering
//!     ▲                        │ bad/limit → error response, close            │
//!     │                        │ timeout → close                              │
//!     └──── idle (no buffer) ◀──────────── nothing within the linger ─────────┘
//!  forwarding ──101 / CONNECT──▶ tunnel ──EOF/idle──▶ closed
//! ```
//!
//! An idle connection holds no buffer: after a response it keeps a read
//! posted for a short linger (so a busy connection costs one ring operation
//! per read), then returns the buffer and waits for readability.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::accesslog::AccessEntry;
use crate::buf::BUF_SIZE;
use crate::config::Config;
use crate::error::{ErrorKind, ProxyError};
use crate::http1::{
    self, ChunkedDecoder, Framing, HeadPlan, Method, RequestHead, ResponseHead, Version,
};
use crate::route::{self, Target};
use crate::routing::{CompiledRule, RoutingTable};
use crate::runtime::{self, Buf, IoVecs, Linger, TcpStream};
use crate::shard::Shard;
use crate::stats::Direction;
use coremesh_api::resource::RetryOn;

/// How long a finished keep-alive connection keeps its read posted before it
/// gives its buffer back (a busy client sends its next request well within).
const LINGER: Duration = Duration::from_millis(100);

/// Attempts per request when connecting fails (each on the next endpoint).
const CONNECT_ATTEMPTS: usize = 3;

/// Per-connection scratch space, reused across requests.
#[derive(Default)]
struct Scratch {
    plan: HeadPlan,
    iov: Vec<libc::iovec>,
}

/// What the connection does after a request.
enum Next {
    /// Keep the connection; the buffer holds the bytes of the next request
    /// (possibly none).
    KeepAlive,
    /// Close it.
    Close,
}

/// Outcome of reading a request head.
enum HeadRead {
    Head(RequestHead),
    /// The client closed, went idle too long, or failed.
    Closed,
    /// Nothing arrived within the linger; the buffer went back to the pool.
    Idle,
    /// The head broke a rule: answer with this status and close.
    Reject(http1::ParseError),
    /// The head did not complete within `timeouts.head_read`.
    TimedOut,
}

fn limits(cfg: &Config) -> http1::Limits {
    http1::Limits {
        max_head_bytes: cfg.limits.max_head_bytes,
        max_request_line: cfg.limits.max_request_line,
        max_headers: cfg.limits.max_headers,
    }
}

/// Serves one client connection until it closes.
pub async fn serve(shard: Rc<Shard>, client: TcpStream, dir: Direction) {
    client.set_nodelay();
    shard.conn_opened(dir);
    let mut client = Some(client);
    let mut buf: Option<Buf> = None;
    let mut scratch = Scratch::default();
    let mut idle_since = Instant::now();
    while let Some(c) = client.as_mut() {
        let cfg = shard.config();
        if buf.is_none() {
            // Idle, holding no buffer. This await is the only state an idle
            // connection keeps, so it is kept small: no timer of its own (the
            // shard's idle table enforces keepalive_idle, see idle.rs), and
            // the head reading and the request are boxed futures that exist
            // only while the connection is active.
            if shard.draining.get() {
                break;
            }
            scratch = Scratch::default();
            c.release_idle_state();
            let deadline = idle_since + cfg.timeouts.keepalive_idle;
            let guard = shard.idle.enter(c.raw_fd(), deadline);
            let woke = c.readable().await;
            drop(guard);
            if woke.is_err() {
                break;
            }
            buf = Some(shard.bufs.get());
        }
        let head = match Box::pin(read_head(&shard, &cfg, c, &mut buf)).await {
            HeadRead::Head(h) => h,
            HeadRead::Closed => break,
            HeadRead::Idle => continue,
            HeadRead::TimedOut => {
                let _ = Box::pin(write_error(
                    c,
                    408,
                    "request head timeout",
                    true,
                    cfg.timeouts.idle,
                ))
                .await;
                shard.record_local(dir, 408);
                break;
            }
            HeadRead::Reject(e) => {
                let _ = Box::pin(write_error(c, e.status, e.reason, true, cfg.timeouts.idle)).await;
                shard.record_local(dir, e.status);
                break;
            }
        };
        let b = buf.take().unwrap_or_default();
        shard.in_flight.set(shard.in_flight.get() + 1);
        // Boxed: the request's state lives only while a request is in
        // flight, so an idle connection's task stays small.
        let (next, b) = Box::pin(handle(
            &shard,
            &cfg,
            &mut client,
            dir,
            head,
            b,
            &mut scratch,
        ))
        .await;
        shard.in_flight.set(shard.in_flight.get() - 1);
        idle_since = Instant::now();
        match next {
            Next::KeepAlive if !shard.draining.get() || !b.is_empty() => buf = Some(b),
            _ => {
                shard.bufs.put(b);
                break;
            }
        }
    }
    if let Some(b) = buf {
        shard.bufs.put(b);
    }
    shard.conn_closed(dir);
}

/// Reads until `slot` holds a complete request head at its start.
async fn read_head(
    shard: &Shard,
    cfg: &Config,
    client: &mut TcpStream,
    slot: &mut Option<Buf>,
) -> HeadRead {
    let limits = limits(cfg);
    let t = &cfg.timeouts;
    let mut head_deadline = None;
    let Some(mut b) = slot.take() else {
        return HeadRead::Idle;
    };
    loop {
        if !b.is_empty() {
            head_deadline.get_or_insert_with(|| Instant::now() + t.head_read);
            match http1::parse_request(&b, &limits) {
                Ok(Some(h)) => {
                    *slot = Some(b);
                    return HeadRead::Head(h);
                }
                Ok(None) => {}
                Err(e) => {
                    *slot = Some(b);
                    return HeadRead::Reject(e);
                }
            }
            if b.len() == b.capacity() {
                // Heads larger than a pooled buffer get a one-off buffer of
                // the configured maximum; the parser answers 431 beyond it.
                let mut big = Vec::with_capacity(limits.max_head_bytes.max(b.len() + 1));
                big.extend_from_slice(&b);
                shard.bufs.put(std::mem::replace(&mut b, big));
            }
        }
        let (res, back) = match head_deadline {
            None => {
                // Between requests: keep the read posted for the linger only.
                match client.read_linger(b, LINGER).await {
                    Linger::Read(res, back) => (res, back),
                    Linger::Idle(back) => {
                        // Nothing within the linger: give the buffer back
                        // and wait (in `serve`) without one.
                        shard.bufs.put(back);
                        return HeadRead::Idle;
                    }
                }
            }
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match runtime::timeout(left, client.read(b)).await {
                    Ok(r) => r,
                    Err(_) => return HeadRead::TimedOut,
                }
            }
        };
        b = back;
        match res {
            Ok(0) | Err(_) => {
                shard.bufs.put(b);
                return HeadRead::Closed;
            }
            Ok(_) => {}
        }
    }
}

/// Writes a locally generated error response.
async fn write_error(
    client: &mut TcpStream,
    status: u16,
    error: &str,
    close: bool,
    limit: Duration,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(256);
    http1::write_error_response(status, error, close, &mut out);
    write_bounded(client, out, limit).await
}

/// Writes all of `out` to the client, bounded by `limit` (`timeouts.idle`):
/// a client that stops reading never holds a request in flight forever.
async fn write_bounded(
    client: &mut TcpStream,
    out: Vec<u8>,
    limit: Duration,
) -> std::io::Result<()> {
    let len = out.len();
    match runtime::timeout(limit, client.write_all(out, 0..len)).await {
        Ok((res, _)) => res,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// How many of `avail` bytes after the head belong to the request body, and
/// whether the body is complete within them.
fn body_prefix(
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

/// A request being served: everything `handle` needs to record it at the end.
struct Exchange {
    start: Instant,
    /// `timeouts.idle`: the bound on every write to the client.
    idle: Duration,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    upstream: Option<SocketAddr>,
}

/// Serves one request whose head is at the start of `cbuf`.
async fn handle(
    shard: &Shard,
    cfg: &Arc<Config>,
    client_slot: &mut Option<TcpStream>,
    dir: Direction,
    head: RequestHead,
    cbuf: Buf,
    scratch: &mut Scratch,
) -> (Next, Buf) {
    let mut ex = Exchange {
        start: Instant::now(),
        idle: cfg.timeouts.idle,
        status: 0,
        bytes_in: head.head_len as u64,
        bytes_out: 0,
        upstream: None,
    };
    // The access log needs the request line's fields after the buffer has
    // been reused for the body, so it gets a copy (only when it is enabled).
    let logged = shard
        .access_log
        .borrow()
        .is_some()
        .then(|| LoggedRequest::new(&head, &cbuf));
    let table = shard.routes();
    let table_ref = table.as_ref().map(|t| &***t);
    let (service, next, cbuf) = forward(
        shard,
        cfg,
        table_ref,
        client_slot,
        dir,
        &head,
        cbuf,
        scratch,
        &mut ex,
    )
    .await;
    shard.record(dir, service, logged.as_ref(), &ex);
    (next, cbuf)
}

/// The request fields the access log shows.
struct LoggedRequest {
    method: Vec<u8>,
    authority: Vec<u8>,
    path: Vec<u8>,
}

impl LoggedRequest {
    fn new(head: &RequestHead, buf: &[u8]) -> Self {
        let field = |s: &std::ops::Range<usize>| buf.get(s.clone()).unwrap_or(&[]).to_vec();
        // The method is what precedes the target, after any empty lines
        // the parser skipped before the request line.
        let line = buf[..head.target.start].trim_ascii();
        LoggedRequest {
            method: line.to_vec(),
            authority: head.authority.as_ref().map(field).unwrap_or_default(),
            path: field(&head.path),
        }
    }
}

/// Picks the destination and forwards; returns the service label.
#[allow(clippy::too_many_arguments)] // one call site; the phases share these
async fn forward<'c>(
    shard: &Shard,
    cfg: &'c Config,
    table: Option<&'c RoutingTable>,
    client_slot: &mut Option<TcpStream>,
    dir: Direction,
    head: &RequestHead,
    cbuf: Buf,
    scratch: &mut Scratch,
    ex: &mut Exchange,
) -> (&'c str, Next, Buf) {
    let client = client_slot.as_mut().expect("client connection present");
    // Route.
    let mut policy = TryPolicy::single(cfg);
    let (service, endpoints): (&'c str, Endpoints<'c>) = match dir {
        Direction::Inbound => {
            let app = cfg.inbound.as_ref().map(|i| i.app);
            if head.method == Method::Connect || app.is_none() {
                return local_error(
                    client,
                    head,
                    cbuf,
                    ErrorKind::ConnectNotAllowed,
                    ex,
                    &cfg.proxy.service,
                )
                .await;
            }
            (
                &cfg.proxy.service,
                Endpoints::One(app.unwrap_or_else(unreachable_addr)),
            )
        }
        Direction::Outbound => match route::outbound(cfg, table, head, &cbuf) {
            Ok(Target::Routed(sr)) => match &sr.rules {
                None if sr.all.is_empty() => {
                    return local_error(client, head, cbuf, ErrorKind::NoEndpoints, ex, &sr.name)
                        .await
                }
                None => (&sr.name, Endpoints::Service(&sr.name, &sr.all)),
                Some(rules) => match route::match_rule(rules, head, &cbuf) {
                    None => {
                        return local_error(client, head, cbuf, ErrorKind::NoRoute, ex, &sr.name)
                            .await
                    }
                    Some(rule) => {
                        if rule
                            .backends
                            .iter()
                            .all(|b| b.weight == 0 || b.endpoints.is_empty())
                        {
                            let kind = ErrorKind::NoHealthyEndpoints;
                            return local_error(client, head, cbuf, kind, ex, &sr.name).await;
                        }
                        policy = TryPolicy::for_rule(cfg, rule);
                        (&sr.name, Endpoints::Rule(&sr.name, rule))
                    }
                },
            },
            Ok(Target::Service(svc)) => {
                if svc.endpoints.is_empty() {
                    return local_error(client, head, cbuf, ErrorKind::NoEndpoints, ex, &svc.name)
                        .await;
                }
                (&svc.name, Endpoints::Service(&svc.name, &svc.endpoints))
            }
            Ok(Target::Passthrough { host, port }) => match shard.resolve(&host, port).await {
                Ok(addr) if shard.is_own(addr) => {
                    let kind = ErrorKind::LoopDetected;
                    return local_error(client, head, cbuf, kind, ex, "passthrough").await;
                }
                Ok(addr) => ("passthrough", Endpoints::One(addr)),
                Err(_) => {
                    return local_error(
                        client,
                        head,
                        cbuf,
                        ErrorKind::ResolveFailed,
                        ex,
                        "passthrough",
                    )
                    .await
                }
            },
            Err(kind) => return local_error(client, head, cbuf, kind, ex, "unknown").await,
        },
    };
    if head.method == Method::Connect {
        let (next, cbuf) = connect_tunnel(shard, cfg, client_slot, head, cbuf, endpoints, ex).await;
        return (service, next, cbuf);
    }
    let (next, cbuf) = exchange(
        shard,
        cfg,
        client_slot,
        head,
        cbuf,
        endpoints,
        &policy,
        scratch,
        ex,
    )
    .await;
    (service, next, cbuf)
}

fn unreachable_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The endpoints a request may go to.
enum Endpoints<'c> {
    One(SocketAddr),
    /// A mesh service's endpoints, balanced round-robin per shard.
    Service(&'c str, &'c [SocketAddr]),
    /// A Route rule's weighted backends (at least one has an endpoint).
    Rule(&'c str, &'c CompiledRule),
}

impl Endpoints<'_> {
    fn pick(&self, shard: &Shard, attempt: usize) -> SocketAddr {
        match self {
            Endpoints::One(a) => *a,
            Endpoints::Service(name, eps) => {
                let base = if attempt == 0 {
                    shard.next_rr(name)
                } else {
                    shard.peek_rr(name) + attempt
                };
                eps[base % eps.len()]
            }
            Endpoints::Rule(name, rule) => {
                // A backend is drawn by weight among those with endpoints, so
                // the share of one without endpoints goes to the others in
                // proportion; then round-robin within it.
                let total: u64 = rule
                    .backends
                    .iter()
                    .filter(|b| !b.endpoints.is_empty())
                    .map(|b| u64::from(b.weight))
                    .sum();
                let mut draw = shard.random() % total.max(1);
                let mut chosen = None;
                for b in rule.backends.iter().filter(|b| !b.endpoints.is_empty()) {
                    if draw < u64::from(b.weight) {
                        chosen = Some(b);
                        break;
                    }
                    draw -= u64::from(b.weight);
                }
                let b = chosen
                    .or_else(|| rule.backends.iter().find(|b| !b.endpoints.is_empty()))
                    .expect("a backend with endpoints (checked when routing)");
                let base = if attempt == 0 {
                    shard.next_rr(name)
                } else {
                    shard.peek_rr(name) + attempt
                };
                b.endpoints[base % b.endpoints.len()]
            }
        }
    }

    fn count(&self) -> usize {
        match self {
            Endpoints::One(_) => 1,
            Endpoints::Service(_, eps) => eps.len(),
            Endpoints::Rule(_, rule) => rule.backends.iter().map(|b| b.endpoints.len()).sum(),
        }
    }
}

/// Answers with a local error. The connection stays open only if the request
/// had no body (otherwise its unread body would be taken for the next request).
async fn local_error<'c>(
    client: &mut TcpStream,
    head: &RequestHead,
    mut cbuf: Buf,
    kind: ErrorKind,
    ex: &mut Exchange,
    service: &'c str,
) -> (&'c str, Next, Buf) {
    let close = !head.keep_alive || head.framing != Framing::None;
    ex.status = kind.status();
    let res = write_error(client, kind.status(), kind.text(), close, ex.idle).await;
    let next = if close || res.is_err() {
        Next::Close
    } else {
        consume(&mut cbuf, head.head_len);
        Next::KeepAlive
    };
    (service, next, cbuf)
}

/// Drops the first `n` bytes of `b`, keeping what follows (pipelined bytes).
fn consume(b: &mut Buf, n: usize) {
    if n >= b.len() {
        b.clear();
    } else {
        b.copy_within(n.., 0);
        b.truncate(b.len() - n);
    }
}

/// Opens a connection to the request's upstream: a pooled one if there is
/// one, else a new one (trying the next endpoint when connecting fails).
async fn upstream_conn(
    shard: &Shard,
    cfg: &Config,
    endpoints: &Endpoints<'_>,
    fresh_only: bool,
    non_idempotent: bool,
    try_no: usize,
) -> Result<(TcpStream, SocketAddr, bool), ProxyError> {
    let attempts = endpoints.count().min(CONNECT_ATTEMPTS);
    let mut last = ProxyError::new(ErrorKind::ConnectFailed, "no attempt");
    for attempt in 0..attempts {
        // Later tries of a request start at another endpoint.
        let addr = endpoints.pick(shard, attempt + try_no * attempts);
        if !fresh_only {
            if let Some((c, idle_for)) =
                shard
                    .pool
                    .take(addr, Instant::now(), cfg.upstream.pool_idle_timeout)
            {
                // A request that must not be replayed checks first that the
                // upstream has not closed the connection while it sat idle
                // (one peek; idempotent requests are retried instead).
                let _ = idle_for;
                if !(non_idempotent && runtime::stale(c.raw_fd())) {
                    return Ok((c, addr, true));
                }
            }
        }
        match TcpStream::connect(addr, cfg.timeouts.connect).await {
            Ok(c) => return Ok((c, addr, false)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                last = ProxyError::io(ErrorKind::ConnectTimeout, "connect", e)
            }
            Err(e) => last = ProxyError::io(ErrorKind::ConnectFailed, "connect", e),
        }
        tracing::debug!(%addr, "upstream connect failed: {last}");
    }
    Err(last)
}

/// `CONNECT host:port` with passthrough: 200, then a raw tunnel.
async fn connect_tunnel(
    shard: &Shard,
    cfg: &Config,
    client_slot: &mut Option<TcpStream>,
    head: &RequestHead,
    mut cbuf: Buf,
    endpoints: Endpoints<'_>,
    ex: &mut Exchange,
) -> (Next, Buf) {
    let client = client_slot.as_mut().expect("client connection present");
    let up = match upstream_conn(shard, cfg, &endpoints, true, true, 0).await {
        Ok((c, addr, _)) => {
            ex.upstream = Some(addr);
            c
        }
        Err(e) => {
            ex.status = e.kind.status();
            let _ = write_error(client, e.kind.status(), e.kind.text(), true, ex.idle).await;
            return (Next::Close, cbuf);
        }
    };
    let ok = b"HTTP/1.1 200 Connection Established\r\n\r\n".to_vec();
    let len = ok.len();
    let _ = len;
    if write_bounded(client, ok, ex.idle).await.is_err() {
        return (Next::Close, cbuf);
    }
    ex.status = 200;
    consume(&mut cbuf, head.head_len);
    let client = client_slot.take().expect("client connection present");
    let (a, b) = tunnel(shard, cfg, client, up, cbuf, Vec::new()).await;
    ex.bytes_in += a;
    ex.bytes_out += b;
    (Next::Close, Vec::new())
}

/// Relays both ways, first flushing bytes that arrived with the heads.
async fn tunnel(
    shard: &Shard,
    cfg: &Config,
    mut client: TcpStream,
    mut up: TcpStream,
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
    let (a, b) = TcpStream::tunnel(
        client,
        up,
        (shard.bufs.get(), shard.bufs.get()),
        cfg.timeouts.idle,
    )
    .await;
    (sent.0 + a, sent.1 + b)
}

/// Why an exchange with one upstream connection failed.
struct Failed {
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
pub(crate) struct TryPolicy {
    /// From the request head sent until a response head, all tries together.
    total: Duration,
    per_try: Option<Duration>,
    /// Tries after the first.
    retries: u32,
    on_connect: bool,
    on_reset: bool,
    on_5xx: bool,
    on_gateway: bool,
}

impl TryPolicy {
    fn single(cfg: &Config) -> Self {
        TryPolicy {
            total: cfg.timeouts.request,
            per_try: None,
            retries: 0,
            on_connect: false,
            on_reset: false,
            on_5xx: false,
            on_gateway: false,
        }
    }

    fn for_rule(cfg: &Config, rule: &CompiledRule) -> Self {
        let mut p = TryPolicy::single(cfg);
        if let Some(t) = rule.timeout {
            p.total = t;
        }
        if let Some(r) = &rule.retries {
            p.retries = r.attempts;
            p.per_try = r.per_try_timeout;
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

    /// Whether a final response with `status` is retried (when tries remain).
    fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway && matches!(status, 502..=504))
    }

    /// Whether a failed try is retried (when tries remain).
    fn retries_error(&self, kind: ErrorKind) -> bool {
        match kind {
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => self.on_connect,
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
async fn exchange(
    shard: &Shard,
    cfg: &Config,
    client_slot: &mut Option<TcpStream>,
    head: &RequestHead,
    mut cbuf: Buf,
    endpoints: Endpoints<'_>,
    policy: &TryPolicy,
    scratch: &mut Scratch,
    ex: &mut Exchange,
) -> (Next, Buf) {
    let mut fresh_only = false;
    let deadline = Instant::now() + policy.total;
    let idempotent = head.method.is_idempotent();
    let mut tries = 0u32;
    loop {
        let can_retry = tries < policy.retries && idempotent && Instant::now() < deadline;
        let conn = upstream_conn(
            shard,
            cfg,
            &endpoints,
            fresh_only,
            !idempotent,
            tries as usize,
        )
        .await;
        let (up, addr, reused) = match conn {
            Ok(x) => x,
            Err(e) if can_retry && policy.retries_error(e.kind) => {
                tries += 1;
                continue;
            }
            Err(e) => {
                ex.status = e.kind.status();
                tracing::debug!("{e}");
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
            Some(p) => deadline.min(Instant::now() + p),
            None => deadline,
        };
        let retry_status = (can_retry && (policy.on_5xx || policy.on_gateway)).then_some(policy);
        let res = over_connection(
            shard,
            cfg,
            client_slot,
            head,
            cbuf,
            up,
            addr,
            scratch,
            ex,
            try_deadline,
            retry_status,
        )
        .await;
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
                if can_retry
                    && f.request_intact
                    && !f.response_started
                    && policy.retries_error(f.err.kind)
                {
                    tracing::debug!(%addr, try = tries + 1, "retrying: {}", f.err);
                    tries += 1;
                    continue;
                }
                tracing::debug!(%addr, "{}", f.err);
                ex.status = f.err.kind.status();
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

/// One attempt of a request over `up`.
#[allow(clippy::too_many_arguments)] // one call site; the phases share these
async fn over_connection(
    shard: &Shard,
    cfg: &Config,
    client_slot: &mut Option<TcpStream>,
    head: &RequestHead,
    cbuf: Buf,
    mut up: TcpStream,
    addr: SocketAddr,
    scratch: &mut Scratch,
    ex: &mut Exchange,
    deadline: Instant,
    retry: Option<&TryPolicy>,
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
    head.plan_forward(&cbuf, b"", &mut scratch.plan);
    let own = std::mem::take(&mut scratch.plan.own);
    let iov = std::mem::take(&mut scratch.iov);
    let v = IoVecs::new(
        cbuf,
        &scratch.plan,
        own,
        head.head_len..head.head_len + first_body,
        iov,
    );
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
    let (mut cbuf, own, iov) = v.into_parts();
    scratch.plan.own = own;
    scratch.iov = iov;
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
        match relay_request_body(client, &mut up, head.framing, first_body, dec, cbuf, t.idle).await
        {
            Ok((b, moved, leftover_from)) => {
                cbuf = b;
                ex.bytes_in += moved;
                consumed = leftover_from;
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
        let left = deadline.saturating_duration_since(Instant::now());
        let (res, back) = match runtime::timeout(left, up.read(ubuf)).await {
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
    if retry.is_some_and(|p| p.retries_status(resp.status)) {
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
    consume(&mut cbuf, consumed);

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
        let (a, b) = tunnel(shard, cfg, client, up, cbuf, ubuf).await;
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
    let close =
        !head.keep_alive || resp.framing == Framing::UntilClose || dechunk || shard.draining.get();
    let keep_10 = head.version == Version::Http10 && !close;
    if dechunk {
        resp.plan_forward_unchunked(&ubuf, &mut scratch.plan);
    } else {
        resp.plan_forward(&ubuf, close, keep_10, &mut scratch.plan);
    }
    let own = std::mem::take(&mut scratch.plan.own);
    let iov = std::mem::take(&mut scratch.iov);
    let v = IoVecs::new(
        ubuf,
        &scratch.plan,
        own,
        resp.head_len..resp.head_len + first,
        iov,
    );
    ex.bytes_out += v.remaining() as u64;
    let (res, v) = match runtime::timeout(t.idle, client.write_vectored(v)).await {
        Ok(x) => x,
        Err(_) => return Err(started(ErrorKind::Idle, cbuf)),
    };
    let (ubuf, own, iov) = v.into_parts();
    scratch.plan.own = own;
    scratch.iov = iov;
    if res.is_err() {
        shard.bufs.put(ubuf);
        return Err(started(ErrorKind::ClientGone, cbuf));
    }
    let mut reusable = resp.keep_alive && !extra_bytes;
    if !resp_done {
        match relay_response_body(
            client,
            &mut up,
            resp.framing,
            dechunk,
            first,
            rdec,
            ubuf,
            t.idle,
        )
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
    if reusable && cfg.upstream.max_idle_per_endpoint > 0 {
        shard
            .pool
            .put(addr, up, Instant::now(), cfg.upstream.max_idle_per_endpoint);
    }
    Ok((if close { Next::Close } else { Next::KeepAlive }, cbuf))
}

fn gone(cbuf: Buf) -> Failed {
    Failed {
        err: ProxyError::new(ErrorKind::ClientGone, "writing to the client"),
        replayable: false,
        response_started: true,
        request_intact: false,
        cbuf,
    }
}

fn started(kind: ErrorKind, cbuf: Buf) -> Failed {
    Failed {
        err: ProxyError::new(kind, "relaying the response"),
        replayable: false,
        response_started: true,
        request_intact: false,
        cbuf,
    }
}

/// Streams the rest of a request body from `client` to `up`. `sent` body
/// bytes went out with the head. Returns the buffer (holding, from the
/// returned offset on, bytes that belong to the next request), the body bytes
/// moved here, and that offset.
async fn relay_request_body(
    client: &mut TcpStream,
    up: &mut TcpStream,
    framing: Framing,
    sent: usize,
    mut dec: ChunkedDecoder,
    mut b: Buf,
    idle: Duration,
) -> Result<(Buf, u64, usize), (ErrorKind, Buf)> {
    let mut remaining = match framing {
        Framing::Length(n) => n - sent as u64,
        _ => u64::MAX,
    };
    let mut moved = 0u64;
    if b.capacity() < BUF_SIZE {
        b.reserve(BUF_SIZE);
    }
    loop {
        b.clear();
        let (res, back) = match runtime::timeout(idle, client.read(b)).await {
            Ok(x) => x,
            Err(_) => return Err((ErrorKind::Idle, Vec::new())),
        };
        b = back;
        let n = match res {
            Ok(0) | Err(_) => return Err((ErrorKind::ClientGone, b)),
            Ok(n) => n,
        };
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
async fn relay_response_body(
    client: &mut TcpStream,
    up: &mut TcpStream,
    framing: Framing,
    dechunk: bool,
    sent: usize,
    mut dec: ChunkedDecoder,
    mut b: Buf,
    idle: Duration,
) -> Result<(Buf, u64, bool), (ErrorKind, Buf)> {
    let mut remaining = match framing {
        Framing::Length(n) => n - sent as u64,
        _ => u64::MAX,
    };
    let mut moved = 0u64;
    loop {
        b.clear();
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
fn dechunk_in_place(
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

impl Shard {
    /// Records a finished request in the stats and the access log.
    fn record(&self, dir: Direction, service: &str, req: Option<&LoggedRequest>, ex: &Exchange) {
        let latency = ex.start.elapsed();
        self.stats
            .borrow_mut()
            .record(dir, service, ex.status, latency, ex.bytes_in, ex.bytes_out);
        if let (Some(req), Some(log)) = (req, self.access_log.borrow_mut().as_mut()) {
            log.log(&AccessEntry {
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
            });
        }
    }
}
