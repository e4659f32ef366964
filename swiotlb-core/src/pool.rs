//! A pool: one contiguous region of slots split into areas, each with its own lock.
//!
//! The area lock guards the area's free-run counters, its next-fit hint and its cached run.
//! It is a spin lock (`dma_sync::SpinLock`), as Linux's area lock is (its unlock is a release
//! store where a parking lock's is a compare-and-swap). A section never blocks; the common
//! one (take or park the cached run) is a few dozen instructions, and the longest, a search of
//! the counters, is bounded by the area's size, so a waiter spins, then yields its CPU. A map
//! served by its thread's cache (module `thread_cache`) and the unmap that fills it take no
//! area lock at all.
//!
//! A run has one holder at a time: the area (free in the counters, or its cached run), a
//! mapping (its metadata recorded), or a thread cache. The holder alone writes its metadata:
//! [`Pool::record`] by the map that took the run (under the area lock, or from its thread's
//! cache), head slot last with release (`swiotlb.meta.publish`) once the bounce buffer is
//! filled ([`HeadWord::publish`]). A release claims the mapping
//! with one compare-and-swap of the head slot's metadata word (acquire, `swiotlb.release.claim`
//! and `swiotlb.release.acquire`): of two racing releases exactly one wins, and the winner,
//! now the run's holder, clears the rest and gives the run to its thread's cache or back to
//! the area ([`Pool::put_back`]).
//!
//! The area's cached run is the run given back to it last: it stays out of the counters (its
//! counters stay 0) and the next map of exactly its size that it qualifies for (alignment,
//! boundary) takes it without a search or a renumbering; its bounce memory and metadata are
//! still in the CPU's cache. The run it displaces is freed into the counters and the next
//! search starts there. A search that fails while a run is cached frees that run into the
//! counters and searches again, so caching never turns a fitting map into `NoSpace`. An
//! area's `used` counts the slots of live mappings and of runs held by thread caches (the
//! statistics subtract the latter); the counters' zeros are those plus the area's cached run,
//! which `check` verifies along with the cached run's clean metadata.
//!
//! Slot metadata are atomics so that a bounce copy of a live mapping may read them without
//! the lock (the owner of a mapping is ordered after its map by the caller), and so that a
//! bogus concurrent call is a wrong answer, never a data race. The bounds are atomics too:
//! under loom a reader that reaches a pool without happens-before to its creation, or after
//! its free, is then reported.

use crate::align::Plan;
use crate::error::Error;
use crate::points::{META_PUBLISH, RELEASE_CLAIM, RELEASE_CLAIM_ACQUIRE};
use crate::shared::SharedRegion;
use crate::slots;
use crate::{INVALID_PHYS_ADDR, IO_TLB_SHIFT, IO_TLB_SIZE, POOL_ALIGN};
use dma_sync::atomic::{
    AtomicPtr, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
    Poison,
};
use dma_sync::fault::Site;
use dma_sync::rcu::Retire;
use dma_sync::{CachePadded, SpinLock};

/// Slot counts of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub nslabs: usize,
    pub nareas: usize,
    pub area_nslabs: usize,
    /// Segment size in slots: the longest run; areas are whole segments.
    pub seg: usize,
}

impl Geometry {
    /// Areas of whole segments: `nareas` is rounded up to a power of two, then reduced until
    /// each area holds at least one segment; `nslabs` is rounded up to whole areas.
    pub(crate) fn new(nslabs: usize, nareas: usize, seg: usize) -> Geometry {
        let seg = seg.min(nslabs.max(1));
        let segments = nslabs.max(1).div_ceil(seg);
        let mut nareas = nareas.max(1).next_power_of_two();
        while nareas > 1 && nareas > segments {
            nareas /= 2;
        }
        let area_nslabs = segments.div_ceil(nareas) * seg;
        Geometry {
            nslabs: area_nslabs * nareas,
            nareas,
            area_nslabs,
            seg,
        }
    }

    /// The area of slot `i` and the slot's index in it; a shift and a mask for the
    /// power-of-two areas of global pools (a division would cost a fast-path unmap more than
    /// the rest of its bookkeeping).
    #[inline]
    pub(crate) fn area_of(&self, i: usize) -> (usize, usize) {
        let n = self.area_nslabs;
        if n.is_power_of_two() {
            (i >> n.trailing_zeros(), i & (n - 1))
        } else {
            (i / n, i % n)
        }
    }
}

