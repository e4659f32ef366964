//! Typed errors of the domain: bad input never panics, and the domain is unchanged afterwards.

use crate::flush_queue::FqError;
use std::fmt;

/// Why a DMA operation was refused. The domain and the device are unchanged after any error.
///
/// ```
/// use dma_iommu::DmaError;
/// assert!(DmaError::ZeroSize.to_string().contains("zero"));
/// let e = DmaError::NotMapped { dma: 0x1000 };
/// assert!(e.to_string().contains("0x1000"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmaError {
    /// A mapping, unmap or sync of zero bytes.
    ZeroSize,
    /// The mapping cannot fit below the device's DMA mask (or the domain's aperture).
    BeyondMask {
        /// Bytes of IOVA space the mapping needs (granule-aligned).
        len: u64,
        /// The device's DMA mask.
        dma_mask: u64,
    },
    /// No free IOVA range below the device's mask.
    NoIova(iova_cache::IovaError),
    /// The address is not a live mapping in this domain (never mapped, mapped in another
    /// domain, or unmapped already), or, for an unmap, it was mapped by another device.
    /// Syncs, like Linux's `dma_sync_*`, look only at the address: any device attached to
    /// the domain may sync a live mapping of it.
    NotMapped {
        /// The DMA address given.
        dma: u64,
    },
    /// The unmap does not match the mapping at that address (size, offset or kind).
    Mismatch {
        /// The DMA address given.
        dma: u64,
        /// The size given.
        size: u64,
        /// The size the mapping was made with.
        mapped: u64,
    },
    /// The device handle belongs to another domain.
    ForeignDevice,
    /// A scatter-list segment is longer than the device's maximum segment size, or cannot be
    /// placed without crossing its segment boundary.
    BadSegment {
        /// Index of the segment.
        index: usize,
        /// Its length.
        len: u64,
    },
    /// An untrusted device needs bounce buffers, and the domain has none.
    NoBounceBuffers,
    /// An address computation overflowed.
    Overflow,
    /// The bounce-buffer allocator refused.
    Bounce(swiotlb_core::Error),
    /// The page table refused.
    PageTable(io_pgtable::Error),
    /// The flush queue could not be built.
    FlushQueue(FqError),
    /// The record of a new mapping could not be allocated (see
    /// [`crate::faults::MAPPING_RECORD`]); the mapping was undone. From `Domain::new`: the
    /// registry's root could not be allocated.
    NoMemory,
    /// The domain configuration is inconsistent or exceeds a documented maximum.
    Config(&'static str),
    /// The device configuration is inconsistent ([`crate::DeviceConfig::validate`]).
    DeviceConfig(&'static str),
    /// Original memory refused a copy between it and a bounce buffer during a sync: nothing
    /// was copied, and the mapping is live and unchanged, so the sync can be retried.
    CopyRefused {
        /// DMA address of the range that was not copied.
        dma: u64,
        /// Its length in bytes.
        size: u64,
        /// The access the memory refused.
        cause: swiotlb_core::MemoryError,
    },
    /// An unmap took the mapping down and released its bounce buffer, but original memory
    /// refused the copy-back: the device's writes to `[dma, dma + size)` are lost. The
    /// mapping is gone (a retry is [`DmaError::NotMapped`]).
    LostCopyBack {
        /// DMA address of the lost range (the mapping's address).
        dma: u64,
        /// Its length in bytes.
        size: u64,
        /// The write the memory refused (where the bytes should have gone).
        cause: swiotlb_core::MemoryError,
    },
    /// A device access through a translation the mapping does not permit, or to an
    /// unmapped address.
    Fault {
        /// The DMA address of the faulting access.
        dma: u64,
    },
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::ZeroSize => write!(f, "zero-sized DMA operation"),
            DmaError::BeyondMask { len, dma_mask } => {
                write!(
                    f,
                    "{len:#x} bytes of IOVA space do not fit below the DMA mask {dma_mask:#x}"
                )
            }
            DmaError::NoIova(e) => write!(f, "no IOVA space: {e}"),
            DmaError::NotMapped { dma } => {
                write!(f, "{dma:#x} is not a live mapping of this device")
            }
            DmaError::Mismatch { dma, size, mapped } => {
                write!(f, "unmap of {size:#x} bytes at {dma:#x} does not match the mapping of {mapped:#x} bytes")
            }
            DmaError::ForeignDevice => write!(f, "the device is attached to another domain"),
            DmaError::BadSegment { index, len } => {
                write!(f, "scatter-list segment {index} of {len:#x} bytes violates the device's segment limits")
            }
            DmaError::NoBounceBuffers => {
                write!(f, "an untrusted device needs a bounce-buffer allocator")
            }
            DmaError::Overflow => write!(f, "DMA address computation overflowed"),
            DmaError::Bounce(e) => write!(f, "bounce buffer: {e}"),
            DmaError::PageTable(e) => write!(f, "page table: {e}"),
            DmaError::FlushQueue(e) => write!(f, "flush queue: {e}"),
            DmaError::NoMemory => write!(f, "cannot allocate the record of a new mapping"),
            DmaError::Config(why) => write!(f, "invalid domain configuration: {why}"),
            DmaError::DeviceConfig(why) => write!(f, "invalid device configuration: {why}"),
            DmaError::CopyRefused { dma, size, cause } => write!(
                f,
                "sync of {size:#x} bytes at {dma:#x} not copied, the mapping is unchanged: {cause}"
            ),
            DmaError::LostCopyBack { dma, size, cause } => write!(
                f,
                "unmapped {size:#x} bytes at {dma:#x}, but the device's writes are lost: {cause}"
            ),
            DmaError::Fault { dma } => write!(f, "device access fault at {dma:#x}"),
        }
    }
}

impl std::error::Error for DmaError {}

impl From<io_pgtable::Error> for DmaError {
    fn from(e: io_pgtable::Error) -> Self {
        DmaError::PageTable(e)
    }
}

impl From<swiotlb_core::Error> for DmaError {
    fn from(e: swiotlb_core::Error) -> Self {
        DmaError::Bounce(e)
    }
}

impl From<FqError> for DmaError {
    fn from(e: FqError) -> Self {
        DmaError::FlushQueue(e)
    }
}
