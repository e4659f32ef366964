//! Per-thread caches of freed runs: a map+unmap loop without the area lock.
//!
//! An instance has a fixed array of cache slots (`dma_sync::thread_slots`): a thread claims
//! one the first time it unmaps and keeps it until it exits. A slot holds at most one run of
//! a global pool, freed by its owner's last unmap: the next map of the same size that the run
//! qualifies for (alignment, boundary: the checks a search makes) takes it back, with no lock
//! and no locked instruction. The unmap that puts it there claims its mapping with one
//! compare-and-swap of the head slot's metadata (module `pool`), so a map+unmap pays one
//! locked instruction in all. A run displaced by a newer one goes back to its area under the
//! area lock.
//!
//! # The owner and the drainer
//!
//! The protocol is `dma_sync::thread_slots`'s, with this crate's points: only the owner
//! writes its slot's run, inside a section (`swiotlb.cache.enter`, `swiotlb.cache.reopened`,
//! `swiotlb.cache.exit`); a search that finds no room *drains* every slot (one drainer at a
//! time: `swiotlb.cache.drain`, `swiotlb.cache.wait`), takes each run, empties the slot and
//! reopens it (`swiotlb.cache.reopen`).
//!
//! # Accounting
//!
//! A cached run stays out of its area's counters and in the area's `used` (it is not free
//! for a search); [`ThreadCaches::cached`] lets the statistics subtract it, so the reported
//! `used` counts live mappings only. The high-water mark's instance-wide counter counts
//! live mappings exactly (every map and unmap updates it, cached or not). Hoarding is bounded
//! by one run per slot, and a failing search drains before it gives up, so a cache never
//! turns a fitting map into `NoSpace`. A thread that finds every slot claimed takes the locked
//! path (for that instance, until its hint names another).
//!
//! # Exit
//!
//! A thread's slots go back when it exits (`swiotlb.cache.disown`); the slot keeps its run,
//! which the next claimer inherits (`swiotlb.cache.claim`) or a drainer takes.

use crate::points::{
    CACHE_CLAIM, CACHE_DISOWN, CACHE_DRAIN, CACHE_ENTER, CACHE_EXIT, CACHE_REOPEN, CACHE_REOPENED,
    CACHE_WAIT,
};
use crate::pool::Pool;
use dma_sync::atomic::{AtomicPtr, AtomicU64, Ordering::Relaxed};
use dma_sync::thread_slots::{SlotPoints, ThreadSlots};

/// A slot's run word: `start << COUNT_BITS | nslots`, or `EMPTY`.
const EMPTY: u64 = 0;
const COUNT_BITS: u32 = 16;

/// A run held by a cache: `nslots` slots from `start` in `pool`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CachedRun<'a> {
    pub pool: &'a Pool,
    pub start: usize,
    pub nslots: usize,
}

/// What a cache slot holds, written only by its owner in a section or by a drainer.
struct RunSlot {
    run: AtomicU64,
    /// Pool of the run (a global pool: alive as long as the instance).
    pool: AtomicPtr<Pool>,
}

static POINTS: SlotPoints = SlotPoints {
    enter: &CACHE_ENTER,
    drain: &CACHE_DRAIN,
    exit: &CACHE_EXIT,
    wait: &CACHE_WAIT,
    reopen: &CACHE_REOPEN,
    reopened: &CACHE_REOPENED,
    disown: &CACHE_DISOWN,
    claim: &CACHE_CLAIM,
};

dma_sync::slot_user!(struct Runs, POINTS);

/// The cache slots of one instance.
#[derive(Debug)]
pub(crate) struct ThreadCaches {
    slots: ThreadSlots<RunSlot, Runs>,
}

impl ThreadCaches {
    /// `n` empty, unclaimed slots.
    pub(crate) fn new(n: usize) -> ThreadCaches {
        let empty = || RunSlot {
            run: AtomicU64::new(EMPTY),
            pool: AtomicPtr::new(std::ptr::null_mut()),
        };
        ThreadCaches {
            slots: ThreadSlots::new(n, empty),
        }
    }