// Slot metadata word: alloc_size | in_off | pad_slots | nslots | VALID | HEAD.
const SIZE_MASK: u64 = 0xFFFF_FFFF;
const IN_OFF_SHIFT: u32 = 32;
const PAD_SHIFT: u32 = 43;
const NSLOTS_SHIFT: u32 = 51;
const VALID: u64 = 1 << 62;
const HEAD: u64 = 1 << 63;
const IN_OFF_MASK: u64 = 0x7FF;
const PAD_MASK: u64 = 0xFF;
const NSLOTS_MASK: u64 = 0x1FF;
/// The bits that make a word the head of a mapping without padding starting at its slot's
/// first byte when they read `VALID | HEAD`: both flags, the in-slot offset and the padding.
const UNPADDED_HEAD_MASK: u64 = VALID | HEAD | IN_OFF_MASK << IN_OFF_SHIFT | PAD_MASK << PAD_SHIFT;

/// Decoded metadata of one slot of a live mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotMeta {
    /// Bytes from this slot's start to the end of the mapping (bounce space).
    pub alloc_size: usize,
    /// In-slot offset at which the mapping starts in its first slot.
    pub in_off: usize,
    /// Set on the first non-padding slot of a mapping.
    pub head: bool,
    /// Head only: padding slots before it.
    pub pad_slots: usize,
    /// Head only: slots of the whole allocation, padding included.
    pub nslots: usize,
}

impl SlotMeta {
    #[inline]
    fn decode(w: u64) -> Option<SlotMeta> {
        (w & VALID != 0).then_some(SlotMeta {
            alloc_size: (w & SIZE_MASK) as usize,
            in_off: ((w >> IN_OFF_SHIFT) & IN_OFF_MASK) as usize,
            head: w & HEAD != 0,
            pad_slots: ((w >> PAD_SHIFT) & PAD_MASK) as usize,
            nslots: ((w >> NSLOTS_SHIFT) & NSLOTS_MASK) as usize,
        })
    }
}

#[derive(Debug)]
struct Slot {
    orig: AtomicU64,
    meta: AtomicU64,
}

#[derive(Debug)]
struct AreaState {
    /// Where the next search of the counters starts, area-relative: after the last allocation,
    /// or at the run last returned to the counters. Only a hint (every value is safe).
    index: usize,
    /// Exact number of slots out of the counters for live mappings and for runs held by
    /// thread caches (the area's own cached run is not counted).
    used: usize,
    list: Box<[u16]>,
    /// The run freed last, kept out of the counters (its slots stay at 0 in `list`) for the
    /// next map of the same size: `(area-relative start, slots)`, 0 slots when empty.
    cached: (usize, usize),
}

impl AreaState {
    /// Return the cached run, if any, to the free-run counters.
    #[inline(never)]
    fn reclaim(&mut self, seg: usize) {
        let (start, n) = std::mem::take(&mut self.cached);
        if n > 0 {
            slots::free(&mut self.list, seg, start, n);
            self.index = start;
        }
    }
}

#[derive(Debug)]
struct Area {
    state: SpinLock<AreaState>,
    /// Copy of `used` for unlocked statistics.
    used: AtomicUsize,
}

/// One pool of bounce slots.
#[derive(Debug)]
pub(crate) struct Pool {
    start: AtomicU64,
    end: AtomicU64,
    pub geo: Geometry,
    region: SharedRegion,
    slots: Box<[Slot]>,
    /// Each area on its own cache lines: CPUs locking neighbouring areas share no line.
    areas: Box<[CachePadded<Area>]>,
    /// Next pool in the published list (global list or a device's transient list).
    pub next: AtomicPtr<Pool>,
    pub transient: bool,
}

impl Pool {
    /// Slots this allocation of `n` slots adds to (or removes from) the "used" statistics:
    /// a transient pool serves one mapping and counts whole, leading alignment slots included,
    /// as the `used` report counts it.
    pub(crate) fn accounted_slots(&self, n: usize) -> usize {
        if self.transient {
            self.geo.nslabs
        } else {
            n
        }
    }

