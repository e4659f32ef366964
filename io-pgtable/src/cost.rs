//! What a `map` will cost, before it is made: the leaves it writes and the tables it
//! installs. A caller that maps for someone else (a vIOMMU for its guest) bounds the memory
//! that someone can make it spend with these, and refuses before anything is allocated.
//!
//! Both follow `map`'s own steps ([`PageTable::step`]) over the range, a few steps per range:
//! where the alignment of `iova ^ paddr` allows no larger page, the rest of the range is one
//! run of that size instead of `map`'s one-table-at-a-time steps.
//!
//! [`PageTable::tables_to_install`] counts, level by level, the entries that must link a
//! table because a leaf of the range lies deeper (the union of the runs' entries at that level),
//! less those already linking one. Only tables on the range's path are read, and only the
//! entries of the range: each such entry holds a leaf the map will write, so the count costs no
//! more than the map. Scattered one-page maps each need their own tables (three for the
//! four-level 4 KiB format, 12 KiB for 8 bytes of leaf); counting leaves alone misses that.

use crate::error::Error;
use crate::pgtable::PageTable;
use crate::points::DESCENT_ACQUIRE;
use crate::pte::{self, Descriptor, PAGE_LEVEL};
use crate::tlb::TlbOps;
use dma_sync::atomic::Ordering::Acquire;
use dma_sync::rcu::{self, Guard};

/// A stretch of the range `map` fills with leaves of one level: its first address, that
/// level and how many leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    iova: u64,
    level: u32,
    leaves: u64,
}

/// The entries of one level (by global index, `iova >> shift`) that must link a table: sorted,
/// disjoint, inclusive intervals, without allocating. Page sizes along a range grow, then
/// shrink, so the runs deeper than a level are a prefix and a suffix of the range: two
/// stretches. A third would be merged into the second, over-counting (never under).
#[derive(Debug, Clone, Copy, Default)]
struct Stretches {
    at: [(u64, u64); 2],
    len: usize,
}

