//! HTTP/2 and gRPC counters, per shard: connections and streams by
//! direction, gRPC calls by service and `grpc-status`, resets by who sent
//! them, and client connections the proxy ended for a protocol error or an
//! abuse (rapid reset, floods, oversized headers). Written by the shard
//! only; merged across shards when `/metrics` is rendered.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use super::{push_header, push_label_value, Direction};

/// Distinct (direction, service) pairs with gRPC counts per shard (the
/// services come from the proxy's own configuration and control's table).
const MAX_GRPC_SERVICES: usize = 256;

/// Who reset a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResetBy {
    /// The client cancelled (passed on upstream).
    Client,
    /// The upstream reset (passed on to the client).
    Upstream,
    /// The proxy itself (idle stream, deadline, a failed upstream).
    Proxy,
}

impl ResetBy {
    fn as_str(self) -> &'static str {
        match self {
            ResetBy::Client => "client",
            ResetBy::Upstream => "upstream",
            ResetBy::Proxy => "proxy",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct H2Stats {
    connections: [u64; 2],
    streams: [u64; 2],
    /// gRPC calls by (direction, service, grpc-status; 255: none sent).
    grpc: BTreeMap<(Direction, Arc<str>, u8), u64>,
    resets: BTreeMap<(Direction, ResetBy), u64>,
    /// Client connections ended by the proxy, by (HTTP/2 error code name,
    /// the abuse or error that made it).
    conn_errors: BTreeMap<(&'static str, &'static str), u64>,
    /// Streams refused with REFUSED_STREAM, by direction.
    refused: [u64; 2],
}

impl H2Stats {
    pub fn connection(&mut self, dir: Direction) {
        self.connections[dir.idx()] += 1;
    }

    pub fn stream(&mut self, dir: Direction) {
        self.streams[dir.idx()] += 1;
    }

    /// A gRPC call's final status (`None`: none arrived).
    pub fn grpc(&mut self, dir: Direction, service: &str, status: Option<u8>) {
        let known = self
            .grpc
            .keys()
            .any(|(d, s, _)| *d == dir && &**s == service);
        let service = if known || self.grpc.len() < MAX_GRPC_SERVICES {
            service
        } else {
            "other"
        };
        *self
            .grpc
            .entry((dir, Arc::from(service), status.unwrap_or(u8::MAX)))
            .or_default() += 1;
    }

    pub fn reset(&mut self, dir: Direction, by: ResetBy) {
        *self.resets.entry((dir, by)).or_default() += 1;
    }

    /// The proxy ended a client connection with GOAWAY `reason` (an
    /// HTTP/2 error code name, a flood's name, or `timeout` for a preface
    /// that never came), for `cause` (which limit or error).
    pub fn connection_error(&mut self, reason: &'static str, cause: &'static str) {
        *self.conn_errors.entry((reason, cause)).or_default() += 1;
    }

    /// `n` streams refused: the client had `max_concurrent_streams` open.
    pub fn refused(&mut self, dir: Direction, n: u64) {
        self.refused[dir.idx()] += n;
    }

    fn merge(&mut self, o: &H2Stats) {
        for i in 0..2 {
            self.connections[i] += o.connections[i];
            self.streams[i] += o.streams[i];
            self.refused[i] += o.refused[i];
        }
        for (k, v) in &o.grpc {
            *self.grpc.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.resets {
            *self.resets.entry(*k).or_default() += v;
        }
        for (k, v) in &o.conn_errors {
            *self.conn_errors.entry(*k).or_default() += v;
        }
    }
}

/// Renders the shards' HTTP/2 counters, merged across cores.
pub fn render(shards: &[&H2Stats], out: &mut String) {
    let mut m = H2Stats::default();
    for s in shards {
        m.merge(s);
    }
    for (name, help, v) in [
        (
            "coremesh_h2_connections_total",
            "HTTP/2 client connections accepted.",
            &m.connections,
        ),
        (
            "coremesh_h2_streams_total",
            "HTTP/2 streams (requests) served.",
            &m.streams,
        ),
        (
            "coremesh_h2_streams_refused_total",
            "HTTP/2 streams refused with REFUSED_STREAM: the client already had [limits.h2] max_concurrent_streams open.",
            &m.refused,
        ),
    ] {
        push_header(out, name, "counter", help);
        for dir in Direction::ALL {
            let _ = writeln!(
                out,
                "{name}{{direction=\"{}\"}} {}",
                dir.as_str(),
                v[dir.idx()]
            );
        }
    }
    let name = "coremesh_grpc_calls_total";
    push_header(
        out,
        name,
        "counter",
        "gRPC calls by service and final grpc-status (\"none\": the call ended without one).",
    );
    for ((dir, service, status), n) in &m.grpc {
        let _ = write!(out, "{name}{{direction=\"{}\",service=\"", dir.as_str());
        push_label_value(out, service);
        if *status == u8::MAX {
            let _ = writeln!(out, "\",grpc_status=\"none\"}} {n}");
        } else {
            let _ = writeln!(out, "\",grpc_status=\"{status}\"}} {n}");
        }
    }
    let name = "coremesh_h2_stream_resets_total";
    push_header(
        out,
        name,
        "counter",
        "HTTP/2 streams reset, by who reset them (client, upstream, or the proxy).",
    );
    for ((dir, by), n) in &m.resets {
        let _ = writeln!(
            out,
            "{name}{{direction=\"{}\",by=\"{}\"}} {n}",
            dir.as_str(),
            by.as_str()
        );
    }
    let name = "coremesh_h2_connection_errors_total";
    push_header(
        out,
        name,
        "counter",
        "HTTP/2 client connections the proxy ended, by error (the GOAWAY code, SETTINGS_FLOOD, PING_FLOOD, EMPTY_FRAME_FLOOD, or timeout) and cause (rapid_reset, local_resets, continuation_flood, small_data_frames, settings_flood, ping_flood, empty_frame_flood, no_preface, or protocol: malformed frames or headers).",
    );
    for ((reason, cause), n) in &m.conn_errors {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\",cause=\"{cause}\"}} {n}");
    }
}
