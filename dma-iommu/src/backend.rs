//! What a domain maps into and frees into: its IOVA allocator, its I/O page table and the
//! caller's IOTLB (Linux: the `iommu_domain` with its `iova_domain`).
//!
//! The domain owns it behind an `Arc` and hands [`crate::Strictness`] a clone, through which
//! unmaps invalidate and free ([`InvalidationOps`]); everything that touches the page table or
//! the allocator on behalf of a mapping is a method here.

use crate::error::DmaError;
use crate::flush_queue::InvalidationOps;
use crate::iotlb::{Gather, TlbOps, TlbRange};
use dma_sync::Arc;
use io_pgtable::{PageTable, Prot};
use iova_cache::IovaAllocator;
use swiotlb_core::Direction;

/// An IOVA range held by a mapping, as the flush queue frees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IovaSpan {
    /// First pfn.
    pub pfn: u64,
    /// Granules.
    pub granules: u64,
}

/// The caller's IOTLB behind an `Arc`, shared by the page table and the backend.
pub(crate) struct SharedIotlb<T>(pub(crate) Arc<T>);

impl<T: TlbOps> TlbOps for SharedIotlb<T> {
    fn flush_all(&self) {
        self.0.flush_all();
    }
    fn flush_walk(&self, iova: u64, size: u64, granule: u64) {
        self.0.flush_walk(iova, size, granule);
    }
    fn sync(&self, range: &TlbRange) {
        self.0.sync(range);
    }
}

/// The IOVA allocator, the page table and the IOTLB of one domain.
pub(crate) struct Backend<T: TlbOps + 'static> {
    pub(crate) pt: PageTable<SharedIotlb<T>>,
    pub(crate) iova: IovaAllocator,
    pub(crate) iotlb: Arc<T>,
}

/// The page-table permissions a mapping in direction `dir` needs (`mmio`: a resource).
pub(crate) fn prot_for(dir: Direction, mmio: bool) -> Prot {
    let p = match dir {
        Direction::ToDevice => Prot::READ,
        Direction::FromDevice => Prot::WRITE,
        Direction::Bidirectional => Prot::READ | Prot::WRITE,
    };
    if mmio {
        p | Prot::MMIO
    } else {
        p | Prot::CACHE
    }
}

impl<T: TlbOps + 'static> Backend<T> {
    /// Map `len` bytes at `iova` to `phys` (both granule-aligned).
    pub(crate) fn map_span(
        &self,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<(), DmaError> {
        self.pt.map(iova, phys, len, prot).map_err(DmaError::from)
    }

    /// Take down a mapping that was never published (an undo): unmap the first `mapped` bytes
    /// of `span` with a synced gather, then free the span. Only its mapper knows the IOVA, so
    /// nothing else changes its leaves meanwhile, and no IOTLB entry can name it once synced.
    #[cold]
    #[inline(never)]
    pub(crate) fn undo_unpublished(&self, span: IovaSpan, mapped: u64, shift: u32) {
        if mapped > 0 {
            let mut gather = Gather::new();
            unmap_present(&self.pt, span.pfn << shift, mapped, 1 << shift, &mut gather);
            gather.sync(&*self.iotlb);
        }
        self.reclaim(span);
    }
}

impl<T: TlbOps + 'static> InvalidationOps for Backend<T> {
    type Entry = IovaSpan;

    fn flush_all(&self) {
        self.iotlb.flush_all();
    }

    fn sync(&self, gather: &mut Gather) {
        gather.sync(&*self.iotlb);
    }

    fn reclaim(&self, span: IovaSpan) {
        // The registry hands every span to one unmap, and the domain's allocator is reached
        // only through it (`Domain::iova_allocator` is a view that cannot free), so the span
        // is freed once; a refusal would mean it is free already, and nothing is lost.
        let _ = self.iova.free(span.pfn, span.granules);
    }

    fn reclaim_all(&self, spans: impl Iterator<Item = IovaSpan>) {
        // One slot-lock acquisition per run of a size class instead of one per span; a
        // refusal means what it means for one span above.
        let _ = self.iova.free_batch(spans.map(|s| (s.pfn, s.granules)));
    }
}

/// Unmap every mapped part of `[iova, iova + len)`, stepping over unmapped granules (a
/// scatter list's span has holes where a segment moved to a boundary).
pub(crate) fn unmap_present<T: TlbOps>(
    pt: &PageTable<T>,
    iova: u64,
    len: u64,
    granule: u64,
    gather: &mut Gather,
) {
    let end = iova + len;
    let mut at = iova;
    while at < end {
        match pt.unmap_with(at, end - at, gather) {
            Ok(n) if n > 0 => at += n,
            _ => at += granule,
        }
    }
}
