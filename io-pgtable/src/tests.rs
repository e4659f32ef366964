//! Unit tests across map, unmap and the walkers, per granule and level. Small enough for
//! Miri (they touch raw table memory).

use crate::pte::{self, Descriptor};
use crate::*;
use dma_sync::atomic::{AtomicU64, Ordering::Relaxed};
use dma_sync::Mutex;

const RW: Prot = Prot::READ.union(Prot::WRITE);

/// Records TLB calls, with the retired-table count seen at each walk flush.
#[derive(Default)]
struct Recorder {
    walks: Mutex<Vec<(u64, u64, u64)>>,
    syncs: Mutex<Vec<TlbRange>>,
    flush_alls: AtomicU64,
}

impl TlbOps for Recorder {
    fn flush_all(&self) {
        self.flush_alls.fetch_add(1, Relaxed);
    }
    fn flush_walk(&self, iova: u64, size: u64, granule: u64) {
        self.walks.lock().push((iova, size, granule));
    }
    fn sync(&self, range: &TlbRange) {
        self.syncs.lock().push(*range);
    }
}

fn configs() -> Vec<Config> {
    let mut v = Vec::new();
    for (granule, ias, oas) in [
        (Granule::Size4K, 48, 48),
        (Granule::Size4K, 32, 40),
        (Granule::Size16K, 47, 48),
        (Granule::Size64K, 48, 48),
        (Granule::Size64K, 52, 52),
        (Granule::Tiny, 18, 48),
    ] {
        // Miri: 16K/64K tables (2048/8192 descriptors) are too slow to walk under it.
        if cfg!(miri) && matches!(granule, Granule::Size16K | Granule::Size64K) {
            continue;
        }
        for stage in [Stage::S1, Stage::S2] {
            v.push(Config {
                granule,
                stage,
                ias,
                oas,
                ns: false,
            });
        }
    }
    v
}

/// An iova far from zero that is aligned to `size` and leaves room for two of them.
fn spot(g: &Geometry, size: u64) -> u64 {
    let top = 1u64 << g.ias();
    (top / 2).max(size) & !(size - 1)
}

#[test]
fn leaf_descriptors_per_granule_and_level() {
    for cfg in configs() {
        let pt = PageTable::new(cfg).unwrap();
        let g = *pt.geometry();
        for level in g.start_level()..4 {
            let size = g.block_size(level);
            if g.pgsize_bitmap() & size == 0 {
                assert_eq!(
                    pt.map_pages(0, 0, size, 1, RW),
                    Err(Error::UnsupportedPageSize { pgsize: size })
                );
                continue;
            }
            let iova = spot(&g, size);
            let paddr = (1u64 << g.oas()) - size;
            let prot = Prot::READ | Prot::CACHE | Prot::NOEXEC;
            assert_eq!(
                pt.map_pages(iova, paddr, size, 1, prot),
                Ok(size as usize),
                "{cfg:?} L{level}"
            );
            let off = size / 2 + 8;
            let t = pt.iova_to_phys(iova + off).unwrap();
            assert_eq!((t.paddr(), t.level(), t.size()), (paddr + off, level, size));
            let want = pte::leaf(&g, level, paddr, prot);
            assert_eq!(t.desc(), want);
            assert_eq!(want & 3, if level == 3 { 0b11 } else { 0b01 });
            assert_eq!(pte::decode_oa(&g, want), paddr);
            let dump = pt.dump();
            let e = dump.leaves().next().unwrap();
            assert_eq!((e.raw, e.level, e.iova), (want, level, iova));
            // Every table descriptor on the way carries the table's own, aligned address.
            for e in dump
                .entries
                .iter()
                .filter(|e| matches!(e.desc, Descriptor::Table { .. }))
            {
                let Descriptor::Table { addr } = e.desc else {
                    unreachable!()
                };
                assert_eq!(e.raw, pte::table(&g, addr));
                assert_eq!(addr % g.page_size(), 0);
                assert!(dump.entries.iter().any(|c| c.table == addr));
            }
            let mut gather = Gather::new();
            assert_eq!(
                pt.unmap_pages(iova, size, 1, &mut gather),
                Ok(size as usize)
            );
            assert_eq!(
                gather.range(),
                Some(TlbRange {
                    start: iova,
                    end: iova + size - 1,
                    pgsize: size
                })
            );
            assert!(pt.iova_to_phys(iova).is_none());
        }
    }
}

#[test]
fn map_helper_chooses_blocks_by_alignment() {
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    // 4K head up to the 2M boundary, one 2M block, a 4K tail.
    pt.map(0x1f_f000, 0x7f_f000, 0x20_2000, RW).unwrap();
    let sizes: Vec<u64> = [0x1f_f000, 0x20_0000, 0x3f_ffff, 0x40_0000]
        .iter()
        .map(|&i| pt.iova_to_phys(i).unwrap().size())
        .collect();
    assert_eq!(sizes, [0x1000, 0x20_0000, 0x20_0000, 0x1000]);
    // A misaligned paddr forces pages even where the iova could take a block.
    pt.map(0x4000_0000, 0x1000, 0x20_0000, RW).unwrap();
    assert_eq!(pt.iova_to_phys(0x4000_0000).unwrap().size(), 0x1000);
    // A 1 GiB block when both are aligned.
    pt.map(0x8000_0000, 0x1_0000_0000, 0x4000_0000, RW).unwrap();
    assert_eq!(pt.iova_to_phys(0x8000_0000).unwrap().level(), 1);
}

