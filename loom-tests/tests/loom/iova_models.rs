//! Models of the IOVA magazine cache on the real `iova-cache` code, shrunk to magazines of one
//! or two entries, one or two CPU slots and spaces of a few granules.
//!
//! Invariants, checked by an oracle of user-held pfns and a final accounting:
//! - no pfn is held by two users at once ("IOVA conservation broken: handed out twice");
//! - after the threads join and every cache is flushed, the range allocator holds exactly the
//!   user-held pfns ("IOVA conservation broken: lost" / "...: held but free");
//! - an allocation that must succeed after flush-and-retry does ("false no space");
//! - no deadlock (loom reports one if the lock order CPU slot -> depot -> tree were violated).
//!
//! The lock-step points are killed by data races on the lock-protected cells ("Causality
//! violation"), the multi-step points by the conservation invariants.

use dma_sync::mutation::Weakening;
use dma_sync::Arc;
use iova_cache::{IovaAllocator, IovaConfig, IovaError};
use loom_tests::harness::{check, Bound};
use loom_tests::must_fail_test;
use std::collections::BTreeSet;
use std::sync::Mutex as StdMutex;

/// A tiny cached allocator: `cpus` slots, `mag` entries per magazine, pfns `1..=end`, no trim
/// worker, frees checked as by default (the oracle checks ownership too), no thread caches
/// (so frees reach the magazines these models exercise; `iova_thread_models` has them on).
pub(crate) fn tiny(cpus: usize, mag: usize, end: u64) -> Arc<IovaAllocator> {
    let cfg = IovaConfig {
        cpus,
        magazine_size: mag,
        trim_interval: None,
        thread_caches: false,
        ..IovaConfig::with_space(1, end)
    };
    Arc::new(IovaAllocator::new(cfg).expect("valid tiny config"))
}

/// The pfns users hold. Loom runs every model thread on one OS thread and never switches
/// inside this lock, so it never blocks.
#[derive(Clone, Default)]
pub(crate) struct Oracle(std::sync::Arc<StdMutex<BTreeSet<u64>>>);

impl Oracle {
    fn got(&self, pfn: u64) -> u64 {
        let fresh = self.0.lock().unwrap().insert(pfn);
        assert!(
            fresh,
            "IOVA conservation broken: handed out twice: pfn {pfn}"
        );
        pfn
    }

    pub(crate) fn alloc(&self, a: &IovaAllocator, size: u64) -> Result<u64, IovaError> {
        a.alloc(size, a.config().end_pfn).map(|p| self.got(p))
    }

    pub(crate) fn holds(&self, pfn: u64) -> bool {
        self.0.lock().unwrap().contains(&pfn)
    }

    pub(crate) fn free(&self, a: &IovaAllocator, pfn: u64, size: u64) {
        assert!(
            self.0.lock().unwrap().remove(&pfn),
            "freeing a pfn the model does not hold"
        );
        a.free(pfn, size).expect("freeing a held pfn succeeds");
    }

    /// Free single granules `pfns` with one `free_batch`.
    pub(crate) fn free_batch(&self, a: &IovaAllocator, pfns: &[u64]) {
        for pfn in pfns {
            assert!(
                self.0.lock().unwrap().remove(pfn),
                "freeing a pfn the model does not hold"
            );
        }
        a.free_batch(pfns.iter().map(|&p| (p, 1)))
            .expect("freeing held pfns succeeds");
    }

    /// Flush every cache and compare the allocator's live ranges with the held pfns.
    pub(crate) fn settle(&self, a: &IovaAllocator) {
        a.flush_all();
        let live: BTreeSet<u64> = a.allocated_ranges().into_iter().map(|(p, _)| p).collect();
        let held = self.0.lock().unwrap().clone();
        if let Some(p) = live.difference(&held).next() {
            panic!("IOVA conservation broken: lost: pfn {p} is allocated but nobody holds it");
        }
        if let Some(p) = held.difference(&live).next() {
            panic!("IOVA conservation broken: held but free: pfn {p}");
        }
        assert_eq!(
            a.stats().cached_granules(),
            0,
            "flush_all left ranges cached"
        );
        a.check_invariants().expect("range allocator consistent");
    }
}

pub(crate) fn on_cpu(cpu: usize) {
    dma_sync::cpu::set_current(Some(cpu));
}

