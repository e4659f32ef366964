//! The mutation points of this crate: every ordering that matters, by name.
//!
//! The flush-queue counter protocol is store-buffering shaped (an enqueuer clears leaves and
//! reads `start_cnt`; a flusher bumps `start_cnt` and lets the walker re-read the leaves), so
//! both sides carry a full fence. The publication of the queue by the strict-to-lazy switch is
//! message passing: a release store, read by the unmap's snapshot with an acquire load. The
//! enqueue's full fence is issued right before the ring lock's compare-and-swap, which is the
//! fence itself on x86-64.
//!
//! # Points and their twins
//!
//! | Point | Kind | Twin(s) | Model |
//! |---|---|---|---|
//! | `iommu.fq.publish` | Store | `publish_relaxed` | `switch_vs_unmap` |
//! | `iommu.unmap.snapshot.acquire` | Load | `snapshot_relaxed_sees_unbuilt_queue` | `switch_vs_unmap` |
//! | `iommu.fq.enqueue.fence` | Fence | `enqueue_unfenced`, `real_domain_enqueue_unfenced`, `bare_enqueue_unfenced` | `queue_vs_timer`, `real_domain_queue_vs_timer`, `bare_queue_vs_timer` |
//! | `iommu.fq.flush.fence` | Fence | `flush_unfenced`, `full_ring_flush_unfenced` | `queue_vs_timer`, `full_ring_vs_enqueue` |
//! | `iommu.fq.finish.release` | Rmw | `finish_relaxed` | `full_ring_vs_enqueue` |
//! | `iommu.fq.finish.acquire` | Load | `finish_load_relaxed` | `full_ring_vs_enqueue` |
//! | `iommu.fq.lookup.acquire` | Load | `lookup_relaxed` | `switch_vs_stats` |
//! | `iommu.fq.timer.clear_first` | Step | `timer_cleared_last` ("stranded") | `queue_vs_timer` |
//! | `iommu.fq.timer.rearm` | Step | `timer_not_rearmed` ("stranded") | `queue_vs_timer` |
//! | `iommu.fq.teardown.stop_timer` | Step | `teardown_without_stopping_timer` | `teardown_vs_drain` |
//! | `iommu.unmap.single_snapshot` | Step | `unmap_rereads_mode`, `real_domain_unmap_rereads_mode` ("stale translation") | `switch_vs_unmap`, `real_domain_switch_vs_unmap` |
//! | `iommu.map.record_last` | Step | `map_records_first` ("leaf on a free IOVA") | `real_domain_map_vs_guessed_unmap` |
//! | `iommu.unmap.bounce_after_sync` | Step | `bounce_released_before_sync` ("reused bounce slots") | `bounced_unmap_vs_device` |
//! | `iommu.registry.claim` | Rmw | `registry_claim_relaxed` | `insert_vs_take` |
//! | `iommu.registry.publish` | Store | `registry_publish_relaxed` | `insert_vs_take` |
//! | `iommu.registry.vacate` | Store | `registry_vacate_relaxed` | `take_vs_reinsert` |
//! | `iommu.registry.adopt` | Load | `registry_adopt_relaxed` | `take_vs_reinsert` |
//! | `iommu.registry.install` | Store | `registry_install_relaxed` | `neighbour_inserts` |
//! | `iommu.registry.lookup` | Load | `registry_lookup_relaxed` | `neighbour_inserts` |
//!
//! Twins without a message in the table fail with a causality violation; the real-domain twins
//! with "stale translation" (the bounced unmap's, "reused bounce slots").
//!
//! # Loom models
//!
//! `loom-tests/tests/loom/iommu_models.rs`. All run the real `Strictness`/`FlushQueue`. The device
//! is a model thread: it locks an emulated IOTLB, translates through the cached entry or walks
//! the leaf (acquire load) and caches it, and reads the page while using the translation;
//! invalidations clear the cache under that lock; `reclaim` (the IOVA is free and may map other
//! memory) poisons the page with a tracked write. Invariant: *no IOVA is freed before an
//! invalidation that started after its leaves were cleared*; a violation is a loom causality
//! violation between the device's read and the poison. The caller's IOMMU handle is a cell closed
//! after teardown, so any use after (or racing with) teardown is reported the same way.
//!
//! | Model | Threads | Bound | Checks |
//! |---|---|---|---|
//! | `switch_vs_unmap` | switch, unmap, device | PB 3 (twins PB 2) | the 2021 scenario; publication; outcomes {Synced, Queued} both reached |
//! | `real_domain_switch_vs_unmap` | switch, unmap, device | PB 3 (twin PB 2) | the same on the whole real stack (io-pgtable tiny geometry, iova-cache without caches so a freed IOVA is visibly free): the device asserts its cached IOVA is still allocated |
//! | `real_domain_queue_vs_timer` | unmap (lazy), timer, device | PB 3 (twin PB 2) | the SB protocol on the real stack; outcomes {timer freed it, left for later} |
//! | `two_switches_vs_unmap` | switch, switch, unmap | PB 3 | exactly one switch publishes a queue; the unmap's IOVA freed once at teardown |
//! | `switch_vs_stats` | switch, reader | exhaustive | lookup of a published queue |
//! | `queue_vs_timer` | unmap, timer, device | PB 3 (twins PB 2) | SB protocol; nothing stranded; outcomes {timer freed it, left for later} |
//! | `bare_queue_vs_timer` | caller (clear, then the public `FlushQueue::enqueue`), timer, device | PB 3 (twin PB 2) | `queue_vs_timer` on a bare queue, through the public `enqueue` (the domain reaches the same code through `enqueue_published`); nothing stranded; each IOVA freed once; outcomes {timer freed it, left for teardown} |
//! | `full_ring_vs_enqueue` | CPU 0 full-ring flush, CPU 1 two unmaps, device | PB 3 (twins PB 2) | cross-CPU free on another CPU's flush; outcomes {1, 2 full flushes} |
//! | `teardown_vs_drain` | timer, teardown+close | exhaustive | teardown waits for a running drain; no later drain |
//! | `unmap_vs_teardown` | unmap (lazy), teardown, device | PB 3 | an enqueue racing with teardown is freed exactly once, after a covering flush, before the owner closes its handle; outcomes {freed when teardown returned, freed by the enqueue into the closed ring} |
//! | `real_domain_map_vs_guessed_unmap` | map (real stack, strict or lazy), unmap of the IOVA the map will get | exhaustive (twin PB 2) | the guess refused and the map whole, or the mapping unmapped by the guess; no leaf on a free IOVA, nothing leaked; outcomes {refused, unmapped} |
//! | `bounced_unmap_vs_device` | unmap (untrusted, lazy domain), remap of the pool, device | PB 4 (twin PB 2) | the whole real stack with a real bounce pool of one granule (two slots): the device, holding its cached or walked translation, reads the bounce slots and must find the mapping's own bytes, never those of the other mapping that reuses the slots once released; the unmap is synced, the IOVA and slots freed; outcomes {remap before or after the release} × {device used the translation or found it gone} |
//! | `reclaim_requeues_vs_teardown` | bare queue: enqueue, teardown+close | PB 3 | a `reclaim` that enqueues into its own queue does not hang (the nested enqueue takes no ring lock and frees at once); teardown returns after every drain's frees, nested ones included; every entry freed once; outcomes {racing entry queued in time, freed into the closed ring} |
//!
//! Each three-thread model returns an outcome and its test asserts the full outcome set, so a
//! pass is not vacuous. Every twin is found with ≤ 2 preemptions (one switch in each SB thread,
//! or the switch between the unmap's reads).
//!
//! Finding: on the real stack, weakening the *flusher's* fence is not caught, and rightly: the
//! software walker (`PageTable::iova_to_phys`) pins RCU, whose full fence orders the walk after
//! the flush's `start_cnt` increment as the flusher's fence would. A hardware walker has no such
//! fence; the emulated walker (a plain acquire load) models it, and there the flusher's fence is
//! required (twins `flush_unfenced`, `full_ring_flush_unfenced`). The fence stays in the code.
//!
//! The registry's models (`loom-tests/tests/loom/iommu_registry_models.rs`) run the real
//! `Registry` with leaves of two slots; the record is a loom cell, so an access not ordered
//! after the previous owner's (or after the leaf's construction) is a causality violation.
//! All exhaustive.
//!
//! | Model | Threads | Checks |
//! |---|---|---|
//! | `registry_double_take` | two takes of one mapping | exactly one gets the record, the other `NotMapped`; outcomes {either wins} |
//! | `registry_take_vs_wrong_take` | the owner's take, another device's | the owner's always proceeds (it waits while the other holds the slot), the other is refused |
//! | `registry_take_vs_reinsert` | a take, then the pfn handed over by a Relaxed flag (an allocator that does not order) to a thread that maps it again | the new record is found whole; outcomes {the insert read the key empty at once, it waited} |
//! | `registry_neighbour_inserts` | two inserts of neighbouring pfns into a leaf not yet allocated | one allocates the leaf, the other finds it; neither lost; outcomes {either allocated} |
//! | `registry_insert_vs_take` | an insert, a take guessing its address | nothing yet or the whole record; outcomes {taken, not yet} |

