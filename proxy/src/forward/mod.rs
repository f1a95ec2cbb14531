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
use crate::config::Config;
use crate::conn::Conn;
use crate::error::{ErrorKind, ProxyError};
use crate::http1::{
    self, ChunkedDecoder, Framing, HeadPlan, Method, RequestHead, ResponseHead, Version,
};
use crate::route::{self, Target};
use crate::routing::RoutingTable;
use crate::runtime::{self, Buf, IoVecs, Linger, TcpStream};
use crate::shard::buf::BUF_SIZE;
use crate::shard::Shard;
use crate::stats::Direction;
use coremesh_api::resource::RetryOn;

mod exchange;
mod mirror;
mod relay;
pub mod tcp_service;
mod upstream;

pub use crate::shard::probe::PROBE_PATH;

use exchange::{exchange, TryPolicy};
use relay::connect_tunnel;
use upstream::Endpoints;

/// How long a finished keep-alive connection keeps its read posted before it
/// gives its buffer back (a busy client sends its next request well within).
const LINGER: Duration = Duration::from_millis(100);

/// A connection the proxy closes while the client is still sending (see
/// `Conn::close_lingering`) is drained until nothing arrives for
/// LINGERING_QUIET, for LINGERING_LIMIT at most (nginx: lingering_timeout
/// 5 s, lingering_time 30 s).
const LINGERING_QUIET: Duration = Duration::from_secs(2);
const LINGERING_LIMIT: Duration = Duration::from_secs(10);

/// Attempts per request when connecting fails (each on the next endpoint).
const CONNECT_ATTEMPTS: usize = 3;

/// Per-connection scratch space, reused across requests.
#[derive(Default)]
struct Scratch {
    plan: HeadPlan,
    iov: Vec<libc::iovec>,
    /// Field lines the proxy adds to a forwarded request (the caller's
    /// identity on the inbound side), each ending in CRLF.
    extra: Vec<u8>,
}

impl Scratch {
    /// The vectored write of the planned head followed by `src[body]`; the
    /// plan's own bytes and the iovec array are lent to it.
    fn vectored(&mut self, src: Buf, body: std::ops::Range<usize>) -> IoVecs {
        let own = std::mem::take(&mut self.plan.own);
        let iov = std::mem::take(&mut self.iov);
        IoVecs::new(src, &self.plan, own, body, iov)
    }

    /// Takes back what [`Scratch::vectored`] lent; returns the source buffer.
    fn give_back(&mut self, v: IoVecs) -> Buf {
        let (src, own, iov) = v.into_parts();
        self.plan.own = own;
        self.iov = iov;
        src
    }
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
    /// A complete head, and when its first bytes arrived (the request's
    /// start: its deadlines and its latency count from there).
    Head(RequestHead, Instant),
    /// The client closed, went idle too long, or failed.
    Closed,
    /// Nothing arrived within the linger; the buffer went back to the pool.
    Idle,
    /// The head broke a rule: answer with this status and close.
    Reject(http1::ParseError),
    /// The head did not complete within `timeouts.head_read`.
    TimedOut,
}

/// `t + d`, or a time that never comes when a configured duration is too
/// large to add (no panic on a huge timeout).
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn limits(cfg: &Config) -> http1::Limits {
    http1::Limits {
        max_head_bytes: cfg.limits.max_head_bytes,
        max_request_line: cfg.limits.max_request_line,
        max_headers: cfg.limits.max_headers,
    }
}

/// Whether the inbound listener speaks mutual TLS: always once the proxy
/// has an identity source (control, or `[tls]` files). Without one (a
/// static proxy with no `[tls]`), it stays plaintext.
pub fn inbound_mtls(cfg: &Config) -> bool {
    cfg.control.is_some() || static_mtls(cfg)
}

/// Whether static `[[services]]` are peer proxies reached over mutual TLS.
pub fn static_mtls(cfg: &Config) -> bool {
    cfg.tls.is_some()
}

