//! The production RCU under loom: the epoch collector of `dma-sync/src/rcu/epoch.rs` itself,
//! with both of its asymmetric fences modelled as `fence(SeqCst)` (`rcu/fence.rs` says why
//! that is the model, and its limit).
//!
//! Built with `--cfg loom --cfg production_rcu`, `dma_sync::rcu` is the production backend on
//! loom's atomics, locks and thread-locals, with the same poisoning and parking of freed
//! objects as the loom shim and the same check of frees that bypass RCU (this binary installs
//! `CheckedAlloc`):
//!
//! `RUSTFLAGS="--cfg loom --cfg production_rcu" CARGO_TARGET_DIR=target/loom-rcu cargo test --release -p loom-tests --test production_rcu`
//!
//! The default loom suite runs every user on the loom shim, which is at least as strict as this
//! backend (`rcu/shim.rs`); this binary checks the backend's own protocol, and runs two real
//! users (io-pgtable's level free, dma-vmm's UNMAP) on it.
//!
//! A bag is freed two epoch advances after it is sealed, so an updater flushes twice after its
//! retirement (the first flush seals the bag): with fewer, no free can overlap a reader and a
//! broken reader would pass.
//!
//! # Models, twins and bounds
//!
//! | Model | Bound | What it covers | Twins (each must fail) |
//! |---|---|---|---|
//! | `reader_vs_retire`: one reader section against pin, swap, retire, flush, unpin, flush | 4 preemptions (twins 3) | the reader stopped between pin and load and between load and read, the updater between unlink and seal and inside a collection; exhaustive is out of reach (every flush takes two locks) | `rcu.pin`, `rcu.pin.fence`, `rcu.unpin.release`, `rcu.sync.acquire`, `rcu.advance.check`, `rcu.grace_period` |
//! | the same, the reader's section nesting a second guard between its load and its read | 4 preemptions | an inner pin does not re-date the section, an inner unpin does not end it | |
//! | two readers | 3 preemptions | both readers stopped in their sections while the updater is stopped between unlink and seal | |
//! | `reader_vs_two_collectors`: the updater and a second thread that only flushes | 4 preemptions (`rcu.seal.fence` twin 3) | an advance by the other thread between the reader's pin and the updater's seal; the updater freeing after the other thread's advance, which read the reader's unpin, without taking the bag lock after it | `rcu.seal.fence`, `rcu.advance.release`, `rcu.expiry.acquire` |
//! | `reader_vs_synchronizer`: the updater and a third thread in `rcu::synchronize` | 3 preemptions | the waiter's unpinned collection (no pin fence of its own before it) reading the reader's record after the updater's first advance | `rcu.sync.fence` |
//! | `stale_collector_never_moves_the_epoch_back`: a waiter in `rcu::synchronize` against a thread that advances twice, then retires a node it reads in the same section | 3 preemptions | the waiter's unpinned poll stopped between its epoch load and its advance while the epoch moves on two steps and a bag is sealed at the newer epoch | |
//! | `rcu::synchronize` against a reader section | 4 preemptions | the reader stopped between pin and load and between load and read while the waiter unlinks and runs its grace period; the wait loop spins, so exhaustive is unbounded | |
//! | `two_sections_vs_retire`: a reader with two sections (the first reads) against the updater | 3 preemptions | a collection whose heavy fence precedes the second pin's fence and whose scan reads that pin's store, not the unpin before it | `rcu.pin.release` |
//! | io-pgtable level free vs walker; dma-vmm UNMAP vs device access | 3 preemptions (twins 2) | the real users, one operation each | `io_pgtable` reader pin, `dma_vmm` device pin |
//!
//! The whole binary: about 115 s of wall time on the shared 2-core machine (58 s user, 52 s
//! system CPU), up to 235 s under load (interleaved with the binary before
//! `reader_vs_two_collectors` went to 4 preemptions with two new twins: 138–235 s against
//! 36–56 s, user CPU 65–93 s against 17–24 s); that model and its twins are most of it.
#![cfg(all(loom, production_rcu))]

