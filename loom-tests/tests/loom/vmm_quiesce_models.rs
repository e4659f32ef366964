//! dma-vmm's quiescence with the grace period completing on the device's thread.
//!
//! A device does two accesses through the real `Viommu` (tiny page table, two levels of four
//! entries) while the guest UNMAPs the IOVA and then reuses the page. The page is a
//! non-atomic cell, so loom checks that every device read happens before the reuse, whatever
//! the order in which they ran. The device's second access pins and unpins after its first
//! has ended: those are collector steps, so the UNMAP's grace period may complete on the
//! device's thread, and the guest learns it only through `rcu::synchronize`'s done flag.
//!
//! Two models: the UNMAP with its leaf table kept (a neighbouring mapping), and with the
//! table freed too (`PageTable::prune`, which UNMAP runs on the gap it opens). They were one
//! model, the second, at 4 preemptions: the prune's freeze, claim and retirement made it cost
//! 119 s of CPU (2 s without them). The split gives each its own bound (see the tests).

use dma_sync::mutation::Weakening;
use dma_sync::points::{RCU_SYNCHRONIZE_DONE_ACQUIRE, RCU_SYNCHRONIZE_DONE_RELEASE};
use dma_sync::{Arc, UnsafeCell};
use dma_vmm::viommu::{Request, Status, MAP_F_READ};
use io_pgtable::Prot;
use loom_tests::fixtures::{unmap_page, viommu_with_one_page, PAGE};
use loom_tests::harness::{check, Bound};
use loom_tests::must_fail_test;

/// Guest page 1, as the device and the guest touch it.
struct Page(UnsafeCell<u64>);

// SAFETY: the device reads the page only through a live translation, inside a read section;
// the guest writes it only after the UNMAP that removed the translation has completed.
unsafe impl Sync for Page {}

const LIVE: u64 = 7;

/// What the guest's UNMAP does to the leaf table that held the page.
#[derive(Clone, Copy)]
enum LeafTable {
    /// Freed with the page (`PageTable::prune`): the UNMAP leaves the table empty and the gap
    /// it opens holds the table's whole span.
    Pruned,
    /// Kept: IOVA 0x2000 stays mapped in the same table, so the gap cannot hold it.
    Kept,
}

/// The device does `accesses` reads of IOVA 0x1000; the guest UNMAPs it and overwrites the
/// page it mapped.
fn unmap_vs_accesses(accesses: usize, table: LeafTable) {
    let (v, dev) = viommu_with_one_page();
    if let LeafTable::Kept = table {
        let neighbour = Request::Map {
            domain: 0,
            virt_start: 2 * PAGE,
            virt_end: 3 * PAGE - 1,
            phys_start: 2 * PAGE,
            flags: MAP_F_READ,
        };
        assert_eq!(v.handle(neighbour).status(), Status::Ok);
    }
    let page = Arc::new(Page(UnsafeCell::new(LIVE)));
    let device = {
        let page = page.clone();
        dma_sync::thread::spawn(move || {
            for _ in 0..accesses {
                let _ = dev.access(PAGE, 8, Prot::READ, |segs| {
                    assert_eq!(segs[0].paddr, PAGE, "translated to the mapped page");
                    // SAFETY: the translation is live inside this access's read section.
                    let v = page.0.with(|p| unsafe { *p });
                    assert_eq!(v, LIVE, "the device read a page after its UNMAP completed");
                });
            }
        })
    };
    assert_eq!(v.handle(unmap_page()).status(), Status::Ok);
    // SAFETY: the UNMAP has completed: no device access still uses the translation.
    page.0.with_mut(|p| unsafe { *p = 0 });
    device.join().unwrap();
}

fn two_accesses() {
    unmap_vs_accesses(2, LeafTable::Kept);
}

fn two_accesses_table_pruned() {
    unmap_vs_accesses(2, LeafTable::Pruned);
}

/// Two threads; the device does two accesses (each a pin, a two-level walk and a read), the
/// guest one UNMAP (leaf clear under the control lock, then a grace period) and one write; the
/// leaf table stays (a neighbour keeps it), so the grace period is the UNMAP's alone.
/// Bound 5 preemptions (10 s of CPU; 4 took 2.5 s): the device can be stopped inside either
/// access and between its accesses while the guest is stopped between the clear and its wait
/// and inside its wait loop, with one switch more than the model had when its UNMAP also freed
/// the table (below).
#[test]
fn unmap_waits_for_accesses_whose_grace_period_ends_on_the_device() {
    check(Bound::Preemptions(5), two_accesses);
}

/// The same with the leaf table freed by the UNMAP (frozen, claimed and retired before the
/// grace period), so the device's walks also read a table being freed, and its second access's
/// collector steps may free it. Bound 3 (13 s of CPU; 4, the bound of the single model this
/// was before the split, took 119 s): three switches stop the device inside its first
/// access, after a table read, while the guest's UNMAP freezes, claims and retires the table,
/// and once more inside the guest's wait while the device's second access ends the grace
/// period. The schedules that need more switches are the other two models': the same grace
/// period without the table, above, at 5, and the table freed under one access,
/// `vmm_models::unmap_waits_for_device_access`, at 4.
#[test]
fn pruned_table_waits_for_accesses_whose_grace_period_ends_on_the_device() {
    check(Bound::Preemptions(3), two_accesses_table_pruned);
}

must_fail_test! {
    /// The grace period ends on the device's thread; a Relaxed done flag leaves the guest's
    /// reuse unordered after the device's read.
    fn vmm_relaxed_done_store_races_device: RCU_SYNCHRONIZE_DONE_RELEASE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), two_accesses;
}

must_fail_test! {
    /// The guest's wait loop reads the done flag Relaxed.
    fn vmm_relaxed_done_load_races_device: RCU_SYNCHRONIZE_DONE_ACQUIRE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), two_accesses;
}

must_fail_test! {
    /// Without the device's read section the UNMAP does not wait for its read.
    fn vmm_unpinned_device_races_reuse: dma_vmm::points::DEVICE_PIN, Weakening::Relax,
        "Causality violation", Bound::Preemptions(2), two_accesses;
}
