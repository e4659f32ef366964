//! The per-CPU magazine cache (Bonwick & Adams): per size class, per CPU slot a `loaded` and
//! a `prev` magazine under the slot's lock, and a depot of full magazines under its own lock.
//!
//! Lock order: CPU slot -> depot -> tree. The tree is only ever taken with no cache lock held
//! or after them, never the other way round. A cached pfn stays allocated in the range
//! allocator; reclaiming a magazine frees its pfns there.
//!
//! # The magazine cache
//!
//! Classes of 1, 2, 4, 8, 16, 32 and 64 granules (smaller requests are rounded up to a power of
//! two and allocated size-aligned; Linux stops at 32, see `config::CACHE_CLASSES` for why 64);
//! per class and CPU slot a `loaded` and a `prev` magazine of `magazine_size` (default 127)
//! entries under the slot's lock; per class a depot (a stack of full magazines plus up to one
//! empty one per CPU slot for reuse) under its own lock.
//!
//! * get: pop from `loaded`, else from `prev` (swapping so `loaded` stays the non-empty one); if
//!   both are empty, trade the empty `loaded` for a full depot magazine, still under the slot
//!   lock; else miss. Pops are limit-aware: the newest entry with `pfn + size - 1 <= limit` is
//!   taken and the last entry fills its hole; cached entries above a 32-bit limit are neither
//!   returned nor lost.
//! * insert: push to `loaded`; if it is full and `prev` is not, swap; if both are full, push
//!   `loaded` to the depot and take an empty magazine. Never fails, and never frees to the tree
//!   under the slot lock (without memory for the exchange it frees to the tree after the cache
//!   locks are dropped: see [`crate::faults`]). A batch of one class (`insert_all`, behind
//!   `IovaAllocator::free_batch`) is the same pushes and exchanges under one acquisition of the
//!   slot lock, which it drops and retakes only to free what could not be cached.
//! * alloc (in `allocator`): thread-cache hit, else cache hit, else tree; on `NoSpace` (only from `alloc`, not
//!   `alloc_no_flush`) flush every CPU slot and the depot back to the tree and retry once
//!   (6fa3525b455a).
//! * trim: `trim_once` (every `trim_interval`, default 100 ms, from the worker of module `trim`):
//!   per class, while the depot holds more full magazines than CPU slots, return one magazine to
//!   the tree (233045378dbb). One worker per allocator: embedders with many domains may set
//!   `trim_interval: None` and call `trim_once` from a timer of their own.
//! * After `flush_all` the tree holds exactly the user-held and reserved ranges.
//!
//! Fast path: a hit pops from (a free pushes onto) the calling CPU's `loaded` magazine under the
//! slot's spin lock (one compare-and-swap, a plain release store), inline; everything else
//! (`prev`, the depot, the tree, invalid requests) is out of line. Hit and miss counters live in
//! the slot, so there is no shared write beyond that lock. The CPU id comes from
//! `dma_sync::cpu::current`, which asks the kernel only every 64 calls: a migrated thread uses its
//! old CPU's slot that long, a performance hint, never a correctness condition.
//!
//! In front of the slots sits each thread's cache (module `thread_cache`) of one freed range
//! and a stack of up to 256 granules: a free parks its range there and sends the one it
//! displaces here, a batch free stacks what it can and sends the rest here, an allocation
//! tries both first. `flush_all` drains them before the CPU slots and the depot.
//!
//! Hoarding is bounded: the tree grows only on a miss, and a miss happens only when the calling
//! CPU's magazines and its class's depot are empty and its thread's cache has no fitting range
//! on top, so at that moment at most the other CPUs' magazines and the thread caches (one
//! range of at most 64 granules and 256 granules of stack per slot, a fixed number of slots;
//! the calling thread's own included, whose stack may hold ranges of other classes or above
//! the limit) are cached; the stress tests sample the range allocator throughout and assert a
//! bound independent of the run length. A cached range never
//! turns a fitting allocation into `NoSpace`: the flush-and-retry drains the thread caches too.
//!
//! # Orderings
//!
//! Flushes take a slot's magazines out under the slot lock and free them to the tree after
//! releasing it. The slot spin lock is an acquire CAS and a release store (a failed CAS stores
//! nothing, so a waiter under loom, whose swap-versus-store modification order is partial, still
//! progresses); waiters pause, then yield. Statistics counters (flushes, trims, refused cached
//! frees) are Relaxed; the trim worker's stop flag is Relaxed, with `join` as the
//! synchronisation.

use crate::config::CACHE_CLASSES;
use crate::faults::DEPOT_GROW;
use crate::locked::{Spin, StepLock};
use crate::magazine::Magazine;
use crate::points::{CPU_LOCK, DEPOT_EXCHANGE_LOCKED, DEPOT_LOCK, FLUSH_TAKE_LOCKED};
use crate::range::RangeAllocator;
use dma_sync::atomic::{AtomicU64, Ordering};
use dma_sync::CachePadded;
use std::mem;

