//! Registrations shared through etcd: every replica's proxies' endpoints,
//! so that each replica pushes all of them, not only its own.
//!
//! One key per endpoint, `<prefix>endpoints/<service>/<address>`, whose
//! value is an [`EndpointRecord`] (node, labels, health, the owning
//! replica, the last heartbeat in unix ms), put under the owning replica's
//! lease. Three tasks on the store's runtime:
//!
//! - the flusher writes what this replica's proxies registered
//!   ([`Shared::apply`] takes the registry's [`Change`]s, off the hub's
//!   lock): a Register or a health flip is put at once (under this
//!   replica's lease, so a proxy that moved here takes its key over),
//!   heartbeats refresh the record's `heartbeat` at most every TTL/3,
//!   guarded by the record's `mod_revision` (never stealing back a key
//!   another replica took), batched up to [`BATCH`] operations per
//!   transaction; a Deregister deletes the key only if this replica still
//!   owns it (same guard). An endpoint whose proxy stopped heartbeating
//!   is simply no longer refreshed.
//! - the mirror reads `endpoints/` (a range, then a watch from that
//!   revision; again from a range when the watch is lost) into the set
//!   the hub publishes ([`Shared::endpoints`]), and wakes the hub when the
//!   set changes (a heartbeat alone does not).
//! - the withdrawer, on the replica leading election `withdraw`, deletes
//!   records whose heartbeat is older than the heartbeat timeout, each
//!   delete a fenced transaction that also compares the record's
//!   `mod_revision` with the one it saw: a record refreshed meanwhile is
//!   never deleted, and a deposed leader deletes nothing.
//!
//! A replica that dies: its lease ends after the TTL and etcd deletes its
//! records, unless its proxies registered through another replica first
//! (they reconnect within seconds and Register again), which moved the
//! keys to that replica's lease.

// Control is not the data plane: these locks guard short sections (no
// await inside), taken per election round or registration change.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::election::{fenced, Election, Fenced};
use super::etcd::{EtcdStore, Inner, Key, Keys, Retry, Session};

/// At most this many operations per transaction (etcd's default
/// `--max-txn-ops` is 128).
pub const BATCH: usize = 128;

/// One endpoint as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub healthy: bool,
    /// The replica whose proxy registered it (and whose lease holds it).
    pub replica: String,
    /// The proxy's last heartbeat the replica wrote, unix ms.
    pub heartbeat: u64,
}

/// (service, address): an endpoint's identity.
pub type EndpointKey = (String, SocketAddr);

/// What the local registry did to an endpoint this replica's proxy owns
/// ([`crate::registry::Registry::take_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Registered (or re-registered, or its health flipped): put now.
    Put {
        key: EndpointKey,
        node: String,
        labels: BTreeMap<String, String>,
        healthy: bool,
        at_ms: u64,
    },
    /// A heartbeat that changed nothing else.
    Beat { key: EndpointKey, at_ms: u64 },
    /// Deregistered or withdrawn (its node evicted): delete if still ours.
    Remove { key: EndpointKey },
    /// No heartbeat locally for the timeout: stop refreshing it (the
    /// leader withdraws it, unless another replica refreshes it).
    Forget { key: EndpointKey },
}

/// What the flusher should have in etcd for one endpoint.
#[derive(Debug, Clone)]
struct Desired {
    node: String,
    labels: BTreeMap<String, String>,
    healthy: bool,
    heartbeat: u64,
    /// Bumped by every Put: a generation not yet written is put at once.
    generation: u64,
}

/// What the flusher last wrote for one endpoint.
#[derive(Debug, Clone)]
struct Written {
    generation: u64,
    heartbeat: u64,
    mod_revision: i64,
    /// Another replica took the key: not refreshed until the next Put.
    lost: bool,
}

#[derive(Default)]
struct Local {
    desired: BTreeMap<EndpointKey, Desired>,
    removed: Vec<EndpointKey>,
    generation: u64,
}

/// The mirror of `endpoints/`.
#[derive(Default)]
struct Mirror {
    records: BTreeMap<EndpointKey, (EndpointRecord, i64)>,
    /// What the hub publishes: the records without heartbeats, shared.
    published: Arc<BTreeMap<EndpointKey, EndpointRecord>>,
}

