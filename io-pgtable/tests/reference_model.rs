//! proptest against the shared reference model (`dma-model`): random operation sequences
//! through the same differential checker the fuzz target and the soak use
//! (`dma_soak::diff::pgtable`). It covers
//! io-pgtable: map_pages/unmap_pages at every page size, the looping
//! map/unmap, bad arguments and injected table-allocation failures.
// loom builds run the loom suite only: these tests use real threads and locks.
#![cfg(not(loom))]

use dma_soak::diff;

#[test]
fn page_table_matches_the_reference_model() {
    diff::check_random_inputs(diff::pgtable::run);
}
