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
//! Maintenance costs one descent per operation, and less below it:
//!
//! * a lookup ([`GapTree::highest_fit`], [`GapTree::around`], [`GapTree::at_or_below`])
//!   returns a [`FreeRange`] naming its node, so changing that range afterwards needs no
//!   second descent: [`GapTree::adjust`] (an allocation shrinks a range, a free grows one)
//!   and [`GapTree::remove`] climb parent links from the node, re-augmenting only while a
//!   node's summary changes (an ancestor's summary is a function of its children's);
//! * [`GapTree::insert`] descends to the first node of lower priority and splits the subtree
//!   there under the new node; removal merges the node's two children in its place. Both
//!   restructure O(1) nodes in expectation (the rotations of a treap update); the ancestors
//!   of an insert only gain a range, so they take the bytewise maximum without reading their
//!   children.
//!
//! A node keeps the priority it got on insertion, a hash of its start then, so the expected
//! depth stays logarithmic (about `1.4 log2 n`) whatever the order of operations. Nodes are
//! one cache line each, addressed by 32-bit indices into one store whose first node is an
//! empty sentinel standing for every missing child.

use crate::fitsummary;

/// The empty subtree: index of a sentinel node with an empty summary, so reading a missing
/// child's summary needs no branch.
const NIL: u32 = 0;

/// The sentinel at [`NIL`].
const SENTINEL: Node = Node {
    start: 0,
    len: 0,
    max_len: 0,
    own_fits: 0,
    fits: 0,
    prio: 0,
    left: NIL,
    right: NIL,
    parent: NIL,
};

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
    parent: u32,
}

/// A set of disjoint free ranges `[start, start + len)`, searchable top-down by size.
#[derive(Debug, Clone)]
pub(crate) struct GapTree {
    nodes: Vec<Node>,
    spare: Vec<u32>,
    root: u32,
    count: usize,
}

