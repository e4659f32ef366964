//! Tables for the terminal: one per component, with the ratios computed from the same run.

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

fn opt(v: Option<f64>, suffix: &str) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{}{suffix}", sig3(v)))
}

/// The table of one component.
pub fn component_table(
    results: &[CaseResult],
    component: Component,
    threads: &[usize],
    cpus: usize,
) -> String {
    let rows: Vec<&CaseResult> = results
        .iter()
        .filter(|r| r.component == component)
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let cmp = compare_threads(threads);
    let wl = rows
        .iter()
        .map(|r| r.workload.chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    let im = rows
        .iter()
        .map(|r| r.implementation.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = String::new();
    let _ = writeln!(s, "\n== {} ==", component.name());
    let mut head = format!("{:wl$}  {:im$}  {:>8}", "workload", "impl", "ns/op@1");
    for t in threads {
        let _ = write!(head, "  {:>8}", format!("Mop/s@{t}"));
    }
    let _ = write!(
        head,
        "  {:>6}  {:>7}  {:>9}  {:>7}  {:>7}  {:>7}",
        "2T/1T",
        "×floor",
        format!("ours÷@{cmp}"),
        "p50",
        "p99",
        "p99.9"
    );
    let _ = writeln!(s, "{head}");
    let _ = writeln!(s, "{}", "-".repeat(head.chars().count()));
    for r in rows {
        let ns1 = r.at(1).map(|m| m.cpu_ns_per_op);
        let mut line = format!(
            "{:wl$}  {:im$}  {:>8}",
            r.workload,
            r.implementation,
            opt(ns1, "")
        );
        for &t in threads {
            let _ = write!(
                line,
                "  {:>8}",
                opt(r.at(t).map(|m| m.throughput(cpus) / 1e6), "")
            );
        }
        let floor = r.floor.as_deref().and_then(|f| floor_ns(results, f));
        let xfloor = ns1.zip(floor).map(|(a, b)| a / b);
        let vs = if r.role == Role::Peer {
            ours_over(results, r, cmp, cpus)
        } else {
            None
        };
        let lat = r.at(1).map(|m| &m.latency);
        let _ = write!(
            line,
            "  {:>6}  {:>7}  {:>9}  {:>7}  {:>7}  {:>7}",
            opt(scaling(r, cpus), "×"),
            opt(xfloor, "×"),
            opt(vs, "×"),
            lat.map_or("-".into(), |l| l.p50.to_string()),
            lat.map_or("-".into(), |l| l.p99.to_string()),
            lat.map_or("-".into(), |l| l.p999.to_string()),
        );
        let _ = writeln!(s, "{line}");
    }
    s
}

/// Every component's table (`cpus`: the CPUs the run had).
pub fn tables(results: &[CaseResult], threads: &[usize], cpus: usize) -> String {
    let mut s = String::from(
        "ns/op@1: CPU ns per op at 1 thread; Mop/s@T: million ops/s with T threads (time spent\n\
         waiting for a CPU taken by other processes removed while T <= CPUs; wall clock when\n\
         oversubscribed); 2T/1T: scaling; ×floor: ns/op@1 over the floor case it is compared\n\
         with; ours÷@T: our throughput over this peer's at T threads; p50/p99/p99.9: latency\n\
         in ns at 1 thread.\n",
    );
    for c in Component::ALL {
        s.push_str(&component_table(results, c, threads, cpus));
    }
    s
}

/// A target's measured ratio, bound and verdict as text; `missed` starts the verdict of a
/// missed target, `unmeasured` stands for the ratio of one not measured.
fn target_cells(t: &TargetResult, missed: &str, unmeasured: &str) -> [String; 3] {
    let bound = format!(
        "{} {}",
        if t.target.at_most { "≤" } else { "≥" },
        sig3(t.target.bound)
    );
    let (ratio, verdict) = match (t.ratio, t.met) {
        (Some(r), Some(true)) => (format!("{}×", sig3(r)), "met".to_string()),
        (Some(r), Some(false)) => (
            format!("{}×", sig3(r)),
            format!("{missed} by {}×", sig3(t.shortfall().unwrap_or(f64::NAN))),
        ),
        _ => (unmeasured.into(), "not measured".into()),
    };
    [ratio, bound, verdict]
}

/// The targets with their ratios and whether each is met.
pub fn targets_table(targets: &[TargetResult]) -> String {
    let mut s = String::from("\n== targets (ratios measured in this run) ==\n");
    let w = targets
        .iter()
        .map(|t| t.target.statement.chars().count())
        .max()
        .unwrap_or(10);
    for t in targets {
        let [ratio, bound, verdict] = target_cells(t, "MISSED", "-");
        let _ = writeln!(
            s,
            "{:w$}  {:>8}  {:>8}  {}",
            t.target.statement, ratio, bound, verdict
        );
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
    let mut s = String::from("| Target | Measured | Bound | Verdict |\n|---|---|---|---|\n");
    for t in targets {
        let [ratio, bound, verdict] = target_cells(t, "missed", "–");
        let _ = writeln!(
            s,
            "| {} | {ratio} | {bound} | {verdict} |",
            t.target.statement
        );
    }
    s
}
