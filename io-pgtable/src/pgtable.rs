//! The page table object: construction, teardown, statistics, and the helpers map, unmap
//! and walks share (argument checks, level freeing).

use crate::config::{Config, Geometry};
use crate::error::{AddrKind, Error};
use crate::points::FREE_ORDER;
use crate::pte::{self, Descriptor};
use crate::table::{self, Counters, Stats, TableMem};
use crate::tlb::{NoTlb, TlbOps};
use dma_sync::atomic::{AtomicU64, Ordering::Relaxed};
use dma_sync::rcu::Guard;
use dma_sync::Arc;

/// A lock-free ARM LPAE I/O page table.
///
/// `map_pages`/`unmap_pages` may run concurrently on disjoint ranges (sharing tables);
/// `iova_to_phys`, [`crate::Reader`] and `dump` may run at any time, also on ranges being
/// unmapped. See the crate documentation for the full contract.
///
/// ```
/// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
/// use io_pgtable::{Config, PageTable, Prot};
/// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
/// pt.map(0x20_0000, 0x8000_0000, 0x40_0000, Prot::READ | Prot::WRITE).unwrap(); // two 2M blocks
/// let t = pt.iova_to_phys(0x20_1234).unwrap();
/// assert_eq!((t.paddr, t.size), (0x8000_1234, 0x20_0000));
/// assert_eq!(pt.unmap(0x20_0000, 0x40_0000), Ok(0x40_0000));
/// assert!(pt.iova_to_phys(0x20_1234).is_none());
/// ```
pub struct PageTable<T: TlbOps = NoTlb> {
    pub(crate) geom: Geometry,
    pub(crate) root: TableMem,
    pub(crate) tlb: T,
    pub(crate) stats: Arc<Counters>,
}

impl PageTable<NoTlb> {
    /// A page table without TLB maintenance (no hardware walks it).
    pub fn new(config: Config) -> Result<Self, Error> {
        Self::with_tlb(config, NoTlb)
    }
}

impl<T: TlbOps> PageTable<T> {
    /// A page table whose unmaps and level frees invalidate through `tlb`.
    ///
    /// ```
    /// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
    /// use io_pgtable::{Config, NoTlb, PageTable};
    /// let pt = PageTable::with_tlb(Config::tiny(2), NoTlb).unwrap();
    /// assert_eq!(pt.stats().allocated, 1); // the root
    /// ```
    pub fn with_tlb(config: Config, tlb: T) -> Result<Self, Error> {
        let geom = config.geometry()?;
        let stats = Arc::new(Counters::new());
        let start = geom.start_level();
        let root = TableMem::alloc(
            geom.entries(start),
            geom.table_align(start),
            geom.oa_bits(),
            &stats,
        )?;
        Ok(PageTable {
            geom,
            root,
            tlb,
            stats,
        })
    }

    /// The geometry (levels, page sizes) of this table.
    pub fn geometry(&self) -> &Geometry {
        &self.geom
    }

    /// The supported leaf sizes, one bit each.
    pub fn pgsize_bitmap(&self) -> u64 {
        self.geom.pgsize_bitmap()
    }

    /// The root table's address, as a translation table base register would hold it.
    pub fn root_addr(&self) -> u64 {
        self.root.addr()
    }

    /// The TLB operations this table invalidates through.
    pub fn tlb(&self) -> &T {
        &self.tlb
    }

    /// Table allocation counters.
    ///
    /// ```
    /// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
    /// use io_pgtable::{Config, PageTable, Prot};
    /// let pt = PageTable::new(Config::tiny(2)).unwrap();
    /// pt.map_pages(0x1000, 0x1000, 0x1000, 1, Prot::READ).unwrap();
    /// let s = pt.stats();
    /// assert_eq!((s.allocated, s.linked()), (2, 2));
    /// ```
    pub fn stats(&self) -> Stats {
        Stats {
            allocated: self.stats.allocated.load(Relaxed),
            discarded: self.stats.discarded.load(Relaxed),
            retired: self.stats.retired.load(Relaxed),
            freed: self.stats.freed.load(Relaxed),
        }
    }

