//! The allocation sites of this crate whose failure it survives, by name.
//!
//! Each is a [`dma_sync::fault::Site`]; the pool constructor asks it before taking the pool's
//! memory and, when it (or a real allocation: the pool region, the slot metadata, the area
//! counters, all fallible) fails, the caller takes the fallback documented here. With the
//! `fault-injection` feature (always on for this crate's own tests) a test arms a site with
//! `dma_sync::fault::armed`; without it every site is a constant "no failure".
//!
//! The map and unmap paths allocate nothing else: a device's transient list is intrusive (the
//! pool's own `next` pointer), so linking needs no node, and unmap only frees.
//!
//! Arming is per thread: growth run by the background worker (`Config::background_growth`)
//! reaches [`POOL_GROW`] on the worker's thread, which a test cannot arm; tests drive growth
//! through the synchronous [`Swiotlb::grow`](crate::Swiotlb::grow) and
//! [`Swiotlb::grow_by`](crate::Swiotlb::grow_by), which the worker runs too.
//!
//! ```
//! use swiotlb_core::{faults, Config, Error, RegionMemory, Swiotlb};
//! let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), RegionMemory::new(64)).unwrap();
//! let (r, used) = dma_sync::fault::armed(&faults::POOL_GROW, 1, || swiotlb.grow_by(8));
//! assert_eq!((r, used), (Err(Error::PoolAlloc { nslabs: 8 }), 1));
//! assert_eq!(swiotlb.stats().pools.len(), 1, "the pool list is unchanged");
//! assert_eq!(swiotlb.grow_by(8), Ok(8), "disarmed: growth works again");
//! ```
//!
//! # Tests
//!
//! `tests/fault_injection.rs`: one test per site (the constructor error; a failed growth leaves
//! the pool list and every counter unchanged and later maps still work, in a transient pool and
//! then in the default pool; `grow` makes three attempts, 2048 → 1024 → 512 slots, and succeeds
//! at the size of the first attempt that is not failed; a failed transient pool is `NoSpace`
//! with statistics, flag, transient list and original bytes unchanged), a proptest workload (48
//! cases of up to 150 maps, unmaps and growths on two devices, one with `min_align_mask` 0xFFF,
//! a random site failing on 40 % of the steps; after every step the invariants, `used` equal to
//! the held mappings' slots, transient pools and slots equal to the held transient mappings,
//! every live mapping's bounce bytes, `nslabs` equal to the pools' sum) and a two-thread version
//! of it on shared pools. Every test ends by unmapping everything and, disarmed, filling every
//! global segment, spilling into transient pools and taking it all back.
//!
//! Not covered: spawning the background worker (`dma_sync::thread::spawn`, i.e.
//! `std::thread::spawn`) panics if the OS refuses a thread; dma-sync has no fallible spawn.

use dma_sync::fault::Site;

/// The default pool of a new instance. Fallback: [`Swiotlb::new`](crate::Swiotlb::new) fails
/// with [`Error::PoolAlloc`](crate::Error::PoolAlloc); nothing is left allocated.
pub static DEFAULT_POOL: Site = Site::new("swiotlb.pool.default");

/// A dynamic pool added to the global list by growth. Fallback (Linux `swiotlb_alloc_pool`
/// called from `swiotlb_dyn_alloc`): [`Swiotlb::grow_by`](crate::Swiotlb::grow_by) fails with
/// [`Error::PoolAlloc`](crate::Error::PoolAlloc) and the pool list is unchanged;
/// [`Swiotlb::grow`](crate::Swiotlb::grow) (the background worker's step) retries with half
/// the slots, down to the minimum, before giving up. A worker that gives up leaves the next
/// failed search to start it again; the searches meanwhile use transient pools.
pub static POOL_GROW: Site = Site::new("swiotlb.pool.grow");

/// A transient pool for one mapping when no global pool has room. Fallback (Linux
/// `swiotlb_find_slots` when `swiotlb_alloc_pool` fails): the map fails with
/// [`Error::NoSpace`](crate::Error::NoSpace) ("swiotlb buffer is full"); nothing is linked,
/// no counter moves and the device's flag is not set by this map.
pub static TRANSIENT_POOL: Site = Site::new("swiotlb.transient.alloc");