    /// Allocate a pool of `geo` whose last byte lies at or below `limit`, asking the fault
    /// `site` first. Every allocation is fallible except the small `Box` of the pool itself.
    pub(crate) fn new(
        geo: Geometry,
        transient: bool,
        limit: u64,
        site: &'static Site,
    ) -> Result<Box<Pool>, Error> {
        let fail = Error::PoolAlloc { nslabs: geo.nslabs };
        if site.fail() {
            return Err(fail);
        }
        let bytes = geo.nslabs.checked_mul(IO_TLB_SIZE).ok_or(fail.clone())?;
        let region = SharedRegion::new(bytes, POOL_ALIGN).ok_or(fail.clone())?;
        let start = region.addr();
        if beyond(start.checked_add(bytes as u64 - 1), limit) {
            return Err(fail);
        }
        let slots = try_collect(geo.nslabs, || {
            Some(Slot {
                orig: AtomicU64::new(INVALID_PHYS_ADDR),
                meta: AtomicU64::new(0),
            })
        })
        .ok_or(fail.clone())?;
        let areas = try_collect(geo.nareas, || {
            let mut list = try_collect(geo.area_nslabs, || Some(0u16))?;
            slots::init(&mut list, geo.seg);
            Some(CachePadded::new(Area {
                state: SpinLock::new(AreaState {
                    index: 0,
                    used: 0,
                    list,
                    cached: (0, 0),
                }),
                used: AtomicUsize::new(0),
            }))
        })
        .ok_or(fail)?;
        Ok(Box::new(Pool {
            start: AtomicU64::new(start),
            end: AtomicU64::new(start + bytes as u64),
            geo,
            region,
            slots,
            areas,
            next: AtomicPtr::new(std::ptr::null_mut()),
            transient,
        }))
    }

    /// First bounce address.
    #[inline]
    pub(crate) fn start(&self) -> u64 {
        self.start.load(Relaxed)
    }

    /// One past the last bounce address.
    #[inline]
    pub(crate) fn end(&self) -> u64 {
        self.end.load(Relaxed)
    }

    /// Whether `addr` is a bounce address of this pool.
    #[inline]
    pub(crate) fn contains(&self, addr: u64) -> bool {
        // Both loads always happen: under loom the sequence of atomic operations must not
        // depend on where the allocator placed the pool (the model must be deterministic).
        let (start, end) = (self.start(), self.end());
        addr >= start && addr < end
    }

    /// Bounce address of slot `i`.
    #[inline]
    fn slot_addr(&self, i: usize) -> u64 {
        self.region.addr() + ((i as u64) << IO_TLB_SHIFT)
    }

    /// Slot index of bounce address `addr` (which must be inside the pool).
    #[inline]
    pub(crate) fn slot_of(&self, addr: u64) -> usize {
        ((addr - self.region.addr()) >> IO_TLB_SHIFT) as usize
    }

    /// The bounce memory of the pool.
    pub(crate) fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// Search area `a` for `plan` and, if a run fits, allocate it and record the mapping of
    /// `plan.orig`. Returns the allocation's first slot (padding included).
    ///
    /// The area's cached run is taken first if it has exactly the slots asked for and
    /// qualifies (no counter is touched); otherwise the counters are searched, and if that
    /// fails while a run is cached, the run goes back to the counters (where it may merge with
    /// its neighbours) and the search runs once more: a cached run never makes a map fail.
    #[inline]
    pub(crate) fn try_area(&self, a: usize, plan: &Plan) -> Option<usize> {
        let n = self.geo.area_nslabs;
        let area = &self.areas[a];
        area.state.with(|st| {
            if plan.nslots > n - st.used {
                return None;
            }
            let base = a * n;
            let (start, cached) = st.cached;
            let i = if cached == plan.nslots && self.qualifies(base + start, plan) {
                st.cached = (0, 0);
                start
            } else {
                self.allocate(st, base, plan)?
            };
            st.used += plan.nslots;
            area.used.store(st.used, Relaxed);
            self.record(base + i, plan);
            Some(base + i)
        })
    }

    /// Whether a run of `plan.nslots` free slots at slot `i` may serve `plan`.
    #[inline]
    pub(crate) fn qualifies(&self, i: usize, plan: &Plan) -> bool {
        let addr = self.slot_addr(i);
        plan.aligned(addr) && plan.within_boundary(addr)
    }

