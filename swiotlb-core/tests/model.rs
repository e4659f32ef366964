//! proptest against the shared reference model (`dma-model`): random operation sequences
//! through the same differential checker the fuzz target and the soak use
//! (`dma_soak::diff::swiotlb`). It covers
//! swiotlb-core: map/unmap/sync with random masks, directions and sizes,
//! allocations, growth, refused copy-backs and injected allocation failures.
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
    fn bounce_buffers_match_the_reference_model(data in proptest::collection::vec(any::<u8>(), 0..if cfg!(miri) { 48 } else { 2048 })) {
        let r = diff::swiotlb::run(&data);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
