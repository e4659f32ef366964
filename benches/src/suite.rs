//! The suite: which cases exist, their options, and running them with progress output.

use crate::harness::{Measurement, RunConfig};
use crate::spread::median_measurement;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A component of the suite (one table, one pair of plots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// The physical floor: CAS, load chase, aligned copies (memcpy and swiotlb-core's).
    Floor,
    /// IOVA allocation (`iova-cache`) and its peers.
    Iova,
    /// I/O page tables (`io-pgtable`) and mapping-store peers.
    Pgtable,
    /// Bounce buffers (`swiotlb-core`) and their peers.
    Swiotlb,
    /// The whole DMA-mapping path (`dma-iommu`).
    Iommu,
}

impl Component {
    /// Every component, in table order.
    pub const ALL: [Component; 5] = [
        Component::Floor,
        Component::Iova,
        Component::Pgtable,
        Component::Swiotlb,
        Component::Iommu,
    ];

    /// The name used in tables, file names and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Component::Floor => "floor",
            Component::Iova => "iova-cache",
            Component::Pgtable => "io-pgtable",
            Component::Swiotlb => "swiotlb-core",
            Component::Iommu => "dma-iommu",
        }
    }
}

/// Whose code a case runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A hardware floor.
    Floor,
    /// A dmaloom crate.
    Ours,
    /// Somebody else's design.
    Peer,
}

/// Everything a suite run is parameterised by.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Thread counts every case runs at (oversubscribed counts included).
    pub threads: Vec<usize>,
    /// Throughput phase per case and thread count, in milliseconds.
    pub duration_ms: u64,
    /// Pin threads to CPUs.
    pub pin: bool,
    /// Raise the process's scheduling priority for the run (best effort).
    pub boost: bool,
    /// Components to run.
    pub components: Vec<Component>,
    /// IOVA size classes, in 4 KiB granules.
    pub granules: Vec<u64>,
    /// Copy floor sizes, in bytes.
    pub copy_sizes: Vec<usize>,
    /// Bounce sizes, in bytes.
    pub bounce_sizes: Vec<usize>,
    /// Modelled cost of one IOTLB invalidation + sync, in nanoseconds.
    pub iotlb_sync_ns: u64,
    /// Slots (2 KiB) of each bounce pool built (Linux's default is 32768: 64 MiB).
    pub pool_slots: usize,
    /// Live allocations (mixed sizes) in the fragmentation case.
    pub fragmentation_live: usize,
    /// Live objects of the scale sweeps (IOVA allocations, page-table mappings, used bounce
    /// slots), smallest first.
    pub sweep: Vec<u64>,
    /// Times every case runs at every thread count; figures are the median, targets the median
    /// ratio with its min–max.
    pub repetitions: usize,
    /// Mappings kept live in the translation cases.
    pub translate_pages: u64,
    /// Map+unmap pairs per second of the throttled writer of the "translate (1 writer at a
    /// fixed rate)" case (the other writer cases run their writer flat out).
    pub writer_rate: u64,
    /// Where JSON and plots go.
    pub out: PathBuf,
    /// Write SVG plots.
    pub plots: bool,
    /// No progress output.
    pub quiet: bool,
    /// This is the CI smoke run.
    pub smoke: bool,
    /// Fail (exit status 2) when a measured target is missed.
    pub check: bool,
    /// Full-width tables.
    pub wide: bool,
}

/// The default pace of the throttled writer of the translation cases: 10k map+unmap pairs per
/// second, a busy strict-mode guest's MAP/UNMAP traffic.
pub const DEFAULT_WRITER_RATE: u64 = 10_000;

/// The modelled IOTLB invalidation cost: ~2,130 cycles per unmap (rIOMMU, ASPLOS'15) at 4 GHz.
pub const DEFAULT_IOTLB_SYNC_NS: u64 = 530;

