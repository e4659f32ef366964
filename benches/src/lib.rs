//! Multithreaded map/unmap benchmarks of the dmaloom crates against the peers and the physical
//! floor: the library behind the `dmabench` program and the Criterion benchmarks.
//!
//! Every case runs in one process, at 1 and 2 threads and oversubscribed (4, 8), on a fresh
//! structure built outside the timed region, three times (rounds over the suite); the targets
//! are ratios between cases of the same run, measured next to each other in every repetition,
//! judged on the median of the per-pair ratios (see [`targets`]).
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
//! [`clock`] (the latency clock), [`hugepages`] (how much of a walked structure huge pages back), [`spread`] (medians and min–max of repetitions), [`floor`]
//! (CAS, dependent and independent load chase, aligned copies: glibc's and swiotlb-core's), [`peers`] (other designs,
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
//!
//! The package is not one of the library crates: it uses `std::sync`, `parking_lot` and `libc`
//! directly, since the peers are other people's designs and the harness measures rather than
//! synchronises.
//!
//! # Criterion
//!
//! `benches/fast_paths.rs`: the floor (both chase kinds), every allocator's pair, every store's
//! translation, ours under a held reader, our map+unmap sizes, the bounce paths and the three DMA
//! modes, single threaded. `benches/multithreaded.rs`: `iter_custom` with the structure built
//! outside the timed region, threads released by one barrier and the clock stopped by a second
//! (the sharded-slab pattern), at 2 threads, for the CAS floor, our allocator, translation,
//! map+unmap and bounce, and the vm-allocator and cloud-hypervisor peers.
//!
//! # Limits
//!
//! * On a shared machine wall-clock throughput of oversubscribed runs reflects the other load;
//!   the CPU and adjusted figures do not, but caches and memory bandwidth are shared all the
//!   same, which is what the min–max of the repetitions shows.
//! * Latency percentiles of fast ops are percentiles of group means (see [`harness`]), not of
//!   single ops.
//! * The 1M-slot bounce sweep touches about 2 GiB of bounce memory per repetition (every map
//!   copies in).
//! * The cloud-hypervisor store and the per-I/O peer are rebuilt from the designs described in
//!   the reference, not copied; the cloud-hypervisor writer's cost is dominated by its linear
//!   UNMAP scan under the write lock, which is what that design does.

pub mod cases;
pub mod cli;
pub mod clock;
pub mod floor;
pub mod harness;
pub mod hugepages;
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
    let all = targets::all();
    // Each target whose every quantity the suite measures gets its runs paired.
    let pairing = |t: &targets::Target| -> Option<suite::Pairing> {
        t.quantities()
            .into_iter()
            .map(|q| {
                let i = cases.iter().position(|c| {
                    (c.component, &c.workload, &c.implementation)
                        == (q.component, &q.workload, &q.implementation)
                })?;
                cases[i]
                    .thread_counts(opts)
                    .contains(&q.threads)
                    .then_some((i, q.threads))
            })
            .collect()
    };
    let pairings: Vec<Option<suite::Pairing>> = all.iter().map(pairing).collect();
    let measured: Vec<suite::Pairing> = pairings.iter().flatten().cloned().collect();
    let (results, paired) = suite::run_cases(opts, &cases, &measured);
    let mut paired = paired.into_iter();
    let cpus = harness::cpu_count();
    let targets = all
        .iter()
        .zip(&pairings)
        .map(|(t, p)| match p.as_ref().and_then(|_| paired.next()) {
            Some(runs) => t.evaluate_paired(&runs.runs, runs.spans_s, cpus),
            None => t.evaluate(&results, cpus),
        })
        .collect();
    Report {
        meta: Meta::collect(nice),
        options: opts.clone(),
        results,
        targets,
        omitted,
    }
}