/// The server side of mutual TLS on the inbound port. `None`: refused
/// (no identity yet, plaintext, an untrusted or expired certificate, a
/// foreign trust domain, or a timeout), counted and logged.
async fn accept_mtls(shard: &Shard, cfg: &Config, tcp: TcpStream) -> Option<crate::tls::TlsStream> {
    let Some(tls) = shard.tls() else {
        crate::lograte::log_limited!(
            tracing::Level::WARN,
            "refused an inbound connection: this proxy has no certificate yet"
        );
        shard
            .stats
            .borrow_mut()
            .mesh
            .failure(Direction::Inbound, false);
        return None;
    };
    let peer = tcp.peer_addr().ok();
    let session = match crate::tls::Session::server(tls.server.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start a TLS session: {e}");
            return None;
        }
    };
    match crate::tls::TlsStream::handshake(tcp, session, cfg.timeouts.head_read).await {
        Ok(t) => {
            shard
                .stats
                .borrow_mut()
                .mesh
                .handshake(Direction::Inbound, t.resumed());
            Some(t)
        }
        Err(e) => {
            shard
                .stats
                .borrow_mut()
                .mesh
                .failure(Direction::Inbound, false);
            crate::lograte::log_limited!(
                tracing::Level::INFO,
                ?peer,
                "refused an inbound connection: {e}"
            );
            None
        }
    }
}

/// The proxy's own service's `rateLimit` (per service, or per caller
/// identity): whether this request may go to the app.
fn rate_admits(shard: &Shard, own: &str, client: &Conn, now: Instant) -> bool {
    shard
        .traffic
        .with(own, |s| match &mut s.limiter {
            None => true,
            Some(crate::traffic::Limiter::Service(t)) => t.try_take(now),
            Some(crate::traffic::Limiter::Caller(k)) => {
                let caller = client.peer_id().map(|c| c.as_bytes()).unwrap_or(b"");
                k.try_take(caller, now)
            }
        })
        .unwrap_or(true)
}

/// The AccessPolicy decision for a TCP stream from `caller` (identity only).
/// `Some(policy)`: denied by it (and counted).
fn authz_tcp(shard: &Shard, caller: Option<&str>) -> Option<String> {
    let table = shard.routes()?;
    let caller = caller.unwrap_or("");
    match table.authz.check(caller, b"", b"") {
        crate::authz::Decision::Allow => None,
        crate::authz::Decision::Deny { policy } => {
            shard.stats.borrow_mut().mesh.denied(policy, caller);
            Some(policy.to_string())
        }
    }
}

/// The inbound side's authorization of one request: the caller's SPIFFE ID
/// (from its certificate), method and path against the service's
/// AccessPolicy. `Some(policy)`: denied by it (and counted by policy and
/// caller). A plaintext inbound port (a static proxy without `[tls]`) has
/// no identities to check.
fn authorize<'t>(
    shard: &Shard,
    table: Option<&'t RoutingTable>,
    client: &Conn,
    head: &RequestHead,
    buf: &[u8],
) -> Option<&'t str> {
    let table = table?;
    if table.authz.allows_all() || !client.is_tls() {
        return None;
    }
    let caller = client.peer_id().map(|c| &**c).unwrap_or("");
    let method = head.method_bytes(buf);
    match table.authz.check(caller, method, &buf[head.path.clone()]) {
        crate::authz::Decision::Allow => None,
        crate::authz::Decision::Deny { policy } => {
            shard.stats.borrow_mut().mesh.denied(policy, caller);
            Some(policy)
        }
    }
}

/// Spawns the task that serves one accepted connection until it closes.
///
/// A future is as large as its largest state, for its whole life, and an
/// idle keep-alive connection is nothing but its task. So a plain
/// connection's task is `serve_http` alone, and what happens once per
/// connection on the mutual TLS path (the handshake, a TCP relay) is boxed
/// away from it. With the handshake and relay inline, every connection's
/// task was 7,936 bytes (measured with `size_of_val`), idle or not; now
/// `serve_http` is 584. See perf/README.md, idle RSS.
pub fn serve(shard: Rc<Shard>, tcp: TcpStream, dir: Direction) {
    tcp.set_nodelay();
    shard.conn_opened(dir);
    if dir == Direction::Inbound && inbound_mtls(&shard.config()) {
        crate::runtime::spawn_local(async move {
            match Box::pin(accept_inbound(&shard, tcp)).await {
                Some(client) => Box::pin(serve_http(shard, client, dir)).await,
                None => shard.conn_closed(dir),
            }
        });
    } else {
        crate::runtime::spawn_local(serve_http(shard, Conn::Plain(tcp), dir));
    }
}