impl Options {
    /// The default suite: a few minutes on a 2-core machine.
    pub fn default_suite() -> Self {
        Options {
            threads: vec![1, 2, 4, 8],
            duration_ms: 100,
            pin: true,
            boost: true,
            components: Component::ALL.to_vec(),
            granules: vec![1, 2, 4, 8, 16, 32, 64],
            copy_sizes: vec![2048, 4096, 65536],
            bounce_sizes: vec![512, 4096, 65536],
            iotlb_sync_ns: DEFAULT_IOTLB_SYNC_NS,
            pool_slots: 32768,
            fragmentation_live: 300_000,
            sweep: vec![1_000, 10_000, 100_000, 1_000_000],
            repetitions: 3,
            translate_pages: 4096,
            writer_rate: DEFAULT_WRITER_RATE,
            out: PathBuf::from("results"),
            plots: true,
            quiet: false,
            smoke: false,
            check: false,
            wide: false,
        }
    }

    /// The CI smoke suite: every case once, a few milliseconds each, small set-ups.
    ///
    /// ```
    /// let o = dma_bench::suite::Options::smoke();
    /// assert!(o.smoke && o.duration_ms <= 5);
    /// ```
    pub fn smoke() -> Self {
        Options {
            duration_ms: 2,
            fragmentation_live: 1_000,
            sweep: vec![1_000, 4_000],
            repetitions: 1,
            translate_pages: 256,
            pool_slots: 2048,
            smoke: true,
            ..Self::default_suite()
        }
    }

    /// The harness configuration these options give.
    pub fn run_config(&self) -> RunConfig {
        RunConfig::new(Duration::from_millis(self.duration_ms), self.pin)
    }

    /// Whether `c` is selected.
    pub fn has(&self, c: Component) -> bool {
        self.components.contains(&c)
    }
}

/// The run function of a case: given the harness configuration and a thread count, build a
/// fresh structure (not timed) and measure it.
pub type RunFn = Box<dyn Fn(&RunConfig, usize) -> Measurement + Sync>;

/// One case: a workload on one implementation, run at each thread count.
pub struct Case {
    /// The component (table) it belongs to.
    pub component: Component,
    /// The workload; ours and its peers share it, which is how ratios pair them up.
    pub workload: String,
    /// The implementation ("ours", a peer's name, or "floor").
    pub implementation: String,
    /// Whose code it is.
    pub role: Role,
    /// The floor workloads this case's cost is compared with (the fastest of them), if any.
    pub floors: Vec<String>,
    /// Run only at the suite's thread counts up to this one (the scale sweeps run at one
    /// thread; cases with a large set-up skip the oversubscribed counts).
    pub max_threads: Option<usize>,
    /// Builds and measures the case.
    pub run: RunFn,
}

impl Case {
    /// A case with no floor.
    pub fn new(
        component: Component,
        workload: impl Into<String>,
        implementation: impl Into<String>,
        role: Role,
        run: impl Fn(&RunConfig, usize) -> Measurement + Sync + 'static,
    ) -> Self {
        Case {
            component,
            workload: workload.into(),
            implementation: implementation.into(),
            role,
            floors: Vec::new(),
            max_threads: None,
            run: Box::new(run),
        }
    }

    /// Run this case only at the suite's thread counts up to `threads`.
    pub fn up_to(mut self, threads: usize) -> Self {
        self.max_threads = Some(threads);
        self
    }

    /// The thread counts this case runs at under `opts`.
    pub fn thread_counts(&self, opts: &Options) -> Vec<usize> {
        let max = self.max_threads.unwrap_or(usize::MAX);
        opts.threads.iter().copied().filter(|&t| t <= max).collect()
    }

    /// Compare this case's cost with the floor workload `floor`.
    pub fn with_floor(self, floor: impl Into<String>) -> Self {
        self.with_floors(vec![floor.into()])
    }

    /// Compare this case's cost with the fastest of the floor workloads `floors` (competing
    /// routines for one step, such as two copies).
    pub fn with_floors(mut self, floors: Vec<String>) -> Self {
        self.floors = floors;
        self
    }
}

/// The measurements of one case.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// Component name.
    pub component: Component,
    /// Workload.
    pub workload: String,
    /// Implementation.
    pub implementation: String,
    /// Whose code it is.
    pub role: Role,
    /// The floor workloads compared with (the fastest of them), if any.
    pub floors: Vec<String>,
    /// One measurement per thread count: each figure the median over the repetitions.
    pub runs: Vec<Measurement>,
    /// Every repetition, per thread count (parallel to `runs`), in the order they ran.
    pub repetitions: Vec<Vec<Measurement>>,
}

