//! Upgrades that drop nothing: a new `coremesh-proxy` binary takes the
//! listening sockets over from the running one, which then drains and exits.
//!
//! ```text
//!  running proxy ([proxy] upgrade_socket = PATH)     new binary (--upgrade-from PATH)
//!                                      <── connect; "coremesh-upgrade 1\n"
//!  every listening socket (SCM_RIGHTS) ──▶
//!  with their names: inbound, outbound,           uses them instead of binding;
//!  tcp:SERVICE, admin, upgrade                    starts its shards, applies the
//!                                                 last good snapshot, serves
//!                                      <── "ready\n"
//!  stops accepting, drains within drain_timeout,
//!  closes its control session without deregistering, exits 0
//! ```
//!
//! The sockets are the same kernel objects in both processes, so the kernel
//! keeps queueing new connections through the whole switch: none is refused,
//! and each is accepted by exactly one process. The old process only stops
//! accepting once the new one says it serves; if the new one fails first
//! (a bad config, a crash), the old one never stops and serves on. The
//! endpoint is not deregistered: the new process serves the same address
//! and registers it from its own control session.
//!
//! The Unix socket is handed over too, so the new process accepts the next
//! upgrade on the same path.
//!
//! The successor is either started by hand (`coremesh-proxy --config FILE
//! --upgrade-from PATH`), or by the running proxy itself on `SIGUSR2`: it
//! starts the binary it was started from, as that path is on disk now (a
//! package upgrade replaced it), with its own arguments plus
//! `--upgrade-from`. Started that way the successor is the old process's
//! child, in its systemd unit's cgroup, so systemd can adopt it as the new
//! main process (`MAINPID=`).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// What a successor says first.
const HELLO: &str = "coremesh-upgrade 1";
/// What it says once it serves.
const READY: &str = "ready";
/// The old process's answer to `ready`: it stops accepting now. Without it
/// (the old process gave up waiting), the new one must not serve on beside
/// it.
const OK: &str = "ok";
/// How long a connection to the upgrade socket may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a successor may take from connecting to serving.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The most sockets one handover carries (SCM_RIGHTS takes up to 253).
const MAX_SOCKETS: usize = 200;

/// The name under which the upgrade socket itself is handed over.
pub const UPGRADE: &str = "upgrade";

/// Why an upgrade could not start (new process) or a handover failed (old
/// process, which then serves on).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot connect to the running proxy at {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("upgrade socket {}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("upgrade socket {}: the other side said {said:?}, not {expected:?}", path.display())]
    Protocol {
        path: PathBuf,
        said: String,
        expected: &'static str,
    },
    #[error("upgrade socket {}: {count} sockets to hand over, at most {MAX_SOCKETS}", path.display())]
    TooMany { path: PathBuf, count: usize },
    #[error("cannot listen for upgrades on {}: another process is listening there", path.display())]
    InUse { path: PathBuf },
    #[error("upgrade socket {}: pid {pid} runs as uid {uid}, not as this proxy's uid {own}", path.display())]
    Stranger {
        path: PathBuf,
        pid: u32,
        uid: u32,
        own: u32,
    },
}

/// The listening sockets a new process took over, by name.
#[derive(Debug)]
pub struct Inherited {
    sockets: HashMap<String, OwnedFd>,
    /// To say `ready` on.
    conn: UnixStream,
    path: PathBuf,
}

