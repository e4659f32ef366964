//! io-pgtable: an I/O page table as a map of leaves and a set of tables (Linux
//! `io-pgtable-arm.c`: `map_pages`, `unmap_pages`, `iova_to_phys`; `iommu_map` /
//! `iommu_unmap` for the looping calls; and the io-pgtable docs).
//!
//! `map_pages`/`unmap_pages` name the level (the page size), so their contract is
//! structural and predicted exactly: `map_pages` writes up to the end of one leaf table,
//! installs the tables on the way down (kept even if it then fails) and refuses a present leaf
//! or a non-empty table where a leaf goes (replacing an empty one); `unmap_pages` stops at the
//! first empty entry, frees whole tables met at its level and refuses to start inside a larger
//! block.
//!
//! The looping `map`/`unmap` choose page sizes themselves, so the model does not repeat that
//! choice: it predicts what the specification promises at page granularity
//! ([`PgtableModel::check_map`], [`PgtableModel::check_unmap`]: all or nothing for a map, a
//! prefix for an unmap, no block split, the largest pages the alignment allows) and then
//! takes the structure the table reports ([`PgtableModel::resync`]) once it is checked.

use io_pgtable::{AddrKind, Descriptor, Dump, Error, Geometry, Prot};
use std::collections::{BTreeMap, BTreeSet};

/// One leaf of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// Bytes it maps.
    pub size: u64,
    /// Its level.
    pub level: u32,
    /// Output address.
    pub paddr: u64,
    /// Protections asked for.
    pub prot: Prot,
}

/// The reference model: leaves by base address, non-root tables by (level, base).
#[derive(Debug, Clone)]
pub struct PgtableModel {
    /// The table's geometry.
    pub g: Geometry,
    /// Leaves by base address.
    pub leaves: BTreeMap<u64, Leaf>,
    /// Non-root tables by (level, base).
    pub tables: BTreeSet<(u32, u64)>,
    /// The next table allocation fails (and the call with it).
    pub fail_next: bool,
}

/// `Err` unless `addr` is a multiple of `align`.
fn aligned(kind: AddrKind, addr: u64, align: u64) -> Result<(), Error> {
    if addr % align != 0 {
        return Err(Error::Misaligned { kind, addr, align });
    }
    Ok(())
}

/// `Err` unless `[addr, addr + len)` fits in `bits` bits.
pub fn in_bits(kind: AddrKind, addr: u64, len: u64, bits: u32) -> Result<(), Error> {
    let end = addr.checked_add(len).ok_or(Error::Overflow)?;
    if end > 1u64 << bits {
        return Err(Error::OutOfRange { kind, addr, bits });
    }
    Ok(())
}

impl PgtableModel {
    /// An empty table of geometry `g`.
    pub fn new(g: Geometry) -> Self {
        PgtableModel {
            g,
            leaves: BTreeMap::new(),
            tables: BTreeSet::new(),
            fail_next: false,
        }
    }

    /// The leaf mapping `iova`, with its base.
    pub fn leaf_covering(&self, iova: u64) -> Option<(u64, Leaf)> {
        let (&base, &leaf) = self.leaves.range(..=iova).next_back()?;
        (iova - base < leaf.size).then_some((base, leaf))
    }

    /// Whether any leaf maps part of `[base, base + size)`.
    fn any_leaf_in(&self, base: u64, size: u64) -> bool {
        self.leaf_covering(base).is_some() || self.leaves.range(base..base + size).next().is_some()
    }

    /// The first mapped page of `[base, base + size)`.
    fn first_mapped_in(&self, base: u64, size: u64) -> Option<u64> {
        if self.leaf_covering(base).is_some() {
            return Some(base);
        }
        self.leaves.range(base..base + size).next().map(|(&b, _)| b)
    }

    /// Drop everything below the entry of `level` that maps `[base, base + size)`.
    fn remove_subtree(&mut self, level: u32, base: u64, size: u64) {
        let end = base + size;
        self.leaves.retain(|&b, _| b < base || b >= end);
        self.tables
            .retain(|&(l, b)| l <= level || b < base || b >= end);
    }