/// One CPU's magazines of one class, and its hit/miss counters (written under the slot lock,
/// so counting costs no shared write).
struct CpuMags {
    loaded: Magazine,
    prev: Magazine,
    hits: u64,
    misses: u64,
}

impl CpuMags {
    /// Pop a pfn `<= max_start` from `loaded`, else from `prev`; keeps `loaded` the non-empty
    /// one so the next pop finds it first.
    fn pop(&mut self, max_start: u64) -> Option<u64> {
        if let Some(p) = self.loaded.pop_at_or_below(max_start) {
            return Some(p);
        }
        let p = self.prev.pop_at_or_below(max_start)?;
        if self.loaded.is_empty() {
            mem::swap(&mut self.loaded, &mut self.prev);
        }
        Some(p)
    }

    fn granules(&self) -> u64 {
        (self.loaded.len() + self.prev.len()) as u64
    }
}

/// Full magazines shared by all CPUs, and up to one empty one per CPU slot kept for reuse
/// (`empties` is allocated for that many up front, so keeping one never allocates).
struct Depot {
    full: Vec<Magazine>,
    empties: Vec<Magazine>,
}

/// How [`Depot::trade`] went.
enum Trade {
    /// The full magazine is in the depot and the slot has an empty one.
    Stored,
    /// The slot has an empty magazine, but the depot could not grow: the full one is back.
    NoRoom(Magazine),
    /// No fresh magazine: nothing changed.
    NoMagazine,
}

impl Depot {
    /// Store a slot's full `loaded` magazine and give the slot an empty one (a kept empty, or
    /// a fresh one of `mag_size` entries).
    fn trade(&mut self, loaded: &mut Magazine, mag_size: usize) -> Trade {
        let fresh = match self.empties.pop() {
            Some(empty) => empty,
            None => match Magazine::try_empty(mag_size) {
                Some(fresh) => fresh,
                None => return Trade::NoMagazine,
            },
        };
        let full = mem::replace(loaded, fresh);
        let grow = self.full.len() == self.full.capacity();
        if grow && (DEPOT_GROW.fail() || self.full.try_reserve(1).is_err()) {
            return Trade::NoRoom(full);
        }
        self.full.push(full);
        Trade::Stored
    }
}

struct SizeClass {
    cpus: Box<[CachePadded<StepLock<CpuMags, Spin>>]>,
    depot: CachePadded<StepLock<Depot>>,
}

/// Per-class statistics gathered from the slots and the depot.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClassSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub depot_magazines: usize,
    pub depot_entries: u64,
    pub cpu_entries: Vec<u64>,
}

/// Every size class of the cache.
pub(crate) struct Rcache {
    /// A fixed array, so a class order checked against the cacheable sizes needs no bounds
    /// check.
    classes: [SizeClass; CACHE_CLASSES],
    mag_size: usize,
    cpus: usize,
    /// Statistics only (Relaxed): see [`Rcache::refused`].
    refused: AtomicU64,
}

/// What a slot-locked attempt to get a pfn decided.
enum Got {
    Hit(u64),
    Miss,
    /// Only in the model-weakened form: go to the depot with the slot unlocked.
    Depot,
}

/// How far [`Rcache::push_all`] got: the first `cached` pfns are dealt with (pushed, or the
/// last of them `uncached`); what memory was lacking for goes to the tree once the slot is
/// unlocked.
struct Spill {
    cached: usize,
    /// A full magazine the depot had no room for.
    full: Option<Magazine>,
    /// A pfn no magazine could take.
    uncached: Option<u64>,
}

impl Rcache {
    pub(crate) fn new(cpus: usize, mag_size: usize) -> Self {
        let classes = std::array::from_fn(|_| SizeClass {
            cpus: (0..cpus)
                .map(|_| {
                    CachePadded::new(StepLock::new(
                        CpuMags {
                            loaded: Magazine::empty(mag_size),
                            prev: Magazine::empty(mag_size),
                            hits: 0,
                            misses: 0,
                        },
                        &CPU_LOCK,
                    ))
                })
                .collect(),
            depot: CachePadded::new(StepLock::new(
                Depot {
                    full: Vec::new(),
                    empties: Vec::with_capacity(cpus),
                },
                &DEPOT_LOCK,
            )),
        });
        Self {
            classes,
            mag_size,
            cpus,
            refused: AtomicU64::new(0),
        }
    }

    pub(crate) fn cpus(&self) -> usize {
        self.cpus
    }

