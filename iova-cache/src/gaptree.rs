//! The range index: one B+ tree, keyed by start pfn, of the free ranges and the live
//! allocations. Every inner node keeps, per child, the child's first start, the largest free
//! length below it and its [`fitsummary`]: per alignment class of 2 to 64 granules, the most
//! granules any free range below offers from an aligned pfn. An allocation's entry offers
//! nothing (no free length, empty summary), so the search never stops at one.
//!
//! Free ranges and allocations share the tree so that a free or an allocation is one descent:
//! a free finds the allocation's entry and both its neighbours in one leaf (or the leaf next to
//! it), and turns the entry into a free range or merges it into a neighbour; an allocation's
//! search ends at the free range it carves the allocation's entry from, in place or next to it.
//! A separate map of the allocations cost a second descent per operation, each with its own
//! cache misses once the maps outgrow the caches.
//!
//! The summaries let a top-down search skip every subtree that cannot hold the request, so it
//! never answers "no space" while a fitting range exists, and bound its cost however
//! fragmented the space is:
//!
//! * unaligned requests, and size-aligned requests of up to 64 granules (every cached size
//!   class and the 64-granule one): O(h · B) steps for height `h` and fan-out `B`, so
//!   O(log n) in the number of entries. The summaries decide the fit of a subtree exactly, so
//!   the search only walks the path to the limit and then descends into one subtree that is
//!   known to hold a fit; the one range straddling the limit is the only one checked in vain,
//!   and in a leaf the fit of each entry is computed exactly from its start and length.
//! * aligned requests above 64 granules: the summary's 64-granule class and the length
//!   prune, plus the ranges that pass both but fail on the larger alignment (Linux walks
//!   these too).
//!
//! Why a B+ tree: with hundreds of thousands of free ranges the index does not fit in the
//! caches, and an operation costs about one cache miss per level it descends. A binary tree
//! (the treap this replaced: 1.4 log2 n deep, 23 levels on average at 155k ranges) pays a
//! dependent miss per level; nodes of 15 or 16 entries hold the same ranges in `log_8 n` to
//! `log_16 n` levels, each a few adjacent cache lines. With 300k live mixed-size allocations
//! as tree entries the tree held about 435k entries (135k of them free ranges), nearly all of
//! them in the leaves; the small size-aligned allocations now live in chunks (module `range`),
//! each one entry here.
//!
//! Leaves and inner nodes are different types in two stores. A leaf is four cache lines: a
//! 16-byte header and [`LEAF_FANOUT`] entries of a start and a length each, with a bit per
//! entry telling an allocation from a free range and one for the allocation's tag. It stores
//! no fit summary: a leaf entry's summary is a function of its start and length, computed
//! where the climb needs it, and the search in a leaf computes each entry's fit directly. An
//! inner node ([`FANOUT`] children, eight lines: keys, lengths, summaries, children, header)
//! keeps the summaries its search prunes with. Leaves laid out like the inner nodes (eight
//! lines, a summary per entry) took twice the memory, and a random free's leaf was a miss
//! into a working set half again as large (the allocator 29 MB at 300k live, now 19 MB;
//! measured in module `range`). The price is the leaf rescan's summaries, about 7% more
//! instructions per pair that reaches the tree.
//!
//! A descent prefetches the lines of the node it enters that the operation goes on to read,
//! so a cold node costs about one miss latency, not one per line read after the first;
//! entering a leaf, it also prefetches the leaf before it (all of it: where its last entry
//! lies depends on its count) and the first line of the leaf after it (the header and the
//! first entry), the neighbours a free of the leaf's first or last entry reads.
//!
//! Maintenance costs one descent and O(h · B) work:
//!
//! * a lookup ([`GapTree::highest_fit`], [`GapTree::at_or_below`]) returns an [`Entry`]
//!   naming its leaf slot, so carving an allocation from a free range
//!   ([`GapTree::carve`]), releasing an allocation ([`GapTree::release`]) or shrinking,
//!   growing or removing a free range ([`GapTree::adjust`], [`GapTree::remove`]) needs no
//!   second descent; an entry's neighbours are the slots next to it. The change climbs parent
//!   links while a node's record in its parent changes, and rescans a node only where the
//!   changed entry held one of its maxima and lost it;
//! * a full node splits in two halves (at most one split per level and a new root per
//!   insert, which [`GapTree::try_reserve`] provides for beforehand: an allocation inserts at
//!   most two entries, a free none, a reservation at most one); a node left empty
//!   is unlinked, and a root with one child gives way to it. Nodes are not merged when they
//!   run low (deletion without rebalancing, "free at empty"): Sen and Tarjan show the height
//!   then stays logarithmic in the number of inserts, and it saves the borrow and merge
//!   cases a free would otherwise pay for.
//!
//! Nodes live in their stores addressed by 32-bit indices, recycled through free lists whose
//! capacity is reserved with the stores', so unlinking a node never allocates.

use crate::fitsummary;

/// Most children of an inner node.
const FANOUT: usize = 16;

/// Most entries of a leaf: with the header, four cache lines.
const LEAF_FANOUT: usize = 15;

/// No node (the root's parent).
const NONE: u32 = u32::MAX;

/// An inner node: up to [`FANOUT`] children in address order, each with a record
/// `(first start, largest free length, fit summary)` summarising its subtree: the length and
/// the bytewise maximum of the summaries of the free ranges under it.
///
/// Each array starts a cache line and fills whole ones: a node is 8 lines, and a scan of one
/// array touches 2 (1 for the children).
#[derive(Debug, Clone)]
#[repr(C, align(64))]
struct Inner {
    keys: [u64; FANOUT],
    lens: [u64; FANOUT],
    fits: [u64; FANOUT],
    children: [u32; FANOUT],
    count: usize,
    parent: u32,
}

/// A leaf: up to [`LEAF_FANOUT`] entries in address order, each a free range or an
/// allocation. The header and the first entry share the first cache line.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
struct Leaf {
    parent: u32,
    count: u16,
    /// Bit `i`: slot `i` is an allocation (else a free range).
    live: u16,
    /// Bit `i`: the tag of the allocation in slot `i`.
    tags: u16,
    slots: [Slot; LEAF_FANOUT],
}

/// A leaf entry: a free range or an allocation, `len` granules from `start`.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    start: u64,
    len: u64,
}

// The layouts the prefetches and the module docs count on.
const _: () = assert!(std::mem::size_of::<Leaf>() == 4 * 64);
const _: () = assert!(std::mem::size_of::<Inner>() == 8 * 64);

