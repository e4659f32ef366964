//! Fault injection: every allocation site of `iova_cache::faults` made to fail during a
//! workload. Each failure must be a typed error that changes nothing or a fallback that loses
//! nothing: every IOVA comes back (after `flush_all` exactly the user-held ranges are
//! allocated), none is handed out twice, the statistics add up, and the allocator keeps
//! working once the site is disarmed. Arming is per thread, so these tests run in parallel.
#![cfg(not(loom))]

use dma_sync::fault::{armed, Site};
use iova_cache::config::MAX_CACHED_GRANULES;
use iova_cache::faults::{CHUNK_ALLOC, DEPOT_GROW, MAGAZINE_ALLOC, OWNER_RECORD, TREE_NODE};
use iova_cache::{IovaAllocator, IovaConfig, IovaError, RangeAllocator};
use proptest::prelude::*;
use std::collections::BTreeMap;

const END: u64 = (1 << 16) - 1;

fn allocator(cpus: usize, magazine_size: usize) -> IovaAllocator {
    let cfg = IovaConfig {
        cpus,
        magazine_size,
        trim_interval: None,
        // Every free to the magazines, whose exchanges these tests count.
        thread_caches: false,
        ..IovaConfig::with_space(1, END)
    };
    IovaAllocator::new(cfg).unwrap()
}

/// Ranges held by the test (start pfn -> granules as allocated).
type Live = BTreeMap<u64, u64>;

/// Record a fresh allocation, refusing one that overlaps a held range.
fn take(live: &mut Live, pfn: u64, size: u64) {
    let below = live.range(..=pfn).next_back();
    assert!(
        below.map_or(true, |(&p, &s)| p + s <= pfn),
        "{pfn:#x} handed out while {below:?} is held"
    );
    let above = live.range(pfn..).next();
    assert!(
        above.map_or(true, |(&p, _)| pfn + size <= p),
        "{pfn:#x}+{size} handed out while {above:?} is held"
    );
    live.insert(pfn, size);
}

/// The counters agree with each other and with the held ranges: the range allocator's
/// allocated granules are exactly the held plus the cached ones, and the space adds up.
fn check_stats(a: &IovaAllocator, live: &Live) {
    a.check_invariants().unwrap();
    let s = a.stats();
    let cached: u64 = a.cached_ranges().iter().map(|r| r.1).sum();
    assert_eq!(s.cached_granules(), cached, "{}", a.report());
    let held: u64 = live.values().sum();
    assert_eq!(s.range.allocated_granules, held + cached, "{}", a.report());
    assert_eq!(
        s.range.allocated_granules + s.range.free_granules + s.range.reserved_granules,
        END,
        "{}",
        a.report()
    );
}

/// Nothing is lost: after flushing, exactly the held ranges are allocated.
fn check_all_back(a: &IovaAllocator, live: &Live) {
    check_stats(a, live);
    a.flush_all();
    let held: Vec<(u64, u64)> = live.iter().map(|(&p, &s)| (p, s)).collect();
    assert_eq!(a.allocated_ranges(), held);
    check_stats(a, live);
}

/// With every site disarmed the allocator serves a full round of every cached class and a
/// large size, and takes it all back.
fn check_keeps_working(a: &IovaAllocator, live: &mut Live) {
    let mut round = Vec::new();
    for size in [1, 2, 4, 8, 16, 32, 64, 128] {
        for _ in 0..5 {
            let pfn = a.alloc(size, END).unwrap();
            take(live, pfn, size);
            round.push(pfn);
        }
    }
    for pfn in round {
        let size = live.remove(&pfn).unwrap();
        a.free(pfn, size).unwrap();
    }
    check_all_back(a, live);
}

/// Allocate `n` ranges of `size` granules.
fn alloc_n(a: &IovaAllocator, live: &mut Live, n: usize, size: u64) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let pfn = a.alloc(size, END).unwrap();
            take(live, pfn, size);
            pfn
        })
        .collect()
}

fn free_all(a: &IovaAllocator, live: &mut Live, pfns: &[u64]) {
    for &pfn in pfns {
        let size = live.remove(&pfn).unwrap();
        a.free(pfn, size).unwrap();
    }
}

