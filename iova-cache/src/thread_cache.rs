//! Per-thread caches of freed IOVAs in front of the per-CPU magazines: a map/unmap-style
//! alloc+free loop on one thread takes no slot lock.
//!
//! An allocator has a fixed array of slots (`dma_sync::thread_slots`, the protocol swiotlb's
//! thread cache runs too, with this crate's `iova.thread.*` points); a thread claims one the
//! first time it frees and keeps it until it exits. A slot holds at most one freed range of
//! any class. A free parks its range there (the one it displaces goes to the CPU's
//! magazines); an allocation of the same class whose limit the cached range fits takes it
//! back. Both are a section of the protocol: a plain store, a compiler fence, a load and a
//! release store, no locked instruction. With checked frees the owner bitmap still sees
//! every alloc and free (module `held`), so double frees, racing ones included, are refused
//! exactly as before: a range enters a slot only after its release succeeded.
//!
//! Never hoarding: a cached range stays allocated in the range allocator, like a magazine
//! entry; `flush_all` (and so the allocation's flush-and-retry and `reserve`) drains every
//! slot to the range allocator first. The bound is one range of at most 64 granules (the
//! largest class) per slot, a fixed number, independent of run length: at most 64 Ki granules
//! over the 1024 slots an allocator may have (256 MiB of IOVA space at 4 KiB granules). A
//! range above an allocation's limit is neither returned nor lost: it stays in the slot.
//!
//! Every class is cached here, the 64-granule one too: leaving it out would cost the hot path
//! a comparison and send a 33..64-granule pair on one thread through its CPU slot's lock,
//! while the hoard it adds is one range per slot either way (a slot holds one range of any
//! class), so only the bound's granules double.
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

/// The thread slots of one allocator.
pub(crate) struct ThreadCache {
    slots: ThreadSlots<AtomicU64, Ranges>,
}

impl ThreadCache {
    /// `n` empty, unclaimed slots.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            slots: ThreadSlots::new(n, || AtomicU64::new(EMPTY)),
        }
    }

    /// Take the calling thread's cached range if it is of class `order` and starts at or
    /// below `max_start`.
    #[inline(always)]
    pub(crate) fn take(&self, order: u32, max_start: u64) -> Option<u64> {
        self.slots
            .section(|slot| {
                let (pfn, o) = decode(slot.load(Relaxed))?;
                if o != order || pfn > max_start {
                    return None;
                }
                slot.store(EMPTY, Relaxed);
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
            .section(|slot| {
                // A load and a store, not a swap: only the owner writes its slot's word in
                // a section.
                let old = slot.load(Relaxed);
                slot.store(encode(pfn, order), Relaxed);
                decode(old)
            })
            .unwrap_or(Some((pfn, order)))
    }

    /// Take every cached range out of every slot and hand it to `give_back`.
    #[cold]
    pub(crate) fn drain(&self, mut give_back: impl FnMut(u64, u32)) {
        self.slots.drain(|slot| {
            if let Some((pfn, order)) = decode(slot.load(Relaxed)) {
                give_back(pfn, order);
            }
            slot.store(EMPTY, Relaxed);
        });
    }

    /// The ranges cached now as `(pfn, granules)` (an unordered snapshot, for statistics
    /// and checks).
    pub(crate) fn cached(&self) -> Vec<(u64, u64)> {
        self.slots
            .payloads()
            .filter_map(|s| decode(s.load(Relaxed)))
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
