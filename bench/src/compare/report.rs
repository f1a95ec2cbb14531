//! Medians, spread and ratios of the samples, and the markdown report.

use serde::{Deserialize, Serialize};

use super::{IdleSample, Results, Sample, Scenario, COREMESH, DIRECT};
use crate::load::fmt_us;

/// One metric of one target in one scenario, over the rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub target: String,
    /// rps, proxy_cpu_us_per_req, proxy_cores_used, p50_us, p90_us, p99_us, p999_us,
    /// errors, generator_cores_used, bytes_per_conn.
    pub metric: String,
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// median / coremesh's median of the same metric and scenario.
    pub ratio_vs_coremesh: Option<f64>,
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

type Metric = (&'static str, fn(&Sample) -> Option<f64>);

const METRICS: [Metric; 10] = [
    ("rps", |s| Some(s.achieved_rps)),
    ("proxy_cpu_us_per_req", |s| s.proxy_cpu_us_per_req),
    ("proxy_cores_used", |s| s.proxy_cores_used),
    ("p50_us", |s| Some(s.latency_us.p50)),
    ("p90_us", |s| Some(s.latency_us.p90)),
    ("p99_us", |s| Some(s.latency_us.p99)),
    ("p999_us", |s| Some(s.latency_us.p999)),
    ("errors", |s| Some(s.errors.total() as f64)),
    ("generator_cores_used", |s| Some(s.generator_cores_used)),
    ("origin_cores_used", |s| Some(s.origin_cores_used)),
];

/// Summaries for every (scenario, target, metric) that has values.
pub fn summarize(samples: &[Sample], idle: &[IdleSample]) -> Vec<Summary> {
    let mut out = Vec::new();
    let mut keys: Vec<(Scenario, String)> = Vec::new();
    for s in samples {
        if !keys
            .iter()
            .any(|(sc, t)| *sc == s.scenario && *t == s.target)
        {
            keys.push((s.scenario, s.target.clone()));
        }
    }
    for (scenario, target) in &keys {
        for (metric, get) in METRICS {
            let mut v: Vec<f64> = samples
                .iter()
                .filter(|s| s.scenario == *scenario && s.target == *target)
                .filter_map(get)
                .collect();
            if v.is_empty() {
                continue;
            }
            out.push(summary(*scenario, target, metric, &mut v));
        }
    }
    let mut idle_targets: Vec<&str> = Vec::new();
    for s in idle {
        if !idle_targets.contains(&s.target.as_str()) {
            idle_targets.push(&s.target);
        }
    }
    for t in idle_targets {
        let mut v: Vec<f64> = idle
            .iter()
            .filter(|s| s.target == t)
            .map(|s| s.bytes_per_conn)
            .collect();
        out.push(summary(Scenario::Idle, t, "bytes_per_conn", &mut v));
    }
    // Ratios against coremesh's median.
    let base: Vec<(Scenario, String, f64)> = out
        .iter()
        .filter(|s| s.target == COREMESH)
        .map(|s| (s.scenario, s.metric.clone(), s.median))
        .collect();
    for s in &mut out {
        s.ratio_vs_coremesh = base
            .iter()
            .find(|(sc, m, _)| *sc == s.scenario && *m == s.metric)
            .filter(|(_, _, b)| *b != 0.0 && b.is_finite())
            .map(|(_, _, b)| s.median / b);
    }
    out
}

fn summary(scenario: Scenario, target: &str, metric: &str, v: &mut [f64]) -> Summary {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Summary {
        scenario,
        target: target.into(),
        metric: metric.into(),
        n: v.len(),
        median: median(v),
        min,
        max,
        ratio_vs_coremesh: None,
    }
}

/// Finds one summary.
pub fn find<'a>(
    r: &'a Results,
    scenario: Scenario,
    target: &str,
    metric: &str,
) -> Option<&'a Summary> {
    r.summary
        .iter()
        .find(|s| s.scenario == scenario && s.target == target && s.metric == metric)
}

/// Targets in the order they ran, direct first.
pub fn target_order(r: &Results) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in &r.samples {
        if !v.contains(&s.target) {
            v.push(s.target.clone());
        }
    }
    for s in &r.idle {
        if !v.contains(&s.target) {
            v.push(s.target.clone());
        }
    }
    v
}

