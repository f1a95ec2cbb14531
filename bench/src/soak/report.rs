//! The soak's report: counts per traffic, failures by cause and by the
//! fault that explains them, the faults injected, the hostile clients,
//! resource trends, and the verdict with every reason it failed.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::abuse::{RapidReset, Slowloris};
use super::attribution::Attribution;
use super::resources::{Series, Trend};

/// One fault as the report lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultEntry {
    pub kind: String,
    pub target: String,
    /// Seconds from the start of the load.
    pub start_s: f64,
    pub restored_s: f64,
}

/// Everything one soak found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Requests per second of each traffic.
    pub rates: BTreeMap<String, f64>,
    pub cert_lifetime_s: f64,
    pub grace_s: f64,
    pub attribution: Attribution,
    pub faults: Vec<FaultEntry>,
    /// Faults by kind (route changes included).
    pub fault_counts: BTreeMap<String, u64>,
    /// Route changes control refused while it was up.
    pub route_changes_refused: Vec<String>,
    /// "renewing the certificate" lines in the proxies' logs.
    pub cert_renewals: u64,
    pub slowloris: Slowloris,
    pub rapid_reset: RapidReset,
    pub trends: Vec<Trend>,
    pub series: Vec<Series>,
    /// Why the soak failed; empty when it passed.
    pub failures: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The reasons `r` fails, from its counts (see the pass rules in the
/// module doc of [`crate::soak`]).
pub fn verdict(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for (p, t) in &r.attribution.tallies {
        if t.unexplained > 0 {
            out.push(format!(
                "{}: {} failed requests no fault explains",
                p.name(),
                t.unexplained
            ));
        }
        if p.idempotent() && t.failed > 0 {
            out.push(format!(
                "{}: {} idempotent requests failed (retries must cover every injected fault): {:?}",
                p.name(),
                t.failed,
                t.by_cause
            ));
        }
        if t.sent == 0 {
            out.push(format!("{}: no request was sent", p.name()));
        }
    }
    for t in r.trends.iter().filter(|t| !t.ok) {
        out.push(format!(
            "{} (pid {}): {} rose by {:.0} over the window after warm-up (mean {:.0}, {:+.2} % per hour); at most {:.0} allowed",
            t.process,
            t.pid,
            t.measure,
            t.rise,
            t.mean,
            t.per_hour * 100.0,
            t.allowed
        ));
    }
    if !r.route_changes_refused.is_empty() {
        out.push(format!(
            "{} route changes refused by a running control: {}",
            r.route_changes_refused.len(),
            r.route_changes_refused.join("; ")
        ));
    }
    if r.duration_s >= 60.0 && r.slowloris.closed_by_proxy == 0 {
        out.push("the proxy closed no slowloris connection".into());
    }
    out
}

fn mib(b: f64) -> String {
    format!("{:.1}", b / (1024.0 * 1024.0))
}

/// The report as markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Soak: {}\n", if r.passed() { "PASS" } else { "FAIL" });
    let _ = writeln!(s, "`{}`\n", r.command);
    let rates: Vec<String> = r
        .rates
        .iter()
        .map(|(k, v)| format!("{k} {v:.0}/s"))
        .collect();
    let _ = writeln!(
        s,
        "{:.0} s of open-loop load ({}), certificates living {:.0} s, warm-up {:.0} s, fault grace {:.0} s.\n",
        r.duration_s,
        rates.join(", "),
        r.cert_lifetime_s,
        r.warmup_s,
        r.grace_s
    );
    let _ = writeln!(
        s,
        "| traffic | sent | succeeded | failed | failed by cause | explained by | unexplained |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | --- | --- | ---: |");
    for (p, t) in &r.attribution.tallies {
        let join = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "-".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {} | {} |",
            p.name(),
            if p.idempotent() { " (idempotent)" } else { "" },
            t.sent,
            t.succeeded,
            t.failed,
            join(&t.by_cause),
            join(&t.by_fault),
            t.unexplained
        );
    }
    let counts: Vec<String> = r
        .fault_counts
        .iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect();
    let _ = writeln!(
        s,
        "\nFaults: {}; certificate renewals: {}.",
        counts.join(", "),
        r.cert_renewals
    );
    let _ = writeln!(
        s,
        "Slowloris: {} connections, {} closed by the proxy (longest open {:.1} s). \
         Rapid reset: {} streams reset on {} connections, {} ended by the proxy.\n",
        r.slowloris.connections,
        r.slowloris.closed_by_proxy,
        r.slowloris.longest_open_s,
        r.rapid_reset.streams_reset,
        r.rapid_reset.connections,
        r.rapid_reset.closed_by_proxy
    );
    if !r.trends.is_empty() {
        let _ = writeln!(
            s,
            "| process (after warm-up) | measure | mean | fitted rise | per hour | allowed rise | ok |"
        );
        let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: | --- |");
        for t in &r.trends {
            let (mean, rise, allowed) = if t.measure == "rss" {
                (
                    format!("{} MiB", mib(t.mean)),
                    format!("{} MiB", mib(t.rise)),
                    format!("{} MiB", mib(t.allowed)),
                )
            } else {
                (
                    format!("{:.1}", t.mean),
                    format!("{:.1}", t.rise),
                    format!("{:.1}", t.allowed),
                )
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:+.2} % | {} | {} |",
                t.process,
                t.measure,
                mean,
                rise,
                t.per_hour * 100.0,
                allowed,
                match (t.judged, t.ok) {
                    (false, _) => "not judged (window under 5 min)",
                    (true, true) => "yes",
                    (true, false) => "NO",
                }
            );
        }
    }
    if !r.attribution.unexplained.is_empty() {
        let _ = writeln!(
            s,
            "\nUnexplained failures (first {}):\n",
            r.attribution.unexplained.len()
        );
        for u in &r.attribution.unexplained {
            let _ = writeln!(
                s,
                "- {} {} at {:.2} s to {:.2} s{}",
                u.protocol.name(),
                u.cause,
                u.intended_s,
                u.done_s,
                if u.during.is_empty() {
                    String::new()
                } else {
                    format!(" (during {})", u.during.join(", "))
                }
            );
        }
    }
    if r.failures.is_empty() {
        let _ = writeln!(s, "\nPASS");
    } else {
        let _ = writeln!(s, "\nFAIL:");
        for f in &r.failures {
            let _ = writeln!(s, "- {f}");
        }
    }
    s
}
