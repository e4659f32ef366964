//! io-pgtable against a map of leaves and a set of tables.
//!
//! The model keeps every leaf (base, size, output address, protections) and every non-root
//! table (level, base). It predicts each call's exact result, error included, from the
//! documented contract: `map_pages` writes up to the end of one leaf table and refuses a
//! present leaf or a non-empty table where a block goes (replacing an empty one);
//! `unmap_pages` stops at the first empty entry, frees whole tables met at its level and
//! refuses to start inside a larger block; the looping `map` undoes partial progress. After
//! every step the tables the model expects must be exactly the linked ones
//! (`Stats::linked`), and translations and dumps are compared against the model.

use super::{decode, Divergence, Tracker};
use arbitrary::Arbitrary;
use io_pgtable::{AddrKind, Config, Descriptor, Error, Gather, Geometry, PageTable, Prot};
use std::collections::{BTreeMap, BTreeSet};

/// An address: mostly page-aligned inside (or just beyond) the space, sometimes a page plus
/// a small offset (misaligned), sometimes raw.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Addr {
    Page(u8),
    Page2(u8),
    Offset(u8, u16),
    Raw(u64),
}

/// A page size: one the table supports (by index), or anything.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum PageSize {
    Supported(u8),
    Raw(u64),
}

/// A page count: small, or anything (overflow).
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Count {
    Small(u8),
    Raw(usize),
}

#[derive(Debug, Arbitrary)]
enum Op {
    MapPages {
        iova: Addr,
        paddr: Addr,
        pgsize: PageSize,
        count: Count,
        prot: u8,
    },
    UnmapPages {
        iova: Addr,
        pgsize: PageSize,
        count: Count,
        queued: bool,
    },
    Map {
        iova: Addr,
        paddr: Addr,
        size: Addr,
        prot: u8,
    },
    Unmap {
        iova: Addr,
        size: Addr,
    },
    Translate {
        iova: Addr,
    },
    Dump,
    /// Make the next operation's first table allocation fail (`fault-injection` feature;
    /// otherwise nothing).
    FailNextTableAlloc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leaf {
    size: u64,
    level: u32,
    paddr: u64,
    prot: Prot,
}

/// The reference model: leaves by base address, non-root tables by (level, base).
struct Model {
    g: Geometry,
    leaves: BTreeMap<u64, Leaf>,
    tables: BTreeSet<(u32, u64)>,
    /// The next table allocation fails (and the call with it, changing nothing).
    fail_next: bool,
}

impl Model {
    fn leaf_covering(&self, iova: u64) -> Option<(u64, Leaf)> {
        let (&base, &leaf) = self.leaves.range(..=iova).next_back()?;
        (iova - base < leaf.size).then_some((base, leaf))
    }

    /// Whether any leaf maps part of `[base, base + size)`.
    fn any_leaf_in(&self, base: u64, size: u64) -> bool {
        self.leaf_covering(base).is_some() || self.leaves.range(base..base + size).next().is_some()
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
        if iova % pgsize != 0 {
            return Err(Error::Misaligned {
                kind: AddrKind::Iova,
                addr: iova,
                align: pgsize,
            });
        }
        let len = pgsize.checked_mul(count as u64).ok_or(Error::Overflow)?;
        in_bits(AddrKind::Iova, iova, len, self.g.ias())?;
        Ok((level, len))
    }

