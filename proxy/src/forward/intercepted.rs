//! Connections nftables redirected to the outbound listener (`[intercept]`):
//! the app called an address, not its proxy, and the original destination
//! says what it called.
//!
//! ```text
//!  original destination ──▶ a service's `port` at an endpoint's host or a virtual IP
//!        ├─ HTTP service ──▶ serve_http with the service fixed (routes, retries, mTLS as any request)
//!        ├─ TCP service  ──▶ tcp_service::outbound (mTLS byte stream)
//!        └─ none         ──▶ pass through as plain TCP, or close (MeshConfig outboundPolicy: deny)
//! ```
//!
//! The protocol is the service's (`protocol: tcp` or HTTP), known before a
//! byte is read; an HTTP service's connection that does not speak HTTP is
//! answered 400 like any other.

use std::net::SocketAddr;

use super::*;

/// Serves a connection accepted on the outbound listener of a proxy with
/// `[intercept]`. A connection nothing redirected (the app called the
/// listener itself) is served as any outbound connection.
pub fn serve(shard: Rc<Shard>, tcp: TcpStream) {
    let dst = match crate::intercept::original_dst(tcp.raw_fd()) {
        Ok(Some(dst)) => dst,
        Ok(None) => return super::serve(shard, tcp, Direction::Outbound),
        Err(e) => {
            crate::lograte::log_limited!(
                tracing::Level::WARN,
                "cannot read an intercepted connection's original destination ({e}); serving it as addressed to the outbound listener"
            );
            return super::serve(shard, tcp, Direction::Outbound);
        }
    };
    let table = shard.routes();
    let found = table.as_ref().and_then(|t| {
        t.service_at(dst)
            .map(|s| (Arc::<str>::from(s.name.as_str()), s.tcp))
    });
    match found {
        Some((service, true)) => {
            runtime::spawn_local(tcp_service::outbound(shard, tcp, service));
        }
        Some((service, false)) => super::serve_as(shard, tcp, service),
        None if table.as_ref().is_some_and(|t| t.outbound_deny) => {
            crate::lograte::log_limited!(
                tracing::Level::INFO,
                %dst,
                "refused an intercepted connection: its destination is no mesh service and the MeshConfig's outboundPolicy is deny"
            );
            shard.conn_opened(Direction::Outbound);
            shard.conn_closed(Direction::Outbound);
        }
        None => runtime::spawn_local(pass_through(shard, tcp, dst)),
    }
}

/// Relays a connection to its original destination untouched (plain TCP,
/// on a marked socket so the ruleset lets it out), both ways with
/// half-close, until `timeouts.idle` without traffic. Counted as TCP
/// service `passthrough`.
async fn pass_through(shard: Rc<Shard>, tcp: TcpStream, dst: SocketAddr) {
    let cfg = shard.config();
    tcp.set_nodelay();
    shard.conn_opened(Direction::Outbound);
    let Some(charge) = shard
        .budget
        .charge_relay(cfg.limits.budgets(), "passthrough")
    else {
        shard.conn_closed(Direction::Outbound);
        return;
    };
    match TcpStream::connect(dst, cfg.timeouts.connect).await {
        Ok(up) => {
            let _charge = charge;
            let bufs = (shard.bufs.get(), shard.bufs.get());
            let (sent, received) =
                Conn::tunnel(Conn::Plain(tcp), Conn::Plain(up), bufs, cfg.timeouts.idle).await;
            shard
                .stats
                .borrow_mut()
                .mesh
                .tcp(Direction::Outbound, "passthrough", sent, received);
        }
        Err(e) => {
            crate::lograte::log_limited!(
                tracing::Level::INFO,
                %dst,
                "intercepted connection passed through: cannot reach its destination: {e}"
            );
        }
    }
    shard.conn_closed(Direction::Outbound);
}