impl CaseResult {
    /// The result of a case of `role` whose repetitions at each thread count are
    /// `repetitions`; `runs` gets their medians.
    pub fn from_repetitions(
        (component, workload, implementation): (Component, &str, &str),
        role: Role,
        floors: Vec<String>,
        repetitions: Vec<Vec<Measurement>>,
    ) -> Self {
        CaseResult {
            component,
            workload: workload.into(),
            implementation: implementation.into(),
            role,
            floors,
            runs: repetitions.iter().map(|r| median_measurement(r)).collect(),
            repetitions,
        }
    }

    /// The (median) measurement at `threads`, if run.
    pub fn at(&self, threads: usize) -> Option<&Measurement> {
        self.runs.iter().find(|m| m.threads == threads)
    }

    /// Every repetition at `threads`, in the order they ran (empty if not run).
    pub fn repetitions_at(&self, threads: usize) -> &[Measurement] {
        self.runs
            .iter()
            .position(|m| m.threads == threads)
            .map_or(&[], |i| &self.repetitions[i])
    }
}

/// A part of the suite left out, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Omitted {
    /// Component.
    pub component: Component,
    /// What is missing.
    pub what: String,
    /// Why.
    pub reason: String,
}

/// Runs measured next to each other in every repetition: the quantities of one target, each a
/// case (its index in the suite) at a thread count.
pub type Pairing = Vec<(usize, usize)>;

/// The measurements of a [`Pairing`].
#[derive(Clone, Debug, Default)]
pub struct PairedRuns {
    /// Per run of the pairing, its measurement in each repetition.
    pub runs: Vec<Vec<Measurement>>,
    /// Per repetition, seconds from the start of the pairing's first run to the end of its
    /// last: how far apart in time the runs of one ratio were.
    pub spans_s: Vec<f64>,
}

/// One run of a repetition's schedule.
struct Slot {
    case: usize,
    /// Index of the thread count in the case's list.
    count: usize,
    /// Whether the measurement is the case's repetition (else only its pairing's).
    main: bool,
    /// The pairing, and the run in it, this measurement also belongs to.
    pairing: Option<(usize, usize)>,
}

/// The runs of one repetition: every pairing's runs next to each other (in reverse order in
/// every other repetition, so a drift of the machine's speed favours neither side), then the
/// rest of the suite in order. A run of a pairing is the case's repetition the first time the
/// case and thread count come up; when an earlier pairing already took it (a floor shared by
/// several targets), the run is repeated beside this pairing and counts for it alone.
fn schedule(counts: &[Vec<usize>], pairings: &[Pairing], reversed: bool) -> Vec<Slot> {
    let mut done: Vec<Vec<bool>> = counts.iter().map(|c| vec![false; c.len()]).collect();
    let mut slots = Vec::new();
    for (p, pairing) in pairings.iter().enumerate() {
        let mut order: Vec<usize> = (0..pairing.len()).collect();
        if reversed {
            order.reverse();
        }
        for k in order {
            let (case, t) = pairing[k];
            let Some(count) = counts[case].iter().position(|&c| c == t) else {
                continue;
            };
            let main = !std::mem::replace(&mut done[case][count], true);
            slots.push(Slot {
                case,
                count,
                main,
                pairing: Some((p, k)),
            });
        }
    }
    for (case, done) in done.iter().enumerate() {
        for (count, _) in done.iter().enumerate().filter(|(_, &d)| !d) {
            slots.push(Slot {
                case,
                count,
                main: true,
                pairing: None,
            });
        }
    }
    slots
}

