//! The measurement harness: N threads started behind a barrier, per-thread op counting, and a
//! separate latency phase that times every op into an HDR histogram.
//!
//! A run has two phases on the same threads and the same structure:
//!
//! 1. **Throughput.** Every thread runs its op in batches of [`BATCH`] and only checks a shared
//!    stop flag (a read, never a write) between batches; its count lives on its own stack.
//!    Throughput is the total count over the wall time from the first thread's start to the
//!    last thread's end.
//! 2. **Latency.** Ops are timed in short groups with the cheap clock of [`crate::clock`]; the
//!    calibrated cost of reading it is subtracted, and each group's time per op goes into a
//!    thread-local histogram (picosecond units) merged at the end. Ops of [`SINGLE_OP_NS`] or
//!    more are timed alone; faster ones in groups of as many as take about
//!    [`LATENCY_GROUP_NS`] at the thread's throughput-phase speed (at most
//!    [`MAX_LATENCY_GROUP`]): some virtual machines advance every clock, the TSC included, in
//!    10 ns steps, so timing a 20 ns op alone could only say 10, 20 or 30 ns, while a group of
//!    50 resolves its ops to a fifth of a nanosecond. A slow op still shows: one 1 µs stall in
//!    a group of 50 raises that sample by 20 ns.
//!
//! Timing each op in the throughput phase would add the clock's cost to every op, which is of
//! the same order as the cheapest ops measured here (an uncontended CAS), so the phases are kept
//! apart.
//!
//! # Preemption in a percentile
//!
//! A latency sample is wall time, so when the kernel takes the CPU from a sampling thread
//! it shows twice. The sample it interrupts holds the whole time away (a timeslice of
//! another process, milliseconds): one sample per preemption, so at a few per phase it is in
//! `max` and, with more than one per thousand samples, in p99.9, never in p50. And the
//! samples after the thread is back run on caches the other process refilled: an op whose
//! own working set fits in the caches (a cached alloc+free pair) is warm again after one or
//! two samples, while an op that touches a random line of megabytes of metadata (the
//! fragmented IOVA case) runs cold for hundreds. In `iova-cache`'s `fragmented_pairs`
//! example (`cold` mode), writing 64 MiB between runs of 4000 pairs put 75 to 280 more of
//! them above the warm p99 than the warm 1% (the first 500 at 4 to 6 times the warm median),
//! and at most 9 more without checked frees. At one thread on a loaded 2-CPU machine the
//! fragmented case's sampling threads were put back on a CPU 2 to 5 times per 25 ms phase,
//! once per 9k to 37k samples: those cold pairs are 0.2% to 3% of the samples, so they
//! alone can set a p99. A second effect needs no preemption: processes on the other CPU share
//! the last-level cache, and under a load of 8 to 9 the same case's p50 and even its CPU ns
//! per op rose two to three times (40 to 190 ns, 48 to 140) along with its p99, while the
//! cached pair's CPU ns per op, a handful of lines, stayed within 13 to 25.
//!
//! So a p99 is the figure of a run most exposed to outside load, and a target that divides
//! one by a CPU-time figure ("p99 ≤ k× the cached pair") moves with the load on one side
//! only. The timing itself adds no bias that shows: a run's p50 over its own CPU ns per op
//! in batches was 0.84 for the fragmented case (each op timed alone; a median against a mean
//! its tail raises) and 1.00 for the cached pair (timed in groups of 14 to 21), medians of 39
//! repetitions each (0.55 to 1.64 and 0.68 to 1.18). Nor does the sample count: those runs
//! had 31k to 133k samples per repetition, so the p99 is the 310th largest or further in,
//! its rank uncertain by about 0.06 percentile points at 31k (one standard deviation), a
//! few to 20 ns at that case's slope around its p99 (p90 to p99.9: 160 to 2050 ns), where
//! the repetitions' p99s spread from 280 to 650 ns. Each run records how often its sampling threads were put back on a CPU ([`Latency::switches`],
//! [`Latency::samples_per_switch`]); the JSON keeps every repetition's percentiles and
//! switches, and `--wide` tables show the p99's min–max over the repetitions beside its
//! median. A p99 whose repetitions spread far, with the case's own p50 raised in the high
//! ones, is the machine's load, not the code's tail; what is the code's shows on a quiet
//! machine and in the example's counts.
//!
//! # Threads, figures and placement
//!
//! * **Threads and counting.** [`measure`] spawns the threads; each builds its own op with
//!   `make(t)` (per-thread set-up, not timed) and waits on a start barrier, then records its own
//!   start and end instants, CPU time (`CLOCK_THREAD_CPUTIME_ID`) and runqueue wait
//!   (`/proc/thread-self/schedstat`). Wall time is first start to last end, not the main thread's
//!   view: under oversubscription the main thread may run long after the barrier released the
//!   workers. Every thread runs at least one batch. Groups that did no unit of work (the
//!   asymmetric case's freer finding nothing) are not sampled for latency.
//! * **Repetitions and durations.** Every case runs `--repetitions` times (default 3) at every
//!   thread count, in rounds over the whole suite rather than back to back, so a burst of other
//!   load lands in one repetition of many cases instead of all repetitions of one. Tables and
//!   charts show the median of each figure; the JSON keeps every repetition. 100 ms of throughput
//!   per run (`--duration-ms`) and a latency phase of a quarter of that.
//! * **Three cost figures.** `ns_per_op` (threads × wall / ops); `cpu_ns_per_op` (CPU time /
//!   ops), which other load on the machine does not inflate (the "≤ k×" cost targets use it at
//!   one thread); and `adjusted_ops_per_sec`, the sum over threads of ops / (wall − runqueue
//!   wait): with no more threads than CPUs, runqueue wait is other processes holding the CPUs, so
//!   this is what a dedicated machine gives, while time blocked on a lock (sleeping, not
//!   runnable) stays in. Throughput ratios (scaling, against peers) use the adjusted figure up to
//!   the CPU count and plain wall-clock throughput when oversubscribed.
//! * **Placement.** Thread `t` is pinned to the `t mod n`-th allowed CPU (`--no-pin` to disable),
//!   so per-CPU structures see real CPU ids; oversubscribed runs put several threads on each CPU.
//!   The run's threads take the highest nice level they may (`--no-boost` to disable); with
//!   autogroup scheduling this only helps within the session, which is why the adjusted figures
//!   exist.
//! * **Machine record.** CPU model, CPU count, kernel, governor, the latency clock's overhead and
//!   ns per tick, load average at the end, nice level and whether the binary is optimised go into
//!   the JSON; the program prints a note when the load average exceeds the CPU count.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

