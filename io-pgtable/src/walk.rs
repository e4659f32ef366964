//! Lock-free readers: translation and the debug walk, under one RCU pin, with no lock and
//! no shared write.
//!
//! Readers pin with `rcu::pin_at(READER_PIN)` for the whole walk and load each descriptor with
//! acquire (`pgtable.walk.acquire`, pairing with the install release); `DEAD` and `FROZEN` are
//! invalid descriptors (bit 0 clear) that readers translate as unmapped and dumps skip.
//! `PageTable::reader()` holds one pin for many translations.
//!
//! # The translation walk
//!
//! A translation is a dependent load chase: each level's descriptor gives the next table's
//! address. The walk adds only what correctness needs on top of the chase — a range check, an
//! acquire per load, the two type bits per level, and the leaf's answer — so it runs close to
//! the chase floor:
//!
//! * **One walk per geometry kind, chosen once.** [`select`] picks, when the table is built, a
//!   walk monomorphised on the start level, the output-address format (packed `PA[51:48]` or
//!   not) and whether the granule is 4 KiB; a translation is one call through that pointer,
//!   with no dispatch on the geometry. Each walk is fully unrolled; with the 4 KiB granule
//!   every shift and mask is a constant, and without packed `PA[51:48]` the next table's
//!   address is one mask away, so each level's dependent chain is a load and an AND.
//! * **The common format inline under a held pin.** For the 4 KiB granule with four levels
//!   (the usual stage-1 and stage-2 format) [`Reader::translate`] runs the walk inline behind
//!   one predicted test instead of calling through the pointer: the answer (three words with
//!   `Option`'s tag) stays in registers instead of coming back through memory, the call and
//!   its argument set-up go, and a caller's loop keeps the geometry's loads (input size,
//!   root, stage) out of its body. `iova_to_phys` keeps the call: behind the pin's locked
//!   instruction the inlined walk measured slower.
//! * **No reload of the geometry.** The input-size check makes the start level's index mask
//!   redundant (the input size is the start level's shift plus its index bits, a test checks
//!   it for every geometry), and whatever else a walk needs from the geometry is read before
//!   the first acquire load, above which the compiler may not move later reads.
//! * **No decoding.** The leaf's answer ([`Translation`]) is the output address and the raw
//!   descriptor with the level, size and stage the walk already knows; protections are decoded
//!   when asked (see `translation.rs`). The answer is checked against `pte::decode` for every
//!   type pattern, level and stage.
//! * **Constants per exit.** A page ends the walk inline with its size and fields as constants;
//!   a block (or an invalid entry) above the leaf level leaves through an out-of-line call, so
//!   the compiler does not merge the exits into one tail that computes them from the level.
//!
//! Measured (`dmabench --components floor,pgtable`, three repetitions, ratios to the floors of
//! the same run, against the code before this walk in the same conditions): held guard 1.20×
//! the dependent chase (before 1.30×) and 1.95× the independent one (2.56×); one call with its
//! pin 1.28× the dependent chase (1.35×) and 3.56× the independent one (4.15×). Callgrind, per
//! translation of the benchmark loop: 77 instructions under a held guard (before 111; the
//! independent chase is 36) and 122 with the pin (153). Inlining the four-level 4 KiB walk
//! under a held guard then took it from 75 to 58 instructions per translation and, old and
//! new binaries alternating on one machine (six runs each), from 1.82–1.97× the independent
//! chase to 1.56–1.60× (one disturbed run: 2.0×) and from 1.19–1.26× the dependent chase to
//! 1.14–1.19×.
//!
//! The pin is what separates the single call from the held guard. It was crossbeam-epoch's: a
//! thread-local lookup, a locked compare-and-swap on the thread's own epoch slot (a full
//! barrier, which also kept independent translations from overlapping) and a collection
//! attempt every 128 pins. dma-sync's epoch RCU pins with a thread-local lookup, a load of the
//! global epoch, a store to the thread's own record and a compiler fence (the writers'
//! membarrier supplies the barrier), and never collects; the unpin is a release store. A
//! caller translating several addresses still holds a [`Reader`] (a nested pin is a counter
//! increment).

use crate::config::{Geometry, Granule};
use crate::dump::{Dump, WalkEntry};
use crate::pgtable::PageTable;
use crate::points::{READER_PIN, WALK_ACQUIRE};
use crate::pte::{self, Descriptor, TYPE_TABLE_OR_PAGE, VALID};
use crate::tlb::TlbOps;
use crate::translation::{Meta, Translation};
use dma_sync::atomic::{AtomicU64, Ordering::Acquire};
use dma_sync::rcu::{self, Guard};

