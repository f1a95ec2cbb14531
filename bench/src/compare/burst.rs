//! The `burst` scenario (issue 20): the memory a proxy keeps after a burst.
//!
//! Hypothesis: a proxy that gives back what a burst made it take (pooled
//! buffers, upstream connections, its allocator's free heap) holds, once
//! the burst is over and its client connections sit idle, no more than
//! those connections' own state: at most 1 KiB per idle client
//! connection, and, once the clients have gone too, a total RSS within
//! 10% of the pre-burst baseline.
//!
//! For every one-hop proxy, a fresh instance (as in the `idle` scenario)
//! in front of a second origin that holds every response
//! [`ORIGIN_DELAY`], so that the whole burst is in flight in the proxy at
//! once:
//! 1. a warm-up burst of [`WARMUP_CONNS`] connections (closed again), a
//!    settle, then the baseline RSS;
//! 2. N new connections (`--burst-conns`), all connected first, then one
//!    request written on each, then every response read: N requests in
//!    flight together; RSS when the last response is in (peak);
//! 3. the connections stay open, idle, for `--burst-idle` (30 s); RSS
//!    then, less the baseline, over N is the bytes per idle connection;
//! 4. the clients close (RST), and after [`CLOSED_SETTLE`] the RSS is what
//!    the proxy keeps with nobody connected.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::proxies::{self, Running};
use super::{
    error_chain, log, set_linger_zero, sys, IdleError, IdleSample, Runner, Scenario, Target, SMALL,
};

/// How long the burst's origin holds every response: long enough that the
/// harness writes all N requests (a few ms per hundred) before the first
/// answer leaves, so the proxy holds them all at once.
pub const ORIGIN_DELAY: Duration = Duration::from_millis(500);

/// Connections of the warm-up burst before the baseline: the proxy's
/// one-off allocations (first upstream connections, buffers, tables) are
/// then in the baseline, not charged to the burst.
pub const WARMUP_CONNS: usize = 32;

/// Time after the clients leave before the last RSS reading.
pub const CLOSED_SETTLE: Duration = Duration::from_secs(5);

/// Issue 20's targets: bytes per idle client connection after the burst,
/// and RSS with nobody connected against the baseline.
pub const MAX_BYTES_PER_IDLE_CONN: f64 = 1024.0;
pub const MAX_CLOSED_VS_BASELINE: f64 = 1.10;

/// What a burst measurement adds to an [`IdleSample`] (whose `rss_before`
/// is the baseline, `rss_after` the RSS after the idle time, and
/// `bytes_per_conn` their difference over the connections).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct BurstRss {
    /// RSS when the burst's last response was read.
    pub peak: u64,
    /// Seconds the connections sat idle before `rss_after`.
    pub idle_s: f64,
    /// RSS [`CLOSED_SETTLE`] after the clients closed.
    pub closed: u64,
}

/// The burst of one round through a fresh instance of every one-hop proxy,
/// in front of `origin` (the delayed one). A failure is a note.
pub(super) fn measure(
    r: &Runner<'_>,
    targets: &[Target],
    origin: SocketAddr,
    round: usize,
    out: &mut Vec<IdleSample>,
    notes: &mut Vec<String>,
) {
    let setup = r.setup;
    for t in targets {
        let Some((kind, bin)) = &t.start else {
            continue;
        };
        let fresh = proxies::start(
            setup.nofile,
            *kind,
            &format!("{}-burst", t.label),
            bin,
            origin,
            &setup.out_dir,
            setup.proxy_pin(),
            &setup.extra_config(&t.label),
        );
        let measured = fresh.map_err(IdleError::Start).and_then(|mut p| {
            let s = burst_rss(&p, &t.label, r.opts.burst_conns, r.opts.burst_idle, round);
            p.stop();
            s
        });
        match measured {
            Ok(s) => {
                let b = s.burst.expect("set by burst_rss");
                log(&format!(
                    "round {round} burst    {:<18} {} conns: baseline {} KiB, peak {} KiB, idle {:.0} bytes/conn, closed {} KiB",
                    t.label,
                    s.connections,
                    s.rss_before / 1024,
                    b.peak / 1024,
                    s.bytes_per_conn,
                    b.closed / 1024
                ));
                out.push(s);
            }
            Err(e) => notes.push(format!(
                "{} burst round {round}: {}",
                t.label,
                error_chain(&e)
            )),
        }
    }
}

/// Opens `n` connections to `addr`, then writes one request on each, then
/// reads every response: `n` requests in flight together. The connections
/// stay open (closing with RST when dropped).
fn burst(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>, IdleError> {
    let path = format!("/size/{SMALL}");
    let req = crate::http::build_request(&path, super::ORIGIN_HOST, &[], 0, false);
    let mut conns = Vec::with_capacity(n);
    for index in 0..n {
        let s = proxies::connect(addr).map_err(|source| IdleError::Connection { index, source })?;
        set_linger_zero(&s);
        conns.push(s);
    }
    for (index, s) in conns.iter_mut().enumerate() {
        std::io::Write::write_all(s, &req).map_err(|e| IdleError::Connection {
            index,
            source: proxies::ProbeError::Write(e),
        })?;
    }
    for (index, s) in conns.iter_mut().enumerate() {
        match proxies::read_status(s) {
            Ok(200) => {}
            Ok(status) => return Err(IdleError::Status { index, status }),
            Err(source) => return Err(IdleError::Connection { index, source }),
        }
    }
    Ok(conns)
}

/// The four readings of one burst through `r` (see the module doc).
fn burst_rss(
    r: &Running,
    label: &str,
    n: usize,
    idle: Duration,
    round: usize,
) -> Result<IdleSample, IdleError> {
    let pid = r.pid();
    drop(burst(r.addr, WARMUP_CONNS)?);
    std::thread::sleep(Duration::from_secs(1));
    let before = sys::tree_rss_bytes(pid);
    let conns = burst(r.addr, n)?;
    let peak = sys::tree_rss_bytes(pid);
    std::thread::sleep(idle);
    let after = sys::tree_rss_bytes(pid);
    let count = conns.len();
    drop(conns);
    std::thread::sleep(CLOSED_SETTLE);
    let closed = sys::tree_rss_bytes(pid);
    Ok(IdleSample {
        round,
        scenario: Scenario::Burst,
        target: label.to_string(),
        connections: count,
        rss_before: before,
        rss_after: after,
        bytes_per_conn: (after as f64 - before as f64) / count.max(1) as f64,
        burst: Some(BurstRss {
            peak,
            idle_s: idle.as_secs_f64(),
            closed,
        }),
    })
}

#[cfg(test)]
mod tests;
