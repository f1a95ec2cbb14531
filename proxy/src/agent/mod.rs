//! The agent thread: everything that is not the request path.
//!
//! It runs a tokio current-thread runtime (quinn needs a `Send` runtime,
//! which the shard executors are not) and owns: the admin endpoint, signal
//! handling (SIGHUP reload, SIGTERM/SIGINT drain), the connection acceptor
//! when there is more than one shard, name resolution for passthrough hosts
//! and for the host names of the config ([`names`]),
//! and with `[control]` the control-plane client. It reaches shards only
//! through their inboxes.
//!
//! | module | concern |
//! | --- | --- |
//! | [`control`] | the QUIC session with coremesh-control: join, subscribe, register, heartbeats, renewal |
//! | [`tls`] | the control connection's TLS: CA-fingerprint verification for the join, mTLS after |
//! | [`apply`] | a snapshot → routing table → prepare/commit on every shard → persisted, shown on `/config` |
//! | [`health`] | checks of the local app |
//! | [`state`] | `state_dir`: key, certificate, CA, last good snapshot |
//! | [`systemd`] | sd_notify: READY/RELOADING/STOPPING, the watchdog (asks every shard) |
//! | [`tap`] | `meshctl tap`: taps started by control on the shards, their records batched to control |
//!
//! Start-up with `[control]`: the persisted snapshot is applied right after
//! the shards start, before control is contacted, so a proxy restarted while
//! control is down serves the last good routes. Shutdown (SIGTERM/SIGINT):
//! deregister and wait for control's confirmation (at most
//! [`DEREGISTER_TIMEOUT`], skipped without a session), stop accepting, drain,
//! close the control session, exit 0.
//!
//! Under systemd (`NOTIFY_SOCKET`), `READY=1` goes out once every shard
//! answers after the persisted snapshot was applied; see [`systemd`].

pub mod admin;
pub mod app_health;
pub mod apply;
pub mod control;
pub mod identity;
pub mod names;
pub mod state;
pub mod systemd;
pub mod tap;
pub mod tls;
pub mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use self::admin::AdminState;
use self::apply::Applier;
use self::control::{ControlLink, ControlSetup, Deregistration};
use crate::config::Config;
use crate::msg::{AgentRequest, ShardHandle, ShardMsg};

/// How long SIGTERM waits for control to confirm the deregistration.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// The addresses actually bound (port 0 resolved).
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    /// `[outbound] listen` when it is a Unix socket file.
    pub outbound_unix: Option<PathBuf>,
    pub admin: Option<SocketAddr>,
    /// `[[outbound.tcp]]` listeners: (service, bound address).
    pub tcp: Vec<(String, SocketAddr)>,
}

impl Bound {
    /// `bound inbound=... outbound=... admin=... tcp:db=...`, logged once
    /// at start (tests and scripts read the ports from it).
    fn describe(&self) -> String {
        let mut line = String::from("bound");
        for (k, v) in [
            ("inbound", self.inbound),
            ("outbound", self.outbound),
            ("admin", self.admin),
        ] {
            if let Some(a) = v {
                line.push_str(&format!(" {k}={a}"));
            }
        }
        if let Some(p) = &self.outbound_unix {
            line.push_str(&format!(" outbound=unix:{}", p.display()));
        }
        for (service, a) in &self.tcp {
            line.push_str(&format!(" tcp:{service}={a}"));
        }
        line
    }

    fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("inbound", self.inbound),
            ("outbound", self.outbound),
            ("admin", self.admin),
        ] {
            if let Some(a) = v {
                m.insert(k.into(), a.to_string().into());
            }
        }
        if let Some(p) = &self.outbound_unix {
            m.insert("outbound".into(), format!("unix:{}", p.display()).into());
        }
        if !self.tcp.is_empty() {
            let tcp: serde_json::Map<String, serde_json::Value> = self
                .tcp
                .iter()
                .map(|(s, a)| (s.clone(), a.to_string().into()))
                .collect();
            m.insert("tcp".into(), tcp.into());
        }
        m.into()
    }
}

