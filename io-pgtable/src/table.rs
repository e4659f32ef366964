//! Table memory: zeroed, aligned arrays of atomic descriptors, their ownership, their RCU
//! retirement, and the allocation counters.
//!
//! Tables are aligned arrays of `dma_sync::atomic::AtomicU64` (aligned to the granule, or the
//! whole concatenated table). The root is one allocation; every level below it (all one size)
//! comes from the page table's slab (module `slab`). A table descriptor's output address is the
//! table's process address, checked to fit the descriptor's output-address field
//! (`Error::NoMemory` otherwise), so a dump reads as hardware would see it. Descriptor bits
//! (valid/type, AttrIndx/MemAttr, NS, AP/S2AP, SH, AF, nG, XN, NSTable) follow Linux's
//! `arm_lpae_prot_to_pte`.
//!
//! Retirement hands a `RetiredTables` box (the subtree's tables plus the counters) to
//! `Guard::defer_retire`; its `Retire::poison` overwrites every descriptor (under loom, the
//! free), its `Drop` releases the memory and counts it. [`Stats`] `{ allocated, discarded,
//! retired, freed }`: at quiescence `allocated − discarded − retired` equals the tables
//! reachable from the root, and `freed` reaches `discarded + retired` once grace periods run
//! (tables kept after a walk flush that unwound: when the page table is dropped).

use crate::error::Error;
use crate::points::RETIRE_RCU;
use crate::slab::Slab;
use dma_sync::atomic::{AtomicU64, Ordering::Relaxed, Poison};
use dma_sync::rcu::{Guard, Retire};
use dma_sync::Arc;
use std::alloc::Layout;
use std::ptr::NonNull;

/// What a retired descriptor is overwritten with under loom (never read by correct code).
const POISON: u64 = 0xdead_0000_0000_dead;

/// Allocation counters shared by a page table and its retired levels.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub allocated: AtomicU64,
    pub discarded: AtomicU64,
    pub retired: AtomicU64,
    pub freed: AtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            allocated: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            freed: AtomicU64::new(0),
        }
    }
}

/// Table-level accounting, a snapshot of [`crate::PageTable::stats`].
///
/// Every table is allocated once and ends exactly one way: discarded (lost an install race,
/// freed at once), retired (unlinked, freed after a grace period), or freed with the page
/// table. At quiescence `allocated - discarded - retired` equals the number of tables
/// reachable from the root, and `freed` catches up with `discarded + retired` once the
/// grace periods have run (except for tables an unmap keeps because its
/// [`TlbOps::flush_walk`](crate::TlbOps::flush_walk) unwound: freed with the page table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Tables allocated, the root included.
    pub allocated: u64,
    /// Tables that lost an install race and were freed without being published.
    pub discarded: u64,
    /// Tables unlinked and handed to RCU.
    pub retired: u64,
    /// Tables whose memory was released.
    pub freed: u64,
}

impl Stats {
    /// Tables that should be reachable from the root: allocated, not discarded, not retired.
    pub fn linked(&self) -> u64 {
        self.allocated - self.discarded - self.retired
    }
}

/// One table's memory: `len` atomic descriptors at an address aligned to `align`, so the
/// address fits a table descriptor's output-address field.
pub(crate) struct TableMem {
    ptr: NonNull<AtomicU64>,
    len: usize,
    align: usize,
    /// Where the memory goes back to: the page table's slab, or (the root) the allocator.
    slab: Option<std::sync::Arc<Slab>>,
}

// SAFETY: the memory holds only atomics and is owned by this value alone.
unsafe impl Send for TableMem {}
// SAFETY: shared access is through `&AtomicU64` only.
unsafe impl Sync for TableMem {}

impl TableMem {
    pub(crate) fn layout(len: usize, align: usize) -> Result<Layout, Error> {
        Layout::array::<AtomicU64>(len)
            .and_then(|l| l.align_to(align))
            .map_err(|_| Error::NoMemory)
    }