/// `PageTable::leaves` counts the leaves `map` writes, for every granule, alignment and
/// head/tail shape, and refuses what `map` refuses. Under Miri only the first geometry (4 KiB,
/// stage 1, 48 bits): each shape dumps a table of a thousand leaves, a minute for all four.
#[test]
fn leaves_counts_what_map_writes() {
    let geometries = if cfg!(miri) { 1 } else { usize::MAX };
    for cfg in configs().into_iter().take(geometries) {
        let pt = PageTable::new(cfg).unwrap();
        let sizes = pt.pgsize_bitmap();
        let page = sizes & sizes.wrapping_neg();
        let block = (sizes & !page) & (sizes & !page).wrapping_neg();
        let room = 1u64 << cfg.ias.min(cfg.oas);
        if block == 0 || block.saturating_mul(48) > room {
            continue;
        }
        let mut at = 0;
        for (paddr_off, size) in [
            (0, block + 2 * page),
            (page, block + 2 * page),
            (0, 3 * block),
            (page, 2 * block),
            (block - page, block + page),
        ] {
            let iova = at + block - page;
            let paddr = block * 8 + block - page + paddr_off;
            let expected = pt.leaves(iova, paddr, size).unwrap();
            pt.map(iova, paddr, size, RW).unwrap();
            let written = pt
                .dump()
                .leaves()
                .filter(|l| (iova..iova + size).contains(&l.iova))
                .count() as u64;
            assert_eq!(expected, written, "{cfg:?} {paddr_off:#x} {size:#x}");
            at += 8 * block;
        }
        assert!(pt.leaves(page / 2, 0, page).is_err());
        assert!(pt.leaves(0, page / 2, page).is_err());
        assert!(pt.leaves(0, 0, 0).is_err());
    }
}

/// [`configs`], but under Miri only the tiny granule: the tests below walk, freeze and dump
/// every table of many scattered ranges, which at interpreter speed takes minutes with
/// 512-entry tables.
fn scattered_configs() -> Vec<Config> {
    let mut v = configs();
    v.retain(|c| !cfg!(miri) || c.granule == Granule::Tiny);
    v
}

/// Ranges in fresh slots spread over the input space (so each may need tables at every level),
/// two to a slot (so the second shares some): one page, three pages, a block and two pages,
/// with `paddr` equal to `iova` or a page apart (4 KiB pages only).
fn scattered_ranges(cfg: Config) -> Vec<(u64, u64, u64)> {
    let g = cfg.geometry().unwrap();
    let sizes = g.pgsize_bitmap();
    let page = g.page_size();
    let block = (sizes & !page) & (sizes & !page).wrapping_neg();
    let room = 1u64 << cfg.ias.min(cfg.oas);
    let slot = (room >> 6).max(16 * page);
    let slots = room / slot;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    let mut out = Vec::new();
    // Slots in a scattered order: an odd stride visits every slot of a power-of-two count.
    for k in 0..slots {
        let base = (k * 37 % slots) * slot;
        let mut at = base + next(4) * page;
        for _ in 0..2 {
            let size = match next(3) {
                2 if block != 0 && 4 * block <= slot => block + 2 * page,
                1 => 3 * page,
                _ => page,
            };
            if at + size > base + slot {
                break;
            }
            let paddr = if next(2) == 0 { at } else { at ^ page };
            out.push((at, paddr, size));
            // The second range near the first (sharing its tables), or one entry of level 1
            // or 2 further (sharing only the tables above).
            let far = g.block_size(1 + next(2) as u32);
            at = match next(2) {
                0 if far <= slot / 2 && base + far > at + size => base + far,
                _ => at + size + page * (1 + next(3)),
            };
        }
    }
    out
}

#[test]
fn tables_to_install_counts_what_map_installs() {
    for cfg in scattered_configs() {
        let pt = PageTable::new(cfg).unwrap();
        let mut any = 0;
        for (iova, paddr, size) in scattered_ranges(cfg) {
            let expected = pt.tables_to_install(iova, paddr, size).unwrap();
            let before = pt.stats().linked();
            pt.map(iova, paddr, size, RW).unwrap();
            assert_eq!(
                pt.stats().linked() - before,
                expected,
                "{cfg:?} {iova:#x} {paddr:#x} {size:#x}"
            );
            assert_eq!(pt.tables_to_install(iova, paddr, size), Ok(0));
            any += expected;
        }
        assert!(any > 0, "{cfg:?}: no map installed a table");
        let page = pt.geometry().page_size();
        assert_eq!(
            pt.tables_to_install(page / 2, 0, page),
            pt.leaves(page / 2, 0, page)
        );
        assert_eq!(pt.tables_to_install(0, 0, 0), Err(Error::ZeroCount));
    }
}

