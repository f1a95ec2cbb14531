//! Golden metrics per edge, per shard: for every (direction, source
//! service, destination service, route, subset, protocol) the requests by
//! status class or gRPC status, a latency histogram and bytes; for a TCP
//! service edge the connections (ok or failed), bytes and durations.
//!
//! Per request the shard does one FxHash lookup of the edge (its few short
//! names hashed together; no allocation once the edge has been seen) and a
//! handful of integer increments: the status count, two latency buckets
//! (one for Prometheus' `le` bounds, one of the fine log-linear buckets of
//! [`coremesh_api::latency`] that the summaries to control carry), bytes.
//! A new edge allocates its names and histogram once.
//!
//! Cardinality is bounded: services and routes come from the proxy's
//! configuration and control's policy, subsets from the Route backends,
//! statuses are a class (`1xx`..`5xx`, `none`) or one of the 17 gRPC codes,
//! and a shard keeps at most [`MAX_EDGES`] edges; further edges are counted
//! in one overflow edge per direction and protocol (source and destination
//! `other`) and in `coremesh_edge_overflow_total`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use coremesh_api::latency;
use coremesh_api::wire::{EdgeDirection, EdgeProtocol, EdgeSummary};
use rustc_hash::{FxHashMap, FxHasher};

use super::{push_header, push_label_value, Direction, BUCKETS};

/// Most edges one shard keeps. An edge costs about 2 KiB (its fine
/// histogram), so this is at most 1 MiB a shard.
pub const MAX_EDGES: usize = 512;

/// Source and destination of the overflow edge.
pub const OVERFLOW: &str = "other";

/// Status slots: HTTP classes `none`, `1xx`..`5xx` (0..=5), gRPC codes
/// 0..=16 (6..=22), a gRPC code above 16 (23), no gRPC status (24).
const STATUS_SLOTS: usize = 25;
const GRPC_BASE: usize = 6;
const GRPC_OTHER: usize = GRPC_BASE + 17;
const GRPC_NONE: usize = GRPC_BASE + 18;

/// How a request (or TCP connection) ended, as the edge counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP status (0: no response was sent).
    Http(u16),
    /// A gRPC call's final status (`None`: none arrived).
    Grpc(Option<u8>),
    /// A TCP connection that reached the service (`true`) or did not.
    Tcp(bool),
}

impl Outcome {
    fn slot(self) -> usize {
        match self {
            Outcome::Http(s) => super::class_index(s),
            Outcome::Grpc(Some(c)) if c <= 16 => GRPC_BASE + usize::from(c),
            Outcome::Grpc(Some(_)) => GRPC_OTHER,
            Outcome::Grpc(None) => GRPC_NONE,
            // The TCP result uses the first two slots: 0 failed, 1 ok.
            Outcome::Tcp(ok) => usize::from(ok),
        }
    }
}

/// Whether requests counted in `slot` of an edge of `protocol` failed.
fn failed(protocol: EdgeProtocol, slot: usize) -> bool {
    match protocol {
        // No response, or 5xx.
        EdgeProtocol::Http => slot == 0 || slot == 5,
        // Anything but OK (an HTTP-level answer without a gRPC status is
        // counted as no status).
        EdgeProtocol::Grpc => slot != GRPC_BASE,
        EdgeProtocol::Tcp => slot == 0,
    }
}

fn status_label(protocol: EdgeProtocol, slot: usize) -> std::borrow::Cow<'static, str> {
    match (protocol, slot) {
        (EdgeProtocol::Tcp, 0) => "failed".into(),
        (EdgeProtocol::Tcp, _) => "ok".into(),
        (_, s) if s < GRPC_BASE => super::CLASSES[s].into(),
        (_, GRPC_OTHER) => "other".into(),
        (_, GRPC_NONE) => "none".into(),
        (_, s) => (s - GRPC_BASE).to_string().into(),
    }
}

/// An edge as the request path names it: borrowed from the configuration
/// and the routing table, so recording allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct EdgeRef<'a> {
    pub dir: Direction,
    pub source: &'a str,
    pub destination: &'a str,
    /// `ROUTE#INDEX` of the Route rule, empty without one.
    pub route: &'a str,
    pub subset: &'a str,
    pub protocol: EdgeProtocol,
}

impl EdgeRef<'_> {
    fn hash(&self) -> u64 {
        let mut h = FxHasher::default();
        self.dir.hash(&mut h);
        self.protocol.hash(&mut h);
        self.source.hash(&mut h);
        self.destination.hash(&mut h);
        self.route.hash(&mut h);
        self.subset.hash(&mut h);
        h.finish()
    }
}