    /// Allocate a run for `plan` from the counters of the area starting at slot `base`,
    /// merging the cached run back if the search fails while one is cached. Out of line: the
    /// map+unmap fast path takes the cached run.
    #[inline(never)]
    fn allocate(&self, st: &mut AreaState, base: usize, plan: &Plan) -> Option<usize> {
        let n = self.geo.area_nslabs;
        let found = self.search(st, base, plan).or_else(|| {
            if st.cached.1 == 0 {
                return None;
            }
            st.reclaim(self.geo.seg);
            self.search(st, base, plan)
        })?;
        slots::allocate(&mut st.list, self.geo.seg, found, plan.nslots);
        st.index = if found + plan.nslots >= n {
            0
        } else {
            found + plan.nslots
        };
        Some(found)
    }

    /// The bounded next-fit search of the counters of the area starting at slot `base`: the
    /// first qualifying free run of `plan.nslots`, area-relative.
    fn search(&self, st: &mut AreaState, base: usize, plan: &Plan) -> Option<usize> {
        let n = self.geo.area_nslabs;
        let stride = plan.stride.min(n);
        let wrap = |x: usize| if x >= n { 0 } else { x };
        // A step that runs past the area's end restarts at its first slot (candidates are
        // aligned from there); it covers only the slots up to the end, so count those.
        let step = |i: usize, by: usize| {
            if i + by >= n {
                (0, n - i)
            } else {
                (i + by, by)
            }
        };
        let mut i = wrap(st.index);
        let mut checked = 0;
        // Each candidate is checked once: the walk visits slots in ring order from the start,
        // and `checked` is the ring distance covered, so it stops after one full turn.
        while checked < n {
            let addr = self.slot_addr(base + i);
            let by = if !plan.aligned(addr) {
                1
            } else if plan.within_boundary(addr) && st.list[i] as usize >= plan.nslots {
                return Some(i);
            } else {
                stride
            };
            let (next, covered) = step(i, by);
            i = next;
            checked += covered;
        }
        None
    }

    /// Write the metadata of a fresh allocation at `s`, by the one thread that holds the run
    /// (under its area lock, or taken from its thread's cache), all but the head slot's word,
    /// which the map writes once the bounce buffer is filled ([`Pool::head_word`]). A free slot's
    /// word is 0 (a release clears its whole run; `check` verifies it; the original address
    /// beside it means nothing then), so only the slots the mapping covers are written:
    /// padding and alignment slots stay clear.
    #[inline]
    pub(crate) fn record(&self, s: usize, plan: &Plan) {
        let end = plan.in_off + plan.mapping_size;
        let first = s + plan.pad_slots;
        let covered = end.div_ceil(IO_TLB_SIZE).min(s + plan.nslots - first);
        let common = VALID | (plan.in_off as u64) << IN_OFF_SHIFT;
        let (orig, step) = match plan.orig {
            Some(o) => (o, 1u64 << IO_TLB_SHIFT),
            None => (INVALID_PHYS_ADDR, 0),
        };
        let Some((head_slot, tail)) = self.slots[first..first + covered].split_first() else {
            return;
        };
        let (mut size, mut at) = (end as u64, orig);
        for slot in tail {
            size -= IO_TLB_SIZE as u64;
            at = at.wrapping_add(step);
            slot.orig.store(at, Relaxed);
            slot.meta.store(common | size, Relaxed);
        }
        head_slot.orig.store(orig, Relaxed);
    }

