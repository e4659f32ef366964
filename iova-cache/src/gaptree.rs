//! The free-range index: a treap of free ranges keyed by start pfn, each node augmented with
//! the largest free length in its subtree and the subtree's [`fitsummary`]: per alignment
//! class of 2 to 64 granules, the most granules any of its ranges offers from an aligned pfn.
//!
//! The augmentation lets a top-down search skip every subtree that cannot hold the request,
//! so it never answers "no space" while a fitting range exists, and bounds its cost however
//! fragmented the space is:
//!
//! * unaligned requests, and size-aligned requests of up to 64 granules (every cached size
//!   class and the 64-granule one): O(log n) expected steps. The augmentation decides the fit
//!   of a subtree exactly, so the search only walks the path to the limit and then descends
//!   into one subtree that is known to hold a fit; the one range straddling the limit is
//!   the only node checked in vain.
//! * aligned requests above 64 granules: the summary's 64-granule class and the length
//!   prune, plus the ranges that pass both but fail on the larger alignment (Linux walks
//!   these too).
//!
//! Allocations and frees mostly shrink or grow one range in place ([`GapTree::adjust`]: one
//! descent that re-augments its path) instead of removing and re-inserting it. A node keeps
//! the priority it got on insertion, a hash of its start then, so the expected depth stays
//! logarithmic whatever the order of operations.

use crate::fitsummary;

const NIL: u32 = u32::MAX;

/// One free range and the augmentation of its subtree, in one cache line: a search or an
/// update touching a node misses at most once on it.
#[derive(Debug, Clone)]
#[repr(align(64))]
struct Node {
    start: u64,
    len: u64,
    /// Largest `len` in this subtree.
    max_len: u64,
    /// Fit summary of this range alone, and of the subtree (bytewise maximum).
    own_fits: u64,
    fits: u64,
    prio: u32,
    left: u32,
    right: u32,
}

/// A set of disjoint free ranges `[start, start + len)`, searchable top-down by size.
#[derive(Debug, Clone, Default)]
pub(crate) struct GapTree {
    nodes: Vec<Node>,
    spare: Vec<u32>,
    root: u32,
    count: usize,
}

/// A request of [`GapTree::highest_fit`].
struct Query {
    size: u64,
    align: u64,
    limit: u64,
    /// What a subtree's fit summary must offer (aligned requests only).
    aligned_need: Option<(u32, u64)>,
}

/// A fit found by [`GapTree::highest_fit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fit {
    /// Start of the free range holding the candidate.
    pub range_start: u64,
    /// Length of that free range.
    pub range_len: u64,
    /// Start of the allocation inside it.
    pub pfn: u64,
}

fn mix(key: u64) -> u32 {
    // splitmix64 finaliser, high half: a fixed pseudo-random priority per key.
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 32) as u32
}

impl GapTree {
    pub(crate) fn new() -> Self {
        Self {
            nodes: Vec::new(),
            spare: Vec::new(),
            root: NIL,
            count: 0,
        }
    }

    /// Number of free ranges.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// `(max_len, fits)` of the subtree at `n`.
    fn summary_of(&self, n: u32) -> (u64, u64) {
        if n == NIL {
            (0, 0)
        } else {
            let node = &self.nodes[n as usize];
            (node.max_len, node.fits)
        }
    }

    /// Recompute the augmentation of `n` from its range and its children; whether it changed
    /// (an ancestor needs no recomputation when it did not).
    fn refresh(&mut self, n: u32) -> bool {
        let node = &self.nodes[n as usize];
        let ((lm, lf), (rm, rf)) = (self.summary_of(node.left), self.summary_of(node.right));
        let max_len = node.len.max(lm).max(rm);
        let fits = fitsummary::max(node.own_fits, fitsummary::max(lf, rf));
        let node = &mut self.nodes[n as usize];
        let changed = node.max_len != max_len || node.fits != fits;
        node.max_len = max_len;
        node.fits = fits;
        changed
    }

