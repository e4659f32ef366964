//! Typed errors: bad input never panics and never changes allocator state.

use std::fmt;

/// An access to original (or bounce) memory that the memory implementation refused.
///
/// ```
/// use swiotlb_core::{MemoryError, OrigMemory, RegionMemory};
/// let m = RegionMemory::new(4096);
/// let end = m.base() + 4096;
/// assert_eq!(m.write(end - 2, &[0; 4]), Err(MemoryError { addr: end - 2, len: 4 }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryError {
    /// First address of the refused access.
    pub addr: u64,
    /// Length of the refused access in bytes.
    pub len: usize,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory access of {} bytes at {:#x} refused",
            self.len, self.addr
        )
    }
}

impl std::error::Error for MemoryError {}

/// Why an operation of the allocator failed. The allocator is unchanged after any error.
///
/// ```
/// use swiotlb_core::{Config, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, Swiotlb};
/// let mem = RegionMemory::new(64 * 1024);
/// let orig = mem.base();
/// let swiotlb = Swiotlb::new(Config { can_grow: false, ..Config::tiny(8, 1, 8) }, mem).unwrap();
/// let dev = swiotlb.device(DeviceConfig::default());
/// let map = |len| swiotlb.map(&dev, orig, len, Direction::ToDevice, MapAttrs::default());
/// assert_eq!(map(0), Err(Error::ZeroSize));
/// assert!(matches!(map(17 * 1024), Err(Error::TooLarge { .. }))); // over one 16 KiB segment
/// let all = map(16 * 1024).unwrap();
/// assert_eq!(map(1), Err(Error::NoSpace { size: 1 })); // full, and growth is off
/// assert_eq!(swiotlb.stats().used, 8); // the failures took nothing
/// assert_eq!(Error::ZeroSize.to_string(), "zero-sized mapping");
/// swiotlb.unmap(&dev, all, 16 * 1024, Direction::ToDevice, MapAttrs::default()).unwrap();
/// assert!(map(1).is_ok()); // and the allocator keeps working
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A mapping or allocation of zero bytes.
    ZeroSize,
    /// The request (with its alignment offset) does not fit in one segment.
    TooLarge {
        /// Requested bytes.
        size: usize,
        /// Largest mapping the device may ask for.
        max: usize,
    },
    /// `alloc_align_mask` is not of the form 2^k − 1 or exceeds the pool alignment.
    BadAlignMask {
        /// The rejected mask.
        mask: u64,
    },
    /// The device's masks can never be met (e.g. a segment boundary smaller than the run).
    Unsatisfiable,
    /// No pool has a free run that fits ("buffer is full"); growth may have been started.
    NoSpace {
        /// Requested bytes.
        size: usize,
    },
    /// The address is not a live mapping of this allocator (includes a second unmap).
    NotMapped {
        /// The address given.
        addr: u64,
    },
    /// The range is not inside one live mapping.
    OutOfRange {
        /// First address of the range.
        addr: u64,
        /// Length of the range.
        size: usize,
    },
    /// The device handle belongs to another allocator.
    ForeignDevice,
    /// The bounce buffer lies beyond the device's DMA mask.
    NotDmaCapable {
        /// The bounce address that was out of reach.
        addr: u64,
    },
    /// Memory for a new pool could not be obtained below the physical limit.
    PoolAlloc {
        /// Slots that were asked for.
        nslabs: usize,
    },
    /// The allocator was configured without growth.
    GrowthDisabled,
    /// `alloc`/`free` on an allocator that does not serve allocations (not restricted).
    NotForAlloc,
    /// A reset value other than 0 for the high-water mark.
    BadReset {
        /// The rejected value.
        value: u64,
    },
    /// An invalid configuration.
    InvalidConfig(&'static str),
    /// Original memory refused an access.
    Memory(MemoryError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ZeroSize => write!(f, "zero-sized mapping"),
            Error::TooLarge { size, max } => {
                write!(
                    f,
                    "mapping of {size} bytes exceeds the maximum of {max} bytes"
                )
            }
            Error::BadAlignMask { mask } => write!(f, "invalid alloc_align_mask {mask:#x}"),
            Error::Unsatisfiable => write!(f, "the device's masks cannot be met"),
            Error::NoSpace { size } => write!(f, "swiotlb buffer is full ({size} bytes)"),
            Error::NotMapped { addr } => write!(f, "{addr:#x} is not a live bounce mapping"),
            Error::OutOfRange { addr, size } => {
                write!(
                    f,
                    "range {addr:#x}+{size:#x} is not inside one live mapping"
                )
            }
            Error::ForeignDevice => write!(f, "device belongs to another swiotlb instance"),
            Error::NotDmaCapable { addr } => {
                write!(f, "bounce buffer {addr:#x} beyond the DMA mask")
            }
            Error::PoolAlloc { nslabs } => write!(f, "cannot allocate a pool of {nslabs} slots"),
            Error::GrowthDisabled => write!(f, "this swiotlb instance cannot grow"),
            Error::NotForAlloc => write!(f, "this swiotlb instance does not serve allocations"),
            Error::BadReset { value } => {
                write!(f, "high-water mark can only be reset to 0, not {value}")
            }
            Error::InvalidConfig(why) => write!(f, "invalid configuration: {why}"),
            Error::Memory(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Memory(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MemoryError> for Error {
    fn from(e: MemoryError) -> Self {
        Error::Memory(e)
    }
}
