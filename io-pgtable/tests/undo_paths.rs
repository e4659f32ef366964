//! The undo and withdraw paths of `map` and `unmap`, called sequentially with hostile
//! ranges: a `map` of blocks and pages over several tables that fails at its last step, an
//! `unmap` of a range only partly mapped (holes, a block straddling either end), the
//! accounting of the tables all this installs (`stats`, `dump`, `leaked_tables`).
#![cfg(not(loom))]

mod common;

use common::check_no_leak;
use io_pgtable::{Config, Error, PageTable, Prot};

const RW: Prot = Prot::READ.union(Prot::WRITE);
const MIB: u64 = 1 << 20;
const PAGE: u64 = 0x1000;

/// Every page of `[iova, iova + len)` translates to `paddr + offset`, or (None) to nothing.
fn check(pt: &PageTable, iova: u64, len: u64, paddr: Option<u64>) {
    for off in (0..len).step_by(PAGE as usize) {
        let t = pt.iova_to_phys(iova + off).map(|t| t.paddr());
        assert_eq!(t, paddr.map(|p| p + off), "at {:#x}", iova + off);
    }
}

/// A `map` of pages, two blocks and pages again, across three leaf tables, that meets
/// another mapping at its last page: `Exists`, every leaf it wrote taken back (blocks and
/// pages), the other mapping intact, and the tables it installed linked, counted and freed
/// by an unmap of their span and the prune.
#[test]
fn a_map_failing_at_its_last_step_takes_back_blocks_and_pages() {
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    let leaked = io_pgtable::leaked_tables();
    // The range: 1 MiB of pages, two 2 MiB blocks, 1 MiB of pages; its last page taken.
    let (iova, paddr, len) = (MIB, 0x8000_0000 + MIB, 6 * MIB);
    let last = iova + len - PAGE;
    pt.map(last, 0x1234_5000, PAGE, Prot::READ).unwrap();
    let tables = pt.stats().linked();
    assert_eq!(
        pt.map(iova, paddr, len, RW),
        Err(Error::Exists { iova: last })
    );
    check(&pt, iova, len - PAGE, None);
    assert_eq!(pt.iova_to_phys(last).map(|t| t.paddr()), Some(0x1234_5000));
    assert_eq!(pt.dump().leaves().count(), 1, "only the other mapping");
    assert!(
        pt.stats().linked() > tables,
        "the first leaf table stays linked, empty"
    );
    check_no_leak(&pt);
    // Mapping again after the other one is gone succeeds, with blocks where they fit.
    assert_eq!(pt.unmap(last, PAGE), Ok(PAGE));
    pt.map(iova, paddr, len, RW).unwrap();
    check(&pt, iova, len, Some(paddr));
    assert_eq!(pt.iova_to_phys(2 * MIB).unwrap().size(), 2 * MIB);
    assert_eq!(pt.unmap(iova, len), Ok(len));
    pt.prune(0, 1 << 39).unwrap();
    assert_eq!(pt.stats().linked(), 1, "only the root left");
    check_no_leak(&pt);
    drop(pt);
    assert_eq!(io_pgtable::leaked_tables(), leaked);
}

/// An unmap over a range only partly mapped: it unmaps up to the first hole and reports
/// that many bytes (the rest stays mapped); one that starts in a hole is `NotMapped` and
/// changes nothing.
#[test]
fn an_unmap_stops_at_the_first_hole() {
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    pt.map(0, 0x10_0000, 8 * PAGE, RW).unwrap();
    pt.map(12 * PAGE, 0x20_0000, 4 * PAGE, RW).unwrap();
    assert_eq!(
        pt.unmap(8 * PAGE, 8 * PAGE),
        Err(Error::NotMapped { iova: 8 * PAGE })
    );
    check(&pt, 0, 8 * PAGE, Some(0x10_0000));
    check(&pt, 12 * PAGE, 4 * PAGE, Some(0x20_0000));
    assert_eq!(pt.unmap(4 * PAGE, 12 * PAGE), Ok(4 * PAGE));
    check(&pt, 0, 4 * PAGE, Some(0x10_0000));
    check(&pt, 4 * PAGE, 8 * PAGE, None);
    check(&pt, 12 * PAGE, 4 * PAGE, Some(0x20_0000));
    check_no_leak(&pt);
}

/// A block straddling the end of an unmap is never split: the unmap takes the pages before
/// it and stops (a short count); one straddling the start is `PartialBlock`; the block
/// stays whole either way, and a block-sized unmap takes it.
#[test]
fn an_unmap_never_splits_a_block() {
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    // Pages over [0, 2 MiB) (the output address is not 2 MiB-aligned), a block above.
    pt.map(0, 0x4000_1000, 2 * MIB, RW).unwrap();
    pt.map(2 * MIB, 0x8000_0000, 2 * MIB, RW).unwrap();
    assert_eq!(pt.iova_to_phys(2 * MIB).unwrap().size(), 2 * MIB);
    assert_eq!(pt.unmap(MIB, 2 * MIB), Ok(MIB), "the pages, not the block");
    check(&pt, MIB, MIB, None);
    check(&pt, 2 * MIB, 2 * MIB, Some(0x8000_0000));
    assert_eq!(
        pt.unmap(3 * MIB, 2 * MIB),
        Err(Error::PartialBlock {
            iova: 3 * MIB,
            block_size: 2 * MIB
        })
    );
    check(&pt, 2 * MIB, 2 * MIB, Some(0x8000_0000));
    assert_eq!(pt.unmap(2 * MIB, 2 * MIB), Ok(2 * MIB));
    check(&pt, 2 * MIB, 2 * MIB, None);
    check(&pt, 0, MIB, Some(0x4000_1000));
    check_no_leak(&pt);
}

/// A `map` whose first step writes two blocks, one of them replacing an empty table (break
/// before make), and whose second step, in the next level-2 table, meets a table that still
/// maps a page: `Exists`, both blocks taken back (the replaced table stays retired), the
/// page kept.
#[test]
fn a_map_failing_in_its_second_table_takes_back_its_blocks() {
    const GIB: u64 = 1 << 30;
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    // An emptied leaf table under [1 GiB - 2 MiB, 1 GiB), a page kept at 1 GiB + 1 MiB.
    pt.map(GIB - 2 * MIB, 0x9000_0000, PAGE, RW).unwrap();
    assert_eq!(pt.unmap(GIB - 2 * MIB, PAGE), Ok(PAGE));
    pt.map(GIB + MIB, 0x9000_0000, PAGE, RW).unwrap();
    let before = pt.stats();
    assert_eq!(
        pt.map(GIB - 4 * MIB, 0x8000_0000, 6 * MIB, RW),
        Err(Error::Exists { iova: GIB })
    );
    check(&pt, GIB - 4 * MIB, 5 * MIB, None);
    assert_eq!(
        pt.iova_to_phys(GIB + MIB).map(|t| t.paddr()),
        Some(0x9000_0000)
    );
    assert_eq!(pt.dump().leaves().count(), 1);
    let after = pt.stats();
    assert_eq!(
        after.retired,
        before.retired + 1,
        "the empty table was replaced"
    );
    check_no_leak(&pt);
    assert_eq!(pt.unmap(GIB + MIB, PAGE), Ok(PAGE));
    pt.map(GIB - 4 * MIB, 0x8000_0000, 6 * MIB, RW).unwrap();
    check(&pt, GIB - 4 * MIB, 6 * MIB, Some(0x8000_0000));
    assert_eq!(pt.unmap(GIB - 4 * MIB, 6 * MIB), Ok(6 * MIB));
    check_no_leak(&pt);
}