#[test]
fn no_magazine_frees_to_the_range_allocator() {
    dma_sync::cpu::set_current(Some(0));
    let a = allocator(1, 2);
    let mut live = Live::new();
    let pfns = alloc_n(&a, &mut live, 8, 1);
    // Two frees fill `loaded`, two more `prev`; the other four find both full and no empty
    // magazine kept in the depot, so each asks for a fresh magazine and is refused.
    let ((), used) = armed(&MAGAZINE_ALLOC, usize::MAX, || {
        free_all(&a, &mut live, &pfns)
    });
    assert_eq!(used, 4);
    check_stats(&a, &live);
    assert_eq!(a.stats().cached_granules(), 4);
    for &pfn in &pfns[4..] {
        assert_eq!(a.find(pfn), None, "{pfn:#x} went straight back to the tree");
        assert_eq!(a.free(pfn, 1), Err(IovaError::NotAllocated { pfn }));
    }
    // Cached and tree-freed pfns are handed out again, each once.
    let again = alloc_n(&a, &mut live, 8, 1);
    free_all(&a, &mut live, &again);
    check_all_back(&a, &live);
    check_keeps_working(&a, &mut live);
    dma_sync::cpu::set_current(None);
}

#[test]
fn no_room_in_the_depot_returns_the_full_magazine() {
    dma_sync::cpu::set_current(Some(0));
    let a = allocator(1, 2);
    let mut live = Live::new();
    let pfns = alloc_n(&a, &mut live, 10, 2);
    // The fifth free trades the full `loaded` for a fresh magazine; the empty depot cannot
    // grow, so that magazine's two pfns go to the tree and the fifth pfn is cached.
    let ((), used) = armed(&DEPOT_GROW, usize::MAX, || {
        free_all(&a, &mut live, &pfns[..5])
    });
    assert_eq!(used, 1);
    check_stats(&a, &live);
    let s = a.stats();
    assert_eq!((s.cached_granules(), s.classes[1].depot_magazines), (6, 0));
    // `loaded` held the third and fourth pfns (the first two went to `prev` by a swap).
    assert_eq!(a.find(pfns[2]), None);
    assert_eq!(a.find(pfns[3]), None);
    for p in [pfns[0], pfns[1], pfns[4]] {
        assert!(a.find(p).is_some(), "{p:#x} is cached");
    }
    // Disarmed, the depot grows again: two more trades store two magazines.
    free_all(&a, &mut live, &pfns[5..]);
    assert_eq!(a.stats().classes[1].depot_magazines, 2);
    check_all_back(&a, &live);
    check_keeps_working(&a, &mut live);
    dma_sync::cpu::set_current(None);
}

#[test]
fn no_tree_node_fails_the_request_and_changes_nothing() {
    dma_sync::cpu::set_current(Some(0));
    let a = allocator(1, 2);
    let mut live = Live::new();
    let held = alloc_n(&a, &mut live, 3, 4);
    a.free(held[2], 4).unwrap();
    live.remove(&held[2]);
    let before = (a.stats().range, a.allocated_ranges());
    let (results, used) = armed(&TREE_NODE, usize::MAX, || {
        [
            a.alloc(4, END),
            a.alloc(65, END),
            a.alloc_no_flush(100, END),
            a.alloc_range(5, END, false),
            a.reserve(10, 20).map(|()| 0),
        ]
    });
    assert_eq!(
        results,
        [
            Ok(held[2]),
            Err(IovaError::OutOfMemory { size: 65 }),
            Err(IovaError::OutOfMemory { size: 100 }),
            Err(IovaError::OutOfMemory { size: 5 }),
            Err(IovaError::OutOfMemory { size: 11 }),
        ]
    );
    // A cache hit needs no tree node; every other request asked for one once (no flush and
    // retry: no memory is not no space).
    assert_eq!(used, 4);
    // A small size-aligned request with room in a chunk needs none either.
    let (small, used) = armed(&TREE_NODE, usize::MAX, || a.alloc_range(3, END, true));
    assert_eq!(used, 0);
    a.free_range(small.unwrap(), 3).unwrap();
    take(&mut live, held[2], 4);
    let after = (a.stats().range, a.allocated_ranges());
    assert_eq!(after.1, before.1, "nothing allocated");
    assert_eq!(after.0.free_granules, before.0.free_granules);
    assert_eq!(after.0.free_ranges, before.0.free_ranges);
    assert_eq!(
        after.0.failures, before.0.failures,
        "not counted as no space"
    );
    assert_eq!(a.find(15), None, "nothing reserved");
    check_all_back(&a, &live);
    a.reserve(10, 20).unwrap();
    assert!(a.find(15).is_some());
    check_keeps_working(&a, &mut live);
    dma_sync::cpu::set_current(None);
}

