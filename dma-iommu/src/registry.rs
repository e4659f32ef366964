//! The domain's record of live mappings, one record per IOVA pfn (the mapping's first).
//!
//! It makes unmap robust: an address that is not the start of a live mapping of this device
//! (never mapped, another device's, or unmapped already) is a typed error before anything is
//! torn down, and two racing unmaps of one mapping cannot both proceed.
//!
//! It is on every map and unmap, so the map records with no locked instruction and the unmap
//! with one. A record is kept per pfn, so no two live mappings share one (io-pgtable claims
//! every leaf entry by compare-and-swap and the IOVA allocator hands a range to one mapper):
//! the allocation is the insert's claim. A slot is a key word and the record, one 64-byte
//! line (checked by a test). The key is a small state machine: empty, claimed, or the live
//! mapping's DMA address. An insert reads the key with acquire (empty: the previous
//! mapping's take emptied it before its unmap freed the IOVA), writes the record with plain
//! stores and publishes the address with a release store. A take claims the slot by
//! compare-and-swap from the address it unmaps, reads the record, and stores empty (or puts
//! the address back when the record is another device's or another size's, so a refused
//! unmap changes nothing). Two racing takes of one mapping: one claims it, the other then
//! finds the slot empty and is refused; a take that finds the slot claimed waits (a refused
//! take may be about to put its mapping back). The orderings are the points
//! `iommu.registry.adopt`, `.publish`, `.claim` and `.vacate`, with loom models on this code
//! (module `points`).
//!
//! The slots live in a sparse radix tree indexed by pfn: leaves of 64 slots (4 KiB, 64
//! granules of IOVA space), middle nodes of 4096 leaf pointers (32 KiB, 1 GiB of IOVA space
//! at 4 KiB), and a root sized to the allocator's space (8 bytes per middle node's range,
//! zeroed memory the system commits as it is touched). A leaf and its middle node are
//! allocated by the first insert in their range, under a lock (once per 64 pfns; the pointer
//! stored with release, `iommu.registry.install`) and found by lock-free acquire loads
//! (`iommu.registry.lookup`). A take never allocates: an address whose leaf does not exist
//! (never mapped, outside the aperture or the allocator's space) is `NotMapped`. Nodes are
//! never freed while the domain lives (no reader pins anything, and the take stays one
//! compare-and-swap): the memory is bounded by the IOVA space ever used as a mapping's first
//! granule, 4 KiB of leaf per 64 granules of it (a 64th of the space at 4 KiB, 1/512 at 2
//! MiB-aligned large mappings' worst case, one leaf each) plus 32 KiB per GiB; the
//! allocator's caches recycle the same IOVAs, so the footprint follows the peak of IOVAs
//! live or cached, not the traffic. A lazy domain's 255 IOVAs in flight are mostly
//! neighbours: their records fill about four leaves, a line each.
//!
//! The counts of mappings ever recorded are kept by each slot's inserting owner (a load and a
//! store on the line it writes anyway), so the map path writes no shared statistics line;
//! [`Registry::counts`] sums the leaves.
//!
//! A record keeps what an unmap checks and needs in 32 bytes: the device, the size, and what
//! the mapping holds besides its span ([`Held`]: a bounce buffer, or a scatter list's span,
//! which alone is not the size rounded up to granules). The slot is keyed by the DMA address
//! itself, so the offset in the first granule needs no field.

use crate::error::DmaError;
use crate::points::{
    REGISTRY_ADOPT, REGISTRY_CLAIM, REGISTRY_INSTALL, REGISTRY_LOOKUP, REGISTRY_PUBLISH,
    REGISTRY_VACATE,
};
use dma_sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use dma_sync::{thread, Mutex, UnsafeCell};

/// What kind of call made a mapping; an unmap must be of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `map` (possibly bounced).
    Single,
    /// `map_resource` (MMIO, never bounced).
    Resource,
    /// `map_sg`: one contiguous IOVA range for a whole list.
    List,
}

