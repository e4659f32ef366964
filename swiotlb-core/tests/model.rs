//! proptest against the shared reference model (`dma-model`): random operation sequences
//! through the same differential checker the fuzz target and the soak use
//! (`dma_soak::diff::swiotlb`). It covers
//! swiotlb-core: map/unmap/sync with random masks, directions and sizes,
//! allocations, growth, refused copy-backs and injected allocation failures.
// loom builds run the loom suite only: these tests use real threads and locks.
#![cfg(not(loom))]

use dma_soak::diff;

#[test]
fn bounce_buffers_match_the_reference_model() {
    diff::check_random_inputs(diff::swiotlb::run);
}
