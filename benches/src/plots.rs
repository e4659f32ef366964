//! SVG charts, one per question a reader asks:
//!
//! * `targets.svg` — how far is each target: the median ratio over the bound per target, with
//!   the repetitions' min–max, on one log axis where 1 is the bound;
//! * `<component>-<workload>-throughput.svg` — ours against each peer on one workload, at every
//!   thread count, with the throughput bounds of the targets on that workload drawn in;
//! * `<component>-<workload>-latency.svg` — the same cases' latency percentiles at one thread,
//!   with latency bounds drawn in;
//! * `sweep-<component>.svg` — cost per op against live objects for a scale sweep, with the
//!   scale bound drawn at the largest size.
//!
//! Every chart has a handful of lines, each its own colour (ours always blue, with round
//! markers), and its legend beside the plot area, never over the data.

use crate::cases::{alloc, floor, human_count, pgtable, swiotlb};
use crate::spread::Spread;
use crate::suite::{CaseResult, Component, Role};
use crate::targets::{Metric, Quantity, TargetResult};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

type PlotResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Our colours (ours, then our variants), and the peers' in order: strong colours that stay
/// apart on white.
const OURS_COLORS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x4e, 0xd8),
    RGBColor(0x0b, 0x1f, 0x66),
    RGBColor(0x6a, 0x8c, 0xff),
];
const PEER_COLORS: [RGBColor; 7] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x7f, 0x7f, 0x7f),
];
/// Dashed bound segments, one colour per bound of a chart.
const BOUND_COLORS: [RGBColor; 4] = [
    RGBColor(0, 0, 0),
    RGBColor(0x99, 0x33, 0x99),
    RGBColor(0x99, 0x66, 0x00),
    RGBColor(0x00, 0x80, 0x80),
];
const BOUND_COLOR: RGBColor = BOUND_COLORS[0];

/// Width of the plot area and of the legend beside it, and the height of a chart.
const PLOT_W: u32 = 720;
const LEGEND_W: u32 = 380;
const HEIGHT: u32 = 460;

/// One line of a chart: a label, whose code it is, and points at x positions.
struct Line {
    label: String,
    role: Role,
    points: Vec<(usize, f64)>,
}

/// A target bound drawn at one x position: a dashed segment at `y`, labelled in the legend.
struct Bound {
    x: usize,
    y: f64,
    label: String,
}

/// A chart over labelled x positions with a log y axis.
struct Chart {
    title: String,
    x_desc: String,
    x_ticks: Vec<String>,
    y_desc: &'static str,
    lines: Vec<Line>,
    bounds: Vec<Bound>,
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

/// The 1-2-5 sequence within `[lo, hi]`: the y labels of a log axis (plotters' own put labels
/// only at powers of ten, which leaves a narrow range with one label).
fn one_two_five(lo: f64, hi: f64) -> Vec<f64> {
    let mut v = Vec::new();
    let mut decade = 10f64.powi(lo.log10().floor() as i32);
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let x = m * decade;
            if (lo..=hi).contains(&x) {
                v.push(x);
            }
        }
        decade *= 10.0;
    }
    v
}

/// The colour and stroke of a line: `index` counts the lines of its kind (ours, or others)
/// before it.
fn line_style(role: Role, index: usize) -> (RGBColor, u32) {
    match role {
        Role::Ours => (OURS_COLORS[index % OURS_COLORS.len()], 3),
        _ => (PEER_COLORS[index % PEER_COLORS.len()], 2),
    }
}

/// Draw the legend entries `(label, colour, dashed)` top-down in `area`.
fn legend(
    area: &DrawingArea<SVGBackend, Shift>,
    entries: &[(String, RGBColor, bool)],
) -> PlotResult {
    let font = ("sans-serif", 14).into_font();
    for (i, (label, color, dashed)) in entries.iter().enumerate() {
        let y = 60 + 24 * i as i32;
        if *dashed {
            for k in 0..4 {
                area.draw(&PathElement::new(
                    vec![(10 + 8 * k, y), (14 + 8 * k, y)],
                    color.stroke_width(2),
                ))?;
            }
        } else {
            area.draw(&PathElement::new(
                vec![(10, y), (40, y)],
                color.stroke_width(3),
            ))?;
            area.draw(&Circle::new((25, y), 3, color.filled()))?;
        }
        area.draw(&Text::new(label.clone(), (50, y - 7), font.clone()))?;
    }
    Ok(())
}