/// After the unmapped gaps are pruned, the table holds exactly the tables a fresh table needs
/// for the mappings left, and those mappings still translate.
#[test]
fn prune_leaves_exactly_the_tables_the_mappings_need() {
    for cfg in scattered_configs() {
        let ranges = scattered_ranges(cfg);
        let (gone, kept): (Vec<_>, Vec<_>) =
            ranges.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        // Map every range, then unmap every other one.
        let history = || {
            let pt = PageTable::new(cfg).unwrap();
            for &(iova, paddr, size) in &ranges {
                pt.map(iova, paddr, size, RW).unwrap();
            }
            for (_, &(iova, _, size)) in &gone {
                assert_eq!(pt.unmap(iova, size), Ok(size));
            }
            pt
        };
        // Pruned gap by gap (below), or all at once, mappings included.
        let pt = history();
        let whole = history();
        whole.prune(0, 1 << cfg.ias).unwrap();
        let fresh = PageTable::new(cfg).unwrap();
        let mut kept: Vec<(u64, u64, u64)> = kept.into_iter().map(|(_, &r)| r).collect();
        kept.sort_unstable();
        for &(iova, paddr, size) in &kept {
            fresh.map(iova, paddr, size, RW).unwrap();
        }
        let mut from = 0;
        let top = 1u64 << cfg.ias;
        for &(iova, _, size) in kept.iter().chain([&(top, 0, 0)]) {
            if iova > from {
                pt.prune(from, iova - from).unwrap();
            }
            from = iova + size;
        }
        let leaves = |t: &PageTable| {
            let leaves = t
                .dump()
                .leaves()
                .map(|l| (l.iova, l.size))
                .collect::<Vec<_>>();
            (t.stats().linked(), leaves)
        };
        assert_eq!(leaves(&pt), leaves(&fresh), "{cfg:?}");
        assert_eq!(leaves(&whole), leaves(&fresh), "{cfg:?}");
        // Everything unmapped: one prune of the whole space leaves the root alone.
        for &(iova, _, size) in &kept {
            assert_eq!(pt.unmap(iova, size), Ok(size));
        }
        let page = pt.geometry().page_size();
        // A range short of a table's span frees nothing; the span itself frees the table.
        let leaf_span = pt.geometry().table_span(3);
        let at = top - leaf_span;
        pt.map(at, at, page, RW).unwrap();
        assert_eq!(pt.unmap(at, page), Ok(page));
        let linked = pt.stats().linked();
        pt.prune(at, leaf_span - page).unwrap();
        pt.prune(at + page, leaf_span - page).unwrap();
        assert_eq!(pt.stats().linked(), linked, "{cfg:?}");
        pt.prune(at, leaf_span).unwrap();
        assert_eq!(pt.stats().linked(), linked - 1, "{cfg:?}");
        pt.prune(0, top).unwrap();
        assert_eq!(pt.stats().linked(), 1, "{cfg:?}");
        assert_eq!(pt.prune(0, 0), Err(Error::ZeroCount));
        assert!(pt.prune(page / 2, page).is_err());
        assert_eq!(pt.prune(top - page, 2 * page).map_err(|_| ()), Err(()));
        assert_eq!(pt.prune(page, u64::MAX - page + 1), Err(Error::Overflow));
    }
}

#[test]
fn partial_block_unmap_is_refused_and_changes_nothing() {
    let pt = PageTable::new(Config::tiny(3)).unwrap();
    pt.map_pages(0x4000, 0x4000, 0x4000, 1, RW).unwrap(); // one 16K block at level 2
    let before = pt.dump();
    let mut gather = Gather::new();
    for (iova, size) in [(0x4000, 0x1000), (0x5000, 0x1000)] {
        assert_eq!(
            pt.unmap_pages(iova, size, 1, &mut gather),
            Err(Error::PartialBlock {
                iova,
                block_size: 0x4000
            })
        );
    }
    assert_eq!(
        pt.unmap(0x4000, 0x1000),
        Err(Error::PartialBlock {
            iova: 0x4000,
            block_size: 0x4000
        })
    );
    assert_eq!(pt.dump(), before);
    assert!(gather.is_empty());
    assert_eq!(pt.unmap(0x4000, 0x4000), Ok(0x4000));
}

#[test]
fn unmap_return_values() {
    let pt = PageTable::new(Config::tiny(2)).unwrap();
    let mut g = Gather::new();
    // Nothing mapped: an error, never a size.
    assert_eq!(
        pt.unmap_pages(0x1000, 0x1000, 1, &mut g),
        Err(Error::NotMapped { iova: 0x1000 })
    );
    pt.map_pages(0x0, 0x0, 0x1000, 2, RW).unwrap();
    // Stops at the first hole: two of three.
    assert_eq!(pt.unmap_pages(0x0, 0x1000, 3, &mut g), Ok(0x2000));
    // Capped at the end of the leaf table (4 entries).
    assert_eq!(pt.map_pages(0x6000, 0x6000, 0x1000, 5, RW), Ok(0x2000));
    assert_eq!(pt.map_pages(0x8000, 0x8000, 0x1000, 1, RW), Ok(0x1000));
    assert_eq!(pt.unmap_pages(0x6000, 0x1000, 8, &mut g), Ok(0x2000));
    assert_eq!(pt.unmap_pages(0x8000, 0x1000, 1, &mut g), Ok(0x1000));
    // The helper reports a short unmap as a short size, an empty one as an error.
    pt.map(0x9000, 0x9000, 0x1000, RW).unwrap();
    assert_eq!(pt.unmap(0x9000, 0x3000), Ok(0x1000));
    assert_eq!(
        pt.unmap(0x9000, 0x3000),
        Err(Error::NotMapped { iova: 0x9000 })
    );
    // An aligned range covering a table unmaps it wholesale, holes included (as Linux).
    pt.map(0xd000, 0xd000, 0x1000, RW).unwrap();
    assert_eq!(pt.unmap(0xc000, 0x4000), Ok(0x4000));
}