/// Ops run between two checks of the stop flag.
pub const BATCH: u64 = 64;

/// How long the phases of one run last and whether threads are pinned.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Length of the throughput phase.
    pub duration: Duration,
    /// Length of the latency phase (every op timed).
    pub latency_duration: Duration,
    /// Pin thread `t` to the `t mod n`-th CPU the process may run on.
    pub pin: bool,
    /// Time every op alone in the latency phase, however fast it is (see
    /// [`RunConfig::timing_each_op`]).
    pub time_each_op: bool,
}

impl RunConfig {
    /// A configuration with the latency phase a quarter of the throughput phase.
    ///
    /// ```
    /// use std::time::Duration;
    /// let c = dma_bench::harness::RunConfig::new(Duration::from_millis(8), true);
    /// assert_eq!(c.latency_duration, Duration::from_millis(2));
    /// ```
    pub fn new(duration: Duration, pin: bool) -> Self {
        RunConfig {
            duration,
            latency_duration: duration / 4,
            pin,
            time_each_op: false,
        }
    }

    /// This configuration with every op of the latency phase timed alone: for a case whose
    /// target is the tail of a single op's latency, where a sample of a group of ops (its
    /// mean) would hide a slow op among fast ones, and whose ops are slow enough (a few
    /// hundred nanoseconds) for the clock to resolve them alone.
    ///
    /// ```
    /// use std::time::Duration;
    /// let c = dma_bench::harness::RunConfig::new(Duration::from_millis(8), true);
    /// assert!(!c.time_each_op && c.timing_each_op().time_each_op);
    /// ```
    pub fn timing_each_op(&self) -> Self {
        RunConfig {
            time_each_op: true,
            ..self.clone()
        }
    }
}

