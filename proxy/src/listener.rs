//! Listening sockets.
//!
//! Each listener is one socket, bound once at start-up without
//! `SO_REUSEPORT`, so a second process on the same address fails with
//! "address in use" instead of silently sharing the port. With one shard the
//! shard accepts on it directly; with more, the agent accepts and hands each
//! connection to the shard with the fewest open connections (docs/design.md: a
//! shared socket with an accept per shard spread 5 connections 5/0).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use socket2::{Domain, Socket, Type};

use crate::msg::{Role, ShardHandle, ShardMsg};

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 4096;

/// A listener that could not be set up: the address, the config key that
/// names it, and the socket error.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process holds the address (`EADDRINUSE`).
    #[error("cannot listen on {addr} ({what}): address in use, another process is bound to it ({source})")]
    InUse {
        addr: SocketAddr,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Socket {
        addr: SocketAddr,
        what: String,
        #[source]
        source: io::Error,
    },
}

impl BindError {
    fn new(addr: SocketAddr, what: &str, source: io::Error) -> BindError {
        let what = what.to_string();
        if source.kind() == io::ErrorKind::AddrInUse {
            BindError::InUse { addr, what, source }
        } else {
            BindError::Socket { addr, what, source }
        }
    }
}

/// Binds a listening socket; `what` names the config key for the error.
pub fn bind(addr: SocketAddr, what: &str) -> Result<std::net::TcpListener, BindError> {
    let explain = |e: io::Error| BindError::new(addr, what, e);
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(explain)?;
    // SO_REUSEADDR only lets a restarted proxy bind while old connections sit
    // in TIME_WAIT; it never lets two live listeners share the port.
    s.set_reuse_address(true).map_err(explain)?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(explain)?;
    }
    s.bind(&addr.into()).map_err(explain)?;
    s.listen(BACKLOG).map_err(explain)?;
    s.set_nonblocking(true).map_err(explain)?;
    Ok(s.into())
}

/// Accepts on the agent thread and hands connections to the least loaded
/// shard (one message per connection, never per request).
pub async fn acceptor(l: std::net::TcpListener, role: Role, shards: Vec<ShardHandle>) {
    let l = match tokio::net::TcpListener::from_std(l) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot accept on the {} listener: {e}", role.describe());
            return;
        }
    };
    let mut turn = 0usize;
    loop {
        let stream = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                crate::lograte::log_limited!(
                    tracing::Level::WARN,
                    "accept failed on the {} listener: {e}",
                    role.describe()
                );
                let pause = crate::stats::accept::ACCEPT_FAILURES.count(&e);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot hand over a connection: {e}");
                continue;
            }
        };
        // Fewest open connections wins; ties rotate so a burst of new
        // connections alternates between equally loaded shards.
        turn = turn.wrapping_add(1);
        let n = shards.len();
        let target = (0..n)
            .map(|i| &shards[(turn + i) % n])
            .min_by_key(|h| h.open_conns.load(Ordering::Relaxed))
            .expect("at least one shard");
        target.open_conns.fetch_add(1, Ordering::Relaxed);
        if target
            .tx
            .try_send(ShardMsg::Accept {
                stream,
                role: role.clone(),
            })
            .is_err()
        {
            target.open_conns.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
