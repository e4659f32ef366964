//! One chunk: a naturally aligned block of granules that holds small size-aligned
//! allocations in bitmaps instead of tree entries.
//!
//! A size-aligned allocation of at most 64 granules starts at a multiple of its size rounded
//! up to a power of two, so it lies inside one 64-granule word of the chunk. Per word the chunk
//! keeps three bit masks (a bit per granule): `used` (allocated), `starts` (the first granule of
//! each allocation) and `tags` (the allocation's cached-path tag, at its start bit). An
//! allocation runs from its start bit up to the next start bit, free granule or word end, so
//! an exact-match free is validated in its one word.
//!
//! Per word a fit summary says, per alignment class `k` in `0..=6` (byte `k`), the most
//! granules any `2^k`-aligned lane of the word offers from its start, capped at `2^k`
//! ([`word_fits`]); a request of `size <= 2^k` granules aligned to `2^k` fits in the word
//! exactly when the byte is at least `size`, and in a set of words exactly when their bytewise
//! maximum is (a request never straddles words).
//!
//! # Layout: what a free touches
//!
//! The free of a fragmented workload lands on a random word of megabytes of metadata, so
//! what it costs is the cache lines it misses. A word's masks and its summary are one 32-byte
//! record, two words to a cache line (a [`Line`], aligned to it), and the leaves of the
//! chunk's 8-ary [`SummaryTree`] (whose root is the chunk's [`Chunk::top`]) are the lines'
//! summaries, the maxima of their two words'. Each line also keeps whether the granule below
//! it is free ([`BELOW_FREE`]), which the free-run count of an allocation or free at the
//! line's first granule needs (every 33..64-granule one in an even word): it would otherwise
//! read the line below. So a free, validated and applied in its word, recomputes the word's
//! summary and its line's in the same line and then raises the tree's leaf (one line per 8
//! lines of words) and the nodes above it while they change; an allocation does the same
//! after a search that reads at most 8 summaries (one line) per tree level from the limit
//! down and then its line's two words. A free touches at most two lines below the tree's
//! leaves, where a separate word array (24 bytes: a quarter straddled two lines), a leaf per
//! word (8 per line) and the word below the line's meant up to four; the touch of the line
//! above (the run's upper neighbour) is needed only when the range ends at a line's top, and
//! then writes the copy there. Per pair of the fragmented workload, by kind (module `range`:
//! what a fragmented pair costs), that took the misses of a simulated 512 KiB L2 of a pair
//! whose free goes to the chunks from 3.3 to 2.3, one of them the driving loop's own.

use crate::fitsummary;
use crate::summarytree::{filled, SummaryTree};

/// Per class `k`, the lowest bit of every `2^k`-granule lane of a word.
const LANE_LOW: [u64; 7] = [
    u64::MAX,
    0x5555_5555_5555_5555,
    0x1111_1111_1111_1111,
    0x0101_0101_0101_0101,
    0x0001_0001_0001_0001,
    0x0000_0001_0000_0001,
    1,
];

/// The fit summary of a word whose free granules are the set bits of `free`: byte `k` (for
/// `k` in `0..=6`) the longest run of free granules from the start of any `2^k`-aligned lane,
/// capped at `2^k`. Branch-free, about 80 instructions (a free and an allocation each compute
/// one).
#[inline]
pub(crate) fn word_fits(free: u64) -> u64 {
    u64::from(free != 0)
        | longest_lane_run::<1>(free) << 8
        | longest_lane_run::<2>(free) << 16
        | longest_lane_run::<3>(free) << 24
        | longest_lane_run::<4>(free) << 32
        | longest_lane_run::<5>(free) << 40
        | u64::from(free.trailing_ones()) << 48
}

