//! Distributed tracing on the request path: trace-context propagation and
//! span recording. Export is the agent's (agent/otlp.rs).
//!
//! Every forwarded request carries a W3C `traceparent` upstream: the
//! client's continued, a B3 one (`b3`, or `X-B3-TraceId`/`X-B3-SpanId`/
//! `X-B3-Sampled`) converted, or a new trace. The proxy's own span is the
//! parent of the upstream request: the forwarded `traceparent` has a new
//! span id, the one of the span this hop records. `tracestate` goes on
//! unchanged.
//!
//! Sampling is parent-based: a request that arrives with a sampling
//! decision keeps it; a new trace (or a B3 one without a decision) is
//! sampled with the configured ratio. Spans are recorded only when a
//! collector is configured (`[tracing]`, or the MeshConfig's `tracing`).
//!
//! Cost: propagation reads fields the HTTP/1.1 parse already located
//! (coremesh_http1::TraceField) and writes one 55-byte field into the
//! request's scratch space; an unsampled request records nothing (its
//! [`Hop::rec`] is `None`, so each recording point is one branch). A
//! sampled span is a plain struct, buffered on the shard and handed to the
//! agent thread in batches over a bounded channel ([`Tracer`]); when the
//! channel is full the batch is dropped and counted, never waited for.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::routing::RoutingTable;
use crate::stats::Direction;

/// Spans a shard buffers before it hands them over (also handed over
/// once a second by the shard's housekeeping).
pub const SHARD_BATCH: usize = 64;
/// Batches the channel to the agent holds; beyond, a batch is dropped.
pub const CHANNEL_BATCHES: usize = 64;

/// A trace context as it arrived with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    /// The caller's span (the parent of this hop's span); zero: none.
    pub parent: [u8; 8],
    /// The caller's sampling decision; `None`: deferred (B3 without one).
    pub sampled: Option<bool>,
    /// It came as B3 (the proxy then sends a `b3` field too).
    pub b3: bool,
}

/// Parses `traceparent` (W3C Trace Context, version 00; a later version's
/// first four fields are read as 00's). `None`: absent or invalid, and the
/// proxy starts a new trace.
pub fn parse_traceparent(v: &[u8]) -> Option<Incoming> {
    if v.len() < 55 || (v.len() > 55 && (v[..2] == *b"00" || v[55] != b'-')) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' || v[..2] == *b"ff" {
        return None;
    }
    let _version = hex_byte(&v[..2])?;
    let trace_id: [u8; 16] = hex_array(&v[3..35])?;
    let parent: [u8; 8] = hex_array(&v[36..52])?;
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some(Incoming {
        trace_id,
        parent,
        sampled: Some(flags & 1 == 1),
        b3: false,
    })
}

/// Parses the single `b3` field: `{trace}-{span}[-{sampled}[-{parent}]]`,
/// or a lone decision (`0`, `1`, `d`), which carries no ids (`None`: a new
/// trace, but see [`b3_decision`]).
pub fn parse_b3_single(v: &[u8]) -> Option<Incoming> {
    let mut parts = v.split(|&b| b == b'-');
    let trace = parts.next()?;
    let span = parts.next()?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(b3_sampled(s)?),
    };
    b3_ids(trace, span, sampled)
}

/// A lone `b3: 0|1|d` decision (no ids).
pub fn b3_decision(v: &[u8]) -> Option<bool> {
    if v.contains(&b'-') {
        return None;
    }
    b3_sampled(v)
}

/// The multi-field B3 form: `X-B3-TraceId`, `X-B3-SpanId`, and optionally
/// `X-B3-Sampled` (`1`/`0`, or `true`/`false`) and `X-B3-Flags` (`1`:
/// debug, sampled).
pub fn parse_b3_multi(
    trace: &[u8],
    span: &[u8],
    sampled: Option<&[u8]>,
    flags: Option<&[u8]>,
) -> Option<Incoming> {
    let sampled = if flags == Some(b"1") {
        Some(true)
    } else {
        match sampled {
            None => None,
            Some(s) => Some(b3_sampled(s)?),
        }
    };
    b3_ids(trace, span, sampled)
}

