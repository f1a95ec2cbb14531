//! monoio backend: io_uring with `COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN`,
//! falling back to fewer flags, then to the epoll ("legacy") driver.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    Canceller, Splitable,
};
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use super::{Buf, Elapsed, IoVecs};

/// Ring size per shard: enough for every connection's posted read plus writes.
const RING_ENTRIES: u32 = 4096;

/// Which driver a shard ended up with, for the log and `/config`.
/// Whether [`TcpStream::connect`] can mark its sockets (`[intercept]`):
/// upstream sockets are opened with the mark.
pub const MARKS_SOCKETS: bool = true;

pub fn backend_name() -> &'static str {
    "monoio"
}

type Rt = monoio::FusionRuntime<
    monoio::time::TimeDriver<IoUringDriver>,
    monoio::time::TimeDriver<LegacyDriver>,
>;

/// Builds the shard's runtime on the calling thread (SINGLE_ISSUER: the ring
/// belongs to the thread that creates it). Returns the runtime and a
/// description of what was built.
fn build_runtime() -> io::Result<(Rt, String)> {
    let forced_legacy = std::env::var("MONOIO_FORCE_LEGACY_DRIVER")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        .unwrap_or(false);
    let mut refused = Vec::new();
    if !forced_legacy && monoio::utils::detect_uring() {
        type Setup = fn(&mut io_uring::Builder);
        let ladder: [(&str, Setup); 4] = [
            ("COOP_TASKRUN|SINGLE_ISSUER|DEFER_TASKRUN", |b| {
                b.setup_coop_taskrun()
                    .setup_single_issuer()
                    .setup_defer_taskrun();
            }),
            ("COOP_TASKRUN|SINGLE_ISSUER", |b| {
                b.setup_coop_taskrun().setup_single_issuer();
            }),
            ("COOP_TASKRUN", |b| {
                b.setup_coop_taskrun();
            }),
            ("no flags", |_| {}),
        ];
        for (name, setup) in ladder {
            let mut urb = io_uring::IoUring::builder();
            setup(&mut urb);
            match RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(RING_ENTRIES)
                .uring_builder(urb)
                .enable_timer()
                .build()
            {
                Ok(rt) => {
                    let desc = if refused.is_empty() {
                        format!("io_uring ({name})")
                    } else {
                        format!("io_uring ({name}; kernel refused {})", refused.join(", "))
                    };
                    return Ok((rt.into(), desc));
                }
                Err(e) => refused.push(format!("{name}: {e}")),
            }
        }
    }
    let rt = RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()?;
    let why = if forced_legacy {
        "MONOIO_FORCE_LEGACY_DRIVER is set".to_string()
    } else if refused.is_empty() {
        "io_uring is unavailable".to_string()
    } else {
        format!("io_uring refused: {}", refused.join("; "))
    };
    Ok((rt.into(), format!("epoll ({why})")))
}

/// Starts a shard thread, pinned to `cpu` when given, running `f` to completion.
/// `on_start` receives the description of the driver that was built.
pub fn start_shard<F, Fut>(
    name: String,
    cpu: Option<usize>,
    f: F,
) -> io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    std::thread::Builder::new().name(name).spawn(move || {
        if let Some(cpu) = cpu {
            if let Err(e) = super::pin_current_thread(cpu) {
                tracing::error!("cannot pin shard to CPU {cpu}: {e}");
            }
        }
        match build_runtime() {
            Ok((mut rt, desc)) => match &mut rt {
                monoio::FusionRuntime::Uring(r) => r.block_on(f(desc)),
                monoio::FusionRuntime::Legacy(r) => r.block_on(f(desc)),
            },
            Err(e) => {
                tracing::error!("cannot create the shard's executor: {e}");
                std::process::exit(1);
            }
        }
    })
}

/// Spawns a detached task on the current shard.
pub fn spawn_local<F: Future<Output = ()> + 'static>(f: F) {
    drop(monoio::spawn(f));
}

