//! Fault injection: table-level allocation made to fail during single maps, multi-level maps,
//! the `map` helper across several leaf tables, and a random workload. After every failure the
//! call returned `Error::NoMemory`, the table translates exactly as a reference map says, no
//! table is leaked (tables counted as linked are the tables reachable from the root, retired
//! ones are freed), and the table keeps working once the site is disarmed. Arming is per
//! thread, so these tests run in parallel.
#![cfg(not(loom))]

mod common;

use common::check_no_leak;
use dma_sync::fault::armed;
use io_pgtable::faults::TABLE_ALLOC;
use io_pgtable::{Config, Error, PageTable, Prot};
use proptest::prelude::*;
use std::collections::BTreeMap;

const PAGE: u64 = 0x1000;
const RW: Prot = Prot::READ.union(Prot::WRITE);

/// Page number -> physical address of the page, as the table should translate.
type Reference = BTreeMap<u64, u64>;

fn record(reference: &mut Reference, iova: u64, paddr: u64, len: u64) {
    for off in (0..len).step_by(PAGE as usize) {
        reference.insert((iova + off) / PAGE, paddr + off);
    }
}

fn forget(reference: &mut Reference, iova: u64, len: u64) {
    reference.retain(|&p, _| p < iova / PAGE || p >= (iova + len) / PAGE);
}

/// Every page in `pages` translates as `reference` says (and nothing else is mapped there).
fn check_translations(pt: &PageTable, reference: &Reference, pages: impl Iterator<Item = u64>) {
    for page in pages {
        let got = pt.iova_to_phys(page * PAGE).map(|t| t.paddr());
        assert_eq!(got, reference.get(&page).copied(), "page {page:#x}");
    }
    // Nothing is mapped that the reference does not know of.
    let dump = pt.dump();
    let mapped: u64 = dump
        .entries
        .iter()
        .filter(|e| !matches!(e.desc, io_pgtable::Descriptor::Table { .. }))
        .map(|e| pt.geometry().block_size(e.level) / PAGE)
        .sum();
    assert_eq!(mapped, reference.len() as u64, "{dump}");
}

/// Disarmed, the table maps and unmaps a fresh range (needing new tables) and takes it back.
fn check_keeps_working(pt: &PageTable, reference: &Reference, iova: u64, len: u64) {
    let before = pt.stats().allocated;
    pt.map(iova, 0x4000_0000, len, RW).unwrap();
    assert_eq!(
        pt.iova_to_phys(iova + len - PAGE).unwrap().paddr(),
        0x4000_0000 + len - PAGE
    );
    assert!(
        pt.stats().allocated > before,
        "the fresh range needed tables"
    );
    assert_eq!(pt.unmap(iova, len), Ok(len));
    check_translations(pt, reference, (iova / PAGE)..((iova + len) / PAGE));
    check_no_leak(pt);
}

#[test]
fn no_root_table_is_a_typed_error() {
    let (r, used) = armed(&TABLE_ALLOC, 1, || PageTable::new(Config::s1_4k(39)));
    assert_eq!((r.err(), used), (Some(Error::NoMemory), 1));
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    assert_eq!(pt.stats().allocated, 1);
}

#[test]
fn single_map_fails_and_changes_nothing() {
    let pt = PageTable::new(Config::s1_4k(48)).unwrap();
    let reference = Reference::new();
    let before = pt.stats();
    let (r, used) = armed(&TABLE_ALLOC, 1, || {
        pt.map_pages(0x5000, 0x9000, PAGE, 3, RW)
    });
    assert_eq!((r, used), (Err(Error::NoMemory), 1));
    // The first missing level failed: not even an intermediate table was installed.
    assert_eq!(pt.stats(), before);
    check_translations(&pt, &reference, 0..16);
    check_no_leak(&pt);
    check_keeps_working(&pt, &reference, 0x5000, 3 * PAGE);
}

#[test]
fn each_level_of_a_multi_level_map_fails_cleanly() {
    // Four levels (0..=3). A neighbour mapping shares the upper tables, so the failing map
    // needs its first new table at level 1, 2 or 3 in turn, with the levels above present.
    let pt = PageTable::new(Config::s1_4k(48)).unwrap();
    let mut reference = Reference::new();
    pt.map(0, 0x10_0000, PAGE, RW).unwrap();
    record(&mut reference, 0, 0x10_0000, PAGE);
    // (iova of the failing map, the span its first missing table would serve)
    let cases = [
        (1 << 39, "level 1: a new 512G region"),
        (
            1 << 30,
            "level 2: a new 1G region under the present level-1 table",
        ),
        (
            1 << 21,
            "level 3: a new 2M region under the present level-2 table",
        ),
    ];
    for (iova, what) in cases {
        let before = pt.stats();
        let (r, used) = armed(&TABLE_ALLOC, usize::MAX, || {
            pt.map_pages(iova, 0x20_0000, PAGE, 2, RW)
        });
        assert_eq!((r, used), (Err(Error::NoMemory), 1), "{what}");
        assert_eq!(pt.stats(), before, "{what}: no table installed");
        assert!(pt.iova_to_phys(iova).is_none(), "{what}");
        check_translations(&pt, &reference, 0..4);
        check_no_leak(&pt);
    }
    // A block map whose level already exists needs no table: unaffected by the armed site.
    let (r, used) = armed(&TABLE_ALLOC, usize::MAX, || {
        pt.map_pages(1 << 21, 1 << 21, 1 << 21, 1, RW)
    });
    assert_eq!((r, used), (Ok(1 << 21), 0));
    record(&mut reference, 1 << 21, 1 << 21, 1 << 21);
    check_translations(&pt, &reference, (0..4).chain(512..516));
    check_no_leak(&pt);
    for (iova, _) in cases {
        check_keeps_working(&pt, &reference, iova + (1 << 22), 2 * PAGE);
    }
}