/// The longest run of set bits of `free` from the start of a `2^K`-bit lane.
///
/// Adding one to every lane at once (the lanes' top bits kept out of the addition so that no
/// carry crosses a lane) flips exactly each lane's trailing ones and the zero above them, so
/// `free & (free ^ (free + 1))` is each lane's run of trailing ones; OR-ing the lanes onto the
/// lowest one gives the longest run's mask, as every run is a prefix of its lane.
#[inline(always)]
fn longest_lane_run<const K: u32>(free: u64) -> u64 {
    let lane = 1u32 << K;
    let low = LANE_LOW[K as usize];
    let high = low << (lane - 1);
    let plus_one = ((free & !high) + low) ^ (free & high);
    let mut runs = free & (free ^ plus_one);
    let mut fold = 32;
    while fold >= lane {
        runs |= runs >> fold;
        fold >>= 1;
    }
    // The run is a prefix mask of the lane: its length is where the lane's first zero is.
    u64::from((!(runs & ((1 << lane) - 1))).trailing_zeros())
}

/// The highest start in a word, `2^class`-aligned, of `size` free granules (`1..=2^class`)
/// ending at or below bit `top`; `None` if there is none.
fn highest_start(free: u64, size: u32, class: u32, top: u32) -> Option<u32> {
    if size > top + 1 {
        return None;
    }
    // Bit p of `runs`: the `have` granules from p are free; doubling reaches `size`.
    let (mut runs, mut have) = (free, 1);
    while have < size {
        let step = have.min(size - have);
        runs &= runs >> step;
        have += step;
    }
    let last_start = top + 1 - size;
    let below = u64::MAX >> (63 - last_start);
    let starts = runs & LANE_LOW[class as usize] & below;
    (starts != 0).then(|| 63 - starts.leading_zeros())
}

/// Words per cache line, and per leaf of a chunk's summary tree.
const GROUP: usize = 2;

/// Granules per line.
const LINE_GRANULES: u64 = 64 * GROUP as u64;

/// In a line's first word's `fits`, byte 7 (no class's): whether the granule below the line
/// is free, a copy kept so that the free-run count of an operation at the line's first
/// granule reads no other line.
const BELOW_FREE: u64 = 1 << 56;

/// The bit masks of one word and its fit summary: half a cache line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
struct Word {
    used: u64,
    starts: u64,
    tags: u64,
    /// [`word_fits`] of `!used`, and [`BELOW_FREE`] in a line's first word.
    fits: u64,
}

/// [`GROUP`] words, one cache line (aligned to it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, align(64))]
struct Line {
    words: [Word; GROUP],
}

impl Line {
    /// Whether the granule below the line is free (the copy of [`BELOW_FREE`]).
    fn below_free(&self) -> bool {
        self.words[0].fits & BELOW_FREE != 0
    }

    fn set_below_free(&mut self, free: bool) {
        let word = &mut self.words[0];
        word.fits = word.fits & !BELOW_FREE | if free { BELOW_FREE } else { 0 };
    }
}

impl Word {
    /// The allocation starting at `bit`: its size and tag, if one does.
    fn allocation_at(&self, bit: u32) -> Option<(u64, bool)> {
        if self.starts >> bit & 1 == 0 {
            return None;
        }
        Some((self.size_from(bit), self.tags >> bit & 1 == 1))
    }

    /// Granules of the allocation starting at `bit`: up to the next start, free granule or
    /// the word's end.
    fn size_from(&self, bit: u32) -> u64 {
        let stops = (!self.used | self.starts) & (u64::MAX << bit << 1);
        u64::from(stops.trailing_zeros() - bit)
    }
}

/// The mask of `size` bits from `bit` (`bit + size <= 64`).
fn span(bit: u32, size: u64) -> u64 {
    (u64::MAX >> (64 - size)) << bit
}

/// A chunk of `64 * words` granules from `base`: the bitmaps of its allocations and the
/// summaries of its free space.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    base: u64,
    lines: Box<[Line]>,
    /// Per line, the bytewise maximum of its words' summaries, under their maxima.
    fits: SummaryTree,
    /// Live allocations.
    live: u64,
    used_granules: u64,
    /// Maximal runs of free granules inside the chunk.
    free_runs: u64,
}

