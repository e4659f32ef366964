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