    /// Check `pgcount` pages of `pgsize` at `iova`; returns the leaf level of `pgsize` and
    /// the length of the range.
    pub(crate) fn check_input(
        &self,
        iova: u64,
        pgsize: u64,
        pgcount: usize,
    ) -> Result<(u32, u64), Error> {
        let level = self
            .geom
            .level_of(pgsize)
            .ok_or(Error::UnsupportedPageSize { pgsize })?;
        if pgcount == 0 {
            return Err(Error::ZeroCount);
        }
        if iova & (pgsize - 1) != 0 {
            return Err(Error::Misaligned {
                kind: AddrKind::Iova,
                addr: iova,
                align: pgsize,
            });
        }
        let len = pgsize.checked_mul(pgcount as u64).ok_or(Error::Overflow)?;
        check_range(AddrKind::Iova, iova, len, self.geom.ias())?;
        Ok((level, len))
    }

    /// Free the table `table_addr` (at `level`) hanging off `entry`, which maps
    /// `[iova, iova + span)`: unlink, flush the walk cache, hand the subtree to RCU, then store
    /// `then` (0, or the block that replaces the table: break before make).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn free_table(
        &self,
        guard: &Guard,
        entry: &AtomicU64,
        table_addr: u64,
        level: u32,
        iova: u64,
        then: u64,
        late: &mut LateUnlinks,
    ) {
        let size = self.geom.table_span(level);
        // SAFETY: the caller owns the range the subtree serves, so nobody else frees it.
        let tables = unsafe { self.collect_subtree(table_addr, level) };
        if FREE_ORDER.on() {
            entry.store(0, Relaxed);
            self.tlb.flush_walk(iova, size, self.geom.page_size());
            table::retire(guard, tables, &self.stats);
            if then != 0 {
                entry.store(then, Relaxed);
            }
        } else {
            // Weakened (loom only): retired while still linked; unlinked after the grace period.
            table::retire(guard, tables, &self.stats);
            late.0.push((entry as *const AtomicU64, iova, size, then));
        }
    }

    /// Take ownership of the table at `addr` and every table below it.
    ///
    /// # Safety
    /// The caller owns the range the table serves, and the table is about to be unlinked
    /// (or is unreachable), so no one else will free or change it.
    unsafe fn collect_subtree(&self, addr: u64, level: u32) -> Vec<TableMem> {
        let mut out = Vec::new();
        let mut stack = vec![(addr, level)];
        while let Some((addr, level)) = stack.pop() {
            let len = self.geom.entries(level);
            // SAFETY: by the caller's contract this table is ours to take.
            let t = unsafe { TableMem::from_addr(addr, len, self.geom.table_align(level)) };
            if level < 3 {
                for e in t.entries() {
                    if let Descriptor::Table { addr } =
                        pte::decode(&self.geom, level, e.load(Relaxed))
                    {
                        stack.push((addr, level + 1));
                    }
                }
            }
            out.push(t);
        }
        out
    }

    /// The descriptors of the table at `addr` (at `level`), valid while `guard` is pinned.
    #[inline]
    pub(crate) fn table_at<'g>(&self, guard: &'g Guard, addr: u64, level: u32) -> &'g [AtomicU64] {
        // SAFETY: `addr` was read from a table descriptor of this page table under `guard`
        // (or by the owner of its range); levels are freed only through RCU after unlinking.
        unsafe { table::entries_at(guard, addr, self.geom.entries(level)) }
    }
}

/// Check that `[addr, addr + len)` fits `bits` bits.
pub(crate) fn check_range(kind: AddrKind, addr: u64, len: u64, bits: u32) -> Result<(), Error> {
    let end = addr.checked_add(len).ok_or(Error::Overflow)?;
    if end > 1u64 << bits {
        return Err(Error::OutOfRange { kind, addr, bits });
    }
    Ok(())
}