use dma_sync::atomic::{AtomicPtr, Ordering::*};
use dma_sync::mutation::Weakening;
use dma_sync::points::epoch::{
    RCU_ADVANCE_CHECK, RCU_ADVANCE_RELEASE, RCU_EXPIRY_ACQUIRE, RCU_PIN_RELEASE, RCU_SEAL_FENCE,
};
use dma_sync::points::{
    RCU_GRACE_PERIOD, RCU_PIN, RCU_PIN_FENCE, RCU_SYNC_ACQUIRE, RCU_SYNC_FENCE, RCU_UNPIN_RELEASE,
};
use dma_sync::rcu::{self, Retire};
use dma_sync::thread::spawn;
use dma_sync::{Arc, UnsafeCell};
use dma_vmm::viommu::Status;
use io_pgtable::{Config, PageTable, Prot};
use loom_tests::fixtures::{unmap_page, viommu_with_one_page, PAGE};
use loom_tests::harness::{check, must_fail, Bound};
use loom_tests::must_fail_test;
use loom_tests::rcu_node::Node;

/// Reports a free that bypasses `dma_sync::rcu` while a read section holds the object.
#[global_allocator]
static ALLOC: dma_sync::rcu::CheckedAlloc = dma_sync::rcu::CheckedAlloc;

/// A reader section: pin, load, (if `nested`, pin and drop an inner guard,) read. The inner
/// guard comes between the load and the read: neither its pin nor its drop may change what
/// protects the node already loaded.
fn read_section(head: &AtomicPtr<Node>, nested: bool) {
    let guard = rcu::pin();
    // SAFETY: `head` holds boxes retired only after unlinking.
    let node = unsafe { guard.deref(head.load(Acquire)) }.expect("head is never null");
    if nested {
        drop(rcu::pin());
    }
    let v = node.read();
    assert!(v == 1 || v == 2, "unexpected value {v}");
}

/// The updater: replace the node and retire the old one, flushing inside the same section (the
/// seal's fence is then the only fence between the unlink and the epoch that dates the bag),
/// then flush once more so the bag can expire.
fn replace_and_flush(head: &AtomicPtr<Node>) {
    let guard = rcu::pin();
    let old = head.swap(Node::build(2), AcqRel);
    // SAFETY: `old` is unlinked and retired once.
    unsafe { guard.defer_retire(old) };
    guard.flush();
    drop(guard);
    rcu::pin().flush();
}

/// Free the last node after every thread has joined.
fn teardown(head: &AtomicPtr<Node>) {
    let last = head.swap(std::ptr::null_mut(), AcqRel);
    // SAFETY: every thread has joined; `last` is the unique owner of the live node.
    drop(unsafe { Box::from_raw(last) });
}

/// `readers` reader sections against one replace-retire-flush-flush.
fn readers_vs_retire(readers: usize, nested: bool) {
    let head = Arc::new(AtomicPtr::new(Node::build(1)));
    let handles: Vec<_> = (0..readers)
        .map(|_| {
            let head = head.clone();
            spawn(move || read_section(&head, nested))
        })
        .collect();
    replace_and_flush(&head);
    for h in handles {
        h.join().unwrap();
    }
    teardown(&head);
}

fn reader_vs_retire() {
    readers_vs_retire(1, false);
}

/// Bound 4: the reader stopped between its pin and its load and between its load and its read,
/// while the updater is stopped between its unlink and its seal and inside a collection
/// (between its scan and its advance). Exhaustive is out of reach: every flush takes two locks,
/// and bound 5 already costs 13 s, bound 6 46 s.
#[test]
fn reader_never_sees_freed_node() {
    check(Bound::Preemptions(4), reader_vs_retire);
}

/// As above, with a nested guard pinned and dropped between the load and the read. Bound 4
/// reaches both ways an inner guard can break the section: the reader stopped after its load
/// while the updater's first collection advances past the outer pin's epoch, then at its inner
/// pin (a pin that re-stored the newer epoch would let the second collection advance again and
/// free) or its inner drop (one that unpinned would end the section), then before its read.
#[test]
fn nested_guard_keeps_reader_protected() {
    check(Bound::Preemptions(4), || readers_vs_retire(1, true));
}

