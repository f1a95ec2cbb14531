//! Opening the store at start, and refusing to come up empty over state
//! that existed.
//!
//! A control that silently started with an empty store would hand every
//! proxy an empty policy (no AccessPolicy, `defaultAccess: allow`) as if it
//! were new. So, once a data directory is initialized (its operator
//! credential exists), control starts only on the store it was initialized
//! with:
//!
//! | store file | identity | what happens |
//! | --- | --- | --- |
//! | missing, data directory new | - | first start: a new store, a new identity in `store.id` |
//! | missing or empty, directory initialized | - | refused (exit 1) |
//! | damaged (redb error or assertion, bad record, gap in the history) | - | refused (exit 1) |
//! | readable | equals `store.id` | opened |
//! | readable | differs from `store.id`, or none while `store.id` exists | refused (exit 1): another directory's store |
//! | readable, made before identities | no `store.id` either | adopted: a new identity in both |
//! | readable | `store.id` lost | opened, `store.id` written again from the store |
//!
//! `--reinitialize-store` turns every refusal above into a new, empty
//! store that keeps the directory's identity (so proxies compare versions
//! and refuse the lower ones), moves the old file aside, and records the
//! reinitialization as version 1 of the new history.

use std::path::Path;

use super::ca_record::{CaRecord, SealKey};
use super::etcd::{CA_CURRENT, CA_NEXT, CA_PREVIOUS};
use super::{EtcdArgs, EtcdStore, RedbStore, Store, StoreError};
use crate::ca::Ca;
use crate::config::Config;
use crate::datadir::{DataDir, STORE_ID};
use crate::Error;

/// Why the store file cannot be used as this directory's store; displays
/// as what follows "the store" (`is missing`, `is damaged (...)`).
#[derive(Debug, thiserror::Error)]
pub enum StoreProblem {
    #[error("is missing")]
    Missing,
    #[error("is empty (0 bytes)")]
    Empty,
    /// It does not open or read as a store.
    #[error("{}", describe(.0))]
    Unusable(#[source] StoreError),
    /// It opens, but it is not the store this directory was initialized
    /// with.
    #[error(transparent)]
    NotOurs(#[from] IdentityMismatch),
}

/// How an opened store's identity differs from the directory's `store.id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityMismatch {
    #[error("has no store identity, but this data directory was initialized with store {recorded} ({}): it is not the store this directory had", STORE_ID)]
    NoIdentity { recorded: String },
    #[error("is store {found}, but this data directory was initialized with store {recorded} ({}): it is another directory's store", STORE_ID)]
    Another { found: String, recorded: String },
}

/// Why the store cannot be used as it is.
fn describe(e: &StoreError) -> String {
    match e {
        StoreError::Damaged(why) => format!("is damaged ({why})"),
        StoreError::Corrupt(why) => format!("holds corrupt data ({why})"),
        StoreError::Io(why) => format!("cannot be read ({why})"),
        other => other.to_string(),
    }
}

/// Opens the data directory's store following the table above. `now` is
/// Unix seconds (for the history entry of a reinitialization and the name
/// the old file is moved to).
pub fn open_store(dir: &mut DataDir, reinitialize: bool, now: u64) -> Result<RedbStore, Error> {
    let path = dir.store_path();
    let problem = match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !dir.initialized {
                return first_store(dir, &path);
            }
            StoreProblem::Missing
        }
        Err(e) => {
            return Err(
                Error::internal(format!("{}: cannot read it: {e}", path.display())).caused_by(e),
            )
        }
        Ok(m) if m.len() == 0 => StoreProblem::Empty,
        Ok(_) => match RedbStore::open(&path) {
            Ok(store) => match check_identity(dir, store, reinitialize)? {
                Ok(store) => return Ok(store),
                Err(mismatch) => mismatch.into(),
            },
            Err(StoreError::InUse) => {
                return Err(Error::internal(format!(
                    "{}: in use by another process: is another coremesh-control running with --data-dir {}?",
                    path.display(),
                    dir.path.display()
                ))
                .caused_by(StoreError::InUse))
            }
            Err(e) => StoreProblem::Unusable(e),
        },
    };
    if !reinitialize {
        let identity = match &dir.store_id {
            Some(id) => format!(" with store {id} (recorded in {STORE_ID})"),
            None => String::new(),
        };
        return Err(Error::internal(format!(
            "{}: the store {problem}. The data directory {} was initialized{identity}: its CA and operator credential exist, so control will not start with an empty or partial store: that would hand every proxy an empty policy. Restore the store from a backup (stop control, then `coremesh-control restore --from BACKUP --data-dir {} --force`). To start empty anyway, start once with --reinitialize-store: proxies keep their policy and refuse the new store's versions until they pass the ones they run.",
            path.display(),
            dir.path.display(),
            dir.path.display(),
        ))
        .caused_by(problem));
    }
    reinitialized(dir, &path, &problem, now)
}

