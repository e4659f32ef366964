//! [`IovaAllocator`]: the range allocator behind a lock, fronted by the magazine cache.
//!
//! # What a pair costs
//!
//! Before the thread cache, a checked alloc+free pair was four locked instructions (two slot
//! locks, the `held` bit set and clear); the rest is about 230 instructions (155 unchecked: [`IovaConfig::checked_frees`] off,
//! as dma-iommu configures it, which tracks ownership in its page table). Measured with dmabench
//! (floor and iova only, one thread, ratios to the same run's CAS floor, median of three): checked
//! 5.87× (15.2 ns; 7.6× before the changes below), unchecked 3.82× (9.9 ns; 4.2× before). What
//! brought the instructions down from 340 and 180: the `held` claim and release inline, with a
//! per-thread memo of the last leaf instead of a walk down the radix map on every call (module
//! `held`); the size classes in a fixed array (no pointer to follow, no bounds check on the
//! class); one thread-local read for the CPU id, and no reduction when it is already a slot
//! number. A byte per slot instead of a bit would make the claim a plain store (about 1 ns
//! less per pair in a bare loop), but at eight times the memory, and the random free at 1M live
//! then misses the CPU's cache.
//!
//! The thread cache (module `thread_cache`) then took the two slot locks out of a pair on one
//! thread: a hit and a park are each a section of `dma_sync::thread_slots` (a plain store, a
//! compiler fence, a load, a release store). Instructions went up (the `pair_loop` example
//! under callgrind: 172 to 185 checked, 89 to 102 unchecked), locked instructions down (4 to
//! 2 checked, 2 to 0 unchecked); time went down, interleaved dmabench A/B of five runs each
//! (floor and iova, medians over the same run's CAS): checked 5.90× to 5.32× (15.5 to 13.9 ns),
//! unchecked 3.93× to 3.51× (10.2 to 9.3 ns). A section now also reads its own flag first
//! (a nested section does not run): 188 to 194 checked, 105 to 111 unchecked.
//!
//! A batch free (`free_batch`) validates each range as `free` does and caches a run of one
//! class on the calling thread's stack in its thread-cache slot as far as it has room (256
//! granules), the rest with one acquisition of the slot lock, filling magazines by slices: a
//! flush queue handing back 255 single granules after a flush took the lock four times
//! instead of 255 (dma-iommu's lazy map+unmap: about 60 instructions per IOVA freed, ring pop
//! included, from about 93), and now stacks them all, so the thread's next 255 allocations
//! take no slot lock either (module `thread_cache`).
//!
//! Random free+alloc (checked) at 1M live costs 1.45× the same at 1k live (dmabench: 28 vs
//! 19 ns; 9× before). Nothing in the allocator grows with the live count (every op is a cache
//! hit), so the per-op footprint is what a random free touches: its `held` bit, in a class's
//! own cache lines (128 KiB of bits for 1M single granules, which stay in the CPU's cache), and
//! its leaf. The rest of the former 9× was the benchmark's own array of held ranges (24 MB at
//! 1M) missing the caches and the TLB on every op; the case now prefetches it ahead on huge
//! pages, alike at every live count (see the benches' `fragmented`).

use crate::config::{IovaConfig, MAX_CACHED_GRANULES};
use crate::error::IovaError;
use crate::held::Held;
use crate::locked::StepLock;
use crate::points::{FLUSH_RETRY, TREE_LOCK};
use crate::range::{IovaRange, RangeAllocator};
use crate::rcache::Rcache;
use crate::thread_cache::{self, ThreadCache};
use dma_sync::atomic::{AtomicU64, Ordering};
use dma_sync::{Arc, CachePadded};

/// The shared state; the trim worker holds a reference too.
pub(crate) struct Inner {
    pub(crate) cfg: IovaConfig,
    /// `cfg.space()`, read on every cached allocation.
    space: u64,
    pub(crate) tree: CachePadded<StepLock<RangeAllocator>>,
    pub(crate) rcache: Option<Rcache>,
    /// One freed range and a stack of batch-freed ones per thread in front of `rcache`
    /// (with `cfg.thread_caches`).
    pub(crate) threads: Option<ThreadCache>,
    /// User-held cached-path ranges (with [`IovaConfig::checked_frees`]).
    held: Option<Held>,
    /// Statistics only (Relaxed): flush-all passes and magazines trimmed.
    pub(crate) flushes: AtomicU64,
    pub(crate) trimmed: AtomicU64,
}

