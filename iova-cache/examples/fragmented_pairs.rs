//! The fragmented workload of the benchmarks, alone: `live` allocations of 1..=64 granules
//! (size-aligned, through the cached `alloc`/`free`), then pairs of a random free and an
//! allocation of a random size. For profiling the tail of a pair, not for speed claims (those
//! are dmabench's).
//!
//! ```text
//! cargo run --release -p iova-cache --example fragmented_pairs -- [timed|plain] [live] [pairs]
//! ```
//!
//! * `timed` (default): times every pair with the fenced time-stamp counter (x86-64) and
//!   prints, per kind of pair (which of the free and the allocation take the magazines and
//!   which the range allocator), its share of all pairs and of the slowest 1%, and its median
//!   and 99th percentile in ticks, of the pair and of its free alone.
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
    fn new(live: usize) -> Self {
        let iova = IovaAllocator::new(IovaConfig::with_space(START_PFN, END_PFN))
            .expect("valid configuration");
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

    /// One pair: free a random held range, allocate one of a random size in its slot, with
    /// `mark` called between the two. Returns the sizes freed and allocated.
    #[inline(always)]
    fn pair_marked(&mut self, mark: impl FnOnce()) -> (u64, u64) {
        let (i, g) = self.draw();
        self.pair_drawn(i, g, mark)
    }

    /// The held range a pair frees and the size it allocates.
    #[inline(always)]
    fn draw(&mut self) -> (usize, u64) {
        let i = self.pick.below(self.held.len() as u64) as usize;
        (i, 1 + self.size.below(MAX_SIZE))
    }

    /// The pair of [`draw`](Self::draw)'s answer.
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
        self.pair_marked(|| ())
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
    for _ in 0..pairs {
        let mut mid = 0;
        let a = ticks();
        let (f, g) = w.pair_marked(|| mid = ticks());
        let b = ticks();
        samples.push((b - a, mid - a, kind(f, g)));
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
    let mut w = Workload::new(live);
    // Warm-up: the steady state of the benchmark, where the caches' and chunks' contents have
    // been reshuffled by random pairs.
    for _ in 0..live {
        w.pair();
    }
    match mode {
        "plain" => println!("{}", measured(&mut w, pairs)),
        "kinds" => println!("{}", measured_by_kind(&mut w, pairs)),
        _ => timed(&mut w, pairs),
    }
}
