//! What a run leaves in the results folder: one JSON file with every measurement, ratio and
//! target, and per component an SVG of throughput against threads and one of latency
//! percentiles.

use crate::suite::{CaseResult, Omitted, Options};
use crate::targets::TargetResult;
use serde::Serialize;
use std::path::PathBuf;

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
        let plots = crate::plots::write_all(
            &opts.out,
            &report.results,
            &report.targets,
            &opts.threads,
            &opts.sweep,
            report.meta.cpus,
        )
        .map_err(std::io::Error::other)?;
        files.extend(plots);
    }
    Ok(files)
}
