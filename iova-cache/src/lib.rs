//! I/O virtual address allocation with per-CPU magazine caches that never hoard.
//!
//! The user-space equal of Linux `iova.c` with its per-CPU rcache, for vIOMMU emulation and
//! user-space DMA mapping, where every map and unmap allocates and frees an IOVA range: a
//! top-down range allocator over granule-sized pfns, fronted by per-CPU `loaded`/`prev`
//! magazines so that the common allocation and free take only their CPU slot's spin lock
//! (and, with checked frees, set or clear one bit of an atomic bitmap), and a
//! depot of full magazines that a background worker trims toward one magazine per CPU slot,
//! so freed address space does not stay stranded in caches.
//!
//! # API overview
//!
//! | Item | What |
//! |---|---|
//! | [`IovaAllocator::new`]`(IovaConfig) -> Result<IovaAllocator, IovaError>` | build (caches on/off, CPU slots, magazine size, trim period, checked frees) |
//! | [`IovaAllocator::alloc`]`(size, limit) -> Result<pfn>` | cached fast path: sizes < 32 rounded to a power of two, naturally aligned, highest fit ending `<= limit` (inclusive), flush-all-and-retry-once on failure |
//! | [`IovaAllocator::alloc_no_flush`]`(size, limit)` | the same without the flush and retry |
//! | [`IovaAllocator::free`]`(pfn, size) -> Result<()>` | cached free (double/mismatched frees are typed errors) |
//! | [`IovaAllocator::alloc_range`]`(size, limit, aligned)` / [`IovaAllocator::free_range`]`(pfn, size)` | uncached range allocator |
//! | [`IovaAllocator::reserve`]`(lo, hi)` / [`IovaAllocator::find`]`(pfn) -> Option<IovaRange>` | reservations, lookup |
//! | [`IovaAllocator::flush_all`], [`IovaAllocator::flush_cpu`], [`IovaAllocator::trim_once`] | cache maintenance |
//! | [`IovaAllocator::stats`]` -> IovaStats`, [`IovaAllocator::report`]` -> String` | per-class hits/misses, depot, cached granules per CPU and depot (serde with feature `serde`) |
//! | [`RangeAllocator`] | the single-threaded range allocator itself (`&mut self`) |
//! | [`faults`] | allocation sites a test can make fail (feature `fault-injection`), each with a fallback that loses nothing |
//!
//! Units: sizes in granules, addresses as pfns (`iova >> granule_shift`), limits inclusive.
//! `IovaConfig { caching: false, .. }` is the range allocator alone behind its lock, the
//! baseline the benchmarks compare against.
//!
//! ```
//! use iova_cache::{IovaAllocator, IovaConfig};
//!
//! let iova = IovaAllocator::new(IovaConfig::with_space(1, (1 << 24) - 1)).unwrap();
//! let limit32 = iova.dma_32bit_pfn() - 1;
//! let pfn = iova.alloc(8, limit32).unwrap();
//! assert!(pfn + 7 <= limit32 && pfn % 8 == 0);
//! iova.free(pfn, 8).unwrap();
//! assert!(iova.report().contains("granules cached"));
//! ```
//!
//! # Concurrency
//!
//! Locks are taken in the order CPU slot -> depot -> range allocator, never backwards. A hit
//! in a CPU's magazines takes only that slot's lock; with checked frees it also sets (alloc) or
//! clears (free) the range's bit in the held-range bitmap with one atomic read-modify-write.
//! Every lock step and every ordering that matters is a mutation point in [`points`],
//! weakened by the loom models to show it is needed.

mod allocator;
pub mod config;
mod error;
pub mod faults;
mod fitsummary;
mod gaptree;
mod held;
mod locked;
mod magazine;
pub mod points;
mod range;
mod rcache;
mod stats;
#[cfg(not(loom))]
mod trim;

pub use allocator::IovaAllocator;
pub use config::{IovaConfig, MAX_CPUS, MAX_MAGAZINE_SIZE, MAX_SLOT_ENTRIES, MAX_TRIM_INTERVAL};
pub use error::IovaError;
pub use range::{IovaRange, RangeAllocator, RangeKind, RangeStats};
pub use stats::{ClassStats, IovaStats};
