//! Listening sockets.
//!
//! Each listener is one socket, bound once at start-up without
//! `SO_REUSEPORT`, so a second process on the same address fails with
//! "address in use" instead of silently sharing the port. With one shard the
//! shard accepts on it directly; with more, the agent accepts and hands each
//! connection to the shard with the fewest open connections (docs/design.md: a
//! shared socket with an accept per shard spread 5 connections 5/0).
//!
//! A Unix socket file (`[outbound] listen = "unix:/PATH"`) is always
//! accepted by the agent, whatever the number of shards: glommio cannot
//! adopt a listening Unix socket, and one hand-off per connection (never
//! per request) is the same path every connection takes with several
//! shards. Binding one replaces a stale socket file (one nobody listens on,
//! left by a killed proxy), never a live one or a file that is no socket.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use socket2::{Domain, Socket, Type};

use crate::config::UnixListen;
use crate::msg::{Role, ShardHandle, ShardMsg};
use crate::runtime::StdStream;

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
    /// A process listens on the socket file already.
    #[error("cannot listen on unix:{} ({what}): in use, another process is listening on it", path.display())]
    UnixInUse { path: PathBuf, what: String },
    /// Something other than a socket is at the path; it is left alone.
    #[error("cannot listen on unix:{} ({what}): the path exists and is not a socket ({kind}); remove it or choose another path", path.display())]
    NotASocket {
        path: PathBuf,
        what: String,
        kind: &'static str,
    },
    #[error("cannot listen on unix:{} ({what}): {doing}: {source}", path.display())]
    Unix {
        path: PathBuf,
        what: String,
        doing: &'static str,
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

/// A listening socket: TCP, or a Unix socket file.
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(UnixListener),
}

/// Binds the Unix socket file of `u` (see the module doc on stale files)
/// and applies its mode and owner; `what` names the config key.
pub fn bind_unix(u: &UnixListen, what: &str) -> Result<UnixListener, BindError> {
    let path = u.path.as_path();
    let fail = |doing, source| BindError::Unix {
        path: path.to_path_buf(),
        what: what.to_string(),
        doing,
        source,
    };
    remove_stale(path, what)?;
    let l = match UnixListener::bind(path) {
        Ok(l) => l,
        // Someone bound it between the check and now.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            return Err(BindError::UnixInUse {
                path: path.to_path_buf(),
                what: what.to_string(),
            })
        }
        Err(e) => return Err(fail("binding", e)),
    };
    l.set_nonblocking(true)
        .map_err(|e| fail("setting non-blocking mode", e))?;
    apply_unix_access(u, what)?;
    Ok(l)
}

/// Applies `listen_mode`, `listen_owner` and `listen_group` to the socket
/// file (after binding; again after taking a listener over, where they may
/// have changed).
pub fn apply_unix_access(u: &UnixListen, what: &str) -> Result<(), BindError> {
    let fail = |doing, source| BindError::Unix {
        path: u.path.clone(),
        what: what.to_string(),
        doing,
        source,
    };
    if u.owner.is_some() || u.group.is_some() {
        std::os::unix::fs::chown(&u.path, u.owner, u.group)
            .map_err(|e| fail("setting listen_owner and listen_group", e))?;
    }
    if let Some(mode) = u.mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&u.path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail("setting listen_mode", e))?;
    }
    Ok(())
}

/// Makes way for a bind at `path`: nothing there, or a socket file nobody
/// listens on (a connect is refused), which is removed. A live socket and
/// anything that is not a socket are errors, and stay.
fn remove_stale(path: &Path, what: &str) -> Result<(), BindError> {
    use std::os::unix::fs::FileTypeExt;
    let fail = |doing, source| BindError::Unix {
        path: path.to_path_buf(),
        what: what.to_string(),
        doing,
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail("looking at the path", e)),
    };
    let t = meta.file_type();
    if !t.is_socket() {
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_symlink() {
            "a symbolic link"
        } else if t.is_file() {
            "a regular file"
        } else {
            "a special file"
        };
        return Err(BindError::NotASocket {
            path: path.to_path_buf(),
            what: what.to_string(),
            kind,
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(BindError::UnixInUse {
            path: path.to_path_buf(),
            what: what.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(
                "unix:{} ({what}): replacing a stale socket file nobody listens on",
                path.display()
            );
            std::fs::remove_file(path).map_err(|e| fail("removing the stale socket file", e))
        }
        // Not allowed to connect (EACCES...): whether it is in use is
        // unknown, so it stays.
        Err(e) => Err(fail("checking whether the socket file is in use", e)),
    }
}

/// The agent thread's side of a [`Listener`].
enum Accepting {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Accepting {
    async fn accept(&self) -> io::Result<StdStream> {
        Ok(match self {
            Accepting::Tcp(l) => StdStream::Tcp(l.accept().await?.0.into_std()?),
            Accepting::Unix(l) => StdStream::Unix(l.accept().await?.0.into_std()?),
        })
    }
}

/// Accepts on the agent thread and hands connections to the least loaded
/// shard (one message per connection, never per request).
pub async fn acceptor(l: Listener, role: Role, shards: Vec<ShardHandle>) {
    let l = match l {
        Listener::Tcp(l) => tokio::net::TcpListener::from_std(l).map(Accepting::Tcp),
        Listener::Unix(l) => tokio::net::UnixListener::from_std(l).map(Accepting::Unix),
    };
    let l = match l {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot accept on the {} listener: {e}", role.describe());
            return;
        }
    };
    let mut turn = 0usize;
    loop {
        let stream = match l.accept().await {
            Ok(s) => s,
            Err(e) => {
                crate::lograte::log_limited!(
                    tracing::Level::WARN,
                    "accept failed on the {} listener: {e}",
                    role.describe()
                );
                let pause = crate::stats::accept::ACCEPT_FAILURES.count(role.listener(), &e);
                tokio::time::sleep(pause).await;
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