    fn check_input(&self, iova: u64, pgsize: u64, count: usize) -> Result<(u32, u64), Error> {
        let level = self
            .g
            .level_of(pgsize)
            .ok_or(Error::UnsupportedPageSize { pgsize })?;
        if count == 0 {
            return Err(Error::ZeroCount);
        }
        aligned(AddrKind::Iova, iova, pgsize)?;
        let len = pgsize.checked_mul(count as u64).ok_or(Error::Overflow)?;
        in_bits(AddrKind::Iova, iova, len, self.g.ias())?;
        Ok((level, len))
    }
    /// Walk a map of `iova` down to level `target`, installing the missing tables (kept even
    /// if the call then fails); `Exists` where a block stands on the way.
    fn descend(&mut self, iova: u64, target: u32) -> Result<(), Error> {
        for level in self.g.start_level()..target {
            let base = iova & !(self.g.block_size(level) - 1);
            if self.leaves.get(&base).is_some_and(|l| l.level == level) {
                return Err(Error::Exists { iova: base });
            }
            if !self.tables.contains(&(level + 1, base)) {
                if std::mem::take(&mut self.fail_next) {
                    return Err(Error::NoMemory);
                }
                self.tables.insert((level + 1, base));
            }
        }
        Ok(())
    }

    /// The tables a `map_pages(iova, _, pgsize, ..)` installs on its way down, alone: a
    /// concurrent map that restarts (its table was taken under it) has installed them in an
    /// earlier attempt, visible to others before the call's own outcome.
    pub fn install_tables(&mut self, iova: u64, pgsize: u64) {
        if let Ok((target, _)) = self.check_input(iova, pgsize, 1) {
            let _ = self.descend(iova, target);
        }
    }

    /// `map_pages`: the exact result, applied to the model.
    pub fn map_pages(
        &mut self,
        iova: u64,
        paddr: u64,
        pgsize: u64,
        count: usize,
        prot: Prot,
    ) -> Result<usize, Error> {
        let (target, len) = self.check_input(iova, pgsize, count)?;
        aligned(AddrKind::Paddr, paddr, pgsize)?;
        in_bits(AddrKind::Paddr, paddr, len, self.g.oas())?;
        if !prot.intersects(Prot::READ | Prot::WRITE) {
            return Err(Error::NoAccess);
        }
        self.descend(iova, target)?;
        let n = count.min(self.g.entries(target) - self.g.index(target, iova));
        for i in 0..n as u64 {
            if self.any_leaf_in(iova + i * pgsize, pgsize) {
                return Err(Error::Exists {
                    iova: iova + i * pgsize,
                });
            }
        }
        for i in 0..n as u64 {
            let base = iova + i * pgsize;
            self.remove_subtree(target, base, pgsize);
            self.leaves.insert(
                base,
                Leaf {
                    size: pgsize,
                    level: target,
                    paddr: paddr + i * pgsize,
                    prot,
                },
            );
        }
        Ok(n * pgsize as usize)
    }

    /// `unmap_pages`: the exact result, applied to the model.
    pub fn unmap_pages(&mut self, iova: u64, pgsize: u64, count: usize) -> Result<usize, Error> {
        let (target, _) = self.check_input(iova, pgsize, count)?;
        for level in self.g.start_level()..target {
            let size = self.g.block_size(level);
            let base = iova & !(size - 1);
            match self.leaves.get(&base) {
                Some(l) if l.level == level => {
                    return Err(Error::PartialBlock {
                        iova,
                        block_size: size,
                    })
                }
                _ if !self.tables.contains(&(level + 1, base)) => {
                    return Err(Error::NotMapped { iova })
                }
                _ => {}
            }
        }
        let n = count.min(self.g.entries(target) - self.g.index(target, iova));
        let mut done = 0;
        for i in 0..n as u64 {
            let base = iova + i * pgsize;
            let leaf_here = self.leaves.get(&base).is_some_and(|l| l.level == target);
            if !leaf_here && !self.tables.contains(&(target + 1, base)) {
                break;
            }
            self.remove_subtree(target, base, pgsize);
            self.tables.remove(&(target + 1, base));
            done += 1;
        }
        if done == 0 {
            return Err(Error::NotMapped { iova });
        }
        Ok(done * pgsize as usize)
    }

