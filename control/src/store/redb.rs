//! [`RedbStore`]: the embedded store, one redb file in the data directory.
//!
//! redb commits with `Durability::Immediate` by default (fsync before
//! `commit` returns) and is crash-safe by design (copy-on-write B-trees with
//! a checksummed commit slot), so a kill -9 at any moment leaves either the
//! old or the new version, never a torn one. Values are JSON, so the schema
//! can grow additively like the wire messages.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use redb::{Database, DatabaseError, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    check_token, Consumed, Corruption, Damage, Issued, IssuedCert, NodeRecord, Store, StoreDump,
    StoreError, StoreIo, TokenRecord, VersionRecord,
};
use crate::config::Config;

/// `"current"` -> the current version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// version -> JSON [`VersionRecord`].
const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("versions");
/// token id -> JSON [`TokenRecord`].
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// `"store_id"` -> the store's identity. Stores made before identities
/// existed lack it until control adopts them (`startup`).
const IDENTITY: TableDefinition<&str, &str> = TableDefinition::new("identity");
/// node name -> JSON [`NodeRecord`]. Stores made before evictions lack it
/// until the first certificate is recorded.
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");

const CURRENT: &str = "current";
const STORE_ID: &str = "store_id";

pub struct RedbStore {
    db: Database,
    /// Empty until [`RedbStore::set_id`] for a store without one.
    id: String,
}

fn io<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Io(StoreIo::Redb(Box::new(e.into())))
}

fn corrupt(what: &'static str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt(Corruption::Undecodable { what, source })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Io(StoreIo::Encode(e)))
}

/// An error opening a file that exists: in use, or not a readable store.
fn open_error(e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::InUse,
        e => StoreError::Damaged(Damage::Open(Box::new(e))),
    }
}

thread_local! {
    /// Set while this thread runs [`guarded`]: the panic message lands here
    /// instead of on stderr.
    static GUARD: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Runs `f` (which opens or reads a store file) turning a panic inside
/// redb into [`StoreError::Damaged`]: redb asserts on some damaged files
/// (a truncated one fails `assertion failed: ...` in its page allocator)
/// instead of returning an error, and an operator must get a message that
/// names the file, not a backtrace.
///
/// With `panic = "abort"` (the release profile) nothing can be unwound:
/// there the hook itself prints `what` and the message, and exits 1.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let caught = GUARD.with(|g| {
                let mut g = g.borrow_mut();
                match g.as_mut() {
                    Some(slot) => {
                        *slot = Some(panic_text(info));
                        true
                    }
                    None => false,
                }
            });
            if !caught {
                previous(info);
            } else if cfg!(panic = "abort") {
                let what = GUARD_WHAT.with(|w| w.borrow().clone());
                let msg = GUARD.with(|g| g.borrow().clone().flatten()).unwrap_or_default();
                let dir = Path::new(&what)
                    .parent()
                    .map_or_else(|| ".".into(), |d| d.display().to_string());
                eprintln!(
                    "coremesh-control: {what}: the store is damaged ({msg}). Restore it from a backup (stop control, then `coremesh-control restore --from BACKUP --data-dir {dir} --force`), or start once with --reinitialize-store to begin with an empty store."
                );
                std::process::exit(1);
            }
        }));
    });
    GUARD.with(|g| *g.borrow_mut() = Some(None));
    GUARD_WHAT.with(|w| *w.borrow_mut() = what.to_string());
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let message = GUARD.with(|g| g.borrow_mut().take().flatten());
    match result {
        Ok(r) => r,
        Err(_) => Err(StoreError::Damaged(Damage::FailedCheck(
            message.unwrap_or_else(|| "the store library failed an internal check".into()),
        ))),
    }
}

thread_local! {
    /// What [`guarded`] is opening, for the abort-mode message.
    static GUARD_WHAT: RefCell<String> = const { RefCell::new(String::new()) };
}

fn panic_text(info: &panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    match info.location() {
        Some(l) => format!("{msg} (redb check at {}:{})", l.file(), l.line()),
        None => msg,
    }
}

