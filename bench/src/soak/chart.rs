//! The soak's resource chart: RSS, open fds and sockets of every process
//! over time, three panels one above the other, drawn with plotters' SVG
//! backend as `compare`'s charts are ([`crate::compare::chart`]). A
//! process restarted by a fault keeps its colour; each run of it is its
//! own line.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::resources::{Sample, Series};
use crate::compare::chart::ChartError;

/// Writes the chart of `series` (over `duration_s`, the warm-up's end
/// marked) to `path`.
pub fn write(
    series: &[Series],
    duration_s: f64,
    warmup_s: f64,
    path: &Path,
) -> Result<(), ChartError> {
    let err = |source| ChartError::Draw {
        path: path.to_path_buf(),
        source,
    };
    // One colour per process name, in order of first appearance.
    let mut colours: BTreeMap<&str, usize> = BTreeMap::new();
    for s in series {
        let n = colours.len();
        colours.entry(s.process.as_str()).or_insert(n);
    }
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plots, legend) = root.split_horizontally(880);
    let panels = plots.split_evenly((3, 1));
    type Get = fn(&Sample) -> f64;
    let measures: [(&str, Get); 3] = [
        ("RSS (MiB)", |x| x.rss_bytes as f64 / (1024.0 * 1024.0)),
        ("open fds", |x| x.fds as f64),
        ("sockets", |x| x.sockets as f64),
    ];
    for (area, (name, get)) in panels.iter().zip(measures) {
        let ymax = series
            .iter()
            .flat_map(|s| s.samples.iter().map(get))
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{name} per process"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..duration_s.max(1.0), 0f64..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(name)
            .draw()
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(warmup_s, 0.0), (warmup_s, ymax)],
                BLACK.mix(0.3).stroke_width(1),
            )))
            .map_err(err)?;
        for s in series {
            let colour = Palette99::pick(colours[s.process.as_str()]).to_rgba();
            let pts: Vec<(f64, f64)> = s.samples.iter().map(|x| (x.t_s, get(x))).collect();
            chart
                .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                .map_err(err)?;
        }
    }
    let style =
        TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let mut names: Vec<(&str, usize)> = colours.into_iter().collect();
    names.sort_by_key(|(_, i)| *i);
    for (n, (name, i)) in names.into_iter().enumerate() {
        let y = 40 + n as i32 * 22;
        let colour = Palette99::pick(i).to_rgba();
        legend
            .draw(&Rectangle::new([(8, y - 7), (22, y + 7)], colour.filled()))
            .map_err(err)?;
        legend
            .draw(&Text::new(name.to_string(), (30, y), style.clone()))
            .map_err(err)?;
    }
    legend
        .draw(&Text::new(
            "grey line: end of warm-up".to_string(),
            (8, 40 + 22 * 12),
            style.clone(),
        ))
        .map_err(err)?;
    root.present().map_err(err)
}
