//! dma-iommu: the flush queue and the strictness switch, on the real code.
//!
//! Every model drives `dma_iommu::Strictness` (the real unmap path, the real strict-to-lazy
//! switch, the real `FlushQueue`), or a bare `FlushQueue` through its public `enqueue`
//! (`bare_queue_vs_timer`), over a tiny emulated IOMMU implementing `InvalidationOps`: one leaf per IOVA (an atomic), an IOTLB (a lock-protected cache of
//! translations) and one page per IOVA (a loom cell). The device is a model thread: a DMA
//! locks the IOTLB, translates through the cached entry or walks the leaf (acquire load) and
//! caches it, and reads the page while the translation is in use. Invalidation clears the
//! cache under the same lock. `reclaim` — freeing the IOVA, after which it may map other
//! memory — poisons the page with a tracked write, so a device access through a stale
//! translation that is not ordered before the free is a loom "Causality violation". That is
//! the invariant: no IOVA is freed before an invalidation that started after its leaves were
//! cleared. The caller's IOMMU handle is a cell too, "closed" after teardown, so any
//! invalidation or free that races with or follows teardown is reported the same way.
//!
//! Bounds: the three-thread models pass with `Preemptions(3)` (a few seconds each) and their
//! twins use `Preemptions(2)`: every bug below is found with at most two preemptions (the
//! store-buffering reorderings need one switch in each of two threads; the stale-mode re-read
//! needs the switch between the unmap's two reads; the stranded entry needs the enqueue between
//! the timer's drain and its clear). Two-thread models are exhaustive. Each three-thread model
//! also returns an outcome (synced or queued; freed by the timer or not; which CPU's flush freed
//! the entry) and its test asserts that every outcome was reached, so a pass is not vacuous.
//! `bounced_unmap_vs_device` (an untrusted device's bounced mapping against a remap of its
//! bounce slots, on the real stack and a real bounce pool) passes with `Preemptions(4)`, 1.4 s
//! of CPU.

use dma_iommu::points::*;
use dma_iommu::{
    Device, DeviceConfig, Direction, DmaError, Domain, DomainConfig, FlushQueue, FqConfig, Gather,
    InvalidationOps, Strictness, Unmapped,
};
use dma_sync::atomic::{AtomicU64, Ordering};
use dma_sync::mutation::Weakening;
use dma_sync::thread::{spawn, JoinHandle};
use dma_sync::{cpu, Arc, Mutex, UnsafeCell};
use loom_tests::harness::{check, outcomes, Bound};
use loom_tests::must_fail_test;
use swiotlb_core::{MapAttrs, OrigMemory, RegionMemory, Swiotlb};

const POISON: u64 = 0xdead;

/// The emulated IOMMU of a model: `n` IOVAs, each with a leaf, an IOTLB slot and a page.
struct Iommu {
    leaves: Vec<AtomicU64>,
    iotlb: Mutex<Vec<bool>>,
    pages: Vec<UnsafeCell<u64>>,
    /// The caller's IOMMU handle: closed (written) by the owner after teardown.
    open: UnsafeCell<bool>,
    /// How often each IOVA was freed (std: a plain oracle, invisible to loom's scheduler).
    freed: Vec<std::sync::atomic::AtomicUsize>,
}

// SAFETY: the cells are only reached through loom's tracked `with`/`with_mut`, which report
// every unordered access instead of performing it racily.
unsafe impl Sync for Iommu {}

impl Iommu {
    /// `n` IOVAs, all mapped and with their translation cached by the device.
    fn new(n: usize) -> Self {
        Self {
            leaves: (0..n).map(|_| AtomicU64::new(1)).collect(),
            iotlb: Mutex::new(vec![true; n]),
            pages: (0..n).map(|i| UnsafeCell::new(i as u64)).collect(),
            open: UnsafeCell::new(true),
            freed: (0..n)
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
        }
    }

    /// The device performs one DMA to IOVA `i`.
    fn dma(&self, i: usize) {
        let mut iotlb = self.iotlb.lock();
        if !iotlb[i] && self.leaves[i].load(Ordering::Acquire) != 0 {
            iotlb[i] = true;
        }
        if iotlb[i] {
            // SAFETY: loom tracks the access; a race with a free is reported.
            let v = self.pages[i].with(|p| unsafe { *p });
            assert_ne!(
                v, POISON,
                "DMA through a stale translation into a reused page"
            );
        }
    }

    /// The unmap's leaf clear (a relaxed store, the weakest a page table may use).
    fn clear(&self, i: usize, gather: &mut Gather) -> usize {
        self.leaves[i].store(0, Ordering::Relaxed);
        gather.add_range(i as u64 * 0x1000, 0x1000);
        i
    }

    fn touch_handle(&self) {
        // SAFETY: loom tracks the access against the owner's close.
        self.open
            .with(|p| assert!(unsafe { *p }, "IOMMU used after teardown"));
    }

    /// The owner closes its IOMMU handle after teardown returned.
    fn close(&self) {
        // SAFETY: loom tracks the access.
        self.open.with_mut(|p| unsafe { *p = false });
    }