/// What a live mapping holds besides its IOVA span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A [`Kind::Single`] mapping of the caller's memory.
    Single,
    /// A [`Kind::Single`] mapping of a bounce buffer at this address.
    Bounced(u64),
    /// A [`Kind::Resource`] mapping.
    Resource,
    /// A [`Kind::List`] mapping of a span of `granules` (segments moved to a boundary make it
    /// longer than the list's size rounded up).
    List {
        /// IOVA granules of the span.
        granules: u64,
    },
}

impl Held {
    fn kind(self) -> Kind {
        match self {
            Held::Single | Held::Bounced(_) => Kind::Single,
            Held::Resource => Kind::Resource,
            Held::List { .. } => Kind::List,
        }
    }
}

/// One live mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The device that mapped it.
    pub dev: u64,
    /// Bytes the caller mapped.
    pub size: u64,
    /// What it holds besides its span.
    pub held: Held,
}

/// What an unmap expects the record at its DMA address to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The device unmapping.
    pub dev: u64,
    /// The call unmapping.
    pub kind: Kind,
    /// The size it gives.
    pub size: u64,
}

/// What an unmap needs of the record it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// IOVA granules held.
    pub granules: u64,
    /// The bounce buffer, if the mapping was bounced.
    pub bounce_buffer: Option<u64>,
}

/// The record slot holds no record.
const EMPTY: u64 = 0;
/// A take has claimed the slot and alone reaches its record.
const BUSY: u64 = 1;

/// One pfn's record: a key word and the record it guards. The key is [`EMPTY`], [`BUSY`], or
/// the DMA address of the live record (in this slot's pfn). A DMA address is never a
/// sentinel: its pfn is at least the allocator's start pfn, which the domain's configuration
/// keeps above 0, and both sentinels lie in pfn 0.
///
/// The insert owns an [`EMPTY`] slot because the IOVA allocator handed it the pfn: it waits
/// for the key to read [`EMPTY`] with acquire (the previous take's vacate), writes the record
/// and `recorded`, and publishes the address with a release store. A take owns the slot
/// while the key is [`BUSY`] by its compare-and-swap from the address, and stores the key
/// again with release ([`EMPTY`], or the address put back). So every access to the record is
/// ordered after the previous owner's.
struct Slot {
    key: AtomicU64,
    rec: UnsafeCell<Record>,
    /// Mappings this slot ever recorded; written only by the inserting owner (a load and a
    /// store, no read-modify-write), read by [`Registry::counts`].
    recorded: AtomicU64,
}

// SAFETY: the record is reached only by the slot's owner: the insert the allocator handed
// its pfn (after its acquire load read the previous take's release of EMPTY), or the take
// whose compare-and-swap moved the key to BUSY (acquiring the insert's publication or a
// refused take's put-back).
unsafe impl Sync for Slot {}

impl Default for Slot {
    fn default() -> Self {
        Self {
            key: AtomicU64::new(EMPTY),
            rec: UnsafeCell::new(Record {
                dev: 0,
                size: 0,
                held: Held::Single,
            }),
            recorded: AtomicU64::new(0),
        }
    }
}

/// A slot on a cache line of its own. 64 bytes, not `CachePadded`'s 128 (which x86-64 uses
/// against the adjacent-line prefetcher): a lazy domain's 255 IOVAs in flight are mostly
/// neighbours, so their records fill whole leaves, one line each.
#[repr(align(64))]
#[derive(Default)]
struct Line<T>(T);

/// A pfn's low `LEAF_BITS` pick its slot in a leaf (64 slots of 64 bytes: a 4 KiB leaf for
/// 64 granules of IOVA space), the next `MID_BITS` its leaf in a middle node (4096 pointers,
/// 32 KiB, for 2^18 granules: 1 GiB at 4 KiB), the rest its middle node in the root. A loom
/// model needs only a few slots per node (every atomic and cell is a model object).
const LEAF_BITS: u32 = if cfg!(loom) { 1 } else { 6 };
const MID_BITS: u32 = if cfg!(loom) { 1 } else { 12 };
const LEAF_LEN: usize = 1 << LEAF_BITS;
const MID_LEN: usize = 1 << MID_BITS;

