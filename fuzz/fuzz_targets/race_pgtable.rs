//! io-pgtable under a race: two threads on overlapping entries, every outcome explained by
//! some sequential order on the reference model, tables conserved.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(divergence) = dma_soak::diff::race::pgtable(data) {
        panic!("{divergence}");
    }
});
