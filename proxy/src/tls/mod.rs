//! Mutual TLS between proxies (rustls, TLS 1.3 only).
//!
//! * [`session`]: sans-I/O, a rustls unbuffered connection with its
//!   receive, overflow and send areas.
//! * [`stream`]: that session over a shard's TCP connection.
//! * [`identity`]: the proxy's certificate and trust anchors, the per-shard
//!   rustls configurations built from them, and the SPIFFE checks on peers.
//! * [`revoked`]: control's revocation list, and each shard's open
//!   connections by peer certificate, shut when it is revoked.
//!
//! Connection lifecycle:
//!
//! ```text
//!  TCP connected ──handshake (flights out, reads in)──▶ established
//!     │ bad or revoked certificate, wrong service,                │ peer's certificate revoked:
//!     │ plaintext, timeout                                        │ socket shut (tls/revoked.rs)
//!     ▼                                                           ▼
//!  closed (alert sent; 502 "peer identity mismatch"    reads decrypt into the caller's
//!          or connect failure on the outbound side)   buffer; writes encrypt into tx
//!                                                              │ close_notify / EOF
//!                                                              ▼
//!                                                           closed
//! ```

pub mod identity;
pub mod revoked;
pub mod session;
pub mod stream;

pub use identity::{Identity, ShardTls};
pub use session::{Session, TlsError};
pub use stream::TlsStream;

pub mod poll;

#[cfg(test)]
pub(crate) mod testpki;
#[cfg(test)]
mod tests;
