//! The runtime seam: the only module that names the executor.
//!
//! Everything above this module (shards, the HTTP/1 forwarding loop, the pool)
//! sees the same small surface whatever the backend:
//!
//! * [`start_shard`]: a thread, optionally pinned to one CPU, running an executor;
//! * [`spawn_local`], [`sleep`], [`timeout`]: tasks and timers on the current shard;
//! * [`TcpListener`] / [`TcpStream`] (TCP, or a Unix stream socket:
//!   [`TcpStream::connect_unix`], [`TcpStream::adopt`]): accept, connect, owned-buffer reads and
//!   writes ([`Buf`] is a `Vec<u8>` whose spare capacity is read into), a
//!   vectored write of a [`IoVecs`] (head slices plus body bytes), readiness
//!   waits so an idle keep-alive connection holds no buffer, and a two-way
//!   tunnel for `CONNECT` and `Upgrade`.
//!
//! monoio is the default backend: io_uring rings created with
//! `COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN` (docs/design.md, "The executor", measures why),
//! falling back to fewer flags and then to monoio's epoll driver.
//! glommio is the second backend, behind the `runtime-glommio` feature.

mod iovecs;
pub use iovecs::IoVecs;

#[cfg(not(feature = "runtime-glommio"))]
mod monoio_backend;
#[cfg(not(feature = "runtime-glommio"))]
pub use monoio_backend::*;

#[cfg(feature = "runtime-glommio")]
mod glommio_backend;
#[cfg(feature = "runtime-glommio")]
pub use glommio_backend::*;

/// SO_MARK for every upstream socket [`TcpStream::connect`] opens; 0: none.
/// Set once at start from `[intercept] mark` (the nftables ruleset lets
/// marked connections through, so the proxy's own never come back to it).
/// Read once per new upstream connection, never per request.
static UPSTREAM_MARK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Marks every upstream socket opened from now on with `mark` (0: none).
pub fn set_upstream_mark(mark: u32) {
    UPSTREAM_MARK.store(mark, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(not(feature = "runtime-glommio"))]
fn upstream_mark() -> u32 {
    UPSTREAM_MARK.load(std::sync::atomic::Ordering::Relaxed)
}

/// A socket for a marked connect: non-blocking, close-on-exec, with
/// SO_MARK set before the SYN leaves (the mark is what the ruleset
/// matches), and the connect started. `Ok`: connected or in progress.
#[cfg(not(feature = "runtime-glommio"))]
fn marked_socket(addr: SocketAddr, mark: u32) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    s.set_mark(mark)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

#[cfg(not(feature = "runtime-glommio"))]
use std::net::SocketAddr;

/// An accepted connection on its way to a shard: TCP, or a Unix stream
/// socket (a `unix:` outbound listener).
pub enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// What [`TcpStream::peer_addr`] says about a Unix socket's peer.
fn no_ip_peer() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "a Unix socket's peer has no IP address",
    )
}

/// An owned I/O buffer: reads append into its spare capacity.
pub type Buf = Vec<u8>;

