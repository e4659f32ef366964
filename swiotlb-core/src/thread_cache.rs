//! Per-thread caches of freed runs: a map+unmap loop without the area lock.
//!
//! An instance has a fixed array of cache slots; a thread claims one the first time it
//! unmaps (tagged with `dma_sync::thread::id`) and keeps it until it exits. A one-entry
//! thread-local hint names the instance the thread cached in last and its slot there; on a
//! miss (another instance) the thread's registry (module `registry`) names its slot in each
//! instance it owns one in, and only a thread with none claims a free slot. A slot holds at most one run of a global pool, freed by its
//! owner's last unmap: the next map of the same size that the run qualifies for (alignment,
//! boundary: the checks a search makes) takes it back, with no lock and no locked instruction.
//! The unmap that puts it there claims its mapping with one compare-and-swap of the head
//! slot's metadata (module `pool`), so a map+unmap pays one locked instruction in all. A run
//! displaced by a newer one goes back to its area under the area lock.
//!
//! # The owner and the drainer
//!
//! Only the owner writes its slot's run, inside a *section*: it stores `active`, issues the
//! light fence (`swiotlb.cache.enter`), loads `closed` (acquire, `swiotlb.cache.reopened`)
//! and, if the slot is open, reads and writes the run; a release store of `active` ends the
//! section (`swiotlb.cache.exit`). A search that finds no room *drains* every slot (one
//! drainer at a time): it stores `closed` in each, issues the heavy fence
//! (`swiotlb.cache.drain`, a membarrier), and for each slot waits until its owner is outside a
//! section (acquire, `swiotlb.cache.wait`), then takes the run, empties the slot and reopens
//! it (release, `swiotlb.cache.reopen`). This is a store-buffering pair: a section either sees
//! `closed` (and leaves the run alone) or is seen active by the drainer, which then waits for
//! its end and sees what it wrote. A section that sees the slot reopened sees it emptied. No
//! location is written by both sides at once: the owner writes `active` and the run, the
//! drainer `closed`, and the run only while no section can touch it.
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
//! A thread's registry gives its slots back when the thread exits (release of `owner`,
//! `swiotlb.cache.disown`; module `registry`), so a program that churns threads finds slots
//! for its new ones. The slot keeps its run: the next claimer's compare-and-swap (acquire,
//! `swiotlb.cache.claim`) inherits it, or a drainer takes it. The drain protocol does not
//! look at `owner`: a slot is closed, waited for and emptied the same whoever owns it, and a
//! section is entered only by the slot's owner, so the hand-over of a slot between owners
//! never runs inside a section.

mod registry;

use crate::points::{
    CACHE_CLAIM, CACHE_DRAIN, CACHE_ENTER, CACHE_EXIT, CACHE_REOPEN, CACHE_REOPENED, CACHE_WAIT,
};
use crate::pool::Pool;
use dma_sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use dma_sync::{asymmetric, CachePadded, Mutex};
use std::cell::Cell;
// `std`'s `Arc` under loom too: the slot array is shared with the threads' registries by
// `Weak`, which loom's `Arc` lacks.
use std::sync::Arc;

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

#[derive(Debug)]
struct Slot {
    /// `dma_sync::thread::id` of the owner; 0 before a thread claims the slot and after its
    /// owner exits.
    owner: AtomicUsize,
    /// Whether the owner is inside a section.
    active: AtomicBool,
    /// Whether a drainer owns the run: the owner keeps out until the drainer reopens it.
    closed: AtomicBool,
    run: AtomicU64,
    /// Pool of the run (a global pool: alive as long as the instance).
    pool: AtomicPtr<Pool>,
}

/// An instance's cache slots: shared with the registries of the threads that own them.
type Slots = [CachePadded<Slot>];

/// The cache slots of one instance.
#[derive(Debug)]
pub(crate) struct ThreadCaches {
    slots: Arc<Slots>,
    /// The instance's name in the thread-local hints (`dma_sync::thread::unique`: an
    /// instance at a dropped one's address is not taken for it).
    id: usize,
    /// One drainer at a time: a second would reopen a slot the first has closed.
    drainer: Mutex<()>,
}

/// Hint value: the thread has no slot in the instance it names.
const NO_SLOT: usize = usize::MAX;

/// Forget the calling thread's hint: its slots are being given back. (Under `std` the hint
/// has no destructor and is always there; under loom it may be destroyed first.)
fn forget_hint() {
    let _ = HINT.try_with(|hint| hint.set((0, NO_SLOT)));
}

#[cfg(not(loom))]
dma_sync::thread::thread_local! {
    /// `(instance, slot index)` of the instance this thread cached in last.
    static HINT: Cell<(usize, usize)> = const { Cell::new((0, NO_SLOT)) };
}
#[cfg(loom)]
dma_sync::thread::thread_local! {
    /// `(instance, slot index)` of the instance this thread cached in last.
    static HINT: Cell<(usize, usize)> = Cell::new((0, NO_SLOT));
}

