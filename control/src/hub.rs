//! The hub: control's shared state and the only place that changes it.
//! The HTTP API and the QUIC sessions call in; the hub writes the store,
//! updates the registry, and publishes snapshots.
//!
//! Publishing: a change marks the hub dirty and wakes [`Hub::run`], which
//! waits out a short debounce (so a burst of registrations or an apply
//! followed by a rollback costs one push), then computes every session's
//! [`View`] (once per distinct [`ViewKey`]: the `calls` list, and the
//! proxy's own service when it has an AccessPolicy or a Resilience) and
//! sends a snapshot to each
//! session whose view differs from the last one it was sent. Sessions get
//! snapshots through a `watch` channel, so a slow proxy only ever has the
//! latest one waiting, never a queue.
//!
//! At fleet scale (thousands of sessions, a few hundred distinct views) a
//! publish costs per distinct view, not per session: each view is computed,
//! compared with what was sent before and encoded once ([`Published`]), and
//! the sessions that share it share the view (`Arc`) and the encoded bytes.
//! What a session holds is an `Arc` to the last view it was sent.
//!
//! Snapshot versions are `max(previous + 1, unix millis)`: strictly
//! increasing, and across restarts too, because pushes are debounced (at
//! most one per debounce interval plus one per session start), so the
//! counter never runs ahead of the clock by more than a few increments.
//!
//! After control starts, a proxy that says Hello with a version it already
//! runs is not sent a snapshot until the grace period ends: the registry is
//! empty after a restart, and an early snapshot would withdraw endpoints
//! whose proxies have not re-registered yet. New proxies (no version) get
//! theirs at once.

// Control is not the data plane: these locks guard short, synchronous
// sections (no await inside), taken a few times per operator request or
// proxy message, never per data-plane request.
#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use coremesh_api::http::{
    ApplyResult, HistoryEntry, NodeEvicted, NodeReadmitted, NodeStatus, TokenCreated, TokenInfo,
    TokenRequest,
};
use coremesh_api::resource::Resource;
use coremesh_api::snapshot::Snapshot;
use coremesh_api::token::{sha256_hex, JoinToken};
use coremesh_api::wire::{self, ControlMsg};
use tokio::sync::{watch, Notify};

use crate::ca::{Ca, PeerIdentity, Signed};
use crate::config::{self, Config, Plan};
use crate::nodes::{evicted_message, Nodes};
use crate::registry::{ProxyId, Registry};
use crate::store::{Consumed, Issued, IssuedCert, Store};
use crate::view::{self, View};
use crate::{unix_millis, unix_secs, Error};

/// Tunables, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub heartbeat_timeout: Duration,
    pub grace: Duration,
    pub cert_lifetime: Duration,
    pub debounce: Duration,
    pub heartbeat_interval: Duration,
    /// How long a disconnected proxy stays in `meshctl status`.
    pub forget_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat_timeout: Duration::from_secs(15),
            grace: Duration::from_secs(30),
            cert_lifetime: crate::ca::DEFAULT_CERT_LIFETIME,
            debounce: Duration::from_millis(50),
            heartbeat_interval: Duration::from_secs(5),
            forget_after: Duration::from_secs(600),
        }
    }
}

/// A snapshot and its frame ([`coremesh_api::wire::encode`] of
/// `ControlMsg::Snapshot`), encoded once and shared by every session it is
/// sent to.
#[derive(Debug)]
pub struct Published {
    pub snapshot: Snapshot,
    /// The frame, or why it could not be encoded.
    pub frame: Result<Vec<u8>, wire::FrameError>,
    /// The same frame compressed ([`wire::compress`]), for sessions that
    /// asked for it; `None` when it would not be shorter.
    pub compressed: Option<Vec<u8>>,
}

impl Published {
    pub fn new(snapshot: Snapshot) -> Published {
        let msg = ControlMsg::Snapshot(snapshot);
        let mut frame = Vec::new();
        let frame = wire::encode(&msg, &mut frame).map(|()| frame);
        let compressed = match frame.as_deref().map(wire::compress) {
            Ok(Ok(packed)) => packed,
            Ok(Err(e)) => {
                // Sessions get the plain frame instead.
                tracing::warn!("snapshot not compressed: {e}");
                None
            }
            Err(_) => None,
        };
        let ControlMsg::Snapshot(snapshot) = msg else {
            unreachable!("constructed above")
        };
        Published {
            snapshot,
            frame,
            compressed,
        }
    }

    /// The bytes to send: the compressed frame when the session decodes it
    /// and there is one.
    pub fn frame_for(&self, compressed: bool) -> Result<&[u8], &wire::FrameError> {
        match (&self.compressed, &self.frame) {
            (Some(packed), Ok(_)) if compressed => Ok(packed),
            (_, Ok(frame)) => Ok(frame),
            (_, Err(e)) => Err(e),
        }
    }
}

/// What a session receives snapshots through (after the first, which
/// [`Hub::open_session`] returns).
pub type SnapshotRx = watch::Receiver<Option<Arc<Published>>>;

type Calls = Option<BTreeSet<String>>;

