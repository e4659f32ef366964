//! Models of what makes the loom RCU at least as strict as the production epoch collector: retirements dated
//! at `defer_retire`, grace periods completed on other threads (`rcu::synchronize`), freed
//! addresses handed back to new allocations (ABA), frees that bypass RCU reported.
//!
//! The negative controls here are buggy *users* of RCU (retire before unlink, a pin dropped
//! between a load and the CAS that relies on it, a `Box` dropped instead of retired): each
//! must be caught, which a shim that dated retirements at the guard's drop, completed grace
//! periods only on the retiring thread, or never reused addresses would not do.

use crate::dma_sync_shim::Node;
use dma_sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use dma_sync::mutation::Weakening;
use dma_sync::points::{RCU_SYNCHRONIZE_DONE_ACQUIRE, RCU_SYNCHRONIZE_DONE_RELEASE};
use dma_sync::rcu;
use dma_sync::thread::spawn;
use dma_sync::{Arc, UnsafeCell};
use loom_tests::harness::{check, must_be_caught, Bound};
use loom_tests::must_fail_test;

/// Data readers reach while a flag says it is published; the updater unpublishes it, waits
/// for a grace period and then reuses it (a non-atomic write, so loom checks happens-before).
struct Shared {
    published: AtomicUsize,
    data: UnsafeCell<u64>,
}

// SAFETY: `data` is read only inside read sections that saw `published`, and written only
// after the grace period that follows unpublishing it.
unsafe impl Sync for Shared {}

/// A reader runs `sections` read sections, each reading `data` if it is still published; the
/// updater unpublishes it, calls `rcu::synchronize` and overwrites it.
///
/// The reader's first section may be the one the grace period waits for, and its later pins
/// and unpins are collector steps: the grace period can complete on the reader's thread, and
/// the updater then learns it only through the token's done flag.
fn synchronize_vs_reader(sections: usize) {
    let shared = Arc::new(Shared {
        published: AtomicUsize::new(1),
        data: UnsafeCell::new(7),
    });
    let reader = {
        let shared = shared.clone();
        spawn(move || {
            for _ in 0..sections {
                let guard = rcu::pin();
                if shared.published.load(Acquire) == 1 {
                    // SAFETY: published, inside a read section.
                    let v = shared.data.with(|p| unsafe { *p });
                    assert_eq!(v, 7, "reader saw data reused after its grace period");
                }
                drop(guard);
            }
        })
    };
    shared.published.store(0, Relaxed);
    rcu::synchronize();
    // SAFETY: unpublished, and every section that could have seen it has ended.
    shared.data.with_mut(|p| unsafe { *p = 0 });
    reader.join().unwrap();
}

fn synchronize_two_sections() {
    synchronize_vs_reader(2);
}

/// Two threads, the reader with two sections, the updater's wait loop spinning. Bound 4
/// preemptions (under a second of CPU): the reader can be stopped inside its first section
/// (so the grace period must wait), between its sections, and the updater between
/// unpublishing and its wait; the fourth switch lets the collector step that ends the grace
/// period run on either thread at any iteration of the wait loop. The loop's spinning makes
/// exhaustive exploration unbounded in practice.
#[test]
fn synchronize_waits_for_sections_ended_elsewhere() {
    check(Bound::Preemptions(4), synchronize_two_sections);
}

/// Three reader sections: the grace period can also end at the reader's second unpin.
/// Bound 3 preemptions (under a second of CPU): the reader stopped inside its first and its
/// second section, and the waiter between unpublishing and its wait.
#[test]
fn synchronize_waits_for_a_reader_with_three_sections() {
    check(Bound::Preemptions(3), || synchronize_vs_reader(3));
}

// The twins need three preemptions: the reader stopped inside its first section (so the grace
// period waits for it), and again between the done store of the free it runs and the drop of
// the token's reference to the flag (a loom `Arc`, whose last drop would otherwise carry the
// reader's section to the waiter through the reference count's release/acquire).

must_fail_test! {
    /// The token is freed on the reader's thread; a Relaxed done flag does not carry the
    /// reader's section to the waiter.
    fn synchronize_relaxed_done_store_races_reader: RCU_SYNCHRONIZE_DONE_RELEASE,
        Weakening::Relax, "Causality violation", Bound::Preemptions(3), synchronize_two_sections;
}

must_fail_test! {
    /// The waiter reads the done flag Relaxed: it does not acquire the reader's section.
    fn synchronize_relaxed_done_load_races_reader: RCU_SYNCHRONIZE_DONE_ACQUIRE,
        Weakening::Relax, "Causality violation", Bound::Preemptions(3), synchronize_two_sections;
}

