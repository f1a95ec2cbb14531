//! TCP services (`protocol: tcp`): opaque byte streams between an app and a
//! database or cache, carried over mutual TLS between the proxies.
//!
//! ```text
//!  app ──TCP──▶ [[outbound.tcp]] listener ══mTLS (ALPN coremesh-tcp)══▶ peer inbound ──TCP──▶ its app
//! ```
//!
//! The outbound side picks an endpoint of the service like an HTTP request
//! would (round-robin over the service's endpoints), and the peer must
//! present that service's identity. The inbound side checks the caller
//! against the service's AccessPolicy by identity alone (there is no method
//! or path). Both relay both ways with half-close, bounded by
//! `timeouts.idle`, and count connections and bytes.

use std::net::SocketAddr;

use super::*;
use crate::tls::identity::{server_name, ALPN_TCP};
use crate::tls::{Session, TlsStream};

/// A caller's TCP stream arrived on the inbound port: authorize it, then
/// relay it to the local app.
pub async fn inbound(shard: &Shard, cfg: &Config, t: TlsStream) {
    let start = std::time::Instant::now();
    let service = cfg.proxy.service.as_str();
    let caller = t.peer_id().cloned();
    if let Some(deny) = super::authz_tcp(shard, caller.as_deref()) {
        tracing::info!(caller = ?caller, policy = %deny, "TCP connection denied");
        let mut t = t;
        t.shutdown_write().await;
        return;
    }
    let Some(app) = cfg.inbound.as_ref().map(|i| &i.app) else {
        return;
    };
    let up = match super::upstream::connect_to(cfg, app.key(), cfg.timeouts.connect).await {
        Ok(c) => c,
        Err(e) => {
            crate::lograte::log_limited!(tracing::Level::WARN, %app, "TCP service: cannot reach the local app: {e}");
            record_edge(
                shard,
                Direction::Inbound,
                (super::phases::peer_service(caller.as_deref()), service),
                None,
            );
            return;
        }
    };
    let Some(_charge) = shard
        .budget
        .charge_relay(cfg.limits.budgets(), "TCP service")
    else {
        return;
    };
    let bufs = (shard.bufs.get(), shard.bufs.get());
    let (to_app, from_app) =
        Conn::tunnel(Conn::Tls(t), Conn::Plain(up), bufs, cfg.timeouts.idle).await;
    shard
        .stats
        .borrow_mut()
        .mesh
        .tcp(Direction::Inbound, service, to_app, from_app);
    record_edge(
        shard,
        Direction::Inbound,
        (super::phases::peer_service(caller.as_deref()), service),
        Some((start.elapsed(), to_app, from_app)),
    );
}

/// A TCP service connection on its edge: `None` when it never reached the
/// service (a failure), else its duration and bytes each way.
fn record_edge(
    shard: &Shard,
    dir: Direction,
    (source, destination): (&str, &str),
    done: Option<(std::time::Duration, u64, u64)>,
) {
    use crate::stats::edge::{EdgeRef, Outcome};
    let e = EdgeRef {
        dir,
        source,
        destination,
        route: "",
        subset: "",
        protocol: coremesh_api::wire::EdgeProtocol::Tcp,
    };
    let (outcome, (duration, sent, received)) = match done {
        Some(d) => (Outcome::Tcp(true), d),
        None => (Outcome::Tcp(false), (std::time::Duration::ZERO, 0, 0)),
    };
    shard
        .stats
        .borrow_mut()
        .edges
        .record(&e, outcome, duration, sent, received);
}

/// The local app connected to the listener of TCP service `service`: open
/// mutual TLS to one of its endpoints and relay.
pub async fn outbound(shard: Rc<Shard>, tcp: TcpStream, service: std::sync::Arc<str>) {
    let start = std::time::Instant::now();
    let cfg = shard.config();
    tcp.set_nodelay();
    shard.conn_opened(Direction::Outbound);
    let Some(_charge) = shard
        .budget
        .charge_relay(cfg.limits.budgets(), "TCP service")
    else {
        shard.conn_closed(Direction::Outbound);
        return;
    };
    let Some(up) = connect(&shard, &cfg, &service).await else {
        record_edge(
            &shard,
            Direction::Outbound,
            (&cfg.proxy.service, &service),
            None,
        );
        shard.conn_closed(Direction::Outbound);
        return;
    };
    let bufs = (shard.bufs.get(), shard.bufs.get());
    let (sent, received) = Conn::tunnel(Conn::Plain(tcp), up, bufs, cfg.timeouts.idle).await;
    shard
        .stats
        .borrow_mut()
        .mesh
        .tcp(Direction::Outbound, &service, sent, received);
    record_edge(
        &shard,
        Direction::Outbound,
        (&cfg.proxy.service, &service),
        Some((start.elapsed(), sent, received)),
    );
    shard.conn_closed(Direction::Outbound);
}

/// Tries the service's endpoints in round-robin order until one completes
/// the handshake as `service`.
async fn connect(shard: &Shard, cfg: &Config, service: &str) -> Option<Conn> {
    let endpoints: Vec<SocketAddr> = match shard.routes() {
        Some(t) => t.service(service.as_bytes()).map(|s| s.all.clone()),
        None => None,
    }
    .or_else(|| {
        cfg.services
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(service))
            .map(|s| s.endpoints.clone())
    })
    .unwrap_or_default();
    if endpoints.is_empty() {
        crate::lograte::log_limited!(tracing::Level::WARN, %service, "TCP service has no endpoints; closing the connection");
        return None;
    }
    let Some(tls) = shard.tls() else {
        crate::lograte::log_limited!(tracing::Level::WARN, %service, "TCP service: this proxy has no certificate yet");
        return None;
    };
    let start = shard.next_rr(service);
    for i in 0..endpoints.len().min(3) {
        let addr = endpoints[(start + i) % endpoints.len()];
        let tcp = match TcpStream::connect(addr, cfg.timeouts.connect).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%addr, %service, "TCP service connect failed: {e}");
                continue;
            }
        };
        let name = server_name(service, addr)?;
        let session = match Session::client_with_alpn(tls.client.clone(), name, ALPN_TCP) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot start a TLS session: {e}");
                return None;
            }
        };
        match TlsStream::handshake(tcp, session, cfg.timeouts.connect, &shard.peers).await {
            Ok(t) => {
                shard
                    .stats
                    .borrow_mut()
                    .mesh
                    .handshake(Direction::Outbound, t.resumed());
                return Some(Conn::Tls(t));
            }
            Err(e) => {
                let mismatch = e
                    .get_ref()
                    .and_then(|x| x.downcast_ref::<crate::tls::TlsError>())
                    .is_some_and(|t| t.identity_mismatch);
                shard
                    .stats
                    .borrow_mut()
                    .mesh
                    .failure(Direction::Outbound, mismatch);
                crate::lograte::log_limited!(tracing::Level::WARN, %addr, %service, "TCP service: mutual TLS with the peer failed: {e}");
            }
        }
    }
    None
}