/// What a view depends on besides the config and the registry: the proxy's
/// own service when that service has an AccessPolicy or a Resilience (both
/// are in its view and nobody else's; none for most services, so they keep
/// sharing views), and its `calls`. Sessions with equal keys get the same
/// view.
type ViewKey = (Option<String>, Calls);

/// The own-service part of a [`ViewKey`].
fn own_key(config: &Config, service: &str) -> Option<String> {
    (config.access_policy(service).is_some() || config.resilience(service).is_some())
        .then(|| service.to_string())
}

struct SessionSlot {
    /// The session's service (from its certificate): whose AccessPolicy
    /// and Resilience it gets.
    service: String,
    calls: Calls,
    tx: watch::Sender<Option<Arc<Published>>>,
    last: Option<Arc<View>>,
    /// Reconnected during the grace period: no snapshot until it ends.
    held: bool,
    /// When the session said Hello.
    opened: Instant,
}

struct State {
    config_version: u64,
    /// [`config::digest`] of `config`, as recorded in the store.
    config_digest: String,
    config: Arc<Config>,
    registry: Registry,
    /// Evicted nodes and the revocation list (loaded from the store).
    nodes: Nodes,
    sessions: HashMap<ProxyId, SessionSlot>,
    /// The latest view computed for each distinct key, so that sessions
    /// with equal views share one.
    latest: HashMap<ViewKey, Arc<View>>,
    snapshot_version: u64,
    dirty: bool,
    grace_over: bool,
    /// Cut off from etcd since this tick (first seen by [`Hub::run`]), and
    /// whether the sessions were handed over ([`handover_after`]) in
    /// this cut-off.
    cut_off_seen: Option<Instant>,
    handed_over: bool,
}

pub struct Hub {
    store: Arc<dyn Store>,
    /// The store's identity, in every snapshot (proxies refuse a lower
    /// config version from the same store, and another store's snapshots).
    store_id: String,
    /// Swapped when the CA in etcd changes ([`Hub::set_ca`]).
    ca: Mutex<Arc<Ca>>,
    /// The CA's trust bundle, in every view.
    trust_bundle: Mutex<Arc<Vec<String>>>,
    opts: Options,
    state: Mutex<State>,
    /// Serializes config writers (read-plan-commit), so commits never race.
    writer: Mutex<()>,
    changed: Notify,
    /// Woken by the store's watch ([`Store::watch`]): another control on
    /// the same store may have committed a version; [`Hub::run`] re-reads.
    store_changed: Arc<Notify>,
    /// `meshctl tap` (tap.rs).
    taps: Arc<crate::tap::Taps>,
    /// The proxies' edge summaries (the fleet view).
    fleet: crate::fleet::Fleet,
    /// Registrations shared through etcd (store/registrations.rs): the
    /// registry's changes go there, and the hub publishes every replica's
    /// endpoints from its mirror. `None` with redb.
    shared: Option<Arc<crate::store::registrations::Shared>>,
    /// Woken when the mirror of the shared registrations changed.
    shared_changed: Arc<Notify>,
    /// This replica was cut off from etcd at the last look ([`Hub::pushing`]).
    cut_off: std::sync::atomic::AtomicBool,
}

/// Why a join was refused, for the wire's Error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    Token(String),
    /// The node is evicted.
    Evicted(String),
    BadRequest(String),
    Internal(String),
}

