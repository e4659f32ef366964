//! DMA mapping through an IOMMU domain: the composition a DMA user calls.
//!
//! map/unmap/sync on a domain made of an IOVA allocator and an I/O page table, with strict or
//! lazy IOTLB invalidation (per-CPU flush queues, switchable at run time) and bounce buffering
//! for untrusted devices. It is Linux's `dma-iommu` layer for user space (vIOMMU emulation,
//! vhost-user backends, user-space drivers): the one place that decides when an unmapped IOVA
//! may be reused, so that no device can reach memory through a stale IOTLB entry.
//!
//! # API
//!
//! | Item | What |
//! |---|---|
//! | [`Domain::new`]`(DomainConfig, T: TlbOps, Option<Swiotlb>)` | build; [`DomainConfig::new`]`(io_pgtable::Config)`, `.lazy(FqConfig)` |
//! | [`Domain::attach`]`(DeviceConfig) -> Device` | DMA mask, `min_align_mask`, max segment size and boundary, trusted, 32-bit first |
//! | [`DevicePolicy::alloc_iova`] | the IOVA allocation policy: 32-bit first, given up per device after a miss |
//! | [`Domain::map`] / [`Domain::unmap`] | any physical range; untrusted + unaligned → bounced; unmap returns [`Unmapped`] |
//! | [`Domain::map_sg`] / [`Domain::unmap_sg`] | scatter lists: one contiguous IOVA range |
//! | [`Domain::map_resource`] / [`Domain::unmap_resource`] | MMIO ranges, never bounced |
//! | [`Domain::sync_for_cpu`] / [`Domain::sync_for_device`] | partial syncs of live mappings |
//! | [`Domain::set_lazy`], [`Domain::flush_queue_now`] | strict → lazy at run time; run the timer's work |
//! | [`Domain::stats`]` -> DomainStats` (`Display`: the text report; serde with feature `serde`) | maps, unmaps, flushes, queued entries, bounce use |
//! | `test_util::SimulatedDevice` (feature `test-util`) | the device side, through the page table, for tests |
//! | [`FlushQueue`], [`Strictness`], [`InvalidationOps`] | the invalidation machinery, generic over what it frees |
//! | [`TlbOps`] (caller), [`SimulatedIotlb`], [`RecordingIotlb`] | IOTLB callbacks |
//! | [`DmaError`] | typed errors; the domain is unchanged after any |
//! | [`faults`] (`FQ_RING_ALLOC`, `MAPPING_RECORD`) | allocation sites a test can make fail (feature `fault-injection`, forwarded to io-pgtable and iova-cache) |
//!
//! The main path: build a domain, attach a device, map, let the device use the mapping,
//! unmap (strict: synced at once; lazy: queued until a global flush).
//!
//! ```
//! use dma_iommu::test_util::SimulatedDevice;
//! use dma_iommu::{DeviceConfig, Direction, Domain, DomainConfig, FqConfig, NoTlb, Unmapped};
//! use swiotlb_core::{Config, OrigMemory, RegionMemory, Swiotlb};
//!
//! let mem = RegionMemory::new(1 << 20);
//! let buf = mem.base() + 0x2000;
//! mem.write(buf, b"frame").unwrap();
//! let bounce = Swiotlb::new(Config::tiny(256, 1, 128), mem).unwrap();
//! let cfg = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
//! let dom = Domain::new(cfg, NoTlb, Some(bounce)).unwrap();
//! let nic = dom.attach(DeviceConfig::default()).unwrap();
//! // The device's side, simulated (feature `test-util`): it sees the same memory.
//! let hw = SimulatedDevice::new(&dom, &nic, dom.swiotlb().unwrap().memory());
//!
//! let dma = dom.map(&nic, buf, 5, Direction::ToDevice).unwrap();
//! let mut seen = [0u8; 5];
//! hw.read(dma, &mut seen).unwrap();
//! assert_eq!(&seen, b"frame");
//! assert_eq!(dom.unmap(&nic, dma, 5, Direction::ToDevice), Ok(Unmapped::Synced));
//! assert!(hw.read(dma, &mut seen).is_err()); // the translation is gone
//!
//! dom.set_lazy(FqConfig::per_cpu()).unwrap();
//! let dma = dom.map(&nic, buf, 5, Direction::ToDevice).unwrap();
//! assert_eq!(dom.unmap(&nic, dma, 5, Direction::ToDevice), Ok(Unmapped::Queued));
//! dom.flush_queue_now();
//! assert_eq!(dom.stats().fq.pending, 0);
//! ```
//!
//! The invalidation machinery stands on its own and is generic over what it frees:
//! [`FlushQueue`] (deferred freeing after global flushes, the start/finish counter protocol,
//! the timer) and [`Strictness`] (the mode, the strict-to-lazy switch, the single-snapshot
//! unmap path). The caller's IOMMU is reached only through [`TlbOps`].
//!
//! # Modules
//!
//! | Module | What |
//! |---|---|
//! | `flush_queue`, `timer` | [`FlushQueue`]: rings, the start/finish counters, drain, full-ring flush, the timer and its background thread, teardown |
//! | `strictness` | [`Strictness`]: the mode, the strict→lazy switch, the single-snapshot unmap path |
//! | `iotlb` | [`SimulatedIotlb`] (a configurable busy-wait per invalidation, per-CPU counters so counting adds no shared write to a benchmark), [`RecordingIotlb`] (every invalidation on a logical clock shared with the test) |
//! | `backend` | the IOVA allocator, the page table and the caller's IOTLB; the domain owns it behind an `Arc` and hands [`Strictness`] a clone |
//! | `bounce` | an untrusted device's view of the bounce pool: granule-aligned, zero-padded slots; on unmap, copy back by direction and release exactly once |
//! | `new_mapping` | an IOVA range being mapped by one call: recorded by `publish`, otherwise undone on drop (every map but a trusted device's single one, which `domain`'s `trusted` module does in one frame) |
//! | `iova_view` | [`IovaView`]: the IOVA allocator as callers see it, diagnostics only (no allocation or free: the registry relies on the domain owning every IOVA it hands out) |
//! | `policy` | [`DevicePolicy::alloc_iova`]: 32-bit IOVAs first, given up per device after the first miss |
//! | `domain`, `sg`, `config`, `device`, `registry`, `stats`, `error` | map/unmap/sync and resources, scatter lists, [`DomainConfig`] and its checks, device attach, the record of live mappings, per-CPU counters and the text report, typed errors |
//! | [`points`], [`faults`] | the named orderings (with the loom models that need each one); the allocation sites (with their fallbacks and tests) |
//! | `test_util` (feature `test-util`) | `SimulatedDevice`: a device's reads and writes by DMA address through the page table with its permission checks, for tests, the soak and examples; the library never accesses memory on a device's behalf |
//!
//! # Tests
//!
//! * Unit tests: the flush queue (wait-for-flush, full ring, per-CPU rings, teardown, the
//!   background timer, bad geometry, enqueues racing the timer and shutdown), strictness (sync
//!   before free, forced strict, a bad configuration stays strict, unmaps racing the switch).
//!   Under Miri the tests that contend locks (a parking futex Miri rejects) or wait for the
//!   real-time timer are ignored; tests name their CPU with `cpu::set_current`.
//! * `tests/domain.rs`: strict and lazy with the recording IOTLB, the reuse check in both modes
//!   across the switch, untrusted bouncing with zeroed padding and copy-back, typed errors with
//!   the domain intact, IOVA exhaustion, scatter lists with boundaries, resources. The reuse
//!   check is sound but, seen from outside, cannot prove strict-mode *order* in a single thread
//!   (free-then-sync is observably the same there); the loom models prove that order.
//! * `tests/policy.rs`: the 32-bit preference and its per-device opt-out.
//! * `tests/bad_input.rs`: configuration limits (flush queues beyond their maxima, domain and
//!   device configurations), wrapping segment lengths, empty and changed scatter lists, the same
//!   answer for trusted and untrusted devices, and a proptest of arbitrary lists refused exactly
//!   as the documented checks predict or mapped whole. The workspace's generated bad-input table
//!   (`soak/bad-input/dma-iommu.md`) covers every other entry point.
//! * `tests/lost_copy_back.rs`: unmap, untrusted `unmap_sg` and sync over a memory that refuses
//!   writes (`LostCopyBack`, `CopyRefused`).
//! * `tests/model.rs`: proptest-made bytes through `dma_soak::diff::iommu`, the checker the fuzz
//!   target and the soak share, against the `iommu` reference model of `dma-model`.
//! * `tests/stress.rs`: four threads with the switch in the middle (one untrusted, bouncing):
//!   no IOVA handed out while live, no reuse before a covering invalidation, all IOVAs and
//!   bounce slots back.
//! * `tests/unmap_race.rs`: one thread maps and unmaps 4 KiB while another unmaps the address
//!   it was last given (same device and size), strict and lazy: each mapping is taken by
//!   exactly one unmap, the other gets `NotMapped`; nothing live, mapped or allocated after.
//! * `tests/fault_injection.rs`: see [`faults`].

mod backend;
mod bounce;
mod config;
pub mod device;
pub mod domain;
pub mod error;
pub mod faults;
pub mod flush_queue;
pub mod iotlb;
mod iova_view;
mod new_mapping;
pub mod points;
pub mod policy;
// Public to the loom models only, which run the real registry.
#[cfg(loom)]
#[doc(hidden)]
pub mod registry;
#[cfg(not(loom))]
mod registry;
pub mod sg;
pub mod stats;
pub mod strictness;
#[cfg(feature = "test-util")]
pub mod test_util;
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
pub use iova_view::IovaView;
pub use policy::DevicePolicy;
pub use sg::{DmaSegment, PhysSegment, SgMapping};
pub use stats::DomainStats;
pub use strictness::{Strictness, Unmapped};
pub use swiotlb_core::Direction;