    /// The head slot's word that makes the allocation at `s` recorded for `plan` a mapping,
    /// to publish once the bounce buffer is filled ([`HeadWord::publish`]). Derived before the
    /// copy, so the fast path keeps it across the copy's call instead of deriving it again.
    #[inline(always)]
    pub(crate) fn head_word(&self, s: usize, plan: &Plan) -> HeadWord<'_> {
        let end = plan.in_off + plan.mapping_size;
        let word = VALID
            | (plan.in_off as u64) << IN_OFF_SHIFT
            | end as u64
            | HEAD
            | (plan.pad_slots as u64) << PAD_SHIFT
            | (plan.nslots as u64) << NSLOTS_SHIFT;
        HeadWord {
            meta: &self.slots[s + plan.pad_slots].meta,
            word,
        }
    }

    /// Clear the metadata [`Pool::record`] wrote for the allocation of `nslots` at `s`, never
    /// published: the caller holds the run again.
    pub(crate) fn unrecord(&self, s: usize, nslots: usize) {
        self.clear_run(s, nslots);
    }

    /// Metadata of slot `i` (no lock: see the module documentation).
    #[inline]
    pub(crate) fn meta(&self, i: usize) -> (u64, Option<SlotMeta>) {
        let s = &self.slots[i];
        (s.orig.load(Relaxed), SlotMeta::decode(s.meta.load(Relaxed)))
    }

    /// Claim the allocation whose mapping starts at slot `first` with in-slot offset `in_off`
    /// (bounce address `addr`), of which the caller names `size` bytes from its start (`None`:
    /// the whole allocation, as `free` does), and clear its metadata. Returns the run
    /// `(first slot, slots)`, which the caller now holds: it goes back to the area
    /// ([`Pool::put_back`]) or to the thread's cache.
    ///
    /// No lock: one compare-and-swap of the head slot's metadata word claims the mapping
    /// (`swiotlb.release.claim`), so of two racing releases exactly one wins and the other gets
    /// `NotMapped`, as does an address that names no mapping's head; a size of 0 or past the
    /// mapping's end is `OutOfRange`. A failed claim changes nothing.
    #[inline]
    pub(crate) fn unmark(
        &self,
        first: usize,
        in_off: usize,
        addr: u64,
        size: Option<usize>,
    ) -> Result<(usize, usize), Error> {
        Ok(self.claim(first, in_off, addr, size)?.clear())
    }

    /// The claim of [`Pool::unmark`] without the clearing: the mapping is the caller's, its
    /// metadata (but the head word) and its bounce bytes unchanged, until it clears the run
    /// ([`Claimed::clear`]) or drops the claim, which gives the mapping back as it was. A copy
    /// back made under the claim copies this mapping's bytes to this mapping's original: no
    /// racing release can free the slots for a new mapping meanwhile.
    #[inline]
    pub(crate) fn claim(
        &self,
        first: usize,
        in_off: usize,
        addr: u64,
        size: Option<usize>,
    ) -> Result<Claimed<'_>, Error> {
        let (_, first_in_area) = self.geo.area_of(first);
        let head = &self.slots[first].meta;
        let word = head.load(Relaxed);
        let meta = match SlotMeta::decode(word) {
            Some(m) if m.head && m.in_off == in_off && m.pad_slots <= first_in_area => m,
            _ => return Err(Error::NotMapped { addr }),
        };
        if let Some(size) = size {
            if size == 0 || size > meta.alloc_size - in_off {
                return Err(Error::OutOfRange { addr, size });
            }
        }
        if !claim(head, word) {
            return Err(Error::NotMapped { addr });
        }
        Ok(Claimed {
            pool: self,
            head: first,
            word,
            start: first - meta.pad_slots,
            nslots: meta.nslots,
        })
    }

    /// `unmark(first, 0, addr, Some(size))` for a mapping without padding that starts at
    /// its head slot's first byte, the unmap fast path's case: `None` if slot `first` holds
    /// anything else (the caller then asks `unmark`, whose answer this is otherwise). Such a
    /// head passes `unmark`'s checks of the head flag, the in-slot offset and the padding
    /// without decoding the word.
    #[inline(always)]
    pub(crate) fn unmark_unpadded(
        &self,
        first: usize,
        addr: u64,
        size: usize,
    ) -> Option<Result<(usize, usize), Error>> {
        let head = &self.slots[first].meta;
        let word = head.load(Relaxed);
        if word & UNPADDED_HEAD_MASK != VALID | HEAD {
            return None;
        }
        let (alloc_size, nslots) = (word & SIZE_MASK, (word >> NSLOTS_SHIFT) & NSLOTS_MASK);
        if size == 0 || size as u64 > alloc_size {
            return Some(Err(Error::OutOfRange { addr, size }));
        }
        let released = self.claim_run(head, word, first, nslots as usize);
        Some(released.ok_or(Error::NotMapped { addr }))
    }

    /// Claim the mapping whose head slot's metadata is `head`, read as `word`, and clear the
    /// metadata of its run of `nslots` at `s`; `None` if another release claimed it first.
    #[inline(always)]
    fn claim_run(
        &self,
        head: &AtomicU64,
        word: u64,
        s: usize,
        nslots: usize,
    ) -> Option<(usize, usize)> {
        if !claim(head, word) {
            return None;
        }
        self.clear_run(s, nslots);
        Some((s, nslots))
    }

    /// Clear the metadata of the run of `nslots` at `s`, whose mapping the caller claimed:
    /// each slot's word. The original addresses are left as they are: no reader uses a slot's
    /// original address without a valid word (`meta` answers them together, and every
    /// mapping writes its slots' addresses before their words), and one store a slot fewer
    /// is one fewer behind a bounce's copy in the store buffer.
    #[inline(always)]
    fn clear_run(&self, s: usize, nslots: usize) {
        for slot in &self.slots[s..s + nslots] {
            slot.meta.store(0, Relaxed);
        }
    }

    /// Give the run of `nslots` slots at `s`, held by the caller and clear of metadata, back
    /// to its area. It stays out of the counters as the area's cached run: its bounce memory
    /// and metadata are still in the CPU cache, and the next map of its size that reaches the
    /// area takes it without a search or a renumbering. The run cached before goes back to the
    /// counters, and the next search starts there (plain next-fit would move on to cold slots).
    pub(crate) fn put_back(&self, s: usize, nslots: usize) {
        let n = self.geo.area_nslabs;
        let (a, _) = self.geo.area_of(s);
        let area = &self.areas[a];
        area.state.with(|st| {
            if st.cached.1 > 0 {
                st.reclaim(self.geo.seg);
            }
            st.cached = (s - a * n, nslots);
            st.used -= nslots;
            area.used.store(st.used, Relaxed);
        });
    }

    /// Whether the run of `nslots` at `s`, held by a thread cache, carries no metadata.
    pub(crate) fn is_clear(&self, s: usize, nslots: usize) -> bool {
        (s..s + nslots).all(|i| self.meta(i).1.is_none())
    }

    /// Used slots per area (unlocked snapshot).
    pub(crate) fn area_used(&self) -> Vec<usize> {
        self.areas.iter().map(|a| a.used.load(Relaxed)).collect()
    }

    /// Check the quiescent invariants of every area: counters, `used`, free-slot metadata.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (a, area) in self.areas.iter().enumerate() {
            area.state
                .with(|st| self.check_area(a, area, st))
                .map_err(|e| format!("pool {:#x} area {a}: {e}", self.start()))?;
        }
        Ok(())
    }

    /// Check area `a`, whose lock is held (`st` is its state).
    fn check_area(&self, a: usize, area: &Area, st: &AreaState) -> Result<(), String> {
        slots::check(&st.list, self.geo.seg)?;
        let zeros = st.list.iter().filter(|&&v| v == 0).count();
        let (start, cached) = st.cached;
        if zeros != st.used + cached || area.used.load(Relaxed) != st.used {
            return Err(format!(
                "used {} and {cached} cached but {zeros} slots allocated",
                st.used
            ));
        }
        let base = a * self.geo.area_nslabs;
        let cached_run = st.list.get(start..start + cached);
        let clean = |i: usize| self.meta(base + i).1.is_none();
        let seg = self.geo.seg;
        let same_segment = cached == 0 || start / seg == (start + cached - 1) / seg;
        if !cached_run.is_some_and(|r| r.iter().all(|&v| v == 0))
            || !(start..start + cached).all(clean)
            || !same_segment
        {
            return Err(format!(
                "cached run {start}+{cached} is not a clean free run"
            ));
        }
        for (i, &v) in st.list.iter().enumerate() {
            if v != 0 && self.meta(base + i).1.is_some() {
                return Err(format!("free slot {i} has metadata"));
            }
        }
        Ok(())
    }
}

