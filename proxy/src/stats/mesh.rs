//! Counters of the zero-trust data plane, per shard: mutual TLS handshakes
//! and their failures, authorization denials by policy and caller, and TCP
//! service connections and bytes. Written by the shard only (no atomics);
//! the agent merges snapshots across shards when rendering `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use super::{push_header, push_label_value, Direction};

/// Distinct (policy, caller) pairs kept per shard; further callers are
/// counted under `caller="other"` so a hostile peer cannot grow the map.
const MAX_DENIAL_KEYS: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct MeshStats {
    /// Completed handshakes per direction, and how many of them resumed.
    handshakes: [u64; 2],
    resumed: [u64; 2],
    /// Failed handshakes per direction (plaintext, foreign CA, expired,
    /// wrong trust domain, timeouts).
    failures: [u64; 2],
    /// Outbound handshakes refused because the peer presented another
    /// service's identity.
    identity_mismatch: u64,
    /// Denied requests and TCP connections by (policy, caller SPIFFE ID).
    denied: BTreeMap<(Arc<str>, Arc<str>), u64>,
    /// TCP service relays per (direction, service): connections, bytes in
    /// each direction (to the service, from the service).
    tcp: BTreeMap<(Direction, Arc<str>), [u64; 3]>,
}

impl MeshStats {
    pub fn handshake(&mut self, dir: Direction, resumed: bool) {
        self.handshakes[dir.idx()] += 1;
        if resumed {
            self.resumed[dir.idx()] += 1;
        }
    }

    pub fn failure(&mut self, dir: Direction, identity_mismatch: bool) {
        self.failures[dir.idx()] += 1;
        if identity_mismatch {
            self.identity_mismatch += 1;
        }
    }

    pub fn denied(&mut self, policy: &str, caller: &str) {
        let known = self
            .denied
            .keys()
            .any(|(p, c)| &**p == policy && &**c == caller);
        let caller = if known || self.denied.len() < MAX_DENIAL_KEYS {
            caller
        } else {
            "other"
        };
        *self
            .denied
            .entry((Arc::from(policy), Arc::from(caller)))
            .or_default() += 1;
    }

    pub fn tcp(&mut self, dir: Direction, service: &str, to_service: u64, from_service: u64) {
        let e = self.tcp.entry((dir, Arc::from(service))).or_default();
        e[0] += 1;
        e[1] += to_service;
        e[2] += from_service;
    }

    fn merge(&mut self, o: &MeshStats) {
        for i in 0..2 {
            self.handshakes[i] += o.handshakes[i];
            self.resumed[i] += o.resumed[i];
            self.failures[i] += o.failures[i];
        }
        self.identity_mismatch += o.identity_mismatch;
        for (k, v) in &o.denied {
            *self.denied.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.tcp {
            let e = self.tcp.entry(k.clone()).or_default();
            for i in 0..3 {
                e[i] += v[i];
            }
        }
    }
}

/// Renders the shards' mesh counters, merged across cores.
pub fn render(shards: &[&MeshStats], out: &mut String) {
    let mut m = MeshStats::default();
    for s in shards {
        m.merge(s);
    }
    let name = "coremesh_tls_handshakes_total";
    push_header(
        out,
        name,
        "counter",
        "Completed mutual TLS handshakes between proxies.",
    );
    for dir in Direction::ALL {
        let i = dir.idx();
        for (resumed, n) in [
            ("false", m.handshakes[i] - m.resumed[i]),
            ("true", m.resumed[i]),
        ] {
            let _ = writeln!(
                out,
                "{name}{{direction=\"{}\",resumed=\"{resumed}\"}} {n}",
                dir.as_str()
            );
        }
    }
    let name = "coremesh_tls_handshake_failures_total";
    push_header(
        out,
        name,
        "counter",
        "Failed mutual TLS handshakes (plaintext, untrusted or expired certificate, foreign trust domain, wrong peer identity, timeout).",
    );
    for dir in Direction::ALL {
        let _ = writeln!(
            out,
            "{name}{{direction=\"{}\"}} {}",
            dir.as_str(),
            m.failures[dir.idx()]
        );
    }
    let name = "coremesh_tls_peer_identity_mismatch_total";
    push_header(
        out,
        name,
        "counter",
        "Outbound connections refused because the peer presented another service's identity.",
    );
    let _ = writeln!(out, "{name} {}", m.identity_mismatch);

    let name = "coremesh_authz_denied_total";
    push_header(
        out,
        name,
        "counter",
        "Requests and TCP connections denied, by policy and caller.",
    );
    for ((policy, caller), n) in &m.denied {
        out.push_str(name);
        out.push_str("{policy=\"");
        push_label_value(out, policy);
        out.push_str("\",caller=\"");
        push_label_value(out, caller);
        let _ = writeln!(out, "\"}} {n}");
    }

    for (idx, name, help) in [
        (
            0,
            "coremesh_tcp_connections_total",
            "TCP service connections relayed.",
        ),
        (
            1,
            "coremesh_tcp_sent_bytes_total",
            "TCP service bytes relayed towards the service.",
        ),
        (
            2,
            "coremesh_tcp_received_bytes_total",
            "TCP service bytes relayed back from the service.",
        ),
    ] {
        push_header(out, name, "counter", help);
        for ((dir, service), v) in &m.tcp {
            let _ = write!(out, "{name}{{direction=\"{}\",service=\"", dir.as_str());
            push_label_value(out, service);
            let _ = writeln!(out, "\"}} {}", v[idx]);
        }
    }
}
