//! Which cached-path ranges users hold: one bit per naturally aligned slot of each size
//! class in an atomic radix bitmap, for typed double-free and size-mismatch errors without a
//! lock or a hash.
//!
//! A cached pfn is still allocated in the range allocator, so the tree alone cannot tell a
//! second free of a cached range from a first one. Cached ranges are naturally aligned powers
//! of two up to 64 granules, so a range of class `k` is slot `pfn >> k` of that class, and
//! holding it is one bit:
//!
//! * claim (alloc): `fetch_or` of the bit;
//! * release (free): `fetch_and` clearing the bit. If it was set, the free is good, and of two
//!   racing frees of one range exactly one sees it set. If it was clear, nothing changed (the
//!   bit stays clear) and the free is refused: [`IovaError::SizeMismatch`] if a range of
//!   another class is held at `pfn`, else [`IovaError::NotAllocated`] (never allocated,
//!   freed already, or not the start of a range).
//!
//! Orderings: a bit carries no data but itself, and every decision is one read-modify-write
//! of one word, so `Relaxed` suffices (a range's claim, release and next claim are ordered by
//! the cache or tree lock that hands the range over). The radix nodes are allocated lazily,
//! published with a release CAS and read with acquire loads ([`HELD_NODE_PUBLISH`],
//! [`HELD_NODE_LOAD`]).
//!
//! Layout: a leaf of 512 words (4 KiB, 64 cache lines, line-aligned) holds the bits of every
//! class for 16 384 granules (2^14 + 2^13 + ... + 2^8 bits of its 2^15). Classes 0 to 2 have
//! lines of their own (32, 16 and 8); classes 3 to 6, with 4, 2, 1 and half a line of bits,
//! share the last 8 lines, each line holding a stretch of every one of them. Every class's
//! slots are spread over at least [`MIN_LINES`] (8) lines, consecutive slots in consecutive
//! lines, so that CPUs whose ranges of one class are up to 7 slots apart (the magazines hand
//! out neighbouring ranges) write different lines. When classes 5 and 6 had one line and half
//! a line of their own, two CPUs' same-thread pairs of 32 or 64 granules wrote one line on
//! every free and ran slower on two threads than on one. The small classes share lines
//! rather than each being padded to 8 (5.5 KiB leaves): a bigger leaf is a bigger working
//! set for random frees of mixed sizes. The large classes' live ranges touch only their own
//! lines (1M live single granules: 128 KiB of bits, which stay in a CPU's cache where
//! spreading every class over the whole leaf touched twice that). Interior nodes hold 512
//! child pointers; only the leaves a cached range ever touched exist (a quarter byte per
//! granule of them), freed with the allocator. Depth is fixed by the space: one interior
//! level per 9 bits of leaves (at most 6 for a 2^64-granule space; 3 for the default 48-bit
//! one).
//!
//! Lookups: each thread remembers the last leaf it reached ([`LastLeaf`]), so the free that
//! follows an allocation, or a neighbouring range, skips the walk down the radix map (a chain
//! of dependent loads, one per level).

use crate::error::IovaError;
use crate::faults::OWNER_RECORD;
use crate::points::{HELD_NODE_LOAD, HELD_NODE_PUBLISH, HELD_RELEASE_ATOMIC};
use dma_sync::atomic::{AtomicPtr, AtomicU64, Ordering, Poison};
use std::cell::Cell;
use std::ptr;

