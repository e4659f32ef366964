//! dma-iommu: the registry of live mappings, on the real `Registry`.
//!
//! A record is kept per pfn. An insert (the pfn is its own: the IOVA allocator handed it
//! over) reads the key with acquire until it is empty, writes the record with plain stores
//! and publishes the address with a release store; a take claims the slot by compare-and-swap
//! from the address, reads the record, and stores the key again with release (the slot
//! emptied, or the address put back by a take that found another device's or another size's
//! record). Leaves are allocated by the first insert in their range, under a lock, and found
//! by lock-free acquire loads. The record is a loom cell, so an access not ordered after the
//! previous owner's, or after the leaf's construction, is a "Causality violation".
//!
//! Geometry: 4 KiB granules, leaves of two slots (loom builds), pfns 1 to 7; `a` and `b` are
//! neighbouring pfns in one leaf. Bound: exhaustive (two threads, a few operations each; a
//! thread that waits for a slot yields until it may go on).

use dma_iommu::points::{
    REGISTRY_ADOPT, REGISTRY_CLAIM, REGISTRY_INSTALL, REGISTRY_LOOKUP, REGISTRY_PUBLISH,
    REGISTRY_VACATE,
};
use dma_iommu::registry::{Counts, Expect, Held, Kind, Record, Registry, Taken};
use dma_iommu::DmaError;
use dma_sync::atomic::{AtomicBool, Ordering};
use dma_sync::mutation::Weakening;
use dma_sync::thread::{spawn, yield_now};
use dma_sync::Arc;
use loom_tests::harness::{outcomes, Bound};
use loom_tests::must_fail_test;

const SHIFT: u32 = 12;

fn rec(dev: u64) -> Record {
    Record {
        dev,
        size: 0x1000,
        held: Held::Single,
    }
}

fn expect(dev: u64) -> Expect {
    Expect {
        dev,
        kind: Kind::Single,
        size: 0x1000,
    }
}

const TAKEN: Taken = Taken {
    granules: 1,
    bounce_buffer: None,
};

/// A page at offset 0x10 spans two granules.
const TAKEN_AT_OFFSET: Taken = Taken {
    granules: 2,
    bounce_buffer: None,
};

/// A registry of pfns up to 7 and two DMA addresses in neighbouring pfns of one leaf (not
/// yet allocated).
fn registry() -> (Arc<Registry>, u64, u64) {
    let r = Registry::new(7, SHIFT).unwrap();
    let (a, b) = (2 << SHIFT, 3 << SHIFT);
    assert!(!r.has_leaf(a));
    (Arc::new(r), a, b)
}

fn counts(recorded: u64, live: u64) -> Counts {
    Counts { recorded, live }
}

/// Two takes of one mapping race: exactly one gets the record, the other is `NotMapped`, and
/// the registry is empty after. Outcome: which won.
fn double_take() -> bool {
    let (r, a, _) = registry();
    r.insert(a, rec(1)).unwrap();
    let other = {
        let r = r.clone();
        spawn(move || r.take(a, expect(1)))
    };
    let mine = r.take(a, expect(1));
    let other = other.join().unwrap();
    let won = [&mine, &other].iter().filter(|t| ***t == Ok(TAKEN)).count();
    assert_eq!(won, 1, "exactly one take proceeds: {mine:?}, {other:?}");
    for t in [&mine, &other] {
        assert!(*t == Ok(TAKEN) || *t == Err(DmaError::NotMapped { dma: a }));
    }
    assert_eq!(r.counts(), counts(1, 0));
    mine.is_ok()
}

#[test]
fn registry_double_take_passes() {
    let seen = outcomes(Bound::Exhaustive, double_take);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [false, true]);
}

/// Another device's take races with the owner's: the other device is refused whether it
/// claimed the slot first (and put the address back) or found it empty, and the owner's take
/// always proceeds (it waits while the slot is claimed rather than giving up). Outcome: none
/// (one is asserted).
fn take_vs_wrong_take() {
    let (r, a, _) = registry();
    r.insert(a, rec(1)).unwrap();
    let wrong = {
        let r = r.clone();
        spawn(move || r.take(a, expect(2)))
    };
    assert_eq!(r.take(a, expect(1)), Ok(TAKEN), "the owner's take proceeds");
    assert_eq!(wrong.join().unwrap(), Err(DmaError::NotMapped { dma: a }));
    assert_eq!(r.counts(), counts(1, 0));
}

#[test]
fn registry_take_vs_wrong_take_passes() {
    loom_tests::harness::check(Bound::Exhaustive, take_vs_wrong_take);
}