/// The mutual TLS handshake of an inbound connection. `Some`: an HTTP
/// connection to serve; `None`: refused, or a TCP service's stream, relayed
/// here to its end.
async fn accept_inbound(shard: &Rc<Shard>, tcp: TcpStream) -> Option<Conn> {
    let cfg = shard.config();
    let tcp_service = cfg.inbound.as_ref().is_some_and(|i| i.tcp);
    match accept_mtls(shard, &cfg, tcp).await {
        Some(t) if t.alpn_is(crate::tls::identity::ALPN_TCP) != tcp_service => {
            // A raw stream into an HTTP app (no parsing, no header
            // stripping), or HTTP to a TCP service: refused.
            tracing::info!(
                caller = ?t.peer_id(),
                "refused a connection of the wrong kind ([inbound] protocol = {})",
                if tcp_service { "tcp" } else { "http" }
            );
            None
        }
        Some(t) if tcp_service => {
            tcp_service::inbound(shard, &cfg, t).await;
            None
        }
        Some(t) => Some(Conn::Tls(t)),
        None => None,
    }
}

/// Serves HTTP/1.1 on a client connection until it closes.
///
/// Two phases: idle (this function: waiting for readability, holding no
/// buffer) and busy ([`serve_busy`]: a boxed future that holds the buffer,
/// the per-connection scratch space and the state of the request in flight,
/// serving requests one after another until the connection goes idle or
/// closes). The idle wait is the only state an idle connection keeps, so it
/// is kept small: no timer of its own (the shard's idle table enforces
/// keepalive_idle, see idle.rs), and the busy phase's state, ~10 KiB with a
/// request in flight, is allocated once per busy period rather than once per
/// request.
async fn serve_http(shard: Rc<Shard>, client: Conn, dir: Direction) {
    let mut client = Some(client);
    let mut idle_since = Instant::now();
    let mut served = 0u64;
    // Whether the client may still be sending when the proxy closes (see
    // `Conn::close_lingering`).
    let mut may_send = false;
    while let Some(c) = client.as_mut() {
        if shard.draining.get() {
            break;
        }
        c.release_idle_state();
        let deadline = idle_since + shard.config().timeouts.keepalive_idle;
        let guard = shard.idle.enter(c.raw_fd(), deadline);
        let woke = c.readable().await;
        drop(guard);
        if woke.is_err() {
            break;
        }
        let busy = Box::pin(serve_busy(
            &shard,
            &mut client,
            dir,
            &mut idle_since,
            &mut served,
            &mut may_send,
        ));
        if !busy.await {
            break;
        }
    }
    if let Some(c) = client.take() {
        // Boxed: rare, and inline it would grow every idle connection's task.
        if c.may_be_sending(may_send) {
            Box::pin(c.close_lingering(LINGERING_QUIET, LINGERING_LIMIT)).await;
        }
    }
    shard.conn_closed(dir);
}

/// Serves requests on a connection that has bytes to read, until nothing
/// arrives within the linger (`true`: it went idle, holding no buffer) or
/// the connection must close (`false`; `may_send`: the client may still be
/// sending, a request body or a head the proxy refused).
async fn serve_busy(
    shard: &Rc<Shard>,
    client: &mut Option<Conn>,
    dir: Direction,
    idle_since: &mut Instant,
    served: &mut u64,
    may_send: &mut bool,
) -> bool {
    let mut buf = Some(shard.bufs.get());
    let mut scratch = Scratch::default();
    // When the previous response ended; the first read of a busy period
    // reads the clock itself.
    let mut ended = None;
    let open = loop {
        let cfg = shard.config();
        let Some(c) = client.as_mut() else {
            break false;
        };
        let (head, start) = match read_head(shard, &cfg, c, &mut buf, ended).await {
            HeadRead::Head(h, start) => (h, start),
            HeadRead::Closed => break false,
            HeadRead::Idle => break true,
            HeadRead::TimedOut => {
                let _ = write_error(c, 408, "request head timeout", true, cfg.timeouts.idle).await;
                shard.record_local(dir, 408);
                *may_send = true;
                break false;
            }
            HeadRead::Reject(e) => {
                let _ = write_error(c, e.status, e.reason, true, cfg.timeouts.idle).await;
                shard.record_local(dir, e.status);
                *may_send = true;
                break false;
            }
        };
        *may_send = !matches!(head.framing, Framing::None | Framing::Length(0));
        let b = buf.take().unwrap_or_default();
        shard.in_flight.set(shard.in_flight.get() + 1);
        let (next, b, end) = handle(shard, &cfg, client, dir, head, start, b, &mut scratch).await;
        shard.in_flight.set(shard.in_flight.get() - 1);
        *idle_since = end;
        ended = Some(end);
        *served += 1;
        match next {
            // Only a connection that has carried more than one request keeps
            // its buffer through the linger: a client that sends one request
            // and then sits idle (a pool warming up, a health checker) goes
            // straight to the bufferless wait.
            Next::KeepAlive if b.is_empty() && *served == 1 && !shard.draining.get() => {
                shard.bufs.put(b);
                break true;
            }
            Next::KeepAlive if !shard.draining.get() || !b.is_empty() => buf = Some(b),
            _ => {
                shard.bufs.put(b);
                break false;
            }
        }
    };
    if let Some(b) = buf {
        shard.bufs.put(b);
    }
    open
}