/// What a leaf entry offers to the summaries: its `(length, fit summary)`, `(0, 0)` for an
/// allocation.
type Summary = (u64, u64);

/// An entry's or a node's record: `(first start, largest length, fit summary)`.
type Record = (u64, u64, u64);

/// A set of disjoint free ranges `[start, start + len)`, searchable top-down by size, and of
/// the allocations between them.
#[derive(Debug, Clone)]
pub(crate) struct GapTree {
    inners: Vec<Inner>,
    leaves: Vec<Leaf>,
    /// Unlinked inner nodes for reuse; its capacity is the store's (see `try_reserve`).
    spare_inners: Vec<u32>,
    /// Unlinked leaves for reuse, likewise.
    spare_leaves: Vec<u32>,
    /// The root: a leaf at height 0, else an inner node.
    root: u32,
    height: u32,
    /// Free ranges.
    count: usize,
    /// Allocations.
    live: usize,
    /// Bumped by every change of the entries, so a caller can tell that an answer it
    /// remembers (a search's, a handle) is still the tree's.
    version: u64,
}

/// A free range or an allocation found by a lookup. It names its leaf slot, which stays valid
/// until the next insert or removal ([`GapTree::adjust`] moves nothing); `start`, `len` and
/// `live` are as of the lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub start: u64,
    /// Granules: the free range's length or the allocation's size.
    pub len: u64,
    /// `Some(tag)` for an allocation, `None` for a free range.
    pub live: Option<bool>,
    leaf: u32,
    slot: usize,
}

/// A request of [`GapTree::highest_fit`].
struct Query {
    size: u64,
    align: u64,
    limit: u64,
    /// What a subtree's fit summary must offer (aligned requests only).
    aligned_need: Option<(u32, u64)>,
}

impl Query {
    /// Whether ranges with this longest length and fit summary may hold the request: exactly,
    /// for unaligned requests and aligned ones of up to 64 granules, were the limit no bound.
    fn admits(&self, max_len: u64, fits: u64) -> bool {
        let aligned_fit = match self.aligned_need {
            Some(need) => fitsummary::offers(fits, need),
            None => true,
        };
        max_len >= self.size && aligned_fit
    }
}

/// A fit found by [`GapTree::highest_fit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fit {
    /// The free range holding the candidate.
    pub range: Entry,
    /// Start of the allocation inside it.
    pub pfn: u64,
}

/// `mask` with a `bit` put in at position `slot`, the bits from `slot` on moving up one.
fn insert_bit(mask: u16, slot: usize, bit: bool) -> u16 {
    let below = mask & ((1 << slot) - 1);
    let above = ((u32::from(mask) >> slot) << (slot + 1)) as u16;
    below | above | (u16::from(bit) << slot)
}

/// `mask` without the bit at position `slot`, the bits above it moving down one.
fn remove_bit(mask: u16, slot: usize) -> u16 {
    let below = mask & ((1 << slot) - 1);
    below | ((u32::from(mask) >> (slot + 1)) << slot) as u16
}

impl Inner {
    fn empty(parent: u32) -> Self {
        Self {
            keys: [0; FANOUT],
            lens: [0; FANOUT],
            fits: [0; FANOUT],
            children: [NONE; FANOUT],
            count: 0,
            parent,
        }
    }

    /// The record of the whole node for its parent (not empty).
    fn record(&self) -> Record {
        let n = self.count;
        let (mut max_len, mut fits) = (0, 0);
        // One pass, both maxima side by side.
        for (&len, &f) in self.lens[..n].iter().zip(&self.fits[..n]) {
            max_len = max_len.max(len);
            fits = fitsummary::max(fits, f);
        }
        (self.keys[0], max_len, fits)
    }

    /// Put `child` with its `record` at `slot`, shifting the entries after it.
    fn put(&mut self, slot: usize, (key, len, fits): Record, child: u32) {
        let n = self.count;
        self.keys.copy_within(slot..n, slot + 1);
        self.lens.copy_within(slot..n, slot + 1);
        self.fits.copy_within(slot..n, slot + 1);
        self.children.copy_within(slot..n, slot + 1);
        (self.keys[slot], self.lens[slot], self.fits[slot]) = (key, len, fits);
        self.children[slot] = child;
        self.count += 1;
    }

    /// Drop the child at `slot`, shifting the entries after it.
    fn take(&mut self, slot: usize) {
        let n = self.count;
        self.keys.copy_within(slot + 1..n, slot);
        self.lens.copy_within(slot + 1..n, slot);
        self.fits.copy_within(slot + 1..n, slot);
        self.children.copy_within(slot + 1..n, slot);
        self.count -= 1;
    }

    /// Move the upper half of this full node's children into the empty `right`.
    fn halve_into(&mut self, right: &mut Inner) {
        let half = FANOUT / 2;
        right.keys[..FANOUT - half].copy_from_slice(&self.keys[half..]);
        right.lens[..FANOUT - half].copy_from_slice(&self.lens[half..]);
        right.fits[..FANOUT - half].copy_from_slice(&self.fits[half..]);
        right.children[..FANOUT - half].copy_from_slice(&self.children[half..]);
        (self.count, right.count) = (half, FANOUT - half);
    }
}

impl Leaf {
    fn empty(parent: u32) -> Self {
        Self {
            parent,
            count: 0,
            live: 0,
            tags: 0,
            slots: [Slot::default(); LEAF_FANOUT],
        }
    }

    fn len(&self) -> usize {
        usize::from(self.count)
    }

    fn is_live(&self, slot: usize) -> bool {
        self.live & (1 << slot) != 0
    }

    /// What the entry at `slot` offers to the summaries.
    fn summary(&self, slot: usize) -> Summary {
        match self.is_live(slot) {
            true => (0, 0),
            false => free_summary(self.slots[slot]),
        }
    }

    /// The record of the whole leaf for its parent (not empty).
    fn record(&self) -> Record {
        let (mut max_len, mut fits) = (0, 0);
        // The free slots, lowest first, by their bits.
        let mut free = !self.live & ((1 << self.count) - 1);
        while free != 0 {
            let s = self.slots[free.trailing_zeros() as usize];
            free &= free - 1;
            max_len = max_len.max(s.len);
            fits = fitsummary::max(fits, fitsummary::of_range(s.start, s.len));
        }
        (self.slots[0].start, max_len, fits)
    }

    /// Put `value` at `slot`, shifting the entries after it: an allocation tagged `tag` for
    /// `live == Some(tag)`, else a free range.
    fn put(&mut self, slot: usize, value: Slot, live: Option<bool>) {
        let n = self.len();
        self.slots.copy_within(slot..n, slot + 1);
        self.slots[slot] = value;
        self.live = insert_bit(self.live, slot, live.is_some());
        self.tags = insert_bit(self.tags, slot, live == Some(true));
        self.count += 1;
    }

