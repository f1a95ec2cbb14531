//! Shards: one executor thread per core. (skeleton: message types only, being written)

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use crate::config::Config;
use crate::stats::{Direction, ShardSnapshot};

/// Messages from the agent thread to one shard. They cross cores a few times a
/// second or once per connection, never per request.
pub enum ShardMsg {
    /// A connection accepted by the agent's acceptor (cores > 1), handed to the
    /// shard with the fewest open connections.
    Accept {
        stream: std::net::TcpStream,
        direction: Direction,
    },
    /// A new configuration (SIGHUP reload) to use for new requests.
    Config(Arc<Config>),
    /// Reply with a snapshot of this shard's stats.
    Snapshot(tokio::sync::oneshot::Sender<ShardSnapshot>),
    /// Stop accepting; reply once no request is in flight on this shard.
    Drain(tokio::sync::oneshot::Sender<()>),
}

/// The agent's handle on one shard.
#[derive(Clone)]
pub struct ShardHandle {
    pub index: usize,
    pub tx: async_channel::Sender<ShardMsg>,
    /// Open client connections on this shard; written only by that shard
    /// (once per connection open/close), read by the acceptor.
    pub open_conns: Arc<AtomicUsize>,
    /// Set by the shard once its executor runs and it accepts connections.
    pub ready: Arc<AtomicBool>,
}
