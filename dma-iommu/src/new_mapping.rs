//! A mapping under construction: its IOVA range is reserved, its extents are mapped one by
//! one, and it becomes live when it is recorded. Dropped before that (any error on the way),
//! it takes down what it mapped (strict: synced before the IOVA is freed, as nothing was
//! published) and gives the IOVA back, so every map path undoes itself the same way.

use crate::backend::{prot_for, Backend, IovaSpan};
use crate::device::Device;
use crate::error::DmaError;
use crate::iotlb::TlbOps;
use crate::registry::{Held, Kind, Record, Registry};
use io_pgtable::Prot;
use swiotlb_core::Direction;

/// An IOVA range being mapped by one call, for one device.
pub(crate) struct NewMapping<'d, T: TlbOps + 'static> {
    backend: &'d Backend<T>,
    /// Where the mapping is recorded (and counted) once complete.
    registry: &'d Registry,
    dev: &'d Device,
    kind: Kind,
    prot: Prot,
    span: IovaSpan,
    shift: u32,
    /// Bytes from the start of the span to the end of the furthest mapped extent.
    mapped: u64,
    published: bool,
}

impl<'d, T: TlbOps + 'static> NewMapping<'d, T> {
    /// Take ownership of the freshly allocated `span` for a mapping of `kind` in direction
    /// `dir` for `dev`.
    pub(crate) fn new(
        backend: &'d Backend<T>,
        registry: &'d Registry,
        dev: &'d Device,
        kind: Kind,
        dir: Direction,
        span: IovaSpan,
        shift: u32,
    ) -> Self {
        Self {
            backend,
            registry,
            dev,
            kind,
            prot: prot_for(dir, kind == Kind::Resource),
            span,
            shift,
            mapped: 0,
            published: false,
        }
    }

    /// The first IOVA of the range.
    pub(crate) fn iova(&self) -> u64 {
        self.span.pfn << self.shift
    }

    /// Bytes of the range (whole granules).
    pub(crate) fn len(&self) -> u64 {
        self.span.granules << self.shift
    }

    /// Map `len` bytes at offset `at` of the range to `phys` (all granule-aligned, inside the
    /// range). On error the page table has undone this extent itself.
    pub(crate) fn map(&mut self, at: u64, phys: u64, len: u64) -> Result<(), DmaError> {
        self.backend
            .map_span(self.iova() + at, phys, len, self.prot)?;
        self.mapped = self.mapped.max(at + len);
        Ok(())
    }

    /// Record the mapping (`size` bytes the caller asked for, starting `offset` into the first
    /// granule, bounced to `bounce_buffer` if any): from now on an unmap may take it down.
    /// Returns the first IOVA; on error the drop undoes everything. By reference, and the
    /// caller drops it afterwards (a no-op once published): moving the whole mapping into the
    /// call cost every map a store-forwarding stall.
    pub(crate) fn publish(
        &mut self,
        size: u64,
        offset: u64,
        bounce_buffer: Option<u64>,
    ) -> Result<u64, DmaError> {
        let held = match (self.kind, bounce_buffer) {
            (Kind::Single, Some(phys)) => Held::Bounced(phys),
            (Kind::Single, None) => Held::Single,
            // Resources and lists are never bounced.
            (Kind::Resource, _) => Held::Resource,
            (Kind::List, _) => Held::List {
                granules: self.span.granules,
            },
        };
        let rec = Record {
            dev: self.dev.inner.id,
            size,
            held,
        };
        self.registry.insert(self.iova() + offset, rec)?;
        self.published = true;
        Ok(self.iova())
    }
}

impl<T: TlbOps + 'static> Drop for NewMapping<'_, T> {
    /// Inline, with the undo out of line: every successful map drops a published mapping.
    #[inline]
    fn drop(&mut self) {
        if !self.published {
            self.backend
                .undo_unpublished(self.span, self.mapped, self.shift);
        }
    }
}
