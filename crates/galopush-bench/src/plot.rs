//! Runs as a picture (`--plot FILE.svg`, and `galopush bench plot RUN.json… --plot FILE.svg`
//! for runs saved with `--json`): one row per scenario, on the left the acked deliveries per
//! second over time, on the right the latency distribution, one line per run, so that runs of
//! the same scenario against different servers are seen side by side.
//!
//! SVG only, drawn with plotters without its font features: text goes into the SVG as text,
//! set by whatever shows the picture, so nothing here needs the system's fonts.

use std::path::Path;

use plotters::prelude::*;

use crate::args::Scenario;
use crate::report::Report;

/// Width of one chart, pixels.
const CHART_WIDTH: u32 = 640;
/// Height of one row of charts, pixels.
const ROW_HEIGHT: u32 = 400;
/// The runs' colours, in the order their labels first appear.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(0, 0, 0),
];

/// What is drawn of one run.
struct Curve {
    label: String,
    colour: RGBColor,
    /// (seconds since the first publish, acked deliveries per second in the step before).
    rates: Vec<(f64, f64)>,
    /// (latency ms, percent of deliveries at most that late).
    latencies: Vec<(f64, f64)>,
}

impl Curve {
    /// The run's curves, `None` for a run without deliveries (idle, storm).
    fn of(report: &Report, colour: RGBColor) -> Option<Curve> {
        let delivery = report.delivery.as_ref()?;
        let rates = delivery
            .timeline
            .windows(2)
            .filter_map(|pair| {
                let ((t0, n0), (t1, n1)) = (pair[0], pair[1]);
                (t1 > t0).then(|| (t1, n1.saturating_sub(n0) as f64 / (t1 - t0)))
            })
            .collect();
        let latencies = delivery
            .latency_cdf
            .iter()
            .map(|&(q, us)| (us.max(1) as f64 / 1000.0, q * 100.0))
            .collect();
        let summary = match delivery.latency {
            Some(l) => format!(
                "{}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
                report.label,
                delivery.delivered.per_second,
                l.p50_us as f64 / 1000.0,
                l.p99_us as f64 / 1000.0
            ),
            None => report.label.clone(),
        };
        Some(Curve {
            label: summary,
            colour,
            rates,
            latencies,
        })
    }
}

/// Reads the runs saved with `--json` at `paths`.
pub(crate) fn read_runs(paths: &[impl AsRef<Path>]) -> Result<Vec<Report>, String> {
    paths
        .iter()
        .map(|path| {
            let path = path.as_ref();
            let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_slice(&text)
                .map_err(|e| format!("{}: not a `--json` report: {e}", path.display()))
        })
        .collect()
}

/// Draws `runs` into the SVG file `path`: a row per scenario with deliveries, in the order the
/// scenarios first appear; fails when no run has deliveries or the file cannot be written.
pub(crate) fn draw(path: &Path, runs: &[Report]) -> Result<(), String> {
    let mut rows: Vec<(Scenario, Vec<Curve>)> = Vec::new();
    // One colour per label, the same in every row.
    let mut labels: Vec<&str> = Vec::new();
    for run in runs {
        let index = match labels.iter().position(|l| *l == run.label) {
            Some(index) => index,
            None => {
                labels.push(&run.label);
                labels.len() - 1
            }
        };
        let Some(curve) = Curve::of(run, COLOURS[index % COLOURS.len()]) else {
            continue;
        };
        match rows
            .iter_mut()
            .find(|(scenario, _)| *scenario == run.scenario)
        {
            Some((_, curves)) => curves.push(curve),
            None => rows.push((run.scenario, vec![curve])),
        }
    }
    if rows.is_empty() {
        return Err("no run with deliveries to draw (idle and storm have none)".to_owned());
    }
    let height = ROW_HEIGHT * rows.len() as u32;
    let root = SVGBackend::new(path, (2 * CHART_WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((rows.len(), 2));
    for ((scenario, curves), charts) in rows.iter().zip(areas.chunks(2)) {
        let name = match scenario {
            Scenario::Fanout => "fan-out",
            _ => "unicast",
        };
        draw_rates(&charts[0], name, curves).map_err(|e| e.to_string())?;
        draw_latencies(&charts[1], name, curves).map_err(|e| e.to_string())?;
    }
    root.present()
        .map_err(|e| format!("{}: {e}", path.display()))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Drawn<'a> = Result<(), DrawingAreaErrorKind<<SVGBackend<'a> as DrawingBackend>::ErrorType>>;

/// Acked deliveries per second over the run.
fn draw_rates<'a>(area: &Area<'a>, scenario: &str, curves: &[Curve]) -> Drawn<'a> {
    let seconds = curves
        .iter()
        .flat_map(|c| c.rates.iter().map(|p| p.0))
        .fold(0.1, f64::max);
    let top = curves
        .iter()
        .flat_map(|c| c.rates.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{scenario}: acked deliveries per second"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..seconds, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first publish")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()?;
    for curve in curves {
        let style = curve.colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(curve.rates.iter().copied(), style))?
            .label(curve.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// The share of deliveries at most so late, latency on a log scale.
fn draw_latencies<'a>(area: &Area<'a>, scenario: &str, curves: &[Curve]) -> Drawn<'a> {
    let all = || curves.iter().flat_map(|c| c.latencies.iter().map(|p| p.0));
    let low = all().fold(f64::INFINITY, f64::min).min(1.0) * 0.8;
    let high = all().fold(low * 10.0, f64::max) * 1.25;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{scenario}: publish-to-receive latency"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((low..high).log_scale(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("ms (log scale)")
        .y_desc("% of deliveries at most")
        .x_label_formatter(&|v| format!("{v}"))
        .draw()?;
    for curve in curves {
        let style = curve.colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(curve.latencies.iter().copied(), style))?
            .label(curve.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}
