//! Racing operations on overlapping ranges, through safe calls only: every entry is claimed
//! once, so racing unmaps unmap each leaf and retire each table level exactly once, the
//! losers get typed errors, and the table accounting balances afterwards.
#![cfg(not(loom))]

use io_pgtable::{Config, Error, Gather, PageTable, Prot};
use std::sync::Barrier;
use std::thread;

const PAGE: u64 = 0x1000;
const BLOCK_2M: u64 = 0x20_0000;

/// Let the grace periods run, then check that every table is accounted for once: the linked
/// ones are the reachable ones, every retired or discarded one is freed, none twice.
fn settled(pt: &PageTable) {
    let s = pt.stats();
    assert_eq!(s.linked() as usize, pt.dump().tables, "{s:?}");
    for _ in 0..10_000 {
        let s = pt.stats();
        assert!(s.freed <= s.discarded + s.retired, "freed twice: {s:?}");
        if s.freed == s.discarded + s.retired {
            return;
        }
        dma_sync::rcu::pin().flush();
        thread::yield_now();
    }
    let s = pt.stats();
    assert_eq!(s.freed, s.discarded + s.retired, "{s:?}");
}

fn unmap_pages(pt: &PageTable, iova: u64, pgsize: u64, count: usize) -> Result<usize, Error> {
    pt.unmap_pages(iova, pgsize, count, &mut Gather::new())
}

/// The reported double free: two threads unmap the same 2 MiB entry, which holds the level-3
/// table of one page, while a third translates. Exactly one unmap takes (and retires) the
/// table; the other finds the entry empty.
#[test]
#[cfg_attr(miri, ignore)]
fn racing_unmaps_of_one_table_retire_it_once() {
    const ROUNDS: u64 = 10_000;
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    let base = 3 * BLOCK_2M;
    let start = Barrier::new(3);
    let end = Barrier::new(3);
    let wins: Vec<u64> = thread::scope(|s| {
        let unmappers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut wins = 0;
                    for _ in 0..ROUNDS {
                        start.wait();
                        match unmap_pages(&pt, base, BLOCK_2M, 1) {
                            Ok(n) => {
                                assert_eq!(n as u64, BLOCK_2M);
                                wins += 1;
                            }
                            Err(e) => assert_eq!(e, Error::NotMapped { iova: base }),
                        }
                        end.wait();
                    }
                    wins
                })
            })
            .collect();
        for round in 0..ROUNDS {
            assert_eq!(pt.map_pages(base, base, PAGE, 1, Prot::READ), Ok(0x1000));
            start.wait();
            if let Some(t) = pt.iova_to_phys(base + 0x10) {
                assert_eq!(t.paddr(), base + 0x10);
            }
            end.wait();
            assert!(pt.iova_to_phys(base).is_none(), "round {round}");
        }
        unmappers.into_iter().map(|u| u.join().unwrap()).collect()
    });
    assert_eq!(
        wins.iter().sum::<u64>(),
        ROUNDS,
        "one winner per round: {wins:?}"
    );
    assert_eq!(pt.stats().retired, ROUNDS);
    settled(&pt);
}

/// Page unmaps of one table's pages race each other, an unmap of the whole table and a
/// mapper refilling pages: no page is unmapped more often than it was mapped, and what is
/// left after each round translates as mapped.
#[test]
#[cfg_attr(miri, ignore)]
fn page_and_table_unmaps_and_maps_race_on_one_table() {
    const ROUNDS: usize = 2_000;
    /// Pages of the level-3 table under level-2 entry 1 of a tiny three-level table.
    const SPAN: u64 = 0x4000;
    const PAGES: u64 = SPAN / PAGE;
    let pt = PageTable::new(Config::tiny(3)).unwrap();
    let pa = |iova: u64| 0x100_0000 + iova;
    let start = Barrier::new(4);
    let end = Barrier::new(4);
    thread::scope(|s| {
        // Two page unmappers walking the pages in opposite orders.
        let page_unmappers: Vec<_> = (0..2)
            .map(|t| {
                let (pt, start, end) = (&pt, &start, &end);
                s.spawn(move || {
                    let mut got = Vec::new();
                    for _ in 0..ROUNDS {
                        start.wait();
                        let mut mine = [false; PAGES as usize];
                        for i in 0..PAGES {
                            let p = if t == 0 { i } else { PAGES - 1 - i };
                            match unmap_pages(pt, SPAN + p * PAGE, PAGE, 1) {
                                Ok(n) => {
                                    assert_eq!(n as u64, PAGE);
                                    mine[p as usize] = true;
                                }
                                Err(e) => assert_eq!(
                                    e,
                                    Error::NotMapped {
                                        iova: SPAN + p * PAGE
                                    }
                                ),
                            }
                        }
                        got.push(mine);
                        end.wait();
                    }
                    got
                })
            })
            .collect();
        let table_unmapper = s.spawn(|| {
            let mut wins = 0;
            for _ in 0..ROUNDS {
                start.wait();
                match unmap_pages(&pt, SPAN, SPAN, 1) {
                    Ok(n) => {
                        assert_eq!(n as u64, SPAN);
                        wins += 1;
                    }
                    Err(e) => assert_eq!(e, Error::NotMapped { iova: SPAN }),
                }
                end.wait();
            }
            wins
        });
        let mut refills = Vec::new();
        for _ in 0..ROUNDS {
            assert_eq!(
                pt.map_pages(SPAN, pa(SPAN), PAGE, PAGES as usize, Prot::READ),
                Ok(SPAN as usize)
            );
            start.wait();
            // Refill the two middle pages while the others unmap.
            let mut refilled = [0; PAGES as usize];
            for p in [1, 2] {
                let iova = SPAN + p * PAGE;
                match pt.map_pages(iova, pa(iova), PAGE, 1, Prot::READ) {
                    Ok(_) => refilled[p as usize] = 1,
                    Err(Error::Exists { .. }) => {}
                    Err(e) => panic!("map of {iova:#x}: {e}"),
                }
            }
            refills.push(refilled);
            end.wait();
            // Whatever is left are leaves mapped right: the racing unmappers are done.
            for e in pt.dump().leaves() {
                assert_eq!(pt.iova_to_phys(e.iova).unwrap().paddr(), pa(e.iova));
            }
            let _ = unmap_pages(&pt, SPAN, SPAN, 1);
        }
        let wins = table_unmapper.join().unwrap();
        // The table is linked when each race starts, and only this thread unmaps it then.
        assert_eq!(wins, ROUNDS);
        let rounds: Vec<Vec<_>> = page_unmappers
            .into_iter()
            .map(|u| u.join().unwrap())
            .collect();
        // A page is unmapped at most as often as it was mapped: once, plus its refill.
        for (round, ((a, b), refilled)) in
            rounds[0].iter().zip(&rounds[1]).zip(&refills).enumerate()
        {
            for p in 0..PAGES as usize {
                let unmaps = usize::from(a[p]) + usize::from(b[p]);
                assert!(
                    unmaps <= 1 + refilled[p],
                    "round {round}: page {p} unmapped {unmaps} times"
                );
            }
        }
    });
    assert!(pt.dump().leaves().next().is_none());
    settled(&pt);
}

