//! proptest against the shared reference model (`dma-model`): random operation sequences
//! through the same differential checker the fuzz target and the soak use
//! (`dma_soak::diff::pgtable`). It covers
//! io-pgtable: map_pages/unmap_pages at every page size, the looping
//! map/unmap, bad arguments and injected table-allocation failures.
// loom builds run the loom suite only: these tests use real threads and locks.
#![cfg(not(loom))]

use dma_soak::diff;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 1 } else { 96 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn page_table_matches_the_reference_model(data in proptest::collection::vec(any::<u8>(), 0..if cfg!(miri) { 48 } else { 2048 })) {
        let r = diff::pgtable::run(&data);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
