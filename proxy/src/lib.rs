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
pub mod intercept;
/// The HTTP/1.1 codec, its own crate (sans-I/O, no runtime).
pub(crate) use coremesh_http1 as http1;
pub(crate) mod listener;
pub(crate) mod lograte;
pub(crate) mod msg;
pub(crate) mod runtime;
pub(crate) mod shard;
pub(crate) mod stats;
pub(crate) mod tap;
pub(crate) mod tls;
pub(crate) mod upgrade;
/// The request policy, its own crate (sans-I/O: routing, authorization,
/// balancing, resilience, the attempt decision).
pub(crate) use coremesh_policy::{
    attempt, authz, balance, grpc, resilience, route, routing, traffic,
};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use agent::{AgentSetup, Bound};
use config::Config;
use listener::Listener;
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
    #[error(transparent)]
    Upgrade(#[from] upgrade::UpgradeError),
    #[error("cannot keep a copy of the {name} listener for upgrades: {source}")]
    Dup {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: [intercept] needs the default runtime (monoio): the {backend} backend cannot mark upstream sockets, so the proxy's own connections would be redirected back to it")]
    InterceptUnsupported { file: String, backend: &'static str },
    #[error("{file}: [intercept] mark {mark:#x}: cannot set SO_MARK on a socket ({source}); the proxy needs CAP_NET_ADMIN to mark its own connections, or the ruleset would send them back to it")]
    Mark {
        file: String,
        mark: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start shard {index}: {source}")]
    Shard {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the listeners, starts the shards, and runs the agent on the calling
/// thread until the proxy has drained. Returns the exit code.
///
/// With `upgrade_from`, the listening sockets of the proxy running there are
/// taken over instead of bound (see [`upgrade`]).
pub fn start(
    config_path: PathBuf,
    cfg: Config,
    upgrade_from: Option<PathBuf>,
) -> Result<i32, StartError> {
    if let Some(i) = &cfg.intercept {
        if !runtime::MARKS_SOCKETS {
            return Err(StartError::InterceptUnsupported {
                file: cfg.source.display().to_string(),
                backend: runtime::backend_name(),
            });
        }
        // Fail at start, not on every upstream connect.
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .and_then(|s| s.set_mark(i.mark))
            .map_err(|source| StartError::Mark {
                file: cfg.source.display().to_string(),
                mark: i.mark,
                source,
            })?;
        runtime::set_upstream_mark(i.mark);
    }
    let cfg = Arc::new(cfg);
    let mut sockets = Sockets {
        inherited: upgrade_from
            .as_deref()
            .map(upgrade::Inherited::take_over)
            .transpose()?,
        handover: Vec::new(),
        keep: cfg.proxy.upgrade_socket.is_some(),
    };
    let mut listeners = Vec::new();
    let mut bound = Bound::default();
    if let Some(i) = &cfg.inbound {
        let l = sockets.listener("inbound", i.listen, "[inbound] listen")?;
        bound.inbound = l.local_addr().ok();
        listeners.push((Listener::Tcp(l), msg::Role::Http(Direction::Inbound)));
    }
    if let Some(o) = &cfg.outbound {
        let (name, what) = ("outbound", "[outbound] listen");
        let l = match &o.listen {
            config::ListenAddr::Tcp(a) => {
                let l = sockets.listener(name, *a, what)?;
                bound.outbound = l.local_addr().ok();
                Listener::Tcp(l)
            }
            config::ListenAddr::Unix(u) => {
                let l = sockets.unix_listener(name, u, what)?;
                bound.outbound_unix = Some(u.path.clone());
                Listener::Unix(l)
            }
        };
        listeners.push((l, msg::Role::Http(Direction::Outbound)));
        for t in &o.tcp {
            let what = format!("[[outbound.tcp]] {} listen", t.service);
            let l = sockets.listener(&format!("tcp:{}", t.service), t.listen, &what)?;
            if let Ok(a) = l.local_addr() {
                bound.tcp.push((t.service.clone(), a));
            }
            let role = msg::Role::Tcp(std::sync::Arc::from(t.service.as_str()));
            listeners.push((Listener::Tcp(l), role));
        }
    }
    let admin = sockets.listener("admin", cfg.proxy.admin, "[proxy] admin")?;
    bound.admin = admin.local_addr().ok();
    let upgrade = sockets.upgrade_setup(cfg.proxy.upgrade_socket.as_deref())?;

    // The access log's file is written by a thread of its own (accesslog.rs).
    let access_log = cfg.proxy.access_log.as_deref().and_then(|p| {
        accesslog::Writer::start(p, &accesslog::COUNTERS)
            .map_err(|e| tracing::error!("access log {}: {e}; access logging is off", p.display()))
            .ok()
    });
    let (agent_tx, agent_rx) = async_channel::unbounded();
    let cores = cfg.proxy.cores;
    // One shard accepts on the TCP sockets itself; several get connections
    // from the agent's acceptor, as a Unix socket's always do (see
    // listener.rs).
    let (mut own, mut accept) = (Vec::new(), Vec::new());
    for (l, role) in listeners {
        match l {
            Listener::Tcp(l) if cores == 1 => own.push((l, role)),
            l => accept.push((l, role)),
        }
    }
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
            access_log: access_log.as_ref().map(accesslog::Writer::sink),
        };
        let cpu = cfg.proxy.cpus.as_ref().map(|c| c[index]);
        runtime::start_shard(format!("shard-{index}"), cpu, move |driver| {
            shard::thread::run(setup, driver)
        })
        .map_err(|source| StartError::Shard { index, source })?;
        handles.push(handle);
    }
    let code = agent::run(AgentSetup {
        config_path,
        config: cfg,
        shards: handles,
        admin,
        accept,
        requests: agent_rx,
        bound,
        backend: runtime::backend_name(),
        upgrade,
        access_log: access_log.as_ref().map(accesslog::Writer::sink),
    });
    // The shards handed over their last lines in the drain; the writer
    // writes what is queued and ends.
    drop(access_log);
    Ok(code)
}

/// The listening sockets of a start: taken over from a predecessor or
/// bound, and (with `upgrade_socket`) a copy of each kept for a successor.
struct Sockets {
    inherited: Option<upgrade::Inherited>,
    handover: Vec<(String, std::os::fd::OwnedFd)>,
    keep: bool,
}

impl Sockets {
    fn listener(
        &mut self,
        name: &str,
        addr: std::net::SocketAddr,
        what: &str,
    ) -> Result<std::net::TcpListener, StartError> {
        let taken = self.inherited.as_mut().and_then(|h| h.tcp(name, addr));
        let l = match taken {
            Some(l) => l,
            None => listener::bind(addr, what)?,
        };
        if self.keep {
            let copy = l.try_clone().map_err(|source| StartError::Dup {
                name: name.to_string(),
                source,
            })?;
            self.handover.push((name.to_string(), copy.into()));
        }
        Ok(l)
    }

    /// A Unix socket file listener, taken over or bound (replacing a stale
    /// file), with its mode and owner applied either way.
    fn unix_listener(
        &mut self,
        name: &str,
        u: &config::UnixListen,
        what: &str,
    ) -> Result<std::os::unix::net::UnixListener, StartError> {
        let taken = self.inherited.as_mut().and_then(|h| h.unix(name, &u.path));
        let l = match taken {
            Some(l) => {
                listener::apply_unix_access(u, what)?;
                l
            }
            None => listener::bind_unix(u, what)?,
        };
        if self.keep {
            let copy = l.try_clone().map_err(|source| StartError::Dup {
                name: name.to_string(),
                source,
            })?;
            self.handover.push((name.to_string(), copy.into()));
        }
        Ok(l)
    }

    /// The upgrade socket at `path` (taken over, or bound) with the copies
    /// it hands over, and the predecessor to tell when this process serves.
    fn upgrade_setup(
        mut self,
        path: Option<&std::path::Path>,
    ) -> Result<agent::UpgradeSetup, StartError> {
        let listener = match path {
            None => None,
            Some(path) => {
                let taken = self
                    .inherited
                    .as_mut()
                    .and_then(|h| h.upgrade_listener(path));
                let l = match taken {
                    Some(l) => l,
                    None => upgrade::listen(path)?,
                };
                let copy = l.try_clone().map_err(|source| StartError::Dup {
                    name: upgrade::UPGRADE.to_string(),
                    source,
                })?;
                self.handover
                    .push((upgrade::UPGRADE.to_string(), copy.into()));
                Some((l, path.to_path_buf()))
            }
        };
        Ok(agent::UpgradeSetup {
            listener,
            sockets: self.handover,
            predecessor: self.inherited,
        })
    }
}
