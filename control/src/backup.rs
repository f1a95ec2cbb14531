//! Backups of control's state, and restoring them.
//!
//! A backup is one JSON file (mode 0600) with the whole store (every
//! version of the history, the current version and the join tokens, read in
//! one transaction, so it is consistent) and the data directory's identity:
//! the store id, the CA certificate, the operator credential and the QUIC
//! endpoint secret. The CA's private key is in it only when asked for
//! (`--include-ca-key`): without it, a restored directory needs the key put
//! back by hand (or `--ca-cert`/`--ca-key`).
//!
//! `backup` works on a running control too: the store file is then locked
//! by control, so the store part is read through control's API
//! (`GET /v1/store/dump`, with the operator credential from the data
//! directory).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::datadir::{self, CA_CERT, CA_KEY, CREDENTIAL, QUIC_RESET_KEY, STORE, STORE_ID};
use crate::store::{RedbStore, Store, StoreDump, StoreError};
use crate::Error;

/// The `format` of a backup file this control writes and reads.
pub const FORMAT: &str = "coremesh-control-backup/1";

/// One backup file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    pub format: String,
    /// Unix seconds.
    pub created_at: u64,
    pub store: StoreDump,
    /// `ca.pem`; absent when control runs with an operator's CA.
    #[serde(default)]
    pub ca_cert_pem: Option<String>,
    /// `ca.key`, only with `--include-ca-key`.
    #[serde(default)]
    pub ca_key_pem: Option<String>,
    pub operator_credential: String,
    /// `quic-reset.key`: restored, proxies' QUIC connection ids stay
    /// recognizable to the restored control.
    #[serde(default)]
    pub quic_reset_key: Option<String>,
}

/// What [`restore`] did, for the command to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub store_id: String,
    pub version: u64,
    pub tokens: usize,
    pub files: Vec<PathBuf>,
    /// Set when the backup had no CA key and the directory has none.
    pub needs_ca_key: bool,
}

fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::internal(format!("{}: read: {e}", path.display()))),
    }
}

/// Takes a backup of the data directory `dir`. `online` reads the store
/// from a running control; it is called only when the store file is locked
/// by one, or absent (a control on etcd).
pub fn take(
    dir: &Path,
    include_ca_key: bool,
    now: u64,
    online: impl FnOnce(&str) -> Result<StoreDump, Error>,
) -> Result<Backup, Error> {
    let credential = read_optional(&dir.join(CREDENTIAL))?.ok_or_else(|| {
        Error::rejected(format!(
            "{}: not an initialized data directory (no {CREDENTIAL})",
            dir.display()
        ))
    })?;
    let credential = credential.trim().to_string();
    let recorded = datadir::read_store_id(dir)?;
    let store_path = dir.join(STORE);
    // No store file: the store is in etcd (`--store etcd://`), read
    // through the running control like a locked file.
    let store = if crate::store::in_use(&store_path) || !store_path.exists() {
        online(&credential)?
    } else {
        match RedbStore::open(&store_path) {
            Ok(store) => store.dump()?,
            Err(StoreError::InUse) => online(&credential)?,
            Err(e) => return Err(Error::internal(format!("{}: {e}", store_path.display()))),
        }
    };
    if let Some(recorded) = &recorded {
        if *recorded != store.store_id {
            return Err(Error::internal(format!(
                "{}: the store is {} but {STORE_ID} says {recorded}; refusing to back up a mismatched pair",
                dir.display(),
                store.store_id
            )));
        }
    }
    let ca_key_pem = if include_ca_key {
        Some(read_optional(&dir.join(CA_KEY))?.ok_or_else(|| {
            Error::rejected(format!(
                "--include-ca-key: {} has no {CA_KEY} (control runs with an operator's CA: back that key up where it is kept)",
                dir.display()
            ))
        })?)
    } else {
        None
    };
    Ok(Backup {
        format: FORMAT.to_string(),
        created_at: now,
        store,
        ca_cert_pem: read_optional(&dir.join(CA_CERT))?,
        ca_key_pem,
        operator_credential: credential,
        quic_reset_key: read_optional(&dir.join(QUIC_RESET_KEY))?.map(|k| k.trim().to_string()),
    })
}