    /// Take the calling thread's cached run if it has `nslots` slots and `fits` it.
    #[inline(always)]
    pub(crate) fn take(
        &self,
        nslots: usize,
        fits: impl FnOnce(&Pool, usize) -> bool,
    ) -> Option<CachedRun<'_>> {
        self.slots
            .section(|slot| {
                let run = slot.run.load(Relaxed);
                if (run & count_mask()) as usize != nslots {
                    return None;
                }
                let cached = self.decode(slot, run)?;
                if !fits(cached.pool, cached.start) {
                    return None;
                }
                slot.run.store(EMPTY, Relaxed);
                Some(cached)
            })
            .flatten()
    }

    /// Cache `run` (of a global pool of this instance) for the calling thread. Returns the run
    /// to give back to its area: the one it displaces, or `run` itself if the thread has no
    /// open slot.
    #[inline(always)]
    pub(crate) fn park<'a>(&'a self, run: CachedRun<'a>) -> Option<CachedRun<'a>> {
        let word = (run.start as u64) << COUNT_BITS | run.nslots as u64;
        let pool = run.pool as *const Pool as *mut Pool;
        self.slots
            .section(|slot| {
                let (old, held) = (slot.run.load(Relaxed), slot.pool.load(Relaxed));
                let displaced = self.decode_with(held, old);
                // The pool field is rewritten only when it changes (a loop over one pool
                // never does): a store fewer behind a bounce's copy in the store buffer.
                if held != pool {
                    slot.pool.store(pool, Relaxed);
                }
                slot.run.store(word, Relaxed);
                displaced
            })
            .unwrap_or(Some(run))
    }

    /// The run of `slot` whose run word is `word`, if any. Its pool is the one written with
    /// that word when the caller is the owner or a drainer ordered after it; an unordered
    /// reader (a statistics snapshot) may see an older pool, or none.
    fn decode<'a>(&'a self, slot: &RunSlot, word: u64) -> Option<CachedRun<'a>> {
        self.decode_with(slot.pool.load(Relaxed), word)
    }

    /// The run of a slot whose pool field reads `pool` and run word `word`, if any (as
    /// `decode`, whose safety argument covers it: `pool` was read from a slot of `self`).
    fn decode_with<'a>(&'a self, pool: *mut Pool, word: u64) -> Option<CachedRun<'a>> {
        if word == EMPTY || pool.is_null() {
            return None;
        }
        // SAFETY: the pool field only ever holds global pools of this instance (`park`),
        // alive as long as the instance, which `self` borrows.
        let pool = unsafe { &*pool };
        Some(CachedRun {
            pool,
            start: (word >> COUNT_BITS) as usize,
            nslots: (word & count_mask()) as usize,
        })
    }

    /// Take every cached run out of every slot and hand it to `give_back`; returns whether
    /// there was any.
    #[cold]
    pub(crate) fn drain(&self, mut give_back: impl FnMut(CachedRun<'_>)) -> bool {
        let mut any = false;
        self.slots.drain(|slot| {
            if let Some(run) = self.decode(slot, slot.run.load(Relaxed)) {
                give_back(run);
                any = true;
            }
            slot.run.store(EMPTY, Relaxed);
        });
        any
    }

    /// How many slots have an owner now (an unlocked snapshot, for tests).
    #[cfg(all(test, not(loom)))]
    fn claimed(&self) -> usize {
        self.slots.claimed()
    }

    /// The runs cached now (an unlocked snapshot, for statistics and checks).
    pub(crate) fn cached(&self) -> Vec<CachedRun<'_>> {
        self.slots
            .payloads()
            .filter_map(|s| self.decode(s, s.run.load(Relaxed)))
            .collect()
    }
}

fn count_mask() -> u64 {
    (1 << COUNT_BITS) - 1
}

#[cfg(all(test, not(loom)))]
mod tests;