/// Latency percentiles of one run, in nanoseconds, with the clock's own cost subtracted.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Number of samples (groups of ops).
    pub samples: u64,
    /// Ops per sample (the group size; 1: every op timed alone).
    pub group: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
    /// Times the sampling threads were put back on a CPU while they sampled, all threads
    /// together (the kernel's scheduler statistics; `None` where unavailable). The threads
    /// only compute while sampling, so each one is a preemption: see "Preemption in a
    /// percentile" above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switches: Option<u64>,
}

/// Picoseconds per histogram unit's nanosecond.
const PS_PER_NS: f64 = 1000.0;

impl Latency {
    /// Percentiles of a histogram of picosecond samples, each a group of `group` ops.
    pub fn from_histogram(h: &Histogram<u64>, group: u64) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let ns = |ps: u64| ps as f64 / PS_PER_NS;
        Latency {
            samples: h.len(),
            group,
            mean: h.mean() / PS_PER_NS,
            p50: ns(h.value_at_quantile(0.50)),
            p90: ns(h.value_at_quantile(0.90)),
            p99: ns(h.value_at_quantile(0.99)),
            p999: ns(h.value_at_quantile(0.999)),
            max: ns(h.max()),
            switches: None,
        }
    }

    /// Samples per preemption of the sampling threads (`None` if unknown or never preempted).
    ///
    /// ```
    /// let l = dma_bench::harness::Latency { samples: 90_000, switches: Some(3), ..Default::default() };
    /// assert_eq!(l.samples_per_switch(), Some(30_000.0));
    /// ```
    pub fn samples_per_switch(&self) -> Option<f64> {
        self.switches
            .filter(|&n| n > 0)
            .map(|n| self.samples as f64 / n as f64)
    }

    /// The percentiles as `(label, value)` pairs, in increasing order.
    pub fn points(&self) -> [(&'static str, f64); 5] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p999),
            ("max", self.max),
        ]
    }
}

/// Ops at least this slow are timed alone (a 10 ns clock step is then at most 4% of one).
pub const SINGLE_OP_NS: f64 = 250.0;
/// The time a latency sample's group of faster ops aims at.
pub const LATENCY_GROUP_NS: f64 = 1000.0;
/// The largest group of ops one latency sample covers.
pub const MAX_LATENCY_GROUP: u64 = 64;

/// Ops per latency sample for an op that costs `ns_per_op`.
///
/// ```
/// use dma_bench::harness::latency_group;
/// assert_eq!(latency_group(2000.0), 1);
/// assert_eq!(latency_group(300.0), 1);
/// assert_eq!(latency_group(100.0), 10);
/// assert_eq!(latency_group(2.0), 64);
/// assert_eq!(latency_group(f64::INFINITY), 1);
/// ```
pub fn latency_group(ns_per_op: f64) -> u64 {
    if ns_per_op.is_finite() && ns_per_op > 0.0 && ns_per_op < SINGLE_OP_NS {
        ((LATENCY_GROUP_NS / ns_per_op).ceil() as u64).clamp(1, MAX_LATENCY_GROUP)
    } else {
        1
    }
}