    /// Drop the entry at `slot`, shifting the entries after it.
    fn take(&mut self, slot: usize) {
        let n = self.len();
        self.slots.copy_within(slot + 1..n, slot);
        self.live = remove_bit(self.live, slot);
        self.tags = remove_bit(self.tags, slot);
        self.count -= 1;
    }

    /// Move the upper half of this full leaf's entries into the empty `right`.
    fn halve_into(&mut self, right: &mut Leaf) {
        let half = LEAF_FANOUT / 2;
        let moved = LEAF_FANOUT - half;
        right.slots[..moved].copy_from_slice(&self.slots[half..]);
        (right.live, right.tags) = (self.live >> half, self.tags >> half);
        self.live &= (1 << half) - 1;
        self.tags &= (1 << half) - 1;
        (self.count, right.count) = (half as u16, moved as u16);
    }
}

/// What the free range `s` offers to the summaries.
fn free_summary(s: Slot) -> Summary {
    (s.len, fitsummary::of_range(s.start, s.len))
}

impl GapTree {
    pub(crate) fn new() -> Self {
        Self {
            inners: Vec::new(),
            leaves: vec![Leaf::empty(NONE)],
            spare_inners: Vec::new(),
            spare_leaves: Vec::new(),
            root: 0,
            height: 0,
            count: 0,
            live: 0,
            version: 0,
        }
    }

    /// Number of free ranges.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Number of allocations.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Changes with every insert, adjust, removal, carve and release (never with a reserve
    /// of room, which moves no entry).
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    fn inner(&self, n: u32) -> &Inner {
        &self.inners[n as usize]
    }

    fn inner_mut(&mut self, n: u32) -> &mut Inner {
        &mut self.inners[n as usize]
    }

    fn leaf(&self, n: u32) -> &Leaf {
        &self.leaves[n as usize]
    }

    fn leaf_mut(&mut self, n: u32) -> &mut Leaf {
        &mut self.leaves[n as usize]
    }

    /// The parent of node `n` at `level` (0: a leaf).
    fn parent_of(&self, n: u32, level: u32) -> u32 {
        match level {
            0 => self.leaf(n).parent,
            _ => self.inner(n).parent,
        }
    }

    fn set_parent(&mut self, n: u32, level: u32, parent: u32) {
        match level {
            0 => self.leaf_mut(n).parent = parent,
            _ => self.inner_mut(n).parent = parent,
        }
    }

    /// The record of node `n` at `level` for its parent (not empty).
    fn record_of(&self, n: u32, level: u32) -> Record {
        match level {
            0 => self.leaf(n).record(),
            _ => self.inner(n).record(),
        }
    }

    /// The first start under node `n` at `level` (not empty).
    fn first_key(&self, n: u32, level: u32) -> u64 {
        match level {
            0 => self.leaf(n).slots[0].start,
            _ => self.inner(n).keys[0],
        }
    }

    /// Start loading every line of node `n` at `level` that an operation reaching it reads,
    /// all at once: the lengths, summaries and header a lookup reads after the keys, and the
    /// climb after it, then arrive with the keys instead of one miss after another.
    #[inline(always)]
    fn prefetch(&self, n: u32, level: u32) {
        match level {
            0 => prefetch_lines(self.leaf(n)),
            _ => prefetch_lines(self.inner(n)),
        }
    }

    fn range_at(&self, leaf: u32, slot: usize) -> Entry {
        let l = self.leaf(leaf);
        let s = l.slots[slot];
        Entry {
            start: s.start,
            len: s.len,
            live: l.is_live(slot).then_some(l.tags & (1 << slot) != 0),
            leaf,
            slot,
        }
    }

    /// Where `child` sits in its parent `parent`.
    fn slot_in(&self, parent: u32, child: u32) -> usize {
        let p = self.inner(parent);
        p.children[..p.count]
            .iter()
            .position(|&c| c == child)
            .expect("a node is among its parent's children")
    }

    /// Bring the records on the way from `node` (at `level`) to the root up to date, stopping
    /// at the first that is already right (the ones above depend only on it). With `change`,
    /// one entry of `node` went from `(length, fit summary)` `old` to `new` (an entry added:
    /// from `(0, 0)`; removed: to `(0, 0)`), which often decides the node's new record without
    /// rescanning it (see [`changed_record`]); the change of a record is in turn the change of
    /// an entry of its parent. `None`: rescan `node`.
    fn fix_up(&mut self, mut node: u32, mut level: u32, mut change: Option<(Summary, Summary)>) {
        loop {
            let parent = self.parent_of(node, level);
            if parent == NONE {
                return;
            }
            let slot = self.slot_in(parent, node);
            let p = self.inner(parent);
            let stored = (p.keys[slot], p.lens[slot], p.fits[slot]);
            let known =
                change.and_then(|(old, new)| changed_record((stored.1, stored.2), old, new));
            let record = match known {
                Some((len, fits)) => (self.first_key(node, level), len, fits),
                None => self.record_of(node, level),
            };
            if record == stored {
                return;
            }
            let p = self.inner_mut(parent);
            (p.keys[slot], p.lens[slot], p.fits[slot]) = record;
            change = Some(((stored.1, stored.2), (record.1, record.2)));
            (node, level) = (parent, level + 1);
        }
    }

    fn new_inner(&mut self, parent: u32) -> u32 {
        match self.spare_inners.pop() {
            Some(i) => {
                // Only the header: entries past `count` are never read, and a node's lines not
                // written stay out of the cache.
                let n = self.inner_mut(i);
                (n.count, n.parent) = (0, parent);
                i
            }
            None => {
                // `try_reserve` keeps every index below `NONE`.
                self.inners.push(Inner::empty(parent));
                (self.inners.len() - 1) as u32
            }
        }
    }

    fn new_leaf(&mut self, parent: u32) -> u32 {
        match self.spare_leaves.pop() {
            Some(i) => {
                let l = self.leaf_mut(i);
                (l.count, l.parent, l.live, l.tags) = (0, parent, 0, 0);
                i
            }
            None => {
                self.leaves.push(Leaf::empty(parent));
                (self.leaves.len() - 1) as u32
            }
        }
    }

