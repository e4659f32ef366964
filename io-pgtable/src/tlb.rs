//! TLB maintenance callbacks and the gather that batches leaf invalidations.

/// A gathered range of leaf invalidations: `[start, end]` inclusive, in pages of `pgsize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbRange {
    /// First input address.
    pub start: u64,
    /// Last input address (inclusive).
    pub end: u64,
    /// Leaf size of the gathered pages.
    pub pgsize: u64,
}

/// TLB maintenance the page table asks of its IOMMU (Linux's `iommu_flush_ops`).
///
/// Callbacks run in the caller's context, must not block on the page table, and must be
/// synchronous: when one returns, the invalidation is complete.
///
/// ```
/// use io_pgtable::{Gather, TlbOps, TlbRange};
/// use dma_sync::atomic::{AtomicUsize, Ordering};
/// #[derive(Default)]
/// struct Count(AtomicUsize);
/// impl TlbOps for Count {
///     fn flush_all(&self) {}
///     fn flush_walk(&self, _iova: u64, _size: u64, _granule: u64) {}
///     fn sync(&self, _range: &TlbRange) { self.0.fetch_add(1, Ordering::Relaxed); }
/// }
/// let tlb = Count::default();
/// let mut g = Gather::new();
/// tlb.add_page(&mut g, 0x1000, 0x1000);
/// tlb.add_page(&mut g, 0x2000, 0x1000); // adjacent: merged
/// tlb.add_page(&mut g, 0x9000, 0x1000); // disjoint: the first range is synced first
/// g.sync(&tlb);
/// assert_eq!(tlb.0.load(Ordering::Relaxed), 2);
/// ```
pub trait TlbOps: Send + Sync {
    /// Invalidate everything cached for this context.
    ///
    /// A page table's drop calls it before it frees any table; if it unwinds, the drop frees
    /// none (the walk cache may still hold them) and leaks them all, counted in
    /// [`leaked_tables`](crate::leaked_tables).
    fn flush_all(&self);
    /// Invalidate leaf and intermediate (walk-cache) entries for `[iova, iova + size)`;
    /// called after a table is unlinked and before it is freed.
    ///
    /// A call that unwinds has not invalidated, as far as the page table knows, so the
    /// tables it was called for are never freed on its account: a block map or
    /// [`prune`](crate::PageTable::prune) puts the table back as it was; an unmap, which has
    /// already taken the subtree (its entries invalid), keeps the unlinked tables, counted
    /// retired, until the page table is dropped, after [`TlbOps::flush_all`]. Handing them to
    /// RCU instead would free them once no software reader holds them, while the walk cache
    /// might still point a device into their reused memory; so one leaked subtree per
    /// unwound flush, until the drop, is the price of a callback that panics.
    fn flush_walk(&self, iova: u64, size: u64, granule: u64);
    /// Invalidate the leaf entries of a gathered range and wait (Linux's `iotlb_sync`).
    fn sync(&self, range: &TlbRange);
    /// Queue the invalidation of one cleared leaf. The default merges it into `gather`,
    /// syncing first when it cannot be merged.
    fn add_page(&self, gather: &mut Gather, iova: u64, granule: u64) {
        gather.add_page(self, iova, granule);
    }
}

/// TLB operations that do nothing: for tables no hardware walks.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTlb;

impl TlbOps for NoTlb {
    fn flush_all(&self) {}
    fn flush_walk(&self, _iova: u64, _size: u64, _granule: u64) {}
    fn sync(&self, _range: &TlbRange) {}
}

/// Leaf invalidations gathered during unmaps, with Linux's `iommu_iotlb_gather` semantics:
/// adjacent or overlapping pages of one size merge; a different size or a disjoint range
/// syncs the gathered range first. A *queued* gather (lazy mode) collects nothing: the
/// caller's flush queue invalidates everything later.
///
/// ```
/// use io_pgtable::{Gather, NoTlb, TlbRange};
/// let mut g = Gather::new();
/// g.add_page(&NoTlb, 0x2000, 0x1000);
/// g.add_page(&NoTlb, 0x1000, 0x1000);
/// assert_eq!(g.range(), Some(TlbRange { start: 0x1000, end: 0x2fff, pgsize: 0x1000 }));
/// g.sync(&NoTlb);
/// assert!(g.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gather {
    start: u64,
    end: u64,
    pgsize: u64,
    queued: bool,
}

impl Default for Gather {
    fn default() -> Self {
        Self::new()
    }
}