/// Sleeps on the shard's timer.
/// Runs three futures on the current task until all have finished.
pub async fn join3<A: Future, B: Future, C: Future>(
    a: A,
    b: B,
    c: C,
) -> (A::Output, B::Output, C::Output) {
    monoio::join!(a, b, c)
}

pub fn sleep(d: Duration) -> monoio::time::Sleep {
    monoio::time::sleep(d)
}

/// Runs `f` with a limit of `d`, counted from the first time `f` has to
/// wait (see [`Timeout`]).
///
/// A plain function returning a named future, not an `async fn`: an async
/// wrapper keeps `f` as its argument and again inside the timeout (two
/// slots of the size of `f`), and moves it from one to the other when
/// first polled. Around a whole request exchange that was a 5 KiB copy per
/// request (memmove: 5% of the proxy's CPU in the profile).
pub fn timeout<F: Future>(d: Duration, f: F) -> Timeout<F> {
    Timeout {
        value: f,
        limit: Limit::After(d),
        sleep: None,
    }
}

/// Runs `f` with a deadline: for callers that already hold the time a
/// deadline counts from (one clock read per request, not one per timer).
pub fn timeout_at<F: Future>(deadline: Instant, f: F) -> Timeout<F> {
    Timeout {
        value: f,
        limit: Limit::At(deadline),
        sleep: None,
    }
}

enum Limit {
    After(Duration),
    At(Instant),
}

pin_project_lite::pin_project! {
    /// The future of [`timeout`] and [`timeout_at`].
    ///
    /// The timer is made only when `f` first returns `Pending`: most timed
    /// operations on the request path finish on their first poll (a write the
    /// socket takes at once, a read of bytes already decrypted), and then cost
    /// neither a clock read nor a timer. A relative limit counts from that
    /// first wait, microseconds after the call.
    pub struct Timeout<F> {
        #[pin]
        value: F,
        limit: Limit,
        // Set once, on the first `Pending`, and never moved out (pinned).
        #[pin]
        sleep: Option<monoio::time::Sleep>,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut this = self.project();
        if let std::task::Poll::Ready(v) = this.value.poll(cx) {
            return std::task::Poll::Ready(Ok(v));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(match *this.limit {
                Limit::After(d) => monoio::time::sleep(d),
                Limit::At(t) => monoio::time::sleep_until(t.into()),
            }));
        }
        let sleep = this.sleep.as_pin_mut().expect("set just above");
        sleep.poll(cx).map(|()| Err(Elapsed))
    }
}

/// A listening socket on the current shard.
pub struct TcpListener {
    inner: monoio::net::TcpListener,
}

impl TcpListener {
    /// Takes over a bound, listening std socket.
    pub fn from_std(l: std::net::TcpListener) -> io::Result<Self> {
        Ok(TcpListener {
            inner: monoio::net::TcpListener::from_std(l)?,
        })
    }

    /// Accepts one connection; `stop` cancels the pending accept (drain).
    pub async fn accept(&self, stop: &StopHandle) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, a) = self.inner.cancelable_accept(stop.0.clone()).await?;
        Ok((TcpStream::wrap(s), a))
    }
}

/// Cancels pending accepts when the shard drains.
pub struct Stop(Canceller);
/// The handle pending accepts hold.
#[derive(Clone)]
pub struct StopHandle(CancelHandle);