/// A translation walk specialised for one kind of geometry; the guard is the caller's proof
/// that the tables it reaches stay alive.
pub(crate) type WalkFn<T> = fn(&PageTable<T>, &Guard, u64) -> Option<Translation>;

/// How readers walk a table, chosen when it is built.
pub(crate) struct Walk<T: TlbOps> {
    /// The walk of the table's geometry, as one call.
    call: WalkFn<T>,
    /// Whether the geometry is the four-level 4 KiB format ([`Geometry::four_level_4k`]:
    /// stage-1 inputs of 40 to 48 bits; stage 2 from 44, as below it concatenates start
    /// tables at level 1), whose walk a [`Reader`] inlines.
    four_level_4k: bool,
}

/// The translation walk of tables with geometry `g`.
pub(crate) fn select<T: TlbOps>(g: &Geometry) -> Walk<T> {
    let start = g.start_level();
    let pa52 = g.oa_hi_mask() != 0;
    let g4k = g.config().granule == Granule::Size4K;
    let call = match (pa52, g4k) {
        (false, true) => select_start::<T, false, true>(start),
        (false, false) => select_start::<T, false, false>(start),
        // A 52-bit output field exists only with the 64 KiB granule.
        (true, _) => select_start::<T, true, false>(start),
    };
    Walk {
        call,
        // `call` is then `translate_in::<T, 0, false, true>`, the walk `translate` inlines.
        four_level_4k: g.four_level_4k(),
    }
}

impl<T: TlbOps> Walk<T> {
    /// Translate `iova` in `pt`, whose walk this is, under the caller's pin: inline for the
    /// four-level 4 KiB format, so the answer stays in registers and a caller's loop keeps
    /// the geometry's loads out of it, else one call.
    #[inline(always)]
    fn translate(&self, pt: &PageTable<T>, pinned: &Guard, iova: u64) -> Option<Translation> {
        if self.four_level_4k {
            translate_in::<T, 0, false, true>(pt, pinned, iova)
        } else {
            (self.call)(pt, pinned, iova)
        }
    }
}

/// [`select`] for the output-address format `PA52` and granule class `G4K`.
fn select_start<T: TlbOps, const PA52: bool, const G4K: bool>(start: u32) -> WalkFn<T> {
    match start {
        0 => translate_in::<T, 0, PA52, G4K>,
        1 => translate_in::<T, 1, PA52, G4K>,
        2 => translate_in::<T, 2, PA52, G4K>,
        3 => translate_in::<T, 3, PA52, G4K>,
        _ => unreachable!("start level {start} above 3"),
    }
}

/// Translate `iova` in `pt`, whose tables start at level `START`, whose descriptors pack
/// `PA[51:48]` iff `PA52`, with the 4 KiB granule iff `G4K` (what [`select`] picked).
#[inline]
fn translate_in<T: TlbOps, const START: u32, const PA52: bool, const G4K: bool>(
    pt: &PageTable<T>,
    _pinned: &Guard,
    iova: u64,
) -> Option<Translation> {
    let g = &pt.geom;
    if iova >> g.ias() != 0 {
        return None;
    }
    let shift = |level: u32| -> u32 {
        if G4K {
            12 + 9 * (3 - level)
        } else {
            g.level_shift(level)
        }
    };
    let shifts = [shift(0), shift(1), shift(2), shift(3)];
    let index = |level: u32| -> usize {
        let i = iova >> shifts[level as usize];
        // Below `ias` bits, only the start table's index bits lie above its shift.
        if level == START {
            i as usize
        } else if G4K {
            (i & 511) as usize
        } else {
            (i & g.index_mask(level)) as usize
        }
    };
    let indices = [index(0), index(1), index(2), index(3)];
    let oa_mask = if G4K { pte::OA_MASK_4K } else { g.oa_mask() };
    let oa_hi_mask = g.oa_hi_mask();
    let stage = Meta::stage(g.config().stage);
    let mut table: *const AtomicU64 = pt.root.entries().as_ptr();
    for level in START..4 {
        // SAFETY: `table` is the root (START is the root's level: `select` picked this walk
        // from `g.start_level()`) or a table a descriptor at `level - 1` links to, read under
        // the caller's pin, so it is alive and holds `entries(level)` descriptors; the index
        // is below `entries(level)` (masked, or at the start level bounded by the range check).
        let entry = unsafe { &*table.add(indices[level as usize]) };
        let d = entry.load(WALK_ACQUIRE.ord(Acquire));
        let next = if PA52 {
            (d & oa_mask) | ((d & oa_hi_mask) << 36)
        } else {
            d & oa_mask
        };
        // With 4 KiB, `shifts` is a constant array and the loop is unrolled: the leaf size is
        // a constant of each exit, not a lookup by level.
        let size_shift = shifts[level as usize];
        if level == 3 {
            let exit = Exit {
                level,
                d,
                base: next,
                size_shift,
            };
            return exit.leaf(iova, stage);
        }
        // The descent tests only the two type bits; anything but a table descriptor above
        // the leaf level ends the walk.
        if !pte::is_table(d) {
            return block(level, iova, d, next, size_shift, stage);
        }
        table = next as *const AtomicU64;
        // Loom builds report a table reached after it was freed behind RCU's back, as
        // `PageTable::table_at` does for the writers' walks.
        // SAFETY: a table link read under the caller's pin, which the next iteration reads anyway.
        #[cfg(loom)]
        let _ = unsafe { _pinned.deref(table) };
    }
    unreachable!("the leaf level ends every walk")
}

