//! Unmapping: `unmap_pages` (one leaf table per call, never an error disguised as a size)
//! and the `unmap` helpers that loop over page sizes.
//!
//! * `unmap_pages` stops at the first empty slot (a short count); nothing unmapped is
//!   `Err(NotMapped)`, never a size (the 2025 Linux signedness bug). A larger block on the way is
//!   `Err(PartialBlock)` (split-on-unmap was removed from Linux in v6.13). A table at the target
//!   level is freed whole (walk flush, no gather). Each leaf and table link is claimed by CAS
//!   before it is counted or taken: of racing unmaps of overlapping ranges each entry goes to
//!   exactly one, the others find it empty. An entry a block map has reserved (`FROZEN`) is
//!   not an answer: the call backs off and starts again from the root (see `claim`). Past
//!   its first entry a call stops there instead (a short count): each entry is its own claim.
//! * One page (`unmap`/`unmap_with` of a granule, `unmap_pages` of one page) takes the map's
//!   single-slot shape: the same descent and `take_entry`, the claim of one entry that the
//!   range's loop makes of each, with the layout picked once (see `map.rs`).
//! * `unmap`/`unmap_with` loop over page sizes. Tables emptied by page-sized unmaps stay linked,
//!   as in Linux: only an unmap covering a table's whole span frees it (another mapper may be
//!   descending into it).
//! * Freeing a level: claim the link (`CAS(table → 0, AcqRel, Acquire)`), take the subtree
//!   (`swap(DEAD, AcqRel)` of every entry, `pgtable.take.release`), `flush_walk`, then
//!   `defer_retire` of the subtree (`pgtable.free.order`). The CAS makes one unmap the owner; the
//!   swaps give each lower table to that owner alone and make every entry `DEAD`, so a map still
//!   descending through a stale pointer cannot install a table or write a leaf there; the swap's
//!   release makes that map, once it has seen `DEAD`, see the unlink too, so its restart cannot
//!   keep reading the stale link. RCU's grace period orders the unlink before the scan of
//!   readers; the walk cache is invalidated before the memory can be reused.

use crate::claim::Stop;
use crate::error::Error;
use crate::levels::Levels;
use crate::pgtable::{LateUnlinks, Link, PageTable};
use crate::points::DESCENT_ACQUIRE;
use crate::pte::{self, Descriptor, FROZEN, PAGE_LEVEL};
use crate::table;
use crate::tlb::{Gather, TlbOps};
use dma_sync::atomic::{AtomicU64, Ordering::*};
use dma_sync::rcu::Guard;

impl<T: TlbOps> PageTable<T> {
    /// Unmap up to `pgcount` entries of `pgsize` from `iova`; returns the bytes unmapped.
    ///
    /// Works at the level whose block size is `pgsize`, up to the end of that one table, and
    /// stops at the first empty entry (a short count). Leaves are cleared and, unless the
    /// gather is queued, added to `gather` through [`TlbOps::add_page`]; a *table* found
    /// there is unlinked, its walk cache flushed, and its whole subtree freed through RCU.
    /// Refused with a typed error (the table unchanged): nothing mapped at `iova`
    /// ([`Error::NotMapped`]), or `iova` inside a larger block ([`Error::PartialBlock`]).
    ///
    /// Every entry is claimed by compare-and-swap before its leaf is counted or its table
    /// taken, so racing unmaps of overlapping ranges unmap each entry once: the others find
    /// it empty (`NotMapped`, or a short count).
    ///
    /// ```
    /// use io_pgtable::{Config, Error, Gather, PageTable, Prot};
    /// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    /// pt.map_pages(0x20_0000, 0x20_0000, 0x20_0000, 1, Prot::READ).unwrap();
    /// let mut g = Gather::new();
    /// assert_eq!(pt.unmap_pages(0x20_0000, 0x1000, 1, &mut g), Err(Error::PartialBlock { iova: 0x20_0000, block_size: 0x20_0000 }));
    /// assert_eq!(pt.unmap_pages(0x20_0000, 0x20_0000, 1, &mut g), Ok(0x20_0000));
    /// assert_eq!(pt.unmap_pages(0x20_0000, 0x20_0000, 1, &mut g), Err(Error::NotMapped { iova: 0x20_0000 }));
    /// g.sync(pt.tlb());
    /// ```
    pub fn unmap_pages(
        &self,
        iova: u64,
        pgsize: u64,
        pgcount: usize,
        gather: &mut Gather,
    ) -> Result<usize, Error> {
        let (level, _) = self.check_input(iova, pgsize, pgcount)?;
        self.unmap_checked(iova, level, pgcount, gather)
    }