impl Stop {
    pub fn new() -> Self {
        Stop(Canceller::new())
    }
    pub fn handle(&self) -> StopHandle {
        StopHandle(self.0.handle())
    }
    pub fn stop(self) {
        drop(self.0.cancel());
    }
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

/// A connection in readiness mode (tokio's `AsyncRead`/`AsyncWrite`), over
/// TCP or a Unix socket.
pub enum PollTcp {
    Tcp(monoio::net::tcp::stream_poll::TcpStreamPoll),
    Unix(monoio::net::unix::stream_poll::UnixStreamPoll),
}

/// Runs `$body` with `$s` bound to the socket of either kind (`Sock` or
/// `PollTcp`): both have the same operations, so the arms are identical.
macro_rules! either {
    ($e:expr, $t:ident :: {$a:ident, $b:ident}, $s:ident => $body:expr) => {
        match $e {
            $t::$a($s) => $body,
            $t::$b($s) => $body,
        }
    };
}

impl tokio::io::AsyncRead for PollTcp {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        either!(self.get_mut(), PollTcp::{Tcp, Unix}, s => std::pin::Pin::new(s).poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for PollTcp {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        either!(self.get_mut(), PollTcp::{Tcp, Unix}, s => std::pin::Pin::new(s).poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        either!(self.get_mut(), PollTcp::{Tcp, Unix}, s => std::pin::Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        either!(self, PollTcp::{Tcp, Unix}, s => s.is_write_vectored())
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        either!(self.get_mut(), PollTcp::{Tcp, Unix}, s => std::pin::Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        either!(self.get_mut(), PollTcp::{Tcp, Unix}, s => std::pin::Pin::new(s).poll_shutdown(cx))
    }
}

/// The socket under a [`TcpStream`].
enum Sock {
    Tcp(monoio::net::TcpStream),
    /// A Unix stream socket: the local app's (`[inbound] app = "unix:..."`)
    /// or one the app called in on (`[outbound] listen = "unix:..."`).
    Unix(monoio::net::UnixStream),
}

/// A connection on the current shard: TCP, or a Unix stream socket (the
/// name stays: everything above the seam treats both alike, and only
/// [`TcpStream::peer_addr`] and [`TcpStream::set_nodelay`] differ).
pub struct TcpStream {
    inner: Sock,
    /// Cancels a lingering read; kept per connection so a request costs no
    /// allocation (a fresh one replaces it only after it has cancelled).
    canceller: Option<Canceller>,
}

/// The outcome of [`TcpStream::read_linger`].
pub enum Linger {
    /// The read completed (bytes, 0 for EOF, or an error) with the buffer.
    Read(io::Result<usize>, Buf),
    /// Nothing arrived within the linger; the buffer is returned unread.
    Idle(Buf),
}

impl TcpStream {
    fn wrap(inner: monoio::net::TcpStream) -> Self {
        TcpStream {
            inner: Sock::Tcp(inner),
            canceller: None,
        }
    }

    /// Adopts an accepted std socket (handed over from the acceptor thread).
    pub fn from_std(s: std::net::TcpStream) -> io::Result<Self> {
        Ok(TcpStream::wrap(monoio::net::TcpStream::from_std(s)?))
    }

    /// Adopts an accepted socket of either kind.
    pub fn adopt(s: super::StdStream) -> io::Result<Self> {
        match s {
            super::StdStream::Tcp(s) => TcpStream::from_std(s),
            super::StdStream::Unix(s) => Ok(TcpStream {
                inner: Sock::Unix(monoio::net::UnixStream::from_std(s)?),
                canceller: None,
            }),
        }
    }

    /// Connects to the Unix stream socket at `path`, bounded by `limit`.
    pub async fn connect_unix(path: &std::path::Path, limit: Duration) -> io::Result<Self> {
        match monoio::time::timeout(limit, monoio::net::UnixStream::connect(path)).await {
            Ok(Ok(s)) => Ok(TcpStream {
                inner: Sock::Unix(s),
                canceller: None,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    /// Connects, bounded by `limit`; the socket carries the upstream mark
    /// when one is set (`[intercept]`).
    pub async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<Self> {
        let mark = super::upstream_mark();
        let connecting = async {
            if mark == 0 {
                monoio::net::TcpStream::connect_addr(addr).await
            } else {
                Self::connect_marked(addr, mark).await
            }
        };
        match monoio::time::timeout(limit, connecting).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(TcpStream::wrap(s))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    /// monoio opens its own socket for a connect, with no way to set an
    /// option first: this one is opened with the mark, adopted, and waited
    /// on until it is writable (connected or failed).
    async fn connect_marked(addr: SocketAddr, mark: u32) -> io::Result<monoio::net::TcpStream> {
        let s = monoio::net::TcpStream::from_std(super::marked_socket(addr, mark)?)?;
        s.writable(false).await?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        // SAFETY: `fd` is `s`'s open socket, and `s` lives (unclosed) until
        // after the borrow's last use in the `match` below. (monoio's
        // streams implement `AsRawFd` but not `AsFd`, hence the raw borrow.)
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        match socket2::SockRef::from(&borrowed).take_error()? {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }

    /// The socket's descriptor (for the shard's idle table).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        either!(&self.inner, Sock::{Tcp, Unix}, s => std::os::fd::AsRawFd::as_raw_fd(s))
    }

    /// Drops per-connection state that only a busy connection needs, before
    /// it waits idle.
    pub fn release_idle_state(&mut self) {
        self.canceller = None;
    }

    /// `TCP_NODELAY` (nothing to set on a Unix socket).
    pub fn set_nodelay(&self) {
        if let Sock::Tcp(s) = &self.inner {
            let _ = s.set_nodelay(true);
        }
    }

    /// Half-close: the peer reads EOF; reading goes on.
    pub fn shutdown_write(&self) {
        // On a descriptor `self` owns; shutdown(2) does not close it, and an
        // error (the peer reset it already) leaves nothing to do.
        let _ = nix::sys::socket::shutdown(self.raw_fd(), nix::sys::socket::Shutdown::Write);
    }

    /// A second handle on the same socket (a duplicated descriptor), for the
    /// other direction of a relay.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        // SAFETY: `raw_fd()` is `self.inner`'s open socket, and `&self` keeps
        // it open for the borrow, which ends with the dup below. (monoio's
        // streams implement `AsRawFd` but not `AsFd`, hence the raw borrow.)
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.raw_fd()) };
        let fd = fd.try_clone_to_owned()?;
        TcpStream::adopt(match self.inner {
            Sock::Tcp(_) => super::StdStream::Tcp(fd.into()),
            Sock::Unix(_) => super::StdStream::Unix(fd.into()),
        })
    }

    /// The peer's address; a Unix socket's peer has none (the error says so).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Sock::Tcp(s) => s.peer_addr(),
            Sock::Unix(_) => Err(super::no_ip_peer()),
        }
    }

    /// The same socket with a readiness-based (`poll_read`/`poll_write`)
    /// surface, for protocol stacks written against tokio's I/O traits
    /// (HTTP/2: the `h2` crate). One-way: the connection stays poll-based.
    pub fn into_poll(self) -> io::Result<PollTcp> {
        match self.inner {
            Sock::Tcp(s) => s.try_into_poll_io().map(PollTcp::Tcp).map_err(|(e, _)| e),
            Sock::Unix(s) => s.try_into_poll_io().map(PollTcp::Unix).map_err(|(e, _)| e),
        }
    }

    /// Copies the first bytes waiting on the socket into `buf` without
    /// consuming them.
    pub fn peek(&self, buf: &mut [u8]) -> usize {
        super::peek_fd(self.raw_fd(), buf)
    }

    /// Reads into the spare capacity of `buf` (appending after its length).
    pub async fn read(&mut self, buf: Buf) -> (io::Result<usize>, Buf) {
        use monoio::buf::IoBufMut;
        // monoio reads a Vec from its start; a slice of the spare capacity
        // appends instead (and set_init extends the length past it).
        let (len, cap) = (buf.len(), buf.capacity());
        let slice = buf.slice_mut(len..cap);
        let (res, slice) = either!(&mut self.inner, Sock::{Tcp, Unix}, s => s.read(slice).await);
        (res, slice.into_inner())
    }

    /// Keeps a read posted until `until` at the latest; if nothing arrives,
    /// cancels it and gives the buffer back, so the connection can wait
    /// without holding one. A deadline rather than a duration: the caller
    /// has just read the clock (the end of the previous response).
    pub async fn read_linger(&mut self, buf: Buf, until: Instant) -> Linger {
        let canceller = &mut self.canceller;
        either!(&mut self.inner, Sock::{Tcp, Unix}, s => linger(s, canceller, buf, until).await)
    }

    /// Waits until the socket is readable (or closed) without holding a buffer.
    pub async fn readable(&mut self) -> io::Result<()> {
        either!(&self.inner, Sock::{Tcp, Unix}, s => s.readable(false).await)
    }

    /// Writes `buf[range]` completely: what the socket takes at once goes
    /// out in a direct `send` (see [`send_now`]), the rest through the ring.
    pub async fn write_all(
        &mut self,
        buf: Buf,
        range: std::ops::Range<usize>,
    ) -> (io::Result<()>, Buf) {
        use monoio::buf::IoBuf;
        let mut start = range.start;
        if start < range.end {
            match send_now_one(self.raw_fd(), &buf[start..range.end]) {
                Ok(n) => start += n,
                Err(e) => return (Err(e), buf),
            }
            if start == range.end {
                return (Ok(()), buf);
            }
        }
        let slice = buf.slice(start..range.end);
        let (res, slice) =
            either!(&mut self.inner, Sock::{Tcp, Unix}, s => s.write_all(slice).await);
        (res.map(|_| ()), slice.into_inner())
    }

    /// Writes every pending byte of `v` (vectored): a direct `sendmsg`
    /// first (see [`send_now`]), the ring for what the socket did not take.
    pub async fn write_vectored(&mut self, mut v: IoVecs) -> (io::Result<()>, IoVecs) {
        if v.remaining() > 0 {
            match send_now(self.raw_fd(), &v) {
                Ok(n) => v.advance(n),
                Err(e) => return (Err(e), v),
            }
        }
        while v.remaining() > 0 {
            let pending = IoVecsBuf(v);
            let (res, back) =
                either!(&mut self.inner, Sock::{Tcp, Unix}, s => s.writev(pending).await);
            v = back.0;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), v),
                Ok(n) => v.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), v),
            }
        }
        (Ok(()), v)
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
        let fds = [a.raw_fd(), b.raw_fd()];
        let last = Rc::new(Cell::new(Instant::now()));
        let done = Rc::new(Cell::new(0u8));
        let dog = super::tunnel_watchdog(fds, idle, last.clone(), done.clone(), sleep);
        let (a, b) = (a.inner, b.inner);
        match (a, b) {
            (Sock::Tcp(a), Sock::Tcp(b)) => {
                pipes(a.into_split(), b.into_split(), bufs, last, done, dog).await
            }
            (Sock::Tcp(a), Sock::Unix(b)) => {
                pipes(a.into_split(), b.into_split(), bufs, last, done, dog).await
            }
            (Sock::Unix(a), Sock::Tcp(b)) => {
                pipes(a.into_split(), b.into_split(), bufs, last, done, dog).await
            }
            (Sock::Unix(a), Sock::Unix(b)) => {
                pipes(a.into_split(), b.into_split(), bufs, last, done, dog).await
            }
        }
    }
}

