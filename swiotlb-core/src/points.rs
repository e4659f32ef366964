//! The mutation points of this crate: every ordering that matters, by name.
//!
//! Four protocols: the per-device flag with its barrier pairing ("swiotlb: fix the check
//! whether a device has used software IO TLB"), the RCU-published pool lists (the global
//! list of immortal pools, and each device's list of transient pools, freed after a grace
//! period), the release of a mapping by one compare-and-swap of its head slot's metadata, and
//! the per-thread caches of freed runs with their drain and the hand-over of a cache slot when
//! its thread exits (module `thread_cache`). The loom
//! suite weakens each point and shows a model failing.
//!
//! # Points and their must-fail twins
//!
//! | Point | Kind | Twin (loom) | Failure |
//! |---|---|---|---|
//! | `swiotlb.flag.set` | Step | `new_pool_flag_unset` | the receiver finds no pool |
//! | `swiotlb.flag.fence` | Fence | `new_pool_flag_fence_dropped`, `new_pool_flag_set_fence_dropped`, `transient_reuse_flag_fence_dropped` | the receiver finds no pool |
//! | `swiotlb.lookup.rmb` | Fence | `new_pool_lookup_rmb_dropped` | the receiver finds no pool |
//! | `swiotlb.pools.publish` | Store | `new_pool_publish_relaxed` | causality violation (the mapper reads an uninitialised pool) |
//! | `swiotlb.pools.traverse` | Load | `new_pool_traverse_relaxed` | causality violation |
//! | `swiotlb.pools.append_locked` | Step | `growers_append_outside_lock`, `background_append_outside_lock` | a grown pool is lost from the list |
//! | `swiotlb.lookup.pin` | Pin | `transient_lookup_unpinned` | causality violation (the walker reads a freed pool) |
//! | `swiotlb.transient.link` | Store | `transient_link_relaxed` | the walker reads the new pool uninitialised: its link reads as null and the older pool is missed |
//! | `swiotlb.transient.traverse` | Load | `transient_traverse_relaxed` | as above |
//! | `swiotlb.transient.grace` | GracePeriod | `transient_freed_without_grace` | causality violation |
//! | `swiotlb.release.claim` | Step | `double_unmap_claim_not_atomic` | both unmaps of one mapping succeed |
//! | `swiotlb.release.acquire` | Rmw | `guessed_unmap_claim_relaxed` | a free slot keeps the mapper's metadata |
//! | `swiotlb.meta.publish` | Store | unobservable under loom (below) | in C11, a claim's copy back reads bounce bytes the map has not written yet |
//! | `swiotlb.cache.enter` | Fence | `cache_drain_enter_fence_dropped` | a run is lost (owner and drainer both take it, or the drainer empties a slot the owner just filled) |
//! | `swiotlb.cache.drain` | Fence | `cache_drain_fence_dropped` | as above |
//! | `swiotlb.cache.exit` | Store | `cache_drain_exit_relaxed` | as above |
//! | `swiotlb.cache.wait` | Load | `cache_drain_wait_relaxed` | as above |
//! | `swiotlb.cache.reopen` | Store | `cache_drain_reopen_relaxed` | as above (the owner sees its slot reopened but still holding the drained run) |
//! | `swiotlb.cache.reopened` | Load | `cache_drain_reopened_relaxed` | as above |
//! | `swiotlb.cache.disown` | Store | `cache_exit_disown_relaxed` | a run is lost (the next owner of an exited thread's slot does not see the run cached in it and overwrites it) |
//! | `swiotlb.cache.claim` | Rmw | unobservable under loom (below) | in C11, as above |
//!
//! `swiotlb.meta.publish` is declared unobservable: a map publishes its mapping once it has
//! copied the original in, after the release fence of `swiotlb.flag.fence`, which already
//! carries the other slots' metadata to a claim that acquires the head word (a Relaxed
//! publication passes `guessed_unmap`, checked). What only the publication's release orders
//! is the copy in, so that a bogus unmap claiming the mapping copies back the map's bytes, and
//! the bounce bytes are untracked atomics under loom (module `shared`); `guessed_copy_back`
//! fails a publication made with the record, and the crate's
//! `hostile::a_map_still_copying_in_cannot_be_unmapped` one made right before the copy.
//!
//! `swiotlb.cache.claim` is declared unobservable too. Under loom, every path from a
//! claim to the slot's run passes a full fence (the section's light fence, and the RCU pins
//! of the map's and unmap's lookups, are `fence(SeqCst)` there), and an acquire fence after a
//! Relaxed claim that read the give-back orders it just as well: a Relaxed claim passes
//! `cache_exit` (checked). In production those fences are compiler fences that order only
//! against a membarrier on the other side, which an exiting thread does not issue, so the
//! claim keeps its acquire. The area locks are `dma_sync::SpinLock`s: their acquire
//! and release are dma-sync's own points (`sync.spin.acquire`, `sync.spin.release`), whose
//! twins are the spin-lock models of `dma_sync_shim`; the area models below run them. The
//! cache's two fences are `dma_sync::asymmetric`'s pair (a compiler fence against the drain's
//! membarrier), both `fence(SeqCst)` under loom.
//!
//! # Loom models
//!
//! In `loom-tests/tests/loom/swiotlb_models.rs` (and `swiotlb_growth_models.rs` for the two
//! growth models); they run the real code with segments of 4 slots.
//!
//! | Model | Shape | Bound and why |
//! |---|---|---|
//! | `area_shared` | 2 threads map/bounce/unmap in one area of an 8-slot pool | Preemptions(3): the shared state is the area lock and counters; 3 preemptions place each thread's search, copy and release anywhere in the other's |
//! | `area_crossing` | 2 CPUs, 2 areas; one thread fills its area and falls back to the other | Preemptions(3), as above |
//! | `area_cached_run` | 2 threads bounce 2 and 3 slots in one 4-slot area: the cached run is taken, displaced, or merged back for the larger map; a full area gives a transient pool | Preemptions(3), as above |
//! | `cache_drain` | an owner bounces the whole 4-slot pool twice (its second map takes the run its unmap cached) while another thread's 2-slot map drains its cache or, while the run is live, gets a transient pool | Preemptions(3): one owner section against one drain needs 2 (the close-and-fence inside a section, the take-and-reopen before the next); every twin is caught at 2; 4 passes in ≈250 s |
//! | `cache_exit` | a thread bounces 4 slots of an 8-slot pool and exits with the run cached; another bounces 2 slots (in the exited thread's slot if it claims it after the exit: its unmap displaces the inherited run) then 6 (no room while a run is cached: a drain, or a transient pool while the first run is live) | Preemptions(2): the claim before or after the exit and inside its sections, the drain inside the exiting thread's unmap |
//! | `double_unmap` | 2 threads unmap one 2-slot mapping: exactly one succeeds | exhaustive (2 threads, one claim each) |
//! | `guessed_unmap` | a thread unmaps every address a 2-slot mapping could start at while another maps it (no hand-off: only the head word orders them); no free slot keeps metadata | exhaustive |
//! | `new_pool` | the new-pool litmus on the real code: P0 `grow_by`, P1 maps (default pool full, held by another device) and hands the address over a Relaxed atomic, P2 `is_bounce_buffer` | Preemptions(4) (twins 3): the litmus needs at most 2 (P2 between P1's flag store and hand-off; P1's traversal right after P0's publication); 8 take 86 s with the same verdict |
//! | `new_pool_flag_already_set` | `new_pool` with P1's device flag set by an earlier map: the fence alone carries P0's publication to P2 | Preemptions(3), as `new_pool` |
//! | `transient_add` | a map links a transient pool while another thread walks the list | exhaustive (2 threads) |
//! | `transient_free` | unmap of a transient pool (unlink + grace period) while a lookup of the same device walks past it | exhaustive |
//! | `transient_reuse` | unmap, new transient map, Relaxed hand-off; the receiver must find the new pool and never touch the freed one | exhaustive |
//! | `transient_unlink_head` | 3 threads: a mapper links Q then B above it and hands B's address on; an unmapper already in a read section of its own unmaps B (the unlink writes the head, `transients = Q`); a walker checks the address of a pool P linked before the threads start, reached only through Q | Preemptions(2): the walker's walk anywhere in the unmap, both pins before or after either map; 3 passes too (≈90 s) |
//! | `two_growers` | 3 threads: two `grow_by` callers and a mapper; afterwards every pool is linked once and the slot counter matches the list | Preemptions(4): one grower stopped between its tail search and its append while the other appends, the mapper's search inside either, and the mapper again between its map and its unmap |
//! | `grower_vs_background` | a failed search starts the background worker (`grow`, a thread the library spawns) while another thread calls `grow_by`: 4 threads; the main thread waits for the worker through its Relaxed "in progress" flag and a few yields, so only the list, not the Relaxed slot counter, is checked | Preemptions(3): the two appends interleave at their tail searches, and the mapper's failed search stops before it starts the worker |
//!
//! `new_pool_seqcst_fence_adds_nothing` runs `new_pool` with the flag fence made SeqCst: it
//! still passes, so a full fence adds nothing. The racing parties are always spawned threads
//! (loom's DPOR missed interleavings when the walker ran on the model's main thread). A
//! pool's `contains` always performs both bound loads: under loom the sequence of atomic
//! operations must not depend on where the allocator placed a pool, or loom reports a
//! non-deterministic model. "A transient pool freed while another device's lookup runs" is
//! modelled with a lookup of the same device:
//! another device's lookup never touches this device's list.

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
    /// A release claims its mapping with one compare-and-swap of the head slot's metadata
    /// word, so of two racing releases exactly one wins (weakened: a load, a compare and a
    /// store, and both can win).
    RELEASE_CLAIM: Step = "swiotlb.release.claim";
    /// Acquire on that compare-and-swap: the releaser's clearing of the other slots follows
    /// the mapper's writes of them (pairs with `swiotlb.meta.publish`).
    RELEASE_CLAIM_ACQUIRE: Rmw = "swiotlb.release.acquire";
    /// A map writes its head slot's metadata last, once it has filled the bounce buffer, with
    /// release: whoever claims the mapping sees the other slots' metadata and the bytes the
    /// map copied in (a claim given back writes it again the same way).
    META_PUBLISH: Store = "swiotlb.meta.publish"
        unobservable "the map's release fence (swiotlb.flag.fence) lies between its record of the other slots and the publication, so a Relaxed publication still carries the metadata to an acquiring claim; what only the publication orders are the bounce bytes copied in after that fence, which are untracked atomics under loom";
    /// A thread's cache section: the full fence (made light by the drainer's membarrier)
    /// between the store announcing the section and the load of the slot's `closed` flag.
    CACHE_ENTER: Fence = "swiotlb.cache.enter";
    /// A drain: the full fence (membarrier) between closing every slot and reading which
    /// owners are inside a section.
    CACHE_DRAIN: Fence = "swiotlb.cache.drain";
    /// The release store ending a cache section: the drainer that sees it sees the run and
    /// pool the section wrote.
    CACHE_EXIT: Store = "swiotlb.cache.exit";
    /// The drainer's acquire load of an owner's section flag (pairs with `swiotlb.cache.exit`).
    CACHE_WAIT: Load = "swiotlb.cache.wait";
    /// The release store reopening a drained slot: an owner that sees it open sees it emptied.
    CACHE_REOPEN: Store = "swiotlb.cache.reopen";
    /// The owner's acquire load of its slot's `closed` flag (pairs with `swiotlb.cache.reopen`).
    CACHE_REOPENED: Load = "swiotlb.cache.reopened";
    /// The release store of 0 in a slot's `owner` when its thread exits: the next claimer
    /// sees the run and pool the exiting thread cached in it.
    CACHE_DISOWN: Store = "swiotlb.cache.disown";
    /// The acquire compare-and-swap claiming a free slot (pairs with `swiotlb.cache.disown`).
    CACHE_CLAIM: Rmw = "swiotlb.cache.claim"
        unobservable "under loom the full fences between a claim and the slot's run (the section's light fence, the lookups' RCU pins) order a Relaxed claim; in production they are compiler fences";
}