impl Chart {
    fn draw(self, path: &Path) -> PlotResult {
        let root = SVGBackend::new(path, (PLOT_W + LEGEND_W, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, side) = root.split_horizontally(PLOT_W);
        let ys = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .chain(self.bounds.iter().map(|b| b.y));
        let (lo, hi) = log_bounds(ys);
        let n = self.x_ticks.len().max(2);
        let mut chart = ChartBuilder::on(&plot)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(
                -0.3f64..(n - 1) as f64 + 0.3,
                (lo..hi).log_scale().with_key_points(one_two_five(lo, hi)),
            )?;
        let ticks = &self.x_ticks;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_labels(n)
            .y_labels(30)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    ticks.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| axis_label(*y))
            .x_desc(self.x_desc.as_str())
            .y_desc(self.y_desc)
            .draw()?;
        let mut entries = Vec::new();
        let (mut ours, mut others) = (0, 0);
        for l in &self.lines {
            let count = if l.role == Role::Ours {
                &mut ours
            } else {
                &mut others
            };
            let (color, width) = line_style(l.role, *count);
            *count += 1;
            let pts: Vec<(f64, f64)> = l.points.iter().map(|&(x, y)| (x as f64, y)).collect();
            chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            entries.push((l.label.clone(), color, false));
        }
        for (i, b) in self.bounds.iter().enumerate() {
            let x = b.x as f64;
            let color = BOUND_COLORS[i % BOUND_COLORS.len()];
            chart.draw_series(DashedLineSeries::new(
                vec![(x - 0.25, b.y), (x + 0.25, b.y)],
                6,
                4,
                color.stroke_width(2),
            ))?;
            entries.push((b.label.clone(), color, true));
        }
        legend(&side, &entries)?;
        root.present()?;
        Ok(())
    }
}

/// A file-name fragment for a workload.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// Whether quantity `q` reads case `r`.
fn reads(q: &Quantity, r: &CaseResult) -> bool {
    q.component == r.component && q.workload == r.workload && q.implementation == r.implementation
}

/// The bounds of `targets` on `r`'s workload for `metric`: at the numerator's thread count (or
/// percentile position), `bound × denominator` (one-quantity numerators only).
fn bounds_on(
    targets: &[TargetResult],
    rows: &[&CaseResult],
    metric: Metric,
    x_of: impl Fn(&Quantity) -> Option<usize>,
) -> Vec<Bound> {
    targets
        .iter()
        .filter_map(|t| {
            let [q] = t.target.numerator.as_slice() else {
                return None;
            };
            if q.metric != metric || !rows.iter().any(|r| reads(q, r)) {
                return None;
            }
            let d = t.denominator_value?.median;
            let op = if t.target.at_most { "≤" } else { "≥" };
            Some(Bound {
                x: x_of(q)?,
                y: t.target.bound * d,
                label: format!("target: {op} {}× ({})", t.target.bound, t.target.id),
            })
        })
        .collect()
}

/// Ours and the peers of one workload: throughput against threads and latency percentiles.
fn workload_charts(
    dir: &Path,
    rows: &[&CaseResult],
    targets: &[TargetResult],
    threads: &[usize],
    cpus: usize,
) -> PlotResult<Vec<PathBuf>> {
    let first = rows[0];
    let name = format!("{}-{}", first.component.name(), slug(&first.workload));
    let label = |r: &CaseResult| r.implementation.clone();
    let tput = Chart {
        title: format!(
            "{}: {} — throughput",
            first.component.name(),
            first.workload
        ),
        x_desc: format!("threads (up to {cpus}: load-adjusted; beyond: wall clock)"),
        x_ticks: threads.iter().map(|t| t.to_string()).collect(),
        y_desc: "million ops/s (median)",
        lines: rows
            .iter()
            .map(|r| Line {
                label: label(r),
                role: r.role,
                points: r
                    .runs
                    .iter()
                    .filter_map(|m| {
                        let x = threads.iter().position(|&t| t == m.threads)?;
                        let y = m.throughput(cpus) / 1e6;
                        (y > 0.0).then_some((x, y))
                    })
                    .collect(),
            })
            .collect(),
        bounds: bounds_on(targets, rows, Metric::OpsPerSec, |q| {
            threads.iter().position(|&t| t == q.threads)
        })
        .into_iter()
        .map(|b| Bound { y: b.y / 1e6, ..b })
        .collect(),
    };
    let percentiles = ["p50", "p90", "p99", "p99.9"];
    let lat = Chart {
        title: format!(
            "{}: {} — latency, 1 thread",
            first.component.name(),
            first.workload
        ),
        x_desc: "percentile".into(),
        x_ticks: percentiles.iter().map(|p| p.to_string()).collect(),
        y_desc: "ns per op",
        lines: rows
            .iter()
            .filter_map(|r| {
                let l = &r.at(1)?.latency;
                let points = l
                    .points()
                    .into_iter()
                    .take(percentiles.len())
                    .enumerate()
                    .filter(|(_, (_, v))| *v > 0.0)
                    .map(|(x, (_, v))| (x, v))
                    .collect();
                Some(Line {
                    label: label(r),
                    role: r.role,
                    points,
                })
            })
            .collect(),
        bounds: bounds_on(targets, rows, Metric::P99, |_| Some(2)),
    };
    let t = dir.join(format!("{name}-throughput.svg"));
    let l = dir.join(format!("{name}-latency.svg"));
    tput.draw(&t)?;
    lat.draw(&l)?;
    Ok(vec![t, l])
}

