//! Shards: one executor thread per core, sharing nothing on the request path.
//!
//! Each shard owns its buffer pool, upstream pools, round-robin positions,
//! stats and access log. The agent thread talks to a shard only through its
//! inbox ([`crate::msg::ShardMsg`]): connections handed over by the acceptor (once per
//! connection), a new configuration (on reload), a stats snapshot request
//! (when `/metrics` is read) and the drain order (on SIGTERM).
//!
//! Lifecycle: `starting` (ring built, listeners adopted) → `ready` (accepting;
//! `ShardHandle::ready` set) → `draining` (accepts cancelled; responses carry
//! `Connection: close`; replies to the agent once no request is in flight).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::accesslog::AccessLog;
use crate::config::Config;
use crate::error::ErrorKind;
use crate::msg::{AgentLink, AgentRequest};
use crate::routing::RoutingTable;
use crate::runtime::{self, Stop, TcpListener, TcpStream};
use crate::shard::buf::BufPool;
use crate::shard::idle::IdleConns;
use crate::shard::pool::UpstreamPool;
use crate::stats::{Direction, ShardStats};
use crate::tls::ShardTls;

/// One shard's state, shared by the tasks of that shard only.
pub struct Shard {
    pub index: usize,
    /// `Rc` around the `Arc`: a request clones the `Rc` (a plain increment),
    /// never the cross-core `Arc`, whose atomic count every shard shares.
    #[allow(clippy::redundant_allocation)] // the extra box is the point: see above
    config: RefCell<Rc<Arc<Config>>>,
    pub stats: RefCell<ShardStats>,
    pub bufs: BufPool,
    /// This shard's side of `[limits] buffer_budget` (budget.rs).
    pub budget: crate::shard::budget::Budget,
    pub pool: UpstreamPool,
    /// HTTP/2 upstream connections (forward/h2).
    pub h2: crate::shard::h2pool::H2Pool,
    /// Idle keep-alive client connections and their deadlines.
    pub idle: IdleConns,
    rr: RefCell<FxHashMap<String, usize>>,
    pub in_flight: Cell<usize>,
    pub draining: Cell<bool>,
    /// Tasks to wake when the drain begins (HTTP/2 connections, which
    /// answer it with GOAWAY rather than waiting in the idle table).
    pub drain_watchers: DrainWatchers,
    /// xorshift state for weighted backend draws (per shard, no sharing).
    rng: Cell<u64>,
    open_conns: Arc<AtomicUsize>,
    pub access_log: RefCell<Option<AccessLog>>,
    /// This shard's `x-request-id` generator (forward/request_id.rs).
    pub request_ids: crate::forward::request_id::RequestIds,
    agent: AgentLink,
    pub own_addrs: Vec<SocketAddr>,
    /// The routing table from control in force, if any (see routing.rs).
    #[allow(clippy::redundant_allocation)] // Rc clone per request, not the shared Arc
    routes: RefCell<Option<Rc<Arc<RoutingTable>>>>,
    prepared: RefCell<Option<Arc<RoutingTable>>>,
    /// This shard's TLS configurations and session caches (see tls/identity.rs).
    tls: RefCell<Option<Rc<ShardTls>>>,
    /// Open mutual TLS connections by peer certificate, and the revocation
    /// list in force (tls/revoked.rs).
    pub peers: Rc<crate::tls::revoked::PeerConns>,
    /// The local app's health as the agent last checked it; `None`: not
    /// checked (no `[control]`, or no result yet).
    pub app_healthy: Cell<Option<bool>>,
    /// Per-endpoint outcomes for the agent's outlier detection.
    pub outcomes: crate::shard::outcomes::Outcomes,
    /// Mirrored copies in flight (forward/mirror.rs).
    pub mirrors_in_flight: Cell<usize>,
    /// This shard itself, for tasks that outlive the request that starts them.
    me: std::rc::Weak<Shard>,
    /// Balancers, breakers, budgets and rate limiters per service.
    pub traffic: crate::traffic::ShardTraffic,
    /// Bumped by every new probe plan; older probe tasks stop.
    pub probe_generation: Cell<u64>,
    /// Endpoints the agent ejected or found unhealthy (see `ShardMsg::Excluded`).
    excluded: RefCell<Arc<std::collections::HashSet<SocketAddr>>>,
    /// Endpoints this shard saw fail itself, out of its picks for a backoff
    /// (policy's `LocalDown`): no agent period, no control needed.
    pub down: RefCell<crate::resilience::LocalDown>,
    /// `meshctl tap`s running (tap.rs).
    pub tap: crate::tap::ShardTap,
}

impl Shard {
    /// The configuration for a new request.
    #[allow(clippy::redundant_allocation)] // an Rc clone per request, never the cross-core Arc: see the field
    pub fn config(&self) -> Rc<Arc<Config>> {
        self.config.borrow().clone()
    }

    pub fn conn_opened(&self, dir: Direction) {
        self.stats.borrow_mut().conn_opened(dir);
    }

    pub fn conn_closed(&self, dir: Direction) {
        self.stats.borrow_mut().conn_closed(dir);
        self.open_conns.fetch_sub(1, Ordering::Relaxed);
    }