/// The shared registrations of one replica ([`Shared::start`]).
pub struct Shared {
    keys: Keys,
    replica: String,
    timeout: Duration,
    local: Mutex<Local>,
    flush: Notify,
    /// Read `endpoints/` again (back from a cut-off).
    resync: Notify,
    mirror: Mutex<Mirror>,
    /// Leads the `withdraw` election (kept alive with the tasks).
    election: Election,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    crate::unix_millis(std::time::SystemTime::now())
}

impl Shared {
    /// Starts the flusher, the mirror and the withdrawer on `store`'s
    /// runtime. `on_change` wakes the hub when the shared set changed;
    /// `withdraw_after` is when the leader may start withdrawing (control's
    /// grace period: proxies re-register after a restart of every
    /// replica).
    pub fn start(
        store: &EtcdStore,
        timeout: Duration,
        withdraw_after: Instant,
        on_change: Box<dyn Fn() + Send + Sync>,
    ) -> Arc<Shared> {
        let replica = store.replica().to_string();
        let shared = Arc::new(Shared {
            keys: store.keys().clone(),
            replica: replica.clone(),
            timeout,
            local: Mutex::new(Local::default()),
            flush: Notify::new(),
            resync: Notify::new(),
            mirror: Mutex::new(Mirror::default()),
            election: Election::start(store, "withdraw", &replica),
        });
        let inner = store.inner();
        let tick = store.session().map_or(Duration::from_secs(1), |s| s.tick());
        // A new lease (the old one was lost with the keys under it):
        // everything still heartbeating here is put again.
        let s = shared.clone();
        store.on_new_lease(Box::new(move |_| {
            lock(&s.local).generation += 1;
            let mut local = lock(&s.local);
            let g = local.generation;
            for d in local.desired.values_mut() {
                d.generation = g;
            }
            drop(local);
            s.flush.notify_one();
        }));
        store.spawn(flusher(
            shared.clone(),
            inner.clone(),
            store.session().cloned(),
            tick,
        ));
        store.spawn(mirror(shared.clone(), inner.clone(), on_change));
        store.spawn(withdrawer(shared.clone(), inner, tick, withdraw_after));
        shared
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Takes what the registry did (cheap: no I/O; the flusher writes).
    pub fn apply(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut local = lock(&self.local);
        let mut urgent = false;
        for c in changes {
            match c {
                Change::Put {
                    key,
                    node,
                    labels,
                    healthy,
                    at_ms,
                } => {
                    local.generation += 1;
                    let generation = local.generation;
                    local.desired.insert(
                        key,
                        Desired {
                            node,
                            labels,
                            healthy,
                            heartbeat: at_ms,
                            generation,
                        },
                    );
                    urgent = true;
                }
                Change::Beat { key, at_ms } => {
                    if let Some(d) = local.desired.get_mut(&key) {
                        d.heartbeat = d.heartbeat.max(at_ms);
                    }
                }
                Change::Remove { key } => {
                    local.desired.remove(&key);
                    local.removed.push(key);
                    urgent = true;
                }
                Change::Forget { key } => {
                    local.desired.remove(&key);
                }
            }
        }
        drop(local);
        if urgent {
            self.flush.notify_one();
        }
    }

    /// Every replica's endpoints, as the mirror last read them.
    pub fn endpoints(&self) -> Arc<BTreeMap<EndpointKey, EndpointRecord>> {
        lock(&self.mirror).published.clone()
    }

    /// Withdraws `key` from what the hub publishes before etcd confirms
    /// (a Deregister: the proxy waits for its callers' snapshots).
    pub fn forget_now(&self, key: &EndpointKey) {
        let mut m = lock(&self.mirror);
        if m.published.contains_key(key) {
            Arc::make_mut(&mut m.published).remove(key);
        }
    }

    /// Reads every registration again and watches from there (a watch
    /// that hung while etcd was unreachable may have missed changes).
    pub fn resync(&self) {
        self.resync.notify_one();
    }

    /// Whether this replica leads the withdrawal of stale endpoints.
    pub fn leads_withdrawal(&self) -> bool {
        self.election.leading().is_some()
    }
}

/// One write the flusher makes.
enum Write {
    /// Put unconditionally (a Register): takes the key over.
    Put(EndpointKey, EndpointRecord, u64),
    /// Refresh the heartbeat if the key is still what this replica wrote.
    Refresh(EndpointKey, EndpointRecord, i64),
    /// Delete if the key is still what this replica wrote.
    Delete(EndpointKey, i64),
}

async fn flusher(shared: Arc<Shared>, inner: Inner, session: Option<Arc<Session>>, tick: Duration) {
    let mut written: BTreeMap<EndpointKey, Written> = BTreeMap::new();
    let refresh_every = (shared.timeout / 3).as_millis() as u64;
    loop {
        tokio::select! {
            _ = shared.flush.notified() => {}
            _ = tokio::time::sleep(tick) => {}
        }
        let lease = session.as_ref().map_or(0, |s| s.lease());
        let now = now_ms();
        let stale_after = shared.timeout.as_millis() as u64;
        // What to write, decided under the lock, written without it.
        let mut writes = Vec::new();
        {
            let mut local = lock(&shared.local);
            for key in std::mem::take(&mut local.removed) {
                if let Some(w) = written.remove(&key) {
                    if !w.lost && !local.desired.contains_key(&key) {
                        writes.push(Write::Delete(key, w.mod_revision));
                    }
                }
            }
            for (key, d) in &local.desired {
                // Never put what no proxy heartbeats any more.
                if now.saturating_sub(d.heartbeat) > stale_after {
                    continue;
                }
                let rec = EndpointRecord {
                    node: d.node.clone(),
                    labels: d.labels.clone(),
                    healthy: d.healthy,
                    replica: shared.replica.clone(),
                    heartbeat: d.heartbeat,
                };
                match written.get(key) {
                    Some(w) if w.generation == d.generation => {
                        if !w.lost
                            && d.heartbeat > w.heartbeat
                            && d.heartbeat >= w.heartbeat + refresh_every
                        {
                            writes.push(Write::Refresh(key.clone(), rec, w.mod_revision));
                        }
                    }
                    _ => writes.push(Write::Put(key.clone(), rec, d.generation)),
                }
            }
            written.retain(|k, _| local.desired.contains_key(k));
        }
        if writes.is_empty() || lease == 0 {
            continue;
        }
        if let Err(e) = write(&shared, &inner, lease, writes, &mut written).await {
            tracing::warn!(replica = %shared.replica, "writing this replica's registrations to etcd: {e} (tried again on the next heartbeat)");
        }
    }
}

/// Runs `writes`: puts and refreshes batched, a batch whose guard fails
/// one by one.
async fn write(
    shared: &Shared,
    inner: &Inner,
    lease: i64,
    writes: Vec<Write>,
    written: &mut BTreeMap<EndpointKey, Written>,
) -> Result<(), crate::store::StoreError> {
    let keys = &shared.keys;
    let opts = PutOptions::new().with_lease(lease);
    let mut batch: Vec<Write> = Vec::new();
    let mut batches: Vec<Vec<Write>> = Vec::new();
    for w in writes {
        batch.push(w);
        if batch.len() == BATCH {
            batches.push(std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    for batch in batches {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for w in &batch {
            match w {
                Write::Put(k, rec, _) => ops.push(TxnOp::put(
                    keys.endpoint(&k.0, k.1),
                    serde_json::to_vec(rec).unwrap_or_default(),
                    Some(opts.clone()),
                )),
                Write::Refresh(k, rec, rev) => {
                    let key = keys.endpoint(&k.0, k.1);
                    compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
                    ops.push(TxnOp::put(
                        key,
                        serde_json::to_vec(rec).unwrap_or_default(),
                        Some(opts.clone()),
                    ));
                }
                Write::Delete(k, rev) => {
                    let key = keys.endpoint(&k.0, k.1);
                    compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
                    ops.push(TxnOp::delete(key, None));
                }
            }
        }
        let resp = inner
            .txn(
                Txn::new().when(compares).and_then(ops),
                "writing registrations",
                Retry::Any,
            )
            .await?;
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            for w in batch {
                done(w, rev, written);
            }
            continue;
        }
        // One guard failed: each on its own.
        for w in batch {
            let (compares, op) = match &w {
                Write::Put(..) => (Vec::new(), None),
                Write::Refresh(k, rec, rev) => {
                    let key = keys.endpoint(&k.0, k.1);
                    (
                        vec![Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)],
                        Some(TxnOp::put(
                            key,
                            serde_json::to_vec(rec).unwrap_or_default(),
                            Some(opts.clone()),
                        )),
                    )
                }
                Write::Delete(k, rev) => {
                    let key = keys.endpoint(&k.0, k.1);
                    (
                        vec![Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)],
                        Some(TxnOp::delete(key, None)),
                    )
                }
            };
            let Some(op) = op else {
                // A put has no guard: it was not what failed. Next round.
                if let Write::Put(k, ..) = &w {
                    written.remove(k);
                }
                continue;
            };
            let key = match &w {
                Write::Put(k, ..) | Write::Refresh(k, ..) | Write::Delete(k, _) => {
                    keys.endpoint(&k.0, k.1)
                }
            };
            let resp = inner
                .txn(
                    Txn::new()
                        .when(compares)
                        .and_then([op])
                        .or_else([TxnOp::get(key, None)]),
                    "writing a registration",
                    Retry::Any,
                )
                .await?;
            if resp.succeeded() {
                let rev = resp.header().map_or(0, |h| h.revision());
                done(w, rev, written);
            } else if let Write::Refresh(k, ..) = w {
                let held = resp.op_responses().into_iter().any(
                    |op| matches!(op, etcd_client::TxnOpResponse::Get(g) if !g.kvs().is_empty()),
                );
                if held {
                    // Another replica took it (the proxy moved): not
                    // refreshed here again until a new Register.
                    tracing::info!(service = %k.0, address = %k.1, "registration taken by another replica: no longer refreshed here");
                    if let Some(w) = written.get_mut(&k) {
                        w.lost = true;
                    }
                } else {
                    // Gone (withdrawn, or its lease ended) while its proxy
                    // still heartbeats here: put again on the next round.
                    written.remove(&k);
                }
            }
        }
    }
    Ok(())
}

fn done(w: Write, rev: i64, written: &mut BTreeMap<EndpointKey, Written>) {
    match w {
        Write::Put(k, rec, generation) => {
            written.insert(
                k,
                Written {
                    generation,
                    heartbeat: rec.heartbeat,
                    mod_revision: rev,
                    lost: false,
                },
            );
        }
        Write::Refresh(k, rec, _) => {
            if let Some(w) = written.get_mut(&k) {
                w.heartbeat = rec.heartbeat;
                w.mod_revision = rev;
            }
        }
        Write::Delete(k, _) => {
            written.remove(&k);
        }
    }
}

impl Mirror {
    /// Applies a put or delete; whether the published set changed.
    fn set(&mut self, key: EndpointKey, rec: Option<(EndpointRecord, i64)>) -> bool {
        let changed = match &rec {
            Some((r, _)) => self.published.get(&key).is_none_or(|p| !same(p, r)),
            None => self.published.contains_key(&key),
        };
        match rec {
            Some((r, rev)) => {
                if changed {
                    Arc::make_mut(&mut self.published).insert(key.clone(), r.clone());
                }
                self.records.insert(key, (r, rev));
            }
            None => {
                if changed {
                    Arc::make_mut(&mut self.published).remove(&key);
                }
                self.records.remove(&key);
            }
        }
        changed
    }
}

/// Equal for what the hub publishes and shows: all but the heartbeat.
fn same(a: &EndpointRecord, b: &EndpointRecord) -> bool {
    a.node == b.node && a.labels == b.labels && a.healthy == b.healthy && a.replica == b.replica
}

/// The endpoint key and record of an etcd key-value, if it is one.
fn decode(keys: &Keys, key: &[u8], value: &[u8]) -> Option<(EndpointKey, Option<EndpointRecord>)> {
    match keys.parse(key)? {
        Key::Endpoint(service, address) => {
            let rec = if value.is_empty() {
                None
            } else {
                match serde_json::from_slice(value) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(key = %String::from_utf8_lossy(key), "an endpoint record that does not decode is ignored: {e}");
                        None
                    }
                }
            };
            Some(((service, address), rec))
        }
        _ => None,
    }
}

