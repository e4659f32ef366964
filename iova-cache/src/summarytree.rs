//! An 8-ary tree of fit summaries over an array of them: each node keeps, per alignment
//! class, the largest byte of its 8 children, so "the highest index below `end` whose
//! summary offers a request" reads one cache line per level up and per level down instead
//! of every summary in between.
//!
//! The chunks use one over their lines' summaries (two words each, module `chunk`) and one
//! over the chunks' own top summaries (module `chunks`). A summary (module `chunk`) has a byte
//! per class `0..=6`, each at most 64, and a node offers a request exactly when one of its
//! leaves does.
//!
//! Each level stores its nodes in blocks of 8 siblings, one cache line (aligned to it) of
//! `u64` summaries. An update reads and writes one summary per level and climbs only while a
//! node changes, comparing and combining all classes at once (`fitsummary::max`,
//! `fitsummary::at_least`; a shrunk maximum is rechecked against the block's 8 summaries
//! before any refold). A search gathers the request's class byte of the 8 summaries into one
//! `u64` row (a shift, a mask and two packs on x86-64), compares it with the request in all 8
//! bytes at once and finds the highest offering sibling by a leading-zero count. So every
//! level an update or a search visits costs one line. A 16-ary tree keeping each node twice
//! (a `u64` summary array for the updates, 16-byte class rows for the searches) cost three
//! lines a level, four where a 128-byte block of rows straddled, and the random free of a
//! fragmented pair missed about three times as many lines in its words' tree; 8-ary rows
//! alone (a line per block too) cost a gather of 7 bytes on every read of a summary, more
//! instructions than the rows saved. Comparing the 16 summaries of a 16-ary node one by one
//! per level cost about 800 instructions per pair.

use crate::fitsummary;

/// Children per node: the bytes of a `u64` row.
const FANOUT: usize = 8;

/// The high bit of each class's byte in a summary.
const CLASS_BYTES: u64 = 0x0080_8080_8080_8080;

/// Every byte one.
const ONES: u64 = 0x0101_0101_0101_0101;

/// Eight sibling nodes' summaries: one cache line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, align(64))]
struct Block {
    nodes: [u64; FANOUT],
}

impl Block {
    /// Class `class`'s byte of every node: byte `j` of the result is node `j`'s.
    #[inline]
    fn row(&self, class: usize) -> u64 {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            use std::arch::x86_64::*;
            // SAFETY: SSE2 is part of the x86-64 baseline, enabled in every x86_64 build; the
            // loads read the block's own 64 bytes (unaligned loads: no alignment assumed), the
            // rest only computes on registers.
            unsafe {
                let p = self.nodes.as_ptr().cast::<__m128i>();
                let count = _mm_cvtsi32_si128(8 * class as i32);
                let byte = _mm_set1_epi64x(0xff);
                // Each 64-bit lane shifted so the class's byte is its lowest, the rest cleared:
                // every lane then fits an i16 lane and packs without saturating.
                let lane = |i| _mm_and_si128(_mm_srl_epi64(_mm_loadu_si128(p.add(i)), count), byte);
                let (a, b, c, d) = (lane(0), lane(1), lane(2), lane(3));
                let words = _mm_packs_epi32(_mm_packs_epi32(a, b), _mm_packs_epi32(c, d));
                _mm_cvtsi128_si64(_mm_packus_epi16(words, words)) as u64
            }
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        {
            self.row_by_bytes(class)
        }
    }

    /// [`row`](Self::row) a byte at a time: without SSE2, under Miri (which need not
    /// interpret the vector instructions), and as the reference of its test.
    #[cfg_attr(all(target_arch = "x86_64", not(miri), not(test)), allow(dead_code))]
    fn row_by_bytes(&self, class: usize) -> u64 {
        (0..FANOUT).fold(0, |r, j| {
            r | (self.nodes[j] >> (8 * class) & 0xff) << (8 * j)
        })
    }
}

