//! Rotating the root of a CA kept in etcd (`--ca-in-store`), through the
//! API (`meshctl ca rotate begin|switch|finish`, `meshctl ca status`).
//!
//! The steps, each one etcd transaction on the `ca/` slots
//! (docs/etcd.md, "Rotating the root in etcd"):
//!
//! | step | who | compare | then |
//! | --- | --- | --- | --- |
//! | `begin` | any replica, for the operator | `rotation`, `next` and `previous` absent | put `rotation` (the request) |
//! | issue | the leader of election `ca-rotation`, once | the fence; `next` absent; `rotation` as read | put `next` (a new root, sealed), delete `rotation` |
//! | `switch` | any replica | `current` and `next` as read, `previous` absent | put `current` = next, `previous` = old current (both sealed again for their key), delete `next` |
//! | `finish` | any replica | `previous` as read, `next` absent | delete `previous` |
//!
//! A sealed key is bound to its etcd key name (the AAD), so moving a CA
//! from one slot to another opens and seals it again: only a replica with
//! the operator's key can switch.
//!
//! Every replica trusts the roots of `current`, `next` and `previous`
//! (its trust bundle, pushed to proxies) and issues from `current`. It
//! reads the slots at start and then every second: when they change, it
//! rebuilds its CA and hands it to `on_change` (main swaps the hub's CA,
//! which pushes the new trust bundle to every proxy, and the QUIC server
//! configuration).

// A std Mutex guards what this replica loaded, touched once a second and
// by status requests: off the data plane (clippy.toml's rule is for it).
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, TxnOp};

use crate::ca::Ca;
use crate::store::ca_record::{CaRecord, SealKey};
use crate::store::election::{Election, Fenced};
use crate::store::etcd::{unchanged, CaSlots, Slot, CA_CURRENT, CA_NEXT, CA_PREVIOUS, CA_REQUEST};
use crate::store::{EtcdStore, Store};
use crate::Error;

/// The election whose leader issues the next root.
pub const ELECTION: &str = "ca-rotation";

/// Where a rotation is, as `GET /v1/ca/rotation` answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RotationStatus {
    /// `none`, `requested` (begun, the next root not issued yet),
    /// `next-issued` (both roots trusted; `switch` next), `switched` (the
    /// new root issues, the old one is still trusted; `finish` next).
    pub phase: String,
    /// Fingerprint of the root certificates issue from, in etcd.
    pub current: Option<String>,
    /// Fingerprint of the next root, once issued.
    pub next: Option<String>,
    /// Fingerprint of the old root, after `switch`.
    pub previous: Option<String>,
    /// Fingerprint of the root this replica issues from (as it started).
    pub issuing: String,
    /// Fingerprints of the roots this replica trusts (as it started).
    pub trusted: Vec<String>,
    /// Whether this replica leads election `ca-rotation`.
    pub leading: bool,
}

/// A rotation step the operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Begin,
    Switch,
    Finish,
}

impl Step {
    pub fn parse(s: &str) -> Option<Step> {
        match s {
            "begin" => Some(Step::Begin),
            "switch" => Some(Step::Switch),
            "finish" => Some(Step::Finish),
            _ => None,
        }
    }
}

/// What a replica hands its new CA to when the slots change: returns the
/// fingerprints of the roots it then trusts.
pub type OnChange = Box<dyn Fn(Ca) -> Result<Vec<String>, Error> + Send + Sync>;

/// The CA a replica runs with, and the slots it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    /// Fingerprints in `current`, `next`, `previous` when it was built.
    seen: [Option<String>; 3],
    issuing: String,
    trusted: Vec<String>,
}