    /// [`PageTable::unmap_pages`] of arguments already checked, with the leaf level of the
    /// page size.
    fn unmap_checked(
        &self,
        iova: u64,
        level: u32,
        pgcount: usize,
        gather: &mut Gather,
    ) -> Result<usize, Error> {
        if pgcount == 1 && level == PAGE_LEVEL {
            // One page, the common case: one entry, without the range's loop.
            let page = self.geom.page_size() as usize;
            let unmapped = match Levels::constant(&self.geom) {
                Some(levels) => self.unmap_page(levels, iova, gather),
                None => self.unmap_page(Levels::read(&self.geom), iova, gather),
            };
            return unmapped.map(|()| page);
        }
        self.retrying(|guard, late| self.unmap_in(guard, iova, level, pgcount, gather, late))
    }

    /// [`PageTable::unmap_in`] of one page at `iova`, with the layout `levels`: the descent,
    /// then `take_entry`.
    fn unmap_page<const FOUR_4K: bool>(
        &self,
        levels: Levels<'_, FOUR_4K>,
        iova: u64,
        gather: &mut Gather,
    ) -> Result<(), Error> {
        self.retrying(|guard, late| {
            let (table, index) = self.descend_mapped_in(levels, guard, iova, PAGE_LEVEL)?;
            if !self.take_entry(guard, &table[index], PAGE_LEVEL, iova, true, gather, late)? {
                return Err(Error::NotMapped { iova }.into());
            }
            Ok(())
        })
    }

    fn unmap_in(
        &self,
        guard: &Guard,
        iova: u64,
        level: u32,
        pgcount: usize,
        gather: &mut Gather,
        late: &mut LateUnlinks,
    ) -> Result<usize, Stop> {
        let g = &self.geom;
        let (table, first) = self.descend_mapped(guard, iova, level)?;
        let n = pgcount.min(g.entries(level) - first);
        let size = g.block_size(level);
        let mut done = 0;
        for e in &table[first..first + n] {
            let at = iova + done as u64 * size;
            if !self.take_entry(guard, e, level, at, done == 0, gather, late)? {
                break;
            }
            done += 1;
        }
        if done == 0 {
            return Err(Error::NotMapped { iova }.into());
        }
        Ok(done * size as usize)
    }

