//! Per-thread caches of freed IOVAs in front of the per-CPU magazines: a map/unmap-style
//! alloc+free loop on one thread takes no slot lock, and neither does an allocation of a
//! range the same thread handed back in a batch.
//!
//! An allocator has a fixed array of slots (`dma_sync::thread_slots`, the protocol swiotlb's
//! thread cache runs too, with this crate's `iova.thread.*` points); a thread claims one the
//! first time it frees and keeps it until it exits. A slot holds one range `free` parked, of
//! any class, and a stack of ranges `free_batch` parked (at most 256 granules in all). A free
//! parks its range in the first place (the one it displaces goes to the CPU's magazines); a
//! batch free pushes its ranges onto the stack while it has room, the rest going to the
//! magazines; an allocation of the same class whose limit the parked range fits takes it
//! back, else the newest range of the stack if it is of that class and fits. Each is a
//! section of the protocol: a load of its own flag, a plain store, a compiler fence, a load
//! and a release store, no locked instruction. With checked frees the owner bitmap still sees every alloc and free
//! (module `held`), so double frees, racing ones included, are refused exactly as before: a
//! range enters a slot only after its release succeeded.
//!
//! The stack is for dma-iommu's lazy domains, whose IOVAs come back from the flush queue in
//! bursts of up to 255 through `free_batch`, on the thread whose unmap filled the ring, which
//! maps next: its allocations then took each IOVA from the CPU's magazines, a slot lock's
//! compare-and-swap apiece (`examples/lazy_loop.rs` in dma-iommu: 5.0 → 4.0 locked
//! instructions per map+unmap with the stack). A thread that frees in batches and never
//! allocates (a timer's drain) keeps at most a stack's worth out of circulation, like any
//! slot; the rest of its batches goes to the magazines.
//!
//! Never hoarding: a cached range stays allocated in the range allocator, like a magazine
//! entry; `flush_all` (and so the allocation's flush-and-retry and `reserve`) drains every
//! slot, parked range and stack, to the range allocator first. The bound is one range of at
//! most 64 granules (the largest class) and 256 granules of stack per slot, a fixed number,
//! independent of run length: at most 320 Ki granules over the 1024 slots an allocator may
//! have (1.25 GiB of IOVA space at 4 KiB granules; 2560 granules for the 8 slots of a
//! 2-CPU allocator). The stack's memory is allocated with the slots: about 2 KiB per slot
//! (16 KiB for a 2-CPU allocator, 2 MiB at 1024 slots). A range above an allocation's limit
//! is neither returned nor lost: it stays in the slot (on top of the stack it hides the ones
//! below it until an allocation it fits, or a drain, takes it).
//!
//! Every class is cached here, the 64-granule one too: leaving it out would cost the hot path
//! a comparison and send a 33..64-granule pair on one thread through its CPU slot's lock,
//! while the hoard it adds is one range per slot either way (a slot parks one range of any
//! class), so only that part of the bound doubles.
//!
//! A thread that finds every slot claimed uses the magazines alone (for that allocator, until
//! its hint names another), as before the thread caches. Hits here are not counted in the
//! class statistics, which count the magazines' hits and misses.

use dma_sync::atomic::{AtomicU64, Ordering::Relaxed};
use dma_sync::thread_slots::ThreadSlots;

/// A slot's word: `pfn << 1 | 1 << order` (a cached range is aligned to its size, so the
/// lowest set bit names the class), or `EMPTY`.
const EMPTY: u64 = 0;

fn encode(pfn: u64, order: u32) -> u64 {
    pfn << 1 | 1 << order
}

fn decode(word: u64) -> Option<(u64, u32)> {
    (word != EMPTY).then(|| {
        let order = word.trailing_zeros();
        ((word ^ 1 << order) >> 1, order)
    })
}

dma_sync::slot_user!(struct Ranges, crate::points::THREAD_SLOTS);

/// Slots for an allocator with `cpus` CPU slots: a few threads per CPU, bounded so a drain
/// stays short. Under loom, two (every slot one a model thread can own).
pub(crate) fn slots_for(cpus: usize) -> usize {
    if cfg!(loom) {
        2
    } else {
        (4 * cpus).clamp(8, 1024)
    }
}

/// Granules a slot's batch stack holds, so ranges too, since each has at least one (a flush
/// queue's ring of 255 single granules fits); under loom, two.
pub(crate) const BATCH: usize = if cfg!(loom) { 2 } else { 256 };

/// A slot's payload: the range `free` parked and the stack of ranges `free_batch` parked
/// (words as `one`'s; `len` of them, the newest last, `granules` granules in all).
struct Cached {
    one: AtomicU64,
    len: AtomicU64,
    granules: AtomicU64,
    batch: [AtomicU64; BATCH],
}

impl Cached {
    fn new() -> Self {
        Self {
            one: AtomicU64::new(EMPTY),
            len: AtomicU64::new(0),
            granules: AtomicU64::new(0),
            batch: std::array::from_fn(|_| AtomicU64::new(EMPTY)),
        }
    }