/// A successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub service: String,
    pub spiffe_id: String,
    pub cert: Signed,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves state that is still
    // consistent per field; keep serving rather than cascade the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// Loads the current config from `store`. `started` is when control
    /// started (the grace period counts from it).
    pub fn new(
        store: Arc<dyn Store>,
        ca: Ca,
        opts: Options,
        started: Instant,
    ) -> Result<Arc<Hub>, Error> {
        let (config_version, config) = store.current()?;
        let nodes = Nodes::new(store.nodes()?, unix_secs(SystemTime::now()));
        let shared_changed = Arc::new(Notify::new());
        let shared = store.etcd().filter(|e| e.lease().is_some()).map(|etcd| {
            let wake = shared_changed.clone();
            crate::store::registrations::Shared::start(
                etcd,
                opts.heartbeat_timeout,
                started + opts.grace,
                Box::new(move || wake.notify_one()),
            )
        });
        let mut state = State {
            config_version,
            config_digest: store.current_digest()?,
            config: Arc::new(config),
            registry: Registry::new(
                opts.heartbeat_timeout,
                started + opts.grace,
                opts.forget_after,
            ),
            nodes,
            sessions: HashMap::new(),
            latest: HashMap::new(),
            snapshot_version: 0,
            dirty: false,
            cut_off_seen: None,
            handed_over: false,
            grace_over: opts.grace.is_zero(),
        };
        if let Some(sh) = &shared {
            state.registry.share(sh.endpoints());
        }
        let store_changed = Arc::new(Notify::new());
        let wake = store_changed.clone();
        store.watch(Box::new(move || wake.notify_one()));
        Ok(Arc::new(Hub {
            store_id: store.id().to_string(),
            store,
            trust_bundle: Mutex::new(Arc::new(ca.trust_bundle())),
            taps: Arc::new(crate::tap::Taps::new(ca.spiffe_id(""))),
            ca: Mutex::new(Arc::new(ca)),
            opts,
            state: Mutex::new(state),
            writer: Mutex::new(()),
            changed: Notify::new(),
            fleet: crate::fleet::Fleet::default(),
            store_changed,
            shared,
            shared_changed,
            cut_off: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The store's identity, as snapshots carry it.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The CA control issues from now.
    pub fn ca(&self) -> Arc<Ca> {
        lock(&self.ca).clone()
    }

    fn trust_bundle(&self) -> Arc<Vec<String>> {
        lock(&self.trust_bundle).clone()
    }

    /// Issues from `ca` from now on, and sends every proxy a snapshot with
    /// its trust bundle (a root rotation of the CA in etcd,
    /// [`crate::ca_rotation`]).
    pub fn set_ca(&self, ca: Ca) {
        *lock(&self.trust_bundle) = Arc::new(ca.trust_bundle());
        *lock(&self.ca) = Arc::new(ca);
        let mut st = lock(&self.state);
        self.mark_dirty(&mut st);
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn taps(&self) -> &Arc<crate::tap::Taps> {
        &self.taps
    }

    /// The fleet view: every proxy's edge summaries.
    pub fn fleet(&self) -> &crate::fleet::Fleet {
        &self.fleet
    }

    /// The publisher: debounces changes, expires endpoints, forgets long
    /// disconnected proxies, ends the grace period. Runs until the process
    /// exits.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.changed.notified() => tokio::time::sleep(self.opts.debounce).await,
                _ = tick.tick() => {}
                _ = self.shared_changed.notified() => tokio::time::sleep(self.opts.debounce).await,
                _ = self.store_changed.notified() => {
                    // Reading the store blocks; what it adopts marks the
                    // hub dirty and wakes this loop again to publish.
                    let hub = self.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = hub.refresh_blocking() {
                            tracing::warn!("re-reading the store after a change elsewhere: {e}");
                        }
                    });
                    continue;
                }
            }
            let now = Instant::now();
            let mut st = lock(&self.state);
            if st.registry.expire(now) {
                st.dirty = true;
            }
            if let Some(sh) = &self.shared {
                sh.apply(st.registry.take_changes());
                let set = sh.endpoints();
                if st.registry.shared().is_none_or(|s| !Arc::ptr_eq(s, &set)) {
                    st.registry.set_shared(set);
                    st.dirty = true;
                }
            }
            // Status rows only: no view depends on them.
            st.registry.forget(now);
            if st.nodes.expire(unix_secs(SystemTime::now())) {
                st.dirty = true;
            }
            if !st.grace_over && !st.registry.in_grace(now) {
                st.grace_over = true;
                let mut released = 0;
                for slot in st.sessions.values_mut() {
                    released += usize::from(slot.held);
                    slot.held = false;
                }
                tracing::info!(
                    released,
                    "grace period over: endpoints now expire, held sessions get snapshots"
                );
                st.dirty = true;
            }
            // Cut off from etcd: the proxies keep their last snapshot
            // (what this replica would push may be stale or partial); the
            // change waits, dirty, until etcd answers again.
            let pushing = self.pushing();
            if pushing {
                st.cut_off_seen = None;
                st.handed_over = false;
            } else {
                self.hand_over(&mut st, now);
            }
            if st.dirty && pushing {
                let out = publish(&mut st, &self.trust_bundle(), &self.store_id);
                drop(st);
                deliver(out);
            }
        }
    }

    /// Cut off from etcd for [`handover_after`]: closes the sessions
    /// older than that, once per cut-off, so that their proxies move to
    /// the next replica in their `[control] address` list and register
    /// there, before this replica's lease (and with it their endpoints in
    /// etcd) runs out. Their endpoints are released
    /// ([`Registry::release`]): still listed, never written from here
    /// again, so this replica neither puts them back over the new owner's
    /// record nor deletes them when etcd answers again. Sessions that arrive later in
    /// the cut-off stay: when etcd has lost its majority every replica is
    /// cut off, and a proxy moves once, not round the list. A proxy that
    /// lists this replica only reconnects here and keeps its last snapshot.
    fn hand_over(&self, st: &mut State, now: Instant) {
        let after = handover_after(self.opts.heartbeat_timeout);
        let since = *st.cut_off_seen.get_or_insert(now);
        if st.handed_over || now.duration_since(since) < after {
            return;
        }
        st.handed_over = true;
        let old: Vec<ProxyId> = st
            .sessions
            .iter()
            .filter(|(_, slot)| now.duration_since(slot.opened) >= after)
            .map(|(id, _)| *id)
            .collect();
        for id in &old {
            // Dropping its sender ends the session task, which closes the
            // connection.
            st.sessions.remove(id);
            st.registry.release(*id);
        }
        self.share(st);
        tracing::warn!(
            sessions_closed = old.len(),
            "cut off from etcd for {after:?}: closed the proxies' sessions, so that they move to a replica that reaches etcd and register there before this replica's lease ends"
        );
    }

    /// Whether this replica pushes: not while it is cut off from etcd.
    /// Back from a cut-off, it re-reads the current version and the shared
    /// registrations first.
    fn pushing(&self) -> bool {
        use std::sync::atomic::Ordering;
        let Some(etcd) = self.store.etcd() else {
            return true;
        };
        let cut_off = etcd.health() != crate::store::etcd::StoreHealth::Ok;
        let was = self.cut_off.swap(cut_off, Ordering::AcqRel);
        if was && !cut_off {
            tracing::info!("etcd answers again: re-reading the store, then pushing again");
            self.store_changed.notify_one();
            if let Some(sh) = &self.shared {
                sh.resync();
            }
        }
        !cut_off
    }

    /// This replica and its link to the store (`GET /v1/replica`).
    pub fn replica_status(&self) -> coremesh_api::http::ReplicaStatus {
        use crate::store::etcd::StoreHealth;
        let Some(etcd) = self.store.etcd() else {
            return coremesh_api::http::ReplicaStatus {
                replica: None,
                store: "redb".into(),
                cut_off_since: None,
                why: None,
                pushing: true,
            };
        };
        let (since, why) = match etcd.health() {
            StoreHealth::Ok => (None, None),
            StoreHealth::CutOff { since, why } => (Some(unix_secs(since)), Some(why)),
        };
        coremesh_api::http::ReplicaStatus {
            replica: Some(etcd.replica().to_string()).filter(|r| !r.is_empty()),
            store: format!("etcd://{}", etcd.endpoints()),
            pushing: since.is_none(),
            cut_off_since: since,
            why,
        }
    }

    fn mark_dirty(&self, st: &mut State) {
        st.dirty = true;
        self.changed.notify_one();
    }

    /// Hands what the registry did to this replica's endpoints to the
    /// shared registrations (their flusher writes etcd, off this lock).
    fn share(&self, st: &mut State) {
        if let Some(sh) = &self.shared {
            sh.apply(st.registry.take_changes());
        }
    }

    // ---- sessions (called by the QUIC server) ----

    /// A session said Hello (from `node`: see [`Hub::admit_session`]);
    /// returns its id, its first snapshot (unless
    /// held for the grace period) and the channel of the ones after it.
    pub fn open_session(
        &self,
        service: &str,
        node: &str,
        calls: Option<Vec<String>>,
        running: Option<u64>,
        cert_expiry: u64,
    ) -> (ProxyId, Option<Arc<Published>>, SnapshotRx) {
        let mut st = lock(&self.state);
        let id = st.registry.hello(service, node, cert_expiry);
        if let Some(v) = running {
            // Whatever it runs, what it gets next must be newer.
            st.snapshot_version = st.snapshot_version.max(v);
        }
        let held = running.is_some() && !st.grace_over;
        let (tx, rx) = watch::channel(None);
        let mut slot = SessionSlot {
            service: service.to_string(),
            calls: calls.map(|c| c.into_iter().collect()),
            tx,
            last: None,
            held,
            opened: Instant::now(),
        };
        let mut first = None;
        if !held {
            let view = view::compute(
                &st.config,
                &st.registry,
                slot.calls.as_ref(),
                service,
                &self.trust_bundle(),
            )
            .with_revoked(st.nodes.revoked());
            let key: ViewKey = (own_key(&st.config, service), slot.calls.clone());
            let view = match st.latest.get(&key) {
                Some(v) if **v == view => v.clone(),
                _ => {
                    let view = Arc::new(view);
                    st.latest.insert(key, view.clone());
                    view
                }
            };
            let version = next_version(&mut st);
            let config_version = st.config_version;
            first = Some(Arc::new(Published::new(view.snapshot(
                version,
                &view::ConfigRef {
                    version: config_version,
                    store_id: &self.store_id,
                    digest: &st.config_digest,
                },
            ))));
            st.registry.sent(id, version, config_version);
            slot.last = Some(view);
        } else {
            if let Some(v) = running {
                st.registry.held(id, v);
            }
            tracing::info!(service, node, "session held until the grace period ends");
        }
        st.sessions.insert(id, slot);
        (id, first, rx)
    }

    pub fn close_session(&self, id: ProxyId) {
        self.taps.detach(id);
        let mut st = lock(&self.state);
        st.sessions.remove(&id);
        st.registry
            .disconnected(id, Instant::now(), SystemTime::now());
    }

    /// The proxy's clock said `unix_ms` (checked against control's now).
    pub fn clock(&self, id: ProxyId, unix_ms: u64) {
        let now = unix_millis(SystemTime::now());
        lock(&self.state).registry.clock(id, unix_ms, now);
    }

    pub fn ack(&self, id: ProxyId, version: u64) {
        lock(&self.state).registry.ack(id, version);
    }

    /// See [`crate::registry::Registry::problem`].
    pub fn problem(&self, id: ProxyId, problem: String) {
        lock(&self.state).registry.problem(id, problem);
    }

    pub fn nack(&self, id: ProxyId, version: u64, reason: &str) {
        lock(&self.state).registry.nack(id, version, reason);
    }

    pub fn register(&self, id: ProxyId, address: SocketAddr, labels: BTreeMap<String, String>) {
        let mut st = lock(&self.state);
        let changed = st
            .registry
            .register(id, address, labels, Instant::now(), SystemTime::now());
        self.share(&mut st);
        if changed {
            self.mark_dirty(&mut st);
        }
    }

    pub fn health(&self, id: ProxyId, healthy: bool) {
        let mut st = lock(&self.state);
        let flipped = st
            .registry
            .health(id, healthy, Instant::now(), SystemTime::now());
        self.share(&mut st);
        if flipped {
            self.mark_dirty(&mut st);
        }
    }

    /// Withdraws the session's endpoint and, before returning, hands every
    /// session whose view changed its new snapshot (no debounce: the proxy
    /// waits for this before it stops accepting).
    pub fn deregister(&self, id: ProxyId) {
        let mut st = lock(&self.state);
        let gone = st.registry.deregister(id);
        self.share(&mut st);
        if gone && self.pushing() {
            let out = publish(&mut st, &self.trust_bundle(), &self.store_id);
            drop(st);
            deliver(out);
        }
    }

    /// Whether a session may start with the certificate `peer` from a
    /// proxy that says it runs on `hello_node`: not with a revoked
    /// certificate, nor from an evicted node. The node it runs on: the
    /// certificate's, else (a certificate from before control wrote it)
    /// the Hello's. The error is what the proxy is told.
    pub fn admit_session(&self, peer: &PeerIdentity, hello_node: &str) -> Result<String, Error> {
        let node = peer.node.clone().unwrap_or_else(|| hello_node.to_string());
        if node != hello_node {
            tracing::warn!(
                certificate_node = %node,
                hello_node,
                "the proxy names another node than its certificate; using the certificate's"
            );
        }
        let st = lock(&self.state);
        if let Some(at) = st.nodes.evicted_at(&node) {
            return Err(Error::rejected(evicted_message(&node, at)));
        }
        if st.nodes.is_revoked(&peer.serial) {
            return Err(Error::rejected(format!(
                "certificate {} ({}) was revoked when its node was evicted; join again with a new token once the node is readmitted",
                peer.serial, peer.spiffe_id
            )));
        }
        Ok(node)
    }

    /// Signs a renewal CSR for the session's service on `node`, unless the
    /// node was evicted. Blocking (the certificate is recorded durably).
    pub fn renew_blocking(
        &self,
        id: ProxyId,
        service: &str,
        node: &str,
        csr_pem: &str,
    ) -> Result<Signed, Error> {
        if let Some(at) = lock(&self.state).nodes.evicted_at(node) {
            return Err(Error::rejected(evicted_message(node, at)));
        }
        let csr = Ca::parse_csr(csr_pem)?;
        let now = SystemTime::now();
        let signed = self
            .ca()
            .sign(csr, service, node, self.opts.cert_lifetime, now)?;
        self.record_issued(node, service, &signed, now)?;
        lock(&self.state)
            .registry
            .set_cert_expiry(id, signed.not_after);
        Ok(signed)
    }

    /// Records a signed certificate under its node before it is handed
    /// out; refused when the node was evicted meanwhile.
    fn record_issued(
        &self,
        node: &str,
        service: &str,
        signed: &Signed,
        now: SystemTime,
    ) -> Result<(), Error> {
        let cert = IssuedCert {
            serial: signed.serial.clone(),
            service: service.to_string(),
            not_after: signed.not_after,
        };
        match self.store.record_issued(node, &cert, unix_secs(now))? {
            Issued::Recorded => Ok(()),
            Issued::Evicted(at) => Err(Error::rejected(evicted_message(node, at))),
        }
    }

    /// Checks and spends a join token, then signs the CSR for its service
    /// on `node`; an evicted node is refused before the token is spent.
    /// Blocking (the token's use is fsynced).
    pub fn join_blocking(
        &self,
        token: &str,
        csr_pem: &str,
        node: &str,
    ) -> Result<Joined, JoinError> {
        if let Some(at) = lock(&self.state).nodes.evicted_at(node) {
            return Err(JoinError::Evicted(evicted_message(node, at)));
        }
        let token: JoinToken = token
            .parse()
            .map_err(|e| JoinError::Token(format!("malformed join token: {e}")))?;
        // Check the CSR before spending a use of the token on it.
        let csr = Ca::parse_csr(csr_pem).map_err(|e| JoinError::BadRequest(e.message))?;
        let now = SystemTime::now();
        let record = match self
            .store
            .consume_token(
                &token.id,
                &sha256_hex(token.secret.as_bytes()),
                unix_secs(now),
            )
            .map_err(|e| JoinError::Internal(e.to_string()))?
        {
            Consumed::Ok(record) => record,
            Consumed::Refused(why) => return Err(JoinError::Token(why.to_string())),
        };
        let cert = self
            .ca()
            .sign(csr, &record.service, node, self.opts.cert_lifetime, now)
            .map_err(|e| JoinError::Internal(e.message))?;
        self.record_issued(node, &record.service, &cert, now)
            .map_err(|e| match e.kind {
                crate::ErrorKind::Rejected => JoinError::Evicted(e.message),
                _ => JoinError::Internal(e.message),
            })?;
        Ok(Joined {
            spiffe_id: self.ca().spiffe_id(&record.service),
            service: record.service,
            cert,
        })
    }

    // ---- operator API (blocking: call from spawn_blocking) ----

    pub fn config(&self) -> (u64, Arc<Config>) {
        let st = lock(&self.state);
        (st.config_version, st.config.clone())
    }

    /// Reads the store's current version and, when it is not the one the
    /// hub holds (another control on a shared store committed it), adopts
    /// it and publishes it to this control's proxies. Returns what the hub
    /// holds after. The caller holds `writer`, so no commit of this hub
    /// interleaves.
    fn adopt_current(&self) -> Result<(u64, Arc<Config>), Error> {
        let (version, config, digest) = self.store.current_record()?;
        let mut st = lock(&self.state);
        if st.config_version != version || st.config_digest != digest {
            tracing::info!(
                version,
                held = st.config_version,
                "adopted the store's current version (committed by another control)"
            );
            st.config_version = version;
            st.config_digest = digest;
            st.config = Arc::new(config);
            self.mark_dirty(&mut st);
        }
        Ok((st.config_version, st.config.clone()))
    }

    /// See [`Hub::adopt_current`]: for a watch on a shared store.
    /// Blocking (reads the store).
    pub fn refresh_blocking(&self) -> Result<u64, Error> {
        let _writer = lock(&self.writer);
        Ok(self.adopt_current()?.0)
    }

    /// Plans a change on the store's current config and commits it as the
    /// next version. With `base` (the version the operator's change is
    /// based on: `meshctl apply --if-version`), refuses when the config is
    /// at another version; without it, the change is planned on the latest
    /// version. Either way a commit raced by another control on the same
    /// store fails with [`crate::ErrorKind::Conflict`] rather than
    /// overwrite what that one committed.
    fn commit(
        &self,
        base: Option<u64>,
        plan_for: impl FnOnce(&Config) -> Result<Plan, Error>,
    ) -> Result<ApplyResult, Error> {
        let _writer = lock(&self.writer);
        let (version, current) = self.adopt_current()?;
        match base {
            Some(base) if base > version => {
                return Err(Error::rejected(format!(
                    "if-version {base}: the config is at version {version}; there is no version {base} yet"
                )))
            }
            Some(base) if base < version => return Err(Error::changed(version)),
            _ => {}
        }
        let plan = plan_for(&current)?;
        if plan.changed.is_empty() {
            return Ok(ApplyResult {
                version,
                changed: vec![],
            });
        }
        let new_version = self.store.commit(
            version,
            &plan.config,
            &plan.summary,
            unix_secs(SystemTime::now()),
        )?;
        tracing::info!(version = new_version, summary = %plan.summary, "config committed");
        let mut st = lock(&self.state);
        st.config_version = new_version;
        st.config_digest = config::digest(&plan.config);
        st.config = Arc::new(plan.config);
        self.mark_dirty(&mut st);
        Ok(ApplyResult {
            version: new_version,
            changed: plan.changed,
        })
    }

    /// `base`: see [`Hub::commit`].
    pub fn apply_blocking(
        &self,
        docs: Vec<Resource>,
        base: Option<u64>,
    ) -> Result<ApplyResult, Error> {
        self.commit(base, |c| config::plan_apply(c, docs))
    }

    pub fn delete_blocking(
        &self,
        kind: &str,
        name: &str,
        base: Option<u64>,
    ) -> Result<ApplyResult, Error> {
        self.commit(base, |c| config::plan_delete(c, kind, name))
    }

    pub fn rollback_blocking(&self, to: u64, base: Option<u64>) -> Result<ApplyResult, Error> {
        let target = self.store.config_at(to)?.ok_or_else(|| {
            Error::not_found(format!(
                "version {to} does not exist; see `meshctl history`"
            ))
        })?;
        self.commit(base, |c| Ok(config::plan_rollback(c, target, to)))
    }

    pub fn history_blocking(&self) -> Result<Vec<HistoryEntry>, Error> {
        Ok(self
            .store
            .history()?
            .into_iter()
            .map(|r| HistoryEntry {
                version: r.version,
                at: r.at,
                summary: r.summary,
            })
            .collect())
    }

    /// Every resource as of config `version` (services first, as `meshctl
    /// get` lists them); version 0 is the empty config before the first
    /// apply.
    pub fn config_at_blocking(&self, version: u64) -> Result<Vec<Resource>, Error> {
        let config = self.store.config_at(version)?.ok_or_else(|| {
            Error::not_found(format!(
                "version {version} does not exist; see `meshctl history`"
            ))
        })?;
        Ok(config.resources())
    }

    pub fn create_token_blocking(&self, req: &TokenRequest) -> Result<TokenCreated, Error> {
        if let Err(e) =
            coremesh_api::resource::validate(&Resource::Service(coremesh_api::resource::Service {
                name: req.service.clone(),
                protocol: Default::default(),
                port: None,
                addresses: Vec::new(),
            }))
        {
            return Err(Error::rejected(format!("service: {}", e.reason)));
        }
        if !req.allow_undefined
            && !self
                .config()
                .1
                .services
                .iter()
                .any(|s| s.name == req.service)
        {
            return Err(Error::rejected(format!(
                "service: no Service resource defines {:?} (see `meshctl get services`); apply its Service first, or pass --allow-undefined to create a token for a service defined later",
                req.service
            )));
        }
        let uses = req.uses.unwrap_or(1);
        if uses == 0 {
            return Err(Error::rejected("uses: must be at least 1"));
        }
        let ttl = req.ttl_secs.unwrap_or(3600);
        if ttl == 0 {
            return Err(Error::rejected("ttl: must be at least 1s"));
        }
        let now = unix_secs(SystemTime::now());
        let (record, token) =
            crate::tokens::new_token(&req.service, ttl, uses, self.ca().fingerprint(), now);
        self.store.put_token(&record)?;
        tracing::info!(id = %record.id, service = %record.service, uses, ttl, "join token created");
        Ok(TokenCreated {
            id: record.id,
            token,
            expires_at: record.expires_at,
        })
    }

    /// The whole store in one read transaction (for backups).
    pub fn dump_blocking(&self) -> Result<crate::store::StoreDump, Error> {
        Ok(self.store.dump()?)
    }

    pub fn tokens_blocking(&self) -> Result<Vec<TokenInfo>, Error> {
        Ok(self
            .store
            .tokens()?
            .iter()
            .map(crate::tokens::info)
            .collect())
    }

    pub fn revoke_token_blocking(&self, id: &str) -> Result<(), Error> {
        if self.store.revoke_token(id)? {
            tracing::info!(%id, "join token revoked");
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "no token with id {id:?}; see `meshctl token list`"
            )))
        }
    }

    /// Evicts `node`: durably first, then its certificates join the
    /// revocation list every proxy is sent, its endpoints are withdrawn and
    /// its control sessions closed (their proxies are refused when they
    /// reconnect).
    pub fn evict_blocking(&self, node: &str) -> Result<NodeEvicted, Error> {
        check_node_name(node)?;
        let now = unix_secs(SystemTime::now());
        let already = lock(&self.state).nodes.evicted_at(node).is_some();
        let record = self.store.evict_node(node, now)?;
        let evicted_at = record.evicted_at.unwrap_or(now);
        let mut st = lock(&self.state);
        st.nodes.update(record, now);
        let revoked: Vec<_> = st
            .nodes
            .revoked()
            .iter()
            .filter(|c| c.node == node)
            .cloned()
            .collect();
        let endpoints_withdrawn = st.registry.withdraw_node(node);
        self.share(&mut st);
        let mut sessions_closed = 0;
        for id in st.registry.connected_on(node) {
            // Dropping its sender ends the session task, which closes the
            // connection.
            sessions_closed += usize::from(st.sessions.remove(&id).is_some());
        }
        self.mark_dirty(&mut st);
        drop(st);
        tracing::warn!(
            node,
            revoked = revoked.len(),
            sessions_closed,
            endpoints_withdrawn,
            already,
            "node evicted: its certificates are revoked on every proxy"
        );
        Ok(NodeEvicted {
            node: node.to_string(),
            evicted_at,
            already,
            revoked,
            sessions_closed,
            endpoints_withdrawn,
        })
    }

    /// Ends `node`'s eviction: it may join again with a new token. Its
    /// revoked certificates stay revoked until they expire.
    pub fn readmit_blocking(&self, node: &str) -> Result<NodeReadmitted, Error> {
        check_node_name(node)?;
        let now = unix_secs(SystemTime::now());
        let Some(record) = self.store.readmit_node(node, now)? else {
            return Err(Error::not_found(format!(
                "node {node:?} is not evicted; see `meshctl node list`"
            )));
        };
        let still_revoked = record.revoked.len();
        lock(&self.state).nodes.update(record, now);
        tracing::warn!(
            node,
            still_revoked,
            "node readmitted: it may join again with a new token"
        );
        Ok(NodeReadmitted {
            node: node.to_string(),
            still_revoked,
        })
    }

    /// Whether `node` is evicted.
    pub fn evicted(&self, node: &str) -> bool {
        lock(&self.state).nodes.evicted_at(node).is_some()
    }

    /// Every node with certificates or an eviction.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        lock(&self.state).nodes.status(unix_secs(SystemTime::now()))
    }

    pub fn proxies(&self) -> Vec<coremesh_api::http::ProxyStatus> {
        lock(&self.state).registry.proxy_statuses()
    }

    pub fn endpoints(&self) -> Vec<coremesh_api::http::EndpointStatus> {
        lock(&self.state).registry.endpoint_statuses()
    }
}