dma_sync::mutation_points! {
    /// Release store of the flush-queue pointer by the strict-to-lazy switch: everything the
    /// queue's constructor wrote (rings, counters, timer state) is visible to an unmapper that
    /// sees the pointer (paired with `iommu.unmap.snapshot.acquire`).
    FQ_PUBLISH: Store = "iommu.fq.publish";
    /// Acquire load of the flush-queue pointer by an unmap's snapshot of the mode: the lazy
    /// branch dereferences the queue (finds its ring) after it (paired with `iommu.fq.publish`).
    UNMAP_SNAPSHOT_ACQUIRE: Load = "iommu.unmap.snapshot.acquire";
    /// Full fence at the start of an enqueue, right before the ring lock's compare-and-swap
    /// (on x86-64 that locked instruction is the fence): orders the unmap's leaf clears before
    /// the `start_cnt` stamp (store-buffering pair of `iommu.fq.flush.fence`).
    FQ_ENQUEUE_FENCE: Fence = "iommu.fq.enqueue.fence";
    /// Full fence between a flush's `start_cnt` increment and its IOTLB invalidation: a flush
    /// that an enqueuer's stamp did not see invalidates only after the enqueuer's leaf clears
    /// are visible to the walker.
    FQ_FLUSH_FENCE: Fence = "iommu.fq.flush.fence";
    /// Release increment of `finish_cnt` once the invalidation completed: a drain that sees the
    /// new count frees entries only after the invalidation.
    FQ_FINISH_RELEASE: Rmw = "iommu.fq.finish.release";
    /// Acquire load of `finish_cnt` by a drain (paired with `iommu.fq.finish.release`).
    FQ_FINISH_ACQUIRE: Load = "iommu.fq.finish.acquire";
    /// Acquire load of the flush-queue pointer by readers other than the unmap path
    /// (statistics, an explicit timer run): they dereference the queue at once.
    FQ_LOOKUP_ACQUIRE: Load = "iommu.fq.lookup.acquire";
    /// The timer clears `timer_on` before it flushes and drains (weakened: after the drain),
    /// so an enqueue that races with the drain re-arms the timer instead of being stranded.
    FQ_TIMER_CLEAR_FIRST: Step = "iommu.fq.timer.clear_first";
    /// The timer re-arms itself when its drain left entries that were stamped after its flush
    /// started (weakened: it does not), so every queued entry is eventually freed.
    FQ_TIMER_REARM: Step = "iommu.fq.timer.rearm";
    /// Teardown marks the timer dead under the timer lock, waiting for a running drain, before
    /// it frees anything (weakened: it does not wait, as before the 2022 Linux fix).
    FQ_TEARDOWN_STOP_TIMER: Step = "iommu.fq.teardown.stop_timer";
    /// An unmap reads the strictness mode once and uses that snapshot for the gather, the
    /// IOTLB sync and the queue-or-free decision (weakened: the sync decision re-reads the
    /// mode, the reordering of the 2021 review in which the sync is skipped and the IOVA freed).
    UNMAP_SINGLE_SNAPSHOT: Step = "iommu.unmap.single_snapshot";
    /// A map writes the page-table leaves before it records the mapping in the registry
    /// (weakened: records first), so an unmap that guessed the address finds no record until
    /// the leaves it would clear are written, and never frees an IOVA the map then maps.
    MAP_RECORD_LAST: Step = "iommu.map.record_last";
    /// An untrusted device's unmap releases its bounce slots (copying back first) only after
    /// the page-table unmap and the IOTLB sync (weakened: before them, so a device access
    /// through the still-live IOVA reaches slots that are free or already reused by another
    /// mapping, and a device write after the copy back is lost).
    UNMAP_BOUNCE_AFTER_SYNC: Step = "iommu.unmap.bounce_after_sync";
    /// Acquire compare-and-swap by which a take claims a registry slot from the live address:
    /// its read of the record follows the insert's write (paired with
    /// `iommu.registry.publish`).
    REGISTRY_CLAIM: Rmw = "iommu.registry.claim";
    /// Release store of the DMA address into its pfn's registry slot by the insert: the record
    /// it wrote is visible to the take that claims the address.
    REGISTRY_PUBLISH: Store = "iommu.registry.publish";
    /// Release store by which a take gives a registry slot up (empty, or the address put back
    /// when the record was not what it expected): its read of the record precedes the next
    /// insert's write (paired with `iommu.registry.adopt`).
    REGISTRY_VACATE: Store = "iommu.registry.vacate";
    /// Acquire load by which an insert finds its pfn's slot empty before it writes the record
    /// (with no locked instruction: the IOVA allocator handed it the pfn), ordering the write
    /// after the previous take's read however the allocator handed the pfn over.
    REGISTRY_ADOPT: Load = "iommu.registry.adopt";
    /// Release store of a new registry leaf or middle node's pointer (under the install lock):
    /// its empty slots are built before a lock-free lookup reaches them.
    REGISTRY_INSTALL: Store = "iommu.registry.install";
    /// Acquire loads of the middle-node and leaf pointers by an insert's or take's lookup
    /// (paired with `iommu.registry.install`).
    REGISTRY_LOOKUP: Load = "iommu.registry.lookup";
}
