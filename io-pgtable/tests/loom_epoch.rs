//! The level-freeing protocol against the real crossbeam-epoch, in crossbeam's own loom mode.
//!
//! Production builds free unlinked table levels through crossbeam-epoch (behind
//! `dma_sync::rcu`); the loom suite checks the page table against dma-sync's fence-based RCU
//! model instead. This one focused model checks that crossbeam-epoch itself gives the
//! guarantee the design relies on: a table unlinked from its parent descriptor and deferred
//! is not freed while a pinned walker can still read it. The free poisons every descriptor
//! through loom's `with_mut` and parks the memory, so a walker racing it is reported as a
//! causality violation instead of being real undefined behaviour.
//!
//! Run (an extra command, not part of the workspace suite):
//! `RUSTFLAGS="--cfg loom --cfg crossbeam_loom" cargo test -p io-pgtable --release --features loom-epoch --test loom_epoch`
//!
//! Bound: `Preemptions(2)` with exactly two forced epoch advances (`flush`) by the updater.
//! crossbeam frees a bag only two epochs after it was sealed, so with fewer flushes the free
//! can never overlap the walker and the broken twin passes. Both tests together run in about
//! two seconds in release; the broken twin fails within a few executions.
#![cfg(all(loom, crossbeam_loom, feature = "loom-epoch"))]

use crossbeam_epoch::{self as epoch, Atomic, Collector, Owned, Shared};
use loom::sync::atomic::{AtomicU64, Ordering::*};
use loom::sync::{Arc, Mutex};
use loom::thread::spawn;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A leaf descriptor the walker expects to read (valid page, address 0x5000).
const LEAF: u64 = 0x5000 | 0b11;
/// What a freed table's descriptors are overwritten with.
const POISON: u64 = 0xdead_0000_0000_dead;

/// A two-entry leaf table, as a tiny-granule page table holds them.
struct Table {
    entries: [AtomicU64; 2],
}

/// Freed tables, kept until the execution ends so a racing read is not real UB.
type Graveyard = Arc<Mutex<Vec<Owned<Table>>>>;

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.max_duration = None;
    b.max_permutations = None;
    b
}

/// A walker descends through the parent descriptor and reads the table while an unmapper
/// unlinks it, defers its free and forces two epoch advances.
fn unlink_defer_free_vs_walk(walker_pinned: bool) {
    builder().check(move || {
        let collector = Collector::new();
        let parent: Arc<Atomic<Table>> = Arc::new(Atomic::new(Table {
            entries: [AtomicU64::new(LEAF), AtomicU64::new(0)],
        }));
        let graveyard: Graveyard = Arc::new(Mutex::new(Vec::new()));

        let walker = {
            let (collector, parent) = (collector.clone(), parent.clone());
            spawn(move || {
                let handle = collector.register();
                let pinned;
                let guard = if walker_pinned {
                    pinned = handle.pin();
                    &pinned
                } else {
                    // SAFETY: deliberately wrong in the broken twin: nothing protects the walk.
                    unsafe { epoch::unprotected() }
                };
                let table = parent.load(Acquire, guard);
                // SAFETY: loaded under `guard`; freed only through `defer` after unlinking.
                if let Some(t) = unsafe { table.as_ref() } {
                    assert_eq!(
                        t.entries[0].load(Relaxed),
                        LEAF,
                        "walker read a freed table"
                    );
                }
            })
        };

        let handle = collector.register();
        {
            let guard = handle.pin();
            let old = parent.swap(Shared::null(), AcqRel, &guard);
            let graveyard = graveyard.clone();
            // SAFETY: `old` is unlinked and deferred once; the closure takes ownership.
            unsafe {
                guard.defer_unchecked(move || {
                    let mut table = old.into_owned();
                    for e in table.entries.iter_mut() {
                        e.with_mut(|v| *v = POISON);
                    }
                    graveyard.lock().unwrap().push(table);
                });
            }
        }
        // Two forced epoch advances: the bag becomes collectable and is freed.
        for _ in 0..2 {
            handle.pin().flush();
        }
        walker.join().unwrap();
    });
}

#[test]
fn pinned_walker_never_reads_a_freed_table() {
    unlink_defer_free_vs_walk(true);
}

#[test]
fn unpinned_walker_is_caught() {
    let result = catch_unwind(AssertUnwindSafe(|| unlink_defer_free_vs_walk(false)));
    let msg = match result {
        Ok(()) => panic!("a walker under `unprotected()` was not caught racing the free"),
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    };
    assert!(
        msg.contains("Causality violation"),
        "failed for another reason: {msg}"
    );
}
