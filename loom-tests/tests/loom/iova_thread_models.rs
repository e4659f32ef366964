//! Models of iova-cache's thread caches (module `thread_cache`, the protocol of
//! `dma_sync::thread_slots` with the `iova.thread.*` points) on the real allocator: two slots
//! under loom, one CPU slot, magazines of one entry, checked frees on.
//!
//! Invariants: the oracle of `iova_models` (no pfn held twice; after the join and
//! `flush_all` the range allocator holds exactly the held pfns, nothing stays cached), and
//! "false no space": an allocation that finds the only granule parked in another thread's
//! cache, after that thread is done with it, must get it through flush-and-retry.

use crate::iova_models::Oracle;
use dma_sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release};
use dma_sync::mutation::Weakening;
use dma_sync::Arc;
use iova_cache::{IovaAllocator, IovaConfig, IovaError};
use loom_tests::harness::{check, Bound};
use loom_tests::must_fail_test;

/// A tiny allocator over pfns `1..=end` with thread caches.
fn tiny_threads(end: u64) -> Arc<IovaAllocator> {
    let cfg = IovaConfig {
        cpus: 1,
        magazine_size: 1,
        trim_interval: None,
        thread_caches: true,
        ..IovaConfig::with_space(1, end)
    };
    Arc::new(IovaAllocator::new(cfg).expect("valid tiny config"))
}

/// Allocate and free the one granule if it is free.
fn pair(a: &IovaAllocator, o: &Oracle) -> Result<(), IovaError> {
    let p = o.alloc(a, 1)?;
    o.free(a, p, 1);
    Ok(())
}

/// A thread's cache hits and frees racing a drain. A space of one granule: the owner
/// allocates and frees it twice (its first free parks it in its thread cache, its second
/// allocation takes it back from there: a section against the drain). The other thread
/// allocates once: finding no room it flushes, which drains the owner's cache, and retries;
/// once the owner is done, the granule must be had ("false no space"). A section and a drain
/// that both take the granule hand it out twice. Preemptions(2): the drain's close and fence
/// inside either owner section, its take and reopen before the owner's next one.
fn thread_hit_vs_drain() {
    let a = tiny_threads(1);
    let o = Oracle::default();
    let done = Arc::new(AtomicBool::new(false));
    let (a1, o1, d1) = (a.clone(), o.clone(), done.clone());
    let owner = dma_sync::thread::spawn(move || {
        for _ in 0..2 {
            let _ = pair(&a1, &o1);
        }
        d1.store(true, Release);
    });
    let (a2, o2) = (a.clone(), o.clone());
    let other = dma_sync::thread::spawn(move || {
        let owner_done = done.load(Acquire);
        match pair(&a2, &o2) {
            Err(IovaError::NoSpace { .. }) if owner_done => {
                panic!("false no space: the granule stayed in a thread cache")
            }
            _ => {}
        }
    });
    owner.join().unwrap();
    other.join().unwrap();
    o.settle(&a);
}

#[test]
fn thread_hit_vs_drain_passes() {
    check(Bound::Preemptions(2), thread_hit_vs_drain);
}

/// A thread's batch stack racing a drain. A space of two granules: the owner allocates both
/// and hands them back with one `free_batch` (both stacked in its slot, the stack's loom
/// size), then allocates one again (a stack hit: a section against the drain) and frees it.
/// The other thread allocates once: finding no room it flushes, which drains the owner's
/// stack, and retries; once the owner is done, a granule must be had ("false no space"). A
/// section and a drain that both take a stacked granule hand it out twice; a drain that
/// forgets the stack loses it. Preemptions(2): the drain's close and fence inside the batch
/// free's section or the stack hit's, its take and reopen before the owner's next section.
fn thread_batch_vs_drain() {
    let a = tiny_threads(2);
    let o = Oracle::default();
    let done = Arc::new(AtomicBool::new(false));
    let (a1, o1, d1) = (a.clone(), o.clone(), done.clone());
    let owner = dma_sync::thread::spawn(move || {
        let both: Vec<u64> = (0..2).filter_map(|_| o1.alloc(&a1, 1).ok()).collect();
        o1.free_batch(&a1, &both);
        let _ = pair(&a1, &o1);
        d1.store(true, Release);
    });
    let (a2, o2) = (a.clone(), o.clone());
    let other = dma_sync::thread::spawn(move || {
        let owner_done = done.load(Acquire);
        match pair(&a2, &o2) {
            Err(IovaError::NoSpace { .. }) if owner_done => {
                panic!("false no space: the granules stayed in a thread's stack")
            }
            _ => {}
        }
    });
    owner.join().unwrap();
    other.join().unwrap();
    o.settle(&a);
}