/// A reader reads the published node under a pin while the updater retires the node
/// *before* unlinking it (or after, when `retire_first` is false), reads it once more under
/// the same guard, then unpins and flushes.
fn retire_vs_unlink(retire_first: bool) {
    let head = Arc::new(AtomicPtr::new(Node::build(1)));
    let reader = {
        let head = head.clone();
        spawn(move || {
            let guard = rcu::pin();
            // SAFETY: `head` holds nodes retired through RCU only.
            let node = unsafe { guard.deref(head.load(Acquire)) }.expect("never null");
            node.read();
        })
    };
    let guard = rcu::pin();
    let old = head.load(Acquire);
    let new = Node::build(2);
    if retire_first {
        // SAFETY: deliberately wrong in the negative control: `old` is still published.
        unsafe { guard.defer_retire(old) };
        head.store(new, Release);
    } else {
        head.store(new, Release);
        // SAFETY: unlinked just now, retired once.
        unsafe { guard.defer_retire(old) };
    }
    // The retiring thread may still read what it retired until its own guard drops (as with
    // the epoch collector: a retirement waits for every section pinned at the time, its own
    // included).
    // SAFETY: loaded under `guard`, which is still pinned.
    unsafe { guard.deref(old) }.expect("never null").read();
    drop(guard);
    rcu::pin().flush();
    reader.join().unwrap();
    // SAFETY: every thread has joined; the live node is owned here alone.
    drop(unsafe { Box::from_raw(head.load(Acquire)) });
}

/// Two threads: a reader with one section, an updater with a replace, a retirement and a
/// flush. Bound 4 preemptions (exhaustive exploration of the grace-period bookkeeping takes
/// minutes; bound 4 a tenth of a second of CPU): the reader can be stopped between its pin
/// and its load and between its load and its read, the updater between its unlink and its
/// retirement and between its retirement and its own read of the retired node.
#[test]
fn retire_after_unlink_is_safe() {
    check(Bound::Preemptions(4), || retire_vs_unlink(false));
}

/// The retirement is dated when it is deferred: a reader that pins between the retirement and
/// the unlink still finds the node, and the free races its read. Same bound.
#[test]
fn retire_before_unlink_is_caught() {
    must_be_caught("Causality violation", Bound::Preemptions(3), || {
        retire_vs_unlink(true)
    });
}

/// A counter kept as a published node, replaced by CAS. `incrementer` threads each do
/// `increments` increments; with `narrow_pin` the first thread loads the node under one pin
/// and does its CAS under another (a narrowed read section), so the node it compares against
/// may have been freed and its address reused in between.
fn cas_counter(narrow_pin: bool) {
    let head = Arc::new(AtomicPtr::new(Node::build(0)));
    let increment = |head: &AtomicPtr<Node>, narrow: bool| loop {
        let mut guard = rcu::pin();
        let old = head.load(Acquire);
        // SAFETY: loaded under `guard`.
        let v = unsafe { guard.deref(old) }.expect("never null").read();
        if narrow {
            drop(guard);
            guard = rcu::pin();
        }
        let new = Node::build(v + 1);
        match head.compare_exchange(old, new, AcqRel, Acquire) {
            // SAFETY: unlinked by the CAS, retired once.
            Ok(_) => break unsafe { guard.defer_retire(old) },
            // SAFETY: `new` was never published.
            Err(_) => unsafe { guard.defer_retire(new) },
        }
    };
    let racer = {
        let head = head.clone();
        spawn(move || increment(&head, narrow_pin))
    };
    increment(&head, false);
    increment(&head, false);
    racer.join().unwrap();
    let last = head.load(Acquire);
    // SAFETY: every thread has joined.
    let v = unsafe { rcu::pin().deref(last) }
        .expect("never null")
        .read();
    assert_eq!(v, 3, "an increment was lost");
    // SAFETY: every thread has joined; the live node is owned here alone.
    drop(unsafe { Box::from_raw(last) });
}

/// Two threads, one and two increments. Bound 4 (about 5 s of CPU): the racer can be stopped
/// between its load and its CAS while the other thread completes both increments, and again
/// between its CAS and its retirement while the other thread's collector steps run.
#[test]
fn cas_counter_with_whole_pin_loses_nothing() {
    check(Bound::Preemptions(4), || cas_counter(false));
}

/// The narrowed read section lets the node the racer compares against be freed and its
/// address handed to the other thread's next node: the CAS succeeds against the wrong node
/// (ABA) and increments are lost. Found only because freed addresses are reused.
#[test]
fn narrowed_pin_aba_is_caught() {
    must_be_caught("an increment was lost", Bound::Preemptions(3), || {
        cas_counter(true)
    });
}

/// A reader reads the node while the updater unlinks it and then drops it instead of
/// retiring it.
fn drop_instead_of_retire() {
    let head = Arc::new(AtomicPtr::new(Node::build(1)));
    let reader = {
        let head = head.clone();
        spawn(move || {
            let guard = rcu::pin();
            // SAFETY: `head` holds RCU-managed nodes.
            if let Some(node) = unsafe { guard.deref(head.load(Acquire)) } {
                node.read();
            }
        })
    };
    let guard = rcu::pin();
    let old = head.swap(std::ptr::null_mut(), AcqRel);
    // SAFETY: deliberately wrong: a reader may still hold `old`.
    drop(unsafe { Box::from_raw(old) });
    drop(guard);
    reader.join().unwrap();
}

/// A `Box` freed behind RCU's back is reported as loom's race between the free and the
/// reader's dereference, not undefined behaviour. Exhaustive.
#[test]
fn free_bypassing_rcu_is_reported() {
    must_be_caught(
        "Causality violation",
        Bound::Exhaustive,
        drop_instead_of_retire,
    );
}