impl Gather {
    /// An empty gather for strict invalidation.
    pub const fn new() -> Self {
        Gather {
            start: u64::MAX,
            end: 0,
            pgsize: 0,
            queued: false,
        }
    }

    /// An empty gather for lazy mode: unmaps add no pages to it.
    pub const fn queued() -> Self {
        Gather {
            queued: true,
            ..Self::new()
        }
    }

    /// Whether this gather is in lazy (queued) mode.
    pub fn is_queued(&self) -> bool {
        self.queued
    }

    /// Whether nothing is gathered.
    pub fn is_empty(&self) -> bool {
        self.pgsize == 0 && self.start > self.end
    }

    /// The gathered range, if any.
    #[inline]
    pub fn range(&self) -> Option<TlbRange> {
        (self.start <= self.end).then_some(TlbRange {
            start: self.start,
            end: self.end,
            pgsize: self.pgsize,
        })
    }

    /// Whether `[iova, iova + size)` neither overlaps nor touches the gathered range.
    #[inline]
    pub fn is_disjoint(&self, iova: u64, size: u64) -> bool {
        let last = iova.saturating_add(size.max(1) - 1);
        self.start <= self.end
            && (last.saturating_add(1) < self.start || iova > self.end.saturating_add(1))
    }

    /// Extend the range without any sync (range-invalidating hardware).
    #[inline]
    pub fn add_range(&mut self, iova: u64, size: u64) {
        let last = iova.saturating_add(size.max(1) - 1);
        self.start = self.start.min(iova);
        self.end = self.end.max(last);
    }

    /// Add one page of `size`, syncing through `tlb` first if it cannot be merged.
    pub fn add_page<T: TlbOps + ?Sized>(&mut self, tlb: &T, iova: u64, size: u64) {
        if (self.pgsize != 0 && self.pgsize != size) || self.is_disjoint(iova, size) {
            self.sync(tlb);
        }
        self.pgsize = size;
        self.add_range(iova, size);
    }

    /// Invalidate the gathered range through `tlb` (if any) and reset.
    pub fn sync<T: TlbOps + ?Sized>(&mut self, tlb: &T) {
        if let Some(range) = self.range() {
            tlb.sync(&range);
        }
        *self = Gather {
            queued: self.queued,
            ..Self::new()
        };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use dma_sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<TlbRange>>);
    impl TlbOps for Log {
        fn flush_all(&self) {}
        fn flush_walk(&self, _: u64, _: u64, _: u64) {}
        fn sync(&self, r: &TlbRange) {
            self.0.lock().push(*r);
        }
    }

    #[test]
    fn merges_adjacent_and_overlapping() {
        let log = Log::default();
        let mut g = Gather::new();
        for iova in [0x3000, 0x2000, 0x4000, 0x3000] {
            log.add_page(&mut g, iova, 0x1000);
        }
        assert!(log.0.lock().is_empty());
        assert_eq!(
            g.range(),
            Some(TlbRange {
                start: 0x2000,
                end: 0x4fff,
                pgsize: 0x1000
            })
        );
    }

    #[test]
    fn size_change_or_gap_syncs_first() {
        let log = Log::default();
        let mut g = Gather::new();
        log.add_page(&mut g, 0x1000, 0x1000);
        log.add_page(&mut g, 0x20_0000, 0x20_0000); // new size: sync
        log.add_page(&mut g, 0x80_0000, 0x20_0000); // gap: sync
        g.sync(&log);
        let synced = log.0.lock().clone();
        assert_eq!(
            synced,
            vec![
                TlbRange {
                    start: 0x1000,
                    end: 0x1fff,
                    pgsize: 0x1000
                },
                TlbRange {
                    start: 0x20_0000,
                    end: 0x3f_ffff,
                    pgsize: 0x20_0000
                },
                TlbRange {
                    start: 0x80_0000,
                    end: 0x9f_ffff,
                    pgsize: 0x20_0000
                },
            ]
        );
        assert!(g.is_empty());
    }

    #[test]
    fn zero_sizes_do_not_panic() {
        let mut g = Gather::new();
        g.add_page(&NoTlb, 0x1000, 0);
        assert!(!g.is_disjoint(0x1000, 0));
        g.add_range(u64::MAX, 0);
        assert_eq!(g.range().map(|r| r.end), Some(u64::MAX));
    }

    #[test]
    fn empty_sync_does_nothing_and_queued_survives_sync() {
        let log = Log::default();
        let mut g = Gather::queued();
        g.sync(&log);
        assert!(log.0.lock().is_empty());
        assert!(g.is_queued() && g.is_empty());
    }
}
