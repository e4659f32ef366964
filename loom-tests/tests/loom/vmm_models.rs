//! Loom models of dma-vmm: UNMAP (alone and batched), DETACH and reset quiescence against one
//! device access, with a
//! must-fail twin for each mutation point of the crate (`vmm_quiesce_models` adds the grace
//! period completing on the device's thread).

use dma_sync::atomic::{AtomicU64, Ordering::Relaxed};
use dma_sync::mutation::Weakening;
use dma_sync::Arc;
use dma_vmm::viommu::{wire, Endpoint, Request, Status, Viommu, ViommuConfig};
use io_pgtable::{Config, Prot};
use loom_tests::harness::{outcomes, Bound};
use loom_tests::must_fail_test;
use std::collections::BTreeSet;

const PAGE: u64 = 0x1000;

/// Guest RAM of the model: the state of two pages, `LIVE` while mapped, `REUSED` once the
/// guest has taken a page back after its UNMAP completed.
struct Ram([AtomicU64; 2]);

const LIVE: u64 = 7;
const REUSED: u64 = 0;

impl Ram {
    fn new() -> Arc<Ram> {
        Arc::new(Ram([AtomicU64::new(REUSED), AtomicU64::new(LIVE)]))
    }
}

fn setup() -> (Arc<Viommu>, Endpoint) {
    loom_tests::fixtures::viommu_with_one_page()
}

/// A device thread translates IOVA 0x1000 and reads the guest page it reaches, in one
/// access; the guest UNMAPs the IOVA and, as soon as the reply arrives, reuses the page.
/// The device's read must happen before the reuse: the page state is relaxed, so the only
/// thing that keeps the device from reading `REUSED` is the happens-before edge from the end
/// of its read section to the return of the UNMAP (the grace period). The failure is then an
/// assertion of the device thread, naming what went wrong.
///
/// Bound: three preemptions for the must-pass model (two threads; the device one access, the
/// guest one request and its grace period, whose wait loop makes exhaustive exploration
/// unbounded): the device can be stopped between its pin and its walk and between its walk
/// and its read, the guest between clearing the leaf and its wait. The must-fail twins use
/// two.
fn unmap_vs_access() -> bool {
    let unmap = Request::Unmap {
        domain: 0,
        virt_start: PAGE,
        virt_end: 2 * PAGE - 1,
    };
    request_vs_access(unmap, "the device used a page after its UNMAP completed")
}

/// The same with DETACH: once it completes, the endpoint's old domain is unused.
///
/// Bound: as [`unmap_vs_access`].
fn detach_vs_access() -> bool {
    let detach = Request::Detach {
        domain: 0,
        endpoint: 0,
    };
    request_vs_access(detach, "the device used a page after DETACH completed")
}

/// The same with the config field `bypass` going from 1 to 0: once the driver's write
/// returns, no access of an endpoint attached to no domain still uses the identity
/// translation (here IOVA 0x1000 → page 1).
///
/// Bound: as [`unmap_vs_access`].
fn bypass_off_vs_access() -> bool {
    let bypass_off = |v: &Viommu| assert!(v.write_config(wire::CONFIG_BYPASS_OFFSET, &[0]));
    guest_vs_access(
        setup_in_bypass(),
        bypass_off,
        "the device used a page after bypass was turned off",
    )
}

/// The same with an ATTACH that takes an endpoint out of bypass mode into a domain that maps
/// nothing: once it completes, no access still uses the identity translation.
///
/// Bound: as [`unmap_vs_access`].
fn attach_from_bypass_vs_access() -> bool {
    let attach = Request::Attach {
        domain: 0,
        endpoint: 0,
        flags: 0,
    };
    let send = move |v: &Viommu| assert_eq!(v.handle(attach).status(), Status::Ok);
    guest_vs_access(
        setup_in_bypass(),
        send,
        "the device used a page by identity after its ATTACH completed",
    )
}

/// A vIOMMU whose config field `bypass` starts at 1, endpoint 0 attached to no domain: it
/// reaches IOVA 0x1000 → page 1 by identity.
fn setup_in_bypass() -> (Arc<Viommu>, Endpoint) {
    let cfg = ViommuConfig {
        pgtable: Config::tiny(2),
        input_range: (0, (1 << 16) - 1),
        initial_bypass: true,
        ..ViommuConfig::default()
    };
    let v = Arc::new(Viommu::new(cfg).unwrap());
    let dev = v.add_endpoint(0, vec![]).unwrap();
    (v, dev)
}

/// A device reads page 1 through the IOMMU while the guest sends `request`, which removes
/// that translation, and then reuses the page. Returns whether the access was served (it
/// faults if it came after the request); a read of the reused page fails with `violation`.
fn request_vs_access(request: Request, violation: &'static str) -> bool {
    let send = move |v: &Viommu| assert_eq!(v.handle(request).status(), Status::Ok);
    guest_vs_access(setup(), send, violation)
}

