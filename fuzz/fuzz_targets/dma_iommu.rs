//! dma-iommu: map/unmap/sync on trusted and untrusted devices, strict-to-lazy switch, flushes,
//! run against the real structure and a reference model side by side.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(divergence) = dma_soak::diff::iommu::run(data) {
        panic!("{divergence}");
    }
});
