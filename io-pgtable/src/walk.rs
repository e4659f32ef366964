//! Lock-free readers: translation and the debug walk, under one RCU pin, with no lock and
//! no shared write.

use crate::config::Geometry;
use crate::dump::{Dump, WalkEntry};
use crate::pgtable::PageTable;
use crate::points::{READER_PIN, WALK_ACQUIRE};
use crate::pte::{self, Descriptor, Prot, TYPE_TABLE_OR_PAGE, VALID};
use crate::tlb::TlbOps;
use dma_sync::atomic::{AtomicU64, Ordering::Acquire};
use dma_sync::rcu::{self, Guard};

/// The result of a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The output address of the translated input address (leaf base plus offset).
    pub paddr: u64,
    /// The leaf's protections.
    pub prot: Prot,
    /// The level of the leaf (3 for a page).
    pub level: u32,
    /// The leaf's size (page or block).
    pub size: u64,
    /// The raw leaf descriptor.
    pub desc: u64,
}

/// The translation of `iova` by the descriptor `d` that ended a walk at `level`.
#[inline]
fn leaf(g: &Geometry, level: u32, iova: u64, d: u64) -> Option<Translation> {
    match pte::decode(g, level, d) {
        Descriptor::Leaf { paddr, prot } => {
            let size = g.block_size(level);
            Some(Translation {
                paddr: paddr + (iova & (size - 1)),
                prot,
                level,
                size,
                desc: d,
            })
        }
        // Not reached: a walk ends on a table descriptor only at the leaf level, where
        // `decode` reads it as a page.
        Descriptor::Invalid | Descriptor::Table { .. } => None,
    }
}

/// A pinned read-side view of a page table: any number of translations and walks under one
/// RCU pin. Tables reachable while it lives are not freed before it is dropped; it sees each
/// entry either before or after a concurrent map or unmap.
///
/// ```
/// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
/// use io_pgtable::{Config, PageTable, Prot};
/// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
/// pt.map(0x1000, 0x9000, 0x2000, Prot::READ).unwrap();
/// let r = pt.reader();
/// assert_eq!(r.translate(0x1010).unwrap().paddr, 0x9010);
/// assert_eq!(r.translate(0x2010).unwrap().paddr, 0xa010);
/// assert!(r.translate(0x3000).is_none());
/// ```
pub struct Reader<'a, T: TlbOps> {
    pt: &'a PageTable<T>,
    guard: Guard,
}

impl<T: TlbOps> PageTable<T> {
    /// Pin a [`Reader`] for several translations or walks.
    #[inline]
    pub fn reader(&self) -> Reader<'_, T> {
        Reader {
            pt: self,
            guard: rcu::pin_at(&READER_PIN),
        }
    }

    /// Translate `iova`, with the leaf's protections; `None` if unmapped or out of range.
    ///
    /// ```
    /// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
    /// use io_pgtable::{Config, PageTable, Prot};
    /// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    /// pt.map_pages(0x4000, 0x7000, 0x1000, 1, Prot::READ | Prot::NOEXEC).unwrap();
    /// let t = pt.iova_to_phys(0x4abc).unwrap();
    /// assert_eq!((t.paddr, t.level), (0x7abc, 3));
    /// assert_eq!(t.prot, Prot::READ | Prot::NOEXEC);
    /// ```
    #[inline]
    pub fn iova_to_phys(&self, iova: u64) -> Option<Translation> {
        self.reader().translate(iova)
    }

    /// A snapshot of every valid descriptor reachable from the root, taken under one pin.
    ///
    /// ```
    /// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
    /// use io_pgtable::{Config, PageTable, Prot};
    /// let pt = PageTable::new(Config::tiny(2)).unwrap();
    /// pt.map_pages(0x1000, 0x1000, 0x1000, 1, Prot::READ).unwrap();
    /// let d = pt.dump();
    /// assert_eq!((d.tables, d.leaves().count()), (2, 1));
    /// println!("{d}");
    /// ```
    pub fn dump(&self) -> Dump {
        self.reader().dump()
    }
}

