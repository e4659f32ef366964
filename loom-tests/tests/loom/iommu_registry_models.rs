//! dma-iommu: the registry of live mappings, on the real `Registry`.
//!
//! A shard's inline slot is claimed by compare-and-swap of its key word (an insert from empty,
//! a take from the live address), the record is written or read by the claimer alone, and the
//! key is stored again with release (the address published, the slot emptied, or the address
//! put back by a take that found another device's or another size's record). A mapping whose
//! shard's slot is taken goes to the shard's locked table. The record is a loom cell, so an
//! access not ordered after the previous owner's is a "Causality violation".
//!
//! Geometry: one CPU, so two shards (loom builds) and 4 KiB granules; `neighbours` picks two
//! DMA addresses in one shard. Bound: exhaustive (two threads, a few operations each; a take
//! that finds the slot claimed yields until it is not).

use dma_iommu::points::{REGISTRY_CLAIM, REGISTRY_PUBLISH, REGISTRY_VACATE};
use dma_iommu::registry::{Counts, Expect, Held, Kind, Record, Registry, Taken};
use dma_iommu::DmaError;
use dma_sync::mutation::Weakening;
use dma_sync::thread::spawn;
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

/// A registry of two shards and two DMA addresses (pfns from 1 up) that share one.
fn registry() -> (Arc<Registry>, u64, u64) {
    let r = Registry::new(1, SHIFT);
    let a = 1 << SHIFT;
    let b = (2..)
        .map(|pfn| pfn << SHIFT)
        .find(|&b| r.shard(b) == r.shard(a))
        .expect("two shards: a neighbour among the next pfns");
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

/// A take of one mapping races with the insert of a neighbour in the same shard: the insert
/// lands inline when the take emptied the slot first, in the table otherwise, and both
/// mappings are found. Outcome: whether the neighbour went inline.
fn take_vs_neighbour_insert() -> bool {
    let (r, a, b) = registry();
    r.insert(a, rec(1)).unwrap();
    let insert = {
        let r = r.clone();
        spawn(move || r.insert(b, rec(1)))
    };
    assert_eq!(r.take(a, expect(1)), Ok(TAKEN));
    insert.join().unwrap().unwrap();
    let inline = r.is_inline(b);
    assert_eq!(r.counts(), counts(2, 1));
    assert_eq!(r.take(b, expect(1)), Ok(TAKEN));
    assert_eq!(r.take(a, expect(1)), Err(DmaError::NotMapped { dma: a }));
    assert_eq!(r.counts(), counts(2, 0));
    inline
}

#[test]
fn registry_take_vs_neighbour_insert_passes() {
    // Both places are reached: the insert falls back to the table while the slot is held.
    let seen = outcomes(Bound::Exhaustive, take_vs_neighbour_insert);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [false, true]);
}

/// Two neighbours are inserted at once into an empty shard: one claims the slot, the other
/// goes to the table, and neither is lost.
fn neighbour_inserts() {
    let (r, a, b) = registry();
    let other = {
        let r = r.clone();
        spawn(move || r.insert(b, rec(2)))
    };
    r.insert(a, rec(1)).unwrap();
    other.join().unwrap().unwrap();
    assert!(
        r.is_inline(a) != r.is_inline(b),
        "one inline, one in the table"
    );
    assert_eq!(r.take(a, expect(1)), Ok(TAKEN));
    assert_eq!(r.take(b, expect(2)), Ok(TAKEN));
    assert_eq!(r.counts(), counts(2, 0));
}

#[test]
fn registry_neighbour_inserts_pass() {
    loom_tests::harness::check(Bound::Exhaustive, neighbour_inserts);
}

/// A take guesses the address of a mapping being inserted: it finds nothing yet, or the whole
/// record. Outcome: whether it took it.
fn insert_vs_take() -> bool {
    let (r, a, _) = registry();
    let insert = {
        let r = r.clone();
        spawn(move || r.insert(a, rec(1)))
    };
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
    /// The take empties the slot with a Relaxed store: the neighbour's insert writes the
    /// record while the take may still be reading it.
    fn registry_vacate_relaxed: REGISTRY_VACATE, Weakening::Relax, "Causality violation",
        Bound::Exhaustive, || { take_vs_neighbour_insert(); };
}

must_fail_test! {
    /// The neighbour's insert claims with a Relaxed compare-and-swap: it writes the record
    /// while the take may still be reading it.
    fn registry_claim_relaxed_on_insert: REGISTRY_CLAIM, Weakening::Relax, "Causality violation",
        Bound::Exhaustive, || { take_vs_neighbour_insert(); };
}
