//! proptest against the shared reference model (`dma-model`): random operation sequences
//! through the same differential checker the fuzz target and the soak use
//! (`dma_soak::diff::iova`). It covers
//! iova-cache: cached and uncached allocations and frees, reservations,
//! flushes, limits, double frees and injected allocation failures.
// loom builds run the loom suite only: these tests use real threads and locks.
#![cfg(not(loom))]

use dma_soak::diff;

#[test]
fn iova_allocator_matches_the_reference_model() {
    diff::check_random_inputs(diff::iova::run);
}
