//! Per-shard statistics.
//!
//! Data flow: every shard owns one [`ShardStats`] and updates it with plain
//! integer arithmetic (no atomics, no locks: the shard is the only writer).
//! When the agent asks (a few times a second at most), the shard answers with a
//! [`ShardSnapshot`], an owned copy that crosses to the agent thread. The agent
//! merges the snapshots of all shards at render time: [`render_prometheus`] for
//! `/metrics`, [`cores_json`] for `/stats/cores`.
//!
//! Per request the cost is one hash lookup of the service name (no allocation
//! once the service has been seen), a handful of integer additions and one
//! histogram record. A new service allocates its entry and histogram once.
//!
//! Cardinality is bounded: a shard tracks at most [`MAX_SERVICES`] distinct
//! (direction, service) pairs; requests for further services are counted under
//! the service name [`OTHER_SERVICE`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;

pub mod accept;
pub mod edge;
mod h2;
mod mesh;
pub use h2::{H2Stats, ResetBy};
pub use mesh::MeshStats;

/// Which listener a request or connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    /// Both directions, in the order they are rendered.
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    /// The label value used in metrics, JSON and access logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    fn idx(self) -> usize {
        match self {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        }
    }
}

/// Most distinct (direction, service) pairs one shard tracks. Each pair costs
/// about 20 KiB (mostly its histogram), so this bounds a shard's stats memory
/// at about 20 MiB even when callers pass unbounded names (e.g. a `Host:`
/// header that resolved to nothing but was not folded into "unknown").
pub const MAX_SERVICES: usize = 1024;

/// The service name requests are counted under once [`MAX_SERVICES`] is reached.
pub const OTHER_SERVICE: &str = "other";

/// Histogram range: 1 µs ..= 60 s. Longer requests are recorded as 60 s, which
/// still lands them in the `+Inf` bucket (the largest finite bucket is 10 s).
const HIST_LOW_US: u64 = 1;
const HIST_HIGH_US: u64 = 60_000_000;
/// Two significant figures: values are kept within 1%, which is finer than the
/// spacing of the exported buckets, at ~20 KiB per histogram.
const HIST_SIGFIG: u8 = 2;

/// Status classes, indexed by [`class_index`].
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// `status` 0 (no response sent) and anything that is not a valid HTTP status
/// code (outside 100..=599) count as `none`.
fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100),
        _ => 0,
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("static histogram bounds are valid")
}

/// Counters for one (direction, service) on one shard.
#[derive(Debug, Clone)]
struct ServiceStats {
    direction: Direction,
    /// Shared with the snapshots, so a snapshot does not copy the name.
    service: Arc<str>,
    by_class: [u64; CLASSES.len()],
    bytes_in: u64,
    bytes_out: u64,
    /// Exact sum of latencies (for the `_sum` series), in nanoseconds; it
    /// would take 584 years of summed latency to saturate.
    latency_sum_ns: u64,
    latency_us: Histogram<u64>,
}

impl ServiceStats {
    fn new(direction: Direction, service: Arc<str>) -> Self {
        ServiceStats {
            direction,
            service,
            by_class: [0; CLASSES.len()],
            bytes_in: 0,
            bytes_out: 0,
            latency_sum_ns: 0,
            latency_us: new_histogram(),
        }
    }
}

/// One shard's counters. Owned and written by that shard only.
#[derive(Debug)]
pub struct ShardStats {
    core: usize,
    requests: u64,
    conns_open: [u64; 2],
    conns_total: [u64; 2],
    services: Vec<ServiceStats>,
    /// Per direction: service name -> index into `services`. `Arc<str>`
    /// borrows as `str`, so lookups by `&str` do not allocate.
    /// FxHash: one lookup per request, keyed by service names the proxy
    /// resolved itself (bounded by MAX_SERVICES).
    index: [FxHashMap<Arc<str>, usize>; 2],
    /// TLS, authorization and TCP counters.
    pub mesh: MeshStats,
    /// HTTP/2 and gRPC counters.
    pub h2: H2Stats,
    /// Golden metrics per edge.
    pub edges: edge::EdgeStats,
}

