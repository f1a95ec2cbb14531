//! SVG charts of a comparison, drawn with plotters' SVG backend only (its
//! text is emitted as SVG `<text>`, so no font files or system libraries
//! are needed to build or draw).
//!
//! - `cpu.svg`: proxy CPU per request, grouped bars per scenario, with
//!   min-max whiskers over the rounds;
//! - `throughput.svg`: requests per second at saturation, same layout;
//! - `latency.svg`: p50/p90/p99/p99.9 at the fixed rate, one line per target
//!   (direct included), log scale; `latency-mtls.svg` the same for the
//!   mesh-hop pairs (`mtls-rate`), `latency-h2.svg` and
//!   `latency-grpc.svg` for `h2-rate` and `grpc-rate`.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{find, target_order};
use super::{Results, Scenario, DIRECT};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Why a chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("drawing chart {}", path.display())]
    Draw {
        path: PathBuf,
        #[source]
        source: DrawingAreaErrorKind<std::io::Error>,
    },
}

/// Wraps a plotters error of the chart at `path`.
fn err(path: &Path) -> impl Fn(DrawingAreaErrorKind<std::io::Error>) -> ChartError + Copy + '_ {
    move |source| ChartError::Draw {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes every chart that has data into `dir`.
pub fn write_all(r: &Results, dir: &Path) -> Result<(), ChartError> {
    let order = target_order(r);
    let proxies: Vec<String> = order.iter().filter(|t| *t != DIRECT).cloned().collect();
    let sat: Vec<Scenario> = [
        Scenario::Small,
        Scenario::Body16k,
        Scenario::Body1m,
        Scenario::Newconn,
        Scenario::Rate,
        Scenario::Mtls,
        Scenario::MtlsRate,
        Scenario::H2,
        Scenario::H2Rate,
        Scenario::Grpc,
        Scenario::GrpcRate,
    ]
    .into_iter()
    .filter(|sc| r.samples.iter().any(|s| s.scenario == *sc))
    .collect();
    if !sat.is_empty() && !proxies.is_empty() {
        grouped_bars(
            r,
            &dir.join("cpu.svg"),
            "Proxy CPU per request (us, lower is better)",
            "us per request",
            &sat,
            &proxies,
            "proxy_cpu_us_per_req",
        )?;
    }
    let sat_only: Vec<Scenario> = sat
        .iter()
        .copied()
        .filter(|s| s.saturation().is_none())
        .collect();
    if !sat_only.is_empty() {
        grouped_bars(
            r,
            &dir.join("throughput.svg"),
            "Throughput at saturation (req/s, higher is better)",
            "requests per second",
            &sat_only,
            &order,
            "rps",
        )?;
    }
    for (sc, file, rate) in [
        (Scenario::Rate, "latency.svg", r.fixed_rate),
        (Scenario::MtlsRate, "latency-mtls.svg", r.mtls_fixed_rate),
        (Scenario::H2Rate, "latency-h2.svg", r.h2_fixed_rate),
        (Scenario::GrpcRate, "latency-grpc.svg", r.grpc_fixed_rate),
    ] {
        let ran: Vec<String> = order
            .iter()
            .filter(|t| {
                r.samples
                    .iter()
                    .any(|s| s.scenario == sc && s.target == **t)
            })
            .cloned()
            .collect();
        if !ran.is_empty() {
            latency_lines(r, &dir.join(file), &ran, sc, rate)?;
        }
    }
    Ok(())
}

/// Bars: one group per scenario, one bar per target, whisker = min..max.
fn grouped_bars(
    r: &Results,
    path: &Path,
    title: &str,
    y_desc: &str,
    scenarios: &[Scenario],
    targets: &[String],
    metric: &str,
) -> Result<(), ChartError> {
    let err = err(path);
    let ymax = r
        .summary
        .iter()
        .filter(|s| s.metric == metric && targets.contains(&s.target))
        .map(|s| s.max)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let root: Area = SVGBackend::new(path, (960, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plot, legend) = root.split_horizontally(800);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..scenarios.len() as f64, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .y_label_formatter(&|v| short_number(*v))
        .draw()
        .map_err(err)?;
    let n = targets.len().max(1) as f64;
    let slot = 0.8 / n;
    for (ti, t) in targets.iter().enumerate() {
        let color = Palette99::pick(ti).to_rgba();
        for (si, sc) in scenarios.iter().enumerate() {
            let Some(s) = find(r, *sc, t, metric) else {
                continue;
            };
            let x0 = si as f64 + 0.1 + ti as f64 * slot;
            let x1 = x0 + slot * 0.9;
            let xm = (x0 + x1) / 2.0;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x1, s.median)],
                    color.filled(),
                )))
                .map_err(err)?;
            if s.n > 1 {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(xm, s.min), (xm, s.max)],
                        BLACK.stroke_width(1),
                    )))
                    .map_err(err)?;
            }
        }
    }
    // Category labels under each group, placed in pixels from data coordinates.
    let label_style =
        TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (si, sc) in scenarios.iter().enumerate() {
        let (px, py) = chart
            .plotting_area()
            .map_coordinate(&(si as f64 + 0.5, 0.0));
        plot.draw(&Text::new(
            sc.name().to_string(),
            (px, py + 8),
            label_style.clone(),
        ))
        .map_err(err)?;
    }
    draw_legend(&legend, targets, path)?;
    root.present().map_err(err)
}