/// Bound 3: both readers stopped inside their sections while the updater is stopped between its
/// unlink and its seal.
#[test]
fn two_readers_never_see_freed_node() {
    check(Bound::Preemptions(3), || readers_vs_retire(2, false));
}

must_fail_test! {
    /// A reader that does not pin is not waited for.
    fn unpinned_reader_races_free: RCU_PIN, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), reader_vs_retire;
}

must_fail_test! {
    /// Without the reader's light fence (store buffering): the reader loads the old pointer
    /// while the updater's scan still reads it unpinned.
    fn reader_without_light_fence_races_free: RCU_PIN_FENCE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), reader_vs_retire;
}

must_fail_test! {
    /// A Relaxed unpin does not order the reader's reads before the free.
    fn relaxed_unpin_races_free: RCU_UNPIN_RELEASE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), reader_vs_retire;
}

must_fail_test! {
    /// A scan that reads the unpin without the acquire fence does not order the reads first.
    fn scan_without_acquire_races_free: RCU_SYNC_ACQUIRE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), reader_vs_retire;
}

must_fail_test! {
    /// An epoch that advances past a reader still pinned at an older one frees under it.
    fn advance_past_lagging_reader_races_free: RCU_ADVANCE_CHECK, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), reader_vs_retire;
}

must_fail_test! {
    /// Without a grace period the retired node is freed at once.
    fn no_grace_period_races_free: RCU_GRACE_PERIOD, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), reader_vs_retire;
}

/// A reader with two sections, the first reading the node, against the updater: a collection
/// may read the second section's pin instead of the unpin that ended the first.
fn two_sections_vs_retire() {
    let head = Arc::new(AtomicPtr::new(Node::build(1)));
    let reader = {
        let head = head.clone();
        spawn(move || {
            read_section(&head, false);
            drop(rcu::pin());
        })
    };
    replace_and_flush(&head);
    reader.join().unwrap();
    teardown(&head);
}

/// Bound 3: the reader stopped inside its first section, and between its second pin's store
/// and its fence while the updater's second collection runs its heavy fence before that
/// fence and its scan after that store.
#[test]
fn collection_reading_a_later_pin_waits_for_the_earlier_section() {
    check(Bound::Preemptions(3), two_sections_vs_retire);
}

must_fail_test! {
    /// A Relaxed pin store: the collection reads the reader's second pin, which does not
    /// continue the release sequence of the unpin that ended the first section, and frees the
    /// node unordered after the first section's read.
    fn relaxed_pin_store_races_free: RCU_PIN_RELEASE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), two_sections_vs_retire;
}

/// One reader section, the updater, and a third thread that only pins and flushes: epoch
/// advances and collections by a thread that did not retire.
fn reader_vs_two_collectors() {
    let head = Arc::new(AtomicPtr::new(Node::build(1)));
    let reader = {
        let head = head.clone();
        spawn(move || read_section(&head, false))
    };
    let collector = spawn(|| rcu::pin().flush());
    replace_and_flush(&head);
    reader.join().unwrap();
    collector.join().unwrap();
    teardown(&head);
}

/// Bound 4: an advance by the flushing thread between the reader's pin and the updater's seal,
/// the reader stopped between its load and its read, and the flushing thread's collection
/// placed inside the updater's grace period; with the fourth, that collection's scan reads the
/// reader's unpin and its advance is the one the updater's second collection frees after,
/// with the updater taking the bag lock before the flushing thread does (bound 3 misses it).
#[test]
fn other_collectors_never_free_under_reader() {
    check(Bound::Preemptions(4), reader_vs_two_collectors);
}

must_fail_test! {
    /// A Relaxed advance: the updater frees after reading the flushing thread's advance, whose
    /// scan read the reader's unpin, but nothing orders the reader's read before the free.
    fn relaxed_advance_races_free: RCU_ADVANCE_RELEASE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(4), reader_vs_two_collectors;
}

