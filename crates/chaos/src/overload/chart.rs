//! The overload suite's SVG: goodput per second of each metastability
//! client with the trigger shaded (top), and goodput per second of the app
//! under 3× overload with and without its limit, against its peak
//! (bottom); each curve the mean over the seeds run.

use plotters::prelude::*;

use super::report::{mean, mean_series};
use super::{ClientVariant, OverloadReport};

const COLORS: [RGBColor; 3] = [
    RGBColor(213, 94, 0),
    RGBColor(230, 159, 0),
    RGBColor(0, 114, 178),
];

/// A drawing error as text.
fn err(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

/// One panel: `curves` (label, points per second), an optional shaded span
/// and an optional dashed reference line.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    curves: &[(String, Vec<f64>, RGBColor)],
    shade: Option<(f64, f64)>,
    reference: Option<(String, f64)>,
) -> Result<(), String> {
    let max_t = curves.iter().map(|c| c.1.len()).max().unwrap_or(1).max(1) as f64;
    let max_y = curves
        .iter()
        .flat_map(|c| c.1.iter().copied())
        .chain(reference.as_ref().map(|r| r.1))
        .fold(1.0_f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..max_y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("goodput (successes/s)")
        .draw()
        .map_err(|e| err(&e))?;
    if let Some((from, to)) = shade {
        chart
            .draw_series([Rectangle::new(
                [(from, 0.0), (to, max_y)],
                RGBColor(200, 200, 200).mix(0.4).filled(),
            )])
            .map_err(|e| err(&e))?
            .label("trigger (capacity halved)")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 20, y + 5)],
                    RGBColor(200, 200, 200).filled(),
                )
            });
    }
    if let Some((label, y)) = reference {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, y), (max_t, y)],
                6,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    for (label, points, color) in curves {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().enumerate().map(|(t, v)| (t as f64 + 0.5, *v)),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

impl OverloadReport {
    /// The chart: goodput per second of each metastability client with the
    /// trigger shaded, and of the app under 3× overload with and without
    /// its limit against its peak; each curve the mean over the seeds.
    pub fn svg(&self) -> Result<String, String> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (960, 760)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(&e))?;
            let (top, bottom) = root.split_vertically(400);
            let curves: Vec<(String, Vec<f64>, RGBColor)> = ClientVariant::ALL
                .iter()
                .zip(COLORS)
                .filter_map(|(&variant, color)| {
                    let runs = self.runs_of(variant);
                    (!runs.is_empty()).then(|| {
                        let series =
                            mean_series(runs.iter().map(|r| r.goodput_per_second.as_slice()));
                        (variant.label().to_owned(), series, color)
                    })
                })
                .collect();
            let s = &self.metastable_setup;
            panel(
                &top,
                &format!(
                    "Metastability: goodput per second ({:.0}/s offered, capacity {:.0}/s)",
                    s.rate, s.capacity
                ),
                &curves,
                Some((s.trigger_secs[0], s.trigger_secs[1])),
                None,
            )?;
            let app: Vec<(String, Vec<f64>, RGBColor)> = [(false, COLORS[0]), (true, COLORS[2])]
                .into_iter()
                .filter_map(|(limit, color)| {
                    let runs = self.app_runs(limit);
                    (!runs.is_empty()).then(|| {
                        let label = if limit {
                            "cozmic, adaptive concurrency limit"
                        } else {
                            "cozmic, no limit"
                        };
                        let series =
                            mean_series(runs.iter().map(|r| r.goodput_per_second.as_slice()));
                        (label.to_owned(), series, color)
                    })
                })
                .collect();
            let peak = mean(self.app.iter().map(|r| r.peak_goodput));
            let offered = mean(self.app.iter().map(|r| r.offered_rate));
            panel(
                &bottom,
                &format!("App overload: logins per second, {offered:.0}/s offered"),
                &app,
                None,
                (!self.app.is_empty()).then(|| ("peak goodput (closed loop)".to_owned(), peak)),
            )?;
            root.present().map_err(|e| err(&e))?;
        }
        Ok(svg)
    }
}
