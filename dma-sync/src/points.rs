//! The mutation points of dma-sync itself: the orderings of the loom RCU shim, of
//! `rcu::synchronize` and of the spin lock.
//!
//! Under loom, [`crate::rcu`] is a fence-based RCU whose every ordering is a point here, so the
//! models of the page table and the pool lists can show that each one is needed. The
//! production epoch collector uses the same RCU points where it has the same ordering, and the
//! points of [`epoch`] for its own; its twins run in the `production_rcu` loom binary.

crate::mutation_points! {
    /// A reader registers itself before reading published pointers (weakened: the guard
    /// protects nothing).
    RCU_PIN: Pin = "rcu.pin";
    /// Full fence between a reader's registration and its first load of a published pointer;
    /// pairs with `rcu.sync.fence` in the store-buffering shape of RCU.
    RCU_PIN_FENCE: Fence = "rcu.pin.fence";
    /// Release store of a reader's departure, so its reads happen before a later free.
    RCU_UNPIN_RELEASE: Store = "rcu.unpin.release";
    /// Full fence between the updater's unlink and its scan of the readers.
    RCU_SYNC_FENCE: Fence = "rcu.sync.fence";
    /// Acquire load of a reader's registration in the grace-period scan; pairs with
    /// `rcu.unpin.release`.
    RCU_SYNC_ACQUIRE: Load = "rcu.sync.acquire";
    /// The grace period itself: a retired object is freed only after every registered reader
    /// has left (weakened: freed at once).
    RCU_GRACE_PERIOD: GracePeriod = "rcu.grace_period";
    /// Release store of "grace period over" by whichever thread frees `rcu::synchronize`'s
    /// token.
    RCU_SYNCHRONIZE_DONE_RELEASE: Store = "rcu.synchronize.done.release";
    /// Acquire load of "grace period over" in `rcu::synchronize`'s wait loop; pairs with
    /// `rcu.synchronize.done.release`, so the waiter happens after every section it waited for.
    RCU_SYNCHRONIZE_DONE_ACQUIRE: Load = "rcu.synchronize.done.acquire";
    /// Acquire compare-and-swap that takes a [`crate::SpinLock`]: the previous holder's
    /// section happens before the new one.
    SPIN_ACQUIRE: Rmw = "sync.spin.acquire";
    /// Release store that frees a [`crate::SpinLock`]; pairs with `sync.spin.acquire`.
    SPIN_RELEASE: Store = "sync.spin.release";
}

/// The points of the production (epoch) RCU that the loom shim has no counterpart for: they
/// are exercised, and killed, only by the production-RCU loom binary
/// (`--cfg loom --cfg production_rcu`, `loom-tests/tests/production_rcu.rs`). The epoch RCU
/// also uses `rcu.pin`, `rcu.pin.fence`, `rcu.unpin.release`, `rcu.sync.fence` (its heavy
/// fence before the scan), `rcu.sync.acquire` (the acquire fence after it) and
/// `rcu.grace_period` above.
pub mod epoch {
    crate::mutation_points! {
        /// Heavy fence between a writer's unlinks and its load of the epoch that dates the
        /// sealed bag: orders the unlinks before any reader that pins at a later epoch.
        RCU_SEAL_FENCE: Fence = "rcu.seal.fence";
        /// Release on a reader's pin store: a collector that reads this pin, not the unpin
        /// before it, still synchronizes with the end of the thread's previous section.
        RCU_PIN_RELEASE: Store = "rcu.pin.release";
        /// The epoch advances only when every pinned participant is at the current epoch
        /// (weakened: it advances past a lagging reader).
        RCU_ADVANCE_CHECK: GracePeriod = "rcu.advance.check";
        /// Release half of the advance's compare-and-swap: a collector that frees after reading
        /// this advance, without taking the bag lock after it, is ordered after the unpins the
        /// advancing collector's scan read.
        RCU_ADVANCE_RELEASE: Rmw = "rcu.advance.release";
        /// Acquire load of the epoch that decides which bags expired; pairs with
        /// `rcu.advance.release`.
        RCU_EXPIRY_ACQUIRE: Load = "rcu.expiry.acquire";
    }
}