async fn mirror(shared: Arc<Shared>, inner: Inner, on_change: Box<dyn Fn() + Send + Sync>) {
    let prefix = shared.keys.endpoints();
    let mut failing = false;
    loop {
        // A range, then a watch from the revision after it.
        let range = inner
            .call("reading the registrations", Retry::Any, |c| {
                let prefix = prefix.clone();
                async move {
                    c.kv_client()
                        .max_decoding_message_size(usize::MAX)
                        .get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await;
        let resp = match range {
            Ok(r) => r,
            Err(e) => {
                if !failing {
                    tracing::warn!(replica = %shared.replica, "cannot read the shared registrations: {e}; retrying every second");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut fresh: BTreeMap<EndpointKey, (EndpointRecord, i64)> = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some((k, Some(r))) = decode(&shared.keys, kv.key(), kv.value()) {
                fresh.insert(k, (r, kv.mod_revision()));
            }
        }
        let changed = {
            let mut m = lock(&shared.mirror);
            let mut changed = false;
            let gone: Vec<EndpointKey> = m
                .records
                .keys()
                .filter(|k| !fresh.contains_key(*k))
                .cloned()
                .collect();
            for k in gone {
                changed |= m.set(k, None);
            }
            for (k, r) in fresh {
                changed |= m.set(k, Some(r));
            }
            changed
        };
        if changed {
            on_change();
        }
        if failing {
            tracing::info!(replica = %shared.replica, "reading the shared registrations again");
            failing = false;
        }
        let mut client = inner.client();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let (_watcher, mut stream) = match client.watch(prefix.clone(), Some(opts)).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(replica = %shared.replica, "cannot watch the shared registrations: {e}; reading them again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = shared.resync.notified() => break,
            };
            match message {
                Ok(Some(resp)) if resp.canceled() => break,
                Ok(Some(resp)) => {
                    let mut changed = false;
                    let mut m = lock(&shared.mirror);
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let Some((k, rec)) = decode(&shared.keys, kv.key(), kv.value()) else {
                            continue;
                        };
                        changed |= match ev.event_type() {
                            EventType::Put => match rec {
                                Some(r) => m.set(k, Some((r, kv.mod_revision()))),
                                None => m.set(k, None),
                            },
                            EventType::Delete => m.set(k, None),
                        };
                    }
                    drop(m);
                    if changed {
                        on_change();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(replica = %shared.replica, "the watch on the shared registrations ended: {e}; reading them again");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn withdrawer(shared: Arc<Shared>, inner: Inner, tick: Duration, after: Instant) {
    let timeout = shared.timeout.as_millis() as u64;
    loop {
        tokio::time::sleep(tick).await;
        if Instant::now() < after {
            continue;
        }
        let Some(fence) = shared.election.leading() else {
            continue;
        };
        let now = now_ms();
        let stale: Vec<(EndpointKey, EndpointRecord, i64)> = lock(&shared.mirror)
            .records
            .iter()
            .filter(|(_, (r, _))| now.saturating_sub(r.heartbeat) > timeout)
            .map(|(k, (r, rev))| (k.clone(), r.clone(), *rev))
            .collect();
        for (k, rec, rev) in stale {
            let key = shared.keys.endpoint(&k.0, k.1);
            let out = fenced(
                &inner,
                &fence,
                "withdrawing an endpoint",
                vec![Compare::mod_revision(key.clone(), CompareOp::Equal, rev)],
                vec![TxnOp::delete(key, None)],
            )
            .await;
            match out {
                Ok(Fenced::Done) => {
                    tracing::info!(service = %k.0, address = %k.1, node = %rec.node, replica = %rec.replica, "endpoint expired: no heartbeat for {}s (withdrawn by this replica, the leader of election withdraw)", shared.timeout.as_secs_f64())
                }
                Ok(Fenced::Raced) => {}
                Ok(Fenced::NotLeader) => break,
                Err(e) => {
                    tracing::warn!("withdrawing a stale endpoint: {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keys_parse_back() {
        let k = Keys::new("/coremesh/").unwrap();
        let a: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(
            k.parse(k.endpoint("web", a).as_bytes()),
            Some(Key::Endpoint("web".into(), a))
        );
        assert_eq!(
            k.parse(k.endpoint("web", b).as_bytes()),
            Some(Key::Endpoint("web".into(), b))
        );
        assert_eq!(
            k.parse(b"/coremesh/endpoints/web/nonsense"),
            Some(Key::Other)
        );
    }

    fn rec(heartbeat: u64, replica: &str) -> EndpointRecord {
        EndpointRecord {
            node: "n1".into(),
            labels: BTreeMap::new(),
            healthy: true,
            replica: replica.into(),
            heartbeat,
        }
    }

    #[test]
    fn a_heartbeat_alone_does_not_change_the_published_set() {
        let mut m = Mirror::default();
        let k: EndpointKey = ("web".into(), "10.0.0.1:80".parse().unwrap());
        assert!(m.set(k.clone(), Some((rec(1, "a"), 5))));
        assert!(!m.set(k.clone(), Some((rec(2, "a"), 6))));
        assert_eq!(m.records[&k].1, 6);
        // A move to another replica is shown.
        assert!(m.set(k.clone(), Some((rec(3, "b"), 7))));
        assert!(m.set(k.clone(), None));
        assert!(!m.set(k, None));
    }
}