fn b3_sampled(s: &[u8]) -> Option<bool> {
    match s {
        b"1" | b"d" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

/// A B3 trace id is 16 or 32 hex digits (a 64-bit one is left-padded with
/// zeros into the 128-bit W3C id).
fn b3_ids(trace: &[u8], span: &[u8], sampled: Option<bool>) -> Option<Incoming> {
    let mut trace_id = [0u8; 16];
    match trace.len() {
        32 => trace_id = hex_array(trace)?,
        16 => trace_id[8..].copy_from_slice(&hex_array::<8>(trace)?),
        _ => return None,
    }
    let parent: [u8; 8] = if span.len() == 16 {
        hex_array(span)?
    } else {
        return None;
    };
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some(Incoming {
        trace_id,
        parent,
        sampled,
        b3: true,
    })
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        // W3C asks for lowercase; B3 senders are lenient, so are we.
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn hex_byte(s: &[u8]) -> Option<u8> {
    Some(hex_nibble(s[0])? << 4 | hex_nibble(s[1])?)
}

fn hex_array<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_byte(&s[2 * i..2 * i + 2])?;
    }
    Some(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// Lowercase hex of `bytes` (tests).
#[cfg(test)]
pub fn hex(bytes: &[u8]) -> String {
    let mut v = Vec::with_capacity(2 * bytes.len());
    put_hex(&mut v, bytes);
    String::from_utf8(v).unwrap_or_default()
}

/// This hop's place in a trace, carried in the request's record
/// (`forward::ctx::Exchange`) from the head to the log phase.
#[derive(Debug, Default)]
pub struct Hop {
    pub trace_id: [u8; 16],
    /// This hop's span: the parent of the upstream request.
    pub span_id: [u8; 8],
    /// The caller's span; zero: this hop's span is the trace's root.
    pub parent: [u8; 8],
    pub sampled: bool,
    /// The context came as B3.
    pub b3: bool,
    /// What a sampled span records as the request goes; `None` (unsampled,
    /// or no collector): nothing is recorded.
    pub rec: Option<Box<Recording>>,
}

/// What a sampled span collects while its request is served.
#[derive(Debug, Default)]
pub struct Recording {
    pub method: String,
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// The caller's SPIFFE ID (inbound, from its certificate).
    pub caller: Option<String>,
    /// The request's `tracestate`, as it arrived.
    pub tracestate: String,
    /// Connections taken for tries (the first is no resend).
    pub tries: u32,
    /// Timing events: `upstream_connected`, `first_byte`.
    pub events: Vec<(&'static str, Instant)>,
    pub grpc_status: Option<u8>,
}

impl Recording {
    /// A try got its upstream connection.
    pub fn connected(&mut self, at: Instant) {
        self.tries += 1;
        self.events.push(("upstream_connected", at));
    }

    /// The response head arrived from upstream.
    pub fn first_byte(&mut self, at: Instant) {
        self.events.push(("first_byte", at));
    }
}

/// Whether this proxy records spans, and the ratio of new traces it
/// samples: `[tracing]` overrides the MeshConfig's `tracing` key by key.
/// `None`: no collector anywhere, nothing recorded.
pub fn ratio(cfg: &Config, table: Option<&RoutingTable>) -> Option<f64> {
    let mesh = table.and_then(|t| t.tracing.as_ref());
    if cfg.tracing.collector.is_none() && mesh.is_none() {
        return None;
    }
    Some(
        cfg.tracing
            .sampling
            .or(mesh.map(|m| m.sampling))
            .unwrap_or(0.0),
    )
}

/// Where spans go: `[tracing] collector`, else the MeshConfig's.
pub fn collector(cfg: &Config, table: Option<&RoutingTable>) -> Option<Arc<str>> {
    cfg.tracing.collector.clone().or_else(|| {
        table
            .and_then(|t| t.tracing.as_ref())
            .map(|t| Arc::from(t.collector.trim_end_matches('/')))
    })
}

impl Hop {
    /// This hop's context: `incoming` continued (or a new trace), with a
    /// new span id, sampled as the caller decided or by `ratio` (`None`:
    /// no collector, nothing recorded; a new trace is then unsampled).
    /// `random` draws the ids and the sampling.
    /// `decision`: a lone B3 decision (`b3: 0`) for a new trace.
    pub fn begin(
        incoming: Option<Incoming>,
        decision: Option<bool>,
        ratio: Option<f64>,
        random: &mut dyn FnMut() -> u64,
    ) -> Hop {
        let mut span = random().to_be_bytes();
        if span == [0; 8] {
            span[7] = 1;
        }
        let (trace_id, parent, decided, b3) = match incoming {
            Some(i) => (i.trace_id, i.parent, i.sampled, i.b3),
            None => {
                let mut t = [0u8; 16];
                t[..8].copy_from_slice(&random().to_be_bytes());
                t[8..].copy_from_slice(&random().to_be_bytes());
                if t == [0; 16] {
                    t[15] = 1;
                }
                (t, [0; 8], decision, false)
            }
        };
        let sampled = decided.unwrap_or_else(|| match ratio {
            Some(r) if r >= 1.0 => true,
            Some(r) if r > 0.0 => (random() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) < r,
            _ => false,
        });
        let rec = (sampled && ratio.is_some()).then(Box::default);
        Hop {
            trace_id,
            span_id: span,
            parent,
            sampled,
            b3,
            rec,
        }
    }

    /// The trace id as 32 lowercase hex digits (the access log's).
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in self.trace_id.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        out
    }

    /// Appends `traceparent: 00-{trace}-{span}-{flags}\r\n` (and, for a
    /// B3 caller, `b3: {trace}-{span}-{0|1}\r\n`) to an HTTP/1.1 head's
    /// added fields.
    pub fn write_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"traceparent: ");
        self.write_traceparent(out);
        out.extend_from_slice(b"\r\n");
        if self.b3 {
            out.extend_from_slice(b"b3: ");
            self.write_b3(out);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The `traceparent` value.
    pub fn write_traceparent(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"00-");
        put_hex(out, &self.trace_id);
        out.push(b'-');
        put_hex(out, &self.span_id);
        out.extend_from_slice(if self.sampled { b"-01" } else { b"-00" });
    }

    /// The `b3` value.
    pub fn write_b3(&self, out: &mut Vec<u8>) {
        put_hex(out, &self.trace_id);
        out.push(b'-');
        put_hex(out, &self.span_id);
        out.extend_from_slice(if self.sampled { b"-1" } else { b"-0" });
    }

    /// The trace context as h2 fields (replacing the client's).
    pub fn set_h2_fields(&self, h: &mut http::HeaderMap) {
        use http::header::{HeaderName, HeaderValue};
        for name in [
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled",
            "x-b3-flags",
            "x-b3-parentspanid",
        ] {
            h.remove(name);
        }
        let mut v = Vec::with_capacity(55);
        self.write_traceparent(&mut v);
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(v)) {
            h.insert(HeaderName::from_static("traceparent"), v);
        }
        if self.b3 {
            let mut v = Vec::with_capacity(51);
            self.write_b3(&mut v);
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(v)) {
                h.insert(HeaderName::from_static("b3"), v);
            }
        }
    }
}

