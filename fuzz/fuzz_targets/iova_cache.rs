//! iova-cache: alloc/free (cached and uncached), reserve, flush, limits, double frees,
//! run against the real structure and a reference model side by side.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(divergence) = dma_soak::diff::iova::run(data) {
        panic!("{divergence}");
    }
});