impl ShardStats {
    pub fn new(core: usize) -> Self {
        ShardStats {
            core,
            requests: 0,
            conns_open: [0; 2],
            conns_total: [0; 2],
            services: Vec::new(),
            index: [FxHashMap::default(), FxHashMap::default()],
            mesh: MeshStats::default(),
            h2: H2Stats::default(),
            edges: edge::EdgeStats::default(),
        }
    }

    pub fn conn_opened(&mut self, dir: Direction) {
        self.conns_open[dir.idx()] += 1;
        self.conns_total[dir.idx()] += 1;
    }

    pub fn conn_closed(&mut self, dir: Direction) {
        // Saturating: a close without its open (a caller bug) must not wrap
        // the gauge to 2^64.
        let open = &mut self.conns_open[dir.idx()];
        *open = open.saturating_sub(1);
    }

    /// One finished request. `service` is the destination service (outbound)
    /// or the local service (inbound); callers pass "unknown" for names they
    /// could not resolve. `status` 0 means no response was sent.
    pub fn record(
        &mut self,
        dir: Direction,
        service: &str,
        status: u16,
        latency: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        self.requests += 1;
        let i = self.service_index(dir, service);
        let s = &mut self.services[i];
        s.by_class[class_index(status)] += 1;
        s.bytes_in = s.bytes_in.saturating_add(bytes_in);
        s.bytes_out = s.bytes_out.saturating_add(bytes_out);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        s.latency_sum_ns = s.latency_sum_ns.saturating_add(ns);
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(HIST_LOW_US, HIST_HIGH_US);
        s.latency_us.saturating_record(us);
    }

    fn service_index(&mut self, dir: Direction, service: &str) -> usize {
        if let Some(&i) = self.index[dir.idx()].get(service) {
            return i;
        }
        let name = if self.services.len() >= MAX_SERVICES {
            if let Some(&i) = self.index[dir.idx()].get(OTHER_SERVICE) {
                return i;
            }
            OTHER_SERVICE
        } else {
            service
        };
        let name: Arc<str> = Arc::from(name);
        let i = self.services.len();
        self.services.push(ServiceStats::new(dir, name.clone()));
        self.index[dir.idx()].insert(name, i);
        i
    }

    /// An owned copy for the agent. Allocates (the histograms are copied), so
    /// it is taken on request, a few times a second at most.
    pub fn snapshot(&self) -> ShardSnapshot {
        let mut services: Vec<ServiceSnapshot> = self
            .services
            .iter()
            .map(|s| ServiceSnapshot {
                direction: s.direction,
                service: s.service.clone(),
                by_class: s.by_class,
                bytes_in: s.bytes_in,
                bytes_out: s.bytes_out,
                latency_sum_ns: s.latency_sum_ns,
                latency_us: s.latency_us.clone(),
            })
            .collect();
        services.sort_by(|a, b| (a.direction, &a.service).cmp(&(b.direction, &b.service)));
        ShardSnapshot {
            core: self.core,
            requests: self.requests,
            conns_open: self.conns_open,
            conns_total: self.conns_total,
            services,
            mesh: self.mesh.clone(),
            h2: self.h2.clone(),
            edges: self.edges.snapshot(),
        }
    }
}

/// A point-in-time copy of one shard's stats. `Send`: it crosses from the
/// shard to the agent thread.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub core: usize,
    requests: u64,
    conns_open: [u64; 2],
    conns_total: [u64; 2],
    /// Sorted by (direction, service).
    services: Vec<ServiceSnapshot>,
    mesh: MeshStats,
    h2: H2Stats,
    pub edges: edge::EdgeSnapshot,
}

#[derive(Debug, Clone)]
struct ServiceSnapshot {
    direction: Direction,
    service: Arc<str>,
    by_class: [u64; CLASSES.len()],
    bytes_in: u64,
    bytes_out: u64,
    latency_sum_ns: u64,
    latency_us: Histogram<u64>,
}

impl ShardSnapshot {
    /// All requests recorded on this shard.
    #[cfg(test)]
    pub fn requests(&self) -> u64 {
        self.requests
    }

    pub fn connections_open(&self, dir: Direction) -> u64 {
        self.conns_open[dir.idx()]
    }

    pub fn connections_total(&self, dir: Direction) -> u64 {
        self.conns_total[dir.idx()]
    }

    /// Latency of every request on this shard, all services merged, in µs.
    fn merged_latency(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in &self.services {
            // Same bounds on both sides, so `add` cannot fail.
            let _ = h.add(&s.latency_us);
        }
        h
    }
}