    fn freed(&self, i: usize) -> usize {
        self.freed[i].load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl InvalidationOps for Iommu {
    type Entry = usize;

    fn flush_all(&self) {
        self.touch_handle();
        self.iotlb.lock().iter_mut().for_each(|c| *c = false);
    }

    fn sync(&self, gather: &mut Gather) {
        self.touch_handle();
        let r = gather.range().expect("a strict unmap gathered its range");
        let mut iotlb = self.iotlb.lock();
        for (i, c) in iotlb.iter_mut().enumerate() {
            if (r.start..=r.end).contains(&(i as u64 * 0x1000)) {
                *c = false;
            }
        }
    }

    fn reclaim(&self, i: usize) {
        self.touch_handle();
        // The IOVA is free: it may now map other memory. Model that as the page being reused.
        // SAFETY: loom tracks the access.
        self.pages[i].with_mut(|p| unsafe { *p = POISON });
        let n = self.freed[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(n, 0, "IOVA {i} freed twice");
    }
}

/// A tiny per-CPU queue: `cpus` rings of `ring_size` entries (capacity `ring_size - 1`).
fn tiny(cpus: usize, ring_size: usize) -> FqConfig {
    FqConfig::per_cpu()
        .with_cpus(cpus)
        .with_ring_size(ring_size)
}

fn domain(n: usize) -> Arc<Strictness<Iommu>> {
    Arc::new(Strictness::new(Arc::new(Iommu::new(n))))
}

/// Run `f` on a clone of the shared `s` in a new model thread.
fn spawn_on<S, R>(s: &Arc<S>, f: impl FnOnce(&S) -> R + Send + 'static) -> JoinHandle<R>
where
    S: Send + Sync + 'static,
    R: Send + 'static,
{
    let s = s.clone();
    spawn(move || f(&s))
}

/// The unmapper's side: clear IOVA `i`'s leaf and unmap it through the real path.
fn unmap_iova(s: &Strictness<Iommu>, i: usize) -> Unmapped {
    let ops = s.ops().clone();
    s.unmap(|g| ops.clear(i, g))
}

/// Explore `model` and assert that it reached exactly the `expected` outcomes (in order), so
/// that a pass covers both sides of the race.
fn assert_outcomes<T>(model: fn() -> T, expected: &[T])
where
    T: Ord + Send + std::fmt::Debug + 'static,
{
    let seen = outcomes(Bound::Preemptions(3), model);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected);
}

/// Must-fail twins of one model, all weakening by relaxation and expecting the same failure.
macro_rules! twins {
    ($model:expr, $expect:literal, $bound:expr; $($(#[$m:meta])* fn $name:ident: $point:path;)+) => {
        $(must_fail_test! {
            $(#[$m])*
            fn $name: $point, Weakening::Relax, $expect, $bound, $model;
        })+
    };
}

/// Tear down (flush, free everything) as the owner does, then check every unmapped IOVA was
/// freed exactly once.
fn teardown_and_check(s: Arc<Strictness<Iommu>>, unmapped: &[usize]) {
    let ops = s.ops().clone();
    s.shutdown();
    drop(s);
    for &i in unmapped {
        assert_eq!(ops.freed(i), 1, "IOVA {i} not freed exactly once");
    }
}

/// The 2021 review's scenario on the real code: an unmap races with the strict-to-lazy
/// switch while the device still uses its cached translation. Whatever the unmap sees, it
/// either syncs then frees, or queues; with the single snapshot the "skip the sync, free at
/// once" mix is unreachable. Also checks the queue's publication: an unmap that sees the
/// queue sees it fully built. Bound: 3 preemptions (3 threads); twins 2.
fn switch_vs_unmap() -> Unmapped {
    let s = domain(1);
    let sw = spawn_on(&s, |s| assert!(s.enable_lazy(tiny(1, 2)).unwrap()));
    let un = spawn_on(&s, |s| unmap_iova(s, 0));
    let ops = s.ops().clone();
    let dev = spawn(move || ops.dma(0));
    sw.join().unwrap();
    let how = un.join().unwrap();
    dev.join().unwrap();
    teardown_and_check(s, &[0]);
    how
}

#[test]
fn switch_vs_unmap_passes() {
    // Both sides of the race are explored: the unmap synced in some executions, queued in others.
    assert_outcomes(switch_vs_unmap, &[Unmapped::Synced, Unmapped::Queued]);
}

twins! { || { switch_vs_unmap(); }, "Causality violation", Bound::Preemptions(2);
    /// Re-reading the mode for the sync decision (the unmap reads "strict" for the queue
    /// decision and "lazy" for the sync) skips the sync and frees the IOVA while the device
    /// still holds the translation.
    fn unmap_rereads_mode: UNMAP_SINGLE_SNAPSHOT;
    /// Publishing the queue with a relaxed store: an unmap that sees the pointer reads the
    /// counters before their initialisation is visible.
    fn publish_relaxed: FQ_PUBLISH;
    /// With a relaxed snapshot (the read side of the publication) the unmap uses the queue
    /// it just saw without seeing its initialisation. (Before the enqueue fence was fused with
    /// the ring lock, the fence was the read side; the ring is now found before it.)
    fn snapshot_relaxed_sees_unbuilt_queue: UNMAP_SNAPSHOT_ACQUIRE;
}

/// Two strict-to-lazy switches race each other and an unmap: exactly one publishes a queue
/// (the other finds the domain lazy), so the unmap's entry, queued or synced, is freed
/// exactly once at teardown. A switch that checked the mode and published its queue in two
/// sections of the switch lock could publish a second queue over the first, orphaning what
/// was queued there. Bound: 3 preemptions (0.2 s of CPU), as `switch_vs_unmap` (three
/// threads): one stops a switch between its check and its publication, one runs the other
/// switch there, one places the unmap's snapshot before, between or after them.
fn two_switches_vs_unmap() {
    let s = domain(1);
    let a = spawn_on(&s, |s| s.enable_lazy(tiny(1, 2)).unwrap());
    let b = spawn_on(&s, |s| s.enable_lazy(tiny(1, 2)).unwrap());
    let un = spawn_on(&s, |s| unmap_iova(s, 0));
    let published = [a.join().unwrap(), b.join().unwrap()];
    un.join().unwrap();
    assert_eq!(
        published.iter().filter(|&&p| p).count(),
        1,
        "both switches published a queue"
    );
    teardown_and_check(s, &[0]);
}

#[test]
fn two_switches_vs_unmap_passes() {
    check(Bound::Preemptions(3), two_switches_vs_unmap);
}

/// Statistics read while the switch publishes the queue. Exhaustive (2 threads, few ops).
fn switch_vs_stats() {
    let s = domain(1);
    let sw = spawn_on(&s, |s| {
        s.enable_lazy(tiny(1, 2)).unwrap();
    });
    let st = s.queue_stats();
    assert_eq!(st.enqueued, 0);
    sw.join().unwrap();
    teardown_and_check(s, &[]);
}

#[test]
fn switch_vs_stats_passes() {
    check(Bound::Exhaustive, switch_vs_stats);
}

twins! { switch_vs_stats, "Causality violation", Bound::Exhaustive;
    /// A relaxed lookup of the queue dereferences it before its construction is visible.
    fn lookup_relaxed: FQ_LOOKUP_ACQUIRE;
}

/// A lazy unmap races with the timer's run while the device uses the translation. IOVA 0 is
/// queued before (the timer is armed); the unmapper queues IOVA 1. Afterwards nothing may be
/// stranded: a non-empty queue has its timer armed. Bound: 3 preemptions (3 threads), twins 2; the
/// store-buffering reordering needs one preemption in each of the unmapper and the timer.
fn queue_vs_timer() -> bool {
    let s = domain(2);
    s.enable_lazy(tiny(1, 4)).unwrap();
    assert_eq!(unmap_iova(&s, 0), Unmapped::Queued);
    let ops = s.ops().clone();
    let un = spawn_on(&s, |s| unmap_iova(s, 1));
    let timer = spawn_on(&s, |s| s.fire_timer());
    let dev = spawn(move || ops.dma(1));
    un.join().unwrap();
    timer.join().unwrap();
    dev.join().unwrap();
    let q = s.queue().unwrap();
    let pending = q.stats().pending;
    assert!(
        pending == 0 || q.timer_armed(),
        "stranded: {pending} entries queued with the timer off"
    );
    let timer_freed_it = s.ops().freed(1) == 1;
    teardown_and_check(s, &[0, 1]);
    timer_freed_it
}

#[test]
fn queue_vs_timer_passes() {
    // Explored: the timer's drain freed the racing entry, and left it for a later flush.
    assert_outcomes(queue_vs_timer, &[false, true]);
}

twins! { || { queue_vs_timer(); }, "Causality violation", Bound::Preemptions(2);
    /// Without the flusher's fence its invalidation can precede the visibility of the
    /// unmapper's clear (whose stamp missed the flush): the device re-caches the old leaf and
    /// the IOVA is freed under it.
    fn flush_unfenced: FQ_FLUSH_FENCE;
    /// Without the enqueue fence the stamp can be read before the clear is visible: same.
    fn enqueue_unfenced: FQ_ENQUEUE_FENCE;
}

twins! { || { queue_vs_timer(); }, "stranded", Bound::Preemptions(2);
    /// Clearing `timer_on` after the drain: an enqueue between the drain and the clear sees
    /// the timer on and does not arm it; its entry is stranded.
    fn timer_cleared_last: FQ_TIMER_CLEAR_FIRST;
    /// A timer that does not re-arm leaves an entry stamped after its flush started (whose
    /// enqueuer saw the timer still on) stranded.
    fn timer_not_rearmed: FQ_TIMER_REARM;
}

/// `queue_vs_timer` on a bare `FlushQueue`, through its public `enqueue`: the caller clears its
/// leaf, then enqueues (domains go through `enqueue_published`, whose fence is the same point
/// at another site). IOVA 0 is queued before (the timer is armed); the unmapper clears IOVA 1's
/// leaf and enqueues it while the timer runs and the device uses IOVA 1's translation. The
/// enqueue's fence and the flush's fence make the store-buffering pair: without the enqueue's,
/// the stamp can miss the timer's flush while the clear is not yet visible to the device's
/// walk, which re-caches the old leaf, and the drain frees IOVA 1 under it. Afterwards nothing
/// is stranded and both IOVAs are freed exactly once. Bound: 3 preemptions (3 threads), twin
/// 2, as `queue_vs_timer`; returns whether the timer's drain freed IOVA 1 (both reached).
fn bare_queue_vs_timer() -> bool {
    let ops = Arc::new(Iommu::new(2));
    let fq = Arc::new(FlushQueue::new(ops.clone(), tiny(1, 4)).unwrap());
    ops.clear(0, &mut Gather::default());
    fq.enqueue(0);
    let un = {
        let ops = ops.clone();
        spawn_on(&fq, move |fq| {
            fq.enqueue(ops.clear(1, &mut Gather::default()))
        })
    };
    let timer = spawn_on(&fq, |fq| {
        assert!(fq.fire_timer(), "the queue is not torn down")
    });
    let dev = spawn_on(&ops, |ops| ops.dma(1));
    un.join().unwrap();
    timer.join().unwrap();
    dev.join().unwrap();
    let pending = fq.stats().pending;
    assert!(
        pending == 0 || fq.timer_armed(),
        "stranded: {pending} entries queued with the timer off"
    );
    let timer_freed_it = ops.freed(1) == 1;
    fq.shutdown();
    assert_eq!((ops.freed(0), ops.freed(1)), (1, 1), "each IOVA freed once");
    timer_freed_it
}

#[test]
fn bare_queue_vs_timer_passes() {
    // Explored: the timer's drain freed the racing entry, and left it for teardown.
    assert_outcomes(bare_queue_vs_timer, &[false, true]);
}

twins! { || { bare_queue_vs_timer(); }, "Causality violation", Bound::Preemptions(2);
    /// The public `enqueue` without its fence: the stamp can be read before the clear is
    /// visible, and the entry is freed on a flush that did not cover the clear.
    fn bare_enqueue_unfenced: FQ_ENQUEUE_FENCE;
}

/// A full-ring flush on CPU 0 races with enqueues on CPU 1, whose second enqueue frees what
/// CPU 0's flush covered. CPU 0's ring (capacity 1) is full from the start. Bound: 3
/// preemptions (3 threads), twins 2.
fn full_ring_vs_enqueue() -> u64 {
    let s = domain(4);
    s.enable_lazy(tiny(2, 2)).unwrap();
    let ops = s.ops().clone();
    cpu::set_current(Some(0));
    unmap_iova(&s, 0);
    let cpu0 = spawn_on(&s, |s| {
        cpu::set_current(Some(0));
        // The ring is full: this flushes synchronously, frees IOVA 0, queues IOVA 1.
        unmap_iova(s, 1);
    });
    let cpu1 = spawn_on(&s, |s| {
        cpu::set_current(Some(1));
        unmap_iova(s, 2);
        // Drains IOVA 2 if CPU 0's flush covered it, else flushes itself.
        unmap_iova(s, 3);
    });
    let dev = spawn(move || ops.dma(2));
    cpu0.join().unwrap();
    cpu1.join().unwrap();
    dev.join().unwrap();
    let full_flushes = s.queue_stats().full_flushes;
    teardown_and_check(s, &[0, 1, 2, 3]);
    full_flushes
}

#[test]
fn full_ring_vs_enqueue_passes() {
    // Explored: CPU 1 freed IOVA 2 on CPU 0's flush (1 full-ring flush), and flushed itself (2).
    assert_outcomes(full_ring_vs_enqueue, &[1, 2]);
}

twins! { || { full_ring_vs_enqueue(); }, "Causality violation", Bound::Preemptions(2);
    /// A relaxed `finish_cnt` increment: CPU 1 frees after seeing CPU 0's count without
    /// seeing its invalidation.
    fn finish_relaxed: FQ_FINISH_RELEASE;
    /// A relaxed `finish_cnt` load in the drain: same.
    fn finish_load_relaxed: FQ_FINISH_ACQUIRE;
    /// The full-ring flusher without its fence, against CPU 1's stamp.
    fn full_ring_flush_unfenced: FQ_FLUSH_FENCE;
}

/// Teardown races with a running timer drain; the owner closes its IOMMU handle once
/// teardown returned. Exhaustive (2 threads).
fn teardown_vs_drain() {
    let s = domain(2);
    s.enable_lazy(tiny(1, 4)).unwrap();
    let ops = s.ops().clone();
    unmap_iova(&s, 0);
    unmap_iova(&s, 1);
    let timer = spawn_on(&s, |s| s.fire_timer());
    s.shutdown();
    ops.close();
    timer.join().unwrap();
    assert_eq!((ops.freed(0), ops.freed(1)), (1, 1));
}

#[test]
fn teardown_vs_drain_passes() {
    check(Bound::Exhaustive, teardown_vs_drain);
}

twins! { teardown_vs_drain, "Causality violation", Bound::Exhaustive;
    /// Teardown that does not stop the timer (and wait for its running drain) lets the
    /// timer use the IOMMU handle after the owner closed it.
    fn teardown_without_stopping_timer: FQ_TEARDOWN_STOP_TIMER;
}

/// An unmap racing with teardown (a direct `Strictness` or `FlushQueue` user may shut down
/// while unmaps still run): the entry lands in a ring teardown has not emptied yet (teardown
/// flushes again for it) or in a ring teardown closed (the enqueue flushes and frees it
/// itself). Either way it is freed exactly once, after an invalidation that started after its
/// leaf clear, while the device keeps using its cached translation; the owner closes its
/// IOMMU handle once the unmap returned. Bound: 3 preemptions (3 threads). Outcome: whether
/// the entry was already freed when teardown returned.
fn unmap_vs_teardown() -> bool {
    let s = domain(1);
    s.enable_lazy(tiny(1, 4)).unwrap();
    let ops = s.ops().clone();
    let unmap = spawn_on(&s, |s| unmap_iova(s, 0));
    let device = spawn_on(&ops, |ops| ops.dma(0));
    s.shutdown();
    let freed_by_then = ops.freed(0) == 1;
    assert_eq!(unmap.join().unwrap(), Unmapped::Queued);
    device.join().unwrap();
    ops.close();
    assert_eq!(ops.freed(0), 1, "the entry was not freed exactly once");
    freed_by_then
}

#[test]
fn unmap_vs_teardown_passes() {
    assert_outcomes(unmap_vs_teardown, &[false, true]);
}

/// The freeing side of a bare queue whose `reclaim` enqueues a follow-up entry into the queue
/// that frees it (entry 0 queues entry 2), as an owner whose freeing needs an invalidation of
/// its own might. The frees teardown owes (entries 0 and 2) use the caller's IOMMU handle,
/// which the owner closes once teardown returned.
struct Requeue {
    fq: Mutex<Option<Arc<FlushQueue<Requeue>>>>,
    open: UnsafeCell<bool>,
    /// How often each entry was freed (std: a plain oracle, invisible to loom's scheduler).
    freed: [std::sync::atomic::AtomicUsize; 3],
}

// SAFETY: the cell is only reached through loom's tracked `with`/`with_mut`, which report
// every unordered access instead of performing it racily.
unsafe impl Sync for Requeue {}

impl InvalidationOps for Requeue {
    type Entry = usize;

    fn flush_all(&self) {}

    fn sync(&self, _gather: &mut Gather) {}

    fn reclaim(&self, i: usize) {
        if i != 1 {
            // SAFETY: loom tracks the access against the owner's close.
            self.open
                .with(|p| assert!(unsafe { *p }, "IOMMU used after teardown"));
        }
        let n = self.freed[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(n, 0, "entry {i} freed twice");
        if i == 0 {
            let fq = self.fq.lock().clone();
            fq.expect("the queue is set up").enqueue(2);
        }
    }
}

/// A drain frees under its ring lock, so an enqueue from inside a `reclaim` takes no ring lock
/// (it would wait for ever for its own thread's) and frees its entry at once after a flush.
/// Entry 0 is queued and made freeable; a racing enqueue of entry 1 or teardown drains it, and
/// freeing 0 enqueues entry 2 from inside the drain. The owner closes its handle as soon as
/// teardown returns: entries 0 and 2 are freed by then (a drain's frees, the nested one
/// included, happen under a ring lock teardown takes after them). Entry 1's free does not use
/// the handle: an enqueue into a ring teardown closed frees its own entry before it returns,
/// not before teardown does. No point of its own (the nested enqueue adds no ordering: its
/// flush's fence is `iommu.fq.flush.fence`); without the re-entry check the nested enqueue
/// spins on its own thread's lock and loom reports the livelock. Bound: 3 preemptions (2
/// threads, but spinning locks). Outcome: whether entry 1 was queued before its ring closed
/// (so teardown freed it).
fn reclaim_requeues_vs_teardown() -> bool {
    let ops = Arc::new(Requeue {
        fq: Mutex::new(None),
        open: UnsafeCell::new(true),
        freed: Default::default(),
    });
    let fq = Arc::new(FlushQueue::new(ops.clone(), tiny(1, 4)).unwrap());
    *ops.fq.lock() = Some(fq.clone());
    fq.enqueue(0);
    fq.flush();
    let racer = spawn_on(&fq, |fq| fq.enqueue(1));
    fq.shutdown();
    let queued_in_time = ops.freed[1].load(std::sync::atomic::Ordering::Relaxed) == 1;
    // SAFETY: loom tracks the access.
    ops.open.with_mut(|p| unsafe { *p = false });
    racer.join().unwrap();
    ops.fq.lock().take(); // the queue and its ops refer to each other
    for (i, f) in ops.freed.iter().enumerate() {
        let n = f.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(n, 1, "entry {i} not freed exactly once");
    }
    queued_in_time
}

#[test]
fn reclaim_requeues_vs_teardown_passes() {
    assert_outcomes(reclaim_requeues_vs_teardown, &[false, true]);
}

/// The IOTLB of the real-domain model: one cached translation (an IOVA), filled by the
/// device's walk, cleared by every invalidation.
#[derive(Default)]
struct CachingIotlb {
    cached: Mutex<Option<u64>>,
}

impl dma_iommu::TlbOps for CachingIotlb {
    fn flush_all(&self) {
        *self.cached.lock() = None;
    }
    fn flush_walk(&self, _iova: u64, _size: u64, _granule: u64) {
        *self.cached.lock() = None;
    }
    fn sync(&self, _range: &dma_iommu::TlbRange) {
        *self.cached.lock() = None;
    }
}

type RealDomain = Domain<CachingIotlb>;

/// The whole real stack: a `Domain` with the real io-pgtable (tiny geometry), the real
/// iova-cache (range allocator, no caches, so a freed IOVA is visibly free) and the real flush
/// queue (`lazy`, or strict). One page is mapped and the device has its translation cached.
fn real_domain(lazy: Option<FqConfig>) -> (Arc<RealDomain>, Device, u64) {
    let (dom, dev) = fresh_real_domain(lazy);
    let dma = dom
        .map(&dev, 0x8000, 0x1000, Direction::Bidirectional)
        .unwrap();
    *dom.iotlb().cached.lock() = Some(dma); // the device has used the mapping
    (dom, dev, dma)
}

/// The real stack's configuration: io-pgtable tiny geometry, iova-cache without caches (a
/// freed IOVA is visibly free), the flush queue `lazy` or none (strict).
fn real_config(lazy: Option<FqConfig>) -> DomainConfig {
    let mut cfg = DomainConfig::new(io_pgtable::Config::tiny(2)).unwrap();
    cfg.lazy = lazy;
    cfg.iova = iova_cache::IovaConfig {
        caching: false,
        cpus: 1,
        trim_interval: None,
        checked_frees: false,
        ..iova_cache::IovaConfig::with_space(1, 15)
    };
    cfg
}

/// [`real_domain`]'s stack with nothing mapped yet, and its (trusted) device.
fn fresh_real_domain(lazy: Option<FqConfig>) -> (Arc<RealDomain>, Device) {
    let dom = Arc::new(Domain::new(real_config(lazy), CachingIotlb::default(), None).unwrap());
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    (dom, dev)
}

/// The caller unmaps the page in a model thread.
fn spawn_real_unmap(dom: &Arc<RealDomain>, dev: &Device, dma: u64) -> JoinHandle<Unmapped> {
    let (dom, dev) = (dom.clone(), dev.clone());
    spawn(move || {
        dom.unmap(&dev, dma, 0x1000, Direction::Bidirectional)
            .unwrap()
    })
}

/// The device in a model thread: translates `dma` through its IOTLB (walking the page table on
/// a miss) and, while using the translation, checks that the IOVA is still allocated.
fn spawn_real_device(dom: &Arc<RealDomain>, dma: u64) -> JoinHandle<()> {
    spawn_on(dom, move |dom| {
        let mut cached = dom.iotlb().cached.lock();
        if cached.is_none() && dom.translate(dma).is_some() {
            *cached = Some(dma);
        }
        if cached.is_some() {
            let held = dom.iova_allocator().find(dma >> 12).is_some();
            assert!(held, "DMA through a stale translation of a freed IOVA");
        }
    })
}

/// The 2021 scenario on the whole real stack ([`real_domain`]), strict at first: an IOVA
/// freed while an IOTLB still holds it could be handed to another mapping. Bound: 3
/// preemptions (3 threads), twin 2.
fn real_domain_switch_vs_unmap() -> Unmapped {
    let (dom, dev, dma) = real_domain(None);
    let sw = spawn_on(&dom, |dom| {
        dom.set_lazy(tiny(1, 2)).unwrap();
    });
    let un = spawn_real_unmap(&dom, &dev, dma);
    let walker = spawn_real_device(&dom, dma);
    sw.join().unwrap();
    let how = un.join().unwrap();
    walker.join().unwrap();
    dom.flush_queue_now();
    assert!(
        dom.iova_allocator().find(dma >> 12).is_none(),
        "the IOVA was freed"
    );
    how
}

#[test]
fn real_domain_switch_vs_unmap_passes() {
    // Both sides of the race are explored on the real stack too.
    assert_outcomes(
        real_domain_switch_vs_unmap,
        &[Unmapped::Synced, Unmapped::Queued],
    );
}

twins! { || { real_domain_switch_vs_unmap(); }, "stale translation", Bound::Preemptions(2);
    /// On the real stack: re-reading the mode for the sync decision frees the IOVA while the
    /// device's IOTLB still holds it.
    fn real_domain_unmap_rereads_mode: UNMAP_SINGLE_SNAPSHOT;
}

/// A lazy unmap on the whole real stack races with the flush-queue timer while the device
/// uses (and may re-walk) the translation: the IOVA must stay allocated while any IOTLB can
/// still produce its translation. Bound: 3 preemptions (3 threads), twin 2.
///
/// Weakening the flusher's fence is *not* caught here, and rightly: this software walker pins
/// RCU, whose full fence orders the walk after the flush's `start_cnt` increment just as the
/// flusher's fence would. A hardware walker has no such fence; the emulated walker of
/// `queue_vs_timer` and `full_ring_vs_enqueue` (a plain acquire load) is the one that needs
/// the flusher's fence, and its twins show it.
fn real_domain_queue_vs_timer() -> bool {
    let (dom, dev, dma) = real_domain(Some(tiny(1, 4)));
    let un = spawn_real_unmap(&dom, &dev, dma);
    let timer = spawn_on(&dom, |dom| dom.flush_queue_now());
    let walker = spawn_real_device(&dom, dma);
    assert_eq!(un.join().unwrap(), Unmapped::Queued);
    timer.join().unwrap();
    walker.join().unwrap();
    let freed_by_timer = dom.iova_allocator().find(dma >> 12).is_none();
    dom.flush_queue_now();
    assert!(dom.iova_allocator().find(dma >> 12).is_none());
    freed_by_timer
}

#[test]
fn real_domain_queue_vs_timer_passes() {
    assert_outcomes(real_domain_queue_vs_timer, &[false, true]);
}

twins! { || { real_domain_queue_vs_timer(); }, "stale translation", Bound::Preemptions(2);
    /// On the real stack: the enqueue without its fence stamps before the leaf clear is
    /// visible to the device's walk.
    fn real_domain_enqueue_unfenced: FQ_ENQUEUE_FENCE;
}

/// Two unmaps of one mapping race on the whole real stack (strict): the registry lets exactly
/// one proceed, and the other is `NotMapped` and changes nothing. Both only read the record
/// they claim, so the registry's orderings are weakened in its own models
/// (`iommu_registry_models.rs`), where an insert writes a record a take reads.
///
/// Bound: 3 preemptions. Two threads, but each unmap runs the real page table, RCU
/// pins and IOVA allocator (hundreds of loom operations), so exhaustive takes too long; the
/// race needs one switch (the first unmap stopped inside or just after its registry
/// section), and the registry's section is a few loom operations long.
fn real_domain_double_unmap() -> bool {
    let (dom, dev, dma) = real_domain(None);
    let other = spawn_real_unmap_result(&dom, &dev, dma);
    let mine = dom.unmap(&dev, dma, 0x1000, Direction::Bidirectional);
    let other = other.join().unwrap();
    let results = [&mine, &other];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "exactly one unmap proceeds: {mine:?}, {other:?}"
    );
    for r in results {
        if let Err(e) = r {
            assert_eq!(*e, DmaError::NotMapped { dma }, "the loser is refused");
        }
    }
    assert_eq!(dom.translate(dma), None, "the page is unmapped");
    assert!(
        dom.iova_allocator().find(dma >> 12).is_none(),
        "the IOVA was freed"
    );
    mine.is_ok()
}

/// The caller unmaps the page in a model thread, keeping the result.
fn spawn_real_unmap_result(
    dom: &Arc<RealDomain>,
    dev: &Device,
    dma: u64,
) -> JoinHandle<Result<Unmapped, DmaError>> {
    let (dom, dev) = (dom.clone(), dev.clone());
    spawn(move || dom.unmap(&dev, dma, 0x1000, Direction::Bidirectional))
}

#[test]
fn real_domain_double_unmap_passes() {
    // Either thread may win.
    assert_outcomes(real_domain_double_unmap, &[false, true]);
}

/// A map races with an unmap that guessed its IOVA (a hostile or buggy caller: the IOVA of a
/// fresh domain's map is predictable; here it is read from a map and unmap done before the
/// threads start, after which the allocator hands the same IOVA out again). On the whole real
/// stack, strict or lazy. Conservation after both: either the guess was refused
/// (`NotMapped`) and the map is whole (translated, allocated, and its own unmap succeeds), or
/// the guess unmapped it; in both cases no leaf remains on a free IOVA and nothing leaks (the
/// IOVA is free once the queue is flushed). Outcome: whether the guess won.
///
/// Exhaustive (a fraction of a second each: two threads, one page, strict frees at once and
/// the lazy queue is drained only after the join). The twin needs one switch (the map stopped
/// between its two steps while the guess runs whole); it uses PB 2.
fn real_domain_map_vs_guessed_unmap(lazy: bool) -> bool {
    let (dom, dev) = fresh_real_domain(lazy.then(|| tiny(1, 4)));
    let dir = Direction::Bidirectional;
    let guess = dom.map(&dev, 0x8000, 0x1000, dir).unwrap();
    dom.unmap(&dev, guess, 0x1000, dir).unwrap();
    dom.flush_queue_now();
    let other = spawn_real_unmap_result(&dom, &dev, guess);
    let dma = dom.map(&dev, 0x8000, 0x1000, dir).unwrap();
    let other = other.join().unwrap();
    assert_eq!(dma, guess, "the allocator hands the same IOVA out again");
    if let Err(e) = &other {
        assert_eq!(*e, DmaError::NotMapped { dma }, "the guess is refused");
        assert_eq!(dom.translate(dma), Some(0x8000), "the map is whole");
        assert!(dom.iova_allocator().find(dma >> 12).is_some());
        dom.unmap(&dev, dma, 0x1000, dir).unwrap();
    }
    dom.flush_queue_now();
    assert!(
        dom.iova_allocator().find(dma >> 12).is_none(),
        "the IOVA leaked"
    );
    assert_eq!(dom.translate(dma), None, "leaf on a free IOVA");
    other.is_ok()
}

#[test]
fn real_domain_map_vs_guessed_unmap_passes() {
    let seen = outcomes(Bound::Exhaustive, || {
        real_domain_map_vs_guessed_unmap(false)
    });
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [false, true]);
}

#[test]
fn real_domain_lazy_map_vs_guessed_unmap_passes() {
    let seen = outcomes(Bound::Exhaustive, || real_domain_map_vs_guessed_unmap(true));
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [false, true]);
}

twins! { || { real_domain_map_vs_guessed_unmap(false); }, "leaf on a free IOVA", Bound::Preemptions(2);
    /// Recording the mapping before writing its leaves: the guess takes the record, unmaps
    /// nothing and frees the IOVA, and the map then writes leaves on the free IOVA.
    fn map_records_first: MAP_RECORD_LAST;
}

/// Length of the bounced buffer and of the mapping that reuses its slots.
const BOUNCE_LEN: usize = 8;
/// The bounced buffer's bytes.
const BOUNCED: u8 = 0x11;
/// The bytes of the mapping that reuses its slots.
const REUSED: u8 = 0x22;

/// An untrusted device's bounced mapping on the whole real stack ([`real_config`], the domain
/// lazy, so only the untrusted device's own rule keeps its unmap strict) over a real bounce
/// pool of one granule (two 2 KiB slots, one area, no growth, no thread caches: a free run
/// is visibly free and the only run a granule-aligned map can take). The device has the
/// translation cached. Three threads: the caller unmaps it; another user of the pool maps
/// a buffer as the domain's bounce side does (granule-aligned, padding zeroed), which can
/// only get the same slots once they are released; the device translates through its IOTLB
/// (walking on a miss) and, while it holds the translation, reads the bounce slots it
/// reaches. Invariant: the device never reads another mapping's bytes through the IOVA, so
/// the slots are released only after the page-table unmap and the IOTLB sync; afterwards the
/// unmap was synced, the IOVA is unmapped and free, and the slots are free. Outcome: (the
/// remap got the slots during the race, the device used the translation).
///
/// Bound: 4 preemptions (1.4 s of CPU; 3 take 0.3 s, 6 take 7 s, exhaustive ran
/// past two minutes and was stopped: each thread runs hundreds of loom operations, RCU pins,
/// spin locks, the pool's search). The release-too-early bug needs one (the unmap stopped
/// between its release and its sync, the remap and the device then run to their ends); the
/// other three stop the device inside its walk or read and the remap inside its search
/// while the unmap clears, syncs and releases. Twin: 2.
fn bounced_unmap_vs_device() -> (bool, bool) {
    let mem = RegionMemory::new(2 * 0x1000);
    let (buf, other) = (mem.base() + 0x10, mem.base() + 0x1010);
    mem.write(buf, &[BOUNCED; BOUNCE_LEN]).unwrap();
    mem.write(other, &[REUSED; BOUNCE_LEN]).unwrap();
    let pool = swiotlb_core::Config {
        can_grow: false,
        transient_pools: false,
        thread_caches: false,
        ..swiotlb_core::Config::tiny(2, 1, 2)
    };
    let pool = Swiotlb::new(pool, mem).unwrap();
    let (remapper, reader) = (
        pool.device(swiotlb_core::DeviceConfig::default()),
        pool.device(swiotlb_core::DeviceConfig::default()),
    );
    // The device reads the slots through a handle of the pool that has mapped before (a
    // handle that never mapped finds no bounce address).
    let once = pool.map(&reader, other, 1, Direction::ToDevice, MapAttrs::default());
    let skip = MapAttrs {
        skip_cpu_sync: true,
        ..MapAttrs::default()
    };
    pool.unmap(&reader, once.unwrap(), 1, Direction::ToDevice, skip)
        .unwrap();
    let cfg = real_config(Some(tiny(1, 4)));
    let dom = Arc::new(Domain::new(cfg, CachingIotlb::default(), Some(pool)).unwrap());
    let untrusted = DeviceConfig {
        trusted: false,
        ..DeviceConfig::default()
    };
    let dev = dom.attach(untrusted).unwrap();
    let to_dev = Direction::ToDevice;
    let dma = dom.map(&dev, buf, BOUNCE_LEN, to_dev).unwrap();
    let phys = dom.translate(dma).unwrap();
    assert!(
        dom.swiotlb().unwrap().is_bounce_buffer(&reader, phys),
        "bounced"
    );
    // The device has used the mapping.
    *dom.iotlb().cached.lock() = Some(dma);
    // As the domain's bounce side maps: aligned to the granule, padding zeroed.
    let attrs = MapAttrs {
        alloc_align_mask: 0xfff,
        zero_padding: true,
        ..MapAttrs::default()
    };
    let un = spawn_on(&dom, move |dom| dom.unmap(&dev, dma, BOUNCE_LEN, to_dev));
    let remap = spawn_on(&dom, move |dom| {
        let pool = dom.swiotlb().unwrap();
        pool.map(&remapper, other, BOUNCE_LEN, to_dev, attrs)
            .is_ok()
    });
    let device = spawn_on(&dom, move |dom| {
        let mut cached = dom.iotlb().cached.lock();
        if cached.is_none() && dom.translate(dma).is_some() {
            *cached = Some(dma);
        }
        if cached.is_some() {
            let mut seen = [0; BOUNCE_LEN];
            let pool = dom.swiotlb().unwrap();
            pool.read_bounce(&reader, phys, &mut seen).unwrap();
            assert_eq!(
                seen, [BOUNCED; BOUNCE_LEN],
                "DMA through a live IOVA into reused bounce slots"
            );
        }
        cached.is_some()
    });
    assert_eq!(
        un.join().unwrap(),
        Ok(Unmapped::Synced),
        "untrusted: strict"
    );
    let remapped = remap.join().unwrap();
    let used = device.join().unwrap();
    assert_eq!(dom.translate(dma), None, "the page is unmapped");
    assert!(
        dom.iova_allocator().find(dma >> 12).is_none(),
        "the IOVA was freed"
    );
    if !remapped {
        let pool = dom.swiotlb().unwrap();
        let again = pool.device(swiotlb_core::DeviceConfig::default());
        let slots = pool.map(&again, other, BOUNCE_LEN, to_dev, attrs);
        assert!(slots.is_ok(), "the bounce slots were released");
    }
    (remapped, used)
}

#[test]
fn bounced_unmap_vs_device_passes() {
    // Every combination: the remap came before or after the release, the device used its
    // translation before the sync or found it gone.
    let seen = outcomes(Bound::Preemptions(4), bounced_unmap_vs_device);
    let all = [(false, false), (false, true), (true, false), (true, true)];
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), all);
}

twins! { || { bounced_unmap_vs_device(); }, "reused bounce slots", Bound::Preemptions(2);
    /// The bounce slots released before the page-table unmap and the IOTLB sync: the other
    /// mapping takes them while the device still holds the translation, which now reaches
    /// its bytes.
    fn bounce_released_before_sync: UNMAP_BOUNCE_AFTER_SYNC;
}