/// Two threads on one CPU: one takes the last cached range, which needs a depot exchange,
/// while the other frees into the same slot.
///
/// Setup (mag = 1): the slot's magazines are empty and the depot holds one full magazine.
/// Exhaustive (about 0.02 s): two threads with a handful of lock steps each; the depot
/// exchange window needs a single preemption, so any bound >= 1 finds the weakened variants.
fn one_cpu_two_threads() {
    let a = tiny(1, 1, 8);
    let o = Oracle::default();
    let p: Vec<u64> = (0..5).map(|_| o.alloc(&a, 1).unwrap()).collect();
    // Frees fill loaded, then prev, then push a full magazine to the depot.
    for &x in &p[..3] {
        o.free(&a, x, 1);
    }
    // Two hits empty the slot again; the depot keeps its magazine.
    o.alloc(&a, 1).unwrap();
    o.alloc(&a, 1).unwrap();
    let to_free = p[3];
    let (a1, o1) = (a.clone(), o.clone());
    let t1 = dma_sync::thread::spawn(move || {
        on_cpu(0);
        o1.alloc(&a1, 1)
            .expect("the depot magazine or the tree serves it");
    });
    let (a2, o2) = (a.clone(), o.clone());
    let t2 = dma_sync::thread::spawn(move || {
        on_cpu(0);
        o2.free(&a2, to_free, 1);
    });
    t1.join().unwrap();
    t2.join().unwrap();
    o.settle(&a);
}

#[test]
fn one_cpu_two_threads_passes() {
    check(Bound::Exhaustive, one_cpu_two_threads);
}

/// Two CPUs exchanging magazines through the depot: CPU 0 frees three ranges (the third
/// pushes a full magazine to the depot) while CPU 1, with empty magazines, allocates twice
/// (taking that magazine from the depot, or going to the tree).
/// Exhaustive: two threads with three short operations each (about 0.01 s).
fn two_cpus_depot_exchange() {
    let a = tiny(2, 1, 8);
    let o = Oracle::default();
    let p: Vec<u64> = (0..3).map(|_| o.alloc(&a, 1).unwrap()).collect();
    let (a1, o1) = (a.clone(), o.clone());
    let t1 = dma_sync::thread::spawn(move || {
        on_cpu(0);
        for &x in &p {
            o1.free(&a1, x, 1);
        }
    });
    let (a2, o2) = (a.clone(), o.clone());
    let t2 = dma_sync::thread::spawn(move || {
        on_cpu(1);
        o2.alloc(&a2, 1).expect("space left");
        o2.alloc(&a2, 1).expect("space left");
    });
    t1.join().unwrap();
    t2.join().unwrap();
    o.settle(&a);
}

#[test]
fn two_cpus_depot_exchange_passes() {
    check(Bound::Exhaustive, two_cpus_depot_exchange);
}

/// A trim racing with inserts: the depot holds two full magazines on a one-slot machine, so a
/// trim pass returns one to the tree, while a thread frees (pushing another magazine to the
/// depot) and allocates a size class that misses the cache (going to the tree).
/// Exhaustive: two threads, the trim pass being a single depot pop and tree free (about
/// 0.05 s).
fn trim_races_insert() {
    let a = tiny(1, 1, 16);
    let o = Oracle::default();
    let p: Vec<u64> = (0..5).map(|_| o.alloc(&a, 1).unwrap()).collect();
    for &x in &p[..4] {
        o.free(&a, x, 1);
    }
    assert_eq!(a.stats().classes[0].depot_magazines, 2);
    let last = p[4];
    let a1 = a.clone();
    let t1 = dma_sync::thread::spawn(move || {
        on_cpu(0);
        assert_eq!(a1.trim_once(), 1, "the depot exceeds one magazine per CPU");
    });
    let (a2, o2) = (a.clone(), o.clone());
    let t2 = dma_sync::thread::spawn(move || {
        on_cpu(0);
        o2.free(&a2, last, 1);
        o2.alloc(&a2, 2).expect("space left");
    });
    t1.join().unwrap();
    t2.join().unwrap();
    assert!(a.stats().classes[0].depot_magazines <= 2);
    o.settle(&a);
}

#[test]
fn trim_races_insert_passes() {
    check(Bound::Exhaustive, trim_races_insert);
}

