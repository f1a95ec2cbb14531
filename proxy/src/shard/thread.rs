//! The shard thread: its start-up, its inbox, the accept loops, and the
//! periodic tasks (outcome reports, idle sweeps, housekeeping). It starts
//! the request path ([`crate::forward`]) and the probes on the [`Shard`]
//! state, which sits below them.

use super::*;
use crate::msg::{Role, ShardMsg};

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
    /// The access log's writer thread, when there is an access log.
    pub access_log: Option<crate::accesslog::Sink>,
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
        access_log,
    } = setup;
    tracing::info!(
        shard = index,
        "shard running on {} {driver}",
        runtime::backend_name()
    );
    let access_log = access_log.map(AccessLog::new);
    let cores = config.proxy.cores;
    let shard = Rc::new_cyclic(|me| Shard {
        me: me.clone(),
        mirrors_in_flight: Cell::new(0),
        index,
        config: RefCell::new(Rc::new(config)),
        stats: RefCell::new(ShardStats::new(index)),
        bufs: BufPool::new(),
        budget: crate::shard::budget::Budget::new(&crate::shard::budget::GLOBAL),
        pool: UpstreamPool::new(),
        h2: Default::default(),
        idle: IdleConns::new(),
        rr: RefCell::new(FxHashMap::default()),
        in_flight: Cell::new(0),
        draining: Cell::new(false),
        drain_watchers: Default::default(),
        rng: Cell::new(seed(index)),
        open_conns,
        access_log: RefCell::new(access_log),
        request_ids: Default::default(),
        agent,
        own_addrs,
        routes: RefCell::new(None),
        prepared: RefCell::new(None),
        tls: RefCell::new(None),
        peers: Rc::default(),
        app_healthy: Cell::new(None),
        outcomes: Default::default(),
        probe_generation: Cell::new(0),
        traffic: crate::traffic::ShardTraffic::new(index, cores),
        excluded: RefCell::new(Arc::default()),
        down: RefCell::default(),
        tap: Default::default(),
    });

    sync_traffic(&shard);
    let mut stop = Some(Stop::new());
    let mut listeners = Some(listeners);
    // Accept loops still running: a drain waits for them to return, so an
    // accept that completed while it was being cancelled is counted.
    let accepting = Rc::new(Cell::new(0usize));
    runtime::spawn_local(housekeeping(shard.clone()));
    runtime::spawn_local(idle_sweeper(shard.clone()));
    runtime::spawn_local(report_outcomes(shard.clone()));
    ready.store(true, Ordering::Release);

    while let Ok(msg) = rx.recv().await {
        match msg {
            ShardMsg::Accept { stream, role } => match TcpStream::adopt(stream) {
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
            ShardMsg::Identity(id) => match ShardTls::with_revoked(&id, &shard.peers.revoked()) {
                Ok(t) => *shard.tls.borrow_mut() = Some(Rc::new(t)),
                // Checked on the agent thread before it is sent; keep the
                // previous configuration if this shard still disagrees.
                Err(e) => tracing::error!(shard = index, "cannot use the new certificate: {e}"),
            },
            ShardMsg::Revoked(list) => revoke(&shard, list),
            ShardMsg::AppHealth(h) => shard.app_healthy.set(Some(h)),
            ShardMsg::Tap(taps) => shard.tap.set(taps),
            ShardMsg::Excluded(set) => *shard.excluded.borrow_mut() = set,
            ShardMsg::Probes(plan) => crate::shard::probe::run_plan(&shard, plan),
            ShardMsg::Share(u) => shard.traffic.apply_share(&u, Instant::now()),
            ShardMsg::Grant { service, tokens } => {
                if !shard.traffic.grant(&service, tokens) {
                    let back = crate::resilience::PoolReport {
                        returned: tokens,
                        ..Default::default()
                    };
                    let _ = shard.agent.send(crate::msg::AgentRequest::Pool {
                        shard: shard.index,
                        reports: vec![(service, back)],
                    });
                }
            }
            ShardMsg::Snapshot(reply) => {
                let _ = reply.send(shard.stats.borrow().snapshot());
            }
            ShardMsg::Listen => {
                // Draining already: nothing to accept for.
                let Some(stop) = &stop else { continue };
                for (l, role) in listeners.take().unwrap_or_default() {
                    match TcpListener::from_std(l) {
                        Ok(l) => {
                            accepting.set(accepting.get() + 1);
                            let (shard, accepting) = (shard.clone(), accepting.clone());
                            let stop = stop.handle();
                            runtime::spawn_local(async move {
                                accept_loop(shard, l, role, stop).await;
                                accepting.set(accepting.get() - 1);
                            })
                        }
                        Err(e) => {
                            tracing::error!(shard = index, "cannot adopt listener: {e}");
                            std::process::exit(1);
                        }
                    }
                }
            }
            ShardMsg::Drain { reply, idle_grace } => {
                shard.draining.set(true);
                shard.drain_watchers.wake_all();
                if let Some(s) = stop.take() {
                    s.stop();
                }
                let (shard, accepting) = (shard.clone(), accepting.clone());
                runtime::spawn_local(async move {
                    // Every connection ends on its own: a request in flight
                    // finishes (its response says `Connection: close`), a
                    // connection accepted just before the drain gets its
                    // first request served, a tunnel or TCP stream runs to
                    // its end (the agent's drain deadline bounds all this).
                    // Idle keep-alive connections stay open a moment too: a
                    // request that comes on one is answered with
                    // `Connection: close`, where closing it at once could
                    // cross that request on the wire (the client would see
                    // a reset). Those still idle are shut after the grace.
                    let grace = Instant::now() + idle_grace;
                    while accepting.get() > 0 || shard.open_conns.load(Ordering::Relaxed) > 0 {
                        if Instant::now() >= grace {
                            shard.idle.close_all();
                        }
                        runtime::sleep(Duration::from_millis(10)).await;
                    }
                    if let Some(l) = shard.access_log.borrow_mut().as_mut() {
                        // Nothing is left to delay: waiting for the writer's
                        // queue loses no line.
                        l.flush_waiting();
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
    let list = cfg.service_list(shard.routes().as_deref().map(|t| &**t));
    shard
        .traffic
        .sync(&list, &cfg.proxy.service, Instant::now());
}

/// Serves an accepted connection by what its listener is for.
fn spawn_conn(shard: &Rc<Shard>, s: TcpStream, role: Role) {
    match role {
        // Only a proxy with [intercept] looks for an original destination
        // (two syscalls per accepted connection, none per request).
        Role::Http(Direction::Outbound) if shard.config().intercept.is_some() => {
            crate::forward::intercepted::serve(shard.clone(), s)
        }
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
                crate::lograte::log_limited!(
                    tracing::Level::WARN,
                    shard = shard.index,
                    "accept failed on the {} listener: {e}",
                    role.describe()
                );
                let pause = crate::stats::accept::ACCEPT_FAILURES.count(role.listener(), &e);
                runtime::sleep(pause).await;
            }
        }
    }
}

/// Sends the agent what this shard saw of each endpoint (see outcomes.rs).
async fn report_outcomes(shard: Rc<Shard>) {
    loop {
        runtime::sleep(crate::shard::outcomes::REPORT_EVERY).await;
        let counts = shard.outcomes.take();
        if !counts.is_empty() {
            let _ = shard
                .agent
                .send(crate::msg::AgentRequest::Outcomes { counts });
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
            let _ = shard.agent.send(crate::msg::AgentRequest::Pool {
                shard: shard.index,
                reports,
            });
        }
    }
}

/// Once a second: flush the access log, close expired pooled connections,
/// free pooled buffers a burst left unused, and once a burst has passed
/// hand the free heap back to the kernel (see heap.rs).
async fn housekeeping(shard: Rc<Shard>) {
    let mut heap = crate::shard::heap::HeapRelease::default();
    loop {
        runtime::sleep(Duration::from_secs(1)).await;
        let demand = shard.traffic.demand(Instant::now());
        if !demand.is_empty() {
            let _ = shard.agent.send(crate::msg::AgentRequest::Demand {
                shard: shard.index,
                services: demand,
            });
        }
        if let Some(l) = shard.access_log.borrow_mut().as_mut() {
            l.flush();
        }
        let idle = shard.config.borrow().upstream.pool_idle_timeout;
        shard.pool.sweep(Instant::now(), idle);
        let freed = shard.bufs.trim();
        if heap.tick(shard.open_conns.load(Ordering::Relaxed), freed) {
            runtime::release_free_heap();
        }
    }
}

/// Puts a new revocation list in force: new TLS configurations (whose
/// verifiers check it, with empty session caches so that no session from
/// before resumes), then every open connection with a revoked peer shut.
fn revoke(shard: &Shard, list: Arc<crate::tls::revoked::Revocations>) {
    if let Some(current) = shard.tls() {
        match ShardTls::with_revoked(&current.identity, &list) {
            Ok(t) => *shard.tls.borrow_mut() = Some(Rc::new(t)),
            Err(e) => tracing::error!(
                shard = shard.index,
                "cannot rebuild TLS for the revocation list: {e}"
            ),
        }
    }
    let revoked = list.len();
    let closed = shard.peers.set_revoked(list, runtime::shutdown_socket);
    if closed > 0 {
        tracing::warn!(
            shard = shard.index,
            closed,
            revoked,
            "closed connections whose peer certificate is revoked"
        );
    }
}
