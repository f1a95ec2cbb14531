//! The burst table (see [`crate::compare::burst`]): RSS before, at the
//! peak, after the idle time and once the clients left, and issue 20's
//! verdict.

use super::{cell, f0, find, header, median, row_md};
use crate::compare::burst::{
    BurstRss, MAX_BYTES_PER_IDLE_CONN, MAX_CLOSED_VS_BASELINE, ORIGIN_DELAY,
};
use crate::compare::{IdleSample, Results, Scenario};

/// The median over rounds of `get` for `target`'s burst samples.
fn median_of(r: &Results, target: &str, get: impl Fn(&IdleSample, &BurstRss) -> f64) -> f64 {
    let mut v: Vec<f64> = r
        .idle
        .iter()
        .filter(|s| s.scenario == Scenario::Burst && s.target == target)
        .filter_map(|s| s.burst.as_ref().map(|b| get(s, b)))
        .collect();
    median(&mut v)
}

/// The burst table: RSS before, at the peak, after the idle time and after
/// the clients left, and issue 20's verdict per proxy; empty when the
/// scenario did not run.
pub fn markdown(r: &Results, proxies: &[&String]) -> String {
    let runs: Vec<&IdleSample> = r
        .idle
        .iter()
        .filter(|s| s.scenario == Scenario::Burst && s.burst.is_some())
        .collect();
    let Some(first) = runs.first() else {
        return String::new();
    };
    let idle_s = first.burst.map_or(0.0, |b| b.idle_s);
    let mut md = format!(
        "### Memory after a burst (RSS; {} new connections with one request each in flight together (origin delay {} ms), then idle {:.0} s; lower is better)\n\n",
        first.connections,
        ORIGIN_DELAY.as_millis(),
        idle_s
    );
    md += &header(
        "proxy",
        [
            "baseline",
            "peak",
            "after idle",
            "bytes/idle conn",
            "clients gone",
            "gone / baseline",
            "target",
        ]
        .into_iter(),
    );
    let kib = |b: f64| format!("{:.0} KiB", b / 1024.0);
    for t in proxies {
        let Some(per_conn) = find(r, Scenario::Burst, t, "bytes_per_conn") else {
            continue;
        };
        let base = median_of(r, t, |s, _| s.rss_before as f64);
        let peak = median_of(r, t, |_, b| b.peak as f64);
        let after = median_of(r, t, |s, _| s.rss_after as f64);
        let closed = median_of(r, t, |_, b| b.closed as f64);
        let gone = closed / base.max(1.0);
        let met = per_conn.median <= MAX_BYTES_PER_IDLE_CONN && gone <= MAX_CLOSED_VS_BASELINE;
        md += &row_md(&[
            t.to_string(),
            kib(base),
            kib(peak),
            kib(after),
            cell(Some(per_conn), f0),
            kib(closed),
            format!("{gone:.2}x"),
            if met { "met" } else { "missed" }.into(),
        ]);
    }
    md += &format!(
        "\nTarget (issue 20): at most {MAX_BYTES_PER_IDLE_CONN:.0} bytes per idle client connection after the burst, and RSS once the clients are gone at most {MAX_CLOSED_VS_BASELINE:.2}x the pre-burst baseline.\n\n"
    );
    md
}

#[cfg(test)]
mod tests;