/// Writes `backup` to `to` with mode 0600, refusing to overwrite a file.
pub fn write(backup: &Backup, to: &Path) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(backup)
        .map_err(|e| Error::internal(format!("encoding the backup: {e}")))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| Error::rejected(format!("{}: cannot create: {e}", to.display())))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::internal(format!("{}: write: {e}", to.display())))
}

/// Reads and checks a backup file.
pub fn read(from: &Path) -> Result<Backup, Error> {
    let bytes =
        fs::read(from).map_err(|e| Error::rejected(format!("{}: read: {e}", from.display())))?;
    let backup: Backup = serde_json::from_slice(&bytes).map_err(|e| {
        Error::rejected(format!(
            "{}: not a coremesh-control backup: {e}",
            from.display()
        ))
    })?;
    if backup.format != FORMAT {
        return Err(Error::rejected(format!(
            "{}: backup format {:?}; this control reads {FORMAT:?}",
            from.display(),
            backup.format
        )));
    }
    let id = &backup.store.store_id;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::rejected(format!(
            "{}: the store id {id:?} is not hex digits",
            from.display()
        )));
    }
    backup.store.check().map_err(|why| {
        Error::rejected(format!(
            "{}: the store in it is not whole: {why}",
            from.display()
        ))
        .caused_by(why)
    })?;
    Ok(backup)
}

/// Restores `backup` into the data directory `dir`: creates it (0700) or,
/// with `force`, replaces the state of a non-empty one. Refuses while a
/// control holds the directory's store open.
pub fn restore(backup: &Backup, dir: &Path, force: bool) -> Result<Restored, Error> {
    let non_empty = fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if non_empty && !force {
        return Err(Error::rejected(format!(
            "{} is not empty; pass --force to replace its state with the backup's (store {}, version {})",
            dir.display(),
            backup.store.store_id,
            backup.store.current
        )));
    }
    if !dir.exists() {
        fs::create_dir_all(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| Error::internal(format!("{}: create directory: {e}", dir.display())))?;
    }
    let store_path = dir.join(STORE);
    if crate::store::in_use(&store_path) {
        return Err(Error::rejected(format!(
            "{}: in use by a running coremesh-control; stop it first",
            store_path.display()
        )));
    }
    // The new store under a temporary name, then renamed over the old one:
    // an interrupted restore leaves the old store or the new, never half.
    let tmp = dir.join(format!("{STORE}.restoring"));
    let _ = fs::remove_file(&tmp);
    let store = RedbStore::create_from(&tmp, &backup.store)
        .map_err(|e| Error::internal(format!("{}: {e}", tmp.display())))?;
    drop(store);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::rename(&tmp, &store_path))
        .map_err(|e| Error::internal(format!("{}: {e}", store_path.display())))?;
    let mut files = vec![store_path];
    let mut put = |name: &str, contents: &str| -> Result<(), Error> {
        let path = dir.join(name);
        datadir::write_secret(&path, contents)?;
        files.push(path);
        Ok(())
    };
    put(STORE_ID, &format!("{}\n", backup.store.store_id))?;
    put(CREDENTIAL, &format!("{}\n", backup.operator_credential))?;
    if let Some(key) = &backup.quic_reset_key {
        put(QUIC_RESET_KEY, &format!("{key}\n"))?;
    }
    if let Some(key) = &backup.ca_key_pem {
        put(CA_KEY, key)?;
    }
    if let Some(cert) = &backup.ca_cert_pem {
        put(CA_CERT, cert)?;
    }
    let needs_ca_key =
        backup.ca_cert_pem.is_some() && backup.ca_key_pem.is_none() && !dir.join(CA_KEY).exists();
    Ok(Restored {
        store_id: backup.store.store_id.clone(),
        version: backup.store.current,
        tokens: backup.store.tokens.len(),
        files,
        needs_ca_key,
    })
}

#[cfg(test)]
mod tests;
