//! `coremesh-bench origin`: a fast HTTP/1.1 keep-alive origin, so that the
//! origin is never what a benchmark measures.
//!
//! One mio event loop on one thread. Every response is built once and then
//! written from the same bytes: `GET /size/N` answers with an N-byte body,
//! anything else with `--body-size` bytes. Requests on a connection are
//! answered in order, one at a time; request bodies (Content-Length) are read
//! and discarded. With `--delay`, each response leaves that long after its
//! request head arrived (all delays are equal, so a FIFO queue is the timer
//! wheel).
//!
//! The same port serves h2c with prior knowledge (and unary gRPC): a
//! connection whose first bytes are the HTTP/2 preface is handed to
//! [`http2`]'s thread.
//!
//! With a Unix socket ([`bind_unix`], `--unix PATH`), the same loop also
//! answers HTTP/1.1 on that socket, so a proxy in front of the origin can
//! reach it without the TCP stack (`compare`'s app-unix pairs). HTTP/2 is
//! served on the TCP port only.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::http::{build_response_from, parse_request_head};
use crate::sys;

pub mod http2;

#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Body size of responses to paths other than `/size/N`.
    pub body_size: usize,
    /// Added before each response.
    pub delay: Duration,
    /// Named in an `x-instance` header of every 200 response
    /// ([`crate::http::INSTANCE_HEADER`]), so a client can tell which
    /// origin answered.
    pub instance: Option<String>,
}

const LISTENER: Token = Token(usize::MAX - 1);
const TIMER: Token = Token(usize::MAX - 2);
const UNIX_LISTENER: Token = Token(usize::MAX - 3);
const READ_BUF: usize = 16 * 1024;
/// `/size/N` larger than this gets this.
pub(crate) const MAX_BODY: usize = 256 * 1024 * 1024;
/// Distinct response sizes kept built.
const MAX_CACHED: usize = 64;

/// Binds the listening socket (port 0 picks a free port).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    // SO_REUSEADDR and a backlog of 4096 (the kernel's default somaxconn):
    // the new-connection-per-request scenario needs 1024, and compare's
    // burst opens 2,000 upstream connections at once, whose SYNs beyond
    // the backlog would wait out a 1 s retransmission.
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(TcpListener::from_std(sock.into()))
}

/// Binds a Unix socket at `path`, replacing a socket file left there by
/// an earlier run (anything else at `path` is an error, not deleted). The
/// file is left open to every local user (mode 0666): nginx's workers, for
/// one, drop root and need write permission to connect.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// A client connection: over TCP, or over the Unix socket (HTTP/1.1 only).
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl mio::event::Source for Stream {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(registry, token, interests),
            Stream::Unix(s) => s.register(registry, token, interests),
        }
    }
    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(registry, token, interests),
            Stream::Unix(s) => s.reregister(registry, token, interests),
        }
    }
    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Unix(s) => s.deregister(registry),
        }
    }
}

struct Conn {
    stream: Stream,
    buf: Box<[u8]>,
    filled: usize,
    /// Request body bytes still to discard.
    skip: u64,
    /// Response being written and how much of it went out.
    out: Option<(Rc<[u8]>, usize)>,
    /// A response is waiting in the delay queue.
    delayed: bool,
    close_after: bool,
    /// Bumped when the slot is reused, so stale delay entries are ignored.
    generation: u64,
    /// No request read yet: the first bytes may be an HTTP/2 preface.
    fresh: bool,
}

struct Server {
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free_slots: Vec<usize>,
    cfg: OriginConfig,
    /// (body size, close) -> response bytes.
    cache: Vec<(usize, bool, Rc<[u8]>)>,
    /// (send at, slot, generation, response).
    delayed: VecDeque<(u64, usize, u64, Rc<[u8]>)>,
    generation: u64,
    /// Where HTTP/2 connections go.
    h2: http2::Handoff,
}

/// Serves until `stop` is set (checked at least every 100 ms).
pub fn serve(listener: TcpListener, cfg: OriginConfig, stop: Arc<AtomicBool>) -> io::Result<()> {
    serve_with_unix(listener, None, cfg, stop)
}

/// [`serve`], answering HTTP/1.1 on the Unix socket `unix` as well.
pub fn serve_with_unix(
    mut listener: TcpListener,
    mut unix: Option<UnixListener>,
    cfg: OriginConfig,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    sys::set_min_timer_slack();
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    if let Some(u) = unix.as_mut() {
        poll.registry()
            .register(u, UNIX_LISTENER, Interest::READABLE)?;
    }
    let mut timer = sys::Timer::new()?;
    poll.registry()
        .register(&mut SourceFd(&timer.raw_fd()), TIMER, Interest::READABLE)?;
    let h2 = http2::Handoff::start(cfg.clone())?;
    let mut srv = Server {
        poll,
        conns: Vec::new(),
        free_slots: Vec::new(),
        h2,
        cfg,
        cache: Vec::new(),
        delayed: VecDeque::new(),
        generation: 0,
    };
    let mut events = Events::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        if let Some(&(at, ..)) = srv.delayed.front() {
            timer.arm(at, 0)?;
        }
        match srv.poll.poll(&mut events, Some(Duration::from_millis(100))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => srv.accept(&listener),
                UNIX_LISTENER => {
                    if let Some(u) = &unix {
                        srv.accept_unix(u);
                    }
                }
                TIMER => timer.clear(),
                Token(i) => {
                    if ev.is_writable() || ev.is_error() {
                        srv.write(i);
                    }
                    if ev.is_readable() || ev.is_read_closed() {
                        srv.read(i);
                    }
                }
            }
        }
        srv.release_delayed(sys::now_ns());
    }
    Ok(())
}

