//! The physical floor: what the hardware charges for the steps a DMA-mapping fast path cannot
//! avoid. Every "≤ k× floor" target of the suite is a ratio against one of these, measured in
//! the same run.
//!
//! * an uncontended compare-and-swap on a line the thread owns (the cost of one atomic RMW);
//! * a 4-level load chase through radix tables laid out like a page table, with 8-byte entries
//!   as an LPAE table has, so N pages occupy the same bytes as N mapped 4 KiB pages (the cost of
//!   a table walk with no synchronisation at all), its tables in memory of their own, 2 MiB
//!   aligned and advised as huge-page candidates before first touch (an [`Arena`]: no table
//!   placement our page table gets can beat it), in two kinds:
//!   - **dependent** (latency): each walk starts at the page the previous walk returned, so
//!     walks cannot overlap — a device that needs one translation before its next access;
//!   - **independent** (throughput): the addresses come from a counter, so the CPU overlaps
//!     several walks — a device streaming through addresses it already knows;
//! * a copy between two page-aligned buffers (bounce slots are page-aligned; a misaligned
//!   destination makes glibc's `rep movsb` twice as slow at 4 KiB), by two routines: glibc's
//!   `memcpy` and swiotlb-core's own copy of bounce memory ([`swiotlb_core::copy_bytes`]),
//!   which is faster on some machines. A bounce is compared with the faster of the two, so
//!   its ratio never credits the library with a copy faster than the floor's.

use crate::cases::alloc::XorShift;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// An uncontended compare-and-swap on a cache line owned by the calling thread.
///
/// ```
/// let mut op = dma_bench::floor::cas_op();
/// op();
/// op();
/// ```
pub fn cas_op() -> impl FnMut() {
    #[repr(align(128))]
    struct Line(AtomicU64);
    let line = Box::new(Line(AtomicU64::new(0)));
    let mut expect = 0u64;
    move || {
        let r = black_box(&line.0).compare_exchange(
            expect,
            expect + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        expect = match r {
            Ok(v) => v + 1,
            Err(v) => v,
        };
    }
}

/// Entries per radix table (9 bits of address per level, as a 4 KiB-granule page table).
pub const FANOUT: usize = 512;

/// A random cyclic order of the pages `first_page ..+ pages`: following it from any page visits
/// every page once before returning. The dependent chase and the dependent translations follow
/// the same cycle (the page table maps each page to its successor's frame).
///
/// ```
/// let c = dma_bench::floor::Cycle::new(100, 5, 1);
/// let mut p = 100;
/// let mut seen = Vec::new();
/// for _ in 0..5 {
///     seen.push(p);
///     p = c.next(p);
/// }
/// assert_eq!(p, 100);
/// seen.sort();
/// assert_eq!(seen, [100, 101, 102, 103, 104]);
/// ```
#[derive(Debug, Clone)]
pub struct Cycle {
    first_page: u64,
    /// Successor of each page, as an offset from `first_page`.
    next: Vec<u32>,
}

impl Cycle {
    /// A random cycle through `pages` pages (at least one, fewer than 2³²) from `first_page`.
    pub fn new(first_page: u64, pages: u64, seed: u64) -> Self {
        let n = pages.clamp(1, u64::from(u32::MAX)) as usize;
        // Sattolo's algorithm: a uniformly random permutation with a single cycle.
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut rng = XorShift::new(seed);
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u64) as usize);
        }
        let mut next = vec![0u32; n];
        for i in 0..n {
            next[order[i] as usize] = order[(i + 1) % n];
        }
        Cycle { first_page, next }
    }

    /// The first page.
    pub fn first_page(&self) -> u64 {
        self.first_page
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.next.len() as u64
    }

    /// The page after `page` (`page` must be in the cycle).
    #[inline]
    pub fn next(&self, page: u64) -> u64 {
        self.first_page + u64::from(self.next[(page - self.first_page) as usize])
    }
}

