//! The mutation points of this crate: every lock step whose omission is a bug, by name.
//!
//! Most points are lock steps: taking a lock, or doing a multi-step update of cache state
//! within one critical section. The atomics whose ordering carries correctness are the CPU
//! slots' spin lock and the lazily published nodes of the held-range bitmap.
//!
//! # Points and their must-fail twins
//!
//! | Point | Kind | Weakened | Twin | Model | Failure |
//! |---|---|---|---|---|---|
//! | `iova.rcache.cpu_lock` | Step | a slot cell accessed without its lock | `cpu_slot_unlocked`, `free_batch_slot_unlocked` | `one_cpu_two_threads`, `free_batch_vs_flush_all` | causality violation |
//! | `iova.rcache.depot_lock` | Step | the depot accessed without its lock | `depot_unlocked`, `flush_all_depot_unlocked` | `two_cpus_depot_exchange`, `flush_all_vs_depot_traffic` | causality violation |
//! | `iova.tree.lock` | Step | the tree accessed without its lock | `tree_unlocked` | `trim_races_insert` | causality violation |
//! | `iova.rcache.depot_exchange_locked` | Step | the slot unlocked around the depot fetch; the fetched magazine overwrites `loaded` | `depot_exchange_split` | `one_cpu_two_threads` | IOVA conservation broken (a same-CPU free is lost) |
//! | `iova.rcache.flush_take_locked` | Step | a flush copies the pfns, frees them, empties the slot later | `flush_copy_then_clear`, `flush_all_copy_then_clear`, `reserve_flush_copy_then_clear`, `free_batch_flush_copy_then_clear` | `flush_on_failure_races_free`, `flush_all_vs_depot_traffic`, `reserve_vs_depot_traffic`, `free_batch_vs_flush_all` | IOVA conservation broken |
//! | `iova.alloc.flush_retry` | Step | no flush-and-retry on failure | `no_flush_retry` | `flush_on_failure_races_free` | false no space |
//! | `iova.rcache.slot_lock_acquire` | Rmw | the slot lock's CAS Relaxed | `slot_lock_relaxed_acquire` | `one_cpu_two_threads` | causality violation |
//! | `iova.rcache.slot_unlock_release` | Store | the slot unlock store Relaxed | `slot_unlock_relaxed` | `one_cpu_two_threads` | causality violation |
//! | `iova.held.node_publish` | Rmw | a bitmap node installed by a Relaxed CAS | `held_node_relaxed_publish` | `checked_claims_publish_nodes` | causality violation |
//! | `iova.held.node_load` | Load | a bitmap child pointer read Relaxed | `held_node_relaxed_load` | `checked_claims_publish_nodes` | causality violation |
//! | `iova.held.release_atomic` | Step | a checked free tests and clears the bit as load + store | `held_release_split` | `checked_free_races_double_free` | one range freed twice |
//! | `iova.thread.enter` | Fence | the section's fence dropped | `thread_enter_fence_dropped`, `thread_batch_enter_fence_dropped` | `thread_hit_vs_drain`, `thread_batch_vs_drain` | IOVA conservation broken (a section and a drain both take the range) |
//! | `iova.thread.drain` | Fence | the drain's fence dropped | `thread_drain_fence_dropped` | `thread_hit_vs_drain` | as above |
//! | `iova.thread.exit` | Store | the section's end Relaxed | `thread_exit_relaxed` | `thread_hit_vs_drain` | as above |
//! | `iova.thread.wait` | Load | the drainer's wait Relaxed | `thread_wait_relaxed` | `thread_hit_vs_drain` | as above |
//! | `iova.thread.reopen` | Store | the reopen Relaxed | `thread_reopen_relaxed` | `thread_hit_vs_drain` | as above |
//! | `iova.thread.reopened` | Load | the owner's read of `closed` Relaxed | `thread_reopened_relaxed` | `thread_hit_vs_drain` | as above |
//! | `iova.thread.disown` | Store | the exit's give-back Relaxed | `thread_disown_relaxed` | `thread_exit_handback` | IOVA conservation broken (the parked range is lost) |
//! | `iova.thread.claim` | Rmw | unobservable under loom (its reason) | - | - | in C11, as above |
//!
//! A mutant by hand (not a point): the spin lock's contended path returning after one failed
//! retry without the lock fails `one_cpu_two_threads` and `flush_on_failure_races_free` with a
//! causality violation.
//!
//! # Loom models
//!
//! In `loom-tests/tests/loom/iova_models.rs`, `iova_flush_models.rs` (thread caches off, so
//! frees reach the magazines) and `iova_thread_models.rs` (thread caches on); real code, tiny
//! configurations (1-2 CPU slots, magazines of 1-2, 2-16 granules), every model with
//! `checked_frees` on (the default), so the ownership check is part of every interleaving.
//! Invariants: an oracle of user-held pfns panics on a second hand-out; after join and
//! `flush_all` the tree's live set equals the held set (else "lost" / "held but free"); the range
//! allocator's invariant checker passes; a model that must allocate after flush-and-retry does;
//! loom itself reports deadlocks (lock order) and unsynchronised cell accesses.
//!
//! | Model | Bound | Why |
//! |---|---|---|
//! | `one_cpu_two_threads`: depot exchange vs same-CPU free | exhaustive | small |
//! | `two_cpus_depot_exchange`: CPU 0 pushes a magazine, CPU 1 pulls | exhaustive | small |
//! | `trim_races_insert`: trim pass vs free (depot push) + tree alloc | exhaustive | small |
//! | `flush_on_failure_races_free`: 2-granule space, CPU 0 flush-and-retry vs CPU 1 free + alloc | Preemptions(6) | exhaustive takes over 100 s; 6 preemptions (about a second of CPU) place the flush's take/free window of each slot and the retry anywhere in the other CPU's free and alloc |
//! | `checked_claims_publish_nodes`: two CPUs claim in an empty bitmap (two interior levels in models), free, free again (refused) | Preemptions(4) | exhaustive takes about 90 s; the publish race needs ≤ 2 preemptions, an unsynchronised reader none; 4 also stop either thread between its free and its refused second free |
//! | `checked_free_races_double_free`: two CPUs free one held range at once | exhaustive | small; exactly one free succeeds |
//! | `flush_all_vs_depot_traffic`: CPU 0 frees three (pushing a magazine to the depot), CPU 1 allocates twice (depot exchange), a third thread runs `flush_all` | Preemptions(3) | three threads; the flush stopped inside a slot's window or between slots and depot, both users between a slot and the depot |
//! | `free_batch_vs_flush_all`: as the model above with CPU 0's three frees as one `free_batch` (its pushes, swap and depot trade under one hold of the slot lock) | Preemptions(3) | as above; the flush stopped inside or around the batch's one critical section, the allocations between a slot and a depot exchange |
//! | `flush_all_returns_what_was_cached`: one CPU slot holds two cached ranges while a thread on that CPU frees a third (pushing a magazine to the depot) during a `flush_all`; both ranges must be free when it returns | exhaustive | small; the promise flush-and-retry and `reserve` rely on |
//! | `thread_hit_vs_drain`: one granule; its owner allocates and frees it twice (the second allocation a thread-cache hit) while another thread's allocation flushes (draining the owner's cache) and retries, and must succeed once the owner is done | Preemptions(2) | the drain's close and fence inside either owner section, its take and reopen before the next; about a second |
//! | `thread_batch_vs_drain`: two granules; their owner allocates both, hands them back with one `free_batch` (both on its slot's stack), allocates one again (a stack hit) and frees it, while another thread's allocation flushes (draining the stack) and retries, and must succeed once the owner is done | Preemptions(2) | the drain's close and fence inside the batch free's section or the stack hit's, its take and reopen before the next; under a second |
//! | `thread_exit_handback`: two granules; a thread parks one and exits while its heir allocates and frees (claiming the given-back slot, or the other) | Preemptions(2) | the heir's claim before or after the exit and inside its sections |
//! | `reserve_vs_depot_traffic`: `reserve` of two pfns (one cached on CPU 0, one held on CPU 1) while CPU 1 frees three and allocates once | Preemptions(5) (twin 3) | about 2 s; the reservation stopped between each of its flush steps and its carve, the user between any two of its operations |

