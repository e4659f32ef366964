//! The mutation points of this crate: every lock step whose omission is a bug, by name.
//!
//! The allocator uses no atomics whose ordering carries correctness (statistics live under the
//! per-CPU locks), so every point is a lock step: taking a lock, or doing a multi-step update
//! of cache state within one critical section.

dma_sync::mutation_points! {
    /// Take the per-CPU slot lock before touching a CPU's `loaded`/`prev` magazines (weakened:
    /// two threads on one CPU, or a flush of another CPU, race on the magazines).
    CPU_LOCK: Step = "iova.rcache.cpu_lock";
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
}
