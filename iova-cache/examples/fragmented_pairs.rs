//! The fragmented workload of the benchmarks, alone: `live` allocations of 1..=64 granules
//! (size-aligned, through the cached `alloc`/`free`), then pairs of a random free and an
//! allocation of a random size. For profiling the tail of a pair, not for speed claims (those
//! are dmabench's).
//!
//! ```text
//! cargo run --release -p iova-cache --example fragmented_pairs -- [timed|cold|events|plain|kinds] [live] [pairs] [checked|unchecked]
//! ```
//!
//! The last argument builds the allocator with `checked_frees` (default) or without (no `held`
//! bits: what dma-iommu configures).
//!
//! * `timed` (default): times every pair with the fenced time-stamp counter (x86-64) and
//!   prints, per kind of pair (which of the free and the allocation take the magazines and
//!   which the range allocator), its share of all pairs and of the slowest 1%, and its median
//!   and 99th percentile in ticks, of the pair and of its free alone; then, per size class,
//!   its share of the pairs and of the slowest 1% as the class freed and as the class
//!   allocated. The held range's entry of this example's own array is read before the timed
//!   span.
//! * `cold`: how a context switch shows in the tail: the timed pairs warm, then rounds of
//!   writing 64 MiB (what another process scheduled in between might leave in the caches)
//!   followed by 4000 timed pairs, with how many of those exceed the warm 99th percentile, per
//!   250 pairs after the eviction.
//! * `plain`: the same pairs untimed, for `valgrind --tool=callgrind --cache-sim=yes`
//!   (instructions and simulated misses per pair: divide by `pairs`; the set-up and a warm-up
//!   of `live` pairs are simulated but not counted with `--collect-atstart=no
//!   --toggle-collect=*measured*`, see [`measured`]).
//! * `kinds`: the same pairs untimed, each run by a function of its kind (`pair_cached_cached`,
//!   `pair_cached_range`, `pair_range_cached`, `pair_range_range`), so callgrind's inclusive
//!   cost of each, divided by its calls, is the cost of a pair of that kind. Since the cache
//!   classes reach 64 granules, every pair of this workload is of the first kind; the others
//!   stay for workloads with larger sizes (raise `MAX_SIZE`) and for comparing with builds of
//!   fewer classes.
//! * `events`: the timed pairs, each followed (outside its timed span) by a look at the
//!   allocator's counters, so every pair is classed by the deepest layer it reached: the
//!   magazines of its CPU only, a depot exchange, or the range allocator (a magazine's miss or
//!   overflow); prints each class's share of all pairs and of the slowest 1%. Reading the
//!   counters between pairs takes the locks and moves lines in and out of the caches: use it
//!   for the shares, `timed` for the ticks.

use iova_cache::config::MAX_CACHED_GRANULES;
use iova_cache::{IovaAllocator, IovaConfig};

/// The benchmarks' allocation space: pfns of 4 KiB granules from 4 GiB, 1 TiB long.
const START_PFN: u64 = 1 << 20;
const END_PFN: u64 = (1 << 20) + (1 << 28) - 1;
/// The largest request of the workload.
const MAX_SIZE: u64 = 64;

/// A xorshift64 generator: a few cycles per draw, reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The random pairs of one run over `live` held ranges.
struct Workload {
    iova: IovaAllocator,
    held: Vec<(u64, u64)>,
    pick: Rng,
    size: Rng,
}

impl Workload {
    fn new(live: usize, checked_frees: bool) -> Self {
        let cfg = IovaConfig {
            checked_frees,
            ..IovaConfig::with_space(START_PFN, END_PFN)
        };
        let iova = IovaAllocator::new(cfg).expect("valid configuration");
        let mut size = Rng(1);
        let held = (0..live)
            .map(|_| {
                let g = 1 + size.below(MAX_SIZE);
                (iova.alloc(g, END_PFN).expect("space for the set-up"), g)
            })
            .collect();
        Self {
            iova,
            held,
            pick: Rng(101),
            size,
        }
    }