#[test]
fn thread_batch_vs_drain_passes() {
    check(Bound::Preemptions(2), thread_batch_vs_drain);
}

/// A thread that exits with a granule in its cache, racing its heir. Two granules: the leaver
/// allocates one and frees it (parked in its slot), then exits, giving the slot back with the
/// granule in it. The heir allocates and frees one granule: if it claims the leaver's slot it
/// inherits the parked granule (its allocation takes it, or its free displaces it to the
/// magazines); a claimer that did not see it would overwrite it, and it would be lost.
/// Preemptions(2): the heir's claim before or after the leaver's exit, and inside its
/// sections.
fn thread_exit_handback() {
    let a = tiny_threads(2);
    let o = Oracle::default();
    let (a1, o1) = (a.clone(), o.clone());
    let leaver = dma_sync::thread::spawn(move || pair(&a1, &o1).unwrap());
    let (a2, o2) = (a.clone(), o.clone());
    let heir = dma_sync::thread::spawn(move || pair(&a2, &o2).unwrap());
    leaver.join().unwrap();
    heir.join().unwrap();
    o.settle(&a);
}

#[test]
fn thread_exit_handback_passes() {
    check(Bound::Preemptions(2), thread_exit_handback);
}

/// How a range taken by both a section and a drain, or lost, shows.
const BROKEN: &str = "IOVA conservation broken";
/// How a slot handed over unordered shows: as `BROKEN`, or as the heir's read of the
/// leaver's section flag without having acquired it.
const HEIR_UNORDERED: &str = "IOVA conservation broken | Causality violation";

must_fail_test! {
    /// Without the section's fence, a section and a drain miss each other's flags (store
    /// buffering): both take the granule.
    fn thread_enter_fence_dropped: iova_cache::points::THREAD_ENTER, Weakening::Relax,
        BROKEN, Bound::Preemptions(2), thread_hit_vs_drain;
}

must_fail_test! {
    /// Without the section's fence, a batch free's or a stack hit's section and a drain miss
    /// each other's flags: both take a stacked granule.
    fn thread_batch_enter_fence_dropped: iova_cache::points::THREAD_ENTER, Weakening::Relax,
        BROKEN, Bound::Preemptions(2), thread_batch_vs_drain;
}

must_fail_test! {
    /// Without the drain's fence, as above from the drainer's side.
    fn thread_drain_fence_dropped: iova_cache::points::THREAD_DRAIN, Weakening::Relax,
        BROKEN, Bound::Preemptions(2), thread_hit_vs_drain;
}

must_fail_test! {
    /// A section ended by a Relaxed store: the drainer that sees it over may read the slot
    /// from before the section emptied it.
    fn thread_exit_relaxed: iova_cache::points::THREAD_EXIT, Weakening::Relax,
        BROKEN, Bound::Preemptions(2), thread_hit_vs_drain;
}

must_fail_test! {
    /// The drainer's wait read Relaxed: as above.
    fn thread_wait_relaxed: iova_cache::points::THREAD_WAIT, Weakening::Relax,
        BROKEN, Bound::Preemptions(2), thread_hit_vs_drain;
}

must_fail_test! {
    /// A slot reopened by a Relaxed store: the owner that sees it open may still see the
    /// granule the drain took.
    fn thread_reopen_relaxed: iova_cache::points::THREAD_REOPEN, Weakening::Relax,
        BROKEN, Bound::Preemptions(2), thread_hit_vs_drain;
}

must_fail_test! {
    /// The owner's read of `closed` Relaxed: as above.
    fn thread_reopened_relaxed: iova_cache::points::THREAD_REOPENED, Weakening::Relax,
        BROKEN, Bound::Preemptions(2), thread_hit_vs_drain;
}

must_fail_test! {
    /// A slot given back by a Relaxed store: the heir that claims it may not see the granule
    /// parked in it, overwrites it, and the granule is lost; its first section's check of its
    /// own section flag (an unsynchronised read under loom) already reads the leaver's
    /// unacquired store.
    fn thread_disown_relaxed: iova_cache::points::THREAD_DISOWN, Weakening::Relax,
        HEIR_UNORDERED, Bound::Preemptions(2), thread_exit_handback;
}