    /// The argument errors of the looping `map`/`unmap` (documented, checked before anything).
    pub fn check_sizes(&self, iova: u64, paddr: Option<u64>, size: u64) -> Result<(), Error> {
        let page = self.g.page_size();
        if size == 0 {
            return Err(Error::ZeroCount);
        }
        aligned(AddrKind::Iova, iova, page)?;
        aligned(AddrKind::Iova, size, page)?;
        if let Some(paddr) = paddr {
            aligned(AddrKind::Paddr, paddr, page)?;
            in_bits(AddrKind::Paddr, paddr, size, self.g.oas())?;
        }
        in_bits(AddrKind::Iova, iova, size, self.g.ias())
    }

    /// The translation of every mapped page: page base to (output, protections).
    pub fn pages(&self) -> BTreeMap<u64, (u64, Prot)> {
        let page = self.g.page_size();
        self.leaves
            .iter()
            .flat_map(|(&b, l)| {
                (0..l.size / page).map(move |i| (b + i * page, (l.paddr + i * page, l.prot)))
            })
            .collect()
    }

    /// Check a looping `map(iova, paddr, size, prot)` that returned `result`, given the
    /// structure the table reports afterwards (`after`): all or nothing at page granularity,
    /// an `Exists` naming an occupied entry at or before the range's first mapped page, no other
    /// page touched, and every new leaf the largest page the alignment of both addresses
    /// allows inside the range. On success the model takes the reported structure.
    pub fn check_map(
        &mut self,
        (iova, paddr, size, prot): (u64, u64, u64, Prot),
        result: Result<(), Error>,
        after: &Dump,
    ) -> Result<(), String> {
        let before = self.pages();
        let expected_err = self
            .check_sizes(iova, Some(paddr), size)
            .err()
            .or_else(|| (!prot.intersects(Prot::READ | Prot::WRITE)).then_some(Error::NoAccess));
        let conflict = match expected_err {
            None => self.first_mapped_in(iova, size),
            Some(_) => None,
        };
        let mut want = before.clone();
        match (result, expected_err, conflict) {
            (r, Some(e), _) => {
                if r != Err(e) {
                    return Err(format!("map: real {r:?}, model Err({e:?})"));
                }
            }
            (Err(Error::Exists { iova: x }), None, Some(first)) => {
                // The occupied entry: a leaf starting before the range, or an entry inside it
                // up to the first mapped page.
                let lo = self.leaf_covering(first).map_or(iova, |(b, _)| b.min(iova));
                if !(lo <= x && x <= first && x % self.g.page_size() == 0) {
                    return Err(format!(
                        "map: Exists at {x:#x}, first mapped page of the range is {first:#x}"
                    ));
                }
            }
            (Err(Error::NoMemory), None, _) if self.fail_next => self.fail_next = false,
            (r, None, Some(first)) => {
                return Err(format!("map: real {r:?}, but {first:#x} is mapped"))
            }
            (Ok(()), None, None) => {
                let page = self.g.page_size();
                for i in 0..size / page {
                    want.insert(iova + i * page, (paddr + i * page, prot));
                }
            }
            (r, None, None) => return Err(format!("map of a free range: {r:?}")),
        }
        let got = leaf_pages(after, &self.g);
        same_pages(&got, &want)?;
        if result.is_ok() {
            self.check_largest((iova, paddr, size), after)?;
        }
        self.resync(after);
        Ok(())
    }

