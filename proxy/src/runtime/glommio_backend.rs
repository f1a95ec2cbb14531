//! glommio backend (feature `runtime-glommio`): glommio 0.9 `LocalExecutor`s,
//! kept so the executor choice stays measurable (docs/design.md, "The executor").
//!
//! glommio creates its rings itself, with no `COOP_TASKRUN`/`SINGLE_ISSUER`
//! flags and no way to ask for them; that is the cost docs/design.md measures.
//!
//! How the seam maps onto glommio:
//!
//! * Reads go straight into the spare capacity of the caller's `Vec<u8>` with a
//!   non-blocking `recv(2)`. glommio's `AsyncRead` wants an initialised
//!   `&mut [u8]`, which would mean zero-filling the spare capacity per read,
//!   so it is only used to wait: when the socket is empty, a one-byte
//!   `AsyncRead::read` into a field of the stream (the "stash") parks the task
//!   on glommio's readiness poll; the next read delivers the stashed byte
//!   first. glommio exposes no other readiness wait: its `peek` submits a ring
//!   receive into a fresh 4 KiB-aligned heap buffer per wait, which an idle
//!   keep-alive connection would hold. Bytes only ever move in synchronous
//!   steps, so dropping a read (a timeout, [`TcpStream::read_linger`]'s linger)
//!   loses nothing and leaves nothing in flight that writes into a `Buf`.
//! * Writes are a non-blocking `send`/`sendmsg` with `MSG_NOSIGNAL`; when the
//!   socket buffer is full, the first pending bytes go through glommio's
//!   `AsyncWrite`, which waits for writability. glommio has no vectored write
//!   (the `AsyncWrite` default writes one slice), hence `sendmsg` here.
//! * Cross-thread wake-ups (the agent's `async_channel` sends to a shard) work:
//!   glommio 0.9 queues a waker woken from a foreign thread and kicks the
//!   executor's eventfd (`cross_thread_wakeup_reaches_a_parked_shard` checks it).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement};

use super::{Buf, Elapsed, IoVecs};

/// Submission ring depth per ring (glommio keeps three: main, latency, poll).
/// glommio queues requests beyond it in user space, so this bounds a batch,
/// not the number of connections.
const RING_DEPTH: usize = 1024;

/// Memory glommio registers with each of its rings for its own DMA buffers.
/// The proxy never uses them (sockets read into `Buf`s), and the kernel
/// charges registered buffers to RLIMIT_MEMLOCK, per ring as far as we can
/// tell, so take glommio's minimum (it rounds anything smaller up to 64 KiB).
/// If registration fails anyway, glommio logs it and runs without.
const IO_MEMORY: usize = 64 * 1024;

/// glommio refuses to start below 512 KiB of RLIMIT_MEMLOCK; leave room for
/// the registered buffers of a few shards on top.
const WANT_MEMLOCK: u64 = 4 << 20;

/// Most `iovec`s one `sendmsg` takes (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Which executor this build runs, for the log and `/config`.
/// Whether [`TcpStream::connect`] can mark its sockets (`[intercept]`):
/// glommio connects only sockets it opens itself.
pub const MARKS_SOCKETS: bool = false;

pub fn backend_name() -> &'static str {
    "glommio"
}

