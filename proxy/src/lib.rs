//! coremesh-proxy: the sidecar data plane.
//!
//! Data flow (one request, start to finish on the shard that accepted it):
//!
//! ```text
//! listener ──fd──▶ shard ──▶ conn (accept) ──▶ http1 (decode head, in place)
//!     ──▶ route (authority → service → endpoint) ──▶ pool (keep-alive upstream)
//!     ──▶ forward (vectored head write, body relayed from the buffer it was read into)
//!     ──▶ stats (per-shard counters + hdrhistogram, no atomics)
//! ```
//!
//! * [`runtime`] is the only module that names the executor (monoio by default,
//!   glommio behind the `runtime-glommio` feature).
//! * [`http1`] is sans-I/O: bytes in, parsed heads and forwarding plans out.
//! * [`agent`] runs on its own thread (tokio current-thread): admin endpoint,
//!   signals, configuration reloads, the connection acceptor for `cores > 1`.

pub mod accesslog;
pub mod admin;
pub mod config;
pub mod http1;
pub mod shard;
pub mod stats;
