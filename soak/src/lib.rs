//! Reliability harness for dmaloom.
//!
//! * [`diff`]: differential checkers. A byte stream is decoded (with `arbitrary`) into
//!   operations that run against a crate's real structure and its `dma-model` reference model
//!   side by side; any divergence, panic or broken invariant is a failure. [`diff::race`] runs
//!   two threads on overlapping io-pgtable entries and requires every outcome to be explained
//!   by the model. The cargo-fuzz targets in `fuzz/` call these, the crates' proptest files feed
//!   them proptest-made inputs, and this crate's tests replay the committed seed corpus.
//!
//! * [`hang`]: a watchdog for tests whose defect was a thread waiting for ever.
//!
//! * [`memory`]: original memory whose writes can be refused, so a lost copy-back shows.
//!
//! * [`workload`]: the soak, a long mixed workload across the crates with invariants checked
//!   at quiescent points and at the end (`DMALOOM_SOAK_SECS=600 cargo test --release -p
//!   dma-soak --test soak -- --nocapture` for ten minutes).
//!
//! Feature `fault-injection` (on by default) lets the checkers and the soak arm every crate's
//! allocation fault sites (`dma_sync::fault`).
//!
//! Everything here is test support: it asserts, it never recovers.

pub mod diff;
pub mod hang;
pub mod memory;
pub mod workload;
