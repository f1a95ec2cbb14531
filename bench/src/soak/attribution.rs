//! Which injected fault explains a failed request (sans-I/O: outcomes and
//! fault records in, counts out).
//!
//! A failed request is explained by a fault when the fault's target is on
//! the request's way (web's proxy, then an api instance for HTTP/1.1, h2
//! and gRPC, or db for the TCP service) and the request was in flight
//! (intended send time to end) during the fault's window: from the
//! injection until the target was back plus a grace period (the mesh
//! learning it is back). Only faults that take something on the way down
//! explain failures: a SIGHUP reload, a control restart, a route change or
//! a certificate renewal must fail no request, so a failure during one of
//! them alone is unexplained.

use std::collections::BTreeMap;

use serde::Serialize;

/// The traffic the soak sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// GETs over HTTP/1.1 to web's outbound listener (service api).
    Http1,
    /// GETs over h2c to the same listener.
    H2,
    /// Unary gRPC calls (POST) over h2c to the same listener.
    Grpc,
    /// HTTP/1.1 GETs carried as a byte stream by the TCP service db.
    Tcp,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [Protocol::Http1, Protocol::H2, Protocol::Grpc, Protocol::Tcp];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::H2 => "h2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }

    /// Whether the mesh may retry it: GETs are idempotent. A gRPC call is
    /// a POST, and a TCP service's bytes cannot be replayed by a proxy.
    pub fn idempotent(self) -> bool {
        matches!(self, Protocol::Http1 | Protocol::H2)
    }

    /// Whether a fault on `target` (a node name) is on this traffic's way.
    pub fn passes(self, target: &str) -> bool {
        match self {
            Protocol::Tcp => target == "web" || target == "db",
            _ => target == "web" || target.starts_with("api-"),
        }
    }
}

/// What was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL to an app (an origin), restarted on the same port.
    AppKill,
    /// SIGKILL to an endpoint's proxy, restarted on the same port with its
    /// state directory.
    EndpointKill,
    /// SIGKILL to coremesh-control, restarted on its data directory.
    ControlRestart,
    /// SIGHUP to a proxy (re-reads proxy.toml).
    Sighup,
    /// `meshctl apply` of api's Route with other weights.
    RouteChange,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::AppKill => "app-kill",
            FaultKind::EndpointKill => "endpoint-kill",
            FaultKind::ControlRestart => "control-restart",
            FaultKind::Sighup => "sighup",
            FaultKind::RouteChange => "route-change",
        }
    }

    /// Whether it takes its target off the request path (see the module
    /// doc).
    pub fn explains_failures(self) -> bool {
        matches!(self, FaultKind::AppKill | FaultKind::EndpointKill)
    }
}

/// One injected fault: what, where, from when until its target was back
/// (CLOCK_MONOTONIC ns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub target: String,
    pub start: u64,
    pub restored: u64,
}

impl Fault {
    /// `app-kill api-v1-a`.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind.name(), self.target)
    }
}

/// One request of the load: its traffic, when it was intended to go out,
/// when it ended, and why it failed (None: it succeeded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub protocol: Protocol,
    pub intended: u64,
    pub done: u64,
    pub failure: Option<&'static str>,
}

/// A failure no fault explains, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unexplained {
    pub protocol: Protocol,
    /// Seconds from the start of the load.
    pub intended_s: f64,
    pub done_s: f64,
    pub cause: &'static str,
    /// Faults of any kind whose window it overlapped (context only).
    pub during: Vec<String>,
}

/// The counts of one traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failures by cause (`connect`, `5xx`, `grpc-status`, ...).
    pub by_cause: BTreeMap<String, u64>,
    /// Failures by the fault that explains them (`app-kill api-v2`).
    pub by_fault: BTreeMap<String, u64>,
    pub unexplained: u64,
}

/// What [`attribute`] found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Attribution {
    pub tallies: BTreeMap<Protocol, Tally>,
    /// The first [`MAX_LISTED`] unexplained failures.
    pub unexplained: Vec<Unexplained>,
}

/// How many unexplained failures the report lists one by one.
pub const MAX_LISTED: usize = 50;

/// Counts `requests` and explains each failure by the first fault of
/// `faults` that was on its way and whose window (start to restored plus
/// `grace`) it was in flight during. `t0` is the load's start (for the
/// seconds in the report).
pub fn attribute(requests: &[Request], faults: &[Fault], grace: u64, t0: u64) -> Attribution {
    let mut out = Attribution::default();
    for p in Protocol::ALL {
        out.tallies.insert(p, Tally::default());
    }
    let s = |ns: u64| ns.saturating_sub(t0) as f64 / 1e9;
    for r in requests {
        let t = out.tallies.entry(r.protocol).or_default();
        t.sent += 1;
        let Some(cause) = r.failure else {
            t.succeeded += 1;
            continue;
        };
        t.failed += 1;
        *t.by_cause.entry(cause.to_string()).or_default() += 1;
        let overlaps = |f: &Fault| r.intended <= f.restored + grace && r.done >= f.start;
        let explained = faults
            .iter()
            .find(|f| f.kind.explains_failures() && r.protocol.passes(&f.target) && overlaps(f));
        match explained {
            Some(f) => *t.by_fault.entry(f.label()).or_default() += 1,
            None => {
                t.unexplained += 1;
                if out.unexplained.len() < MAX_LISTED {
                    out.unexplained.push(Unexplained {
                        protocol: r.protocol,
                        intended_s: s(r.intended),
                        done_s: s(r.done),
                        cause,
                        during: faults
                            .iter()
                            .filter(|f| overlaps(f))
                            .map(Fault::label)
                            .collect(),
                    });
                }
            }
        }
    }
    out
}
