//! The IOVA allocation policy of DMA mappings (Linux `iommu_dma_alloc_iova`): 32-bit (PCI
//! SAC) addresses first for devices with wider masks, given up for a device after its first
//! miss.
//!
//! Trying below 4 GiB on every map after the 32-bit space filled made each map pay a failed
//! search (Linux fixed this in v6.4 by clearing the device's flag on the first miss).

use dma_sync::atomic::{AtomicBool, Ordering};
use iova_cache::{IovaAllocator, IovaError};

/// Per-device allocation policy state.
///
/// ```
/// use dma_iommu::DevicePolicy;
/// use iova_cache::{IovaAllocator, IovaConfig};
/// // A 33-bit space of 4 KiB granules: pfns up to 2^21 - 1.
/// let a = IovaAllocator::new(IovaConfig::with_space(1, (1 << 21) - 1)).unwrap();
/// let dev = DevicePolicy::new(true);
/// let p = dev.alloc_iova(&a, 1, (1 << 21) - 1).unwrap();
/// assert!(p < a.dma_32bit_pfn(), "32-bit address first");
/// assert!(dev.tries_32bit_first());
/// ```
#[derive(Debug)]
pub struct DevicePolicy {
    /// Monotone: only ever cleared, so a stale `true` costs one extra fast attempt and a
    /// stale `false` nothing; Relaxed is enough.
    sac_first: AtomicBool,
}

impl DevicePolicy {
    /// Policy for a device; `try_32bit_first` is Linux's `pci_32bit_workaround` (PCI device
    /// and no `iommu.forcedac`).
    pub fn new(try_32bit_first: bool) -> Self {
        Self {
            sac_first: AtomicBool::new(try_32bit_first),
        }
    }

    /// Whether the next allocation still tries below 4 GiB first.
    // Inline: read on every map, whose code is generated in the caller's crate, where a
    // function of this crate not marked inline stays a call.
    #[inline]
    pub fn tries_32bit_first(&self) -> bool {
        self.sac_first.load(Ordering::Relaxed)
    }

    /// Stop trying 32-bit addresses first for this device, for good.
    ///
    /// ```
    /// use dma_iommu::DevicePolicy;
    /// use iova_cache::{IovaAllocator, IovaConfig};
    /// let a = IovaAllocator::new(IovaConfig::with_space(1, (1 << 21) - 1)).unwrap();
    /// let dev = DevicePolicy::new(true);
    /// dev.use_full_width();
    /// assert!(!dev.tries_32bit_first());
    /// let p = dev.alloc_iova(&a, 1, (1 << 21) - 1).unwrap();
    /// assert!(p >= a.dma_32bit_pfn(), "top-down over the full mask");
    /// ```
    pub fn use_full_width(&self) {
        self.sac_first.store(false, Ordering::Relaxed);
    }

    /// Allocate `size` granules from `iova` for a device whose mask allows pfns up to
    /// `dma_limit` (inclusive): if that exceeds 32 bits and the device still tries 32-bit
    /// first, try below 4 GiB without flushing the caches; on a miss clear the device's flag
    /// permanently and allocate against the full limit (with flush and retry).
    ///
    /// ```
    /// use dma_iommu::DevicePolicy;
    /// use iova_cache::{IovaAllocator, IovaConfig};
    /// let a = IovaAllocator::new(IovaConfig::with_space(1, (1 << 21) - 1)).unwrap();
    /// a.reserve(1, a.dma_32bit_pfn() - 1).unwrap(); // no 32-bit space at all
    /// let dev = DevicePolicy::new(true);
    /// let p = dev.alloc_iova(&a, 1, (1 << 21) - 1).unwrap();
    /// assert!(p >= a.dma_32bit_pfn());
    /// assert!(!dev.tries_32bit_first(), "given up after the first miss");
    /// ```
    // Always inline: on every map, and its common case (a per-CPU cache hit) is shorter than
    // the call the compiler otherwise kept.
    #[inline(always)]
    pub fn alloc_iova(
        &self,
        iova: &IovaAllocator,
        size: u64,
        dma_limit: u64,
    ) -> Result<u64, IovaError> {
        // The flag first: a device that does not try 32-bit first skips the limit's arithmetic.
        if self.tries_32bit_first() && dma_limit >= iova.dma_32bit_pfn() {
            return self.alloc_32bit_first(iova, size, dma_limit);
        }
        iova.alloc(size, dma_limit)
    }

    /// [`DevicePolicy::alloc_iova`] while the device still tries below 4 GiB first: out of
    /// line, so a device that never did (or gave up) pays nothing for it.
    #[inline(never)]
    fn alloc_32bit_first(
        &self,
        iova: &IovaAllocator,
        size: u64,
        dma_limit: u64,
    ) -> Result<u64, IovaError> {
        let limit32 = iova.dma_32bit_pfn() - 1;
        match iova.alloc_no_flush(size, limit32) {
            Ok(pfn) => return Ok(pfn),
            // Bad input and a transient lack of memory say nothing about 32-bit space.
            Err(
                e @ (IovaError::ZeroSize
                | IovaError::TooLarge { .. }
                | IovaError::OutOfMemory { .. }),
            ) => return Err(e),
            Err(_) => self.use_full_width(),
        }
        iova.alloc(size, dma_limit)
    }
}
