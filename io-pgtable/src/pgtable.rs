//! The page table object: construction, teardown, statistics, and the helpers map, unmap
//! and walks share (argument checks, level freeing).

use crate::claim::{Frozen, Stop};
use crate::config::{Config, Geometry};
use crate::error::{AddrKind, Error};
use crate::points::FREE_ORDER;
use crate::pte::{self, Descriptor, FROZEN};
use crate::slab::Slab;
use crate::table::{self, Counters, Stats, TableMem};
use crate::tlb::{NoTlb, TlbOps};
use crate::walk::{self, Walk};
use dma_sync::atomic::{AtomicU64, Ordering::Relaxed};
use dma_sync::rcu::{self, Guard};
use dma_sync::Arc;
use std::mem::ManuallyDrop;

/// A lock-free ARM LPAE I/O page table.
///
/// `map_pages`/`unmap_pages` may run concurrently on disjoint ranges (sharing tables);
/// `iova_to_phys`, [`crate::Reader`] and `dump` may run at any time, also on ranges being
/// unmapped. See the crate documentation for the full contract.
///
/// ```
/// use io_pgtable::{Config, PageTable, Prot};
/// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
/// pt.map(0x20_0000, 0x8000_0000, 0x40_0000, Prot::READ | Prot::WRITE).unwrap(); // two 2M blocks
/// let t = pt.iova_to_phys(0x20_1234).unwrap();
/// assert_eq!((t.paddr(), t.size()), (0x8000_1234, 0x20_0000));
/// assert_eq!(pt.unmap(0x20_0000, 0x40_0000), Ok(0x40_0000));
/// assert!(pt.iova_to_phys(0x20_1234).is_none());
/// ```
pub struct PageTable<T: TlbOps = NoTlb> {
    pub(crate) geom: Geometry,
    /// Freed by `drop` after `flush_all` returned, leaked if it unwinds.
    pub(crate) root: ManuallyDrop<TableMem>,
    /// Memory of the levels below the root.
    pub(crate) slab: std::sync::Arc<Slab>,
    pub(crate) tlb: T,
    pub(crate) stats: Arc<Counters>,
    /// The translation walk specialised for `geom`.
    pub(crate) walk: Walk<T>,
    /// Tables unlinked by an unmap whose walk flush unwound: the walk cache may still hold
    /// them, so they are freed only on drop, after `flush_all`.
    unflushed: std::sync::Mutex<Vec<TableMem>>,
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
    /// use io_pgtable::{Config, NoTlb, PageTable};
    /// let pt = PageTable::with_tlb(Config::tiny(2), NoTlb).unwrap();
    /// assert_eq!(pt.stats().allocated, 1); // the root
    /// ```
    pub fn with_tlb(config: Config, tlb: T) -> Result<Self, Error> {
        let geom = config.geometry()?;
        let stats = Arc::new(Counters::new());
        let start = geom.start_level();
        // Every level below the root has tables of one size, from one slab.
        let below = (start + 1).min(3);
        let slab = Slab::new(geom.entries(below), geom.table_align(below))?;
        let root = TableMem::alloc(
            geom.entries(start),
            geom.table_align(start),
            geom.oa_bits(),
            &stats,
        )?;
        Ok(PageTable {
            walk: walk::select(&geom),
            geom,
            root: ManuallyDrop::new(root),
            slab,
            tlb,
            stats,
            unflushed: std::sync::Mutex::new(Vec::new()),
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

    /// Unlink and free the table `link` leads to: claim the link, take the subtree, flush the
    /// walk cache, hand the tables to RCU. `Err` with the entry's new value if another
    /// operation changed it first (nothing done).
    ///
    /// # Safety
    /// As [`Link`].
    // Off the steady-state path: kept out of line so the hot path stays small.
    #[inline(never)]
    pub(crate) unsafe fn unlink_table(
        &self,
        guard: &Guard,
        link: Link<'_>,
        late: &mut LateUnlinks,
    ) -> Result<(), u64> {
        let size = self.geom.table_span(link.level);
        if let Some(slot) = self.weakened_root_slot(link.entry) {
            // Weakened (loom only): retired while still linked; unlinked after the grace period.
            // SAFETY: `addr` was read from `entry` under `guard` (the caller's contract); the
            // weakened variant only exists to show what taking it unclaimed breaks.
            let tables = unsafe { self.take_subtree(guard, link.addr, link.level) };
            table::retire(guard, tables, &self.stats);
            late.0.push((slot, link.iova, size, 0));
            return Ok(());
        }
        self.claim(link.entry, link.desc, 0)?;
        // SAFETY: `addr` was read from `entry` under `guard`, and this call claimed the link.
        let tables = unsafe { self.take_subtree(guard, link.addr, link.level) };
        // A `flush_walk` that unwinds must not drop the taken tables (back to the slab at
        // once, under readers that may still walk them), nor hand them to RCU (a grace period
        // covers software readers, not a walk cache the flush may have left holding them):
        // they are kept until the page table is dropped (see `TlbOps::flush_walk`). Their
        // entries are DEAD, so the table cannot be put back as a block map's freeze can.
        let mut unflushed = KeepUnlessFlushed {
            pt: self,
            tables: Some(tables),
        };
        self.tlb.flush_walk(link.iova, size, self.geom.page_size());
        let tables = unflushed.tables.take().unwrap_or_default();
        table::retire(guard, tables, &self.stats);
        Ok(())
    }

    /// Replace the table `link` leads to by the block `leaf`, break before make: freeze the
    /// subtree (refused if it maps anything), claim the link, flush the walk cache, hand the
    /// tables to RCU, then write the block.
    ///
    /// # Safety
    /// As [`Link`].
    // Off the steady-state path: kept out of line so the hot path stays small.
    #[inline(never)]
    pub(crate) unsafe fn replace_table(
        &self,
        guard: &Guard,
        link: Link<'_>,
        leaf: u64,
        late: &mut LateUnlinks,
    ) -> Result<(), Stop> {
        let mut frozen = Frozen::new();
        // SAFETY: `addr` was read under `guard` (the caller's contract).
        let froze = unsafe { self.freeze(guard, link.addr, link.level, link.iova, &mut frozen) };
        if let Err(stop) = froze {
            self.thaw(guard, frozen);
            return Err(stop);
        }
        let size = self.geom.table_span(link.level);
        if let Some(slot) = self.weakened_root_slot(link.entry) {
            // Weakened (loom only): retired while still linked; the block written after the
            // grace period.
            table::retire(
                guard,
                self.frozen_tables(link.addr, link.level, frozen),
                &self.stats,
            );
            late.0.push((slot, link.iova, size, leaf));
            return Ok(());
        }
        if self.claim(link.entry, link.desc, FROZEN).is_err() {
            // An unmap took the table: it owns it now; what it could not see we take back.
            self.thaw(guard, frozen);
            return Err(Stop::Restart);
        }
        // A `flush_walk` that unwinds leaves the table as it was, the subtree thawed and then
        // its link: a FROZEN entry left behind would make every later operation there wait.
        let mut unwinding = ThawOnUnwind {
            pt: self,
            guard,
            link: (link.entry, link.desc, link.level - 1),
            frozen: Some(frozen),
        };
        self.tlb.flush_walk(link.iova, size, self.geom.page_size());
        let frozen = unwinding.frozen.take().unwrap_or_default();
        table::retire(
            guard,
            self.frozen_tables(link.addr, link.level, frozen),
            &self.stats,
        );
        // The entry is ours (FROZEN): no one else writes it.
        link.entry.store(leaf, Relaxed);
        Ok(())
    }

    /// The table at `addr` (at `level`), whose link this call claimed after freezing its
    /// subtree, and every table whose link the freeze holds.
    fn frozen_tables(&self, addr: u64, level: u32, frozen: Frozen<'_>) -> Vec<TableMem> {
        let links = frozen.into_iter().filter(|&(_, old, _)| old != 0);
        // SAFETY: the link to `addr` was claimed by this call, and every table link in
        // `frozen` is held FROZEN by it (only an owner of the table holding it, now this
        // call, could change that), so each table has no other owner.
        links
            .map(|(_, old, l)| unsafe { self.own_table(pte::decode_oa(&self.geom, old), l + 1) })
            .chain(std::iter::once(unsafe { self.own_table(addr, level) }))
            .collect()
    }

    /// The descriptors of the table at `addr` (at `level`), valid while `guard` is pinned.
    ///
    /// # Safety
    /// `addr` is the output address of a table descriptor read from an entry at `level - 1`
    /// of this page table while `guard` was pinned (or is the root): levels are freed only
    /// through RCU after being unlinked, so the table outlives `guard`.
    #[inline]
    pub(crate) unsafe fn table_at<'g>(
        &self,
        guard: &'g Guard,
        addr: u64,
        level: u32,
    ) -> &'g [AtomicU64] {
        // SAFETY: by the caller's contract, a table of this page table at `level`, which
        // holds `entries(level)` descriptors and outlives `guard`.
        unsafe { table::entries_at(guard, addr, self.geom.entries(level)) }
    }
}

/// Undoes a block map's freeze and claim of a table link if dropped still holding them: when
/// the TLB callback between the claim and the block write unwinds.
struct ThawOnUnwind<'a, T: TlbOps> {
    pt: &'a PageTable<T>,
    guard: &'a Guard,
    /// The claimed link: entry, its old descriptor, the level of the table holding it.
    link: (&'a AtomicU64, u64, u32),
    frozen: Option<Frozen<'a>>,
}

impl<T: TlbOps> Drop for ThawOnUnwind<'_, T> {
    fn drop(&mut self) {
        if let Some(frozen) = self.frozen.take() {
            // The subtree first: once the link is back, operations reach it again.
            self.pt.thaw(self.guard, frozen);
            self.pt.thaw(self.guard, vec![self.link]);
        }
    }
}