/// What the agent starts with.
pub struct AgentSetup {
    pub config_path: PathBuf,
    pub config: Arc<Config>,
    pub shards: Vec<ShardHandle>,
    pub admin: std::net::TcpListener,
    /// Listeners the agent accepts on: all of them with more than one
    /// shard, and a Unix socket file always (see listener.rs).
    pub accept: Vec<(crate::listener::Listener, crate::msg::Role)>,
    pub requests: async_channel::Receiver<AgentRequest>,
    pub bound: Bound,
    /// The executor the shards run ("monoio"/"glommio"), for `/config`.
    pub backend: &'static str,
    pub upgrade: UpgradeSetup,
    /// The access log's writer, reopened on SIGUSR1.
    pub access_log: Option<crate::accesslog::Sink>,
}

/// Upgrades in place (see [`crate::upgrade`]).
pub struct UpgradeSetup {
    /// The upgrade socket and its path, with `[proxy] upgrade_socket`.
    pub listener: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    /// What a successor gets: a copy of every listening socket, by name.
    pub sockets: Vec<(String, std::os::fd::OwnedFd)>,
    /// The process this one took over from; told once this one serves.
    pub predecessor: Option<crate::upgrade::Inherited>,
}

/// Waits on the upgrade socket (if any) for a successor; the receiver gets
/// its pid once it serves. The task, to stop waiting when the proxy stops.
fn await_successor(
    setup: UpgradeSetup,
) -> (
    tokio::sync::oneshot::Receiver<u32>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let Some((listener, path)) = setup.listener else {
        // SIGUSR2 asks for an upgrade in place; without an upgrade socket it
        // is refused here rather than ending the process (its default).
        return (rx, Some(tokio::task::spawn_local(refuse_usr2())));
    };
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener));
    match listener {
        Ok(l) => {
            let task = tokio::task::spawn_local(async move {
                let usr2 = crate::upgrade::successors_on_usr2(path.clone());
                let serve = crate::upgrade::serve(l, path, setup.sockets);
                let pid = tokio::select! {
                    pid = serve => pid,
                    () = usr2 => None,
                };
                if let Some(pid) = pid {
                    let _ = tx.send(pid);
                }
            });
            (rx, Some(task))
        }
        Err(e) => {
            tracing::error!("cannot wait for upgrades on {}: {e}", path.display());
            (rx, None)
        }
    }
}

/// The next delivery of `sig`; never without one.
async fn recv_or_never(sig: &mut Option<Signal>) {
    match sig {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Logs each SIGUSR2 of a proxy that has no `[proxy] upgrade_socket`.
async fn refuse_usr2() {
    let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
        return;
    };
    while usr2.recv().await.is_some() {
        tracing::warn!("SIGUSR2: no upgrade in place without [proxy] upgrade_socket; ignored");
    }
}

fn config_json(cfg: &Config, bound: &Bound, backend: &str) -> serde_json::Value {
    let mut v = cfg.to_json();
    if let Some(m) = v.as_object_mut() {
        m.insert("bound".into(), bound.to_json());
        m.insert("runtime".into(), backend.into());
    }
    v
}

/// Runs the agent on the calling thread; returns the process exit code.
pub fn run(setup: AgentSetup) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the agent runtime: {e}");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, agent(setup))
}