/// A free range found by a lookup. It names its node, which stays the same until the range
/// is removed, so [`GapTree::adjust`] and [`GapTree::remove`] need no search; `start` and
/// `len` are as of the lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FreeRange {
    pub start: u64,
    pub len: u64,
    node: u32,
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
    /// The free range holding the candidate.
    pub range: FreeRange,
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
            nodes: vec![SENTINEL],
            spare: Vec::new(),
            root: NIL,
            count: 0,
        }
    }

    /// Number of free ranges.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    fn range_at(&self, n: u32) -> FreeRange {
        let node = &self.nodes[n as usize];
        FreeRange {
            start: node.start,
            len: node.len,
            node: n,
        }
    }

    /// Recompute the augmentation of `n` from its range and its children; whether it changed
    /// (an ancestor needs no recomputation when it did not).
    fn refresh(&mut self, n: u32) -> bool {
        let node = &self.nodes[n as usize];
        let (l, r) = (
            &self.nodes[node.left as usize],
            &self.nodes[node.right as usize],
        );
        let max_len = node.len.max(l.max_len).max(r.max_len);
        let fits = fitsummary::max(node.own_fits, fitsummary::max(l.fits, r.fits));
        let node = &mut self.nodes[n as usize];
        let changed = node.max_len != max_len || node.fits != fits;
        node.max_len = max_len;
        node.fits = fits;
        changed
    }

    /// Re-augment `n` and its ancestors, up to the first whose summary stays the same.
    fn refresh_upwards(&mut self, mut n: u32) {
        while n != NIL && self.refresh(n) {
            n = self.nodes[n as usize].parent;
        }
    }

    fn set_left(&mut self, n: u32, child: u32) {
        self.nodes[n as usize].left = child;
        self.set_parent(child, n);
    }

    fn set_right(&mut self, n: u32, child: u32) {
        self.nodes[n as usize].right = child;
        self.set_parent(child, n);
    }

    fn set_parent(&mut self, child: u32, parent: u32) {
        if child != NIL {
            self.nodes[child as usize].parent = parent;
        }
    }

    /// Split `t` into keys `< key` and keys `>= key` (the parts' parent links are the
    /// caller's to set).
    fn split(&mut self, t: u32, key: u64) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.nodes[t as usize].start < key {
            let (l, r) = self.split(self.nodes[t as usize].right, key);
            self.set_right(t, l);
            self.refresh(t);
            (t, r)
        } else {
            let (l, r) = self.split(self.nodes[t as usize].left, key);
            self.set_left(t, r);
            self.refresh(t);
            (l, t)
        }
    }

    /// Join two treaps where every key of `a` is below every key of `b` (the result's parent
    /// link is the caller's to set).
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a as usize].prio > self.nodes[b as usize].prio {
            let r = self.merge(self.nodes[a as usize].right, b);
            self.set_right(a, r);
            self.refresh(a);
            a
        } else {
            let l = self.merge(a, self.nodes[b as usize].left);
            self.set_left(b, l);
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
            parent: NIL,
        };
        let idx = match self.spare.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                // `try_reserve_one` keeps every index within `u32`.
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.root = self.insert_at(self.root, idx);
        self.set_parent(self.root, NIL);
        self.count += 1;
    }

    /// Insert node `idx` into the subtree at `n`, returning the subtree's new root (its
    /// parent link is the caller's to set).
    fn insert_at(&mut self, n: u32, idx: u32) -> u32 {
        if n == NIL {
            return idx;
        }
        let new = &self.nodes[idx as usize];
        let (key, prio, len, own_fits) = (new.start, new.prio, new.len, new.own_fits);
        let node = &self.nodes[n as usize];
        if prio > node.prio {
            let (l, r) = self.split(n, key);
            self.set_left(idx, l);
            self.set_right(idx, r);
            self.refresh(idx);
            return idx;
        }
        if key < node.start {
            let l = self.insert_at(node.left, idx);
            self.set_left(n, l);
        } else {
            let r = self.insert_at(node.right, idx);
            self.set_right(n, r);
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
            || (self.nodes.len() <= u32::MAX as usize && self.nodes.try_reserve(1).is_ok())
    }

    /// Change the free range `r` (from a lookup, still in the tree) to `[start, start + len)`
    /// in place (`len > 0`). The caller keeps the ranges disjoint, so the new start still
    /// orders the range between its neighbours.
    pub(crate) fn adjust(&mut self, r: FreeRange, start: u64, len: u64) {
        let node = &mut self.nodes[r.node as usize];
        node.start = start;
        node.len = len;
        node.own_fits = fitsummary::of_range(start, len);
        self.refresh_upwards(r.node);
    }

    /// Remove the free range `r` (from a lookup, still in the tree): its children merge in
    /// its place.
    pub(crate) fn remove(&mut self, r: FreeRange) {
        let node = &self.nodes[r.node as usize];
        let (left, right, parent) = (node.left, node.right, node.parent);
        let merged = self.merge(left, right);
        if parent == NIL {
            self.root = merged;
            self.set_parent(merged, NIL);
        } else {
            if self.nodes[parent as usize].left == r.node {
                self.set_left(parent, merged);
            } else {
                self.set_right(parent, merged);
            }
            self.refresh_upwards(parent);
        }
        self.spare.push(r.node);
        self.count -= 1;
    }

    /// The free range with the largest start `<= key`.
    pub(crate) fn at_or_below(&self, key: u64) -> Option<FreeRange> {
        let mut n = self.root;
        let mut best = NIL;
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.start <= key {
                best = n;
                n = node.right;
            } else {
                n = node.left;
            }
        }
        (best != NIL).then(|| self.range_at(best))
    }

    /// The free ranges around `key` in one descent: the one with the largest start `< key`
    /// and the one with the smallest start `>= key`.
    pub(crate) fn around(&self, key: u64) -> [Option<FreeRange>; 2] {
        let mut n = self.root;
        let (mut below, mut above) = (NIL, NIL);
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.start < key {
                below = n;
                n = node.right;
            } else {
                above = n;
                n = node.left;
            }
        }
        [below, above].map(|n| (n != NIL).then(|| self.range_at(n)))
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
        if !self.qualifies(self.root, &q) {
            return None;
        }
        self.search(self.root, &q)
    }

    /// Whether the subtree at `n` may hold a fit: exactly, for unaligned requests and
    /// aligned ones of up to 64 granules, if the limit were no bound.
    fn qualifies(&self, n: u32, q: &Query) -> bool {
        let node = &self.nodes[n as usize];
        let aligned_fit = match q.aligned_need {
            Some(need) => fitsummary::offers(node.fits, need),
            None => true,
        };
        node.max_len >= q.size && aligned_fit
    }

    /// The highest fit in the subtree at `n`, which [`qualifies`](Self::qualifies): right
    /// first (it starts higher), then the node, then left. Only subtrees that qualify are
    /// entered, so the recursion follows the path to the limit and then one path down.
    fn search(&self, mut n: u32, q: &Query) -> Option<Fit> {
        loop {
            let node = &self.nodes[n as usize];
            if node.start <= q.limit {
                if self.qualifies(node.right, q) {
                    if let Some(f) = self.search(node.right, q) {
                        return Some(f);
                    }
                }
                if let Some(pfn) = fit_in(node.start, node.len, q.size, q.align, q.limit) {
                    return Some(Fit {
                        range: self.range_at(n),
                        pfn,
                    });
                }
            }
            if !self.qualifies(node.left, q) {
                return None;
            }
            n = node.left;
        }
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

    /// Check the heap order, the parent links and the augmentation of every node (tests).
    pub(crate) fn check(&self) -> Result<(), String> {
        fn walk(t: &GapTree, n: u32, parent: u32) -> Result<(u64, u64), String> {
            if n == NIL {
                return Ok((0, 0));
            }
            let node = &t.nodes[n as usize];
            if node.parent != parent {
                return Err(format!("parent link broken at {:#x}", node.start));
            }
            for c in [node.left, node.right] {
                if c != NIL && t.nodes[c as usize].prio > node.prio {
                    return Err(format!("heap order broken at {:#x}", node.start));
                }
            }
            let ((lm, lf), (rm, rf)) = (walk(t, node.left, n)?, walk(t, node.right, n)?);
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
        let sentinel = &self.nodes[NIL as usize];
        if (sentinel.max_len, sentinel.fits) != (0, 0) {
            return Err("the sentinel's summary is not empty".into());
        }
        walk(self, self.root, NIL).map(|_| ())
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
    use std::collections::BTreeMap;

    fn span(r: Option<FreeRange>) -> Option<(u64, u64)> {
        r.map(|r| (r.start, r.len))
    }

    /// The range starting at `start`, by lookup.
    fn at(t: &GapTree, start: u64) -> FreeRange {
        t.at_or_below(start)
            .filter(|r| r.start == start)
            .expect("a range starts there")
    }

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
        let fit = t.highest_fit(3, 1, 21).unwrap();
        assert_eq!((fit.pfn, fit.range.start, fit.range.len), (10, 10, 3));
        assert_eq!(t.highest_fit(5, 1, 100).unwrap().pfn, 23);
        t.remove(fit.range);
        assert_eq!(span(t.at_or_below(19)), Some((0, 4)));
        assert_eq!(t.around(20).map(span), [Some((0, 4)), Some((20, 8))]);
        assert_eq!(t.around(5).map(span), [Some((0, 4)), Some((20, 8))]);
        assert_eq!(t.around(0).map(span), [None, Some((0, 4))]);
        assert_eq!(t.ranges(), vec![(0, 4), (20, 8)]);
        t.check().unwrap();
    }

    #[test]
    fn ranges_grow_and_shrink_in_place() {
        let mut t = GapTree::new();
        for (s, l) in [(0, 4), (10, 3), (20, 8), (40, 2)] {
            t.insert(s, l);
        }
        t.adjust(at(&t, 10), 8, 7); // grow down and up: [8, 15)
        t.adjust(at(&t, 20), 24, 4); // shrink from below: [24, 28)
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
        t.remove(at(&t, u64::MAX - 3));
        assert_eq!(t.len(), 0);
        t.check().unwrap();
    }

    proptest::proptest! {
        /// Inserts, in-place changes and removals in any order keep the parent links, heap
        /// order and augmentation intact and the ranges equal to a plain map's.
        #[test]
        fn updates_match_a_map(
            ops in proptest::collection::vec((0u64..48, 0u64..8, 8u64..16, proptest::bool::ANY), 1..400)
        ) {
            let mut t = GapTree::new();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            // Slot `i` holds at most one range, `[16 i + a, 16 i + b)`: ranges never touch.
            for (slot, a, b, drop) in ops {
                let base = slot * 16;
                match model.range(base..base + 16).next().map(|(&s, _)| s) {
                    None => {
                        t.insert(base + a, b - a);
                        model.insert(base + a, b - a);
                    }
                    Some(s) => {
                        let r = at(&t, s);
                        model.remove(&s);
                        if drop {
                            t.remove(r);
                        } else {
                            t.adjust(r, base + a, b - a);
                            model.insert(base + a, b - a);
                        }
                    }
                }
                proptest::prop_assert_eq!(t.check(), Ok(()));
                proptest::prop_assert_eq!(t.len(), model.len());
            }
            proptest::prop_assert_eq!(t.ranges(), model.into_iter().collect::<Vec<_>>());
        }
    }
}