/// Reads until `slot` holds a complete request head at its start. `ended`:
/// when the previous response on the connection ended (the linger counts
/// from there), if it just did.
///
/// The clock is read once per request here, when the head's first bytes are
/// seen; the rest of the request reuses that reading (see `Exchange`).
async fn read_head(
    shard: &Shard,
    cfg: &Config,
    client: &mut Conn,
    slot: &mut Option<Buf>,
    ended: Option<Instant>,
) -> HeadRead {
    let limits = limits(cfg);
    let t = &cfg.timeouts;
    // When the head's first bytes were seen (its deadline counts from there).
    let mut head_start: Option<Instant> = None;
    let Some(mut b) = slot.take() else {
        return HeadRead::Idle;
    };
    loop {
        if !b.is_empty() {
            let start = *head_start.get_or_insert_with(Instant::now);
            match http1::parse_request(&b, &limits) {
                Ok(Some(h)) => {
                    *slot = Some(b);
                    return HeadRead::Head(h, start);
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
        let (res, back) = match head_start {
            None => {
                // Between requests: keep the read posted for the linger only.
                let until = ended.unwrap_or_else(Instant::now) + LINGER;
                match client.read_linger(b, until, t.head_read).await {
                    Linger::Read(res, back) => (res, back),
                    Linger::Idle(back) => {
                        // Nothing within the linger: give the buffer back
                        // and wait (in `serve`) without one.
                        shard.bufs.put(back);
                        return HeadRead::Idle;
                    }
                }
            }
            Some(start) => {
                match runtime::timeout_at(after(start, t.head_read), client.read(b)).await {
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
    client: &mut Conn,
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
///
/// Boxed inside: error answers and interim responses are rare, and their
/// timed write (~2 KiB of future) would otherwise sit in the state of every
/// request that might send one.
async fn write_bounded(client: &mut Conn, out: Vec<u8>, limit: Duration) -> std::io::Result<()> {
    let len = out.len();
    match Box::pin(runtime::timeout(limit, client.write_all(out, 0..len))).await {
        Ok((res, _)) => res,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// A request being served: everything `handle` needs to record it at the end.
///
/// `start` and `end` are the request's two clock readings: the deadlines,
/// the balancer's and the pool's timestamps, the latency and the keep-alive
/// linger all derive from them (about 15 `Instant::now()` calls per request
/// before, 1.8% of the proxy's CPU in the profile).
struct Exchange {
    /// When the request head's first bytes arrived.
    start: Instant,
    /// When the response was complete (set on success by the try that
    /// answered; otherwise read when the request is recorded).
    end: Option<Instant>,
    /// `timeouts.idle`: the bound on every write to the client.
    idle: Duration,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    upstream: Option<SocketAddr>,
}

/// Serves one request whose head is at the start of `cbuf` and began to
/// arrive at `start`. Returns, besides what comes next, when it ended.
#[allow(clippy::too_many_arguments)] // one call site; the phases share these
async fn handle(
    shard: &Shard,
    cfg: &Arc<Config>,
    client_slot: &mut Option<Conn>,
    dir: Direction,
    mut head: RequestHead,
    start: Instant,
    cbuf: Buf,
    scratch: &mut Scratch,
) -> (Next, Buf, Instant) {
    scratch.extra.clear();
    if dir == Direction::Inbound {
        // The caller's identity for the app, in the header the operator
        // named; a client's own copy of that header never gets through.
        if let Some(name) = cfg
            .inbound
            .as_ref()
            .and_then(|i| i.identity_header.as_deref())
        {
            head.drop_header(&cbuf, name);
            if let Some(id) = client_slot.as_ref().and_then(|c| c.peer_id()) {
                scratch.extra.extend_from_slice(name.as_bytes());
                scratch.extra.extend_from_slice(b": ");
                scratch.extra.extend_from_slice(id.as_bytes());
                scratch.extra.extend_from_slice(b"\r\n");
            }
        }
    }
    let mut ex = Exchange {
        start,
        end: None,
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
    let tunnel = head.upgrade || head.method == Method::Connect;
    // The service the request was routed to, for the stats of an exchange
    // the total timeout cut short.
    let mut routed: Option<&str> = None;
    // The exchange future is built where it is awaited (twice, not once into
    // a local moved later): a local that is moved into the timeout keeps a
    // slot of its own in this future (rust-lang/rust#62958), measured at
    // 11.5 KiB against 6 KiB, all of it copied on every request.
    let (service, next, cbuf) = if tunnel {
        // Tunnels are bounded by `timeouts.idle`, not by a total.
        forward(
            shard,
            cfg,
            table_ref,
            client_slot,
            dir,
            &head,
            cbuf,
            scratch,
            &mut ex,
            &mut routed,
        )
        .await
    } else {
        let exchange = forward(
            shard,
            cfg,
            table_ref,
            client_slot,
            dir,
            &head,
            cbuf,
            scratch,
            &mut ex,
            &mut routed,
        );
        match runtime::timeout_at(after(start, cfg.timeouts.total), exchange).await {
            Ok(r) => r,
            Err(_) => {
                // The exchange (and the buffers it held) is dropped. If no
                // response byte went out yet the client gets a 504; either
                // way the connection closes.
                tracing::debug!(
                    service = %routed.unwrap_or("unknown"),
                    response_started = ex.bytes_out > 0,
                    "upstream fault answered locally: request total timeout ({:?})",
                    cfg.timeouts.total
                );
                if ex.bytes_out == 0 {
                    if let Some(c) = client_slot.as_mut() {
                        let _ = write_error(c, 504, "request total timeout", true, ex.idle).await;
                    }
                    ex.status = 504;
                } else {
                    ex.status = 0;
                }
                (routed.unwrap_or("unknown"), Next::Close, Vec::new())
            }
        }
    };
    let end = *ex.end.get_or_insert_with(Instant::now);
    shard.record(dir, service, logged.as_ref(), &ex);
    (next, cbuf, end)
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
    client_slot: &mut Option<Conn>,
    dir: Direction,
    head: &RequestHead,
    cbuf: Buf,
    scratch: &mut Scratch,
    ex: &mut Exchange,
    routed: &mut Option<&'c str>,
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
            if head.method == Method::Get && cbuf[head.path.clone()] == *PROBE_PATH {
                let close = !head.keep_alive || head.framing != Framing::None;
                let mut out = Vec::with_capacity(160);
                http1::write_probe_response(shard.app_healthy.get(), close, &mut out);
                ex.status = if shard.app_healthy.get() == Some(false) {
                    503
                } else {
                    200
                };
                let res = write_bounded(client, out, ex.idle).await;
                let mut cbuf = cbuf;
                let next = if close || res.is_err() {
                    Next::Close
                } else {
                    consume(&mut cbuf, head.head_len);
                    Next::KeepAlive
                };
                return ("probe", next, cbuf);
            }
            if let Some(policy) = authorize(shard, table, client, head, &cbuf) {
                let reason = format!("forbidden by policy {policy}");
                let close = !head.keep_alive || head.framing != Framing::None;
                ex.status = 403;
                let res = write_error(client, 403, &reason, close, ex.idle).await;
                let mut cbuf = cbuf;
                let next = if close || res.is_err() {
                    Next::Close
                } else {
                    consume(&mut cbuf, head.head_len);
                    Next::KeepAlive
                };
                return (&cfg.proxy.service, next, cbuf);
            }
            if !rate_admits(shard, &cfg.proxy.service, client, ex.start) {
                return local_error(
                    client,
                    head,
                    cbuf,
                    ErrorKind::RateLimited,
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
                None => (&sr.name, Endpoints::Service(&sr.name, &sr.all, true)),
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
                        (&sr.name, Endpoints::Rule(&sr.name, rule, &sr.all))
                    }
                },
            },
            Ok(Target::Service(svc)) => {
                if svc.endpoints.is_empty() {
                    return local_error(client, head, cbuf, ErrorKind::NoEndpoints, ex, &svc.name)
                        .await;
                }
                (
                    &svc.name,
                    Endpoints::Service(&svc.name, &svc.endpoints, static_mtls(cfg)),
                )
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
    // Kept by the caller: a total timeout drops this future, not the name.
    *routed = Some(service);
    if head.method == Method::Connect {
        let (next, cbuf) = Box::pin(connect_tunnel(
            shard,
            cfg,
            client_slot,
            head,
            cbuf,
            endpoints,
            ex,
        ))
        .await;
        return (service, next, cbuf);
    }
    let mut key = None;
    if dir == Direction::Outbound && !matches!(endpoints, Endpoints::One(_)) {
        if let Some(p) = shard.traffic.policy(service) {
            // Fault injection (testing resilience): a delay, then perhaps
            // an abort, before anything goes upstream.
            if !p.faults.is_empty() {
                let action = p.faults.decide(&mut || shard.random());
                if let Some(d) = action.delay {
                    runtime::sleep(d).await;
                }
                if let Some(status) = action.abort {
                    let client = client_slot.as_mut().expect("client connection present");
                    let close = !head.keep_alive || head.framing != Framing::None;
                    ex.status = status;
                    let res = write_error(client, status, "fault injected", close, ex.idle).await;
                    let mut cbuf = cbuf;
                    let next = if close || res.is_err() {
                        Next::Close
                    } else {
                        consume(&mut cbuf, head.head_len);
                        Next::KeepAlive
                    };
                    return (service, next, cbuf);
                }
            }
            if let Some((target, bp)) = &p.mirror {
                if shard.random() % 10_000 < u64::from(*bp) {
                    mirror::send(shard, table, target, head, &cbuf);
                }
            }
            key = p.hash_key.as_ref().and_then(|k| hash_key(k, head, &cbuf));
        }
    }
    let (next, cbuf) = exchange(
        shard,
        cfg,
        client_slot,
        head,
        cbuf,
        endpoints,
        &policy,
        key,
        scratch,
        ex,
    )
    .await;
    (service, next, cbuf)
}

/// The ring-hash key of a request (a header's value, or a cookie's),
/// hashed; `None` when the request has none (any endpoint then).
fn hash_key(k: &coremesh_api::resource::HashKey, head: &RequestHead, buf: &[u8]) -> Option<u64> {
    use coremesh_api::resource::HashKey;
    let value = match k {
        HashKey::Header(name) => head.header(buf, name)?,
        HashKey::Cookie(name) => {
            head.header(buf, "cookie")?
                .split(|&b| b == b';')
                .find_map(|kv| {
                    let kv = kv.trim_ascii();
                    let eq = kv.iter().position(|&b| b == b'=')?;
                    (&kv[..eq] == name.as_bytes()).then(|| &kv[eq + 1..])
                })?
        }
    };
    Some(crate::balance::stable_hash(value))
}

fn unreachable_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Answers with a local error. The connection stays open only if the request
/// had no body (otherwise its unread body would be taken for the next request).
async fn local_error<'c>(
    client: &mut Conn,
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

impl Shard {
    /// Records a finished request in the stats and the access log.
    fn record(&self, dir: Direction, service: &str, req: Option<&LoggedRequest>, ex: &Exchange) {
        let latency = ex
            .end
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(ex.start);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an `async fn` of three arguments returns,
    /// without calling it.
    fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle keep-alive connection's task is the `serve_http` future (which
    /// `serve` spawns), allocated whole for the connection's life: whatever
    /// a rare phase (a TLS handshake, a TCP relay, a request) keeps inline is
    /// paid by every idle connection. The budget is 1 KiB of RSS per idle
    /// connection (issue 3).
    #[test]
    fn an_idle_connection_task_stays_small() {
        let serve_size = future_size(serve_http);
        let tcp_size = future_size(tcp_service::outbound);
        eprintln!("serve_http future: {serve_size} B, tcp_service::outbound: {tcp_size} B");
        // 8192 B in a debug build with the TLS handshake inline.
        assert!(
            serve_size <= 1024,
            "serve_http future is {serve_size} bytes"
        );
    }
}