/// Spins before a wait for a slot yields the CPU (the claimer may have been preempted; a
/// claim otherwise lasts a few dozen instructions).
const SPINS_BEFORE_YIELD: u32 = 64;

type Leaf = Line<Slot>;
type Mid = AtomicPtr<Leaf>;

/// The nodes allocated so far, for [`Registry::counts`] and the drop.
#[derive(Default)]
struct Nodes {
    leaves: Vec<*mut Leaf>,
    mids: Vec<*mut Mid>,
}

/// The record of live mappings.
pub struct Registry {
    /// `root[pfn >> (LEAF_BITS + MID_BITS)]`: a middle node, or null before its first record.
    root: Box<[AtomicPtr<Mid>]>,
    /// Every node installed, installed under this lock (the lock-free lookups acquire the
    /// pointer it stores with release).
    nodes: Mutex<Nodes>,
    /// The IOVA granule's shift: a DMA address's pfn, and a span's granules.
    granule_shift: u32,
}

// SAFETY: the nodes are owned by the registry (freed only by its drop, through `&mut self`);
// other threads reach them through `root` and the middle nodes, whose pointers are stored
// with release after the node is built and loaded with acquire; a slot is `Sync`.
unsafe impl Send for Registry {}
// SAFETY: as for `Send`: shared access reaches a node only through its acquire-loaded pointer.
unsafe impl Sync for Registry {}

/// What the registry counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Mappings recorded since the domain was built.
    pub recorded: u64,
    /// Mappings live now.
    pub live: u64,
}

/// `n` null pointers, or `None` if they cannot be allocated. Outside loom, zeroed memory (a
/// null pointer is all zero bits), which the system commits page by page as it is touched:
/// a 48-bit domain's root is 2 MiB of address space of which the IOVAs in use touch a page.
fn null_pointers<T>(n: usize) -> Option<Box<[AtomicPtr<T>]>> {
    #[cfg(loom)]
    {
        let mut v = Vec::new();
        v.try_reserve_exact(n).ok()?;
        v.extend((0..n).map(|_| AtomicPtr::new(std::ptr::null_mut())));
        Some(v.into_boxed_slice())
    }
    #[cfg(not(loom))]
    {
        let layout = std::alloc::Layout::array::<AtomicPtr<T>>(n.max(1)).ok()?;
        // SAFETY: the layout is not zero-sized; all-zero bytes are a valid `AtomicPtr` (null),
        // and a boxed slice of `n` of them has exactly this layout, from the global allocator.
        unsafe {
            let p = std::alloc::alloc_zeroed(layout).cast::<AtomicPtr<T>>();
            if p.is_null() {
                return None;
            }
            Some(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                p,
                n.max(1),
            )))
        }
    }
}

/// A leaf of empty slots, or `None` if it cannot be allocated.
fn new_leaf() -> Option<Box<[Leaf]>> {
    let mut v = Vec::new();
    v.try_reserve_exact(LEAF_LEN).ok()?;
    v.extend((0..LEAF_LEN).map(|_| Line::default()));
    Some(v.into_boxed_slice())
}

impl Registry {
    /// Records for IOVA pfns up to `end_pfn` (the IOVA allocator's last), granules of
    /// `1 << granule_shift` bytes. Allocates only the root (8 bytes per 2^18 pfns); leaves
    /// and middle nodes come with the first record in their range. [`DmaError::NoMemory`] if
    /// the root cannot be allocated.
    pub fn new(end_pfn: u64, granule_shift: u32) -> Result<Self, DmaError> {
        let root = usize::try_from(end_pfn >> (LEAF_BITS + MID_BITS))
            .ok()
            .and_then(|n| n.checked_add(1))
            .and_then(null_pointers)
            .ok_or(DmaError::NoMemory)?;
        Ok(Self {
            root,
            nodes: Mutex::new(Nodes::default()),
            granule_shift,
        })
    }