/// Keeps the tables an unlink took, unless taken back after the walk flush returned: when
/// the flush unwinds they are counted retired (unreachable from the root) and held by the
/// page table until it is dropped, after its `flush_all`.
struct KeepUnlessFlushed<'a, T: TlbOps> {
    pt: &'a PageTable<T>,
    tables: Option<Vec<TableMem>>,
}

impl<T: TlbOps> Drop for KeepUnlessFlushed<'_, T> {
    fn drop(&mut self) {
        if let Some(tables) = self.tables.take() {
            let pt = self.pt;
            pt.stats.retired.fetch_add(tables.len() as u64, Relaxed);
            let mut kept = pt.unflushed.lock().unwrap_or_else(|e| e.into_inner());
            kept.extend(tables);
        }
    }
}

/// A table link a walk found: to be unlinked or replaced.
///
/// Safety contract of the functions taking it: `entry` is an entry of this page table, and
/// `desc`, linking to the table `addr` at `level`, was read from it under the caller's guard;
/// the entry maps `[iova, iova + table_span(level))`.
pub(crate) struct Link<'e> {
    pub entry: &'e AtomicU64,
    pub desc: u64,
    pub addr: u64,
    pub level: u32,
    pub iova: u64,
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
/// this, so a model can show that freeing before unlinking is caught. Each is a root slot (the
/// root lives as long as the page table), the span it maps, and what to store after the flush.
#[derive(Default)]
pub(crate) struct LateUnlinks(Vec<(usize, u64, u64, u64)>);