    /// Make sure the next `inserts` inserts find every node they may need without growing the
    /// stores (each a leaf, an inner node per level and a new root, the tree one level higher
    /// after each), so a change cannot fail half-way; `false` if the memory cannot be had.
    /// The free lists' capacities grow with the stores, so unlinking never allocates either.
    pub(crate) fn try_reserve(&mut self, inserts: usize) -> bool {
        let h = self.height as usize;
        let inner_need: usize = (0..inserts).map(|i| h + i + 1).sum();
        reserve_store(&mut self.inners, &mut self.spare_inners, inner_need)
            && reserve_store(&mut self.leaves, &mut self.spare_leaves, inserts)
    }

    /// [`try_reserve`](Self::try_reserve) for a batch of `inserts` inserts in a row (a chunk
    /// given back to the tree: two per allocation it held), with a bound linear in `inserts`
    /// where the per-insert worst case summed grows with its square (a chunk of 65536
    /// allocations asked for billions of nodes). Each insert splits at most one leaf. A split
    /// inner node leaves two halves of at least 8 children, which take at least 8 more
    /// children each before they split again, so the splits one level up number at most the
    /// nodes there before the batch plus an eighth of the splits below: in all, at most the
    /// inner nodes that exist plus `inserts / 7`, and a new root per level the tree grows
    /// (at most `log_8 inserts + 2`).
    pub(crate) fn try_reserve_bulk(&mut self, inserts: usize) -> bool {
        let inner_need = self.bulk_inner_need(inserts);
        reserve_store(&mut self.inners, &mut self.spare_inners, inner_need)
            && reserve_store(&mut self.leaves, &mut self.spare_leaves, inserts)
    }

    /// The inner nodes [`try_reserve_bulk`](Self::try_reserve_bulk) provides for.
    fn bulk_inner_need(&self, inserts: usize) -> usize {
        let inners = self.inners.len() - self.spare_inners.len();
        let growth = (usize::BITS - inserts.leading_zeros()) as usize / 3 + 2;
        inners + inserts / 7 + growth + self.height as usize + 1
    }

    /// The leaf holding the last entry starting at or below `key` (strictly below with
    /// `strict`), or `None` if every entry starts above it.
    fn leaf_for(&self, key: u64, strict: bool) -> Option<u32> {
        let below = |k: u64| if strict { k < key } else { k <= key };
        let mut node = self.root;
        for level in (1..=self.height).rev() {
            let i = self.inner(node);
            let slot = i.keys[..i.count].partition_point(|&k| below(k));
            let at = slot.checked_sub(1)?;
            node = i.children[at];
            self.prefetch(node, level - 1);
            if level == 1 {
                // A free (or a reservation) reads the entries on both sides of the one found,
                // which for a leaf's first or last entry sit in the leaf before or after:
                // load those of a sibling leaf alongside rather than after.
                if let Some(before) = at.checked_sub(1) {
                    self.prefetch(i.children[before], 0);
                }
                if at + 1 < i.count {
                    // The header and the first entry.
                    prefetch_line(self.leaf(i.children[at + 1]));
                }
            }
        }
        let l = self.leaf(node);
        (l.count > 0 && below(l.slots[0].start)).then_some(node)
    }

    /// The leftmost leaf under `node` at `level`.
    fn first_leaf(&self, mut node: u32, level: u32) -> u32 {
        for _ in 0..level {
            node = self.inner(node).children[0];
        }
        node
    }

    /// The leaf after `leaf` in address order.
    fn next_leaf(&self, leaf: u32) -> Option<u32> {
        self.adjacent_leaf(leaf, true)
    }

    /// The leaf before `leaf` in address order.
    fn prev_leaf(&self, leaf: u32) -> Option<u32> {
        self.adjacent_leaf(leaf, false)
    }

    /// The leaf after (`forward`) or before `leaf` in address order: climb to the first
    /// ancestor with a sibling on that side, then descend its near edge.
    #[inline]
    fn adjacent_leaf(&self, leaf: u32, forward: bool) -> Option<u32> {
        let (mut node, mut level) = (leaf, 0);
        loop {
            let parent = self.parent_of(node, level);
            if parent == NONE {
                return None;
            }
            let slot = self.slot_in(parent, node);
            let p = self.inner(parent);
            let sibling = if forward {
                (slot + 1 < p.count).then_some(slot + 1)
            } else {
                slot.checked_sub(1)
            };
            if let Some(sibling) = sibling {
                let mut n = p.children[sibling];
                for _ in 0..level {
                    let i = self.inner(n);
                    n = i.children[if forward { 0 } else { i.count - 1 }];
                }
                return Some(n);
            }
            node = parent;
            level += 1;
        }
    }

    /// The entry before `e` in address order.
    pub(crate) fn before(&self, e: Entry) -> Option<Entry> {
        if e.slot > 0 {
            return Some(self.range_at(e.leaf, e.slot - 1));
        }
        let prev = self.prev_leaf(e.leaf)?;
        Some(self.range_at(prev, self.leaf(prev).len() - 1))
    }

    /// The entry after `e` in address order.
    fn after(&self, e: Entry) -> Option<Entry> {
        if e.slot + 1 < self.leaf(e.leaf).len() {
            return Some(self.range_at(e.leaf, e.slot + 1));
        }
        let next = self.next_leaf(e.leaf)?;
        Some(self.range_at(next, 0))
    }

    /// Add the free range `[start, start + len)` (nothing for `len == 0`); the caller keeps
    /// ranges disjoint and has made room with [`try_reserve`](Self::try_reserve).
    pub(crate) fn insert(&mut self, start: u64, len: u64) {
        self.version += 1;
        if len == 0 {
            return;
        }
        let leaf = match self.leaf_for(start, true) {
            Some(leaf) => leaf,
            None => self.first_leaf(self.root, self.height),
        };
        let l = self.leaf(leaf);
        let slot = l.slots[..l.len()].partition_point(|s| s.start < start);
        self.put_leaf(leaf, slot, Slot { start, len }, None);
        self.count += 1;
    }

    /// Insert a leaf entry right after `e` (the caller keeps the order and has made room with
    /// [`try_reserve`](Self::try_reserve)): a free range for `live == None`, else an
    /// allocation with that tag. Returns the new entry's handle.
    fn insert_after(&mut self, e: Entry, start: u64, len: u64, live: Option<bool>) -> Entry {
        let (leaf, slot) = self.put_leaf(e.leaf, e.slot + 1, Slot { start, len }, live);
        match live {
            None => self.count += 1,
            Some(_) => self.live += 1,
        }
        Entry {
            start,
            len,
            live,
            leaf,
            slot,
        }
    }

