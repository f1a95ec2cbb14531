//! Shards: one executor thread per core, sharing nothing on the request path.
//!
//! Each shard owns its buffer pool, upstream pools, round-robin positions,
//! stats and access log. The agent thread talks to a shard only through its
//! inbox ([`ShardMsg`]): connections handed over by the acceptor (once per
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
use crate::agent::{AgentLink, AgentRequest};
use crate::buf::BufPool;
use crate::config::Config;
use crate::idle::IdleConns;
use crate::listener::Role;
use crate::pool::UpstreamPool;
use crate::routing::RoutingTable;
use crate::runtime::{self, Stop, TcpListener, TcpStream};
use crate::stats::{Direction, ShardSnapshot, ShardStats};
use crate::tls::{Identity, ShardTls};

/// Messages from the agent thread to one shard. They cross cores a few times a
/// second or once per connection, never per request.
pub enum ShardMsg {
    /// A connection accepted by the agent's acceptor (cores > 1), handed to the
    /// shard with the fewest open connections.
    Accept {
        stream: std::net::TcpStream,
        role: Role,
    },
    /// A new configuration (SIGHUP reload) to use for new requests.
    Config(Arc<Config>),
    /// Phase one of applying a routing table from control: keep it aside
    /// and reply; nothing changes for requests yet.
    Prepare(Arc<RoutingTable>, tokio::sync::oneshot::Sender<()>),
    /// Phase two: switch to the prepared table with this version (sent once
    /// every shard has prepared, so all cores switch together).
    Commit(u64),
    /// This proxy's certificate and trust anchors (joined, renewed, a new
    /// trust bundle, or `[tls]` files reloaded): new handshakes use them,
    /// open connections keep theirs.
    Identity(Arc<Identity>),
    /// A new split of one service limit (see agent/traffic.rs).
    Share(Arc<crate::traffic::ShareUpdate>),
    /// Rate-limit tokens from the service's pool, for a shard that refused
    /// (see resilience/ratelimit.rs).
    Grant { service: String, tokens: u64 },
    /// Active health checks to run on this shard (see probe.rs).
    Probes(Arc<Vec<crate::probe::ProbeTarget>>),
    /// Endpoints to avoid, decided once per proxy on the agent thread:
    /// ejected by outlier detection or failing active health checks.
    Excluded(Arc<std::collections::HashSet<SocketAddr>>),
    /// The local app's latest health check result (`[control.health]`),
    /// for probes answered by this proxy.
    AppHealth(bool),
    /// Reply with a snapshot of this shard's stats.
    Snapshot(tokio::sync::oneshot::Sender<ShardSnapshot>),
    /// Stop accepting; reply once no request is in flight on this shard.
    Drain(tokio::sync::oneshot::Sender<()>),
}

/// The agent's handle on one shard.
#[derive(Clone)]
pub struct ShardHandle {
    pub index: usize,
    pub tx: async_channel::Sender<ShardMsg>,
    /// Open client connections on this shard: incremented by whoever hands
    /// the connection to the shard, decremented by the shard when it closes
    /// (once per connection, never per request); read by the acceptor.
    pub open_conns: Arc<AtomicUsize>,
    /// Set by the shard once its executor runs and it accepts connections.
    pub ready: Arc<AtomicBool>,
}

/// Everything a shard thread starts with.
pub struct ShardSetup {
    pub index: usize,
    pub config: Arc<Config>,
    /// Listening sockets this shard accepts on itself (with one shard there is
    /// no hand-off; with more, the agent accepts and hands connections over).
    pub listeners: Vec<(std::net::TcpListener, Role)>,
    pub rx: async_channel::Receiver<ShardMsg>,
    pub open_conns: Arc<AtomicUsize>,
    pub ready: Arc<AtomicBool>,
    pub agent: AgentLink,
    /// This proxy's own bound addresses (listeners and admin): passthrough
    /// never forwards to them, which would loop until descriptors run out.
    pub own_addrs: Vec<SocketAddr>,
}

