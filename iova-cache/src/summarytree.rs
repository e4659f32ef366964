//! A 16-ary tree of fit summaries over an array of them: each node keeps, per alignment
//! class, the largest byte of its 16 children, so "the highest index below `end` whose
//! summary offers a request" reads one 16-byte block per level up and per level down instead
//! of every summary in between.
//!
//! The chunks use one over their words' summaries (module `chunk`) and one over the chunks'
//! own top summaries (module `chunks`). A summary (module `chunk`) has a byte per class `0..=6`,
//! each at most 64, and a node offers a request exactly when one of its leaves does.
//!
//! Each level stores every node twice. As a `u64` summary, for the updates: an update compares
//! and combines all classes at once (`fitsummary::max`, `fitsummary::at_least`) and climbs
//! only while a node changes. And class by class, for the
//! searches: the 16 children of a node in one class are 16 adjacent bytes (a block's 7 rows
//! share two cache lines), one `u128`,
//! compared with the request in all 16 bytes at once (the word trick of
//! `fitsummary::at_least`), the highest offering child found by a leading-zero count, so a
//! search reads one 16-byte block per level. Storing the bytes only took 7 separate climbs per
//! update, three times the instructions of the search they saved.

use crate::fitsummary;

/// Children per node: the bytes of a `u128`.
const FANOUT: usize = 16;

/// Alignment classes per summary (bytes `0..=6` of a `u64`).
const CLASSES: usize = 7;

/// The high bit of every byte.
const HIGH: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;

/// The high bit of each class's byte in a summary.
const CLASS_BYTES: u64 = 0x0080_8080_8080_8080;

/// Every byte one.
const ONES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;

/// One level: its nodes' summaries, and per block of 16 nodes their bytes class by class
/// (a row of 16 bytes per class, 128 bytes a block), the blocks padded with empty (zero)
/// nodes.
#[derive(Debug, Clone)]
struct Level {
    summaries: Box<[u64]>,
    blocks: Box<[[[u8; FANOUT]; 8]]>,
}

impl Level {
    fn try_new(len: usize) -> Option<Self> {
        let blocks = len.div_ceil(FANOUT);
        Some(Self {
            summaries: filled(blocks * FANOUT, 0)?,
            blocks: filled(blocks, [[0; FANOUT]; 8])?,
        })
    }

    /// Nodes, the padding included.
    fn len(&self) -> usize {
        self.summaries.len()
    }

    fn put(&mut self, i: usize, summary: u64) {
        self.summaries[i] = summary;
        let rows = &mut self.blocks[i / FANOUT];
        for (k, row) in rows.iter_mut().enumerate().take(CLASSES) {
            row[i % FANOUT] = (summary >> (8 * k)) as u8;
        }
    }

    /// The 16 bytes of class `class` of block `block`.
    fn block(&self, class: usize, block: usize) -> u128 {
        u128::from_le_bytes(self.blocks[block][class])
    }

    /// Whether block `block`, in which one summary fell from `old` to `new`, no longer
    /// reaches its maximum `max` in some class: one whose byte fell from the maximum, with no
    /// other node of the block at it (one comparison of the class's row).
    fn lost_maximum(&self, block: usize, max: u64, old: u64, new: u64) -> bool {
        let mut fell =
            fitsummary::at_least(old, max) & !fitsummary::at_least(new, old) & CLASS_BYTES;
        while fell != 0 {
            let k = fell.trailing_zeros() as usize / 8;
            fell &= fell - 1;
            let need = u128::from((max >> (8 * k)) as u8) * ONES;
            if highest_offering(self.block(k, block), need, u128::MAX).is_none() {
                return true;
            }
        }
        false
    }

    /// The bytewise maximum of the summaries of block `block`.
    fn fold(&self, block: usize) -> u64 {
        let children = &self.summaries[block * FANOUT..(block + 1) * FANOUT];
        children.iter().fold(0, |m, &s| fitsummary::max(m, s))
    }
}

/// Leaf summaries and the levels above them, up to a single root.
#[derive(Debug, Clone)]
pub(crate) struct SummaryTree {
    /// Leaves for which there is room.
    capacity: usize,
    /// `levels[0]` the leaves; node `i` of `levels[l + 1]` has the per-class maxima of
    /// nodes `16 i .. 16 i + 16` of `levels[l]`; the last level has one node.
    levels: Vec<Level>,
}

impl SummaryTree {
    /// A tree with room for `capacity` leaves (at least one), every leaf `value`; `None` if
    /// the memory cannot be had.
    pub(crate) fn try_filled(capacity: usize, value: u64) -> Option<Self> {
        let mut levels = Vec::new();
        let mut len = capacity.max(1);
        loop {
            levels.try_reserve(1).ok()?;
            levels.push(Level::try_new(len)?);
            if len == 1 {
                break;
            }
            len = len.div_ceil(FANOUT);
        }
        let mut t = Self { capacity, levels };
        for i in 0..capacity {
            t.put_leaf(i, value);
        }
        t.refold();
        Some(t)
    }