/// The outcome of one run at one thread count.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// Threads that ran the op.
    pub threads: usize,
    /// Ops (units of work) completed in the throughput phase, all threads together.
    pub ops: u64,
    /// Wall time of the throughput phase, in seconds.
    pub elapsed_s: f64,
    /// Ops per second, all threads together.
    pub ops_per_sec: f64,
    /// Thread-nanoseconds per op (`threads × wall time / ops`; infinite if no op completed).
    pub ns_per_op: f64,
    /// CPU time the threads consumed in the throughput phase, in seconds (their own CPU
    /// clocks: time spent descheduled, by other load on the machine or blocked on a lock, is
    /// not in it).
    pub cpu_s: f64,
    /// CPU nanoseconds per op (`cpu_s / ops`): the cost of an op, robust to other load on the
    /// machine. At one thread, what the "≤ k× floor" targets compare.
    pub cpu_ns_per_op: f64,
    /// Time the threads spent runnable but waiting for a CPU, in seconds, all threads
    /// together (from the kernel's scheduler statistics; `None` where unavailable).
    pub runqueue_wait_s: Option<f64>,
    /// Throughput with each thread's runqueue wait taken out of its time: the sum over threads
    /// of `ops / (wall - wait)`. With no more threads than CPUs, that wait is other processes
    /// taking the CPUs, so this is what a dedicated machine would give; blocking on a lock is
    /// not runqueue wait and stays in. `None` where unavailable.
    pub adjusted_ops_per_sec: Option<f64>,
    /// Rate of the racing background op (a writer) during the run, if there was one: readers'
    /// throughput with a writer means little without how busy the writer was.
    pub background_ops_per_sec: Option<f64>,
    /// For a case walking tables (the dependent chase and translation sweeps): the share of
    /// the walked tables' 4 KiB pages that transparent huge pages backed after the run (see
    /// [`crate::hugepages`]); `None` for other cases and where the kernel does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub huge_page_share: Option<f64>,
    /// Latency phase percentiles.
    pub latency: Latency,
}

impl Measurement {
    /// A measurement of `ops` ops by `threads` threads in `elapsed_s` seconds of wall time
    /// and `cpu_s` seconds of their CPU time.
    ///
    /// ```
    /// let m = dma_bench::harness::Measurement::new(2, 1000, 1e-3, 1.5e-3, Default::default());
    /// assert_eq!(m.ops_per_sec(), 1e6);
    /// assert_eq!(m.ns_per_op(), 2000.0);
    /// assert_eq!(m.cpu_ns_per_op, 1500.0);
    /// ```
    pub fn new(threads: usize, ops: u64, elapsed_s: f64, cpu_s: f64, latency: Latency) -> Self {
        Self::with_threads(threads, ops, elapsed_s, cpu_s, None, latency)
    }

    /// A measurement with per-thread detail: `(ops, wall seconds, runqueue wait seconds)` of
    /// each thread, for the load-adjusted throughput.
    pub fn with_threads(
        threads: usize,
        ops: u64,
        elapsed_s: f64,
        cpu_s: f64,
        per_thread: Option<&[(u64, f64, f64)]>,
        latency: Latency,
    ) -> Self {
        let ops_per_sec = if elapsed_s > 0.0 {
            ops as f64 / elapsed_s
        } else {
            0.0
        };
        let per_op = |s: f64| {
            if ops == 0 {
                f64::INFINITY
            } else {
                s * 1e9 / ops as f64
            }
        };
        Measurement {
            threads,
            ops,
            elapsed_s,
            ops_per_sec,
            ns_per_op: per_op(threads as f64 * elapsed_s),
            cpu_s,
            cpu_ns_per_op: per_op(cpu_s),
            runqueue_wait_s: per_thread.map(|p| p.iter().map(|t| t.2).sum()),
            adjusted_ops_per_sec: per_thread.map(|p| {
                p.iter()
                    .map(|&(n, wall, wait)| {
                        if wall - wait > 0.0 {
                            n as f64 / (wall - wait)
                        } else {
                            0.0
                        }
                    })
                    .sum()
            }),
            background_ops_per_sec: None,
            huge_page_share: None,
            latency,
        }
    }