impl Inherited {
    /// Connects to the running proxy at `path` and takes its sockets.
    pub fn take_over(path: &Path) -> Result<Inherited, UpgradeError> {
        let io_err = |what| {
            let path = path.to_path_buf();
            move |source| UpgradeError::Io { path, what, source }
        };
        let mut conn = UnixStream::connect(path).map_err(|source| UpgradeError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err("setting a read timeout"))?;
        conn.write_all(format!("{HELLO}\n").as_bytes())
            .map_err(io_err("saying hello"))?;
        let (names, fds) = receive(&conn).map_err(io_err("receiving the sockets"))?;
        if names.len() != fds.len() {
            return Err(UpgradeError::Protocol {
                path: path.to_path_buf(),
                said: format!("{} names for {} sockets", names.len(), fds.len()),
                expected: "one name per socket",
            });
        }
        Ok(Inherited {
            sockets: names.into_iter().zip(fds).collect(),
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The TCP listener handed over as `name`, if it listens where the
    /// config wants it: `want` itself, or any port of its IP when the config
    /// says port 0 (the port the old process was given). `None`: bind anew.
    pub fn tcp(&mut self, name: &str, want: SocketAddr) -> Option<std::net::TcpListener> {
        let fd = self.sockets.remove(name)?;
        let l = std::net::TcpListener::from(fd);
        let at = l.local_addr().ok()?;
        let same = at == want || (want.port() == 0 && at.ip() == want.ip());
        if same {
            tracing::info!("took over the {name} listener on {at}");
            Some(l)
        } else {
            tracing::info!("the {name} listener moved from {at} to {want}: binding anew");
            None
        }
    }

    /// The Unix socket file listener handed over as `name`, if it is bound
    /// at `path`. `None`: bind anew (the old process's socket file is
    /// then replaced only if nobody listens on it any more).
    pub fn unix(&mut self, name: &str, path: &Path) -> Option<UnixListener> {
        let l = UnixListener::from(self.sockets.remove(name)?);
        let here = l.local_addr().ok()?.as_pathname().map(Path::to_path_buf);
        if here.as_deref() == Some(path) {
            tracing::info!("took over the {name} listener on unix:{}", path.display());
            Some(l)
        } else {
            tracing::info!(
                "the {name} listener moved to unix:{}: binding anew",
                path.display()
            );
            None
        }
    }

    /// The upgrade socket, for the next upgrade, if it is at `path`.
    pub fn upgrade_listener(&mut self, path: &Path) -> Option<UnixListener> {
        let l = UnixListener::from(self.sockets.remove(UPGRADE)?);
        let here = l.local_addr().ok()?.as_pathname().map(Path::to_path_buf);
        (here.as_deref() == Some(path)).then_some(l)
    }

    /// Tells the old process this one serves, and waits for its `ok`: it
    /// stops accepting and drains. An error means the old process gave up
    /// on this upgrade (it serves on): this process must not serve beside
    /// it. Sockets nobody took are closed here.
    pub fn ready(mut self) -> Result<(), UpgradeError> {
        for name in self.sockets.keys() {
            tracing::info!("the {name} listener is not in this configuration: closing it");
        }
        self.sockets.clear();
        let io_err = |what| {
            let path = self.path.clone();
            move |source| UpgradeError::Io { path, what, source }
        };
        self.conn
            .write_all(format!("{READY}\n").as_bytes())
            .map_err(io_err("saying ready"))?;
        let mut line = String::new();
        BufReader::new(&self.conn)
            .read_line(&mut line)
            .map_err(io_err("waiting for the running proxy to stop"))?;
        if line.trim_end() == OK {
            return Ok(());
        }
        Err(UpgradeError::Protocol {
            path: self.path,
            said: line.trim_end().chars().take(80).collect(),
            expected: OK,
        })
    }
}

/// Binds the upgrade socket at `path`, replacing a stale socket file that
/// nobody listens on (left by a killed process).
pub fn listen(path: &Path) -> Result<UnixListener, UpgradeError> {
    let l = bind(path)?;
    // Only this proxy's own user may take its sockets (checked again per
    // connection); the mode keeps others from even connecting.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        UpgradeError::Io {
            path: path.to_path_buf(),
            what: "setting mode 0600",
            source,
        }
    })?;
    Ok(l)
}

fn bind(path: &Path) -> Result<UnixListener, UpgradeError> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(UpgradeError::InUse {
                    path: path.to_path_buf(),
                });
            }
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path).map_err(|source| UpgradeError::Io {
                path: path.to_path_buf(),
                what: "binding",
                source,
            })
        }
        Err(source) => Err(UpgradeError::Io {
            path: path.to_path_buf(),
            what: "binding",
            source,
        }),
    }
}

/// The old process's side, run on the agent thread: waits for successors on
/// `listener`; hands `sockets` to the first one that connects and returns
/// once it says it serves (its pid). A successor that fails before that is
/// logged, and the next one is waited for.
pub async fn serve(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    sockets: Vec<(String, OwnedFd)>,
) -> Option<u32> {
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("upgrade socket {}: accept failed: {e}", path.display());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cred = conn.peer_cred().ok();
        let pid = cred.and_then(|c| c.pid()).unwrap_or(0) as u32;
        let own = nix::unistd::geteuid().as_raw();
        if let Some(uid) = cred.map(|c| c.uid()).filter(|&uid| uid != own && uid != 0) {
            let e = UpgradeError::Stranger {
                path: path.clone(),
                pid,
                uid,
                own,
            };
            tracing::warn!("{e}");
            continue;
        }
        match tokio::time::timeout(READY_TIMEOUT, hand_over(conn, &path, &sockets)).await {
            Ok(Ok(())) => return Some(pid),
            Ok(Err(e)) => tracing::warn!("upgrade by pid {pid} failed, serving on: {e}"),
            Err(_) => tracing::warn!(
                "upgrade by pid {pid}: not ready within {READY_TIMEOUT:?}, serving on"
            ),
        }
    }
}

/// Waits for `SIGUSR2` and starts a successor each time (see the module
/// doc). Never returns; without the signal handler it logs and waits
/// forever.
pub async fn successors_on_usr2(path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr2 = match signal(SignalKind::user_defined2()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("no SIGUSR2 upgrades: {e}");
            return std::future::pending().await;
        }
    };
    while usr2.recv().await.is_some() {
        match spawn_successor(&path) {
            Ok(pid) => tracing::info!("SIGUSR2: started pid {pid} to take over the listeners"),
            Err(e) => tracing::error!("SIGUSR2: cannot start a successor: {e}"),
        }
    }
}

