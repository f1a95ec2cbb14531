//! Medians, spread and ratios of the samples, and the markdown report.

use serde::{Deserialize, Serialize};

use super::mtls::{is_app_unix, APP_UNIX};
use super::{IdleSample, Results, Sample, Scenario, COREMESH, DIRECT};
use crate::load::fmt_us;

pub mod burst;
pub mod http2;

/// One metric of one target in one scenario, over the rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub target: String,
    /// rps, proxy_cpu_us_per_req (and its parts proxy_user_us_per_req,
    /// proxy_sys_us_per_req), proxy_context_switches_per_req,
    /// tcp_segments_per_req, proxy_cores_used, p50_us, p90_us, p99_us, p999_us,
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

const METRICS: [Metric; 15] = [
    ("rps", |s| Some(s.achieved_rps)),
    ("proxy_cpu_us_per_req", |s| s.proxy_cpu_us_per_req),
    ("proxy_user_us_per_req", |s| s.proxy_user_us_per_req),
    ("proxy_sys_us_per_req", |s| s.proxy_sys_us_per_req),
    ("proxy_context_switches_per_req", |s| {
        s.proxy_context_switches_per_req
    }),
    ("tcp_segments_per_req", |s| s.tcp_segments_per_req),
    ("proxy_syscalls_per_req", |s| s.proxy_syscalls_per_req),
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
    let mut idle_keys: Vec<(Scenario, &str)> = Vec::new();
    for s in idle {
        if !idle_keys.contains(&(s.scenario, s.target.as_str())) {
            idle_keys.push((s.scenario, &s.target));
        }
    }
    for (sc, t) in idle_keys {
        let mut v: Vec<f64> = idle
            .iter()
            .filter(|s| s.scenario == sc && s.target == t)
            .map(|s| s.bytes_per_conn)
            .collect();
        out.push(summary(sc, t, "bytes_per_conn", &mut v));
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

pub(super) fn cell(s: Option<&Summary>, fmt: fn(f64) -> String) -> String {
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

pub(super) fn f1(v: f64) -> String {
    format!("{v:.1}")
}
pub(super) fn f2(v: f64) -> String {
    format!("{v:.2}")
}
pub(super) fn f0(v: f64) -> String {
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
    md += &cpu_md(r, &sat, &proxies);
    md += &cpu_split(r, &proxies);
    md += &kernel_work(r, &order);
    md += &throughput_md(r, &sat, &order, &proxies);
    md += &latency_md(r, &order);
    md += &policy_md(r);
    md += &mtls_md(r);
    md += &app_unix_md(r);
    md += &http2::h2_md(r);
    md += &idle_md(r, &proxies);
    md += &burst::markdown(r, &proxies);
    md += &trailer_md(r);
    md
}

/// Proxy CPU per request at saturation (and at the fixed rate).
fn cpu_md(r: &Results, sat: &[Scenario], proxies: &[&String]) -> String {
    let mut md = String::new();
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
        for t in proxies {
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
    md
}

/// Throughput at saturation, and how busy the proxy and the load side were.
fn throughput_md(r: &Results, sat: &[Scenario], order: &[String], proxies: &[&String]) -> String {
    let mut md = String::new();
    if !sat.is_empty() {
        md += "### Throughput at saturation (req/s; higher is better)\n\n";
        md += &header("target", sat.iter().map(|s| s.name()));
        for t in order {
            if !r.samples.iter().any(|s| s.target == *t) {
                continue;
            }
            let mut row = vec![t.to_string()];
            for sc in sat {
                row.push(cell(find(r, *sc, t, "rps"), f0));
            }
            md += &row_md(&row);
        }
        md += "\nProxy CPU use at saturation (cores; near 1.0 means the proxy was the bottleneck, below it the generator or origin was):";
        for t in proxies {
            if let Some(s) = find(r, Scenario::Small, t, "proxy_cores_used") {
                md += &format!(" {t} {:.2};", s.median);
            }
        }
        md += " load generator + origin:";
        for t in order {
            if let (Some(g), Some(o)) = (
                find(r, Scenario::Small, t, "generator_cores_used"),
                find(r, Scenario::Small, t, "origin_cores_used"),
            ) {
                md += &format!(" {t} {:.2};", g.median + o.median);
            }
        }
        md += "\n\n";
    }
    md
}

/// Latency at the fixed rate, and what each proxy adds to the direct p99.
fn latency_md(r: &Results, order: &[String]) -> String {
    let mut md = String::new();
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
        for t in order {
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
    md
}

/// RSS per idle connection.
fn idle_md(r: &Results, proxies: &[&String]) -> String {
    let mut md = String::new();
    if r.idle.iter().any(|s| s.scenario == Scenario::Idle) {
        md += &format!(
            "### RSS per idle keep-alive client connection (bytes, {} connections each after one request; lower is better)\n\n",
            r.idle_connections
        );
        md += &header("proxy", ["bytes/conn"].into_iter());
        for t in proxies {
            if let Some(s) = find(r, Scenario::Idle, t, "bytes_per_conn") {
                md += &row_md(&[t.to_string(), cell(Some(s), f0)]);
            }
        }
        md += "\n";
    }
    md
}

/// Errors, the A/A noise band, skipped targets and the run's notes.
fn trailer_md(r: &Results) -> String {
    let mut md = String::new();
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
        .map(|t| match t.topology.as_str() {
            "" | "proxy" => format!("- {}: {}", t.label, t.note),
            topology => format!("- {} ({topology}): {}", t.label, t.note),
        })
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

/// Issue 6's allowance for the policy: 5% over plain forwarding, plus the
/// A/A band.
pub const POLICY_ALLOWANCE: f64 = 0.05;

/// Policy cost against plain forwarding, from the medians of CPU per
/// request.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyCost {
    /// coremesh policy-full / coremesh policy-plain.
    pub ratio: f64,
    /// The same for the A/A twin (coremesh#2), when it ran.
    pub ratio_aa: Option<f64>,
    /// The largest distance from 1 of coremesh#2 / coremesh in either
    /// scenario: what two identical pairs differ by (0 without the twin).
    pub band: f64,
    /// 1 + [`POLICY_ALLOWANCE`] + band.
    pub limit: f64,
    pub met: bool,
}

/// `plain` and `full`: (coremesh, coremesh#2) medians of CPU per request.
pub fn policy_cost(plain: (f64, Option<f64>), full: (f64, Option<f64>)) -> PolicyCost {
    let ratio = full.0 / plain.0;
    let ratio_aa = match (plain.1, full.1) {
        (Some(p), Some(f)) => Some(f / p),
        _ => None,
    };
    let band = [plain.1.map(|p| p / plain.0), full.1.map(|f| f / full.0)]
        .into_iter()
        .flatten()
        .map(|aa| (aa - 1.0).abs())
        .fold(0.0, f64::max);
    let limit = 1.0 + POLICY_ALLOWANCE + band;
    PolicyCost {
        ratio,
        ratio_aa,
        band,
        limit,
        met: ratio <= limit,
    }
}

/// The policy-cost table: both proxies' CPU per request with and without
/// the policy, the A/A band, and issue 6's target.
fn policy_md(r: &Results) -> String {
    let (plain, full) = (Scenario::PolicyPlain, Scenario::PolicyFull);
    let ran = |t: &str, sc: Scenario| r.samples.iter().any(|s| s.target == t && s.scenario == sc);
    let targets: Vec<String> = target_order(r)
        .into_iter()
        .filter(|t| ran(t, plain) || ran(t, full))
        .collect();
    if targets.is_empty() {
        return String::new();
    }
    let cpu = "proxy_cpu_us_per_req";
    let mut md = String::from(
        "### Policy cost: 100 Routes and a Resilience block against plain forwarding

",
    );
    md += "load generator -> web proxy -> mutual TLS -> api proxy -> origin, policy from coremesh-control. CPU per request is both proxies together (user+sys of both process trees); lower is better. `policy-plain`: the api service has no Route and no Resilience; `policy-full`: the web proxy holds 100 Routes (the api's has 5 rules, a 90/10 subset split, retries) and the api's Resilience (p2c-ewma, circuit breaker, outlier detection, retry budget, 1,000,000 req/s rate limit).

";
    md += &header(
        "target",
        [
            "policy-plain CPU us/req",
            "policy-full CPU us/req",
            "full / plain",
            "policy-plain req/s",
            "policy-full req/s",
            "proxy cores (plain, full)",
        ]
        .into_iter(),
    );
    let median = |sc: Scenario, t: &str, m: &str| find(r, sc, t, m).map(|s| s.median);
    for t in &targets {
        let ratio = match (median(full, t, cpu), median(plain, t, cpu)) {
            (Some(f), Some(p)) if p > 0.0 => format!("**{:.3}x**", f / p),
            _ => "-".into(),
        };
        let cores =
            |sc| median(sc, t, "proxy_cores_used").map_or("-".into(), |c| format!("{c:.2}"));
        md += &row_md(&[
            t.to_string(),
            cell(find(r, plain, t, cpu), f2),
            cell(find(r, full, t, cpu), f2),
            ratio,
            cell(find(r, plain, t, "rps"), f0),
            cell(find(r, full, t, "rps"), f0),
            format!("{}, {}", cores(plain), cores(full)),
        ]);
    }
    md += "
";
    let aa = format!("{COREMESH}#2");
    let (Some(p), Some(f)) = (median(plain, COREMESH, cpu), median(full, COREMESH, cpu)) else {
        return md;
    };
    let c = policy_cost((p, median(plain, &aa, cpu)), (f, median(full, &aa, cpu)));
    if c.band > 0.0 {
        md += &format!(
            "Noise band (A/A, coremesh#2 vs coremesh, the larger of the two scenarios): {:.1}%.",
            c.band * 100.0
        );
        if let Some(x) = c.ratio_aa {
            md += &format!(" The twin pair measures full / plain = {x:.3}x.");
        }
        md += "

";
    } else {
        md += "No A/A pair ran (--no-aa): the noise band is unknown and counted as 0.

";
    }
    md += &format!(
        "Target (issue 6: the full policy costs at most plain + 5% + the A/A band = {:.3}x): coremesh full / plain = **{:.3}x**: {}.

",
        c.limit,
        c.ratio,
        if c.met { "met" } else { "missed" }
    );
    md
}

/// Issue 5's target for the mesh hop: coremesh's pair at most this times
/// the best peer pair's CPU per request.
pub const MTLS_TARGET: f64 = 0.9;
/// What issue 5 aims for.
pub const MTLS_AIM: f64 = 0.75;

/// coremesh's pair against the best peer pair, from the medians of CPU
/// per request in one mtls scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshVerdict {
    /// The peer (not coremesh) with the lowest median.
    pub best_peer: String,
    pub peer_cpu: f64,
    pub coremesh_cpu: f64,
    /// coremesh / best peer.
    pub ratio: f64,
    /// |coremesh#2 / coremesh - 1|, when the twin ran.
    pub band: Option<f64>,
    /// ratio <= [`MTLS_TARGET`].
    pub met: bool,
    /// ratio <= [`MTLS_AIM`].
    pub aim_met: bool,
}

/// `peers`: (label, median) of every pair that is not coremesh.
pub fn mesh_verdict(
    coremesh: f64,
    twin: Option<f64>,
    peers: &[(String, f64)],
) -> Option<MeshVerdict> {
    verdict(coremesh, twin, peers, MTLS_TARGET, MTLS_AIM)
}

/// coremesh against the best of `peers` ((label, median) of every target
/// that is not coremesh) with a `target` ratio and an `aim`.
pub fn verdict(
    coremesh: f64,
    twin: Option<f64>,
    peers: &[(String, f64)],
    target: f64,
    aim: f64,
) -> Option<MeshVerdict> {
    let (best_peer, peer_cpu) = peers
        .iter()
        .filter(|(_, v)| v.is_finite() && *v > 0.0)
        .min_by(|a, b| a.1.total_cmp(&b.1))?
        .clone();
    let ratio = coremesh / peer_cpu;
    Some(MeshVerdict {
        best_peer,
        peer_cpu,
        coremesh_cpu: coremesh,
        ratio,
        band: twin.map(|t| (t / coremesh - 1.0).abs()),
        met: ratio <= target,
        aim_met: ratio <= aim,
    })
}

/// The mesh-hop tables: both proxies' CPU per request and throughput at
/// saturation, latency at the fixed rate, and issue 5's verdict.
fn mtls_md(r: &Results) -> String {
    let (sat, fixed) = (Scenario::Mtls, Scenario::MtlsRate);
    let ran = |t: &str, sc: Scenario| r.samples.iter().any(|s| s.target == t && s.scenario == sc);
    let order: Vec<String> = target_order(r)
        .into_iter()
        .filter(|t| ran(t, sat) || ran(t, fixed))
        .collect();
    if order.is_empty() {
        return String::new();
    }
    let cpu = "proxy_cpu_us_per_req";
    let median = |sc: Scenario, t: &str, m: &str| find(r, sc, t, m).map(|s| s.median);
    let mut md = String::from(
        "### Mesh hop: outbound proxy -> mutual TLS 1.3 -> inbound proxy

",
    );
    md += "load generator -> outbound proxy (plain HTTP, `Host: api`) -> mutual TLS 1.3 (client certificate, server verified, keep-alive pool, session reuse) -> inbound proxy -> origin; every target but `direct` is a pair of processes of one kind, one worker / thread / shard each, both on the proxy CPUs. CPU per request is both processes together (user+sys of both process trees); lower is better. 128 B responses.

";
    if order.iter().any(|t| ran(t, sat)) {
        md += &header(
            "target",
            [
                "CPU us/req (both proxies)",
                "vs best peer",
                "req/s at saturation",
                "proxy cores",
            ]
            .into_iter(),
        );
        let best = best_peer(r, sat);
        for t in order.iter().filter(|t| ran(t, sat)) {
            let vs = match (median(sat, t, cpu), &best) {
                (Some(c), Some((_, b))) => format!("{:.2}x", c / b),
                _ => "-".into(),
            };
            md += &row_md(&[
                t.to_string(),
                cell(find(r, sat, t, cpu), f2),
                vs,
                cell(find(r, sat, t, "rps"), f0),
                median(sat, t, "proxy_cores_used").map_or("-".into(), |c| format!("{c:.2}")),
            ]);
        }
        md += "
";
    }
    if order.iter().any(|t| ran(t, fixed)) {
        md += &format!(
            "At a fixed {:.0} req/s (open loop, latency from each request's intended send time):

",
            r.mtls_fixed_rate
        );
        md += &header(
            "target",
            [
                "CPU us/req (both proxies)",
                "p50",
                "p99",
                "p99.9",
                "added p50 vs direct",
                "added p99 vs direct",
                "errors",
            ]
            .into_iter(),
        );
        let direct = |m: &str| median(fixed, DIRECT, m);
        for t in order.iter().filter(|t| ran(t, fixed)) {
            let added = |m: &str| match (median(fixed, t, m), direct(m)) {
                (Some(p), Some(d)) if t != DIRECT => fmt_us(p - d),
                _ => "-".into(),
            };
            md += &row_md(&[
                t.to_string(),
                cell(find(r, fixed, t, cpu), f2),
                cell(find(r, fixed, t, "p50_us"), f1),
                cell(find(r, fixed, t, "p99_us"), f1),
                cell(find(r, fixed, t, "p999_us"), f1),
                added("p50_us"),
                added("p99_us"),
                find(r, fixed, t, "errors").map_or("-".into(), |s| f0(s.max)),
            ]);
        }
        md += "
";
    }
    let aa = format!("{COREMESH}#2");
    for sc in [sat, fixed] {
        let Some(c) = median(sc, COREMESH, cpu) else {
            continue;
        };
        let peers: Vec<(String, f64)> = order
            .iter()
            .filter(|t| *t != DIRECT && !t.starts_with(COREMESH) && !is_app_unix(t))
            .filter_map(|t| median(sc, t, cpu).map(|v| (t.clone(), v)))
            .collect();
        let Some(v) = mesh_verdict(c, median(sc, &aa, cpu), &peers) else {
            md += &format!(
                "Target (issue 5), {}: no peer pair ran.

",
                sc.name()
            );
            continue;
        };
        let band = v.band.map_or("no A/A pair ran".into(), |b| {
            format!("A/A band (coremesh#2 vs coremesh): {:.1}%", b * 100.0)
        });
        let close = v
            .band
            .filter(|b| (v.ratio - MTLS_TARGET).abs() <= *b)
            .map_or("", |_| ", within the A/A band of the limit");
        md += &format!(
            "Target (issue 5: coremesh at most {MTLS_TARGET}x the best peer's CPU per request, aiming for {MTLS_AIM}x), {}: coremesh {:.2} us / {} {:.2} us = **{:.2}x**: {}{close} (aim {MTLS_AIM}x: {}). {band}.

",
            sc.name(),
            v.coremesh_cpu,
            v.best_peer,
            v.peer_cpu,
            v.ratio,
            if v.met { "met" } else { "missed" },
            if v.aim_met { "reached" } else { "not reached" },
        );
    }
    md
}

/// The peer pair (not direct, not coremesh, reaching the origin over
/// TCP) with the lowest median CPU per request in `sc`.
pub(super) fn best_peer(r: &Results, sc: Scenario) -> Option<(String, f64)> {
    best_of(r, sc, |t| !is_app_unix(t))
}

/// The peer (not direct, not coremesh) among the targets `which` keeps
/// with the lowest median CPU per request in `sc`.
fn best_of(r: &Results, sc: Scenario, which: impl Fn(&str) -> bool) -> Option<(String, f64)> {
    r.summary
        .iter()
        .filter(|s| s.scenario == sc && s.metric == "proxy_cpu_us_per_req")
        .filter(|s| s.target != DIRECT && !s.target.starts_with(COREMESH))
        .filter(|s| which(&s.target))
        .filter(|s| s.median.is_finite() && s.median > 0.0)
        .min_by(|a, b| a.median.total_cmp(&b.median))
        .map(|s| (s.target.clone(), s.median))
}

/// Issue 16's targets for the app hop over a Unix socket: coremesh's unix
/// pair at most this times the best peer's TCP pair ...
pub const APP_UNIX_VS_TCP: f64 = 0.75;
/// ... and at most this times the best peer's unix pair.
pub const APP_UNIX_VS_UNIX: f64 = 0.9;

/// coremesh's unix pair against the best peer pairs, in one mtls scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct AppUnixVerdict {
    /// Against the best TCP peer pair ([`APP_UNIX_VS_TCP`]).
    pub vs_tcp: Option<MeshVerdict>,
    /// Against the best unix peer pair ([`APP_UNIX_VS_UNIX`]).
    pub vs_unix: Option<MeshVerdict>,
}

/// `coremesh_unix`: the median CPU per request of coremesh's unix pair;
/// `peers`: (label, median) of every peer pair, TCP and unix (told apart
/// by [`is_app_unix`]).
pub fn app_unix_verdict(coremesh_unix: f64, peers: &[(String, f64)]) -> AppUnixVerdict {
    let (unix, tcp): (Vec<_>, Vec<_>) = peers.iter().cloned().partition(|(t, _)| is_app_unix(t));
    AppUnixVerdict {
        vs_tcp: verdict(coremesh_unix, None, &tcp, APP_UNIX_VS_TCP, APP_UNIX_VS_TCP),
        vs_unix: verdict(
            coremesh_unix,
            None,
            &unix,
            APP_UNIX_VS_UNIX,
            APP_UNIX_VS_UNIX,
        ),
    }
}

/// The app-unix tables (issue 16, item 5): every mtls pair's CPU per
/// request, throughput and kernel work, each unix pair beside its kind's
/// TCP pair, and the two targets for coremesh's unix pair.
fn app_unix_md(r: &Results) -> String {
    let unix_label = format!("{COREMESH}{APP_UNIX}");
    let ran = |t: &str, sc: Scenario| r.samples.iter().any(|s| s.target == t && s.scenario == sc);
    let scenarios: Vec<Scenario> = [Scenario::Mtls, Scenario::MtlsRate]
        .into_iter()
        .filter(|sc| {
            target_order(r)
                .iter()
                .any(|t| is_app_unix(t) && ran(t, *sc))
        })
        .collect();
    if scenarios.is_empty() {
        return String::new();
    }
    let cpu = "proxy_cpu_us_per_req";
    let median = |sc: Scenario, t: &str, m: &str| find(r, sc, t, m).map(|s| s.median);
    let mut md = String::from("### App hop over a Unix socket: `<kind>-unix` pairs\n\n");
    md += "The mesh hop again, but each `-unix` pair's inbound proxy reaches the origin over a Unix socket (coremesh `app = \"unix:PATH\"`, nginx `server unix:PATH`, HAProxy `server ... unix@PATH`) instead of loopback TCP; everything else as in the mesh-hop table. Segments: TCP segments the whole machine sent per request (every hop: load -> outbound, outbound -> inbound, and for TCP pairs inbound -> origin); `beyond direct`: minus the direct run's (load -> origin). Syscalls: system calls of both proxy processes per request (`perf stat -e raw_syscalls:sys_enter`, with `--count-syscalls`).\n\n";
    for sc in &scenarios {
        let direct_segs = median(*sc, DIRECT, "tcp_segments_per_req");
        md += &format!("{}:\n\n", sc.describe());
        md += &header(
            "target",
            [
                "CPU us/req (both proxies)",
                "vs same kind over TCP",
                "req/s",
                "p99",
                "TCP segments/req (beyond direct)",
                "context switches/req",
                "syscalls/req",
            ]
            .into_iter(),
        );
        for t in target_order(r).iter().filter(|t| ran(t, *sc)) {
            let tcp_twin = t.strip_suffix(APP_UNIX);
            let vs = match (tcp_twin, median(*sc, t, cpu)) {
                (Some(twin), Some(c)) => median(*sc, twin, cpu)
                    .filter(|b| *b > 0.0)
                    .map_or("-".into(), |b| format!("{:.2}x", c / b)),
                _ => "-".into(),
            };
            let segs = match (median(*sc, t, "tcp_segments_per_req"), direct_segs) {
                (Some(g), Some(d)) if t != DIRECT => format!("{g:.2} ({:.2})", g - d),
                (Some(g), _) => format!("{g:.2}"),
                _ => "-".into(),
            };
            let per = |m: &str| median(*sc, t, m).map_or("-".into(), f2);
            md += &row_md(&[
                t.to_string(),
                cell(find(r, *sc, t, cpu), f2),
                vs,
                cell(find(r, *sc, t, "rps"), f0),
                median(*sc, t, "p99_us").map_or("-".into(), fmt_us),
                segs,
                per("proxy_context_switches_per_req"),
                per("proxy_syscalls_per_req"),
            ]);
        }
        md += "\n";
    }
    for sc in scenarios {
        let Some(c) = median(sc, &unix_label, cpu) else {
            md += &format!(
                "Targets (issue 16), {}: {unix_label} did not run.\n\n",
                sc.name()
            );
            continue;
        };
        let peers: Vec<(String, f64)> = target_order(r)
            .into_iter()
            .filter(|t| t != DIRECT && !t.starts_with(COREMESH))
            .filter_map(|t| median(sc, &t, cpu).map(|v| (t, v)))
            .collect();
        let v = app_unix_verdict(c, &peers);
        let say = |v: &Option<MeshVerdict>, limit: f64, what: &str| match v {
            Some(v) => format!(
                "/ {what} {} {:.2} us = **{:.2}x** (at most {limit}x: {})",
                v.best_peer,
                v.peer_cpu,
                v.ratio,
                if v.met { "met" } else { "missed" }
            ),
            None => format!("/ {what}: none ran"),
        };
        md += &format!(
            "Targets (issue 16), {}: {unix_label} {c:.2} us {}; {unix_label} {c:.2} us {}.\n\n",
            sc.name(),
            say(&v.vs_tcp, APP_UNIX_VS_TCP, "best TCP peer"),
            say(&v.vs_unix, APP_UNIX_VS_UNIX, "best unix peer"),
        );
    }
    md
}

/// The scenarios, in run order, that have a sample with `has`.
fn scenarios_with(r: &Results, has: impl Fn(&Sample) -> bool) -> Vec<Scenario> {
    let mut out: Vec<Scenario> = Vec::new();
    for s in r.samples.iter().filter(|s| has(s)) {
        if !out.contains(&s.scenario) {
            out.push(s.scenario);
        }
    }
    out
}

/// The user / kernel split of every scenario's proxy CPU per request
/// (medians), so a reader sees which part a proxy could still save: the
/// kernel part is the TCP stack and system calls every proxy pays.
fn cpu_split(r: &Results, proxies: &[&String]) -> String {
    let scenarios = scenarios_with(r, |s| s.proxy_user_us_per_req.is_some());
    if scenarios.is_empty() || proxies.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "### Proxy CPU per request split: user / kernel (us, medians; the kernel part is system calls, the TCP stack and softirqs on the proxy's CPU)\n\n",
    );
    md += &header("proxy", scenarios.iter().map(|s| s.name()));
    for t in proxies {
        let mut row = vec![t.to_string()];
        for sc in &scenarios {
            let user = find(r, *sc, t, "proxy_user_us_per_req").map(|s| s.median);
            let sys = find(r, *sc, t, "proxy_sys_us_per_req").map(|s| s.median);
            row.push(match (user, sys) {
                (Some(u), Some(k)) if u + k > 0.0 => {
                    format!("{u:.2} / {k:.2} ({:.0}% kernel)", 100.0 * k / (u + k))
                }
                _ => "-".into(),
            });
        }
        md += &row_md(&row);
    }
    md + "\n"
}

/// What the kernel part is made of, per request (medians): the TCP segments
/// the machine sent for it (all hops, so the same for every proxy that
/// neither splits a write nor sends an extra acknowledgement), the
/// proxy's context switches (its wake-ups, shared by the requests a
/// wake-up serves) and, when counted (`--count-syscalls`), its system
/// calls.
fn kernel_work(r: &Results, targets: &[String]) -> String {
    let scenarios = scenarios_with(r, |s| s.tcp_segments_per_req.is_some());
    if scenarios.is_empty() {
        return String::new();
    }
    let with_syscalls = r.samples.iter().any(|s| s.proxy_syscalls_per_req.is_some());
    let mut md = String::from(if with_syscalls {
        "### Kernel work per request: TCP segments sent (whole machine, every hop) / proxy context switches / proxy system calls (medians)\n\n"
    } else {
        "### Kernel work per request: TCP segments sent (whole machine, every hop) / proxy context switches (medians)\n\n"
    });
    md += &header("target", scenarios.iter().map(|s| s.name()));
    for t in targets {
        if !r.samples.iter().any(|s| s.target == *t) {
            continue;
        }
        let mut row = vec![t.to_string()];
        for sc in &scenarios {
            let segs = find(r, *sc, t, "tcp_segments_per_req").map(|s| s.median);
            let switches = find(r, *sc, t, "proxy_context_switches_per_req").map(|s| s.median);
            let calls = find(r, *sc, t, "proxy_syscalls_per_req").map(|s| s.median);
            let mut text = match (segs, switches) {
                (Some(g), Some(c)) => format!("{g:.2} / {c:.2}"),
                (Some(g), None) => format!("{g:.2} / -"),
                _ => "-".into(),
            };
            if let (true, Some(_)) = (with_syscalls, segs) {
                text += &calls.map_or(" / -".into(), |n| format!(" / {n:.2}"));
            }
            row.push(text);
        }
        md += &row_md(&row);
    }
    md + "\n"
}

pub(super) fn header<'a>(first: &'a str, cols: impl Iterator<Item = &'a str>) -> String {
    let cols: Vec<&str> = std::iter::once(first).chain(cols).collect();
    let mut s = format!("| {} |\n", cols.join(" | "));
    s += &format!("|{}\n", " --- |".repeat(cols.len()));
    s
}

pub(super) fn row_md(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

#[cfg(test)]
mod tests;
