//! The bench's pictures: latency distributions and values over time, as
//! SVG files (plotters' SVG backend, no fonts needed). BENCHMARKS.md shows
//! the ones of the recorded run, copied into `docs/charts/`.

use std::path::Path;

use plotters::prelude::*;

/// Colours of the series, in order (orapush first).
const COLOURS: [RGBColor; 4] =
    [RGBColor(0, 114, 178), RGBColor(213, 94, 0), RGBColor(0, 158, 115), RGBColor(204, 121, 167)];

const SIZE: (u32, u32) = (800, 450);

/// The distribution of each series' latencies, as a cumulative curve: for
/// every latency on the x axis (ms, logarithmic), the share of messages that
/// arrived within it.
pub fn latency_distribution(path: &Path, title: &str, series: &[(String, Vec<f64>)]) {
    let sorted: Vec<(&str, Vec<f64>)> = series
        .iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(name, values)| {
            let mut values = values.clone();
            values.sort_by(f64::total_cmp);
            (name.as_str(), values)
        })
        .collect();
    if sorted.is_empty() {
        return;
    }
    let smallest = sorted.iter().map(|(_, v)| v[0]).fold(f64::INFINITY, f64::min).max(0.01);
    let largest = sorted.iter().map(|(_, v)| v[v.len() - 1]).fold(0.0, f64::max).max(smallest * 2.0);
    let lines: Vec<(&str, Vec<(f64, f64)>)> = sorted
        .iter()
        .map(|(name, values)| {
            let n = values.len() as f64;
            (
                *name,
                values.iter().enumerate().map(|(k, &ms)| (ms.max(smallest), (k + 1) as f64 / n)).collect(),
            )
        })
        .collect();
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        let mut chart = builder(&root, title)?
            .build_cartesian_2d((decade_below(smallest)..decade_above(largest)).log_scale(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_labels(12)
            .x_label_formatter(&|ms| if *ms >= 1.0 { format!("{ms:.0}") } else { format!("{ms}") })
            .x_desc("latency (ms, log scale)")
            .y_desc("share of messages")
            .y_label_formatter(&|share| format!("{:.0}%", share * 100.0))
            .draw()?;
        draw_lines(&root, chart, lines)
    })();
    report(path, result);
}

/// The power of ten at or below `value`.
fn decade_below(value: f64) -> f64 {
    10f64.powf(value.log10().floor())
}

/// The power of ten at or above `value`.
fn decade_above(value: f64) -> f64 {
    10f64.powf(value.log10().ceil())
}

/// Values sampled over time: `series` of (minute, value) points.
pub fn over_time(path: &Path, title: &str, y_desc: &str, series: &[(String, Vec<(f64, f64)>)]) {
    let points: Vec<&(f64, f64)> = series.iter().flat_map(|(_, p)| p).collect();
    if points.is_empty() {
        return;
    }
    let last_minute = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let top = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let lines: Vec<(&str, Vec<(f64, f64)>)> =
        series.iter().map(|(name, p)| (name.as_str(), p.clone())).collect();
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        let mut chart = builder(&root, title)?.build_cartesian_2d(0.0..last_minute, 0.0..top)?;
        chart.configure_mesh().x_desc("minutes").y_desc(y_desc).draw()?;
        draw_lines(&root, chart, lines)
    })();
    report(path, result);
}

/// A white chart area with the title and room for the axis labels.
fn builder<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &'b str,
) -> Result<ChartBuilder<'a, 'b, SVGBackend<'b>>, Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(root);
    builder.caption(title, ("sans-serif", 18)).margin(12).x_label_area_size(40).y_label_area_size(56);
    Ok(builder)
}

/// Draws each series as a line in its colour, with a legend, and writes the file.
fn draw_lines<'a, 'b: 'a, CT>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    mut chart: ChartContext<'a, SVGBackend<'b>, CT>,
    lines: Vec<(&str, Vec<CT::From>)>,
) -> Result<(), Box<dyn std::error::Error>>
where
    CT: CoordTranslate,
    CT::From: Clone + 'static,
{
    for (i, (name, points)) in lines.into_iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Says where the chart went, or why it is missing (a chart never fails the bench).
fn report(path: &Path, result: Result<(), Box<dyn std::error::Error>>) {
    match result {
        Ok(()) => println!("- chart: {}", path.display()),
        Err(e) => println!("- chart {} not written: {e}", path.display()),
    }
}
