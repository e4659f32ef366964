//! What a domain shows of its IOVA allocator: diagnostics, never an allocation or a free.
//!
//! The domain owns every IOVA it hands out, and the registry relies on it: a mapping's first
//! pfn is recorded with plain stores because the allocator gave that pfn to one mapper alone
//! (module `registry`). A caller able to free a live mapping's IOVA could have the allocator
//! hand one pfn to two maps at once, racing on one record. So the allocator is reached only
//! through this view, which can count, find, check and give cached ranges back, and nothing
//! else:
//!
//! ```compile_fail
//! use dma_iommu::{Domain, DomainConfig, NoTlb};
//! let cfg = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
//! let dom = Domain::new(cfg, NoTlb, None).unwrap();
//! dom.iova_allocator().free(1, 1).unwrap(); // no free through the view
//! ```

use iova_cache::{IovaAllocator, IovaRange, IovaStats};

/// Diagnostics of a domain's IOVA allocator ([`crate::Domain::iova_allocator`]).
#[derive(Debug, Clone, Copy)]
pub struct IovaView<'d>(&'d IovaAllocator);

impl<'d> IovaView<'d> {
    pub(crate) fn new(iova: &'d IovaAllocator) -> Self {
        Self(iova)
    }

    /// The allocated range holding `pfn`, if any ([`IovaAllocator::find`]).
    pub fn find(&self, pfn: u64) -> Option<IovaRange> {
        self.0.find(pfn)
    }

    /// Give every cached free range back to the range allocator
    /// ([`IovaAllocator::flush_all`]); live mappings keep theirs.
    pub fn flush_all(&self) {
        self.0.flush_all()
    }

    /// Every allocated range as `(pfn, granules)` ([`IovaAllocator::allocated_ranges`]).
    pub fn allocated_ranges(&self) -> Vec<(u64, u64)> {
        self.0.allocated_ranges()
    }

    /// The allocator's consistency check ([`IovaAllocator::check_invariants`]).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.0.check_invariants()
    }

    /// The allocator's statistics ([`IovaAllocator::stats`]).
    pub fn stats(&self) -> IovaStats {
        self.0.stats()
    }

    /// The statistics as a text report ([`IovaAllocator::report`]).
    pub fn report(&self) -> String {
        self.0.report()
    }
}