    /// An owning handle on this shard (for detached tasks).
    pub fn self_rc(&self) -> Rc<Shard> {
        self.me.upgrade().expect("a shard outlives its tasks")
    }

    /// The channel to the agent thread.
    pub fn agent_link(&self) -> &AgentLink {
        &self.agent
    }

    /// Whether `addr` is ejected, unhealthy or down at `now`.
    pub fn is_excluded(&self, addr: SocketAddr, now: Instant) -> bool {
        let set = self.excluded.borrow();
        (!set.is_empty() && set.contains(&addr)) || self.down.borrow().is_down(addr, now)
    }

    /// Tells the shard's down list how a try to `addr` ended: a failure of
    /// the endpoint itself (`kind`) keeps it out of picks for a backoff;
    /// an answer clears it.
    pub fn endpoint_outcome(&self, addr: SocketAddr, failure: Option<ErrorKind>, now: Instant) {
        match failure {
            None => self.down.borrow_mut().succeed(addr),
            Some(kind) if crate::resilience::LocalDown::marks(kind) => {
                let until = self.down.borrow_mut().fail(addr, now);
                tracing::debug!(%addr, "endpoint down on this shard for {:?}: {}", until - now, kind.text());
            }
            Some(_) => {}
        }
    }

    /// The shard's TLS configurations, once the proxy has an identity.
    pub fn tls(&self) -> Option<Rc<ShardTls>> {
        self.tls.borrow().clone()
    }

    /// The routing table from control, if one is in force.
    #[allow(clippy::redundant_allocation)] // see the field
    pub fn routes(&self) -> Option<Rc<Arc<RoutingTable>>> {
        self.routes.borrow().clone()
    }

    /// Records a request answered before routing (a rejected head).
    pub fn record_local(&self, dir: Direction, status: u16) {
        let service = match dir {
            Direction::Inbound => self.config.borrow().proxy.service.clone(),
            Direction::Outbound => "unknown".to_string(),
        };
        self.stats
            .borrow_mut()
            .record(dir, &service, status, Duration::ZERO, 0, 0);
    }

    /// Whether `addr` is one of this proxy's own listeners (an unspecified
    /// listen IP matches any local address on that port).
    pub fn is_own(&self, addr: SocketAddr) -> bool {
        self.own_addrs.iter().any(|o| {
            o.port() == addr.port()
                && (o.ip() == addr.ip()
                    || (o.ip().is_unspecified()
                        && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
        })
    }

    /// Advances the round-robin position of `service` and returns it.
    pub fn next_rr(&self, service: &str) -> usize {
        let mut rr = self.rr.borrow_mut();
        match rr.get_mut(service) {
            Some(n) => {
                *n = n.wrapping_add(1);
                *n
            }
            None => {
                // Start each shard at a different endpoint so shards do not
                // send their first requests to the same one.
                rr.insert(service.to_string(), self.index);
                self.index
            }
        }
    }

    /// A pseudo-random number (xorshift64*: fast, and good enough to split
    /// traffic by weight; not for anything secret).
    pub fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Resolves a passthrough host (IP literals directly, names on the agent
    /// thread so a slow resolver never blocks the shard).
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<SocketAddr> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.agent
            .send(AgentRequest::Resolve {
                host: host.to_string(),
                port,
                reply: tx,
            })
            .map_err(|_| std::io::Error::other("agent unavailable"))?;
        rx.await
            .map_err(|_| std::io::Error::other("agent unavailable"))?
    }
}

/// A non-zero seed that differs per shard and per process.
fn seed(index: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ ((index as u64 + 1) << 32) ^ u64::from(std::process::id())) | 1
}

pub mod budget;
pub mod buf;
pub mod h2pool;
pub mod heap;
pub mod idle;
pub mod outcomes;
pub mod pool;
pub mod probe;
pub mod thread;

/// Wakers of the tasks that wait for the drain ([`Shard::drain_watch`]).
#[derive(Default)]
pub struct DrainWatchers {
    next: Cell<u64>,
    wakers: RefCell<FxHashMap<u64, std::task::Waker>>,
}

impl DrainWatchers {
    /// Wakes every watcher (the drain began).
    pub fn wake_all(&self) {
        let wakers: Vec<_> = self.wakers.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }
}

/// Completes once the shard drains. Holds one waker slot while pending.
pub struct DrainWatch<'a> {
    shard: &'a Shard,
    id: u64,
}

impl std::future::Future for DrainWatch<'_> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.shard.draining.get() {
            return std::task::Poll::Ready(());
        }
        let w = &self.shard.drain_watchers;
        w.wakers.borrow_mut().insert(self.id, cx.waker().clone());
        std::task::Poll::Pending
    }
}

impl Drop for DrainWatch<'_> {
    fn drop(&mut self) {
        self.shard
            .drain_watchers
            .wakers
            .borrow_mut()
            .remove(&self.id);
    }
}

impl Shard {
    /// A future that completes when this shard begins to drain.
    pub fn drain_watch(&self) -> DrainWatch<'_> {
        let w = &self.drain_watchers;
        let id = w.next.get();
        w.next.set(id + 1);
        DrainWatch { shard: self, id }
    }
}