/// Where a walk stopped: the descriptor `d` loaded at `level`, its output address `base`
/// (decoded by the walk), and the log2 of the size a leaf there maps.
struct Exit {
    level: u32,
    d: u64,
    base: u64,
    size_shift: u32,
}

impl Exit {
    /// The translation of `iova` by this exit's descriptor, with `stage` the [`Meta::stage`]
    /// bits of its format: `None` unless the descriptor is a leaf at its level (a test checks
    /// the answer against [`pte::decode`]).
    #[inline(always)]
    fn leaf(self, iova: u64, stage: u64) -> Option<Translation> {
        let Exit {
            level,
            d,
            base,
            size_shift,
        } = self;
        // A walk ends on a table descriptor only at the leaf level, where it reads as a page;
        // above it, type bits `01` are a block.
        let page_bit = if level == 3 { TYPE_TABLE_OR_PAGE } else { 0 };
        if d & (VALID | TYPE_TABLE_OR_PAGE) != VALID | page_bit {
            return None;
        }
        let offset = iova & ((1 << size_shift) - 1);
        let meta = Meta::leaf(level, size_shift) | stage;
        Some(Translation::new(base + offset, d, meta))
    }
}

/// [`Exit::leaf`] of a walk that stopped above the leaf level, out of line: the page exit
/// keeps its constants instead of sharing a tail that computes them from the level. (The exit
/// comes in registers: as one value it would be stored on every level of the walk.)
#[cold]
#[inline(never)]
fn block(
    level: u32,
    iova: u64,
    d: u64,
    base: u64,
    size_shift: u32,
    stage: u64,
) -> Option<Translation> {
    let exit = Exit {
        level,
        d,
        base,
        size_shift,
    };
    exit.leaf(iova, stage)
}

/// A pinned read-side view of a page table: any number of translations and walks under one
/// RCU pin. Tables reachable while it lives are not freed before it is dropped; it sees each
/// entry either before or after a concurrent map or unmap.
///
/// ```
/// use io_pgtable::{Config, PageTable, Prot};
/// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
/// pt.map(0x1000, 0x9000, 0x2000, Prot::READ).unwrap();
/// let r = pt.reader();
/// assert_eq!(r.translate(0x1010).unwrap().paddr(), 0x9010);
/// assert_eq!(r.translate(0x2010).unwrap().paddr(), 0xa010);
/// assert!(r.translate(0x3000).is_none());
/// ```
pub struct Reader<'a, T: TlbOps> {
    pt: &'a PageTable<T>,
    guard: Guard,
}

