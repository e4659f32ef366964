//! The mutation points of this crate: every ordering that matters, by name.
//!
//! Each has a must-fail twin in the loom suite (`io_pgtable_models`).

dma_sync::mutation_points! {
    /// Success ordering of the compare-and-swap that installs a new table: releases the
    /// table's zeroed initialisation to every thread that later acquires the descriptor.
    INSTALL_RELEASE: Rmw = "pgtable.install.release";
    /// A writer's acquire on the descriptors it descends through (its loads, and the
    /// failure ordering of the install CAS): the winner's zeroed table is visible before the
    /// loser writes leaves into it.
    DESCENT_ACQUIRE: Load = "pgtable.descent.acquire";
    /// A reader's (translation, debug walk) acquire on the descriptors it follows, pairing
    /// with the install release.
    WALK_ACQUIRE: Load = "pgtable.walk.acquire";
    /// A reader's RCU pin around one whole walk: tables it reaches are not freed before it
    /// unpins.
    READER_PIN: Pin = "pgtable.reader.pin";
    /// Freeing a table level in the order unlink, flush the walk cache, then hand to RCU
    /// (weakened: the table is retired first and unlinked only after the grace period).
    FREE_ORDER: Step = "pgtable.free.order";
    /// Claiming a descriptor by compare-and-swap before unmapping its leaf, taking its table
    /// or writing a leaf into it (weakened: the load, then a plain store, that let two racing
    /// unmaps both take one table and retire it twice).
    CLAIM: Step = "pgtable.claim";
    /// Release on the owner's swaps of a taken table's entries to `DEAD`: a map that finds
    /// `DEAD` and restarts from the root then sees the unlink that preceded it (weakened: it
    /// may keep reading the stale link, find `DEAD` again and restart forever).
    TAKE_RELEASE: Rmw = "pgtable.take.release";
    /// Unlinked tables go back to the slab only through RCU, after a grace period (weakened:
    /// released at once, as a free that bypasses RCU).
    RETIRE_RCU: Step = "pgtable.retire.rcu";
}