/// A 4-level radix tree of plain `u64` entries covering a set of pages: the same shape and size
/// a 4-level page table walk follows, without any atomics, guards or checks.
///
/// Its tables lie in one [`Arena`] sized for all of them up front, 2 MiB aligned and advised
/// as huge-page candidates before anything touches them: at least as favourable a placement
/// as io-pgtable's slab gives its tables (2 MiB chunks too, the first advised and collapsed
/// only once full), so the chase stays the best case a walk over the same bytes can have.
#[derive(Debug)]
pub struct Chase {
    /// Tables of all levels; an entry of levels 0–2 is the index of the next table, an entry of
    /// level 3 is the page that follows on the [`Cycle`].
    tables: Arena,
}

impl Chase {
    /// Tables mapping every page of `cycle` to its successor.
    ///
    /// ```
    /// use dma_bench::floor::{Chase, Cycle};
    /// let cycle = Cycle::new(1 << 20, 4096, 1);
    /// let c = Chase::new(&cycle);
    /// assert_eq!(c.lookup(1 << 20), cycle.next(1 << 20));
    /// ```
    pub fn new(cycle: &Cycle) -> Self {
        let first = cycle.first_page();
        let last = first + cycle.pages() - 1;
        // The root, then one table per distinct prefix of the pages at each lower level.
        let count = 1
            + (1..4)
                .map(|level| {
                    let shift = 9 * (4 - level);
                    ((last >> shift) - (first >> shift) + 1) as usize
                })
                .sum::<usize>();
        let mut tables = Arena::new(count);
        let mut used = 1;
        for page in first..=last {
            let mut t = 0usize;
            for level in 0..3 {
                let idx = Self::index(page, level);
                if tables[t][idx] == u64::MAX {
                    tables[t][idx] = used as u64;
                    used += 1;
                }
                t = tables[t][idx] as usize;
            }
            tables[t][Self::index(page, 3)] = cycle.next(page);
        }
        assert_eq!(used, count, "tables counted up front");
        Chase { tables }
    }

    #[inline(always)]
    fn index(page: u64, level: usize) -> usize {
        ((page >> (9 * (3 - level))) as usize) & (FANOUT - 1)
    }

    /// Walk the four levels for `page`: four dependent loads.
    #[inline]
    pub fn lookup(&self, page: u64) -> u64 {
        let mut t = 0usize;
        for level in 0..3 {
            t = self.tables[t][Self::index(page, level)] as usize;
        }
        self.tables[t][Self::index(page, 3)]
    }

    /// The share of the tables' 4 KiB pages that transparent huge pages back now (`None` where
    /// the kernel does not say; see [`crate::hugepages`]).
    pub fn huge_page_share(&self) -> Option<f64> {
        crate::hugepages::share(self.tables.iter().map(|t| t.as_ptr() as u64))
    }

    /// Bytes of all tables.
    pub fn bytes(&self) -> usize {
        self.tables.len() * std::mem::size_of::<[u64; FANOUT]>()
    }

    /// The independent chase: walks the pages `first_page ..+ pages` (a power of two) in a
    /// scrambled order from a counter, one per call.
    pub fn independent_op(&self, first_page: u64, pages: u64, seed: u64) -> impl FnMut() + '_ {
        let mut next = scrambled_pages(first_page, pages, seed);
        move || {
            black_box(self.lookup(black_box(next())));
        }
    }

    /// The dependent chase: each walk starts at the page the previous one returned, from
    /// `start` on.
    pub fn dependent_op(&self, start: u64) -> impl FnMut() + '_ {
        let mut page = start;
        move || page = black_box(self.lookup(page))
    }
}

/// Page numbers `first_page ..+ pages` (rounded down to a power of two) in a scrambled order,
/// cheaply: the address stream of the independent chase and of every independent translation.
pub fn scrambled_pages(first_page: u64, pages: u64, seed: u64) -> impl FnMut() -> u64 {
    let mask = if pages.is_power_of_two() {
        pages - 1
    } else {
        (pages.next_power_of_two() >> 1) - 1
    };
    let mut i = seed;
    move || {
        i = i.wrapping_add(1);
        // Multiplying by an odd constant permutes the offsets modulo a power of two.
        first_page + ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) & mask)
    }
}

/// Bytes of a page.
pub const PAGE: usize = 4096;

