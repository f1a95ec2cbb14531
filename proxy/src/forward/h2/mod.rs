//! HTTP/2 (and gRPC over it) on the proxy's listeners, beside HTTP/1.1.
//!
//! * Detection: a plaintext connection whose first bytes are the HTTP/2
//!   connection preface is h2 with prior knowledge ([`detect`]); over mutual
//!   TLS, ALPN `h2` says so.
//! * A client connection ([`serve_h2`]) is one task driving the `h2`
//!   crate's server connection; each stream is a task of its own
//!   ([`stream::serve_stream`]) that goes through the same phases as an
//!   HTTP/1.1 request (authorize or route, the tries, relay, record), with
//!   the policy crate deciding.
//! * Upstream ([`upstream`]), requests ride pooled h2 connections per shard
//!   (h2c to the local app, h2 over mutual TLS to peer proxies), each
//!   request balanced on its own: the streams of one client connection
//!   spread over the endpoints by the route's weights.
//!
//! Everything runs on the shard that accepted the connection; the `h2`
//! crate reaches the socket through the runtime's readiness adapters
//! ([`crate::tls::poll::PollConn`]).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::conn::Conn;
use crate::runtime;
use crate::shard::Shard;
use crate::stats::Direction;
use crate::tls::poll::{FrameLimits, PollConn, SentCounts};

mod answer;
mod body;
pub(super) use body::send_all;
mod stream;
pub(super) mod upstream;

/// The request field that tells a peer proxy an h2 stream carries an
/// HTTP/1.1 request (the multiplexed mesh hop): its app gets HTTP/1.1
/// again, whatever the stream's own protocol. Its value is the client's
/// HTTP version ("1.1" or "1.0"). Set by the sending proxy only; a
/// client's own is dropped.
pub(in crate::forward) const CARRIED_HTTP1: &str = "coremesh-http1";

/// The client connection preface (RFC 9113, section 3.4).
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a plaintext connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detect {
    Http2,
    Http1,
    /// A prefix of the preface so far: wait for more.
    NeedMore,
}

/// Classifies the bytes at the start of a connection.
pub(super) fn classify(first: &[u8]) -> Detect {
    let n = first.len().min(PREFACE.len());
    if first[..n] != PREFACE[..n] {
        Detect::Http1
    } else if n == PREFACE.len() {
        Detect::Http2
    } else {
        Detect::NeedMore
    }
}

/// The connection a stream came on, as its phases need it.
pub(super) struct ConnInfo {
    pub(super) dir: Direction,
    pub(super) tls: bool,
    /// The caller's SPIFFE ID (mutual TLS).
    pub(super) peer: Option<Rc<str>>,
    /// The service every request goes to (an intercepted connection).
    pub(super) dest: Option<Arc<str>>,
    /// What its streams hold together, against `[limits]
    /// connection_buffer_budget` (shard/budget.rs).
    pub(super) buffers: Rc<crate::shard::budget::ConnAccount>,
}

/// The server side of a client connection, held to `[limits.h2]` (and
/// the header list to `max_head_bytes`).
fn server_builder(cfg: &crate::config::Config) -> h2::server::Builder {
    let l = &cfg.limits.h2;
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(l.max_concurrent_streams)
        .initial_window_size(l.stream_window)
        .initial_connection_window_size(l.connection_window)
        .max_header_list_size(cfg.limits.max_head_bytes as u32)
        .max_send_buffer_size(l.stream_window as usize)
        .max_pending_accept_reset_streams(l.max_pending_resets)
        .max_local_error_reset_streams(Some(l.max_local_resets));
    b
}

