//! Hostile callers of `free_batch` and the per-thread stack it fills: overlapping ranges of
//! several classes in one batch, more freeing threads than thread-cache slots, the stack
//! against `reserve` and `flush_all`, frees from a thread-local destructor after the thread's
//! slots were given back, and unchecked mode's documented semantics (only the shape is
//! checked; a range the tree never handed out is refused when it leaves the caches, counted,
//! and nothing panics).
#![cfg(not(loom))]

use iova_cache::{IovaAllocator, IovaConfig, IovaError};
use std::collections::BTreeSet;
use std::sync::Arc;

fn allocator(end: u64, cpus: usize, checked_frees: bool) -> IovaAllocator {
    IovaAllocator::new(IovaConfig {
        cpus,
        trim_interval: None,
        checked_frees,
        ..IovaConfig::with_space(1, end)
    })
    .unwrap()
}

/// Every granule the allocator can hand out in single granules: each at most once.
fn drain_space(a: &IovaAllocator, limit: u64) -> BTreeSet<u64> {
    let mut got = BTreeSet::new();
    while let Ok(p) = a.alloc(1, limit) {
        assert!(got.insert(p), "pfn {p:#x} handed out twice");
    }
    got
}

/// A batch whose ranges overlap live allocations of other classes, or each other, frees
/// exactly the ranges that were allocated as given and refuses the rest: nothing is cached
/// twice, and the whole space comes back once.
#[test]
fn overlapping_ranges_in_one_batch() {
    let a = allocator(0xff, 1, true);
    let four = a.alloc(4, 0xff).unwrap();
    let two = a.alloc(2, 0xff).unwrap();
    let one = a.alloc(1, 0xff).unwrap();
    let batch = [
        (four + 2, 2), // inside the 4-granule range, as a 2-granule one
        (four, 2),     // its first half
        (four, 4),     // the real one
        (four, 4),     // again
        (four + 1, 1), // a granule of it, now cached
        (two, 2),
        (two, 1), // a wrong size after the right one
        (two + 1, 1),
        (one, 1),
        (one, 2), // a size that would cover a neighbour
        (0, 1),   // below the space
        (0x100, 1),
        (u64::MAX, 1),
        (u64::MAX - 63, 64),
        (one, 0),
        (one, u64::MAX),
    ];
    let r = a.free_batch(batch);
    assert!(r.is_err());
    let mut cached = a.cached_ranges();
    cached.sort_unstable();
    let mut want = vec![(four, 4), (two, 2), (one, 1)];
    want.sort_unstable();
    assert_eq!(cached, want, "each live range cached once, nothing else");
    assert_eq!(a.check_invariants(), Ok(()));
    let all = drain_space(&a, 0xff);
    assert_eq!(all.len(), 0xff, "the whole space, each granule once");
}

/// More threads than thread-cache slots free batches and stay alive without allocating: the
/// hoard is bounded by the slots (a range and a stack each), and a fitting allocation from
/// another thread still gets the whole space (flush-and-retry drains every stack).
#[test]
fn more_batch_freeing_threads_than_slots_hoard_a_bounded_amount() {
    const THREADS: usize = 12; // 8 slots for a 1-CPU allocator
    const PER: usize = 40;
    let end = (THREADS * PER) as u64;
    let a = Arc::new(allocator(end, 1, true));
    let barrier = Arc::new(std::sync::Barrier::new(THREADS + 1));
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let wait = Arc::new(std::sync::Mutex::new(wait));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (a, barrier, wait) = (a.clone(), barrier.clone(), wait.clone());
            std::thread::spawn(move || {
                let mine: Vec<u64> = (0..PER).map(|_| a.alloc(1, end).unwrap()).collect();
                barrier.wait();
                assert_eq!(a.free_batch(mine.iter().map(|&p| (p, 1))), Ok(()));
                barrier.wait();
                // Stay alive, holding the slot, until the main thread is done.
                let _ = wait.lock().unwrap().recv();
            })
        })
        .collect();
    barrier.wait();
    barrier.wait();
    let s = a.stats();
    assert!(
        s.thread_cached_granules <= 8 * (256 + 64),
        "hoard past the documented bound: {}",
        s.thread_cached_granules
    );
    assert_eq!(s.cached_granules(), end, "every freed granule cached once");
    // The whole space, as 64-granule ranges and the rest in singles, from this thread.
    let mut held = 0;
    while a.alloc(64, end).is_ok() {
        held += 64;
    }
    held += drain_space(&a, end).len() as u64;
    assert_eq!(
        held, end,
        "a cached range turned a fitting allocation into NoSpace"
    );
    drop(done);
    for t in threads {
        t.join().unwrap();
    }
}

/// A reservation over ranges sitting in the calling thread's stack (and another thread's)
/// succeeds: `reserve` drains the stacks first. One over a held range fails and changes
/// nothing.
#[test]
fn reserve_over_stacked_ranges() {
    let a = Arc::new(allocator(0x3ff, 1, true));
    let mine: Vec<u64> = (0..16).map(|_| a.alloc(1, 0x3ff).unwrap()).collect();
    assert_eq!(a.free_batch(mine.iter().map(|&p| (p, 1))), Ok(()));
    let a1 = a.clone();
    std::thread::spawn(move || {
        let theirs: Vec<u64> = (0..16).map(|_| a1.alloc(2, 0x3ff).unwrap()).collect();
        assert_eq!(a1.free_batch(theirs.iter().map(|&p| (p, 2))), Ok(()));
        // Exits: the slot goes back with its stack.
    })
    .join()
    .unwrap();
    let held = a.alloc(1, 0x3ff).unwrap();
    let before = a.allocated_ranges();
    assert_eq!(
        a.reserve(1, 0x3ff),
        Err(IovaError::ReserveOverlapsAllocation { pfn: held, size: 1 })
    );
    assert_eq!(
        a.allocated_ranges(),
        [(held, 1)],
        "only the held range is left"
    );
    assert!(before.len() > 1);
    assert_eq!(a.stats().thread_cached_granules, 0);
    a.free(held, 1).unwrap();
    assert_eq!(
        a.reserve(1, 0x3ff),
        Ok(()),
        "every stacked range was drained"
    );
    assert_eq!(
        a.alloc(1, 0x3ff),
        Err(IovaError::NoSpace {
            size: 1,
            limit: 0x3ff
        })
    );
    assert_eq!(
        a.free_batch([(held, 1)]),
        Err(IovaError::NotAllocated { pfn: held })
    );
}

