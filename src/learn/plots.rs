//! SVG plots written by long runs: loss curves, per-task pretext accuracy, confusion matrices.
//! SVG keeps the build free of font and image libraries and renders in any browser.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::metrics::Confusion;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Line plot of named series over epochs (x = 1..).
pub fn lines(path: &Path, title: &str, y_label: &str, series: &[(String, Vec<f32>)]) -> Result<()> {
    let n = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let (mut lo, mut hi) = (f32::MAX, f32::MIN);
    for v in series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .filter(|v| v.is_finite())
    {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(1f32..n as f32, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_label)
        .draw()?;
    for (i, (name, v)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(x, y)| (x as f32 + 1.0, *y)),
                c.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("writing plot {}", path.display()))?;
    Ok(())
}

/// 2×2 confusion matrix as a heat map with counts.
pub fn confusion(path: &Path, title: &str, c: &Confusion, neg: &str, pos: &str) -> Result<()> {
    let root = SVGBackend::new(path, (480, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f32..2f32, 0f32..2f32)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("predicted")
        .y_desc("true")
        .x_labels(0)
        .y_labels(0)
        .draw()?;
    let max = [c.tp, c.tn, c.fp, c.fn_]
        .into_iter()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    // x = predicted (0 neg, 1 pos); the true-positive row is drawn on top
    let layout = [
        (1.0f32, 0.0f32, c.tp, "TP"),
        (0.0, 0.0, c.fn_, "FN"),
        (1.0, 1.0, c.fp, "FP"),
        (0.0, 1.0, c.tn, "TN"),
    ];
    for (x, y, v, tag) in layout {
        let shade = 1.0 - 0.7 * (v as f64 / max);
        let col = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x, 1.0 - y + 0.0), (x + 1.0, 2.0 - y)],
            col.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{tag} {v}"),
            (x + 0.35, 1.55 - y),
            ("sans-serif", 22),
        )))?;
    }
    chart.draw_series(std::iter::once(Text::new(
        format!("pred {neg} | pred {pos}; rows: true {pos} (top), {neg}"),
        (0.02, 0.04),
        ("sans-serif", 12),
    )))?;
    root.present()
        .with_context(|| format!("writing plot {}", path.display()))?;
    Ok(())
}
