//! The mutation points of this crate: every ordering that matters, by name.
//!
//! The flush-queue counter protocol is store-buffering shaped (an enqueuer clears leaves and
//! reads `start_cnt`; a flusher bumps `start_cnt` and lets the walker re-read the leaves), so
//! both sides carry a full fence. The publication of the queue by the strict-to-lazy switch is
//! message passing: a release store, read with a relaxed load followed by the enqueue's full
//! fence before the queue is touched.

dma_sync::mutation_points! {
    /// Release store of the flush-queue pointer by the strict-to-lazy switch: everything the
    /// queue's constructor wrote (rings, counters, timer state) is visible to an unmapper that
    /// sees the pointer (paired with `iommu.fq.enqueue.fence`).
    FQ_PUBLISH: Store = "iommu.fq.publish";
    /// Full fence at the start of an enqueue: orders the unmap's leaf clears before the
    /// `start_cnt` stamp (store-buffering pair of `iommu.fq.flush.fence`), and is the acquire
    /// side of the queue's publication: the queue is dereferenced only after it.
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
}