    /// Allocate a zeroed table whose address fits `addr_bits` bits.
    pub(crate) fn alloc(
        len: usize,
        align: usize,
        addr_bits: u32,
        stats: &Counters,
    ) -> Result<Self, Error> {
        let layout = Self::layout(len, align)?;
        if crate::faults::TABLE_ALLOC.fail() {
            // As a null from the allocator: nothing allocated, nothing counted.
            return Err(Error::NoMemory);
        }
        // SAFETY: `len > 0` (every level has at least two entries), so the layout is non-zero.
        let raw = unsafe { std::alloc::alloc(layout) } as *mut AtomicU64;
        let ptr = NonNull::new(raw).ok_or(Error::NoMemory)?;
        // SAFETY: a fresh allocation of `len` descriptors, ours alone.
        let table = unsafe { Self::init(ptr, len, align, None) };
        stats.allocated.fetch_add(1, Relaxed);
        if (table.addr() >> addr_bits) != 0 {
            // Not representable in a descriptor: give it back (counted as never published).
            stats.discarded.fetch_add(1, Relaxed);
            stats.freed.fetch_add(1, Relaxed);
            return Err(Error::NoMemory);
        }
        Ok(table)
    }

    /// Zero the `len` descriptors at `ptr` and own them, returning them to `slab` (or, without
    /// one, to the global allocator) when dropped.
    ///
    /// # Safety
    /// `ptr` is memory for `len` descriptors aligned to `align`, from `slab` (or allocated
    /// with [`TableMem::layout`]), that nobody else owns or uses.
    pub(crate) unsafe fn init(
        ptr: NonNull<AtomicU64>,
        len: usize,
        align: usize,
        slab: Option<std::sync::Arc<Slab>>,
    ) -> Self {
        for i in 0..len {
            // SAFETY: `i < len`, inside memory the caller gives us; `AtomicU64::new`
            // initialises it (loom atomics are objects, so it is written element by element).
            unsafe { ptr.as_ptr().add(i).write(AtomicU64::new(0)) };
        }
        // Walkers reach it under RCU: loom builds check it is freed only after them.
        dma_sync::rcu::track(ptr.as_ptr() as *const u8, len * size_of::<AtomicU64>());
        TableMem {
            ptr,
            len,
            align,
            slab,
        }
    }

    /// The address a table descriptor carries.
    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    #[inline]
    pub(crate) fn entries(&self) -> &[AtomicU64] {
        // SAFETY: `len` initialised atomics live at `ptr` while `self` does.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Give up ownership: the table now belongs to the descriptor that points at it.
    pub(crate) fn into_addr(mut self) -> u64 {
        let addr = self.addr();
        // The slab reference goes now; `from_addr` takes a new one.
        drop(self.slab.take());
        std::mem::forget(self);
        addr
    }

    /// Take back ownership of a table from its address.
    ///
    /// # Safety
    /// `addr` came from [`TableMem::into_addr`] of a table with this `len` and `align`, from
    /// `slab` (or, with `None`, the global allocator), and no other owner of it exists.
    pub(crate) unsafe fn from_addr(
        addr: u64,
        len: usize,
        align: usize,
        slab: Option<std::sync::Arc<Slab>>,
    ) -> Self {
        let ptr = NonNull::new(addr as *mut AtomicU64).expect("table addresses are non-null");
        TableMem {
            ptr,
            len,
            align,
            slab,
        }
    }
}

impl Drop for TableMem {
    fn drop(&mut self) {
        // SAFETY: `self` owns `len` initialised atomics.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.len,
            ))
        };
        match self.slab.take() {
            Some(slab) => {
                // Back on the slab's free list: a free as far as loom's reader check goes.
                dma_sync::rcu::released(self.ptr.as_ptr() as *const u8);
                slab.release(self.ptr)
            }
            None => {
                let layout =
                    Self::layout(self.len, self.align).expect("layout was valid at allocation");
                // SAFETY: allocated by `alloc` with this layout, owned by `self`.
                unsafe { std::alloc::dealloc(self.ptr.as_ptr() as *mut u8, layout) };
            }
        }
    }
}

