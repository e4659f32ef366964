//! io-pgtable: map_pages/unmap_pages/iova_to_phys at every page size, bad arguments,
//! run against the real structure and a reference model side by side.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(divergence) = dma_soak::diff::pgtable::run(data) {
        panic!("{divergence}");
    }
});
