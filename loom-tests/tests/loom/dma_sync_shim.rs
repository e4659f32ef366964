//! Models of the dma-sync shim itself: the loom RCU (`dma_sync::rcu`), the published
//! pointer (`dma_sync::Published`) and the spin lock (`dma_sync::SpinLock`).
//!
//! The RCU model kills every RCU point of `dma-sync/src/points.rs`: each twin weakens one
//! ordering of the shim and loom must report the reader racing the poisoning free
//! ("Causality violation"). The store-buffering points (`rcu.pin.fence`, `rcu.sync.fence`)
//! are only observable because the updater pins *before* it unlinks, as every user of the API
//! does (`pin(); swap; defer_retire`): its own pin fence then lies before the unlink and cannot
//! stand in for the missing synchronize fence.
//!
//! The models of this module and of `rcu_strict_models`: an updater pins, swaps in a new node,
//! retires the old one and unpins, while readers read under pins; the node payload is an
//! `UnsafeCell` plus an atomic copy, both written before publication and poisoned on free.
//! `rcu::synchronize` runs against a reader with two or three sections (its later pins and unpins
//! are where the grace period can end); retire-after-unlink has its retire-before-unlink negative
//! control; a CAS-replaced counter's narrowed pin is caught only through address reuse; a `Box`
//! dropped instead of retired is reported by the bypass check.
//!
//! `Published` (ArcSwap in production, a loom `RwLock<Arc<T>>` under loom): a writer swaps while
//! two readers load; readers only see fully built values (payload written before publication,
//! checked through `UnsafeCell` and an atomic copy), the replaced value is dropped exactly once
//! (drop counter) and nothing leaks (loom's `Arc` leak check). A negative control (payload
//! written after publication) must fail with a causality violation. A second model checks that
//! two concurrent `Published::rcu` increments are never lost.
//!
//! `SpinLock`: two threads each increment a counter (an `UnsafeCell`) in a section; the twins
//! weaken the lock's acquire (`sync.spin.acquire`) or its release store (`sync.spin.release`),
//! and the second section's access then races the first's ("Causality violation").
//!
//! # Bounds
//!
//! | Model | Bound | What it covers |
//! |---|---|---|
//! | RCU shim, one reader (plain and nested guard), and its six twins | exhaustive | one reader section against pin, swap, retire, unpin, and the collector steps of both threads |
//! | RCU shim, two readers | 4 preemptions | two reader sections and the updater; exhaustive takes minutes (every pin and unpin is a collector step); 4 preemptions stop both readers inside their sections (between pin and load, between load and read) while the updater is stopped between unlink and retirement, or one reader at both places and the updater once more inside its grace period (about 30 s of CPU; bound 3, 4 s) |
//! | `rcu::synchronize` against a reader with 2 sections (3 sections: bound 3) | 4 preemptions (twins 3) | the reader stopped inside its first section, between sections, and the waiter between unpublishing and its wait, plus the collector step that ends the grace period on either thread; the wait loop spins, so exhaustive is unbounded |
//! | retire after / before unlink | 4 / 3 preemptions | one reader section, one replace + retire + flush; the updater also stopped between its retirement and its own read of the retired node |
//! | CAS counter, 1 + 2 increments (whole pin 4, narrowed pin 3 preemptions) | 4 / 3 preemptions | the racer stopped between its load and its CAS while the other thread completes both increments (freeing and reusing the node), and between its CAS and its retirement |
//! | bypassing free | exhaustive | one reader, one unlink + drop |
//! | `Published` swap, late-initialisation control, `rcu()` updates | exhaustive | three short threads around a loom lock |
//! | `SpinLock`, two sections, and its two twins | exhaustive | either section first, the other's acquire failing and its waiter spinning (each spin step yields) until the release |
//!
//! `DMALOOM_WEAKEN=rcu.sync.fence RUSTFLAGS="--cfg loom" cargo test --release -p loom-tests --test
//! loom -- dma_sync_shim::rcu_reader_never_sees_freed_node` shows a twin's failure by hand:
//! `Causality violation: Concurrent read and write accesses.`

use dma_sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use dma_sync::mutation::Weakening;
use dma_sync::points::{
    RCU_GRACE_PERIOD, RCU_PIN, RCU_PIN_FENCE, RCU_SYNC_ACQUIRE, RCU_SYNC_FENCE, RCU_UNPIN_RELEASE,
    SPIN_ACQUIRE, SPIN_RELEASE,
};
use dma_sync::rcu;
use dma_sync::thread::spawn;
use dma_sync::{Arc, Published, SpinLock, UnsafeCell};
use loom_tests::harness::{check, must_be_caught, Bound};
use loom_tests::must_fail_test;
pub(crate) use loom_tests::rcu_node::Node;