    /// Ops per second, all threads together (wall clock).
    pub fn ops_per_sec(&self) -> f64 {
        self.ops_per_sec
    }

    /// The throughput ratios use: load-adjusted when available and the threads fit on `cpus`
    /// CPUs (runqueue wait is then other processes'), wall clock otherwise.
    pub fn throughput(&self, cpus: usize) -> f64 {
        match self.adjusted_ops_per_sec {
            Some(a) if self.threads <= cpus && a > 0.0 => a,
            _ => self.ops_per_sec,
        }
    }

    /// Thread-nanoseconds per op (`threads × wall time / ops`): the cost of one op to the
    /// thread that runs it; at one thread, the average latency.
    pub fn ns_per_op(&self) -> f64 {
        self.ns_per_op
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ps .. 100 s at 3 significant digits; cannot fail for these bounds.
    Histogram::new_with_bounds(1, 100_000_000_000_000, 3).expect("valid histogram bounds")
}

/// Raise the scheduling priority of the calling thread to the highest nice level it may take
/// (Linux keeps nice per thread; threads it creates afterwards inherit it), so other work on a
/// shared machine disturbs the measurements less; the nice value reached, or `None` if it could
/// not be raised.
pub fn raise_priority() -> Option<i32> {
    [-20, -10, -5].into_iter().find(|&nice| {
        // SAFETY: setpriority has no memory preconditions; failure is reported by the return.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 }
    })
}

/// CPU time consumed by the calling thread, in seconds.
pub fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc == 0 {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

/// Time the calling thread has spent runnable but waiting for a CPU, in seconds (the second
/// field of `/proc/thread-self/schedstat`), if the kernel reports it.
pub fn thread_runqueue_wait_s() -> Option<f64> {
    thread_schedstat().map(|s| s.0)
}

/// The calling thread's runqueue wait in seconds and the number of times it was put on a
/// CPU (the second and third fields of `/proc/thread-self/schedstat`), if the kernel reports
/// them.
fn thread_schedstat() -> Option<(f64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = s.split_whitespace().skip(1);
    let wait_ns: u64 = fields.next()?.parse().ok()?;
    let slices: u64 = fields.next()?.parse().ok()?;
    Some((wait_ns as f64 * 1e-9, slices))
}

/// The CPUs this process may run on.
fn allowed_cpus() -> &'static [usize] {
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    CPUS.get_or_init(|| {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the pointer and size describe `set`.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        let cpus: Vec<usize> = if rc == 0 {
            // SAFETY: CPU_ISSET only reads `set`.
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
                .collect()
        } else {
            Vec::new()
        };
        if cpus.is_empty() {
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
        } else {
            cpus
        }
    })
}

/// The number of CPUs this process may run on.
pub fn cpu_count() -> usize {
    allowed_cpus().len()
}

/// Pin the calling thread to the `index mod n`-th allowed CPU (best effort).
pub fn pin_current(index: usize) {
    let cpus = allowed_cpus();
    let cpu = cpus[index % cpus.len()];
    // SAFETY: cpu_set_t is plain data.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE since it came from CPU_ISSET's range; sched_setaffinity
    // reads `set` only. A failure leaves the thread unpinned, which is acceptable.
    unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Run `threads` threads, each running the op `make(t)` returns (built inside thread `t`
/// before the start barrier, so per-thread setup is not timed), first for throughput, then with
/// every op timed.
///
/// ```
/// use dma_bench::harness::{measure, RunConfig};
/// use std::time::Duration;
/// let cfg = RunConfig::new(Duration::from_millis(4), false);
/// let m = measure(&cfg, 2, |_t| {
///     let mut x = 0u64;
///     move || x = std::hint::black_box(x + 1)
/// });
/// assert_eq!(m.threads, 2);
/// assert!(m.ops > 0 && m.latency.samples > 0);
/// ```
pub fn measure<F, G>(cfg: &RunConfig, threads: usize, make: F) -> Measurement
where
    F: Fn(usize) -> G + Sync,
    G: FnMut(),
{
    measure_units(cfg, threads, |t| {
        let mut op = make(t);
        move || {
            op();
            1
        }
    })
}

/// [`measure`] for ops that do a varying number of units of work (returned by the op): the
/// throughput counts units, a latency sample is its group's time per unit, and groups that did
/// no unit (a consumer that found nothing to do) are not sampled.
pub fn measure_units<F, G>(cfg: &RunConfig, threads: usize, make: F) -> Measurement
where
    F: Fn(usize) -> G + Sync,
    G: FnMut() -> u64,
{
    let threads = threads.max(1);
    let start = Barrier::new(threads + 1);
    let middle = Barrier::new(threads + 1);
    let stop_tput = AtomicBool::new(false);
    let stop_lat = AtomicBool::new(false);
    let overhead = crate::clock::overhead_ns();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (make, start, middle, stop_tput, stop_lat) =
                    (&make, &start, &middle, &stop_tput, &stop_lat);
                let pin = cfg.pin;
                s.spawn(move || {
                    if pin {
                        pin_current(t);
                    }
                    let mut op = make(t);
                    start.wait();
                    // Each thread notes its own start: under oversubscription the main thread
                    // may run long after the barrier released the workers.
                    let wait_begin = thread_runqueue_wait_s();
                    let begin = Instant::now();
                    let cpu_begin = thread_cpu_s();
                    let mut count = 0u64;
                    // At least one batch per thread, however late it was scheduled.
                    loop {
                        for _ in 0..BATCH {
                            count += op();
                        }
                        if stop_tput.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    let end = Instant::now();
                    let cpu = thread_cpu_s() - cpu_begin;
                    let wait = thread_runqueue_wait_s().zip(wait_begin).map(|(e, b)| e - b);
                    middle.wait();
                    let slices_begin = thread_schedstat().map(|s| s.1);
                    let mut hist = new_histogram();
                    let wall_ns = end.duration_since(begin).as_secs_f64() * 1e9;
                    let group = if cfg.time_each_op {
                        1
                    } else {
                        latency_group(wall_ns / count.max(1) as f64)
                    };
                    // At least one timed batch too.
                    loop {
                        for _ in 0..BATCH.div_ceil(group) {
                            let a = crate::clock::now();
                            let mut units = 0;
                            for _ in 0..group {
                                units += op();
                            }
                            let ns = crate::clock::ns_between(a, crate::clock::now()) - overhead;
                            if units > 0 {
                                let ps = ns.max(0.0) * PS_PER_NS / units as f64;
                                hist.saturating_record((ps.round() as u64).max(1));
                            }
                        }
                        if stop_lat.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    // The slice the thread was sampling in when the phase began is not a
                    // switch: only those that began later are.
                    let switches = thread_schedstat()
                        .map(|s| s.1)
                        .zip(slices_begin)
                        .map(|(e, b)| e.saturating_sub(b));
                    (count, begin, end, cpu, wait, (hist, switches), group)
                })
            })
            .collect();
        start.wait();
        std::thread::sleep(cfg.duration);
        stop_tput.store(true, Ordering::Relaxed);
        middle.wait();
        std::thread::sleep(cfg.latency_duration);
        stop_lat.store(true, Ordering::Relaxed);
        let mut ops = 0;
        let mut cpu_s = 0.0;
        let mut per_thread = Some(Vec::with_capacity(threads));
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        let mut hist = new_histogram();
        let mut group = 1;
        let mut switches = Some(0);
        for h in handles {
            let (count, begin, end, cpu, wait, (th, sw), g) =
                h.join().expect("benchmark thread panicked");
            switches = switches.zip(sw).map(|(a, b)| a + b);
            group = group.max(g);
            ops += count;
            cpu_s += cpu;
            per_thread = per_thread.zip(wait).map(|(mut v, w)| {
                v.push((count, end.duration_since(begin).as_secs_f64(), w));
                v
            });
            first = Some(first.map_or(begin, |f| f.min(begin)));
            last = Some(last.map_or(end, |l| l.max(end)));
            // Same bounds on both sides: adding cannot fail.
            hist.add(&th).expect("histograms with equal bounds");
        }
        let elapsed = match (first, last) {
            (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
            _ => 0.0,
        };
        let latency = Latency {
            switches,
            ..Latency::from_histogram(&hist, group)
        };
        Measurement::with_threads(threads, ops, elapsed, cpu_s, per_thread.as_deref(), latency)
    })
}

/// Run `background` on its own thread (e.g. a writer racing the measured readers) for as long as
/// `body` runs, calling it in a loop; the thread is pinned to CPU index `pin` (if `Some`). Returns
/// `body`'s result and how many times per second `background` ran meanwhile.
pub fn with_background<B, R>(
    pin: Option<usize>,
    background: B,
    body: impl FnOnce() -> R,
) -> (R, f64)
where
    B: FnMut() + Send,
{
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let stop = &stop;
        let mut background = background;
        let h = s.spawn(move || {
            if let Some(cpu) = pin {
                pin_current(cpu);
            }
            let start = Instant::now();
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..BATCH {
                    background();
                }
                calls += BATCH;
            }
            calls as f64 / start.elapsed().as_secs_f64().max(1e-9)
        });
        let r = body();
        stop.store(true, Ordering::Relaxed);
        let rate = h.join().expect("background thread panicked");
        (r, rate)
    })
}