    /// Put `value` (an allocation tagged `tag` for `live == Some(tag)`, else a free range)
    /// at `slot` of `leaf`. A full leaf first splits in two halves (see
    /// [`link_split`](Self::link_split)). Returns where the entry landed.
    fn put_leaf(
        &mut self,
        leaf: u32,
        slot: usize,
        value: Slot,
        live: Option<bool>,
    ) -> (u32, usize) {
        let added = match live {
            Some(_) => (0, 0),
            None => free_summary(value),
        };
        if self.leaf(leaf).len() < LEAF_FANOUT {
            self.leaf_mut(leaf).put(slot, value, live);
            self.fix_up(leaf, 0, Some(((0, 0), added)));
            return (leaf, slot);
        }
        let right = self.new_leaf(self.leaf(leaf).parent);
        let (lo, hi) = split_pair(&mut self.leaves, leaf, right);
        lo.halve_into(hi);
        let half = LEAF_FANOUT / 2;
        let (home, at) = match slot <= half {
            true => (leaf, slot),
            false => (right, slot - half),
        };
        self.leaf_mut(home).put(at, value, live);
        self.fix_up(leaf, 0, None);
        self.link_split(leaf, right, 0);
        (home, at)
    }

    /// Put `child` (at `level - 1`) with its `record` at `slot` of the inner node `node` (at
    /// `level`). A full node first splits in two halves (see
    /// [`link_split`](Self::link_split)).
    fn put_inner(&mut self, node: u32, level: u32, slot: usize, record: Record, child: u32) {
        if self.inner(node).count < FANOUT {
            self.inner_mut(node).put(slot, record, child);
            self.set_parent(child, level - 1, node);
            // Only a child split off one it had: rescan.
            self.fix_up(node, level, None);
            return;
        }
        let right = self.new_inner(self.inner(node).parent);
        let (lo, hi) = split_pair(&mut self.inners, node, right);
        lo.halve_into(hi);
        let half = FANOUT / 2;
        let (home, at) = match slot <= half {
            true => (node, slot),
            false => (right, slot - half),
        };
        self.inner_mut(home).put(at, record, child);
        self.set_parent(child, level - 1, home);
        let moved = self.inner(right).children;
        for &c in &moved[..self.inner(right).count] {
            self.set_parent(c, level - 1, right);
        }
        self.fix_up(node, level, None);
        self.link_split(node, right, level);
    }

    /// Link `right`, the upper half just split off `node` (both at `level`, `node`'s record
    /// in its parent already brought up to date), into their parent next to `node`, or under
    /// a new root.
    fn link_split(&mut self, node: u32, right: u32, level: u32) {
        let parent = self.parent_of(node, level);
        if parent == NONE {
            let root = self.new_inner(NONE);
            for half in [node, right] {
                let record = self.record_of(half, level);
                let r = self.inner_mut(root);
                r.put(r.count, record, half);
                self.set_parent(half, level, root);
            }
            self.root = root;
            self.height += 1;
        } else {
            let record = self.record_of(right, level);
            let slot = self.slot_in(parent, node) + 1;
            self.put_inner(parent, level + 1, slot, record, right);
        }
    }

    /// Make the entry `r` (from a lookup, still valid) the free range `[start, start + len)`
    /// in place (`len > 0`); an allocation's entry becomes free. The caller keeps the entries
    /// disjoint, so the new start still orders the range between its neighbours.
    pub(crate) fn adjust(&mut self, r: Entry, start: u64, len: u64) {
        self.version += 1;
        if r.live.is_some() {
            self.live -= 1;
            self.count += 1;
        }
        let value = Slot { start, len };
        let l = self.leaf_mut(r.leaf);
        let old = l.summary(r.slot);
        l.slots[r.slot] = value;
        l.live &= !(1 << r.slot);
        l.tags &= !(1 << r.slot);
        self.fix_up(r.leaf, 0, Some((old, free_summary(value))));
    }

    /// Remove the entry `r` (from a lookup, still valid).
    pub(crate) fn remove(&mut self, r: Entry) {
        self.version += 1;
        match r.live {
            Some(_) => self.live -= 1,
            None => self.count -= 1,
        }
        self.take_leaf(r.leaf, r.slot, false);
    }

    /// Remove the free range `r` (from a lookup, still valid) after the free range `into`
    /// (from a lookup) grew over all of it. A range's length and fit summary only grow with
    /// the range (its first aligned pfn can only move down), so where `into` sits in the same
    /// leaf the leaf keeps its maxima and needs no rescan.
    fn remove_merged(&mut self, r: Entry, into: Entry) {
        self.count -= 1;
        self.take_leaf(r.leaf, r.slot, r.leaf == into.leaf);
    }

    /// Carve the allocation `[fit.pfn, fit.pfn + size)` (tagged `tag`) from the free range
    /// that `fit` (from [`highest_fit`](Self::highest_fit), still valid) found it in: the
    /// range's entry shrinks or becomes the allocation's, and what is left above the
    /// allocation is inserted next to it. The caller has made room for two inserts with
    /// [`try_reserve`](Self::try_reserve).
    pub(crate) fn carve(&mut self, fit: Fit, size: u64, tag: bool) {
        self.version += 1;
        let r = fit.range;
        let (pfn, range_end, alloc_end) = (fit.pfn, r.start + r.len, fit.pfn + size);
        let at = if pfn > r.start {
            self.adjust(r, r.start, pfn - r.start);
            self.insert_after(r, pfn, size, Some(tag))
        } else {
            // The range's own entry becomes the allocation's: its start stays.
            self.count -= 1;
            self.live += 1;
            let l = self.leaf_mut(r.leaf);
            let old = l.summary(r.slot);
            l.slots[r.slot].len = size;
            l.live |= 1 << r.slot;
            l.tags |= u16::from(tag) << r.slot;
            self.fix_up(r.leaf, 0, Some((old, (0, 0))));
            Entry {
                len: size,
                live: Some(tag),
                ..r
            }
        };
        if alloc_end < range_end {
            self.insert_after(at, alloc_end, range_end - alloc_end, None);
        }
    }

    /// Free the allocation `e` (from a lookup, still valid): its entry becomes a free range,
    /// or merges into a free neighbour (two neighbours become one range). Never inserts, so it
    /// needs no reserved room and cannot fail.
    pub(crate) fn release(&mut self, e: Entry) {
        self.version += 1;
        debug_assert!(e.live.is_some(), "only an allocation is released");
        let (pfn, end) = (e.start, e.start + e.len);
        let below = self
            .before(e)
            .filter(|b| b.live.is_none() && b.start + b.len == pfn);
        let above = self.after(e).filter(|a| a.live.is_none() && a.start == end);
        // Grow or convert first (an adjust moves nothing), then remove from the top down: a
        // removal moves only the entries after it in its leaf, and unlinks only its own
        // leaf if that empties, so the handles below it stay valid.
        match (below, above) {
            (Some(b), Some(a)) => {
                self.adjust(b, b.start, b.len + e.len + a.len);
                self.remove_merged(a, b);
                self.remove(e);
            }
            (Some(b), None) => {
                self.adjust(b, b.start, b.len + e.len);
                self.remove(e);
            }
            (None, Some(a)) => {
                self.adjust(e, pfn, e.len + a.len);
                self.remove_merged(a, e);
            }
            (None, None) => self.adjust(e, pfn, e.len),
        }
    }