/// Whether another open of the store file (a running control) holds
/// redb's lock on it. Asks the kernel without reading the file, so a
/// damaged store can be replaced by a restore.
pub fn in_use(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: flock(2) takes a descriptor and flags, no pointers; the
    // descriptor is `file`'s, open for the whole call. The lock (if taken)
    // goes with the descriptor when `file` drops. (std's safe
    // `File::try_lock_shared` needs Rust 1.89, above the workspace's MSRV.)
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

impl RedbStore {
    /// Opens the existing store file at `path` and reads all of it once, so
    /// damage shows now and not on the first operator request. Refuses a
    /// file that is missing, not a coremesh store, damaged or held open by
    /// another process.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        guarded(&path.display().to_string(), || {
            let db = Database::open(path).map_err(open_error)?;
            let tx = db.begin_read().map_err(io)?;
            let missing = |e: redb::TableError| match e {
                redb::TableError::TableDoesNotExist(name) => {
                    StoreError::Damaged(Damage::NotAStore(name))
                }
                e => io(e),
            };
            tx.open_table(META).map_err(missing)?;
            tx.open_table(VERSIONS).map_err(missing)?;
            tx.open_table(TOKENS).map_err(missing)?;
            let id = match tx.open_table(IDENTITY) {
                Ok(t) => t.get(STORE_ID).map_err(io)?.map(|v| v.value().to_string()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(io(e)),
            };
            drop(tx);
            let store = RedbStore {
                db,
                id: id.unwrap_or_default(),
            };
            // Every record once: a damaged page or record fails here.
            store
                .read_all()?
                .check()
                .map_err(|e| StoreError::Corrupt(e.into()))?;
            Ok(store)
        })
    }

    /// Creates a new, empty store with identity `id` at `path`, which must
    /// not exist or be empty.
    pub fn create(path: &Path, id: &str) -> Result<RedbStore, StoreError> {
        Self::create_from(
            path,
            &StoreDump {
                store_id: id.to_string(),
                current: 0,
                versions: vec![],
                tokens: vec![],
                nodes: vec![],
            },
        )
    }

    /// Creates a store at `path` (which must not exist or be empty) holding
    /// exactly `dump`, in one transaction.
    pub fn create_from(path: &Path, dump: &StoreDump) -> Result<RedbStore, StoreError> {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return Err(StoreError::Io(StoreIo::Exists(path.to_path_buf())));
        }
        let db = guarded(&path.display().to_string(), || {
            Database::create(path).map_err(open_error)
        })?;
        let tx = db.begin_write().map_err(io)?;
        {
            let mut meta = tx.open_table(META).map_err(io)?;
            let mut versions = tx.open_table(VERSIONS).map_err(io)?;
            let mut tokens = tx.open_table(TOKENS).map_err(io)?;
            let mut identity = tx.open_table(IDENTITY).map_err(io)?;
            identity
                .insert(STORE_ID, dump.store_id.as_str())
                .map_err(io)?;
            for rec in &dump.versions {
                versions
                    .insert(rec.version, to_json(rec)?.as_slice())
                    .map_err(io)?;
            }
            if dump.current > 0 {
                meta.insert(CURRENT, dump.current).map_err(io)?;
            }
            for t in &dump.tokens {
                tokens
                    .insert(t.id.as_str(), to_json(t)?.as_slice())
                    .map_err(io)?;
            }
            let mut nodes = tx.open_table(NODES).map_err(io)?;
            for n in &dump.nodes {
                nodes
                    .insert(n.node.as_str(), to_json(n)?.as_slice())
                    .map_err(io)?;
            }
        }
        tx.commit().map_err(io)?;
        Ok(RedbStore {
            db,
            id: dump.store_id.clone(),
        })
    }

    /// Gives a store made before identities its identity (durably).
    pub fn set_id(&mut self, id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut identity = tx.open_table(IDENTITY).map_err(io)?;
            identity.insert(STORE_ID, id).map_err(io)?;
        }
        tx.commit().map_err(io)?;
        self.id = id.to_string();
        Ok(())
    }

    fn read_all(&self) -> Result<StoreDump, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let meta = tx.open_table(META).map_err(io)?;
        let current = meta.get(CURRENT).map_err(io)?.map_or(0, |v| v.value());
        let table = tx.open_table(VERSIONS).map_err(io)?;
        let mut versions = Vec::with_capacity(table.len().map_err(io)? as usize);
        for row in table.iter().map_err(io)? {
            let (_, v) = row.map_err(io)?;
            versions.push(serde_json::from_slice(v.value()).map_err(|e| corrupt("version", e))?);
        }
        let table = tx.open_table(TOKENS).map_err(io)?;
        let mut tokens = Vec::new();
        for row in table.iter().map_err(io)? {
            let (_, v) = row.map_err(io)?;
            tokens.push(serde_json::from_slice(v.value()).map_err(|e| corrupt("token", e))?);
        }
        let nodes = Self::read_nodes(&tx)?;
        Ok(StoreDump {
            store_id: self.id.clone(),
            current,
            versions,
            tokens,
            nodes,
        })
    }

    fn read_nodes(tx: &redb::ReadTransaction) -> Result<Vec<NodeRecord>, StoreError> {
        let table = match tx.open_table(NODES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut nodes = Vec::new();
        for row in table.iter().map_err(io)? {
            let (_, v) = row.map_err(io)?;
            nodes.push(serde_json::from_slice(v.value()).map_err(|e| corrupt("node", e))?);
        }
        Ok(nodes)
    }

    /// Reads `node`'s record (a new one if it has none), lets `change`
    /// edit it, and writes it back in the same transaction, durably.
    fn update_node<T>(
        &self,
        node: &str,
        now: u64,
        change: impl FnOnce(&mut NodeRecord) -> T,
    ) -> Result<(T, NodeRecord), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        let out;
        let rec;
        {
            let mut nodes = tx.open_table(NODES).map_err(io)?;
            let mut r = match nodes.get(node).map_err(io)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(|e| corrupt("node", e))?,
                None => NodeRecord::new(node),
            };
            r.prune(now);
            out = change(&mut r);
            if r.is_empty() {
                nodes.remove(node).map_err(io)?;
            } else {
                nodes.insert(node, to_json(&r)?.as_slice()).map_err(io)?;
            }
            rec = r;
        }
        tx.commit().map_err(io)?;
        Ok((out, rec))
    }

    fn read_token(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        id: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        match table.get(id).map_err(io)? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| corrupt("token", e)),
            None => Ok(None),
        }
    }
}

