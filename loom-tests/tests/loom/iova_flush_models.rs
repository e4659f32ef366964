//! `flush_all` of `iova-cache` racing magazine traffic on the real code, with the default
//! `checked_frees: true` (magazines of one entry): CPU 0 frees three ranges (the third pushes a
//! full magazine to the depot), CPU 1 allocates twice (taking that magazine, or going to the
//! tree), and a third thread flushes every cache; every range is held by one user or free
//! afterwards. (Racing checked frees are `iova_models::checked_free_races_double_free`.)
//!
//! A flush returns every range cached when it began, even while a CPU pushes a magazine to
//! the depot during it (the slots are flushed before the depot).
//!
//! `reserve` racing the same traffic: it flushes every cache and then carves the range out of
//! the tree, while a CPU frees into its magazines (pushing one to the depot) and allocates
//! again. A reservation may be refused only for a range a user holds or that was cached again
//! after the flush, and a granted one is never handed out.

use crate::iova_models::{on_cpu, tiny, Oracle};
use dma_sync::mutation::Weakening;
use dma_sync::thread::spawn;
use iova_cache::{IovaAllocator, IovaError, RangeKind};
use loom_tests::harness::{check, Bound};
use loom_tests::must_fail_test;

fn flush_all_vs_depot_traffic() {
    three_frees_vs_flush_all(|o, a, p| {
        for &x in p {
            o.free(a, x, 1);
        }
    });
}

/// The traffic of the flush models: CPU 0 allocates three single granules and gives them back
/// with `free_all`, CPU 1 allocates twice, a third thread flushes every cache; afterwards the
/// oracle checks that every range is held by one user or free.
fn three_frees_vs_flush_all(free_all: fn(&Oracle, &IovaAllocator, &[u64])) {
    let a = tiny(2, 1, 8);
    let o = Oracle::default();
    let p: Vec<u64> = (0..3).map(|_| o.alloc(&a, 1).unwrap()).collect();
    let freer = {
        let (a, o) = (a.clone(), o.clone());
        spawn(move || {
            on_cpu(0);
            free_all(&o, &a, &p);
        })
    };
    let allocator = {
        let (a, o) = (a.clone(), o.clone());
        spawn(move || {
            on_cpu(1);
            o.alloc(&a, 1).expect("space left");
            o.alloc(&a, 1).expect("space left");
        })
    };
    let flusher = {
        let a = a.clone();
        spawn(move || a.flush_all())
    };
    freer.join().unwrap();
    allocator.join().unwrap();
    flusher.join().unwrap();
    o.settle(&a);
}

/// Three threads: three frees, two allocations, one flush of two CPU slots and the depot.
/// Bound 3 preemptions (about 4 s of CPU): the flush can be stopped inside a slot's critical
/// section window or between the slots and the depot, and both users, not only one, between
/// a slot and a depot exchange.
#[test]
fn flush_all_vs_depot_traffic_passes() {
    check(Bound::Preemptions(3), flush_all_vs_depot_traffic);
}

must_fail_test! {
    /// A flush that copies a slot, frees the copy, then empties the slot loses a range pushed
    /// in between or frees one popped in between.
    fn flush_all_copy_then_clear: iova_cache::points::FLUSH_TAKE_LOCKED, Weakening::Relax,
        "IOVA conservation broken", Bound::Preemptions(2), flush_all_vs_depot_traffic;
}

must_fail_test! {
    /// Without the depot lock, the flush's take of the depot races a push or an exchange.
    fn flush_all_depot_unlocked: iova_cache::points::DEPOT_LOCK, Weakening::Relax,
        "Causality violation", Bound::Preemptions(2), flush_all_vs_depot_traffic;
}

/// A batch free racing `flush_all` and an allocation on another CPU: CPU 0 frees three ranges
/// with one `free_batch` (magazines of one entry: into `loaded`, a swap with `prev`, a trade
/// of the full `loaded` for an empty magazine from the depot, all under one hold of the slot
/// lock), CPU 1 allocates twice, a third thread flushes every cache. The batch holds the
/// slot across the pushes and the depot trade, so the flush sees the slot before or after
/// the whole batch (or its tree spill), never half of it.
fn free_batch_vs_flush_all() {
    three_frees_vs_flush_all(|o, a, p| o.free_batch(a, p));
}

/// Three threads, as `flush_all_vs_depot_traffic` with the three frees as one batch.
/// Bound 3 preemptions, as there: the flush stopped inside a slot's critical section or
/// between the slots and the depot, and both users between a slot and a depot exchange.
#[test]
fn free_batch_vs_flush_all_passes() {
    check(Bound::Preemptions(3), free_batch_vs_flush_all);
}

must_fail_test! {
    /// A flush that copies a slot, frees the copy, then empties the slot loses the ranges a
    /// batch pushed in between.
    fn free_batch_flush_copy_then_clear: iova_cache::points::FLUSH_TAKE_LOCKED, Weakening::Relax,
        "IOVA conservation broken", Bound::Preemptions(2), free_batch_vs_flush_all;
}