/// A concurrent IOVA allocator: a top-down range allocator plus per-CPU magazine caches.
///
/// Sizes are in granules, addresses are pfns (IOVA >> granule shift), limits are inclusive
/// pfns. [`alloc`](Self::alloc)/[`free`](Self::free) are the cached DMA paths (sizes below
/// [`MAX_CACHED_GRANULES`] (64) rounded up to a power of two, ranges naturally aligned);
/// [`alloc_range`](Self::alloc_range)/[`free_range`](Self::free_range) go to the range
/// allocator directly. Pair each allocation
/// with the free of the same family.
///
/// ```
/// use iova_cache::{IovaAllocator, IovaConfig};
/// let a = IovaAllocator::new(IovaConfig::with_space(1, (1 << 20) - 1)).unwrap();
/// dma_sync::cpu::set_current(Some(0));             // stay on one CPU slot throughout
/// let pfn = a.alloc(3, 0xfffff).unwrap();          // 4 granules, 4-aligned, top-down
/// assert_eq!(pfn % 4, 0);
/// a.free(pfn, 3).unwrap();                         // cached on this CPU
/// assert_eq!(a.alloc(4, 0xfffff), Ok(pfn));        // and handed out again from the cache
/// a.free(pfn, 4).unwrap();
/// assert!(a.free(pfn, 4).is_err(), "double free is refused");
/// a.flush_all();
/// assert_eq!(a.stats().cached_granules(), 0);
/// dma_sync::cpu::set_current(None);
/// ```
pub struct IovaAllocator {
    pub(crate) inner: Arc<Inner>,
    #[cfg(not(loom))]
    _worker: Option<crate::trim::TrimWorker>,
}

impl std::fmt::Debug for IovaAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IovaAllocator")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// The size class (log2 of the rounded granules) of a cacheable request of `size` granules
/// (`1..=`[`MAX_CACHED_GRANULES`]).
#[inline]
fn class_order(size: u64) -> u32 {
    u64::BITS - (size - 1).leading_zeros()
}

/// Round a request as the cached path does: below [`MAX_CACHED_GRANULES`] up to a power of
/// two, so a class never mixes sizes.
fn class_size(size: u64) -> u64 {
    if size < MAX_CACHED_GRANULES {
        size.next_power_of_two()
    } else {
        size
    }
}

/// Most ranges [`IovaAllocator::free_batch`] caches under one acquisition of a slot lock
/// (a flush-queue ring's worth of single granules takes it four times).
pub const FREE_BATCH: usize = 64;

/// Released pfns of one size class waiting to be cached together.
struct Run {
    order: u32,
    len: usize,
    pfns: [u64; FREE_BATCH],
}

impl Default for Run {
    fn default() -> Self {
        Self {
            order: 0,
            len: 0,
            pfns: [0; FREE_BATCH],
        }
    }
}

impl Run {
    /// Add a pfn of class `order`: the run is not full, and empty or of that class.
    fn push(&mut self, order: u32, pfn: u64) {
        self.order = order;
        self.pfns[self.len] = pfn;
        self.len += 1;
    }

    /// Cache the run, in the calling thread's batch stack as far as it has room, the rest
    /// in CPU slot `cpu`, and start a new one.
    fn cache(&mut self, p: &PendingTo<'_>) {
        let pfns = &self.pfns[..self.len];
        self.len = 0;
        if pfns.is_empty() {
            return;
        }
        let parked = p.threads.map_or(0, |t| t.park_batch(self.order, pfns));
        if parked < pfns.len() {
            p.rc.insert_all(self.order as usize, p.cpu, &pfns[parked..], p.tree);
        }
    }
}

/// The run of a `free_batch`, cached when dropped: its pfns are released from their holder
/// already, so a panic of the caller's iterator must not drop them on the floor.
struct PendingRun<'a> {
    run: Run,
    to: PendingTo<'a>,
}

/// Where a [`PendingRun`] is cached.
struct PendingTo<'a> {
    threads: Option<&'a ThreadCache>,
    rc: &'a Rcache,
    cpu: usize,
    tree: &'a StepLock<RangeAllocator>,
}

