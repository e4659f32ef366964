//! Multithreaded map/unmap benchmarks of the dmaloom crates against the peers and the physical
//! floor: the library behind the `dmabench` program and the Criterion benchmarks.
//!
//! Every case runs in one process, at 1 and 2 threads and oversubscribed (4, 8), on a fresh
//! structure built outside the timed region; the targets are ratios between cases of the same
//! run (see [`targets`]).
//!
//! * `cargo run --release -p dma-bench` — the default suite, about a minute on two CPUs: a table
//!   per component, the targets with their ratios, and in `results/` the JSON of every
//!   measurement ([`output::JSON_FILE`]), the targets as Markdown ([`output::TARGETS_FILE`]) and
//!   SVG plots of throughput against threads and of latency percentiles per component.
//! * `dmabench --smoke` — every case for a few milliseconds (what CI runs, through
//!   `tests/smoke.rs`); `dmabench --help` for threads, duration, components, sizes, the modelled
//!   IOTLB sync cost and the output folder.
//! * `cargo bench -p dma-bench` — Criterion micro-benchmarks of the single-thread fast paths
//!   and, with barriers and `iter_custom`, of the 2-thread ones.
//!
//! Modules: [`harness`] (threads, counting, latency histograms, CPU and load-adjusted figures),
//! [`floor`] (CAS, load chase, memcpy), [`peers`] (other designs, rebuilt), [`cases`] (every
//! workload on ours and on the peers), [`suite`] (options, running with progress), [`targets`],
//! [`report`] (tables) and [`output`] (JSON, Markdown, SVG).
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
