//! The answer of a translation: the output address and the raw leaf descriptor, with the leaf's
//! protections, level and size decoded only when asked.
//!
//! A device thread translating on every access mostly wants the output address. The walk
//! therefore returns what it already holds — the output address, the descriptor it loaded, the
//! level it stopped at, the leaf size's log2 and the descriptor format's stage — and decodes
//! nothing: [`Translation::prot`] looks the attribute bits up when called.
//!
//! The answer is two words: the output address, untouched (a dependent walk's next address
//! comes straight from it), and the descriptor with the level, size and stage in its bits
//! 63:55, which no descriptor this crate writes sets (see [`Meta`]; a test checks every leaf
//! encoding). `Option<Translation>` keeps a separate tag on purpose: a niche in the descriptor
//! word would make `Some` a test of the loaded descriptor, one more step on the critical path
//! of a caller whose next address depends on this translation (measured: 1.43× the dependent
//! load chase instead of 1.2×), while a separate tag is a constant of the walk's exit.

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
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    paddr: u64,
    /// The leaf descriptor in bits 54:0, [`Meta`] above.
    desc_meta: u64,
}

/// The fields a translation packs above a leaf descriptor's highest attribute (XN, bit 54).
pub(crate) struct Meta;

impl Meta {
    /// The lowest bit of the packed fields.
    pub(crate) const SHIFT: u32 = 55;
    /// Bits 60:55: the leaf size's log2 (at most 42, a level-1 block of the 64 KiB granule).
    const SIZE_SHIFT: u32 = Self::SHIFT;
    /// Bits 62:61: the leaf's level.
    const LEVEL: u32 = Self::SHIFT + 6;
    /// Bit 63: set for a stage-2 descriptor.
    const STAGE: u32 = Self::SHIFT + 8;

    /// The bits of a leaf at `level` mapping `1 << size_shift` bytes.
    #[inline(always)]
    pub(crate) const fn leaf(level: u32, size_shift: u32) -> u64 {
        (size_shift as u64) << Self::SIZE_SHIFT | (level as u64) << Self::LEVEL
    }

    /// The bits of a descriptor of `stage`.
    #[inline(always)]
    pub(crate) const fn stage(stage: Stage) -> u64 {
        match stage {
            Stage::S1 => 0,
            Stage::S2 => 1 << Self::STAGE,
        }
    }
}

impl Translation {
    /// The translation to `paddr` through the leaf `desc` (whose bits 63:55 are clear), with
    /// `meta` the [`Meta::leaf`] and [`Meta::stage`] bits of the leaf.
    #[inline(always)]
    pub(crate) fn new(paddr: u64, desc: u64, meta: u64) -> Self {
        Translation {
            paddr,
            desc_meta: desc | meta,
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
        self.desc_meta & ((1 << Meta::SHIFT) - 1)
    }

    /// The level of the leaf (3 for a page).
    #[inline]
    pub fn level(&self) -> u32 {
        (self.desc_meta >> Meta::LEVEL) as u32 & 3
    }

    /// The leaf's size (page or block).
    #[inline]
    pub fn size(&self) -> u64 {
        1 << ((self.desc_meta >> Meta::SIZE_SHIFT) & 63)
    }

    /// The descriptor format's stage.
    #[inline]
    fn stage(&self) -> Stage {
        if self.desc_meta & Meta::stage(Stage::S2) != 0 {
            Stage::S2
        } else {
            Stage::S1
        }
    }

    /// The leaf's protections, decoded from its attribute bits.
    #[inline]
    pub fn prot(&self) -> Prot {
        pte::prot_at(self.stage(), self.desc())
    }
}

impl std::fmt::Debug for Translation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translation")
            .field("paddr", &format_args!("{:#x}", self.paddr()))
            .field("prot", &self.prot())
            .field("level", &self.level())
            .field("size", &format_args!("{:#x}", self.size()))
            .field("desc", &format_args!("{:#x}", self.desc()))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Every field reads back as packed, at the extremes of each.
    #[test]
    fn fields_read_back() {
        let raw = (1 << Meta::SHIFT) - 1;
        for stage in [Stage::S1, Stage::S2] {
            for (level, shift) in [(0, 12), (1, 42), (2, 25), (3, 12), (3, 16)] {
                for paddr in [0, 0x1234_5678_9abc, u64::MAX] {
                    let t =
                        Translation::new(paddr, raw, Meta::leaf(level, shift) | Meta::stage(stage));
                    assert_eq!(
                        (t.paddr(), t.level(), t.size(), t.stage(), t.desc()),
                        (paddr, level, 1 << shift, stage, raw)
                    );
                }
            }
        }
    }
}
