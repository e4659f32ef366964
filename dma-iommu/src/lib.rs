//! DMA mapping through an IOMMU domain: the composition a DMA user calls.
//!
//! map/unmap/sync on a domain made of an IOVA allocator and an I/O page table, with strict or
//! lazy IOTLB invalidation (per-CPU flush queues, switchable at run time) and bounce buffering
//! for untrusted devices.

pub mod points;