/// log2 of the children per interior node, and of the words a leaf's slots need (small in
/// models, so a space of a few dozen granules already needs an interior level).
#[cfg(not(loom))]
const FAN_BITS: u32 = 9;
#[cfg(loom)]
const FAN_BITS: u32 = 1;
const FAN: usize = 1 << FAN_BITS;
/// log2 of the granules per leaf: the slots of every class (halving per class) take fewer
/// than two bits per granule, `64 * FAN` bits before the padding of [`MIN_LINES`].
const LEAF_SHIFT: u32 = FAN_BITS + 5;
/// log2 of the bits per cache line (a word in models, whose largest class has 64 slots per
/// leaf, so that the spreading below still spans several words there).
#[cfg(not(loom))]
const LINE_BITS_SHIFT: u32 = 9;
#[cfg(loom)]
const LINE_BITS_SHIFT: u32 = 6;
/// The fewest lines a class's slots are spread over in a leaf. Two CPUs whose ranges of one
/// class are `d` slots apart (`0 < d < MIN_LINES`) write different lines; the magazines hand
/// out neighbouring ranges, a few slots apart, and with 8 lines 8 CPUs cycling through
/// neighbouring slots each have a line. The classes with fewer bits than that (3 to 6, with
/// 4, 2, 1 and half a line of bits) share 8 lines, each line holding every eighth slot of
/// each of them, so the leaf stays 64 lines (4 KiB per 16 384 granules).
#[cfg(not(loom))]
const MIN_LINES: u32 = 8;
#[cfg(loom)]
const MIN_LINES: u32 = 2;
/// Number of size classes tracked (1 to 64 granules).
const CLASSES: u32 = crate::config::CACHE_CLASSES as u32;
// Every class has at least one bit per leaf.
const _: () = assert!(CLASSES <= LEAF_SHIFT + 1);

/// log2 of the lines class `order`'s slots are spread over: its own lines while it has
/// [`MIN_LINES`] of bits or more, else the [`MIN_LINES`] shared ones.
const fn class_lines_shift(order: u32) -> u32 {
    let needed = (LEAF_SHIFT - order).saturating_sub(LINE_BITS_SHIFT);
    let min = MIN_LINES.trailing_zeros();
    if needed > min {
        needed
    } else {
        min
    }
}

/// Bit offset of every class in a leaf (slot `i` of class `k` is bit `CLASS_BASE[k]`, plus
/// `i mod 2^lines` lines, plus `i >> lines`), and the leaf's size in bits last: the large
/// classes' own lines one after another, then the shared lines, in which each small class
/// has its stretch of bits at the same offset of every line.
const CLASS_BASE: [usize; CLASSES as usize + 1] = {
    let mut bases = [0; CLASSES as usize + 1];
    let (mut end, mut shared) = (0, None);
    let mut k = 0;
    while k < CLASSES {
        let slots = 1usize << (LEAF_SHIFT - k);
        if slots >= (MIN_LINES as usize) << LINE_BITS_SHIFT {
            bases[k as usize] = end;
            end += slots;
        } else {
            // The shared lines start after the last own line; a class's stretch per line is
            // its slots over MIN_LINES (at least one bit).
            let at = match shared {
                None => end,
                Some(at) => at,
            };
            bases[k as usize] = at;
            shared = Some(at + slots.div_ceil(MIN_LINES as usize));
        }
        k += 1;
    }
    if let Some(at) = shared {
        // The small classes' stretches fit one line.
        assert!(at - end <= 1 << LINE_BITS_SHIFT);
        end += (MIN_LINES as usize) << LINE_BITS_SHIFT;
    }
    bases[CLASSES as usize] = end;
    bases
};

/// Words per leaf: the large classes' lines and the shared ones.
const LEAF_WORDS: usize = CLASS_BASE[CLASSES as usize] / 64;
// Lines are whole words, and a line count is a shift.
const _: () = assert!(MIN_LINES.is_power_of_two() && LINE_BITS_SHIFT >= 6);
// 64 lines in production: 32, 16, 8 for classes 0 to 2, 8 shared by classes 3 to 6.
#[cfg(not(loom))]
const _: () = assert!(LEAF_WORDS == FAN);

/// A leaf: the held bits of `2^LEAF_SHIFT` consecutive granules, its lines the CPU's.
#[repr(align(64))]
struct Leaf {
    words: [AtomicU64; LEAF_WORDS],
}

/// An interior node. At the last interior level the children are [`Leaf`]s, stored as
/// `*mut Node` and cast back by level.
struct Node {
    kids: [AtomicPtr<Node>; FAN],
}