/// A node name an operator may evict: what a proxy could have joined as.
/// How long a replica cut off from etcd keeps its proxies' sessions
/// before it hands them over ([`Hub::hand_over`]): a sixth of the heartbeat
/// timeout (the lease's TTL), at least 1 s. The cut-off itself is seen a
/// third of the TTL after etcd's last answer, so the proxies move about
/// half way through the lease, with the other half left to register again.
pub fn handover_after(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 6).max(Duration::from_secs(1))
}

fn check_node_name(node: &str) -> Result<(), Error> {
    if node.is_empty() || node.len() > 253 || node.chars().any(|c| c.is_control() || c == '/') {
        return Err(Error::rejected(format!(
            "node: {node:?} is not a node name (1 to 253 characters, no '/' or control characters)"
        )));
    }
    Ok(())
}

fn next_version(st: &mut State) -> u64 {
    st.snapshot_version = (st.snapshot_version + 1).max(unix_millis(SystemTime::now()));
    st.snapshot_version
}

/// What [`publish`] decided to send, for [`deliver`] to hand over once the
/// hub's lock is released: waking 10,000 session tasks under the lock kept
/// the sessions that were answering (ACKs, heartbeats) waiting on it.
type Deliveries = Vec<(watch::Sender<Option<Arc<Published>>>, Arc<Published>)>;

