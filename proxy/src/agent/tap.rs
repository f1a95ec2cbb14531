//! The agent's side of `meshctl tap`: starts and stops taps on the shards
//! as control asks (TapStart / TapStop), collects the records the shards
//! hand over (crate::tap) and batches them for control (TapRecords).
//!
//! A [`Tapper`] lives as long as one control session: when the session
//! ends, every tap it started ends with it. Each tap also ends by itself
//! when control has not renewed it within its TTL, so a control that died
//! (or a TapStop that was lost) never leaves the shards tapping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coremesh_api::wire::{ProxyMsg, TapRecord};
use tokio::time::Instant;

use crate::msg::{ShardHandle, ShardMsg};
use crate::tap::TapSpec;

/// Records waiting between the shards and the agent (all taps).
const QUEUE: usize = 1024;
/// Records in one TapRecords message at most.
const BATCH: usize = 256;
/// The longest TTL control may ask for.
const MAX_TTL: Duration = Duration::from_secs(60);

struct Running {
    spec: Arc<TapSpec>,
    /// Parameters as control sent them, to tell a renewal from a change.
    params: (Option<String>, u32),
    until: Instant,
}

/// The taps of one control session.
pub struct Tapper {
    shards: Vec<ShardHandle>,
    tx: async_channel::Sender<(u64, TapRecord)>,
    rx: async_channel::Receiver<(u64, TapRecord)>,
    taps: HashMap<u64, Running>,
}

impl Tapper {
    pub fn new(shards: Vec<ShardHandle>) -> Tapper {
        let (tx, rx) = async_channel::bounded(QUEUE);
        Tapper {
            shards,
            tx,
            rx,
            taps: HashMap::new(),
        }
    }

    /// TapStart: a new tap, a changed one, or a renewal (which only moves
    /// its deadline).
    pub fn start(&mut self, id: u64, path_prefix: Option<String>, max_rps: u32, ttl: Duration) {
        let until = Instant::now() + ttl.min(MAX_TTL);
        let params = (path_prefix, max_rps);
        if let Some(r) = self.taps.get_mut(&id) {
            if r.params == params {
                r.until = until;
                return;
            }
        }
        let cores = self.shards.len().max(1) as u32;
        let spec = Arc::new(TapSpec {
            id,
            path_prefix: params
                .0
                .as_deref()
                .map(|p| p.as_bytes().to_vec().into_boxed_slice()),
            per_shard_rps: max_rps.div_ceil(cores).max(1),
            tx: self.tx.clone(),
            dropped: AtomicU64::new(0),
        });
        tracing::info!(
            tap = id,
            path = params.0.as_deref().unwrap_or("any"),
            max_rps,
            "tap started by control"
        );
        self.taps.insert(
            id,
            Running {
                spec,
                params,
                until,
            },
        );
        self.publish();
    }

    /// TapStop.
    pub fn stop(&mut self, id: u64) {
        if self.taps.remove(&id).is_some() {
            tracing::info!(tap = id, "tap stopped by control");
            self.publish();
        }
    }

    /// When the next tap expires, if any runs.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.taps.values().map(|r| r.until).min()
    }

    /// Ends the taps whose TTL passed without a renewal.
    pub fn expire(&mut self, now: Instant) {
        let before = self.taps.len();
        self.taps.retain(|id, r| {
            let keep = r.until > now;
            if !keep {
                tracing::info!(tap = id, "tap expired: control did not renew it");
            }
            keep
        });
        if self.taps.len() != before {
            self.publish();
        }
    }

    /// Waits for records, then takes what is there (at most [`BATCH`]):
    /// one TapRecords per running tap that has any. Never completes while
    /// no tap runs (the channel's sender lives in `self`).
    pub async fn batch(&self) -> Vec<ProxyMsg> {
        let Ok(first) = self.rx.recv().await else {
            return Vec::new();
        };
        let mut by_tap: HashMap<u64, Vec<TapRecord>> = HashMap::new();
        let mut add = |(id, r): (u64, TapRecord)| by_tap.entry(id).or_default().push(r);
        add(first);
        for _ in 1..BATCH {
            match self.rx.try_recv() {
                Ok(more) => add(more),
                Err(_) => break,
            }
        }
        by_tap
            .into_iter()
            .filter_map(|(tap, records)| {
                // Records of a tap stopped meanwhile are left out.
                let running = self.taps.get(&tap)?;
                Some(ProxyMsg::TapRecords {
                    tap,
                    records,
                    dropped: running.spec.dropped.swap(0, Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// For each running tap that dropped records since the last report
    /// (and has no records to carry the count): a TapRecords with none.
    /// Sent every heartbeat, so `meshctl tap` learns of drops in a quiet
    /// stretch too.
    pub fn dropped_reports(&self) -> Vec<ProxyMsg> {
        self.taps
            .iter()
            .filter_map(|(tap, r)| {
                let dropped = r.spec.dropped.swap(0, Ordering::Relaxed);
                (dropped > 0).then(|| ProxyMsg::TapRecords {
                    tap: *tap,
                    records: Vec::new(),
                    dropped,
                })
            })
            .collect()
    }

    /// Hands every shard the list of running taps.
    fn publish(&self) {
        let list: Arc<Vec<Arc<TapSpec>>> =
            Arc::new(self.taps.values().map(|r| r.spec.clone()).collect());
        for h in &self.shards {
            if h.tx.try_send(ShardMsg::Tap(list.clone())).is_err() {
                tracing::warn!(shard = h.index, "cannot reach the shard to change its taps");
            }
        }
    }
}

impl Drop for Tapper {
    /// The session ended: its taps end too.
    fn drop(&mut self) {
        if !self.taps.is_empty() {
            self.taps.clear();
            self.publish();
            tracing::info!("taps stopped: the control session ended");
        }
    }
}

#[cfg(test)]
mod tests;