    /// The table at level `target` on the way to `iova`, and `iova`'s index in it: descends
    /// from the root with acquire loads through table links only. An empty entry on the way is
    /// [`Error::NotMapped`], a block [`Error::PartialBlock`]; a reserved entry stops the call.
    pub(crate) fn descend_mapped<'g>(
        &'g self,
        guard: &'g Guard,
        iova: u64,
        target: u32,
    ) -> Result<(&'g [AtomicU64], usize), Stop> {
        match Levels::constant(&self.geom) {
            Some(levels) => self.descend_mapped_in(levels, guard, iova, target),
            None => self.descend_mapped_in(Levels::read(&self.geom), guard, iova, target),
        }
    }

    /// [`PageTable::descend_mapped`] with the layout `levels` of this table's geometry.
    #[inline(always)]
    fn descend_mapped_in<'g, const FOUR_4K: bool>(
        &'g self,
        levels: Levels<'_, FOUR_4K>,
        guard: &'g Guard,
        iova: u64,
        target: u32,
    ) -> Result<(&'g [AtomicU64], usize), Stop> {
        // Indices before the first acquire load, above which the geometry cannot be hoisted.
        let index = levels.indices(iova);
        let mut level = levels.start();
        let mut table = self.root.entries();
        while level < target {
            let d = table[index[level as usize]].load(DESCENT_ACQUIRE.ord(Acquire));
            if d == FROZEN {
                return Err(Stop::Wait);
            }
            if !pte::is_table(d) {
                // Above the target level: empty (or dead), or a larger block.
                return Err(if d & pte::VALID == 0 {
                    Error::NotMapped { iova }
                } else {
                    Error::PartialBlock {
                        iova,
                        block_size: self.geom.block_size(level),
                    }
                }
                .into());
            }
            level += 1;
            // SAFETY: a table link read under `guard` from this page table, so a table at
            // `level` that outlives `guard` (as `PageTable::table_at`).
            table =
                unsafe { table::entries_at(guard, levels.next_table(d), levels.entries(level)) };
        }
        Ok((table, index[target as usize]))
    }

    /// Unmap what the entry `e` (at `level`, mapping from `at`) holds: a leaf is claimed and
    /// its page gathered, a table unlinked and freed. `Ok(false)` if it holds nothing: empty,
    /// in a table being torn down, or (unless it is the call's `first` entry) reserved.
    /// Claims by compare-and-swap; a loser re-reads what the winner left.
    #[allow(clippy::too_many_arguments)]
    fn take_entry(
        &self,
        guard: &Guard,
        e: &AtomicU64,
        level: u32,
        at: u64,
        first: bool,
        gather: &mut Gather,
        late: &mut LateUnlinks,
    ) -> Result<bool, Stop> {
        let mut d = e.load(DESCENT_ACQUIRE.ord(Acquire));
        loop {
            let claimed = match pte::decode(&self.geom, level, d) {
                Descriptor::Invalid if d == FROZEN && first => return Err(Stop::Wait),
                Descriptor::Invalid => return Ok(false),
                // SAFETY: `d` was read from `e`, a slot of this page table, under `guard`.
                Descriptor::Table { addr } => unsafe {
                    let link = Link {
                        entry: e,
                        desc: d,
                        addr,
                        level: level + 1,
                        iova: at,
                    };
                    self.unlink_table(guard, link, late)
                },
                Descriptor::Leaf { .. } => self.claim(e, d, 0).inspect(|()| {
                    if !gather.is_queued() {
                        self.tlb.add_page(gather, at, self.geom.block_size(level));
                    }
                }),
            };
            match claimed {
                Ok(()) => return Ok(true),
                Err(now) => d = now,
            }
        }
    }

    /// Unmap `size` bytes at `iova` with the largest page sizes its alignment allows,
    /// gathering leaf invalidations into `gather` (the caller syncs it). Returns the bytes
    /// unmapped, which is short if the loop met an unmapped hole or a block straddling the
    /// end; an error only if nothing at all was unmapped.
    pub fn unmap_with(&self, iova: u64, size: u64, gather: &mut Gather) -> Result<u64, Error> {
        self.check_sizes(iova, None, size)?;
        if size == self.geom.page_size() {
            // One page, the common case: the step below would choose it.
            return self
                .unmap_checked(iova, PAGE_LEVEL, 1, gather)
                .map(|n| n as u64);
        }
        let mut done = 0;
        while done < size {
            let at = iova + done;
            // Each step lies inside the range checked above, aligned to its page size.
            let (level, count) = self.step(at, at, size - done)?;
            match self.unmap_checked(at, level, count, gather) {
                Ok(n) => done += n as u64,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    /// [`PageTable::unmap_with`] with a strict gather synced before returning.
    ///
    /// ```
    /// use io_pgtable::{Config, PageTable, Prot};
    /// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    /// pt.map(0, 0, 0x40_0000, Prot::READ).unwrap();
    /// assert_eq!(pt.unmap(0, 0x40_0000), Ok(0x40_0000));
    /// assert_eq!(pt.stats().linked(), 2); // root and the level-2 table
    /// ```
    pub fn unmap(&self, iova: u64, size: u64) -> Result<u64, Error> {
        let mut gather = Gather::new();
        let result = self.unmap_with(iova, size, &mut gather);
        gather.sync(&self.tlb);
        result
    }
}