    /// The slot of `pfn` if its leaf exists; never allocates.
    #[inline]
    fn slot(&self, pfn: u64) -> Option<&Slot> {
        let top = self
            .root
            .get(usize::try_from(pfn >> (LEAF_BITS + MID_BITS)).ok()?)?;
        let mid = top.load(REGISTRY_LOOKUP.ord(Ordering::Acquire));
        if mid.is_null() {
            return None;
        }
        // SAFETY: a non-null middle node is `MID_LEN` pointers, built before its release
        // store (acquired above) and freed only by the registry's drop.
        let at = unsafe { &*mid.add((pfn >> LEAF_BITS) as usize & (MID_LEN - 1)) };
        let leaf = at.load(REGISTRY_LOOKUP.ord(Ordering::Acquire));
        if leaf.is_null() {
            return None;
        }
        // SAFETY: the same for a leaf of `LEAF_LEN` slots.
        Some(unsafe { &(*leaf.add(pfn as usize & (LEAF_LEN - 1))).0 })
    }

    /// The slot of `pfn`, allocating its leaf (and middle node) if this is the first record
    /// in its range; [`DmaError::NoMemory`] (nothing changed) if they cannot be allocated or
    /// the pfn lies beyond the space the registry was built for.
    #[cold]
    #[inline(never)]
    fn install(&self, pfn: u64) -> Result<&Slot, DmaError> {
        let top = usize::try_from(pfn >> (LEAF_BITS + MID_BITS))
            .ok()
            .and_then(|i| self.root.get(i))
            .ok_or(DmaError::NoMemory)?;
        let mut nodes = self.nodes.lock();
        // Installers are ordered by the lock: a Relaxed load sees any earlier installer's.
        let mut mid = top.load(Ordering::Relaxed);
        if mid.is_null() {
            nodes.mids.try_reserve(1).map_err(|_| DmaError::NoMemory)?;
            let fresh = null_pointers::<Leaf>(MID_LEN).ok_or(DmaError::NoMemory)?;
            mid = Box::into_raw(fresh).cast::<Mid>();
            nodes.mids.push(mid);
            top.store(mid, REGISTRY_INSTALL.ord(Ordering::Release));
        }
        // SAFETY: as in `slot`; this thread installed it or the lock ordered its installer.
        let at = unsafe { &*mid.add((pfn >> LEAF_BITS) as usize & (MID_LEN - 1)) };
        let mut leaf = at.load(Ordering::Relaxed);
        if leaf.is_null() {
            nodes
                .leaves
                .try_reserve(1)
                .map_err(|_| DmaError::NoMemory)?;
            leaf = Box::into_raw(new_leaf().ok_or(DmaError::NoMemory)?).cast::<Leaf>();
            nodes.leaves.push(leaf);
            at.store(leaf, REGISTRY_INSTALL.ord(Ordering::Release));
        }
        // SAFETY: as in `slot`.
        Ok(unsafe { &(*leaf.add(pfn as usize & (LEAF_LEN - 1))).0 })
    }

    /// Whether the leaf of DMA address `dma` exists (tests check that bad input allocates
    /// nothing).
    #[cfg(any(test, loom))]
    pub fn has_leaf(&self, dma: u64) -> bool {
        self.slot(dma >> self.granule_shift).is_some()
    }

    /// Whether `pfn`'s slot holds a mapping (or a take's claim); models read it for their
    /// outcomes.
    #[cfg(loom)]
    pub fn is_live(&self, pfn: u64) -> bool {
        self.slot(pfn)
            .is_some_and(|s| s.key.load(Ordering::Relaxed) != EMPTY)
    }

