//! `flush_all` of `iova-cache` racing magazine traffic on the real code, with the default
//! `checked_frees: true` (magazines of one entry): CPU 0 frees three ranges (the third pushes a
//! full magazine to the depot), CPU 1 allocates twice (taking that magazine, or going to the
//! tree), and a third thread flushes every cache; every range is held by one user or free
//! afterwards. (Racing checked frees are `iova_models::checked_free_races_double_free`.)

use crate::iova_models::{on_cpu, tiny, Oracle};
use dma_sync::mutation::Weakening;
use dma_sync::thread::spawn;
use loom_tests::harness::{check, Bound};
use loom_tests::must_fail_test;

fn flush_all_vs_depot_traffic() {
    let a = tiny(2, 1, 8);
    let o = Oracle::default();
    let p: Vec<u64> = (0..3).map(|_| o.alloc(&a, 1).unwrap()).collect();
    let freer = {
        let (a, o) = (a.clone(), o.clone());
        spawn(move || {
            on_cpu(0);
            for &x in &p {
                o.free(&a, x, 1);
            }
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
/// Bound 2 preemptions (bound 3 takes minutes): the flush can be stopped inside a slot's
/// critical section window or between the slots and the depot, and either user between its
/// slot and a depot exchange.
#[test]
fn flush_all_vs_depot_traffic_passes() {
    check(Bound::Preemptions(2), flush_all_vs_depot_traffic);
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