/// One shard's state, shared by the tasks of that shard only.
pub struct Shard {
    pub index: usize,
    /// `Rc` around the `Arc`: a request clones the `Rc` (a plain increment),
    /// never the cross-core `Arc`, whose atomic count every shard shares.
    #[allow(clippy::redundant_allocation)] // the extra box is the point: see above
    config: RefCell<Rc<Arc<Config>>>,
    pub stats: RefCell<ShardStats>,
    pub bufs: BufPool,
    pub pool: UpstreamPool,
    /// Idle keep-alive client connections and their deadlines.
    pub idle: IdleConns,
    rr: RefCell<FxHashMap<String, usize>>,
    pub in_flight: Cell<usize>,
    pub draining: Cell<bool>,
    /// xorshift state for weighted backend draws (per shard, no sharing).
    rng: Cell<u64>,
    open_conns: Arc<AtomicUsize>,
    pub access_log: RefCell<Option<AccessLog>>,
    agent: AgentLink,
    pub own_addrs: Vec<SocketAddr>,
    /// The routing table from control in force, if any (see routing.rs).
    #[allow(clippy::redundant_allocation)] // Rc clone per request, not the shared Arc
    routes: RefCell<Option<Rc<Arc<RoutingTable>>>>,
    prepared: RefCell<Option<Arc<RoutingTable>>>,
    /// This shard's TLS configurations and session caches (see tls/identity.rs).
    tls: RefCell<Option<Rc<ShardTls>>>,
    /// The local app's health as the agent last checked it; `None`: not
    /// checked (no `[control]`, or no result yet).
    pub app_healthy: Cell<Option<bool>>,
    /// Per-endpoint outcomes for the agent's outlier detection.
    pub outcomes: crate::outcomes::Outcomes,
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
}

impl Shard {
    /// The configuration for a new request.
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

    /// Whether `addr` is ejected or unhealthy right now.
    pub fn is_excluded(&self, addr: SocketAddr) -> bool {
        let set = self.excluded.borrow();
        !set.is_empty() && set.contains(&addr)
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

    /// The current round-robin position of `service`.
    pub fn peek_rr(&self, service: &str) -> usize {
        self.rr.borrow().get(service).copied().unwrap_or(0)
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

/// Runs a shard until its inbox closes. `driver` describes the executor.
pub async fn run(setup: ShardSetup, driver: String) {
    let ShardSetup {
        index,
        config,
        listeners,
        rx,
        open_conns,
        ready,
        agent,
        own_addrs,
    } = setup;
    tracing::info!(
        shard = index,
        "shard running on {} {driver}",
        runtime::backend_name()
    );
    let access_log = match &config.proxy.access_log {
        Some(p) => match AccessLog::open(p) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!("access log {}: {e}; access logging is off", p.display());
                None
            }
        },
        None => None,
    };
    let cores = config.proxy.cores;
    let shard = Rc::new_cyclic(|me| Shard {
        me: me.clone(),
        mirrors_in_flight: Cell::new(0),
        index,
        config: RefCell::new(Rc::new(config)),
        stats: RefCell::new(ShardStats::new(index)),
        bufs: BufPool::new(),
        pool: UpstreamPool::new(),
        idle: IdleConns::new(),
        rr: RefCell::new(FxHashMap::default()),
        in_flight: Cell::new(0),
        draining: Cell::new(false),
        rng: Cell::new(seed(index)),
        open_conns,
        access_log: RefCell::new(access_log),
        agent,
        own_addrs,
        routes: RefCell::new(None),
        prepared: RefCell::new(None),
        tls: RefCell::new(None),
        app_healthy: Cell::new(None),
        outcomes: Default::default(),
        probe_generation: Cell::new(0),
        traffic: crate::traffic::ShardTraffic::new(index, cores),
        excluded: RefCell::new(Arc::default()),
    });

    sync_traffic(&shard);
    let stop = Stop::new();
    for (l, role) in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => runtime::spawn_local(accept_loop(shard.clone(), l, role, stop.handle())),
            Err(e) => {
                tracing::error!(shard = index, "cannot adopt listener: {e}");
                std::process::exit(1);
            }
        }
    }
    let mut stop = Some(stop);
    runtime::spawn_local(housekeeping(shard.clone()));
    runtime::spawn_local(idle_sweeper(shard.clone()));
    runtime::spawn_local(report_outcomes(shard.clone()));
    ready.store(true, Ordering::Release);

    while let Ok(msg) = rx.recv().await {
        match msg {
            ShardMsg::Accept { stream, role } => match TcpStream::from_std(stream) {
                Ok(s) => spawn_conn(&shard, s, role),
                Err(e) => {
                    shard.open_conns.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(shard = index, "cannot adopt connection: {e}");
                }
            },
            ShardMsg::Config(c) => {
                *shard.config.borrow_mut() = Rc::new(c);
                sync_traffic(&shard);
            }
            ShardMsg::Prepare(table, reply) => {
                // A copy of its own: the regular expressions' match caches
                // are then this core's alone.
                *shard.prepared.borrow_mut() = Some(Arc::new((*table).clone()));
                let _ = reply.send(());
            }
            ShardMsg::Commit(version) => {
                let mut prepared = shard.prepared.borrow_mut();
                if prepared.as_ref().is_some_and(|t| t.version == version) {
                    let t = prepared.take().expect("checked above");
                    *shard.routes.borrow_mut() = Some(Rc::new(t));
                    drop(prepared);
                    sync_traffic(&shard);
                }
            }
            ShardMsg::Identity(id) => match ShardTls::new(&id) {
                Ok(t) => *shard.tls.borrow_mut() = Some(Rc::new(t)),
                // Checked on the agent thread before it is sent; keep the
                // previous configuration if this shard still disagrees.
                Err(e) => tracing::error!(shard = index, "cannot use the new certificate: {e}"),
            },
            ShardMsg::AppHealth(h) => shard.app_healthy.set(Some(h)),
            ShardMsg::Excluded(set) => *shard.excluded.borrow_mut() = set,
            ShardMsg::Probes(plan) => crate::probe::run_plan(&shard, plan),
            ShardMsg::Share(u) => shard.traffic.apply_share(&u, Instant::now()),
            ShardMsg::Grant { service, tokens } => {
                if !shard.traffic.grant(&service, tokens) {
                    let back = crate::resilience::PoolReport {
                        returned: tokens,
                        ..Default::default()
                    };
                    let _ = shard.agent.send(crate::agent::AgentRequest::Pool {
                        shard: shard.index,
                        reports: vec![(service, back)],
                    });
                }
            }
            ShardMsg::Snapshot(reply) => {
                let _ = reply.send(shard.stats.borrow().snapshot());
            }
            ShardMsg::Drain(reply) => {
                shard.draining.set(true);
                if let Some(s) = stop.take() {
                    s.stop();
                }
                // Idle keep-alive connections have nothing in flight: close them now.
                shard.idle.close_all();
                let shard = shard.clone();
                runtime::spawn_local(async move {
                    while shard.in_flight.get() > 0 {
                        runtime::sleep(Duration::from_millis(10)).await;
                    }
                    if let Some(l) = shard.access_log.borrow_mut().as_mut() {
                        l.flush();
                    }
                    let _ = reply.send(());
                });
            }
        }
    }
}

