//! coremesh-proxy: the sidecar data plane.
//!
//! Data flow (one request, start to finish on the shard that accepted it):
//!
//! ```text
//! listener ──fd──▶ shard ──▶ forward (accept) ──▶ http1 (decode head, in place)
//!     ──▶ route (authority → service, or the local app) ──▶ balance (round-robin)
//!     ──▶ pool (keep-alive upstream) ──▶ forward (vectored head write, body
//!     relayed from the buffer it was read into) ──▶ stats (per-shard counters
//!     and hdrhistograms, no atomics) and the access log
//! ```
//!
//! * [`runtime`] is the only module that names the executor (monoio by default,
//!   glommio behind the `runtime-glommio` feature).
//! * [`http1`] is sans-I/O: bytes in, parsed heads and forwarding plans out.
//! * [`agent`] runs on the main thread (tokio current-thread): admin endpoint,
//!   signals, configuration reloads, the connection acceptor for `cores > 1`,
//!   name resolution for passthrough.

pub(crate) mod accesslog;
pub(crate) mod agent;
pub mod config;
pub(crate) mod conn;
pub(crate) mod error;
pub(crate) mod forward;
/// The HTTP/1.1 codec, its own crate (sans-I/O, no runtime).
pub(crate) use coremesh_http1 as http1;
pub(crate) mod listener;
pub(crate) mod lograte;
pub(crate) mod msg;
pub(crate) mod runtime;
pub(crate) mod shard;
pub(crate) mod stats;
pub(crate) mod tls;
/// The request policy, its own crate (sans-I/O: routing, authorization,
/// balancing, resilience, the attempt decision).
pub(crate) use coremesh_policy::{attempt, authz, balance, resilience, route, routing, traffic};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use agent::{AgentSetup, Bound};
use config::Config;
use msg::AgentLink;
use msg::ShardHandle;
use shard::thread::ShardSetup;
use stats::Direction;

pub use agent::{check_files, FileError};
pub use listener::BindError;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot start shard {index}: {source}")]
    Shard {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the listeners, starts the shards, and runs the agent on the calling
/// thread until the proxy has drained. Returns the exit code.
pub fn start(config_path: PathBuf, cfg: Config) -> Result<i32, StartError> {
    let cfg = Arc::new(cfg);
    let mut listeners = Vec::new();
    let mut bound = Bound::default();
    if let Some(i) = &cfg.inbound {
        let l = listener::bind(i.listen, "[inbound] listen")?;
        bound.inbound = l.local_addr().ok();
        listeners.push((l, msg::Role::Http(Direction::Inbound)));
    }
    if let Some(o) = &cfg.outbound {
        let l = listener::bind(o.listen, "[outbound] listen")?;
        bound.outbound = l.local_addr().ok();
        listeners.push((l, msg::Role::Http(Direction::Outbound)));
        for t in &o.tcp {
            let l = listener::bind(t.listen, &format!("[[outbound.tcp]] {} listen", t.service))?;
            if let Ok(a) = l.local_addr() {
                bound.tcp.push((t.service.clone(), a));
            }
            listeners.push((l, msg::Role::Tcp(std::sync::Arc::from(t.service.as_str()))));
        }
    }
    let admin = listener::bind(cfg.proxy.admin, "[proxy] admin")?;
    bound.admin = admin.local_addr().ok();

    let (agent_tx, agent_rx) = async_channel::unbounded();
    let cores = cfg.proxy.cores;
    // One shard accepts on the sockets itself; several get connections from
    // the agent's acceptor (see listener.rs).
    let (mut own, accept) = if cores == 1 {
        (listeners, Vec::new())
    } else {
        (Vec::new(), listeners)
    };
    let mut handles = Vec::with_capacity(cores);
    for index in 0..cores {
        let (tx, rx) = async_channel::unbounded();
        let handle = ShardHandle {
            index,
            tx,
            open_conns: Arc::new(AtomicUsize::new(0)),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let setup = ShardSetup {
            index,
            config: cfg.clone(),
            listeners: std::mem::take(&mut own),
            rx,
            open_conns: handle.open_conns.clone(),
            ready: handle.ready.clone(),
            agent: AgentLink(agent_tx.clone()),
            own_addrs: [bound.inbound, bound.outbound, bound.admin]
                .into_iter()
                .flatten()
                .collect(),
        };
        let cpu = cfg.proxy.cpus.as_ref().map(|c| c[index]);
        runtime::start_shard(format!("shard-{index}"), cpu, move |driver| {
            shard::thread::run(setup, driver)
        })
        .map_err(|source| StartError::Shard { index, source })?;
        handles.push(handle);
    }
    Ok(agent::run(AgentSetup {
        config_path,
        config: cfg,
        shards: handles,
        admin,
        accept,
        requests: agent_rx,
        bound,
        backend: runtime::backend_name(),
    }))
}
