//! The HTTP/2 tables of the report and issue 14's targets: proxy CPU per
//! h2 request and per gRPC call through the mesh pair against the best
//! peer, the p99 each adds at a fixed rate, RSS per idle h2c connection
//! against nginx's.

use super::{best_peer, cell, f0, f1, f2, find, header, row_md, target_order, verdict};
use crate::compare::{Results, Scenario, COREMESH, DIRECT};
use crate::load::fmt_us;

/// Issue 14: coremesh's CPU per h2 request at most this times the best
/// peer's ...
pub const H2_TARGET: f64 = 0.8;
/// ... aiming for this.
pub const H2_AIM: f64 = 0.6;
/// Issue 14: the gRPC mesh hop (both proxies) at most this times the best
/// peer pair's CPU per call.
pub const GRPC_TARGET: f64 = 0.75;
/// Issue 14: RSS per idle h2 client connection at most this times nginx's.
pub const IDLE_VS_NGINX: f64 = 2.0;

const CPU: &str = "proxy_cpu_us_per_req";

struct Section<'a> {
    sat: Scenario,
    fixed: Scenario,
    fixed_rate: f64,
    title: &'a str,
    intro: String,
    target: f64,
    aim: Option<f64>,
    what: &'a str,
}

/// Both HTTP/2 sections and the idle table; empty when none ran.
pub fn h2_md(r: &Results) -> String {
    let load = format!(
        "{} connections x {} concurrent streams",
        r.h2_connections, r.h2_streams
    );
    let mut md = section(
        r,
        &Section {
            sat: Scenario::H2,
            fixed: Scenario::H2Rate,
            fixed_rate: r.h2_fixed_rate,
            title: "HTTP/2: h2c through one proxy",
            intro: format!(
                "load generator -> proxy -> origin, h2c (prior knowledge) on both sides, {load}, `GET /size/128` (128 B responses); one worker / thread / shard. nginx forwards with `grpc_pass` (its only HTTP/2 upstream), HAProxy with `proto h2` servers. CPU per request: user+sys of the proxy's process tree; lower is better."
            ),
            target: H2_TARGET,
            aim: Some(H2_AIM),
            what: "CPU per h2 request",
        },
    );
    md += &section(
        r,
        &Section {
            sat: Scenario::Grpc,
            fixed: Scenario::GrpcRate,
            fixed_rate: r.grpc_fixed_rate,
            title: "gRPC mesh hop: outbound proxy -> h2 over mutual TLS 1.3 -> inbound proxy",
            intro: format!(
                "load generator -> outbound proxy (h2c, `:authority api`) -> h2 over mutual TLS 1.3 (ALPN h2, client certificate, server verified, pooled, sessions reused) -> inbound proxy -> origin (h2c); unary calls (`/coremesh.bench.Bench/Unary`, 128 B reply, grpc-status 0 checked on every call), {load}. Every target but `direct` is a pair of one kind; CPU per call is both processes together; lower is better."
            ),
            target: GRPC_TARGET,
            aim: None,
            what: "CPU per gRPC call through the pair",
        },
    );
    md += &idle(r);
    md
}

fn section(r: &Results, s: &Section<'_>) -> String {
    let ran = |t: &str, sc: Scenario| r.samples.iter().any(|x| x.target == t && x.scenario == sc);
    let order: Vec<String> = target_order(r)
        .into_iter()
        .filter(|t| ran(t, s.sat) || ran(t, s.fixed))
        .collect();
    if order.is_empty() {
        return String::new();
    }
    let median = |sc: Scenario, t: &str, m: &str| find(r, sc, t, m).map(|x| x.median);
    let mut md = format!("### {}\n\n{}\n\n", s.title, s.intro);
    if order.iter().any(|t| ran(t, s.sat)) {
        md += &header(
            "target",
            [
                "CPU us/req",
                "vs best peer",
                "req/s at saturation",
                "proxy cores",
                "generator+origin cores",
            ]
            .into_iter(),
        );
        let best = best_peer(r, s.sat);
        for t in order.iter().filter(|t| ran(t, s.sat)) {
            let vs = match (median(s.sat, t, CPU), &best) {
                (Some(c), Some((_, b))) => format!("{:.2}x", c / b),
                _ => "-".into(),
            };
            let load = match (
                median(s.sat, t, "generator_cores_used"),
                median(s.sat, t, "origin_cores_used"),
            ) {
                (Some(g), Some(o)) => format!("{:.2}", g + o),
                _ => "-".into(),
            };
            md += &row_md(&[
                t.to_string(),
                cell(find(r, s.sat, t, CPU), f2),
                vs,
                cell(find(r, s.sat, t, "rps"), f0),
                median(s.sat, t, "proxy_cores_used").map_or("-".into(), |c| format!("{c:.2}")),
                load,
            ]);
        }
        md += "\n";
    }
    if order.iter().any(|t| ran(t, s.fixed)) {
        md += &format!(
            "At a fixed {:.0} req/s (open loop, latency from each request's intended send time):\n\n",
            s.fixed_rate
        );
        md += &header(
            "target",
            [
                "CPU us/req",
                "p50",
                "p99",
                "p99.9",
                "added p50 vs direct",
                "added p99 vs direct",
                "errors",
            ]
            .into_iter(),
        );
        let direct = |m: &str| median(s.fixed, DIRECT, m);
        for t in order.iter().filter(|t| ran(t, s.fixed)) {
            let added = |m: &str| match (median(s.fixed, t, m), direct(m)) {
                (Some(p), Some(d)) if t != DIRECT => fmt_us(p - d),
                _ => "-".into(),
            };
            md += &row_md(&[
                t.to_string(),
                cell(find(r, s.fixed, t, CPU), f2),
                cell(find(r, s.fixed, t, "p50_us"), f1),
                cell(find(r, s.fixed, t, "p99_us"), f1),
                cell(find(r, s.fixed, t, "p999_us"), f1),
                added("p50_us"),
                added("p99_us"),
                find(r, s.fixed, t, "errors").map_or("-".into(), |x| f0(x.max)),
            ]);
        }
        md += "\n";
    }
    md += &verdicts(r, s, &order);
    md
}

