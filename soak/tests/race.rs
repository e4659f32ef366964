//! The race checker as stable tests: a scenario known to double-retire a table on the
//! unfixed library, then proptest-generated scenarios.
#![cfg(not(loom))]

use dma_soak::diff::{race, tolerating, Known};
use proptest::prelude::*;

/// Two threads unmap the same 16 KiB entry, which holds a level-3 table of one page.
const SAME_TABLE_TWICE: &[u8] = &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
#[ignore = "fails until io-pgtable claims entries by compare-and-swap (Known::RacingUnmap)"]
fn racing_unmaps_of_one_table_are_caught() {
    if let Err(d) = race::pgtable_rounds(SAME_TABLE_TWICE, 20_000) {
        panic!("{d}");
    }
}

#[test]
fn disjoint_units_pass_while_the_race_is_unfixed() {
    tolerating(&[Known::RacingUnmap], || race::pgtable(SAME_TABLE_TWICE)).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_races_are_explained(data in proptest::collection::vec(any::<u8>(), 4..40)) {
        let r = tolerating(&[Known::RacingUnmap], || race::pgtable(&data));
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    #[ignore = "fails until io-pgtable claims entries by compare-and-swap (Known::RacingUnmap)"]
    fn random_races_are_explained_strict(data in proptest::collection::vec(any::<u8>(), 4..40)) {
        let r = race::pgtable(&data);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
