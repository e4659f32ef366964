//! Reference models of dmaloom's crates, one per crate, written from the DMA-mapping
//! specification (Linux's DMA API documentation and sources, and each crate's documented
//! contract), never from the code they check.
//!
//! Each model is a plain map of pages, ranges or slots with the rules of the specification
//! applied to it. The checkers that drive a real structure and its model side by side — the
//! proptest suites of the crates, the cargo-fuzz targets and the soak (all through the
//! `dma-soak` crate) — use these models, so a mistake shared by a checker and the code it
//! checks has one place to hide, not four.
//!
//! * [`swiotlb`]: the search request of a map, the free-space model of the pools' slots, the
//!   direction table of the copies.
//! * [`iova`]: user-held ranges and reservations, the aligned-gap rule for `NoSpace`.
//! * [`pgtable`]: leaves and tables for the page-size calls, page-level promises for the
//!   looping ones.
//! * [`iommu`]: the registry of live mappings, map predictions and the unmap answer.
//! * [`XorShift`]: the one pseudo-random generator of the checkers.
//!
//! Everything here is test support (`publish = false`).

pub mod iommu;
pub mod iova;
pub mod pgtable;
mod rng;
pub mod swiotlb;

pub use rng::XorShift;
