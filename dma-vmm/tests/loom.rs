//! Loom models of dma-vmm: UNMAP quiescence against a device access, with a must-fail twin
//! for every mutation point of the crate and a coverage check over `dma_vmm::points::ALL`.
//!
//! Written as a loom-suite module: it runs here as its own test binary
//! (`RUSTFLAGS="--cfg loom" cargo test --release -p dma-vmm --test loom`) and can move
//! verbatim into the shared suite.
#![cfg(loom)]

use dma_sync::mutation::Weakening;
use dma_sync::{Arc, UnsafeCell};
use dma_vmm::viommu::{Request, Status, Viommu, ViommuConfig, MAP_F_READ, MAP_F_WRITE};
use io_pgtable::{Config, Prot};
use loom_tests::harness::{check, Bound};
use loom_tests::must_fail_test;

const PAGE: u64 = 0x1000;

/// Guest RAM of the model: two pages, each one tracked cell.
struct Ram([UnsafeCell<u64>; 2]);

/// A vIOMMU on the tiny page-table geometry (two levels of four entries), one endpoint
/// attached to domain 0, and IOVA 0x1000 mapped to guest page 1.
fn setup() -> (Arc<Viommu>, dma_vmm::viommu::DeviceEndpoint) {
    let cfg = ViommuConfig { pgtable: Config::tiny(2), input_range: (0, (1 << 16) - 1), ..ViommuConfig::default() };
    let v = Arc::new(Viommu::new(cfg).unwrap());
    let dev = v.add_endpoint(0, vec![]).unwrap();
    assert_eq!(v.handle(Request::Attach { domain: 0, endpoint: 0, flags: 0 }).status(), Status::Ok);
    let map = Request::Map { domain: 0, virt_start: PAGE, virt_end: 2 * PAGE - 1, phys_start: PAGE, flags: MAP_F_READ | MAP_F_WRITE };
    assert_eq!(v.handle(map).status(), Status::Ok);
    (v, dev)
}

/// A device thread translates IOVA 0x1000 and reads the guest page it reaches, in one
/// access; the guest UNMAPs the IOVA and, as soon as the reply arrives, reuses the page
/// (a tracked write). The read must happen before the reuse: loom reports a causality
/// violation if the two can race.
///
/// Bound: two preemptions. The failure needs one (the device is preempted between its
/// translation and its read while the guest unmaps and reuses); the second covers a preemption
/// inside the grace-period wait. Exhaustive exploration of the tiny page table plus the RCU
/// shim is far beyond the time budget.
fn unmap_vs_access() {
    let (v, dev) = setup();
    let ram = Arc::new(Ram([UnsafeCell::new(0), UnsafeCell::new(7)]));
    let device = {
        let ram = ram.clone();
        dma_sync::thread::spawn(move || {
            // Either the access faults (it came after the UNMAP) or it reads the mapped page.
            let _ = dev.access(PAGE, 8, Prot::READ, |segs| {
                let page = (segs[0].paddr / PAGE) as usize;
                // SAFETY: a shared read; loom checks it against the guest's reuse.
                let value = ram.0[page].with(|p| unsafe { *p });
                assert_eq!(value, 7, "the device read a reused page");
            });
        })
    };
    let unmap = Request::Unmap { domain: 0, virt_start: PAGE, virt_end: 2 * PAGE - 1 };
    assert_eq!(v.handle(unmap).status(), Status::Ok);
    // SAFETY: exclusive by the UNMAP's quiescence, which is what loom checks.
    ram.0[1].with_mut(|p| unsafe { *p = 0 });
    device.join().unwrap();
}

/// The same with DETACH: once it completes, the endpoint's old domain is unused.
///
/// Bound: two preemptions, as [`unmap_vs_access`].
fn detach_vs_access() {
    let (v, dev) = setup();
    let ram = Arc::new(Ram([UnsafeCell::new(0), UnsafeCell::new(7)]));
    let device = {
        let ram = ram.clone();
        dma_sync::thread::spawn(move || {
            let _ = dev.access(PAGE, 8, Prot::READ, |segs| {
                let page = (segs[0].paddr / PAGE) as usize;
                // SAFETY: a shared read; loom checks it against the guest's reuse.
                ram.0[page].with(|p| unsafe { *p })
            });
        })
    };
    assert_eq!(v.handle(Request::Detach { domain: 0, endpoint: 0 }).status(), Status::Ok);
    // SAFETY: exclusive by the DETACH's quiescence, which is what loom checks.
    ram.0[1].with_mut(|p| unsafe { *p = 0 });
    device.join().unwrap();
}

#[test]
fn unmap_waits_for_device_access() {
    check(Bound::Preemptions(2), unmap_vs_access);
}

#[test]
fn detach_waits_for_device_access() {
    check(Bound::Preemptions(2), detach_vs_access);
}

must_fail_test! {
    /// Without the device's read section around translate and copy, the UNMAP's grace period
    /// covers only the page-table walk: the copy races with the guest's reuse of the page.
    fn device_unpinned: dma_vmm::points::DEVICE_PIN, Weakening::Relax,
        "Causality violation", Bound::Preemptions(2), unmap_vs_access;
}

must_fail_test! {
    /// Without the grace period, UNMAP replies while the device still copies.
    fn unmap_without_grace: dma_vmm::points::UNMAP_GRACE, Weakening::Relax,
        "Causality violation", Bound::Preemptions(2), unmap_vs_access;
}

#[test]
fn every_point_is_killed_or_documented() {
    let killed: Vec<&str> = loom_tests::kills().map(|k| k.point.name()).collect();
    let missing: Vec<&str> = dma_vmm::points::ALL
        .iter()
        .filter(|p| !killed.contains(&p.name()) && p.unobservable_reason().is_none())
        .map(|p| p.name())
        .collect();
    assert!(missing.is_empty(), "mutation points without a must-fail twin: {missing:?}");
}