    /// Record a new mapping at DMA address `dma` (its first IOVA granule, plus its offset in
    /// it), whose first pfn the IOVA allocator handed to this caller alone (no live mapping
    /// has it): plain stores and a release store, no locked instruction, unless this is the
    /// first record of its leaf (then the leaf is allocated; [`DmaError::NoMemory`], nothing
    /// recorded, if it cannot be).
    #[inline]
    pub fn insert(&self, dma: u64, rec: Record) -> Result<(), DmaError> {
        if crate::faults::MAPPING_RECORD.fail() {
            return Err(DmaError::NoMemory);
        }
        let pfn = dma >> self.granule_shift;
        let slot = match self.slot(pfn) {
            Some(slot) => slot,
            None => self.install(pfn)?,
        };
        // The previous mapping's take emptied the key before its unmap freed the IOVA; an
        // allocator that hands the pfn over without ordering may let this load see the old
        // key a moment longer.
        if slot.key.load(REGISTRY_ADOPT.ord(Ordering::Acquire)) != EMPTY {
            Self::wait_vacated(slot);
        }
        // SAFETY: the pfn is this thread's (the allocator's hand-over), and the key read EMPTY
        // with acquire, after the previous owner's last access: no other thread reaches the
        // record until the publication below.
        slot.rec.with_mut(|r| unsafe { *r = rec });
        let n = slot.recorded.load(Ordering::Relaxed);
        slot.recorded.store(n + 1, Ordering::Relaxed);
        slot.key.store(dma, REGISTRY_PUBLISH.ord(Ordering::Release));
        Ok(())
    }

    /// Wait until the previous take of `slot` has emptied it (see [`Registry::insert`]).
    #[cold]
    #[inline(never)]
    fn wait_vacated(slot: &Slot) {
        let mut spins = 0;
        while slot.key.load(REGISTRY_ADOPT.ord(Ordering::Acquire)) != EMPTY {
            Self::pause(&mut spins);
        }
    }

    fn pause(spins: &mut u32) {
        if *spins < SPINS_BEFORE_YIELD {
            *spins += 1;
            thread::spin_wait();
        } else {
            thread::yield_now();
        }
    }

    /// Remove the mapping at `dma` if it is what `expect` describes; otherwise leave it in
    /// place: none at `dma`'s granule or another device's is [`DmaError::NotMapped`], another
    /// offset in the granule, size or kind [`DmaError::Mismatch`]. Of two racing takes of one
    /// mapping, one claims the slot and the other finds it empty. Never allocates: an address
    /// whose leaf does not exist (never mapped, or outside the IOVA space) is `NotMapped`.
    /// The expectation travels by value and only what the unmap needs comes back, so nothing
    /// of either is spilled to memory on the way.
    #[inline]
    pub fn take(&self, dma: u64, expect: Expect) -> Result<Taken, DmaError> {
        let pfn = dma >> self.granule_shift;
        // Addresses in pfn 0 are never mapped, and are the key's sentinels: a claim from
        // them would take an empty slot's stale record, or another take's claim.
        let Some(slot) = self.slot(pfn).filter(|_| pfn != 0) else {
            return Err(DmaError::NotMapped { dma });
        };
        // First try the common case, the slot holding this very address.
        let mut key = dma;
        loop {
            let (claim, failed) = REGISTRY_CLAIM.cas(Ordering::Acquire, Ordering::Relaxed);
            match slot.key.compare_exchange(key, BUSY, claim, failed) {
                Ok(_) => break,
                // The mapping may be the one claimed (by a take that may put it back).
                Err(BUSY) => key = Self::wait_unclaimed(slot),
                Err(now) => key = now,
            }
            if key == EMPTY {
                return Err(DmaError::NotMapped { dma });
            }
            // Another offset in this granule: claimed to be checked, and put back.
        }
        // SAFETY: the slot is BUSY by this thread's claim, which acquired the insert's
        // publication (or a refused take's put-back): no other thread reaches the record
        // until the store below.
        let rec = slot.rec.with(|r| unsafe { *r });
        let taken = self.check(key, &rec, dma, expect);
        let after = if taken.is_ok() { EMPTY } else { key };
        slot.key
            .store(after, REGISTRY_VACATE.ord(Ordering::Release));
        taken
    }