#[test]
fn map_helper_undoes_the_leaf_tables_it_filled() {
    // Pages from 1M to 5M at 4K (paddr unaligned for blocks): the first leaf table exists
    // already, the next two (2M..4M, 4M..6M) must be allocated.
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    let mut reference = Reference::new();
    pt.map_pages(0, 0x7000_0000, PAGE, 1, RW).unwrap();
    record(&mut reference, 0, 0x7000_0000, PAGE);
    let (iova, paddr, len) = (0x10_0000, 0x8000_1000, 0x40_0000);
    for failures in 1..=2 {
        let before = pt.stats();
        let (r, used) = armed(&TABLE_ALLOC, failures, || pt.map(iova, paddr, len, RW));
        assert_eq!(
            (r, used),
            (Err(Error::NoMemory), 1),
            "fails at the second leaf table"
        );
        // The first leaf table's pages were mapped, then undone.
        assert_eq!(pt.stats(), before);
        check_translations(&pt, &reference, 0..0x600);
        check_no_leak(&pt);
    }
    // Arming fails the *next* allocations, so to fail at the third leaf table the second must
    // exist already: a page mapped and unmapped again leaves it linked, empty.
    pt.map_pages(0x20_0000, 0x6000_0000, PAGE, 1, RW).unwrap();
    assert_eq!(pt.unmap(0x20_0000, PAGE), Ok(PAGE));
    let (r, used) = armed(&TABLE_ALLOC, 1, || pt.map(iova, paddr, len, RW));
    assert_eq!(
        (r, used),
        (Err(Error::NoMemory), 1),
        "fails at the third leaf table"
    );
    check_translations(&pt, &reference, 0..0x600);
    check_no_leak(&pt);
    // Disarmed: the whole range maps through every leaf table, and goes again.
    pt.map(iova, paddr, len, RW).unwrap();
    record(&mut reference, iova, paddr, len);
    check_translations(&pt, &reference, 0..0x600);
    assert_eq!(pt.unmap(iova, len), Ok(len));
    forget(&mut reference, iova, len);
    check_translations(&pt, &reference, 0..0x600);
    check_no_leak(&pt);
    check_keeps_working(&pt, &reference, 1 << 30, len);
}

#[derive(Debug, Clone)]
enum Op {
    /// Map `len` pages at page `at` to page frame `pfn`, with `failures` table allocations
    /// armed to fail.
    Map {
        at: u64,
        len: u64,
        pfn: u64,
        failures: usize,
    },
    /// Unmap the `nth` live mapping (modulo their number), with the site armed.
    Unmap { nth: usize },
}

/// Tiny, three levels: 64 pages of input, blocks of 4 and 16 pages.
const PAGES: u64 = 64;

fn op() -> impl Strategy<Value = Op> {
    let start = prop_oneof![0..PAGES, (0..PAGES / 4).prop_map(|b| b * 4)];
    let len = prop_oneof![1..6u64, Just(4), Just(16)];
    prop_oneof![
        3 => (start, len, 0..PAGES, 0..3usize).prop_map(|(at, len, pfn, failures)| Op::Map {
            at,
            len,
            pfn: pfn * 16,
            failures
        }),
        2 => any::<usize>().prop_map(|nth| Op::Unmap { nth }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 128 }, ..ProptestConfig::default() })]

    #[test]
    fn random_workload_with_failing_table_allocations(ops in proptest::collection::vec(op(), 1..40)) {
        let pt = PageTable::new(Config::tiny(3)).unwrap();
        let mut reference = Reference::new();
        // Live mappings: start page -> pages.
        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Map { at, len, pfn, failures } => {
                    let len = len.min(PAGES - at);
                    let busy = (at..at + len).any(|p| reference.contains_key(&p));
                    let (r, used) = armed(&TABLE_ALLOC, failures, || {
                        pt.map(at * PAGE, pfn * PAGE, len * PAGE, RW)
                    });
                    match r {
                        Ok(()) => {
                            prop_assert!(!busy);
                            prop_assert_eq!(used, 0);
                            record(&mut reference, at * PAGE, pfn * PAGE, len * PAGE);
                            live.insert(at, len);
                        }
                        Err(Error::NoMemory) => prop_assert_eq!(used, 1),
                        Err(Error::Exists { .. }) => prop_assert!(busy),
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                }
                Op::Unmap { nth } => {
                    if live.is_empty() {
                        continue;
                    }
                    let (&at, &len) = live.iter().nth(nth % live.len()).unwrap();
                    // Unmapping never allocates a table: the armed site is never consulted.
                    let (r, used) = armed(&TABLE_ALLOC, usize::MAX, || pt.unmap(at * PAGE, len * PAGE));
                    prop_assert_eq!((r, used), (Ok(len * PAGE), 0));
                    live.remove(&at);
                    forget(&mut reference, at * PAGE, len * PAGE);
                }
            }
            check_translations(&pt, &reference, 0..PAGES);
            check_no_leak(&pt);
        }
        // Disarmed, the whole space maps as one range, and comes back.
        for (&at, &len) in &live {
            prop_assert_eq!(pt.unmap(at * PAGE, len * PAGE), Ok(len * PAGE));
        }
        reference.clear();
        pt.map(0, 0, PAGES * PAGE, RW).unwrap();
        prop_assert_eq!(pt.iova_to_phys((PAGES - 1) * PAGE).map(|t| t.paddr()), Some((PAGES - 1) * PAGE));
        prop_assert_eq!(pt.unmap(0, PAGES * PAGE), Ok(PAGES * PAGE));
        check_translations(&pt, &reference, 0..PAGES);
        check_no_leak(&pt);
    }
}