#[test]
fn table_freed_when_an_unmap_covers_it() {
    let pt = PageTable::with_tlb(Config::tiny(3), Recorder::default()).unwrap();
    // Fill the leaf table under [0x10000, 0x14000) partly: levels 1 -> 2 -> 3.
    pt.map(0x10000, 0x0, 0x2000, RW).unwrap();
    pt.map(0x13000, 0x3000, 0x1000, RW).unwrap();
    assert_eq!(pt.stats().linked(), 3);
    assert_eq!(pt.dump().tables, 3);
    // Page-sized unmaps leave the emptied table linked (another mapper may be inside).
    assert_eq!(pt.unmap(0x13000, 0x1000), Ok(0x1000));
    assert_eq!(pt.dump().tables, 3);
    // An unmap at the table's block size frees it and its leaves, after a walk flush.
    let mut g = Gather::new();
    assert_eq!(pt.unmap_pages(0x10000, 0x4000, 1, &mut g), Ok(0x4000));
    assert!(
        g.is_empty(),
        "a freed table is invalidated by the walk flush, not the gather"
    );
    assert_eq!(*pt.tlb().walks.lock(), vec![(0x10000, 0x4000, 0x1000)]);
    let s = pt.stats();
    assert_eq!((s.retired, s.linked()), (1, 2));
    assert_eq!(pt.dump().tables, 2);
    assert!(pt.iova_to_phys(0x10000).is_none());
    // A whole level-1 subtree (a level-2 table with a level-3 table below) goes together.
    pt.map(0x20000, 0x0, 0x1000, RW).unwrap();
    pt.map(0x24000, 0x0, 0x4000, RW).unwrap();
    // Stops at the empty level-1 entry for [0x30000, 0x40000): a short count.
    assert_eq!(pt.unmap(0x10000, 0x30000), Ok(0x20000));
    assert_eq!(pt.stats().linked(), 1);
    assert_eq!(pt.dump().tables, 1);
}

#[test]
fn block_replaces_only_an_empty_table() {
    let pt = PageTable::with_tlb(Config::tiny(2), Recorder::default()).unwrap();
    pt.map_pages(0x4000, 0x0, 0x1000, 1, RW).unwrap();
    assert_eq!(
        pt.map_pages(0x4000, 0x0, 0x4000, 1, RW),
        Err(Error::Exists { iova: 0x4000 })
    );
    pt.unmap(0x4000, 0x1000).unwrap();
    assert_eq!(pt.stats().linked(), 2, "the emptied table stays");
    assert_eq!(pt.map_pages(0x4000, 0x8000, 0x4000, 1, RW), Ok(0x4000));
    assert_eq!(pt.stats().linked(), 1, "the block replaced it");
    assert_eq!(*pt.tlb().walks.lock(), vec![(0x4000, 0x4000, 0x1000)]);
    assert_eq!(pt.iova_to_phys(0x5000).unwrap().paddr(), 0x9000);
}

#[test]
fn stage2_concatenated_start_index() {
    // 4K stage 2 with 40-bit input: two concatenated level-1 tables (1024 entries).
    let cfg = Config {
        granule: Granule::Size4K,
        stage: Stage::S2,
        ias: 40,
        oas: 40,
        ns: false,
    };
    let pt = PageTable::new(cfg).unwrap();
    let hi = (1u64 << 39) + 0x4000_0000; // index 513 of the concatenated table
    let lo = 0x4000_0000; // index 1: must not alias
    pt.map_pages(hi, 0x1_0000_0000, 0x1000, 1, Prot::READ)
        .unwrap();
    pt.map_pages(lo, 0x2_0000_0000, 0x1000, 1, Prot::READ)
        .unwrap();
    assert_eq!(pt.iova_to_phys(hi).unwrap().paddr(), 0x1_0000_0000);
    assert_eq!(pt.iova_to_phys(lo).unwrap().paddr(), 0x2_0000_0000);
    let dump = pt.dump();
    let top: Vec<usize> = dump
        .entries
        .iter()
        .filter(|e| e.level == 1)
        .map(|e| e.index)
        .collect();
    assert_eq!(top, [1, 513]);
    assert!(dump.leaves().any(|e| e.iova == hi));
    let mut g = Gather::new();
    assert_eq!(pt.unmap_pages(hi, 0x1000, 1, &mut g), Ok(0x1000));
    assert!(pt.iova_to_phys(hi).is_none());
    assert_eq!(pt.iova_to_phys(lo).unwrap().paddr(), 0x2_0000_0000);
    assert_eq!(pt.unmap(hi & !0x3fff_ffff, 0x4000_0000), Ok(0x4000_0000));
}