fn cell(s: Option<&Summary>, fmt: fn(f64) -> String) -> String {
    match s {
        None => "-".into(),
        Some(s) => {
            let spread = if s.n > 1 {
                format!(" ({}–{})", fmt(s.min), fmt(s.max))
            } else {
                String::new()
            };
            let ratio = match s.ratio_vs_coremesh {
                Some(r) if s.target != COREMESH => format!(" **{r:.2}x**"),
                _ => String::new(),
            };
            format!("{}{spread}{ratio}", fmt(s.median))
        }
    }
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}
fn f2(v: f64) -> String {
    format!("{v:.2}")
}
fn f0(v: f64) -> String {
    format!("{v:.0}")
}

/// The markdown report: one table per question the harness answers.
pub fn markdown(r: &Results) -> String {
    let order = target_order(r);
    let proxies: Vec<&String> = order.iter().filter(|t| *t != DIRECT).collect();
    let sat: Vec<Scenario> = [
        Scenario::Small,
        Scenario::Body16k,
        Scenario::Body1m,
        Scenario::Newconn,
    ]
    .into_iter()
    .filter(|sc| r.samples.iter().any(|s| s.scenario == *sc))
    .collect();
    let mut md = String::new();
    md += &format!(
        "Machine: {}. Proxy on CPU {}, origin and load generator on CPU {}. {} round(s) of {:.1} s (+{:.1} s warm-up) per measurement, {} connections. Cells: median (min–max over rounds) **ratio vs coremesh**.\n\n",
        r.machine, r.proxy_cores, r.load_cores, r.rounds, r.duration_s, r.warmup_s, r.connections
    );

    if !sat.is_empty() && !proxies.is_empty() {
        md += "### Proxy CPU per request (us, user+sys of all proxy threads and processes; lower is better)\n\n";
        md += &header(
            "proxy",
            sat.iter().map(|s| s.name()).chain(
                r.samples
                    .iter()
                    .any(|s| s.scenario == Scenario::Rate)
                    .then_some("rate"),
            ),
        );
        for t in &proxies {
            let mut row = vec![t.to_string()];
            for sc in sat.iter().chain(
                r.samples
                    .iter()
                    .any(|s| s.scenario == Scenario::Rate)
                    .then_some(&Scenario::Rate),
            ) {
                row.push(cell(find(r, *sc, t, "proxy_cpu_us_per_req"), f2));
            }
            md += &row_md(&row);
        }
        md += "\n";
    }

    if !sat.is_empty() {
        md += "### Throughput at saturation (req/s; higher is better)\n\n";
        md += &header("target", sat.iter().map(|s| s.name()));
        for t in &order {
            if !r.samples.iter().any(|s| s.target == *t) {
                continue;
            }
            let mut row = vec![t.to_string()];
            for sc in &sat {
                row.push(cell(find(r, *sc, t, "rps"), f0));
            }
            md += &row_md(&row);
        }
        md += "\nProxy CPU use at saturation (cores; near 1.0 means the proxy was the bottleneck, below it the generator or origin was):";
        for t in &proxies {
            if let Some(s) = find(r, Scenario::Small, t, "proxy_cores_used") {
                md += &format!(" {t} {:.2};", s.median);
            }
        }
        md += " load generator + origin:";
        for t in &order {
            if let (Some(g), Some(o)) = (
                find(r, Scenario::Small, t, "generator_cores_used"),
                find(r, Scenario::Small, t, "origin_cores_used"),
            ) {
                md += &format!(" {t} {:.2};", g.median + o.median);
            }
        }
        md += "\n\n";
    }

    if r.samples.iter().any(|s| s.scenario == Scenario::Rate) {
        md += &format!(
            "### Latency at a fixed {:.0} req/s (open loop, from intended send time; lower is better)\n\n",
            r.fixed_rate
        );
        md += &header(
            "target",
            [
                "p50",
                "p99",
                "p99.9",
                "added p99 vs direct",
                "errors",
                "generator+origin cores",
            ]
            .into_iter(),
        );
        let direct_p99 = find(r, Scenario::Rate, DIRECT, "p99_us").map(|s| s.median);
        for t in &order {
            if !r
                .samples
                .iter()
                .any(|s| s.target == *t && s.scenario == Scenario::Rate)
            {
                continue;
            }
            let p99 = find(r, Scenario::Rate, t, "p99_us");
            let added = match (p99, direct_p99) {
                (Some(p), Some(d)) if t != DIRECT => fmt_us(p.median - d),
                _ => "-".into(),
            };
            md += &row_md(&[
                t.to_string(),
                cell(find(r, Scenario::Rate, t, "p50_us"), f1),
                cell(p99, f1),
                cell(find(r, Scenario::Rate, t, "p999_us"), f1),
                added,
                find(r, Scenario::Rate, t, "errors").map_or("-".into(), |s| f0(s.max)),
                match (
                    find(r, Scenario::Rate, t, "generator_cores_used"),
                    find(r, Scenario::Rate, t, "origin_cores_used"),
                ) {
                    (Some(g), Some(o)) => format!("{:.2}", g.median + o.median),
                    _ => "-".into(),
                },
            ]);
        }
        md += "\n";
    }

    if !r.idle.is_empty() {
        md += &format!(
            "### RSS per idle keep-alive client connection (bytes, {} connections each after one request; lower is better)\n\n",
            r.idle_connections
        );
        md += &header("proxy", ["bytes/conn"].into_iter());
        for t in &proxies {
            if let Some(s) = find(r, Scenario::Idle, t, "bytes_per_conn") {
                md += &row_md(&[t.to_string(), cell(Some(s), f0)]);
            }
        }
        md += "\n";
    }

    // Errors anywhere deserve a line.
    let errs: Vec<String> = r
        .samples
        .iter()
        .filter(|s| s.errors.total() > 0)
        .map(|s| {
            format!(
                "round {} {} {}: {}",
                s.round,
                s.scenario.name(),
                s.target,
                s.errors.describe()
            )
        })
        .collect();
    if !errs.is_empty() {
        md += "Errors:\n";
        for e in errs {
            md += &format!("- {e}\n");
        }
        md += "\n";
    }
    let aa = format!("{COREMESH}#2");
    if let Some(s) =
        find(r, Scenario::Small, &aa, "proxy_cpu_us_per_req").and_then(|s| s.ratio_vs_coremesh)
    {
        md += &format!(
            "Noise band (A/A, coremesh#2 vs coremesh): CPU per request {s:.2}x (small); differences within that are noise.\n\n"
        );
    }
    let skipped: Vec<String> = r
        .targets
        .iter()
        .filter(|t| t.status != "ok")
        .map(|t| format!("- {}: {}", t.label, t.note))
        .collect();
    if !skipped.is_empty() || !r.notes.is_empty() {
        md += "Not measured / notes:\n";
        for s in skipped {
            md += &format!("{s}\n");
        }
        for n in &r.notes {
            md += &format!("- {n}\n");
        }
        md += "\n";
    }
    md
}