impl PendingRun<'_> {
    /// Add a released pfn of class `order`, caching the run first if it is full or of
    /// another class.
    #[inline]
    fn push(&mut self, order: u32, pfn: u64) {
        if self.run.len == FREE_BATCH || (self.run.len > 0 && self.run.order != order) {
            self.run.cache(&self.to);
        }
        self.run.push(order, pfn);
    }
}

impl Drop for PendingRun<'_> {
    fn drop(&mut self) {
        self.run.cache(&self.to);
    }
}

impl IovaAllocator {
    /// An allocator over `config`'s space; starts the trim worker if configured (normal
    /// builds only).
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig, IovaError};
    /// // The uncached baseline: the range allocator alone behind its lock.
    /// let plain = IovaAllocator::new(IovaConfig { caching: false, ..IovaConfig::with_space(1, 255) })
    ///     .unwrap();
    /// let p = plain.alloc(1, 255).unwrap();
    /// plain.free(p, 1).unwrap();
    /// assert!(plain.stats().classes.is_empty() && plain.allocated_ranges().is_empty());
    /// assert!(matches!(
    ///     IovaAllocator::new(IovaConfig::with_space(9, 1)),
    ///     Err(IovaError::InvalidConfig(_))
    /// ));
    /// ```
    pub fn new(config: IovaConfig) -> Result<Self, IovaError> {
        config.validate()?;
        let tree = RangeAllocator::new(config.start_pfn, config.end_pfn)?;
        let held = match config.caching && config.checked_frees {
            true => Some(Held::new(config.start_pfn, config.end_pfn).ok_or(
                IovaError::OutOfMemory {
                    size: config.space(),
                },
            )?),
            false => None,
        };
        let inner = Arc::new(Inner {
            rcache: config
                .caching
                .then(|| Rcache::new(config.cpus, config.magazine_size)),
            threads: (config.caching && config.thread_caches)
                .then(|| ThreadCache::new(thread_cache::slots_for(config.cpus))),
            held,
            tree: CachePadded::new(StepLock::new(tree, &TREE_LOCK)),
            flushes: AtomicU64::new(0),
            trimmed: AtomicU64::new(0),
            space: config.space(),
            cfg: config,
        });
        #[cfg(not(loom))]
        let worker = match (&inner.rcache, inner.cfg.trim_interval) {
            (Some(_), Some(period)) => Some(crate::trim::TrimWorker::start(inner.clone(), period)),
            _ => None,
        };
        Ok(Self {
            inner,
            #[cfg(not(loom))]
            _worker: worker,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &IovaConfig {
        &self.inner.cfg
    }

    /// Allocate `size` granules ending at or below the inclusive pfn `limit`: from this CPU's
    /// cache when possible, else top-down from the range allocator; on failure return every
    /// cached range to the range allocator and retry once.
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig, IovaError};
    /// let a = IovaAllocator::new(IovaConfig::with_space(1, 0xffff)).unwrap();
    /// let p = a.alloc(16, 0xfff).unwrap();
    /// assert!(p + 15 <= 0xfff && p % 16 == 0);
    /// assert!(matches!(a.alloc(0x10000, 0xffff), Err(IovaError::TooLarge { .. })));
    /// ```
    #[inline]
    pub fn alloc(&self, size: u64, limit: u64) -> Result<u64, IovaError> {
        self.alloc_inner(size, limit, true)
    }

    /// [`alloc`](Self::alloc) without the flush-and-retry: fails fast when the range
    /// allocator has no space (the 32-bit-first attempt of the DMA policy uses this).
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig, IovaError};
    /// let a = IovaAllocator::new(IovaConfig::with_space(0, 3)).unwrap();
    /// let ones: Vec<u64> = (0..4).map(|_| a.alloc(1, 3).unwrap()).collect();
    /// for p in ones {
    ///     a.free(p, 1).unwrap(); // all four granules now sit in the cache
    /// }
    /// assert_eq!(a.alloc_no_flush(4, 3), Err(IovaError::NoSpace { size: 4, limit: 3 }));
    /// assert_eq!(a.alloc(4, 3), Ok(0), "flushing the caches makes room");
    /// ```
    pub fn alloc_no_flush(&self, size: u64, limit: u64) -> Result<u64, IovaError> {
        self.alloc_inner(size, limit, false)
    }

    #[inline]
    fn cpu(&self, rc: &Rcache) -> usize {
        dma_sync::cpu::current_in(rc.cpus())
    }

    /// The cache-hit path inline, everything else out of line.
    #[inline]
    fn alloc_inner(&self, size: u64, limit: u64, flush: bool) -> Result<u64, IovaError> {
        let inner = &*self.inner;
        // A valid cacheable request: 1..=MAX_CACHED_GRANULES, no more than the space, limit in
        // it.
        let cacheable = size.wrapping_sub(1) < MAX_CACHED_GRANULES
            && size <= inner.space
            && limit >= inner.cfg.start_pfn;
        if let Some(rc) = inner.rcache.as_ref().filter(|_| cacheable) {
            let order = class_order(size);
            let hit = match (&inner.threads, limit.checked_sub((1 << order) - 1)) {
                (Some(threads), Some(max_start)) => threads.take(order, max_start),
                _ => None,
            };
            if let Some(pfn) = hit.or_else(|| rc.pop_hit(order, self.cpu(rc), limit)) {
                self.record_owner(pfn, order)?;
                return Ok(pfn);
            }
        }
        self.alloc_slow(size, limit, flush)
    }

    /// Allocation after a miss on the calling CPU's `loaded` magazine (or of an uncacheable
    /// size): the full cache path (the `prev` magazine, the depot), then the tree.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, size: u64, limit: u64, flush: bool) -> Result<u64, IovaError> {
        let inner = &*self.inner;
        self.check_request(size, limit)?;
        let size = class_size(size);
        let cached = inner
            .rcache
            .as_ref()
            .filter(|_| size <= MAX_CACHED_GRANULES);
        let order = class_order(size);
        if let Some(rc) = cached {
            if let Some(pfn) = rc.get(order as usize, self.cpu(rc), limit) {
                self.record_owner(pfn, order)?;
                return Ok(pfn);
            }
        }
        let tag = cached.is_some();
        let mut r = inner.tree.with(|t| t.alloc_tagged(size, limit, true, tag));
        if matches!(r, Err(IovaError::NoSpace { .. }))
            && flush
            && inner.rcache.is_some()
            && FLUSH_RETRY.on()
        {
            self.flush_all();
            r = inner.tree.with(|t| t.alloc_tagged(size, limit, true, tag));
        }
        let pfn = r?;
        if cached.is_some() {
            self.record_owner(pfn, order)?;
        }
        Ok(pfn)
    }

    fn check_request(&self, size: u64, limit: u64) -> Result<(), IovaError> {
        let cfg = &self.inner.cfg;
        if size == 0 {
            return Err(IovaError::ZeroSize);
        }
        if size > cfg.space() {
            return Err(IovaError::TooLarge {
                size,
                space: cfg.space(),
            });
        }
        if limit < cfg.start_pfn {
            return Err(IovaError::LimitBelowStart {
                limit,
                start: cfg.start_pfn,
            });
        }
        Ok(())
    }

    /// Record a cached-path allocation as user-held. Without memory for the record the range
    /// could never be freed, so it goes back to the range allocator and the allocation fails.
    #[inline]
    fn record_owner(&self, pfn: u64, order: u32) -> Result<(), IovaError> {
        match &self.inner.held {
            Some(h) if !h.claim(pfn, order) => self.unrecorded(pfn, 1 << order),
            _ => Ok(()),
        }
    }

    /// An allocation that could not be recorded goes back to the tree and fails.
    #[cold]
    fn unrecorded(&self, pfn: u64, size: u64) -> Result<(), IovaError> {
        // A fresh cached-path allocation is live in the tree, so this free succeeds; were it
        // refused, the range would stay allocated: lost, never handed out twice.
        let _ = self.inner.tree.with(|t| t.free_tagged(pfn, size, true));
        Err(IovaError::OutOfMemory { size })
    }

    /// Free a range from [`alloc`](Self::alloc) (`size` as asked or as rounded): cacheable
    /// sizes go to this CPU's magazines, larger ones to the range allocator. A pfn that is not
    /// a live allocation, or a wrong size, is an error that changes nothing (for cacheable
    /// sizes this needs [`IovaConfig::checked_frees`]; without it only the shape is checked).
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig, IovaError};
    /// let a = IovaAllocator::new(IovaConfig::with_space(1, 0xffff)).unwrap();
    /// let p = a.alloc(3, 0xffff).unwrap(); // rounded to 4 granules
    /// let mismatch = IovaError::SizeMismatch { pfn: p, allocated: 4, freed: 8 };
    /// assert_eq!(a.free(p, 8), Err(mismatch));
    /// assert_eq!(a.free(p + 1, 4), Err(IovaError::NotAllocated { pfn: p + 1 }));
    /// a.free(p, 3).unwrap(); // still live after the refused frees
    /// ```
    #[inline]
    pub fn free(&self, pfn: u64, size: u64) -> Result<(), IovaError> {
        let inner = &*self.inner;
        let Some(rc) = inner
            .rcache
            .as_ref()
            .filter(|_| size.wrapping_sub(1) < MAX_CACHED_GRANULES)
        else {
            return self.free_uncached(pfn, size);
        };
        let order = class_order(size);
        self.release(pfn, order)?;
        let (pfn, order) = match &inner.threads {
            Some(threads) => match threads.park(pfn, order) {
                Some(displaced) => displaced,
                None => return Ok(()),
            },
            None => (pfn, order),
        };
        let cpu = self.cpu(rc);
        if !rc.push_hit(order, cpu, pfn) {
            rc.insert_all(order as usize, cpu, &[pfn], &inner.tree);
        }
        Ok(())
    }

    /// Free several ranges from [`alloc`](Self::alloc), each as [`free`](Self::free) would:
    /// a refused one changes nothing and the others are freed all the same; the first
    /// refusal is returned. Ranges of one cacheable size that come in a row go to the calling
    /// thread's stack in its thread cache while it has room (256 granules, taken back by this
    /// thread's allocations of their class, newest first, without a lock), the rest to this
    /// CPU's magazines under one acquisition of its slot lock (up to [`FREE_BATCH`] of them),
    /// where `free` takes it once per range: for a flush queue handing back the IOVAs a flush
    /// made free, on the thread that maps next.
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig, IovaError};
    /// let a = IovaAllocator::new(IovaConfig::with_space(1, 0xffff)).unwrap();
    /// let pfns: Vec<u64> = (0..3).map(|_| a.alloc(1, 0xffff).unwrap()).collect();
    /// let big = a.alloc(65, 0xffff).unwrap(); // too large to cache: back to the tree
    /// let ranges = [(pfns[0], 1), (pfns[1], 1), (pfns[1], 1), (big, 65), (pfns[2], 1)];
    /// let refused = a.free_batch(ranges);
    /// assert_eq!(refused, Err(IovaError::NotAllocated { pfn: pfns[1] })); // freed twice
    /// assert_eq!(a.cached_ranges().len(), 3, "every other range was freed");
    /// assert!(a.find(big).is_none());
    /// ```
    pub fn free_batch(
        &self,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<(), IovaError> {
        let inner = &*self.inner;
        let mut first_refusal = Ok(());
        let mut refused = |r: Result<(), IovaError>| {
            if first_refusal.is_ok() {
                first_refusal = r;
            }
        };
        let Some(rc) = inner.rcache.as_ref() else {
            ranges
                .into_iter()
                .for_each(|(pfn, size)| refused(self.free_uncached(pfn, size)));
            return first_refusal;
        };
        let mut run = PendingRun {
            run: Run::default(),
            to: PendingTo {
                threads: inner.threads.as_ref(),
                rc,
                cpu: self.cpu(rc),
                tree: &inner.tree,
            },
        };
        for (pfn, size) in ranges {
            if size.wrapping_sub(1) >= MAX_CACHED_GRANULES {
                refused(self.free_uncached(pfn, size));
                continue;
            }
            let order = class_order(size);
            if let Err(e) = self.release(pfn, order) {
                refused(Err(e));
                continue;
            }
            run.push(order, pfn);
        }
        // `run` is cached as it goes out of scope, here or in an unwind from `ranges`.
        first_refusal
    }

    /// Release a cached-path range of class `order` from its user: its held bits cleared
    /// (checked frees), or only its shape checked.
    #[inline]
    fn release(&self, pfn: u64, order: u32) -> Result<(), IovaError> {
        match &self.inner.held {
            Some(h) => h.release(pfn, order),
            None => self.check_shape(pfn, 1 << order),
        }
    }

    /// A free of a size the caches do not take (or with the caches off).
    #[cold]
    #[inline(never)]
    fn free_uncached(&self, pfn: u64, size: u64) -> Result<(), IovaError> {
        if size == 0 {
            return Err(IovaError::ZeroSize);
        }
        self.inner.tree.with(|t| t.free(pfn, class_size(size)))
    }

    /// The cheap sanity check of an unchecked cached free: inside the space, naturally aligned.
    fn check_shape(&self, pfn: u64, size: u64) -> Result<(), IovaError> {
        let cfg = &self.inner.cfg;
        let inside =
            pfn >= cfg.start_pfn && pfn.checked_add(size - 1).is_some_and(|e| e <= cfg.end_pfn);
        if inside && pfn % size == 0 {
            Ok(())
        } else {
            Err(IovaError::NotAllocated { pfn })
        }
    }

    /// Allocate from the range allocator directly, bypassing the caches: `size` granules at
    /// the highest address ending at or below `limit`, size-aligned if `aligned`.
    ///
    /// ```
    /// let a = iova_cache::IovaAllocator::new(iova_cache::IovaConfig::with_space(1, 100)).unwrap();
    /// assert_eq!(a.alloc_range(3, 100, false), Ok(98));
    /// a.free_range(98, 3).unwrap();
    /// ```
    pub fn alloc_range(&self, size: u64, limit: u64, aligned: bool) -> Result<u64, IovaError> {
        self.inner.tree.with(|t| t.alloc(size, limit, aligned))
    }

    /// Free a range from [`alloc_range`](Self::alloc_range); must match it exactly. A range
    /// from [`alloc`](Self::alloc) is refused here (it may be sitting in a magazine).
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig, IovaError};
    /// let a = IovaAllocator::new(IovaConfig::with_space(1, 0xffff)).unwrap();
    /// let cached = a.alloc(1, 0xffff).unwrap();
    /// assert_eq!(a.free_range(cached, 1), Err(IovaError::NotAllocated { pfn: cached }));
    /// let p = a.alloc_range(5, 0xffff, false).unwrap();
    /// a.free_range(p, 5).unwrap();
    /// assert!(a.find(p).is_none());
    /// ```
    pub fn free_range(&self, pfn: u64, size: u64) -> Result<(), IovaError> {
        self.inner.tree.with(|t| t.free(pfn, size))
    }

    /// Reserve the inclusive range `[lo, hi]` (flushes the caches first, since cached ranges
    /// may lie inside it). Fails if an allocation overlaps it: a user-held one, or (with
    /// concurrent frees) a range cached again between the flush and the reservation, in
    /// which case retrying succeeds. Nothing changes on failure.
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig, RangeKind};
    /// let a = IovaAllocator::new(IovaConfig::with_space(1, 0xffff)).unwrap();
    /// a.reserve(0xfee0, 0xfeef).unwrap();
    /// assert_eq!(a.find(0xfee8).unwrap().kind, RangeKind::Reserved);
    /// ```
    pub fn reserve(&self, lo: u64, hi: u64) -> Result<(), IovaError> {
        if self.inner.rcache.is_some() {
            self.flush_all();
        }
        self.inner.tree.with(|t| t.reserve(lo, hi))
    }

    /// The allocated (user-held or cached) or reserved range containing `pfn`.
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig, IovaRange, RangeKind};
    /// let a = IovaAllocator::new(IovaConfig::with_space(1, 0xffff)).unwrap();
    /// let p = a.alloc(4, 0xffff).unwrap();
    /// let r = IovaRange { lo: p, hi: p + 3, kind: RangeKind::Allocated };
    /// assert_eq!(a.find(p + 2), Some(r));
    /// assert_eq!(a.find(p - 1), None);
    /// ```
    pub fn find(&self, pfn: u64) -> Option<IovaRange> {
        self.inner.tree.with(|t| t.find(pfn))
    }

    /// Return every cached range (the thread caches, all CPU slots and the depot) to the range
    /// allocator.
    pub fn flush_all(&self) {
        let inner = &*self.inner;
        if let Some(rc) = &inner.rcache {
            if let Some(threads) = &inner.threads {
                threads.drain(|pfn, order| rc.free_cached(&inner.tree, order as usize, &[pfn]));
            }
            for cpu in 0..rc.cpus() {
                rc.flush_cpu(cpu, &inner.tree);
            }
            rc.flush_depot(&inner.tree);
            inner.flushes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Return CPU slot `cpu`'s cached ranges to the range allocator (CPU offline). Slots out of
    /// range are ignored.
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig};
    /// // Without thread caches, so the free reaches the CPU's magazines.
    /// let cfg = IovaConfig { cpus: 2, thread_caches: false, ..IovaConfig::with_space(1, 0xffff) };
    /// let a = IovaAllocator::new(cfg).unwrap();
    /// dma_sync::cpu::set_current(Some(1)); // run as CPU slot 1
    /// let p = a.alloc(2, 0xffff).unwrap();
    /// a.free(p, 2).unwrap();
    /// assert_eq!(a.stats().per_cpu_cached_granules, [0, 2]);
    /// a.flush_cpu(0);
    /// a.flush_cpu(9); // no such slot: ignored
    /// assert_eq!(a.stats().per_cpu_cached_granules, [0, 2]);
    /// a.flush_cpu(1); // CPU 1 goes offline
    /// assert_eq!(a.stats().cached_granules(), 0);
    /// assert!(a.find(p).is_none(), "back in the range allocator");
    /// dma_sync::cpu::set_current(None);
    /// ```
    pub fn flush_cpu(&self, cpu: usize) {
        if let Some(rc) = self.inner.rcache.as_ref().filter(|rc| cpu < rc.cpus()) {
            rc.flush_cpu(cpu, &self.inner.tree);
        }
    }

    /// One trim pass: in each size class whose depot holds more full magazines than there are
    /// CPU slots, return one magazine to the range allocator. The background worker runs this
    /// every [`IovaConfig::trim_interval`]. Returns the magazines trimmed.
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig};
    /// let cfg = IovaConfig {
    ///     cpus: 1,
    ///     magazine_size: 1,
    ///     trim_interval: None, // trim by hand
    ///     thread_caches: false, // every free to the magazines
    ///     ..IovaConfig::with_space(1, 0xffff)
    /// };
    /// let a = IovaAllocator::new(cfg).unwrap();
    /// let pfns: Vec<u64> = (0..4).map(|_| a.alloc(1, 0xffff).unwrap()).collect();
    /// for p in pfns {
    ///     a.free(p, 1).unwrap(); // the slot's two magazines fill, then the depot
    /// }
    /// assert_eq!(a.stats().classes[0].depot_magazines, 2);
    /// assert_eq!(a.trim_once(), 1, "one beyond one magazine per CPU slot");
    /// assert_eq!(a.trim_once(), 0);
    /// assert_eq!(a.stats().trimmed_magazines, 1);
    /// ```
    pub fn trim_once(&self) -> usize {
        self.inner.trim_once()
    }

    /// Exclusive end pfn of the 32-bit DMA zone.
    pub fn dma_32bit_pfn(&self) -> u64 {
        self.inner.cfg.dma_32bit_pfn()
    }

    /// Every allocated range of the range allocator as `(pfn, granules)`, user-held and
    /// cached alike (after [`flush_all`](Self::flush_all) with no concurrent use: exactly the
    /// user-held ranges).
    pub fn allocated_ranges(&self) -> Vec<(u64, u64)> {
        self.inner.tree.with(|t| t.allocated().collect())
    }

    /// Every cached range as `(pfn, granules)`; exact only while no other thread uses the
    /// allocator (a diagnostic for tests).
    ///
    /// ```
    /// use iova_cache::{IovaAllocator, IovaConfig};
    /// let a = IovaAllocator::new(IovaConfig::with_space(1, 0xffff)).unwrap();
    /// let (held, freed) = (a.alloc(1, 0xffff).unwrap(), a.alloc(2, 0xffff).unwrap());
    /// a.free(freed, 2).unwrap();
    /// assert_eq!(a.cached_ranges(), [(freed, 2)]);
    /// assert_eq!(a.allocated_ranges().len(), 2, "a cached range stays allocated");
    /// a.flush_all();
    /// assert_eq!(a.allocated_ranges(), [(held, 1)]);
    /// ```
    pub fn cached_ranges(&self) -> Vec<(u64, u64)> {
        self.inner.rcache.as_ref().map_or_else(Vec::new, |rc| {
            let mut cached = rc.cached();
            if let Some(threads) = &self.inner.threads {
                cached.extend(threads.cached());
            }
            cached
        })
    }

    /// Check the range allocator's internal invariants (a diagnostic for tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.inner.tree.with(|t| t.check_invariants())
    }
}

