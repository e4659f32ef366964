//! DMA mapping through an IOMMU domain: the composition a DMA user calls.
//!
//! map/unmap/sync on a domain made of an IOVA allocator and an I/O page table, with strict or
//! lazy IOTLB invalidation (per-CPU flush queues, switchable at run time) and bounce buffering
//! for untrusted devices.
//!
//! The invalidation machinery stands on its own and is generic over what it frees:
//! [`FlushQueue`] (deferred freeing after global flushes, the start/finish counter protocol,
//! the timer) and [`Strictness`] (the mode, the strict-to-lazy switch, the single-snapshot
//! unmap path). The caller's IOMMU is reached only through [`TlbOps`].

pub mod device;
pub mod domain;
pub mod error;
pub mod flush_queue;
pub mod iotlb;
mod pad;
pub mod points;
mod registry;
pub mod sg;
pub mod stats;
pub mod strictness;
#[cfg(not(loom))]
mod timer;

pub use device::{Device, DeviceConfig};
pub use domain::{Domain, DomainConfig, IovaSpan};
pub use error::DmaError;
pub use flush_queue::{FlushQueue, FqConfig, FqError, FqKind, FqStats, InvalidationOps};
pub use io_pgtable::NoTlb;
pub use iotlb::{
    Gather, Invalidation, InvalidationKind, RecordingIotlb, SimulatedIotlb, TlbOps, TlbRange,
};
pub use sg::{DmaSegment, PhysSegment, SgMapping};
pub use stats::DomainStats;
pub use strictness::{Strictness, Unmapped};
pub use swiotlb_core::Direction;