/// Raises the soft RLIMIT_MEMLOCK towards [`WANT_MEMLOCK`] (never above the
/// hard limit). Best effort: glommio says so itself if the budget is too small.
fn raise_memlock() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` through its pointer and
    // setrlimit(2) reads one, here `lim`, a live local `libc::rlimit` (the
    // type the kernel expects); neither keeps the pointer after returning.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) != 0 || lim.rlim_cur >= WANT_MEMLOCK {
            return;
        }
        let want = WANT_MEMLOCK.min(lim.rlim_max);
        if want > lim.rlim_cur {
            lim.rlim_cur = want;
            let _ = libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
        }
    }
}

/// Starts a shard thread, pinned to `cpu` when given, running `f` to completion
/// on a glommio `LocalExecutor` built on that thread. `f` receives a
/// description of the driver.
pub fn start_shard<F, Fut>(
    name: String,
    cpu: Option<usize>,
    f: F,
) -> io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // Pin here rather than with `Placement::Fixed` so a failure is logged
            // and the shard still runs, exactly as with the monoio backend.
            if let Some(cpu) = cpu {
                if let Err(e) = super::pin_current_thread(cpu) {
                    tracing::error!("cannot pin shard to CPU {cpu}: {e}");
                }
            }
            raise_memlock();
            let built = LocalExecutorBuilder::new(Placement::Unbound)
                .name(&name)
                .ring_depth(RING_DEPTH)
                .io_memory(IO_MEMORY)
                .make();
            match built {
                Ok(ex) => {
                    let desc = format!("io_uring ({RING_DEPTH}-entry rings, no setup flags)");
                    ex.run(f(desc));
                }
                Err(e) => {
                    tracing::error!("cannot create the shard's executor: {e}");
                    std::process::exit(1);
                }
            }
        })
}

/// Spawns a detached task on the current shard.
pub fn spawn_local<F: Future<Output = ()> + 'static>(f: F) {
    glommio::spawn_local(f).detach();
}

/// Sleeps on the shard's timer.
/// Runs three futures on the current task until all have finished.
pub async fn join3<A: Future, B: Future, C: Future>(
    a: A,
    b: B,
    c: C,
) -> (A::Output, B::Output, C::Output) {
    let ((x, y), z) = futures_lite::future::zip(futures_lite::future::zip(a, b), c).await;
    (x, y, z)
}

pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await
}

/// Runs `f` with a deadline. `f` is polled first, so a result that is ready
/// when the timer fires still wins.
pub async fn timeout<F: Future>(d: Duration, f: F) -> Result<F::Output, Elapsed> {
    future::or(async { Ok(f.await) }, async {
        glommio::timer::sleep(d).await;
        Err(Elapsed)
    })
    .await
}

/// Runs `f` until `deadline` (as [`timeout`]).
pub async fn timeout_at<F: Future>(deadline: Instant, f: F) -> Result<F::Output, Elapsed> {
    timeout(deadline.saturating_duration_since(Instant::now()), f).await
}

/// A listening socket on the current shard.
pub struct TcpListener {
    inner: glommio::net::TcpListener,
}

impl TcpListener {
    /// Takes over a bound, listening std socket.
    pub fn from_std(l: std::net::TcpListener) -> io::Result<Self> {
        let fd = l.into_raw_fd();
        // SAFETY: `fd` came out of `into_raw_fd`, so it is an open, bound,
        // listening TCP socket that nothing else owns or will close.
        let inner = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
        Ok(TcpListener { inner })
    }

    /// Accepts one connection; `stop` makes a pending (or later) accept fail
    /// with `ECANCELED` (drain).
    pub async fn accept(&self, stop: &StopHandle) -> io::Result<(TcpStream, SocketAddr)> {
        let accept = async {
            let s = self.inner.accept().await?;
            let peer = s.peer_addr()?;
            Ok((TcpStream::wrap(Sock::Tcp(s)), peer))
        };
        let stopped = async {
            stop.stopped().await;
            Err(io::Error::from_raw_os_error(libc::ECANCELED))
        };
        // The stop is polled first: once it fired, accepts fail even when a
        // connection is waiting in the backlog.
        future::or(stopped, accept).await
    }
}

struct StopState {
    stopped: Cell<bool>,
    /// One waker per task waiting in an accept (deduplicated by `will_wake`).
    wakers: RefCell<Vec<Waker>>,
}

/// Cancels pending accepts when the shard drains.
pub struct Stop(Rc<StopState>);
/// The handle pending accepts hold.
#[derive(Clone)]
pub struct StopHandle(Rc<StopState>);

impl Stop {
    pub fn new() -> Self {
        Stop(Rc::new(StopState {
            stopped: Cell::new(false),
            wakers: RefCell::new(Vec::new()),
        }))
    }
    pub fn handle(&self) -> StopHandle {
        StopHandle(self.0.clone())
    }
    pub fn stop(self) {
        self.0.stopped.set(true);
        let wakers = std::mem::take(&mut *self.0.wakers.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl StopHandle {
    /// Resolves once [`Stop::stop`] was called.
    fn stopped(&self) -> impl Future<Output = ()> + '_ {
        future::poll_fn(move |cx| {
            if self.0.stopped.get() {
                return Poll::Ready(());
            }
            let mut wakers = self.0.wakers.borrow_mut();
            match wakers.iter_mut().find(|w| w.will_wake(cx.waker())) {
                Some(w) => w.clone_from(cx.waker()),
                None => wakers.push(cx.waker().clone()),
            }
            Poll::Pending
        })
    }
}

/// The socket under a [`TcpStream`]: TCP, or a Unix stream socket (the
/// local app's, or one the app called in on).
enum Sock {
    Tcp(glommio::net::TcpStream),
    /// With its descriptor: glommio's Unix stream does not give it out.
    Unix(glommio::net::UnixStream, RawFd),
}

/// Runs `$body` with `$s` bound to the socket of either kind: both have the
/// same operations, so the arms are identical.
macro_rules! either {
    ($e:expr, $s:ident => $body:expr) => {
        match $e {
            Sock::Tcp($s) => $body,
            Sock::Unix($s, _) => $body,
        }
    };
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(_, fd) => *fd,
        }
    }
}

/// A connection on the current shard: TCP, or a Unix stream socket (the
/// name stays: everything above the seam treats both alike).
pub struct TcpStream {
    inner: Sock,
    /// The byte a readiness wait took off the socket; the next read starts
    /// with it.
    stash: Option<u8>,
}

/// A connection in readiness mode (tokio's `AsyncRead`/`AsyncWrite`
/// over glommio's futures-io ones).
pub struct PollTcp {
    inner: Sock,
    stash: Option<u8>,
}

impl tokio::io::AsyncRead for PollTcp {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if let Some(b) = self.stash.take() {
            buf.put_slice(&[b]);
            return std::task::Poll::Ready(Ok(()));
        }
        let this = self.get_mut();
        let dst = buf.initialize_unfilled();
        let polled = either!(&mut this.inner, s => futures_lite::AsyncRead::poll_read(std::pin::Pin::new(s), cx, dst));
        match polled {
            std::task::Poll::Ready(Ok(n)) => {
                buf.advance(n);
                std::task::Poll::Ready(Ok(()))
            }
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for PollTcp {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        either!(&mut self.inner, s => futures_lite::AsyncWrite::poll_write(std::pin::Pin::new(s), cx, data))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        either!(&mut self.inner, s => futures_lite::AsyncWrite::poll_flush(std::pin::Pin::new(s), cx))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        either!(&mut self.inner, s => futures_lite::AsyncWrite::poll_close(std::pin::Pin::new(s), cx))
    }
}

/// The outcome of [`TcpStream::read_linger`].
pub enum Linger {
    /// The read completed (bytes, 0 for EOF, or an error) with the buffer.
    Read(io::Result<usize>, Buf),
    /// Nothing arrived within the linger; the buffer is returned unread.
    Idle(Buf),
}

impl TcpStream {
    /// Adopts an accepted std socket (handed over from the acceptor thread).
    pub fn from_std(s: std::net::TcpStream) -> io::Result<Self> {
        let fd = s.into_raw_fd();
        // SAFETY: `fd` came out of `into_raw_fd`: an open, connected TCP
        // socket that nothing else owns or will close.
        let inner = unsafe { glommio::net::TcpStream::from_raw_fd(fd) };
        Ok(TcpStream::wrap(Sock::Tcp(inner)))
    }

    /// Adopts an accepted socket of either kind.
    pub fn adopt(s: super::StdStream) -> io::Result<Self> {
        match s {
            super::StdStream::Tcp(s) => TcpStream::from_std(s),
            super::StdStream::Unix(s) => {
                let fd = s.into_raw_fd();
                // SAFETY: `fd` came out of `into_raw_fd`: an open, connected
                // Unix stream socket that nothing else owns or will close.
                let inner = unsafe { glommio::net::UnixStream::from_raw_fd(fd) };
                Ok(TcpStream::wrap(Sock::Unix(inner, fd)))
            }
        }
    }

    /// Connects to the Unix stream socket at `path`. A Unix connect
    /// completes (or fails) at once unless the listener's accept queue is
    /// full, which is reported as an error rather than waited out: glommio
    /// opens its own socket for a connect and hides its descriptor, which
    /// the seam needs. `limit` has nothing to bound here.
    pub async fn connect_unix(path: &std::path::Path, limit: Duration) -> io::Result<Self> {
        let _ = limit;
        let s = socket2::Socket::new(
            socket2::Domain::UNIX,
            socket2::Type::STREAM.nonblocking().cloexec(),
            None,
        )?;
        match s.connect(&socket2::SockAddr::unix(path)?) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "connect: the listener's accept queue is full",
                ))
            }
            Err(e) => return Err(e),
        }
        TcpStream::adopt(super::StdStream::Unix(
            std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(s)),
        ))
    }

    /// Connects, bounded by `limit`. glommio has no way to connect a socket
    /// it did not open, so the upstream mark of `[intercept]` is not
    /// supported here (the proxy refuses to start with it, see
    /// [`super::MARKS_SOCKETS`]).
    pub async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<Self> {
        match timeout(limit, glommio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(TcpStream::wrap(Sock::Tcp(s)))
            }
            Ok(Err(e)) => Err(e.into()),
            Err(Elapsed) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    fn wrap(inner: Sock) -> Self {
        TcpStream { inner, stash: None }
    }

    /// `TCP_NODELAY` (nothing to set on a Unix socket).
    pub fn set_nodelay(&self) {
        if let Sock::Tcp(s) = &self.inner {
            let _ = s.set_nodelay(true);
        }
    }

    /// The socket's descriptor (for the shard's idle table).
    pub fn raw_fd(&self) -> RawFd {
        self.fd()
    }

    /// Drops per-connection state that only a busy connection needs, before
    /// it waits idle (nothing to drop on this backend).
    pub fn release_idle_state(&mut self) {}

    /// The peer's address; a Unix socket's peer has none (the error says so).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Sock::Tcp(s) => Ok(s.peer_addr()?),
            Sock::Unix(..) => Err(super::no_ip_peer()),
        }
    }

    fn fd(&self) -> RawFd {
        self.inner.fd()
    }

    /// Half-close: the peer reads EOF; reading goes on.
    pub fn shutdown_write(&self) {
        // On a descriptor `self` owns; shutdown(2) does not close it, and an
        // error (the peer reset it already) leaves nothing to do.
        let _ = nix::sys::socket::shutdown(self.fd(), nix::sys::socket::Shutdown::Write);
    }

    /// The same socket with tokio's `AsyncRead`/`AsyncWrite` surface, for
    /// protocol stacks written against it (HTTP/2: the `h2` crate).
    pub fn into_poll(self) -> io::Result<PollTcp> {
        Ok(PollTcp {
            inner: self.inner,
            stash: self.stash,
        })
    }

    /// Copies the first bytes waiting on the socket into `buf` without
    /// consuming them (with the byte a readiness wait took, if any).
    pub fn peek(&self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        if let (Some(b), Some(first)) = (self.stash, buf.first_mut()) {
            *first = b;
            n = 1;
        }
        n + super::peek_fd(self.fd(), &mut buf[n..])
    }

    /// Reads into the spare capacity of `buf` (appending after its length).
    pub async fn read(&mut self, mut buf: Buf) -> (io::Result<usize>, Buf) {
        let res = self.read_into(&mut buf).await;
        (res, buf)
    }

    /// The read itself; cancel-safe (see the module doc).
    async fn read_into(&mut self, buf: &mut Buf) -> io::Result<usize> {
        loop {
            if let Some(byte) = self.stash {
                if buf.len() == buf.capacity() {
                    // What a zero-length read returns on the monoio backend.
                    return Ok(0);
                }
                buf.push(byte);
                self.stash = None;
                // Take whatever else arrived without waiting; an error (or
                // EAGAIN) shows up on the next read.
                return Ok(1 + recv_spare(self.fd(), buf).unwrap_or(0));
            }
            match recv_spare(self.fd(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_readable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                res => return res,
            }
        }
    }

    /// Waits until a byte (stashed) or EOF arrives, on glommio's readiness
    /// poll. Storing the byte follows the read with no await in between, so
    /// cancelling the wait cannot lose it.
    async fn wait_readable(&mut self) -> io::Result<()> {
        if self.stash.is_some() {
            return Ok(());
        }
        let mut byte = [0u8; 1];
        let n = either!(&mut self.inner, s => s.read(&mut byte).await?);
        if n == 1 {
            self.stash = Some(byte[0]);
        }
        Ok(())
    }

    /// Keeps a read posted until `until` at the latest; if nothing arrives,
    /// gives the buffer back, so the connection can wait without holding one.
    pub async fn read_linger(&mut self, mut buf: Buf, until: Instant) -> Linger {
        let linger = until.saturating_duration_since(Instant::now());
        let res = future::or(async { Some(self.read_into(&mut buf).await) }, async {
            glommio::timer::sleep(linger).await;
            None
        })
        .await;
        match res {
            Some(res) => Linger::Read(res, buf),
            None => Linger::Idle(buf),
        }
    }

    /// Waits until the socket is readable (or closed) without holding a buffer.
    pub async fn readable(&mut self) -> io::Result<()> {
        if self.stash.is_some() {
            return Ok(());
        }
        // Already readable (or closed)? Then nothing needs taking off the socket.
        let mut probe = [0u8; 1];
        let peek = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        match nix::sys::socket::recv(self.fd(), &mut probe, peek) {
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => self.wait_readable().await,
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `buf[range]` completely.
    pub async fn write_all(
        &mut self,
        buf: Buf,
        range: std::ops::Range<usize>,
    ) -> (io::Result<()>, Buf) {
        let mut rest = &buf[range];
        while !rest.is_empty() {
            let res = match send_nb(self.fd(), rest) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    either!(&mut self.inner, s => s.write(rest).await)
                }
                res => res,
            };
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Writes every pending byte of `v` (vectored).
    pub async fn write_vectored(&mut self, mut v: IoVecs) -> (io::Result<()>, IoVecs) {
        while v.remaining() > 0 {
            let res = match sendmsg_nb(self.fd(), &v) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Full socket buffer: let glommio wait for writability
                    // and send (part of) the first pending slice.
                    let first = v.pending_slices().next().expect("bytes remain");
                    either!(&mut self.inner, s => s.write(first).await)
                }
                res => res,
            };
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), v),
                Ok(n) => v.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), v),
            }
        }
        (Ok(()), v)
    }

    /// A second handle on the same socket (`dup(2)`), so one direction of a
    /// tunnel can read while the other writes: glommio streams cannot be
    /// split, and its writes need `&mut`.
    /// A second handle on the same socket (a duplicated descriptor), for the
    /// other direction of a relay.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        // SAFETY: `fd()` is `self.inner`'s open socket, and `&self` keeps it
        // open for the borrow, which ends with the dup below. (glommio's
        // streams implement `AsRawFd` but not `AsFd`, hence the raw borrow.)
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd()) };
        let fd = fd.try_clone_to_owned()?;
        TcpStream::adopt(match self.inner {
            Sock::Tcp(_) => super::StdStream::Tcp(fd.into()),
            Sock::Unix(..) => super::StdStream::Unix(fd.into()),
        })
    }

    /// Relays bytes both ways until both directions finish (EOF), either side
    /// fails, or nothing moves in either direction for `idle`. Returns the
    /// bytes copied (a → b, b → a).
    pub async fn tunnel(
        a: TcpStream,
        b: TcpStream,
        bufs: (Buf, Buf),
        idle: Duration,
    ) -> (u64, u64) {
        let (a2, b2) = match (a.try_clone(), b.try_clone()) {
            (Ok(a2), Ok(b2)) => (a2, b2),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cannot set up a tunnel: {e}");
                return (0, 0);
            }
        };
        let fds = [a.fd(), b.fd()];
        let last = Rc::new(Cell::new(Instant::now()));
        let done = Rc::new(Cell::new(0u8));
        let ab = pipe(a, b2, bufs.0, last.clone(), done.clone());
        let ba = pipe(b, a2, bufs.1, last.clone(), done.clone());
        let dog = super::tunnel_watchdog(fds, idle, last, done, sleep);
        let ((x, y), ()) = future::zip(future::zip(ab, ba), dog).await;
        (x, y)
    }
}

/// One direction of a tunnel; the watchdog ends an idle tunnel by shutting
/// both sockets down (see `runtime::tunnel_watchdog`).
async fn pipe(
    mut r: TcpStream,
    mut w: TcpStream,
    mut buf: Buf,
    last: Rc<Cell<Instant>>,
    done: Rc<Cell<u8>>,
) -> u64 {
    let mut total = 0u64;
    loop {
        buf.clear();
        match r.read_into(&mut buf).await {
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
    let _ = either!(&w.inner, s => s.shutdown(Shutdown::Write).await);
    done.set(done.get() + 1);
    total
}

/// Non-blocking `recv` into the spare capacity of `buf`; grows its length by
/// what arrived.
fn recv_spare(fd: RawFd, buf: &mut Buf) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is `buf`'s spare capacity, borrowed mutably for the
    // call: `spare.len()` writable bytes (`MaybeUninit<u8>` has u8's
    // layout); recv(2) writes at most that many and keeps no pointer.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: `recv` returned `n >= 0` (checked above), so it initialised the
    // first `n <= spare.len()` spare bytes, right after the current length:
    // the new length stays within the capacity and covers only those.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Non-blocking `send`; `MSG_NOSIGNAL` turns a closed peer into `EPIPE`
/// instead of SIGPIPE.
fn send_nb(fd: RawFd, b: &[u8]) -> io::Result<usize> {
    use nix::sys::socket::MsgFlags;
    Ok(nix::sys::socket::send(
        fd,
        b,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )?)
}

/// Non-blocking vectored send of (up to `IOV_MAX` of) `iov`.
fn sendmsg_nb(fd: RawFd, v: &IoVecs) -> io::Result<usize> {
    let iov = v.pending();
    // SAFETY: `msghdr` is plain C data (integers and raw pointers), for which
    // all zeroes is a valid value: no address, no control data, no flags.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len().min(IOV_MAX) as _;
    // SAFETY: `msg.msg_iov` points at `msg_iovlen` entries of `iov`, a live
    // slice borrowed from `v`; each entry points at `iov_len` initialised
    // bytes inside `v`'s own buffers (the `IoVecs` invariant,
    // runtime/iovecs.rs), kept alive and unchanged by the borrow for this
    // synchronous call. sendmsg(2) only reads them.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests;
