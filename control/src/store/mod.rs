//! The durable store: the current config as a versioned whole, its history,
//! join tokens, and per node the certificates issued to it and whether it
//! was evicted (`meshctl node evict`). A trait with two backends:
//! [`RedbStore`], the embedded default (one file in the data directory),
//! and [`EtcdStore`], etcd v3 shared by several control processes
//! (`--store etcd://...`, docs/etcd.md).
//!
//! Contract for every implementation: a method that changes something
//! returns only after the change is durable (fsynced), so what the API
//! acknowledged survives a kill -9. Version 0 is the empty config and has no
//! history entry; the first commit is version 1.
//!
//! Every store has an identity ([`Store::id`]): a random id made when the
//! store is created and recorded in the data directory (`store.id`).
//! Snapshots carry it with the config version, so a proxy can tell "an
//! older version of the same store" (refused) from "a newer one" and from
//! "another store" (refused unless allowed). How control opens the store,
//! and refuses to start on a missing or damaged one, is in [`startup`].

pub mod ca_record;
pub mod election;
pub mod etcd;
mod redb;
pub mod registrations;
pub mod startup;

pub use self::etcd::{EtcdArgs, EtcdError, EtcdStore};
pub use self::redb::{in_use, RedbStore};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Why the store failed. Always control's fault, never the operator's.
/// Each variant keeps what it came from (redb's error, serde_json's) as its
/// [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Io(#[source] StoreIo),
    #[error("store data is corrupt: {0}")]
    Corrupt(#[source] Corruption),
    /// A concurrent writer committed first (compare-and-swap failed):
    /// another control process on the same etcd, or an operator who named
    /// the version their change is based on (`meshctl apply --if-version`).
    #[error("store version moved: expected {expected}, found {found}")]
    Conflict { expected: u64, found: u64 },
    /// The store file cannot be opened or read as a store: truncated,
    /// overwritten, not a store at all.
    #[error("store file is damaged: {0}")]
    Damaged(#[source] Damage),
    /// Another process (a running control) holds the store open.
    #[error("store file is in use by another process (is coremesh-control running?)")]
    InUse,
}

/// What failed in a [`StoreError::Io`]. (redb's errors are boxed: they
/// are large, and a `StoreError` is returned by value everywhere.)
#[derive(Debug)]
pub enum StoreIo {
    /// redb failed to read or write.
    Redb(Box<::redb::Error>),
    /// A record did not encode.
    Encode(serde_json::Error),
    /// A store was to be created over a file that holds data.
    Exists(std::path::PathBuf),
    /// etcd failed or did not answer.
    Etcd(Box<EtcdError>),
}

impl std::fmt::Display for StoreIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreIo::Redb(e) => write!(f, "{e}"),
            StoreIo::Encode(e) => write!(f, "encoding: {e}"),
            StoreIo::Exists(path) => write!(
                f,
                "{} already exists; refusing to overwrite it",
                path.display()
            ),
            StoreIo::Etcd(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StoreIo {
    // The errors themselves, not their boxes, so that they downcast.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreIo::Redb(e) => Some(&**e),
            StoreIo::Encode(e) => Some(e),
            StoreIo::Exists(_) => None,
            StoreIo::Etcd(e) => Some(&**e),
        }
    }
}