    /// Every leaf inside `[iova, iova + size)` is the largest supported page whose block
    /// lies in the range with both addresses aligned to it (Linux `iommu_pgsize`).
    fn check_largest(
        &self,
        (iova, paddr, size): (u64, u64, u64),
        after: &Dump,
    ) -> Result<(), String> {
        let end = iova + size;
        for e in after.leaves() {
            let Descriptor::Leaf { paddr: out, .. } = e.desc else {
                continue;
            };
            if e.iova < iova || e.iova >= end || e.level <= self.g.start_level() {
                continue;
            }
            let bigger = self.g.block_size(e.level - 1);
            let base = e.iova & !(bigger - 1);
            let Some(out_base) = out.checked_sub(e.iova - base) else {
                continue;
            };
            let fits = base >= iova && base + bigger <= end && out_base % bigger == 0;
            let supported = self.g.pgsize_bitmap() & bigger != 0;
            if fits && supported && out_base == paddr + (base - iova) {
                return Err(format!(
                    "leaf at {:#x} (level {}) where a {bigger:#x} block fits",
                    e.iova, e.level
                ));
            }
        }
        Ok(())
    }

    /// Check a looping `unmap(iova, size)` that returned `result`, given the structure the
    /// table reports afterwards: the first `done` bytes are unmapped, nothing else changed,
    /// no block was cut, everything if every page of the range was mapped by leaves inside
    /// it; a refusal changes nothing and is `NotMapped` (its first page unmapped) or
    /// `PartialBlock` (its first page inside a larger leaf). The model then takes the
    /// reported structure.
    pub fn check_unmap(
        &mut self,
        (iova, size): (u64, u64),
        result: Result<u64, Error>,
        after: &Dump,
    ) -> Result<(), String> {
        let page = self.g.page_size();
        let before = self.pages();
        let mut want = before.clone();
        match (result, self.check_sizes(iova, None, size)) {
            (r, Err(e)) => {
                if r != Err(e) {
                    return Err(format!("unmap: real {r:?}, model Err({e:?})"));
                }
            }
            (Ok(done), Ok(())) => {
                if done == 0 || done > size || done % page != 0 {
                    return Err(format!("unmap of {size:#x} reported {done:#x}"));
                }
                let cut = self.leaves.iter().find(|(&b, l)| {
                    let (s, e) = (b, b + l.size);
                    s < iova + done && iova < e && (s < iova || e > iova + done)
                });
                if let Some((b, l)) = cut {
                    return Err(format!(
                        "unmap of {done:#x} at {iova:#x} cut leaf {b:#x}+{:#x}",
                        l.size
                    ));
                }
                let whole = (0..size / page).all(|i| {
                    self.leaf_covering(iova + i * page)
                        .is_some_and(|(b, l)| b >= iova && b + l.size <= iova + size)
                });
                if whole && done != size {
                    return Err(format!(
                        "unmap of a wholly mapped {size:#x} did only {done:#x}"
                    ));
                }
                want.retain(|&p, _| p < iova || p >= iova + done);
            }
            (Err(Error::NotMapped { iova: x }), Ok(())) if x == iova => {
                if before.contains_key(&iova) {
                    return Err(format!("unmap: NotMapped, but {iova:#x} is mapped"));
                }
            }
            (
                Err(Error::PartialBlock {
                    iova: x,
                    block_size,
                }),
                Ok(()),
            ) if x == iova => match self.leaf_covering(iova) {
                Some((b, l)) if l.size == block_size && (b < iova || b + l.size > iova + size) => {}
                other => {
                    return Err(format!(
                        "unmap: PartialBlock of {block_size:#x}, leaf at {iova:#x}: {other:?}"
                    ))
                }
            },
            (r, Ok(())) => return Err(format!("unmap of {iova:#x}+{size:#x}: {r:?}")),
        }
        same_pages(&leaf_pages(after, &self.g), &want)?;
        self.resync(after);
        Ok(())
    }

