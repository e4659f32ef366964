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
//!
//! # Tests
//!
//! * `tests/conformance.rs`: the specification's device-normative statements as one table (see
//!   [`viommu`]); removing the ATTACH reserved check, the RESV_MEM MAP check, the `bypass` field's
//!   effect, the unknown-type rule, the room a moving endpoint's dying domain leaves, or the
//!   `R_DOMAIN` reason of a blocked endpoint in a reserved region fails its rows.
//! * `tests/viommu_model.rs`: a reference model written from the specification's text; random
//!   sequences of wire-format requests, valid and invalid, where each status must be one the
//!   conditions that hold allow (OK when none does), a refused request changes nothing, and every
//!   endpoint translates every page as the model says, each fault reported with the model's
//!   reason; then 20,000 arbitrary byte strings, after
//!   which replies have stayed within the writable part and `probe_size` + 4 bytes and the device
//!   still works.
//! * `tests/spec_requirements.rs`: a second pass over the same statements, each test naming its
//!   clause: every cut and extension of every request type against writable parts from empty to
//!   `usize::MAX`, every refusal the text names followed by a check that the domains, endpoints,
//!   mappings, config space and what every device reaches are unchanged (one at a time and as a
//!   batch), the MAP overlap and UNMAP split rules on every small range against the text, every
//!   flag bit with and without its feature, config writes at every offset, domains emptied by
//!   moves and reset, `max_domains` with 512 endpoints, PROBE at every writable length, a fault
//!   flood against every event-buffer size.
//! * `tests/virtio_blk.rs` with `examples/virtio_blk/`: a virtio-blk-like device written against
//!   vm-memory's `GuestMemory` and virtio-queue 0.18's `Queue` only, given its endpoint's
//!   `IovaMemory`, while the guest maps with wire-format requests and lays out its split virtqueue
//!   with virtio-queue's mock rings at the IOVAs it mapped (`MockSplitQueue::create` itself is not
//!   used: in 0.18 it places the used ring over the upper half of the available ring). Byte-exact
//!   I/O while another guest thread maps and unmaps in the queue's own leaf table; unmapped
//!   buffers, unmapped rings and a detached endpoint failing with `S_IOERR` or no used entry,
//!   writing nothing, reported as fault events; quiescence through the queue (a translation
//!   wrapper stalls the device between translating a 64 KiB buffer and copying it while the guest
//!   UNMAPs and reuses the pages: neither the disk nor the pages ever see a byte from after the
//!   UNMAP); a stress test of two device threads and a churning third thread against a model
//!   disk.
//! * `tests/stress.rs`: churn against three device threads: 10,000 guest MAP/UNMAPs, and 20,000
//!   moves of an endpoint between two domains by ATTACH, asserting that no access reads or writes
//!   a page after the request removing its translation completed (the first fails within one run
//!   when `synchronize` is made a no-op).
//! * `tests/guest_memory.rs`, `tests/viommu.rs`, `tests/vmm_flow.rs`, `tests/report.rs`:
//!   integration with `GuestMemoryMmap` (multi-mapping ranges across two RAM regions, permission
//!   denial writes nothing, unmapped and outside-RAM errors, bounce copies to and from guest RAM
//!   and through an IOMMU), device-model round trips and status codes with state unchanged after
//!   each error, the README's VMM flow, and reports (text, serde round trip, dumps racing map and
//!   unmap of blocks and tables).
//! * `tests/hostile.rs`: a guest MAP that would need more page-table leaves than `max_leaves`
//!   (`NOMEM`, nothing allocated, the room given back by UNMAP and DETACH), scattered one-page
//!   MAPs that would need more tables than `max_tables` (`NOMEM` at exactly the budget, room
//!   given back by UNMAP, DETACH and reset, MAP/UNMAP cycles over fresh addresses), reversed ranges
//!   handed to the public `MappingTree`, a `Translate` reporting empty leaves.
//! * Unit tests: translation against a byte-granular reference model, the mapping tree (and its
//!   gaps) against a byte-owner model, a grace period that must wait for a pinned section.

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