/// A scale sweep series: the component and implementation of its cases, the workload name at
/// each count, and the legend label.
type SweepSeries = (Component, &'static str, fn(u64) -> String, &'static str);

/// The sweep charts: file name and series.
const SWEEPS: [(&str, &[SweepSeries]); 3] = [
    (
        "sweep-iova-cache.svg",
        &[(
            Component::Iova,
            "ours",
            alloc::sweep,
            "random free+alloc, N live",
        )],
    ),
    (
        "sweep-io-pgtable.svg",
        &[
            (
                Component::Pgtable,
                "ours",
                pgtable::sweep,
                "translate, dependent, N mappings",
            ),
            (
                Component::Floor,
                "floor",
                floor::chase_sweep,
                "dependent chase, N pages (floor)",
            ),
        ],
    ),
    (
        "sweep-swiotlb-core.svg",
        &[(
            Component::Swiotlb,
            "ours",
            swiotlb::used_sweep,
            "bounce 4 KiB to device, N slots used",
        )],
    ),
];

/// CPU ns/op at one thread against live objects for each series of a sweep, with the bounds of
/// the targets on the sweep's cases drawn in; `None` if fewer than two points were measured.
fn sweep_chart(
    path: &Path,
    series: &[SweepSeries],
    results: &[CaseResult],
    sweep: &[u64],
    targets: &[TargetResult],
) -> PlotResult<bool> {
    let find = |(c, imp, name, _): &SweepSeries, n: u64| {
        let w = name(n);
        results
            .iter()
            .find(|r| r.component == *c && r.implementation == *imp && r.workload == w)
    };
    let lines: Vec<Line> = series
        .iter()
        .filter_map(|s| {
            let found: Vec<(usize, &CaseResult)> = sweep
                .iter()
                .enumerate()
                .filter_map(|(x, &n)| find(s, n).map(|r| (x, r)))
                .collect();
            let points: Vec<(usize, f64)> = found
                .iter()
                .filter_map(|&(x, r)| Some((x, r.at(1)?.cpu_ns_per_op)))
                .collect();
            (points.len() > 1).then(|| Line {
                label: s.3.to_string(),
                role: found[0].1.role,
                points,
            })
        })
        .collect();
    if lines.is_empty() {
        return Ok(false);
    }
    let rows: Vec<&CaseResult> = series
        .iter()
        .flat_map(|s| sweep.iter().filter_map(|&n| find(s, n)))
        .collect();
    let x_of = |q: &Quantity| {
        sweep
            .iter()
            .position(|&n| series.iter().any(|s| s.2(n) == q.workload))
    };
    let chart = Chart {
        title: format!(
            "{}: cost per op against live objects, 1 thread",
            path.file_stem()
                .map_or("".into(), |f| f.to_string_lossy().replace("sweep-", ""))
        ),
        x_desc: "live objects (N)".into(),
        x_ticks: sweep.iter().map(|&n| human_count(n)).collect(),
        y_desc: "CPU ns per op (median)",
        lines,
        bounds: bounds_on(targets, &rows, Metric::CpuNsPerOp, x_of),
    };
    chart.draw(path)?;
    Ok(true)
}

/// The range of ratio ÷ bound the targets chart shows (farther values sit at its edges).
const SHOWN: (f64, f64) = (0.05, 20.0);

