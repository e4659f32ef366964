//! What a run leaves in the results folder: one JSON file with every measurement, ratio and
//! target, and per component an SVG of throughput against threads and one of latency
//! percentiles.

use crate::suite::{CaseResult, Component, Omitted, Options, Role};
use crate::targets::TargetResult;
use plotters::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The machine and conditions of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    /// Seconds since the Unix epoch at the end of the run.
    pub unix_time: u64,
    /// CPU model (from `/proc/cpuinfo`), if known.
    pub cpu_model: Option<String>,
    /// CPUs the process may run on.
    pub cpus: usize,
    /// Kernel release, if known.
    pub kernel: Option<String>,
    /// CPU frequency governor, if known.
    pub governor: Option<String>,
    /// Median cost of two reads of the latency clock, subtracted from every latency sample.
    pub clock_overhead_ns: f64,
    /// Nanoseconds per tick of the latency clock (the calibrated TSC on x86-64).
    pub clock_ns_per_tick: f64,
    /// Whether this binary was built with optimisations.
    pub optimized: bool,
    /// 1-minute load average when the run ended: above the CPU count, other work shared the
    /// CPUs and wall-clock throughput (not CPU ns/op) is pessimistic.
    pub load_average: Option<f64>,
    /// The nice level the run took (`None`: priority not raised).
    pub nice: Option<i32>,
}

impl Meta {
    /// Describe this machine; `nice` is the priority the run took.
    pub fn collect(nice: Option<i32>) -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        let cpu_model = read("/proc/cpuinfo").and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        });
        Meta {
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cpu_model,
            cpus: crate::harness::cpu_count(),
            kernel: read("/proc/sys/kernel/osrelease"),
            governor: read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            clock_overhead_ns: crate::clock::overhead_ns(),
            clock_ns_per_tick: crate::clock::ns_per_tick(),
            optimized: !cfg!(debug_assertions),
            load_average: read("/proc/loadavg")
                .and_then(|l| l.split_whitespace().next()?.parse().ok()),
            nice,
        }
    }
}

/// Everything a run produced: what the JSON file holds.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Machine and conditions.
    pub meta: Meta,
    /// The options of the run.
    pub options: Options,
    /// Every case's measurements.
    pub results: Vec<CaseResult>,
    /// Every target with its ratio.
    pub targets: Vec<TargetResult>,
    /// What was left out and why.
    pub omitted: Vec<Omitted>,
}

/// The JSON file a run writes in its results folder.
pub const JSON_FILE: &str = "dmabench.json";

/// The Markdown table of the targets a run writes beside the JSON.
pub const TARGETS_FILE: &str = "targets.md";

/// Write `report` as JSON, the targets as Markdown (and the plots, if `opts.plots`) into `opts.out`; the files written.
pub fn write_all(report: &Report, opts: &Options) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(&opts.out)?;
    let json = opts.out.join(JSON_FILE);
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(&json, text)?;
    let md = opts.out.join(TARGETS_FILE);
    std::fs::write(&md, crate::report::targets_markdown(&report.targets))?;
    let mut files = vec![json, md];
    if opts.plots {
        for c in Component::ALL {
            let rows: Vec<&CaseResult> =
                report.results.iter().filter(|r| r.component == c).collect();
            if rows.is_empty() {
                continue;
            }
            let t = opts.out.join(format!("{}-throughput.svg", c.name()));
            throughput_plot(&t, c, &rows, &opts.threads, report.meta.cpus)
                .map_err(std::io::Error::other)?;
            let l = opts.out.join(format!("{}-latency.svg", c.name()));
            latency_plot(&l, c, &rows).map_err(std::io::Error::other)?;
            files.extend([t, l]);
        }
    }
    Ok(files)
}

type PlotResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn label(r: &CaseResult) -> String {
    format!("{} — {}", r.workload, r.implementation)
}

/// Strong colours that stay apart on white (the built-in palettes include pale ones).
const COLORS: [RGBColor; 12] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x00, 0x00, 0x80),
    RGBColor(0x00, 0x64, 0x00),
];

fn style(r: &CaseResult, i: usize) -> ShapeStyle {
    // Ours thick, peers and floors thin: the eye finds ours first.
    let width = if r.role == Role::Ours { 3 } else { 1 };
    COLORS[i % COLORS.len()].stroke_width(width)
}

/// Axis labels without exponent noise: "0.5", "20", "3k", "40M".
fn axis_label(v: f64) -> String {
    let (v, unit) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let n = crate::report::sig3(v);
    let n = if n.contains('.') {
        n.trim_end_matches('0').trim_end_matches('.')
    } else {
        &n
    };
    format!("{n}{unit}")
}