/// A block map replacing an emptied table races a page map inside the block and, every
/// third round, an unmap of the whole span. Without the unmap exactly one map succeeds and
/// the result is what it mapped; with it, both may succeed only with the unmap between them.
#[test]
#[cfg_attr(miri, ignore)]
fn block_map_races_page_map_and_table_unmap() {
    const ROUNDS: usize = 3_000;
    const BLOCK: u64 = 0x4000; // a level-2 block of the tiny granule
    const BLOCK_PA: u64 = 0x80_0000;
    const PAGE_PA: u64 = 0x90_2000;
    let pt = PageTable::new(Config::tiny(3)).unwrap();
    let start = Barrier::new(3);
    let end = Barrier::new(3);
    thread::scope(|s| {
        let block_mapper = s.spawn(|| {
            let mut results = Vec::new();
            for _ in 0..ROUNDS {
                start.wait();
                results.push(pt.map_pages(BLOCK, BLOCK_PA, BLOCK, 1, Prot::READ).is_ok());
                end.wait();
            }
            results
        });
        let unmapper = s.spawn(|| {
            let mut results = Vec::new();
            for round in 0..ROUNDS {
                start.wait();
                let unmapped = round % 3 == 0
                    && match unmap_pages(&pt, BLOCK, BLOCK, 1) {
                        Ok(n) => n as u64 == BLOCK,
                        Err(e) => {
                            assert_eq!(e, Error::NotMapped { iova: BLOCK });
                            false
                        }
                    };
                results.push(unmapped);
                end.wait();
            }
            results
        });
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            // An empty level-3 table under the block's entry.
            pt.map_pages(BLOCK + PAGE, 0x90_0000, PAGE, 1, Prot::READ)
                .unwrap();
            assert_eq!(unmap_pages(&pt, BLOCK + PAGE, PAGE, 1), Ok(PAGE as usize));
            start.wait();
            let page = pt.map_pages(BLOCK + 2 * PAGE, PAGE_PA, PAGE, 1, Prot::READ);
            assert!(
                matches!(page, Ok(_) | Err(Error::Exists { .. })),
                "{page:?}"
            );
            end.wait();
            let seen = pt.iova_to_phys(BLOCK + 2 * PAGE).map(|t| t.paddr());
            rounds.push((page.is_ok(), seen));
            let _ = unmap_pages(&pt, BLOCK, BLOCK, 1);
            assert!(pt.dump().leaves().next().is_none());
        }
        let blocks = block_mapper.join().unwrap();
        let unmaps = unmapper.join().unwrap();
        for (round, ((&block, &unmapped), &(page, seen))) in
            blocks.iter().zip(&unmaps).zip(&rounds).enumerate()
        {
            let block_seen = Some(BLOCK_PA + 2 * PAGE);
            let ok = match (block, page) {
                (true, false) => seen == block_seen || (unmapped && seen.is_none()),
                (false, true) => seen == Some(PAGE_PA) || (unmapped && seen.is_none()),
                // Both only around the unmap: one mapped, the unmap took it, the other mapped.
                (true, true) => unmapped && (seen == block_seen || seen == Some(PAGE_PA)),
                (false, false) => false,
            };
            assert!(
                ok,
                "round {round}: block {block}, page {page}, unmap {unmapped}, seen {seen:x?}"
            );
        }
    });
    settled(&pt);
}
