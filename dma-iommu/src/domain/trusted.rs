//! The trusted single mapping done once: a trusted device's buffer is never bounced, so its
//! map is validate → allocate the IOVA → map the page table → record, and all of it runs in
//! one frame (the caller's: `Domain::map` and this are inlined), with only the allocator's
//! and the page table's calls on its success path (the compiler may inline the allocator's
//! fast path too, as in `examples/lazy_loop.rs`) and every failure path cold. The general
//! path (`map_single` → `map_phys` → a `NewMapping`) builds the same steps from layers that
//! each hand a `Result` back through memory.

use super::{buffer_end, Domain};
use crate::backend::{prot_for, IovaSpan};
use crate::device::Device;
use crate::error::DmaError;
use crate::iotlb::TlbOps;
use crate::points::MAP_RECORD_LAST;
use crate::registry::{Held, Record};
use swiotlb_core::Direction;

impl<T: TlbOps + 'static> Domain<T> {
    /// [`Domain::map`] for a trusted device: the same checks and errors as the general path,
    /// and every failure undoes what the call did (the IOVA freed; mapped leaves taken down
    /// with a synced gather first).
    #[inline]
    pub(super) fn map_trusted(
        &self,
        dev: &Device,
        paddr: u64,
        size: u64,
        dir: Direction,
    ) -> Result<u64, DmaError> {
        self.check_device(dev)?;
        buffer_end(paddr, size)?;
        let offset = paddr & (self.granule() - 1);
        let span = self.reserve(dev, offset, size)?;
        let iova = span.pfn << self.shift;
        let len = span.granules << self.shift;
        let prot = prot_for(dir, false);
        let rec = Record {
            dev: dev.inner.id,
            size,
            held: Held::Single,
        };
        // Weakened: recorded before the leaves are written, so an unmap that guessed the
        // address can take the record, unmap nothing and free the IOVA in between.
        let record_first = !MAP_RECORD_LAST.on();
        if record_first {
            if let Err(e) = self.registry.insert(iova + offset, rec) {
                return Err(self.map_failed(span, 0, e));
            }
        }
        if let Err(e) = self.backend.pt.map(iova, paddr - offset, len, prot) {
            // The page table undid its part itself. Converted here, off the success path.
            return Err(self.map_failed(span, 0, e.into()));
        }
        if !record_first {
            if let Err(e) = self.registry.insert(iova + offset, rec) {
                return Err(self.map_failed(span, len, e));
            }
        }
        Ok(iova + offset)
    }

    /// Undo a trusted map that failed after its IOVA was allocated: unmap the `mapped` bytes
    /// and free the span, then hand the error on.
    #[cold]
    #[inline(never)]
    fn map_failed(&self, span: IovaSpan, mapped: u64, e: DmaError) -> DmaError {
        self.backend.undo_unpublished(span, mapped, self.shift);
        e
    }
}