impl Stretches {
    /// Add the entries `first..=last` of a run after those already added.
    fn add(&mut self, first: u64, last: u64) {
        let full = self.len == self.at.len();
        match self.at[..self.len].last_mut() {
            // Runs ascend: a neighbour can share only its last entry with this one.
            Some(prev) if prev.1 + 1 >= first => prev.1 = prev.1.max(last),
            Some(prev) if full => prev.1 = last,
            _ => {
                self.at[self.len] = (first, last);
                self.len += 1;
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.at[..self.len].iter().copied()
    }
}

impl<T: TlbOps> PageTable<T> {
    /// How many leaves (pages and blocks) [`PageTable::map`] of the same arguments writes, or
    /// the error it fails with for its sizes and addresses; allocates and changes nothing. A
    /// range of small pages needs a leaf table per 512 leaves; see also
    /// [`PageTable::tables_to_install`].
    ///
    /// ```
    /// use io_pgtable::{Config, PageTable};
    /// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    /// assert_eq!(pt.leaves(0x1f_f000, 0x1f_f000, 0x20_2000), Ok(3)); // 4 KiB, 2 MiB, 4 KiB
    /// assert_eq!(pt.leaves(0, 0x1000, 0x40_0000), Ok(1024)); // misaligned: 4 KiB pages only
    /// assert!(pt.leaves(0, 0x800, 0x1000).is_err());
    /// ```
    pub fn leaves(&self, iova: u64, paddr: u64, size: u64) -> Result<u64, Error> {
        let mut leaves = 0;
        self.runs(iova, paddr, size, |run| leaves += run.leaves)?;
        Ok(leaves)
    }

    /// How many tables [`PageTable::map`] of the same arguments installs in this table as it
    /// is now, or the error it fails with for its sizes and addresses; allocates and changes
    /// nothing. Exact when the range maps nothing yet and no other operation changes the table
    /// meanwhile (a vIOMMU's control path, serialised under its lock); a racing map may install
    /// some of them first.
    ///
    /// ```
    /// use io_pgtable::{Config, PageTable, Prot};
    /// let pt = PageTable::new(Config::s1_4k(48)).unwrap();
    /// assert_eq!(pt.tables_to_install(0x1000, 0x1000, 0x1000), Ok(3)); // levels 1, 2, 3
    /// pt.map(0x1000, 0x1000, 0x1000, Prot::READ).unwrap();
    /// assert_eq!(pt.tables_to_install(0x2000, 0x2000, 0x1000), Ok(0)); // shares all three
    /// assert_eq!(pt.tables_to_install(0x4000_0000, 0, 0x1000), Ok(2)); // another 1 GiB
    /// assert_eq!(pt.tables_to_install(0x4000_0000, 0, 0x4000_0000), Ok(0)); // one 1 GiB block
    /// ```
    pub fn tables_to_install(&self, iova: u64, paddr: u64, size: u64) -> Result<u64, Error> {
        let g = &self.geom;
        let start = g.start_level();
        if size == g.page_size() {
            // One page, the common case: the tables missing below the descent's last link.
            self.check_sizes(iova, Some(paddr), size)?;
            let guard = rcu::pin();
            let (mut addr, mut level) = (self.root.addr(), start);
            while level < PAGE_LEVEL {
                // SAFETY: the root, or a table link read under `guard` on the way down.
                let table = unsafe { self.table_at(&guard, addr, level) };
                let d = table[g.index(level, iova)].load(DESCENT_ACQUIRE.ord(Acquire));
                let Descriptor::Table { addr: next } = pte::decode(g, level, d) else {
                    return Ok(u64::from(PAGE_LEVEL - level));
                };
                (addr, level) = (next, level + 1);
            }
            return Ok(0);
        }
        let mut needed = [Stretches::default(); PAGE_LEVEL as usize];
        self.runs(iova, paddr, size, |run| {
            let last = run.iova + ((run.leaves << g.level_shift(run.level)) - 1);
            for level in start..run.level {
                let shift = g.level_shift(level);
                needed[level as usize].add(run.iova >> shift, last >> shift);
            }
        })?;
        let total: u64 = needed
            .iter()
            .flat_map(Stretches::iter)
            .map(|(a, b)| b - a + 1)
            .sum();
        let guard = rcu::pin();
        // SAFETY: the root, walked under `guard`.
        let linked = unsafe { self.linked_on(&guard, self.root.addr(), start, 0, &needed) };
        Ok(total - linked)
    }

    /// How many of the `needed` entries of the table at `addr` (at `level`, mapping from
    /// `base`) and of the tables it links hold a table link.
    ///
    /// # Safety
    /// As [`PageTable::table_at`].
    unsafe fn linked_on(
        &self,
        guard: &Guard,
        addr: u64,
        level: u32,
        base: u64,
        needed: &[Stretches; PAGE_LEVEL as usize],
    ) -> u64 {
        let g = &self.geom;
        let shift = g.level_shift(level);
        let first = base >> shift;
        let end = first + g.entries(level) as u64 - 1;
        // SAFETY: by the caller's contract.
        let table = unsafe { self.table_at(guard, addr, level) };
        let mut linked = 0;
        for (a, b) in needed[level as usize].iter() {
            for index in a.max(first)..=b.min(end) {
                let d = table[(index - first) as usize].load(DESCENT_ACQUIRE.ord(Acquire));
                if let Descriptor::Table { addr } = pte::decode(g, level, d) {
                    linked += 1;
                    if level + 1 < PAGE_LEVEL {
                        // SAFETY: a table link read from this table under `guard`.
                        linked += unsafe {
                            self.linked_on(guard, addr, level + 1, index << shift, needed)
                        };
                    }
                }
            }
        }
        linked
    }

    /// The runs [`PageTable::map`] of these arguments fills, in ascending order, after its
    /// checks of sizes and addresses.
    fn runs(&self, iova: u64, paddr: u64, size: u64, mut f: impl FnMut(Run)) -> Result<(), Error> {
        self.check_sizes(iova, Some(paddr), size)?;
        // No page larger than the lowest bit in which `iova` and `paddr` differ ever fits.
        let apart = iova ^ paddr;
        let fits = match apart & apart.wrapping_neg() {
            0 => u64::MAX,
            low => low | (low - 1),
        };
        let mut done = 0u64;
        while done < size {
            // The steps `map` takes; each is at least one page inside the checked range.
            let (level, count) = self.step(iova + done, paddr + done, size - done)?;
            let shift = self.geom.level_shift(level);
            let larger = self.pgsize_bitmap() & !((1u64 << shift) | ((1u64 << shift) - 1));
            // Stuck at this size (`map` takes up to a table a step): the rest at once.
            let leaves = if larger & fits == 0 {
                (size - done) >> shift
            } else {
                count as u64
            };
            f(Run {
                iova: iova + done,
                level,
                leaves,
            });
            done += leaves << shift;
        }
        Ok(())
    }
}
