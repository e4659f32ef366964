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
//! Every chunk can lie on one huge page. A chunk is a mapping of its own (`mmap`, twice its
//! size reserved and the unaligned head and tail unmapped, so it takes just its 2 MiB of
//! address space, with `MAP_NORESERVE`: pages never touched are not charged as committed;
//! under Miri and loom, and off Linux, it comes from the global allocator). The first is not advised when it is mapped: its memory is only reserved, each table's page
//! faults in (4 KiB) when the table is zeroed, so a page table with a handful of tables costs
//! a handful of pages. A one-mapping 4-level page table (three tables below the root, a
//! thousand such tables measured through `/proc/self/status`) costs 20.8 KiB resident and
//! 2.01 MiB of address space, where a chunk from the global allocator cost 28.8 KiB resident
//! (glibc writes its header for the aligned block on a page of its own) and 4.01 MiB of
//! address space (to align 2 MiB, glibc maps twice that): a thousand page tables reserve
//! 2 GiB, not 4 GiB. Once all of the first chunk is handed out (a table set of 2 MiB: about
//! 260 000 mapped 4 KiB pages) it is advised as a huge-page candidate and, on Linux 6.1 and
//! later, collapsed into one huge page at once (`MADV_COLLAPSE`; on older kernels
//! `khugepaged` may do it later). Every later chunk is only
//! mapped for a table set that large, so it is advised at once; being a fresh mapping with no
//! page present, its first table's zeroing faults in a huge page.
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
    chunks: Vec<Chunk>,
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
            Some(c) if s.carved < per_chunk => c.base,
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
        let chunk = Chunk::new(bytes, self.table.align())?;
        let base = chunk.base;
        if (base.as_ptr() as u64 + bytes as u64 - 1) >> addr_bits != 0 {
            // Not representable in a table descriptor (the chunk is freed as it drops).
            return Err(Error::NoMemory);
        }
        if let [ref first] = s.chunks[..] {
            // The first chunk is full: every table of it was handed out.
            collapse_huge(first.base, first.layout.size());
        }
        if !s.chunks.is_empty() {
            advise_huge(base, bytes);
        }
        s.chunks.push(chunk);
        Ok(base)
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // Every table handed out holds an `Arc` of the slab, so none is in use now; each
        // chunk is freed as it drops.
        let s = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        s.chunks.clear();
    }
}

/// Whether full-size chunks are mapped directly (`mmap`) rather than taken from the global
/// allocator: on Linux, outside Miri and loom (which cannot map memory).
const MAPPED: bool = cfg!(all(target_os = "linux", not(miri), not(loom)));

/// One chunk of table memory, freed when dropped.
struct Chunk {
    base: NonNull<u8>,
    layout: Layout,
    /// Mapped with `mmap` (freed with `munmap`), else from the global allocator.
    mapped: bool,
}

impl Chunk {
    /// `bytes` of memory for tables aligned to `table_align`: a full-size chunk aligned to its
    /// size, so a huge page can back it.
    fn new(bytes: usize, table_align: usize) -> Result<Self, Error> {
        let align = if bytes == CHUNK_BYTES {
            CHUNK_BYTES
        } else {
            table_align
        };
        let layout = Layout::from_size_align(bytes, align).map_err(|_| Error::NoMemory)?;
        if MAPPED && bytes == CHUNK_BYTES {
            let base = map_aligned_chunk().ok_or(Error::NoMemory)?;
            return Ok(Chunk {
                base,
                layout,
                mapped: true,
            });
        }
        // SAFETY: `bytes >= stride > 0`.
        let base = NonNull::new(unsafe { std::alloc::alloc(layout) }).ok_or(Error::NoMemory)?;
        Ok(Chunk {
            base,
            layout,
            mapped: false,
        })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: mapped by `map_aligned_chunk` with this length, unmapped once; no table
            // of it is in use (see `Slab`'s drop and `grow`).
            unsafe { unmap(self.base, self.layout.size()) };
        } else {
            // SAFETY: allocated in `Chunk::new` with this layout, freed once.
            unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
        }
    }
}

// SAFETY: a chunk is plain memory owned by its slab; see `Slab`.
unsafe impl Send for Chunk {}