/// One updater replaces the published node and retires the old one, while `readers` readers
/// read it under pins. Readers see the old or the new node, never a freed one.
///
/// With one reader the model is small enough to be exhaustive (a few hundredths of a second),
/// and so are its must-fail twins. Two readers are bounded (see below).
fn replace_while_reading(readers: usize, nested: bool) {
    let head = Arc::new(AtomicPtr::new(Node::build(1)));
    let handles: Vec<_> = (0..readers)
        .map(|_| {
            let head = head.clone();
            spawn(move || {
                let guard = rcu::pin();
                if nested {
                    // An inner guard dropped before the read must not end the outer section.
                    drop(rcu::pin());
                }
                // SAFETY: `head` holds Box pointers that are retired only after unlinking.
                let node = unsafe { guard.deref(head.load(Acquire)) }.expect("head is never null");
                let v = node.read();
                assert!(v == 1 || v == 2, "unexpected value {v}");
            })
        })
        .collect();
    // The updater (the model's main thread), in the order every user follows: pin, unlink,
    // retire; the grace period and the poisoning run when the guard drops.
    let guard = rcu::pin();
    let old = head.swap(Node::build(2), AcqRel);
    // SAFETY: `old` is unlinked and retired exactly once.
    unsafe { guard.defer_retire(old) };
    drop(guard);
    for h in handles {
        h.join().unwrap();
    }
    let last = head.swap(std::ptr::null_mut(), AcqRel);
    // SAFETY: every thread has joined; `last` is the unique owner of the live node.
    drop(unsafe { Box::from_raw(last) });
}

fn one_reader() {
    replace_while_reading(1, false);
}

/// Exhaustive.
#[test]
fn rcu_reader_never_sees_freed_node() {
    check(Bound::Exhaustive, one_reader);
}

/// Two readers (two registration slots the grace period must scan). Bounded, preemption bound
/// 4 (about 30 s of CPU; exhaustive takes minutes because every pin and unpin is a collector
/// step): enough to stop each reader once inside its section while the updater is stopped
/// between its unlink and its scan, with one switch left for the scan itself to pass a slot
/// and return to it; the one-reader model is exhaustive.
#[test]
fn rcu_two_readers_never_see_freed_node() {
    check(Bound::Preemptions(4), || replace_while_reading(2, false));
}

/// A reader whose section nests a second guard, dropped before the read: the shim counts
/// nesting, so the outer guard still protects the read. Exhaustive.
#[test]
fn rcu_nested_guard_keeps_reader_protected() {
    check(Bound::Exhaustive, || replace_while_reading(1, true));
}

must_fail_test! {
    /// A reader that does not register is not waited for: the free races its read.
    fn rcu_unpinned_reader_races_free: RCU_PIN, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, one_reader;
}

must_fail_test! {
    /// Without the reader's fence (store-buffering): the reader loads the old pointer while the
    /// updater's scan still reads the reader as absent.
    fn rcu_pin_without_fence_races_free: RCU_PIN_FENCE, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, one_reader;
}

must_fail_test! {
    /// A Relaxed departure does not order the reader's reads before the free.
    fn rcu_relaxed_unpin_races_free: RCU_UNPIN_RELEASE, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, one_reader;
}

must_fail_test! {
    /// Without the updater's fence between unlink and scan (store-buffering, other side).
    fn rcu_sync_without_fence_races_free: RCU_SYNC_FENCE, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, one_reader;
}

must_fail_test! {
    /// A Relaxed scan sees the departure but does not acquire the reader's reads.
    fn rcu_relaxed_scan_races_free: RCU_SYNC_ACQUIRE, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, one_reader;
}

must_fail_test! {
    /// Without a grace period the retired node is poisoned while a reader reads it.
    fn rcu_no_grace_period_races_free: RCU_GRACE_PERIOD, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, one_reader;
}

/// A value published through `Published`: built (payload written) after allocation and before
/// publication, and counting its drops.
struct Config {
    generation: UnsafeCell<u64>,
    double: AtomicU64,
    drops: Arc<AtomicUsize>,
}

// SAFETY: `generation` is written only before the value is published, then only read.
unsafe impl Sync for Config {}

