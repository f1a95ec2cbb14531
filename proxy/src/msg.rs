//! The messages between the agent thread and the shards, and the handles
//! they travel on. Below both: the shard, the agent, the listeners, the
//! admin endpoint and the probes import this module, and it imports none
//! of them, so no thread's module depends on another's.
//!
//! Everything here crosses cores a few times a second or once per
//! connection, never per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::routing::RoutingTable;
use crate::stats::{Direction, ShardSnapshot};
use crate::tls::Identity;

/// What a listener's connections are: HTTP in one direction, or the byte
/// stream of one TCP service (`[[outbound.tcp]]`).
#[derive(Debug, Clone)]
pub enum Role {
    Http(Direction),
    Tcp(std::sync::Arc<str>),
}

impl Role {
    /// The `listener` label of `coremesh_accept_failures_total`.
    pub fn listener(&self) -> crate::stats::accept::Listener {
        use crate::stats::accept::Listener;
        match self {
            Role::Http(Direction::Outbound) => Listener::Outbound,
            Role::Http(Direction::Inbound) => Listener::Inbound,
            Role::Tcp(_) => Listener::Tcp,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Role::Http(d) => d.as_str().to_string(),
            Role::Tcp(s) => format!("TCP service {s}"),
        }
    }
}

/// Messages from the agent thread to one shard. They cross cores a few times a
/// second or once per connection, never per request.
pub enum ShardMsg {
    /// A connection accepted by the agent's acceptor (cores > 1), handed to the
    /// shard with the fewest open connections.
    Accept {
        stream: crate::runtime::StdStream,
        role: Role,
    },
    /// A new configuration (SIGHUP reload) to use for new requests.
    Config(Arc<Config>),
    /// Phase one of applying a routing table from control: keep it aside
    /// and reply; nothing changes for requests yet.
    Prepare(Arc<RoutingTable>, tokio::sync::oneshot::Sender<()>),
    /// Phase two: switch to the prepared table with this version (sent once
    /// every shard has prepared, so all cores switch together).
    Commit(u64),
    /// This proxy's certificate and trust anchors (joined, renewed, a new
    /// trust bundle, or `[tls]` files reloaded): new handshakes use them,
    /// open connections keep theirs.
    Identity(Arc<Identity>),
    /// Control's revocation list (a node was evicted, or a revoked
    /// certificate expired): new handshakes refuse those certificates,
    /// open connections that use one are shut.
    Revoked(Arc<crate::tls::revoked::Revocations>),
    /// A new split of one service limit (see agent/traffic.rs).
    Share(Arc<crate::traffic::ShareUpdate>),
    /// Rate-limit tokens from the service's pool, for a shard that refused
    /// (see resilience/ratelimit.rs).
    Grant { service: String, tokens: u64 },
    /// Active health checks to run on this shard (see probe.rs).
    Probes(Arc<Vec<ProbeTarget>>),
    /// Endpoints to avoid, decided once per proxy on the agent thread:
    /// ejected by outlier detection or failing active health checks.
    Excluded(Arc<std::collections::HashSet<SocketAddr>>),
    /// The local app's latest health check result (`[control.health]`),
    /// for probes answered by this proxy.
    AppHealth(bool),
    /// The `meshctl tap`s running now (tap.rs); empty: none.
    Tap(Arc<Vec<Arc<crate::tap::TapSpec>>>),
    /// Reply with a snapshot of this shard's stats.
    Snapshot(tokio::sync::oneshot::Sender<ShardSnapshot>),
    /// Start accepting on the listeners this shard owns: the agent sends it
    /// once the proxy can serve (its identity and last good snapshot
    /// loaded), so a connection queued on an inherited listener (an upgrade)
    /// is never met by a shard without a certificate.
    Listen,
    /// Stop accepting; reply once every connection of this shard has
    /// ended. Idle keep-alive connections are kept `idle_grace` for a last
    /// request (answered with `Connection: close`), then shut.
    Drain {
        reply: tokio::sync::oneshot::Sender<()>,
        idle_grace: std::time::Duration,
    },
}

/// The agent's handle on one shard.
#[derive(Clone)]
pub struct ShardHandle {
    pub index: usize,
    pub tx: async_channel::Sender<ShardMsg>,
    /// Open client connections on this shard: incremented by whoever hands
    /// the connection to the shard, decremented by the shard when it closes
    /// (once per connection, never per request); read by the acceptor.
    pub open_conns: Arc<AtomicUsize>,
    /// Set by the shard once its executor runs and it accepts connections.
    pub ready: Arc<AtomicBool>,
}

/// Requests from shards to the agent.
pub enum AgentRequest {
    /// Resolve a passthrough host name.
    Resolve {
        host: String,
        port: u16,
        reply: tokio::sync::oneshot::Sender<std::io::Result<SocketAddr>>,
    },
    /// One active health check result (see probe.rs).
    Probe {
        service: String,
        addr: SocketAddr,
        ok: bool,
    },
    /// A shard's demand on each service's limits for the last second.
    Demand {
        shard: usize,
        services: Vec<crate::traffic::ServiceDemand>,
    },
    /// A shard's rate-limit token counts for the last 250 ms, per service.
    Pool {
        shard: usize,
        reports: Vec<(String, crate::resilience::PoolReport)>,
    },
    /// A shard's outcomes per upstream endpoint for the last period.
    Outcomes {
        counts: Vec<(SocketAddr, crate::shard::outcomes::Counts)>,
    },
}

/// A shard's way to the agent.
#[derive(Clone)]
pub struct AgentLink(pub async_channel::Sender<AgentRequest>);

impl AgentLink {
    pub fn send(&self, r: AgentRequest) -> Result<(), AgentRequest> {
        self.0.try_send(r).map_err(|e| e.into_inner())
    }
}

/// One endpoint to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub service: String,
    pub addr: SocketAddr,
    pub interval: Duration,
    pub timeout: Duration,
}
