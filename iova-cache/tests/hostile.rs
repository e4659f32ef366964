//! Hostile callers of iova-cache's public API: an iterator handed to `free_batch` that panics
//! part-way must not lose the ranges already released from it.
#![cfg(not(loom))]

use iova_cache::{IovaAllocator, IovaConfig};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `free_batch` released each range from its holder, then kept it in a local run until the
/// run filled or the iterator ended; an iterator that panicked in between dropped the run:
/// those granules were neither held, cached nor free, so the space shrank for good and the
/// tree no longer matched held + cached ranges.
#[test]
fn a_panicking_free_batch_iterator_loses_no_range() {
    let a = IovaAllocator::new(IovaConfig::with_space(1, 0xff)).unwrap();
    let pfns: Vec<u64> = (0..3).map(|_| a.alloc(1, 0xff).unwrap()).collect();
    let first_two = pfns[..2].to_vec();
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        let ranges = first_two
            .iter()
            .map(|&p| (p, 1))
            .chain(std::iter::once_with(|| {
                panic!("the caller's iterator fails")
            }));
        a.free_batch(ranges)
    }));
    assert!(unwound.is_err());
    assert_eq!(a.check_invariants(), Ok(()));
    // The two ranges were freed before the panic: cached and allocatable again; the third
    // is still held and frees normally.
    let mut cached = a.cached_ranges();
    cached.sort_unstable();
    let mut freed = vec![(pfns[0], 1), (pfns[1], 1)];
    freed.sort_unstable();
    assert_eq!(cached, freed);
    a.free(pfns[2], 1).unwrap();
    a.flush_all();
    assert_eq!(a.allocated_ranges(), vec![]);
    assert_eq!(a.check_invariants(), Ok(()));
    // The whole space can be handed out again.
    let all: Vec<u64> = (0..0xff).map(|_| a.alloc(1, 0xff).unwrap()).collect();
    assert_eq!(all.len(), 0xff);
}