    /// Wait until no take holds `slot`; its key then.
    #[cold]
    #[inline(never)]
    fn wait_unclaimed(slot: &Slot) -> u64 {
        let mut spins = 0;
        loop {
            Self::pause(&mut spins);
            let key = slot.key.load(Ordering::Relaxed);
            if key != BUSY {
                return key;
            }
        }
    }

    /// What the unmap of `dma` needs of `rec`, recorded at `at` (the same granule), if it is
    /// the mapping `expect` describes.
    #[inline]
    fn check(&self, at: u64, rec: &Record, dma: u64, expect: Expect) -> Result<Taken, DmaError> {
        if rec.dev != expect.dev {
            return Err(DmaError::NotMapped { dma });
        }
        if rec.size != expect.size || at != dma || rec.held.kind() != expect.kind {
            return Err(DmaError::Mismatch {
                dma,
                size: expect.size,
                mapped: rec.size,
            });
        }
        let g = self.granule_shift;
        let offset = dma & ((1 << g) - 1);
        Ok(match rec.held {
            Held::List { granules } => Taken {
                granules,
                bounce_buffer: None,
            },
            // The span the map reserved: offset and size rounded up to granules (the domain's
            // `reserve` checked that this does not overflow).
            held => Taken {
                granules: (offset + rec.size).div_ceil(1 << g),
                bounce_buffer: match held {
                    Held::Bounced(phys) => Some(phys),
                    _ => None,
                },
            },
        })
    }

    /// Bytes of records and nodes allocated so far (the memory bound in DESIGN.md).
    #[cfg(all(test, not(loom)))]
    fn footprint(&self) -> usize {
        let nodes = self.nodes.lock();
        nodes.leaves.len() * LEAF_LEN * std::mem::size_of::<Leaf>()
            + nodes.mids.len() * MID_LEN * std::mem::size_of::<Mid>()
            + self.root.len() * std::mem::size_of::<AtomicPtr<Mid>>()
    }