/// What is wrong with the data in a [`StoreError::Corrupt`].
#[derive(Debug, thiserror::Error)]
pub enum Corruption {
    /// A record did not decode; `what` is `version` or `token`.
    #[error("{what}: {source}")]
    Undecodable {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The current version has no record.
    #[error("current version {0} is missing")]
    MissingVersion(u64),
    /// An etcd key under the store's prefix holds what its name says it
    /// cannot (see docs/etcd.md for the layout).
    #[error("etcd key {key}: {why}")]
    BadKey { key: String, why: String },
    /// The versions read back are not whole ([`StoreDump::check`]).
    #[error(transparent)]
    Incomplete(#[from] DumpError),
}

/// Why a file is not a usable store, in a [`StoreError::Damaged`].
#[derive(Debug)]
pub enum Damage {
    /// redb refused to open it.
    Open(Box<::redb::DatabaseError>),
    /// A redb file without coremesh's tables.
    NotAStore(String),
    /// redb failed an internal check (it panics on some damaged files):
    /// its message and where.
    FailedCheck(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Open(e) => write!(f, "{e}"),
            Damage::NotAStore(table) => write!(
                f,
                "it is a redb file but not a coremesh store (no {table:?} table)"
            ),
            Damage::FailedCheck(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Damage {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Damage::Open(e) => Some(&**e),
            Damage::NotAStore(_) | Damage::FailedCheck(_) => None,
        }
    }
}

/// Everything a store holds, read in one consistent transaction: what a
/// backup carries (with the data directory's identity files) and what a
/// restore writes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreDump {
    pub store_id: String,
    /// The current version (0: nothing committed).
    pub current: u64,
    /// Every committed version, oldest first.
    pub versions: Vec<VersionRecord>,
    pub tokens: Vec<TokenRecord>,
    /// Nodes with certificates or an eviction (absent from backups made
    /// before evictions existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeRecord>,
}

impl StoreDump {
    /// Checks the dump is whole: versions 1..=current, each once and in
    /// order. The error says what is wrong.
    pub fn check(&self) -> Result<(), DumpError> {
        for (i, rec) in self.versions.iter().enumerate() {
            let want = i as u64 + 1;
            if rec.version != want {
                return Err(DumpError::OutOfPlace {
                    found: rec.version,
                    want,
                });
            }
        }
        if self.versions.len() as u64 != self.current {
            return Err(DumpError::CountMismatch {
                current: self.current,
                held: self.versions.len(),
            });
        }
        Ok(())
    }
}

/// Why a [`StoreDump`] is not whole ([`StoreDump::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpError {
    /// The versions do not run 1, 2, ...: `found` sits where `want` should.
    #[error("version {found} is where version {want} should be (versions must run 1, 2, ... without gaps)")]
    OutOfPlace { found: u64, want: u64 },
    #[error("its current version is {current} but it holds {held} versions")]
    CountMismatch { current: u64, held: usize },
}

/// One committed version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    /// Unix seconds.
    pub at: u64,
    pub summary: String,
    pub config: Config,
    /// [`crate::config::digest`] of `config`, computed at commit. Empty in
    /// records from before digests: computed when read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
}

/// A join token as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub service: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    pub uses_left: u32,
    pub revoked: bool,
}

/// A node (a host, as proxies name it in `[control] node`): the
/// certificates control issued to it that have not expired, and whether it
/// was evicted. Evicting moves every issued certificate to `revoked`; a
/// readmission clears `evicted_at` but keeps `revoked` until each expires
/// (the keys of an evicted host stay untrusted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// Unix seconds when it was evicted; `None` while it is a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted_at: Option<u64>,
    #[serde(default)]
    pub issued: Vec<IssuedCert>,
    #[serde(default)]
    pub revoked: Vec<IssuedCert>,
}

impl NodeRecord {
    pub fn new(node: &str) -> NodeRecord {
        NodeRecord {
            node: node.to_string(),
            evicted_at: None,
            issued: Vec::new(),
            revoked: Vec::new(),
        }
    }

    /// Drops the certificates that expired by `now` (Unix seconds).
    pub fn prune(&mut self, now: u64) {
        self.issued.retain(|c| c.not_after > now);
        self.revoked.retain(|c| c.not_after > now);
    }

    /// Whether the record says anything worth keeping.
    pub fn is_empty(&self) -> bool {
        self.evicted_at.is_none() && self.issued.is_empty() && self.revoked.is_empty()
    }
}

/// A certificate control issued (on a join or a renewal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// [`coremesh_api::snapshot::serial_hex`] of its serial number.
    pub serial: String,
    pub service: String,
    /// Unix seconds.
    pub not_after: u64,
}

/// Outcome of [`Store::record_issued`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    /// Recorded (durably): the certificate may be handed out.
    Recorded,
    /// The node was evicted at this Unix second: the certificate must not
    /// be handed out.
    Evicted(u64),
}

/// Why a join token was refused; the message goes back to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No such id, or the secret does not match (not told apart, so a guess
    /// learns nothing).
    #[error("unknown join token (no such token, or wrong secret)")]
    Unknown,
    // The proxy's log adds how to get a new token: not repeated here.
    #[error("join token is used up")]
    UsedUp,
    #[error("join token has expired")]
    Expired,
    #[error("join token was revoked")]
    Revoked,
}