/// Log-scale bounds covering `values` with a little room.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo.is_finite() {
        (lo / 1.5, hi * 1.5)
    } else {
        (0.1, 10.0)
    }
}

/// A log-scale line chart, one line per case over labelled x positions 0, 1, ...
struct LinePlot<'a> {
    caption: String,
    /// Labels of the x positions.
    x_ticks: Vec<String>,
    x_desc: String,
    y_desc: &'static str,
    /// y-axis range (log scale).
    y_range: (f64, f64),
    legend: SeriesLabelPosition,
    /// Each case with its points.
    lines: Vec<(&'a CaseResult, Vec<(f64, f64)>)>,
}

impl LinePlot<'_> {
    fn draw(self, path: &Path) -> PlotResult {
        let height = 500 + 18 * self.lines.len() as u32;
        let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (lo, hi) = self.y_range;
        let n = self.x_ticks.len().max(2);
        let mut chart = ChartBuilder::on(&root)
            .caption(self.caption, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.2f64..(n - 1) as f64 + 0.2, (lo..hi).log_scale())?;
        let ticks = &self.x_ticks;
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    ticks.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| axis_label(*y))
            .x_desc(self.x_desc)
            .y_desc(self.y_desc)
            .draw()?;
        for (i, (r, pts)) in self.lines.into_iter().enumerate() {
            let st = style(r, i);
            chart
                .draw_series(LineSeries::new(pts, st).point_size(3))?
                .label(label(r))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], st));
        }
        chart
            .configure_series_labels()
            .position(self.legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// Throughput (million ops/s, log scale; load-adjusted up to `cpus` threads) against threads,
/// one line per case.
fn throughput_plot(
    path: &Path,
    c: Component,
    rows: &[&CaseResult],
    threads: &[usize],
    cpus: usize,
) -> PlotResult {
    let y_range = log_bounds(
        rows.iter()
            .flat_map(|r| r.runs.iter().map(|m| m.throughput(cpus) / 1e6)),
    );
    let lines = rows
        .iter()
        .map(|&r| {
            let pts = r
                .runs
                .iter()
                .filter_map(|m| {
                    threads
                        .iter()
                        .position(|&t| t == m.threads)
                        .map(|x| (x as f64, m.throughput(cpus) / 1e6))
                })
                .filter(|(_, y)| *y > 0.0)
                .collect();
            (r, pts)
        })
        .collect();
    LinePlot {
        caption: format!("{}: throughput against threads", c.name()),
        x_ticks: threads.iter().map(|t| t.to_string()).collect(),
        x_desc: format!("threads (up to {cpus}: load-adjusted throughput; beyond: wall clock)"),
        y_desc: "million ops/s",
        y_range,
        legend: SeriesLabelPosition::LowerLeft,
        lines,
    }
    .draw(path)
}

/// Latency percentiles at one thread (ns, log scale), one line per case.
fn latency_plot(path: &Path, c: Component, rows: &[&CaseResult]) -> PlotResult {
    // The maximum is left out of the plot: one preemption sets it, and it would squash the
    // percentiles into the bottom of the chart (the JSON has it).
    let shown = |l: &crate::harness::Latency| {
        l.points()
            .into_iter()
            .filter(|(n, _)| *n != "max")
            .collect::<Vec<_>>()
    };
    let lats: Vec<_> = rows
        .iter()
        .filter_map(|r| r.at(1).map(|m| (*r, shown(&m.latency))))
        .collect();
    let y_range = log_bounds(lats.iter().flat_map(|(_, l)| l.iter().map(|&(_, v)| v)));
    let lines = lats
        .into_iter()
        .map(|(r, l)| {
            let pts = l
                .iter()
                .enumerate()
                .map(|(x, (_, v))| (x as f64, v.max(0.001)))
                .collect();
            (r, pts)
        })
        .collect();
    LinePlot {
        caption: format!("{}: latency percentiles, 1 thread", c.name()),
        x_ticks: shown(&crate::harness::Latency::default())
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect(),
        x_desc: "percentile".into(),
        y_desc: "ns per op",
        y_range,
        legend: SeriesLabelPosition::UpperLeft,
        lines,
    }
    .draw(path)
}

#[cfg(test)]
mod tests {
    use super::axis_label;

    #[test]
    fn axis_labels() {
        assert_eq!(axis_label(100.0), "100");
        assert_eq!(axis_label(0.5), "0.5");
        assert_eq!(axis_label(2.0), "2");
        assert_eq!(axis_label(100_000.0), "100k");
        assert_eq!(axis_label(1.5e7), "15M");
    }
}