/// A timer ran out before the operation finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Ends a tunnel once nothing moved either way for `idle`: both sockets are
/// shut down, which completes every pending read and write on them. Returns
/// when both directions have finished (`done` reaches 2).
pub(crate) async fn tunnel_watchdog<S, F>(
    fds: [std::os::fd::RawFd; 2],
    idle: std::time::Duration,
    last: std::rc::Rc<std::cell::Cell<std::time::Instant>>,
    done: std::rc::Rc<std::cell::Cell<u8>>,
    sleep: S,
) where
    S: Fn(std::time::Duration) -> F,
    F: std::future::Future<Output = ()>,
{
    // At most a second: the tunnel's task (and what it accounts, such as
    // byte counters) ends within that of both directions finishing.
    let tick = (idle / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    let mut shut = false;
    while done.get() < 2 {
        sleep(tick).await;
        if !shut && last.get().elapsed() >= idle {
            for fd in fds {
                // Both sockets stay open until the tunnel returns (their
                // halves are owned by the pipes awaited with this future),
                // so `fd` is still the tunnel's socket; shutdown(2) does
                // not close the descriptor.
                let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
            }
            shut = true;
        }
    }
}

/// Shuts a connection's socket down both ways (shutdown(2)), without
/// closing the descriptor: the tasks reading and writing it see the end of
/// the stream and close it themselves. Used on connections whose peer's
/// certificate was revoked (tls/revoked.rs).
pub fn shutdown_socket(fd: std::os::fd::RawFd) {
    // Callers pass descriptors registered only while the connection that
    // owns them is open (its guard is dropped before the socket is closed),
    // so `fd` is that connection's socket; shutdown(2) does not close the
    // descriptor, and an error is harmless.
    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
}

/// Hands the free pages inside every malloc heap back to the kernel
/// (glibc's `malloc_trim(0)`; see shard/heap.rs for when). Elsewhere the
/// allocator decides alone, and this does nothing.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it walks glibc's own free lists
    // under the arenas' locks and may be called from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether an idle pooled connection is unusable: the peer closed it (or
/// sent bytes nobody asked for). One non-blocking `recv(MSG_PEEK)`.
pub fn stale(fd: std::os::fd::RawFd) -> bool {
    use nix::errno::Errno;
    let mut b = [0u8; 1];
    // With MSG_PEEK the kernel copies at most one byte and consumes nothing.
    match nix::sys::socket::recv(fd, &mut b, peek_flags()) {
        Ok(_) => true,
        Err(e) => !matches!(e, Errno::EAGAIN | Errno::EINTR),
    }
}

/// `MSG_PEEK | MSG_DONTWAIT`: look at what waits on a socket, without
/// taking it or waiting for it.
fn peek_flags() -> nix::sys::socket::MsgFlags {
    nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)`: the bytes waiting on a socket, left
/// there. 0 when none are (or at EOF, or on an error).
fn peek_fd(fd: std::os::fd::RawFd, buf: &mut [u8]) -> usize {
    if buf.is_empty() {
        return 0;
    }
    nix::sys::socket::recv(fd, buf, peek_flags()).unwrap_or(0)
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "cannot pin a shard to CPU {cpu}: beyond the {} CPUs an affinity mask holds ({e})",
                CpuSet::count()
            ),
        )
    })?;
    // pid 0: the calling thread.
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// How quickly a dead peer is noticed on an upstream connection to another
/// host's proxy. Idle: TCP keepalive probes after 1 s of silence, 1 s
/// apart. With data unacknowledged (a request sent into a partition):
/// `TCP_USER_TIMEOUT` of [`PEER_DEAD_AFTER`]. Either way a blackholed peer's
/// connections end within about 2 s, failing (or moving) the request on
/// them instead of leaving it to wait out its timeout. A slow answer is not
/// mistaken for a dead peer: its kernel acknowledges the request and the
/// probes.
pub const PEER_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// See [`PEER_KEEPALIVE`]. The user timeout also ends a connection whose
/// peer keeps its receive window closed that long while it still answers
/// (RFC 1122 would wait forever); so it is lifted while a request body
/// streams (an app may read an upload slowly) and on tunnels, see
/// [`peer_patience`].
pub const PEER_DEAD_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Sets the keepalive and user timeout above on the socket `fd`.
pub fn watch_peer(fd: std::os::fd::RawFd) {
    // SAFETY: `fd` is an open socket owned by a connection the caller holds
    // for the duration of this call; the borrow does not outlive it and
    // setsockopt(2) neither closes nor takes ownership of it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let s = socket2::SockRef::from(&fd);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(PEER_KEEPALIVE)
        .with_interval(PEER_KEEPALIVE)
        .with_retries(2);
    if let Err(e) = s.set_tcp_keepalive(&keepalive) {
        tracing::debug!("cannot set keepalive on an upstream connection: {e}");
    }
    if let Err(e) = s.set_tcp_user_timeout(Some(PEER_DEAD_AFTER)) {
        tracing::debug!("cannot set TCP_USER_TIMEOUT on an upstream connection: {e}");
    }
}

/// Lifts (`patient`) or restores the user timeout of [`watch_peer`] on a
/// connection to a peer proxy: lifted while the peer may legitimately keep
/// its window closed (a streaming upload to a slow app, a tunnel); the
/// keepalive stays.
pub fn peer_patience(fd: std::os::fd::RawFd, patient: bool) {
    // SAFETY: as in `watch_peer`: `fd` is an open socket of a connection the
    // caller holds for this call, and the borrow ends with it; setsockopt(2)
    // neither closes nor takes ownership of it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let s = socket2::SockRef::from(&fd);
    let timeout = (!patient).then_some(PEER_DEAD_AFTER);
    if let Err(e) = s.set_tcp_user_timeout(timeout) {
        tracing::debug!("cannot change TCP_USER_TIMEOUT on an upstream connection: {e}");
    }
}

#[cfg(test)]
mod tests;