// A fresh node is initialised by plain writes through exclusive access ([`Poison`]), as its
// memory is: under loom these are tracked, so a thread that reaches the node without
// synchronising with its publication is reported.
impl Leaf {
    fn new() -> Self {
        let mut leaf = Self {
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        leaf.words.iter_mut().for_each(|w| w.poison(0));
        leaf
    }
}

impl Node {
    fn new() -> Self {
        let mut node = Self {
            kids: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        };
        node.kids.iter_mut().for_each(|k| k.poison(ptr::null_mut()));
        node
    }
}

/// A fresh heap value, or `None` when its memory cannot be had.
fn try_box<T>(make: impl FnOnce() -> T) -> Option<*mut T> {
    let mut v = Vec::new();
    v.try_reserve_exact(1).ok()?;
    v.push(make());
    Some(Box::into_raw(v.into_boxed_slice()).cast::<T>())
}

/// Free a value made by [`try_box`].
///
/// # Safety
/// `p` came from `try_box::<T>` and nothing refers to it any more.
unsafe fn drop_box<T>(p: *mut T) {
    // SAFETY: by the contract, `p` is the sole owner of a one-element boxed slice of `T`.
    drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(p, 1)) });
}

/// The held cached-path ranges of one allocator.
pub(crate) struct Held {
    /// This map's id for [`LastLeaf`].
    id: u64,
    /// First pfn of the space, its last pfn's offset from it, and its first leaf's number.
    start: u64,
    last: u64,
    first_leaf: u64,
    /// Interior levels above the leaves (0: `root` is a leaf).
    depth: u32,
    root: *mut Node,
}

// SAFETY: the nodes are reached only through atomics and are freed only by `Drop`, which has
// `&mut self`; the raw root pointer is owned like a `Box`.
unsafe impl Send for Held {}
// SAFETY: as above; shared access only reads the pointers and performs atomic operations.
unsafe impl Sync for Held {}

/// The word and bit mask of class `order`'s slot holding granule `g` of a leaf.
#[inline]
fn position(g: u64, order: u32) -> (usize, u64) {
    // Within its class's `2^lines` lines, consecutive slots go to consecutive lines first.
    let lines = class_lines_shift(order);
    let i = (g >> order) as usize;
    let b =
        CLASS_BASE[order as usize] + ((i & ((1 << lines) - 1)) << LINE_BITS_SHIFT) + (i >> lines);
    (b / 64, 1u64 << (b % 64))
}

/// The leaf a thread reached last, so that an allocation and the free that follows it, or
/// neighbouring ranges, skip the walk down the radix map.
#[derive(Clone, Copy)]
struct LastLeaf {
    /// [`Held::id`] of the map it belongs to (0: none).
    map: u64,
    leaf: u64,
    ptr: *const Leaf,
}

const NO_LEAF: LastLeaf = LastLeaf {
    map: 0,
    leaf: 0,
    ptr: ptr::null(),
};

#[cfg(not(loom))]
dma_sync::thread::thread_local! {
    static LAST_LEAF: Cell<LastLeaf> = const { Cell::new(NO_LEAF) };
}
#[cfg(loom)]
dma_sync::thread::thread_local! {
    static LAST_LEAF: Cell<LastLeaf> = Cell::new(NO_LEAF);
}

