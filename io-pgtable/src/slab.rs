//! Table levels below the root come from large contiguous chunks, not one allocation each.
//!
//! A walk over many tables touches one CPU page per table either way; what the allocator
//! decides is how those pages lie. Separately allocated 4 KiB-aligned tables are scattered
//! (and each may cost the allocator a padded block twice its size), so a translation over a
//! large table set misses the CPU's TLB and page-walk caches on every level. Here the tables of
//! one page table sit side by side in chunks of [`CHUNK_BYTES`], aligned to it, handed out
//! table by table in address order, and freed tables go back to a free list of the same page
//! table for reuse (before any new table is carved).
//!
//! Every chunk can lie on one huge page. The first is not advised when it is allocated: its
//! memory is only reserved, each table's page faults in (4 KiB) when the table is zeroed, so a
//! page table with a handful of tables costs a handful of pages. A one-mapping 4-level page
//! table (three tables below the root) measured 28.8 KiB resident in all where it took 24.8 KiB
//! when the first chunk held four tables (glibc writes its header for the aligned block on a
//! page of its own), and 4 MiB of address space instead of 29 KiB (to align 2 MiB, glibc maps
//! twice that). Once all of it is
//! handed out (a table set of 2 MiB: about 260 000 mapped 4 KiB pages) it is advised as a
//! huge-page candidate and, on Linux 6.1 and later, collapsed into one huge page at once
//! (`MADV_COLLAPSE`; on older kernels `khugepaged` may do it later). Every later chunk is only
//! allocated for a table set that large, so it is advised at once, its pages dropped first
//! (so that even memory the allocator recycles faults in a huge page).
//!
//! The free list is a plain mutex-protected stack: a table reaches it only through
//! [`TableMem`]'s drop, after the grace period that retired it (or before it was ever
//! published), so reuse needs no ordering of its own. The lock is `std`'s: nothing inside it
//! is a loom operation, so a model never switches threads while it is held, and retired tables
//! reach it under loom only when the execution's graveyard is dropped.

use crate::error::Error;
use crate::table::{Counters, TableMem};
use dma_sync::atomic::AtomicU64;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

/// A chunk: a (huge-page sized) 2 MiB.
pub(crate) const CHUNK_BYTES: usize = 2 << 20;

/// The table memory of one page table's non-root levels (all of one size).
pub(crate) struct Slab {
    /// Descriptors per table.
    len: usize,
    /// One table, its size padded to its alignment (the stride within a chunk).
    table: Layout,
    state: Mutex<State>,
}

struct State {
    free: Vec<NonNull<AtomicU64>>,
    chunks: Vec<(NonNull<u8>, Layout)>,
    /// Tables of the last chunk handed out so far (none carved from it is free or in use
    /// beyond these).
    carved: usize,
}

// SAFETY: the chunks and free tables are plain memory owned by the slab; access to the lists
// is under the mutex, and a table handed out is owned by its `TableMem` alone.
unsafe impl Send for Slab {}
// SAFETY: as above.
unsafe impl Sync for Slab {}

impl Slab {
    /// A slab of tables of `len` descriptors aligned to `align` (no memory yet).
    pub(crate) fn new(len: usize, align: usize) -> Result<Arc<Self>, Error> {
        let table = TableMem::layout(len, align)?.pad_to_align();
        Ok(Arc::new(Slab {
            len,
            table,
            state: Mutex::new(State {
                free: Vec::new(),
                chunks: Vec::new(),
                carved: 0,
            }),
        }))
    }