fn latency_lines(
    r: &Results,
    path: &Path,
    targets: &[String],
    scenario: Scenario,
    rate: f64,
) -> Result<(), ChartError> {
    let err = err(path);
    const PCTS: [(&str, &str); 4] = [
        ("p50", "p50_us"),
        ("p90", "p90_us"),
        ("p99", "p99_us"),
        ("p99.9", "p999_us"),
    ];
    let values = |t: &str| -> Vec<Option<f64>> {
        PCTS.iter()
            .map(|(_, m)| find(r, scenario, t, m).map(|s| s.median.max(1.0)))
            .collect()
    };
    let all: Vec<f64> = targets.iter().flat_map(|t| values(t)).flatten().collect();
    if all.is_empty() {
        return Ok(());
    }
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min) / 1.5;
    let hi = all.iter().copied().fold(0.0, f64::max) * 1.5;
    let root: Area = SVGBackend::new(path, (960, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plot, legend) = root.split_horizontally(800);
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            format!(
                "{} at {rate:.0} req/s (us, log scale, lower is better)",
                if scenario == Scenario::MtlsRate {
                    "Mesh-hop (mTLS) latency"
                } else {
                    "Latency"
                }
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..3.5f64, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("microseconds")
        .y_label_formatter(&|v| short_number(*v))
        .draw()
        .map_err(err)?;
    for (ti, t) in targets.iter().enumerate() {
        let color = Palette99::pick(ti).to_rgba();
        let pts: Vec<(f64, f64)> = values(t)
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    let label_style =
        TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, (name, _)) in PCTS.iter().enumerate() {
        let (px, py) = chart.plotting_area().map_coordinate(&(i as f64, lo));
        plot.draw(&Text::new(
            name.to_string(),
            (px, py + 8),
            label_style.clone(),
        ))
        .map_err(err)?;
    }
    draw_legend(&legend, targets, path)?;
    root.present().map_err(err)
}

fn draw_legend(area: &Area, targets: &[String], path: &Path) -> Result<(), ChartError> {
    let err = err(path);
    let style =
        TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, t) in targets.iter().enumerate() {
        let y = 60 + i as i32 * 24;
        let color = Palette99::pick(i).to_rgba();
        area.draw(&Rectangle::new([(8, y - 7), (22, y + 7)], color.filled()))
            .map_err(err)?;
        area.draw(&Text::new(t.clone(), (30, y), style.clone()))
            .map_err(err)?;
    }
    Ok(())
}

/// 1234567 -> "1.2M", 45000 -> "45k", 12.5 -> "12.5".
fn short_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests;