/// An edge's names, owned (shared with the snapshots).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeKey {
    pub dir: Direction,
    pub source: Arc<str>,
    pub destination: Arc<str>,
    pub route: Arc<str>,
    pub subset: Arc<str>,
    pub protocol: EdgeProtocol,
}

impl EdgeKey {
    fn is(&self, e: &EdgeRef<'_>) -> bool {
        self.dir == e.dir
            && self.protocol == e.protocol
            && *self.source == *e.source
            && *self.destination == *e.destination
            && *self.route == *e.route
            && *self.subset == *e.subset
    }
}

/// One edge's counters.
#[derive(Debug, Clone)]
pub struct EdgeCounts {
    status: [u64; STATUS_SLOTS],
    bytes_in: u64,
    bytes_out: u64,
    latency_sum_ns: u64,
    /// Per [`BUCKETS`] bound, then `+Inf`: not cumulative.
    prom: [u64; BUCKETS.len() + 1],
    /// [`latency::BUCKETS`] counts.
    fine: Box<[u64]>,
}

impl EdgeCounts {
    fn new() -> Self {
        EdgeCounts {
            status: [0; STATUS_SLOTS],
            bytes_in: 0,
            bytes_out: 0,
            latency_sum_ns: 0,
            prom: [0; BUCKETS.len() + 1],
            fine: vec![0; latency::BUCKETS].into_boxed_slice(),
        }
    }

    fn add(&mut self, o: &EdgeCounts) {
        for (a, b) in self.status.iter_mut().zip(&o.status) {
            *a += b;
        }
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.latency_sum_ns = self.latency_sum_ns.saturating_add(o.latency_sum_ns);
        for (a, b) in self.prom.iter_mut().zip(&o.prom) {
            *a += b;
        }
        for (a, b) in self.fine.iter_mut().zip(o.fine.iter()) {
            *a += b;
        }
    }

    fn requests(&self) -> u64 {
        self.status.iter().sum()
    }

    fn failures(&self, protocol: EdgeProtocol) -> u64 {
        self.status
            .iter()
            .enumerate()
            .filter(|(slot, _)| failed(protocol, *slot))
            .map(|(_, n)| n)
            .sum()
    }
}

/// One shard's edges. Owned and written by that shard only.
#[derive(Debug, Default)]
pub struct EdgeStats {
    edges: Vec<(EdgeKey, EdgeCounts)>,
    /// Hash of the edge's names -> indexes into `edges` (more than one
    /// only on a hash collision).
    index: FxHashMap<u64, Vec<u32>>,
    /// Requests and connections counted in an overflow edge.
    overflow: u64,
}

impl EdgeStats {
    /// One finished request or TCP connection on `edge`; `bytes_in` from
    /// the caller, `bytes_out` to it.
    pub fn record(
        &mut self,
        edge: &EdgeRef<'_>,
        outcome: Outcome,
        latency: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let i = self.slot(edge);
        let c = &mut self.edges[i].1;
        c.status[outcome.slot()] += 1;
        c.bytes_in = c.bytes_in.saturating_add(bytes_in);
        c.bytes_out = c.bytes_out.saturating_add(bytes_out);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        c.latency_sum_ns = c.latency_sum_ns.saturating_add(ns);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let b = BUCKETS
            .iter()
            .position(|&(le, _)| us <= le)
            .unwrap_or(BUCKETS.len());
        c.prom[b] += 1;
        c.fine[latency::bucket(us)] += 1;
    }

    fn slot(&mut self, edge: &EdgeRef<'_>) -> usize {
        let h = edge.hash();
        if let Some(ix) = self.index.get(&h) {
            if let Some(&i) = ix.iter().find(|&&i| self.edges[i as usize].0.is(edge)) {
                return i as usize;
            }
        }
        if self.edges.len() >= MAX_EDGES {
            self.overflow += 1;
            let other = EdgeRef {
                dir: edge.dir,
                source: OVERFLOW,
                destination: OVERFLOW,
                route: "",
                subset: "",
                protocol: edge.protocol,
            };
            let h = other.hash();
            if let Some(ix) = self.index.get(&h) {
                if let Some(&i) = ix.iter().find(|&&i| self.edges[i as usize].0.is(&other)) {
                    return i as usize;
                }
            }
            // The overflow edges (at most 6) may go past the cap.
            return self.insert(h, &other);
        }
        self.insert(h, edge)
    }

