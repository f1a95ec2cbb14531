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

use crate::config::Config;
use crate::conn::Conn;
use crate::error::{Answer, ErrorKind, ProxyError};
use crate::http1::{
    self, ChunkedDecoder, Framing, HeadPlan, Method, RequestHead, ResponseHead, Version,
};
use crate::route::Target;
use crate::routing::RoutingTable;
use crate::runtime::{self, Buf, IoVecs, Linger, TcpStream};
use crate::shard::buf::BUF_SIZE;
use crate::shard::Shard;
use crate::stats::Direction;

mod answer;
mod ctx;
mod exchange;
mod h2;
pub mod intercepted;
mod mirror;
mod phases;
mod relay;
mod request;
pub(crate) mod request_id;
pub mod tcp_service;
pub(super) mod to_h2;
pub(super) mod tries;
mod upstream;

pub use crate::shard::probe::PROBE_PATH;

use answer::{write_answer, write_bounded};
use ctx::RequestCtx;
use request::handle;
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
    /// The `x-request-id` the proxy generated for the current request
    /// (`None`: the request had its own); see request_id.rs.
    request_id: Option<request_id::Generated>,
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
    /// Relay both ways until either side closes (after `CONNECT` or a 101),
    /// then close.
    Tunnel(Box<ctx::Tunnel>),
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

use crate::attempt::after;

fn limits(cfg: &Config) -> http1::Limits {
    http1::Limits {
        max_head_bytes: cfg.limits.max_head_bytes,
        max_request_line: cfg.limits.max_request_line,
        max_headers: cfg.limits.max_headers,
    }
}

/// What the upstream of a request speaks, when the configuration says
/// (`[inbound] app_protocol` for the local app, a static service's
/// `protocol` for its endpoints); `Auto`: the client's protocol.
fn upstream_protocol(
    cfg: &Config,
    dir: Direction,
    endpoints: &Endpoints<'_>,
) -> crate::config::AppProtocol {
    use crate::config::AppProtocol;
    match (dir, endpoints) {
        (Direction::Inbound, Endpoints::One(_)) => cfg
            .inbound
            .as_ref()
            .map_or(AppProtocol::Auto, |i| i.app_protocol),
        (Direction::Outbound, Endpoints::Service(name, _, false)) => cfg
            .services
            .iter()
            .find(|s| s.name == *name)
            .map_or(AppProtocol::Auto, |s| s.protocol),
        _ => AppProtocol::Auto,
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
    match crate::tls::TlsStream::handshake(tcp, session, cfg.timeouts.head_read, &shard.peers).await
    {
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
                Some(client) => Box::pin(serve_http(shard, client, dir, None)).await,
                None => shard.conn_closed(dir),
            }
        });
    } else {
        crate::runtime::spawn_local(serve_http(shard, Conn::Plain(tcp), dir, None));
    }
}

/// Serves an outbound HTTP connection whose every request goes to
/// `service` whatever its authority: the app called one of the service's
/// addresses, and nftables redirected the connection here (see
/// intercepted.rs).
pub fn serve_as(shard: Rc<Shard>, tcp: TcpStream, service: Arc<str>) {
    tcp.set_nodelay();
    shard.conn_opened(Direction::Outbound);
    crate::runtime::spawn_local(serve_http(
        shard,
        Conn::Plain(tcp),
        Direction::Outbound,
        Some(service),
    ));
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
        Some(t) if t.alpn_is(crate::tls::identity::ALPN_H2) => {
            Box::pin(h2::serve_h2(
                shard.clone(),
                Conn::Tls(t),
                Direction::Inbound,
                None,
            ))
            .await;
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
///
/// `dest`: the service every request goes to (an intercepted connection);
/// `None`: each request's authority names it.
async fn serve_http(shard: Rc<Shard>, client: Conn, dir: Direction, dest: Option<Arc<str>>) {
    let mut client = Some(client);
    let mut idle_since = Instant::now();
    let mut served = 0u64;
    // Whether the client may still be sending when the proxy closes (see
    // `Conn::close_lingering`).
    let mut may_send = false;
    while let Some(c) = client.as_mut() {
        // Draining, the connection still waits for one more request (the
        // drain shuts idle connections after a grace, see shard/thread.rs):
        // its last response went out before the drain began, without
        // `Connection: close`, so its client may be sending already.
        c.release_idle_state();
        let deadline = idle_since + shard.config().timeouts.keepalive_idle;
        let guard = shard.idle.enter(c.raw_fd(), deadline);
        let woke = c.readable().await;
        drop(guard);
        if woke.is_err() {
            break;
        }
        if let (0, Conn::Plain(tcp)) = (served, &*c) {
            // Boxed: once per connection, and only h2 connections keep it.
            let head_read = shard.config().timeouts.head_read;
            if Box::pin(h2::detect(tcp, head_read)).await {
                if let Some(c) = client.take() {
                    Box::pin(h2::serve_h2(shard.clone(), c, dir, dest.clone())).await;
                }
                break;
            }
        }
        let busy = Box::pin(serve_busy(
            &shard,
            &mut client,
            (dir, dest.as_deref()),
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
    (dir, dest): (Direction, Option<&str>),
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
                let answer = Answer::Refused {
                    status: 408,
                    reason: "request head timeout",
                };
                let _ = write_answer(c, &answer, true, cfg.timeouts.idle).await;
                shard.record_local(dir, 408);
                *may_send = true;
                break false;
            }
            HeadRead::Reject(e) => {
                let answer = Answer::Refused {
                    status: e.status,
                    reason: e.reason,
                };
                let _ = write_answer(c, &answer, true, cfg.timeouts.idle).await;
                shard.record_local(dir, e.status);
                *may_send = true;
                break false;
            }
        };
        *may_send = !matches!(head.framing, Framing::None | Framing::Length(0));
        let b = buf.take().unwrap_or_default();
        shard.in_flight.set(shard.in_flight.get() + 1);
        let (next, b, end) = handle(
            shard,
            &cfg,
            client,
            (dir, dest),
            (head, start),
            b,
            &mut scratch,
        )
        .await;
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
            // The response promised keep-alive before the drain began: the
            // client may reuse the connection at once, so it waits for that
            // request (the drain shuts it after its idle grace) instead of
            // closing under it.
            Next::KeepAlive if b.is_empty() && shard.draining.get() => {
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
    // A head outgrowing the pooled buffer is charged while it is read (the
    // request's own charge takes over once it is parsed): many slow clients
    // with large heads would otherwise hold max_head_bytes each, unbudgeted.
    let mut growth: Option<crate::shard::budget::Charge<'_>>;
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
                let grow = limits.max_head_bytes.saturating_sub(b.capacity());
                let budgets = cfg.limits.budgets();
                growth = crate::shard::budget::Charge::new(&shard.budget, None, grow, budgets);
                if growth.is_none() {
                    crate::shard::budget::REFUSALS.count(crate::shard::budget::Refused::Request);
                    *slot = Some(b);
                    return HeadRead::Reject(http1::ParseError {
                        status: 503,
                        reason: ErrorKind::BufferBudget.text(),
                    });
                }
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

/// Drops the first `n` bytes of `b`, keeping what follows (pipelined bytes).
fn consume(b: &mut Buf, n: usize) {
    if n >= b.len() {
        b.clear();
    } else {
        b.copy_within(n.., 0);
        b.truncate(b.len() - n);
    }
}

#[cfg(test)]
mod tests;