must_fail_test! {
    /// Without the slot lock, the batch's pushes race the flush's take of the slot.
    fn free_batch_slot_unlocked: iova_cache::points::CPU_LOCK, Weakening::Relax,
        "Causality violation", Bound::Preemptions(2), free_batch_vs_flush_all;
}

/// `flush_all` returns every range cached when it began, unless a user took it meanwhile:
/// the promise flush-and-retry and `reserve` rely on. One CPU slot holds two cached ranges
/// (magazines of one entry) while a thread on that CPU frees a third, which pushes a full
/// magazine to the depot during the flush; nobody allocates, so both first ranges must be free
/// in the tree when `flush_all` returns.
fn flush_all_returns_what_was_cached() {
    let a = tiny(1, 1, 8);
    let o = Oracle::default();
    let p: Vec<u64> = (0..3).map(|_| o.alloc(&a, 1).unwrap()).collect();
    on_cpu(0);
    o.free(&a, p[0], 1);
    o.free(&a, p[1], 1);
    let freer = {
        let (a, o, last) = (a.clone(), o.clone(), p[2]);
        spawn(move || {
            on_cpu(0);
            o.free(&a, last, 1);
        })
    };
    let flusher = {
        let a = a.clone();
        spawn(move || {
            a.flush_all();
            for x in [p[0], p[1]] {
                assert_eq!(a.find(x), None, "pfn {x} still cached after flush_all");
            }
        })
    };
    freer.join().unwrap();
    flusher.join().unwrap();
    o.settle(&a);
}

/// Two threads, one free against one flush of a CPU slot and the depot: exhaustive.
#[test]
fn flush_all_returns_what_was_cached_passes() {
    check(Bound::Exhaustive, flush_all_returns_what_was_cached);
}

/// Two pfns `[q, r]` are reserved while CPU 1 frees `q` and two more ranges (the third free
/// pushes a full magazine to the depot) and allocates once; `r` sits in CPU 0's magazine from
/// the start and nobody runs on CPU 0. The reservation succeeds, or is refused because of `q`
/// (held, or cached again on CPU 1 after the flush passed its slot) or because of `r` if the
/// user's allocation took it from the tree once flushed; a refusal naming an `r` nobody holds
/// means the flush missed a slot. A granted reservation covers both pfns and no user holds
/// either afterwards.
fn reserve_vs_depot_traffic() {
    let a = tiny(2, 1, 8);
    let o = Oracle::default();
    let mut p: Vec<u64> = (0..4).map(|_| o.alloc(&a, 1).unwrap()).collect();
    p.sort_unstable();
    let (t, s, q, r) = (p[0], p[1], p[2], p[3]);
    assert_eq!(q + 1, r, "the tiny space hands out adjacent pfns");
    on_cpu(0);
    o.free(&a, r, 1);
    let user = {
        let (a, o) = (a.clone(), o.clone());
        spawn(move || {
            on_cpu(1);
            for x in [q, s, t] {
                o.free(&a, x, 1);
            }
            o.alloc(&a, 1).expect("space left");
        })
    };
    let reserver = {
        let a = a.clone();
        spawn(move || a.reserve(q, r))
    };
    user.join().unwrap();
    let reserved = reserver.join().unwrap();
    match reserved {
        Ok(()) => {
            for x in [q, r] {
                let kind = a.find(x).map(|range| range.kind);
                assert_eq!(kind, Some(RangeKind::Reserved), "pfn {x} reserved");
                assert!(!o.holds(x), "reserved pfn {x} handed out");
            }
        }
        Err(e) => {
            // `q` may be held or cached again; `r` only if the user's allocation took it from
            // the tree after the flush returned it.
            let legitimate = [q, r]
                .into_iter()
                .filter(|&x| x == q || o.holds(x))
                .any(|x| e == IovaError::ReserveOverlapsAllocation { pfn: x, size: 1 });
            assert!(
                legitimate,
                "a reservation refused for a range only the caches held: {e:?}"
            );
        }
    }
    o.settle(&a);
}

/// Two threads: three frees and an allocation on CPU 1 against a reservation (a flush of two
/// CPU slots and the depot, then the tree). Bound 5 preemptions (about 2 s; 6 takes 5 s):
/// the reservation can be stopped between each of its four steps (CPU 0's slot, CPU 1's
/// slot, the depot, the carve) while the user is stopped between any two of its frees, its
/// depot push and its allocation, and each stop can resume into the other thread's next step.
#[test]
fn reserve_vs_depot_traffic_passes() {
    check(Bound::Preemptions(5), reserve_vs_depot_traffic);
}

must_fail_test! {
    /// A flush that copies a slot, frees the copy, then empties the slot hands a range pushed
    /// in between to the tree and to the cache at once.
    fn reserve_flush_copy_then_clear: iova_cache::points::FLUSH_TAKE_LOCKED, Weakening::Relax,
        "IOVA conservation broken", Bound::Preemptions(3), reserve_vs_depot_traffic;
}