/// A fresh anonymous mapping of [`CHUNK_BYTES`] aligned to its size, or `None` when the
/// kernel refuses one.
///
/// Twice the size is mapped and the unaligned head and tail unmapped: only the chunk's own
/// 2 MiB of address space stays reserved (the global allocator, asked for a 2 MiB alignment,
/// keeps the whole twice-sized block). Nothing is committed until a page is touched.
fn map_aligned_chunk() -> Option<NonNull<u8>> {
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    {
        let len = 2 * CHUNK_BYTES;
        // SAFETY: a new private anonymous mapping at an address the kernel chooses; it
        // overlaps nothing of this process.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let (base, head, tail) = trim(raw as usize);
        // SAFETY: both ranges are whole pages (the mapping and `base` are page aligned) of the
        // mapping made just above, outside the chunk kept, and nothing refers to them.
        unsafe {
            if head != 0 {
                libc::munmap(raw, head);
            }
            if tail != 0 {
                libc::munmap((base + CHUNK_BYTES) as *mut libc::c_void, tail);
            }
        }
        NonNull::new(base as *mut u8)
    }
    #[cfg(not(all(target_os = "linux", not(miri), not(loom))))]
    None
}

/// Where the aligned chunk lies in a twice-sized mapping at `start` (page aligned): its
/// address, and the bytes before it and after it to unmap. (Linux 6.7 and later align an
/// anonymous mapping this large to 2 MiB themselves: then only the tail is unmapped.)
#[cfg_attr(not(all(target_os = "linux", not(miri), not(loom))), allow(dead_code))]
fn trim(start: usize) -> (usize, usize, usize) {
    let base = start.next_multiple_of(CHUNK_BYTES);
    let head = base - start;
    (base, head, CHUNK_BYTES - head)
}

/// Unmap a chunk made by [`map_aligned_chunk`].
///
/// # Safety
///
/// `base` and `bytes` are a whole chunk mapped by [`map_aligned_chunk`], not unmapped yet,
/// and nothing refers to its memory any more.
unsafe fn unmap(base: NonNull<u8>, bytes: usize) {
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    // SAFETY: the caller's. A failure (the kernel gives one only for bad arguments) would
    // leave the range mapped, never freed twice.
    unsafe {
        libc::munmap(base.as_ptr().cast(), bytes);
    }
    #[cfg(not(all(target_os = "linux", not(miri), not(loom))))]
    let _ = (base, bytes);
}

/// Ask Linux to back a new chunk with a huge page (transparent huge pages in `madvise`
/// mode); a refusal only costs speed.
///
/// The kernel gives a huge page when a fault finds none of the 2 MiB present. A chunk is a
/// fresh mapping of its own, with no page present, so the first table's zeroing faults the
/// huge page in. (When chunks came from the global allocator, recycled heap memory kept its
/// 4 KiB pages and a third to two thirds of the chunks of a table built after other large
/// allocations missed their huge page unless their pages were dropped first.)
fn advise_huge(base: NonNull<u8>, bytes: usize) {
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    if bytes == CHUNK_BYTES {
        // SAFETY: the range is one live mapping of this process, whole pages (2 MiB aligned
        // and long) that nothing else shares; the advice changes no contents.
        unsafe {
            libc::madvise(base.as_ptr().cast(), bytes, libc::MADV_HUGEPAGE);
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
        // SAFETY: the range is one live mapping of this process, whole pages (2 MiB aligned
        // and long) that nothing else shares; neither advice changes its contents.
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
        assert!(s.chunks.iter().all(|c| {
            c.layout.size() == CHUNK_BYTES
                && c.base.as_ptr() as usize % CHUNK_BYTES == 0
                && c.mapped == MAPPED
        }));
        assert_eq!(s.carved, 1100 - 2 * 512);
        let in_order = tables.chunks(512).zip(&s.chunks).all(|(t, c)| {
            t.iter()
                .enumerate()
                .all(|(i, t)| t.addr() == c.base.as_ptr() as u64 + i as u64 * 4096)
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

    #[test]
    fn a_mapping_is_trimmed_to_its_aligned_chunk() {
        for start in [
            0,
            4096,
            CHUNK_BYTES - 4096,
            CHUNK_BYTES,
            5 * CHUNK_BYTES + 0x3_4000,
        ] {
            let (base, head, tail) = trim(start);
            assert_eq!(base % CHUNK_BYTES, 0);
            assert_eq!(start + head, base, "the head ends where the chunk starts");
            assert_eq!(
                head + CHUNK_BYTES + tail,
                2 * CHUNK_BYTES,
                "all of the mapping"
            );
        }
    }
}