async fn agent(setup: AgentSetup) -> i32 {
    let AgentSetup {
        config_path,
        config,
        shards,
        admin,
        accept,
        requests,
        bound,
        backend,
        mut upgrade,
        access_log,
    } = setup;
    // Host names in [[services]] resolve before anything serves.
    let names = names::Names::default();
    let loaded = config;
    let config = resolve_names(&names, &loaded, &shards).await;
    let Some((mut hup, mut term, mut int)) = signals() else {
        return 1;
    };
    // Installed even without an access log: SIGUSR1's default action
    // would end the process.
    let mut usr1 = signal(SignalKind::user_defined1())
        .map_err(|e| tracing::warn!("cannot handle SIGUSR1 (access log reopen): {e}"))
        .ok();
    let state = Rc::new(AdminState {
        shards: shards.clone(),
        config_json: std::cell::RefCell::new(config_json(&config, &bound, backend)),
        draining: std::cell::Cell::new(false),
        certificate: std::cell::RefCell::new(None),
    });
    let admin = match tokio::net::TcpListener::from_std(admin) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot serve the admin endpoint: {e}");
            return 1;
        }
    };
    if let Some(id) = identity::load_static(&config) {
        match id {
            Ok(id) => identity::broadcast(&shards, Some(&state), id),
            Err(e) => {
                tracing::error!("{e}");
                return 1;
            }
        }
    }
    let admin_task = tokio::task::spawn_local(admin::serve(admin, state.clone()));
    let traffic = Rc::new(traffic::Traffic::new(shards.clone()));
    let control = match &config.control {
        Some(cc) => match start_control(&config, cc, &shards, &state, &bound).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("{e}");
                return 1;
            }
        },
        None => None,
    };
    match &control {
        Some((applier, _)) => applier.set_traffic(traffic.clone(), config.clone()),
        None => traffic.configure(&config.service_list(None)),
    }
    tokio::task::spawn_local(resolver(requests, traffic.clone()));
    tokio::task::spawn_local(traffic_ticks(traffic.clone()));
    // Accept only now, with the identity and the last good snapshot in
    // place: connections already queued (an upgrade's inherited listeners)
    // must find a proxy that can serve them.
    let acceptors: Vec<_> = accept
        .into_iter()
        .map(|(l, dir)| tokio::task::spawn_local(crate::listener::acceptor(l, dir, shards.clone())))
        .collect();
    for h in &shards {
        if h.tx.try_send(ShardMsg::Listen).is_err() {
            tracing::error!("shard {} is gone; it cannot accept", h.index);
        }
    }
    tracing::info!("{}", bound.describe());
    if let Some(p) = upgrade.predecessor.take() {
        if let Err(e) = p.ready() {
            // It gave up waiting and serves on: two proxies must not.
            tracing::error!("{e}; the running proxy serves on, so this one exits");
            return 1;
        }
        tracing::info!("serving; the previous process drains and exits");
    }
    // Resolves only when a successor serves (never without an upgrade
    // socket), so the loop can poll it every turn.
    let (successor, upgrades) = await_successor(upgrade);
    let successor = async move {
        match successor.await {
            Ok(pid) => pid,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::pin!(successor);

    let mut current = config;
    let mut loaded = loaded;
    let mut refresh = names::refresh_timer();
    let at = Installed {
        shards: &shards,
        state: &state,
        bound: &bound,
        backend,
        applier: control.as_ref().map(|(a, _)| &**a),
        traffic: &traffic,
    };
    let mut handed_to = None;
    // A stop asked for while the shards are still starting skips the loop.
    let mut stop = systemd::enabled() && systemd::start(&shards, &mut term, &mut int).await;
    while !stop {
        tokio::select! {
            pid = &mut successor => {
                handed_to = Some(pid);
                break;
            }
            _ = hup.recv() => {
                systemd::reloading();
                (loaded, current) = reload(&config_path, (loaded, current), &at, &names);
                at.use_config(&current);
                // New names resolve now, not at the next tick.
                refresh.reset_immediately();
                systemd::reloaded(&shards).await;
            }
            _ = refresh.tick(), if names::has_names(&loaded) => {
                current = at.refresh(&names, &loaded, current).await;
            }
            _ = term.recv() => stop = true,
            _ = int.recv() => stop = true,
            _ = recv_or_never(&mut usr1) => match &access_log {
                Some(sink) => sink.reopen(),
                None => tracing::info!("SIGUSR1: no access log to reopen"),
            },
        }
    }

    state.draining.set(true);
    let link = control.as_ref().map(|(_, link)| &**link);
    let leave = hand_over_or_stop(handed_to, link, &admin_task, upgrades).await;
    drain(link, acceptors, &shards, current.proxy.drain_timeout, leave).await;
    0
}

/// After the agent's loop, before the drain: returns whether to leave the
/// mesh (deregister), which a proxy that handed its listeners to a
/// successor (`handed_to`) must not do.
async fn hand_over_or_stop(
    handed_to: Option<u32>,
    link: Option<&ControlLink>,
    admin_task: &tokio::task::JoinHandle<()>,
    upgrades: Option<tokio::task::JoinHandle<()>>,
) -> bool {
    match handed_to {
        Some(pid) => {
            // The successor serves the same sockets and address, and is the
            // mesh member now: no deregistration, no control session (it
            // would register, renew and persist beside the successor's), and
            // its admin endpoint answers from now on.
            tracing::info!("pid {pid} took over the listeners; draining");
            systemd::handed_over(pid);
            admin_task.abort();
            if let Some(link) = link {
                link.close(Duration::from_millis(500)).await;
            }
            false
        }
        None => {
            // Stopping: no successor may take the sockets of a proxy that
            // has left the mesh.
            if let Some(task) = upgrades {
                task.abort();
            }
            systemd::stopping();
            true
        }
    }
}

/// The agent's traffic timers: endpoint state every 200 ms, the limit
/// splits between shards every second.
async fn traffic_ticks(traffic: Rc<traffic::Traffic>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut n = 0u32;
    loop {
        tick.tick().await;
        traffic.tick();
        n += 1;
        if n % 5 == 0 {
            traffic.resplit();
        }
    }
}

/// Leaves the mesh and drains: deregisters (so peers stop choosing this
/// proxy before it stops accepting; not when a successor took over, `leave`
/// false), stops accepting, lets in-flight requests finish within
/// `deadline`, closes the control session.
async fn drain(
    link: Option<&ControlLink>,
    acceptors: Vec<tokio::task::JoinHandle<()>>,
    shards: &[ShardHandle],
    deadline: Duration,
    leave: bool,
) {
    // Withdraw the endpoint first, so peers stop choosing this proxy before
    // it stops accepting.
    if let Some(link) = link.filter(|_| leave) {
        match link.deregister(DEREGISTER_TIMEOUT).await {
            Deregistration::Confirmed => {
                tracing::info!("deregistered: control confirmed the endpoint is withdrawn")
            }
            Deregistration::NotConnected => {
                tracing::info!("not connected to control; skipping deregistration")
            }
            Deregistration::Unconfirmed => tracing::warn!(
                "control did not confirm the deregistration within {DEREGISTER_TIMEOUT:?}; draining anyway"
            ),
        }
    }

    // Idle keep-alive connections wait for one last request: 1 s when the
    // proxy stops (peers already stopped choosing it), nearly the whole
    // drain when a successor took over (clients keep using their
    // connections to this process until they get `Connection: close`).
    let idle_grace = if leave {
        Duration::from_secs(1)
    } else {
        deadline.saturating_sub(Duration::from_secs(1))
    };
    // Drain: stop accepting, let in-flight requests finish, then exit.
    tracing::info!(
        "draining: no new connections; waiting up to {deadline:?} for in-flight requests"
    );
    for a in acceptors {
        a.abort();
    }
    let mut waits = Vec::new();
    for h in shards {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = ShardMsg::Drain {
            reply: tx,
            idle_grace,
        };
        if h.tx.try_send(msg).is_ok() {
            waits.push(rx);
        }
    }
    let all = async {
        for w in waits {
            let _ = w.await;
        }
    };
    match tokio::time::timeout(deadline, all).await {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!("drain deadline passed with requests still in flight; exiting"),
    }
    if let Some(link) = link {
        link.close(Duration::from_millis(500)).await;
    }
}

/// A `[tls]` file the proxy could not use at start.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FileError(#[from] identity::StaticIdentityError);

/// What `--check` verifies beyond the file itself: the `[tls]` files load
/// (readable, PEM, a usable identity, not expired); an error is what would
/// stop the proxy at start. The warnings are what would not stop it but
/// keep it from working: a token file that cannot be read while the proxy
/// has not joined yet (it would retry the join until one can).
pub fn check_files(cfg: &Config) -> Result<Vec<String>, FileError> {
    if let Some(id) = identity::load_static(cfg) {
        id?;
    }
    let mut warnings = Vec::new();
    if let Some(c) = &cfg.control {
        // Unknown (an unreadable state_dir): say nothing.
        let joined = c
            .state_dir
            .join(state::CERT_FILE)
            .try_exists()
            .unwrap_or(true);
        if let (Some(path), false) = (&c.token_file, joined) {
            if let Err(e) = std::fs::read_to_string(path) {
                warnings.push(format!(
                    "{}: [control] token_file: cannot read {}: {e}; this proxy has not joined ({} holds no certificate) and will retry until it can",
                    cfg.source.display(),
                    path.display(),
                    c.state_dir.display()
                ));
            }
        }
    }
    Ok(warnings)
}

/// `[control] state_dir` cannot be created or opened.
#[derive(Debug, thiserror::Error)]
#[error("{}: [control] state_dir: cannot create {}: {source}", config.display(), dir.display())]
pub struct StateDirError {
    config: std::path::PathBuf,
    dir: std::path::PathBuf,
    #[source]
    source: std::io::Error,
}

/// Opens `state_dir`, applies the persisted snapshot, starts the app's
/// health checks and the control client.
async fn start_control(
    config: &Config,
    cc: &crate::config::ControlConfig,
    shards: &[ShardHandle],
    admin: &Rc<AdminState>,
    bound: &Bound,
) -> Result<(Rc<Applier>, Rc<ControlLink>), StateDirError> {
    let state = state::StateDir::open(&cc.state_dir).map_err(|source| StateDirError {
        config: config.source.clone(),
        dir: cc.state_dir.clone(),
        source,
    })?;
    let applier = Rc::new(Applier::new(
        shards.to_vec(),
        Some(state.clone()),
        Some(admin.clone()),
    ));
    applier.set_static_services(config.static_services());
    applier.set_allow_store_change(cc.allow_store_change);
    applier.publish();
    // The stored certificate first: the persisted snapshot's access policy
    // needs the trust domain it names, and the shards need it to serve.
    if let Ok(Some(id)) = state.load_identity() {
        applier.set_identity(&id);
    }
    control::restore(&state, &applier).await;
    let health = config.inbound.as_ref().map(|i| {
        let checker = app_health::Checker {
            app: i.app.clone(),
            config: cc.health.clone(),
        };
        let latest = app_health::LatestHealth::default();
        tokio::task::spawn_local(checker.clone().run(latest.clone(), shards.to_vec()));
        (checker, latest)
    });
    let link = Rc::new(ControlLink::default());
    tokio::task::spawn_local(control::run(ControlSetup {
        config: cc.clone(),
        service: config.proxy.service.clone(),
        labels: config.proxy.labels.clone(),
        inbound: bound.inbound,
        state,
        applier: applier.clone(),
        health,
        link: link.clone(),
    }));
    Ok((applier, link))
}

/// `loaded` with its `[[services]]` names resolved, sent to the shards
/// (before they accept) when it has any.
async fn resolve_names(
    names: &names::Names,
    loaded: &Arc<Config>,
    shards: &[ShardHandle],
) -> Arc<Config> {
    if !names::has_names(loaded) {
        return loaded.clone();
    }
    let resolved = Arc::new(names.resolved(loaded).await);
    for h in shards {
        let _ = h.tx.try_send(ShardMsg::Config(resolved.clone()));
    }
    resolved
}

/// SIGHUP, SIGTERM and SIGINT; `None` (logged) if they cannot be had.
fn signals() -> Option<(Signal, Signal, Signal)> {
    match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(h), Ok(t), Ok(i)) => Some((h, t, i)),
        _ => {
            tracing::error!("cannot install signal handlers");
            None
        }
    }
}