must_fail_test! {
    /// A Relaxed load of the expiry epoch: the same, from the freeing side.
    fn relaxed_expiry_epoch_races_free: RCU_EXPIRY_ACQUIRE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(4), reader_vs_two_collectors;
}

must_fail_test! {
    /// Without the seal's heavy fence the bag is dated with an epoch read before the unlink is
    /// ordered: a reader pinned at the next epoch (advanced by the other thread) still loads the
    /// old node, and the advance past that epoch frees it.
    fn seal_without_heavy_fence_races_free: RCU_SEAL_FENCE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), reader_vs_two_collectors;
}

/// One reader section, the updater, and a third thread in `rcu::synchronize`, whose wait
/// polls collect without a pin of their own (a pin's fence, `fence(SeqCst)` under loom, would
/// otherwise stand in for the collection's heavy fence).
fn reader_vs_synchronizer() {
    let head = Arc::new(AtomicPtr::new(Node::build(1)));
    let reader = {
        let head = head.clone();
        spawn(move || read_section(&head, false))
    };
    let waiter = spawn(rcu::synchronize);
    replace_and_flush(&head);
    reader.join().unwrap();
    waiter.join().unwrap();
    teardown(&head);
}

/// Bound 3: the waiter's token retired before the reader pins, the reader stopped between its
/// load and its read, and the waiter's unpinned collection placed after the updater's first
/// advance.
#[test]
fn synchronizer_never_frees_under_reader() {
    check(Bound::Preemptions(3), reader_vs_synchronizer);
}

must_fail_test! {
    /// Without the heavy fence before its scan, the waiter's collection reads the reader's
    /// record stale and advances past it.
    fn scan_without_heavy_fence_races_free: RCU_SYNC_FENCE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), reader_vs_synchronizer;
}

/// A waiter in `rcu::synchronize`, whose unpinned polls may stall between their epoch load and
/// their advance, against a thread that advances the epoch twice, then, inside one section,
/// retires a node it still holds, flushes twice and reads it.
fn stale_collector_vs_retiring_reader() {
    let head = Arc::new(AtomicPtr::new(Node::build(1)));
    let waiter = spawn(rcu::synchronize);
    for _ in 0..2 {
        rcu::pin().flush();
    }
    let guard = rcu::pin();
    // SAFETY: `head` holds boxes retired only after unlinking.
    let node = unsafe { guard.deref(head.load(Acquire)) }.expect("head is never null");
    let old = head.swap(Node::build(2), AcqRel);
    // SAFETY: `old` is unlinked and retired once; `node` is read only inside this section.
    unsafe { guard.defer_retire(old) };
    guard.flush();
    guard.flush();
    assert_eq!(node.read(), 1);
    drop(guard);
    waiter.join().unwrap();
    teardown(&head);
}

/// Bound 3: the waiter stopped in a poll after loading the epoch, the other thread's two
/// advances and its seal at the epoch after them run meanwhile, and the waiter's advance lands
/// between that thread's two flushes. An advance that is not a compare-and-swap moves the epoch
/// back below the bag's, which then looks expired.
#[test]
fn stale_collector_never_moves_the_epoch_back() {
    check(Bound::Preemptions(3), stale_collector_vs_retiring_reader);
}

/// `rcu::synchronize` against a reader section: the waiter unlinks, waits, then frees by hand.
/// Bound 4: the reader stopped between pin and load and between load and read while the waiter
/// unlinks and runs its grace period, and once more inside the waiter's collections; the wait
/// loop spins, so exhaustive is unbounded.
#[test]
fn synchronize_waits_for_reader() {
    check(Bound::Preemptions(4), || {
        let head = Arc::new(AtomicPtr::new(Node::build(1)));
        let reader = {
            let head = head.clone();
            spawn(move || read_section(&head, false))
        };
        let old = head.swap(Node::build(2), AcqRel);
        rcu::synchronize();
        // SAFETY: unlinked, and every section that could hold it has ended.
        let mut old = unsafe { Box::from_raw(old) };
        old.poison();
        reader.join().unwrap();
        teardown(&head);
    });
}