/// Flush-on-failure racing with frees: a two-granule space, both granules allocated; one is
/// cached on CPU 1, the other held by a thread on CPU 1 that frees it and allocates again.
/// A thread on CPU 0 finds the tree empty, flushes every cache and retries: it must succeed,
/// since CPU 1's thread never holds more than one granule.
/// Preemptions(6): exhaustive exploration takes over 100 s (two full flush passes over two CPU
/// slots, six classes each); bound 6 (about a second of CPU) lets CPU 1's thread be stopped
/// before and after its free and its allocation while CPU 0's flush is stopped inside each
/// slot's take and before its retry.
fn flush_on_failure_races_free() {
    let a = tiny(2, 2, 2);
    let o = Oracle::default();
    let cached = o.alloc(&a, 1).unwrap();
    let held = o.alloc(&a, 1).unwrap();
    on_cpu(1);
    o.free(&a, cached, 1);
    on_cpu(0);
    let (a1, o1) = (a.clone(), o.clone());
    let t1 = dma_sync::thread::spawn(move || {
        on_cpu(0);
        o1.alloc(&a1, 1).is_ok()
    });
    let (a2, o2) = (a.clone(), o.clone());
    let t2 = dma_sync::thread::spawn(move || {
        on_cpu(1);
        o2.free(&a2, held, 1);
        // May fail transiently while CPU 0's flush carries both granules to the tree.
        let _ = o2.alloc(&a2, 1);
    });
    let t1_ok = t1.join().unwrap();
    t2.join().unwrap();
    o.settle(&a);
    assert!(
        t1_ok,
        "false no space: a granule was free or cached, yet the allocation failed"
    );
}

#[test]
fn flush_on_failure_races_free_passes() {
    check(Bound::Preemptions(6), flush_on_failure_races_free);
}

must_fail_test! {
    /// Without the per-CPU slot lock, two threads on one CPU race on its magazines.
    fn cpu_slot_unlocked: iova_cache::points::CPU_LOCK, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, one_cpu_two_threads;
}

must_fail_test! {
    /// Without the depot lock, a push from CPU 0 and a pop from CPU 1 race on the depot.
    fn depot_unlocked: iova_cache::points::DEPOT_LOCK, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, two_cpus_depot_exchange;
}

must_fail_test! {
    /// Without the tree lock, a trim returning a magazine races an allocation in the tree.
    fn tree_unlocked: iova_cache::points::TREE_LOCK, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, trim_races_insert;
}

must_fail_test! {
    /// Releasing the slot around the depot exchange lets a same-CPU free land in `loaded`
    /// just before the depot magazine replaces it: the freed range is lost.
    fn depot_exchange_split: iova_cache::points::DEPOT_EXCHANGE_LOCKED, Weakening::Relax,
        "IOVA conservation broken", Bound::Exhaustive, one_cpu_two_threads;
}

must_fail_test! {
    /// A flush that copies a slot's pfns, frees them, and empties the slot later either
    /// drops a range freed in between or frees one a user popped in between.
    fn flush_copy_then_clear: iova_cache::points::FLUSH_TAKE_LOCKED, Weakening::Relax,
        "IOVA conservation broken", Bound::Preemptions(4), flush_on_failure_races_free;
}

must_fail_test! {
    /// Without flush-and-retry, a range hoarded in CPU 1's magazine starves CPU 0.
    fn no_flush_retry: iova_cache::points::FLUSH_RETRY, Weakening::Relax,
        "false no space", Bound::Preemptions(4), flush_on_failure_races_free;
}

/// A cached allocator over pfns `1..=end` that records user-held ranges itself
/// (`checked_frees`), one magazine entry per slot.
fn tiny_checked(cpus: usize, end: u64) -> Arc<IovaAllocator> {
    tiny(cpus, 1, end)
}

/// Two CPUs allocate single granules from an empty allocator with checked frees, so both
/// record their range in the held-range bitmap, whose nodes do not exist yet: both may build
/// and publish the same interior node and leaf (in models a leaf covers 64 granules and an
/// interior node has two children, so pfns `1..=255` need two interior levels). Each then
/// frees its range twice; the second free must be refused.
/// Preemptions(4): exhaustive exploration takes about 90 s (each thread also goes through the
/// tree lock and a cache insert); the node race needs two preemptions (both threads find the
/// slot empty before either installs its node, then the loser adopts the winner's), and bound
/// 4 (about a second of CPU) also stops either thread between its free and its refused
/// second free while the other claims or releases.
fn checked_claims_publish_nodes() {
    let a = tiny_checked(2, 255);
    let o = Oracle::default();
    let spawn_on = |cpu: usize| {
        let (a, o) = (a.clone(), o.clone());
        dma_sync::thread::spawn(move || {
            on_cpu(cpu);
            let p = o.alloc(&a, 1).expect("space left");
            o.free(&a, p, 1);
            assert_eq!(
                a.free(p, 1),
                Err(IovaError::NotAllocated { pfn: p }),
                "checked free: a second free of a range is refused"
            );
        })
    };
    let (t1, t2) = (spawn_on(0), spawn_on(1));
    t1.join().unwrap();
    t2.join().unwrap();
    o.settle(&a);
}