impl Chunk {
    /// An empty chunk of `granules` (a power of two, at least 64) from `base`; `None` if its
    /// memory cannot be had.
    pub(crate) fn try_new(base: u64, granules: u64) -> Option<Self> {
        let lines = (granules / 64) as usize / GROUP;
        let free = Word {
            fits: word_fits(u64::MAX),
            ..Word::default()
        };
        let mut empty = Line {
            words: [free; GROUP],
        };
        empty.set_below_free(true);
        let mut lines = filled(lines, empty)?;
        lines[0].set_below_free(false);
        Some(Self {
            base,
            fits: SummaryTree::try_filled(lines.len(), free.fits)?,
            lines,
            live: 0,
            used_granules: 0,
            free_runs: 1,
        })
    }

    /// First pfn.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Granules in the chunk.
    pub(crate) fn granules(&self) -> u64 {
        (64 * GROUP * self.lines.len()) as u64
    }

    /// The summary of the whole chunk's free space.
    pub(crate) fn top(&self) -> u64 {
        self.fits.root()
    }

    /// Live allocations.
    pub(crate) fn live(&self) -> u64 {
        self.live
    }

    /// Granules in live allocations.
    pub(crate) fn used_granules(&self) -> u64 {
        self.used_granules
    }

    /// Maximal runs of free granules.
    pub(crate) fn free_runs(&self) -> u64 {
        self.free_runs
    }

    /// The highest offset of a `2^class`-aligned run of `size` free granules (`size <=
    /// 2^class <= 64`) ending at or below the offset `limit`.
    pub(crate) fn highest_fit(&self, size: u64, class: u32, limit: u64) -> Option<u64> {
        let limit = limit.min(self.granules() - 1);
        let limit_word = (limit / 64) as usize;
        let mut end = limit_word / GROUP + 1;
        // Only the word holding the limit can offer a fit that lies above it; below it a word
        // that offers one has one.
        while let Some(line) = self.fits.highest(end, size, class) {
            let last = (GROUP * line + GROUP - 1).min(limit_word);
            for w in (GROUP * line..=last).rev() {
                let word = self.word(w);
                if word.fits >> (8 * class) & 0xff < size {
                    continue;
                }
                let top = if w == limit_word { limit % 64 } else { 63 };
                if let Some(bit) = highest_start(!word.used, size as u32, class, top as u32) {
                    return Some(64 * w as u64 + u64::from(bit));
                }
            }
            end = line;
        }
        None
    }

    /// The allocation starting at offset `at`: its size and tag, if one does.
    pub(crate) fn allocation_at(&self, at: u64) -> Option<(u64, bool)> {
        self.word((at / 64) as usize)
            .allocation_at((at % 64) as u32)
    }

    /// The allocation covering offset `at`, as `(start offset, size)`.
    pub(crate) fn allocation_covering(&self, at: u64) -> Option<(u64, u64)> {
        let (w, bit) = ((at / 64) as usize, (at % 64) as u32);
        let word = self.word(w);
        if word.used >> bit & 1 == 0 {
            return None;
        }
        // A used granule's allocation starts at the nearest start at or below it.
        let starts = word.starts & (u64::MAX >> (63 - bit));
        let first = 63 - starts.leading_zeros();
        Some((64 * w as u64 + u64::from(first), word.size_from(first)))
    }

    /// Allocate `size` free granules from offset `at` (a fit from
    /// [`highest_fit`](Self::highest_fit)), tagged `tag`.
    pub(crate) fn alloc(&mut self, at: u64, size: u64, tag: bool) {
        let (w, bit) = ((at / 64) as usize, (at % 64) as u32);
        let word = self.word_mut(w);
        word.used |= span(bit, size);
        word.starts |= 1 << bit;
        word.tags |= u64::from(tag) << bit;
        // The run it was carved from splits into what is left on either side.
        self.free_runs = self.free_runs - 1
            + u64::from(self.free_below(at))
            + u64::from(self.is_free(at + size));
        self.copy_below(at + size, false);
        self.live += 1;
        self.used_granules += size;
        self.refresh(w);
    }