/// Every point only this backend uses has a must-fail twin in this binary.
#[test]
fn every_production_point_is_killed() {
    let killed: Vec<&str> = loom_tests::kills().map(|k| k.point.name()).collect();
    for p in dma_sync::points::epoch::ALL {
        assert!(killed.contains(&p.name()), "{} has no twin", p.name());
    }
}

/// The tiny two-level geometry: a top entry spans 16 KiB.
const BLOCK: u64 = 0x4000;

/// A translator walks to page `BLOCK + PAGE` while an unmapper removes the whole level-3
/// table under top entry 1 (unlink, retire) and flushes twice.
fn level_free_vs_walker() {
    let pt = Arc::new(PageTable::new(Config::tiny(2)).expect("tiny config"));
    let page = BLOCK + PAGE;
    pt.map(page, 0x10_0000, PAGE, Prot::READ).unwrap();
    let unmapper = {
        let pt = pt.clone();
        spawn(move || {
            assert_eq!(pt.unmap(BLOCK, BLOCK), Ok(BLOCK));
            for _ in 0..2 {
                rcu::pin().flush();
            }
        })
    };
    if let Some(t) = pt.iova_to_phys(page) {
        assert_eq!(t.paddr(), 0x10_0000, "a translation that was never mapped");
    }
    unmapper.join().unwrap();
    assert!(pt.iova_to_phys(page).is_none());
    assert_eq!(pt.stats().retired, 1);
}

/// Bound 3 preemptions: the translator stopped between loading the table descriptor and
/// reading the table, the unmapper run through unlink, retirement and both flushes inside
/// that window, and one more switch anywhere in an epoch advance.
#[test]
fn level_free_waits_for_walker() {
    check(Bound::Preemptions(3), level_free_vs_walker);
}

/// Without the walker's pin the table is freed under it.
#[test]
fn unpinned_walker_reads_freed_level() {
    must_fail(
        &io_pgtable::points::READER_PIN,
        Weakening::Relax,
        "Causality violation",
        Bound::Preemptions(2),
        level_free_vs_walker,
    );
}

/// Guest page 1, read by the device and overwritten by the guest after its UNMAP.
struct Page(UnsafeCell<u64>);

// SAFETY: read through a live translation inside a read section, written only after the
// UNMAP that removed the translation completed.
unsafe impl Sync for Page {}

/// A device reads IOVA 0x1000 through the real vIOMMU while the guest UNMAPs it (a grace
/// period: retire a token, pin and flush until it is freed) and then overwrites the page.
fn unmap_vs_access() {
    let (v, dev) = viommu_with_one_page();
    let page = Arc::new(Page(UnsafeCell::new(7)));
    let device = {
        let page = page.clone();
        spawn(move || {
            let _ = dev.access(PAGE, 8, Prot::READ, |_| {
                // SAFETY: the translation is live inside this access's read section.
                assert_eq!(page.0.with(|p| unsafe { *p }), 7);
            });
        })
    };
    assert_eq!(v.handle(unmap_page()).status(), Status::Ok);
    // SAFETY: the UNMAP has completed: no device access still uses the translation.
    page.0.with_mut(|p| unsafe { *p = 0 });
    device.join().unwrap();
}

/// Bound 3 preemptions: the device stopped between its pin and its walk and between its walk
/// and its read while the guest clears the leaf and waits, plus one anywhere in a collection.
#[test]
fn unmap_waits_for_device_access() {
    check(Bound::Preemptions(3), unmap_vs_access);
}

/// Without the device's read section, the grace period does not wait for its read.
#[test]
fn unpinned_device_races_reuse() {
    must_fail(
        &dma_vmm::points::DEVICE_PIN,
        Weakening::Relax,
        "Causality violation",
        Bound::Preemptions(2),
        unmap_vs_access,
    );
}
