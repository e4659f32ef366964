//! The layout a writer's descent reads at each level — an address's index, a table's length,
//! the next table's address — as constants for the common four-level 4 KiB format.
//!
//! Map and unmap descend from the root as a translation does. Read from the geometry, each
//! level costs loads of its shift, mask and table length, a bounds check and the packed
//! `PA[51:48]` decode: about 140 instructions for a four-level descent. With the four-level
//! 4 KiB format ([`Geometry::four_level_4k`]) every one is a constant, the loop unrolls and
//! the bounds checks below the root go (a masked index is below 512), as in the translation
//! walk (`walk.rs`). A descent is written once, generic over [`Levels`]; its caller picks
//! the constant layout only for a geometry it describes.

use crate::config::Geometry;
use crate::pte::{self, OA_MASK_4K};

/// The layout of `g`'s levels: constant if `FOUR_4K` (only for a geometry of the four-level
/// 4 KiB format, which [`Levels::of`] checks), else read from `g`.
#[derive(Clone, Copy)]
pub(crate) struct Levels<'g, const FOUR_4K: bool> {
    g: &'g Geometry,
}

impl<'g> Levels<'g, false> {
    /// The layout of any geometry, read from it.
    #[inline]
    pub(crate) fn read(g: &'g Geometry) -> Self {
        Levels { g }
    }
}

impl<'g> Levels<'g, true> {
    /// The constant layout, if `g` is of the four-level 4 KiB format.
    #[inline]
    pub(crate) fn constant(g: &'g Geometry) -> Option<Self> {
        g.four_level_4k().then_some(Levels { g })
    }
}

impl<const FOUR_4K: bool> Levels<'_, FOUR_4K> {
    /// The level of the root table.
    #[inline(always)]
    pub(crate) fn start(&self) -> u32 {
        if FOUR_4K {
            0
        } else {
            self.g.start_level()
        }
    }

    /// The index of `iova` in a table at `level`.
    #[inline(always)]
    pub(crate) fn index(&self, level: u32, iova: u64) -> usize {
        if FOUR_4K {
            // Below 48 input bits the level-0 mask is redundant where it is narrower.
            ((iova >> (12 + 9 * (3 - level))) & 511) as usize
        } else {
            self.g.index(level, iova)
        }
    }

    /// The index of `iova` at every level (meaningful from the start level on).
    #[inline(always)]
    pub(crate) fn indices(&self, iova: u64) -> [usize; 4] {
        [0, 1, 2, 3].map(|level| self.index(level, iova))
    }

    /// Descriptors in a table at `level`.
    #[inline(always)]
    pub(crate) fn entries(&self, level: u32) -> usize {
        if FOUR_4K {
            if level == 0 {
                self.g.entries(0)
            } else {
                512
            }
        } else {
            self.g.entries(level)
        }
    }

    /// The address of the table a table descriptor `d` links.
    #[inline(always)]
    pub(crate) fn next_table(&self, d: u64) -> u64 {
        if FOUR_4K {
            d & OA_MASK_4K
        } else {
            pte::decode_oa(self.g, d)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::config::{every_geometry, Granule};

    #[test]
    fn constant_layout_matches_the_geometry() {
        let mut constant = 0;
        for (config, g) in every_geometry() {
            let ias = config.ias;
            let four_4k = config.granule == Granule::Size4K && g.start_level() == 0;
            let Some(c) = Levels::constant(&g) else {
                assert!(!four_4k, "{config:?}");
                continue;
            };
            assert!(four_4k, "{config:?}");
            constant += 1;
            let r = Levels::read(&g);
            assert_eq!(c.start(), r.start());
            // Addresses inside the input range: every bit pattern of each index.
            let iovas = [0, 0x1000, 0x5a5a_5a5a_5000, (1u64 << ias) - 0x1000];
            for level in 0..4 {
                assert_eq!(c.entries(level), r.entries(level), "{config:?}");
                for iova in iovas.map(|i| i & ((1u64 << ias) - 1)) {
                    assert_eq!(c.index(level, iova), r.index(level, iova), "{config:?}");
                }
            }
            for d in [0x3, 0xffff_ffff_ffff_ffff, 0x0000_8765_4321_0003] {
                assert_eq!(c.next_table(d), r.next_table(d), "{config:?}");
            }
        }
        // Stage 1 from 40 to 48 input bits, stage 2 from 44 (below, it concatenates).
        assert_eq!(constant, 9 + 5);
    }
}
