//! The allocation sites of this crate whose failure it survives, by name.
//!
//! Each is a [`dma_sync::fault::Site`]; the code asks it before the allocation and, when it
//! (or the real fallible allocation) fails, takes the fallback documented here. With the
//! `fault-injection` feature (always on for this crate's own tests) a test arms a site with
//! `dma_sync::fault::armed`; the feature also forwards to the crates a domain is made of, so
//! a test can arm [`io_pgtable::faults`] and [`iova_cache::faults`] sites under a domain.
//! Without it every site is a constant "no failure".
//!
//! ```
//! use dma_iommu::{faults, DeviceConfig, Domain, DomainConfig, DmaError, FqConfig, FqError, NoTlb};
//! use swiotlb_core::Direction;
//! let dom = Domain::new(DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(), NoTlb, None).unwrap();
//! let (r, used) = dma_sync::fault::armed(&faults::FQ_RING_ALLOC, 1, || dom.set_lazy(FqConfig::per_cpu()));
//! assert_eq!((r, used), (Err(DmaError::FlushQueue(FqError::NoMemory)), 1));
//! assert!(!dom.is_lazy(), "no queue: the domain stays strict");
//! let dev = dom.attach(DeviceConfig::default()).unwrap();
//! let (r, _) = dma_sync::fault::armed(&io_pgtable::faults::TABLE_ALLOC, 1, || {
//!     dom.map(&dev, 0x10_0000, 0x1000, Direction::ToDevice)
//! });
//! assert_eq!(r, Err(DmaError::PageTable(io_pgtable::Error::NoMemory)));
//! assert!(dom.map(&dev, 0x10_0000, 0x1000, Direction::ToDevice).is_ok(), "disarmed: works on");
//! ```

use dma_sync::fault::Site;

/// A flush-queue ring, allocated when a domain switches to lazy invalidation (or starts
/// lazy). Fallback (Linux `iommu_dma_init_fq` failing): no queue is built (nothing of it
/// stays behind, the timer thread is not started) and the domain stays strict:
/// [`Domain::set_lazy`](crate::Domain::set_lazy) returns
/// [`FqError::NoMemory`](crate::FqError::NoMemory), [`Domain::new`](crate::Domain::new)
/// quietly starts strict.
pub static FQ_RING_ALLOC: Site = Site::new("iommu.fq.ring.alloc");

/// The domain's record of a new mapping (its registry shard growing). Fallback: the map
/// fails with [`DmaError::NoMemory`](crate::DmaError::NoMemory) after undoing everything it
/// did: the fresh translation is unmapped (and the IOTLB synced), the IOVA goes back to the
/// allocator and a bounce buffer, if any, is released. The domain is as before.
pub static MAPPING_RECORD: Site = Site::new("iommu.registry.record");