    /// The held range a pair frees and the size it allocates.
    #[inline(always)]
    fn draw(&mut self) -> (usize, u64) {
        let i = self.pick.below(self.held.len() as u64) as usize;
        (i, 1 + self.size.below(MAX_SIZE))
    }

    /// [`draw`](Self::draw), with the held range's entry read: a timed pair then counts the
    /// allocator's misses, not those of this example's own 5 MB array (the benchmark's case
    /// prefetches its array ahead for the same reason).
    #[inline(always)]
    fn draw_loaded(&mut self) -> (usize, u64) {
        let (i, g) = self.draw();
        std::hint::black_box(self.held[i]);
        (i, g)
    }

    /// The pair of [`draw`](Self::draw)'s answer: free the held range, allocate one of the
    /// drawn size in its slot, with `mark` called between the two. Returns the sizes freed
    /// and allocated.
    #[inline(always)]
    fn pair_drawn(&mut self, i: usize, g: u64, mark: impl FnOnce()) -> (u64, u64) {
        let (pfn, freed) = self.held[i];
        self.iova.free(pfn, freed).expect("a held range");
        mark();
        self.held[i] = (self.iova.alloc(g, END_PFN).expect("space"), g);
        (freed, g)
    }

    #[inline(always)]
    fn pair(&mut self) -> (u64, u64) {
        let (i, g) = self.draw();
        self.pair_drawn(i, g, || ())
    }
}

/// The kind of a pair: bit 1 the free goes to the range allocator, bit 0 the allocation.
fn kind(freed: u64, allocated: u64) -> usize {
    usize::from(freed > MAX_CACHED_GRANULES) << 1 | usize::from(allocated > MAX_CACHED_GRANULES)
}

const KINDS: [&str; 4] = [
    "free cached, alloc cached",
    "free cached, alloc range",
    "free range, alloc cached",
    "free range, alloc range",
];