/// Starts this binary (the path it was started from) with this process's
/// arguments and `--upgrade-from path`; a thread reaps it if it exits while
/// this process still runs.
fn spawn_successor(path: &Path) -> io::Result<u32> {
    let exe = std::env::current_exe()?;
    // A replaced binary's /proc/self/exe reads "PATH (deleted)"; the new
    // one is at PATH.
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => exe,
    };
    let args = successor_args(std::env::args_os().skip(1), path);
    let mut child = std::process::Command::new(&exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    std::thread::Builder::new()
        .name("successor".into())
        .spawn(move || match child.wait() {
            Ok(s) => tracing::info!("successor pid {pid} exited ({s})"),
            Err(e) => tracing::warn!("successor pid {pid}: {e}"),
        })?;
    Ok(pid)
}

/// This process's arguments without any `--upgrade-from` of its own, plus
/// `--upgrade-from path`.
fn successor_args(
    args: impl Iterator<Item = std::ffi::OsString>,
    path: &Path,
) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if a == "--upgrade-from" {
            skip_value = true;
            continue;
        }
        if a.to_str().is_some_and(|s| s.starts_with("--upgrade-from=")) {
            continue;
        }
        out.push(a);
    }
    out.push("--upgrade-from".into());
    out.push(path.as_os_str().to_os_string());
    out
}

async fn hand_over(
    conn: tokio::net::UnixStream,
    path: &Path,
    sockets: &[(String, OwnedFd)],
) -> Result<(), UpgradeError> {
    let io_err = |what| {
        let path = path.to_path_buf();
        move |source| UpgradeError::Io { path, what, source }
    };
    if sockets.len() > MAX_SOCKETS {
        return Err(UpgradeError::TooMany {
            path: path.to_path_buf(),
            count: sockets.len(),
        });
    }
    let mut lines = tokio::io::BufReader::new(conn);
    match tokio::time::timeout(HELLO_TIMEOUT, expect_line(&mut lines, path, HELLO)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(UpgradeError::Protocol {
                path: path.to_path_buf(),
                said: format!("nothing within {HELLO_TIMEOUT:?}"),
                expected: HELLO,
            })
        }
    }
    tracing::info!("a new binary is taking over the listeners");
    let conn = lines.get_ref();
    let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
    let payload = format!("{}\n", names.join(" "));
    let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    loop {
        conn.writable().await.map_err(io_err("waiting to send"))?;
        match conn.try_io(tokio::io::Interest::WRITABLE, || {
            send(conn.as_raw_fd(), &payload, &fds)
        }) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io_err("sending the sockets")(e)),
        }
    }
    expect_line(&mut lines, path, READY).await?;
    // From here on this process stops accepting; the successor serves on.
    use tokio::io::AsyncWriteExt;
    let _ = lines
        .get_mut()
        .write_all(format!("{OK}\n").as_bytes())
        .await;
    Ok(())
}

async fn expect_line(
    lines: &mut tokio::io::BufReader<tokio::net::UnixStream>,
    path: &Path,
    expected: &'static str,
) -> Result<(), UpgradeError> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    lines
        .read_line(&mut line)
        .await
        .map_err(|source| UpgradeError::Io {
            path: path.to_path_buf(),
            what: "reading",
            source,
        })?;
    if line.trim_end() == expected {
        return Ok(());
    }
    Err(UpgradeError::Protocol {
        path: path.to_path_buf(),
        said: line.trim_end().chars().take(80).collect(),
        expected,
    })
}

/// One message: the names (space-separated, newline-terminated) with the
/// descriptors attached.
fn send(fd: RawFd, payload: &str, fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(payload.as_bytes())];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let n =
        sendmsg::<()>(fd, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)?;
    if n != payload.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the names did not fit one message",
        ));
    }
    Ok(())
}

/// Receives the names and descriptors [`send`] sent.
fn receive(conn: &UnixStream) -> io::Result<(Vec<String>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: SCM_RIGHTS: the kernel installed `fd` in this
                    // process for this message (close-on-exec), a fresh
                    // descriptor that no other code knows of, and each
                    // appears once in the message, so this `OwnedFd` is its
                    // only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (msg.bytes, fds)
    };
    let mut text = String::from_utf8_lossy(&buf[..n]).into_owned();
    if !text.ends_with('\n') {
        // The rest of the line, if the message was split.
        let mut rest = String::new();
        BufReader::new(conn).read_line(&mut rest)?;
        text.push_str(&rest);
    }
    let names = text.split_whitespace().map(str::to_string).collect();
    Ok((names, fds))
}

#[cfg(test)]
mod tests;