/// The head slot's metadata word of a recorded allocation, not yet written.
pub(crate) struct HeadWord<'a> {
    meta: &'a AtomicU64,
    word: u64,
}

impl HeadWord<'_> {
    /// Make the allocation a mapping: write its head slot's word, last, with release
    /// (`swiotlb.meta.publish`), so a release that claims it sees the rest of the metadata
    /// and the bounce bytes the map wrote. Until then no release can claim it, and a sync
    /// finds no mapping: a bogus unmap of the address (guessed, or stale) cannot free the
    /// slots while the map fills them.
    #[inline(always)]
    pub(crate) fn publish(self) {
        self.meta.store(self.word, META_PUBLISH.ord(Release));
    }
}

/// A mapping claimed by [`Pool::claim`]: its head slot's word is 0 (no other release can
/// claim it, no search can allocate its run), everything else as the map recorded it. Dropped
/// unless cleared, it gives the mapping back: a copy back that fails or unwinds leaves the
/// mapping as it was.
#[must_use = "a dropped claim gives the mapping back"]
pub(crate) struct Claimed<'a> {
    pool: &'a Pool,
    /// The head slot and the word the claim replaced.
    head: usize,
    word: u64,
    start: usize,
    nslots: usize,
}

impl Claimed<'_> {
    /// The original address of the mapping's first byte (`INVALID_PHYS_ADDR` for an `alloc`
    /// allocation). The claim's acquire orders this read after the map's write of it.
    pub(crate) fn orig(&self) -> u64 {
        self.pool.meta(self.head).0
    }

    /// Clear the run's metadata: the caller now holds the run `(first slot, slots)`.
    pub(crate) fn clear(self) -> (usize, usize) {
        let (start, nslots) = (self.start, self.nslots);
        self.pool.clear_run(start, nslots);
        std::mem::forget(self);
        (start, nslots)
    }
}