dma_sync::mutation_points! {
    /// Take the per-CPU slot lock before touching a CPU's `loaded`/`prev` magazines (weakened:
    /// two threads on one CPU, or a flush of another CPU, race on the magazines).
    CPU_LOCK: Step = "iova.rcache.cpu_lock";
    /// The slot spin lock is taken with an acquire compare-and-swap (weakened: the next holder does not
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
    /// A thread-cache section: the full fence (made light by the drainer's membarrier)
    /// between announcing the section and loading the slot's `closed` flag (weakened: a
    /// section and a drain both take the cached range).
    THREAD_ENTER: Fence = "iova.thread.enter";
    /// A drain: the full fence (membarrier) between closing every slot and reading which
    /// owners are inside a section.
    THREAD_DRAIN: Fence = "iova.thread.drain";
    /// The release store ending a section: the drainer that sees it sees the slot's word.
    THREAD_EXIT: Store = "iova.thread.exit";
    /// The drainer's acquire load of an owner's section flag (pairs with `iova.thread.exit`).
    THREAD_WAIT: Load = "iova.thread.wait";
    /// The release store reopening a drained slot: an owner that sees it open sees it emptied.
    THREAD_REOPEN: Store = "iova.thread.reopen";
    /// The owner's acquire load of its slot's `closed` flag (pairs with `iova.thread.reopen`).
    THREAD_REOPENED: Load = "iova.thread.reopened";
    /// The release store of 0 in a slot's owner word when its thread exits: the next claimer
    /// sees the range the exiting thread cached.
    THREAD_DISOWN: Store = "iova.thread.disown";
    /// The acquire compare-and-swap claiming a free slot (pairs with `iova.thread.disown`).
    THREAD_CLAIM: Rmw = "iova.thread.claim"
        unobservable "under loom the section's light fence is a full fence after the claim, so a Relaxed claim that reads the exiting owner's release store still synchronises with it; in production that fence is a compiler fence";
}

/// The thread caches' names for the orderings of `dma_sync::thread_slots` (public for the
/// protocol's own loom models, which run it under these names).
pub static THREAD_SLOTS: dma_sync::thread_slots::SlotPoints = dma_sync::thread_slots::SlotPoints {
    enter: &THREAD_ENTER,
    drain: &THREAD_DRAIN,
    exit: &THREAD_EXIT,
    wait: &THREAD_WAIT,
    reopen: &THREAD_REOPEN,
    reopened: &THREAD_REOPENED,
    disown: &THREAD_DISOWN,
    claim: &THREAD_CLAIM,
};
