//! coremesh-control: the control plane of coremesh.
//!
//! One process keeps the desired state (services, routes, access policies,
//! resiliences, the mesh config) in a durable [`store`], issues certificates from its
//! [`ca`] (its own or the operator's), tracks which proxies are
//! alive in an in-memory [`registry`], and pushes each proxy a full,
//! versioned [`view`] of what it needs over QUIC ([`quic`]). Operators talk
//! to it through the HTTP [`api`] (with `meshctl`, whose HTTP client is
//! [`client`]).
//!
//! How data flows:
//!
//! ```text
//!  meshctl ──HTTP──▶ api ──▶ hub::apply ──▶ config::plan ──▶ store (fsync) ─┐
//!                                                                          ▼
//!  proxy ──QUIC──▶ quic::session ──▶ registry (register/health/ack) ──▶ hub (dirty)
//!                        ▲                                                 │ debounce 50 ms
//!                        └──────── Snapshot per changed session ◀── view ◀─┘
//! ```
//!
//! Durable: the config, its history, join tokens, and per node the
//! certificates issued to it and whether it was evicted (the store; an
//! eviction's revocation list goes to every proxy in its snapshots, see
//! [`nodes`]). Soft, in
//! memory: registrations, heartbeats, proxy status; after a restart the
//! proxies re-register within the grace period. With the etcd store,
//! registrations are also shared among the replicas under their leases
//! ([`store::registrations`]), and the hub publishes every replica's.

pub mod api;
pub mod api_tls;
pub mod backup;
pub mod bootstrap;
pub mod ca;
pub mod ca_rotation;
pub mod client;
pub mod config;
pub mod datadir;
pub mod fleet;
pub mod hub;
pub mod nodes;
pub mod quic;
pub mod registry;
pub mod store;
pub mod systemd;
pub mod tap;
pub mod tokens;
pub mod ui;
pub mod view;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What went wrong, and so who is to blame: the HTTP status and meshctl's
/// exit code are read from the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operator's input was refused (invalid resource, bad request):
    /// 400, meshctl exit 1.
    Rejected,
    /// The named thing does not exist: 404, meshctl exit 1.
    NotFound,
    /// Control's own fault (store, CA): 500. A retry may help.
    Internal,
    /// The config changed since the version the change was based on
    /// (another operator, through this control or another one on the same
    /// store): 409, meshctl exit 1. Re-read and apply again.
    Conflict,
}

/// The crate's error: a kind and a message that says what and where, and
/// the error it came from, when there is one ([`std::error::Error::source`]).
///
/// Errors compare by kind and message only (the cause is not
/// comparable); the message already says what the cause said.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    // The cause itself, not the Arc around it, so that it downcasts.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let source: &(dyn std::error::Error + Send + Sync + 'static) = self.source.as_deref()?;
        Some(source)
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for Error {}

impl Error {
    pub fn rejected(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Rejected, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }
    /// The config is at `version`, not at the one a change was based on.
    pub fn changed(version: u64) -> Self {
        Error::new(
            ErrorKind::Conflict,
            format!("changed by someone else at version {version}; re-read and apply again"),
        )
    }

    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `source` (kept for
    /// [`std::error::Error::source`]; the message is not changed).
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }
}

impl From<store::StoreError> for Error {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::Conflict { found, .. } => Error::changed(found).caused_by(e),
            e => Error::internal(e.to_string()).caused_by(e),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