/// Hands each session its new snapshot, unless it already holds a newer
/// one (two publishes may deliver in either order).
fn deliver(out: Deliveries) {
    for (tx, published) in out {
        tx.send_if_modified(|current| {
            let newer = current
                .as_ref()
                .is_some_and(|c| c.snapshot.version >= published.snapshot.version);
            if !newer {
                *current = Some(published);
            }
            !newer
        });
    }
}

/// Picks a new snapshot for every session whose view changed; the caller
/// [`deliver`]s them after it releases the lock.
///
/// Work per distinct [`ViewKey`], not per session: each view is computed
/// and encoded once, and compared once with each distinct view sessions
/// were last sent.
fn publish(st: &mut State, trust_bundle: &Arc<Vec<String>>, store_id: &str) -> Deliveries {
    let started = Instant::now();
    st.dirty = false;
    let version = next_version(st);
    let config_version = st.config_version;
    let State {
        config,
        registry,
        nodes,
        sessions,
        latest,
        config_digest,
        ..
    } = st;
    let revoked = nodes.revoked();
    let config_ref = view::ConfigRef {
        version: config_version,
        store_id,
        digest: config_digest,
    };
    let config: &Config = config;
    // The services whose sessions' view keys include them (see `own_key`).
    let own: HashSet<&str> = config
        .access_policies
        .iter()
        .map(|p| p.service.as_str())
        .chain(config.resiliences.iter().map(|r| r.service.as_str()))
        .collect();
    // Keyed like `latest`, but borrowed, so a lookup per session clones
    // nothing.
    type Key<'a> = (Option<&'a str>, &'a Calls);
    let mut views: HashMap<Key, (Arc<View>, Option<Arc<Published>>)> = HashMap::new();
    // Whether (last sent, new) are equal, by address. Both stay alive until
    // the end (`retired` keeps replaced ones), so addresses are not reused.
    let mut equal: HashMap<(*const View, *const View), bool> = HashMap::new();
    let mut retired: Vec<Arc<View>> = Vec::new();
    let mut sent = Vec::new();
    let mut out = Deliveries::new();
    for (id, slot) in sessions.iter_mut() {
        let SessionSlot {
            service,
            calls,
            tx,
            last,
            held,
            opened: _,
        } = slot;
        if *held {
            continue;
        }
        let calls: &Calls = calls;
        let key = (own.get(service.as_str()).copied(), calls);
        let (view, published) = views.entry(key).or_insert_with(|| {
            let view = view::compute(config, registry, calls.as_ref(), service, trust_bundle)
                .with_revoked(revoked);
            let owned: ViewKey = (key.0.map(str::to_string), calls.clone());
            let view = match latest.get(&owned) {
                Some(v) if **v == view => v.clone(),
                _ => Arc::new(view),
            };
            (view, None)
        });
        if let Some(prev) = &*last {
            if Arc::ptr_eq(prev, view) {
                continue;
            }
            let same = *equal
                .entry((Arc::as_ptr(prev), Arc::as_ptr(view)))
                .or_insert_with(|| **prev == **view);
            if same {
                // Share the new one; nothing to send.
                if let Some(old) = last.replace(view.clone()) {
                    retired.push(old);
                }
                continue;
            }
        }
        let published = published
            .get_or_insert_with(|| Arc::new(Published::new(view.snapshot(version, &config_ref))));
        out.push((tx.clone(), published.clone()));
        if let Some(old) = last.replace(view.clone()) {
            retired.push(old);
        }
        sent.push(*id);
    }
    drop(retired);
    // Only keys some session has: a departed session's view goes.
    *latest = views
        .into_iter()
        .map(|((own, calls), (view, _))| ((own.map(str::to_string), calls.clone()), view))
        .collect();
    for id in &sent {
        registry.sent(*id, version, config_version);
    }
    if !sent.is_empty() {
        tracing::debug!(
            version,
            config_version,
            sessions = sent.len(),
            took_us = started.elapsed().as_micros() as u64,
            "snapshots published"
        );
    }
    out
}

#[cfg(test)]
mod tests;
