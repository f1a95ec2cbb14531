//! HTTP/2 connections to endpoints: a pooled one with room for another
//! stream ([`crate::shard::h2pool`]), else a new one (h2c to the local app
//! and to plaintext endpoints; h2 over mutual TLS, ALPN `h2`, to a peer
//! proxy, which must present the called service's identity).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{left, race, Either};
use crate::config::Config;
use crate::error::{ErrorKind, ProxyError};
use crate::forward::tries::{Connected, Plan};
use crate::forward::upstream::{Endpoints, Tried};
use crate::runtime;
use crate::shard::h2pool::H2Up;
use crate::shard::Shard;
use crate::tls::poll::{FrameLimits, PollConn};

/// A connection to `addr` with room for one more stream, opened within
/// `deadline` (and `timeouts.connect`) when none is pooled. `mtls`: the
/// service whose peer proxies are called over mutual TLS.
pub(in crate::forward) async fn connection(
    shard: &Shard,
    cfg: &Config,
    addr: SocketAddr,
    mtls: Option<&str>,
    deadline: Instant,
) -> Result<Rc<H2Up>, ProxyError> {
    if let Some(up) = shard.h2.get(addr) {
        if serves(shard, &up, mtls) {
            return Ok(up);
        }
    }
    // Boxed: rare (a new connection), and inline its futures (connect,
    // TLS, the h2 handshake) would grow every stream's task.
    match Box::pin(open(shard, cfg, addr, mtls, deadline, false)).await? {
        Opened::H2(up) => Ok(up),
        Opened::Http1(_) => unreachable!("HTTP/1.1 is offered only when asked for"),
    }
}

/// What a connect to a peer proxy gave.
pub(in crate::forward) enum Opened {
    H2(Rc<H2Up>),
    /// The peer chose HTTP/1.1 by ALPN (a proxy that does not multiplex):
    /// the new connection, for one HTTP/1.1 exchange.
    Http1(crate::conn::Conn),
}

/// As [`connection`], for an HTTP/1.1 request over the multiplexed mesh
/// hop: over mutual TLS it offers `h2` and `http/1.1`, and a peer that
/// picks HTTP/1.1 (an older proxy) gives its connection back as such.
pub(in crate::forward) async fn connection_or_http1(
    shard: &Shard,
    cfg: &Config,
    addr: SocketAddr,
    mtls: Option<&str>,
    deadline: Instant,
) -> Result<Opened, ProxyError> {
    if let Some(up) = shard.h2.get(addr) {
        if serves(shard, &up, mtls) {
            return Ok(Opened::H2(up));
        }
    }
    Box::pin(open(shard, cfg, addr, mtls, deadline, true)).await
}

/// A pooled connection that a connect under way made, or a new one.
/// `http1_too`: over mutual TLS, HTTP/1.1 is offered after h2.
async fn open(
    shard: &Shard,
    cfg: &Config,
    addr: SocketAddr,
    mtls: Option<&str>,
    deadline: Instant,
    http1_too: bool,
) -> Result<Opened, ProxyError> {
    // One connect per endpoint at a time: a burst of streams finding no
    // connection waits for the first connect (and takes the connection it
    // made while it has room) instead of each opening one.
    let _turn = loop {
        if let Some(up) = shard.h2.get(addr) {
            if serves(shard, &up, mtls) {
                return Ok(Opened::H2(up));
            }
        }
        match shard.h2.connect_turn(addr) {
            Ok(turn) => break turn,
            Err(pending) => {
                if runtime::timeout_at(deadline, pending.wait()).await.is_err() {
                    return Err(ProxyError::new(
                        ErrorKind::UpstreamTimeout,
                        "the try's deadline passed while connecting",
                    ));
                }
            }
        }
    };
    let left = left(deadline);
    if left.is_zero() {
        return Err(ProxyError::new(
            ErrorKind::UpstreamTimeout,
            "the try's deadline passed before connecting",
        ));
    }
    let limit = cfg.timeouts.connect.min(left);
    let connect = super::super::upstream::connect_to(cfg, addr, limit);
    let tcp = connect.await.map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::TimedOut {
            ErrorKind::ConnectTimeout
        } else {
            ErrorKind::ConnectFailed
        };
        ProxyError::io(kind, "connecting (HTTP/2)", e)
    })?;
    let conn = match mtls {
        None => crate::conn::Conn::Plain(tcp),
        Some(service) => {
            runtime::watch_peer(tcp.raw_fd());
            use crate::tls::identity::{ALPN_H2, ALPN_HTTP1};
            let alpns: &[&[u8]] = if http1_too {
                &[ALPN_H2, ALPN_HTTP1]
            } else {
                &[ALPN_H2]
            };
            let conn = Box::pin(super::super::upstream::connect_tls(
                shard, cfg, tcp, service, addr, alpns,
            ))
            .await?;
            if http1_too && !conn.alpn_is(ALPN_H2) {
                shard.h2.note_http1_only(addr, Instant::now());
                return Ok(Opened::Http1(conn));
            }
            conn
        }
    };
    let peer = conn.peer_id().cloned();
    let io = PollConn::from_conn(conn, false, FrameLimits::from(&cfg.limits.h2))
        .map_err(|e| ProxyError::io(ErrorKind::ConnectFailed, "HTTP/2 upstream", e))?;
    let handshake = client_builder(&cfg.limits.h2).handshake::<_, Bytes>(io);
    let (send, connection) = match runtime::timeout(limit, handshake).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            return Err(ProxyError::io(
                ErrorKind::ConnectFailed,
                "HTTP/2 handshake with the upstream",
                std::io::Error::other(e),
            ))
        }
        Err(_) => {
            return Err(ProxyError::new(
                ErrorKind::ConnectTimeout,
                "HTTP/2 handshake with the upstream",
            ))
        }
    };
    let up = Rc::new(H2Up {
        send,
        alive: Cell::new(true),
        streams: Cell::new(0),
        served: Cell::new(0),
        idle_since: Cell::new(Instant::now()),
        peer,
    });
    shard.h2.add(addr, up.clone());
    runtime::spawn_local(drive(
        connection,
        up.clone(),
        cfg.upstream.pool_idle_timeout,
    ));
    Ok(Opened::H2(up))
}