/// Outcome of [`Store::consume_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// Valid; one use taken (durably). The record after the decrement.
    Ok(TokenRecord),
    Refused(TokenRefusal),
}

/// The durable store. Methods block (they fsync): call them off the async
/// executor (`spawn_blocking`).
pub trait Store: Send + Sync + 'static {
    /// The store's identity (see the module docs).
    fn id(&self) -> &str;

    /// Everything in the store, in one read transaction.
    fn dump(&self) -> Result<StoreDump, StoreError>;

    /// The current version and its config (0 and empty before the first
    /// commit).
    fn current(&self) -> Result<(u64, Config), StoreError>;

    /// The digest recorded with the current version (of the empty config
    /// before the first commit).
    fn current_digest(&self) -> Result<String, StoreError>;

    /// The current version, its config and its digest, read together: what
    /// the hub compares with what it holds before each change, so a
    /// version committed by another control on a shared store is seen
    /// (and planned on) rather than overwritten.
    fn current_record(&self) -> Result<(u64, Config, String), StoreError> {
        let (version, config) = self.current()?;
        Ok((version, config, self.current_digest()?))
    }

    /// Calls `on_change` (on a thread of the store's) whenever the current
    /// version may have been changed by another process sharing the store,
    /// and after each reconnection (a change may have been missed). The
    /// callback must not block: it wakes whoever re-reads. Stores that only
    /// this process writes (redb) never call it.
    fn watch(&self, on_change: Box<dyn Fn() + Send + Sync>) {
        let _ = on_change;
    }

    /// The etcd store, when this is one: its session, elections and
    /// shared registrations.
    fn etcd(&self) -> Option<&EtcdStore> {
        None
    }

    /// Writes `config` as version `expected + 1` if the current version is
    /// still `expected`; returns the new version once durable.
    fn commit(
        &self,
        expected: u64,
        config: &Config,
        summary: &str,
        at: u64,
    ) -> Result<u64, StoreError>;

    /// Every committed version, oldest first.
    fn history(&self) -> Result<Vec<VersionRecord>, StoreError>;

    /// The config of `version`, if it was committed.
    fn config_at(&self, version: u64) -> Result<Option<Config>, StoreError>;

    /// Creates or replaces a token.
    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError>;

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Checks a presented token and, if valid, takes one use, atomically
    /// and durably. `now` in Unix seconds.
    fn consume_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: u64,
    ) -> Result<Consumed, StoreError>;

    /// Marks a token revoked; false if there is no such token.
    fn revoke_token(&self, id: &str) -> Result<bool, StoreError>;

    /// Every node record, by name.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    /// Records `cert` as issued to `node`, unless the node is evicted;
    /// atomically, so a certificate signed while an eviction commits is
    /// either recorded (and revoked by it) or refused. `now` in Unix
    /// seconds (expired certificates are dropped from the record).
    fn record_issued(&self, node: &str, cert: &IssuedCert, now: u64) -> Result<Issued, StoreError>;

    /// Evicts `node` (again: keeps the first time): every certificate
    /// issued to it moves to its revoked list. The record after the change.
    fn evict_node(&self, node: &str, now: u64) -> Result<NodeRecord, StoreError>;

    /// Ends an eviction; its revoked certificates stay revoked. `None` if
    /// the node was not evicted.
    fn readmit_node(&self, node: &str, now: u64) -> Result<Option<NodeRecord>, StoreError>;
}

/// The check [`Store::consume_token`] implementations share: what to refuse,
/// in the order an operator would want to hear it.
pub fn check_token(t: &TokenRecord, secret_sha256: &str, now: u64) -> Result<(), TokenRefusal> {
    if t.secret_sha256 != secret_sha256 {
        return Err(TokenRefusal::Unknown);
    }
    if t.revoked {
        return Err(TokenRefusal::Revoked);
    }
    if now >= t.expires_at {
        return Err(TokenRefusal::Expired);
    }
    if t.uses_left == 0 {
        return Err(TokenRefusal::UsedUp);
    }
    Ok(())
}
