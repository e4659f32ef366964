//! The loom suite: every model of the workspace, its must-fail twins, the litmus tests of the
//! design discussion, and the coverage check over all mutation points.
//!
//! One binary, so that the coverage test sees every registered twin.
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release`.
#![cfg(all(loom, not(production_rcu)))]

mod coverage;
mod dma_sync_shim;
mod io_pgtable_models;
mod iommu_models;
mod iommu_registry_models;
mod iova_flush_models;
mod iova_models;
mod iova_thread_models;
mod litmus;
mod rcu_strict_models;
mod swiotlb_growth_models;
mod swiotlb_models;
mod thread_slots_models;
mod vmm_models;
mod vmm_quiesce_models;

/// Reports a free that bypasses `dma_sync::rcu` while a read section holds the object.
#[global_allocator]
static ALLOC: dma_sync::rcu::CheckedAlloc = dma_sync::rcu::CheckedAlloc;
