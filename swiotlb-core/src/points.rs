//! The mutation points of this crate: every ordering that matters, by name.
//!
//! Two protocols: the per-device flag with its barrier pairing ("swiotlb: fix the check
//! whether a device has used software IO TLB"), and the RCU-published pool lists (the global
//! list of immortal pools, and each device's list of transient pools, freed after a grace
//! period). The loom suite weakens each point and shows a model failing.

dma_sync::mutation_points! {
    /// Map sets the device's sticky "uses bounce buffers" flag after a successful search
    /// (weakened: the store is skipped, lookups skip the device).
    FLAG_SET: Step = "swiotlb.flag.set";
    /// Release fence after the flag store, on every map: orders the mapper's reads of the pool
    /// lists and its flag store before the caller hands the bounce address on (the kernel's
    /// `smp_mb`; in C11 a release fence suffices); pairs with `swiotlb.lookup.rmb`.
    FLAG_FENCE: Fence = "swiotlb.flag.fence";
    /// Acquire fence at the start of a lookup, before the flag check (kernel `smp_rmb`): the
    /// bounce address the caller already holds is ordered before the flag and list reads.
    LOOKUP_RMB: Fence = "swiotlb.lookup.rmb";
    /// Release store publishing a new global pool at the tail of the pool list
    /// (`rcu_assign_pointer`).
    POOLS_PUBLISH: Store = "swiotlb.pools.publish";
    /// A grower finds the list's tail and appends its pool in one critical section of the
    /// writer lock (weakened: the section ends after the search, so two growers can append to
    /// the same tail and one pool is lost).
    POOLS_APPEND_LOCKED: Step = "swiotlb.pools.append_locked";
    /// Acquire loads of the global pool list's pointers (`rcu_dereference`).
    POOLS_TRAVERSE: Load = "swiotlb.pools.traverse";
    /// RCU pin around a walk of a device's transient pools, held while a found pool is used.
    LOOKUP_PIN: Pin = "swiotlb.lookup.pin";
    /// Release stores linking or unlinking a transient pool in a device's list.
    TRANSIENT_LINK: Store = "swiotlb.transient.link";
    /// Acquire loads of a device's transient-list pointers.
    TRANSIENT_TRAVERSE: Load = "swiotlb.transient.traverse";
    /// An unlinked transient pool is freed only after a grace period (weakened: at once).
    TRANSIENT_GRACE: GracePeriod = "swiotlb.transient.grace";
}
