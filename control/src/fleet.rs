//! The fleet view: every proxy's edge summaries ([`ProxyMsg::EdgeStats`],
//! sent every [`SUMMARY_INTERVAL`]) merged into 10 s steps, the last hour
//! of them kept in memory, and read as windows (`GET /v1/edges`), as one
//! edge's series (`GET /v1/edges/series`) and as Prometheus text
//! (control's `/metrics`).
//!
//! The summaries carry counts and a latency histogram with fixed buckets
//! ([`coremesh_api::latency`]), never percentiles, so a window's p50, p95
//! and p99 are those of every request any proxy saw in it.
//!
//! Counted once: both proxies of a call report it (the caller's proxy as
//! `outbound`, the callee's as `inbound`). The views use the outbound
//! reports, and inbound ones only for callers with no reporting proxy of
//! their own: a source service with no session that sends summaries (a
//! proxy sends an empty one as soon as its session starts) and none sent
//! within [`REPORTER_TTL`], such as `unknown`, a caller without an
//! identity, or a caller whose proxy predates the summaries.
//!
//! Memory is bounded: [`STEPS`] steps of [`STEP`], at most [`MAX_EDGES`]
//! edges per step (further ones are dropped and counted), and each edge's
//! histogram is sparse (only non-empty buckets).
//!
//! [`ProxyMsg::EdgeStats`]: coremesh_api::wire::ProxyMsg::EdgeStats

// Control is not the data plane: one std Mutex guards the history, held
// for short sections (no await inside), once per proxy summary or API
// request.
#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coremesh_api::http::{EdgePoint, EdgeSeries, EdgeView, EdgesView};
use coremesh_api::latency;
use coremesh_api::wire::{EdgeDirection, EdgeProtocol, EdgeSummary};

/// How often proxies send their summaries (the Welcome says so).
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);
/// The resolution of the kept history.
pub const STEP: Duration = Duration::from_secs(10);
/// Steps kept: one hour.
pub const STEPS: usize = 360;
/// Most distinct edges one step (and the totals) keep.
pub const MAX_EDGES: usize = 4096;
/// A source service counts as having its own reporting proxy for this long
/// after its last summary.
pub const REPORTER_TTL: Duration = Duration::from_secs(120);

/// The windows `GET /v1/edges` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    TenSeconds,
    OneMinute,
}

impl Window {
    /// `10s` or `1m`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "10s" => Some(Window::TenSeconds),
            "1m" => Some(Window::OneMinute),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::TenSeconds => "10s",
            Window::OneMinute => "1m",
        }
    }

    fn duration(self) -> Duration {
        match self {
            Window::TenSeconds => Duration::from_secs(10),
            Window::OneMinute => Duration::from_secs(60),
        }
    }
}

/// An edge as the summaries name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct EdgeId {
    direction: EdgeDirection,
    source: String,
    destination: String,
    subset: String,
    protocol: EdgeProtocol,
}

/// Counts over some time: requests, failures, a sparse latency histogram.
#[derive(Debug, Clone, Default)]
struct Acc {
    requests: u64,
    failures: u64,
    /// Sorted by bucket index, no repeats.
    latency: Vec<(u16, u64)>,
}

impl Acc {
    fn add(&mut self, requests: u64, failures: u64, latency: &[(u16, u64)]) {
        self.requests = self.requests.saturating_add(requests);
        self.failures = self.failures.saturating_add(failures.min(requests));
        for &(i, n) in latency {
            if usize::from(i) >= latency::BUCKETS {
                continue;
            }
            match self.latency.binary_search_by_key(&i, |&(b, _)| b) {
                Ok(at) => self.latency[at].1 = self.latency[at].1.saturating_add(n),
                Err(at) => self.latency.insert(at, (i, n)),
            }
        }
    }

    fn merge(&mut self, o: &Acc) {
        self.add(o.requests, o.failures, &o.latency);
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        latency::quantile_ms(&self.latency, q).unwrap_or(0.0)
    }

    fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            (self.requests - self.failures.min(self.requests)) as f64 / self.requests as f64
        }
    }
}

#[derive(Debug)]
struct Step {
    /// Start (Unix milliseconds, a multiple of [`STEP`]).
    t_ms: u64,
    edges: HashMap<EdgeId, Acc>,
}

#[derive(Debug, Default)]
struct State {
    /// Oldest first.
    steps: VecDeque<Step>,
    /// Since control started, for the Prometheus counters.
    totals: BTreeMap<EdgeId, Acc>,
    /// Source services with a reporting proxy, and when they last reported.
    reporters: HashMap<String, Instant>,
    /// Sessions that send summaries, per service: while one is up, the
    /// service is a reporter whether or not it sent anything lately.
    live: HashMap<String, usize>,
    summaries: u64,
    dropped: u64,
}

/// The fleet's edges. Shared by the QUIC sessions (writers) and the API.
#[derive(Debug, Default)]
pub struct Fleet {
    state: Mutex<State>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const STEP_MS: u64 = STEP.as_millis() as u64;

/// A session that sends summaries (it sent one, possibly empty: proxies
/// send an empty one at once to say so). While it lives, its service's
/// calls are counted from its outbound reports only.
pub struct Reporting<'a> {
    fleet: &'a Fleet,
    service: String,
}