impl<T: TlbOps> PageTable<T> {
    /// Pin a [`Reader`] for several translations or walks.
    #[inline]
    pub fn reader(&self) -> Reader<'_, T> {
        Reader {
            pt: self,
            guard: rcu::pin_at(&READER_PIN),
        }
    }

    /// Translate `iova`, with the leaf's protections; `None` if unmapped or out of range.
    ///
    /// ```
    /// use io_pgtable::{Config, PageTable, Prot};
    /// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    /// pt.map_pages(0x4000, 0x7000, 0x1000, 1, Prot::READ | Prot::NOEXEC).unwrap();
    /// let t = pt.iova_to_phys(0x4abc).unwrap();
    /// assert_eq!((t.paddr(), t.level()), (0x7abc, 3));
    /// assert_eq!(t.prot(), Prot::READ | Prot::NOEXEC);
    /// ```
    #[inline]
    pub fn iova_to_phys(&self, iova: u64) -> Option<Translation> {
        // One call through the walk even for the inlined format: behind crossbeam-epoch's pin
        // (a locked instruction, since replaced) the inlined walk measured slower (11.0 ns
        // against 9.3 ns per dependent translation); a caller translating many addresses
        // holds a `Reader` instead.
        let reader = self.reader();
        (self.walk.call)(self, &reader.guard, iova)
    }

    /// A snapshot of every valid descriptor reachable from the root, taken under one pin.
    ///
    /// ```
    /// use io_pgtable::{Config, PageTable, Prot};
    /// let pt = PageTable::new(Config::tiny(2)).unwrap();
    /// pt.map_pages(0x1000, 0x1000, 0x1000, 1, Prot::READ).unwrap();
    /// let d = pt.dump();
    /// assert_eq!((d.tables, d.leaves().count()), (2, 1));
    /// println!("{d}");
    /// ```
    pub fn dump(&self) -> Dump {
        self.reader().dump()
    }
}