/// The trace context of an h2 request's fields: `traceparent`, else B3.
pub fn incoming_h2(h: &http::HeaderMap) -> Option<Incoming> {
    let get = |n: &str| h.get(n).map(|v| v.as_bytes().trim_ascii());
    if let Some(tp) = get("traceparent").and_then(parse_traceparent) {
        return Some(tp);
    }
    if let Some(b3) = get("b3") {
        return parse_b3_single(b3);
    }
    let trace = get("x-b3-traceid")?;
    parse_b3_multi(
        trace,
        get("x-b3-spanid")?,
        get("x-b3-sampled"),
        get("x-b3-flags"),
    )
}

/// A lone B3 decision of an h2 request (`b3: 0`), which a new trace keeps.
pub fn decision_h2(h: &http::HeaderMap) -> Option<bool> {
    h.get("b3")
        .and_then(|v| b3_decision(v.as_bytes().trim_ascii()))
}

/// One finished span: a plain struct, built only for sampled requests,
/// turned into OTLP on the agent thread.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Zero: a root span.
    pub parent: [u8; 8],
    pub tracestate: String,
    /// SERVER (inbound) or CLIENT (outbound).
    pub dir: Direction,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    /// The Route's name, when the service has one.
    pub route: Option<String>,
    /// The service called (outbound) or served (inbound).
    pub service: String,
    pub status: u16,
    pub grpc_status: Option<u8>,
    pub source_id: Option<String>,
    pub destination_id: Option<String>,
    /// Tries after the first.
    pub resends: u32,
    pub upstream: Option<SocketAddr>,
    pub events: Vec<(&'static str, u64)>,
}