/// Bucket bounds of `coremesh_request_duration_seconds`: (µs, label).
const BUCKETS: [(u64, &str); 16] = [
    (100, "0.0001"),
    (250, "0.00025"),
    (500, "0.0005"),
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
];

/// Writes a label value escaped per the text format 0.0.4: `\`, `"` and
/// newline are backslash-escaped.
fn push_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `name suffix{direction="..",service=".."` without the closing brace, so
/// callers can append more labels.
fn push_dir_service(out: &mut String, name: &str, suffix: &str, dir: Direction, service: &str) {
    out.push_str(name);
    out.push_str(suffix);
    out.push_str("{direction=\"");
    out.push_str(dir.as_str());
    out.push_str("\",service=\"");
    push_label_value(out, service);
    out.push('"');
}

/// Renders the snapshots of all shards in the Prometheus text format 0.0.4.
/// Counters and gauges keep a `core` label; the latency histogram is merged
/// across cores. Series are sorted by labels so output is stable.
pub fn render_prometheus(snaps: &[ShardSnapshot], out: &mut String) {
    let mut snaps: Vec<&ShardSnapshot> = snaps.iter().collect();
    snaps.sort_by_key(|s| s.core);
    // Rows sorted by (direction, service, core): one family's lines group the
    // same service together.
    let mut rows: Vec<(&ShardSnapshot, &ServiceSnapshot)> = snaps
        .iter()
        .flat_map(|snap| snap.services.iter().map(move |s| (*snap, s)))
        .collect();
    rows.sort_by(|(ca, a), (cb, b)| {
        (a.direction, &a.service, ca.core).cmp(&(b.direction, &b.service, cb.core))
    });

    let name = "coremesh_requests_total";
    push_header(
        out,
        name,
        "counter",
        "Finished requests by direction, service, status class (none: no response sent) and core.",
    );
    for (snap, s) in &rows {
        for (class, &n) in CLASSES.iter().zip(&s.by_class) {
            // Only classes that occurred: a service appears with its first
            // request, so it always has at least one series here.
            if n == 0 {
                continue;
            }
            push_dir_service(out, name, "", s.direction, &s.service);
            let _ = writeln!(out, ",class=\"{class}\",core=\"{}\"}} {n}", snap.core);
        }
    }

    let name = "coremesh_request_duration_seconds";
    push_header(
        out,
        name,
        "histogram",
        "Request latency from first request byte to last response byte, all cores merged.",
    );
    let mut i = 0;
    while i < rows.len() {
        let (_, first) = rows[i];
        let mut merged = first.latency_us.clone();
        let mut sum_ns = first.latency_sum_ns;
        let mut j = i + 1;
        while j < rows.len()
            && rows[j].1.direction == first.direction
            && rows[j].1.service == first.service
        {
            let _ = merged.add(&rows[j].1.latency_us);
            sum_ns = sum_ns.saturating_add(rows[j].1.latency_sum_ns);
            j += 1;
        }
        render_histogram(out, name, first.direction, &first.service, &merged, sum_ns);
        i = j;
    }

    let name = "coremesh_request_bytes_total";
    push_header(
        out,
        name,
        "counter",
        "Bytes received from the downstream client (request head and body).",
    );
    for (snap, s) in &rows {
        push_dir_service(out, name, "", s.direction, &s.service);
        let _ = writeln!(out, ",core=\"{}\"}} {}", snap.core, s.bytes_in);
    }

    let name = "coremesh_response_bytes_total";
    push_header(
        out,
        name,
        "counter",
        "Bytes sent to the downstream client (response head and body).",
    );
    for (snap, s) in &rows {
        push_dir_service(out, name, "", s.direction, &s.service);
        let _ = writeln!(out, ",core=\"{}\"}} {}", snap.core, s.bytes_out);
    }

    let name = "coremesh_connections_open";
    push_header(out, name, "gauge", "Open downstream connections.");
    for dir in Direction::ALL {
        for snap in &snaps {
            let _ = writeln!(
                out,
                "{name}{{direction=\"{}\",core=\"{}\"}} {}",
                dir.as_str(),
                snap.core,
                snap.connections_open(dir)
            );
        }
    }

    let name = "coremesh_connections_total";
    push_header(out, name, "counter", "Accepted downstream connections.");
    for dir in Direction::ALL {
        for snap in &snaps {
            let _ = writeln!(
                out,
                "{name}{{direction=\"{}\",core=\"{}\"}} {}",
                dir.as_str(),
                snap.core,
                snap.connections_total(dir)
            );
        }
    }

    let name = "coremesh_shard_requests_total";
    push_header(
        out,
        name,
        "counter",
        "Finished requests per shard, all services.",
    );
    for snap in &snaps {
        let _ = writeln!(out, "{name}{{core=\"{}\"}} {}", snap.core, snap.requests);
    }

    let mesh: Vec<&MeshStats> = snaps.iter().map(|s| &s.mesh).collect();
    mesh::render(&mesh, out);
    let h2: Vec<&H2Stats> = snaps.iter().map(|s| &s.h2).collect();
    h2::render(&h2, out);
    edge::render(snaps.iter().map(|s| &s.edges), out);
}

