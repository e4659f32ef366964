//! Multithreaded map/unmap benchmarks of the dmaloom crates against the peers and the physical
//! floor: the library behind the `dmabench` program and the Criterion benchmarks.
//!
//! Every case runs in one process, at 1 and 2 threads and oversubscribed (4, 8), on a fresh
//! structure built outside the timed region, three times (rounds over the suite); the targets
//! are ratios between cases of the same run, judged on the median of the per-repetition ratios
//! (see [`targets`]).
//!
//! * `cargo run --release -p dma-bench` — the default suite, a few minutes on two CPUs: a table
//!   per component (120 columns, `--wide` for all), the targets with their median ratios and
//!   min–max, and in `results/` the JSON of every measurement ([`output::JSON_FILE`]), the
//!   targets as Markdown ([`output::TARGETS_FILE`]) and SVG charts ([`plots`]).
//! * `dmabench --check` — the same, exiting with status 2 when a measured target is missed.
//! * `dmabench --smoke` — every case once for a few milliseconds (what CI runs, through
//!   `tests/smoke.rs`); `dmabench --help` for threads, duration, repetitions, components, sizes,
//!   sweep sizes, the modelled IOTLB sync cost and the output folder.
//! * `cargo bench -p dma-bench` — Criterion micro-benchmarks of the single-thread fast paths
//!   and, with barriers and `iter_custom`, of the 2-thread ones.
//!
//! Modules: [`harness`] (threads, counting, latency histograms, CPU and load-adjusted figures),
//! [`clock`] (the latency clock), [`spread`] (medians and min–max of repetitions), [`floor`]
//! (CAS, dependent and independent load chase, aligned memcpy), [`peers`] (other designs,
//! rebuilt), [`cases`] (every workload on ours and on the peers), [`suite`] (options, running
//! the repetitions with progress), [`targets`], [`report`] (tables), [`output`] (JSON,
//! Markdown) and [`plots`] (SVG).
//!
//! ```
//! use dma_bench::suite::{Component, Options};
//! let mut opts = Options::smoke();
//! opts.components = vec![Component::Floor];
//! opts.threads = vec![1];
//! opts.duration_ms = 1;
//! opts.quiet = true;
//! opts.boost = false;
//! let report = dma_bench::run(&opts);
//! assert!(report.results.iter().all(|r| r.runs[0].ops > 0));
//! ```

pub mod cases;
pub mod cli;
pub mod clock;
pub mod floor;
pub mod harness;
pub mod output;
pub mod peers;
pub mod plots;
pub mod report;
pub mod spread;
pub mod suite;
pub mod targets;

use output::{Meta, Report};

/// Run the suite `opts` selects and evaluate the targets (nothing is written or printed except
/// progress on stderr). With `opts.boost` the calling thread's priority is raised first, and
/// stays raised.
pub fn run(opts: &suite::Options) -> Report {
    let nice = if opts.boost {
        harness::raise_priority()
    } else {
        None
    };
    let (cases, omitted) = cases::all(opts);
    let results = suite::run_cases(opts, &cases);
    let cpus = harness::cpu_count();
    let targets = targets::all()
        .iter()
        .map(|t| t.evaluate(&results, cpus))
        .collect();
    Report {
        meta: Meta::collect(nice),
        options: opts.clone(),
        results,
        targets,
        omitted,
    }
}