impl Server {
    fn accept(&mut self, listener: &TcpListener) {
        loop {
            let (stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EMFILE and friends: leave the rest in the backlog.
                Err(_) => return,
            };
            let _ = stream.set_nodelay(true);
            self.add(Stream::Tcp(stream));
        }
    }

    fn accept_unix(&mut self, listener: &UnixListener) {
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            self.add(Stream::Unix(stream));
        }
    }

    /// Registers an accepted connection in a free slot.
    fn add(&mut self, mut stream: Stream) {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.free_slots.push(slot);
            return;
        }
        // Only TCP connections may turn out to be h2c (see the module doc).
        let fresh = matches!(stream, Stream::Tcp(_));
        self.generation += 1;
        self.conns[slot] = Some(Conn {
            stream,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            filled: 0,
            skip: 0,
            out: None,
            delayed: false,
            close_after: false,
            generation: self.generation,
            fresh,
        });
    }

    fn response(&mut self, size: usize, close: bool) -> Rc<[u8]> {
        let size = size.min(MAX_BODY);
        if let Some((_, _, r)) = self
            .cache
            .iter()
            .find(|(s, c, _)| *s == size && *c == close)
        {
            return r.clone();
        }
        let r: Rc<[u8]> = build_response_from(size, close, self.cfg.instance.as_deref()).into();
        if self.cache.len() < MAX_CACHED {
            self.cache.push((size, close, r.clone()));
        }
        r
    }

    fn read(&mut self, i: usize) {
        loop {
            let Some(Some(c)) = self.conns.get_mut(i) else {
                return;
            };
            if c.filled == c.buf.len() {
                // A request head larger than the buffer: not a client we serve.
                return self.close(i);
            }
            match c.stream.read(&mut c.buf[c.filled..]) {
                Ok(0) => return self.close(i),
                Ok(n) => c.filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(i),
            }
            self.process(i);
        }
    }

    /// Answers the buffered requests of connection `i`, one at a time.
    fn process(&mut self, i: usize) {
        loop {
            let Some(Some(c)) = self.conns.get_mut(i) else {
                return;
            };
            if c.out.is_some() || c.delayed || c.close_after {
                return;
            }
            if c.fresh {
                match http2::sniff(&c.buf[..c.filled]) {
                    http2::Sniff::Undecided => return,
                    http2::Sniff::Http2 => return self.hand_off(i),
                    http2::Sniff::Http1 => c.fresh = false,
                }
            }
            if c.skip > 0 {
                let take = c.skip.min(c.filled as u64) as usize;
                c.buf.copy_within(take..c.filled, 0);
                c.filled -= take;
                c.skip -= take as u64;
                if c.skip > 0 {
                    return;
                }
            }
            let head = match parse_request_head(&c.buf[..c.filled]) {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(_) => {
                    let r = self.response_400();
                    let c = self.conns[i].as_mut().expect("checked above");
                    c.close_after = true;
                    c.out = Some((r, 0));
                    return self.write(i);
                }
            };
            c.buf.copy_within(head.head_len..c.filled, 0);
            c.filled -= head.head_len;
            c.skip = head.body_len;
            let close = !head.keep_alive;
            c.close_after = close;
            let gen = c.generation;
            let size = head.size.unwrap_or(self.cfg.body_size);
            let resp = self.response(size, close);
            let c = self.conns[i].as_mut().expect("checked above");
            if self.cfg.delay.is_zero() {
                c.out = Some((resp, 0));
                self.write(i);
            } else {
                c.delayed = true;
                let at = sys::now_ns() + self.cfg.delay.as_nanos() as u64;
                self.delayed.push_back((at, i, gen, resp));
                return;
            }
        }
    }

    fn response_400(&mut self) -> Rc<[u8]> {
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..].into()
    }

    fn release_delayed(&mut self, now: u64) {
        while self.delayed.front().is_some_and(|&(at, ..)| at <= now) {
            let Some((_, i, gen, resp)) = self.delayed.pop_front() else {
                break;
            };
            if let Some(Some(c)) = self.conns.get_mut(i) {
                if c.generation == gen {
                    c.delayed = false;
                    c.out = Some((resp, 0));
                    self.write(i);
                }
            }
        }
    }

    fn write(&mut self, i: usize) {
        let Some(Some(c)) = self.conns.get_mut(i) else {
            return;
        };
        let Some((resp, mut off)) = c.out.take() else {
            return;
        };
        while off < resp.len() {
            match c.stream.write(&resp[off..]) {
                Ok(0) => return self.close(i),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.out = Some((resp, off));
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(i),
            }
        }
        if c.close_after {
            return self.close(i);
        }
        // Requests that arrived while this response was going out.
        if c.filled > 0 {
            self.process(i);
        }
    }

    /// Gives connection `i`, with what was read from it, to the HTTP/2
    /// thread.
    fn hand_off(&mut self, i: usize) {
        use std::os::fd::{FromRawFd, IntoRawFd};
        if let Some(Some(mut c)) = self.conns.get_mut(i).map(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free_slots.push(i);
            let Stream::Tcp(tcp) = c.stream else {
                // Unix connections are never fresh, so never sniffed as h2.
                return;
            };
            // SAFETY: the fd comes from a socket we own and give up here.
            let std = unsafe { std::net::TcpStream::from_raw_fd(tcp.into_raw_fd()) };
            self.h2.hand(std, c.buf[..c.filled].to_vec());
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(Some(mut c)) = self.conns.get_mut(i).map(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free_slots.push(i);
        }
    }
}

#[cfg(test)]
mod tests;
