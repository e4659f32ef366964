//! The allocation sites of this crate whose failure it survives, by name.
//!
//! Each is a [`dma_sync::fault::Site`]; the code asks it before the allocation and, when it
//! (or the real allocation) fails, takes the fallback documented here. With the
//! `fault-injection` feature (always on for this crate's own tests) a test arms a site with
//! `dma_sync::fault::armed`; without it every site is a constant "no failure":
//!
//! ```
//! use io_pgtable::{faults, Config, Error, PageTable, Prot};
//! let pt = PageTable::new(Config::s1_4k(39)).unwrap();
//! let (r, used) = dma_sync::fault::armed(&faults::TABLE_ALLOC, 1, || {
//!     pt.map_pages(0x1000, 0x1000, 0x1000, 1, Prot::READ)
//! });
//! assert_eq!((r, used), (Err(Error::NoMemory), 1));
//! assert!(pt.iova_to_phys(0x1000).is_none(), "nothing mapped");
//! assert_eq!(pt.map_pages(0x1000, 0x1000, 0x1000, 1, Prot::READ), Ok(0x1000));
//! ```
//!
//! # What allocates, and the tests
//!
//! Tables come from the slab (chunks) and the root from its own allocation; both ask
//! [`TABLE_ALLOC`] first, and an injected failure takes the same path as a real null from the
//! allocator. Feature `fault-injection` (forwarding `dma-sync/fault-injection`) lets other crates'
//! tests arm it (dma-iommu forwards it). Unmap allocates no table (the tests arm the site around
//! every unmap and assert it is never consulted). It does allocate the retirement record of a
//! freed subtree (a `Vec` of its tables and the boxed RCU callback) with Rust's infallible
//! allocation; a fallback there would need an allocation-free retirement (chaining the subtree
//! through its own table memory) and is not done.
//!
//! `tests/fault_injection.rs`: root allocation; a single map on an empty 4-level table
//! (statistics unchanged); each level 1/2/3 failing with the levels above present; a block map
//! needing no table unaffected by an armed site; the `map` helper failing at the second and at
//! the third leaf table (the pages of the first ones undone); a proptest workload (tiny 3-level
//! table) arming failures per map against a reference `BTreeMap`. After every step: translations
//! equal the reference, the dump maps no page the reference lacks, `stats().linked()` equals the
//! tables reachable in `dump()`, `freed` catches up with `discarded + retired` once grace periods
//! run, and the disarmed table maps and unmaps a fresh range.

use dma_sync::fault::Site;

/// A table level (the root at construction, a missing intermediate or leaf table on a map).
/// Fallback (Linux `__arm_lpae_map` when `__arm_lpae_alloc_pages` fails): the call fails with
/// [`Error::NoMemory`](crate::Error::NoMemory) before any leaf is written, so every
/// translation is as before. Tables this call installed above the failed level stay linked,
/// empty (another mapper may already be descending into them, as in Linux); they are counted
/// and reachable, and freed when an unmap covers their span or with the table.
/// [`PageTable::map`](crate::PageTable::map) also unmaps what earlier steps of the same
/// call mapped.
pub static TABLE_ALLOC: Site = Site::new("pgtable.table.alloc");