/// The first start of a new data directory: a new store, a new identity.
fn first_store(dir: &mut DataDir, path: &Path) -> Result<RedbStore, Error> {
    let id = match &dir.store_id {
        Some(id) => id.clone(),
        None => crate::tokens::random_hex(16),
    };
    let store = RedbStore::create(path, &id).map_err(|e| store_error(path, e))?;
    if dir.store_id.is_none() {
        dir.record_store_id(&id)?;
    }
    tracing::info!(store_id = %id, path = %path.display(), "created the store");
    Ok(store)
}

/// Compares the opened store's identity with `store.id`: `Ok(Ok(store))`
/// to use it, `Ok(Err(mismatch))` when it is not this directory's store.
fn check_identity(
    dir: &mut DataDir,
    mut store: RedbStore,
    reinitialize: bool,
) -> Result<Result<RedbStore, IdentityMismatch>, Error> {
    let path = dir.store_path();
    let found = store.id().to_string();
    match (found.as_str(), dir.store_id.clone()) {
        ("", None) => {
            let id = crate::tokens::random_hex(16);
            store.set_id(&id).map_err(|e| store_error(&path, e))?;
            dir.record_store_id(&id)?;
            tracing::info!(store_id = %id, "the store had no identity (made by an older control): it has one now, recorded in {STORE_ID}");
        }
        ("", Some(recorded)) => return Ok(Err(IdentityMismatch::NoIdentity { recorded })),
        (id, None) => {
            dir.record_store_id(id)?;
            tracing::warn!(store_id = %id, "{STORE_ID} was missing: written again from the store");
        }
        (id, Some(recorded)) if id == recorded => {}
        (id, Some(recorded)) => {
            return Ok(Err(IdentityMismatch::Another {
                found: id.to_string(),
                recorded,
            }))
        }
    }
    if reinitialize {
        tracing::warn!(
            "--reinitialize-store ignored: {} is intact and is this directory's store",
            path.display()
        );
    }
    Ok(Ok(store))
}

/// `--reinitialize-store`: the old file (if any) moved aside, a new empty
/// store with the directory's identity, and version 1 saying why.
fn reinitialized(
    dir: &mut DataDir,
    path: &Path,
    problem: &StoreProblem,
    now: u64,
) -> Result<RedbStore, Error> {
    if path.exists() {
        let aside = path.with_extension(format!("redb.replaced-{now}"));
        std::fs::rename(path, &aside).map_err(|e| {
            Error::internal(format!(
                "{}: cannot move it aside to {}: {e}",
                path.display(),
                aside.display()
            ))
            .caused_by(e)
        })?;
        tracing::warn!(
            "moved the old store to {} (kept for inspection)",
            aside.display()
        );
    }
    let id = match &dir.store_id {
        Some(id) => id.clone(),
        None => crate::tokens::random_hex(16),
    };
    let store = RedbStore::create(path, &id).map_err(|e| store_error(path, e))?;
    if dir.store_id.is_none() {
        dir.record_store_id(&id)?;
    }
    let summary =
        format!("store reinitialized with --reinitialize-store: the previous store {problem}");
    store
        .commit(0, &Config::default(), &summary, now)
        .map_err(|e| store_error(path, e))?;
    tracing::warn!(
        store_id = %id,
        "{}: {summary}; proxies keep their policy and refuse this store's versions until they pass the ones they run",
        path.display()
    );
    Ok(store)
}