/// One level: its nodes in blocks of [`FANOUT`], the last block padded with empty (zero)
/// nodes.
#[derive(Debug, Clone)]
struct Level {
    blocks: Box<[Block]>,
}

impl Level {
    /// A level of at least `len` empty nodes; `None` if the memory cannot be had.
    fn try_new(len: usize) -> Option<Self> {
        Some(Self {
            blocks: filled(len.div_ceil(FANOUT), Block::default())?,
        })
    }

    /// Nodes, the padding included.
    fn len(&self) -> usize {
        self.blocks.len() * FANOUT
    }

    /// Node `i`'s summary.
    #[inline]
    fn get(&self, i: usize) -> u64 {
        self.blocks[i / FANOUT].nodes[i % FANOUT]
    }

    /// Set node `i`'s summary.
    #[inline]
    fn put(&mut self, i: usize, summary: u64) {
        self.blocks[i / FANOUT].nodes[i % FANOUT] = summary;
    }

    /// The 8 bytes of class `class` of block `block`.
    #[inline]
    fn row(&self, class: usize, block: usize) -> u64 {
        self.blocks[block].row(class)
    }

    /// Whether block `block`, in which one summary fell from `old` to `new`, no longer
    /// reaches its maximum `max` in some class: one whose byte fell from the maximum, with no
    /// other node of the block at it.
    fn lost_maximum(&self, block: usize, max: u64, old: u64, new: u64) -> bool {
        let fell = fitsummary::at_least(old, max) & !fitsummary::at_least(new, old) & CLASS_BYTES;
        let kept = self.blocks[block]
            .nodes
            .iter()
            .fold(0, |kept, &s| kept | fitsummary::at_least(s, max));
        fell & !kept != 0
    }

    /// The bytewise maximum of the summaries of block `block`.
    fn fold(&self, block: usize) -> u64 {
        let nodes = &self.blocks[block].nodes;
        nodes.iter().fold(0, |m, &s| fitsummary::max(m, s))
    }
}