/// Every target's median ratio over its bound (1: exactly at the bound; below 1: met), with
/// the repetitions' min–max, one row per target.
fn targets_chart(path: &Path, targets: &[TargetResult]) -> PlotResult {
    let rows: Vec<(&str, Spread, bool)> = targets
        .iter()
        .filter_map(|t| {
            let r = t.ratio?;
            // Normalise so that below 1 is always met.
            let f = |v: f64| {
                if t.target.at_most {
                    v / t.target.bound
                } else {
                    t.target.bound / v
                }
            };
            let (a, b) = (f(r.min), f(r.max));
            let clamp = |v: f64| v.clamp(SHOWN.0, SHOWN.1);
            let s = Spread {
                median: clamp(f(r.median)),
                min: clamp(a.min(b)),
                max: clamp(a.max(b)),
            };
            Some((t.target.id, s, t.met == Some(true)))
        })
        .collect();
    let height = 120 + 26 * rows.len().max(1) as u32;
    let root = SVGBackend::new(path, (PLOT_W + LEGEND_W, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = (SHOWN.0 / 1.2, SHOWN.1 * 1.2);
    let n = rows.len().max(1);
    let (plot, side) = root.split_horizontally(PLOT_W + LEGEND_W - 170);
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            "targets: median ratio ÷ bound (≤ 1: met; hollow: within noise), min–max (shown 0.05–20)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(230)
        .build_cartesian_2d((lo..hi).log_scale(), -0.5f64..n as f64 - 0.5)?;
    let ids: Vec<&str> = rows.iter().map(|r| r.0).collect();
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .y_labels(n)
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 1e-6 && i >= 0.0 {
                ids.get(n - 1 - i as usize)
                    .map_or(String::new(), |s| s.to_string())
            } else {
                String::new()
            }
        })
        .x_label_formatter(&|x| axis_label(*x))
        .x_desc("ratio ÷ bound (log)")
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        vec![(1.0, -0.5), (1.0, n as f64 - 0.5)],
        6,
        4,
        BOUND_COLOR.stroke_width(2),
    ))?;
    let (met_color, missed_color) = (PEER_COLORS[1], PEER_COLORS[0]);
    for (i, (_, s, met)) in rows.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let color = if *met { met_color } else { missed_color };
        chart.draw_series(LineSeries::new(
            vec![(s.min, y), (s.max, y)],
            color.stroke_width(2),
        ))?;
        // A hollow marker: the bound lies within the repetitions' min–max.
        let within_noise = s.min <= 1.0 && 1.0 <= s.max && s.min < s.max;
        let style = if within_noise {
            color.stroke_width(2)
        } else {
            color.filled()
        };
        chart.draw_series([Circle::new((s.median, y), 5, style)])?;
    }
    let key = [
        ("met (median)".to_string(), met_color, false),
        ("missed (median)".to_string(), missed_color, false),
        ("bound".to_string(), BOUND_COLOR, true),
    ];
    legend(&side, &key)?;
    root.present()?;
    Ok(())
}

/// Write every chart of a run into `dir`; the files written.
pub fn write_all(
    dir: &Path,
    results: &[CaseResult],
    targets: &[TargetResult],
    threads: &[usize],
    sweep: &[u64],
    cpus: usize,
) -> PlotResult<Vec<PathBuf>> {
    let mut files = Vec::new();
    let t = dir.join("targets.svg");
    targets_chart(&t, targets)?;
    files.push(t);
    for c in Component::ALL {
        let rows: Vec<&CaseResult> = results.iter().filter(|r| r.component == c).collect();
        let mut workloads: Vec<&str> = Vec::new();
        for r in &rows {
            if !workloads.contains(&r.workload.as_str()) {
                workloads.push(&r.workload);
            }
        }
        for w in workloads {
            let group: Vec<&CaseResult> =
                rows.iter().copied().filter(|r| r.workload == w).collect();
            // A chart answers "ours against whom": workloads without a peer have no question.
            if group.iter().any(|r| r.role == Role::Peer) {
                files.extend(workload_charts(dir, &group, targets, threads, cpus)?);
            }
        }
    }
    for (file, series) in SWEEPS {
        let path = dir.join(file);
        if sweep_chart(&path, series, results, sweep, targets)? {
            files.push(path);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels() {
        assert_eq!(axis_label(100.0), "100");
        assert_eq!(axis_label(0.5), "0.5");
        assert_eq!(axis_label(2.0), "2");
        assert_eq!(axis_label(100_000.0), "100k");
        assert_eq!(axis_label(1.5e7), "15M");
    }

    #[test]
    fn log_labels_follow_one_two_five() {
        assert_eq!(one_two_five(1.5, 60.0), [2.0, 5.0, 10.0, 20.0, 50.0]);
        assert_eq!(one_two_five(0.3, 0.9), [0.5]);
    }

    #[test]
    fn slugs_are_file_name_safe() {
        assert_eq!(slug("alloc+free 1 granule"), "alloc-free-1-granule");
        assert_eq!(
            slug("translate, independent (1 writer)"),
            "translate-independent-1-writer"
        );
    }
}