    /// Drop the entry at `slot` of `leaf`; with `covered`, another entry of the leaf offers
    /// at least what it offered. A leaf left empty is unlinked from its parent (the root
    /// stays, as an empty leaf).
    fn take_leaf(&mut self, leaf: u32, slot: usize, covered: bool) {
        let l = self.leaf_mut(leaf);
        // A covered entry's loss changes no maximum, as if it offered nothing.
        let old = if covered { (0, 0) } else { l.summary(slot) };
        l.take(slot);
        let (left, parent) = (l.count, l.parent);
        if left == 0 && parent != NONE {
            self.spare_leaves.push(leaf);
            let slot = self.slot_in(parent, leaf);
            return self.take_inner(parent, 1, slot);
        }
        self.fix_up(leaf, 0, Some((old, (0, 0))));
    }

    /// Drop the child at `slot` of the inner node `node` (at `level`). A node left empty is
    /// unlinked from its parent the same way; a root left with one child gives way to it.
    fn take_inner(&mut self, node: u32, level: u32, slot: usize) {
        let n = self.inner_mut(node);
        let old = (n.lens[slot], n.fits[slot]);
        n.take(slot);
        let (left, parent) = (n.count, n.parent);
        if left == 0 && parent != NONE {
            self.spare_inners.push(node);
            let slot = self.slot_in(parent, node);
            return self.take_inner(parent, level + 1, slot);
        }
        self.fix_up(node, level, Some((old, (0, 0))));
        while self.height > 0 && self.inner(self.root).count == 1 {
            self.spare_inners.push(self.root);
            self.root = self.inner(self.root).children[0];
            self.height -= 1;
            self.set_parent(self.root, self.height, NONE);
        }
    }

    /// The entry (free range or allocation) with the largest start `<= key`.
    pub(crate) fn at_or_below(&self, key: u64) -> Option<Entry> {
        let leaf = self.leaf_for(key, false)?;
        let l = self.leaf(leaf);
        let slot = l.slots[..l.len()].partition_point(|s| s.start <= key) - 1;
        Some(self.range_at(leaf, slot))
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
        match self.height {
            0 => self.search_leaf(self.root, &q),
            h => self.search(self.root, h, &q),
        }
    }

    /// The highest fit under the inner node `node` (at `level`): children from the highest
    /// down, entering only those starting at or below the limit that the query admits.
    fn search(&self, node: u32, level: u32, q: &Query) -> Option<Fit> {
        let n = self.inner(node);
        (0..n.count).rev().find_map(|s| {
            if n.keys[s] > q.limit || !q.admits(n.lens[s], n.fits[s]) {
                return None;
            }
            let child = n.children[s];
            self.prefetch(child, level - 1);
            match level {
                1 => self.search_leaf(child, q),
                _ => self.search(child, level - 1, q),
            }
        })
    }

    /// The highest fit in `leaf`: its free ranges from the highest down, each checked exactly.
    fn search_leaf(&self, leaf: u32, q: &Query) -> Option<Fit> {
        let l = self.leaf(leaf);
        (0..l.len()).rev().find_map(|s| {
            let Slot { start, len } = l.slots[s];
            if l.is_live(s) || start > q.limit {
                return None;
            }
            let pfn = fit_in(start, len, q.size, q.align, q.limit)?;
            Some(Fit {
                range: self.range_at(leaf, s),
                pfn,
            })
        })
    }

    /// Every entry in address order (diagnostics and tests).
    pub(crate) fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.count + self.live);
        let mut leaf = Some(self.first_leaf(self.root, self.height));
        while let Some(id) = leaf {
            out.extend((0..self.leaf(id).len()).map(|s| self.range_at(id, s)));
            leaf = self.next_leaf(id);
        }
        out
    }

    /// Every free range as `(start, len)` in address order (diagnostics and tests).
    pub(crate) fn ranges(&self) -> Vec<(u64, u64)> {
        let all = self.entries().into_iter();
        all.filter(|e| e.live.is_none())
            .map(|e| (e.start, e.len))
            .collect()
    }

    /// Every allocation as `(start, size)` in address order.
    pub(crate) fn allocations(&self) -> Vec<(u64, u64)> {
        let all = self.entries().into_iter();
        all.filter(|e| e.live.is_some())
            .map(|e| (e.start, e.len))
            .collect()
    }

    /// Check the order, the links, the records and the counts of every node (tests). Every
    /// record is compared with one recomputed from the free ranges below it: the longest, and
    /// per byte the largest summary byte, by plain loops that share nothing with the
    /// incremental upkeep (`fix_up`, `changed_record`, the nodes' `record`, `fitsummary::max`).
    pub(crate) fn check(&self) -> Result<(), String> {
        /// Per byte, the larger of `a`'s and `b`'s.
        fn bytewise_max(a: u64, b: u64) -> u64 {
            (0..8)
                .map(|i| 0xff << (8 * i))
                .map(|m| (a & m).max(b & m))
                .sum()
        }
        /// The entries under `node` and the record they make.
        fn walk(
            t: &GapTree,
            node: u32,
            level: u32,
            parent: u32,
        ) -> Result<(usize, Record), String> {
            if t.parent_of(node, level) != parent {
                return Err(format!("parent link broken at level {level}"));
            }
            if level == 0 {
                let l = t.leaf(node);
                let n = l.len();
                let unused = u16::MAX.checked_shl(n as u32).unwrap_or(0);
                if n > LEAF_FANOUT || l.tags & !l.live != 0 || (l.live | l.tags) & unused != 0 {
                    return Err("a leaf's count, allocation bits or tags are wrong".into());
                }
                let free = l.slots[..n]
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| l.live & (1 << i) == 0);
                let (len, fits) = free.fold((0, 0), |(len, fits), (_, s)| {
                    let range = fitsummary::of_range(s.start, s.len);
                    (len.max(s.len), bytewise_max(fits, range))
                });
                let first = l.slots[0].start;
                return Ok((n, (first, len, fits)));
            }
            let n = t.inner(node);
            if n.count == 0 || n.count > FANOUT || (parent == NONE && n.count < 2) {
                return Err(format!("inner node with {} children", n.count));
            }
            let (mut entries, mut len, mut fits) = (0, 0, 0);
            for c in 0..n.count {
                let (below, record) = walk(t, n.children[c], level - 1, node)?;
                if below == 0 {
                    return Err("empty child".into());
                }
                if (n.keys[c], n.lens[c], n.fits[c]) != record {
                    return Err(format!("stale record at level {level}"));
                }
                (entries, len, fits) = (
                    entries + below,
                    len.max(record.1),
                    bytewise_max(fits, record.2),
                );
            }
            Ok((entries, (n.keys[0], len, fits)))
        }
        let (entries, _) = walk(self, self.root, self.height, NONE)?;
        let all = self.entries();
        let free = all.iter().filter(|e| e.live.is_none()).count();
        if entries != all.len() || free != self.count || all.len() - free != self.live {
            return Err(format!(
                "{entries} entries in the tree, {} free and {} live counted",
                self.count, self.live
            ));
        }
        if all.windows(2).any(|w| w[0].start + w[0].len > w[1].start)
            || all.iter().any(|e| e.len == 0)
        {
            return Err("entries out of order, overlapping or empty".into());
        }
        Ok(())
    }
}

