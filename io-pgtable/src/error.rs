//! Typed errors of the page table. Every error leaves the table unchanged.

use std::fmt;

/// Which address an alignment or range error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrKind {
    /// The input (I/O virtual) address.
    Iova,
    /// The output (physical) address.
    Paddr,
}

impl fmt::Display for AddrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddrKind::Iova => "iova",
            AddrKind::Paddr => "paddr",
        })
    }
}

/// Why a configuration or an operation was refused.
///
/// ```
/// use io_pgtable::{Config, Error, PageTable, Prot};
/// let pt = PageTable::new(Config::s1_4k(32)).unwrap();
/// assert_eq!(pt.map_pages(0x1000, 0x2000, 0x3000, 1, Prot::READ), Err(Error::UnsupportedPageSize { pgsize: 0x3000 }));
/// // The table keeps working after a refused call.
/// assert_eq!(pt.map_pages(0x1000, 0x2000, 0x1000, 1, Prot::READ), Ok(0x1000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The configuration cannot be built (input or output size out of range for the granule).
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// `pgsize` is not exactly one of the page sizes this table supports.
    UnsupportedPageSize {
        /// The requested page size.
        pgsize: u64,
    },
    /// An address is not aligned to the page size.
    Misaligned {
        /// Which address.
        kind: AddrKind,
        /// The address.
        addr: u64,
        /// The required alignment.
        align: u64,
    },
    /// An address range ends beyond the input (`ias`) or output (`oas`) address size.
    OutOfRange {
        /// Which address.
        kind: AddrKind,
        /// The first address of the range.
        addr: u64,
        /// The address size in bits.
        bits: u32,
    },
    /// A page count of zero.
    ZeroCount,
    /// `pgsize * pgcount` or the end of the range overflows 64 bits.
    Overflow,
    /// The protection grants neither read nor write.
    NoAccess,
    /// A leaf (or a non-empty table under a block) is already present; unmap first.
    Exists {
        /// The input address of the conflicting entry.
        iova: u64,
    },
    /// Nothing is mapped at this address.
    NotMapped {
        /// The input address of the empty entry.
        iova: u64,
    },
    /// The range starts inside a larger block: partial block unmap is refused.
    PartialBlock {
        /// The input address the unmap asked for.
        iova: u64,
        /// The size of the block in the way.
        block_size: u64,
    },
    /// Table memory could not be allocated, or its address does not fit a table descriptor.
    NoMemory,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::InvalidConfig { reason } => {
                write!(f, "invalid page-table configuration: {reason}")
            }
            Error::UnsupportedPageSize { pgsize } => write!(f, "unsupported page size {pgsize:#x}"),
            Error::Misaligned { kind, addr, align } => {
                write!(f, "{kind} {addr:#x} is not aligned to {align:#x}")
            }
            Error::OutOfRange { kind, addr, bits } => {
                write!(
                    f,
                    "{kind} range at {addr:#x} exceeds the {bits}-bit address size"
                )
            }
            Error::ZeroCount => f.write_str("page count is zero"),
            Error::Overflow => f.write_str("address range overflows"),
            Error::NoAccess => f.write_str("protection grants neither read nor write"),
            Error::Exists { iova } => write!(f, "iova {iova:#x} is already mapped"),
            Error::NotMapped { iova } => write!(f, "iova {iova:#x} is not mapped"),
            Error::PartialBlock { iova, block_size } => {
                write!(
                    f,
                    "iova {iova:#x} is inside a {block_size:#x} block: partial block unmap refused"
                )
            }
            Error::NoMemory => f.write_str("cannot allocate a page-table level"),
        }
    }
}

impl std::error::Error for Error {}