/// A read kept posted until `until` (see [`TcpStream::read_linger`]).
async fn linger<S: CancelableAsyncReadRent>(
    s: &mut S,
    canceller: &mut Option<Canceller>,
    buf: Buf,
    until: Instant,
) -> Linger {
    use monoio::buf::IoBufMut;
    let handle = canceller.get_or_insert_with(Canceller::new).handle();
    let (len, cap) = (buf.len(), buf.capacity());
    let read = s.cancelable_read(buf.slice_mut(len..cap), handle);
    let mut read = std::pin::pin!(read);
    monoio::select! {
        (res, buf) = &mut read => Linger::Read(res, buf.into_inner()),
        _ = monoio::time::sleep_until(until.into()) => {
            let fresh = canceller.take().map(Canceller::cancel);
            let (res, buf) = read.await;
            *canceller = fresh;
            let buf = buf.into_inner();
            match res {
                Ok(n) => Linger::Read(Ok(n), buf),
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Linger::Idle(buf),
                Err(e) => Linger::Read(Err(e), buf),
            }
        }
    }
}

/// Both directions of a tunnel and its watchdog, over split halves of
/// either kind of socket.
async fn pipes<AR, AW, BR, BW>(
    (ar, aw): (AR, AW),
    (br, bw): (BR, BW),
    bufs: (Buf, Buf),
    last: Rc<Cell<Instant>>,
    done: Rc<Cell<u8>>,
    dog: impl Future<Output = ()>,
) -> (u64, u64)
where
    AR: AsyncReadRent,
    AW: AsyncWriteRent,
    BR: AsyncReadRent,
    BW: AsyncWriteRent,
{
    let ab = pipe(ar, bw, bufs.0, last.clone(), done.clone());
    let ba = pipe(br, aw, bufs.1, last, done);
    let (x, y, ()) = monoio::join!(ab, ba, dog);
    (x, y)
}

