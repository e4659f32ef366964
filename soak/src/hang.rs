//! Hang detection for tests whose defect was a thread waiting for ever: the test fails
//! instead of hanging the suite. The watchdog is dma-sync's (feature `test-support`), so that
//! the crates' own unit tests, below this crate, use the same one.

pub use dma_sync::hang::within_30_s;
