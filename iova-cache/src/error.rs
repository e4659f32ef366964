//! Typed errors of the allocator: every bad input is reported, none panics or corrupts state.

use std::fmt;

/// Why an IOVA operation was refused.
///
/// ```
/// use iova_cache::{IovaAllocator, IovaConfig, IovaError};
/// let a = IovaAllocator::new(IovaConfig::with_space(1, 1023)).unwrap();
/// assert_eq!(a.alloc(0, 1023), Err(IovaError::ZeroSize));
/// assert!(IovaError::ZeroSize.to_string().contains("zero"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IovaError {
    /// A request for zero granules.
    ZeroSize,
    /// A request larger than the whole address space.
    TooLarge {
        /// Requested granules.
        size: u64,
        /// Granules in the space.
        space: u64,
    },
    /// The limit lies below the first allocatable pfn.
    LimitBelowStart {
        /// The inclusive limit pfn asked for.
        limit: u64,
        /// The first allocatable pfn.
        start: u64,
    },
    /// No free (aligned) range of the size exists below the limit, even after flushing the
    /// caches.
    NoSpace {
        /// Requested granules (after rounding to a size class).
        size: u64,
        /// The inclusive limit pfn.
        limit: u64,
    },
    /// A free of a pfn that is not the start of a live allocation (never allocated, or freed
    /// already).
    NotAllocated {
        /// The pfn passed to free.
        pfn: u64,
    },
    /// A free whose size differs from the size the range was allocated with.
    SizeMismatch {
        /// The pfn passed to free.
        pfn: u64,
        /// Granules the range was allocated with.
        allocated: u64,
        /// Granules passed to free.
        freed: u64,
    },
    /// A range whose low end lies above its high end, or that wraps around.
    InvalidRange {
        /// Low pfn.
        lo: u64,
        /// High pfn.
        hi: u64,
    },
    /// A reservation overlapping a live (user-held) allocation.
    ReserveOverlapsAllocation {
        /// First pfn of the live allocation.
        pfn: u64,
        /// Its granules.
        size: u64,
    },
    /// A configuration that cannot describe an allocator.
    InvalidConfig(&'static str),
    /// The memory for the bookkeeping of a new range could not be allocated; nothing changed
    /// and a later request may succeed (see [`crate::faults`]).
    OutOfMemory {
        /// Requested granules (after rounding to a size class; for a reservation, its
        /// granules inside the space).
        size: u64,
    },
}

impl fmt::Display for IovaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroSize => write!(f, "zero-sized IOVA request"),
            Self::TooLarge { size, space } => {
                write!(
                    f,
                    "request of {size} granules exceeds the space of {space} granules"
                )
            }
            Self::LimitBelowStart { limit, start } => {
                write!(
                    f,
                    "limit pfn {limit:#x} lies below the start pfn {start:#x}"
                )
            }
            Self::NoSpace { size, limit } => {
                write!(
                    f,
                    "no free range of {size} granules at or below pfn {limit:#x}"
                )
            }
            Self::NotAllocated { pfn } => {
                write!(
                    f,
                    "pfn {pfn:#x} is not allocated (never allocated or freed twice)"
                )
            }
            Self::SizeMismatch {
                pfn,
                allocated,
                freed,
            } => write!(
                f,
                "pfn {pfn:#x} was allocated with {allocated} granules but freed with {freed}"
            ),
            Self::InvalidRange { lo, hi } => write!(f, "invalid pfn range [{lo:#x}, {hi:#x}]"),
            Self::ReserveOverlapsAllocation { pfn, size } => write!(
                f,
                "reservation overlaps the live allocation of {size} granules at pfn {pfn:#x}"
            ),
            Self::InvalidConfig(why) => write!(f, "invalid IOVA configuration: {why}"),
            Self::OutOfMemory { size } => {
                write!(f, "out of memory for the bookkeeping of {size} granules")
            }
        }
    }
}

impl std::error::Error for IovaError {}
