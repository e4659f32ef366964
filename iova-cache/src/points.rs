//! The mutation points of this crate: every lock step whose omission is a bug, by name.
//!
//! Most points are lock steps: taking a lock, or doing a multi-step update of cache state
//! within one critical section. The atomics whose ordering carries correctness are the CPU
//! slots' spin lock and the lazily published nodes of the held-range bitmap.

dma_sync::mutation_points! {
    /// Take the per-CPU slot lock before touching a CPU's `loaded`/`prev` magazines (weakened:
    /// two threads on one CPU, or a flush of another CPU, race on the magazines).
    CPU_LOCK: Step = "iova.rcache.cpu_lock";
    /// The slot spin lock is taken with an acquire swap (weakened: the next holder does not
    /// see the previous holder's magazine writes).
    SLOT_LOCK_ACQUIRE: Rmw = "iova.rcache.slot_lock_acquire";
    /// The slot spin lock is released with a release store (weakened: the magazine writes of
    /// the critical section are not published to the next holder).
    SLOT_UNLOCK_RELEASE: Store = "iova.rcache.slot_unlock_release";
    /// Take the depot lock before pushing or popping full magazines (weakened: two CPUs
    /// exchanging magazines race on the depot stack).
    DEPOT_LOCK: Step = "iova.rcache.depot_lock";
    /// Take the range-allocator (tree) lock (weakened: a trim or flush returning pfns races an
    /// allocation on the free-range tree).
    TREE_LOCK: Step = "iova.tree.lock";
    /// Keep the per-CPU slot locked while a full magazine is fetched from the depot and
    /// installed as `loaded` (weakened: the slot is unlocked around the depot call and the
    /// fetched magazine overwrites whatever a same-CPU free pushed meanwhile: an IOVA is lost).
    DEPOT_EXCHANGE_LOCKED: Step = "iova.rcache.depot_exchange_locked";
    /// A flush takes a CPU's magazines out of the slot in the same critical section that reads
    /// them (weakened: it copies the pfns, frees them to the tree, and empties the slot in a
    /// second critical section, so a pfn popped in between is both handed out and free).
    FLUSH_TAKE_LOCKED: Step = "iova.rcache.flush_take_locked";
    /// On allocation failure, return every cached range to the tree and retry once
    /// (weakened: ranges hoarded in other CPUs' magazines cause a false "no space").
    FLUSH_RETRY: Step = "iova.alloc.flush_retry";
    /// A node of the held-range bitmap is installed with a release CAS (weakened: a thread
    /// that finds the node may not see it initialised).
    HELD_NODE_PUBLISH: Rmw = "iova.held.node_publish";
    /// A child pointer of the held-range bitmap is read with an acquire load (weakened: the
    /// node behind it may not be seen initialised).
    HELD_NODE_LOAD: Load = "iova.held.node_load";
    /// A checked free tests and clears a range's held bits in one compare-and-swap (weakened:
    /// a load, then a store, so two racing frees of one range both succeed and the range is
    /// cached twice).
    HELD_RELEASE_ATOMIC: Step = "iova.held.release_atomic";
}
