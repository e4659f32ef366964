//! The answer of a translation: the output address and the raw leaf descriptor, with the leaf's
//! protections, level and size decoded only when asked.
//!
//! A device thread translating on every access mostly wants the output address. The walk
//! therefore stores what it already holds — the output address, the descriptor it loaded, the
//! level it stopped at, the leaf size's log2 and the descriptor format's stage — and decodes
//! nothing: [`Translation::prot`] looks the attribute bits up when called. The stage enum's
//! spare values are the `None` of `Option<Translation>`, which stays 24 bytes.

use crate::config::Stage;
use crate::pte::{self, Prot};

/// The result of a translation: where an input address goes, through which leaf.
///
/// ```
/// use io_pgtable::{Config, PageTable, Prot};
/// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
/// pt.map(0x20_0000, 0x8000_0000, 0x20_0000, Prot::READ | Prot::NOEXEC).unwrap();
/// let t = pt.iova_to_phys(0x20_1234).unwrap();
/// assert_eq!((t.paddr(), t.level(), t.size()), (0x8000_1234, 2, 0x20_0000));
/// assert_eq!(t.prot(), Prot::READ | Prot::NOEXEC);
/// assert_eq!(io_pgtable::pte::decode_oa(pt.geometry(), t.desc()), 0x8000_0000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    paddr: u64,
    desc: u64,
    level: u8,
    size_shift: u8,
    stage: Stage,
}

impl Translation {
    /// The translation through the leaf `desc` of format `stage`, found at `level`, mapping
    /// `1 << size_shift` bytes, of an input address to `paddr`.
    #[inline(always)]
    pub(crate) fn new(paddr: u64, desc: u64, level: u32, size_shift: u32, stage: Stage) -> Self {
        Translation {
            paddr,
            desc,
            level: level as u8,
            size_shift: size_shift as u8,
            stage,
        }
    }

    /// The output address of the translated input address (leaf base plus offset).
    #[inline]
    pub fn paddr(&self) -> u64 {
        self.paddr
    }

    /// The raw leaf descriptor.
    #[inline]
    pub fn desc(&self) -> u64 {
        self.desc
    }

    /// The level of the leaf (3 for a page).
    #[inline]
    pub fn level(&self) -> u32 {
        u32::from(self.level)
    }

    /// The leaf's size (page or block).
    #[inline]
    pub fn size(&self) -> u64 {
        1 << self.size_shift
    }

    /// The leaf's protections, decoded from its attribute bits.
    #[inline]
    pub fn prot(&self) -> Prot {
        pte::prot_at(self.stage, self.desc)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn none_costs_no_space() {
        assert_eq!(
            std::mem::size_of::<Option<Translation>>(),
            std::mem::size_of::<Translation>()
        );
    }
}
