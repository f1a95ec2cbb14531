//! What each shard saw of each upstream endpoint, for the decisions made
//! once per proxy on the agent thread (outlier ejection; docs/design.md: endpoint
//! state is decided on the agent and broadcast to every shard).
//!
//! A shard counts per endpoint, per period: successes, failures (connect
//! failure, reset, timeout, 5xx) and the failures in a row at the end of the
//! period. Every [`REPORT_EVERY`] the counts go to the agent in one message
//! and start again; a period with no traffic sends nothing.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use rustc_hash::FxHashMap;

/// How often a shard reports (and how stale an ejection decision can be).
pub const REPORT_EVERY: Duration = Duration::from_millis(200);

/// One endpoint's outcomes on one shard during one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u32,
    pub failed: u32,
    /// Failures since the last success (carried across periods).
    pub in_a_row: u32,
}

/// A shard's counters.
#[derive(Default)]
pub struct Outcomes {
    /// FxHash: one update per try, keyed by our own endpoints.
    by_endpoint: RefCell<FxHashMap<SocketAddr, Counts>>,
}

impl Outcomes {
    /// One try's outcome: `ok` is a response below 500.
    pub fn record(&self, addr: SocketAddr, ok: bool) {
        let mut m = self.by_endpoint.borrow_mut();
        let c = m.entry(addr).or_default();
        if ok {
            c.ok += 1;
            c.in_a_row = 0;
        } else {
            c.failed += 1;
            c.in_a_row += 1;
        }
    }

    /// The period's counts (endpoints with traffic), clearing them; the
    /// failures in a row stay for the next period.
    pub fn take(&self) -> Vec<(SocketAddr, Counts)> {
        let mut m = self.by_endpoint.borrow_mut();
        let out: Vec<_> = m
            .iter()
            .filter(|(_, c)| c.ok + c.failed > 0)
            .map(|(a, c)| (*a, *c))
            .collect();
        m.retain(|_, c| c.in_a_row > 0);
        for c in m.values_mut() {
            c.ok = 0;
            c.failed = 0;
        }
        out
    }
}

#[cfg(test)]
mod tests;
