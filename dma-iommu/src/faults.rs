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
//!
//! # Sites reached through a domain
//!
//! Besides its own sites, a domain reaches these (the feature forwards to every crate it is
//! made of):
//!
//! | Site | Where | Fallback |
//! |---|---|---|
//! | `pgtable.table.alloc` | page-table map | `DmaError::PageTable(NoMemory)`; `map` already undid partial progress; the domain frees the IOVA (`iommu_dma_map_page` → `iommu_dma_free_iova`) |
//! | `iova.tree.node` | IOVA allocation | `DmaError::NoIova(OutOfMemory)`, nothing changed; the device's 32-bit-first flag is kept |
//! | `iova.magazine.alloc`, `iova.depot.grow` | IOVA free in a strict unmap or a flush-queue reclaim | the IOVA goes back to the range allocator; the unmap succeeds |
//! | `swiotlb.transient.alloc` | a bounced map with no room in the global pools | `DmaError::Bounce(NoSpace)`, nothing changed |
//!
//! # Tests
//!
//! `tests/fault_injection.rs`: table failure on a fresh domain, with live mappings, across
//! several leaf tables and for a scatter list; magazine and depot failures during strict unmaps
//! (then every IOVA handed out again, each once); tree-node failure; record failure for a plain,
//! a bounced and a scatter-list map; ring failure on `set_lazy` (stays strict, unmaps synced,
//! the next switch works and unmaps queue) and at `Domain::new`; a proptest workload (24 cases,
//! strict or lazy) arming a random site per map, unmap or flush. Each checks: the error is the
//! typed one, live mappings read their buffers through the page table, no IOVA granule is handed
//! out twice, `stats().live` matches, and at the end every IOVA is back, no bounce slot is used,
//! and the disarmed domain maps a multi-leaf-table buffer and a bounced one and unmaps them.

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
