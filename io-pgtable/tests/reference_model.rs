//! Random map/unmap sequences against a reference map of pages; after every step, the
//! translation of every page agrees, and no table lies wholly inside a range just unmapped.
#![cfg(not(loom))]

use io_pgtable::{Config, Descriptor, Error, PageTable, Prot, Stage};
use proptest::prelude::*;
use std::collections::BTreeMap;

const PAGE: u64 = 0x1000;
/// Tiny, three levels: 64 pages of input, blocks of 4 and 16 pages.
const PAGES: u64 = 64;

#[derive(Debug, Clone)]
enum Op {
    /// Map `len` pages at page `at` to page frame `pfn`.
    Map {
        at: u64,
        len: u64,
        pfn: u64,
        prot: u8,
    },
    /// Unmap `len` pages at page `at`.
    Unmap { at: u64, len: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    // Block-friendly starts and lengths half of the time, so blocks and table frees happen.
    let start = prop_oneof![
        0..PAGES,
        (0..PAGES / 4).prop_map(|b| b * 4),
        (0..PAGES / 16).prop_map(|b| b * 16)
    ];
    let len = prop_oneof![1..6u64, Just(4), Just(16), Just(32)];
    prop_oneof![
        (start.clone(), len.clone(), 0..PAGES, 1..64u8).prop_map(|(at, len, pfn, prot)| Op::Map {
            at,
            len,
            pfn: pfn * 16,
            prot
        }),
        (start, len).prop_map(|(at, len)| Op::Unmap { at, len }),
    ]
}

type Reference = BTreeMap<u64, (u64, Prot)>;

fn prot_of(bits: u8) -> Prot {
    let p = Prot::from_bits_truncate(bits);
    if p.intersects(Prot::READ | Prot::WRITE) {
        p
    } else {
        p | Prot::READ
    }
}

/// The protections a leaf reports for `p`: stage 1 is always readable, stage 2 has no
/// privilege bit; device memory is never cacheable.
fn seen(stage: Stage, p: Prot) -> Prot {
    let mut s = p;
    match stage {
        Stage::S1 => s |= Prot::READ,
        Stage::S2 => s.remove(Prot::PRIV),
    }
    if p.contains(Prot::MMIO) {
        s.remove(Prot::CACHE);
    }
    s
}

fn check_against(pt: &PageTable, reference: &Reference) {
    let stage = pt.geometry().config().stage;
    for page in 0..PAGES {
        let got = pt.iova_to_phys(page * PAGE).map(|t| (t.paddr, t.prot));
        let want = reference.get(&page).map(|&(pa, p)| (pa, seen(stage, p)));
        assert_eq!(got, want, "page {page}");
    }
    let s = pt.stats();
    assert_eq!(s.linked() as usize, pt.dump().tables);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 192 }, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_reference(
        ops in proptest::collection::vec(op(), 1..40),
        stage in prop_oneof![Just(Stage::S1), Just(Stage::S2)],
    ) {
        let pt = PageTable::new(Config { stage, ..Config::tiny(3) }).unwrap();
        let mut reference = Reference::new();
        for op in ops {
            match op {
                Op::Map { at, len, pfn, prot } => {
                    let len = len.min(PAGES - at);
                    let prot = prot_of(prot);
                    let busy = (at..at + len).any(|p| reference.contains_key(&p));
                    let r = pt.map(at * PAGE, pfn * PAGE, len * PAGE, prot);
                    if busy {
                        prop_assert!(matches!(r, Err(Error::Exists { .. })), "{r:?}");
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        for p in at..at + len {
                            reference.insert(p, ((pfn + p - at) * PAGE, prot));
                        }
                    }
                }
                Op::Unmap { at, len } => {
                    let len = len.min(PAGES - at);
                    match pt.unmap(at * PAGE, len * PAGE) {
                        Ok(bytes) => {
                            prop_assert!(bytes > 0 && bytes % PAGE == 0);
                            // Unmapping stays in range, except that a table the range covers
                            // goes whole (with any leaves in it), as in Linux.
                            let end = at + bytes / PAGE;
                            reference.retain(|&p, _| p < at || p >= end);
                            // No reachable table lies wholly inside what was just unmapped.
                            for e in pt.dump().entries {
                                if let Descriptor::Table { .. } = e.desc {
                                    let span = pt.geometry().block_size(e.level) / PAGE;
                                    let first = e.iova / PAGE;
                                    prop_assert!(!(first >= at && first + span <= end), "table at page {first} survived");
                                }
                            }
                        }
                        Err(Error::NotMapped { .. }) => {
                            prop_assert!(!reference.contains_key(&at));
                        }
                        Err(Error::PartialBlock { block_size, .. }) => {
                            prop_assert!(block_size > PAGE && reference.contains_key(&at));
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
            }
            check_against(&pt, &reference);
        }
    }
}