impl<T: TlbOps> Reader<'_, T> {
    /// Translate `iova` under this reader's pin.
    #[inline]
    pub fn translate(&self, iova: u64) -> Option<Translation> {
        // One walk per start level and output-address format, each fully unrolled: the level
        // loop then has no bookkeeping, and without packed `PA[51:48]` the next table's
        // address is one mask away, so each level's dependent chain is a load and an AND.
        match (self.pt.geom.start_level(), self.pt.geom.oa_hi_mask() != 0) {
            (0, false) => self.translate_in::<0, false>(iova),
            (1, false) => self.translate_in::<1, false>(iova),
            (2, false) => self.translate_in::<2, false>(iova),
            (_, false) => self.translate_in::<3, false>(iova),
            (0, true) => self.translate_in::<0, true>(iova),
            (1, true) => self.translate_in::<1, true>(iova),
            (2, true) => self.translate_in::<2, true>(iova),
            (_, true) => self.translate_in::<3, true>(iova),
        }
    }

    /// [`Reader::translate`] for tables starting at level `START`, whose descriptors pack
    /// `PA[51:48]` iff `PA52`.
    #[inline(always)]
    fn translate_in<const START: u32, const PA52: bool>(&self, iova: u64) -> Option<Translation> {
        let g = &self.pt.geom;
        if iova >> g.ias() != 0 {
            return None;
        }
        // `translate` picks START from `g.start_level()`, the level of the root.
        let mut table: &[AtomicU64] = self.pt.root.entries();
        for level in START..4 {
            let index = g.index(level, iova);
            // SAFETY: `index` is masked to `entries(level) - 1`, and every table at `level`
            // (the root at the start level) holds `entries(level)` descriptors.
            let d = unsafe { table.get_unchecked(index) }.load(WALK_ACQUIRE.ord(Acquire));
            // The descent tests only the two type bits; anything but a table descriptor above
            // the leaf level ends the walk and is decoded in full, once.
            if level == 3 || d & (VALID | TYPE_TABLE_OR_PAGE) != VALID | TYPE_TABLE_OR_PAGE {
                return leaf(g, level, iova, d);
            }
            let next = if PA52 {
                pte::decode_oa(g, d)
            } else {
                d & g.oa_mask()
            };
            // SAFETY: `next` is the table a descriptor at `level` links to, read under the
            // reader's pin.
            table = unsafe { self.pt.table_at(&self.guard, next, level + 1) };
        }
        unreachable!("the leaf level ends every walk")
    }

    /// Visit every valid descriptor reachable from the root, depth first, in address order.
    pub fn walk(&self, mut f: impl FnMut(&WalkEntry)) {
        let g = &self.pt.geom;
        self.walk_table(
            self.pt.root.entries(),
            self.pt.root_addr(),
            g.start_level(),
            0,
            &mut f,
        );
    }

    fn walk_table(
        &self,
        table: &[AtomicU64],
        addr: u64,
        level: u32,
        base: u64,
        f: &mut impl FnMut(&WalkEntry),
    ) {
        let g = &self.pt.geom;
        for (index, e) in table.iter().enumerate() {
            let raw = e.load(WALK_ACQUIRE.ord(Acquire));
            if pte::vacant(raw) {
                continue;
            }
            let desc = pte::decode(g, level, raw);
            let iova = base + index as u64 * g.block_size(level);
            f(&WalkEntry {
                level,
                index,
                iova,
                table: addr,
                raw,
                desc,
            });
            if let Descriptor::Table { addr: next } = desc {
                // SAFETY: a table link read from this table under the reader's pin.
                let child = unsafe { self.pt.table_at(&self.guard, next, level + 1) };
                self.walk_table(child, next, level + 1, iova, f);
            }
        }
    }

    /// A snapshot of every valid descriptor reachable from the root.
    pub fn dump(&self) -> Dump {
        let mut entries = Vec::new();
        self.walk(|e| entries.push(*e));
        let tables = 1 + entries
            .iter()
            .filter(|e| matches!(e.desc, Descriptor::Table { .. }))
            .count();
        Dump {
            root: self.pt.root_addr(),
            tables,
            entries,
        }
    }
}