    fn map_pages(
        &mut self,
        iova: u64,
        paddr: u64,
        pgsize: u64,
        count: usize,
        prot: Prot,
    ) -> Result<usize, Error> {
        let (target, len) = self.check_input(iova, pgsize, count)?;
        if paddr % pgsize != 0 {
            return Err(Error::Misaligned {
                kind: AddrKind::Paddr,
                addr: paddr,
                align: pgsize,
            });
        }
        in_bits(AddrKind::Paddr, paddr, len, self.g.oas())?;
        if !prot.intersects(Prot::READ | Prot::WRITE) {
            return Err(Error::NoAccess);
        }
        for level in self.g.start_level()..target {
            let base = iova & !(self.g.block_size(level) - 1);
            if self.leaves.contains_key(&base) && self.leaves[&base].level == level {
                return Err(Error::Exists { iova: base });
            }
            // Installed on the way down, kept even if the call then fails.
            if !self.tables.contains(&(level + 1, base)) {
                if std::mem::take(&mut self.fail_next) {
                    return Err(Error::NoMemory);
                }
                self.tables.insert((level + 1, base));
            }
        }
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

    fn unmap_pages(&mut self, iova: u64, pgsize: u64, count: usize) -> Result<usize, Error> {
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

    fn check_sizes(&self, iova: u64, paddr: Option<u64>, size: u64) -> Result<(), Error> {
        let page = self.g.page_size();
        if size == 0 {
            return Err(Error::ZeroCount);
        }
        if iova % page != 0 {
            return Err(Error::Misaligned {
                kind: AddrKind::Iova,
                addr: iova,
                align: page,
            });
        }
        if size % page != 0 {
            return Err(Error::Misaligned {
                kind: AddrKind::Iova,
                addr: size,
                align: page,
            });
        }
        if let Some(paddr) = paddr {
            if paddr % page != 0 {
                return Err(Error::Misaligned {
                    kind: AddrKind::Paddr,
                    addr: paddr,
                    align: page,
                });
            }
            in_bits(AddrKind::Paddr, paddr, size, self.g.oas())?;
        }
        in_bits(AddrKind::Iova, iova, size, self.g.ias())
    }

    /// Linux's `iommu_pgsize`: the largest supported page that the alignment of `addr` and
    /// `left` allow, and how many of them to map before a larger page becomes possible.
    fn pgsize_count(&self, addr: u64, left: u64) -> (u64, usize) {
        let bitmap = self.g.pgsize_bitmap();
        let fits = |s: u64| s <= left && (addr == 0 || addr % s == 0);
        let pgsize = (0..64)
            .rev()
            .map(|b| 1u64 << b)
            .find(|&s| bitmap & s != 0 && fits(s))
            .unwrap_or(self.g.page_size());
        let mut span = left;
        if let Some(next) = (0..64)
            .map(|b| 1u64 << b)
            .find(|&s| s > pgsize && bitmap & s != 0)
        {
            let offset = next - (addr & (next - 1));
            if offset.saturating_add(next) <= left {
                span = offset;
            }
        }
        (pgsize, (span / pgsize) as usize)
    }

    fn map(&mut self, iova: u64, paddr: u64, size: u64, prot: Prot) -> Result<(), Error> {
        self.check_sizes(iova, Some(paddr), size)?;
        let mut done = 0;
        while done < size {
            let (pgsize, count) = self.pgsize_count((iova + done) | (paddr + done), size - done);
            match self.map_pages(iova + done, paddr + done, pgsize, count, prot) {
                Ok(n) => done += n as u64,
                Err(e) => {
                    if done > 0 {
                        let undone = self.unmap(iova, done);
                        assert_eq!(undone, Ok(done), "model: undo of a partial map");
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn unmap(&mut self, iova: u64, size: u64) -> Result<u64, Error> {
        self.check_sizes(iova, None, size)?;
        let mut done = 0;
        while done < size {
            let (pgsize, count) = self.pgsize_count(iova + done, size - done);
            match self.unmap_pages(iova + done, pgsize, count) {
                Ok(n) => done += n as u64,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }
}

fn in_bits(kind: AddrKind, addr: u64, len: u64, bits: u32) -> Result<(), Error> {
    let end = addr.checked_add(len).ok_or(Error::Overflow)?;
    if end > 1u64 << bits {
        return Err(Error::OutOfRange { kind, addr, bits });
    }
    Ok(())
}

/// Run `apply` with the next table allocation failing in the real table and in the model;
/// both must consume the failure, or neither.
#[cfg(feature = "fault-injection")]
fn fail_next_table_alloc(
    t: &Tracker,
    model: &mut Model,
    apply: impl FnOnce(&mut Model) -> Result<(), Divergence>,
) -> Result<(), Divergence> {
    model.fail_next = true;
    let (r, used) =
        dma_sync::fault::armed(&io_pgtable::faults::TABLE_ALLOC, 1, || apply(&mut *model));
    r?;
    t.same(
        "injected table-allocation failure consumed",
        used == 1,
        !model.fail_next,
    )?;
    model.fail_next = false;
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
fn fail_next_table_alloc(
    _: &Tracker,
    model: &mut Model,
    apply: impl FnOnce(&mut Model) -> Result<(), Divergence>,
) -> Result<(), Divergence> {
    apply(model)
}

/// Run one input. The first byte picks the geometry (2 to 4 tiny levels).
pub fn run(data: &[u8]) -> Result<(), Divergence> {
    let levels = 2 + u32::from(data.first().copied().unwrap_or(0) % 3);
    let ops: Vec<Op> = decode(data.get(1..).unwrap_or_default());
    let cfg = Config::tiny(levels);
    let pt = PageTable::new(cfg).expect("tiny geometry");
    let g = *pt.geometry();
    let sizes: Vec<u64> = (g.start_level()..4)
        .map(|l| g.block_size(l))
        .filter(|s| g.pgsize_bitmap() & s != 0)
        .collect();
    let space = 1u64 << g.ias();
    let pages = space / g.page_size();
    let addr = |a: Addr| match a {
        // Up to a quarter past the end of the space: out-of-range inputs stay common.
        Addr::Page(p) | Addr::Page2(p) => (u64::from(p) % (pages + pages / 4 + 1)) * g.page_size(),
        Addr::Offset(p, o) => (u64::from(p) % pages) * g.page_size() + u64::from(o),
        Addr::Raw(r) => r,
    };
    let pgsize = |p: PageSize| match p {
        PageSize::Supported(i) => sizes[usize::from(i) % sizes.len()],
        PageSize::Raw(r) => r,
    };
    let count = |c: Count| match c {
        Count::Small(n) => usize::from(n % 8),
        Count::Raw(n) => n,
    };
    let mut model = Model {
        g,
        leaves: BTreeMap::new(),
        tables: BTreeSet::new(),
        fail_next: false,
    };
    let mut armed = false;
    let mut t = Tracker::default();
    t.note(|| format!("{g:?}"));
    for (step, op) in ops.iter().enumerate() {
        t.enter(step, op);
        if let Op::FailNextTableAlloc = op {
            armed = cfg!(feature = "fault-injection");
            continue;
        }
        let apply = |model: &mut Model| -> Result<(), Divergence> {
            match *op {
                Op::MapPages {
                    iova,
                    paddr,
                    pgsize: s,
                    count: c,
                    prot,
                } => {
                    let (iova, paddr, s, c, prot) = (
                        addr(iova),
                        addr(paddr),
                        pgsize(s),
                        count(c),
                        Prot::from_bits_truncate(prot),
                    );
                    t.same(
                        "map_pages",
                        pt.map_pages(iova, paddr, s, c, prot),
                        model.map_pages(iova, paddr, s, c, prot),
                    )?;
                }
                Op::UnmapPages {
                    iova,
                    pgsize: s,
                    count: c,
                    queued,
                } => {
                    let (iova, s, c) = (addr(iova), pgsize(s), count(c));
                    let mut gather = if queued {
                        Gather::queued()
                    } else {
                        Gather::new()
                    };
                    let real = pt.unmap_pages(iova, s, c, &mut gather);
                    t.same("unmap_pages", real, model.unmap_pages(iova, s, c))?;
                    // A queued gather collects nothing, and neither does a refused call.
                    if queued || real.is_err() {
                        t.check(gather.range().is_none(), || {
                            format!("gathered {:?}", gather.range())
                        })?;
                    }
                    gather.sync(pt.tlb());
                }
                Op::Map {
                    iova,
                    paddr,
                    size,
                    prot,
                } => {
                    let (iova, paddr, size, prot) = (
                        addr(iova),
                        addr(paddr),
                        addr(size),
                        Prot::from_bits_truncate(prot),
                    );
                    t.same(
                        "map",
                        pt.map(iova, paddr, size, prot),
                        model.map(iova, paddr, size, prot),
                    )?;
                }
                Op::Unmap { iova, size } => {
                    let (iova, size) = (addr(iova), addr(size));
                    t.same("unmap", pt.unmap(iova, size), model.unmap(iova, size))?;
                }
                Op::Translate { iova } => check_translation(&t, &pt, model, addr(iova))?,
                Op::Dump => check_dump(&t, &pt, model)?,
                Op::FailNextTableAlloc => {}
            }
            Ok(())
        };
        if std::mem::take(&mut armed) {
            fail_next_table_alloc(&t, &mut model, apply)?;
        } else {
            apply(&mut model)?;
        }
        t.note(|| {
            format!(
                "model tables {:?}, leaves {:?}",
                model.tables,
                model.leaves.keys().collect::<Vec<_>>()
            )
        });
        t.same(
            "linked tables (root included)",
            pt.stats().linked(),
            1 + model.tables.len() as u64,
        )?;
    }
    t.finish();
    check_dump(&t, &pt, &model)?;
    for (&base, leaf) in &model.leaves {
        check_translation(&t, &pt, &model, base)?;
        check_translation(&t, &pt, &model, base + leaf.size - 1)?;
    }
    // Unmap everything at the largest page size: that frees every table below it.
    let top = *sizes.iter().max().expect("a page size");
    for i in 0..space / top {
        let mut gather = Gather::new();
        let real = pt.unmap_pages(i * top, top, 1, &mut gather);
        t.same("final unmap", real, model.unmap_pages(i * top, top, 1))?;
        gather.sync(pt.tlb());
    }
    let top_level = g.level_of(top).expect("supported");
    t.check(model.tables.iter().all(|&(l, _)| l <= top_level), || {
        format!("model kept tables below level {top_level}")
    })?;
    let s = pt.stats();
    t.same(
        "tables after unmapping everything",
        s.linked(),
        1 + model.tables.len() as u64,
    )?;
    t.check(s.freed <= s.discarded + s.retired, || {
        format!("freed more tables than were released: {s:?}")
    })?;
    let left: Vec<_> = pt.dump().leaves().copied().collect();
    t.check(left.is_empty(), || {
        format!(
            "leaves survived unmapping everything: {left:?} (model {:?}, g {g:?})",
            model.leaves
        )
    })
}

fn check_translation(
    t: &Tracker,
    pt: &PageTable,
    model: &Model,
    iova: u64,
) -> Result<(), Divergence> {
    let real = pt.iova_to_phys(iova);
    match (real, model.leaf_covering(iova)) {
        (None, None) => Ok(()),
        (Some(tr), Some((base, leaf))) => {
            t.same(
                &format!("translation of {iova:#x}"),
                (tr.paddr, tr.size, tr.level),
                (leaf.paddr + (iova - base), leaf.size, leaf.level),
            )?;
            // Stage 1 cannot express write-only: writable implies readable.
            t.check(
                tr.prot.contains(Prot::WRITE) == leaf.prot.contains(Prot::WRITE)
                    && (tr.prot.contains(Prot::READ) || !leaf.prot.contains(Prot::READ)),
                || {
                    format!(
                        "permissions at {iova:#x}: real {:?}, mapped {:?}",
                        tr.prot, leaf.prot
                    )
                },
            )
        }
        (real, expected) => Err(t.fail(format!(
            "translation of {iova:#x}: real {real:?}, model {expected:?}"
        ))),
    }
}

fn check_dump(t: &Tracker, pt: &PageTable, model: &Model) -> Result<(), Divergence> {
    let dump = pt.dump();
    let leaves: Vec<(u64, u32, u64)> = dump
        .leaves()
        .map(|e| match e.desc {
            Descriptor::Leaf { paddr, .. } => (e.iova, e.level, paddr),
            _ => unreachable!("leaves() yields leaves"),
        })
        .collect();
    let expected: Vec<(u64, u32, u64)> = model
        .leaves
        .iter()
        .map(|(&b, l)| (b, l.level, l.paddr))
        .collect();
    t.same("dumped leaves", leaves, expected)?;
    t.same(
        "dumped tables",
        dump.tables as u64,
        1 + model.tables.len() as u64,
    )
}
