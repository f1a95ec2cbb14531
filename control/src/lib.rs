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
//! Durable: the config, its history and join tokens (the store). Soft, in
//! memory: registrations, heartbeats, proxy status; after a restart the
//! proxies re-register within the grace period.

pub mod api;
pub mod backup;
pub mod ca;
pub mod client;
pub mod config;
pub mod datadir;
pub mod hub;
pub mod quic;
pub mod registry;
pub mod store;
pub mod tokens;
pub mod view;

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
}

/// The crate's error: a kind and a message that says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn rejected(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Rejected,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::NotFound,
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Internal,
            message: message.into(),
        }
    }
}

impl From<store::StoreError> for Error {
    fn from(e: store::StoreError) -> Self {
        Error::internal(e.to_string())
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