impl ThreadCaches {
    /// `n` empty, unclaimed slots of the instance named `id`.
    pub(crate) fn new(n: usize, id: usize) -> ThreadCaches {
        asymmetric::prepare();
        ThreadCaches {
            slots: (0..n)
                .map(|_| {
                    CachePadded::new(Slot {
                        owner: AtomicUsize::new(0),
                        active: AtomicBool::new(false),
                        closed: AtomicBool::new(false),
                        run: AtomicU64::new(EMPTY),
                        pool: AtomicPtr::new(std::ptr::null_mut()),
                    })
                })
                .collect(),
            id,
            drainer: Mutex::new(()),
        }
    }

    /// The calling thread's slot, claimed on its first use; `None` when every slot has
    /// another owner.
    #[inline(always)]
    fn own_slot(&self) -> Option<&Slot> {
        HINT.with(|hint| {
            match hint.get() {
                (id, NO_SLOT) if id == self.id => None,
                // Claimed by this thread (no other writes its id), so never taken from it.
                (id, i) if id == self.id => Some(&*self.slots[i]),
                _ => self.claim(hint),
            }
        })
    }

    /// Find the calling thread's slot in its registry, or claim a free one, and remember it
    /// in `hint`.
    #[cold]
    fn claim(&self, hint: &Cell<(usize, usize)>) -> Option<&Slot> {
        let i = registry::lookup(self.id)
            .or_else(|| registry::claim(self.id, &self.slots, || self.claim_free()));
        hint.set((self.id, i.unwrap_or(NO_SLOT)));
        Some(&self.slots[i?])
    }

    /// Claim a slot no thread owns. The acquire inherits the run a previous owner left in it
    /// (pairs with `swiotlb.cache.disown`).
    fn claim_free(&self) -> Option<usize> {
        let me = dma_sync::thread::id();
        let acquire = CACHE_CLAIM.ord(Acquire);
        self.slots.iter().position(|s| {
            s.owner.load(Relaxed) == 0 && s.owner.compare_exchange(0, me, acquire, Relaxed).is_ok()
        })
    }

    /// Run `f` on the calling thread's slot and its run word inside a section; `None` if the
    /// thread has no slot or a drainer has closed it.
    #[inline(always)]
    fn section<R>(&self, f: impl FnOnce(&Slot, u64) -> R) -> Option<R> {
        let slot = self.own_slot()?;
        slot.active.store(true, Relaxed);
        asymmetric::light(&CACHE_ENTER);
        let open = !slot.closed.load(CACHE_REOPENED.ord(Acquire));
        let r = open.then(|| f(slot, slot.run.load(Relaxed)));
        slot.active.store(false, CACHE_EXIT.ord(Release));
        r
    }

    /// Take the calling thread's cached run if it has `nslots` slots and `fits` it.
    #[inline(always)]
    pub(crate) fn take(
        &self,
        nslots: usize,
        fits: impl FnOnce(&Pool, usize) -> bool,
    ) -> Option<CachedRun<'_>> {
        self.section(|slot, run| {
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
        self.section(|slot, old| {
            let displaced = self.decode(slot, old);
            slot.pool
                .store(run.pool as *const Pool as *mut Pool, Relaxed);
            slot.run.store(word, Relaxed);
            displaced
        })
        .unwrap_or(Some(run))
    }

    /// The run of `slot` whose run word is `word`, if any. Its pool is the one written with
    /// that word when the caller is the owner or a drainer ordered after it; an unordered
    /// reader (a statistics snapshot) may see an older pool, or none.
    fn decode<'a>(&'a self, slot: &Slot, word: u64) -> Option<CachedRun<'a>> {
        let pool = slot.pool.load(Relaxed);
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
    /// there was any. See the module documentation for the protocol.
    #[cold]
    pub(crate) fn drain(&self, mut give_back: impl FnMut(CachedRun<'_>)) -> bool {
        let _one = self.drainer.lock();
        for slot in self.slots.iter() {
            slot.closed.store(true, Relaxed);
        }
        asymmetric::heavy(&CACHE_DRAIN);
        let mut any = false;
        for slot in self.slots.iter() {
            while slot.active.load(CACHE_WAIT.ord(Acquire)) {
                dma_sync::thread::spin_wait();
            }
            // Every section that did not see `closed` is over, and its writes are seen.
            if let Some(run) = self.decode(slot, slot.run.load(Relaxed)) {
                give_back(run);
                any = true;
            }
            slot.run.store(EMPTY, Relaxed);
            slot.closed.store(false, CACHE_REOPEN.ord(Release));
        }
        any
    }

    /// How many slots have an owner now (an unlocked snapshot, for tests).
    #[cfg(all(test, not(loom)))]
    fn claimed(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.owner.load(Relaxed) != 0)
            .count()
    }

    /// The runs cached now (an unlocked snapshot, for statistics and checks).
    pub(crate) fn cached(&self) -> Vec<CachedRun<'_>> {
        self.slots
            .iter()
            .filter_map(|s| self.decode(s, s.run.load(Relaxed)))
            .collect()
    }
}

fn count_mask() -> u64 {
    (1 << COUNT_BITS) - 1
}

#[cfg(all(test, not(loom)))]
mod tests;
