//! proptest against the shared reference model (`dma-model`): random operation sequences
//! through the same differential checker the fuzz target and the soak use
//! (`dma_soak::diff::iommu`). It covers
//! dma-iommu: maps, unmaps and syncs for trusted and untrusted devices,
//! lists, the strict-to-lazy switch, refused copy-backs and injected allocation failures.
// loom builds run the loom suite only: these tests use real threads and locks.
#![cfg(not(loom))]

use dma_soak::diff;

#[test]
fn domain_matches_the_reference_model() {
    diff::check_random_inputs(diff::iommu::run);
}
