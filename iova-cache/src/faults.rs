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

use dma_sync::fault::Site;

/// A fresh empty magazine for a free whose CPU slot has both magazines full and whose depot
/// keeps no spare empty one. Fallback (Linux `__iova_rcache_insert`): the pfn is not cached
/// but freed straight to the range allocator, after the cache locks are dropped.
pub static MAGAZINE_ALLOC: Site = Site::new("iova.magazine.alloc");

/// Growing the depot's stack of full magazines. Fallback (Linux's full depot): the full
/// `loaded` magazine's pfns are freed to the range allocator after the locks are dropped, and
/// the free goes on into the fresh magazine.
pub static DEPOT_GROW: Site = Site::new("iova.depot.grow");

/// The range allocator's bookkeeping for a new range (free-tree node, live-range entry), on
/// allocation and reservation. Fallback: the request fails with
/// [`IovaError::OutOfMemory`](crate::IovaError::OutOfMemory) before anything changes (Linux
/// `alloc_iova` returning NULL when `alloc_iova_mem` fails).
pub static TREE_NODE: Site = Site::new("iova.tree.node");

/// Recording a cached allocation as user-held (only with
/// [`IovaConfig::checked_frees`](crate::IovaConfig::checked_frees)): asked on every record,
/// and failing for real when a node or leaf of the held-range bitmap cannot be allocated the
/// first time a range lands in its part of the space. Fallback: the range goes back to the
/// range allocator and the allocation fails with
/// [`IovaError::OutOfMemory`](crate::IovaError::OutOfMemory); an unrecorded range could
/// never be freed.
pub static OWNER_RECORD: Site = Site::new("iova.owners.record");
