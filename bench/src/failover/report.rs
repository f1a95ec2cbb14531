//! The failover report: a markdown table and JSON.

use serde::{Deserialize, Serialize};

use super::analysis::{FaultResult, Seen};

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub command: String,
    /// Requests per second of the load (GET only).
    pub rate: f64,
    pub baseline_s: f64,
    pub window_s: f64,
    /// The resources applied to control (the YAML of the spill-over phases).
    pub resources: String,
    pub results: Vec<FaultResult>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("none".into(), |v| format!("{v:.0}"))
}

fn seen(s: Option<Seen>) -> &'static str {
    match s {
        Some(Seen::Answer) => " (answer)",
        Some(Seen::FailedTry) => " (failed try)",
        Some(Seen::LastTry) => " (last try)",
        None => "",
    }
}

/// The report as markdown: one row per fault.
pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "Load: GET only (all idempotent), {:.0} req/s open loop into web's outbound listener; \
         {:.0} s baseline, then the fault and a {:.0} s fault window.\n\n",
        r.rate, r.baseline_s, r.window_s
    );
    s += "| fault | failover | control | requests (fault window) | failed | failures | last try to the faulty endpoint (ms after the fault) | last failure (ms) | p99 before (ms) | p99 during (ms) | added p99 (ms) | answered during |\n";
    s += "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |\n";
    for f in &r.results {
        let failures: Vec<String> = f
            .during
            .failures
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let answered: Vec<String> = f
            .during
            .answered_by
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {}{} | {} | {:.2} | {:.2} | {:+.2} | {} |\n",
            f.fault,
            f.failover,
            if f.control_up { "up" } else { "down" },
            f.during.requests,
            f.during.failed,
            if failures.is_empty() {
                "-".into()
            } else {
                failures.join(", ")
            },
            ms(f.last_to_faulty_ms),
            seen(f.last_to_faulty_seen),
            ms(f.last_failure_ms),
            f.before.p99_ms,
            f.during.p99_ms,
            f.added_p99_ms(),
            answered.join(", ")
        );
    }
    let notes: Vec<String> = r
        .results
        .iter()
        .flat_map(|f| f.notes.iter().map(move |n| format!("- {}: {n}\n", f.fault)))
        .collect();
    if !notes.is_empty() {
        s += "\n";
        s += &notes.concat();
    }
    s
}
