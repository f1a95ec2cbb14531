//! Applying a snapshot from control: compile it once, hand every shard the
//! same immutable table (prepare on all, then commit on all, so every core
//! switches together), persist it as the last good snapshot, and show its
//! version on `/config`. Its revocation list goes to every shard before the
//! table (so it is in force before the ACK): see tls/revoked.rs.
//!
//! A snapshot is refused (NACK, the last good table stays in force) when it
//! does not compile, when not every shard prepares it in time, when it
//! defines a service that proxy.toml defines statically
//! ([`StaticServices`]), or when it is not newer than what runs
//! ([`check_lineage`]): a lower config version of the same control store,
//! or any version of another store (unless `[control] allow_store_change`).
//! The last check is what keeps a control that lost its store from handing
//! out an empty policy as new.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;

use coremesh_api::snapshot::Snapshot;

use super::state::StateDir;
use crate::agent::admin::AdminState;
use crate::msg::{ShardHandle, ShardMsg};
use crate::routing::{RoutingTable, StaticServices};
use coremesh_policy::error::{CompileError, StaticConflict};

/// How long every shard together may take to prepare a table. A shard that
/// does not answer in time makes the apply fail (NACK) rather than leave
/// cores on different tables.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(2);

/// What is applied, for `/config` and the control session's `Hello`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: u64,
    pub config_version: u64,
    /// The control store the config version counts in (empty from a
    /// control older than store identities).
    pub store_id: String,
    /// The digest of that config version (empty from an older control).
    pub config_digest: String,
}

impl Applied {
    fn of(snap: &Snapshot) -> Applied {
        Applied {
            version: snap.version,
            config_version: snap.config_version,
            store_id: snap.store_id.clone(),
            config_digest: snap.config_digest.clone(),
        }
    }
}

/// Whether `snap` may replace what runs: the NACK reason if not.
///
/// - Same store: its config version may not go down (a rollback is a new,
///   higher version), and an equal version must be the same config (equal
///   digests, where both have one): only endpoints changed. A store
///   reinitialized with `--reinitialize-store` numbers from 1 again, so its
///   version N may be another config than the N that runs.
/// - Another store: refused unless `allow_store_change`.
/// - A snapshot from a store that has an identity, while what runs came from
///   a control without identities (empty id): the same store, which got its
///   identity on upgrade; versions are compared.
pub fn check_lineage(
    running: Option<&Applied>,
    snap: &Snapshot,
    allow_store_change: bool,
) -> Result<(), Lineage> {
    let Some(running) = running else {
        return Ok(());
    };
    let same_store = running.store_id == snap.store_id || running.store_id.is_empty();
    if !same_store {
        if allow_store_change {
            tracing::warn!(
                "accepting config version {} of control store {} in place of version {} of store {} ([control] allow_store_change)",
                snap.config_version,
                shown(&snap.store_id),
                running.config_version,
                shown(&running.store_id)
            );
            return Ok(());
        }
        return Err(Lineage::OtherStore {
            store: snap.store_id.clone(),
            running_version: running.config_version,
            running_store: running.store_id.clone(),
        });
    }
    if snap.config_version < running.config_version {
        return Err(Lineage::Older {
            version: snap.config_version,
            running_version: running.config_version,
            store: running.store_id.clone(),
        });
    }
    if snap.config_version == running.config_version
        && !snap.config_digest.is_empty()
        && !running.config_digest.is_empty()
        && snap.config_digest != running.config_digest
    {
        return Err(Lineage::OtherConfig {
            version: snap.config_version,
            store: running.store_id.clone(),
            digest: snap.config_digest.clone(),
            running_digest: running.config_digest.clone(),
        });
    }
    Ok(())
}

/// A snapshot that would take the proxy back, or to another store's policy
/// ([`check_lineage`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lineage {
    #[error("snapshot from control store {}, but this proxy runs config version {running_version} of store {}: refusing another store's policy (control's store was replaced or restored from elsewhere; set [control] allow_store_change = true on this proxy to accept it)", shown(store), shown(running_store))]
    OtherStore {
        store: String,
        running_version: u64,
        running_store: String,
    },
    #[error("config version {version} is older than the running config version {running_version} of store {}: refusing to go back (control's store may have been lost or reinitialized; a rollback is a new, higher version: meshctl rollback)", shown(store))]
    Older {
        version: u64,
        running_version: u64,
        store: String,
    },
    #[error("config version {version} of store {} is not the config version {version} this proxy runs (digest {} against {}): control's store was reinitialized or replaced; refusing it until a higher version", shown(store), short(digest), short(running_digest))]
    OtherConfig {
        version: u64,
        store: String,
        digest: String,
        running_digest: String,
    },
}