    /// Split `t` into keys `< key` and keys `>= key`.
    fn split(&mut self, t: u32, key: u64) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.nodes[t as usize].start < key {
            let (l, r) = self.split(self.nodes[t as usize].right, key);
            self.nodes[t as usize].right = l;
            self.refresh(t);
            (t, r)
        } else {
            let (l, r) = self.split(self.nodes[t as usize].left, key);
            self.nodes[t as usize].left = r;
            self.refresh(t);
            (l, t)
        }
    }

    /// Join two treaps where every key of `a` is below every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a as usize].prio > self.nodes[b as usize].prio {
            let r = self.merge(self.nodes[a as usize].right, b);
            self.nodes[a as usize].right = r;
            self.refresh(a);
            a
        } else {
            let l = self.merge(a, self.nodes[b as usize].left);
            self.nodes[b as usize].left = l;
            self.refresh(b);
            b
        }
    }

    /// Add the free range `[start, start + len)` (nothing for `len == 0`); the caller keeps
    /// ranges disjoint and has made room with [`try_reserve_one`](Self::try_reserve_one).
    pub(crate) fn insert(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let own_fits = fitsummary::of_range(start, len);
        let node = Node {
            start,
            len,
            max_len: len,
            own_fits,
            fits: own_fits,
            prio: mix(start),
            left: NIL,
            right: NIL,
        };
        let idx = match self.spare.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                // `try_reserve_one` keeps the store below `NIL` nodes, so the index fits.
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.root = self.insert_at(self.root, idx);
        self.count += 1;
    }

    /// Insert node `idx` into the subtree at `n`, returning the subtree's new root: descend by
    /// key to the first node of lower priority and split that subtree under the new node
    /// (O(1) expected work, like the rotations of a treap insert). The ancestors only gain a
    /// range, so their augmentation grows by the new node's own, without reading children.
    fn insert_at(&mut self, n: u32, idx: u32) -> u32 {
        if n == NIL {
            return idx;
        }
        let new = &self.nodes[idx as usize];
        let (key, prio, len, own_fits) = (new.start, new.prio, new.len, new.own_fits);
        let node = &self.nodes[n as usize];
        if prio > node.prio {
            let (l, r) = self.split(n, key);
            let new = &mut self.nodes[idx as usize];
            new.left = l;
            new.right = r;
            self.refresh(idx);
            return idx;
        }
        if key < node.start {
            let l = self.insert_at(node.left, idx);
            self.nodes[n as usize].left = l;
        } else {
            let r = self.insert_at(node.right, idx);
            self.nodes[n as usize].right = r;
        }
        let node = &mut self.nodes[n as usize];
        node.max_len = node.max_len.max(len);
        node.fits = fitsummary::max(node.fits, own_fits);
        n
    }

    /// Make sure one more range than now fits without growing the node store, so an insert
    /// after a removal cannot fail half-way; `false` if the memory cannot be had.
    pub(crate) fn try_reserve_one(&mut self) -> bool {
        !self.spare.is_empty()
            || (self.nodes.len() < NIL as usize && self.nodes.try_reserve(1).is_ok())
    }

    /// Change the free range starting at `key` to `[start, start + len)` in place (`len > 0`),
    /// re-augmenting the path to it as far up as the augmentation changes; `false` if no range
    /// starts at `key`. The caller keeps the ranges disjoint, so the new start still orders
    /// the range between its neighbours.
    pub(crate) fn adjust(&mut self, key: u64, start: u64, len: u64) -> bool {
        self.adjust_at(self.root, key, start, len).is_some()
    }

    /// [`adjust`](Self::adjust) in the subtree at `n`: `None` if the key is not there, else
    /// whether the subtree's augmentation changed.
    fn adjust_at(&mut self, n: u32, key: u64, start: u64, len: u64) -> Option<bool> {
        if n == NIL {
            return None;
        }
        let node = &mut self.nodes[n as usize];
        let changed = match key.cmp(&node.start) {
            std::cmp::Ordering::Less => {
                let left = node.left;
                self.adjust_at(left, key, start, len)?
            }
            std::cmp::Ordering::Greater => {
                let right = node.right;
                self.adjust_at(right, key, start, len)?
            }
            std::cmp::Ordering::Equal => {
                node.start = start;
                node.len = len;
                node.own_fits = fitsummary::of_range(start, len);
                true
            }
        };
        Some(changed && self.refresh(n))
    }

    /// Remove the free range starting at `start`, returning its length.
    pub(crate) fn remove(&mut self, start: u64) -> Option<u64> {
        let (root, removed, _) = self.remove_at(self.root, start);
        self.root = root;
        if removed == NIL {
            return None;
        }
        self.spare.push(removed);
        self.count -= 1;
        Some(self.nodes[removed as usize].len)
    }

    /// Remove the node keyed `key` from the subtree at `n`: the subtree's new root, the removed
    /// node (`NIL` if none) and whether the subtree's augmentation may have changed. The
    /// node's children merge in its place (O(1) expected work); the ancestors re-augment as
    /// far up as something changes.
    fn remove_at(&mut self, n: u32, key: u64) -> (u32, u32, bool) {
        if n == NIL {
            return (NIL, NIL, false);
        }
        let node = &self.nodes[n as usize];
        let (left, right) = (node.left, node.right);
        match key.cmp(&node.start) {
            std::cmp::Ordering::Equal => (self.merge(left, right), n, true),
            std::cmp::Ordering::Less => {
                let (l, removed, changed) = self.remove_at(left, key);
                self.nodes[n as usize].left = l;
                (n, removed, changed && self.refresh(n))
            }
            std::cmp::Ordering::Greater => {
                let (r, removed, changed) = self.remove_at(right, key);
                self.nodes[n as usize].right = r;
                (n, removed, changed && self.refresh(n))
            }
        }
    }

    /// The free range with the largest start `<= key`.
    pub(crate) fn at_or_below(&self, key: u64) -> Option<(u64, u64)> {
        let mut n = self.root;
        let mut best = None;
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.start <= key {
                best = Some((node.start, node.len));
                n = node.right;
            } else {
                n = node.left;
            }
        }
        best
    }

    /// The free ranges around `key` in one descent: the one with the largest start `< key`
    /// and the one with the smallest start `>= key`.
    pub(crate) fn around(&self, key: u64) -> (Option<(u64, u64)>, Option<(u64, u64)>) {
        let mut n = self.root;
        let (mut below, mut above) = (None, None);
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.start < key {
                below = Some((node.start, node.len));
                n = node.right;
            } else {
                above = Some((node.start, node.len));
                n = node.left;
            }
        }
        (below, above)
    }

    /// The highest `pfn` with `pfn % align == 0`, `pfn + size - 1 <= limit`, lying with its
    /// `size` granules inside one free range.
    /// `None` for a zero size or an alignment that is not a power of two.
    pub(crate) fn highest_fit(&self, size: u64, align: u64, limit: u64) -> Option<Fit> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let q = Query {
            size,
            align,
            limit,
            aligned_need: (align > 1).then(|| fitsummary::need(size, align)),
        };
        self.search(self.root, &q)
    }

    fn search(&self, n: u32, q: &Query) -> Option<Fit> {
        if n == NIL {
            return None;
        }
        let node = &self.nodes[n as usize];
        if node.max_len < q.size
            || q.aligned_need
                .is_some_and(|need| !fitsummary::offers(node.fits, need))
        {
            return None;
        }
        if node.start <= q.limit {
            // Everything on the right starts higher: it wins if it fits.
            if let Some(f) = self.search(node.right, q) {
                return Some(f);
            }
            if let Some(pfn) = fit_in(node.start, node.len, q.size, q.align, q.limit) {
                return Some(Fit {
                    range_start: node.start,
                    range_len: node.len,
                    pfn,
                });
            }
        }
        self.search(node.left, q)
    }

    /// Every free range in address order (diagnostics and tests).
    pub(crate) fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(self.count);
        let mut stack = Vec::new();
        let mut n = self.root;
        while n != NIL || !stack.is_empty() {
            while n != NIL {
                stack.push(n);
                n = self.nodes[n as usize].left;
            }
            let top = stack.pop().expect("stack is non-empty");
            let node = &self.nodes[top as usize];
            out.push((node.start, node.len));
            n = node.right;
        }
        out
    }

    /// Check the heap order and the augmentation of every node (tests).
    pub(crate) fn check(&self) -> Result<(), String> {
        fn walk(t: &GapTree, n: u32) -> Result<(u64, u64), String> {
            if n == NIL {
                return Ok((0, 0));
            }
            let node = &t.nodes[n as usize];
            for c in [node.left, node.right] {
                if c != NIL && t.nodes[c as usize].prio > node.prio {
                    return Err(format!("heap order broken at {:#x}", node.start));
                }
            }
            let ((lm, lf), (rm, rf)) = (walk(t, node.left)?, walk(t, node.right)?);
            let m = node.len.max(lm).max(rm);
            if m != node.max_len {
                return Err(format!("max_len stale at {:#x}", node.start));
            }
            let own = fitsummary::of_range(node.start, node.len);
            let f = fitsummary::max(own, fitsummary::max(lf, rf));
            if own != node.own_fits || f != node.fits {
                return Err(format!("fit summary stale at {:#x}", node.start));
            }
            Ok((m, f))
        }
        walk(self, self.root).map(|_| ())
    }
}