    /// Free the allocation of `size` granules at offset `at` (validated by the caller with
    /// [`allocation_at`](Self::allocation_at)).
    pub(crate) fn free(&mut self, at: u64, size: u64) {
        let (w, bit) = ((at / 64) as usize, (at % 64) as u32);
        let word = self.word_mut(w);
        word.used &= !span(bit, size);
        word.starts &= !(1 << bit);
        word.tags &= !(1 << bit);
        self.free_runs = self.free_runs + 1
            - u64::from(self.free_below(at))
            - u64::from(self.is_free(at + size));
        self.copy_below(at + size, true);
        self.live -= 1;
        self.used_granules -= size;
        self.refresh(w);
    }

    /// Whether offset `at` lies in the chunk and is free.
    fn is_free(&self, at: u64) -> bool {
        at < self.granules() && self.word((at / 64) as usize).used >> (at % 64) & 1 == 0
    }

    /// Whether the granule below offset `at` lies in the chunk and is free, read from `at`'s
    /// own line.
    fn free_below(&self, at: u64) -> bool {
        if at % LINE_GRANULES == 0 {
            self.lines[(at / LINE_GRANULES) as usize].below_free()
        } else {
            self.is_free(at - 1)
        }
    }

    /// The granule below offset `end` is now free (or used): if `end` starts a line, its copy.
    fn copy_below(&mut self, end: u64, free: bool) {
        if end % LINE_GRANULES == 0 && end < self.granules() {
            self.lines[(end / LINE_GRANULES) as usize].set_below_free(free);
        }
    }

    /// Word `w`.
    #[inline]
    fn word(&self, w: usize) -> &Word {
        &self.lines[w / GROUP].words[w % GROUP]
    }

    #[inline]
    fn word_mut(&mut self, w: usize) -> &mut Word {
        &mut self.lines[w / GROUP].words[w % GROUP]
    }

    /// Every word in address order.
    fn words(&self) -> impl Iterator<Item = &Word> {
        self.lines.iter().flat_map(|line| &line.words)
    }

    /// Recompute word `w`'s summary and the maxima above it: its line's summary is the
    /// maximum of the line's words' (which the line holds).
    fn refresh(&mut self, w: usize) {
        let word = self.word_mut(w);
        word.fits = word_fits(!word.used) | word.fits & BELOW_FREE;
        self.fits.set(w / GROUP, self.line_fits(w / GROUP));
    }

    /// The bytewise maximum of the summaries of line `i`'s words.
    fn line_fits(&self, i: usize) -> u64 {
        let words = self.lines[i].words.iter();
        words.fold(0, |m, word| fitsummary::max(m, word.fits)) & !BELOW_FREE
    }