    /// Leaves the tree has room for.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// A copy with room for `capacity` leaves (at least the current), the new ones empty;
    /// `None` if the memory cannot be had.
    pub(crate) fn try_grown(&self, capacity: usize) -> Option<Self> {
        let mut t = Self::try_filled(capacity, 0)?;
        for i in 0..self.capacity {
            t.put_leaf(i, self.leaf(i));
        }
        t.refold();
        Some(t)
    }

    /// Put `value` in as leaf `i`, the leaves from `i` on moving up one; the last leaf, which
    /// drops off, must be empty (0). Rebuilds every node in place: for rare changes.
    pub(crate) fn shift_in(&mut self, i: usize, value: u64) {
        for j in (i + 1..self.capacity).rev() {
            self.put_leaf(j, self.leaf(j - 1));
        }
        self.put_leaf(i, value);
        self.refold();
    }

    /// Take out leaf `i`, the leaves above moving down one and an empty one coming in last.
    /// Rebuilds every node in place, allocating nothing.
    pub(crate) fn shift_out(&mut self, i: usize) {
        for j in i..self.capacity - 1 {
            self.put_leaf(j, self.leaf(j + 1));
        }
        self.put_leaf(self.capacity - 1, 0);
        self.refold();
    }

    /// The summary (a byte per class) of every leaf's maxima.
    pub(crate) fn root(&self) -> u64 {
        self.levels.last().map_or(0, |root| root.summaries[0])
    }

    /// Leaf `i`'s summary.
    pub(crate) fn leaf(&self, i: usize) -> u64 {
        self.levels[0].summaries[i]
    }

    fn put_leaf(&mut self, i: usize, value: u64) {
        self.levels[0].put(i, value);
    }

    /// Set leaf `i` to `value` and bring its ancestors up to date: a summary that grew raises
    /// them in place; one that shrank refolds a node only where it held one of the node's
    /// maxima. Alloc and free only shrink or only grow a summary (every byte moves the same
    /// way).
    pub(crate) fn set(&mut self, i: usize, value: u64) {
        let old = self.levels[0].summaries[i];
        if old == value {
            return;
        }
        self.levels[0].put(i, value);
        let grew = fitsummary::max(old, value) == value;
        let (mut i, mut old, mut new) = (i, old, value);
        for l in 1..self.levels.len() {
            let parent = i / FANOUT;
            let before = self.levels[l].summaries[parent];
            let after = if grew {
                fitsummary::max(before, new)
            } else if self.levels[l - 1].lost_maximum(parent, before, old, new) {
                self.levels[l - 1].fold(parent)
            } else {
                before
            };
            if after == before {
                return;
            }
            self.levels[l].put(parent, after);
            (i, old, new) = (parent, before, after);
        }
    }

    /// The highest leaf index below `end` whose byte of class `class` is at least `size`
    /// (`1..=64`).
    pub(crate) fn highest(&self, end: usize, size: u64, class: u32) -> Option<usize> {
        let (k, need) = (class as usize, size as u128 * ONES);
        if end >= self.capacity {
            // No bound inside the tree: straight down from the root.
            let top = self.levels.len() - 1;
            let root = highest_offering(self.levels[top].block(k, 0), need, 0xff)?;
            return Some(self.descend(top, root, k, need));
        }
        // Up: at each level, the nodes of the path's block below its node, then the parent's.
        let mut end = end;
        for l in 0..self.levels.len() {
            if end == 0 {
                return None;
            }
            let block = (end - 1) / FANOUT;
            let below_end = u128::MAX >> (8 * (block * FANOUT + FANOUT - end));
            if let Some(j) = highest_offering(self.levels[l].block(k, block), need, below_end) {
                return Some(self.descend(l, block * FANOUT + j, k, need));
            }
            end = block;
        }
        None
    }

    /// The highest leaf under node `i` of level `l` (which offers) that offers.
    fn descend(&self, l: usize, i: usize, k: usize, need: u128) -> usize {
        (0..l).rev().fold(i, |i, l| {
            let j = highest_offering(self.levels[l].block(k, i), need, u128::MAX);
            i * FANOUT + j.expect("a node's byte is its children's maximum")
        })
    }

    /// Recompute every node from the leaves.
    fn refold(&mut self) {
        for l in 1..self.levels.len() {
            for i in 0..self.levels[l].len() {
                let below = &self.levels[l - 1];
                let summary = if i * FANOUT < below.len() {
                    below.fold(i)
                } else {
                    0
                };
                self.levels[l].put(i, summary);
            }
        }
    }