/// A take of a mapping, then its unmap frees the IOVA and the allocator hands the pfn to
/// another thread, which maps it again (another offset, another device): here the hand-over
/// is a Relaxed flag, so only the registry's own orderings (the take's release of the empty
/// key, the insert's acquire of it) order the new record's write after the take's read. The
/// new mapping is found whole. Outcome: whether the insert had to wait for the empty key.
fn take_vs_reinsert() -> bool {
    let (r, a, _) = registry();
    r.insert(a, rec(1)).unwrap();
    let freed = Arc::new(AtomicBool::new(false));
    let again = a + 0x10;
    let insert = {
        let (r, freed) = (r.clone(), freed.clone());
        spawn(move || {
            while !freed.load(Ordering::Relaxed) {
                yield_now();
            }
            let waited = r.is_live(again >> SHIFT);
            r.insert(again, rec(2)).unwrap();
            waited
        })
    };
    assert_eq!(r.take(a, expect(1)), Ok(TAKEN));
    freed.store(true, Ordering::Relaxed);
    let waited = insert.join().unwrap();
    assert_eq!(r.counts(), counts(2, 1));
    assert_eq!(r.take(a, expect(1)), Err(DmaError::NotMapped { dma: a }));
    assert_eq!(
        r.take(again, expect(1)),
        Err(DmaError::NotMapped { dma: again })
    );
    assert_eq!(r.take(again, expect(2)), Ok(TAKEN_AT_OFFSET));
    assert_eq!(r.counts(), counts(2, 0));
    waited
}

#[test]
fn registry_take_vs_reinsert_passes() {
    // The Relaxed hand-over lets the insert see the old key: it waits for the empty one.
    let seen = outcomes(Bound::Exhaustive, take_vs_reinsert);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [false, true]);
}

/// Two neighbours are inserted at once into a leaf not yet allocated: one allocates it, the
/// other finds it (after the lock, or by its lookup), and neither record is lost. Outcome:
/// whether `b` was recorded when `a`'s insert returned.
fn neighbour_inserts() -> bool {
    let (r, a, b) = registry();
    let other = {
        let r = r.clone();
        spawn(move || r.insert(b, rec(2)))
    };
    r.insert(a, rec(1)).unwrap();
    let first = r.is_live(b >> SHIFT);
    other.join().unwrap().unwrap();
    assert_eq!(r.counts(), counts(2, 2));
    assert_eq!(r.take(a, expect(1)), Ok(TAKEN));
    assert_eq!(r.take(b, expect(2)), Ok(TAKEN));
    assert_eq!(r.counts(), counts(2, 0));
    first
}

#[test]
fn registry_neighbour_inserts_pass() {
    let seen = outcomes(Bound::Exhaustive, neighbour_inserts);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [false, true]);
}

/// A take guesses the address of a mapping being inserted: it finds nothing yet, or the whole
/// record. Outcome: whether it took it.
fn insert_vs_take() -> bool {
    let (r, a, _) = registry();
    let insert = {
        let r = r.clone();
        spawn(move || r.insert(a, rec(1)))
    };
    // Let the insert go first in some executions: the take's first accesses are loads (of
    // the leaf pointers), and loom reorders a load after another thread's later store only
    // when something else makes them dependent (without the yield: only "nothing yet").
    yield_now();
    let guess = r.take(a, expect(1));
    insert.join().unwrap().unwrap();
    match &guess {
        Ok(t) => assert_eq!(*t, TAKEN),
        Err(e) => {
            assert_eq!(*e, DmaError::NotMapped { dma: a });
            assert_eq!(r.take(a, expect(1)), Ok(TAKEN));
        }
    }
    assert_eq!(r.counts(), counts(1, 0));
    guess.is_ok()
}

#[test]
fn registry_insert_vs_take_passes() {
    let seen = outcomes(Bound::Exhaustive, insert_vs_take);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [false, true]);
}

must_fail_test! {
    /// The take claims with a Relaxed compare-and-swap: it reads the record the insert wrote
    /// without the insert's publication ordered before it.
    fn registry_claim_relaxed: REGISTRY_CLAIM, Weakening::Relax, "Causality violation",
        Bound::Exhaustive, || { insert_vs_take(); };
}

must_fail_test! {
    /// The insert publishes the address with a Relaxed store: the take that claims it reads
    /// the record before the insert's write of it.
    fn registry_publish_relaxed: REGISTRY_PUBLISH, Weakening::Relax, "Causality violation",
        Bound::Exhaustive, || { insert_vs_take(); };
}

must_fail_test! {
    /// The take empties the slot with a Relaxed store: the insert that maps the pfn again
    /// writes the record while the take may still be reading it.
    fn registry_vacate_relaxed: REGISTRY_VACATE, Weakening::Relax, "Causality violation",
        Bound::Exhaustive, || { take_vs_reinsert(); };
}

must_fail_test! {
    /// The insert reads the empty key with a Relaxed load: it writes the record while the
    /// previous take may still be reading it.
    fn registry_adopt_relaxed: REGISTRY_ADOPT, Weakening::Relax, "Causality violation",
        Bound::Exhaustive, || { take_vs_reinsert(); };
}

must_fail_test! {
    /// A new leaf's pointer is stored Relaxed: the neighbour's lookup finds it and writes a
    /// record before the leaf's construction.
    fn registry_install_relaxed: REGISTRY_INSTALL, Weakening::Relax, "Causality violation",
        Bound::Exhaustive, || { neighbour_inserts(); };
}

must_fail_test! {
    /// The lookup loads the leaf's pointer Relaxed: the same.
    fn registry_lookup_relaxed: REGISTRY_LOOKUP, Weakening::Relax, "Causality violation",
        Bound::Exhaustive, || { neighbour_inserts(); };
}