    /// The ranges held as `(pfn, order)`.
    fn words(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let n = (self.len.load(Relaxed) as usize).min(BATCH);
        std::iter::once(&self.one)
            .chain(&self.batch[..n])
            .filter_map(|w| decode(w.load(Relaxed)))
    }
}

/// The thread slots of one allocator.
pub(crate) struct ThreadCache {
    slots: ThreadSlots<Cached, Ranges>,
}

impl ThreadCache {
    /// `n` empty, unclaimed slots.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            slots: ThreadSlots::new(n, Cached::new),
        }
    }

    /// Take the calling thread's cached range if it is of class `order` and starts at or
    /// below `max_start`: the one `free` parked, else the newest one `free_batch` parked.
    #[inline(always)]
    pub(crate) fn take(&self, order: u32, max_start: u64) -> Option<u64> {
        self.slots
            .section(|c| {
                let fits = |w: u64| decode(w).filter(|&(p, o)| o == order && p <= max_start);
                if let Some((pfn, _)) = fits(c.one.load(Relaxed)) {
                    c.one.store(EMPTY, Relaxed);
                    return Some(pfn);
                }
                let top = (c.len.load(Relaxed) as usize).checked_sub(1)?;
                let (pfn, _) = fits(c.batch.get(top)?.load(Relaxed))?;
                c.len.store(top as u64, Relaxed);
                let granules = c.granules.load(Relaxed);
                c.granules
                    .store(granules.saturating_sub(1 << order), Relaxed);
                Some(pfn)
            })
            .flatten()
    }

    /// Cache the freed range of class `order` at `pfn` for the calling thread. Returns the
    /// range for the magazines: the one it displaces, or itself if the thread has no open
    /// slot.
    #[inline(always)]
    pub(crate) fn park(&self, pfn: u64, order: u32) -> Option<(u64, u32)> {
        self.slots
            .section(|c| {
                // A load and a store, not a swap: only the owner writes its slot's word in
                // a section.
                let old = c.one.load(Relaxed);
                c.one.store(encode(pfn, order), Relaxed);
                decode(old)
            })
            .unwrap_or(Some((pfn, order)))
    }

    /// Cache as many of the freed ranges of class `order` at `pfns` as the calling thread's
    /// batch stack has room for (entries and granules), the first ones first; returns how
    /// many (the rest are for the magazines).
    #[inline]
    pub(crate) fn park_batch(&self, order: u32, pfns: &[u64]) -> usize {
        self.slots
            .section(|c| {
                let n = (c.len.load(Relaxed) as usize).min(BATCH);
                let granules = c.granules.load(Relaxed);
                let room = &c.batch[n..];
                let fit = (BATCH as u64).saturating_sub(granules) >> order;
                let k = pfns.len().min(room.len()).min(fit as usize);
                for (w, &p) in room.iter().zip(&pfns[..k]) {
                    w.store(encode(p, order), Relaxed);
                }
                c.len.store((n + k) as u64, Relaxed);
                c.granules.store(granules + ((k as u64) << order), Relaxed);
                k
            })
            .unwrap_or(0)
    }

    /// Take every cached range out of every slot and hand it to `give_back`.
    #[cold]
    pub(crate) fn drain(&self, mut give_back: impl FnMut(u64, u32)) {
        self.slots.drain(|c| {
            c.words().for_each(|(pfn, order)| give_back(pfn, order));
            c.one.store(EMPTY, Relaxed);
            c.len.store(0, Relaxed);
            c.granules.store(0, Relaxed);
        });
    }

    /// The ranges cached now as `(pfn, granules)` (an unordered snapshot, for statistics
    /// and checks).
    pub(crate) fn cached(&self) -> Vec<(u64, u64)> {
        self.slots
            .payloads()
            .flat_map(Cached::words)
            .map(|(pfn, order)| (pfn, 1 << order))
            .collect()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{IovaAllocator, IovaConfig, IovaError};

    #[test]
    fn words_round_trip() {
        for (pfn, order) in [
            (0, 0),
            (1, 0),
            (32, 5),
            ((1 << 62) - 32, 5),
            (6, 1),
            (64, 6),
        ] {
            assert_eq!(decode(encode(pfn, order)), Some((pfn, order)));
        }
        assert_eq!(decode(EMPTY), None);
    }

    fn one_cpu(end: u64) -> IovaAllocator {
        let cfg = IovaConfig {
            cpus: 1,
            trim_interval: None,
            ..IovaConfig::with_space(1, end)
        };
        IovaAllocator::new(cfg).unwrap()
    }

    /// A cached range above an allocation's limit is neither returned nor lost.
    #[test]
    fn a_range_above_the_limit_stays_cached() {
        let a = one_cpu(0xffff);
        let high = a.alloc(1, 0xffff).unwrap();
        a.free(high, 1).unwrap();
        assert_eq!(a.stats().thread_cached_granules, 1);
        let low = a.alloc(1, 0xff).unwrap();
        assert!(low <= 0xff);
        assert_eq!(
            a.cached_ranges(),
            [(high, 1)],
            "still in this thread's cache"
        );
        assert_eq!(
            a.alloc(1, 0xffff),
            Ok(high),
            "and taken by a request it fits"
        );
        assert_eq!(a.free(high, 1), Ok(()));
        assert_eq!(a.free(high, 1), Err(IovaError::NotAllocated { pfn: high }));
    }

    /// A batch free fills the calling thread's stack as far as it has room (256 granules)
    /// and the magazines with the rest; allocations of that class take the stack back,
    /// newest first, without touching the magazines, then go to the magazines.
    #[test]
    fn a_batch_is_taken_back_from_the_stack_first() {
        dma_sync::cpu::set_current(Some(0));
        let a = one_cpu(0xffff);
        let pfns: Vec<u64> = (0..300).map(|_| a.alloc(1, 0xffff).unwrap()).collect();
        assert_eq!(a.free_batch(pfns.iter().map(|&p| (p, 1))), Ok(()));
        let s = a.stats();
        assert_eq!(s.thread_cached_granules, BATCH as u64);
        assert_eq!(s.classes[0].cpu_granules, 300 - BATCH as u64);
        for &p in pfns[..BATCH].iter().rev() {
            assert_eq!(a.alloc(1, 0xffff), Ok(p), "the newest stacked range");
        }
        assert_eq!(a.stats().classes[0].hits, 0, "the magazines untouched");
        assert_eq!(a.stats().thread_cached_granules, 0);
        let from_magazines = a.alloc(1, 0xffff).unwrap();
        assert!(pfns[BATCH..].contains(&from_magazines));
        assert_eq!(a.stats().classes[0].hits, 1);
        dma_sync::cpu::set_current(None);
    }

    /// The stack's bound is in granules: four 64-granule ranges fill it, and an allocation
    /// of another class leaves its ranges where they are.
    #[test]
    fn the_stack_holds_at_most_its_granules() {
        dma_sync::cpu::set_current(Some(0));
        let a = one_cpu(0xffff);
        let big: Vec<u64> = (0..6).map(|_| a.alloc(64, 0xffff).unwrap()).collect();
        assert_eq!(a.free_batch(big.iter().map(|&p| (p, 64))), Ok(()));
        let s = a.stats();
        assert_eq!(s.thread_cached_granules, BATCH as u64);
        assert_eq!(s.classes[6].cpu_granules, 2 * 64);
        let one = a.alloc(1, 0xffff).unwrap();
        assert!(big.iter().all(|&b| !(b..b + 64).contains(&one)));
        assert_eq!(a.stats().thread_cached_granules, BATCH as u64);
        assert_eq!(a.alloc(64, 0xffff), Ok(big[3]));
        assert_eq!(a.stats().thread_cached_granules, BATCH as u64 - 64);
        dma_sync::cpu::set_current(None);
    }

    /// A stacked range above an allocation's limit stays stacked, and `flush_all` returns
    /// the stack to the range allocator with the rest.
    #[test]
    fn a_stacked_range_above_the_limit_stays_until_a_flush() {
        let a = one_cpu(0xffff);
        let high = a.alloc(1, 0xffff).unwrap();
        assert_eq!(a.free_batch([(high, 1)]), Ok(()));
        let low = a.alloc(1, 0xff).unwrap();
        assert!(low <= 0xff);
        assert_eq!(a.cached_ranges(), [(high, 1)]);
        a.free(low, 1).unwrap();
        a.flush_all();
        assert_eq!(a.stats().thread_cached_granules, 0);
        assert!(a.cached_ranges().is_empty());
        assert!(a.allocated_ranges().is_empty());
    }

    /// The only granule, parked in another thread's cache, is had by a fitting allocation
    /// (flush-and-retry drains the thread caches), whether that thread is alive or gone.
    #[test]
    fn a_parked_range_never_turns_a_fitting_alloc_into_no_space() {
        for exit in [false, true] {
            let a = std::sync::Arc::new(one_cpu(1));
            let (parked, go) = std::sync::mpsc::channel::<()>();
            let (done, wait) = std::sync::mpsc::channel::<()>();
            let a1 = a.clone();
            let t = std::thread::spawn(move || {
                let p = a1.alloc(1, 1).unwrap();
                a1.free(p, 1).unwrap();
                parked.send(()).unwrap();
                if !exit {
                    let _ = wait.recv();
                }
            });
            go.recv().unwrap();
            let mut owner = Some(t);
            if exit {
                owner.take().unwrap().join().unwrap();
            }
            if !exit {
                // (A thread that exited gave its slot back, range and all: this thread may
                // claim that slot and take the range without a flush.)
                let no_flush = a.alloc_no_flush(1, 1);
                assert_eq!(no_flush, Err(IovaError::NoSpace { size: 1, limit: 1 }));
            }
            assert_eq!(a.alloc(1, 1), Ok(1));
            a.free(1, 1).unwrap();
            drop(done);
            if let Some(t) = owner {
                t.join().unwrap();
            }
            a.flush_all();
            assert!(a.allocated_ranges().is_empty());
        }
    }
}