/// Opens the etcd store of `--store etcd://...` for this data directory:
///
/// | etcd under the prefix | `store.id` | what happens |
/// | --- | --- | --- |
/// | no store | missing | a new store: a new identity in etcd (or the one another replica made first) and in `store.id` |
/// | no store | present | refused (exit 1), unless `--reinitialize-store`: an empty store with the directory's identity, version 1 saying why |
/// | store X | missing | `store.id` records X (a new replica joining) |
/// | store X | X | opened |
/// | store X | Y | refused (exit 1): another store |
///
/// etcd not answering is an error (exit 1) that names the endpoints.
pub fn open_etcd(
    dir: &mut DataDir,
    endpoints: &[String],
    args: &EtcdArgs,
    reinitialize: bool,
    now: u64,
) -> Result<EtcdStore, Error> {
    let shown = format!("etcd at {} under {}", endpoints.join(","), args.etcd_prefix);
    // Errors from etcd name the endpoints themselves.
    let fail = |e: StoreError| {
        Error::internal(format!("the store under {}: {e}", args.etcd_prefix)).caused_by(e)
    };
    let mut store = EtcdStore::connect(endpoints, args).map_err(fail)?;
    let held = store.id().to_string();
    match (held.as_str(), dir.store_id.clone()) {
        ("", None) => {
            let id = store
                .create_id(&crate::tokens::random_hex(16))
                .map_err(fail)?;
            dir.record_store_id(&id)?;
            tracing::info!(store_id = %id, "{shown}: using the store (recorded in {STORE_ID})");
        }
        ("", Some(recorded)) if reinitialize => {
            store.create_id(&recorded).map_err(fail)?;
            let summary = format!(
                "store reinitialized with --reinitialize-store: {shown} held no store"
            );
            match store.commit(0, &Config::default(), &summary, now) {
                // Another replica reinitialized it first: fine.
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(fail(e)),
            }
            tracing::warn!(store_id = %recorded, "{shown}: {summary}");
        }
        ("", Some(recorded)) => {
            return Err(Error::internal(format!(
                "{shown}: holds no coremesh store, but the data directory {} was initialized with store {recorded} ({STORE_ID}): control will not start with an empty store, which would hand every proxy an empty policy. Check --store and --etcd-prefix; to start empty anyway, start once with --reinitialize-store.",
                dir.path.display()
            )))
        }
        (id, None) => {
            dir.record_store_id(id)?;
            tracing::info!(store_id = %id, "{shown}: joined the store (recorded in {STORE_ID})");
        }
        (id, Some(recorded)) if id == recorded => {}
        (id, Some(recorded)) => {
            return Err(Error::internal(format!(
                "{shown}: is store {id}, but the data directory {} was initialized with store {recorded} ({STORE_ID}): it is another store. Check --store and --etcd-prefix.",
                dir.path.display()
            )))
        }
    }
    Ok(store)
}

/// A CA from this control's own files (`--ca-cert`/`--ca-key`, or the
/// data directory's `ca.pem`/`ca.key`): text and where it came from.
pub struct OwnCa {
    pub cert_src: String,
    pub cert_pem: String,
    pub key_src: String,
    pub key_pem: String,
}

/// The CA a control took from etcd with `--ca-in-store`.
pub struct StoredCa {
    pub ca: Ca,
    /// The etcd key it is at.
    pub key_name: String,
    /// What this control stored there, if it was the first: its own
    /// files' CA (their name) or a new CA.
    pub stored: Option<String>,
}