impl LateUnlinks {
    /// Perform the postponed unlinks; call after the operation's guard is dropped.
    pub(crate) fn finish<T: TlbOps>(self, pt: &PageTable<T>) {
        for (slot, iova, size, then) in self.0 {
            let entry = &pt.root.entries()[slot];
            entry.store(0, Relaxed);
            pt.tlb.flush_walk(iova, size, pt.geom.page_size());
            if then != 0 {
                entry.store(then, Relaxed);
            }
        }
    }
}

impl<T: TlbOps> PageTable<T> {
    /// With [`FREE_ORDER`] weakened (loom only) and `entry` in the root: its index there, the
    /// place a postponed unlink can still reach after the guard is dropped.
    fn weakened_root_slot(&self, entry: &AtomicU64) -> Option<usize> {
        if FREE_ORDER.on() {
            return None;
        }
        self.root
            .entries()
            .iter()
            .position(|e| std::ptr::eq(e, entry))
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
    // The common case, one smallest page: no search.
    let smallest = bitmap & bitmap.wrapping_neg();
    if size == smallest {
        return (merged & (smallest - 1) == 0).then_some((smallest, 1));
    }
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

/// Tables leaked by page tables whose drop-time [`TlbOps::flush_all`] unwound, in this process.
static LEAKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Tables leaked so far in this process by page tables whose [`TlbOps::flush_all`] unwound
/// while they were dropped.
///
/// A drop frees every table only after `flush_all` returned: until then the walk cache may
/// still hold any of them and point a device into their memory once it is reused. If the
/// flush unwinds, nothing is known to be invalidated, so the drop frees nothing: the root,
/// every table linked below it and the tables an unwound [`TlbOps::flush_walk`] kept are
/// leaked, counted here, and the panic goes on to the dropper.
///
/// ```
/// use io_pgtable::{Config, PageTable, Prot, TlbOps, TlbRange};
/// struct Broken;
/// impl TlbOps for Broken {
///     fn flush_all(&self) { panic!("the IOMMU is gone") }
///     fn flush_walk(&self, _: u64, _: u64, _: u64) {}
///     fn sync(&self, _: &TlbRange) {}
/// }
/// let pt = PageTable::with_tlb(Config::s1_4k(39), Broken).unwrap();
/// pt.map(0x1000, 0x8000_0000, 0x1000, Prot::READ).unwrap(); // the root and two tables below
/// let before = io_pgtable::leaked_tables();
/// assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(pt))).is_err());
/// assert!(io_pgtable::leaked_tables() >= before + 3);
/// ```
pub fn leaked_tables() -> u64 {
    LEAKED.load(std::sync::atomic::Ordering::Relaxed)
}

/// While a drop's `flush_all` runs: if it unwinds, the tables the drop would free are leaked
/// and counted (the root is a `ManuallyDrop` field, so the unwind does not free it either).
struct LeakUnlessFlushed {
    /// Tables kept since a walk flush unwound.
    kept: Vec<TableMem>,
    /// Tables linked from the root, the root included.
    linked: u64,
}

impl Drop for LeakUnlessFlushed {
    fn drop(&mut self) {
        let n = self.kept.len() as u64 + self.linked;
        LEAKED.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        std::mem::forget(std::mem::take(&mut self.kept));
    }
}

impl<T: TlbOps> Drop for PageTable<T> {
    fn drop(&mut self) {
        // The table is dead (no walks, no operations): flush everything, then free directly.
        // Nothing is freed before the flush returned: if it unwinds, every table is leaked
        // (the walk cache may still hold any of them), linked ones by not being taken.
        let kept = self.unflushed.get_mut().unwrap_or_else(|e| e.into_inner());
        let unwinding = LeakUnlessFlushed {
            kept: std::mem::take(kept),
            linked: {
                let s = self.stats();
                s.allocated
                    .saturating_sub(s.discarded)
                    .saturating_sub(s.retired)
            },
        };
        self.tlb.flush_all();
        let mut flushed = unwinding;
        let kept = std::mem::take(&mut flushed.kept);
        std::mem::forget(flushed);
        let start = self.geom.start_level();
        let guard = rcu::pin();
        let mut freed = 1 + kept.len() as u64; // the root, and the tables kept
        drop(kept);
        for e in self.root.entries() {
            if let Descriptor::Table { addr } = pte::decode(&self.geom, start, e.load(Relaxed)) {
                // SAFETY: `&mut self`: no walker or operation runs, every link is ours.
                freed += unsafe { self.take_subtree(&guard, addr, start + 1) }.len() as u64;
            }
        }
        // SAFETY: the root is dropped once, here, after the last use of its entries above;
        // nothing reads the field afterwards.
        unsafe { ManuallyDrop::drop(&mut self.root) };
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
