//! DMA mapping through an IOMMU domain: the composition a DMA user calls.
//!
//! map/unmap/sync on a domain made of an IOVA allocator and an I/O page table, with strict or
//! lazy IOTLB invalidation (per-CPU flush queues, switchable at run time) and bounce buffering
//! for untrusted devices.
//!
//! # API
//!
//! | Item | What |
//! |---|---|
//! | [`Domain::new`]`(DomainConfig, T: TlbOps, Option<Swiotlb>)` | build; [`DomainConfig::new`]`(io_pgtable::Config)`, `.lazy(FqConfig)` |
//! | [`Domain::attach`]`(DeviceConfig) -> Device` | DMA mask, `min_align_mask`, max segment size and boundary, trusted, 32-bit first |
//! | [`Domain::map`] / [`Domain::unmap`] | any physical range; untrusted + unaligned → bounced; unmap returns [`Unmapped`] |
//! | [`Domain::map_sg`] / [`Domain::unmap_sg`] | scatter lists: one contiguous IOVA range |
//! | [`Domain::map_resource`] / [`Domain::unmap_resource`] | MMIO ranges, never bounced |
//! | [`Domain::sync_for_cpu`] / [`Domain::sync_for_device`] | partial syncs of live mappings |
//! | [`Domain::set_lazy`], [`Domain::flush_queue_now`] | strict → lazy at run time; run the timer's work |
//! | [`Domain::stats`]` -> DomainStats` (`Display`: the text report) | maps, unmaps, flushes, queued entries, bounce use |
//! | [`Domain::device_read`] / [`Domain::device_write`] | the device side, through the page table |
//! | [`FlushQueue`], [`Strictness`], [`InvalidationOps`] | the invalidation machinery, generic over what it frees |
//! | [`TlbOps`] (caller), [`SimulatedIotlb`], [`RecordingIotlb`] | IOTLB callbacks |
//! | [`DmaError`] | typed errors; the domain is unchanged after any |
//! | [`faults`] (`FQ_RING_ALLOC`, `MAPPING_RECORD`) | allocation sites a test can make fail (feature `fault-injection`, forwarded to io-pgtable and iova-cache) |
//!
//! The invalidation machinery stands on its own and is generic over what it frees:
//! [`FlushQueue`] (deferred freeing after global flushes, the start/finish counter protocol,
//! the timer) and [`Strictness`] (the mode, the strict-to-lazy switch, the single-snapshot
//! unmap path). The caller's IOMMU is reached only through [`TlbOps`].

pub mod device;
pub mod domain;
pub mod error;
pub mod faults;
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