/// Sends what the socket accepts right now, without blocking: one
/// `sendmsg(MSG_DONTWAIT)`; `Ok(0)` when the send buffer is full.
///
/// Why not the ring: a write to a socket with room in its send buffer
/// completes at once, but through io_uring the task learns that only on the
/// next loop turn (submit, completion, wake-up), and only then posts the
/// read that follows. Measured on the small keep-alive benchmark, two ring
/// writes per request (upstream head, client response) were half of the
/// proxy's ring operations; done here, the read that follows a write goes
/// into the same submission as the other connections' work, and the write
/// needs no timer. A write the socket cannot take whole (large bodies, a
/// slow reader) goes on through the ring.
fn send_now(fd: std::os::fd::RawFd, v: &IoVecs) -> io::Result<usize> {
    let iov = v.pending();
    // SAFETY: `msghdr` is plain C data (integers and raw pointers), for which
    // all zeroes is a valid value: no address, no control data, no flags.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    // At most IOV_MAX (1024) pieces per call; the rest goes in the next.
    msg.msg_iovlen = iov.len().min(1024) as _;
    loop {
        // SAFETY: `msg.msg_iov` points at `msg_iovlen` entries of `iov`, a
        // live slice borrowed from `v`; each entry points at `iov_len`
        // initialised bytes inside `v`'s own buffers (the `IoVecs`
        // invariant, runtime/iovecs.rs), which the borrow keeps alive and
        // unchanged for this synchronous call. sendmsg(2) only reads them
        // (the kernel does not write through `msg_iov` on a send).
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(0),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// [`send_now`] of one slice: one `send(MSG_DONTWAIT)`; `Ok(0)` when the
/// send buffer is full.
fn send_now_one(fd: std::os::fd::RawFd, b: &[u8]) -> io::Result<usize> {
    use nix::errno::Errno;
    use nix::sys::socket::MsgFlags;
    loop {
        match nix::sys::socket::send(fd, b, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => return Ok(n),
            Err(Errno::EAGAIN) => return Ok(0),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One direction of a tunnel: reads and writes carry no timer of their own
/// (dropping an in-flight read could lose its bytes); the watchdog ends a
/// tunnel that went idle by shutting both sockets down.
async fn pipe<R: AsyncReadRent, W: AsyncWriteRent>(
    mut r: R,
    mut w: W,
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
                let (res, b) = w.write_all(buf).await;
                buf = b;
                if res.is_err() {
                    break;
                }
                last.set(Instant::now());
                total += n as u64;
            }
        }
    }
    // Half-close: the other side sees EOF, the other direction goes on.
    let _ = w.shutdown().await;
    done.set(done.get() + 1);
    total
}

/// Adapter: monoio's `IoVecBuf` over [`IoVecs`].
struct IoVecsBuf(IoVecs);

// SAFETY: monoio reads `read_iovec_len()` iovecs from `read_iovec_ptr()`
// and the bytes they point at while it owns this value (the write's
// submission and completion). The array is `IoVecs`'s `iov[pos..]`, and its
// entries point into the `IoVecs`'s own buffers (the invariant in
// runtime/iovecs.rs). Both live on the heap of Vecs moved into this
// wrapper, so moving the wrapper into the runtime moves no byte they point
// at, and nothing touches them (no push, no advance) until the runtime
// hands the value back.
unsafe impl monoio::buf::IoVecBuf for IoVecsBuf {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.0.pending().as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.0.pending().len()
    }
}

#[cfg(test)]
mod tests;
