//! The shard's HTTP/2 upstream connections, per endpoint: each carries many
//! requests at once, up to the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`; a
//! request that finds every connection to its endpoint full gets a new one.
//! Kept apart from [`super::pool`] (HTTP/1.1 connections carry one request
//! at a time and wait idle in between; these never wait idle in a list).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use rustc_hash::FxHashMap;

/// One HTTP/2 connection to an endpoint.
pub struct H2Up {
    pub send: h2::client::SendRequest<Bytes>,
    /// Cleared by the connection's task when it ends (closed by either
    /// side, GOAWAY, idle).
    pub alive: Cell<bool>,
    /// Streams this shard has open on it.
    pub streams: Cell<usize>,
    /// Streams it has carried: a try on a connection that carried others
    /// before may meet its GOAWAY, and is replayed on another.
    pub served: Cell<u64>,
    /// When its last stream ended (for the idle close).
    pub idle_since: Cell<Instant>,
    /// The peer's SPIFFE ID (mutual TLS), to check a pooled connection
    /// serves the service a request is for.
    pub peer: Option<Rc<str>>,
}

impl H2Up {
    /// Whether it can take another stream now.
    fn has_room(&self) -> bool {
        self.alive.get() && self.streams.get() < self.send.current_max_send_streams().max(1)
    }
}

/// A stream's hold on its connection: counted until dropped.
pub struct StreamSlot(Rc<H2Up>);

impl StreamSlot {
    pub fn new(up: Rc<H2Up>) -> StreamSlot {
        up.streams.set(up.streams.get() + 1);
        up.served.set(up.served.get() + 1);
        StreamSlot(up)
    }

    pub fn conn(&self) -> &H2Up {
        &self.0
    }

    /// The connection took no new stream (GOAWAY, or closed): no more
    /// streams are opened on it.
    pub fn connection_gone(&self) {
        self.0.alive.set(false);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let n = self.0.streams.get().saturating_sub(1);
        self.0.streams.set(n);
        if n == 0 {
            self.0.idle_since.set(Instant::now());
        }
    }
}

#[derive(Default)]
pub struct H2Pool {
    conns: RefCell<FxHashMap<SocketAddr, Vec<Rc<H2Up>>>>,
    /// Connects under way, per endpoint: a burst of streams to an endpoint
    /// with no connection waits for one connect instead of each opening
    /// its own.
    connecting: RefCell<FxHashMap<SocketAddr, Rc<Connecting>>>,
    /// Peer proxies that chose HTTP/1.1 when offered h2 (older versions),
    /// and when: HTTP/1.1 requests go to them over the HTTP/1.1 pool until
    /// [`HTTP1_ONLY_FOR`] has passed, then h2 is offered again.
    http1_only: RefCell<FxHashMap<SocketAddr, Instant>>,
}

/// How long a peer that chose HTTP/1.1 is not offered h2 again (it may be
/// upgraded meanwhile).
pub const HTTP1_ONLY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// A connect under way; its waiters are woken when it ends either way.
#[derive(Default)]
pub struct Connecting {
    done: Cell<bool>,
    wakers: RefCell<Vec<std::task::Waker>>,
}

impl Connecting {
    /// Completes when the connect ended (then look in the pool again).
    pub fn wait(self: Rc<Self>) -> impl std::future::Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            if self.done.get() {
                return std::task::Poll::Ready(());
            }
            self.wakers.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
    }
}

/// The right to connect to an endpoint; ends the connect for the waiters
/// when dropped (connected, failed or cancelled).
pub struct ConnectTurn<'a> {
    pool: &'a H2Pool,
    addr: SocketAddr,
    c: Rc<Connecting>,
}

impl Drop for ConnectTurn<'_> {
    fn drop(&mut self) {
        self.pool.connecting.borrow_mut().remove(&self.addr);
        self.c.done.set(true);
        for w in self.c.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

impl H2Pool {
    /// Notes that the peer at `addr` chose HTTP/1.1 over h2.
    pub fn note_http1_only(&self, addr: SocketAddr, now: Instant) {
        self.http1_only.borrow_mut().insert(addr, now);
    }

    /// Whether the peer at `addr` chose HTTP/1.1 within [`HTTP1_ONLY_FOR`].
    pub fn http1_only(&self, addr: SocketAddr, now: Instant) -> bool {
        let mut m = self.http1_only.borrow_mut();
        match m.get(&addr) {
            Some(&at) if now.saturating_duration_since(at) < HTTP1_ONLY_FOR => true,
            Some(_) => {
                m.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// A live connection to `addr` with room for a stream, if any (dead
    /// ones are dropped on the way).
    pub fn get(&self, addr: SocketAddr) -> Option<Rc<H2Up>> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(&addr)?;
        list.retain(|c| c.alive.get());
        let found = list.iter().find(|c| c.has_room()).cloned();
        if list.is_empty() {
            conns.remove(&addr);
        }
        found
    }

    /// Either the turn to connect to `addr`, or the connect under way to
    /// wait for.
    pub fn connect_turn(&self, addr: SocketAddr) -> Result<ConnectTurn<'_>, Rc<Connecting>> {
        let mut pending = self.connecting.borrow_mut();
        if let Some(c) = pending.get(&addr) {
            return Err(c.clone());
        }
        let c = Rc::new(Connecting::default());
        pending.insert(addr, c.clone());
        Ok(ConnectTurn {
            pool: self,
            addr,
            c,
        })
    }

    pub fn add(&self, addr: SocketAddr, up: Rc<H2Up>) {
        self.conns.borrow_mut().entry(addr).or_default().push(up);
    }
}
