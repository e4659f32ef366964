//! Embedding dmaloom in a VMM.
//!
//! * `IovaMemory` (feature `vm-memory`, on by default): vm-memory 0.18's I/O virtual memory
//!   (`GuestMemory`) over an io-pgtable page table and the guest's RAM, so virtio queues and
//!   vhost-user backends read and write guest buffers by IOVA through a lock-free page table.
//! * `GuestBytes` (feature `vm-memory`): swiotlb-core's original memory over vm-memory, so
//!   bounce copies go to and from guest memory.
//! * [`viommu`]: a virtio-iommu device model (attach, detach, map, unmap, probe, the config
//!   space with its `bypass` field, fault reports for the event queue, and its wire format
//!   in [`viommu::wire`]) following the specification's device requirements, over our page
//!   tables, whose UNMAP and DETACH return only once no device access still uses the old
//!   translation ([`quiesce`]).
//! * [`report`]: debug reports (page-table dumps, swiotlb, IOVA cache and flush-queue state,
//!   dma-iommu domains) as text and, with the `serde` feature, as serde data.
//!
//! Features: `vm-memory` (default) for `IovaMemory` and `GuestBytes`; `serde` for the
//! reports' serde data. Device threads translate with no lock and no shared write; see
//! [`translate`].
//!
//! ```
//! use dma_vmm::viommu::{Request, Status, Viommu, ViommuConfig, MAP_F_READ, MAP_F_WRITE};
//! use io_pgtable::Prot;
//!
//! let viommu = Viommu::new(ViommuConfig::default()).unwrap();
//! let nic = viommu.add_endpoint(1, vec![]).unwrap();
//! assert_eq!(viommu.handle(Request::Attach { domain: 7, endpoint: 1, flags: 0 }).status(), Status::Ok);
//! let map = Request::Map { domain: 7, virt_start: 0x1000, virt_end: 0x1fff, phys_start: 0x8000,
//!                          flags: MAP_F_READ | MAP_F_WRITE };
//! assert_eq!(viommu.handle(map).status(), Status::Ok);
//! // A device thread translates lock-free, inside a read section.
//! let gpa = nic.access(0x1010, 8, Prot::WRITE, |segs| segs[0].paddr).unwrap();
//! assert_eq!(gpa, 0x8010);
//! // UNMAP returns once no device access can still use the translation.
//! let unmap = Request::Unmap { domain: 7, virt_start: 0x1000, virt_end: 0x1fff };
//! assert_eq!(viommu.handle(unmap).status(), Status::Ok);
//! assert!(nic.access(0x1010, 8, Prot::READ, |_| ()).is_err());
//! ```

pub mod points;
pub mod quiesce;
pub mod report;
pub mod translate;
pub mod viommu;

#[cfg(feature = "vm-memory")]
pub mod guest_bytes;
#[cfg(feature = "vm-memory")]
pub mod iova_memory;

#[cfg(feature = "vm-memory")]
pub use guest_bytes::GuestBytes;
#[cfg(feature = "vm-memory")]
pub use iova_memory::IovaMemory;
pub use translate::{Fault, Leaf, Segment, Segments, Translate};
