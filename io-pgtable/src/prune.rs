//! Giving table memory back: [`PageTable::prune`] frees the tables that lie wholly inside a
//! range and map nothing.
//!
//! Unmaps leave the tables they empty linked (another mapper may be descending into them), as
//! in Linux, so tables left behind by unmaps add up: a caller that maps for someone else (a
//! vIOMMU for its guest) and scatters one-page maps and unmaps over a 48-bit space would keep
//! three tables per page ever mapped. `prune` of the unmapped gap around what it took down
//! frees them. Each table whose span lies in the range is replaced by an empty entry the way a
//! block map replaces an empty table (see `claim.rs`): its subtree is frozen, refused at the
//! first leaf (then its own empty children are pruned instead), the link claimed, the walk cache
//! flushed and the tables handed to RCU. A map racing inside the range therefore either lands
//! first (the table is kept) or after (in a fresh table): `prune` never takes a mapping.

use crate::claim::Stop;
use crate::error::Error;
use crate::pgtable::{LateUnlinks, Link, PageTable};
use crate::points::DESCENT_ACQUIRE;
use crate::pte::{self, Descriptor, PAGE_LEVEL};
use crate::tlb::TlbOps;
use dma_sync::atomic::Ordering::Acquire;
use dma_sync::rcu::Guard;

impl<T: TlbOps> PageTable<T> {
    /// Free every table whose whole span lies inside `[iova, iova + size)` and maps nothing
    /// (tables left behind by unmaps); tables that map something, or reach past the range,
    /// stay. Refused, changing nothing, as [`PageTable::unmap`] refuses its range (zero,
    /// unaligned, beyond the input size). Never takes a mapping, also when maps race inside
    /// the range.
    ///
    /// ```
    /// use io_pgtable::{Config, PageTable, Prot};
    /// let pt = PageTable::new(Config::s1_4k(48)).unwrap();
    /// pt.map(0x1000, 0x1000, 0x1000, Prot::READ).unwrap();
    /// pt.map(0x4000_0000, 0, 0x1000, Prot::READ).unwrap();
    /// pt.unmap(0x4000_0000, 0x1000).unwrap();
    /// assert_eq!(pt.stats().linked(), 6); // the root, a level-1 table, two each below
    /// pt.prune(0x2000, (1 << 48) - 0x2000).unwrap();
    /// assert_eq!(pt.stats().linked(), 4); // the emptied 1 GiB's two tables went
    /// assert_eq!(pt.iova_to_phys(0x1000).unwrap().paddr(), 0x1000);
    /// ```
    pub fn prune(&self, iova: u64, size: u64) -> Result<(), Error> {
        self.check_sizes(iova, None, size)?;
        let last = iova + (size - 1);
        let start = self.geom.start_level();
        self.retrying(|guard, late| {
            // SAFETY: the root, walked under `guard`.
            unsafe { self.prune_in(guard, self.root.addr(), start, 0, (iova, last), late) }
        })
    }

    /// [`PageTable::prune`] in the table at `addr` (at `level`, mapping from `base`), for the
    /// inclusive range `(first, last)`.
    ///
    /// # Safety
    /// As [`PageTable::table_at`].
    unsafe fn prune_in(
        &self,
        guard: &Guard,
        addr: u64,
        level: u32,
        base: u64,
        (first, last): (u64, u64),
        late: &mut LateUnlinks,
    ) -> Result<(), Stop> {
        let g = &self.geom;
        let shift = g.level_shift(level);
        let span = g.block_size(level);
        // SAFETY: by the caller's contract.
        let table = unsafe { self.table_at(guard, addr, level) };
        let from = (first.max(base) - base) >> shift;
        let to = ((last - base) >> shift).min(table.len() as u64 - 1);
        for index in from..=to {
            let entry = &table[index as usize];
            let d = entry.load(DESCENT_ACQUIRE.ord(Acquire));
            let Descriptor::Table { addr } = pte::decode(g, level, d) else {
                continue;
            };
            let at = base + (index << shift);
            let inside = first <= at && at + (span - 1) <= last;
            if inside {
                let link = Link {
                    entry,
                    desc: d,
                    addr,
                    level: level + 1,
                    iova: at,
                };
                // SAFETY: `d` was read from `entry`, a slot of this page table, under `guard`;
                // replacing by 0 frees an empty subtree as a block map would.
                match unsafe { self.replace_table(guard, link, 0, late) } {
                    Ok(()) => continue,
                    // It maps something: prune inside it.
                    Err(Stop::Refused(Error::Exists { .. })) => {}
                    Err(stop) => return Err(stop),
                }
            }
            if level + 1 < PAGE_LEVEL {
                // SAFETY: a table link read from this table under `guard`.
                unsafe { self.prune_in(guard, addr, level + 1, at, (first, last), late)? };
            }
        }
        Ok(())
    }
}