impl Inner {
    pub(crate) fn trim_once(&self) -> usize {
        let n = self
            .rcache
            .as_ref()
            .map_or(0, |rc| rc.trim_once(&self.tree));
        self.trimmed.fetch_add(n as u64, Ordering::Relaxed);
        n
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn small(cpus: usize, mag: usize) -> IovaAllocator {
        let cfg = IovaConfig {
            cpus,
            magazine_size: mag,
            trim_interval: None,
            ..IovaConfig::with_space(1, 255)
        };
        IovaAllocator::new(cfg).unwrap()
    }

    #[test]
    fn cached_free_is_reused_and_double_free_refused() {
        dma_sync::cpu::set_current(Some(0));
        let a = small(2, 2);
        let p = a.alloc(2, 255).unwrap();
        a.free(p, 2).unwrap();
        assert_eq!(a.free(p, 2), Err(IovaError::NotAllocated { pfn: p }));
        assert_eq!(
            a.free_range(p, 2),
            Err(IovaError::NotAllocated { pfn: p }),
            "cached: not the uncached family"
        );
        assert_eq!(a.alloc(2, 255), Ok(p));
        assert_eq!(
            a.free(p, 1),
            Err(IovaError::SizeMismatch {
                pfn: p,
                allocated: 2,
                freed: 1
            })
        );
        a.free(p, 2).unwrap();
        a.flush_all();
        assert!(a.allocated_ranges().is_empty());
        dma_sync::cpu::set_current(None);
    }

    #[test]
    fn threads_on_two_cpus_share_through_the_depot() {
        // Small enough for Miri, which checks the lock-guarded cells for races.
        dma_sync::cpu::set_current(Some(0));
        let a = dma_sync::Arc::new(small(2, 2));
        let got: Vec<u64> = (0..6).map(|_| a.alloc(1, 255).unwrap()).collect();
        let (a1, a2) = (a.clone(), a.clone());
        let freer = std::thread::spawn(move || {
            dma_sync::cpu::set_current(Some(0));
            for p in got {
                a1.free(p, 1).unwrap();
            }
        });
        let taker = std::thread::spawn(move || {
            dma_sync::cpu::set_current(Some(1));
            (0..6)
                .map(|_| a2.alloc(1, 255).unwrap())
                .collect::<Vec<_>>()
        });
        freer.join().unwrap();
        let mut taken = taker.join().unwrap();
        taken.sort_unstable();
        taken.dedup();
        assert_eq!(taken.len(), 6, "no pfn handed out twice");
        a.flush_all();
        let live: Vec<u64> = a.allocated_ranges().into_iter().map(|r| r.0).collect();
        assert_eq!(live, taken);
        a.check_invariants().unwrap();
        dma_sync::cpu::set_current(None);
    }

    #[test]
    fn bad_configs_are_refused() {
        for cfg in [
            IovaConfig {
                magazine_size: 0,
                ..IovaConfig::with_space(1, 9)
            },
            IovaConfig::with_space(9, 1),
            IovaConfig::with_space(0, u64::MAX),
            IovaConfig {
                granule_shift: 40,
                ..IovaConfig::with_space(1, 9)
            },
            IovaConfig {
                trim_interval: Some(std::time::Duration::ZERO),
                ..IovaConfig::with_space(1, 9)
            },
        ] {
            assert!(matches!(
                IovaAllocator::new(cfg),
                Err(IovaError::InvalidConfig(_))
            ));
        }
    }
}
