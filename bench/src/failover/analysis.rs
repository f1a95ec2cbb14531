//! What one fault phase measured, from the load's timeline and the web
//! proxy's logs (pure: text and numbers in, a [`FaultResult`] out).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::load::{Failure, Outcome};

/// The moments that split a phase, CLOCK_MONOTONIC nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When the fault was injected.
    pub fault: u64,
    /// The end of the fault window: no request intended at or after it
    /// counts.
    pub end: u64,
}

/// The requests of one side of the fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    pub requests: u64,
    /// Client-visible failures: a non-2xx status or no response (all GET,
    /// so all idempotent).
    pub failed: u64,
    /// Failures by kind: a status ("503") or the transport error.
    pub failures: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Answers (2xx) by the instance that answered (`x-instance`).
    pub answered_by: BTreeMap<String, u64>,
}

/// Where the last try to the faulty endpoint after the fault was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Seen {
    /// An answer of the faulty instance reached the client.
    Answer,
    /// The web proxy's debug log: a try to it failed (or its fault was
    /// answered by the proxy).
    FailedTry,
    /// The web proxy's access log: a request that started after the fault
    /// had its last try there.
    LastTry,
}

/// One fault's row of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultResult {
    pub fault: String,
    /// The instance the fault hit (its app, proxy or host).
    pub faulty: String,
    /// Its proxy's inbound address, as the web proxy's logs name it.
    pub faulty_addr: String,
    pub failover: String,
    pub control_up: bool,
    /// Requests that ended before the fault.
    pub before: Slice,
    /// Requests in flight at the fault or intended after it, within the
    /// fault window.
    pub during: Slice,
    /// From the fault to the last try that went to the faulty endpoint
    /// (None: none after the fault).
    pub last_to_faulty_ms: Option<f64>,
    pub last_to_faulty_seen: Option<Seen>,
    /// From the fault to the end of the last request that failed.
    pub last_failure_ms: Option<f64>,
    /// The fault window, seconds.
    pub window_s: f64,
    pub notes: Vec<String>,
}

impl FaultResult {
    /// The p99 the fault added to the baseline's, ms.
    pub fn added_p99_ms(&self) -> f64 {
        self.during.p99_ms - self.before.p99_ms
    }
}

fn failure_label(r: &Result<u16, Failure>) -> Option<String> {
    match r {
        Ok(s) if (200..300).contains(s) => None,
        Ok(s) => Some(s.to_string()),
        Err(f) => Some(
            match f {
                Failure::Connect => "connect",
                Failure::Write => "write",
                Failure::Read => "read",
                Failure::Parse => "parse",
                Failure::Closed => "closed",
                Failure::Timeout => "timeout",
            }
            .to_string(),
        ),
    }
}

/// The nearest-rank percentile `p` (0..=1) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sums up `outcomes`.
pub fn slice<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Slice {
    let mut s = Slice::default();
    let mut lat = Vec::new();
    for o in outcomes {
        s.requests += 1;
        lat.push(o.done.saturating_sub(o.intended));
        match failure_label(&o.result) {
            Some(l) => {
                s.failed += 1;
                *s.failures.entry(l).or_default() += 1;
            }
            None => {
                let who = o.instance.map_or("(none)".to_string(), |t| {
                    String::from_utf8_lossy(t.as_bytes()).into_owned()
                });
                *s.answered_by.entry(who).or_default() += 1;
            }
        }
    }
    lat.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    s.p50_ms = ms(percentile(&lat, 0.50));
    s.p99_ms = ms(percentile(&lat, 0.99));
    s.max_ms = ms(lat.last().copied().unwrap_or(0));
    s
}

/// Requests that ended before the fault, and those in flight at it or
/// intended after it (before the window's end).
pub fn split(outcomes: &[Outcome], w: Window) -> (Slice, Slice) {
    let before = slice(outcomes.iter().filter(|o| o.done < w.fault));
    let during = slice(
        outcomes
            .iter()
            .filter(|o| o.done >= w.fault && o.intended < w.end),
    );
    (before, during)
}

/// The last answer of `faulty` that ended after the fault, ms after it.
pub fn last_answer_by(outcomes: &[Outcome], w: Window, faulty: &str) -> Option<f64> {
    outcomes
        .iter()
        .filter(|o| o.done >= w.fault && o.intended < w.end)
        .filter(|o| {
            o.instance
                .is_some_and(|t| t.as_bytes() == faulty.as_bytes())
        })
        .map(|o| (o.done - w.fault) as f64 / 1e6)
        .reduce(f64::max)
}

/// The end of the last failed request of the window, ms after the fault.
pub fn last_failure(outcomes: &[Outcome], w: Window) -> Option<f64> {
    outcomes
        .iter()
        .filter(|o| o.done >= w.fault && o.intended < w.end)
        .filter(|o| failure_label(&o.result).is_some())
        .map(|o| (o.done - w.fault) as f64 / 1e6)
        .reduce(f64::max)
}

/// Unix nanoseconds of an RFC 3339 UTC time as the proxy writes it
/// (`2026-12-05T10:11:12.123456Z`; the fraction is optional).
pub fn parse_utc(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i128>().ok()? * 10i128.pow(9 - frac.len() as u32)
    };
    let days = days_from_civil(y, m, day);
    let secs = days * 86_400 + h * 3600 + min * 60 + sec;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Does `line` name `addr` (not as the prefix of a longer port)?
fn names(line: &str, addr: &str) -> bool {
    line.match_indices(addr).any(|(i, _)| {
        !line[i + addr.len()..]
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit())
    })
}

/// The times (unix ns) of the web proxy's debug lines about requests
/// (`coremesh_proxy::forward`: a try that failed and moved or retried,
/// a connect that failed, a fault answered locally) naming `addr`.
pub fn failed_tries(stderr_log: &str, addr: &str) -> Vec<i128> {
    stderr_log
        .lines()
        .filter(|l| {
            l.contains(" DEBUG ") && l.contains("coremesh_proxy::forward") && names(l, addr)
        })
        .filter_map(|l| parse_utc(l.split_whitespace().next()?))
        .collect()
}

/// One line of the proxy's access log, the fields read here.
#[derive(Debug, Deserialize)]
struct AccessLine {
    ts: String,
    duration_us: u64,
    upstream: Option<String>,
}

/// The start times (unix ns: `ts`, the end, minus `duration_us`) of the
/// requests of an access log whose last try went to `addr`.
pub fn last_tries(access_log: &str, addr: &str) -> Vec<i128> {
    access_log
        .lines()
        .filter_map(|l| serde_json::from_str::<AccessLine>(l).ok())
        .filter(|a| a.upstream.as_deref() == Some(addr))
        .filter_map(|a| Some(parse_utc(&a.ts)? - i128::from(a.duration_us) * 1000))
        .collect()
}

/// The latest of `times` (unix ns) at or after `fault` (unix ns), as ms
/// after it.
pub fn last_after(times: &[i128], fault: i128) -> Option<f64> {
    times
        .iter()
        .filter(|&&t| t >= fault)
        .map(|&t| (t - fault) as f64 / 1e6)
        .reduce(f64::max)
}

/// The latest of the three sightings of a try to the faulty endpoint.
pub fn last_to_faulty(
    answer: Option<f64>,
    failed: Option<f64>,
    last: Option<f64>,
) -> Option<(f64, Seen)> {
    [
        (answer, Seen::Answer),
        (failed, Seen::FailedTry),
        (last, Seen::LastTry),
    ]
    .into_iter()
    .filter_map(|(t, s)| Some((t?, s)))
    .reduce(|a, b| if b.0 > a.0 { b } else { a })
}