#[test]
fn bad_input_is_refused_and_the_table_keeps_working() {
    let pt = PageTable::new(Config::tiny(2)).unwrap(); // 16-bit input, 48-bit output
    pt.map_pages(0x1000, 0x1000, 0x1000, 1, RW).unwrap();
    let before = pt.dump();
    let mut g = Gather::new();
    let iova = AddrKind::Iova;
    let cases: Vec<(Result<usize, Error>, Error)> = vec![
        (
            pt.map_pages(0x1000, 0x0, 0x2000, 1, RW),
            Error::UnsupportedPageSize { pgsize: 0x2000 },
        ),
        (
            pt.map_pages(0x1000, 0x0, 0, 1, RW),
            Error::UnsupportedPageSize { pgsize: 0 },
        ),
        (pt.map_pages(0x2000, 0x0, 0x1000, 0, RW), Error::ZeroCount),
        (
            pt.map_pages(0x2800, 0x0, 0x1000, 1, RW),
            Error::Misaligned {
                kind: iova,
                addr: 0x2800,
                align: 0x1000,
            },
        ),
        (
            pt.map_pages(0x2000, 0x10, 0x1000, 1, RW),
            Error::Misaligned {
                kind: AddrKind::Paddr,
                addr: 0x10,
                align: 0x1000,
            },
        ),
        (
            pt.map_pages(0x1_0000, 0x0, 0x1000, 1, RW),
            Error::OutOfRange {
                kind: iova,
                addr: 0x1_0000,
                bits: 16,
            },
        ),
        (
            pt.map_pages(0xf000, 0x0, 0x1000, 2, RW),
            Error::OutOfRange {
                kind: iova,
                addr: 0xf000,
                bits: 16,
            },
        ),
        (
            pt.map_pages(0x2000, 1 << 48, 0x1000, 1, RW),
            Error::OutOfRange {
                kind: AddrKind::Paddr,
                addr: 1 << 48,
                bits: 48,
            },
        ),
        (
            pt.map_pages(0x2000, 0x0, 0x1000, usize::MAX, RW),
            Error::Overflow,
        ),
        (
            pt.map_pages(0x2000, 0x0, 0x1000, 1, Prot::CACHE),
            Error::NoAccess,
        ),
        (
            pt.map_pages(0x1000, 0x0, 0x1000, 1, RW),
            Error::Exists { iova: 0x1000 },
        ),
        (
            pt.unmap_pages(0x2000, 0x1000, 1, &mut g),
            Error::NotMapped { iova: 0x2000 },
        ),
        (pt.unmap_pages(0x1000, 0x1000, 0, &mut g), Error::ZeroCount),
        (pt.unmap_pages(!0xfff, 0x1000, 2, &mut g), Error::Overflow),
    ];
    for (got, want) in cases {
        assert_eq!(got, Err(want));
        assert!(!want.to_string().is_empty());
    }
    assert_eq!(pt.map(0x2000, 0x0, 0, RW), Err(Error::ZeroCount));
    assert_eq!(
        pt.unmap(0x2000, 0x800),
        Err(Error::Misaligned {
            kind: iova,
            addr: 0x800,
            align: 0x1000
        })
    );
    assert_eq!(pt.dump(), before);
    assert!(g.is_empty());
    pt.map_pages(0x2000, 0x2000, 0x1000, 1, RW).unwrap();
    assert_eq!(pt.iova_to_phys(0x2000).unwrap().paddr(), 0x2000);
    assert!(
        pt.iova_to_phys(1 << 20).is_none(),
        "beyond ias translates to nothing"
    );
}

#[test]
fn map_helper_undoes_partial_progress() {
    let pt = PageTable::new(Config::tiny(2)).unwrap();
    pt.map_pages(0x6000, 0x6000, 0x1000, 1, RW).unwrap();
    let before = pt.dump();
    // 0x4000..0x8000 would map 0x4000 and 0x5000 first, then meet 0x6000.
    assert_eq!(
        pt.map(0x4000, 0x104000, 0x1000 * 3, RW),
        Err(Error::Exists { iova: 0x6000 })
    );
    assert_eq!(pt.dump(), before);
}

#[test]
fn gather_receives_leaves_unless_queued() {
    let pt = PageTable::with_tlb(Config::tiny(2), Recorder::default()).unwrap();
    pt.map(0x0, 0x0, 0x4000, RW).unwrap(); // one 16K block
    pt.map(0x5000, 0x0, 0x3000, RW).unwrap(); // three pages
    let mut g = Gather::new();
    pt.unmap_with(0x0, 0x4000, &mut g).unwrap();
    pt.unmap_with(0x5000, 0x2000, &mut g).unwrap(); // new size: the block range is synced
    assert_eq!(
        *pt.tlb().syncs.lock(),
        vec![TlbRange {
            start: 0,
            end: 0x3fff,
            pgsize: 0x4000
        }]
    );
    assert_eq!(
        g.range(),
        Some(TlbRange {
            start: 0x5000,
            end: 0x6fff,
            pgsize: 0x1000
        })
    );
    let mut q = Gather::queued();
    pt.unmap_pages(0x7000, 0x1000, 1, &mut q).unwrap();
    assert!(q.is_empty());
}