/// Unlinks postponed past the grace period: only the weakened [`FREE_ORDER`] variant fills
/// this, so a model can show that freeing before unlinking is caught.
#[derive(Default)]
pub(crate) struct LateUnlinks(Vec<(*const AtomicU64, u64, u64, u64)>);

impl LateUnlinks {
    /// Perform the postponed unlinks; call after the operation's guard is dropped.
    pub(crate) fn finish<T: TlbOps>(self, pt: &PageTable<T>) {
        for (entry, iova, size, then) in self.0 {
            // SAFETY: `entry` lives in a parent table that spans more than the operation's own
            // range, which the operation never frees.
            let entry = unsafe { &*entry };
            entry.store(0, Relaxed);
            pt.tlb.flush_walk(iova, size, pt.geom.page_size());
            if then != 0 {
                entry.store(then, Relaxed);
            }
        }
    }
}

/// Linux's `iommu_pgsize`: the largest supported page size that `iova | paddr` alignment and
/// `size` allow, and how many of them to map before a larger size becomes possible.
pub(crate) fn pgsize_for(bitmap: u64, iova: u64, paddr: u64, size: u64) -> Option<(u64, usize)> {
    fn upto(bit: u32) -> u64 {
        if bit >= 63 {
            u64::MAX
        } else {
            (1u64 << (bit + 1)) - 1
        }
    }
    let merged = iova | paddr;
    let mut sizes = bitmap & upto(63 - size.leading_zeros());
    if merged != 0 {
        sizes &= upto(merged.trailing_zeros());
    }
    if sizes == 0 {
        return None;
    }
    let shift = 63 - sizes.leading_zeros();
    let pgsize = 1u64 << shift;
    let mut span = size;
    let bigger = bitmap & !upto(shift);
    if bigger != 0 {
        let next = 1u64 << bigger.trailing_zeros();
        let offset = next - (merged & (next - 1));
        if offset.saturating_add(next) <= size {
            span = offset;
        }
    }
    Some((pgsize, (span >> shift) as usize))
}

impl<T: TlbOps> Drop for PageTable<T> {
    fn drop(&mut self) {
        // The table is dead (no walks, no operations): flush everything, then free directly.
        self.tlb.flush_all();
        let start = self.geom.start_level();
        let mut freed = 1; // the root, dropped with the fields
        if start < 3 {
            for e in self.root.entries() {
                if let Descriptor::Table { addr } = pte::decode(&self.geom, start, e.load(Relaxed))
                {
                    // SAFETY: `&mut self`: no walker or operation runs; the subtree is ours.
                    let tables = unsafe { self.collect_subtree(addr, start + 1) };
                    freed += tables.len() as u64;
                }
            }
        }
        self.stats.freed.fetch_add(freed, Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pgsize_for_matches_linux() {
        let bm = (4 << 10) | (2 << 20) | (1 << 30);
        assert_eq!(pgsize_for(bm, 0x1000, 0x1000, 0x1000), Some((0x1000, 1)));
        // 4K pages up to the 2M boundary, then blocks.
        assert_eq!(
            pgsize_for(bm, 0x1f_f000, 0x1f_f000, 0x40_1000),
            Some((0x1000, 1))
        );
        assert_eq!(
            pgsize_for(bm, 0x20_0000, 0x20_0000, 0x40_0000),
            Some((0x20_0000, 2))
        );
        // Misaligned paddr forbids blocks; pages up to the next 2M boundary of iova | paddr.
        assert_eq!(
            pgsize_for(bm, 0x20_0000, 0x1000, 0x40_0000),
            Some((0x1000, 0x1ff))
        );
        // Not enough room for a block before the end: pages to the end.
        assert_eq!(pgsize_for(bm, 0x1000, 0x1000, 0x3000), Some((0x1000, 3)));
        assert_eq!(pgsize_for(bm, 0x800, 0, 0x1000), None);
        assert_eq!(pgsize_for(bm, 0, 0, 0x800), None);
    }
}
