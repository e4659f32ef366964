//! Tables for the terminal: one per component, with the ratios computed from the same run.

use crate::spread::Spread;
use crate::suite::{CaseResult, Component, Role};
use crate::targets::TargetResult;
use std::fmt::Write;

/// Three significant digits, without exponent notation for the ranges that occur here.
///
/// ```
/// assert_eq!(dma_bench::report::sig3(0.012345), "0.0123");
/// assert_eq!(dma_bench::report::sig3(123.45), "123");
/// assert_eq!(dma_bench::report::sig3(4.5), "4.50");
/// ```
pub fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    let decimals = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else if a == 0.0 {
        0
    } else {
        (2 - a.log10().floor() as i32).max(0) as usize
    };
    format!("{v:.decimals$}")
}

/// The CPU ns/op at one thread of the floor case named `workload`.
pub fn floor_ns(results: &[CaseResult], workload: &str) -> Option<f64> {
    results
        .iter()
        .find(|r| r.role == Role::Floor && r.workload == workload)
        .and_then(|r| r.at(1))
        .map(|m| m.cpu_ns_per_op)
}

/// The fastest of the floor cases named `floors` that were measured: its name and CPU ns/op at
/// one thread.
pub fn fastest_floor<'a>(results: &[CaseResult], floors: &'a [String]) -> Option<(&'a str, f64)> {
    floors
        .iter()
        .filter_map(|f| Some((f.as_str(), floor_ns(results, f)?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// For each set of competing floors some case is compared with (two copy routines), a line
/// giving each one's cost and which won: the fastest is the floor.
pub fn competing_floors(results: &[CaseResult]) -> String {
    let mut sets: Vec<&[String]> = Vec::new();
    for r in results.iter().filter(|r| r.floors.len() > 1) {
        if !sets.contains(&r.floors.as_slice()) {
            sets.push(&r.floors);
        }
    }
    let mut s = String::new();
    for floors in sets {
        let Some((fastest, _)) = fastest_floor(results, floors) else {
            continue;
        };
        let costs: Vec<String> = floors
            .iter()
            .filter_map(|f| Some(format!("{f} {} ns", sig3(floor_ns(results, f)?))))
            .collect();
        let _ = writeln!(
            s,
            "competing floors at 1 thread: {}; the floor is the faster: {fastest}",
            costs.join(", ")
        );
    }
    s
}

/// For every case that walks tables (the dependent chases and translation sweeps), each
/// repetition's share of the walked tables on huge pages and its CPU ns/op, at 1 thread: the
/// two sides of a walk target compare fairly only in the same state, and a repetition where
/// the kernel refused huge pages shows here.
///
/// ```
/// use dma_bench::harness::{Latency, Measurement};
/// use dma_bench::suite::{CaseResult, Component, Role};
/// let mut m = Measurement::new(1, 1000, 1e-3, 3e-5, Latency::default());
/// m.huge_page_share = Some(0.75);
/// let r = CaseResult::from_repetitions(
///     (Component::Floor, "chase", "floor"),
///     Role::Floor,
///     vec![],
///     vec![vec![m]],
/// );
/// let s = dma_bench::report::huge_pages(&[r]);
/// assert!(s.contains("chase (floor): 75% 30.0 ns"), "{s}");
/// ```
pub fn huge_pages(results: &[CaseResult]) -> String {
    let walked: Vec<&CaseResult> = results
        .iter()
        .filter(|r| {
            r.repetitions_at(1)
                .iter()
                .any(|m| m.huge_page_share.is_some())
        })
        .collect();
    if walked.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "huge pages: share of the walked tables on 2 MiB pages after each repetition at 1 thread, \
         and its CPU ns/op\n",
    );
    for r in walked {
        let reps: Vec<String> = r
            .repetitions_at(1)
            .iter()
            .map(|m| {
                let share = m
                    .huge_page_share
                    .map_or("?".into(), |h| format!("{:.0}%", h * 100.0));
                format!("{share} {} ns", sig3(m.cpu_ns_per_op))
            })
            .collect();
        let _ = writeln!(
            s,
            "  {} ({}): {}",
            r.workload,
            r.implementation,
            reps.join(" | ")
        );
    }
    s
}

/// The thread count peers are compared at: 2 if it was run, else the smallest run.
pub fn compare_threads(threads: &[usize]) -> usize {
    if threads.contains(&2) {
        2
    } else {
        threads.iter().copied().min().unwrap_or(1)
    }
}

/// Throughput of "ours" on `r`'s workload over `r`'s throughput, at `threads`.
pub fn ours_over(
    results: &[CaseResult],
    r: &CaseResult,
    threads: usize,
    cpus: usize,
) -> Option<f64> {
    let ours = results.iter().find(|o| {
        o.component == r.component && o.workload == r.workload && o.implementation == "ours"
    })?;
    let a = ours.at(threads)?.throughput(cpus);
    let b = r.at(threads)?.throughput(cpus);
    (b > 0.0).then(|| a / b)
}

/// 2-thread over 1-thread throughput of `r`.
pub fn scaling(r: &CaseResult, cpus: usize) -> Option<f64> {
    let one = r.at(1)?.throughput(cpus);
    let two = r.at(2)?.throughput(cpus);
    (one > 0.0).then(|| two / one)
}

/// A table cell's number in at most 7 characters: [`sig3`], with k/M/G/T from 100,000 on and
/// "<0.001" below a thousandth.
///
/// ```
/// use dma_bench::report::compact;
/// assert_eq!(compact(42.0), "42.0");
/// assert_eq!(compact(98_765_432.0), "98.8M");
/// assert_eq!(compact(1.1e12), "1.10T");
/// assert_eq!(compact(0.0000012), "<0.001");
/// ```
pub fn compact(v: f64) -> String {
    let a = v.abs();
    if a > 0.0 && a < 0.001 {
        return "<0.001".into();
    }
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    match units.iter().find(|(scale, _)| a >= 1e5 && a >= *scale) {
        Some((scale, unit)) => format!("{}{unit}", sig3(v / scale)),
        None => sig3(v),
    }
}

fn opt(v: Option<f64>, suffix: &str) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{}{suffix}", compact(v)))
}

/// The width of the default tables.
pub const COLUMNS: usize = 120;

/// Which columns a table has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Fits [`COLUMNS`]: throughput at the first two thread counts, p50 and p99.
    Compact,
    /// Every thread count, the min–max of ns/op@1 and of p99, and p99.9.
    Wide,
}

/// One column: header, width, and the cell of a row.
struct Column<'a> {
    head: String,
    width: usize,
    cell: Box<dyn Fn(&CaseResult) -> String + 'a>,
}