#[test]
fn install_loser_frees_its_table_and_teardown_frees_the_rest() {
    let pt = PageTable::with_tlb(Config::tiny(3), Recorder::default()).unwrap();
    pt.map(0x0, 0x0, 0x3_0000, RW).unwrap();
    pt.map(0x3_1000, 0x0, 0x1000, RW).unwrap();
    let s = pt.stats();
    assert_eq!((s.allocated, s.linked() as usize), (3, pt.dump().tables));
    // Teardown frees every reachable table directly (a double free would be Miri UB).
    drop(pt);
}

#[test]
#[cfg_attr(miri, ignore)]
fn big_granules_fill_a_whole_leaf_table() {
    for granule in [Granule::Size4K, Granule::Size16K, Granule::Size64K] {
        let cfg = Config {
            granule,
            stage: Stage::S1,
            ias: 48,
            oas: 48,
            ns: true,
        };
        let pt = PageTable::new(cfg).unwrap();
        let g = *pt.geometry();
        let n = g.entries(3);
        assert_eq!(
            pt.map_pages(0, 0, g.page_size(), n + 1, RW),
            Ok(n * g.page_size() as usize)
        );
        assert!(pt
            .dump()
            .entries
            .iter()
            .all(|e| (e.raw & pte::NSTABLE != 0) == (e.level < 3)));
        assert_eq!(pt.unmap(0, g.block_size(2)), Ok(g.block_size(2)));
        assert_eq!(pt.stats().linked(), g.levels() as u64 - 1);
    }
}