/// Whether a plaintext client connection, readable now, speaks HTTP/2 with
/// prior knowledge. A preface that arrives in pieces is waited for, within
/// `limit` (`timeouts.head_read`); anything else is HTTP/1.1's to read.
pub(super) async fn detect(c: &crate::runtime::TcpStream, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    let mut first = [0u8; 24];
    loop {
        let n = c.peek(&mut first);
        if n == 0 {
            // EOF or an error: the HTTP/1.1 loop reads it and closes.
            return false;
        }
        match classify(&first[..n]) {
            Detect::Http2 => return true,
            Detect::Http1 => return false,
            Detect::NeedMore if Instant::now() >= until => return false,
            Detect::NeedMore => runtime::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Serves HTTP/2 on a client connection until it closes: the preface and
/// SETTINGS within `timeouts.head_read`, then streams until the client
/// goes away, the connection idles `timeouts.keepalive_idle` with no
/// stream open, or the shard drains (GOAWAY, then the open streams finish).
/// The caller counts the connection closed.
pub(super) async fn serve_h2(shard: Rc<Shard>, conn: Conn, dir: Direction, dest: Option<Arc<str>>) {
    let info = Rc::new(ConnInfo {
        dir,
        tls: conn.is_tls(),
        peer: conn.peer_id().cloned(),
        dest,
        buffers: Rc::default(),
    });
    let limits = FrameLimits::from(&shard.config().limits.h2);
    match PollConn::from_conn(conn, true, limits) {
        Ok(io) => drive_server(&shard, io, info).await,
        Err(e) => tracing::warn!("cannot serve HTTP/2 on a connection: {e}"),
    }
}

async fn drive_server(shard: &Rc<Shard>, io: PollConn, info: Rc<ConnInfo>) {
    let cfg = shard.config();
    let sent = io.sent_counts();
    let handshake = server_builder(&cfg).handshake::<_, Bytes>(io);
    let mut conn = match runtime::timeout(cfg.timeouts.head_read, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!("HTTP/2 handshake failed: {e}");
            connection_ended(shard, &e, sent.as_deref());
            return;
        }
        Err(_) => {
            tracing::debug!("HTTP/2 preface did not arrive in time");
            shard
                .stats
                .borrow_mut()
                .h2
                .connection_error("timeout", "no_preface");
            return;
        }
    };
    shard.stats.borrow_mut().h2.connection(info.dir);
    let active = Rc::new(StreamCount::default());
    let mut drain = std::pin::pin!(shard.drain_watch());
    let mut going_away = false;
    loop {
        let event = {
            let accept = std::pin::pin!(conn.accept());
            if going_away {
                Either::Left(accept.await)
            } else {
                // With streams open, the idle clock has not started: look
                // again after a whole keepalive_idle.
                let wait = if active.open.get() > 0 {
                    cfg.timeouts.keepalive_idle
                } else {
                    left(active.idle_since.get() + cfg.timeouts.keepalive_idle)
                };
                let timer = std::pin::pin!(runtime::sleep(wait));
                let other = std::pin::pin!(race(drain.as_mut(), timer));
                race(accept, other).await
            }
        };
        count_refused(shard, info.dir, sent.as_deref());
        match event {
            Either::Left(Some(Ok((req, respond)))) => {
                let slot = StreamGuard::new(active.clone());
                runtime::spawn_local(stream::serve_stream(
                    shard.clone(),
                    info.clone(),
                    req,
                    respond,
                    slot,
                ));
            }
            Either::Left(Some(Err(e))) => {
                tracing::debug!("HTTP/2 connection ended: {e}");
                connection_ended(shard, &e, sent.as_deref());
                break;
            }
            Either::Left(None) => break,
            Either::Right(Either::Left(())) => {
                // The drain: no new streams; the open ones finish.
                conn.graceful_shutdown();
                going_away = true;
            }
            Either::Right(Either::Right(())) => {
                if active.open.get() == 0
                    && active.idle_since.get() + cfg.timeouts.keepalive_idle <= Instant::now()
                {
                    conn.graceful_shutdown();
                    going_away = true;
                }
            }
        }
    }
    count_refused(shard, info.dir, sent.as_deref());
}

/// Counts a client connection the proxy ended for an error of the
/// client's (a GOAWAY it sent: rapid reset, floods, malformed frames).
fn connection_ended(shard: &Shard, e: &h2::Error, sent: Option<&SentCounts>) {
    let flood = e
        .get_io()
        .and_then(|io| crate::tls::poll::Flood::of(&io.to_string()));
    if let Some(reason) = flood {
        crate::lograte::log_limited!(
            tracing::Level::INFO,
            "closed an HTTP/2 connection: {reason} (more frames than [limits.h2] allows in a second)"
        );
        let cause = match reason {
            "SETTINGS_FLOOD" => "settings_flood",
            "PING_FLOOD" => "ping_flood",
            _ => "empty_frame_flood",
        };
        shard.stats.borrow_mut().h2.connection_error(reason, cause);
        return;
    }
    if e.is_remote() || e.is_io() {
        return;
    }
    if let Some(r) = e.reason() {
        let debug = sent.map(|s| s.goaway_debug.take()).unwrap_or_default();
        let cause = goaway_cause(&debug);
        if r == h2::Reason::ENHANCE_YOUR_CALM {
            crate::lograte::log_limited!(
                tracing::Level::INFO,
                "closed an HTTP/2 connection with ENHANCE_YOUR_CALM: {cause} (see [limits.h2])"
            );
        }
        shard
            .stats
            .borrow_mut()
            .h2
            .connection_error(reason_name(r), cause);
    }
}

/// Which abuse a GOAWAY the `h2` crate sent was for, from its debug data.
fn goaway_cause(debug: &[u8]) -> &'static str {
    [
        ("too_many_resets", "rapid_reset"),
        ("too_many_internal_resets", "local_resets"),
        ("too_many_continuations", "continuation_flood"),
        ("too_many_data_frames", "small_data_frames"),
    ]
    .into_iter()
    .find(|(name, _)| debug == name.as_bytes())
    .map_or("protocol", |(_, cause)| cause)
}

/// Counts the streams the connection refused since the last look (a
/// client beyond `max_concurrent_streams`).
fn count_refused(shard: &Shard, dir: Direction, sent: Option<&SentCounts>) {
    let n = sent.map_or(0, |s| s.refused.take());
    if n > 0 {
        shard.stats.borrow_mut().h2.refused(dir, n);
    }
}

/// An HTTP/2 error code's name (RFC 9113, section 7).
pub(super) fn reason_name(r: h2::Reason) -> &'static str {
    use h2::Reason as R;
    match r {
        R::NO_ERROR => "NO_ERROR",
        R::PROTOCOL_ERROR => "PROTOCOL_ERROR",
        R::INTERNAL_ERROR => "INTERNAL_ERROR",
        R::FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR",
        R::SETTINGS_TIMEOUT => "SETTINGS_TIMEOUT",
        R::STREAM_CLOSED => "STREAM_CLOSED",
        R::FRAME_SIZE_ERROR => "FRAME_SIZE_ERROR",
        R::REFUSED_STREAM => "REFUSED_STREAM",
        R::CANCEL => "CANCEL",
        R::COMPRESSION_ERROR => "COMPRESSION_ERROR",
        R::CONNECT_ERROR => "CONNECT_ERROR",
        R::ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM",
        R::INADEQUATE_SECURITY => "INADEQUATE_SECURITY",
        R::HTTP_1_1_REQUIRED => "HTTP_1_1_REQUIRED",
        _ => "OTHER",
    }
}