/// Brings the per-service traffic state in line with the table and the
/// static services (see traffic.rs).
fn sync_traffic(shard: &Shard) {
    let cfg = shard.config();
    let list = crate::routing::service_list(&cfg, shard.routes().as_deref().map(|t| &**t));
    shard
        .traffic
        .sync(&list, &cfg.proxy.service, Instant::now());
}

/// Serves an accepted connection by what its listener is for.
fn spawn_conn(shard: &Rc<Shard>, s: TcpStream, role: Role) {
    match role {
        Role::Http(dir) => crate::forward::serve(shard.clone(), s, dir),
        Role::Tcp(service) => runtime::spawn_local(crate::forward::tcp_service::outbound(
            shard.clone(),
            s,
            service,
        )),
    }
}

/// Accepts connections on a listener this shard owns.
async fn accept_loop(shard: Rc<Shard>, l: TcpListener, role: Role, stop: runtime::StopHandle) {
    loop {
        match l.accept(&stop).await {
            Ok((s, _peer)) => {
                shard.open_conns.fetch_add(1, Ordering::Relaxed);
                spawn_conn(&shard, s, role.clone());
            }
            Err(_) if shard.draining.get() => return,
            Err(e) => {
                crate::log_limited!(
                    tracing::Level::WARN,
                    shard = shard.index,
                    "accept failed on the {} listener: {e}",
                    role.describe()
                );
                // EMFILE and friends: the connection stays queued; wait for
                // descriptors to come back instead of spinning on the error.
                let pause = match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => 100,
                    _ => 10,
                };
                runtime::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
}

/// Sends the agent what this shard saw of each endpoint (see outcomes.rs).
async fn report_outcomes(shard: Rc<Shard>) {
    loop {
        runtime::sleep(crate::outcomes::REPORT_EVERY).await;
        let counts = shard.outcomes.take();
        if !counts.is_empty() {
            let _ = shard.agent.send(crate::agent::AgentRequest::Outcomes {
                shard: shard.index,
                counts,
            });
        }
    }
}

/// Four times a second: closes idle keep-alive connections past
/// `timeouts.keepalive_idle` (so the timeout holds within 250 ms), and
/// reports what the rate-limit buckets threw away, refused and spent to the
/// agent's token pools.
async fn idle_sweeper(shard: Rc<Shard>) {
    loop {
        runtime::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        shard.idle.expire(now);
        let reports = shard.traffic.pool_reports(now);
        if !reports.is_empty() {
            let _ = shard.agent.send(crate::agent::AgentRequest::Pool {
                shard: shard.index,
                reports,
            });
        }
    }
}

/// Once a second: flush the access log, close expired pooled connections.
async fn housekeeping(shard: Rc<Shard>) {
    loop {
        runtime::sleep(Duration::from_secs(1)).await;
        let demand = shard.traffic.demand(Instant::now());
        if !demand.is_empty() {
            let _ = shard.agent.send(crate::agent::AgentRequest::Demand {
                shard: shard.index,
                services: demand,
            });
        }
        if let Some(l) = shard.access_log.borrow_mut().as_mut() {
            l.flush();
        }
        let idle = shard.config.borrow().upstream.pool_idle_timeout;
        shard.pool.sweep(Instant::now(), idle);
    }
}