#[test]
fn checked_claims_publish_nodes_passes() {
    check(Bound::Preemptions(4), checked_claims_publish_nodes);
}

/// The node race of [`checked_claims_publish_nodes`], with the ranges freed by another thread
/// (the model's main thread, after both allocated): its walk starts at the root, not at a
/// leaf the allocating thread remembers, so it finds each range's record only if both threads
/// recorded it in the one tree everyone walks (a publication that overwrote the other's node
/// would lose that node's records, and a free of its range would be refused). The two ranges
/// are pfns 255 and 253 (the second thread's limit is 253), whose records are bits of one
/// word: a record written by a load and a store instead of one read-modify-
/// write could erase the other's. Each free succeeds once. Preemptions(4), as that model
/// (this one has no frees on the racing threads).
fn checked_claims_published_for_other_threads() {
    let a = tiny_checked(2, 255);
    let alloc_on = |cpu: usize, limit: u64| {
        let a = a.clone();
        dma_sync::thread::spawn(move || {
            on_cpu(cpu);
            a.alloc(1, limit).expect("space left")
        })
    };
    let (t1, t2) = (alloc_on(0, 255), alloc_on(1, 253));
    let held = [t1.join().unwrap(), t2.join().unwrap()];
    assert_eq!(held, [255, 253]);
    for p in held {
        assert_eq!(a.free(p, 1), Ok(()), "the range's record was lost");
        assert_eq!(a.free(p, 1), Err(IovaError::NotAllocated { pfn: p }));
    }
    a.flush_all();
    assert!(a.allocated_ranges().is_empty(), "every range is back");
}

#[test]
fn checked_claims_published_for_other_threads_passes() {
    check(
        Bound::Preemptions(4),
        checked_claims_published_for_other_threads,
    );
}

/// A range held by a user is freed by two threads at once (the second a double free by a
/// buggy caller): exactly one free succeeds, and the range is cached once.
/// Exhaustive: two threads with one bitmap operation and one cache insert each.
fn checked_free_races_double_free() {
    let a = tiny_checked(2, 255);
    let p = a.alloc(1, 255).expect("space left");
    let free_on = |cpu: usize| {
        let a = a.clone();
        dma_sync::thread::spawn(move || {
            on_cpu(cpu);
            a.free(p, 1).is_ok()
        })
    };
    let (t1, t2) = (free_on(0), free_on(1));
    let oks = [t1.join().unwrap(), t2.join().unwrap()];
    assert_eq!(
        oks.iter().filter(|&&ok| ok).count(),
        1,
        "checked free: one range freed twice"
    );
    a.flush_all();
    assert!(
        a.allocated_ranges().is_empty(),
        "the range is back in the tree"
    );
    a.check_invariants().expect("range allocator consistent");
}

#[test]
fn checked_free_races_double_free_passes() {
    check(Bound::Exhaustive, checked_free_races_double_free);
}

must_fail_test! {
    /// A slot lock taken without acquire: the next holder reads the magazines without seeing
    /// the previous holder's writes.
    fn slot_lock_relaxed_acquire: iova_cache::points::SLOT_LOCK_ACQUIRE, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, one_cpu_two_threads;
}

must_fail_test! {
    /// A slot lock released without release: the magazine writes of the critical section are
    /// not published to the next holder.
    fn slot_unlock_relaxed: iova_cache::points::SLOT_UNLOCK_RELEASE, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, one_cpu_two_threads;
}

must_fail_test! {
    /// A bitmap node installed by a relaxed CAS: the other CPU finds it without seeing it
    /// initialised.
    fn held_node_relaxed_publish: iova_cache::points::HELD_NODE_PUBLISH, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), checked_claims_publish_nodes;
}

must_fail_test! {
    /// A bitmap child pointer read relaxed: the node behind it may not be seen initialised.
    fn held_node_relaxed_load: iova_cache::points::HELD_NODE_LOAD, Weakening::Relax,
        "Causality violation", Bound::Preemptions(3), checked_claims_publish_nodes;
}

must_fail_test! {
    /// A checked free that tests and clears the held bit in two steps lets a racing double
    /// free succeed too.
    fn held_release_split: iova_cache::points::HELD_RELEASE_ATOMIC, Weakening::Relax,
        "one range freed twice", Bound::Exhaustive, checked_free_races_double_free;
}
