//! `coremesh-bench soak` (issue 20, item 2): the quickstart's mesh under
//! open-loop load and a schedule of faults, for as long as asked.
//!
//! Hypothesis: the mesh loses no request it may retry, every failure it
//! has is the direct effect of a fault on that request's way, and no
//! process grows (memory, fds) while the faults repeat.
//!
//! The mesh ([`topology`], on loopback): control; web's proxy; three api
//! instances (v1-a, v1-b, v2: an origin and its proxy each) behind a
//! Route whose GETs are retried; and db, a TCP service (an origin behind a
//! proxy with `protocol = "tcp"`). Control issues certificates of a short
//! lifetime (`--cert-lifetime`, 2 min by default), so every proxy renews
//! its certificate every minute or so all along.
//!
//! The load, open loop, each request timed from when it was due
//! ([`crate::load`]): HTTP/1.1 GETs, h2c GETs and unary gRPC calls to
//! web's outbound listener for api, and HTTP/1.1 GETs through web's TCP
//! listener for db. Beside it a slowloris client and an h2 rapid-reset
//! client ([`abuse`]).
//!
//! The faults, one every `--fault-interval` in this rotation ([`ROTATION`]):
//! SIGKILL an app or an endpoint's proxy and start it again on the same
//! port after `--down`; SIGKILL control and start it again on its data;
//! SIGHUP a proxy. api-v1-b is only ever reloaded, so its processes live
//! through the whole run. Every `--route-interval`, api's Route is applied
//! with other weights (90/10, 50/50, 10/90, 70/30).
//!
//! Every `--sample-interval`, each process's RSS, open fds and sockets are
//! read from /proc ([`resources`]).
//!
//! The report ([`report`]; `report.json`, `report.md` and `resources.svg`
//! in `--out`): requests sent, succeeded and failed per traffic, failures
//! by cause and by the fault that explains them ([`attribution`]), or
//! unexplained. It passes when
//! - no failure is unexplained;
//! - no idempotent request (HTTP/1.1 and h2 GETs) failed at all;
//! - no judged process's RSS, non-socket fds or CLOSE_WAIT sockets rose
//!   after the warm-up by more than 2 % per hour ([`resources`]; judged when at least 5 minutes follow
//!   the warm-up, so not in CI's 3-minute run);
//! - control, while up, accepted every route change;
//! - the proxy closed slowloris connections (runs of a minute or more).

pub mod abuse;
pub mod attribution;
pub mod chart;
pub mod report;
pub mod resources;
pub mod topology;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use self::attribution::{Fault, FaultKind, Protocol, Request};
use self::report::{FaultEntry, Report};
use self::resources::Series;
use self::topology::{Bins, SoakMesh};
use crate::compare::proxies::StartError;
use crate::load::{self, http2, Failure, LoadReport};
use crate::mesh::MeshError;
use crate::operator::OperatorError;
use crate::sys;

/// The faults, in the order they come (then again from the start).
pub const ROTATION: [(FaultKind, &str); 10] = [
    (FaultKind::AppKill, "api-v1-a"),
    (FaultKind::Sighup, "web"),
    (FaultKind::EndpointKill, "api-v2"),
    (FaultKind::ControlRestart, "control"),
    (FaultKind::AppKill, "db"),
    (FaultKind::Sighup, "api-v1-b"),
    (FaultKind::EndpointKill, "db"),
    (FaultKind::AppKill, "api-v2"),
    (FaultKind::EndpointKill, "api-v1-a"),
    (FaultKind::Sighup, "db"),
];

/// The weights (v1, v2) api's Route cycles through.
const WEIGHTS: [(u32, u32); 4] = [(90, 10), (50, 50), (10, 90), (70, 30)];