/// The CA of `--ca-in-store`: the one sealed at `<prefix>ca/current`,
/// opened with the operator's `key`. When etcd holds none, this control
/// stores one there in a create-if-absent transaction: `own` (its files'
/// CA) or, without files, a new CA, kept in memory only. A control whose
/// files hold another CA than the one in etcd is refused, and so is one
/// whose key is not the one the CA was sealed with.
pub fn ca_from_etcd(
    store: &EtcdStore,
    key: &SealKey,
    own: Option<OwnCa>,
    trust_domain: &str,
) -> Result<StoredCa, Error> {
    let now = std::time::SystemTime::now();
    let key_name = store.keys().ca(CA_CURRENT);
    let fail =
        |e: StoreError| Error::internal(format!("the CA in etcd at {key_name}: {e}")).caused_by(e);
    let sealing = |e: super::ca_record::SealError| Error::internal(e.to_string()).caused_by(e);
    let own_ca = match &own {
        Some(o) => Some(Ca::from_pem(
            &o.cert_src,
            &o.cert_pem,
            &o.key_src,
            &o.key_pem,
            trust_domain,
            now,
        )?),
        None => None,
    };
    let value = match store.ca_value(CA_CURRENT).map_err(fail)? {
        Some(v) => v,
        None => {
            let (what, cert_pem, key_pem) = match &own {
                Some(o) => (o.cert_src.clone(), o.cert_pem.clone(), o.key_pem.clone()),
                None => {
                    let (c, k) = crate::ca::create_ca(trust_domain, now)?;
                    ("a new CA".to_string(), c, k)
                }
            };
            let ca = Ca::from_pem(&what, &cert_pem, &what, &key_pem, trust_domain, now)?;
            let record = CaRecord::seal(
                key,
                &key_name,
                store.id(),
                &cert_pem,
                &key_pem,
                ca.fingerprint(),
            )
            .map_err(sealing)?;
            match store
                .create_ca_value(CA_CURRENT, record.to_json())
                .map_err(fail)?
            {
                None => {
                    let mut ca = ca;
                    rotation_roots(store, &mut ca, now)?;
                    tracing::info!(key = %key_name, from = %what, kid = key.kid(), fingerprint = ca.fingerprint(), "stored the CA in etcd, its key sealed");
                    return Ok(StoredCa {
                        ca,
                        key_name,
                        stored: Some(what),
                    });
                }
                // Another control stored its CA first: use that one.
                Some(theirs) => theirs,
            }
        }
    };
    let record = CaRecord::from_json(&key_name, &value).map_err(sealing)?;
    let key_pem = record.open(key, &key_name, store.id()).map_err(sealing)?;
    let ca = Ca::from_pem(
        &key_name,
        &record.cert_pem,
        &format!("{key_name} (sealed key)"),
        &key_pem,
        trust_domain,
        now,
    )?;
    if ca.fingerprint() != record.fingerprint {
        return Err(Error::internal(format!(
            "the CA in etcd at {key_name}: its certificate's root has fingerprint {}, but the record says {}: the record was altered; put the CA back from a backup",
            ca.fingerprint(),
            record.fingerprint
        )));
    }
    if let (Some(o), Some(own_ca)) = (&own, &own_ca) {
        if own_ca.fingerprint() != ca.fingerprint() {
            return Err(Error::internal(format!(
                "this control's CA ({}, root fingerprint {}) is not the CA in etcd at {key_name} (root fingerprint {}): with --ca-in-store every control issues from the CA in etcd. Start without --ca-cert/--ca-key, and move this data directory's ca.pem and ca.key aside if it has them",
                o.cert_src,
                own_ca.fingerprint(),
                ca.fingerprint()
            )));
        }
    }
    tracing::info!(key = %key_name, kid = key.kid(), fingerprint = ca.fingerprint(), "took the CA from etcd (its key in memory only)");
    let mut ca = ca;
    rotation_roots(store, &mut ca, now)?;
    Ok(StoredCa {
        ca,
        key_name,
        stored: None,
    })
}

/// Adds the roots of a rotation under way (`ca/next`, `ca/previous` in
/// `slots`; [`crate::ca_rotation`]) to `ca`'s trust bundle: the anchor,
/// the last certificate of each chain.
pub fn add_rotation_roots(
    keys: &super::etcd::Keys,
    slots: &super::etcd::CaSlots,
    ca: &mut Ca,
    now: std::time::SystemTime,
) -> Result<(), Error> {
    for (slot, value) in [(CA_NEXT, &slots.next), (CA_PREVIOUS, &slots.previous)] {
        let Some(value) = value else { continue };
        let key_name = keys.ca(slot);
        let record = CaRecord::from_json(&key_name, &value.value)
            .map_err(|e| Error::internal(e.to_string()))?;
        let anchor = record
            .cert_pem
            .split_inclusive("-----END CERTIFICATE-----")
            .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
            .last()
            .unwrap_or_default();
        let added = ca.add_extra_roots(&key_name, anchor, now)?;
        tracing::info!(key = %key_name, fingerprint = %record.fingerprint, added, "trusting the root of a rotation under way");
    }
    Ok(())
}

/// [`add_rotation_roots`] with the slots read from `store`.
fn rotation_roots(store: &EtcdStore, ca: &mut Ca, now: std::time::SystemTime) -> Result<(), Error> {
    let slots = store.ca_slots().map_err(|e| {
        Error::internal(format!(
            "the CA in etcd under {}ca/: {e}",
            store.keys().prefix()
        ))
        .caused_by(e)
    })?;
    add_rotation_roots(store.keys(), &slots, ca, now)
}

fn store_error(path: &Path, e: StoreError) -> Error {
    Error::internal(format!("{}: {e}", path.display())).caused_by(e)
}

#[cfg(test)]
mod tests;