/// Frees from a thread-local destructor that runs after the thread's slots were given back:
/// the ranges go to the magazines, none is lost, none is cached twice.
#[test]
fn frees_from_a_late_thread_local_destructor() {
    struct FreeOnDrop(Option<(Arc<IovaAllocator>, Vec<u64>)>);
    impl Drop for FreeOnDrop {
        fn drop(&mut self) {
            if let Some((a, pfns)) = self.0.take() {
                let (one, rest) = pfns.split_first().unwrap();
                a.free(*one, 1).unwrap();
                a.free_batch(rest.iter().map(|&p| (p, 1))).unwrap();
            }
        }
    }
    thread_local! {
        static LATE: std::cell::RefCell<FreeOnDrop> = const { std::cell::RefCell::new(FreeOnDrop(None)) };
    }
    let a = Arc::new(allocator(0xff, 1, true));
    let a1 = a.clone();
    std::thread::spawn(move || {
        let pfns: Vec<u64> = (0..10).map(|_| a1.alloc(1, 0xff).unwrap()).collect();
        // Registered before the thread claims its slot: destroyed after the registry.
        LATE.with(|l| *l.borrow_mut() = FreeOnDrop(Some((a1.clone(), pfns[2..].to_vec()))));
        a1.free(pfns[0], 1).unwrap();
        a1.free_batch([(pfns[1], 1)]).unwrap();
    })
    .join()
    .unwrap();
    let mut cached = a.cached_ranges();
    cached.sort_unstable();
    cached.dedup();
    assert_eq!(cached.len(), 10);
    assert_eq!(a.stats().cached_granules(), 10);
    a.flush_all();
    assert_eq!(a.allocated_ranges(), []);
    assert_eq!(drain_space(&a, 0xff).len(), 0xff);
}

/// Unchecked frees check the shape alone, as documented: a well-shaped range nobody holds is
/// accepted by `free_batch` and cached; when it leaves the caches the range allocator refuses
/// it, which is counted, and nothing panics or breaks the allocator. A badly shaped one is
/// refused at once.
#[test]
fn unchecked_batch_of_ranges_never_allocated() {
    let a = allocator(0xff, 1, false);
    let live = a.alloc(1, 0xff).unwrap();
    let never = if live == 0xff { 0xfe } else { 0xff };
    assert_eq!(a.free_batch([(never, 1), (0x10, 16)]), Ok(()));
    assert_eq!(
        a.free_batch([(0x11, 16)]),
        Err(IovaError::NotAllocated { pfn: 0x11 })
    );
    assert_eq!(
        a.free_batch([(0x100, 1)]),
        Err(IovaError::NotAllocated { pfn: 0x100 })
    );
    a.flush_all();
    assert_eq!(a.stats().refused_cached_frees, 2);
    assert_eq!(a.allocated_ranges(), [(live, 1)]);
    assert_eq!(a.check_invariants(), Ok(()));
    a.free(live, 1).unwrap();
    a.flush_all();
    assert_eq!(drain_space(&a, 0xff).len(), 0xff);
}

/// An iterator handed to `free_batch` that calls back into the allocator (allocations, a
/// nested batch, `flush_all`, `reserve`) finds no lock held and no section open: nothing
/// deadlocks, and every range ends up held, cached or free exactly once.
#[test]
fn a_free_batch_iterator_that_reenters_the_allocator() {
    let a = allocator(0xff, 1, true);
    let outer: Vec<u64> = (0..8).map(|_| a.alloc(1, 0xff).unwrap()).collect();
    let inner: Vec<u64> = (0..4).map(|_| a.alloc(2, 0xff).unwrap()).collect();
    let mut taken = Vec::new();
    let r = {
        let (a, inner, taken) = (&a, &inner, &mut taken);
        let mut step = 0;
        a.free_batch(outer.iter().map(move |&p| {
            step += 1;
            match step {
                2 => assert_eq!(a.free_batch(inner.iter().map(|&q| (q, 2))), Ok(())),
                3 => a.flush_all(),
                4 => taken.push(a.alloc(1, 0xff).unwrap()),
                5 => {
                    // Over a range still pending in this batch: it is allocated in the tree.
                    let _ = a.reserve(0xf0, 0xff);
                }
                _ => {}
            }
            (p, 1)
        }))
    };
    assert_eq!(r, Ok(()));
    assert_eq!(a.check_invariants(), Ok(()));
    for &p in &taken {
        a.free(p, 1).unwrap();
    }
    a.flush_all();
    let reserved: u64 = (0..=0xff).filter(|&p| a.find(p).is_some()).count() as u64;
    assert_eq!(a.allocated_ranges(), [], "nothing held or cached is left");
    let free = drain_space(&a, 0xff).len() as u64;
    assert_eq!(
        free + reserved,
        0xff,
        "every granule free or reserved, once"
    );
}
