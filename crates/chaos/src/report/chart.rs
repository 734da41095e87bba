//! The SVG chart (`chart.svg`): success % and p95 latency over time, one
//! line per heal run, drawn with plotters' SVG backend into a string.
//!
//! Kept apart from the text outputs because it is the only part of the
//! report that depends on a drawing library, and its errors are the
//! library's (turned into strings for [`ReportError::Chart`]).

use super::{Report, ReportError, RunReport, SecondBucket};

impl Report {
    /// The SVG chart: success % and p95 latency over time, one series per
    /// heal run.
    pub fn svg(&self) -> Result<String, ReportError> {
        let series: Vec<(&str, &RunReport)> = self.heal_runs();
        let mut svg = String::new();
        draw_chart(&mut svg, &series).map_err(ReportError::Chart)?;
        Ok(svg)
    }
}

/// A drawing error as text.
fn err(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

/// One panel of the chart: `value` of every second with actions, one line
/// per run (a second without actions has no point rather than a zero).
fn draw_panel<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    y_max: f64,
    series: &[(&str, &RunReport)],
    value: impl Fn(&SecondBucket) -> f64,
) -> Result<(), String> {
    use plotters::prelude::*;

    let colors = [RGBColor(0, 114, 178), RGBColor(213, 94, 0)];
    let max_t = series
        .iter()
        .flat_map(|(_, r)| r.timeline.iter().map(|b| b.second + 1))
        .max()
        .unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, run)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points = run
            .timeline
            .iter()
            .filter(|b| b.actions > 0)
            .map(|b| (b.second as f64, value(b)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

/// Both panels, one above the other, under the chart's title.
fn draw_chart(svg: &mut String, series: &[(&str, &RunReport)]) -> Result<(), String> {
    use plotters::prelude::*;

    let max_p95 = series
        .iter()
        .flat_map(|(_, r)| r.timeline.iter().map(|b| b.p95_ms))
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let root = SVGBackend::with_string(svg, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(
            "chaos: what users saw, heal on vs heal off",
            ("sans-serif", 24),
        )
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(330);
    draw_panel(
        &top,
        "Success % over time",
        "success %",
        100.0,
        series,
        |b| b.success_rate * 100.0,
    )?;
    draw_panel(
        &bottom,
        "p95 latency over time",
        "p95 latency (ms)",
        max_p95,
        series,
        |b| b.p95_ms,
    )?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
