//! The highest chunk-aligned free block of the gap tree below a limit, remembered with the
//! tree's version: where a small request would carve a new chunk (module `range`).
//!
//! The chunks made the tree change rarely (a new, emptied or dissolved chunk, a large request,
//! a reservation), so the answer of one search stays the tree's answer for many requests; the
//! version ([`GapTree::version`]), bumped by every change of the tree's entries, says when it
//! no longer is. The block's handle is valid exactly as long.

use crate::gaptree::{Fit, GapTree};

/// One remembered search: the highest free block of `granules` aligned to `granules` ending at
/// or below `limit`, as of a version of the tree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkBlock {
    /// `u64::MAX` before the first search (the tree's version never gets there).
    version: u64,
    limit: u64,
    block: Option<Fit>,
    /// The block's pfn plus one, 0 without a block: what the fast path compares.
    end_of_floor: u64,
}

impl ChunkBlock {
    /// Not searched yet.
    pub(crate) const UNKNOWN: Self = Self {
        version: u64::MAX,
        limit: 0,
        block: None,
        end_of_floor: 0,
    };

    /// Whether the remembered search is the tree's answer (as of its `version`) and finds no
    /// block above `pfn` (below the limit it was searched for, [`limit`](Self::limit)).
    #[inline]
    pub(crate) fn is_below(&self, pfn: u64, version: u64) -> bool {
        self.version == version && self.end_of_floor <= pfn
    }

    /// The limit of the remembered search.
    #[inline]
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// The highest free block of `granules` aligned to `granules` in `tree` ending at or
    /// below `limit`: the remembered one if it was searched for this version and limit, else
    /// searched and remembered.
    pub(crate) fn get(&mut self, tree: &GapTree, granules: u64, limit: u64) -> Option<Fit> {
        let version = tree.version();
        if (self.version, self.limit) != (version, limit) {
            let block = tree.highest_fit(granules, granules, limit);
            *self = Self {
                version,
                limit,
                block,
                end_of_floor: block.map_or(0, |b| b.pfn + 1),
            };
        }
        self.block
    }
}
