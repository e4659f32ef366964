//! Other people's designs, rebuilt (not copied) from their descriptions so they run in the same
//! process as ours: the allocators, mapping stores and bounce strategies that VMMs use today.

pub mod alloc;
pub mod bounce;
pub mod mapping;

/// An IOVA-style range allocator in granules: the interface the allocation cases drive, so ours
/// and every peer run the identical workload.
pub trait RangeAlloc: Sync {
    /// Allocate `granules` contiguous granules aligned to their size rounded up to a power of
    /// two; the address of the first granule, or `None` when the space is exhausted.
    fn alloc(&self, granules: u64) -> Option<u64>;
    /// Free what [`RangeAlloc::alloc`] returned for the same `granules`.
    fn free(&self, addr: u64, granules: u64);
}

/// The granule every allocator case uses (4 KiB).
pub const GRANULE: u64 = 4096;

/// A boxed allocator is one too (for lists of cases over different allocators).
impl<A: RangeAlloc + ?Sized> RangeAlloc for Box<A> {
    fn alloc(&self, granules: u64) -> Option<u64> {
        (**self).alloc(granules)
    }

    fn free(&self, addr: u64, granules: u64) {
        (**self).free(addr, granules)
    }
}