/// Bytes of a (transparent) huge page.
pub const HUGE_PAGE: usize = 2 << 20;

/// Radix tables filled with `u64::MAX` in memory of their own: a private anonymous mapping,
/// its tables starting on a 2 MiB boundary and advised `MADV_HUGEPAGE` before the fill first
/// touches them, so the kernel backs them with huge pages whenever it can (in the `madvise`
/// THP mode, only advised memory gets them, and memory touched before the advice keeps its
/// 4 KiB pages). Fresh from the kernel, never memory the heap handed out before.
pub struct Arena {
    /// The mapping (one huge page longer than the tables, for the alignment).
    map: NonNull<u8>,
    map_len: usize,
    /// The first table, in the mapping.
    tables: NonNull<[u64; FANOUT]>,
    len: usize,
}

// SAFETY: the arena owns its mapping; shared access is read-only (`Deref`), writes need
// `&mut` (`DerefMut`), like a `Vec`.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    /// `len` tables (at least one) of `u64::MAX`.
    ///
    /// ```
    /// let a = dma_bench::floor::Arena::new(3);
    /// assert_eq!(a.len(), 3);
    /// assert_eq!(a.as_ptr() as usize % dma_bench::floor::HUGE_PAGE, 0);
    /// assert!(a.iter().all(|t| t.iter().all(|&e| e == u64::MAX)));
    /// ```
    pub fn new(len: usize) -> Self {
        let len = len.max(1);
        let bytes = (len * std::mem::size_of::<[u64; FANOUT]>()).next_multiple_of(HUGE_PAGE);
        let map_len = bytes + HUGE_PAGE;
        // SAFETY: a new private anonymous mapping; no memory of the program is affected.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            map != libc::MAP_FAILED,
            "cannot map {map_len} bytes for the chase tables"
        );
        let map = NonNull::new(map.cast::<u8>()).expect("mmap never returns null here");
        let offset = map.as_ptr().align_offset(HUGE_PAGE);
        // SAFETY: `offset < HUGE_PAGE`, so `bytes` from there lie inside the mapping.
        let base = unsafe { map.as_ptr().add(offset) };
        // SAFETY: advice on memory of this mapping, nothing touched yet; it changes no
        // contents, and a refusal only costs speed.
        unsafe { libc::madvise(base.cast(), bytes, libc::MADV_HUGEPAGE) };
        // SAFETY: writable memory of the mapping, `len` tables from `base`.
        unsafe { std::ptr::write_bytes(base, 0xff, len * std::mem::size_of::<[u64; FANOUT]>()) };
        Arena {
            map,
            map_len,
            tables: NonNull::new(base.cast()).expect("inside a non-null mapping"),
            len,
        }
    }
}

impl std::ops::Deref for Arena {
    type Target = [[u64; FANOUT]];