/// Run `cases` at every thread count of `opts`, `opts.repetitions` times, printing progress to
/// stderr, and the runs of every pairing in `pairings` (each case at a thread count it runs at)
/// next to each other in each repetition.
///
/// The repetitions are rounds over the whole suite rather than back-to-back runs of one case,
/// so a burst of other load on the machine lands in one repetition of many cases instead of
/// every repetition of one; within a round the runs a target divides are adjacent (see
/// [`schedule`]), so the burst lands on both sides of its ratio alike.
pub fn run_cases(
    opts: &Options,
    cases: &[Case],
    pairings: &[Pairing],
) -> (Vec<CaseResult>, Vec<PairedRuns>) {
    let cfg = opts.run_config();
    let reps = opts.repetitions.max(1);
    let counts: Vec<Vec<usize>> = cases.iter().map(|c| c.thread_counts(opts)).collect();
    let schedules: Vec<Vec<Slot>> = (0..reps)
        .map(|rep| schedule(&counts, pairings, rep % 2 == 1))
        .collect();
    let total: usize = schedules.iter().map(Vec::len).sum();
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut done = 0;
    let mut measured: Vec<Vec<Vec<Measurement>>> = counts
        .iter()
        .map(|c| vec![Vec::with_capacity(reps); c.len()])
        .collect();
    let mut paired: Vec<PairedRuns> = pairings
        .iter()
        .map(|p| PairedRuns {
            runs: vec![Vec::with_capacity(reps); p.len()],
            spans_s: Vec::with_capacity(reps),
        })
        .collect();
    for (rep, slots) in (1..=reps).zip(schedules) {
        // Per pairing: when its first run started and its last ended.
        let mut spans: Vec<Option<(f64, f64)>> = vec![None; pairings.len()];
        for slot in slots {
            let case = &cases[slot.case];
            let threads = &counts[slot.case];
            let t = threads[slot.count];
            done += 1;
            // On a terminal one line is rewritten per run; in a log, one line per case.
            if !opts.quiet && (tty || (slot.main && slot.count == 0)) {
                let (lead, end) = if tty { ("\r\x1b[2K", "") } else { ("", "\n") };
                eprint!(
                    "{lead}[{done:>4}/{total}] {:>6.1}s  rep {rep}/{reps}  {} | {} | {} | {t} thr{end}",
                    started.elapsed().as_secs_f64(),
                    case.component.name(),
                    case.workload,
                    case.implementation
                );
                let _ = std::io::stderr().flush();
            }
            let from = started.elapsed().as_secs_f64();
            let m = (case.run)(&cfg, t);
            let to = started.elapsed().as_secs_f64();
            if let Some((p, k)) = slot.pairing {
                paired[p].runs[k].push(m.clone());
                let span = spans[p].get_or_insert((from, to));
                *span = (span.0.min(from), span.1.max(to));
            }
            if slot.main {
                measured[slot.case][slot.count].push(m);
            }
        }
        for (p, span) in paired.iter_mut().zip(spans) {
            if let Some((from, to)) = span {
                p.spans_s.push(to - from);
            }
        }
    }
    if !opts.quiet {
        let lead = if tty { "\r\x1b[2K" } else { "" };
        eprintln!(
            "{lead}{done} runs in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    let results = cases
        .iter()
        .zip(measured)
        .map(|(case, repetitions)| {
            CaseResult::from_repetitions(
                (case.component, &case.workload, &case.implementation),
                case.role,
                case.floors.clone(),
                repetitions,
            )
        })
        .collect();
    (results, paired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairings_run_adjacent_shared_runs_repeat_and_the_rest_follows() {
        // Three cases: 0 at 1 and 2 threads, 1 and 2 at 1 thread. Pairings: (0@1, 1@1) and
        // (2@1, 1@1): case 1 is shared, so the second pairing repeats it.
        let counts = vec![vec![1, 2], vec![1], vec![1]];
        let pairings = vec![vec![(0, 1), (1, 1)], vec![(2, 1), (1, 1)]];
        type View = (usize, usize, bool, Option<(usize, usize)>);
        let view = |slots: Vec<Slot>| -> Vec<View> {
            slots
                .into_iter()
                .map(|s| (s.case, counts[s.case][s.count], s.main, s.pairing))
                .collect()
        };
        assert_eq!(
            view(schedule(&counts, &pairings, false)),
            [
                (0, 1, true, Some((0, 0))),
                (1, 1, true, Some((0, 1))),
                (2, 1, true, Some((1, 0))),
                (1, 1, false, Some((1, 1))),
                (0, 2, true, None),
            ]
        );
        assert_eq!(
            view(schedule(&counts, &pairings, true)),
            [
                (1, 1, true, Some((0, 1))),
                (0, 1, true, Some((0, 0))),
                (1, 1, false, Some((1, 1))),
                (2, 1, true, Some((1, 0))),
                (0, 2, true, None),
            ]
        );
    }
}
