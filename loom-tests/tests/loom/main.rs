//! The loom suite: every model of the workspace, its must-fail twins, the litmus tests of the
//! design discussion, and the coverage check over all mutation points.
//!
//! One binary, so that the coverage test sees every registered twin.
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release`.
#![cfg(loom)]

mod coverage;
mod dma_sync_shim;
mod io_pgtable_models;
mod iommu_models;
mod iova_models;
mod litmus;
mod swiotlb_models;
mod vmm_models;