/// Leaf summaries and the levels above them, up to a single root.
#[derive(Debug, Clone)]
pub(crate) struct SummaryTree {
    /// Leaves for which there is room.
    capacity: usize,
    /// `levels[0]` the leaves; node `i` of `levels[l + 1]` has the per-class maxima of
    /// nodes `8 i .. 8 i + 8` of `levels[l]` (block `i` of `levels[l]`); the last level has
    /// one node.
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
        self.levels.last().map_or(0, |root| root.get(0))
    }

    /// Leaf `i`'s summary.
    pub(crate) fn leaf(&self, i: usize) -> u64 {
        self.levels[0].get(i)
    }

    fn put_leaf(&mut self, i: usize, value: u64) {
        self.levels[0].put(i, value);
    }

    /// Set leaf `i` to `value` and bring its ancestors up to date: a summary that grew raises
    /// them in place; one that shrank refolds a node only where it held one of the node's
    /// maxima. Alloc and free only shrink or only grow a summary (every byte moves the same
    /// way).
    pub(crate) fn set(&mut self, i: usize, value: u64) {
        let old = self.levels[0].get(i);
        if old == value {
            return;
        }
        self.levels[0].put(i, value);
        let grew = fitsummary::max(old, value) == value;
        let (mut i, mut old, mut new) = (i, old, value);
        for l in 1..self.levels.len() {
            let parent = i / FANOUT;
            let before = self.levels[l].get(parent);
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
        let (k, need) = (class as usize, size * ONES);
        if end >= self.capacity {
            // No bound inside the tree: straight down from the root.
            let top = self.levels.len() - 1;
            let root = highest_offering(self.levels[top].row(k, 0), need, 0xff)?;
            return Some(self.descend(top, root, k, need));
        }
        // Up: at each level, the nodes of the path's block below its node, then the parent's.
        let mut end = end;
        for l in 0..self.levels.len() {
            if end == 0 {
                return None;
            }
            let block = (end - 1) / FANOUT;
            let below_end = u64::MAX >> (8 * (block * FANOUT + FANOUT - end));
            if let Some(j) = highest_offering(self.levels[l].row(k, block), need, below_end) {
                return Some(self.descend(l, block * FANOUT + j, k, need));
            }
            end = block;
        }
        None
    }

    /// The highest leaf under node `i` of level `l` (which offers) that offers.
    fn descend(&self, l: usize, i: usize, k: usize, need: u64) -> usize {
        (0..l).rev().fold(i, |i, l| {
            let j = highest_offering(self.levels[l].row(k, i), need, u64::MAX);
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

    /// Check every node against its children by plain loops, and the padding (tests).
    pub(crate) fn check(&self) -> Result<(), String> {
        if (self.capacity..self.levels[0].len()).any(|i| self.leaf(i) != 0) {
            return Err("a leaf past the capacity is not empty".into());
        }
        for (l, level) in self.levels.iter().enumerate() {
            if l == 0 {
                continue;
            }
            let below = &self.levels[l - 1];
            for i in 0..level.len() {
                let children = (i * FANOUT..(i + 1) * FANOUT).filter(|&c| c < below.len());
                let children: Vec<u64> = children.map(|c| below.get(c)).collect();
                let max = (0..8).fold(0, |acc, byte| {
                    let get = |x: u64| (x >> (8 * byte)) & 0xff;
                    acc | children.iter().map(|&c| get(c)).max().unwrap_or(0) << (8 * byte)
                });
                if level.get(i) != max {
                    return Err(format!("summary node {i} of level {l} is stale"));
                }
            }
        }
        Ok(())
    }
}

/// The index of the highest byte of `row` that is at least `need`'s (every byte of `need`
/// the same, at most 64) among the bytes `mask` keeps.
#[inline]
fn highest_offering(row: u64, need: u64, mask: u64) -> Option<usize> {
    let offering = fitsummary::at_least(row, need) & mask;
    (offering != 0).then(|| (63 - offering.leading_zeros() as usize) / 8)
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
        (0..7).fold(0, |s, k| {
            s | if k == class { byte } else { other } << (8 * k)
        })
    }

    proptest! {
        #[test]
        #[cfg_attr(miri, ignore)] // proptest persists failures through the file system
        fn highest_and_set_match_a_scan(
            len in 1usize..700,
            class in 0usize..7,
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
    fn rows_match_the_bytes() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..64 {
            let mut block = Block::default();
            for node in block.nodes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *node = x;
            }
            for class in 0..8 {
                assert_eq!(block.row(class), block.row_by_bytes(class));
            }
        }
    }

    #[test]
    fn row_helpers_pick_bytes() {
        let row = u64::from_le_bytes([3, 64, 0, 7, 64, 1, 2, 11]);
        assert_eq!(highest_offering(row, 64 * ONES, u64::MAX), Some(4));
        assert_eq!(highest_offering(row, 64 * ONES, u64::MAX >> 32), Some(1));
        assert_eq!(highest_offering(row, 65 * ONES, u64::MAX), None);
        assert_eq!(highest_offering(row, 8 * ONES, u64::MAX >> 32), Some(1));
        assert_eq!(highest_offering(row, 11 * ONES, u64::MAX), Some(7));
        let mut level = Level::try_new(9).unwrap();
        assert_eq!(level.len(), 16, "two blocks, the second padded");
        level.put(3, 0x0040_2010_0804_0201);
        level.put(5, 0x0001_0101_0101_0140);
        assert_eq!(level.get(3), 0x0040_2010_0804_0201);
        assert_eq!(level.row(0, 0), 0x40_0001 << 24);
        assert_eq!(level.row(6, 0), 0x01_0040 << 24);
        assert_eq!(level.row(1, 0), 0x01_0002 << 24);
        assert_eq!(level.fold(0), 0x0040_2010_0804_0240);
        assert_eq!(level.fold(1), 0);
        assert_eq!(std::mem::size_of::<Block>(), 64);
        assert_eq!(std::mem::align_of::<Block>(), 64);
    }
}
