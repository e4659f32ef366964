//! Lock-free readers: translation and the debug walk, under one RCU pin, with no lock and
//! no shared write.

use crate::dump::{Dump, WalkEntry};
use crate::pgtable::PageTable;
use crate::points::{READER_PIN, WALK_ACQUIRE};
use crate::pte::{self, Descriptor, Prot};
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
    pub fn translate(&self, iova: u64) -> Option<Translation> {
        let g = &self.pt.geom;
        if iova >> g.ias() != 0 {
            return None;
        }
        let mut level = g.start_level();
        let mut table: &[AtomicU64] = self.pt.root.entries();
        loop {
            let d = table[g.index(level, iova)].load(WALK_ACQUIRE.ord(Acquire));
            match pte::decode(g, level, d) {
                Descriptor::Invalid => return None,
                Descriptor::Leaf { paddr, prot } => {
                    let size = g.block_size(level);
                    return Some(Translation {
                        paddr: paddr + (iova & (size - 1)),
                        prot,
                        level,
                        size,
                        desc: d,
                    });
                }
                Descriptor::Table { addr } => {
                    table = self.pt.table_at(&self.guard, addr, level + 1);
                    level += 1;
                }
            }
        }
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
            let desc = pte::decode(g, level, raw);
            if raw == 0 {
                continue;
            }
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
                self.walk_table(
                    self.pt.table_at(&self.guard, next, level + 1),
                    next,
                    level + 1,
                    iova,
                    f,
                );
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