    /// A zeroed table whose address fits `addr_bits` bits, counted in `stats`.
    pub(crate) fn alloc(
        self: &Arc<Self>,
        addr_bits: u32,
        stats: &Counters,
    ) -> Result<TableMem, Error> {
        if crate::faults::TABLE_ALLOC.fail() {
            // As a failed chunk allocation: nothing allocated, nothing counted.
            return Err(Error::NoMemory);
        }
        let ptr = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            match s.free.pop() {
                Some(p) => p,
                None => self.carve(&mut s, addr_bits)?,
            }
        };
        // SAFETY: `ptr` is a free table slot of this slab: `len` descriptors of memory, owned
        // by nobody else now.
        let table =
            unsafe { TableMem::init(ptr, self.len, self.table.align(), Some(self.clone())) };
        stats
            .allocated
            .fetch_add(1, dma_sync::atomic::Ordering::Relaxed);
        Ok(table)
    }

    /// Take back the table at `ptr`, whose descriptors were dropped.
    pub(crate) fn release(&self, ptr: NonNull<AtomicU64>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.free.push(ptr);
    }

    /// Tables per chunk (a table larger than a chunk gets a chunk of its own).
    fn chunk_tables(&self) -> usize {
        (CHUNK_BYTES / self.table.size()).max(1)
    }

    /// The next table of the last chunk, allocating a new chunk when it is used up.
    fn carve(&self, s: &mut State, addr_bits: u32) -> Result<NonNull<AtomicU64>, Error> {
        let stride = self.table.size();
        let per_chunk = self.chunk_tables();
        let base = match s.chunks.last() {
            Some(&(base, _)) if s.carved < per_chunk => base,
            _ => {
                let base = self.grow(s, addr_bits)?;
                s.carved = 0;
                base
            }
        };
        // SAFETY: `carved < per_chunk`: inside the chunk.
        let p = unsafe { base.as_ptr().add(s.carved * stride) } as *mut AtomicU64;
        s.carved += 1;
        Ok(NonNull::new(p).expect("inside a non-null allocation"))
    }

    /// Allocate a new chunk (the last one is used up): the first only reserved, a later one
    /// advised for a huge page, with the one before it (the first, now full) advised too.
    fn grow(&self, s: &mut State, addr_bits: u32) -> Result<NonNull<u8>, Error> {
        let stride = self.table.size();
        let bytes = self
            .chunk_tables()
            .checked_mul(stride)
            .ok_or(Error::NoMemory)?;
        // A full-size chunk is aligned to its size, so a huge page can back it.
        let align = if bytes == CHUNK_BYTES {
            CHUNK_BYTES
        } else {
            self.table.align()
        };
        let layout = Layout::from_size_align(bytes, align).map_err(|_| Error::NoMemory)?;
        // SAFETY: `bytes >= stride > 0`.
        let base = NonNull::new(unsafe { std::alloc::alloc(layout) }).ok_or(Error::NoMemory)?;
        if (base.as_ptr() as u64 + bytes as u64 - 1) >> addr_bits != 0 {
            // Not representable in a table descriptor.
            // SAFETY: allocated just above with this layout.
            unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
            return Err(Error::NoMemory);
        }
        if let [(first, first_layout)] = s.chunks[..] {
            // The first chunk is full: every table of it was handed out.
            collapse_huge(first, first_layout.size());
        }
        if !s.chunks.is_empty() {
            advise_huge(base, bytes);
        }
        s.chunks.push((base, layout));
        Ok(base)
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // Every table handed out holds an `Arc` of the slab, so none is in use now.
        let s = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (base, layout) in s.chunks.drain(..) {
            // SAFETY: allocated in `grow` with this layout, freed once.
            unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
        }
    }
}

/// Ask Linux to back a new chunk with a huge page (transparent huge pages in `madvise`
/// mode); a refusal only costs speed.
///
/// The kernel gives a huge page when a fault finds none of the 2 MiB present, so advice alone
/// misses a chunk the allocator recycled from memory the process touched before (freed heap
/// memory keeps its 4 KiB pages): that happened to a third to two thirds of the chunks of a
/// table built after other large allocations came and went. The chunk's pages are dropped
/// too: nothing in it is initialised yet (each table is zeroed when handed out), so the first
/// table's zeroing faults the huge page in.
fn advise_huge(base: NonNull<u8>, bytes: usize) {
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    if bytes == CHUNK_BYTES {
        // SAFETY: the range is one live allocation of this process, whole pages (2 MiB
        // aligned and long) that nothing else shares, and nothing was written to it yet; the
        // first advice changes no contents, the second only makes its pages read as zero.
        unsafe {
            libc::madvise(base.as_ptr().cast(), bytes, libc::MADV_HUGEPAGE);
            libc::madvise(base.as_ptr().cast(), bytes, libc::MADV_DONTNEED);
        }
    }
    #[cfg(not(all(target_os = "linux", not(miri), not(loom))))]
    let _ = (base, bytes);
}