/// Why a snapshot is refused: the NACK reason control shows in `meshctl
/// status`, and `/config` shows.
#[derive(Debug, thiserror::Error)]
pub enum Nack {
    #[error(transparent)]
    Lineage(#[from] Lineage),
    #[error(transparent)]
    Static(#[from] StaticConflict),
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// An AccessPolicy names callers by service, in the trust domain of
    /// this proxy's certificate, which it does not have yet.
    #[error("no certificate yet to learn the trust domain from")]
    NoTrustDomain,
    #[error("shard {0} is not running")]
    ShardDown(usize),
    #[error("shard {0} stopped while preparing")]
    ShardStopped(usize),
    #[error("not every shard prepared version {version} within {limit:?}")]
    PrepareTimeout { version: u64, limit: Duration },
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn shown(id: &str) -> &str {
    if id.is_empty() {
        "(none)"
    } else {
        id
    }
}

/// Applies snapshots on the agent thread.
pub struct Applier {
    shards: Vec<ShardHandle>,
    state: Option<StateDir>,
    applied: RefCell<Option<Applied>>,
    /// The lineage a new snapshot is checked against ([`check_lineage`]):
    /// the snapshot in force, or, after a restart whose persisted snapshot
    /// could not be applied, that snapshot's lineage all the same (it was
    /// accepted once, so a lower version must still be refused).
    floor: RefCell<Option<Applied>>,
    /// `[control] allow_store_change`.
    allow_store_change: Cell<bool>,
    connected: Cell<bool>,
    last_nack: RefCell<Option<(u64, String)>>,
    /// proxy.toml's `[[services]]`: a snapshot may not define them too.
    statics: RefCell<StaticServices>,
    /// The table in force, to check reloads against.
    table: RefCell<Option<Arc<RoutingTable>>>,
    /// `/config` shows the control status; `None` in tests.
    admin: Option<Rc<AdminState>>,
    /// The certificate and key from control, and the CA from the join.
    identity: RefCell<Option<super::state::Identity>>,
    /// Roots from the latest snapshot's trust bundle (empty: the join's CA).
    bundle: RefCell<Vec<String>>,
    /// The revocation list the shards have (from the latest admitted snapshot).
    revoked: RefCell<Vec<coremesh_api::snapshot::RevokedCert>>,
    /// Endpoint state and limit splits (agent/traffic.rs), with the
    /// configuration in force; told of every table applied.
    traffic: RefCell<Option<(Rc<super::traffic::Traffic>, Arc<crate::config::Config>)>>,
}

impl Applier {
    /// The shards it applies to (the tapper reaches them too).
    pub fn shards(&self) -> &[ShardHandle] {
        &self.shards
    }

    pub fn new(
        shards: Vec<ShardHandle>,
        state: Option<StateDir>,
        admin: Option<Rc<AdminState>>,
    ) -> Applier {
        Applier {
            shards,
            state,
            applied: RefCell::new(None),
            floor: RefCell::new(None),
            allow_store_change: Cell::new(false),
            connected: Cell::new(false),
            last_nack: RefCell::new(None),
            statics: RefCell::new(StaticServices::default()),
            table: RefCell::new(None),
            admin,
            identity: RefCell::new(None),
            bundle: RefCell::new(Vec::new()),
            revoked: RefCell::new(Vec::new()),
            traffic: RefCell::new(None),
        }
    }

    /// Hands the applier the proxy's traffic state and configuration.
    pub fn set_traffic(
        &self,
        traffic: Rc<super::traffic::Traffic>,
        cfg: Arc<crate::config::Config>,
    ) {
        *self.traffic.borrow_mut() = Some((traffic, cfg));
        self.reconfigure_traffic();
    }

    /// A reloaded configuration (its static services and own service).
    pub fn set_config(&self, cfg: Arc<crate::config::Config>) {
        if let Some((_, c)) = self.traffic.borrow_mut().as_mut() {
            *c = cfg;
        }
        self.reconfigure_traffic();
    }

    fn reconfigure_traffic(&self) {
        if let Some((t, cfg)) = self.traffic.borrow().as_ref() {
            let table = self.table.borrow();
            t.configure(&cfg.service_list(table.as_deref()));
        }
    }

    /// The routing table and the access policy of `snap`. The policy's
    /// bare service names mean our own trust domain, which the certificate
    /// names (the snapshot does not).
    fn compile(&self, snap: &Snapshot) -> Result<RoutingTable, Nack> {
        let mut table = RoutingTable::compile(snap)?;
        let td = self
            .identity
            .borrow()
            .as_ref()
            .and_then(|id| {
                let der = rustls::pki_types::CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                    .next()?
                    .ok()?;
                crate::tls::identity::leaf_identity(&der).ok()
            })
            .and_then(|(spiffe, _)| {
                crate::tls::identity::trust_domain_of(&spiffe).map(str::to_string)
            });
        match td {
            Some(td) => table.authz = crate::authz::Authz::from_snapshot(snap, &td)?,
            // No certificate yet: no mutual TLS either, so no caller can
            // reach the inbound side; deny by policy until one arrives.
            None if snap.access_policy.is_some() => return Err(Nack::NoTrustDomain),
            None => {}
        }
        Ok(table)
    }

    /// A snapshot's trust bundle, once the snapshot is in force: peers are
    /// verified against it from now on, and the control session verifies
    /// control with it after a restart. A bundle that does not make a usable
    /// configuration with our certificate is refused (logged) and nothing
    /// changes.
    fn apply_bundle(&self, bundle: &[String]) {
        if bundle.is_empty() || *self.bundle.borrow() == bundle {
            return;
        }
        let Some(id) = self.identity.borrow().clone() else {
            *self.bundle.borrow_mut() = bundle.to_vec();
            return;
        };
        let roots: Vec<&str> = bundle.iter().map(String::as_str).collect();
        if let Err(e) =
            crate::tls::Identity::from_pem(&id.cert_pem, &id.key_pem, &roots, "trust bundle")
        {
            tracing::error!("refusing the trust bundle from control: {e}");
            return;
        }
        *self.bundle.borrow_mut() = bundle.to_vec();
        if let (Some(state), Some(id)) = (&self.state, self.identity.borrow_mut().as_mut()) {
            id.ca_pem = bundle.concat();
            if let Err(e) =
                super::state::write_atomic(&state.path(super::state::CA_FILE), id.ca_pem.as_bytes())
            {
                tracing::error!("cannot persist the trust bundle: {e}");
            }
        }
        self.push_identity();
    }

    /// A certificate from control (loaded at start, joined, or renewed):
    /// every shard uses it for new handshakes from now on.
    pub fn set_identity(&self, id: &super::state::Identity) {
        *self.identity.borrow_mut() = Some(id.clone());
        self.push_identity();
    }

    /// Checks the identity with the trusted roots in force and sends it to
    /// the shards; a bad combination is logged and the previous one stays.
    fn push_identity(&self) {
        let Some(id) = self.identity.borrow().clone() else {
            return;
        };
        let bundle = self.bundle.borrow();
        let roots: Vec<&str> = if bundle.is_empty() {
            vec![id.ca_pem.as_str()]
        } else {
            bundle.iter().map(String::as_str).collect()
        };
        match crate::tls::Identity::from_pem(
            &id.cert_pem,
            &id.key_pem,
            &roots,
            "control certificate",
        ) {
            Ok(t) => super::identity::broadcast(&self.shards, self.admin.as_ref(), t),
            Err(e) => tracing::error!("cannot use the certificate from control: {e}"),
        }
    }

    /// The static `[[services]]` of the configuration in force (at start
    /// and after each accepted reload).
    pub fn set_static_services(&self, statics: StaticServices) {
        *self.statics.borrow_mut() = statics;
    }

    /// Refuses a reload whose `[[services]]` define a service of the table
    /// in force.
    pub fn check_reload(&self, statics: &StaticServices) -> Result<(), StaticConflict> {
        match self.table.borrow().as_ref() {
            Some(table) => statics.check_table(table),
            None => Ok(()),
        }
    }

    /// The snapshot in force, if any.
    pub fn applied(&self) -> Option<Applied> {
        self.applied.borrow().clone()
    }

    /// Holds `snap`'s lineage as the floor for the next snapshot without
    /// applying it: the persisted snapshot that could not be applied after a
    /// restart (a changed proxy.toml, say) was still accepted before, and
    /// an older or another store's policy must not slip in behind it.
    pub fn hold_lineage(&self, snap: &Snapshot) {
        let mut floor = self.floor.borrow_mut();
        if floor.is_none() {
            *floor = Some(Applied::of(snap));
        }
    }

    /// `[control] allow_store_change`.
    pub fn set_allow_store_change(&self, allow: bool) {
        self.allow_store_change.set(allow);
    }

    /// Compiles and applies `snap` on every shard; with `persist`, also
    /// stores it as the last good snapshot. The error is the NACK reason.
    pub async fn apply(&self, snap: &Snapshot, persist: bool) -> Result<(), Nack> {
        let compiled = self.admit(snap);
        let prepared = match compiled {
            Ok(t) => {
                self.push_revoked(&snap.revoked);
                let table = Arc::new(t);
                self.prepare_commit(table.clone(), snap.version)
                    .await
                    .map(|()| table)
            }
            Err(nack) => Err(nack),
        };
        let table = match prepared {
            Ok(table) => table,
            Err(nack) => {
                *self.last_nack.borrow_mut() = Some((snap.version, nack.to_string()));
                self.publish();
                return Err(nack);
            }
        };
        if persist {
            if let Some(state) = &self.state {
                // The routes are in force either way; only a restart while
                // control is down would miss them.
                if let Err(e) = state.save_snapshot(snap) {
                    tracing::error!("cannot persist snapshot {}: {e}", snap.version);
                }
            }
        }
        let applied = Applied::of(snap);
        *self.floor.borrow_mut() = Some(applied.clone());
        *self.applied.borrow_mut() = Some(applied);
        *self.table.borrow_mut() = Some(table);
        self.apply_bundle(&snap.trust_bundle);
        self.reconfigure_traffic();
        *self.last_nack.borrow_mut() = None;
        self.publish();
        Ok(())
    }

    /// Sends a changed revocation list to every shard. Each shard's inbox
    /// is in order, so the list is in force on a shard before it prepares
    /// the table that comes next, and so before the snapshot is ACKed.
    fn push_revoked(&self, list: &[coremesh_api::snapshot::RevokedCert]) {
        if *self.revoked.borrow() == list {
            return;
        }
        let revocations = Arc::new(crate::tls::revoked::Revocations::from_list(list));
        tracing::info!(
            revoked = revocations.len(),
            nodes = ?list.iter().map(|c| c.node.as_str()).collect::<std::collections::BTreeSet<_>>(),
            "revocation list from control in force"
        );
        for h in &self.shards {
            let _ = h.tx.try_send(ShardMsg::Revoked(revocations.clone()));
        }
        *self.revoked.borrow_mut() = list.to_vec();
    }

    /// Whether `snap` may replace what runs, compiled: its lineage, no
    /// clash with the static services, a routing table and access policy.
    fn admit(&self, snap: &Snapshot) -> Result<RoutingTable, Nack> {
        let floor = self.floor.borrow();
        check_lineage(floor.as_ref(), snap, self.allow_store_change.get())?;
        self.statics.borrow().check_snapshot(snap)?;
        self.compile(snap)
    }

    /// Phase one on every shard, bounded by [`PREPARE_TIMEOUT`]; phase two
    /// only once all have answered.
    async fn prepare_commit(&self, table: Arc<RoutingTable>, version: u64) -> Result<(), Nack> {
        let mut replies = Vec::with_capacity(self.shards.len());
        for h in &self.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            h.tx.try_send(ShardMsg::Prepare(table.clone(), tx))
                .map_err(|_| Nack::ShardDown(h.index))?;
            replies.push((h.index, rx));
        }
        let all = async {
            for (index, rx) in replies {
                rx.await.map_err(|_| Nack::ShardStopped(index))?;
            }
            Ok::<(), Nack>(())
        };
        match tokio::time::timeout(PREPARE_TIMEOUT, all).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Nack::PrepareTimeout {
                    version,
                    limit: PREPARE_TIMEOUT,
                })
            }
        }
        for h in &self.shards {
            // A shard gone between prepare and commit is exiting anyway.
            let _ = h.tx.try_send(ShardMsg::Commit(version));
        }
        Ok(())
    }

    pub fn set_connected(&self, connected: bool) {
        if self.connected.replace(connected) != connected {
            self.publish();
        }
    }

    /// The control status object of `/config`.
    pub fn status_json(&self) -> serde_json::Value {
        let a = self.applied.borrow();
        let a = a.as_ref();
        serde_json::json!({
            "version": a.map(|a| a.version),
            "config_version": a.map(|a| a.config_version),
            "store_id": a.map(|a| a.store_id.as_str()),
            "connected": self.connected.get(),
            "last_nack": self.last_nack.borrow().as_ref().map(|(v, reason)| serde_json::json!({
                "version": v,
                "reason": reason,
            })),
        })
    }

    /// Writes the status into `/config` (`control` object).
    pub fn publish(&self) {
        if let Some(admin) = &self.admin {
            merge_status(&mut admin.config_json.borrow_mut(), self.status_json());
        }
    }
}

/// Adds the status keys to the `control` object of a `/config` document
/// (which holds the `[control]` settings).
pub fn merge_status(config: &mut serde_json::Value, status: serde_json::Value) {
    let (Some(control), serde_json::Value::Object(status)) = (
        config.get_mut("control").and_then(|c| c.as_object_mut()),
        status,
    ) else {
        return;
    };
    control.extend(status);
}

#[cfg(test)]
mod tests;
