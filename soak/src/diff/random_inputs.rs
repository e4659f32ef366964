//! The proptest harness each crate's reference-model test runs its checker in, so the four
//! tests differ only in the checker they name.

use super::Divergence;
use proptest::collection::vec;
use proptest::prelude::any;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Run `check` on random inputs: 96 of up to 2 048 bytes (one of up to 48 under Miri, where
/// every step is slow). Panics with the shrunk input's divergence.
///
/// ```
/// dma_soak::diff::check_random_inputs(dma_soak::diff::iova::run);
/// ```
pub fn check_random_inputs(check: fn(&[u8]) -> Result<(), Divergence>) {
    let config = Config {
        cases: if cfg!(miri) { 1 } else { 96 },
        failure_persistence: None,
        ..Config::default()
    };
    let max_len = if cfg!(miri) { 48 } else { 2048 };
    let inputs = vec(any::<u8>(), 0..max_len);
    let r = TestRunner::new(config).run(&inputs, |data| {
        check(&data).map_err(|d| TestCaseError::fail(d.to_string()))
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}