/// Ask Linux to back the first chunk, now full of tables in use, with a huge page: advised,
/// then collapsed at once (`MADV_COLLAPSE`, Linux 6.1 and later: the kernel copies the 4 KiB
/// pages into a huge page and swaps the mapping, transparently to every thread reading or
/// writing the tables meanwhile, as `khugepaged` does on its own). A refusal only costs speed.
fn collapse_huge(base: NonNull<u8>, bytes: usize) {
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    if bytes == CHUNK_BYTES {
        // SAFETY: the range is one live allocation of this process, whole pages (2 MiB
        // aligned and long) that nothing else shares; neither advice changes its contents.
        unsafe {
            libc::madvise(base.as_ptr().cast(), bytes, libc::MADV_HUGEPAGE);
            libc::madvise(base.as_ptr().cast(), bytes, libc::MADV_COLLAPSE);
        }
    }
    #[cfg(not(all(target_os = "linux", not(miri), not(loom))))]
    let _ = (base, bytes);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use dma_sync::atomic::Ordering::Relaxed;

    #[test]
    fn tables_are_contiguous_reused_and_zeroed() {
        let stats = Counters::new();
        let slab = Slab::new(512, 4096).unwrap();
        let a = slab.alloc(48, &stats).unwrap();
        let b = slab.alloc(48, &stats).unwrap();
        assert_eq!(b.addr(), a.addr() + 4096, "side by side in the first chunk");
        assert_eq!(a.addr() % 4096, 0);
        b.entries()[3].store(7, Relaxed);
        let addr = b.addr();
        drop(b);
        let c = slab.alloc(48, &stats).unwrap();
        assert_eq!(c.addr(), addr, "the freed table is reused first");
        assert!(c.entries().iter().all(|e| e.load(Relaxed) == 0));
        assert_eq!(stats.allocated.load(Relaxed), 3);
    }

    #[test]
    fn chunks_are_huge_page_sized_and_carved_in_order() {
        let stats = Counters::new();
        // Four-entry tables padded to 4 KiB: the chunks of 4 KiB tables, little to zero (Miri).
        let slab = Slab::new(4, 4096).unwrap();
        let tables: Vec<_> = (0..1100).map(|_| slab.alloc(48, &stats).unwrap()).collect();
        let s = slab.state.lock().unwrap();
        assert_eq!(s.chunks.len(), 3);
        assert!(s.chunks.iter().all(|&(base, layout)| {
            layout.size() == CHUNK_BYTES && base.as_ptr() as usize % CHUNK_BYTES == 0
        }));
        assert_eq!(s.carved, 1100 - 2 * 512);
        let in_order = tables.chunks(512).zip(&s.chunks).all(|(t, &(base, _))| {
            t.iter()
                .enumerate()
                .all(|(i, t)| t.addr() == base.as_ptr() as u64 + i as u64 * 4096)
        });
        assert!(
            in_order,
            "each chunk's tables side by side, in address order"
        );
        drop(s);
        drop(tables);
        // Only tables handed out are on the free list; the rest of the last chunk is carved
        // after them.
        assert_eq!(slab.state.lock().unwrap().free.len(), 1100);
    }

    #[test]
    fn a_table_as_large_as_a_chunk_gets_a_chunk_each() {
        // Four entries aligned (so padded) to a whole chunk: one table per chunk.
        let stats = Counters::new();
        let slab = Slab::new(4, CHUNK_BYTES).unwrap();
        let (a, b) = (
            slab.alloc(48, &stats).unwrap(),
            slab.alloc(48, &stats).unwrap(),
        );
        assert_eq!(a.addr() % CHUNK_BYTES as u64, 0);
        assert_eq!(b.addr() % CHUNK_BYTES as u64, 0);
        assert_ne!(a.addr(), b.addr());
        assert_eq!(slab.state.lock().unwrap().chunks.len(), 2);
    }

    #[test]
    fn unrepresentable_chunks_are_refused() {
        let stats = Counters::new();
        let slab = Slab::new(4, 4096).unwrap();
        assert_eq!(slab.alloc(12, &stats).err(), Some(Error::NoMemory));
        assert_eq!(stats.allocated.load(Relaxed), 0);
        assert!(slab.alloc(48, &stats).is_ok(), "the slab keeps working");
    }
}