/// Make sure `store` can take `need` more nodes than `spare` holds without growing, and
/// `spare` every node of the store; `false` if the memory cannot be had or the indices would
/// reach `NONE`.
fn reserve_store<T>(store: &mut Vec<T>, spare: &mut Vec<u32>, need: usize) -> bool {
    let missing = need.saturating_sub(spare.len());
    let total = store.len() + missing;
    missing == 0
        || (total < NONE as usize
            && store.try_reserve(missing).is_ok()
            && spare.try_reserve(total - spare.len()).is_ok())
}

/// A node's new `(largest length, fit summary)` after one of its entries changed from `old` to
/// `new`, given its stored record `stored` (the maximum over its entries before), if that
/// decides it; `None` if the node must be rescanned.
///
/// Per component (the length, each byte of the summary), with the other entries unchanged:
/// if `new` only grew from `old`, the new maximum is `max(stored, new)`; else it stays
/// `stored` if `new <= stored` and either `old` equalled `new` or `old < stored` (another
/// entry then holds the maximum). Only an entry that held a maximum and lost it needs a scan.
fn changed_record(stored: Summary, old: Summary, new: Summary) -> Option<Summary> {
    let ((s_len, s_fits), (o_len, o_fits), (n_len, n_fits)) = (stored, old, new);
    let grew = fitsummary::at_least(n_fits, o_fits);
    if n_len >= o_len && grew == fitsummary::ALL {
        return Some((s_len.max(n_len), fitsummary::max(s_fits, n_fits)));
    }
    let len_kept = n_len <= s_len && (o_len < s_len || o_len == n_len);
    let below = fitsummary::at_least(s_fits, n_fits);
    let same = grew & fitsummary::at_least(o_fits, n_fits);
    let elsewhere = !fitsummary::at_least(o_fits, s_fits) & fitsummary::ALL;
    let fits_kept = below & (elsewhere | same) == fitsummary::ALL;
    (len_kept && fits_kept).then_some(stored)
}

/// Start loading the cache line holding the start of `x`, without waiting for it.
#[inline(always)]
fn prefetch_line<T>(x: &T) {
    prefetch_at((x as *const T).cast());
}

/// Start loading every cache line of `x` (a cache-line aligned node), without waiting.
#[inline(always)]
fn prefetch_lines<T>(x: &T) {
    let base = (x as *const T).cast::<u8>();
    (0..std::mem::size_of::<T>())
        .step_by(64)
        .for_each(|offset| prefetch_at(base.wrapping_add(offset)));
}