    fn insert(&mut self, h: u64, e: &EdgeRef<'_>) -> usize {
        let i = self.edges.len();
        self.edges.push((
            EdgeKey {
                dir: e.dir,
                source: Arc::from(e.source),
                destination: Arc::from(e.destination),
                route: Arc::from(e.route),
                subset: Arc::from(e.subset),
                protocol: e.protocol,
            },
            EdgeCounts::new(),
        ));
        self.index.entry(h).or_default().push(i as u32);
        i
    }

    /// An owned copy for the agent (allocates; taken a few times a second
    /// at most).
    pub fn snapshot(&self) -> EdgeSnapshot {
        EdgeSnapshot {
            edges: self.edges.clone(),
            overflow: self.overflow,
        }
    }
}

/// A copy of one shard's edges.
#[derive(Debug, Clone, Default)]
pub struct EdgeSnapshot {
    edges: Vec<(EdgeKey, EdgeCounts)>,
    overflow: u64,
}

/// The shards' edges merged (cores summed).
fn merge<'a>(
    shards: impl IntoIterator<Item = &'a EdgeSnapshot>,
) -> (BTreeMap<EdgeKey, EdgeCounts>, u64) {
    let mut m: BTreeMap<EdgeKey, EdgeCounts> = BTreeMap::new();
    let mut overflow = 0;
    for s in shards {
        overflow += s.overflow;
        for (k, c) in &s.edges {
            match m.get_mut(k) {
                Some(e) => e.add(c),
                None => {
                    m.insert(k.clone(), c.clone());
                }
            }
        }
    }
    (m, overflow)
}

/// `name{direction=..,source=..,destination=..,route=..,subset=..,protocol=..`
/// without the closing brace.
fn push_edge(out: &mut String, name: &str, suffix: &str, k: &EdgeKey, route: bool) {
    out.push_str(name);
    out.push_str(suffix);
    out.push_str("{direction=\"");
    out.push_str(k.dir.as_str());
    out.push_str("\",source=\"");
    push_label_value(out, &k.source);
    out.push_str("\",destination=\"");
    push_label_value(out, &k.destination);
    if route {
        out.push_str("\",route=\"");
        push_label_value(out, &k.route);
    }
    out.push_str("\",subset=\"");
    push_label_value(out, &k.subset);
    out.push_str("\",protocol=\"");
    out.push_str(k.protocol.as_str());
    out.push('"');
}

/// Renders the per-edge metrics, merged across cores (no `core` label).
pub fn render<'a>(shards: impl IntoIterator<Item = &'a EdgeSnapshot>, out: &mut String) {
    let (m, overflow) = merge(shards);
    let http = || m.iter().filter(|(k, _)| k.protocol != EdgeProtocol::Tcp);
    let tcp = || m.iter().filter(|(k, _)| k.protocol == EdgeProtocol::Tcp);

    let name = "coremesh_edge_requests_total";
    push_header(
        out,
        name,
        "counter",
        "Requests per edge (source -> destination service, Route rule, subset, protocol) by status: class 1xx..5xx or none for HTTP, the grpc-status code (or none) for gRPC.",
    );
    for (k, c) in http() {
        for (slot, &n) in c.status.iter().enumerate() {
            if n == 0 {
                continue;
            }
            push_edge(out, name, "", k, true);
            let _ = writeln!(out, ",status=\"{}\"}} {n}", status_label(k.protocol, slot));
        }
    }
    let name = "coremesh_edge_request_duration_seconds";
    push_header(
        out,
        name,
        "histogram",
        "Request latency per edge, first request byte to last response byte.",
    );
    for (k, c) in http() {
        render_histogram(out, name, k, true, c);
    }
    for (name, help, field) in [
        (
            "coremesh_edge_request_bytes_total",
            "Bytes from the caller per edge (request head and body).",
            0,
        ),
        (
            "coremesh_edge_response_bytes_total",
            "Bytes to the caller per edge (response head and body).",
            1,
        ),
    ] {
        push_header(out, name, "counter", help);
        for (k, c) in http() {
            push_edge(out, name, "", k, true);
            let v = if field == 0 { c.bytes_in } else { c.bytes_out };
            let _ = writeln!(out, "}} {v}");
        }
    }

    let name = "coremesh_edge_tcp_connections_total";
    push_header(
        out,
        name,
        "counter",
        "TCP service connections per edge, by result (ok, or failed: no endpoint reached).",
    );
    for (k, c) in tcp() {
        for (slot, result) in [(1, "ok"), (0, "failed")] {
            push_edge(out, name, "", k, false);
            let _ = writeln!(out, ",result=\"{result}\"}} {}", c.status[slot]);
        }
    }
    let name = "coremesh_edge_tcp_connection_duration_seconds";
    push_header(
        out,
        name,
        "histogram",
        "TCP service connection durations per edge.",
    );
    for (k, c) in tcp() {
        render_histogram(out, name, k, false, c);
    }
    for (name, help, field) in [
        (
            "coremesh_edge_tcp_sent_bytes_total",
            "TCP service bytes per edge relayed towards the destination.",
            0,
        ),
        (
            "coremesh_edge_tcp_received_bytes_total",
            "TCP service bytes per edge relayed back from the destination.",
            1,
        ),
    ] {
        push_header(out, name, "counter", help);
        for (k, c) in tcp() {
            push_edge(out, name, "", k, false);
            let v = if field == 0 { c.bytes_in } else { c.bytes_out };
            let _ = writeln!(out, "}} {v}");
        }
    }

    let name = "coremesh_edge_overflow_total";
    push_header(
        out,
        name,
        "counter",
        "Requests and TCP connections counted in the overflow edge (source and destination \"other\") because a core already tracked its maximum number of edges.",
    );
    let _ = writeln!(out, "{name} {overflow}");
}