impl<T: TlbOps> Reader<'_, T> {
    /// Translate `iova` under this reader's pin.
    #[inline(always)]
    pub fn translate(&self, iova: u64) -> Option<Translation> {
        self.pt.walk.translate(self.pt, &self.guard, iova)
    }

    /// Visit every valid descriptor reachable from the root, depth first, in address order.
    pub fn walk(&self, mut f: impl FnMut(&WalkEntry)) {
        let g = &self.pt.geom;
        self.walk_table(
            self.pt.root.entries(),
            self.pt.root_addr(),
            g.start_level(),
            0,
            &mut f,
        );
    }

    fn walk_table(
        &self,
        table: &[AtomicU64],
        addr: u64,
        level: u32,
        base: u64,
        f: &mut impl FnMut(&WalkEntry),
    ) {
        let g = &self.pt.geom;
        for (index, e) in table.iter().enumerate() {
            let raw = e.load(WALK_ACQUIRE.ord(Acquire));
            if pte::vacant(raw) {
                continue;
            }
            let desc = pte::decode(g, level, raw);
            let iova = base + index as u64 * g.block_size(level);
            f(&WalkEntry {
                level,
                index,
                iova,
                size: g.block_size(level),
                table: addr,
                raw,
                desc,
            });
            if let Descriptor::Table { addr: next } = desc {
                // SAFETY: a table link read from this table under the reader's pin.
                let child = unsafe { self.pt.table_at(&self.guard, next, level + 1) };
                self.walk_table(child, next, level + 1, iova, f);
            }
        }
    }

    /// A snapshot of every valid descriptor reachable from the root.
    pub fn dump(&self) -> Dump {
        let mut entries = Vec::new();
        self.walk(|e| entries.push(*e));
        let tables = 1 + entries
            .iter()
            .filter(|e| matches!(e.desc, Descriptor::Table { .. }))
            .count();
        Dump {
            root: self.pt.root_addr(),
            tables,
            entries,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::config::{every_geometry, Config, Stage};

    /// The walk's leaf answers as `pte::decode` for every type-bit pattern, level, attribute
    /// byte and stage.
    #[test]
    fn walk_leaf_matches_decode() {
        for stage in [Stage::S1, Stage::S2] {
            let g = Config {
                stage,
                ..Config::s1_4k(48)
            }
            .geometry()
            .unwrap();
            let iova = 0x1234_5678_9abc;
            for level in 0..4 {
                let size = g.block_size(level);
                for attrs in 0..1024u64 {
                    for high in [0, pte::XN, pte::XN | 0x8000_1234_5000] {
                        let d = attrs | high;
                        // A table descriptor above the leaf level never reaches `leaf`.
                        if level < 3 && pte::is_table(d) {
                            continue;
                        }
                        let want = match pte::decode(&g, level, d) {
                            Descriptor::Leaf { paddr, prot } => {
                                Some((paddr + (iova & (size - 1)), prot, level, size, d))
                            }
                            _ => None,
                        };
                        let base = pte::decode_oa(&g, d);
                        let stage = Meta::stage(stage);
                        let size_shift = g.level_shift(level);
                        let exit = Exit {
                            level,
                            d,
                            base,
                            size_shift,
                        };
                        let got = exit
                            .leaf(iova, stage)
                            .map(|t| (t.paddr(), t.prot(), t.level(), t.size(), t.desc()));
                        assert_eq!(got, want, "{stage:?} level {level}, descriptor {d:#x}");
                    }
                }
            }
        }
    }

    /// A reader's walk answers as the walk's one call, inlined (four levels of 4 KiB) or not,
    /// for pages, blocks, holes and addresses out of range, on every granule, stage (stage 2
    /// with and without concatenated start tables), output size (with the 52-bit format's
    /// packed `PA[51:48]`) and start level.
    #[test]
    #[cfg_attr(miri, ignore)] // about 70 formats built, mapped and walked: minutes under Miri
    fn reader_walk_answers_as_the_call() {
        use crate::pte::Prot;
        let (mut inlined_s1, mut inlined_s2, mut called) = (0, 0, 0);
        for granule in [
            Granule::Size4K,
            Granule::Size16K,
            Granule::Size64K,
            Granule::Tiny,
        ] {
            for (stage, oas, ias) in [Stage::S1, Stage::S2]
                .into_iter()
                .flat_map(|stage| [(stage, 40), (stage, 48), (stage, 52)])
                .flat_map(|(stage, oas)| {
                    [24, 32, 36, 39, 40, 42, 44, 47, 48, 52].map(|ias| (stage, oas, ias))
                })
            {
                let config = Config {
                    granule,
                    stage,
                    ias,
                    oas,
                    ns: false,
                };
                // Combinations the format does not have (input or output too wide for the
                // granule, too many levels) are refused when built.
                let Ok(pt) = PageTable::new(config) else {
                    continue;
                };
                let g = *pt.geometry();
                let inlined = granule == Granule::Size4K && g.start_level() == 0;
                assert_eq!(pt.walk.four_level_4k, inlined, "{config:?}");
                match (inlined, stage) {
                    (true, Stage::S1) => inlined_s1 += 1,
                    (true, Stage::S2) => inlined_s2 += 1,
                    (false, _) => called += 1,
                }
                let page = g.page_size();
                let block = g.block_size(3 - 1);
                // Output addresses with `PA[51:48]` set where the format has them.
                let out = if oas > 48 {
                    0xa_0000_4000_0000
                } else {
                    0x40_0000 * page
                };
                let mut iovas = vec![0, 1 << ias, u64::MAX];
                for k in 1..4 {
                    let iova = page * k;
                    pt.map(iova, out + iova, page, Prot::READ).unwrap();
                    let paddr = pt.reader().translate(iova + 5).map(|t| t.paddr());
                    assert_eq!(paddr, Some(out + iova + 5), "{config:?}");
                    iovas.extend([iova, iova + page / 2, iova + page * 8]);
                }
                if 2 * block < 1 << ias && g.level_of(block).is_some() {
                    pt.map(block, out + block, block, Prot::WRITE).unwrap();
                    iovas.extend([block, block + page + 3, 2 * block]);
                }
                let reader = pt.reader();
                for iova in iovas {
                    let call = (pt.walk.call)(&pt, &reader.guard, iova);
                    assert_eq!(reader.translate(iova), call, "{config:?} at {iova:#x}");
                    assert_eq!(pt.iova_to_phys(iova), call, "{config:?} at {iova:#x}");
                }
            }
        }
        // Stage 1 inlines at inputs of 40 to 48 bits, stage 2 (concatenating up to 43) at 44
        // to 48, at each output size but 52 (refused with 4 KiB); every other format calls.
        assert_eq!(
            (inlined_s1, inlined_s2),
            (2 * 5, 2 * 3),
            "inlined formats tested"
        );
        assert!(called > 50, "only {called} called formats tested");
    }

    /// The range check bounds the start level's index: the input size is the start level's
    /// shift plus its index bits, for every granule, stage and input size.
    #[test]
    fn input_size_bounds_the_start_index() {
        for (config, g) in every_geometry() {
            let start = g.start_level();
            assert_eq!(
                g.level_shift(start) + g.index_bits(start),
                config.ias,
                "{config:?}"
            );
        }
    }
}