/// The rotation of one replica: its store, the operator's key, and its
/// place in the election.
pub struct CaRotation {
    store: Arc<EtcdStore>,
    key: SealKey,
    trust_domain: String,
    election: Election,
    loaded: Mutex<Loaded>,
    on_change: OnChange,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CaRotation {
    /// Campaigns in election [`ELECTION`] and, every `every`: while
    /// leading, issues the next root when one is requested; on every
    /// replica, rebuilds the CA when the slots changed since `ca` (the one
    /// it started with) and hands it to `on_change`.
    pub fn start(
        store: Arc<EtcdStore>,
        key: SealKey,
        ca: &Ca,
        every: Duration,
        on_change: OnChange,
    ) -> Result<Arc<CaRotation>, Error> {
        let replica = store.replica().to_string();
        let election = Election::start(&store, ELECTION, &replica);
        let trusted = ca
            .roots()
            .iter()
            .map(|der| coremesh_api::token::fingerprint_hex(der.as_ref()))
            .collect();
        let mut rotation = CaRotation {
            store,
            key,
            trust_domain: ca.trust_domain().to_string(),
            election,
            loaded: Mutex::new(Loaded {
                seen: [None, None, None],
                issuing: ca.fingerprint().to_string(),
                trusted,
            }),
            on_change,
        };
        let slots = rotation.store.ca_slots().map_err(|e| rotation.fail(e))?;
        let seen = rotation.seen(&slots)?;
        rotation
            .loaded
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .seen = seen;
        let rotation = Arc::new(rotation);
        let r = rotation.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Warn once per outage (etcd without a majority), not each tick.
            let mut failing = false;
            loop {
                tick.tick().await;
                let r = r.clone();
                let done = tokio::task::spawn_blocking(move || {
                    r.issue_next_if_asked()?;
                    r.reload_if_changed()
                })
                .await
                .unwrap_or_else(|e| Err(Error::internal(format!("task failed: {e}"))));
                match done {
                    Err(e) if !failing => {
                        tracing::warn!(
                            "CA rotation: {e}; trying again every {every:?} (the CA in use stays)"
                        );
                        failing = true;
                    }
                    Err(_) => {}
                    Ok(()) if failing => {
                        tracing::info!("CA rotation: reading the CA in etcd again");
                        failing = false;
                    }
                    Ok(()) => {}
                }
            }
        });
        Ok(rotation)
    }

    /// The fingerprints in `current`, `next`, `previous`.
    fn seen(&self, slots: &CaSlots) -> Result<[Option<String>; 3], Error> {
        let fp = |slot: &str, v: &Option<Slot>| -> Result<Option<String>, Error> {
            Ok(self.record(slot, v)?.map(|r| r.fingerprint))
        };
        Ok([
            fp(CA_CURRENT, &slots.current)?,
            fp(CA_NEXT, &slots.next)?,
            fp(CA_PREVIOUS, &slots.previous)?,
        ])
    }

    /// Every replica's work: when the slots changed since the CA it runs
    /// with was built, builds the CA of `current` trusting `next` and
    /// `previous` too, and hands it to `on_change`.
    fn reload_if_changed(&self) -> Result<(), Error> {
        let slots = self.store.ca_slots().map_err(|e| self.fail(e))?;
        let seen = self.seen(&slots)?;
        if lock(&self.loaded).seen == seen {
            return Ok(());
        }
        let Some(current) = self.record(CA_CURRENT, &slots.current)? else {
            // Removed by hand: keep issuing from what this replica has.
            return Ok(());
        };
        let key_name = self.key_name(CA_CURRENT);
        let key_pem = current
            .open(&self.key, &key_name, self.store.id())
            .map_err(|e| Error::internal(e.to_string()))?;
        let now = SystemTime::now();
        let mut ca = Ca::from_pem(
            &key_name,
            &current.cert_pem,
            &format!("{key_name} (sealed key)"),
            &key_pem,
            &self.trust_domain,
            now,
        )?;
        crate::store::startup::add_rotation_roots(self.store.keys(), &slots, &mut ca, now)?;
        let issuing = ca.fingerprint().to_string();
        let trusted = (self.on_change)(ca)?;
        // Move the fingerprint record along, as a restart would: a replica
        // started later is checked against the root that issues now.
        match self.store.agree_ca(&trusted) {
            Ok(Ok(())) => {}
            Ok(Err(mismatch)) => tracing::warn!("CA: {mismatch}"),
            Err(e) => tracing::warn!("CA: recording the root's fingerprint: {e}"),
        }
        tracing::info!(issuing = %issuing, trusted = trusted.len(), "CA: reloaded from etcd (a root rotation step)");
        *lock(&self.loaded) = Loaded {
            seen,
            issuing,
            trusted,
        };
        Ok(())
    }

    fn fail(&self, e: crate::store::StoreError) -> Error {
        Error::internal(format!(
            "the CA in etcd under {}ca/: {e}",
            self.store.keys().prefix()
        ))
        .caused_by(e)
    }

    fn key_name(&self, slot: &str) -> String {
        self.store.keys().ca(slot)
    }

    /// The record in `slot`, if any.
    fn record(&self, slot: &str, value: &Option<Slot>) -> Result<Option<CaRecord>, Error> {
        match value {
            Some(s) => CaRecord::from_json(&self.key_name(slot), &s.value)
                .map(Some)
                .map_err(|e| Error::internal(e.to_string())),
            None => Ok(None),
        }
    }

    /// The leader's work: a requested rotation without a next root gets
    /// one, once (fenced, and only while `next` is absent).
    fn issue_next_if_asked(&self) -> Result<(), Error> {
        let Some(fence) = self.election.leading() else {
            return Ok(());
        };
        let slots = self.store.ca_slots().map_err(|e| self.fail(e))?;
        if slots.request.is_none() || slots.next.is_some() {
            return Ok(());
        }
        let (cert_pem, key_pem) = crate::ca::create_ca(&self.trust_domain, SystemTime::now())?;
        let ca = Ca::load(&cert_pem, &key_pem, &self.trust_domain)?;
        let next = self.key_name(CA_NEXT);
        let record = CaRecord::seal(
            &self.key,
            &next,
            self.store.id(),
            &cert_pem,
            &key_pem,
            ca.fingerprint(),
        )
        .map_err(|e| Error::internal(e.to_string()))?;
        let request = self.key_name(CA_REQUEST);
        let done = self
            .store
            .txn_fenced(
                &fence,
                "issuing the next root",
                vec![
                    Compare::create_revision(next.as_str(), CompareOp::Equal, 0),
                    unchanged(&request, &slots.request),
                ],
                vec![
                    TxnOp::put(next.as_str(), record.to_json(), None),
                    TxnOp::delete(request.as_str(), None),
                ],
            )
            .map_err(|e| self.fail(e))?;
        match done {
            Fenced::Done => tracing::info!(key = %next, fingerprint = ca.fingerprint(), "CA rotation: issued the next root (leader of {ELECTION})"),
            Fenced::NotLeader => tracing::info!("CA rotation: no longer the leader of {ELECTION}; the next root is left to the new leader"),
            Fenced::Raced => tracing::info!("CA rotation: the request changed meanwhile; not issued"),
        }
        Ok(())
    }

    /// Where the rotation is.
    pub fn status(&self) -> Result<RotationStatus, Error> {
        let slots = self.store.ca_slots().map_err(|e| self.fail(e))?;
        self.status_of(&slots)
    }

    fn status_of(&self, slots: &CaSlots) -> Result<RotationStatus, Error> {
        let [current, next, previous] = self.seen(slots)?;
        // One guard (two in one expression would deadlock).
        let loaded = lock(&self.loaded).clone();
        let phase = if next.is_some() {
            "next-issued"
        } else if slots.request.is_some() {
            "requested"
        } else if previous.is_some() {
            "switched"
        } else {
            "none"
        };
        Ok(RotationStatus {
            phase: phase.to_string(),
            current,
            next,
            previous,
            issuing: loaded.issuing,
            trusted: loaded.trusted,
            leading: self.election.leading().is_some(),
        })
    }

    /// Runs `step` (one transaction) and returns where the rotation is
    /// after it. A step that does not fit the phase is refused with what to
    /// do instead.
    pub fn step(&self, step: Step) -> Result<RotationStatus, Error> {
        let slots = self.store.ca_slots().map_err(|e| self.fail(e))?;
        let phase = self.status_of(&slots)?.phase;
        let refuse = |what: &str| {
            Err(Error::rejected(format!(
                "cannot {what}: the rotation is at phase {phase:?} ({})",
                match phase.as_str() {
                    "none" => "begin one with `meshctl ca rotate begin`",
                    "requested" => "the leader of election ca-rotation issues the next root within seconds; see `meshctl ca status`",
                    "next-issued" => "once every proxy has ACKed the bundle with both roots (`meshctl status`), `meshctl ca rotate switch`",
                    _ => "once every proxy has renewed its certificate, `meshctl ca rotate finish`",
                }
            )))
        };
        let (current, next, previous, request) = (
            self.key_name(CA_CURRENT),
            self.key_name(CA_NEXT),
            self.key_name(CA_PREVIOUS),
            self.key_name(CA_REQUEST),
        );
        let done = match step {
            Step::Begin => {
                if phase != "none" {
                    return refuse("begin a rotation");
                }
                let at = crate::unix_secs(SystemTime::now());
                self.store.ca_txn(
                    "requesting a next root",
                    vec![
                        unchanged(&request, &None),
                        unchanged(&next, &None),
                        unchanged(&previous, &None),
                    ],
                    vec![TxnOp::put(
                        request.as_str(),
                        format!("{{\"requested_at\":{at}}}"),
                        None,
                    )],
                )
            }
            Step::Switch => {
                if phase != "next-issued" {
                    return refuse("switch to the next root");
                }
                let (Some(old), Some(new)) = (
                    self.record(CA_CURRENT, &slots.current)?,
                    self.record(CA_NEXT, &slots.next)?,
                ) else {
                    return refuse("switch to the next root");
                };
                let id = self.store.id();
                let seal_err =
                    |e: crate::store::ca_record::SealError| Error::internal(e.to_string());
                let old_key = old.open(&self.key, &current, id).map_err(seal_err)?;
                let new_key = new.open(&self.key, &next, id).map_err(seal_err)?;
                let as_current = CaRecord::seal(
                    &self.key,
                    &current,
                    id,
                    &new.cert_pem,
                    &new_key,
                    &new.fingerprint,
                )
                .map_err(seal_err)?;
                let as_previous = CaRecord::seal(
                    &self.key,
                    &previous,
                    id,
                    &old.cert_pem,
                    &old_key,
                    &old.fingerprint,
                )
                .map_err(seal_err)?;
                self.store.ca_txn(
                    "switching to the next root",
                    vec![
                        unchanged(&current, &slots.current),
                        unchanged(&next, &slots.next),
                        unchanged(&previous, &None),
                    ],
                    vec![
                        TxnOp::put(current.as_str(), as_current.to_json(), None),
                        TxnOp::put(previous.as_str(), as_previous.to_json(), None),
                        TxnOp::delete(next.as_str(), None),
                    ],
                )
            }
            Step::Finish => {
                if phase != "switched" {
                    return refuse("finish the rotation");
                }
                self.store.ca_txn(
                    "dropping the previous root",
                    vec![
                        unchanged(&previous, &slots.previous),
                        unchanged(&next, &None),
                    ],
                    vec![TxnOp::delete(previous.as_str(), None)],
                )
            }
        }
        .map_err(|e| self.fail(e))?;
        if !done {
            return Err(Error::rejected(
                "another control changed the CA in etcd meanwhile; see `meshctl ca status` and try again",
            ));
        }
        tracing::info!(step = ?step, "CA rotation: step taken");
        self.status()
    }
}