/// What the shard knows of a finished request, for its span.
pub struct Finished<'a> {
    pub dir: Direction,
    pub service: &'a str,
    pub status: u16,
    pub start: Instant,
    pub end: Instant,
    pub upstream: Option<SocketAddr>,
    /// This proxy's SPIFFE ID.
    pub own_id: Option<&'a str>,
    /// The trust domain, for the callee's ID (outbound, mesh services).
    pub trust_domain: Option<&'a str>,
    /// The callee is a mesh peer (mutual TLS), named by its service.
    pub mesh_peer: bool,
    pub route: Option<&'a str>,
}

impl SpanRecord {
    /// The span of a finished sampled request.
    pub fn new(hop: &Hop, rec: Recording, f: &Finished<'_>) -> SpanRecord {
        // One wall-clock reading maps the request's monotonic ones.
        let (now_i, now_s) = (Instant::now(), SystemTime::now());
        let wall = |i: Instant| -> u64 {
            let t = now_s
                .checked_sub(now_i.saturating_duration_since(i))
                .unwrap_or(now_s);
            t.duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_nanos() as u64
        };
        let (source_id, destination_id) = match f.dir {
            Direction::Inbound => (rec.caller, f.own_id.map(str::to_string)),
            Direction::Outbound => (
                f.own_id.map(str::to_string),
                match (f.mesh_peer, f.trust_domain) {
                    (true, Some(td)) => Some(format!("spiffe://{td}/service/{}", f.service)),
                    _ => None,
                },
            ),
        };
        SpanRecord {
            trace_id: hop.trace_id,
            span_id: hop.span_id,
            parent: hop.parent,
            tracestate: rec.tracestate,
            dir: f.dir,
            start_unix_nanos: wall(f.start),
            end_unix_nanos: wall(f.end),
            method: rec.method,
            path: rec.path,
            protocol: rec.protocol,
            route: f.route.map(str::to_string),
            service: f.service.to_string(),
            status: f.status,
            grpc_status: rec.grpc_status,
            source_id,
            destination_id,
            resends: rec.tries.saturating_sub(1),
            upstream: f.upstream,
            events: rec.events.iter().map(|(n, t)| (*n, wall(*t))).collect(),
        }
    }
}

/// Spans of one shard on their way to the agent: where they go and whose
/// they are (both from the configuration in force when they were handed
/// over).
pub struct SpanBatch {
    pub collector: Arc<str>,
    /// The proxy's service (`service.name` of the OTLP resource).
    pub service: Arc<str>,
    pub spans: Vec<SpanRecord>,
}

