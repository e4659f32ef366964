//! iova-cache under a race: two threads double-freeing overlapping ranges and allocating;
//! every range freed exactly once, nothing lost or handed out twice.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(divergence) = dma_soak::diff::race::iova(data) {
        panic!("{divergence}");
    }
});