impl Config {
    fn build(generation: u64, drops: &Arc<AtomicUsize>) -> Arc<Config> {
        let c = Arc::new(Config {
            generation: UnsafeCell::new(0),
            double: AtomicU64::new(0),
            drops: drops.clone(),
        });
        // SAFETY: the value is not shared yet.
        c.generation.with_mut(|p| unsafe { *p = generation });
        c.double.store(2 * generation, Relaxed);
        c
    }

    pub(crate) fn read(&self) -> u64 {
        // SAFETY: the value was fully written before it was published.
        let g = self.generation.with(|p| unsafe { *p });
        assert_eq!(
            self.double.load(Relaxed),
            2 * g,
            "reader saw a partly built value"
        );
        g
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Relaxed);
    }
}

/// A writer swaps in a new value while two readers load snapshots: readers see generation 1
/// or 2, fully built; the old value is dropped exactly once (drop counter) and no value leaks
/// (loom's `Arc` leak check at the end of every execution). `finish_after_publish` is the
/// negative control: the writer finishes building the value after publishing it.
fn swap_while_loading(finish_after_publish: bool) {
    let drops = Arc::new(AtomicUsize::new(0));
    let p = Arc::new(Published::new(Config::build(1, &drops)));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let p = p.clone();
            spawn(move || {
                let g = p.load().read();
                assert!(g == 1 || g == 2);
                g
            })
        })
        .collect();
    let old = if finish_after_publish {
        let new = Config::build(2, &drops);
        let old = p.swap(new.clone());
        // SAFETY: deliberately racy in the negative control: loom reports the race.
        new.generation.with_mut(|g| unsafe { *g = 2 });
        old
    } else {
        p.swap(Config::build(2, &drops))
    };
    assert_eq!(old.read(), 1);
    drop(old);
    let seen: Vec<u64> = readers.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(p.load_full().read(), 2);
    assert!(seen.iter().all(|&g| g == 1 || g == 2));
    // Only the replaced value has been dropped, once.
    assert_eq!(drops.load(Relaxed), 1);
    drop(p);
    assert_eq!(
        drops.load(Relaxed),
        2,
        "the last value is dropped with the pointer"
    );
}

/// Exhaustive: under loom `Published` is a lock around an `Arc` (it checks the shim's contract,
/// not arc-swap's internals, which loom cannot see), and the model has three short threads.
#[test]
fn published_swap_while_loading() {
    check(Bound::Exhaustive, || swap_while_loading(false));
}

/// The model can fail: a value written after its publication races the readers. Exhaustive.
#[test]
fn published_late_initialisation_is_caught() {
    must_be_caught("Causality violation", Bound::Exhaustive, || {
        swap_while_loading(true)
    });
}

/// Two writers increment through `Published::rcu` while a reader loads: no update is lost,
/// the reader sees a value in 0..=2, and every replaced value is dropped (loom `Arc` leak
/// check). Exhaustive, for the same reason as above.
#[test]
fn published_rcu_updates_are_not_lost() {
    check(Bound::Exhaustive, || {
        let p = Arc::new(Published::new(Arc::new(0u64)));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let p = p.clone();
                spawn(move || {
                    let old = p.rcu(|v| **v + 1);
                    assert!(*old <= 1);
                })
            })
            .collect();
        let seen = **p.load();
        assert!(seen <= 2);
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(*p.load_full(), 2, "an rcu() update was lost");
    });
}

/// Two threads each increment a counter under one `SpinLock`: the sections exclude each other,
/// and each sees what the other wrote before it.
fn spin_lock_sections() {
    let lock = Arc::new(SpinLock::new(0u64));
    let other = {
        let lock = lock.clone();
        spawn(move || lock.with(|n| *n += 1))
    };
    lock.with(|n| *n += 1);
    other.join().unwrap();
    assert_eq!(lock.with(|n| *n), 2, "an update under the lock was lost");
}

#[test]
fn spin_lock_sections_exclude_each_other() {
    check(Bound::Exhaustive, spin_lock_sections);
}

must_fail_test! {
    /// A Relaxed acquire does not order the previous holder's section before ours.
    fn spin_relaxed_acquire_races_previous_section: SPIN_ACQUIRE, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, spin_lock_sections;
}

must_fail_test! {
    /// A Relaxed unlock does not order our section before the next holder's.
    fn spin_relaxed_release_races_next_section: SPIN_RELEASE, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, spin_lock_sections;
}
