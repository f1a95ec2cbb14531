//! Per-shard keep-alive pools of upstream connections.
//!
//! Each shard keeps its own idle connections per endpoint (no sharing across
//! cores). Idle connections hold no buffer. Connections are reused most
//! recently used first, which keeps the set of warm connections small and
//! lets the oldest ones age out; entries idle longer than
//! `upstream.pool_idle_timeout` are closed by [`UpstreamPool::sweep`] and
//! skipped by [`UpstreamPool::take`].

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::conn::Conn;

struct Idle {
    stream: Conn,
    since: Instant,
    /// The connection's slot under its service's `maxConnections`, held
    /// while it is pooled too (released when it is closed).
    permit: Option<Permit>,
}

/// A circuit-breaker slot that goes with a connection.
pub type Permit = crate::resilience::Permit;

/// One shard's idle upstream connections.
#[derive(Default)]
pub struct UpstreamPool {
    /// FxHash: a take and a put per request, keyed by our own endpoints.
    idle: RefCell<FxHashMap<SocketAddr, Vec<Idle>>>,
}

impl UpstreamPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// The most recently used idle connection to `addr` that has not expired,
    /// with how long it sat idle.
    pub fn take(
        &self,
        addr: SocketAddr,
        now: Instant,
        max_idle: Duration,
    ) -> Option<(Conn, Duration, Option<Permit>)> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            let age = now.saturating_duration_since(c.since);
            if age < max_idle {
                return Some((c.stream, age, c.permit));
            }
        }
        None
    }

    /// Keeps `stream` (and its breaker slot) for reuse unless `addr` already
    /// has `cap` idle connections.
    pub fn put(
        &self,
        addr: SocketAddr,
        stream: Conn,
        permit: Option<Permit>,
        now: Instant,
        cap: usize,
    ) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < cap {
            list.push(Idle {
                stream,
                since: now,
                permit,
            });
        }
    }

    /// Closes the oldest idle connection whose breaker slot `is_mine`
    /// (freeing the slot); whether there was one.
    pub fn evict_one(&self, is_mine: impl Fn(&Permit) -> bool) -> bool {
        let mut idle = self.idle.borrow_mut();
        let mut oldest: Option<(SocketAddr, usize, Instant)> = None;
        for (addr, list) in idle.iter() {
            for (i, c) in list.iter().enumerate() {
                if c.permit.as_ref().is_some_and(&is_mine)
                    && oldest.is_none_or(|(_, _, t)| c.since < t)
                {
                    oldest = Some((*addr, i, c.since));
                }
            }
        }
        match oldest {
            Some((addr, i, _)) => {
                if let Some(list) = idle.get_mut(&addr) {
                    list.remove(i);
                }
                true
            }
            None => false,
        }
    }

    /// Closes connections idle for `max_idle` or longer.
    pub fn sweep(&self, now: Instant, max_idle: Duration) {
        let mut idle = self.idle.borrow_mut();
        idle.retain(|_, list| {
            list.retain(|c| now.saturating_duration_since(c.since) < max_idle);
            !list.is_empty()
        });
    }
}
