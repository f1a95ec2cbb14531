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
        StreamSlot(up)
    }

    pub fn conn(&self) -> &H2Up {
        &self.0
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
}

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