    /// Take the leaves and tables the table reports.
    pub fn resync(&mut self, after: &Dump) {
        self.leaves.clear();
        self.tables.clear();
        for e in &after.entries {
            match e.desc {
                Descriptor::Leaf { paddr, prot } => {
                    self.leaves.insert(
                        e.iova,
                        Leaf {
                            size: self.g.block_size(e.level),
                            level: e.level,
                            paddr,
                            prot,
                        },
                    );
                }
                Descriptor::Table { .. } => {
                    self.tables.insert((e.level + 1, e.iova));
                }
                Descriptor::Invalid => {}
            }
        }
    }
}

/// Page base to (output, protections) of a dump's leaves.
pub fn leaf_pages(d: &Dump, g: &Geometry) -> BTreeMap<u64, (u64, Prot)> {
    let page = g.page_size();
    let mut pages = BTreeMap::new();
    for e in d.leaves() {
        if let Descriptor::Leaf { paddr, prot } = e.desc {
            for i in 0..g.block_size(e.level) / page {
                pages.insert(e.iova + i * page, (paddr + i * page, prot));
            }
        }
    }
    pages
}

/// Whether two page maps agree on every page and on output addresses (protections are
/// compared by the caller where the format can express them).
fn same_pages(
    got: &BTreeMap<u64, (u64, Prot)>,
    want: &BTreeMap<u64, (u64, Prot)>,
) -> Result<(), String> {
    let diff = got
        .iter()
        .map(|(&p, &(o, _))| (p, Some(o)))
        .chain(
            want.keys()
                .filter(|p| !got.contains_key(p))
                .map(|&p| (p, None)),
        )
        .find(|&(p, o)| want.get(&p).map(|&(w, _)| w) != o);
    match diff {
        None => Ok(()),
        Some((p, real)) => Err(format!(
            "page {p:#x}: real {real:#x?}, model {:#x?}",
            want.get(&p).map(|&(w, _)| w)
        )),
    }
}

// Not under loom: the real structures are built outside a model.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use io_pgtable::{Config, PageTable};

    const RW: Prot = Prot::READ.union(Prot::WRITE);

    #[test]
    fn a_map_that_uses_pages_where_a_block_fits_is_caught() {
        let pt = PageTable::new(Config::tiny(3)).unwrap();
        let mut m = PgtableModel::new(*pt.geometry());
        // Four 4 KiB pages where one 16 KiB block fits: not what `map` promises.
        assert_eq!(pt.map_pages(0, 0, 0x1000, 4, RW), Ok(0x4000));
        let e = m.check_map((0, 0, 0x4000, RW), Ok(()), &pt.dump());
        assert!(e.is_err_and(|e| e.contains("block fits")));
        // The real looping map uses the block, and a second map of the range is refused.
        let pt = PageTable::new(Config::tiny(3)).unwrap();
        let mut m = PgtableModel::new(*pt.geometry());
        let r = pt.map(0, 0, 0x4000, RW);
        m.check_map((0, 0, 0x4000, RW), r, &pt.dump()).unwrap();
        let again = pt.map(0, 0x4000, 0x1000, RW);
        m.check_map((0, 0x4000, 0x1000, RW), again, &pt.dump())
            .unwrap();
        assert!(again.is_err());
    }

    #[test]
    fn an_unmap_that_cuts_a_block_or_claims_too_much_is_caught() {
        let pt = PageTable::new(Config::tiny(3)).unwrap();
        let mut m = PgtableModel::new(*pt.geometry());
        let r = pt.map(0, 0, 0x4000, RW);
        m.check_map((0, 0, 0x4000, RW), r, &pt.dump()).unwrap();
        // A report of one page unmapped inside the block, with the block gone, is a cut.
        let before = m.clone();
        assert!(pt
            .unmap_pages(0, 0x4000, 1, &mut io_pgtable::Gather::new())
            .is_ok());
        let e = m.check_unmap((0, 0x1000), Ok(0x1000), &pt.dump());
        assert!(e.is_err_and(|e| e.contains("cut leaf")));
        // Claiming nothing was mapped while the page is mapped is caught too.
        let e =
            before
                .clone()
                .check_unmap((0, 0x1000), Err(Error::NotMapped { iova: 0 }), &pt.dump());
        assert!(e.is_err());
    }
}