/// The columns of a component table under `layout`.
fn columns<'a>(
    results: &'a [CaseResult],
    threads: &'a [usize],
    cpus: usize,
    layout: Layout,
) -> Vec<Column<'a>> {
    let col = |head: String, width: usize, cell: Box<dyn Fn(&CaseResult) -> String + 'a>| Column {
        head,
        width,
        cell,
    };
    let cmp = compare_threads(threads);
    let ns1 = |r: &CaseResult| r.at(1).map(|m| m.cpu_ns_per_op);
    let ns_spread = |r: &CaseResult| {
        let v: Vec<f64> = r
            .repetitions_at(1)
            .iter()
            .map(|m| m.cpu_ns_per_op)
            .collect();
        Spread::of(&v)
    };
    let lat = |f: fn(&crate::harness::Latency) -> f64| {
        move |r: &CaseResult| opt(r.at(1).map(|m| f(&m.latency)), "")
    };
    let mut v = vec![col("ns/op@1".into(), 8, Box::new(move |r| opt(ns1(r), "")))];
    match layout {
        Layout::Compact => v.push(col(
            "range".into(),
            6,
            Box::new(move |r| opt(ns_spread(r).map(|s| s.range_percent()), "%")),
        )),
        Layout::Wide => v.push(col(
            "min–max@1".into(),
            13,
            Box::new(move |r| {
                ns_spread(r).map_or("-".into(), |s| format!("{}–{}", sig3(s.min), sig3(s.max)))
            }),
        )),
    }
    let shown = match layout {
        Layout::Compact => &threads[..threads.len().min(2)],
        Layout::Wide => threads,
    };
    for &t in shown {
        v.push(col(
            format!("Mop/s@{t}"),
            8,
            Box::new(move |r| opt(r.at(t).map(|m| m.throughput(cpus) / 1e6), "")),
        ));
    }
    v.push(col(
        "2T/1T".into(),
        7,
        Box::new(move |r| opt(scaling(r, cpus), "×")),
    ));
    v.push(col(
        "×floor".into(),
        7,
        Box::new(move |r| {
            let floor = fastest_floor(results, &r.floors).map(|(_, ns)| ns);
            opt(ns1(r).zip(floor).map(|(a, b)| a / b), "×")
        }),
    ));
    v.push(col(
        format!("ours÷@{cmp}"),
        7,
        Box::new(move |r| {
            let vs = (r.role == Role::Peer)
                .then(|| ours_over(results, r, cmp, cpus))
                .flatten();
            opt(vs, "×")
        }),
    ));
    v.push(col("p50".into(), 7, Box::new(lat(|l| l.p50))));
    v.push(col("p99".into(), 7, Box::new(lat(|l| l.p99))));
    if layout == Layout::Wide {
        // A p99 moves with preemption (harness: "Preemption in a percentile"): its
        // repetitions' range beside the median.
        v.push(col(
            "p99 min–max".into(),
            13,
            Box::new(move |r| {
                let v: Vec<f64> = r.repetitions_at(1).iter().map(|m| m.latency.p99).collect();
                Spread::of(&v).map_or("-".into(), |s| format!("{}–{}", sig3(s.min), sig3(s.max)))
            }),
        ));
        v.push(col("p99.9".into(), 7, Box::new(lat(|l| l.p999))));
    }
    v
}

