//! The race checkers as stable tests: a scenario that double-retired a table before entries
//! were claimed by compare-and-swap, then proptest-generated scenarios (io-pgtable entries,
//! iova-cache double frees).
#![cfg(not(loom))]

use dma_soak::diff::race;
use proptest::prelude::*;

/// Two threads unmap the same 16 KiB entry, which holds a level-3 table of one page.
const SAME_TABLE_TWICE: &[u8] = &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn racing_unmaps_of_one_table_are_explained() {
    // Enough rounds for the window to open (on the unfixed code it opened at round ~800).
    let rounds = if cfg!(miri) { 2 } else { 5_000 };
    if let Err(d) = race::pgtable_rounds(SAME_TABLE_TWICE, rounds) {
        panic!("{d}");
    }
}

/// Two threads free the same two-granule range and allocate (caches off): one free releases
/// the setup range, the other the other thread's reallocation of the same range, so both
/// succeed; a checker counting per pfn took this for a double free (seed
/// `fuzz/corpus/race_iova/seed-double-free-then-realloc`).
const DOUBLE_FREE: &[u8] = &[
    121, 98, 199, 126, 12, 97, 223, 184, 72, 37, 25, 145, 88, 215, 219, 18, 246, 47, 188, 176, 34,
    49, 60, 166, 159, 93, 46, 59, 47, 198, 127, 108, 246, 38, 61, 68, 172, 9, 215, 169, 249, 113,
    108, 243, 5,
];

#[test]
fn racing_double_frees_of_one_range_are_refused() {
    if let Err(d) = race::iova(DOUBLE_FREE) {
        panic!("{d}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_iova_races_free_each_range_once(data in proptest::collection::vec(any::<u8>(), 1..60)) {
        let r = race::iova(&data);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn random_races_are_explained(data in proptest::collection::vec(any::<u8>(), 4..40)) {
        let r = race::pgtable(&data);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