/// The proxy's certificate expiry, so an alert can fire well before a
/// proxy cut off from control stops being able to talk to its peers.
pub fn render_certificate(spiffe_id: &str, not_after: i64, out: &mut String) {
    let name = "coremesh_certificate_expiry_timestamp_seconds";
    push_header(
        out,
        name,
        "gauge",
        "notAfter of the certificate this proxy presents to its peers (Unix seconds).",
    );
    out.push_str(name);
    out.push_str("{spiffe_id=\"");
    push_label_value(out, spiffe_id);
    let _ = writeln!(out, "\"}} {not_after}");
}

fn render_histogram(
    out: &mut String,
    name: &str,
    dir: Direction,
    service: &str,
    h: &Histogram<u64>,
    sum_ns: u64,
) {
    // One pass over the recorded values. A recorded value belongs to bucket
    // `le` when its hdrhistogram bucket lies at or below the bound (the same
    // rule as `count_between(0, le)`); with 2 significant figures this is
    // within 1% of the bound.
    let mut cumulative = [0u64; BUCKETS.len()];
    for v in h.iter_recorded() {
        let value = h.lowest_equivalent(v.value_iterated_to());
        let n = v.count_at_value();
        if let Some(b) = BUCKETS.iter().position(|&(le, _)| value <= le) {
            cumulative[b] += n;
        }
    }
    let mut running = 0u64;
    for ((_, label), n) in BUCKETS.iter().zip(cumulative) {
        running += n;
        push_dir_service(out, name, "_bucket", dir, service);
        let _ = writeln!(out, ",le=\"{label}\"}} {running}");
    }
    let count = h.len();
    push_dir_service(out, name, "_bucket", dir, service);
    let _ = writeln!(out, ",le=\"+Inf\"}} {count}");
    push_dir_service(out, name, "_sum", dir, service);
    let _ = writeln!(out, "}} {}", sum_ns as f64 / 1e9);
    push_dir_service(out, name, "_count", dir, service);
    let _ = writeln!(out, "}} {count}");
}

/// `{"cores":[{"core":0,"requests":N,"connections_open":{..},"connections_total":{..},"latency_us":{"p50":..,"p99":..}}]}`,
/// sorted by core. Latency percentiles are over all services of the core, in
/// microseconds (0 when the core has served no request).
pub fn cores_json(snaps: &[ShardSnapshot]) -> serde_json::Value {
    let mut snaps: Vec<&ShardSnapshot> = snaps.iter().collect();
    snaps.sort_by_key(|s| s.core);
    let cores: Vec<serde_json::Value> = snaps
        .iter()
        .map(|s| {
            let h = s.merged_latency();
            let pct = |q: f64| {
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(q)
                }
            };
            serde_json::json!({
                "core": s.core,
                "requests": s.requests,
                "connections_open": {
                    "inbound": s.connections_open(Direction::Inbound),
                    "outbound": s.connections_open(Direction::Outbound),
                },
                "connections_total": {
                    "inbound": s.connections_total(Direction::Inbound),
                    "outbound": s.connections_total(Direction::Outbound),
                },
                "latency_us": {
                    "p50": pct(0.5),
                    "p90": pct(0.9),
                    "p99": pct(0.99),
                    "max": h.max(),
                },
            })
        })
        .collect();
    serde_json::json!({ "cores": cores })
}

#[cfg(test)]
mod tests;
