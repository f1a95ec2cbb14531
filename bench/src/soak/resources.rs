//! Every process's RSS, open fds and sockets over time, and whether they
//! stay flat after the warm-up.
//!
//! A process restarted by a fault starts a new series (its own pid), with
//! a warm-up of its own from its start. A series is judged when its time
//! after its warm-up covers at least [`JUDGED_SHARE`] of the run's time
//! after the warm-up (the processes no fault restarts: web's proxy, the
//! api-v1-b proxy and app; and those restarted early enough); the others
//! are drawn and listed only.
//!
//! A run whose time after the warm-up is shorter than [`MIN_WINDOW_S`]
//! judges nothing: the first minutes of a process are its allocator
//! finding its high-water mark (measured in a 3-minute soak: web's proxy
//! rose 0.5 MiB of 18 MiB in steps between 30 s and 130 s, then stayed
//! flat), which a line through two minutes reads as a leak of tens of
//! percent per hour. Its trends are still reported.
//!
//! The judgement: a least-squares line through the samples after the
//! warm-up; its rise over the window must stay within 2 % of the series'
//! mean per hour. A window shorter than an hour is allowed the 2 % over the
//! whole window (a per-hour slope extrapolated from a few minutes is mostly
//! noise).
//!
//! Fds are judged as two measures, not as the raw count, which follows the
//! load generators' keep-alive connections (closed when idle, reopened on
//! demand: a 10-minute soak saw web's proxy's count rise by 38 while its
//! non-socket fds stayed at exactly 11): `files`, the fds that are not
//! sockets (files, pipes, eventfds, the rings: any of them leaking is a
//! bug), and `close-wait`, sockets whose peer has closed and the process
//! has not (a connection the process forgot). Each gets 2 fds of slack (a
//! connection closing at the last sample is not a leak). The raw count and
//! the sockets are drawn.

use std::fs;

use serde::Serialize;

/// How much of the post-warm-up window a series must cover to be judged.
pub const JUDGED_SHARE: f64 = 0.8;
/// The allowed rise, as a share of the mean, per hour.
pub const RISE_PER_HOUR: f64 = 0.02;
/// Fds a series may rise besides [`RISE_PER_HOUR`].
pub const FD_SLACK: f64 = 2.0;
/// The shortest time after the warm-up whose trends are judged.
pub const MIN_WINDOW_S: f64 = 300.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds from the start of the load.
    pub t_s: f64,
    pub rss_bytes: u64,
    pub fds: u64,
    /// Open fds that are sockets (connections and listeners).
    pub sockets: u64,
    /// Of those, TCP sockets in CLOSE_WAIT (the peer closed, this process
    /// has not).
    pub close_wait: u64,
}

/// A process's readings, from its start (or the load's) to its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// `web proxy`, `api-v2 app`, `control`.
    pub process: String,
    pub pid: u32,
    pub samples: Vec<Sample>,
}

/// Reads `pid`'s RSS, fds and sockets from /proc; None once it is gone.
pub fn read(pid: u32, t_s: f64) -> Option<Sample> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split(' ').nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let (mut fds, mut inodes) = (0, Vec::new());
    for e in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        if let Ok(l) = fs::read_link(e.path()) {
            let l = l.to_string_lossy();
            if let Some(inode) = l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.push(inode.parse::<u64>().unwrap_or(0));
            }
        }
    }
    let mut waiting = Vec::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            waiting.extend(close_wait_inodes(&text));
        }
    }
    let close_wait = inodes.iter().filter(|i| waiting.contains(i)).count() as u64;
    Some(Sample {
        t_s,
        rss_bytes: pages * page,
        fds,
        sockets: inodes.len() as u64,
        close_wait,
    })
}

/// The inodes of the CLOSE_WAIT sockets in a /proc/net/tcp(6) table.
pub fn close_wait_inodes(table: &str) -> Vec<u64> {
    // Columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode.
    const CLOSE_WAIT: &str = "08";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.get(3) == Some(&CLOSE_WAIT))
                .then(|| cols.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The least-squares line through `(x, y)`: (slope, mean of y). None for
/// fewer than two distinct x.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some((sxy / sxx, my))
}

/// A measure's name, how to read it from a sample, and its slack.
type Measure = (&'static str, fn(&Sample) -> f64, f64);

/// One measure of one judged series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    pub process: String,
    pub pid: u32,
    /// `rss`, `files` (fds that are not sockets) or `close-wait`.
    pub measure: &'static str,
    pub mean: f64,
    /// The fitted line's rise over the window (negative: it fell).
    pub rise: f64,
    /// The rise as a share of the mean, per hour.
    pub per_hour: f64,
    /// The most it may rise over the window.
    pub allowed: f64,
    /// False when the window is too short to judge ([`MIN_WINDOW_S`]).
    pub judged: bool,
    /// Within the allowance, or not judged.
    pub ok: bool,
}

/// The trends of every series that covers the window from `warmup_s` to
/// `end_s` (see the module doc).
pub fn trends(series: &[Series], warmup_s: f64, end_s: f64) -> Vec<Trend> {
    let window = end_s - warmup_s;
    if window <= 0.0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for s in series {
        let Some(born) = s.samples.first().map(|x| x.t_s) else {
            continue;
        };
        // Every process warms up from its first sample (about 0 s for
        // those that started with the load).
        let from = born + warmup_s;
        let after: Vec<&Sample> = s.samples.iter().filter(|x| x.t_s >= from).collect();
        let (Some(first), Some(last)) = (after.first(), after.last()) else {
            continue;
        };
        if last.t_s - first.t_s < JUDGED_SHARE * window {
            continue;
        }
        let measures: [Measure; 3] = [
            ("rss", |x| x.rss_bytes as f64, 0.0),
            (
                "files",
                |x| x.fds.saturating_sub(x.sockets) as f64,
                FD_SLACK,
            ),
            ("close-wait", |x| x.close_wait as f64, FD_SLACK),
        ];
        for (measure, get, slack) in measures {
            let pts: Vec<(f64, f64)> = after.iter().map(|x| (x.t_s, get(x))).collect();
            let Some((slope, mean)) = fit(&pts) else {
                continue;
            };
            let rise = slope * window;
            let allowed = RISE_PER_HOUR * mean * (window / 3600.0).max(1.0) + slack;
            out.push(Trend {
                process: s.process.clone(),
                pid: s.pid,
                measure,
                mean,
                rise,
                per_hour: if mean > 0.0 {
                    slope * 3600.0 / mean
                } else {
                    0.0
                },
                allowed,
                judged: window >= MIN_WINDOW_S,
                ok: window < MIN_WINDOW_S || rise <= allowed,
            });
        }
    }
    out
}