    /// The common hit: pop the newest pfn of CPU slot `cpu`'s `loaded` magazine of class
    /// `order` if its range ends at or below `limit`. `None` leaves everything else (and the
    /// miss count) to [`get`](Self::get).
    #[inline]
    pub(crate) fn pop_hit(&self, order: u32, cpu: usize, limit: u64) -> Option<u64> {
        let max_start = limit.checked_sub((1u64 << order) - 1)?;
        self.classes[order as usize].cpus[cpu].with(|m| {
            let p = m.loaded.pop_last_at_or_below(max_start)?;
            m.hits += 1;
            Some(p)
        })
    }

    /// The common free: push `pfn` onto CPU slot `cpu`'s `loaded` magazine of class `order`
    /// if it has room; `false` leaves the exchange with `prev` and the depot to
    /// [`insert_all`](Self::insert_all).
    #[inline]
    pub(crate) fn push_hit(&self, order: u32, cpu: usize, pfn: u64) -> bool {
        self.classes[order as usize].cpus[cpu].with(|m| m.loaded.push(pfn))
    }

    /// Take a cached pfn of class `order` whose range ends at or below `limit`, from CPU slot
    /// `cpu`'s magazines or, when both are empty, a full magazine from the depot.
    pub(crate) fn get(&self, order: usize, cpu: usize, limit: u64) -> Option<u64> {
        let class = &self.classes[order];
        let slot = &class.cpus[cpu];
        let Some(max_start) = limit.checked_sub((1u64 << order) - 1) else {
            slot.with(|m| m.misses += 1);
            return None;
        };
        let got = slot.with(|m| {
            if let Some(p) = m.pop(max_start) {
                m.hits += 1;
                return Got::Hit(p);
            }
            if !m.loaded.is_empty() || !m.prev.is_empty() {
                m.misses += 1;
                return Got::Miss;
            }
            if !DEPOT_EXCHANGE_LOCKED.on() {
                return Got::Depot;
            }
            // Both magazines are empty: trade the empty `loaded` for a full depot magazine.
            let traded = class.depot.with(|d| {
                let full = d.full.pop()?;
                let empty = mem::replace(&mut m.loaded, full);
                if d.empties.len() < self.cpus {
                    d.empties.push(empty);
                }
                Some(())
            });
            match traded.and_then(|()| m.pop(max_start)) {
                Some(p) => {
                    m.hits += 1;
                    Got::Hit(p)
                }
                None => {
                    m.misses += 1;
                    Got::Miss
                }
            }
        });
        match got {
            Got::Hit(p) => Some(p),
            Got::Miss => None,
            Got::Depot => {
                // The tempting shortcut of not holding the slot across the depot call: the
                // slot may have been refilled meanwhile, and installing the depot magazine
                // drops those entries.
                let full = class.depot.with(|d| d.full.pop())?;
                slot.with(|m| {
                    m.loaded = full;
                    m.pop(max_start)
                })
            }
        }
    }

    /// Cache the freed `pfns` of class `order` in CPU slot `cpu`, all under one acquisition
    /// of the slot lock, moving a full `loaded` magazine to the depot whenever both magazines
    /// are full. When memory for that is lacking (see [`crate::faults`]), what cannot be
    /// cached goes to `tree` once the cache locks are dropped (the pfn itself without a fresh
    /// magazine, the full magazine without room in the depot), and the rest of `pfns` takes
    /// the slot lock again.
    pub(crate) fn insert_all(
        &self,
        order: usize,
        cpu: usize,
        pfns: &[u64],
        tree: &StepLock<RangeAllocator>,
    ) {
        let class = &self.classes[order];
        let mut rest = pfns;
        while !rest.is_empty() {
            let Spill {
                cached,
                full,
                uncached,
            } = class.cpus[cpu].with(|m| self.push_all(class, m, rest));
            rest = &rest[cached..];
            if let Some(mag) = full {
                self.free_cached(tree, order, mag.pfns());
            }
            if let Some(p) = uncached {
                self.free_cached(tree, order, &[p]);
            }
        }
    }

    /// Push `pfns` onto a locked slot's magazines of `class`, trading a full `loaded` for an
    /// empty one from the depot when both are full. Stops early, so that the caller frees to
    /// the tree with no cache lock held, when a trade leaves something uncached.
    fn push_all(&self, class: &SizeClass, m: &mut CpuMags, pfns: &[u64]) -> Spill {
        let mut cached = m.loaded.push_some(pfns);
        while let Some(&pfn) = pfns.get(cached) {
            // `loaded` is full.
            let mut full = None;
            if !m.prev.is_full() {
                mem::swap(&mut m.loaded, &mut m.prev);
            } else {
                match class.depot.with(|d| d.trade(&mut m.loaded, self.mag_size)) {
                    Trade::Stored => {}
                    Trade::NoRoom(mag) => full = Some(mag),
                    Trade::NoMagazine => {
                        return Spill {
                            cached: cached + 1,
                            full: None,
                            uncached: Some(pfn),
                        }
                    }
                }
            }
            // `loaded` has room now (a non-full `prev`, or an empty magazine from the depot);
            // should it not, the pfn goes to the tree like one without a magazine.
            let pushed = m.loaded.push_some(&pfns[cached..]);
            if full.is_some() || pushed == 0 {
                return Spill {
                    cached: cached + pushed.max(1),
                    full,
                    uncached: (pushed == 0).then_some(pfn),
                };
            }
            cached += pushed;
        }
        Spill {
            cached,
            full: None,
            uncached: None,
        }
    }