/// The streams open on a client connection, and since when none is.
struct StreamCount {
    open: Cell<usize>,
    idle_since: Cell<Instant>,
}

impl Default for StreamCount {
    fn default() -> Self {
        StreamCount {
            open: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
        }
    }
}

/// A stream's place in its connection's [`StreamCount`].
pub(super) struct StreamGuard(Rc<StreamCount>);

impl StreamGuard {
    fn new(c: Rc<StreamCount>) -> StreamGuard {
        c.open.set(c.open.get() + 1);
        StreamGuard(c)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let n = self.0.open.get() - 1;
        self.0.open.set(n);
        if n == 0 {
            self.0.idle_since.set(Instant::now());
        }
    }
}

/// Which of two futures finished first.
pub(super) enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls both futures (the first one first) until one completes; the
/// other stays pinned where its caller keeps it, to be polled again.
pub(super) async fn race<A: Future, B: Future>(
    mut a: Pin<&mut A>,
    mut b: Pin<&mut B>,
) -> Either<A::Output, B::Output> {
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    })
    .await
}

/// A deadline as a duration from now (zero once passed).
pub(super) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests;

/// An h2 stream's trace context (crate::trace): the client's
/// `traceparent` (or B3) continued with this hop's span, or a new trace.
/// The fields the upstream gets are set in `Call::upstream_request`.
pub(super) fn trace_hop(
    shard: &Shard,
    cfg: &crate::config::Config,
    table: Option<&crate::routing::RoutingTable>,
    parts: &http::request::Parts,
    info: &ConnInfo,
) -> crate::trace::Hop {
    use crate::trace;
    let h = &parts.headers;
    let ratio = trace::ratio(cfg, table);
    let mut hop = trace::Hop::begin(
        trace::incoming_h2(h),
        trace::decision_h2(h),
        ratio,
        &mut || shard.random(),
    );
    if let Some(rec) = hop.rec.as_mut() {
        rec.method = parts.method.as_str().to_string();
        rec.path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        rec.protocol = "HTTP/2";
        rec.caller = info.peer.as_deref().map(str::to_string);
        if let Some(ts) = h.get("tracestate") {
            rec.tracestate = String::from_utf8_lossy(ts.as_bytes()).into_owned();
        }
    }
    hop
}