/// Without memory for a new chunk above, a small request takes the fit of a lower chunk.
#[test]
fn no_chunk_above_falls_back_to_a_lower_chunk() {
    let mut r = RangeAllocator::new(0, END).unwrap();
    let low_limit = END / 2;
    assert_eq!(r.alloc(1, low_limit, true), Ok(low_limit));
    let mut next_low = low_limit;
    for site in [&CHUNK_ALLOC, &TREE_NODE] {
        next_low -= 1;
        let (res, used) = armed(site, 1, || r.alloc(1, END, true));
        assert_eq!((res, used), (Ok(next_low), 1));
        r.check_invariants().unwrap();
    }
    assert_eq!(r.alloc(1, END, true), Ok(END), "a new chunk at the top");
    r.check_invariants().unwrap();
}

#[test]
fn no_chunk_fails_the_request_and_changes_nothing() {
    let mut r = RangeAllocator::new(0, END).unwrap();
    let unaligned = r.alloc(3, END, false).unwrap();
    let before = (r.stats(), r.free_ranges());
    // The first small size-aligned request makes a chunk: its bitmaps, then its tree entry.
    for site in [&CHUNK_ALLOC, &TREE_NODE] {
        let (res, used) = armed(site, 1, || r.alloc(4, END, true));
        assert_eq!((res, used), (Err(IovaError::OutOfMemory { size: 4 }), 1));
        assert_eq!((r.stats(), r.free_ranges()), before);
        r.check_invariants().unwrap();
    }
    let small = r.alloc(4, END, true).unwrap();
    assert_eq!(small % 4, 0);
    assert_eq!(
        r.find(small + 3).map(|f| (f.lo, f.hi)),
        Some((small, small + 3))
    );
    // A request only the chunk's free space can hold gives the chunk back to the tree first,
    // which needs nodes for its allocations: failing, it changes nothing.
    let space = END + 1 - 3 - 4;
    let before = (
        r.stats(),
        r.free_ranges(),
        r.allocated().collect::<Vec<_>>(),
    );
    let (res, used) = armed(&TREE_NODE, 1, || r.alloc(space, END, false));
    assert_eq!(
        (res, used),
        (Err(IovaError::OutOfMemory { size: space }), 1)
    );
    assert_eq!(
        (r.stats(), r.free_ranges(), r.allocated().collect()),
        before
    );
    r.check_invariants().unwrap();
    // Disarmed, the two free ranges either side of the chunk's allocation cannot hold it.
    assert!(matches!(
        r.alloc(space, END, false),
        Err(IovaError::NoSpace { .. })
    ));
    r.check_invariants().unwrap();
    for (pfn, size) in [(unaligned, 3), (small, 4)] {
        r.free(pfn, size).unwrap();
    }
    assert_eq!(r.free_ranges(), [(0, END + 1)]);
}

#[test]
fn range_allocator_without_a_node_changes_nothing() {
    let mut r = RangeAllocator::new(0, 99).unwrap();
    let a = r.alloc(10, 99, false).unwrap();
    let before = (r.stats(), r.free_ranges());
    let (res, used) = armed(&TREE_NODE, 2, || (r.alloc(4, 50, true), r.reserve(0, 9)));
    assert_eq!(used, 2);
    assert_eq!(
        res,
        (
            Err(IovaError::OutOfMemory { size: 4 }),
            Err(IovaError::OutOfMemory { size: 10 })
        )
    );
    assert_eq!((r.stats(), r.free_ranges()), before);
    r.check_invariants().unwrap();
    assert_eq!(r.alloc(4, 50, true), Ok(44));
    r.reserve(0, 9).unwrap();
    r.free(a, 10).unwrap();
    r.check_invariants().unwrap();
}

#[test]
fn no_owner_record_returns_the_range() {
    dma_sync::cpu::set_current(Some(0));
    let a = allocator(1, 4);
    let mut live = Live::new();
    let held = alloc_n(&a, &mut live, 2, 8);
    free_all(&a, &mut live, &held[..1]);
    let cached = a.cached_ranges();
    assert_eq!(cached, vec![(held[0], 8)]);
    // First a cache hit, then a miss served by the tree: neither can be recorded.
    let (r, used) = armed(&OWNER_RECORD, 2, || [a.alloc(8, END), a.alloc(8, END)]);
    assert_eq!(used, 2);
    assert_eq!(r, [Err(IovaError::OutOfMemory { size: 8 }); 2]);
    assert_eq!(
        a.cached_ranges(),
        vec![],
        "the cached range went to the tree"
    );
    assert_eq!(a.find(held[0]), None);
    check_stats(&a, &live);
    check_all_back(&a, &live);
    check_keeps_working(&a, &mut live);
    free_all(&a, &mut live, &held[1..]);
    check_all_back(&a, &live);
    dma_sync::cpu::set_current(None);
}