impl Store for RedbStore {
    fn id(&self) -> &str {
        &self.id
    }

    fn dump(&self) -> Result<StoreDump, StoreError> {
        self.read_all()
    }

    fn current(&self) -> Result<(u64, Config), StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let meta = tx.open_table(META).map_err(io)?;
        let Some(version) = meta.get(CURRENT).map_err(io)?.map(|v| v.value()) else {
            return Ok((0, Config::default()));
        };
        let versions = tx.open_table(VERSIONS).map_err(io)?;
        let rec = versions
            .get(version)
            .map_err(io)?
            .ok_or(StoreError::Corrupt(Corruption::MissingVersion(version)))?;
        let rec: VersionRecord =
            serde_json::from_slice(rec.value()).map_err(|e| corrupt("version", e))?;
        Ok((version, rec.config))
    }

    fn current_digest(&self) -> Result<String, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let meta = tx.open_table(META).map_err(io)?;
        let Some(version) = meta.get(CURRENT).map_err(io)?.map(|v| v.value()) else {
            return Ok(crate::config::digest(&Config::default()));
        };
        let versions = tx.open_table(VERSIONS).map_err(io)?;
        let rec = versions
            .get(version)
            .map_err(io)?
            .ok_or(StoreError::Corrupt(Corruption::MissingVersion(version)))?;
        let rec: VersionRecord =
            serde_json::from_slice(rec.value()).map_err(|e| corrupt("version", e))?;
        Ok(if rec.digest.is_empty() {
            crate::config::digest(&rec.config)
        } else {
            rec.digest
        })
    }

    fn commit(
        &self,
        expected: u64,
        config: &Config,
        summary: &str,
        at: u64,
    ) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        let version;
        {
            let mut meta = tx.open_table(META).map_err(io)?;
            let found = meta.get(CURRENT).map_err(io)?.map_or(0, |v| v.value());
            if found != expected {
                return Err(StoreError::Conflict { expected, found });
            }
            version = found + 1;
            let rec = VersionRecord {
                version,
                at,
                summary: summary.to_string(),
                config: config.clone(),
                digest: crate::config::digest(config),
            };
            let mut versions = tx.open_table(VERSIONS).map_err(io)?;
            versions
                .insert(version, to_json(&rec)?.as_slice())
                .map_err(io)?;
            meta.insert(CURRENT, version).map_err(io)?;
        }
        tx.commit().map_err(io)?;
        Ok(version)
    }

    fn history(&self) -> Result<Vec<VersionRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let versions = tx.open_table(VERSIONS).map_err(io)?;
        let mut out = Vec::new();
        for row in versions.iter().map_err(io)? {
            let (_, v) = row.map_err(io)?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt("version", e))?);
        }
        Ok(out)
    }

    fn config_at(&self, version: u64) -> Result<Option<Config>, StoreError> {
        if version == 0 {
            return Ok(Some(Config::default()));
        }
        let tx = self.db.begin_read().map_err(io)?;
        let versions = tx.open_table(VERSIONS).map_err(io)?;
        let Some(v) = versions.get(version).map_err(io)? else {
            return Ok(None);
        };
        let rec: VersionRecord =
            serde_json::from_slice(v.value()).map_err(|e| corrupt("version", e))?;
        Ok(Some(rec.config))
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut tokens = tx.open_table(TOKENS).map_err(io)?;
            tokens
                .insert(token.id.as_str(), to_json(token)?.as_slice())
                .map_err(io)?;
        }
        tx.commit().map_err(io)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let tokens = tx.open_table(TOKENS).map_err(io)?;
        let mut out = Vec::new();
        for row in tokens.iter().map_err(io)? {
            let (_, v) = row.map_err(io)?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt("token", e))?);
        }
        Ok(out)
    }

    fn consume_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: u64,
    ) -> Result<Consumed, StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        let outcome;
        {
            let mut tokens = tx.open_table(TOKENS).map_err(io)?;
            let Some(mut t) = Self::read_token(&tokens, id)? else {
                return Ok(Consumed::Refused(super::TokenRefusal::Unknown));
            };
            if let Err(why) = check_token(&t, secret_sha256, now) {
                return Ok(Consumed::Refused(why));
            }
            t.uses_left -= 1;
            tokens.insert(id, to_json(&t)?.as_slice()).map_err(io)?;
            outcome = Consumed::Ok(t);
        }
        tx.commit().map_err(io)?;
        Ok(outcome)
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut tokens = tx.open_table(TOKENS).map_err(io)?;
            let Some(mut t) = Self::read_token(&tokens, id)? else {
                return Ok(false);
            };
            t.revoked = true;
            tokens.insert(id, to_json(&t)?.as_slice()).map_err(io)?;
        }
        tx.commit().map_err(io)?;
        Ok(true)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        Self::read_nodes(&tx)
    }

    fn record_issued(&self, node: &str, cert: &IssuedCert, now: u64) -> Result<Issued, StoreError> {
        let (issued, _) = self.update_node(node, now, |r| match r.evicted_at {
            Some(at) => Issued::Evicted(at),
            None => {
                r.issued.push(cert.clone());
                Issued::Recorded
            }
        })?;
        Ok(issued)
    }

    fn evict_node(&self, node: &str, now: u64) -> Result<NodeRecord, StoreError> {
        let ((), rec) = self.update_node(node, now, |r| {
            r.evicted_at.get_or_insert(now);
            let issued = std::mem::take(&mut r.issued);
            r.revoked.extend(issued);
        })?;
        Ok(rec)
    }

    fn readmit_node(&self, node: &str, now: u64) -> Result<Option<NodeRecord>, StoreError> {
        let (was, rec) = self.update_node(node, now, |r| r.evicted_at.take().is_some())?;
        Ok(was.then_some(rec))
    }
}

#[cfg(test)]
mod tests;
