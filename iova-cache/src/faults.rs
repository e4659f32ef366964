//! The allocation sites of this crate whose failure it survives, by name.
//!
//! Each is a [`dma_sync::fault::Site`]; the code asks it before the allocation and, when it
//! (or the real fallible allocation) fails, takes the fallback documented here. With the
//! `fault-injection` feature (always on for this crate's own tests) a test arms a site with
//! `dma_sync::fault::armed`; without it every site is a constant "no failure":
//!
//! ```
//! use iova_cache::{faults, IovaAllocator, IovaConfig, IovaError};
//! let a = IovaAllocator::new(IovaConfig::with_space(1, 0xffff)).unwrap();
//! let (r, used) = dma_sync::fault::armed(&faults::TREE_NODE, 1, || a.alloc(64, 0xffff));
//! assert_eq!((r, used), (Err(IovaError::OutOfMemory { size: 64 }), 1));
//! assert!(a.alloc(64, 0xffff).is_ok(), "disarmed: the allocator works on");
//! ```
//!
//! # Fallible for real, and what is not covered
//!
//! Behind each site the real allocation is fallible too (`try_reserve`), so the fallback is the
//! production behaviour on memory exhaustion, not only a test path. Allocations removed from the
//! paths instead of given a site: the depot's list of kept empty magazines is allocated for one
//! per CPU slot up front, and the gap tree reserves the nodes of an allocation's (at most two)
//! new entries before carving it, and the room of its free list with its node store, so an
//! alloc cannot fail half-way; a free inserts nothing and allocates nothing (an emptied
//! chunk's release is a free of its tree entry). A chunk given back to the tree (for a request
//! only its free space completes, or a reservation over it) has the nodes of all its
//! allocations' entries reserved first ([`TREE_NODE`] asked once), so it goes back whole or
//! not at all. Not covered: the
//! `BTreeMap` of reserved ranges and a reservation's list of the ones it merges have no fallible
//! form in stable Rust ([`TREE_NODE`] is asked before them; a real failure there aborts like
//! any Rust allocation), the temporary pfn list of a flush, and construction (every magazine of
//! the cache). The fallbacks free to the tree
//! through the same path as flush and trim, outside the cache locks. The loom models do not arm
//! sites (the loom build does not enable the feature).
//!
//! # Tests
//!
//! `tests/fault_injection.rs`: one test per site (the exact pfns that fall back, injected
//! failures counted, double frees of fallen-back pfns refused, the `RangeAllocator` unchanged on
//! failure), a proptest of random alloc/free on two CPU slots with a random site failing per step
//! (conservation and statistics checked after every step), and a two-thread run with sporadic
//! failures. Each ends with: after `flush_all` exactly the held ranges are allocated, no range
//! handed out twice, the counters add up (allocated = held + cached, allocated + free + reserved
//! = space), and a full round of every class works once disarmed.

use dma_sync::fault::Site;

/// A fresh empty magazine for a free whose CPU slot has both magazines full and whose depot
/// keeps no spare empty one. Fallback (Linux `__iova_rcache_insert`): the pfn is not cached
/// but freed straight to the range allocator, after the cache locks are dropped.
pub static MAGAZINE_ALLOC: Site = Site::new("iova.magazine.alloc");

/// Growing the depot's stack of full magazines. Fallback (Linux's full depot): the full
/// `loaded` magazine's pfns are freed to the range allocator after the locks are dropped, and
/// the free goes on into the fresh magazine.
pub static DEPOT_GROW: Site = Site::new("iova.depot.grow");

/// The range allocator's bookkeeping for a new range (the gap tree's nodes for up to two new
/// entries), on allocation and reservation, and for a chunk's allocations when the chunk goes
/// back to the tree. Fallback: the request fails with
/// [`IovaError::OutOfMemory`](crate::IovaError::OutOfMemory) before anything changes (Linux
/// `alloc_iova` returning NULL when `alloc_iova_mem` fails).
pub static TREE_NODE: Site = Site::new("iova.tree.node");

/// The bitmaps and summaries of a new chunk (module `chunk`), made for a small size-aligned
/// allocation when no chunk has room below its limit, or when a chunk-sized free block lies
/// above the chunks' fit. Fallback: the chunks' fit if there is one (a lower address), else the
/// request fails with [`IovaError::OutOfMemory`](crate::IovaError::OutOfMemory) before
/// anything changes.
pub static CHUNK_ALLOC: Site = Site::new("iova.chunk.alloc");

/// Recording a cached allocation as user-held (only with
/// [`IovaConfig::checked_frees`](crate::IovaConfig::checked_frees)): asked on every record,
/// and failing for real when a node or leaf of the held-range bitmap cannot be allocated the
/// first time a range lands in its part of the space. Fallback: the range goes back to the
/// range allocator and the allocation fails with
/// [`IovaError::OutOfMemory`](crate::IovaError::OutOfMemory); an unrecorded range could
/// never be freed.
pub static OWNER_RECORD: Site = Site::new("iova.owners.record");