    /// Every allocation as `(pfn, size, tag)` in address order.
    pub(crate) fn allocations(&self) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
        self.words().enumerate().flat_map(move |(w, word)| {
            set_bits(word.starts).map(move |bit| {
                let (size, tag) = word.allocation_at(bit).expect("a start bit");
                (self.base + 64 * w as u64 + u64::from(bit), size, tag)
            })
        })
    }

    /// Every maximal run of free granules as `(pfn, len)` in address order.
    pub(crate) fn free_ranges(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (w, word) in self.words().enumerate() {
            for bit in set_bits(!word.used) {
                let pfn = self.base + 64 * w as u64 + u64::from(bit);
                match runs.last_mut() {
                    Some((start, len)) if *start + *len == pfn => *len += 1,
                    _ => runs.push((pfn, 1)),
                }
            }
        }
        runs
    }

    /// Check the bitmaps' rules and recompute every summary and counter (tests).
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut live = 0;
        for (w, word) in self.words().enumerate() {
            let at = self.base + 64 * w as u64;
            if word.starts & !word.used != 0 || word.tags & !word.starts != 0 {
                return Err(format!("word at {at:#x}: a start or tag on a free granule"));
            }
            if word.used & 1 == 1 && word.starts & 1 == 0 {
                return Err(format!(
                    "word at {at:#x}: an allocation from the word before"
                ));
            }
            for bit in set_bits(word.starts) {
                let size = word.size_from(bit);
                if u64::from(bit) % size.next_power_of_two() != 0 {
                    return Err(format!("allocation at {at:#x}+{bit} of {size} not aligned"));
                }
                live += 1;
            }
            let first_of_line = w % GROUP == 0;
            let below = first_of_line && w > 0 && self.is_free(64 * w as u64 - 1);
            let fits = brute_word_fits(!word.used) | if below { BELOW_FREE } else { 0 };
            if word.fits != fits {
                let stale = word.fits;
                return Err(format!(
                    "word at {at:#x}: summary {stale:#x}, not {fits:#x}"
                ));
            }
        }
        for i in 0..self.lines.len() {
            if self.fits.leaf(i) != self.line_fits(i) {
                return Err(format!(
                    "chunk {:#x}: line {i}'s summary is stale",
                    self.base
                ));
            }
        }
        self.fits.check()?;
        let used: u64 = self.words().map(|w| u64::from(w.used.count_ones())).sum();
        let runs = self.free_ranges().len() as u64;
        if (live, used, runs) != (self.live, self.used_granules, self.free_runs) {
            return Err(format!("chunk {:#x}: counters disagree", self.base));
        }
        Ok(())
    }
}

/// The positions of the set bits of `mask`, lowest first.
fn set_bits(mut mask: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        let bit = mask.trailing_zeros();
        (mask != 0).then(|| {
            mask &= mask - 1;
            bit
        })
    })
}