/// [`measure`] with a racing `background` op on its own thread, pinned to the CPU after the
/// measured threads' (when pinning); its rate goes into [`Measurement::background_ops_per_sec`].
pub fn measure_with_background<F, G, B>(
    cfg: &RunConfig,
    threads: usize,
    background: B,
    make: F,
) -> Measurement
where
    F: Fn(usize) -> G + Sync,
    G: FnMut(),
    B: FnMut() + Send,
{
    let pin = cfg.pin.then_some(threads);
    let (mut m, rate) = with_background(pin, background, || measure(cfg, threads, make));
    m.background_ops_per_sec = Some(rate);
    m
}

/// `op` at most `per_sec` times per second (0: unthrottled): after each call, spin until the
/// next period starts (sleeping or yielding would hand the CPU away for far longer than a
/// period); a call that overran its period starts the next one at once, without catching up in
/// a burst.
pub fn paced(per_sec: u64, mut op: impl FnMut()) -> impl FnMut() {
    let period = Duration::from_nanos(1_000_000_000u64.checked_div(per_sec).unwrap_or(0));
    let mut next: Option<Instant> = None;
    move || {
        op();
        if period.is_zero() {
            return;
        }
        let now = Instant::now();
        let due = next.map_or(now, |n| n.max(now)) + period;
        next = Some(due);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
    }
}

