//! swiotlb-core: map/unmap/sync with random masks and directions, pool growth, bad arguments,
//! run against the real structure and a reference model side by side.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(divergence) = dma_soak::diff::swiotlb::run(data) {
        panic!("{divergence}");
    }
});