/// [`word_fits`] by plain loops over the lanes.
fn brute_word_fits(free: u64) -> u64 {
    (0..=6).fold(0, |fits, k| {
        let lane = 1u32 << k;
        let longest = (0..64 / lane)
            .map(|l| ((free >> (l * lane)) | !(u64::MAX >> (64 - lane))).trailing_ones())
            .map(|run| run.min(lane))
            .max()
            .unwrap_or(0);
        fits | u64::from(longest) << (8 * k)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether a `2^class`-aligned run of `size` free granules starts at `bit` and ends at or
    /// below `top`, by brute force.
    fn brute_fits_at(free: u64, size: u32, class: u32, bit: u32, top: u32) -> bool {
        bit % (1 << class) == 0
            && bit + size - 1 <= top
            && (bit..bit + size).all(|b| free >> b & 1 == 1)
    }

    proptest! {
        #[test]
        #[cfg_attr(miri, ignore)] // proptest persists failures through the file system
        fn word_summary_matches_the_lanes(free: u64, holes in 0u32..64) {
            // Random words have few long runs; clearing a random span makes them.
            for free in [free, free | span(holes, 64 - u64::from(holes)), !0, 0] {
                prop_assert_eq!(word_fits(free), brute_word_fits(free));
            }
        }

        #[test]
        #[cfg_attr(miri, ignore)] // proptest persists failures through the file system
        fn highest_start_is_the_highest_fit(free: u64, class in 0u32..=6, size_seed: u32, top in 0u32..64) {
            let size = 1 + size_seed % (1 << class);
            let brute = (0..64).rev().find(|&b| brute_fits_at(free, size, class, b, top));
            prop_assert_eq!(highest_start(free, size, class, top), brute);
            // Where the limit binds nothing, the summary decides the fit exactly.
            let byte = word_fits(free) >> (8 * class) & 0xff;
            prop_assert_eq!(byte >= u64::from(size), brute_fits_any(free, size, class));
        }
    }

    fn brute_fits_any(free: u64, size: u32, class: u32) -> bool {
        (0..64).any(|b| brute_fits_at(free, size, class, b, 63))
    }

    #[test]
    fn allocations_split_and_merge_free_runs() {
        let mut c = Chunk::try_new(1 << 12, 1 << 12).unwrap();
        assert_eq!(c.highest_fit(64, 6, u64::MAX), Some(4032));
        assert_eq!(c.highest_fit(3, 2, 4095), Some(4092));
        assert_eq!(
            c.highest_fit(3, 2, 4093),
            Some(4088),
            "ends at or below the limit"
        );
        c.alloc(4088, 3, true);
        c.alloc(4080, 5, false);
        c.check().unwrap();
        assert_eq!(c.free_runs(), 3, "below 4080, 4085..4087, 4091..4095");
        assert_eq!(c.allocation_at(4088), Some((3, true)));
        assert_eq!(c.allocation_at(4080), Some((5, false)));
        assert_eq!(c.allocation_at(4081), None, "inside, not a start");
        assert_eq!(c.allocation_covering(4090), Some((4088, 3)));
        assert_eq!(c.allocation_covering(4091), None);
        assert_eq!(
            c.highest_fit(64, 6, u64::MAX),
            Some(3968),
            "the top word is taken"
        );
        c.alloc(4085, 3, false);
        assert_eq!(
            c.allocation_at(4080),
            Some((5, false)),
            "a start ends the one below"
        );
        assert_eq!(c.free_runs(), 2);
        c.free(4088, 3);
        c.free(4080, 5);
        c.free(4085, 3);
        c.check().unwrap();
        assert_eq!(
            (c.live(), c.free_runs(), c.top()),
            (0, 1, word_fits(u64::MAX))
        );
        assert_eq!(c.free_ranges(), [(1 << 12, 1 << 12)]);
    }

    #[test]
    fn runs_across_a_line_edge_are_counted_from_the_copy() {
        let mut c = Chunk::try_new(0, 1 << 8).unwrap();
        // Lines hold granules 0..128 and 128..256.
        c.alloc(128, 64, false);
        c.alloc(64, 64, false);
        assert_eq!(c.free_runs(), 2, "below 64 and from 192");
        c.free(128, 64);
        assert_eq!(c.free_runs(), 2, "below 64 and from 128");
        c.free(64, 64);
        c.check().unwrap();
        assert_eq!(c.free_runs(), 1);
        c.alloc(127, 1, false);
        c.alloc(128, 1, false);
        c.check().unwrap();
        assert_eq!(c.free_runs(), 2, "below 127 and from 129");
        c.free(127, 1);
        assert_eq!(c.free_runs(), 2, "below 128 and from 129");
        c.free(128, 1);
        c.check().unwrap();
        assert_eq!(c.free_ranges(), [(0, 1 << 8)]);
    }

    #[test]
    #[cfg_attr(miri, ignore)] // 128 allocations and frees, every summary checked after each: safe code
    fn a_full_chunk_offers_nothing_and_frees_restore_every_summary() {
        let mut c = Chunk::try_new(0, 1 << 13).unwrap();
        let mut at = Vec::new();
        while let Some(fit) = c.highest_fit(64, 6, u64::MAX) {
            c.alloc(fit, 64, false);
            at.push(fit);
        }
        assert_eq!((at.len(), c.top(), c.free_runs()), (128, 0, 0));
        assert_eq!(c.highest_fit(1, 0, u64::MAX), None);
        for &fit in at.iter().rev().step_by(3) {
            c.free(fit, 64);
            c.check().unwrap();
        }
        // Every third word is free again, from word 0 up to word 126.
        assert_eq!(c.highest_fit(64, 6, u64::MAX), Some(126 * 64));
        assert_eq!(
            c.highest_fit(64, 6, 8000),
            Some(123 * 64),
            "ends at or below the limit"
        );
        assert_eq!(
            c.highest_fit(1, 0, 8000),
            Some(124 * 64 - 1),
            "word 125 is taken"
        );
    }
}