    /// Mappings recorded and live (a slot being claimed counts as live); holds the lock that
    /// installs leaves while it reads them.
    pub fn counts(&self) -> Counts {
        let nodes = self.nodes.lock();
        let mut c = Counts {
            recorded: 0,
            live: 0,
        };
        for &leaf in &nodes.leaves {
            // SAFETY: an installed leaf of `LEAF_LEN` slots, freed only by the drop.
            for line in unsafe { std::slice::from_raw_parts(leaf, LEAF_LEN) } {
                c.recorded += line.0.recorded.load(Ordering::Relaxed);
                c.live += u64::from(line.0.key.load(Ordering::Relaxed) != EMPTY);
            }
        }
        c
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let nodes = self.nodes.get_mut();
        for &leaf in &nodes.leaves {
            // SAFETY: built as a boxed slice of `LEAF_LEN` slots by `install`, freed once.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(leaf, LEAF_LEN)) });
        }
        for &mid in &nodes.mids {
            // SAFETY: built as a boxed slice of `MID_LEN` pointers by `install`, freed once.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(mid, MID_LEN)) });
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn rec(dev: u64) -> Record {
        Record {
            dev,
            size: 4096,
            held: Held::Single,
        }
    }

    fn expect(dev: u64) -> Expect {
        Expect {
            dev,
            kind: Kind::Single,
            size: 4096,
        }
    }

    #[test]
    fn a_slot_its_record_and_its_count_fit_one_cache_line() {
        assert!(std::mem::size_of::<Slot>() <= 64);
        assert_eq!(std::mem::size_of::<Line<Slot>>(), 64);
    }

    /// IOVA pfns 1 to 2^20 - 1, 4 KiB granules: a 32-bit space.
    const END: u64 = (1 << 20) - 1;

    #[test]
    fn many_mappings_over_many_leaves_find_each_one() {
        let r = Registry::new(END, 12).unwrap();
        // Mappings spread over many leaves (a few under Miri), a few in each.
        let leaves: u64 = if cfg!(miri) { 4 } else { 64 };
        let pfns: Vec<u64> = (1..=leaves * LEAF_LEN as u64).map(|i| i * 7).collect();
        for &p in &pfns {
            r.insert(p << 12, rec(p)).unwrap();
        }
        for &p in &pfns {
            let dma = p << 12;
            let other = Expect {
                dev: p + 1,
                ..expect(p)
            };
            assert_eq!(r.take(dma, other), Err(DmaError::NotMapped { dma }));
            let longer = Expect {
                size: 8192,
                ..expect(p)
            };
            let mismatch = |dma, size| DmaError::Mismatch {
                dma,
                size,
                mapped: 4096,
            };
            assert_eq!(r.take(dma, longer), Err(mismatch(dma, 8192)));
            // Inside the mapping's first granule, but not where it starts.
            assert_eq!(r.take(dma + 8, expect(p)), Err(mismatch(dma + 8, 4096)));
            let list = Expect {
                kind: Kind::List,
                ..expect(p)
            };
            assert_eq!(r.take(dma, list), Err(mismatch(dma, 4096)));
            assert_eq!(
                r.take((p + 1) << 12, expect(p + 1)),
                Err(DmaError::NotMapped { dma: (p + 1) << 12 })
            );
        }
        let counts = r.counts();
        assert_eq!(
            (counts.recorded, counts.live),
            (pfns.len() as u64, pfns.len() as u64)
        );
        let taken = Taken {
            granules: 1,
            bounce_buffer: None,
        };
        for &p in pfns.iter().rev() {
            assert_eq!(r.take(p << 12, expect(p)), Ok(taken));
            assert!(r.take(p << 12, expect(p)).is_err(), "taken once");
        }
        assert_eq!(r.counts().live, 0);
    }

    /// Addresses in pfn 0 (the slot's sentinels among them) are never mapped: refused, and
    /// nothing changes, whether the slots are empty or hold (stale or live) records.
    #[test]
    fn addresses_in_pfn_zero_are_refused() {
        let r = Registry::new(END, 12).unwrap();
        let refused = |r: &Registry| {
            for dma in [EMPTY, BUSY, 0x10, 0xfff] {
                let e = Expect {
                    size: 0,
                    ..expect(0)
                };
                assert_eq!(r.take(dma, e), Err(DmaError::NotMapped { dma }));
                assert_eq!(r.take(dma, expect(0)), Err(DmaError::NotMapped { dma }));
            }
        };
        refused(&r);
        let pfns: Vec<u64> = (1..=2 * LEAF_LEN as u64).collect();
        for &p in &pfns {
            r.insert(p << 12, rec(0)).unwrap();
        }
        // Pfn 0 shares its leaf with pfn 1: its slot exists, empty.
        assert!(r.has_leaf(0));
        refused(&r);
        for &p in &pfns {
            assert!(r.take(p << 12, expect(0)).is_ok());
        }
        // Every slot empty now, its record stale.
        refused(&r);
        assert_eq!(
            r.counts(),
            Counts {
                recorded: pfns.len() as u64,
                live: 0
            }
        );
    }

    #[test]
    fn a_taken_record_gives_its_span_and_bounce_buffer() {
        let r = Registry::new(END, 12).unwrap();
        let single = |size, held| Record { dev: 1, size, held };
        // 0x10 into its granule, 0x1ff0 bytes: two granules; bounced.
        r.insert(0x5010, single(0x1ff0, Held::Bounced(0x9000)))
            .unwrap();
        // 0x10 into its granule, 0x1ff1 bytes: three granules.
        r.insert(0x8010, single(0x1ff1, Held::Single)).unwrap();
        // A list whose span is longer than its size.
        r.insert(0xa000, single(0x1000, Held::List { granules: 4 }))
            .unwrap();
        r.insert(0xf000, single(0x1000, Held::Resource)).unwrap();
        let e = |kind, size| Expect { dev: 1, kind, size };
        let t = |granules, bounce_buffer| Taken {
            granules,
            bounce_buffer,
        };
        assert_eq!(
            r.take(0x5010, e(Kind::Single, 0x1ff0)),
            Ok(t(2, Some(0x9000)))
        );
        assert_eq!(r.take(0x8010, e(Kind::Single, 0x1ff1)), Ok(t(3, None)));
        assert_eq!(r.take(0xa000, e(Kind::List, 0x1000)), Ok(t(4, None)));
        assert_eq!(r.take(0xf000, e(Kind::Resource, 0x1000)), Ok(t(1, None)));
        assert_eq!(
            r.counts(),
            Counts {
                recorded: 4,
                live: 0
            }
        );
    }

    /// Bad input never allocates: a take of an address whose leaf does not exist (never
    /// mapped, beyond the IOVA space, beyond any root) is `NotMapped` and leaves only the
    /// root allocated; an insert beyond the space is `NoMemory` and changes nothing.
    #[test]
    fn bad_addresses_allocate_nothing() {
        let r = Registry::new(END, 12).unwrap();
        let root = r.footprint();
        assert_eq!(root, 8 * ((END >> (LEAF_BITS + MID_BITS)) as usize + 1));
        let beyond_root = (END + 1) << (LEAF_BITS + MID_BITS + 12);
        for dma in [0x5000, END << 12, (END + 1) << 12, beyond_root, u64::MAX] {
            assert_eq!(r.take(dma, expect(1)), Err(DmaError::NotMapped { dma }));
            assert!(!r.has_leaf(dma));
        }
        assert_eq!(r.insert(beyond_root, rec(1)), Err(DmaError::NoMemory));
        assert_eq!(r.insert(!0xfff, rec(1)), Err(DmaError::NoMemory));
        assert_eq!(r.footprint(), root);
        assert_eq!(
            r.counts(),
            Counts {
                recorded: 0,
                live: 0
            }
        );
        // A leaf exists once a mapping starts in its range; a neighbour's take is still refused.
        r.insert(0x5000, rec(1)).unwrap();
        assert!(r.has_leaf(0x6000));
        assert_eq!(
            r.take(0x6000, expect(1)),
            Err(DmaError::NotMapped { dma: 0x6000 })
        );
        assert_eq!(r.take(0x5000, expect(1)).map(|t| t.granules), Ok(1));
        assert_eq!(
            r.take(0x5000, expect(1)),
            Err(DmaError::NotMapped { dma: 0x5000 })
        );
    }

    /// The memory bound: 255 neighbouring IOVAs in flight (a lazy domain's ring) take four
    /// leaves of 4 KiB and one middle node of 32 KiB beside the root; mapping them again
    /// allocates nothing more.
    #[test]
    fn a_ring_of_neighbours_fills_four_leaves() {
        let r = Registry::new(END, 12).unwrap();
        let root = r.footprint();
        let first = END + 1 - 256;
        for round in 0..2 {
            for p in first..first + 255 {
                r.insert(p << 12, rec(1)).unwrap();
            }
            assert_eq!(r.footprint(), root + 4 * 4096 + 32 * 1024, "round {round}");
            for p in first..first + 255 {
                assert!(r.take(p << 12, expect(1)).is_ok());
            }
        }
        assert_eq!(
            r.counts(),
            Counts {
                recorded: 510,
                live: 0
            }
        );
    }
}