fn header<'a>(first: &'a str, cols: impl Iterator<Item = &'a str>) -> String {
    let cols: Vec<&str> = std::iter::once(first).chain(cols).collect();
    let mut s = format!("| {} |\n", cols.join(" | "));
    s += &format!("|{}\n", " --- |".repeat(cols.len()));
    s
}

fn row_md(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Errors;

    fn s(round: usize, target: &str, cpu: f64) -> Sample {
        Sample {
            round,
            scenario: Scenario::Small,
            target: target.into(),
            target_rate: 0.0,
            achieved_rps: 1000.0 * round as f64,
            responses_total: 10,
            unsent: 0,
            latency_us: Default::default(),
            errors: Errors::default(),
            proxy_cpu_us_per_req: Some(cpu),
            proxy_cores_used: Some(1.0),
            generator_cores_used: 0.5,
            generator_us_per_req: 1.0,
            origin_cores_used: 0.5,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn ratios_against_coremesh() {
        let samples = vec![
            s(1, COREMESH, 10.0),
            s(2, COREMESH, 12.0),
            s(3, COREMESH, 11.0),
            s(1, "nginx", 15.0),
            s(2, "nginx", 17.0),
            s(3, "nginx", 16.5),
        ];
        let sum = summarize(&samples, &[]);
        let n = sum
            .iter()
            .find(|x| x.target == "nginx" && x.metric == "proxy_cpu_us_per_req")
            .unwrap();
        assert_eq!((n.median, n.min, n.max, n.n), (16.5, 15.0, 17.0, 3));
        assert!((n.ratio_vs_coremesh.unwrap() - 1.5).abs() < 1e-9);
        let c = sum
            .iter()
            .find(|x| x.target == COREMESH && x.metric == "rps")
            .unwrap();
        assert_eq!(c.ratio_vs_coremesh, Some(1.0));
    }
}
