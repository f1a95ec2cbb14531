//! Messages on the control connection (QUIC, ALPN [`ALPN`]) and their
//! framing: a 4-byte big-endian length, then that many bytes of JSON. Frames
//! over [`MAX_FRAME`] are refused before they are buffered.
//!
//! Session lifecycle (one bidirectional stream per connection):
//!
//! ```text
//! joining (no client certificate):  Join ──▶ Joined | Error, then close
//! session (client certificate):     Hello ──▶ Welcome, Snapshot
//!                                   then, in any order: Ack/Nack(version),
//!                                   Register, Health (also the heartbeat),
//!                                   Renew ──▶ Renewed, Deregister ──▶ Deregistered
//!                                   control: Snapshot whenever something changes
//! ```
//! A malformed, oversized or out-of-order message closes the stream with an
//! error logged on both sides; it never takes down control or the proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::snapshot::Snapshot;

/// Bumped on incompatible changes; additive changes keep it.
pub const PROTOCOL_VERSION: u32 = 1;
/// QUIC ALPN of the control protocol.
pub const ALPN: &[u8] = b"coremesh-control/1";
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Proxy → control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProxyMsg {
    /// The only message of a joining connection.
    Join {
        protocol: u32,
        /// The join token's id and secret (`JoinToken::to_string()`).
        token: String,
        /// PKCS#10 CSR (PEM) for a key generated on the proxy's host.
        csr_pem: String,
        node: String,
    },
    /// First message of a session. `service` must match the client
    /// certificate's SPIFFE ID.
    Hello {
        protocol: u32,
        service: String,
        node: String,
        /// The snapshot version the proxy runs (persisted), if any.
        #[serde(default)]
        version: Option<u64>,
        /// The services it calls; `None`: all of them.
        #[serde(default)]
        calls: Option<Vec<String>>,
    },
    Ack {
        version: u64,
    },
    Nack {
        version: u64,
        reason: String,
    },
    /// Register (or update) this proxy's inbound address as an endpoint of
    /// its service.
    Register {
        address: SocketAddr,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    /// The local app's health; sent every heartbeat interval.
    Health {
        healthy: bool,
        #[serde(default)]
        detail: String,
    },
    /// Withdraw this proxy's endpoint (graceful shutdown).
    Deregister,
    /// A new CSR for the same service (renewal at ~2/3 of the lifetime).
    Renew {
        csr_pem: String,
    },
}

/// Control → proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMsg {
    Joined {
        /// The signed certificate (PEM).
        cert_pem: String,
        /// The CA certificate (PEM) to trust from now on.
        ca_pem: String,
        spiffe_id: String,
    },
    Welcome {
        protocol: u32,
        /// How often the proxy sends Health.
        heartbeat_interval_ms: u64,
    },
    Snapshot(Snapshot),
    Renewed {
        cert_pem: String,
    },
    /// The endpoint is withdrawn and every other session has been sent a
    /// snapshot without it.
    Deregistered,
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Why control refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Unknown, used-up, expired or revoked token.
    TokenRefused,
    /// The certificate does not allow this service.
    Forbidden,
    /// Protocol version, message order or content.
    BadRequest,
    Internal,
}