const SITES: [&Site; 5] = [
    &MAGAZINE_ALLOC,
    &DEPOT_GROW,
    &TREE_NODE,
    &OWNER_RECORD,
    &CHUNK_ALLOC,
];

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: u64, cpu: usize },
    Free { pick: usize, cpu: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            prop::sample::select(vec![1u64, 2, 3, 8, 32, 40, 64, 80]),
            0..2usize
        )
            .prop_map(|(size, cpu)| Op::Alloc { size, cpu }),
        (any::<usize>(), 0..2usize).prop_map(|(pick, cpu)| Op::Free { pick, cpu }),
    ]
}

/// What one step of [`run`] did.
enum Done {
    Took(u64, u64),
    Freed(u64),
    Nothing,
}

/// Run `ops` on two CPU slots with magazines of two, each op under an armed site or none.
fn run(ops: &[(Op, Option<usize>)]) {
    let a = allocator(2, 2);
    let mut live = Live::new();
    for (op, fault) in ops {
        let step = || match *op {
            Op::Alloc { size, cpu } => {
                dma_sync::cpu::set_current(Some(cpu));
                let granules = if size < MAX_CACHED_GRANULES {
                    size.next_power_of_two()
                } else {
                    size
                };
                a.alloc(size, END).map(|pfn| Done::Took(pfn, granules))
            }
            Op::Free { pick, cpu } => {
                dma_sync::cpu::set_current(Some(cpu));
                let Some((&pfn, &size)) = live.iter().nth(pick % live.len().max(1)) else {
                    return Ok(Done::Nothing);
                };
                a.free(pfn, size).map(|()| Done::Freed(pfn))
            }
        };
        let r = match *fault {
            Some(site) => armed(SITES[site], 1, step).0,
            None => step(),
        };
        match r {
            Ok(Done::Took(pfn, size)) => take(&mut live, pfn, size),
            Ok(Done::Freed(pfn)) => {
                live.remove(&pfn);
            }
            Ok(Done::Nothing) => {}
            Err(IovaError::OutOfMemory { .. }) if fault.is_some() => {}
            Err(e) => panic!("{op:?} under {fault:?}: {e}"),
        }
        check_stats(&a, &live);
    }
    check_all_back(&a, &live);
    check_keeps_working(&a, &mut live);
    let pfns: Vec<u64> = live.keys().copied().collect();
    free_all(&a, &mut live, &pfns);
    check_all_back(&a, &live);
    assert!(a.allocated_ranges().is_empty());
    dma_sync::cpu::set_current(None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random alloc/free on two CPUs with random sites failing once: conservation throughout.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn random_faults_lose_nothing(
        ops in prop::collection::vec((op(), prop::option::weighted(0.4, 0..SITES.len())), 1..300)
    ) {
        run(&ops);
    }
}

/// Two threads on their own CPU slots, each with its sites failing now and then: the
/// fallbacks run concurrently with the other CPU's traffic through the shared depot and tree.
#[test]
#[cfg_attr(miri, ignore)]
fn concurrent_faults_lose_nothing() {
    let a = dma_sync::Arc::new(allocator(2, 2));
    let workers: Vec<_> = (0..2)
        .map(|cpu| {
            let a = a.clone();
            std::thread::spawn(move || {
                dma_sync::cpu::set_current(Some(cpu));
                let mut mine = Vec::new();
                let mut used = 0;
                for i in 0..4000usize {
                    let site = SITES[i % SITES.len()];
                    let fail = if i % 7 == 0 { 1 } else { 0 };
                    let (r, n) = armed(site, fail, || {
                        if i % 3 == 2 && !mine.is_empty() {
                            let (pfn, size) = mine.swap_remove(i % mine.len());
                            a.free(pfn, size).unwrap();
                            None
                        } else {
                            let size = [1, 2, 4, 8][i % 4];
                            match a.alloc(size, END) {
                                Ok(pfn) => Some((pfn, size)),
                                Err(IovaError::OutOfMemory { .. }) => None,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    });
                    used += n;
                    mine.extend(r);
                    if mine.len() > 64 {
                        for (pfn, size) in mine.drain(..32) {
                            a.free(pfn, size).unwrap();
                        }
                    }
                }
                (mine, used)
            })
        })
        .collect();
    let mut live = Live::new();
    let mut used = 0;
    for w in workers {
        let (mine, n) = w.join().unwrap();
        used += n;
        for (pfn, size) in mine {
            take(&mut live, pfn, size);
        }
    }
    assert!(used > 0, "some injected failure was reached");
    check_all_back(&a, &live);
    check_keeps_working(&a, &mut live);
}
