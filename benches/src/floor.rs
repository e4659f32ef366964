//! The physical floor: what the hardware charges for the steps a DMA-mapping fast path cannot
//! avoid. Every target of the suite is a ratio against one of these, measured in the same run.
//!
//! * an uncontended compare-and-swap on a line the thread owns (the cost of one atomic RMW);
//! * a 4-level dependent load chase through radix tables laid out like a page table (the cost of
//!   a table walk with no synchronisation at all);
//! * `memcpy` of a hot buffer (the cost of a bounce copy).

use std::hint::black_box;
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

/// A 4-level radix tree of plain `u32` indices covering a set of pages: the same shape a
/// 4-level page table walk follows, without any atomics, guards or checks.
#[derive(Debug)]
pub struct Chase {
    /// Tables of all levels in one arena; an entry of levels 0–2 is the index of the next
    /// table, an entry of level 3 is the output page number.
    tables: Vec<[u32; FANOUT]>,
}

impl Chase {
    /// Build tables mapping pages `first_page .. first_page + pages` (4 KiB page numbers) to
    /// `page + 1`.
    ///
    /// ```
    /// let c = dma_bench::floor::Chase::new(1 << 20, 4096);
    /// assert_eq!(c.lookup(1 << 20), (1 << 20) + 1);
    /// ```
    pub fn new(first_page: u64, pages: u64) -> Self {
        let mut tables = vec![[u32::MAX; FANOUT]];
        for page in first_page..first_page + pages {
            let mut t = 0usize;
            for level in 0..3 {
                let idx = Self::index(page, level);
                if tables[t][idx] == u32::MAX {
                    tables.push([u32::MAX; FANOUT]);
                    tables[t][idx] = (tables.len() - 1) as u32;
                }
                t = tables[t][idx] as usize;
            }
            tables[t][Self::index(page, 3)] = (page + 1) as u32;
        }
        Chase { tables }
    }

    #[inline(always)]
    fn index(page: u64, level: usize) -> usize {
        ((page >> (9 * (3 - level))) as usize) & (FANOUT - 1)
    }

    /// Walk the four levels for `page`: four dependent loads.
    #[inline]
    pub fn lookup(&self, page: u64) -> u32 {
        let mut t = 0usize;
        for level in 0..3 {
            t = self.tables[t][Self::index(page, level)] as usize;
        }
        self.tables[t][Self::index(page, 3)]
    }

    /// An op that walks the pages `first_page ..+ pages` (a power of two) in a scrambled
    /// order, one per call.
    pub fn op(&self, first_page: u64, pages: u64, seed: u64) -> impl FnMut() + '_ {
        let mut next = scrambled_pages(first_page, pages, seed);
        move || {
            black_box(self.lookup(black_box(next())));
        }
    }
}

/// Page numbers `first_page ..+ pages` (rounded down to a power of two) in a scrambled order,
/// cheaply: the address stream every translation benchmark and the chase floor share.
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

/// `memcpy` of `size` bytes between two hot buffers owned by the calling thread.
///
/// ```
/// let mut op = dma_bench::floor::memcpy_op(4096);
/// op();
/// ```
pub fn memcpy_op(size: usize) -> impl FnMut() {
    let src = vec![0xa5u8; size];
    let mut dst = vec![0u8; size];
    move || {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chase_maps_every_page_and_nothing_else() {
        let c = Chase::new(1000, 1500);
        for p in 1000..2500 {
            assert_eq!(c.lookup(p), p as u32 + 1);
        }
        assert_eq!(c.lookup(999), u32::MAX);
    }

    #[test]
    fn scrambled_pages_stay_in_range_and_spread() {
        let mut next = scrambled_pages(64, 256, 3);
        let seen: std::collections::HashSet<u64> = (0..4096).map(|_| next()).collect();
        assert!(seen.iter().all(|p| (64..64 + 256).contains(p)));
        assert!(seen.len() > 128, "only {} distinct pages", seen.len());
    }
}