/// The highest aligned start of `size` granules inside `[start, start + len)` ending at or
/// below `limit`.
fn fit_in(start: u64, len: u64, size: u64, align: u64, limit: u64) -> Option<u64> {
    let end = start + (len - 1);
    let hi = end.min(limit);
    let first_end = start.checked_add(size - 1)?;
    if hi < first_end {
        return None;
    }
    let cand = (hi - (size - 1)) & !(align - 1);
    (cand >= start).then_some(cand)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_prefers_the_highest_fit_and_honours_alignment() {
        let mut t = GapTree::new();
        t.insert(0, 4);
        t.insert(10, 3);
        t.insert(20, 8);
        t.check().unwrap();
        assert_eq!(t.highest_fit(2, 1, 100).unwrap().pfn, 26);
        assert_eq!(
            t.highest_fit(8, 8, 100),
            None,
            "[20, 28) is not 8-aligned at 8 long"
        );
        assert_eq!(t.highest_fit(4, 4, 100).unwrap().pfn, 24);
        assert_eq!(
            t.highest_fit(3, 1, 21),
            Some(Fit {
                range_start: 10,
                range_len: 3,
                pfn: 10
            })
        );
        assert_eq!(t.highest_fit(5, 1, 100).unwrap().pfn, 23);
        assert_eq!(t.remove(10), Some(3));
        assert_eq!(t.remove(10), None);
        assert_eq!(t.at_or_below(19), Some((0, 4)));
        assert_eq!(t.around(20), (Some((0, 4)), Some((20, 8))));
        assert_eq!(t.around(5), (Some((0, 4)), Some((20, 8))));
        assert_eq!(t.around(0), (None, Some((0, 4))));
        assert_eq!(t.ranges(), vec![(0, 4), (20, 8)]);
        t.check().unwrap();
    }

    #[test]
    fn ranges_grow_and_shrink_in_place() {
        let mut t = GapTree::new();
        for (s, l) in [(0, 4), (10, 3), (20, 8), (40, 2)] {
            t.insert(s, l);
        }
        assert!(t.adjust(10, 8, 7), "grow down and up: [8, 15)");
        assert!(t.adjust(20, 24, 4), "shrink from below: [24, 28)");
        assert!(!t.adjust(21, 21, 1), "no range starts at 21");
        t.check().unwrap();
        assert_eq!(t.ranges(), vec![(0, 4), (8, 7), (24, 4), (40, 2)]);
        assert_eq!(t.highest_fit(4, 4, 100).unwrap().pfn, 24);
        assert_eq!(
            t.highest_fit(8, 8, 100),
            None,
            "the summaries follow the change"
        );
        assert_eq!(t.highest_fit(7, 1, 100).unwrap().pfn, 8);
    }

    #[test]
    fn fit_at_the_top_of_the_u64_space() {
        let mut t = GapTree::new();
        t.insert(u64::MAX - 3, 4);
        assert_eq!(t.highest_fit(2, 2, u64::MAX).unwrap().pfn, u64::MAX - 1);
        assert_eq!(t.remove(u64::MAX - 3), Some(4));
        assert_eq!(t.len(), 0);
    }
}