    /// Check every node against its children by plain loops, the class rows against the
    /// summaries, and the padding (tests).
    pub(crate) fn check(&self) -> Result<(), String> {
        if (self.capacity..self.levels[0].len()).any(|i| self.leaf(i) != 0) {
            return Err("a leaf past the capacity is not empty".into());
        }
        for (l, level) in self.levels.iter().enumerate() {
            for (i, &summary) in level.summaries.iter().enumerate() {
                for k in 0..CLASSES {
                    let byte = level.blocks[i / FANOUT][k][i % FANOUT];
                    if u64::from(byte) != (summary >> (8 * k)) & 0xff {
                        return Err(format!("node {i} of level {l}: class {k} row disagrees"));
                    }
                }
                if l == 0 {
                    continue;
                }
                let below = &self.levels[l - 1];
                let children = (i * FANOUT..(i + 1) * FANOUT).filter(|&c| c < below.len());
                let children: Vec<u64> = children.map(|c| below.summaries[c]).collect();
                let max = (0..8).fold(0, |acc, byte| {
                    let get = |x: u64| (x >> (8 * byte)) & 0xff;
                    acc | children.iter().map(|&c| get(c)).max().unwrap_or(0) << (8 * byte)
                });
                if summary != max {
                    return Err(format!("summary node {i} of level {l} is stale"));
                }
            }
        }
        Ok(())
    }
}

/// The index of the highest byte of `block` that is at least `need`'s (every byte of `need`
/// the same, at most 64) among the bytes `mask` keeps.
#[inline]
fn highest_offering(block: u128, need: u128, mask: u128) -> Option<usize> {
    // Per byte, `(b | 0x80) - need` keeps its high bit exactly when `b >= need` (bytes below
    // 128, so no borrow crosses a byte).
    let offering = ((block | HIGH) - need) & HIGH & mask;
    (offering != 0).then(|| (127 - offering.leading_zeros() as usize) / 8)
}

/// A boxed slice of `n` copies of `value`, or `None` if the memory cannot be had.
pub(crate) fn filled<T: Copy>(n: usize, value: T) -> Option<Box<[T]>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, value);
    Some(v.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A summary with `byte` in class `class` and `other` in every other class.
    fn summary(class: usize, byte: u64, other: u64) -> u64 {
        (0..CLASSES).fold(0, |s, k| {
            s | if k == class { byte } else { other } << (8 * k)
        })
    }

    proptest! {
        #[test]
        #[cfg_attr(miri, ignore)] // proptest persists failures through the file system
        fn highest_and_set_match_a_scan(
            len in 1usize..700,
            class in 0usize..CLASSES,
            sets in proptest::collection::vec((any::<usize>(), 0u64..=64, any::<bool>()), 0..200),
            queries in proptest::collection::vec((any::<usize>(), 1u64..=64), 1..20),
        ) {
            let mut leaves = vec![0u64; len];
            let mut t = SummaryTree::try_filled(len, 0).unwrap();
            for (i, v, grow) in sets {
                let i = i % len;
                // Alloc and free move every byte the same way.
                let v = if grow { v.max(leaves[i]) } else { v.min(leaves[i]) };
                leaves[i] = v;
                t.set(i, summary(class, v, v / 2));
                prop_assert_eq!(t.check(), Ok(()));
            }
            let max = leaves.iter().copied().max().unwrap();
            prop_assert_eq!(t.root(), summary(class, max, max / 2));
            for (end, need) in queries {
                let end = end % (len + 1);
                let scan = (0..end).rev().find(|&i| leaves[i] >= need);
                prop_assert_eq!(t.highest(end, need, class as u32), scan);
            }
            let mut grown = t.try_grown(len + 1).unwrap();
            prop_assert_eq!(grown.check(), Ok(()));
            prop_assert_eq!(grown.root(), t.root());
            grown.shift_in(len / 2, summary(class, 64, 1));
            prop_assert_eq!(grown.leaf(len / 2), summary(class, 64, 1));
            prop_assert_eq!(grown.root() >> (8 * class) & 0xff, 64);
            prop_assert_eq!(grown.check(), Ok(()));
            grown.shift_out(len / 2);
            prop_assert_eq!(grown.check(), Ok(()));
            prop_assert_eq!(grown.root(), t.root());
            prop_assert_eq!(grown.leaf(len), 0);
        }
    }

    #[test]
    fn block_helpers_pick_bytes() {
        let block = u128::from_le_bytes([3, 64, 0, 7, 64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(highest_offering(block, 64 * ONES, u128::MAX), Some(4));
        assert_eq!(highest_offering(block, 64 * ONES, u128::MAX >> 96), Some(1));
        assert_eq!(highest_offering(block, 65 * ONES, u128::MAX), None);
        assert_eq!(highest_offering(block, 8 * ONES, u128::MAX >> 96), Some(1));
        assert_eq!(highest_offering(block, 11 * ONES, u128::MAX), Some(15));
    }
}