/// Issue 14's CPU target in both scenarios of a section, and the added
/// p99 against the best peer's.
fn verdicts(r: &Results, s: &Section<'_>, order: &[String]) -> String {
    let median = |sc: Scenario, t: &str, m: &str| find(r, sc, t, m).map(|x| x.median);
    let aa = format!("{COREMESH}#2");
    let peers_of = |sc: Scenario, m: &str| -> Vec<(String, f64)> {
        order
            .iter()
            .filter(|t| *t != DIRECT && !t.starts_with(COREMESH))
            .filter_map(|t| median(sc, t, m).map(|v| (t.clone(), v)))
            .collect()
    };
    let mut md = String::new();
    for sc in [s.sat, s.fixed] {
        let Some(c) = median(sc, COREMESH, CPU) else {
            continue;
        };
        let aim = s.aim.unwrap_or(s.target);
        let Some(v) = verdict(c, median(sc, &aa, CPU), &peers_of(sc, CPU), s.target, aim) else {
            md += &format!("Target (issue 14), {}: no peer ran.\n\n", sc.name());
            continue;
        };
        let band = v.band.map_or("no A/A pair ran".into(), |b| {
            format!("A/A band (coremesh#2 vs coremesh): {:.1}%", b * 100.0)
        });
        let aim_note = match s.aim {
            Some(a) => format!(
                " (aim {a}x: {})",
                if v.aim_met { "reached" } else { "not reached" }
            ),
            None => String::new(),
        };
        md += &format!(
            "Target (issue 14: {} at most {}x the best peer's), {}: coremesh {:.2} us / {} {:.2} us = **{:.2}x**: {}{aim_note}. {band}.\n\n",
            s.what,
            s.target,
            sc.name(),
            v.coremesh_cpu,
            v.best_peer,
            v.peer_cpu,
            v.ratio,
            if v.met { "met" } else { "missed" },
        );
    }
    // Added p99 at the fixed rate: coremesh's against the best peer's.
    let added = |t: &str| Some(median(s.fixed, t, "p99_us")? - median(s.fixed, DIRECT, "p99_us")?);
    if let Some(c) = added(COREMESH) {
        let best = order
            .iter()
            .filter(|t| *t != DIRECT && !t.starts_with(COREMESH))
            .filter_map(|t| added(t).map(|a| (t.clone(), a)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((peer, p)) => {
                let twin =
                    added(&aa).map_or(String::new(), |t| format!(" (coremesh#2: {})", fmt_us(t)));
                md += &format!(
                    "Target (issue 14: added p99 at a fixed rate no worse than the best peer's), {}: coremesh {}{twin} vs {peer} {}: {}.\n\n",
                    s.fixed.name(),
                    fmt_us(c),
                    fmt_us(p),
                    if c <= p { "met" } else { "missed" }
                );
            }
            None => md += &format!("Target (issue 14), {}: no peer ran.\n\n", s.fixed.name()),
        }
    }
    md
}

/// RSS per idle h2c client connection, against nginx's.
fn idle(r: &Results) -> String {
    let sc = Scenario::H2Idle;
    let targets: Vec<String> = target_order(r)
        .into_iter()
        .filter(|t| find(r, sc, t, "bytes_per_conn").is_some())
        .collect();
    if targets.is_empty() {
        return String::new();
    }
    let n = r
        .idle
        .iter()
        .filter(|s| s.scenario == sc)
        .map(|s| s.connections)
        .max()
        .unwrap_or(0);
    let nginx = find(r, sc, "nginx", "bytes_per_conn").map(|s| s.median);
    let mut md = format!(
        "### RSS per idle h2c client connection (bytes, {n} connections each after one GET, fresh one-hop instance; lower is better)\n\n"
    );
    md += &header("proxy", ["bytes/conn", "vs nginx"].into_iter());
    for t in &targets {
        let s = find(r, sc, t, "bytes_per_conn");
        let vs = match (s, nginx) {
            (Some(s), Some(n)) if n > 0.0 => format!("{:.2}x", s.median / n),
            _ => "-".into(),
        };
        md += &row_md(&[t.to_string(), cell(s, f0), vs]);
    }
    md += "\n";
    if let (Some(c), Some(n)) = (find(r, sc, COREMESH, "bytes_per_conn"), nginx) {
        let ratio = c.median / n;
        md += &format!(
            "Target (issue 14: RSS per idle h2 client connection at most {IDLE_VS_NGINX}x nginx's): coremesh {:.0} B / nginx {:.0} B = **{ratio:.2}x**: {}.\n\n",
            c.median,
            n,
            if ratio <= IDLE_VS_NGINX { "met" } else { "missed" }
        );
    }
    md
}