/// The table of one component: a line per workload, then its implementations indented under it.
pub fn component_table(
    results: &[CaseResult],
    component: Component,
    threads: &[usize],
    cpus: usize,
    layout: Layout,
) -> String {
    let rows: Vec<&CaseResult> = results
        .iter()
        .filter(|r| r.component == component)
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let cols = columns(results, threads, cpus, layout);
    let cells: usize = cols.iter().map(|c| c.width + 2).sum();
    let longest = rows
        .iter()
        .map(|r| r.implementation.chars().count() + 2)
        .max()
        .unwrap_or(8);
    let name = match layout {
        Layout::Compact => COLUMNS.saturating_sub(cells).max(12),
        Layout::Wide => longest.max(24),
    };
    let clip = |s: &str, width: usize| -> String {
        if s.chars().count() <= width {
            s.to_string()
        } else {
            let mut c: String = s.chars().take(width - 1).collect();
            c.push('…');
            c
        }
    };
    let mut s = String::new();
    let _ = writeln!(s, "\n== {} ==", component.name());
    let mut head = format!("{:name$}", "workload / implementation");
    for c in &cols {
        let _ = write!(head, "  {:>w$}", c.head, w = c.width);
    }
    let _ = writeln!(s, "{head}");
    let _ = writeln!(s, "{}", "-".repeat(head.chars().count()));
    let mut workloads: Vec<&str> = Vec::new();
    for r in &rows {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    for w in workloads {
        let _ = writeln!(s, "{}", clip(w, COLUMNS));
        for r in rows.iter().filter(|r| r.workload == w) {
            let mut line = format!("{:name$}", clip(&format!("  {}", r.implementation), name));
            for c in &cols {
                let _ = write!(line, "  {:>w$}", (c.cell)(r), w = c.width);
            }
            let _ = writeln!(s, "{line}");
        }
    }
    s
}

/// Every component's table (`cpus`: the CPUs the run had).
pub fn tables(results: &[CaseResult], threads: &[usize], cpus: usize, layout: Layout) -> String {
    let mut s = String::from(
        "ns/op@1: CPU ns per op at 1 thread, median of the repetitions; range: how far apart the\n\
         repetitions' ns/op@1 landed (max/min - 1); Mop/s@T: million ops/s with T threads (time\n\
         spent waiting for a CPU taken by other processes removed while T <= CPUs; wall clock\n\
         when oversubscribed); 2T/1T: scaling; ×floor: ns/op@1 over the (fastest) floor case it\n\
         is compared with; ours÷@T: our throughput over this peer's at T threads; p50/p99: latency\n\
         in ns at 1 thread. --wide shows every thread count, min–max of ns/op and p99, and p99.9.\n",
    );
    for c in Component::ALL {
        s.push_str(&component_table(results, c, threads, cpus, layout));
        if c == Component::Floor {
            s.push_str(&competing_floors(results));
            s.push_str(&huge_pages(results));
        }
    }
    s
}

/// A target's measured ratio (median and min–max), bound and verdict as text; `missed` starts
/// the verdict of a missed target, `unmeasured` stands for the ratio of one not measured.
fn target_cells(t: &TargetResult, missed: &str, unmeasured: &str) -> [String; 4] {
    let bound = format!(
        "{} {}",
        if t.target.at_most { "≤" } else { "≥" },
        sig3(t.target.bound)
    );
    let noise = if t.within_noise {
        " (within noise)"
    } else {
        ""
    };
    let Some(r) = t.ratio else {
        return [
            unmeasured.into(),
            unmeasured.into(),
            bound,
            "not measured".into(),
        ];
    };
    let verdict = match t.met {
        Some(true) => format!("met{noise}"),
        _ => format!(
            "{missed} by {}×{noise}",
            sig3(t.shortfall().unwrap_or(f64::NAN))
        ),
    };
    [
        format!("{}×", sig3(r.median)),
        format!("{}–{}", sig3(r.min), sig3(r.max)),
        bound,
        verdict,
    ]
}

/// The targets with their median ratios, min–max and whether each is met: under `Compact`, the
/// statement on one line and the figures indented on the next, within [`COLUMNS`].
pub fn targets_table(targets: &[TargetResult], layout: Layout) -> String {
    let mut s = String::from(
        "\n== targets (ratios of runs made next to each other: median of the repetitions, min–max) ==\n",
    );
    let w = targets
        .iter()
        .map(|t| t.target.statement.chars().count())
        .max()
        .unwrap_or(10);
    for t in targets {
        let [ratio, range, bound, verdict] = target_cells(t, "MISSED", "-");
        let figures = format!("{ratio:>8}  {range:>13}  {bound:>7}  {verdict}");
        let _ = match layout {
            Layout::Compact => writeln!(s, "{}\n    {figures}", t.target.statement),
            Layout::Wide => writeln!(s, "{:w$}  {figures}", t.target.statement),
        };
    }
    s
}

/// The targets as a Markdown table (for a README's "how far we are").
///
/// ```
/// let t = dma_bench::targets::all()[0].evaluate(&[], 2);
/// let md = dma_bench::report::targets_markdown(&[t]);
/// assert!(md.contains("| not measured |"));
/// ```
pub fn targets_markdown(targets: &[TargetResult]) -> String {
    let mut s =
        String::from("| Target | Median | Min–max | Bound | Verdict |\n|---|---|---|---|---|\n");
    for t in targets {
        let [ratio, range, bound, verdict] = target_cells(t, "missed", "–");
        let _ = writeln!(
            s,
            "| {} | {ratio} | {range} | {bound} | {verdict} |",
            t.target.statement
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Latency, Measurement};

    fn case(workload: &str, implementation: &str, role: Role, ops: &[(usize, u64)]) -> CaseResult {
        let repetitions: Vec<Vec<Measurement>> = ops
            .iter()
            .map(|&(t, n)| {
                let lat = Latency {
                    p50: 123_456.0,
                    p99: 98_765_432.0,
                    p999: 1e9,
                    ..Latency::default()
                };
                vec![Measurement::new(t, n, 1.0, t as f64, lat)]
            })
            .collect();
        CaseResult::from_repetitions(
            (Component::Iova, workload, implementation),
            role,
            Vec::new(),
            repetitions,
        )
    }

    #[test]
    fn competing_floors_name_the_faster_and_set_the_times_floor_column() {
        let floors = vec!["copy A".to_string(), "copy B".to_string()];
        // 1e9 ops in one CPU second: 1 ns; 5e8: 2 ns; the case at 4 ns.
        let mut results = vec![
            case("copy A", "floor", Role::Floor, &[(1, 500_000_000)]),
            case("copy B", "floor", Role::Floor, &[(1, 1_000_000_000)]),
            case("bounce", "ours", Role::Ours, &[(1, 250_000_000)]),
        ];
        results[2].floors = floors.clone();
        assert_eq!(fastest_floor(&results, &floors), Some(("copy B", 1.0)));
        let line = competing_floors(&results);
        assert!(line.contains("copy A 2.00 ns, copy B 1.00 ns"), "{line}");
        assert!(
            line.trim_end().ends_with("the floor is the faster: copy B"),
            "{line}"
        );
        let table = component_table(&results, Component::Iova, &[1], 2, Layout::Wide);
        let row = table.lines().find(|l| l.starts_with("  ours")).unwrap();
        assert!(row.contains("4.00×"), "{row}");
        // Floors not measured: no line, no ratio.
        assert_eq!(competing_floors(&results[2..]), "");
        assert_eq!(fastest_floor(&results[2..], &floors), None);
    }

    #[test]
    fn compact_tables_fit_in_120_columns_even_with_extreme_figures() {
        let threads = [1, 2, 4, 8];
        let long = "a workload whose name is far longer than the name column of the table is wide";
        let results = vec![
            case(
                long,
                "ours",
                Role::Ours,
                &[(1, 1), (2, 1 << 40), (4, 3), (8, 4)],
            ),
            case(
                long,
                "RwLock<BTreeMap> (cloud-hypervisor) and more",
                Role::Peer,
                &[(1, 1 << 40), (2, 1)],
            ),
        ];
        let t = tables(&results, &threads, 2, Layout::Compact);
        for line in t.lines() {
            assert!(
                line.chars().count() <= COLUMNS,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        assert!(t.contains("<0.001×") && t.contains("1.10T×"), "{t}");
        let evaluated: Vec<_> = crate::targets::all()
            .iter()
            .map(|t| t.evaluate(&results, 2))
            .collect();
        for line in targets_table(&evaluated, Layout::Compact).lines() {
            assert!(line.chars().count() <= COLUMNS, "{line}");
        }
        // The wide table has every thread count, and the p99's range over the repetitions
        // (one repetition here: min and max are its p99).
        let w = tables(&results, &threads, 2, Layout::Wide);
        assert!(w.contains("Mop/s@8") && !t.contains("Mop/s@8"));
        assert!(
            w.contains("p99 min–max") && !t.contains("p99 min–max"),
            "{w}"
        );
        assert!(w.contains("98765432–98765432"), "{w}");
    }
}
