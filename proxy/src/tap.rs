//! Taps on the request path (`meshctl tap`): the shard's side.
//!
//! The agent starts a tap when control asks (agent/tap.rs) and hands every
//! shard the list of running taps ([`crate::msg::ShardMsg::Tap`]); a shard
//! keeps it in its [`ShardTap`]. Per request the shard asks
//! [`ShardTap::begin`], which, with no tap running (always, but for the
//! minutes an operator watches), is one look at an empty list. A request a
//! tap wants (its path matches, and the shard's share of the tap's rate is
//! not used up this second) gets its request line's fields copied, then
//! [`ShardTap::finish`] adds how it ended and hands the record to the agent
//! over a bounded channel: `try_send`, so a full channel drops the record
//! (counted) and the request never waits.
//!
//! What a record holds: method, authority, path (without the query),
//! the caller's SPIFFE ID, status, latency, and the trace id read from the
//! `traceparent` header. Never a body, nor any other header value.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coremesh_api::wire::TapRecord;

use crate::route::RequestView;
use crate::stats::Direction;

/// One running tap, as every shard sees it.
#[derive(Debug)]
pub struct TapSpec {
    pub id: u64,
    /// Only requests whose path starts with this.
    pub path_prefix: Option<Box<[u8]>>,
    /// Records each shard may hand over per second.
    pub per_shard_rps: u32,
    /// To the agent: bounded, never waited on.
    pub tx: async_channel::Sender<(u64, TapRecord)>,
    /// Records left out (over the rate or a full channel) since the agent
    /// last read this.
    pub dropped: AtomicU64,
}

impl TapSpec {
    fn wants(&self, path: &[u8]) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|prefix| path.starts_with(prefix))
    }
}

/// The taps running, on one shard.
#[derive(Debug, Default)]
pub struct ShardTap {
    taps: RefCell<Arc<Vec<Arc<TapSpec>>>>,
    /// Start of the current one-second window, and the records in it per
    /// tap (in the order of `taps`).
    window: Cell<Option<Instant>>,
    counts: RefCell<Vec<u32>>,
}

/// A request being tapped: its record so far, and the taps that want it.
pub struct Tapped {
    record: TapRecord,
    taps: Vec<Arc<TapSpec>>,
}

impl ShardTap {
    /// The agent's new list of running taps.
    pub fn set(&self, taps: Arc<Vec<Arc<TapSpec>>>) {
        self.counts.replace(vec![0; taps.len()]);
        self.taps.replace(taps);
    }

    /// Whether any tap wants this request (and may take it this second):
    /// then its fields, copied. `caller` is the peer's SPIFFE ID.
    #[inline]
    pub fn begin<R: RequestView>(
        &self,
        dir: Direction,
        req: &R,
        caller: Option<&str>,
        now: Instant,
    ) -> Option<Tapped> {
        if self.taps.borrow().is_empty() {
            return None;
        }
        self.begin_tapped(dir, req, caller, now)
    }

    #[cold]
    fn begin_tapped<R: RequestView>(
        &self,
        dir: Direction,
        req: &R,
        caller: Option<&str>,
        now: Instant,
    ) -> Option<Tapped> {
        let path = without_query(req.path_and_query());
        let taps = self.taps.borrow();
        if self
            .window
            .get()
            .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(1))
        {
            self.window.set(Some(now));
            self.counts.borrow_mut().fill(0);
        }
        let mut counts = self.counts.borrow_mut();
        let mut wanted = Vec::new();
        for (tap, count) in taps.iter().zip(counts.iter_mut()) {
            if !tap.wants(path) {
                continue;
            }
            if *count >= tap.per_shard_rps {
                tap.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            *count += 1;
            wanted.push(tap.clone());
        }
        if wanted.is_empty() {
            return None;
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Some(Tapped {
            record: TapRecord {
                at_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                direction: dir.as_str().to_string(),
                caller: caller.map(str::to_string),
                service: String::new(),
                method: text(req.method()),
                authority: text(req.authority().unwrap_or_default()),
                path: text(path),
                status: 0,
                latency_us: 0,
                trace_id: req.header("traceparent").and_then(trace_id),
            },
            taps: wanted,
        })
    }

    /// The request ended: its record goes to the agent (or is counted as
    /// dropped if the channel is full).
    pub fn finish(&self, tapped: Option<Tapped>, service: &str, status: u16, latency: Duration) {
        let Some(Tapped { mut record, taps }) = tapped else {
            return;
        };
        record.service = service.to_string();
        record.status = status;
        record.latency_us = latency.as_micros() as u64;
        for tap in taps {
            if tap.tx.is_closed() {
                continue;
            }
            if tap.tx.try_send((tap.id, record.clone())).is_err() {
                tap.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn without_query(path_and_query: &[u8]) -> &[u8] {
    match path_and_query.iter().position(|&b| b == b'?') {
        Some(q) => &path_and_query[..q],
        None => path_and_query,
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`):
/// its 32 hex digits, lowercased; `None` when malformed or all zeros.
pub fn trace_id(traceparent: &[u8]) -> Option<String> {
    let id = traceparent.get(3..35)?;
    let well_formed = traceparent.len() >= 55
        && traceparent[2] == b'-'
        && traceparent[35] == b'-'
        && id.iter().all(u8::is_ascii_hexdigit)
        && id.iter().any(|&b| b != b'0');
    well_formed.then(|| String::from_utf8_lossy(id).to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