/// A shard's side of span export: finished spans buffered, handed to the
/// agent by message.
pub struct Tracer {
    pending: RefCell<Vec<SpanRecord>>,
    tx: async_channel::Sender<SpanBatch>,
}

impl Tracer {
    pub fn new(tx: async_channel::Sender<SpanBatch>) -> Tracer {
        Tracer {
            pending: RefCell::new(Vec::new()),
            tx,
        }
    }

    /// Buffers a finished span; `true`: a batch is ready to hand over.
    pub fn push(&self, span: SpanRecord) -> bool {
        let mut p = self.pending.borrow_mut();
        p.push(span);
        p.len() >= SHARD_BATCH
    }

    /// Hands the buffered spans to the agent (never waits: a full channel
    /// drops them, counted). Without a collector they are dropped silently
    /// (tracing was turned off meanwhile).
    pub fn flush(&self, collector: Option<Arc<str>>, service: &str) {
        let spans = std::mem::take(&mut *self.pending.borrow_mut());
        if spans.is_empty() {
            return;
        }
        let Some(collector) = collector else {
            return;
        };
        let n = spans.len() as u64;
        let batch = SpanBatch {
            collector,
            service: Arc::from(service),
            spans,
        };
        if self.tx.try_send(batch).is_err() {
            TRACE_STATS.dropped(Dropped::QueueFull, n);
        }
    }
}

/// Why spans were dropped (`coremesh_trace_spans_dropped_total{reason}`).
#[derive(Debug, Clone, Copy)]
pub enum Dropped {
    /// The shard→agent channel or the agent's export queue was full.
    QueueFull,
    /// The collector refused them or could not be reached.
    ExportFailed,
}

/// Process-wide export counters, rendered in /metrics.
pub struct TraceStats {
    exported: AtomicU64,
    queue_full: AtomicU64,
    export_failed: AtomicU64,
    export_errors: AtomicU64,
}

pub static TRACE_STATS: TraceStats = TraceStats {
    exported: AtomicU64::new(0),
    queue_full: AtomicU64::new(0),
    export_failed: AtomicU64::new(0),
    export_errors: AtomicU64::new(0),
};

impl TraceStats {
    pub fn exported(&self, n: u64) {
        self.exported.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped(&self, why: Dropped, n: u64) {
        let c = match why {
            Dropped::QueueFull => &self.queue_full,
            Dropped::ExportFailed => &self.export_failed,
        };
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn export_error(&self) {
        self.export_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push_str(
            "# HELP coremesh_trace_spans_exported_total Spans the OTLP collector accepted.\n",
        );
        out.push_str("# TYPE coremesh_trace_spans_exported_total counter\n");
        let _ = writeln!(
            out,
            "coremesh_trace_spans_exported_total {}",
            get(&self.exported)
        );
        out.push_str("# HELP coremesh_trace_spans_dropped_total Spans dropped before export, by reason (queue_full: the shard-to-agent channel or the export queue was full; export_failed: the collector refused them or was unreachable).\n");
        out.push_str("# TYPE coremesh_trace_spans_dropped_total counter\n");
        for (reason, c) in [
            ("queue_full", &self.queue_full),
            ("export_failed", &self.export_failed),
        ] {
            let _ = writeln!(
                out,
                "coremesh_trace_spans_dropped_total{{reason=\"{reason}\"}} {}",
                get(c)
            );
        }
        out.push_str(
            "# HELP coremesh_trace_export_errors_total OTLP export requests that failed.\n",
        );
        out.push_str("# TYPE coremesh_trace_export_errors_total counter\n");
        let _ = writeln!(
            out,
            "coremesh_trace_export_errors_total {}",
            get(&self.export_errors)
        );
    }
}

#[cfg(test)]
mod tests;
