//! io-pgtable against [`dma_model::pgtable`]: a map of leaves and a set of tables.
//!
//! `map_pages`/`unmap_pages` get the model's exact prediction, error included; the looping
//! `map`/`unmap` are checked against the page-level promises (all or nothing, a prefix, no
//! block cut, the largest pages), after which the model takes the structure the table
//! dumps. After every step the tables the model expects must be exactly the linked ones
//! (`Stats::linked`), and translations and dumps are compared against the model.

use super::{decode, Divergence, Tracker};
use arbitrary::Arbitrary;
use dma_model::pgtable::PgtableModel as Model;
use io_pgtable::{Config, Descriptor, Gather, PageTable, Prot};

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
    let mut model = Model::new(g);
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
                    let real = pt.map(iova, paddr, size, prot);
                    model
                        .check_map((iova, paddr, size, prot), real, &pt.dump())
                        .map_err(|e| t.fail(e))?;
                }
                Op::Unmap { iova, size } => {
                    let (iova, size) = (addr(iova), addr(size));
                    let real = pt.unmap(iova, size);
                    model
                        .check_unmap((iova, size), real, &pt.dump())
                        .map_err(|e| t.fail(e))?;
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
                (tr.paddr(), tr.size(), tr.level()),
                (leaf.paddr + (iova - base), leaf.size, leaf.level),
            )?;
            // Stage 1 cannot express write-only: writable implies readable.
            t.check(
                tr.prot().contains(Prot::WRITE) == leaf.prot.contains(Prot::WRITE)
                    && (tr.prot().contains(Prot::READ) || !leaf.prot.contains(Prot::READ)),
                || {
                    format!(
                        "permissions at {iova:#x}: real {:?}, mapped {:?}",
                        tr.prot(),
                        leaf.prot
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