/// A fresh map id: never 0 and never reused (a `u64` count does not wrap), so a remembered
/// leaf is only ever used with the map that remembered it. Uniqueness is all it needs, so it
/// is a plain `std` counter, untracked by models.
fn fresh_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Held {
    /// Tracking for the inclusive pfn space `[start, end]`; `None` if the root cannot be had.
    pub(crate) fn new(start: u64, end: u64) -> Option<Self> {
        let leaves = (end >> LEAF_SHIFT) - (start >> LEAF_SHIFT) + 1;
        let depth = (u64::BITS - (leaves - 1).leading_zeros()).div_ceil(FAN_BITS);
        let root = if depth == 0 {
            try_box(Leaf::new)?.cast::<Node>()
        } else {
            try_box(Node::new)?
        };
        Some(Self {
            id: fresh_id(),
            start,
            last: end - start,
            first_leaf: start >> LEAF_SHIFT,
            depth,
            root,
        })
    }

    /// The leaf of pfns `leaf << LEAF_SHIFT ..` (inside the space), creating missing nodes if
    /// `create`; `None` if it does not exist (and `create` is false) or its memory cannot be
    /// had.
    #[inline]
    fn leaf(&self, leaf: u64, create: bool) -> Option<&Leaf> {
        let last = LAST_LEAF.with(Cell::get);
        if last.map == self.id && last.leaf == leaf {
            // SAFETY: this thread found the leaf in this map (ids are never reused) through
            // `walk`, so it saw it initialised, and leaves stay allocated until `Drop`, which
            // cannot run while `&self` is borrowed.
            return Some(unsafe { &*last.ptr });
        }
        let found = self.walk(leaf, create)?;
        LAST_LEAF.with(|c| {
            c.set(LastLeaf {
                map: self.id,
                leaf,
                ptr: found,
            })
        });
        Some(found)
    }

    /// [`leaf`](Self::leaf) down from the root.
    fn walk(&self, leaf: u64, create: bool) -> Option<&Leaf> {
        let leaf = leaf - self.first_leaf;
        let mut node = self.root;
        let mut shift = FAN_BITS * self.depth;
        while shift > 0 {
            shift -= FAN_BITS;
            // SAFETY: `node` is an interior node (levels above 0) published by `new` or by a
            // CAS below, and stays allocated until `Drop`.
            let slot = unsafe { &(*node).kids[(leaf >> shift) as usize & (FAN - 1)] };
            let mut kid = slot.load(HELD_NODE_LOAD.ord(Ordering::Acquire));
            if kid.is_null() {
                if !create {
                    return None;
                }
                kid = self.publish(slot, shift == 0)?;
            }
            node = kid;
        }
        // SAFETY: at level 0 the pointer is a `Leaf` (see `Node`), allocated until `Drop`.
        Some(unsafe { &*node.cast::<Leaf>() })
    }

    /// Install a fresh child (a leaf if `leaf`) in the empty `slot`, or take the one a racing
    /// thread installed first.
    #[cold]
    fn publish(&self, slot: &AtomicPtr<Node>, leaf: bool) -> Option<*mut Node> {
        let fresh = if leaf {
            try_box(Leaf::new)?.cast::<Node>()
        } else {
            try_box(Node::new)?
        };
        let publish = HELD_NODE_PUBLISH.ord(Ordering::AcqRel);
        let load = HELD_NODE_LOAD.ord(Ordering::Acquire);
        match slot.compare_exchange(ptr::null_mut(), fresh, publish, load) {
            Ok(_) => Some(fresh),
            Err(winner) => {
                // SAFETY: `fresh` was never shared.
                unsafe {
                    if leaf {
                        drop_box(fresh.cast::<Leaf>());
                    } else {
                        drop_box(fresh);
                    }
                }
                Some(winner)
            }
        }
    }

    /// The word and bit of class `order`'s slot at `pfn`, if `pfn` lies in the space.
    #[inline]
    fn bit(&self, pfn: u64, order: u32, create: bool) -> Option<(&AtomicU64, u64)> {
        if pfn.wrapping_sub(self.start) > self.last {
            return None;
        }
        let leaf = self.leaf(pfn >> LEAF_SHIFT, create)?;
        let (word, mask) = position(pfn & ((1 << LEAF_SHIFT) - 1), order);
        Some((&leaf.words[word], mask))
    }

    /// Record the cached-path range `[pfn, pfn + 2^order)` (naturally aligned, `order` below
    /// the number of classes) as held; `false` if the memory for its leaf cannot be had or
    /// `pfn` lies outside the space (nothing is recorded then).
    #[inline]
    pub(crate) fn claim(&self, pfn: u64, order: u32) -> bool {
        if OWNER_RECORD.fail() {
            return false;
        }
        match self.bit(pfn, order, true) {
            Some((word, mask)) => {
                word.fetch_or(mask, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Forget the held range of class `order` at `pfn`, refusing a pfn where no such range is
    /// held (a misaligned pfn shares its slot's bit, so it is refused first); nothing changes
    /// on error.
    #[inline]
    pub(crate) fn release(&self, pfn: u64, order: u32) -> Result<(), IovaError> {
        // A misaligned pfn is refused before the walk: it would only find its slot's bit.
        let aligned = pfn & ((1 << order) - 1) == 0;
        if let Some((word, mask)) = aligned.then(|| self.bit(pfn, order, false)).flatten() {
            let was = if HELD_RELEASE_ATOMIC.on() {
                word.fetch_and(!mask, Ordering::Relaxed)
            } else {
                // The weakened form: a load, then a store.
                let w = word.load(Ordering::Relaxed);
                word.store(w & !mask, Ordering::Relaxed);
                w
            };
            if was & mask != 0 {
                return Ok(());
            }
        }
        Err(self.why_not_held(pfn, order))
    }

    /// The error for a refused release: a range of another class held at `pfn` is a size
    /// mismatch (a racy answer is fine: the free is refused either way).
    #[cold]
    fn why_not_held(&self, pfn: u64, order: u32) -> IovaError {
        let held = (0..CLASSES)
            .filter(|&k| k != order && pfn % (1 << k) == 0)
            .find(|&k| {
                self.bit(pfn, k, false)
                    .is_some_and(|(word, mask)| word.load(Ordering::Relaxed) & mask != 0)
            });
        match held {
            Some(k) => IovaError::SizeMismatch {
                pfn,
                allocated: 1 << k,
                freed: 1 << order,
            },
            None => IovaError::NotAllocated { pfn },
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        /// Free `node` at `level` and everything below it.
        ///
        /// # Safety
        /// `node` is a live node of that level, owned by the `Held` being dropped.
        unsafe fn free(node: *mut Node, level: u32) {
            if level == 0 {
                // SAFETY: level 0 holds leaves (see `Node`).
                unsafe { drop_box(node.cast::<Leaf>()) };
                return;
            }
            // SAFETY: an interior node of a `Held` with exclusive access.
            for kid in unsafe { &(*node).kids } {
                let p = kid.load(Ordering::Relaxed);
                if !p.is_null() {
                    // SAFETY: a published child of the level below.
                    unsafe { free(p, level - 1) };
                }
            }
            // SAFETY: no child refers back; this is the only owner.
            unsafe { drop_box(node) };
        }
        // SAFETY: `&mut self`: no other thread reaches the nodes.
        unsafe { free(self.root, self.depth) };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The cache line of class `order`'s slot at granule `g` of a leaf.
    fn line(g: u64, order: u32) -> usize {
        (position(g, order).0 * 64) >> LINE_BITS_SHIFT
    }

    #[test]
    #[cfg_attr(miri, ignore)] // 32k slots through a hash set, no unsafe code
    fn every_slot_of_a_leaf_has_its_own_bit() {
        let mut seen = std::collections::HashSet::new();
        for order in 0..CLASSES {
            for g in (0..1u64 << LEAF_SHIFT).step_by(1 << order) {
                let (word, mask) = position(g, order);
                assert!(word < LEAF_WORDS && mask.is_power_of_two());
                assert!(
                    seen.insert((word, mask)),
                    "class {order} granule {g} shares a bit"
                );
            }
        }
        let class0: std::collections::BTreeSet<_> =
            (0..1u64 << LEAF_SHIFT).map(|g| line(g, 0)).collect();
        assert!(!class0.contains(&line(0, 1)), "classes do not share lines");
    }

    #[test]
    #[cfg_attr(miri, ignore)] // 32k slots, safe code
    fn neighbouring_slots_of_every_class_are_in_different_lines() {
        for order in 0..CLASSES {
            let slots = 1u64 << (LEAF_SHIFT - order);
            let mut lines = std::collections::BTreeMap::<usize, u64>::new();
            for i in 0..slots {
                *lines.entry(line(i << order, order)).or_default() += 1;
                // Slots up to 7 apart: CPUs with nearby ranges of one class.
                for d in 1..8.min(slots - i) {
                    assert_ne!(
                        line(i << order, order),
                        line((i + d) << order, order),
                        "class {order} slots {i} and {}",
                        i + d
                    );
                }
            }
            assert!(lines.len() >= 8, "class {order}");
            let (fewest, most) = (lines.values().min(), lines.values().max());
            assert_eq!(fewest, most, "class {order} spread evenly over its lines");
        }
        // 64 lines of 64 bytes: 4 KiB per leaf of 16 384 granules.
        assert_eq!(std::mem::size_of::<Leaf>(), 64 * 64);
        assert_eq!(std::mem::align_of::<Leaf>(), 64);
    }

    #[test]
    fn claim_and_release_detect_double_and_mismatched_frees() {
        // A space spanning several leaves and one interior level, starting mid-leaf.
        let end = (FAN as u64) << (LEAF_SHIFT + 2);
        let h = Held::new(7, end).unwrap();
        assert!(h.depth >= 1);
        let top = end - 63;
        for (pfn, order) in [(8, 3), (16, 4), (64, 6), (top - 1, 0), (top + 7, 0)] {
            assert!(h.claim(pfn, order));
        }
        assert!(!h.claim(0, 0) && !h.claim(end + 1, 0), "outside the space");
        let mismatch = |pfn, allocated, freed| IovaError::SizeMismatch {
            pfn,
            allocated,
            freed,
        };
        assert_eq!(h.release(8, 4), Err(mismatch(8, 8, 16)));
        assert_eq!(h.release(16, 0), Err(mismatch(16, 16, 1)));
        assert_eq!(
            h.release(64, 5),
            Err(mismatch(64, 64, 32)),
            "the largest class"
        );
        assert_eq!(h.release(12, 2), Err(IovaError::NotAllocated { pfn: 12 }));
        assert_eq!(
            h.release(9, 3),
            Err(IovaError::NotAllocated { pfn: 9 }),
            "inside the held range at 8, in its slot"
        );
        assert_eq!(h.release(3, 0), Err(IovaError::NotAllocated { pfn: 3 }));
        let far = 1 << 40;
        assert_eq!(h.release(far, 0), Err(IovaError::NotAllocated { pfn: far }));
        let unused = 1 << LEAF_SHIFT;
        assert_eq!(
            h.release(unused, 0),
            Err(IovaError::NotAllocated { pfn: unused }),
            "a leaf never touched"
        );
        assert_eq!(h.release(8, 3), Ok(()));
        assert_eq!(h.release(8, 3), Err(IovaError::NotAllocated { pfn: 8 }));
        assert_eq!(h.release(16, 4), Ok(()));
        assert_eq!(h.release(64, 6), Ok(()));
        assert_eq!(h.release(64, 6), Err(IovaError::NotAllocated { pfn: 64 }));
        assert_eq!(h.release(top - 1, 0), Ok(()));
        assert_eq!(h.release(top + 7, 0), Ok(()));
        let gone = IovaError::NotAllocated { pfn: top + 7 };
        assert_eq!(h.release(top + 7, 0), Err(gone));
    }

    #[test]
    fn the_whole_u64_space_needs_only_a_few_levels() {
        let h = Held::new(0, u64::MAX - 1).unwrap();
        assert_eq!(h.depth, (64 - LEAF_SHIFT).div_ceil(FAN_BITS));
        let top = u64::MAX - 63;
        assert!(h.claim(top, 5));
        assert!(h.claim(1, 0));
        assert_eq!(h.release(top, 5), Ok(()));
        assert_eq!(
            h.release(top + 1, 5),
            Err(IovaError::NotAllocated { pfn: top + 1 })
        );
        assert_eq!(h.release(1, 0), Ok(()));
    }
}