fn render_histogram(out: &mut String, name: &str, k: &EdgeKey, route: bool, c: &EdgeCounts) {
    let mut running = 0u64;
    for ((_, label), n) in BUCKETS.iter().zip(&c.prom) {
        running += n;
        push_edge(out, name, "_bucket", k, route);
        let _ = writeln!(out, ",le=\"{label}\"}} {running}");
    }
    let count: u64 = c.prom.iter().sum();
    push_edge(out, name, "_bucket", k, route);
    let _ = writeln!(out, ",le=\"+Inf\"}} {count}");
    push_edge(out, name, "_sum", k, route);
    let _ = writeln!(out, "}} {}", c.latency_sum_ns as f64 / 1e9);
    push_edge(out, name, "_count", k, route);
    let _ = writeln!(out, "}} {count}");
}

/// What a summary to control is keyed by: routes are summed.
type SummaryKey = (Direction, Arc<str>, Arc<str>, Arc<str>, EdgeProtocol);

/// Cumulative totals per summary key, kept by the agent between two
/// summaries so it sends what changed.
#[derive(Debug, Default)]
pub struct SummaryState {
    last: BTreeMap<SummaryKey, (u64, u64, Box<[u64]>)>,
}

impl SummaryState {
    /// The edges' counts since the previous call, from the shards'
    /// current (cumulative) snapshots. A counter that went down (a shard
    /// left out of this collection) counts as no change.
    pub fn delta<'a>(
        &mut self,
        shards: impl IntoIterator<Item = &'a EdgeSnapshot>,
    ) -> Vec<EdgeSummary> {
        let (m, _) = merge(shards);
        let mut now: BTreeMap<SummaryKey, (u64, u64, Box<[u64]>)> = BTreeMap::new();
        for (k, c) in &m {
            let key = (
                k.dir,
                k.source.clone(),
                k.destination.clone(),
                k.subset.clone(),
                k.protocol,
            );
            let e = now
                .entry(key)
                .or_insert_with(|| (0, 0, vec![0; latency::BUCKETS].into_boxed_slice()));
            e.0 += c.requests();
            e.1 += c.failures(k.protocol);
            for (a, b) in e.2.iter_mut().zip(c.fine.iter()) {
                *a += b;
            }
        }
        let mut out = Vec::new();
        for (key, (req, fail, fine)) in &now {
            let (preq, pfail, pfine) = match self.last.get(key) {
                Some((r, f, h)) => (*r, *f, Some(h)),
                None => (0, 0, None),
            };
            let requests = req.saturating_sub(preq);
            if requests == 0 {
                continue;
            }
            let dense: Vec<u64> = match pfine {
                Some(p) => fine
                    .iter()
                    .zip(p.iter())
                    .map(|(a, b)| a.saturating_sub(*b))
                    .collect(),
                None => fine.to_vec(),
            };
            let (dir, source, destination, subset, protocol) = key;
            out.push(EdgeSummary {
                direction: match dir {
                    Direction::Inbound => EdgeDirection::Inbound,
                    Direction::Outbound => EdgeDirection::Outbound,
                },
                source: source.to_string(),
                destination: destination.to_string(),
                subset: subset.to_string(),
                protocol: *protocol,
                requests,
                failures: fail.saturating_sub(pfail),
                latency: latency::sparse(&dense),
            });
        }
        // Keep the larger of old and new, so a shard missing from one
        // collection does not make its counts look new the next time.
        for (key, v) in now {
            match self.last.get_mut(&key) {
                Some(old) if old.0 > v.0 => {}
                Some(old) => *old = v,
                None => {
                    self.last.insert(key, v);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