impl Drop for Reporting<'_> {
    fn drop(&mut self) {
        let mut st = self.fleet.lock();
        let now = Instant::now();
        st.reporters.insert(self.service.clone(), now);
        if let Some(n) = st.live.get_mut(&self.service) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.live.remove(&self.service);
            }
        }
    }
}

impl Fleet {
    /// Marks a session of `service` as sending summaries until the guard
    /// is dropped (when the session ends).
    pub fn reporting(&self, service: &str) -> Reporting<'_> {
        *self.lock().live.entry(service.to_string()).or_default() += 1;
        Reporting {
            fleet: self,
            service: service.to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One proxy's summary of `service`, received now.
    pub fn record(&self, service: &str, edges: &[EdgeSummary]) {
        self.record_at(service, edges, now_ms(), Instant::now());
    }

    fn record_at(&self, service: &str, edges: &[EdgeSummary], at_ms: u64, now: Instant) {
        let mut st = self.lock();
        st.summaries += 1;
        st.reporters.insert(service.to_string(), now);
        if edges.is_empty() {
            return;
        }
        let t_ms = at_ms - at_ms % STEP_MS;
        if st.steps.back().is_none_or(|s| s.t_ms < t_ms) {
            st.steps.push_back(Step {
                t_ms,
                edges: HashMap::new(),
            });
            while st.steps.len() > STEPS {
                st.steps.pop_front();
            }
        }
        let State {
            steps,
            totals,
            dropped,
            ..
        } = &mut *st;
        // A clock stepped back: the summary goes into the newest step.
        let Some(step) = steps.back_mut() else {
            return;
        };
        for e in edges {
            let id = EdgeId {
                direction: e.direction,
                source: e.source.clone(),
                destination: e.destination.clone(),
                subset: e.subset.clone(),
                protocol: e.protocol,
            };
            if !step.edges.contains_key(&id) && step.edges.len() >= MAX_EDGES {
                *dropped += 1;
                continue;
            }
            if !totals.contains_key(&id) && totals.len() >= MAX_EDGES {
                *dropped += 1;
                continue;
            }
            step.edges
                .entry(id.clone())
                .or_default()
                .add(e.requests, e.failures, &e.latency);
            totals
                .entry(id)
                .or_default()
                .add(e.requests, e.failures, &e.latency);
        }
    }

    /// Whether `id` is counted in the views: an outbound report, or an
    /// inbound one whose caller has no reporting proxy.
    fn counted(st: &State, id: &EdgeId, now: Instant) -> bool {
        match id.direction {
            EdgeDirection::Outbound => true,
            EdgeDirection::Inbound => {
                !(st.live.get(&id.source).is_some_and(|&n| n > 0)
                    || st
                        .reporters
                        .get(&id.source)
                        .is_some_and(|&t| now.saturating_duration_since(t) < REPORTER_TTL))
            }
        }
    }

    /// `GET /v1/edges?window=..`.
    pub fn edges(&self, window: Window) -> EdgesView {
        self.edges_at(window, now_ms(), Instant::now())
    }

    fn edges_at(&self, window: Window, now_ms: u64, now: Instant) -> EdgesView {
        let st = self.lock();
        let from = now_ms.saturating_sub(window.duration().as_millis() as u64);
        // Steps that overlap [now - window, now].
        let steps: Vec<&Step> = st
            .steps
            .iter()
            .filter(|s| s.t_ms + STEP_MS > from && s.t_ms <= now_ms)
            .collect();
        // What the steps cover: from the oldest one's start to now (at
        // least the window: a proxy's first summary covers the time before
        // it too).
        let covered_ms = steps
            .first()
            .map(|s| now_ms.saturating_sub(s.t_ms))
            .unwrap_or(0)
            .max(window.duration().as_millis() as u64);
        let mut merged: BTreeMap<(String, String, String, EdgeProtocol), Acc> = BTreeMap::new();
        for s in &steps {
            for (id, acc) in &s.edges {
                if !Self::counted(&st, id, now) {
                    continue;
                }
                merged
                    .entry((
                        id.source.clone(),
                        id.destination.clone(),
                        id.subset.clone(),
                        id.protocol,
                    ))
                    .or_default()
                    .merge(acc);
            }
        }
        let secs = covered_ms as f64 / 1000.0;
        EdgesView {
            window: window.as_str().to_string(),
            generated_at_ms: now_ms,
            edges: merged
                .into_iter()
                .map(|((source, destination, subset, protocol), a)| EdgeView {
                    source,
                    destination,
                    subset,
                    protocol: protocol.as_str().to_string(),
                    rps: a.requests as f64 / secs,
                    success_rate: a.success_rate(),
                    p50_ms: a.quantile_ms(0.5),
                    p95_ms: a.quantile_ms(0.95),
                    p99_ms: a.quantile_ms(0.99),
                    requests: a.requests,
                    failures: a.failures,
                })
                .collect(),
        }
    }

    /// `GET /v1/edges/series?source=..&destination=..`: the kept steps
    /// with traffic between them, subsets and protocols summed.
    pub fn series(&self, source: &str, destination: &str) -> EdgeSeries {
        let now = Instant::now();
        let st = self.lock();
        let points = st
            .steps
            .iter()
            .filter_map(|s| {
                let mut a = Acc::default();
                for (id, acc) in &s.edges {
                    if id.source == source
                        && id.destination == destination
                        && Self::counted(&st, id, now)
                    {
                        a.merge(acc);
                    }
                }
                (a.requests > 0).then(|| EdgePoint {
                    t_ms: s.t_ms,
                    rps: a.requests as f64 / STEP.as_secs_f64(),
                    success_rate: a.success_rate(),
                    p50_ms: a.quantile_ms(0.5),
                    p99_ms: a.quantile_ms(0.99),
                })
            })
            .collect();
        EdgeSeries {
            source: source.to_string(),
            destination: destination.to_string(),
            points,
        }
    }

    /// The fleet view in the Prometheus text format 0.0.4 (control's
    /// `/metrics`).
    pub fn render_prometheus(&self, out: &mut String) {
        let now = Instant::now();
        let one_minute = self.edges(Window::OneMinute);
        let ten_seconds = self.edges(Window::TenSeconds);
        let st = self.lock();
        // Totals of the counted edges, directions folded.
        let mut totals: BTreeMap<(&str, &str, &str, EdgeProtocol), Acc> = BTreeMap::new();
        for (id, acc) in &st.totals {
            if Self::counted(&st, id, now) {
                totals
                    .entry((&id.source, &id.destination, &id.subset, id.protocol))
                    .or_default()
                    .merge(acc);
            }
        }
        let labels = |out: &mut String, s: &str, d: &str, sub: &str, p: &str| {
            out.push_str("{source=\"");
            push_label_value(out, s);
            out.push_str("\",destination=\"");
            push_label_value(out, d);
            out.push_str("\",subset=\"");
            push_label_value(out, sub);
            out.push_str("\",protocol=\"");
            out.push_str(p);
            out.push('"');
        };
        for (name, help, failures) in [
            (
                "coremesh_fleet_edge_requests_total",
                "Requests (TCP: connections) per edge reported by the proxies since control started, each counted once.",
                false,
            ),
            (
                "coremesh_fleet_edge_failures_total",
                "Of those: 5xx or no response, gRPC status other than OK, TCP connections that never reached the service.",
                true,
            ),
        ] {
            header(out, name, "counter", help);
            for ((s, d, sub, p), a) in &totals {
                out.push_str(name);
                labels(out, s, d, sub, p.as_str());
                let v = if failures { a.failures } else { a.requests };
                let _ = writeln!(out, "}} {v}");
            }
        }
        let name = "coremesh_fleet_edge_rps";
        header(
            out,
            name,
            "gauge",
            "Requests per second per edge over the window (10s or 1m).",
        );
        for view in [&ten_seconds, &one_minute] {
            for e in &view.edges {
                out.push_str(name);
                labels(out, &e.source, &e.destination, &e.subset, &e.protocol);
                let _ = writeln!(out, ",window=\"{}\"}} {}", view.window, e.rps);
            }
        }
        let name = "coremesh_fleet_edge_success_ratio";
        header(
            out,
            name,
            "gauge",
            "Share of requests per edge that did not fail, over the window.",
        );
        for view in [&ten_seconds, &one_minute] {
            for e in &view.edges {
                out.push_str(name);
                labels(out, &e.source, &e.destination, &e.subset, &e.protocol);
                let _ = writeln!(out, ",window=\"{}\"}} {}", view.window, e.success_rate);
            }
        }
        let name = "coremesh_fleet_edge_latency_seconds";
        header(
            out,
            name,
            "gauge",
            "Latency percentiles per edge over the window, from every proxy's histogram.",
        );
        for view in [&ten_seconds, &one_minute] {
            for e in &view.edges {
                // `percentile`, not `quantile`: that label is for summaries,
                // and these are gauges (a window's percentiles).
                for (q, ms) in [("p50", e.p50_ms), ("p95", e.p95_ms), ("p99", e.p99_ms)] {
                    out.push_str(name);
                    labels(out, &e.source, &e.destination, &e.subset, &e.protocol);
                    let _ = writeln!(
                        out,
                        ",window=\"{}\",percentile=\"{q}\"}} {}",
                        view.window,
                        ms / 1000.0
                    );
                }
            }
        }
        let name = "coremesh_fleet_summaries_total";
        header(
            out,
            name,
            "counter",
            "Edge summaries received from proxies.",
        );
        let _ = writeln!(out, "{name} {}", st.summaries);
        let name = "coremesh_fleet_edges_dropped_total";
        header(
            out,
            name,
            "counter",
            "Edge entries dropped because a 10 s step (or the totals) already held the maximum number of edges.",
        );
        let _ = writeln!(out, "{name} {}", st.dropped);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

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

#[cfg(test)]
mod tests;