/// The device of `(v, dev)` reads page 1 while the guest runs `remove` (which takes the
/// translation away) and then reuses the page.
fn guest_vs_access(
    (v, dev): (Arc<Viommu>, Endpoint),
    remove: impl FnOnce(&Viommu),
    violation: &'static str,
) -> bool {
    let ram = Ram::new();
    let device = {
        let ram = ram.clone();
        dma_sync::thread::spawn(move || {
            dev.access(PAGE, 8, Prot::READ, |segs| {
                let page = (segs[0].paddr / PAGE) as usize;
                assert_eq!(ram.0[page].load(Relaxed), LIVE, "{violation}");
            })
            .is_ok()
        })
    };
    remove(&v);
    ram.0[1].store(REUSED, Relaxed);
    device.join().unwrap()
}

/// Not vacuous: some executions serve the access, others fault it.
#[test]
fn unmap_waits_for_device_access() {
    // Bound 4 (21 s of CPU since UNMAP also frees the leaf table it empties, a quarter
    // second before; the device's walk then also races that table's freeing): one more
    // switch than the other vmm models, so the device can also be stopped between its walk
    // and its read while the guest's wait runs.
    assert_eq!(
        outcomes(Bound::Preemptions(4), unmap_vs_access),
        BTreeSet::from([false, true])
    );
}

/// Not vacuous: some executions serve the access, others fault it.
#[test]
fn detach_waits_for_device_access() {
    assert_eq!(
        outcomes(Bound::Preemptions(3), detach_vs_access),
        BTreeSet::from([false, true])
    );
}

/// Bound as [`unmap_vs_access`]; not vacuous: some executions serve the access, others fault
/// it.
#[test]
fn attach_from_bypass_waits_for_device_access() {
    assert_eq!(
        outcomes(Bound::Preemptions(3), attach_from_bypass_vs_access),
        BTreeSet::from([false, true])
    );
}

/// Bound as [`unmap_vs_access`]; not vacuous: some executions serve the access, others fault
/// it.
#[test]
fn bypass_off_waits_for_device_access() {
    assert_eq!(
        outcomes(Bound::Preemptions(3), bypass_off_vs_access),
        BTreeSet::from([false, true])
    );
}

/// The UNMAP of [`unmap_vs_access`] sent in a batch, followed by a request that removes no
/// translation (a PROBE): the batch's one grace period must cover every request of it, not
/// only its last. Bound: as [`unmap_vs_access`].
fn batched_unmap_vs_access() -> bool {
    let batch = |v: &Viommu| {
        let replies = v.handle_batch([
            Request::Unmap {
                domain: 0,
                virt_start: PAGE,
                virt_end: 2 * PAGE - 1,
            },
            Request::Probe { endpoint: 0 },
        ]);
        assert_eq!(replies[0].status(), Status::Ok);
    };
    guest_vs_access(
        setup(),
        batch,
        "the device used a page after its batched UNMAP completed",
    )
}

/// A device reset (every endpoint detached, every domain destroyed) against the access: once
/// it returns, no access still uses a translation it removed. Bound: as [`unmap_vs_access`].
fn reset_vs_access() -> bool {
    guest_vs_access(
        setup(),
        |v| v.reset(),
        "the device used a page after a reset completed",
    )
}

/// Not vacuous: some executions serve the access, others fault it.
#[test]
fn batched_unmap_waits_for_device_access() {
    assert_eq!(
        outcomes(Bound::Preemptions(3), batched_unmap_vs_access),
        BTreeSet::from([false, true])
    );
}

/// Not vacuous: some executions serve the access, others fault it.
#[test]
fn reset_waits_for_device_access() {
    assert_eq!(
        outcomes(Bound::Preemptions(3), reset_vs_access),
        BTreeSet::from([false, true])
    );
}

must_fail_test! {
    /// Without the device's read section around translate and copy, the UNMAP's grace period
    /// covers only the page-table walk: the copy races with the guest's reuse of the page.
    fn device_unpinned: dma_vmm::points::DEVICE_PIN, Weakening::Relax,
        "after its UNMAP completed", Bound::Preemptions(2), || { unmap_vs_access(); };
}

must_fail_test! {
    /// Without the grace period, UNMAP replies while the device still copies.
    fn unmap_without_grace: dma_vmm::points::UNMAP_GRACE, Weakening::Relax,
        "after its UNMAP completed", Bound::Preemptions(2), || { unmap_vs_access(); };
}

must_fail_test! {
    /// Without the grace period, the driver's write of `bypass` = 0 returns while a device
    /// still copies through the identity translation.
    fn bypass_off_without_grace: dma_vmm::points::UNMAP_GRACE, Weakening::Relax,
        "after bypass was turned off", Bound::Preemptions(2), || { bypass_off_vs_access(); };
}