/// Why the soak could not run (a failed soak is a [`Report`] whose
/// `failures` say why).
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("applying {}", path.display())]
    Apply {
        path: PathBuf,
        #[source]
        source: Box<OperatorError>,
    },
    #[error("{what} did not start")]
    Start {
        what: String,
        #[source]
        source: StartError,
    },
    #[error("the origin of {node} printed no `listening on ADDR` line within 15 s; see {}", log.display())]
    NoOrigin { node: String, log: PathBuf },
    #[error("the restarted coremesh-control printed no `listening` line within 15 s; see {}", log.display())]
    ControlRestart { log: PathBuf },
    #[error("web's proxy logged no `tcp:db=ADDR` in its `bound` line; see {}", log.display())]
    NoTcpListener { log: PathBuf },
    #[error("the mesh did not answer from every api instance and db without failures within {timeout:?}: {last}")]
    NotHealthy { timeout: Duration, last: String },
    #[error("cannot write {}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    ReadLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {traffic} load failed")]
    Load {
        traffic: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the rapid-reset client failed")]
    RapidReset(#[source] std::io::Error),
    #[error("fault {fault} at {at_s:.1} s")]
    Fault {
        fault: String,
        at_s: f64,
        #[source]
        source: Box<SoakError>,
    },
    #[error(transparent)]
    Chart(#[from] crate::compare::chart::ChartError),
}

/// What `coremesh-bench soak` runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    /// Resource trends are fitted after this.
    pub warmup: Duration,
    pub fault_interval: Duration,
    /// How long a killed process stays down.
    pub down: Duration,
    /// After a fault's target is back, how long failures are still its.
    pub grace: Duration,
    pub route_interval: Duration,
    pub sample_interval: Duration,
    pub cert_lifetime: Duration,
    pub http1_rate: f64,
    pub h2_rate: f64,
    pub grpc_rate: f64,
    pub tcp_rate: f64,
    pub bins: Bins,
    pub out_dir: PathBuf,
    pub command: String,
}

pub(crate) fn log(msg: &str) {
    eprintln!("[soak] {msg}");
}

/// A scoped thread's result; its panic goes on in the caller.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// What the fault loop did.
#[derive(Default)]
struct Injected {
    faults: Vec<Fault>,
    route_changes: u64,
    route_refused: Vec<String>,
    series: Vec<Series>,
}

/// Starts the mesh, runs the load, the hostile clients and the faults for
/// `opts.duration`, and reports (also into `opts.out_dir`).
pub fn run(opts: &Options) -> Result<Report, SoakError> {
    sys::raise_nofile(65_536);
    crate::mesh::fresh_dir(&opts.out_dir)?;
    let mut mesh = topology::start(&opts.bins, &opts.out_dir, opts.cert_lifetime)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (api, tcp) = (mesh.web_outbound, mesh.web_tcp);
    let h2 = |mode, rate: f64| http2::H2Config {
        url: format!("http://{api}{} (authority api)", topology::LOAD_PATH),
        addr: api,
        authority: "api".into(),
        path: topology::LOAD_PATH.into(),
        headers: Vec::new(),
        mode,
        rate,
        duration: opts.duration,
        warmup: Duration::ZERO,
        connections: 4,
        streams: ((rate * 2.5 / 4.0).ceil() as usize).clamp(4, 256),
        threads: 1,
        drain: Duration::from_secs(6),
    };
    let conns = |rate: f64| ((rate * 2.5).ceil() as usize).clamp(8, 1024);
    let http1_cfg = topology::http1_config(
        api,
        "api",
        opts.http1_rate,
        opts.duration,
        conns(opts.http1_rate),
    );
    let tcp_cfg = topology::http1_config(
        tcp,
        "db",
        opts.tcp_rate,
        opts.duration,
        conns(opts.tcp_rate),
    );
    let h2_cfg = h2(http2::Mode::Get, opts.h2_rate);
    let grpc_cfg = h2(http2::Mode::Grpc { reply_size: 128 }, opts.grpc_rate);
    log(&format!(
        "load for {:.0} s: http/1.1 {}/s, h2 {}/s, grpc {}/s, tcp {}/s; a fault every {:.0} s",
        opts.duration.as_secs_f64(),
        opts.http1_rate,
        opts.h2_rate,
        opts.grpc_rate,
        opts.tcp_rate,
        opts.fault_interval.as_secs_f64()
    ));
    let t0 = sys::now_ns();
    let outcome = std::thread::scope(|s| {
        let h1 = s.spawn(|| load::run_with_timeline(&http1_cfg));
        let tc = s.spawn(|| load::run_with_timeline(&tcp_cfg));
        let h2 = s.spawn(|| http2::run_with_timeline(&h2_cfg, true));
        let gr = s.spawn(|| http2::run_with_timeline(&grpc_cfg, true));
        let slow = {
            let stop = stop.clone();
            s.spawn(move || abuse::slowloris(api, stop))
        };
        let reset = {
            let stop = stop.clone();
            s.spawn(move || abuse::rapid_reset(api, stop))
        };
        let injected = inject(&mut mesh, opts, t0);
        stop.store(true, Ordering::Relaxed);
        let h1 = join(h1);
        let tc = join(tc);
        let h2 = join(h2);
        let gr = join(gr);
        let slow = join(slow);
        let reset = join(reset);
        (injected, h1, tc, h2, gr, slow, reset)
    });
    let (injected, h1, tc, h2, gr, slow, reset) = outcome;
    let end = sys::now_ns();
    let mut injected = injected?;
    let load_err = |traffic| move |source| SoakError::Load { traffic, source };
    let h1 = h1.map_err(load_err("http/1.1"))?;
    let tc = tc.map_err(load_err("tcp"))?;
    let h2 = h2.map_err(load_err("h2"))?;
    let gr = gr.map_err(load_err("grpc"))?;
    let reset = reset.map_err(SoakError::RapidReset)?;
    let cert_renewals = count_renewals(&mesh);
    drop(mesh);

    let mut requests = Vec::new();
    h1_requests(Protocol::Http1, &h1, end, &mut requests);
    h1_requests(Protocol::Tcp, &tc, end, &mut requests);
    h2_requests(Protocol::H2, &h2, end, &mut requests);
    h2_requests(Protocol::Grpc, &gr, end, &mut requests);
    let grace = opts.grace.as_nanos() as u64;
    let attribution = attribution::attribute(&requests, &injected.faults, grace, t0);
    let duration_s = opts.duration.as_secs_f64();
    let warmup_s = opts.warmup.as_secs_f64();
    let trends = resources::trends(&injected.series, warmup_s, duration_s);
    let mut fault_counts: BTreeMap<String, u64> = BTreeMap::new();
    for f in &injected.faults {
        *fault_counts.entry(f.kind.name().to_string()).or_default() += 1;
    }
    fault_counts.insert(FaultKind::RouteChange.name().into(), injected.route_changes);
    let s = |ns: u64| ns.saturating_sub(t0) as f64 / 1e9;
    let mut report = Report {
        command: opts.command.clone(),
        duration_s,
        warmup_s,
        rates: [
            (Protocol::Http1, opts.http1_rate),
            (Protocol::H2, opts.h2_rate),
            (Protocol::Grpc, opts.grpc_rate),
            (Protocol::Tcp, opts.tcp_rate),
        ]
        .into_iter()
        .map(|(p, r)| (p.name().to_string(), r))
        .collect(),
        cert_lifetime_s: opts.cert_lifetime.as_secs_f64(),
        grace_s: opts.grace.as_secs_f64(),
        attribution,
        faults: injected
            .faults
            .iter()
            .map(|f| FaultEntry {
                kind: f.kind.name().into(),
                target: f.target.clone(),
                start_s: s(f.start),
                restored_s: s(f.restored),
            })
            .collect(),
        fault_counts,
        route_changes_refused: std::mem::take(&mut injected.route_refused),
        cert_renewals,
        slowloris: slow,
        rapid_reset: reset,
        trends,
        series: std::mem::take(&mut injected.series),
        failures: Vec::new(),
    };
    report.failures = report::verdict(&report);
    chart::write(
        &report.series,
        duration_s,
        warmup_s,
        &opts.out_dir.join("resources.svg"),
    )?;
    Ok(report)
}

/// The fault loop: injects the faults of [`ROTATION`] and the route
/// changes on schedule, brings killed processes back, and samples every
/// process, until the load's end.
fn inject(mesh: &mut SoakMesh, opts: &Options, t0: u64) -> Result<Injected, SoakError> {
    let ns = |d: Duration| d.as_nanos() as u64;
    let end = t0 + ns(opts.duration);
    let mut out = Injected::default();
    let mut by_pid: BTreeMap<u32, usize> = BTreeMap::new();
    let mut next_fault = t0 + ns(opts.fault_interval);
    let mut next_route = t0 + ns(opts.route_interval);
    let mut next_sample = t0;
    let mut rotation = ROTATION.iter().cycle();
    let mut weights = WEIGHTS.iter().cycle().skip(1);
    // The fault whose target is down: (index in out.faults, when it comes back).
    let mut down: Option<(usize, u64)> = None;
    let secs = |t: u64| t.saturating_sub(t0) as f64 / 1e9;
    loop {
        let now = sys::now_ns();
        if now >= end {
            break;
        }
        if now >= next_sample {
            for (process, pid) in mesh.processes() {
                let Some(sample) = resources::read(pid, secs(now)) else {
                    continue;
                };
                let i = *by_pid.entry(pid).or_insert_with(|| {
                    out.series.push(Series {
                        process,
                        pid,
                        samples: Vec::new(),
                    });
                    out.series.len() - 1
                });
                out.series[i].samples.push(sample);
            }
            next_sample += ns(opts.sample_interval);
        }
        if let Some((i, at)) = down {
            if now >= at {
                let f = &mut out.faults[i];
                let back = match f.kind {
                    FaultKind::AppKill => mesh.restart_app(&f.target),
                    FaultKind::EndpointKill => mesh.restart_proxy(&f.target),
                    _ => mesh.restart_control(),
                };
                back.map_err(|e| SoakError::Fault {
                    fault: f.label(),
                    at_s: secs(now),
                    source: Box::new(e),
                })?;
                f.restored = sys::now_ns();
                log(&format!("{:7.1} s  {} back", secs(f.restored), f.label()));
                down = None;
            }
        }
        // No fault whose window would outlast the load.
        let room = ns(opts.down + opts.grace) + ns(Duration::from_secs(2));
        if down.is_none() && now >= next_fault && now + room < end {
            let &(kind, target) = rotation.next().expect("a cycle");
            // Taken before the signal: a connection the kill cuts can end
            // before kill(2) and wait(2) return (a 3-minute soak had a TCP
            // request fail 1 ms before a start taken after them).
            let start = sys::now_ns();
            match kind {
                FaultKind::AppKill => mesh.kill_app(target),
                FaultKind::EndpointKill => mesh.kill_proxy(target),
                FaultKind::ControlRestart => mesh.kill_control(),
                _ => mesh.sighup(target),
            }
            out.faults.push(Fault {
                kind,
                target: target.to_string(),
                start,
                restored: start,
            });
            log(&format!("{:7.1} s  {} {target}", secs(start), kind.name()));
            if kind != FaultKind::Sighup {
                down = Some((out.faults.len() - 1, start + ns(opts.down)));
            }
            next_fault += ns(opts.fault_interval);
        }
        if now >= next_route {
            let &(v1, v2) = weights.next().expect("a cycle");
            let control_down =
                down.is_some_and(|(i, _)| out.faults[i].kind == FaultKind::ControlRestart);
            match mesh.control.apply(&topology::route_yaml(v1, v2)) {
                Ok(_) => out.route_changes += 1,
                Err(_) if control_down => {}
                Err(e) => out.route_refused.push(format!(
                    "at {:.1} s: {}",
                    secs(now),
                    crate::error_chain(&e)
                )),
            }
            next_route += ns(opts.route_interval);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(out)
}

fn failure_name(f: Failure) -> &'static str {
    match f {
        Failure::Connect => "connect",
        Failure::Write => "write",
        Failure::Read => "read",
        Failure::Parse => "parse",
        Failure::Closed => "closed",
        Failure::Timeout => "timeout",
    }
}

fn status_failure(status: u16) -> Option<&'static str> {
    match status {
        200..=399 => None,
        400..=499 => Some("4xx"),
        _ => Some("5xx"),
    }
}

/// The HTTP/1.1 generator's outcomes as [`Request`]s; requests it never
/// sent count as failed at `end`.
fn h1_requests(
    protocol: Protocol,
    (report, timeline): &(LoadReport, Vec<load::Outcome>),
    end: u64,
    out: &mut Vec<Request>,
) {
    for o in timeline {
        out.push(Request {
            protocol,
            intended: o.intended,
            done: o.done,
            failure: match o.result {
                Ok(status) => status_failure(status),
                Err(f) => Some(failure_name(f)),
            },
        });
    }
    unsent(protocol, report.unsent, end, out);
}

/// The HTTP/2 generator's outcomes as [`Request`]s; streams still in
/// flight when its drain ran out, and requests it never sent, count as
/// failed at `end`.
fn h2_requests(
    protocol: Protocol,
    (report, timeline): &(LoadReport, Vec<http2::StreamOutcome>),
    end: u64,
    out: &mut Vec<Request>,
) {
    let mut timeouts = report.errors.timeout;
    for o in timeline {
        let failure = match o.result {
            Ok((status, grpc)) => status_failure(status).or_else(|| {
                grpc.filter(|g| *g != crate::grpc::OK)
                    .map(|_| "grpc-status")
            }),
            Err(f) => Some(failure_name(f)),
        };
        if o.result == Err(Failure::Timeout) {
            timeouts = timeouts.saturating_sub(1);
        }
        out.push(Request {
            protocol,
            intended: o.intended,
            done: o.done,
            failure,
        });
    }
    for _ in 0..timeouts {
        out.push(Request {
            protocol,
            intended: end,
            done: end,
            failure: Some("timeout"),
        });
    }
    unsent(protocol, report.unsent, end, out);
}

fn unsent(protocol: Protocol, n: u64, end: u64, out: &mut Vec<Request>) {
    for _ in 0..n {
        out.push(Request {
            protocol,
            intended: end,
            done: end,
            failure: Some("unsent"),
        });
    }
}

/// "renewing the certificate" lines in every proxy log of the run.
fn count_renewals(mesh: &SoakMesh) -> u64 {
    let mut n = 0;
    let mut dirs = vec![mesh.web.log_path.parent().map(PathBuf::from)];
    dirs.extend(mesh.instances.iter().map(|i| Some(i.member.dir.clone())));
    for dir in dirs.into_iter().flatten() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("stderr") {
                if let Ok(text) = fs::read_to_string(e.path()) {
                    n += text.matches("renewing the certificate").count() as u64;
                }
            }
        }
    }
    n
}

#[cfg(test)]
mod tests;
