//! Endpoints a shard has just seen fail, kept out of its picks at once.
//!
//! Outlier detection ejects on the agent's period and control withdraws on
//! its health checks: both take a second or more, and neither works while
//! control is down. A connection refused or reset, a connect timeout or a
//! try that timed out on an established connection is a strong signal on
//! its own, so the shard that saw it stops choosing that endpoint for a
//! backoff: 1 s after the first failure, doubling with each failure in a
//! row, at most [`MAX_DOWN`]. When the backoff is over, the next request
//! that picks the endpoint is its probe: a success clears it, a failure
//! marks it down again for twice as long (and a retry covers that request).
//!
//! Per shard, no allocation on the request path once an endpoint has an
//! entry; entries are dropped on success and when the set grows past
//! [`MAX_ENTRIES`] (the oldest backoff first).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::error::ErrorKind;

/// The first backoff.
pub const FIRST_DOWN: Duration = Duration::from_secs(1);
/// The longest backoff.
pub const MAX_DOWN: Duration = Duration::from_secs(30);
/// Endpoints remembered at most (a shard talks to far fewer).
const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Down {
    until: Instant,
    /// Failures in a row.
    strikes: u32,
}

/// One shard's endpoints down after a failure of their own.
#[derive(Debug, Default)]
pub struct LocalDown {
    down: FxHashMap<SocketAddr, Down>,
}

impl LocalDown {
    /// Whether a failed try of `kind` says the endpoint itself is down
    /// (rather than the request, the client, or a policy of this proxy).
    pub fn marks(kind: ErrorKind) -> bool {
        matches!(
            kind,
            ErrorKind::ConnectFailed
                | ErrorKind::ConnectTimeout
                | ErrorKind::PeerIdentityMismatch
                | ErrorKind::UpstreamReset
                | ErrorKind::UpstreamTimeout
                | ErrorKind::PeerAppUnreachable
        )
    }

    /// `addr` failed at `now`: down until the returned time.
    pub fn fail(&mut self, addr: SocketAddr, now: Instant) -> Instant {
        if self.down.len() >= MAX_ENTRIES && !self.down.contains_key(&addr) {
            if let Some(oldest) = self
                .down
                .iter()
                .min_by_key(|(_, d)| d.until)
                .map(|(a, _)| *a)
            {
                self.down.remove(&oldest);
            }
        }
        let d = self.down.entry(addr).or_insert(Down {
            until: now,
            strikes: 0,
        });
        d.strikes = d.strikes.saturating_add(1);
        let backoff = FIRST_DOWN
            .checked_mul(1u32 << (d.strikes - 1).min(16))
            .unwrap_or(MAX_DOWN)
            .min(MAX_DOWN);
        d.until = now + backoff;
        d.until
    }

    /// `addr` answered: it is up.
    pub fn succeed(&mut self, addr: SocketAddr) {
        if !self.down.is_empty() {
            self.down.remove(&addr);
        }
    }

    /// Whether `addr` is down at `now`.
    pub fn is_down(&self, addr: SocketAddr, now: Instant) -> bool {
        !self.down.is_empty() && self.down.get(&addr).is_some_and(|d| now < d.until)
    }
}

#[cfg(test)]
mod tests;