#[cfg(target_arch = "x86_64")]
fn ticks() -> u64 {
    use std::arch::x86_64::{_mm_lfence, _rdtsc};
    // SAFETY: LFENCE and RDTSC have no preconditions on x86-64.
    unsafe {
        _mm_lfence();
        let t = _rdtsc();
        _mm_lfence();
        t
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn ticks() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

fn timed(w: &mut Workload, pairs: usize) {
    // (pair, its free alone, kind)
    let mut samples: Vec<(u64, u64, usize)> = Vec::with_capacity(pairs);
    // (class freed, class allocated)
    let mut classes: Vec<(u32, u32)> = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let mut mid = 0;
        let (i, g) = w.draw_loaded();
        let a = ticks();
        let (f, g) = w.pair_drawn(i, g, || mid = ticks());
        let b = ticks();
        samples.push((b - a, mid - a, kind(f, g)));
        classes.push((
            f.next_power_of_two().trailing_zeros(),
            g.next_power_of_two().trailing_zeros(),
        ));
    }
    let mut all: Vec<u64> = samples.iter().map(|s| s.0).collect();
    all.sort_unstable();
    let p99 = percentile(&all, 0.99);
    println!(
        "{pairs} pairs: median {} ticks, p90 {}, p99 {p99}, p99.9 {}",
        percentile(&all, 0.5),
        percentile(&all, 0.9),
        percentile(&all, 0.999)
    );
    let slow = samples.iter().filter(|s| s.0 >= p99).count().max(1);
    for (k, name) in KINDS.iter().enumerate() {
        let mine = |field: fn(&(u64, u64, usize)) -> u64| {
            let mut v: Vec<u64> = samples.iter().filter(|s| s.2 == k).map(field).collect();
            v.sort_unstable();
            v
        };
        let (pair, free) = (mine(|s| s.0), mine(|s| s.1));
        let in_tail = samples.iter().filter(|s| s.2 == k && s.0 >= p99).count();
        println!(
            "{name:>26}: {:5.1}% of pairs, {:5.1}% of the slowest 1%, median {:5} (free {:5}), \
             p99 {:5} (free {:5})",
            100.0 * pair.len() as f64 / pairs as f64,
            100.0 * in_tail as f64 / slow as f64,
            percentile(&pair, 0.5),
            percentile(&free, 0.5),
            percentile(&pair, 0.99),
            percentile(&free, 0.99)
        );
    }
    println!("by the class (granules) freed and allocated:");
    for k in 0..=MAX_SIZE.next_power_of_two().trailing_zeros() {
        let share = |side: fn(&(u32, u32)) -> u32| {
            let all = classes.iter().filter(|c| side(c) == k).count();
            let tail = classes
                .iter()
                .zip(&samples)
                .filter(|(c, s)| side(c) == k && s.0 >= p99)
                .count();
            (
                100.0 * all as f64 / pairs as f64,
                100.0 * tail as f64 / slow as f64,
            )
        };
        let ((fa, ft), (aa, at)) = (share(|c| c.0), share(|c| c.1));
        println!(
            "{:>26}: freed {fa:5.1}% of pairs, {ft:5.1}% of the slowest 1%; \
             allocated {aa:5.1}%, {at:5.1}%",
            1u64 << k
        );
    }
}

/// What a pair reached, from the counters before and after it: 0 its CPU's magazines (or its
/// thread cache) only, 1 a depot exchange, 2 the range allocator.
fn reached(before: &iova_cache::IovaStats, after: &iova_cache::IovaStats) -> usize {
    let misses = |s: &iova_cache::IovaStats| s.classes.iter().map(|c| c.misses).sum::<u64>();
    let depot = |s: &iova_cache::IovaStats| {
        s.classes
            .iter()
            .map(|c| c.depot_magazines)
            .collect::<Vec<_>>()
    };
    if misses(before) != misses(after)
        || before.range.allocated_ranges != after.range.allocated_ranges
        || before.range.free_ranges != after.range.free_ranges
    {
        2
    } else {
        usize::from(depot(before) != depot(after))
    }
}

const REACHED: [&str; 3] = ["magazines only", "depot exchange", "range allocator"];

fn events(w: &mut Workload, pairs: usize) {
    let mut samples: Vec<(u64, usize)> = Vec::with_capacity(pairs);
    let mut before = w.iova.stats();
    for _ in 0..pairs {
        let (i, g) = w.draw_loaded();
        let a = ticks();
        w.pair_drawn(i, g, || ());
        let b = ticks();
        let after = w.iova.stats();
        samples.push((b - a, reached(&before, &after)));
        before = after;
    }
    let mut all: Vec<u64> = samples.iter().map(|s| s.0).collect();
    all.sort_unstable();
    let p99 = percentile(&all, 0.99);
    println!(
        "{pairs} pairs: median {} ticks, p99 {p99}",
        percentile(&all, 0.5)
    );
    let slow = samples.iter().filter(|s| s.0 >= p99).count().max(1);
    for (k, name) in REACHED.iter().enumerate() {
        let mut v: Vec<u64> = samples.iter().filter(|s| s.1 == k).map(|s| s.0).collect();
        v.sort_unstable();
        let in_tail = samples.iter().filter(|s| s.1 == k && s.0 >= p99).count();
        println!(
            "{name:>16}: {:6.2}% of pairs, {:5.1}% of the slowest 1%, median {:5}, p99 {:5}",
            100.0 * v.len() as f64 / pairs as f64,
            100.0 * in_tail as f64 / slow as f64,
            percentile(&v, 0.5),
            percentile(&v, 0.99)
        );
    }
}

/// Ticks of `n` pairs, each timed alone, the held entry read outside the timed span.
fn timed_run(w: &mut Workload, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let (i, g) = w.draw_loaded();
            let a = ticks();
            w.pair_drawn(i, g, || ());
            ticks() - a
        })
        .collect()
}

/// Bytes written between the rounds of [`cold`]: twice the last-level cache of the machines
/// measured (32 MiB), so what the pairs had in any cache is gone.
const EVICT_BYTES: usize = 64 << 20;

/// Pairs timed after each eviction in [`cold`].
const COLD_RUN: usize = 4000;