    fn deref(&self) -> &Self::Target {
        // SAFETY: `len` initialised tables, aligned (page-aligned), owned by the arena.
        unsafe { std::slice::from_raw_parts(self.tables.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Arena {
    fn deref_mut(&mut self) -> &mut Self::Target {
        // SAFETY: as in `deref`, borrowed exclusively through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.tables.as_ptr(), self.len) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no borrow of it outlives `self`.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("tables", &self.len)
            .field("at", &self.tables)
            .finish()
    }
}

/// A buffer of `len` bytes starting on a page boundary, without unsafe code: a heap block one
/// page larger, viewed from its first page boundary.
#[derive(Debug)]
pub struct PageAligned {
    block: Vec<u8>,
    offset: usize,
    len: usize,
}

impl PageAligned {
    /// `len` bytes of `fill`, page-aligned.
    ///
    /// ```
    /// let b = dma_bench::floor::PageAligned::new(100, 7);
    /// assert_eq!(b.as_slice().as_ptr() as usize % 4096, 0);
    /// assert_eq!(b.as_slice(), &[7u8; 100][..]);
    /// ```
    pub fn new(len: usize, fill: u8) -> Self {
        let block = vec![fill; len + PAGE];
        let offset = block.as_ptr().align_offset(PAGE).min(PAGE);
        PageAligned { block, offset, len }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.block[self.offset..self.offset + self.len]
    }

    /// The bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.block[self.offset..self.offset + self.len]
    }
}

/// `memcpy` of `size` bytes between two hot page-aligned buffers owned by the calling thread.
///
/// ```
/// let mut op = dma_bench::floor::memcpy_op(4096);
/// op();
/// ```
pub fn memcpy_op(size: usize) -> impl FnMut() {
    let src = PageAligned::new(size, 0xa5);
    let mut dst = PageAligned::new(size, 0);
    move || {
        dst.as_mut_slice()
            .copy_from_slice(black_box(src.as_slice()));
        black_box(dst.as_mut_slice());
    }
}

/// swiotlb-core's copy of bounce memory ([`swiotlb_core::copy_bytes`]) of `size` bytes
/// between two hot page-aligned buffers owned by the calling thread.
///
/// ```
/// let mut op = dma_bench::floor::own_copy_op(4096);
/// op();
/// ```
pub fn own_copy_op(size: usize) -> impl FnMut() {
    let src = PageAligned::new(size, 0xa5);
    let mut dst = PageAligned::new(size, 0);
    move || {
        swiotlb_core::copy_bytes(dst.as_mut_slice(), black_box(src.as_slice()));
        black_box(dst.as_mut_slice());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chase_maps_every_page_to_its_successor_and_nothing_else() {
        let cycle = Cycle::new(1000, 1500, 9);
        let c = Chase::new(&cycle);
        for p in 1000..2500 {
            assert_eq!(c.lookup(p), cycle.next(p));
        }
        assert_eq!(c.lookup(999), u64::MAX);
    }

    #[test]
    fn arena_huge_page_share_agrees_with_smaps() {
        // Two huge pages' worth of tables: the advised range is a mapping (VMA) of its own.
        let a = Arena::new(1024);
        let base = a.as_ptr() as u64;
        let Some(share) = crate::hugepages::share(crate::hugepages::region(base, 4 << 20)) else {
            return; // the kernel does not say here
        };
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_arena = false;
        let mut huge_kb = None;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
                {
                    in_arena = lo <= base && base < hi;
                    if in_arena {
                        assert_eq!(
                            (lo, hi),
                            (base, base + (4 << 20)),
                            "the advised range alone"
                        );
                    }
                    continue;
                }
            }
            if in_arena {
                if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                    huge_kb = Some(
                        kb.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<u64>()
                            .unwrap(),
                    );
                }
            }
        }
        let huge = huge_kb.expect("the arena's mapping is in smaps") as f64 * 1024.0;
        assert_eq!(share, huge / (4 << 20) as f64);
    }

    #[test]
    fn cycle_visits_every_page_once() {
        let cycle = Cycle::new(7, 1000, 3);
        let mut seen = vec![false; 1000];
        let mut p = 7;
        for _ in 0..1000 {
            assert!(!std::mem::replace(&mut seen[(p - 7) as usize], true));
            p = cycle.next(p);
        }
        assert_eq!(p, 7);
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn chase_of_n_pages_has_the_size_of_a_table_mapping_them() {
        // 1 Mi pages: 2048 leaf tables of 4 KiB, plus 4 + 1 + 1 upper tables.
        let c = Chase::new(&Cycle::new(1 << 20, 1 << 20, 1));
        assert_eq!(c.bytes(), (2048 + 4 + 1 + 1) * 4096);
    }

    #[test]
    fn scrambled_pages_stay_in_range_and_spread() {
        let mut next = scrambled_pages(64, 256, 3);
        let seen: std::collections::HashSet<u64> = (0..4096).map(|_| next()).collect();
        assert!(seen.iter().all(|p| (64..64 + 256).contains(p)));
        assert!(seen.len() > 128, "only {} distinct pages", seen.len());
    }

    #[test]
    fn page_aligned_buffers_of_odd_sizes() {
        for len in [0, 1, 4095, 4096, 65536] {
            let mut b = PageAligned::new(len, 1);
            assert_eq!(b.as_slice().as_ptr() as usize % PAGE, 0);
            assert_eq!(b.as_mut_slice().len(), len);
        }
    }
}
