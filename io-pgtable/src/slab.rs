//! Table levels below the root come from large contiguous chunks, not one allocation each.
//!
//! A walk over many tables touches one CPU page per table either way; what the allocator
//! decides is how those pages lie. Separately allocated 4 KiB-aligned tables are scattered
//! (and each may cost the allocator a padded block twice its size), so a translation over a
//! large table set misses the CPU's TLB and page-walk caches on every level. Here the tables of
//! one page table sit side by side in chunks that grow geometrically up to [`CHUNK_BYTES`]
//! (aligned to it, and on Linux advised as huge-page candidates with their pages dropped, so
//! that even memory the allocator recycles faults in a huge page), and freed tables go back to
//! a free list of the same page table for reuse.
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

/// The largest chunk: a (huge-page sized) 2 MiB.
pub(crate) const CHUNK_BYTES: usize = 2 << 20;
/// Tables in the first chunk; each further chunk doubles, up to [`CHUNK_BYTES`].
const FIRST_CHUNK_TABLES: usize = 4;

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
    /// Tables in the next chunk.
    next_tables: usize,
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
                next_tables: FIRST_CHUNK_TABLES,
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
                None => self.grow(&mut s, addr_bits)?,
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

    /// Allocate the next chunk, keep its first table for the caller and free the rest.
    fn grow(&self, s: &mut State, addr_bits: u32) -> Result<NonNull<AtomicU64>, Error> {
        let stride = self.table.size();
        let tables = s.next_tables.min(CHUNK_BYTES / stride).max(1);
        let bytes = tables.checked_mul(stride).ok_or(Error::NoMemory)?;
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
        advise_huge(base, bytes);
        s.chunks.push((base, layout));
        s.next_tables = tables * 2;
        let table = |i: usize| {
            // SAFETY: `i < tables`: inside the chunk just allocated.
            let p = unsafe { base.as_ptr().add(i * stride) } as *mut AtomicU64;
            NonNull::new(p).expect("inside a non-null allocation")
        };
        s.free.extend((1..tables).rev().map(table));
        Ok(table(0))
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

/// Ask Linux to back a full chunk with a huge page (transparent huge pages in `madvise`
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
    fn chunks_grow_to_the_huge_page_size() {
        let stats = Counters::new();
        // Four-entry tables padded to 4 KiB: the chunk sizes of 4 KiB tables, little to zero
        // (Miri).
        let slab = Slab::new(4, 4096).unwrap();
        let tables: Vec<_> = (0..1100).map(|_| slab.alloc(48, &stats).unwrap()).collect();
        let s = slab.state.lock().unwrap();
        let sizes: Vec<usize> = s.chunks.iter().map(|(_, l)| l.size() / 4096).collect();
        assert_eq!(sizes, [4, 8, 16, 32, 64, 128, 256, 512, 512]);
        assert_eq!(
            s.chunks.last().unwrap().0.as_ptr() as usize % CHUNK_BYTES,
            0
        );
        drop(s);
        drop(tables);
        assert_eq!(
            slab.state.lock().unwrap().free.len(),
            4 + 8 + 16 + 32 + 64 + 128 + 256 + 1024
        );
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