/// Busy-wait for about `ns` nanoseconds (models a device or hypervisor round trip).
#[inline]
pub fn spin_for(ns: u64) {
    if ns == 0 {
        return;
    }
    let start = Instant::now();
    while (start.elapsed().as_nanos() as u64) < ns {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn quick() -> RunConfig {
        RunConfig::new(Duration::from_millis(2), false)
    }

    #[test]
    #[cfg_attr(miri, ignore)] // FFI clocks and real time
    fn counts_units_and_samples_only_calls_that_did_work() {
        // Thread 0 does nothing, thread 1 does 3 units per call.
        let calls = AtomicU64::new(0);
        let m = measure_units(&quick(), 2, |t| {
            let calls = &calls;
            move || {
                if t == 1 {
                    calls.fetch_add(1, Ordering::Relaxed);
                    3
                } else {
                    0
                }
            }
        });
        assert_eq!(m.ops % 3, 0);
        assert!(m.ops >= 3 * BATCH);
        // Every sample (a group of calls) comes from thread 1, at least one timed batch of
        // them, and thread 1's calls cover both phases.
        assert!(m.latency.samples * m.latency.group >= BATCH);
        assert!(m.latency.samples + m.ops / 3 <= calls.load(Ordering::Relaxed));
        assert!(m.cpu_ns_per_op.is_finite() && m.elapsed_s > 0.0);
    }

    #[test]
    #[cfg_attr(miri, ignore)] // FFI clocks and real time
    fn timing_each_op_samples_fast_ops_alone() {
        let fast = |cfg: &RunConfig| {
            measure(cfg, 1, |_| {
                let mut x = 0u64;
                move || x = std::hint::black_box(x + 1)
            })
        };
        assert!(
            fast(&quick()).latency.group > 1,
            "a fast op is timed in groups"
        );
        let alone = fast(&quick().timing_each_op()).latency;
        assert_eq!(alone.group, 1);
        assert!(alone.samples >= BATCH);
        // Where the kernel keeps scheduler statistics, the switches are counted (any number,
        // none included: the machine decides) and the samples per switch follow from them.
        if thread_schedstat().is_some() {
            let n = alone.switches.expect("counted where schedstat exists");
            assert_eq!(
                alone.samples_per_switch(),
                (n > 0).then(|| alone.samples as f64 / n as f64)
            );
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)] // FFI clocks, real time and the kernel's scheduler statistics
    fn an_op_that_leaves_the_cpu_counts_a_switch_per_sample() {
        if thread_schedstat().is_none() {
            return; // no scheduler statistics on this kernel: nothing to count
        }
        // Each op sleeps, so each sample is at least one return to a CPU.
        let m = measure(&quick().timing_each_op(), 1, |_| {
            || std::thread::sleep(Duration::from_micros(20))
        });
        let switches = m.latency.switches.expect("counted where schedstat exists");
        assert!(
            switches >= m.latency.samples,
            "{switches} < {}",
            m.latency.samples
        );
        assert!(m.latency.samples_per_switch().is_some_and(|s| s <= 1.0));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // FFI clocks and real time
    fn background_runs_while_the_body_runs_and_stops_after() {
        let n = AtomicU64::new(0);
        let (seen, rate) = with_background(
            None,
            || {
                n.fetch_add(1, Ordering::Relaxed);
            },
            || {
                while n.load(Ordering::Relaxed) == 0 {
                    std::thread::yield_now();
                }
                n.load(Ordering::Relaxed)
            },
        );
        assert!(seen > 0 && rate > 0.0);
        let after = n.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            n.load(Ordering::Relaxed),
            after,
            "background still running after the body"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore)] // FFI clocks and real time
    fn measurement_figures() {
        let m = Measurement::with_threads(
            2,
            400,
            1.0,
            1.0,
            Some(&[(200, 1.0, 0.5), (200, 1.0, 0.0)]),
            Latency::default(),
        );
        assert_eq!(m.ops_per_sec(), 400.0);
        assert_eq!(m.adjusted_ops_per_sec, Some(600.0));
        assert_eq!(m.runqueue_wait_s, Some(0.5));
        assert_eq!(m.throughput(2), 600.0);
        // Oversubscribed: the wall clock.
        assert_eq!(m.throughput(1), 400.0);
        assert!(Measurement::new(1, 0, 1.0, 1.0, Latency::default())
            .ns_per_op()
            .is_infinite());
    }

    #[test]
    #[cfg_attr(miri, ignore)] // FFI clocks and real time
    fn paced_ops_keep_their_rate() {
        let mut n = 0u32;
        let t = Instant::now();
        let mut op = paced(10_000, || n += 1);
        for _ in 0..20 {
            op();
        }
        drop(op);
        assert_eq!(n, 20);
        // 20 periods of 100 µs.
        assert!(t.elapsed() >= Duration::from_millis(2));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // FFI clocks and real time
    fn spin_for_waits_at_least_as_long() {
        let t = Instant::now();
        spin_for(200_000);
        assert!(t.elapsed() >= Duration::from_micros(200));
    }
}