/// Where a new configuration goes: the shards and `/config`, and the
/// balancer and limits (or the applier, with control).
struct Installed<'a> {
    shards: &'a [ShardHandle],
    state: &'a AdminState,
    bound: &'a Bound,
    backend: &'a str,
    applier: Option<&'a Applier>,
    traffic: &'a traffic::Traffic,
}

impl Installed<'_> {
    /// The shards and `/config` get `new`.
    fn install(&self, new: &Arc<Config>) {
        for h in self.shards {
            let _ = h.tx.try_send(ShardMsg::Config(new.clone()));
        }
        *self.state.config_json.borrow_mut() = config_json(new, self.bound, self.backend);
    }

    /// The balancer and limits (or the applier, with control) learn `cfg`.
    fn use_config(&self, cfg: &Arc<Config>) {
        match self.applier {
            Some(applier) => {
                applier.set_config(cfg.clone());
                applier.publish();
            }
            None => self.traffic.configure(&cfg.service_list(None)),
        }
    }

    /// Resolves `loaded`'s `[[services]]` names again; installs and
    /// returns the result if the endpoints changed, else `current`.
    async fn refresh(
        &self,
        names: &names::Names,
        loaded: &Config,
        current: Arc<Config>,
    ) -> Arc<Config> {
        let fresh = Arc::new(names.resolved(loaded).await);
        if fresh.services == current.services {
            return current;
        }
        self.install(&fresh);
        self.use_config(&fresh);
        tracing::info!("[[services]] endpoints changed with their names' addresses");
        fresh
    }
}

