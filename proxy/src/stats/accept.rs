//! Accept failures, process-wide:
//! `coremesh_accept_failures_total{listener, reason}`.
//!
//! Accepting fails rarely (out of descriptors or memory) and never on the
//! request path, and both the shards and the agent's acceptor count here,
//! so these are plain atomics rather than per-shard counters.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which kind of listener failed to accept (the `listener` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// `[outbound] listen`, TCP or a Unix socket file.
    Outbound,
    /// `[inbound] listen`.
    Inbound,
    /// A `[[outbound.tcp]]` TCP service's listener.
    Tcp,
    /// `[proxy] admin`.
    Admin,
}

const LISTENERS: [(Listener, &str); 4] = [
    (Listener::Outbound, "outbound"),
    (Listener::Inbound, "inbound"),
    (Listener::Tcp, "tcp"),
    (Listener::Admin, "admin"),
];

const REASONS: [&str; 3] = ["descriptors", "memory", "other"];

/// The counters: one per listener kind and reason.
pub struct AcceptFailures {
    counts: [[AtomicU64; 3]; 4],
}

/// Every listener of the process counts here.
pub static ACCEPT_FAILURES: AcceptFailures = AcceptFailures::new();

impl AcceptFailures {
    #[allow(clippy::declare_interior_mutable_const)] // only to fill the arrays below
    const fn new() -> AcceptFailures {
        const ZERO: AtomicU64 = AtomicU64::new(0);
        const ROW: [AtomicU64; 3] = [ZERO; 3];
        AcceptFailures { counts: [ROW; 4] }
    }

    /// Counts one failed accept on a `listener`; returns how long to pause
    /// before the next (out of descriptors or memory, the connection stays
    /// queued: waiting for some to come back beats spinning on the same
    /// error).
    pub fn count(&self, listener: Listener, e: &io::Error) -> std::time::Duration {
        let (reason, pause_ms) = match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => (0, 100),
            Some(libc::ENOBUFS | libc::ENOMEM) => (1, 100),
            _ => (2, 10),
        };
        self.counts[listener as usize][reason].fetch_add(1, Ordering::Relaxed);
        std::time::Duration::from_millis(pause_ms)
    }

    /// The Prometheus lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str("# HELP coremesh_accept_failures_total Failed accepts on the proxy's listeners, by listener and reason (descriptors: EMFILE or ENFILE; memory: ENOBUFS or ENOMEM).\n");
        out.push_str("# TYPE coremesh_accept_failures_total counter\n");
        for (listener, name) in LISTENERS {
            for (reason, c) in REASONS.iter().zip(&self.counts[listener as usize]) {
                let _ = writeln!(
                    out,
                    "coremesh_accept_failures_total{{listener=\"{name}\",reason=\"{reason}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