impl Drop for Claimed<'_> {
    /// Give the mapping back: the head word again, with release (`swiotlb.meta.publish`, as
    /// the map wrote it), so the next release that claims it sees the rest of the metadata.
    fn drop(&mut self) {
        HeadWord {
            meta: &self.pool.slots[self.head].meta,
            word: self.word,
        }
        .publish();
    }
}

/// Claim a mapping: replace its head slot's metadata `word` with 0 if it still holds it.
#[inline]
fn claim(head: &AtomicU64, word: u64) -> bool {
    let acquire = RELEASE_CLAIM_ACQUIRE.ord(Acquire);
    if RELEASE_CLAIM.on() {
        head.compare_exchange(word, 0, acquire, Relaxed).is_ok()
    } else {
        // The weakened form: two releases can both read the word before either clears it.
        let now = head.load(acquire);
        now == word && {
            head.store(0, Relaxed);
            true
        }
    }
}

/// `n` values made by `f`, or `None` if the memory cannot be had or `f` fails.
fn try_collect<T>(n: usize, mut f: impl FnMut() -> Option<T>) -> Option<Box<[T]>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    for _ in 0..n {
        v.push(f()?);
    }
    Some(v.into_boxed_slice())
}

/// Whether a range ending at `last` (`None`: overflowed) lies beyond `limit`.
pub(crate) fn beyond(last: Option<u64>, limit: u64) -> bool {
    match last {
        Some(last) => last > limit,
        None => true,
    }
}

impl Retire for Pool {
    fn poison(&mut self) {
        self.start.poison(INVALID_PHYS_ADDR);
        self.end.poison(0);
        self.next.poison(std::ptr::null_mut());
        for s in self.slots.iter_mut() {
            s.orig.poison(INVALID_PHYS_ADDR);
            s.meta.poison(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_areas_are_whole_segments() {
        assert_eq!(
            Geometry::new(8, 2, 4),
            Geometry {
                nslabs: 8,
                nareas: 2,
                area_nslabs: 4,
                seg: 4
            }
        );
        // Small pool, many CPUs: the areas shrink to the segments available.
        assert_eq!(
            Geometry::new(256, 64, 128),
            Geometry {
                nslabs: 256,
                nareas: 2,
                area_nslabs: 128,
                seg: 128
            }
        );
        // Non-power-of-two area counts round up, then fit.
        assert_eq!(Geometry::new(1024, 3, 128).nareas, 4);
        // Pools under one segment: one area, the segment is the pool.
        assert_eq!(
            Geometry::new(5, 4, 128),
            Geometry {
                nslabs: 5,
                nareas: 1,
                area_nslabs: 5,
                seg: 5
            }
        );
        assert_eq!(Geometry::new(0, 0, 128).nslabs, 1);
    }

    #[test]
    fn area_of_matches_division() {
        for geo in [
            Geometry::new(1024, 4, 128),
            Geometry::new(5, 4, 128),
            Geometry::new(384, 2, 128),
        ] {
            let n = geo.area_nslabs;
            for i in 0..geo.nslabs {
                assert_eq!(geo.area_of(i), (i / n, i % n), "{geo:?} slot {i}");
            }
        }
    }

    #[test]
    fn slot_index_math_beyond_two_to_the_twenty_slots() {
        // The index → address math is done in u64: no overflow for huge pools.
        let i: usize = (1 << 21) + 3;
        assert_eq!(((i as u64) << IO_TLB_SHIFT) >> IO_TLB_SHIFT, i as u64);
        assert_eq!((i as u64) << IO_TLB_SHIFT, 0x1_0000_1800);
    }
}
