//! A connection as the forwarding loop sees it: plaintext TCP (the local
//! app, a non-mesh upstream) or mutual TLS (another proxy). An enum, not a
//! trait object: one branch per call on the hot path and no boxed futures
//! (STYLE.md, concrete types).

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::runtime::{self, Buf, IoVecs, Linger, TcpStream};
use crate::tls::TlsStream;

pub enum Conn {
    Plain(TcpStream),
    Tls(TlsStream),
}

impl Conn {
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Conn::Plain(c) => c.raw_fd(),
            Conn::Tls(c) => c.raw_fd(),
        }
    }

    /// The peer's SPIFFE ID (mutual TLS only).
    pub fn peer_id(&self) -> Option<&Rc<str>> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(c) => c.peer_id(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// Whether TLS negotiated `proto` by ALPN (never, in plaintext).
    pub fn alpn_is(&self, proto: &[u8]) -> bool {
        match self {
            Conn::Plain(_) => false,
            Conn::Tls(c) => c.alpn_is(proto),
        }
    }

    pub fn release_idle_state(&mut self) {
        match self {
            Conn::Plain(c) => c.release_idle_state(),
            Conn::Tls(c) => c.release_idle_state(),
        }
    }

    pub async fn read(&mut self, buf: Buf) -> (io::Result<usize>, Buf) {
        match self {
            Conn::Plain(c) => c.read(buf).await,
            Conn::Tls(c) => c.read(buf).await,
        }
    }

    /// A read posted until `until` at the latest; with TLS, a record that
    /// started arriving must complete within `rest` (a peer cannot park a
    /// partial record on the connection).
    pub async fn read_linger(&mut self, buf: Buf, until: Instant, rest: Duration) -> Linger {
        match self {
            Conn::Plain(c) => c.read_linger(buf, until).await,
            Conn::Tls(c) => c.read_linger(buf, until, rest).await,
        }
    }

    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(c) => c.readable().await,
            Conn::Tls(c) => c.readable().await,
        }
    }

    pub async fn write_all(
        &mut self,
        buf: Buf,
        range: std::ops::Range<usize>,
    ) -> (io::Result<()>, Buf) {
        match self {
            Conn::Plain(c) => c.write_all(buf, range).await,
            Conn::Tls(c) => c.write_all(buf, range).await,
        }
    }

    pub async fn write_vectored(&mut self, v: IoVecs) -> (io::Result<()>, IoVecs) {
        match self {
            Conn::Plain(c) => c.write_vectored(v).await,
            Conn::Tls(c) => c.write_vectored(v).await,
        }
    }

    /// Half-close (TLS: close_notify first).
    pub async fn shutdown_write(&mut self) {
        match self {
            Conn::Plain(c) => c.shutdown_write(),
            Conn::Tls(c) => c.shutdown_write().await,
        }
    }

    /// Closes a connection the proxy is done with without losing the
    /// answer it just wrote, as nginx's `lingering_close` does. When the
    /// client is still sending bytes the proxy will not read (the rest of
    /// an upload after a 404, 403 or an upstream's early 413), a plain close
    /// makes the kernel answer them with a reset, and a client still
    /// writing its body sees "connection reset" instead of the response.
    /// So, for a connection [`Conn::may_be_sending`] says may still carry
    /// such bytes: half-close (the client reads the response, then EOF),
    /// read and discard until the client closes, nothing arrives for
    /// `quiet`, or `limit` has passed; then close. Any other connection is
    /// simply dropped (the usual end of a connection).
    pub async fn close_lingering(mut self, quiet: Duration, limit: Duration) {
        let fd = self.raw_fd();
        self.shutdown_write().await;
        let until = Instant::now() + limit;
        loop {
            let wait = until.min(Instant::now() + quiet);
            let readable = match &mut self {
                Conn::Plain(c) => runtime::timeout_at(wait, c.readable()).await,
                Conn::Tls(c) => runtime::timeout_at(wait, c.socket_readable()).await,
            };
            if !matches!(readable, Ok(Ok(()))) || !discard_queued(fd) {
                return;
            }
        }
    }

    /// Whether the client may still send bytes the proxy will not read
    /// (see [`Conn::close_lingering`]): it may (`may_send`) or has bytes
    /// unread, and has not closed its side. Discards what is queued.
    pub fn may_be_sending(&self, may_send: bool) -> bool {
        let fd = self.raw_fd();
        (may_send || unread_bytes(fd) > 0) && discard_queued(fd)
    }

    fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Plain(c) => Conn::Plain(c.try_clone()?),
            Conn::Tls(c) => Conn::Tls(c.try_clone()?),
        })
    }

    /// Relays bytes both ways until both directions finish (EOF, passed on
    /// as a half-close), either side fails, or nothing moves for `idle`.
    /// Returns the bytes copied (a → b, b → a). Two plaintext sockets use the
    /// runtime's tunnel; with TLS on either side, each direction is a task
    /// of its own over a second handle on the socket.
    pub async fn tunnel(a: Conn, b: Conn, bufs: (Buf, Buf), idle: Duration) -> (u64, u64) {
        let (a, b) = match (a, b) {
            (Conn::Plain(a), Conn::Plain(b)) => return TcpStream::tunnel(a, b, bufs, idle).await,
            pair => pair,
        };
        let (a2, b2) = match (a.try_clone(), b.try_clone()) {
            (Ok(a2), Ok(b2)) => (a2, b2),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cannot set up a relay: {e}");
                return (0, 0);
            }
        };
        let fds = [a.raw_fd(), b.raw_fd()];
        let last = Rc::new(Cell::new(Instant::now()));
        let done = Rc::new(Cell::new(0u8));
        let ab = pipe(a, b2, bufs.0, last.clone(), done.clone());
        let ba = pipe(b, a2, bufs.1, last.clone(), done.clone());
        let dog = runtime::tunnel_watchdog(fds, idle, last, done, runtime::sleep);
        let (x, y, ()) = runtime::join3(ab, ba, dog).await;
        (x, y)
    }
}

/// One direction of a relay. No timers on the reads and writes (a dropped
/// read could lose bytes); the watchdog ends an idle relay.
async fn pipe(
    mut r: Conn,
    mut w: Conn,
    mut buf: Buf,
    last: Rc<Cell<Instant>>,
    done: Rc<Cell<u8>>,
) -> u64 {
    let mut total = 0u64;
    loop {
        buf.clear();
        let (res, b) = r.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                last.set(Instant::now());
                let (res, b) = w.write_all(buf, 0..n).await;
                buf = b;
                if res.is_err() {
                    break;
                }
                last.set(Instant::now());
                total += n as u64;
            }
        }
    }
    w.shutdown_write().await;
    done.set(done.get() + 1);
    total
}

/// Bytes queued in the socket's receive buffer (FIONREAD); 0 on error.
fn unread_bytes(fd: std::os::fd::RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: ioctl(FIONREAD) on a socket writes one `c_int` (the bytes
    // queued) through its third argument, here `&mut n`, a live local
    // `c_int`; on a descriptor that is not a socket (or closed) it fails
    // with an error return and writes nothing.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if r == 0 && n > 0 {
        n as usize
    } else {
        0
    }
}

/// Reads and drops what the socket has queued, without waiting. `true`:
/// the peer may send more (the queue is empty for now); `false`: it closed
/// or the socket failed.
fn discard_queued(fd: std::os::fd::RawFd) -> bool {
    use nix::errno::Errno;
    use nix::sys::socket::{recv, MsgFlags};
    let mut sink = [0u8; 16 * 1024];
    loop {
        match recv(fd, &mut sink, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return false,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests;