/// The descriptors of a table at `addr`, for a walk under an RCU guard.
///
/// # Safety
/// `addr` was read from a descriptor while `guard` was pinned (or the caller owns the range
/// the table serves), and `len` is the table's length; tables are freed only through
/// [`retire`] after being unlinked.
#[inline]
pub(crate) unsafe fn entries_at(guard: &Guard, addr: u64, len: usize) -> &[AtomicU64] {
    // SAFETY: by the caller's contract the table outlives the guard.
    unsafe { guard.deref_slice(addr as *const AtomicU64, len) }
}

/// An unlinked subtree waiting for its grace period: its tables, freed (or, under loom,
/// poisoned) together.
struct RetiredTables {
    tables: Vec<TableMem>,
    stats: Arc<Counters>,
}

impl Retire for RetiredTables {
    fn poison(&mut self) {
        for t in &mut self.tables {
            // SAFETY: retirement runs after the grace period, so this is the only reference.
            let entries = unsafe { std::slice::from_raw_parts_mut(t.ptr.as_ptr(), t.len) };
            for e in entries {
                e.poison(POISON);
            }
        }
        // Under loom, poisoning is the free (the memory is parked until the model ends).
        self.stats
            .freed
            .fetch_add(self.tables.len() as u64, Relaxed);
    }
}

impl Drop for RetiredTables {
    fn drop(&mut self) {
        #[cfg(not(loom))]
        self.stats
            .freed
            .fetch_add(self.tables.len() as u64, Relaxed);
    }
}

/// Hand an unlinked subtree to RCU: its memory is released once every reader pinned now has
/// left its critical section.
pub(crate) fn retire(guard: &Guard, tables: Vec<TableMem>, stats: &Arc<Counters>) {
    stats.retired.fetch_add(tables.len() as u64, Relaxed);
    let boxed = Box::new(RetiredTables {
        tables,
        stats: stats.clone(),
    });
    if !RETIRE_RCU.on() {
        // Weakened (loom only): back to the slab under the readers' feet.
        drop(boxed);
        return;
    }
    // SAFETY: the subtree is unlinked (or, in the weakened loom variant, about to be), owned
    // by this box alone, and retired once.
    unsafe { guard.defer_retire(Box::into_raw(boxed)) };
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn alloc_is_zeroed_aligned_and_freed() {
        let stats = Counters::new();
        let t = TableMem::alloc(512, 4096, 48, &stats).unwrap();
        assert_eq!(t.addr() % 4096, 0);
        assert!(t.entries().iter().all(|e| e.load(Relaxed) == 0));
        t.entries()[7].store(9, Relaxed);
        let addr = t.into_addr();
        // SAFETY: reclaiming the table just released, same geometry.
        let t = unsafe { TableMem::from_addr(addr, 512, 4096, None) };
        assert_eq!(t.entries()[7].load(Relaxed), 9);
        drop(t);
        assert_eq!(stats.allocated.load(Relaxed), 1);
    }

    #[test]
    fn unrepresentable_address_is_refused() {
        let stats = Counters::new();
        assert_eq!(
            TableMem::alloc(4, 4096, 12, &stats).err(),
            Some(Error::NoMemory)
        );
        assert_eq!(stats.freed.load(Relaxed), stats.allocated.load(Relaxed));
    }

    #[test]
    fn retired_tables_are_freed_once() {
        let stats = Arc::new(Counters::new());
        let tables = (0..3)
            .map(|_| TableMem::alloc(4, 4096, 48, &stats).unwrap())
            .collect();
        retire(&dma_sync::rcu::pin(), tables, &stats);
        for _ in 0..64 {
            if stats.freed.load(Relaxed) == 3 {
                break;
            }
            dma_sync::rcu::pin().flush();
        }
        let freed = stats.freed.load(Relaxed);
        assert!(
            freed == 0 || freed == 3,
            "a subtree is freed together, once: {freed}"
        );
        assert_eq!(stats.retired.load(Relaxed), 3);
    }
}