    /// Return CPU slot `cpu`'s cached pfns of every class to `tree`.
    pub(crate) fn flush_cpu(&self, cpu: usize, tree: &StepLock<RangeAllocator>) -> u64 {
        let mut flushed = 0;
        for (order, class) in self.classes.iter().enumerate() {
            let slot = &class.cpus[cpu];
            let take = FLUSH_TAKE_LOCKED.on();
            let pfns: Vec<u64> = slot.with(|m| {
                if take {
                    m.loaded.drain().chain(m.prev.drain()).collect()
                } else {
                    m.loaded
                        .pfns()
                        .iter()
                        .chain(m.prev.pfns())
                        .copied()
                        .collect()
                }
            });
            self.free_cached(tree, order, &pfns);
            if !take {
                // The weakened form empties the slot in a second critical section.
                slot.with(|m| {
                    m.loaded.clear();
                    m.prev.clear();
                });
            }
            flushed += pfns.len() as u64;
        }
        flushed
    }

    /// Return every depot magazine's pfns to `tree`.
    pub(crate) fn flush_depot(&self, tree: &StepLock<RangeAllocator>) -> u64 {
        let mut flushed = 0;
        for (order, class) in self.classes.iter().enumerate() {
            let mags = class.depot.with(|d| mem::take(&mut d.full));
            for mag in &mags {
                self.free_cached(tree, order, mag.pfns());
                flushed += mag.len() as u64;
            }
        }
        flushed
    }

    /// One trim pass: in every class whose depot holds more full magazines than there are
    /// CPU slots, return one magazine to `tree`. Returns the magazines trimmed.
    pub(crate) fn trim_once(&self, tree: &StepLock<RangeAllocator>) -> usize {
        let mut trimmed = 0;
        for (order, class) in self.classes.iter().enumerate() {
            let excess = class.depot.with(|d| {
                if d.full.len() > self.cpus {
                    d.full.pop()
                } else {
                    None
                }
            });
            if let Some(mag) = excess {
                self.free_cached(tree, order, mag.pfns());
                trimmed += 1;
            }
        }
        trimmed
    }

    /// Free cached pfns of class `order` in the range allocator.
    ///
    /// A cached pfn is a live tree range by construction; only an unchecked double free by the
    /// caller (the same pfn cached twice) breaks this, and then the tree refuses the second
    /// copy and the refusal is counted (see [`crate::IovaStats::refused_cached_frees`]).
    pub(crate) fn free_cached(&self, tree: &StepLock<RangeAllocator>, order: usize, pfns: &[u64]) {
        if pfns.is_empty() {
            return;
        }
        let refused = tree.with(|t| {
            pfns.iter()
                .filter(|&&p| t.free_tagged(p, 1 << order, true).is_err())
                .count() as u64
        });
        if refused > 0 {
            self.refused.fetch_add(refused, Ordering::Relaxed);
        }
    }

    /// Cached frees the range allocator refused when they left the cache (statistics).
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Statistics of class `order`.
    pub(crate) fn snapshot(&self, order: usize) -> ClassSnapshot {
        let class = &self.classes[order];
        let mut s = ClassSnapshot::default();
        for slot in class.cpus.iter() {
            slot.with(|m| {
                s.hits += m.hits;
                s.misses += m.misses;
                s.cpu_entries.push(m.granules());
            });
        }
        class.depot.with(|d| {
            s.depot_magazines = d.full.len();
            s.depot_entries = d.full.iter().map(|m| m.len() as u64).sum();
        });
        s
    }

    /// Every cached pfn of every class as `(pfn, granules)` (diagnostics and tests; takes
    /// each lock in turn, so it is exact only while no other thread uses the cache).
    pub(crate) fn cached(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (order, class) in self.classes.iter().enumerate() {
            let size = 1u64 << order;
            for slot in class.cpus.iter() {
                slot.with(|m| {
                    out.extend(
                        m.loaded
                            .pfns()
                            .iter()
                            .chain(m.prev.pfns())
                            .map(|&p| (p, size)),
                    )
                });
            }
            class.depot.with(|d| {
                for mag in &d.full {
                    out.extend(mag.pfns().iter().map(|&p| (p, size)));
                }
            });
        }
        out
    }
}