/// SIGHUP: re-read the file; apply it only if it is valid, changes no key
/// that needs a restart, and defines no `[[services]]` that control's table
/// in force defines. Takes and returns (as loaded, in force): in force is
/// the loaded one with its names' last good addresses (they are resolved
/// again right after).
fn reload(
    path: &std::path::Path,
    (loaded, current): (Arc<Config>, Arc<Config>),
    at: &Installed<'_>,
    names: &names::Names,
) -> (Arc<Config>, Arc<Config>) {
    let checked = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|new| {
            current
                .check_reload(&new)
                .map_err(|e| e.to_string())
                .map(|()| new)
        })
        .and_then(|new| {
            let statics = new.static_services();
            at.applier
                .map_or(Ok(()), |a| a.check_reload(&statics))
                .map_err(|e| e.to_string())
                .map(|()| (new, statics))
        });
    let new = match checked {
        Ok((c, statics)) => {
            if let Some(a) = at.applier {
                a.set_static_services(statics);
            }
            Arc::new(c)
        }
        Err(e) => {
            tracing::error!(
                "configuration reload rejected, keeping the running configuration: {e}"
            );
            return (loaded, current);
        }
    };
    // `[tls]` files are re-read on every reload (a renewed certificate is
    // picked up without a restart); unreadable ones reject the reload.
    let id = match identity::load_static(&new) {
        Some(Err(e)) => {
            tracing::error!(
                "configuration reload rejected, keeping the running configuration: {e}"
            );
            return (loaded, current);
        }
        Some(Ok(id)) => Some(id),
        None => None,
    };
    let in_force = Arc::new(names.with_cached(&new));
    at.install(&in_force);
    if let Some(id) = id {
        identity::broadcast(at.shards, None, id);
    }
    tracing::info!("configuration reloaded from {}", path.display());
    (new, in_force)
}

/// Resolves passthrough host names for the shards.
async fn resolver(requests: async_channel::Receiver<AgentRequest>, traffic: Rc<traffic::Traffic>) {
    while let Ok(r) = requests.recv().await {
        match r {
            AgentRequest::Outcomes { counts } => traffic.outcomes(counts),
            AgentRequest::Probe { service, addr, ok } => traffic.probe(&service, addr, ok),
            AgentRequest::Demand { shard, services } => traffic.demand(shard, services),
            AgentRequest::Pool { shard, reports } => traffic.pool(shard, reports),
            AgentRequest::Resolve { host, port, reply } => {
                tokio::task::spawn_local(async move {
                    let res = match tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio::net::lookup_host((host.as_str(), port)),
                    )
                    .await
                    {
                        Ok(Ok(mut addrs)) => addrs
                            .next()
                            .ok_or_else(|| std::io::Error::other(format!("{host}: no addresses"))),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "resolve timed out",
                        )),
                    };
                    let _ = reply.send(res);
                });
            }
        }
    }
}