/// Two writers on disjoint pages of one leaf table and a reader translating and dumping:
/// small enough for Miri's data-race and use-after-free checks.
#[test]
fn concurrent_writers_and_reader_small() {
    let pt = dma_sync::Arc::new(PageTable::new(Config::tiny(3)).unwrap());
    let rounds = if cfg!(miri) { 3 } else { 200 };
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let pt = pt.clone();
            dma_sync::thread::spawn(move || {
                for _ in 0..rounds {
                    let iova = 0x1_0000 + w * 0x1000;
                    pt.map(iova, 0x10_0000 + iova, 0x1000, RW).unwrap();
                    // Free the shared level-2 subtree's neighbour half: w owns [w*0x8000 .. +0x8000) of 0x2_0000.
                    pt.map(0x2_0000 + w * 0x8000, 0x0, 0x4000, RW).unwrap();
                    assert_eq!(pt.unmap(0x2_0000 + w * 0x8000, 0x8000), Ok(0x4000));
                    assert_eq!(pt.unmap(iova, 0x1000), Ok(0x1000));
                }
            })
        })
        .collect();
    let reader = {
        let pt = pt.clone();
        dma_sync::thread::spawn(move || {
            for i in 0..rounds {
                if let Some(t) = pt.iova_to_phys(0x1_0000 + (i % 2) * 0x1000) {
                    assert_eq!(t.paddr(), 0x11_0000 + (i % 2) * 0x1000);
                }
                let d = pt.dump();
                assert!(d.tables >= 1);
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    reader.join().unwrap();
    assert_eq!(pt.dump().leaves().count(), 0);
    assert_eq!(pt.stats().linked() as usize, pt.dump().tables);
}

#[test]
fn tables_are_shareable_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<PageTable>();
    shareable::<PageTable<Recorder>>();
    shareable::<Gather>();
}

#[test]
fn translation_agrees_with_the_walk_for_every_start_level() {
    // Each start level, output-address format and granule class has its own unrolled
    // translation walk: cover 1 to 4 levels, 48- and 52-bit output, the 4 KiB granule and
    // the others, stage 1 and 2, against the debug walk (which decodes with `pte::decode`).
    let mut cfgs: Vec<Config> = (1..=4).map(Config::tiny).collect();
    // Miri: 64K tables (up to 8192 descriptors) are too slow under it; tiny covers the walks.
    let big = if cfg!(miri) {
        &[][..]
    } else {
        &[(29, 52), (42, 52), (52, 52), (29, 48), (42, 48)][..]
    };
    for &(ias, oas) in big {
        for stage in [Stage::S1, Stage::S2] {
            cfgs.push(Config {
                granule: Granule::Size64K,
                stage,
                ias,
                oas,
                ns: false,
            });
        }
    }
    // The 4 KiB walks (constant shifts and masks) from every start level, stage-2
    // concatenation (ias 40) included; Miri: 512-entry tables are fine.
    for ias in [21, 30, 39, 40, 48] {
        for stage in [Stage::S1, Stage::S2] {
            cfgs.push(Config {
                granule: Granule::Size4K,
                stage,
                ias,
                oas: 48,
                ns: false,
            });
        }
    }
    for cfg in cfgs {
        let pt = PageTable::new(cfg).unwrap();
        let g = *pt.geometry();
        let page = g.page_size();
        let iova = spot(&g, page);
        let paddr = (1u64 << g.oas()) - page;
        pt.map_pages(iova, paddr, page, 1, RW | Prot::PRIV).unwrap();
        let t = pt.iova_to_phys(iova + 12).unwrap();
        let leaf = pt.dump().leaves().next().copied().unwrap();
        let Descriptor::Leaf { paddr: base, prot } = leaf.desc else {
            unreachable!("leaves() yields leaves")
        };
        assert_eq!(
            (t.paddr(), t.prot(), t.level(), t.desc()),
            (base + 12, prot, leaf.level, leaf.raw),
            "{cfg:?}"
        );
        assert_eq!(t.paddr(), paddr + 12, "{cfg:?}");
        assert!(pt.iova_to_phys(iova + page).is_none(), "{cfg:?}");
        assert!(pt.iova_to_phys(1 << g.ias()).is_none(), "{cfg:?}");
    }
}

/// Formats of both descent layouts for the one-page paths: constant (four-level 4 KiB, with
/// a full and a two-entry root, stage 1 and 2) and read from the geometry (4 KiB from level 1,
/// stage-2 concatenation, the tiny granule down to a root that is the leaf table, 64 KiB).
fn one_page_configs() -> Vec<Config> {
    let s2 = |ias| Config {
        stage: Stage::S2,
        ..Config::s1_4k(ias)
    };
    let mut v = vec![
        Config::s1_4k(48),
        Config::s1_4k(40),
        s2(44),
        Config::s1_4k(39),
        s2(40),
        Config::tiny(3),
        Config::tiny(1),
    ];
    // Miri: 64K tables (8192 descriptors) are too slow under it.
    if !cfg!(miri) {
        v.push(Config {
            granule: Granule::Size64K,
            oas: 52,
            ..Config::s1_4k(48)
        });
    }
    v
}

#[test]
fn one_page_map_installs_missing_tables_and_unmap_keeps_them() {
    for cfg in one_page_configs() {
        let pt = PageTable::new(cfg).unwrap();
        let g = *pt.geometry();
        let page = g.page_size();
        let iova = spot(&g, page);
        let paddr = (1u64 << g.oas()) - page;
        assert_eq!(pt.map(iova, paddr, page, RW), Ok(()), "{cfg:?}");
        let levels = u64::from(g.levels());
        assert_eq!(pt.stats().linked(), levels, "{cfg:?}");
        let t = pt.iova_to_phys(iova + 8).unwrap();
        assert_eq!(
            (t.paddr(), t.size(), t.level()),
            (paddr + 8, page, 3),
            "{cfg:?}"
        );
        // The slot is taken, through either entry point.
        let before = pt.dump();
        assert_eq!(pt.map(iova, 0, page, RW), Err(Error::Exists { iova }));
        assert_eq!(
            pt.map_pages(iova, 0, page, 1, RW),
            Err(Error::Exists { iova })
        );
        assert_eq!(pt.dump(), before, "{cfg:?}");
        assert_eq!(pt.unmap(iova, page), Ok(page), "{cfg:?}");
        assert!(pt.iova_to_phys(iova).is_none(), "{cfg:?}");
        let mut gather = Gather::new();
        assert_eq!(
            pt.unmap_pages(iova, page, 1, &mut gather),
            Err(Error::NotMapped { iova })
        );
        assert_eq!(pt.unmap(iova, page), Err(Error::NotMapped { iova }));
        // A page-sized unmap leaves the emptied tables linked; the next map reuses them.
        assert_eq!(pt.stats().linked(), levels, "{cfg:?}");
        let allocated = pt.stats().allocated;
        assert_eq!(pt.map_pages(iova, paddr, page, 1, RW), Ok(page as usize));
        assert_eq!(pt.stats().allocated, allocated, "{cfg:?}");
        assert_eq!(pt.iova_to_phys(iova).unwrap().paddr(), paddr, "{cfg:?}");
    }
}

#[test]
fn one_page_paths_refuse_a_page_inside_a_block() {
    for cfg in one_page_configs() {
        let pt = PageTable::new(cfg).unwrap();
        let g = *pt.geometry();
        let page = g.page_size();
        let Some(level) = (g.start_level()..3)
            .rev()
            .find(|&l| g.pgsize_bitmap() & g.block_size(l) != 0)
        else {
            continue; // no block level (a single level)
        };
        let block = g.block_size(level);
        let base = spot(&g, block);
        pt.map(base, 0, block, RW).unwrap();
        let before = pt.dump();
        let mut gather = Gather::new();
        for iova in [base, base + page, base + block - page] {
            assert_eq!(
                pt.map(iova, 0, page, RW),
                Err(Error::Exists { iova: base }),
                "{cfg:?}"
            );
            assert_eq!(
                pt.map_pages(iova, 0, page, 1, RW),
                Err(Error::Exists { iova: base })
            );
            let partial = Error::PartialBlock {
                iova,
                block_size: block,
            };
            assert_eq!(pt.unmap(iova, page), Err(partial), "{cfg:?}");
            assert_eq!(pt.unmap_pages(iova, page, 1, &mut gather), Err(partial));
        }
        assert_eq!(pt.dump(), before, "{cfg:?}");
        assert!(gather.is_empty());
        assert_eq!(pt.unmap(base, block), Ok(block), "{cfg:?}");
    }
}

#[test]
fn one_page_bad_input_is_a_typed_error_and_changes_nothing() {
    for cfg in one_page_configs() {
        let pt = PageTable::new(cfg).unwrap();
        let g = *pt.geometry();
        let page = g.page_size();
        let iova = spot(&g, page);
        pt.map(iova, 0, page, RW).unwrap();
        let before = pt.dump();
        let (top, oa_top) = (1u64 << g.ias(), 1u64 << g.oas());
        let misaligned = |kind, addr| Error::Misaligned {
            kind,
            addr,
            align: page,
        };
        let out = |kind, addr, bits| Error::OutOfRange { kind, addr, bits };
        let mut gather = Gather::new();
        let free = iova + page;
        let maps = [
            (
                pt.map(free + 8, 0, page, RW),
                misaligned(AddrKind::Iova, free + 8),
            ),
            (pt.map(free, 8, page, RW), misaligned(AddrKind::Paddr, 8)),
            (pt.map(top, 0, page, RW), out(AddrKind::Iova, top, g.ias())),
            (
                pt.map(free, oa_top, page, RW),
                out(AddrKind::Paddr, oa_top, g.oas()),
            ),
            (pt.map(free, 0, page, Prot::CACHE), Error::NoAccess),
            (pt.map(iova, 0, page, RW), Error::Exists { iova }),
        ];
        let map_pages = [
            (
                pt.map_pages(free, 0, page, 1, Prot::NOEXEC),
                Error::NoAccess,
            ),
            (pt.map_pages(!(page - 1), 0, page, 1, RW), Error::Overflow),
            (
                pt.map_pages(top, 0, page, 1, RW),
                out(AddrKind::Iova, top, g.ias()),
            ),
        ];
        let unmaps = [
            (
                pt.unmap(iova + 8, page),
                misaligned(AddrKind::Iova, iova + 8),
            ),
            (pt.unmap(top, page), out(AddrKind::Iova, top, g.ias())),
            (pt.unmap(free, page), Error::NotMapped { iova: free }),
        ];
        let unmap_pages = [
            (
                pt.unmap_pages(top, page, 1, &mut gather),
                out(AddrKind::Iova, top, g.ias()),
            ),
            (
                pt.unmap_pages(!(page - 1), page, 1, &mut gather),
                Error::Overflow,
            ),
            (
                pt.unmap_pages(iova + 8, page, 1, &mut gather),
                misaligned(AddrKind::Iova, iova + 8),
            ),
        ];
        for (got, want) in maps {
            assert_eq!(got, Err(want), "{cfg:?}");
        }
        for (got, want) in map_pages.into_iter().chain(unmap_pages) {
            assert_eq!(got, Err(want), "{cfg:?}");
        }
        for (got, want) in unmaps {
            assert_eq!(got, Err(want), "{cfg:?}");
        }
        assert_eq!(pt.dump(), before, "{cfg:?}");
        assert!(gather.is_empty());
    }
}

#[test]
fn racing_maps_of_one_page_one_wins_the_others_exist() {
    let rounds = if cfg!(miri) { 2 } else { 100 };
    for cfg in [Config::s1_4k(48), Config::tiny(3)] {
        for round in 0..rounds {
            // A fresh table: the mappers also race to install the missing tables.
            let pt = PageTable::new(cfg).unwrap();
            let page = pt.geometry().page_size();
            let iova = spot(pt.geometry(), page) + (round % 4) * page;
            let results: Vec<_> = std::thread::scope(|s| {
                let mappers: Vec<_> = (1..=3u64)
                    .map(|m| {
                        let pt = &pt;
                        s.spawn(move || (m, pt.map(iova, m * page, page, RW)))
                    })
                    .collect();
                mappers.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let winners: Vec<u64> = results
                .iter()
                .filter_map(|&(m, r)| r.is_ok().then_some(m))
                .collect();
            assert_eq!(winners.len(), 1, "{cfg:?}: {results:?}");
            for &(_, r) in &results {
                assert!(
                    r.is_ok() || r == Err(Error::Exists { iova }),
                    "{cfg:?}: {r:?}"
                );
            }
            let t = pt.iova_to_phys(iova).unwrap();
            assert_eq!(t.paddr(), winners[0] * page, "{cfg:?}");
            let s = pt.stats();
            assert_eq!(s.linked(), u64::from(pt.geometry().levels()), "{cfg:?}");
            assert_eq!(s.allocated, s.linked() + s.discarded, "{cfg:?}");
            assert_eq!(pt.unmap(iova, page), Ok(page));
        }
    }
}

/// Tables an unmap keeps because its walk flush unwound are freed when the page table is
/// dropped, after its `flush_all`, and not before: every allocated table freed once.
#[test]
fn tables_kept_after_an_unwound_walk_flush_are_freed_on_drop() {
    #[derive(Default)]
    struct FailWalks(AtomicU64);
    impl TlbOps for FailWalks {
        fn flush_all(&self) {
            self.0.store(0, Relaxed);
        }
        fn flush_walk(&self, _: u64, _: u64, _: u64) {
            if self.0.load(Relaxed) != 0 {
                panic!("walk flush refused");
            }
        }
        fn sync(&self, _: &TlbRange) {}
    }
    let pt = PageTable::with_tlb(Config::tiny(3), FailWalks::default()).unwrap();
    let block = pt.geometry().block_size(pt.geometry().start_level() + 1);
    pt.map(0x1000, 0x1000, 0x1000, RW).unwrap();
    pt.tlb().0.store(1, Relaxed);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pt.unmap(0, block)));
    assert!(unwound.is_err());
    let s = pt.stats();
    assert_eq!((s.allocated, s.retired, s.freed), (3, 1, 0), "{s:?}");
    assert_eq!(pt.dump().tables, 2);
    let counters = pt.stats.clone();
    drop(pt);
    assert_eq!(counters.freed.load(Relaxed), 3, "every table freed once");
}
