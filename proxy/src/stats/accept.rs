//! Accept failures, process-wide: `coremesh_accept_failures_total{reason}`.
//!
//! Accepting fails rarely (out of descriptors or memory) and never on the
//! request path, and both the shards and the agent's acceptor count here,
//! so these are plain atomics rather than per-shard counters.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// The counters; one per reason.
pub struct AcceptFailures {
    descriptors: AtomicU64,
    memory: AtomicU64,
    other: AtomicU64,
}

/// Every listener of the process counts here.
pub static ACCEPT_FAILURES: AcceptFailures = AcceptFailures {
    descriptors: AtomicU64::new(0),
    memory: AtomicU64::new(0),
    other: AtomicU64::new(0),
};

impl AcceptFailures {
    /// Counts one failed accept; returns how long to pause before the next
    /// (out of descriptors or memory, the connection stays queued: waiting
    /// for some to come back beats spinning on the same error).
    pub fn count(&self, e: &io::Error) -> std::time::Duration {
        let (counter, pause_ms) = match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => (&self.descriptors, 100),
            Some(libc::ENOBUFS | libc::ENOMEM) => (&self.memory, 100),
            _ => (&self.other, 10),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        std::time::Duration::from_millis(pause_ms)
    }

    /// The Prometheus lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str("# HELP coremesh_accept_failures_total Failed accepts on the proxy's listeners, by reason (descriptors: EMFILE or ENFILE; memory: ENOBUFS or ENOMEM).\n");
        out.push_str("# TYPE coremesh_accept_failures_total counter\n");
        for (reason, c) in [
            ("descriptors", &self.descriptors),
            ("memory", &self.memory),
            ("other", &self.other),
        ] {
            let _ = writeln!(
                out,
                "coremesh_accept_failures_total{{reason=\"{reason}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests;