#[inline(always)]
fn prefetch_at(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: a prefetch only hints the cache: it reads nothing the program sees and never
    // faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}

/// Mutable references to two distinct nodes of one store.
fn split_pair<T>(store: &mut [T], a: u32, b: u32) -> (&mut T, &mut T) {
    let (a, b) = (a as usize, b as usize);
    if a < b {
        let (lo, hi) = store.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = store.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
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

    fn span(r: Option<Entry>) -> Option<(u64, u64)> {
        r.map(|r| (r.start, r.len))
    }

    /// The range starting at `start`, by lookup.
    fn at(t: &GapTree, start: u64) -> Entry {
        t.at_or_below(start)
            .filter(|r| r.start == start)
            .expect("a range starts there")
    }

    #[test]
    #[cfg_attr(miri, ignore)] // 20k inserts through the tree, no unsafe code
    fn a_bulk_reservation_covers_its_inserts() {
        for (existing, batch) in [(0, 5000), (3000, 20), (3000, 4000), (1, 1)] {
            let mut t = GapTree::new();
            assert!(t.try_reserve(existing + 1));
            for i in 0..existing as u64 {
                t.insert(4 * i, 1);
            }
            assert!(t.try_reserve_bulk(batch));
            let used = |t: &GapTree| {
                let inners = t.inners.len() - t.spare_inners.len();
                (inners, t.leaves.len() - t.spare_leaves.len())
            };
            let (need, before) = (t.bulk_inner_need(batch), used(&t));
            // Every insert after the existing ones, in order: the worst case for splits.
            for i in 0..batch as u64 {
                t.insert(4 * (existing as u64 + i), 1);
            }
            let after = used(&t);
            assert!(
                after.0 - before.0 <= need,
                "{after:?} from {before:?}: need {need}"
            );
            assert!(after.1 - before.1 <= batch);
            // Splits at the front fill the most nodes: half of them stay half full.
            let mut t2 = GapTree::new();
            assert!(t2.try_reserve(existing + 1));
            for i in (0..existing as u64).rev() {
                t2.insert(4 * i + 100_000, 1);
            }
            let (need, before) = (t2.bulk_inner_need(batch), used(&t2));
            assert!(t2.try_reserve_bulk(batch));
            for i in 0..batch as u64 {
                t2.insert(4 * i, 1);
            }
            assert!(used(&t2).0 - before.0 <= need);
            t.check().unwrap();
            t2.check().unwrap();
        }
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
        assert_eq!(span(t.before(at(&t, 20))), Some((0, 4)));
        assert_eq!(span(t.after(at(&t, 0))), Some((20, 8)));
        assert_eq!(span(t.before(at(&t, 0))), None);
        assert_eq!(span(t.after(at(&t, 20))), None);
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
        /// Inserts, in-place changes and removals in any order keep the links, order and
        /// records intact, the ranges equal to a plain map's, and the search exact.
        #[cfg_attr(miri, ignore)] // proptest persists failures through the file system
        #[test]
        fn updates_match_a_map(
            ops in proptest::collection::vec((0u64..600, 0u64..8, 8u64..16, proptest::bool::ANY), 1..1500),
            queries in proptest::collection::vec((1u64..12, 0u32..5, 0u64..9700), 1..20),
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
                proptest::prop_assert_eq!(t.len(), model.len());
            }
            proptest::prop_assert_eq!(t.check(), Ok(()));
            // The search finds what a scan of every range from the top finds.
            for (size, k, limit) in queries {
                let align = 1u64 << k;
                let scan = model.iter().rev().find_map(|(&s, &l)| fit_in(s, l, size, align, limit));
                proptest::prop_assert_eq!(t.highest_fit(size, align, limit).map(|f| f.pfn), scan);
            }
            proptest::prop_assert_eq!(t.ranges(), model.into_iter().collect::<Vec<_>>());
        }

        /// Allocations carved and released in any order (merging with free neighbours, in
        /// and across leaves) keep every record equal to its recomputation from the leaves,
        /// the allocations equal to a list's, and the entries tiling the space.
        #[cfg_attr(miri, ignore)] // proptest persists failures through the file system
        #[test]
        fn carves_and_releases_keep_the_records(
            ops in proptest::collection::vec(
                (1u64..70, 0u32..7, proptest::bool::ANY, 0usize..1000),
                1..1500,
            ),
        ) {
            const SPACE: u64 = 1 << 14;
            let mut t = GapTree::new();
            proptest::prop_assert!(t.try_reserve(1));
            t.insert(0, SPACE);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (i, (size, k, free, pick)) in ops.into_iter().enumerate() {
                if free && !live.is_empty() {
                    let (start, _) = live.swap_remove(pick % live.len());
                    t.release(at(&t, start));
                } else if let Some(fit) = t.highest_fit(size, 1 << k, SPACE - 1) {
                    proptest::prop_assert!(t.try_reserve(2));
                    t.carve(fit, size, k % 2 == 0);
                    live.push((fit.pfn, size));
                }
                if i % 100 == 0 {
                    proptest::prop_assert_eq!(t.check(), Ok(()));
                }
            }
            proptest::prop_assert_eq!(t.check(), Ok(()));
            live.sort_unstable();
            proptest::prop_assert_eq!(t.allocations(), live);
            let entries = t.entries();
            proptest::prop_assert!(entries.windows(2).all(|w| w[0].start + w[0].len == w[1].start));
            proptest::prop_assert_eq!(entries.iter().map(|e| e.len).sum::<u64>(), SPACE);
        }
    }

    proptest::proptest! {
        /// A leaf's entries and their allocation and tag bits move together through puts,
        /// takes and a split, as in a list of `(start, len, live)`.
        #[cfg_attr(miri, ignore)] // proptest persists failures through the file system
        #[test]
        fn leaf_bits_follow_their_entries(
            ops in proptest::collection::vec((0usize..16, 0u8..3, proptest::bool::ANY), 1..200),
        ) {
            let mut leaf = Leaf::empty(NONE);
            let mut model: Vec<(u64, Option<bool>)> = Vec::new();
            let read = |l: &Leaf| -> Vec<(u64, Option<bool>)> {
                (0..l.len())
                    .map(|i| (l.slots[i].start, l.is_live(i).then_some(l.tags & (1 << i) != 0)))
                    .collect()
            };
            for (i, (at, kind, take)) in ops.into_iter().enumerate() {
                let live = [None, Some(false), Some(true)][usize::from(kind)];
                // Takes are rarer than puts, so the leaf fills up and splits.
                if take && at % 3 == 0 && !model.is_empty() {
                    let at = at % model.len();
                    leaf.take(at);
                    model.remove(at);
                } else if model.len() < LEAF_FANOUT {
                    let at = at % (model.len() + 1);
                    leaf.put(at, Slot { start: i as u64, len: 1 }, live);
                    model.insert(at, (i as u64, live));
                } else {
                    let mut right = Leaf::empty(NONE);
                    leaf.halve_into(&mut right);
                    let mut both = read(&leaf);
                    both.extend(read(&right));
                    proptest::prop_assert_eq!(&both, &model);
                    proptest::prop_assert_eq!(read(&right).len(), LEAF_FANOUT - LEAF_FANOUT / 2);
                    model.truncate(LEAF_FANOUT / 2);
                }
                proptest::prop_assert_eq!(read(&leaf), model.clone());
                let unused = u16::MAX.checked_shl(u32::from(leaf.count)).unwrap_or(0);
                proptest::prop_assert_eq!((leaf.live | leaf.tags) & unused, 0);
            }
        }
    }

    /// Thousands of ranges make a tree several levels high; inserting them in a scattered
    /// order splits leaves and inner nodes, removing them unlinks nodes and shrinks the root.
    #[test]
    #[cfg_attr(miri, ignore)] // 5000 ranges through a four-level tree, no unsafe code
    fn deep_trees_grow_and_shrink() {
        let n: u64 = 5000;
        // 1543 is prime to `n`: `i * 1543 % n` visits every slot once, out of order.
        let scattered = |i: u64| i * 1543 % n;
        let mut t = GapTree::new();
        for i in 0..n {
            let slot = scattered(i);
            t.insert(slot * 4, 1 + slot % 3);
        }
        t.check().unwrap();
        assert!(t.height >= 3, "height {}", t.height);
        assert_eq!(
            t.highest_fit(3, 1, u64::MAX).unwrap().pfn,
            (n - 3) * 4,
            "slot 4997"
        );
        assert_eq!(
            t.highest_fit(2, 2, 4 * 7 - 1).unwrap().pfn,
            20,
            "[20, 23) below 27"
        );
        for i in 0..n {
            let slot = scattered(i * 7 % n);
            let r = at(&t, slot * 4);
            if i % 3 == 0 {
                t.adjust(r, slot * 4, 3);
            } else {
                t.remove(r);
            }
            if i % 500 == 0 {
                t.check().unwrap();
            }
        }
        t.check().unwrap();
        assert_eq!(t.len() as u64, n.div_ceil(3));
        assert!(t.ranges().iter().all(|&(s, l)| s % 4 == 0 && l == 3));
        for r in t.ranges() {
            t.remove(at(&t, r.0));
        }
        t.check().unwrap();
        assert_eq!((t.len(), t.height), (0, 0));
        assert_eq!(t.at_or_below(7), None);
    }
}
