//! `free_batch` against its specification: freeing a list of ranges at once is freeing them
//! one by one in order. Two allocators get the same allocations; one frees a random list
//! (cached and uncached sizes, double frees, wrong sizes and pfns mixed in) with
//! `free_batch`, the other with `free` in a loop, and afterwards their caches, range
//! allocators and statistics must be the same, and the batch must report the loop's first
//! refusal. The same holds with the magazine and depot allocation sites failing (the batch
//! then frees what it cannot cache to the tree, as `free` does).
#![cfg(not(loom))]

use dma_sync::fault::{armed, Site};
use iova_cache::faults::{DEPOT_GROW, MAGAZINE_ALLOC};
use iova_cache::{IovaAllocator, IovaConfig, IovaError, IovaStats, FREE_BATCH};
use proptest::prelude::*;

const END: u64 = (1 << 14) - 1;

fn allocator(magazine_size: usize, checked_frees: bool) -> IovaAllocator {
    let cfg = IovaConfig {
        cpus: 1,
        magazine_size,
        checked_frees,
        trim_interval: None,
        // A batch goes to the magazines; the frees it is compared with must too.
        thread_caches: false,
        ..IovaConfig::with_space(1, END)
    };
    IovaAllocator::new(cfg).unwrap()
}

/// One entry of the freed list: a live allocation (by index), freed as allocated or with a
/// wrong size, or a pfn nobody holds.
#[derive(Debug, Clone)]
enum Freed {
    Live { index: usize, wrong_size: bool },
    Bogus(u64),
}

fn freed() -> impl Strategy<Value = Freed> {
    prop_oneof![
        8 => (0..200usize, prop::bool::weighted(0.05))
            .prop_map(|(index, wrong_size)| Freed::Live { index, wrong_size }),
        1 => (1..END).prop_map(Freed::Bogus),
    ]
}

/// Everything observable of an allocator's state.
#[derive(Debug, PartialEq)]
struct State {
    cached: Vec<(u64, u64)>,
    allocated: Vec<(u64, u64)>,
    stats: IovaStats,
}

fn state(a: &IovaAllocator) -> State {
    State {
        cached: a.cached_ranges(),
        allocated: a.allocated_ranges(),
        stats: a.stats(),
    }
}

/// Allocate `sizes` from both allocators (the same pfns), free the `list` from one with
/// `free_batch` and from the other one by one, under `site` failing `failures` times in each.
fn batch_is_frees_in_order(
    sizes: &[u64],
    list: &[Freed],
    magazine_size: usize,
    checked_frees: bool,
    site: &'static Site,
    failures: usize,
) {
    dma_sync::cpu::set_current(Some(0));
    let (batch, single) = (
        allocator(magazine_size, checked_frees),
        allocator(magazine_size, checked_frees),
    );
    let live: Vec<(u64, u64)> = sizes
        .iter()
        .map(|&size| {
            let pfn = batch.alloc(size, END).unwrap();
            assert_eq!(single.alloc(size, END), Ok(pfn));
            (pfn, size)
        })
        .collect();
    let ranges: Vec<(u64, u64)> = list
        .iter()
        .map(|f| match *f {
            Freed::Live { index, wrong_size } => {
                let (pfn, size) = live[index % live.len()];
                (pfn, if wrong_size { size * 2 } else { size })
            }
            Freed::Bogus(pfn) => (pfn, 1),
        })
        .collect();
    let (got, batch_used) = armed(site, failures, || batch.free_batch(ranges.iter().copied()));
    let (results, single_used) = armed(site, failures, || {
        ranges
            .iter()
            .map(|&(pfn, size)| single.free(pfn, size))
            .collect::<Vec<_>>()
    });
    let first_refusal = results.into_iter().find(Result::is_err).unwrap_or(Ok(()));
    assert_eq!(got, first_refusal);
    assert_eq!(batch_used, single_used, "the same allocations asked for");
    assert_eq!(state(&batch), state(&single));
    batch.check_invariants().unwrap();
    batch.flush_all();
    single.flush_all();
    assert_eq!(batch.allocated_ranges(), single.allocated_ranges());
    dma_sync::cpu::set_current(None);
}

fn sizes() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(
        prop::sample::select(vec![1u64, 1, 1, 2, 3, 4, 8, 32, 33, 64, 65]),
        1..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn free_batch_is_free_in_order(
        sizes in sizes(),
        list in prop::collection::vec(freed(), 0..3 * FREE_BATCH),
        magazine_size in 1..5usize,
        checked_frees: bool,
    ) {
        batch_is_frees_in_order(&sizes, &list, magazine_size, checked_frees, &MAGAZINE_ALLOC, 0);
    }

    #[test]
    fn free_batch_is_free_in_order_without_memory(
        sizes in sizes(),
        list in prop::collection::vec(freed(), 0..3 * FREE_BATCH),
        magazine_size in 1..5usize,
        depot: bool,
        failures in 0..8usize,
    ) {
        let site = if depot { &DEPOT_GROW } else { &MAGAZINE_ALLOC };
        batch_is_frees_in_order(&sizes, &list, magazine_size, true, site, failures);
    }
}

#[test]
fn a_ring_of_single_granules_fills_both_magazines_and_trades_one() {
    dma_sync::cpu::set_current(Some(0));
    let a = allocator(127, false);
    let pfns: Vec<u64> = (0..255).map(|_| a.alloc(1, END).unwrap()).collect();
    assert_eq!(a.free_batch(pfns.iter().map(|&p| (p, 1))), Ok(()));
    let s = a.stats();
    assert_eq!(s.cached_granules(), 255);
    assert_eq!(
        s.classes[0].depot_magazines, 1,
        "loaded and prev filled, one traded"
    );
    let again: Vec<u64> = (0..255).map(|_| a.alloc(1, END).unwrap()).collect();
    let (mut sorted, mut first) = (again.clone(), pfns.clone());
    sorted.sort_unstable();
    first.sort_unstable();
    assert_eq!(sorted, first, "every range comes back from the caches");
    assert_eq!(
        a.free_batch([(0, 1)]),
        Err(IovaError::NotAllocated { pfn: 0 })
    );
    dma_sync::cpu::set_current(None);
}

/// A batch that overflows both magazines of its slot while no magazine can be had frees the
/// overflow to the tree (the spill of `insert_all`): after a flush nothing is allocated.
#[test]
fn a_batch_without_a_fresh_magazine_frees_the_overflow_to_the_tree() {
    dma_sync::cpu::set_current(Some(0));
    let a = allocator(1, false);
    let pfns: Vec<u64> = (0..4).map(|_| a.alloc(1, END).unwrap()).collect();
    let (freed, failed) = armed(&MAGAZINE_ALLOC, 100, || {
        a.free_batch(pfns.iter().map(|&p| (p, 1)))
    });
    assert_eq!(freed, Ok(()));
    assert!(failed > 0, "the overflow asked for a magazine");
    a.check_invariants().unwrap();
    a.flush_all();
    assert_eq!(
        a.allocated_ranges(),
        [],
        "every range is cached or back in the tree"
    );
    dma_sync::cpu::set_current(None);
}
