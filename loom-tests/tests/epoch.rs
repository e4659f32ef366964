//! The RCU users on crossbeam-epoch itself: a second, independent model of the protocol.
//!
//! Built with `--cfg loom --cfg crossbeam_loom`, `dma_sync::rcu` is crossbeam-epoch in
//! crossbeam's own loom mode (its epochs, bags, global queue and `collect`, all loom
//! atomics), with the same poisoning and parking of freed objects as the loom shim. The real
//! io-pgtable and dma-vmm run on it unchanged:
//!
//! `RUSTFLAGS="--cfg loom --cfg crossbeam_loom" CARGO_TARGET_DIR=target/loom-epoch cargo test --release -p loom-tests --test epoch`
//!
//! crossbeam frees a bag only after two epoch advances, so the updater flushes twice after
//! its unmap: with fewer, no free can overlap a reader and a broken reader would pass.
//! crossbeam's internals add hundreds of steps per execution, so the models are small (two
//! threads, one operation each) and bounded at 3 preemptions (twins at 2), and each has a
//! must-fail twin showing the free does reach the reader in this setting.
#![cfg(all(loom, crossbeam_loom))]

use dma_sync::mutation::Weakening;
use dma_sync::thread::spawn;
use dma_sync::{Arc, UnsafeCell};
use dma_vmm::viommu::Status;
use io_pgtable::{Config, PageTable, Prot};
use loom_tests::fixtures::{unmap_page, viommu_with_one_page, PAGE};
use loom_tests::harness::{check, must_fail, Bound};
/// The tiny two-level geometry: a top entry spans 16 KiB.
const BLOCK: u64 = 0x4000;

/// A translator walks to page `BLOCK + PAGE` while an unmapper removes the whole level-3
/// table under top entry 1 (unlink, retire through crossbeam) and flushes twice.
fn level_free_vs_walker() {
    let pt = Arc::new(PageTable::new(Config::tiny(2)).expect("tiny config"));
    let page = BLOCK + PAGE;
    pt.map(page, 0x10_0000, PAGE, Prot::READ).unwrap();
    let unmapper = {
        let pt = pt.clone();
        spawn(move || {
            assert_eq!(pt.unmap(BLOCK, BLOCK), Ok(BLOCK));
            for _ in 0..2 {
                dma_sync::rcu::pin().flush();
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
/// that window, and one more switch anywhere in crossbeam's epoch advance.
#[test]
fn crossbeam_level_free_waits_for_walker() {
    check(Bound::Preemptions(3), level_free_vs_walker);
}

/// Without the walker's pin crossbeam frees the table under it.
#[test]
fn crossbeam_unpinned_walker_reads_freed_level() {
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
/// period through crossbeam: retire a token, pin and flush until it is freed) and then
/// overwrites the page.
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
/// and its read while the guest clears the leaf and waits, plus one anywhere in crossbeam's
/// collection.
#[test]
fn crossbeam_unmap_waits_for_device_access() {
    check(Bound::Preemptions(3), unmap_vs_access);
}

/// Without the device's read section, crossbeam's grace period does not wait for its read.
#[test]
fn crossbeam_unpinned_device_races_reuse() {
    must_fail(
        &dma_vmm::points::DEVICE_PIN,
        Weakening::Relax,
        "Causality violation",
        Bound::Preemptions(2),
        unmap_vs_access,
    );
}