fn cold(w: &mut Workload, pairs: usize) {
    let warm = {
        let mut v = timed_run(w, pairs);
        v.sort_unstable();
        v
    };
    let (median, p99) = (percentile(&warm, 0.5), percentile(&warm, 0.99));
    println!("warm: {pairs} pairs, median {median} ticks, p99 {p99}");
    let mut evict = vec![0u8; EVICT_BYTES];
    let rounds = (pairs / COLD_RUN).max(1);
    const BUCKET: usize = 250;
    let mut over = [0usize; COLD_RUN / BUCKET];
    let mut ticks_of: Vec<Vec<u64>> = vec![Vec::new(); COLD_RUN / BUCKET];
    for r in 0..rounds {
        evict
            .iter_mut()
            .for_each(|b| *b = b.wrapping_add(r as u8 | 1));
        std::hint::black_box(&evict);
        for (k, t) in timed_run(w, COLD_RUN).into_iter().enumerate() {
            over[k / BUCKET] += usize::from(t > p99);
            ticks_of[k / BUCKET].push(t);
        }
    }
    println!(
        "after writing {} MiB ({rounds} rounds of {COLD_RUN} pairs): per {BUCKET} pairs, \
         the median ticks and how many per round exceed the warm p99 (warm: {:.1})",
        EVICT_BYTES >> 20,
        BUCKET as f64 / 100.0
    );
    let mut total = 0.0;
    for (k, (o, t)) in over.iter().zip(&mut ticks_of).enumerate() {
        let per_round = *o as f64 / rounds as f64;
        total += per_round;
        t.sort_unstable();
        println!(
            "  pairs {:>4}..{:>4}: median {:5}, over the warm p99 {per_round:6.1}",
            k * BUCKET,
            (k + 1) * BUCKET,
            percentile(t, 0.5)
        );
    }
    println!(
        "over the warm p99 per eviction: {total:.0} of {COLD_RUN} pairs (warm: {:.0})",
        COLD_RUN as f64 / 100.0
    );
}

/// The measured pairs of a `plain` run, a function of its own so that callgrind can start
/// instrumenting at it (`--toggle-collect=*measured*`).
#[inline(never)]
fn measured(w: &mut Workload, pairs: usize) -> u64 {
    (0..pairs).map(|_| w.pair().1).sum()
}

/// The measured pairs of a `kinds` run: each through the function of its kind.
#[inline(never)]
fn measured_by_kind(w: &mut Workload, pairs: usize) -> u64 {
    let mut sum = 0;
    for _ in 0..pairs {
        let (i, g) = w.draw();
        let pair = match kind(w.held[i].1, g) {
            0 => pair_cached_cached,
            1 => pair_cached_range,
            2 => pair_range_cached,
            _ => pair_range_range,
        };
        sum += pair(w, i, g);
    }
    sum
}

/// One function per kind of pair, each a symbol of its own for callgrind.
/// (Each returns its own constant beside the size: identical bodies would be merged into one.)
macro_rules! pair_of_kind {
    ($($name:ident = $k:literal),*) => {$(
        #[inline(never)]
        fn $name(w: &mut Workload, i: usize, g: u64) -> u64 {
            w.pair_drawn(i, g, || ()).1 + std::hint::black_box($k)
        }
    )*};
}

pair_of_kind!(
    pair_cached_cached = 0,
    pair_cached_range = 1,
    pair_range_cached = 2,
    pair_range_range = 3
);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("timed", String::as_str);
    let live = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(300_000);
    let pairs = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    dma_sync::cpu::set_current(Some(0));
    let checked = args.get(4).map_or(true, |s| s != "unchecked");
    let mut w = Workload::new(live, checked);
    // Warm-up: the steady state of the benchmark, where the caches' and chunks' contents have
    // been reshuffled by random pairs.
    for _ in 0..live {
        w.pair();
    }
    match mode {
        "plain" => println!("{}", measured(&mut w, pairs)),
        "kinds" => println!("{}", measured_by_kind(&mut w, pairs)),
        "events" => events(&mut w, pairs),
        "cold" => cold(&mut w, pairs),
        _ => timed(&mut w, pairs),
    }
}