/// The client side of an upstream connection (windows from `[limits.h2]`).
fn client_builder(l: &crate::config::H2Limits) -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(l.stream_window)
        .initial_connection_window_size(l.upstream_connection_window)
        .max_send_buffer_size(l.stream_window as usize)
        .enable_push(false);
    b
}

/// Whether a pooled connection suits a request: plaintext for plaintext;
/// for mutual TLS, verified as the service the request is for.
fn serves(shard: &Shard, up: &H2Up, mtls: Option<&str>) -> bool {
    match (mtls, up.peer.as_deref()) {
        (None, peer) => peer.is_none(),
        (Some(service), Some(id)) => shard.tls().is_some_and(|t| {
            crate::tls::identity::service_of(id, &t.identity.trust_domain) == Some(service)
        }),
        (Some(_), None) => false,
    }
}

/// Drives one upstream connection until it ends, or until it has carried
/// no stream for `idle` (`[upstream] pool_idle_timeout`).
async fn drive(connection: h2::client::Connection<PollConn, Bytes>, up: Rc<H2Up>, idle: Duration) {
    let mut connection = std::pin::pin!(connection);
    let tick = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let timer = std::pin::pin!(runtime::sleep(tick));
        match race(connection.as_mut(), timer).await {
            Either::Left(res) => {
                if let Err(e) = res {
                    tracing::debug!("HTTP/2 upstream connection ended: {e}");
                }
                break;
            }
            Either::Right(()) => {
                if up.streams.get() == 0 && up.idle_since.get().elapsed() >= idle {
                    break;
                }
            }
        }
    }
    up.alive.set(false);
}

/// A connection for one try of a request (forward/tries.rs): an endpoint
/// `endpoints` picks, and a pooled h2 connection to it with room for a
/// stream, or a new one by `deadline`. A failed connect counts against
/// the endpoint.
pub(in crate::forward) async fn for_try(
    shard: &Shard,
    cfg: &Config,
    endpoints: &Endpoints<'_>,
    tried: &mut Tried,
    plan: &Plan<'_>,
    deadline: Instant,
) -> Result<Connected<Rc<H2Up>>, ProxyError> {
    let (addr, backend) = endpoints.pick(shard, tried, plan.key, plan.now);
    tried.note(addr, backend);
    match connection(shard, cfg, addr, endpoints.mtls(), deadline).await {
        Ok(conn) => Ok(Connected {
            reused: conn.served.get() > 0,
            conn,
            addr,
        }),
        Err(e) => {
            if endpoints.tracked() {
                shard.outcomes.record(addr, false);
                shard.endpoint_outcome(addr, Some(e.kind), Instant::now());
            }
            Err(e)
        }
    }
}
