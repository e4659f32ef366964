//! The bounce side of an untrusted device's mappings (Linux `iommu_dma_map_page`'s swiotlb
//! branch): a buffer that shares its granules with other data is copied into bounce slots of
//! its own, mapped in its place, copied back when the device is done, and released exactly
//! once, whatever original memory does.

use crate::error::DmaError;
use swiotlb_core::{Direction, MapAttrs, Swiotlb};

/// An untrusted device's view of the domain's bounce pool.
pub(crate) struct Bouncer<'a> {
    pub(crate) pool: &'a Swiotlb,
    pub(crate) dev: &'a swiotlb_core::Device,
}

impl Bouncer<'_> {
    /// Bounce `len` bytes at `paddr` into slots aligned to the granule (`granule_mask`), the
    /// padding zeroed, so the device sees nothing else of the granules; returns the slots'
    /// address.
    pub(crate) fn map(
        &self,
        paddr: u64,
        len: usize,
        dir: Direction,
        granule_mask: u64,
    ) -> Result<u64, DmaError> {
        let attrs = MapAttrs {
            alloc_align_mask: granule_mask,
            zero_padding: true,
            ..MapAttrs::default()
        };
        Ok(self.pool.map(self.dev, paddr, len, dir, attrs)?)
    }

    /// Copy the device's writes to the mapping at `dma` back (by direction, unless
    /// `copy_back` is false), then release its slots whatever the copy did: the mapping is
    /// gone either way, and a slot kept now could never be released. A refused copy is
    /// [`DmaError::LostCopyBack`].
    pub(crate) fn unmap(
        &self,
        dma: u64,
        phys: u64,
        len: usize,
        dir: Direction,
        copy_back: bool,
    ) -> Result<(), DmaError> {
        let device_wrote = matches!(dir, Direction::FromDevice | Direction::Bidirectional);
        let copied = if copy_back && device_wrote {
            self.pool.sync_for_cpu(self.dev, phys, len, dir)
        } else {
            Ok(())
        };
        self.release(phys, len, dir);
        copied.map_err(|e| {
            copy_error(e, |cause| DmaError::LostCopyBack {
                dma,
                size: len as u64,
                cause,
            })
        })
    }

    /// Release slots without copying back. Only the caller holds `phys` (a fresh map, or the
    /// unmap that took the record), so the pool refuses only if the slots were released
    /// around the domain, through the pool itself: then they are free already.
    pub(crate) fn release(&self, phys: u64, len: usize, dir: Direction) {
        let skip = MapAttrs {
            skip_cpu_sync: true,
            ..MapAttrs::default()
        };
        let _ = self.pool.unmap(self.dev, phys, len, dir, skip);
    }
}

/// A bounce pool error as the domain reports it: a copy that original memory refused becomes
/// `refused(cause)`, anything else [`DmaError::Bounce`].
pub(crate) fn copy_error(
    e: swiotlb_core::Error,
    refused: impl FnOnce(swiotlb_core::MemoryError) -> DmaError,
) -> DmaError {
    match e {
        swiotlb_core::Error::Memory(cause) => refused(cause),
        e => DmaError::Bounce(e),
    }
}
