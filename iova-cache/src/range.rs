//! The authoritative range allocator: top-down allocation below an inclusive limit,
//! natural alignment, reservations, exact-match frees.
//!
//! Small size-aligned allocations (up to 64 granules) live in chunks: naturally aligned blocks
//! of up to 2^18 granules carved from the free space, each keeping its allocations in bitmaps
//! and its free space in fit summaries (modules `chunk`, `chunks`, `summarytree`). Everything
//! else (unaligned requests, larger sizes, the chunks themselves, and the small requests when
//! no chunk-sized block is left) lives in one [`GapTree`] (a B+ tree of free ranges and
//! allocations keyed by start pfn, whose inner nodes summarise each subtree's longest free
//! range and aligned fits; its allocation entries validate frees and answer `find`);
//! reservations in a `BTreeMap` of merged inclusive ranges. There are no search hints and no
//! negative cache: the summaries answer "no space" exactly, so the hint-staleness and
//! negative-cache bugs of a hinted rbtree cannot occur.
//!
//! # Where an allocation goes, and which address it gets
//!
//! * A size-aligned request of up to 64 granules (alignment `2^k`, `k` in `0..=6`) takes the
//!   higher of two places ending at or below the limit: the highest fit inside the chunks,
//!   and the highest fit of a new chunk at the highest chunk-aligned free block of the tree
//!   (a block of the chunk size, aligned to it). So it lands below a free chunk-sized block
//!   only when none lies above it within the limit, which keeps Linux's top-down preference
//!   at chunk granularity: a request with a wide limit fills the chunks from the top of the
//!   space down and does not take the free space that 32-bit requests left in chunks below
//!   4 GiB while there is room above (a 32-bit-first device that gave up 32-bit space would
//!   otherwise eat the space a 32-bit-only device needs). If neither place exists, the
//!   highest fit in the tree. Such a request lies inside one 64-granule word, so it never
//!   straddles a chunk's edge: the chunks and the tree between them hold every place it can
//!   go, and `NoSpace` is exact.
//!
//!   The block is found without a search on the fast path: the allocator remembers the
//!   tree's highest chunk-aligned free block below the end of the space, and below the last
//!   lower limit (a 32-bit device's), each with the tree's version (every change of the
//!   tree's entries bumps it, and the tree changes rarely: a new, emptied or dissolved chunk,
//!   a large request, a reservation; module `chunkblock`), and a fit in the chunks above the
//!   block remembered for the request's limit is the answer. Only a fit below it, or none, or
//!   a stale or other limit's block, looks further (devices of several masks below the
//!   space's end, alternating, search the tree each time their chunk fits).
//! * Every other request takes the highest fit in the tree. If there is none, the chunks below
//!   the limit that have free space go back to the tree first (their allocations become tree
//!   entries, their free runs merge with the tree's), and the search runs again, so `NoSpace`
//!   stays exact however the small allocations are placed; a chunk's memory comes back too.
//! * When a chunk's last allocation is freed and another chunk is empty too, that other one
//!   goes back to the tree: one empty chunk stays as a spare, the one emptied last, so that
//!   allocating and freeing one range in a loop does not make and drop a chunk each time
//!   (that cost 11 us per pair with the caches off), even when an older spare lies below the
//!   free block the loop's requests now take; its space is still free space (`free_ranges`,
//!   the statistics, a large request that needs it). A reservation over a chunk turns it back
//!   into tree entries first, so reservations only ever carve the tree's ranges.
//!
//! The address of a small request is therefore the highest fit below the limit at chunk
//! granularity, not over the whole space: it prefers a chunk's space to a higher free range
//! of the tree shorter than a chunk (or not aligned to one), and a lower chunk's fit to the
//! lower part of a higher chunk-sized block it would have to carve. Every answer is a valid
//! one (inside the limit, aligned, disjoint from every live and reserved range), which is
//! what the differential model and this crate's model tests check, and the model test checks
//! the placement too (a small request never lands below a free chunk-aligned block within its
//! limit); the tests that pin exact addresses use spaces or requests the chunks do not
//! change.
//!
//! A chunk is one allocation entry of the tree (tagged uncached), so the tree stays small: at
//! 300k live allocations of 1..64 granules it holds a few hundred chunks and the rare other
//! entries, where it held 435k entries (20 MB) before, and a pair that reaches the range
//! allocator touches the chunk's word (three bit masks), its summaries and the cached top of
//! the summary trees.
//!
//! # Why an augmented index of the free ranges
//!
//! Linux keeps allocated ranges in an rbtree and searches downward from a cached hint, which needs
//! a two-phase retry (4e89dce72521), a 32-bit negative cache (`max32_alloc_size`) and careful hint
//! maintenance, and still walks O(n) nodes once fragmented (3164 ns average and millisecond tails
//! at 300k live IOVAs; the augmented max-gap tree cut that to 661 ns). This allocator indexes the
//! *free* ranges instead, in a B+ tree keyed by start whose inner nodes keep each child's
//! `max_len` and fit summary (module `gaptree`), so the search for the highest fit below `limit`
//! prunes every subtree that cannot hold the request. The allocations are entries of the same
//! tree, so each operation is one descent. Consequences:
//!
//! * no hints, no negative cache, no retry phase: the answer is exact, so "false no space"
//!   (4e89dce72521) and the stale negative cache (5b61343b5059) cannot occur; both scenarios are
//!   regression tests;
//! * every operation is one descent of the tree plus work in place: an allocation carves its
//!   entry from the fit's range through the handle the search returned; a free finds the
//!   allocation's entry and its neighbours in one descent and turns the entry into a free
//!   range or merges it into one or both neighbours, adding nothing, so a free needs no memory
//!   and cannot fail once validated (a chunk's free flips bits and updates summaries, and an
//!   emptied chunk's release is such a tree free); a reservation shrinks the ranges it overlaps
//!   and adds at most one. An allocation or free costs O(log n) in the number of entries;
//! * a reservation over a live allocation is refused ([`crate::IovaAllocator::reserve`] flushes
//!   the caches first, so cached ranges never block it).
//!
//! A `BTreeMap` indexed by size as well as by address was the alternative; it answers "some range
//! of at least `size`" but not "the highest such range below `limit`" without a scan, so top-down
//! allocation would lose the worst-case bound.
//!
//! # What a fragmented pair costs
//!
//! Free+alloc of mixed sizes 1..64 granules (size-aligned) with 300k live, 300k pairs of
//! warm-up, then 100k measured pairs under callgrind (an 8 MiB last level simulated; the
//! driving loop's own array counts about one miss):
//!
//! | | instructions per pair | L1 read misses | last-level read misses |
//! |---|---|---|---|
//! | `RangeAllocator` alone, tree only (before the chunks) | 4890 | 25.4 | 4.1 |
//! | `RangeAllocator` alone, chunks | 2290 | 12.4 | 1.5 |
//! | through [`crate::IovaAllocator`] (sizes up to 32 cached, before the class of 64), tree only | 2490 | 12.8 | 2.1 |
//! | through [`crate::IovaAllocator`] (up to 32 cached), chunks | 1450 | 8.3 | 1.2 |
//!
//! The allocator's memory at 300k live: about 10 MB (resident set of the same run, the driving
//! loop's 7 MB array subtracted), from 32 MB (the tree's 68k leaves and 8.6k inner nodes).
//! dmabench (one thread, seven runs of both versions interleaved on a shared 2-CPU machine at
//! a load of 3 to 4): the target's ratio (median of a run's three repetitions) 13 to 37 times
//! the cached pair, from 43 to 57 times, a p99 of 0.32 to 0.99 us from 1.13 to 1.48 us; per
//! run the new ratio is 0.31 to 0.73 of the old (median 0.54); 0.25 to 0.33 us CPU per pair
//! from 0.49 to 0.60. The spread is the machine's: repetitions with the other CPU quiet give
//! 0.32 to 0.35 us (12 to 14 times), with it busy twice that, since the new code's pairs are
//! short enough that another process's cache and TLB pressure dominates them.
//!
//! Choosing between a chunk's fit and a new chunk higher up (above) costs the fast path one
//! comparison of the tree's version and one of the fit with the block remembered for the
//! limit: 2254 to 2260 instructions per pair alone, 1442 to 1445 through
//! [`crate::IovaAllocator`], and 2254 to 2262 alone with every request limited to the lowest
//! 2^24 pfns of a 2^32-pfn space (a 32-bit device's case: the block remembered for the
//! space's end lies above its fits); the same harness, measured before and after.
//!
//! What a pair costs now: two word summaries (`chunk::word_fits`, about 80 instructions
//! each), the summary trees' updates (a node changes only where a maximum moves; a node's
//! maximum that fell is rechecked against its 8 siblings before any refold), the search (a
//! class row gathered from one line per level), and the misses of a random word's bit masks
//! and summaries in about 10 MB. A free costs more than an allocation (its word is anywhere;
//! the allocations cluster where the highest fits are): in a probe timing each alone, about
//! 260 against 160 ns median.
//!
//! The summaries of the chunk trees were first kept only as `u64`s (a byte per class) in
//! 16-ary nodes, which made a search compare 16 summaries one by one per level (about 800
//! instructions per pair), then only as per-class byte rows, which made an update climb once
//! per class (1500), then both, which cost three to four cache lines per level visited (a
//! summary array and 128-byte blocks of rows). Now the nodes are 8-ary with a node's siblings'
//! `u64` summaries in one line, and a search gathers its class's row from that line (module
//! `summarytree`). Where the misses of a fragmented pair were, by the example
//! `fragmented_pairs` under callgrind (`plain` mode, 300k live, 300k pairs of warm-up, then
//! the measured pairs; a 32 KiB L1 and a 512 KiB L2 simulated, per pair): before, 5.5 misses
//! of the L2, one the example's own array, 3.3 in the words' summary trees' updates (each
//! level's summary line and two or three lines of class rows), about 0.5 the random word's
//! masks (its start bit, read to validate the free), 0.2 the word below it (a 64-aligned
//! free's lower neighbour, for the free-run count) and 0.3 the `held` bit of a cached free;
//! after, 2.9, of which 0.8 in the summary trees. Per pair, both versions:
//!
//! | summary trees | instructions | L1 misses | 512 KiB L2 misses | 8 MiB last-level misses |
//! |---|---|---|---|---|
//! | 16-ary, summaries and class rows | 1467 | 13.7 | 5.5 | 0.94 |
//! | 8-ary, one line per node's siblings | 1268 | 5.9 | 2.9 | 0.58 |
//!
//! Before the cache class of 64 granules, the pairs that set the 99th percentile were those
//! whose free and allocation both reach the chunks (sizes above 32 granules: a quarter of the
//! pairs, about two thirds to four fifths of the slowest 1% in the example's timed mode); a free of a chunk's range costs
//! about twice the median pair on its own. What is left there is the random word itself and
//! the pages it and its summaries lie on (4 KiB pages: at 10 MB of metadata, most such
//! accesses miss the TLB as well).
//!
//! By kind of pair (the example's `kinds` mode: each kind of pair run by a function of its
//! own, callgrind's inclusive cost divided by its calls, about 25k calls each; same set-up
//! and caches as above; every kind's figure includes about one miss of the example's own
//! array), first with the words' summaries in a leaf per word, 8 to a line, apart from the
//! 24-byte words, then with a word's summary beside its masks, two words and the copy of the
//! granule below to a line, a leaf per line (module `chunk`):
//!
//! | kind (free, allocation) | instructions | L1 misses | 512 KiB L2 misses |
//! |---|---|---|---|
//! | chunks, chunks (33..64 both) | 2118 → 2229 | 7.4 → 6.4 | 3.27 → 2.30 |
//! | magazines, chunks | 1659 → 1730 | 2.5 → 2.3 | 0.66 → 0.60 |
//! | chunks, magazines | 838 → 876 | 7.6 → 6.6 | 3.30 → 2.31 |
//! | magazines, magazines | 392 → 392 | 1.9 → 1.9 | 0.64 → 0.58 |
//!
//! The free's misses were its word (1.0), the word below it for the free-run count (0.4), the
//! word's leaf (0.95) and the node above (0.7); now its line (1.0) and the line's leaf (0.9).
//! The allocation's were and are few: the highest fit of a 33..64-granule request is
//! usually the word a recent free emptied. Keeping only a leaf per 8 words beside 32-byte
//! words (so the search read up to four lines of words below a leaf) took a free's misses
//! down as far but added 2.5 to every allocation's (the words above the fit in its group,
//! never otherwise touched).
//!
//! In time the change is within the noise: dmabench (`--components iova --threads 1`, six
//! runs of each version interleaved on the shared 2-CPU EPYC at a load of 4 to 9) gave a
//! fragmented p99 of 641 to 862 ns before (median 701, 41 to 56 times the cached pair of the
//! same run, median 44) and 551 to 752 ns after (median 701, 36 to 49 times, median 45), and
//! the example's timed mode, eight runs each, the same spread. The machine's L2 is 1 MiB
//! and its L3 32 MiB, so the lines the simulated 512 KiB L2 misses mostly come from the L3
//! (tens of ns each), and what is left of a tail pair is the random word's line and its
//! leaf's and their pages: 4 KiB pages over about 10 MB of metadata miss the TLB too (with
//! the whole heap on transparent huge pages through glibc's tunables, the example's p99 fell
//! by about a fifth in three alternated runs, dmabench's by 2 and 10% in two).
//!
//! Then the cache classes went to 64 granules (`config::CACHE_CLASSES`): a size-aligned
//! request of 33..64 granules is rounded to 64 and cached like the smaller ones, so with mixed
//! sizes 1..64 every pair of the workload is a magazine pair, and the chunks see only the
//! magazines' rare misses and overflows (none in the 100k measured pairs below). The
//! example's `kinds` mode, same set-up and caches, callgrind's inclusive cost per call (each
//! kind about 25k calls before; after, all 100k pairs are of the first kind; the example's
//! own array is read outside these functions):
//!
//! | kind (free, allocation) | instructions | L1 misses | 512 KiB L2 misses |
//! |---|---|---|---|
//! | before: chunks, chunks (33..64 both) | 2231 | 6.5 | 2.29 |
//! | before: magazines, chunks | 1764 | 2.3 | 0.61 |
//! | before: chunks, magazines | 907 | 6.6 | 2.31 |
//! | before: magazines, magazines | 453 | 1.9 | 0.58 |
//! | after: magazines, magazines (every pair) | 455 | 1.2 | 0.28 |
//!
//! Over the whole measured loop, per pair: 1384 to 499 instructions, 5.3 to 2.2 L1 misses,
//! 2.4 to 1.2 L2 misses (about one of each is the example's array). What is left of a pair's
//! misses is mostly its free's `held` bit (0.92 L1 and 0.26 L2 misses per pair: a random
//! range's bit in about 3 MB of bitmap, module `held`). dmabench (`--components iova
//! --threads 1 --granules 1 --sweep 1000`, ten runs of each version interleaved on the
//! shared 2-CPU EPYC at a load of 6 to 9): the fragmented p99 38 to 53 times the cached pair
//! before (median 44.5; p99 621 to 831 ns, median 696) and 14 to 23 times after (median 19.5;
//! 220 to 371 ns, median 311), the CPU time per pair 284 to 50 ns (medians): at the target's
//! bound of 20, within the noise. The example's
//! timed mode, three alternated runs each: a p99 of 2184 to 2548 ticks before, 962 to 1378
//! after. With the whole heap on transparent huge pages (glibc's tunables) the example's p99
//! now falls by about a tenth (four alternated runs; medians unchanged): the TLB misses left
//! are the `held` bitmap's, not the chunks'. The example built with `checked_frees: false`
//! (no `held` bits), four runs alternated with the checked one: a p99 of 988 to 1274 ticks
//! against 1430 to 2340, so the bit a random free clears is a third to a half of what is
//! left of the tail; dmabench's row measures the checked default. (dmabench itself run with
//! glibc's huge-page tunable, five alternated runs: no gain beyond the noise.)
//!
//! What sets the 99th percentile now, with every class cached: not this module. The
//! example's `events` mode classes each timed pair by the deepest layer it reached (from the
//! counters, read outside the timed span): of 200k pairs after the warm-up, 99.93% took only
//! the thread cache and the CPU's magazines, none exchanged with the depot, 0.06% reached
//! the range allocator (a magazine's miss or overflow, a few microseconds each: beyond the
//! 99.9th percentile), and those made 2 to 3% of the slowest 1%, the magazine-only pairs the
//! rest. The tree's search, its rebalancing and its node allocations are not in the p99, so
//! no change to them can move it; the bound above stands as stated. The magazine-only pairs'
//! tail is the free's `held` bit (module `held`): under callgrind (`plain` mode, a 32 KiB L1
//! and a 1 MiB L2 simulated, the machine's), every miss of the allocator in a pair is the
//! free's `fetch_and` of that bit, 0.98 L1 and 0.29 L2 misses per pair, everything else hits;
//! in the timed mode the pairs with checked frees have a p99 of 1014 to 1352 ticks (median
//! 260 to 390), without (`unchecked`, no `held` bits) 234 to 260 (median 182): the whole tail
//! beyond the median is that bit, a random line of about 3 MB of bitmap (2 bits per granule
//! of the about 13M granules the ranges span). Most of those bytes are the sparse bits of the
//! classes of 1 to 4 granules, whose frees are 6% of the pairs and 20 to 37% of the slowest
//! 1%; yet with sizes of 5..64 granules only, the p99 was no lower (1378 to 1716 ticks
//! against 1222 to 1378, three alternated runs each): the lines of the larger classes'
//! bits, about 400 KB, do not stay in the 1 MiB L2 beside everything else that passes
//! through it. A smaller bitmap is not done (`lib.rs`, "Not done"). (Until this count the timed mode read
//! its own 5 MB array of held ranges inside the timed span, a miss on every pair, which put
//! its median at 700 ticks instead of 260 to 390.)
//!
//! That bit is also why the row moves with the machine's load: another process scheduled in
//! between evicts the bitmap, and the pairs after it miss until it is back. The `cold` mode
//! writes 64 MiB between runs of 4000 pairs: 75 to 280 more of them land above the warm p99
//! than the warm 1% (five runs; the first 500 pairs at 4 to 6 times the warm median), and
//! at most 9 more without checked frees, whose pairs touch a few lines of magazines. At
//! dmabench's 9k to 37k latency samples per preemption (its JSON records the switches) that
//! is 0.2 to 3% of the samples; and the other CPU's processes share the last-level cache,
//! so under load the row's p50 rises with its p99 (the benches' harness documentation has
//! the figures), while the cached pair it is compared with, a handful of lines, does not.

use crate::chunk::Chunk;
use crate::chunkblock::ChunkBlock;
use crate::chunks::Chunks;
use crate::error::IovaError;
use crate::faults::{CHUNK_ALLOC, TREE_NODE};
use crate::gaptree::{Entry, Fit, GapTree};
use std::collections::BTreeMap;

/// Largest chunk: 2^18 granules (4096 words).
const MAX_CHUNK_SHIFT: u32 = 18;

/// Smallest chunk: 256 granules.
const MIN_CHUNK_SHIFT: u32 = 8;

/// Chunk granules for a space of `space` granules: at most a sixteenth of it (rounded down to
/// a power of two), within the bounds above, so a small space still has chunks to share.
fn chunk_granules(space: u64) -> u64 {
    let shift = space.ilog2().saturating_sub(4);
    1 << shift.clamp(MIN_CHUNK_SHIFT, MAX_CHUNK_SHIFT)
}

/// The alignment class `k` (alignment `2^k`) of a request the chunks serve: size-aligned and
/// at most 64 granules.
fn chunk_class(size: u64, aligned: bool) -> Option<u32> {
    (aligned && size <= 64).then(|| size.next_power_of_two().trailing_zeros())
}

/// What occupies a pfn found by [`RangeAllocator::find`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RangeKind {
    /// Handed out by an allocation (possibly now sitting in a cache).
    Allocated,
    /// Reserved, never handed out.
    Reserved,
}

/// An inclusive pfn range and what occupies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IovaRange {
    /// First pfn.
    pub lo: u64,
    /// Last pfn, inclusive.
    pub hi: u64,
    /// Allocated or reserved.
    pub kind: RangeKind,
}

/// Counters of the range allocator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RangeStats {
    /// Granules in allocated ranges (user-held or cached).
    pub allocated_granules: u64,
    /// Number of allocated ranges.
    pub allocated_ranges: u64,
    /// Granules in reservations inside the space.
    pub reserved_granules: u64,
    /// Free granules.
    pub free_granules: u64,
    /// Number of free ranges (a fragmentation measure).
    pub free_ranges: u64,
    /// Allocation requests that found no space.
    pub failures: u64,
}

/// A single-threaded top-down IOVA range allocator over `[start, end]`.
///
/// [`crate::IovaAllocator`] wraps one under a lock; it is public for direct use by callers
/// that need no caching or concurrency.
///
/// ```
/// use iova_cache::RangeAllocator;
/// let mut r = RangeAllocator::new(1, 1023).unwrap();
/// let a = r.alloc(4, 1023, true).unwrap();
/// assert_eq!(a, 1020, "top-down, size-aligned");
/// let b = r.alloc(3, 511, false).unwrap();
/// assert_eq!(b, 509, "below the inclusive limit");
/// r.free(a, 4).unwrap();
/// assert!(r.free(a, 4).is_err(), "double free is an error");
/// ```
#[derive(Debug, Clone)]
pub struct RangeAllocator {
    start: u64,
    end: u64,
    /// Free ranges and live allocations (each tagged: managed by the cache path or not); a
    /// chunk is one allocation entry (tagged uncached) spanning it.
    tree: GapTree,
    /// The small size-aligned allocations, in bitmaps.
    chunks: Chunks,
    /// Granules per chunk.
    chunk_granules: u64,
    /// The tree's highest chunk-aligned free block in the whole space, searched again only
    /// after the tree changed.
    highest_block: ChunkBlock,
    /// The same below the last limit below the end of the space (a 32-bit device's).
    highest_block_below_limit: ChunkBlock,
    reserved: BTreeMap<u64, u64>,
    stats: RangeStats,
}

impl RangeAllocator {
    /// An allocator whose whole inclusive space `[start, end]` is free (`end < u64::MAX`).
    ///
    /// ```
    /// use iova_cache::{IovaError, RangeAllocator};
    /// let r = RangeAllocator::new(16, 1023).unwrap();
    /// assert_eq!((r.start(), r.end(), r.stats().free_granules), (16, 1023, 1008));
    /// assert_eq!(RangeAllocator::new(5, 4).unwrap_err(), IovaError::InvalidRange { lo: 5, hi: 4 });
    /// ```
    pub fn new(start: u64, end: u64) -> Result<Self, IovaError> {
        if start > end || end == u64::MAX {
            return Err(IovaError::InvalidRange { lo: start, hi: end });
        }
        let mut tree = GapTree::new();
        let chunks = Chunks::try_new();
        let Some(chunks) = chunks.filter(|_| tree.try_reserve(1)) else {
            return Err(IovaError::OutOfMemory {
                size: end - start + 1,
            });
        };
        tree.insert(start, end - start + 1);
        let stats = RangeStats {
            free_granules: end - start + 1,
            free_ranges: 1,
            ..Default::default()
        };
        Ok(Self {
            start,
            end,
            tree,
            chunks,
            chunk_granules: chunk_granules(end - start + 1),
            highest_block: ChunkBlock::UNKNOWN,
            highest_block_below_limit: ChunkBlock::UNKNOWN,
            reserved: BTreeMap::new(),
            stats,
        })
    }

    /// First pfn of the space.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last pfn of the space, inclusive.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Check a request without allocating: the errors every allocation path shares.
    pub(crate) fn check_request(&self, size: u64, limit: u64) -> Result<(), IovaError> {
        if size == 0 {
            return Err(IovaError::ZeroSize);
        }
        let space = self.end - self.start + 1;
        if size > space {
            return Err(IovaError::TooLarge { size, space });
        }
        if limit < self.start {
            return Err(IovaError::LimitBelowStart {
                limit,
                start: self.start,
            });
        }
        Ok(())
    }

    /// Allocate `size` granules ending at or below the inclusive `limit`; with `aligned`, the
    /// start is a multiple of `size` rounded up to a power of two. The address is the highest
    /// that fits in the tree or, for size-aligned requests of up to 64 granules, in the chunks
    /// or a new chunk at the highest chunk-aligned free block, whichever is higher (see the
    /// module documentation); `NoSpace` only when no fitting gap exists at all.
    ///
    /// ```
    /// let mut r = iova_cache::RangeAllocator::new(0, 99).unwrap();
    /// assert_eq!(r.alloc(10, 99, false), Ok(90));
    /// assert_eq!(r.alloc(5, 99, true), Ok(80), "8-aligned below 90");
    /// ```
    pub fn alloc(&mut self, size: u64, limit: u64, aligned: bool) -> Result<u64, IovaError> {
        self.alloc_tagged(size, limit, aligned, false)
    }

    /// [`alloc`](Self::alloc), tagging the range as belonging to the cached path (`cached`)
    /// so that an uncached free cannot pull it out from under a magazine.
    pub(crate) fn alloc_tagged(
        &mut self,
        size: u64,
        limit: u64,
        aligned: bool,
        cached: bool,
    ) -> Result<u64, IovaError> {
        self.check_request(size, limit)?;
        let limit = limit.min(self.end);
        let class = chunk_class(size, aligned);
        if let Some(class) = class {
            if let Some(pfn) = self.alloc_in_chunks(size, class, limit, cached)? {
                return Ok(pfn);
            }
        }
        let align = if aligned {
            size.checked_next_power_of_two()
        } else {
            Some(1)
        };
        let mut fit = align.and_then(|align| self.tree.highest_fit(size, align, limit));
        if let (None, Some(align), None) = (fit, align, class) {
            // The chunks' free space is out of this request's reach; give it back to the tree
            // so that the request fails only where no aligned gap exists at all.
            if self.dissolve_chunks_below(limit, size)? {
                fit = self.tree.highest_fit(size, align, limit);
            }
        }
        let Some(fit) = fit else {
            self.stats.failures += 1;
            return Err(IovaError::NoSpace { size, limit });
        };
        // Carving adds at most two entries; get their memory before changing anything.
        if TREE_NODE.fail() || !self.tree.try_reserve(2) {
            return Err(IovaError::OutOfMemory { size });
        }
        self.tree.carve(fit, size, cached);
        self.count_alloc(size);
        Ok(fit.pfn)
    }

    /// A small size-aligned request served by the chunks: the higher of the highest fit in a
    /// chunk and the highest fit of a new chunk at the highest chunk-aligned free block of the
    /// tree, both ending at or below `limit`. `Ok(None)` when neither exists (the tree may
    /// still hold a smaller gap).
    fn alloc_in_chunks(
        &mut self,
        size: u64,
        class: u32,
        limit: u64,
        cached: bool,
    ) -> Result<Option<u64>, IovaError> {
        let (i, pfn) = match self.chunks.highest_fit(size, class, limit) {
            // Usually no free block of the tree lies above the fit: no search.
            Some((i, pfn)) if self.no_block_above(pfn, limit) => (i, pfn),
            in_chunk => match self.alloc_in_new_chunk(in_chunk, size, class, limit)? {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        self.chunks.alloc(i, pfn, size, cached);
        self.count_alloc(size);
        Ok(Some(pfn))
    }

    /// The place of a small request in a new chunk at the highest chunk-aligned free block of
    /// the tree ending at or below `limit`, if that lies above the fit `in_chunk` found in the
    /// chunks, else (or without memory for the chunk) `in_chunk`: `(chunk index, pfn)`. Out of
    /// line: the tree changes rarely.
    #[inline(never)]
    fn alloc_in_new_chunk(
        &mut self,
        in_chunk: Option<(usize, u64)>,
        size: u64,
        class: u32,
        limit: u64,
    ) -> Result<Option<(usize, u64)>, IovaError> {
        let floor = in_chunk.map(|(_, pfn)| pfn);
        let Some(block) = self.chunk_block_above(floor, limit) else {
            return Ok(in_chunk);
        };
        let i = match self.new_chunk(block, size) {
            Ok(i) => i,
            // Without memory for a new chunk, the lower fit still serves.
            Err(_) if in_chunk.is_some() => return Ok(in_chunk),
            Err(e) => return Err(e),
        };
        let base = self.chunks.get(i).base();
        let at = self.chunks.get(i).highest_fit(size, class, limit - base);
        let at = at.expect("an empty chunk below the limit fits every small request");
        Ok(Some((i, base + at)))
    }

    /// The highest chunk-aligned free block of the tree that ends at or below `limit` and lies
    /// above `floor` (a chunk's fit; any block without one), remembered until the tree changes.
    fn chunk_block_above(&mut self, floor: Option<u64>, limit: u64) -> Option<Fit> {
        let granules = self.chunk_granules;
        let memo = if limit < self.end {
            &mut self.highest_block_below_limit
        } else {
            &mut self.highest_block
        };
        let block = memo.get(&self.tree, granules, limit)?;
        // A block is disjoint from every chunk: above the fit means above its chunk.
        floor
            .map_or(true, |floor| block.pfn > floor)
            .then_some(block)
    }

    /// Whether the remembered highest chunk-aligned free block below `limit` is the tree's and
    /// lies below `pfn` (`false` when none is remembered for `limit`).
    #[inline]
    fn no_block_above(&self, pfn: u64, limit: u64) -> bool {
        let version = self.tree.version();
        if limit < self.end {
            let memo = &self.highest_block_below_limit;
            memo.limit() == limit && memo.is_below(pfn, version)
        } else {
            // Searched below the end of the space only.
            self.highest_block.is_below(pfn, version)
        }
    }

    /// Make the free block `block` of the tree a chunk (its metadata, and the tree's room to
    /// carve its entry, got first: on failure nothing changes); its index.
    fn new_chunk(&mut self, block: Fit, size: u64) -> Result<usize, IovaError> {
        let oom = IovaError::OutOfMemory { size };
        if CHUNK_ALLOC.fail() || !self.chunks.try_reserve() {
            return Err(oom);
        }
        let chunk = Chunk::try_new(block.pfn, self.chunk_granules).ok_or(oom)?;
        if TREE_NODE.fail() || !self.tree.try_reserve(2) {
            return Err(oom);
        }
        self.tree.carve(block, self.chunk_granules, false);
        Ok(self.chunks.insert(chunk))
    }

    /// Give every chunk below `limit` with free space back to the tree (for a request of `size`
    /// that found no fit in the tree); whether there was one.
    fn dissolve_chunks_below(&mut self, limit: u64, size: u64) -> Result<bool, IovaError> {
        let mut any = false;
        for i in self.chunks.overlapping(0, limit) {
            let c = self.chunks.get(i);
            if c.used_granules() < c.granules() {
                self.dissolve(i, size)?;
                any = true;
            }
        }
        Ok(any)
    }

    /// Turn chunk `i` back into tree entries: its span becomes free and each of its
    /// allocations is carved again with its tag. The tree's room is got first, so a failure
    /// (an `OutOfMemory` for a request of `size`) changes nothing.
    fn dissolve(&mut self, i: usize, size: u64) -> Result<(), IovaError> {
        let live = self.chunks.get(i).live() as usize;
        if TREE_NODE.fail() || !self.tree.try_reserve_bulk(2 * live) {
            return Err(IovaError::OutOfMemory { size });
        }
        let chunk = self.chunks.remove(i);
        self.release_chunk_entry(chunk.base());
        for (pfn, len, tag) in chunk.allocations() {
            let range = self
                .tree
                .at_or_below(pfn)
                .expect("the chunk's span is free");
            self.tree.carve(Fit { range, pfn }, len, tag);
        }
        Ok(())
    }

    /// Free the tree entry of the chunk at `base` (taken out of the chunks already).
    fn release_chunk_entry(&mut self, base: u64) {
        let e = self.tree.at_or_below(base).expect("a chunk's entry");
        self.tree.release(e);
    }

    fn count_alloc(&mut self, size: u64) {
        self.stats.allocated_granules += size;
        self.stats.allocated_ranges += 1;
        self.stats.free_granules -= size;
    }

    /// Free the allocation of `size` granules starting at `pfn`; it must match an
    /// allocation exactly, so a double free or a wrong size is an error that changes nothing.
    pub fn free(&mut self, pfn: u64, size: u64) -> Result<(), IovaError> {
        self.free_tagged(pfn, size, false)
    }

    /// [`free`](Self::free) of a range allocated with the same `cached` tag; a range of the
    /// other family counts as not allocated.
    pub(crate) fn free_tagged(
        &mut self,
        pfn: u64,
        size: u64,
        cached: bool,
    ) -> Result<(), IovaError> {
        if let Some(i) = self.chunks.containing(pfn) {
            return self.free_in_chunk(i, pfn, size, cached);
        }
        // One descent: the allocation's entry, whose neighbours are the slots next to it.
        let e = self.allocation_at(pfn).filter(|e| e.live == Some(cached));
        let Some(e) = e else {
            return Err(IovaError::NotAllocated { pfn });
        };
        if e.len != size {
            return Err(IovaError::SizeMismatch {
                pfn,
                allocated: e.len,
                freed: size,
            });
        }
        self.tree.release(e);
        self.count_free(size);
        Ok(())
    }

    /// [`free_tagged`](Self::free_tagged) of a pfn inside chunk `i`; if that leaves it empty
    /// and another chunk is empty too, the other goes back to the tree (its entry freed, which
    /// allocates nothing).
    fn free_in_chunk(
        &mut self,
        i: usize,
        pfn: u64,
        size: u64,
        cached: bool,
    ) -> Result<(), IovaError> {
        let chunk = self.chunks.get(i);
        let found = chunk.allocation_at(pfn - chunk.base());
        let Some((allocated, _)) = found.filter(|&(_, tag)| tag == cached) else {
            return Err(IovaError::NotAllocated { pfn });
        };
        if allocated != size {
            return Err(IovaError::SizeMismatch {
                pfn,
                allocated,
                freed: size,
            });
        }
        self.chunks.free(i, pfn, size);
        if let Some(surplus) = self.chunks.other_empty(i) {
            let chunk = self.chunks.remove(surplus);
            self.release_chunk_entry(chunk.base());
        }
        self.count_free(size);
        Ok(())
    }

    fn count_free(&mut self, size: u64) {
        self.stats.allocated_granules -= size;
        self.stats.allocated_ranges -= 1;
        self.stats.free_granules += size;
    }

    /// The allocation starting at `pfn`, if any.
    fn allocation_at(&self, pfn: u64) -> Option<Entry> {
        let e = self.tree.at_or_below(pfn)?;
        (e.start == pfn && e.live.is_some()).then_some(e)
    }

    /// Reserve the inclusive range `[lo, hi]` so it is never handed out (MSI windows, holes).
    /// Parts outside the space are ignored; overlapping reservations merge. A reservation
    /// overlapping a live allocation is refused and changes nothing.
    ///
    /// ```
    /// use iova_cache::{RangeAllocator, RangeKind};
    /// let mut r = RangeAllocator::new(0, 99).unwrap();
    /// r.reserve(90, 200).unwrap();
    /// assert_eq!(r.alloc(10, 99, false), Ok(80));
    /// assert_eq!(r.find(95).unwrap().kind, RangeKind::Reserved);
    /// ```
    pub fn reserve(&mut self, lo: u64, hi: u64) -> Result<(), IovaError> {
        if lo > hi {
            return Err(IovaError::InvalidRange { lo, hi });
        }
        let (lo, hi) = (lo.max(self.start), hi.min(self.end));
        if lo > hi {
            return Ok(());
        }
        // Reservations lie in the tree's ranges only: the chunks they overlap go back to it.
        for i in self.chunks.overlapping(lo, hi) {
            self.dissolve(i, hi - lo + 1)?;
        }
        // Refuse if an allocation overlaps: walk down the entries overlapping [lo, hi] (the
        // free ones among them are carved below anyway).
        let mut below = self.tree.at_or_below(hi);
        while let Some(e) = below.filter(|e| e.start + (e.len - 1) >= lo) {
            if e.live.is_some() {
                return Err(IovaError::ReserveOverlapsAllocation {
                    pfn: e.start,
                    size: e.len,
                });
            }
            below = self.tree.before(e);
        }
        // Carving splits at most one free range in two.
        if TREE_NODE.fail() || !self.tree.try_reserve(1) {
            return Err(IovaError::OutOfMemory { size: hi - lo + 1 });
        }
        // Carve every free range overlapping [lo, hi] (no allocation does), from the top down.
        while let Some(r) = self.tree.at_or_below(hi) {
            let (s, e) = (r.start, r.start + r.len - 1);
            if e < lo {
                break;
            }
            // Keep the part below in place; only a range sticking out on both sides adds one.
            match (s < lo, e > hi) {
                (false, false) => self.tree.remove(r),
                (false, true) => self.tree.adjust(r, hi + 1, e - hi),
                (true, above) => {
                    self.tree.adjust(r, s, lo - s);
                    if above {
                        self.tree.insert(hi + 1, e - hi);
                    }
                }
            }
            let carved = e.min(hi) - s.max(lo) + 1;
            self.stats.free_granules -= carved;
            self.stats.reserved_granules += carved;
            if s < lo {
                break;
            }
        }
        // Merge with overlapping or adjacent reservations.
        let (mut new_lo, mut new_hi) = (lo, hi);
        let touching: Vec<(u64, u64)> = self
            .reserved
            .range(..=hi.saturating_add(1))
            .rev()
            .take_while(|&(_, &e)| e.saturating_add(1) >= lo)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.reserved.remove(&s);
            new_lo = new_lo.min(s);
            new_hi = new_hi.max(e);
        }
        self.reserved.insert(new_lo, new_hi);
        Ok(())
    }

    /// The allocated or reserved range containing `pfn`, if any.
    pub fn find(&self, pfn: u64) -> Option<IovaRange> {
        let allocated = |lo: u64, len: u64| IovaRange {
            lo,
            hi: lo + (len - 1),
            kind: RangeKind::Allocated,
        };
        // No reservation overlaps a chunk.
        if let Some(i) = self.chunks.containing(pfn) {
            let c = self.chunks.get(i);
            let (at, len) = c.allocation_covering(pfn - c.base())?;
            return Some(allocated(c.base() + at, len));
        }
        if let Some(e) = self.tree.at_or_below(pfn) {
            if e.live.is_some() && pfn - e.start < e.len {
                return Some(allocated(e.start, e.len));
            }
        }
        let (&s, &e) = self.reserved.range(..=pfn).next_back()?;
        (pfn <= e).then_some(IovaRange {
            lo: s,
            hi: e,
            kind: RangeKind::Reserved,
        })
    }

    /// Allocated ranges as `(start, size)` in address order.
    pub fn allocated(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut all: Vec<(u64, u64)> = self
            .tree
            .allocations()
            .into_iter()
            .filter(|&(pfn, _)| !self.is_chunk_entry(pfn))
            .collect();
        all.extend(
            self.chunks
                .iter()
                .flat_map(|c| c.allocations().map(|(p, s, _)| (p, s))),
        );
        all.sort_unstable();
        all.into_iter()
    }

    /// Whether the tree's allocation entry at `pfn` is a chunk's.
    fn is_chunk_entry(&self, pfn: u64) -> bool {
        self.chunks
            .containing(pfn)
            .is_some_and(|i| self.chunks.get(i).base() == pfn)
    }

    /// Free ranges as `(start, size)` in address order: the tree's and the chunks' free runs,
    /// merged where they touch.
    ///
    /// ```
    /// let mut r = iova_cache::RangeAllocator::new(0, 99).unwrap();
    /// assert_eq!(r.alloc(10, 49, false), Ok(40));
    /// assert_eq!(r.allocated().collect::<Vec<_>>(), [(40, 10)]);
    /// assert_eq!(r.free_ranges(), [(0, 40), (50, 50)]);
    /// r.free(40, 10).unwrap();
    /// assert_eq!(r.free_ranges(), [(0, 100)], "neighbours merge again");
    /// ```
    pub fn free_ranges(&self) -> Vec<(u64, u64)> {
        let mut pieces = self.tree.ranges();
        pieces.extend(self.chunks.iter().flat_map(|c| c.free_ranges()));
        pieces.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(pieces.len());
        for (start, len) in pieces {
            match merged.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => merged.push((start, len)),
            }
        }
        merged
    }

    /// Counters.
    ///
    /// ```
    /// use iova_cache::{RangeAllocator, RangeStats};
    /// let mut r = RangeAllocator::new(0, 99).unwrap();
    /// r.reserve(0, 9).unwrap();
    /// r.alloc(10, 49, false).unwrap();
    /// assert!(r.alloc(100, 99, false).is_err());
    /// let expect = RangeStats {
    ///     allocated_granules: 10,
    ///     allocated_ranges: 1,
    ///     reserved_granules: 10,
    ///     free_granules: 80,
    ///     free_ranges: 2,
    ///     failures: 1,
    /// };
    /// assert_eq!(r.stats(), expect);
    /// ```
    pub fn stats(&self) -> RangeStats {
        let chunk_runs: u64 = self.chunks.iter().map(|c| c.free_runs()).sum();
        RangeStats {
            free_ranges: self.tree.len() as u64 + chunk_runs,
            ..self.stats
        }
    }

    /// Verify the internal invariants: free, allocated and reserved ranges are disjoint,
    /// inside the space, cover it exactly, free neighbours are merged, and the counters and
    /// tree augmentation agree. A diagnostic for tests; `Err` names the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.tree.check()?;
        self.chunks.check()?;
        // Pieces: 'f' a free range of the tree, 'a' an allocation, 'c' a chunk's free run,
        // 'r' a reservation; each chunk's entry is replaced by its allocations and free runs.
        let mut pieces: Vec<(u64, u64, char)> = Vec::new();
        for e in self.tree.entries() {
            let last = e.start + (e.len - 1);
            if e.live.is_none() {
                pieces.push((e.start, last, 'f'));
            } else if let Some(i) = self.chunks.containing(e.start) {
                let c = self.chunks.get(i);
                if (c.base(), c.granules()) != (e.start, e.len) || e.live != Some(false) {
                    return Err(format!("chunk {:#x} and its tree entry disagree", c.base()));
                }
            } else {
                pieces.push((e.start, last, 'a'));
            }
        }
        for c in self.chunks.iter() {
            pieces.extend(c.allocations().map(|(p, s, _)| (p, p + s - 1, 'a')));
            pieces.extend(
                c.free_ranges()
                    .into_iter()
                    .map(|(p, l)| (p, p + l - 1, 'c')),
            );
        }
        pieces.extend(self.reserved.iter().filter_map(|(&s, &e)| {
            let (s, e) = (s.max(self.start), e.min(self.end));
            (s <= e).then_some((s, e, 'r'))
        }));
        pieces.sort_unstable();
        let mut next = self.start;
        let mut prev_kind = ' ';
        for &(s, e, k) in &pieces {
            if s != next {
                return Err(format!(
                    "range [{s:#x}, {e:#x}] ({k}) does not start at {next:#x}"
                ));
            }
            if k == 'f' && prev_kind == 'f' {
                return Err(format!("free ranges not merged at {s:#x}"));
            }
            next = e + 1;
            prev_kind = k;
        }
        if next != self.end + 1 {
            return Err(format!(
                "ranges end at {next:#x}, space ends at {:#x}",
                self.end
            ));
        }
        let sum = |kinds: &[char]| -> u64 {
            let of_kind = pieces.iter().filter(|p| kinds.contains(&p.2));
            of_kind.map(|&(s, e, _)| e - s + 1).sum()
        };
        let live = pieces.iter().filter(|p| p.2 == 'a').count() as u64;
        if sum(&['f', 'c']) != self.stats.free_granules
            || sum(&['a']) != self.stats.allocated_granules
        {
            return Err("granule counters disagree with the ranges".into());
        }
        if live != self.stats.allocated_ranges {
            return Err("allocation counter disagrees with the allocations".into());
        }
        let in_chunks: u64 = self.chunks.iter().map(|c| c.live()).sum();
        if self.tree.live() as u64 != live - in_chunks + self.chunks.len() as u64 {
            return Err("the tree's allocation count disagrees with its entries".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A request, free, reservation or lookup of [`chunks_and_tree_match_a_model`].
    #[derive(Debug, Clone)]
    enum Op {
        Alloc {
            size: u64,
            limit: u64,
            aligned: bool,
        },
        Free {
            pick: usize,
            wrong_size: bool,
            cached: bool,
        },
        Reserve {
            lo: u64,
            len: u64,
        },
        Find {
            pfn: u64,
        },
    }

    /// Space of the model test: 16 chunks of 1024 granules.
    const END: u64 = (1 << 14) - 1;

    fn op() -> impl Strategy<Value = Op> {
        // Mostly small requests (the chunks'), some large ones (the tree's, and the ones
        // that only the chunks' free space can hold).
        let size = prop_oneof![8 => 1u64..=64, 1 => 65u64..4000];
        prop_oneof![
            6 => (size, END / 2..=END + 8, any::<bool>()).prop_map(|(size, limit, aligned)| Op::Alloc { size, limit, aligned }),
            5 => (any::<usize>(), proptest::bool::weighted(0.05), proptest::bool::weighted(0.05)).prop_map(|(pick, wrong_size, cached)| Op::Free { pick, wrong_size, cached }),
            1 => (0..=END, 1u64..80).prop_map(|(lo, len)| Op::Reserve { lo, len }),
            1 => (0..=END).prop_map(|pfn| Op::Find { pfn }),
        ]
    }

    /// Whether `[start, limit]` holds an `align`-aligned run of `size` granules outside
    /// every `busy` inclusive range, by walking the gaps.
    fn gap_fits(mut busy: Vec<(u64, u64)>, limit: u64, size: u64, align: u64) -> bool {
        busy.push((limit + 1, limit + 1));
        busy.sort_unstable();
        let mut next = 0u64;
        busy.iter().any(|&(lo, hi)| {
            let first = next.next_multiple_of(align);
            let fits = first + size <= lo.min(limit + 1);
            next = next.max(hi + 1);
            fits
        })
    }

    /// Whether a naturally aligned block of `granules` above `pfn` and ending at or below
    /// `limit` lies outside every `busy` inclusive range.
    fn free_block_above(busy: &[(u64, u64)], pfn: u64, limit: u64, granules: u64) -> bool {
        let first = (pfn / granules + 1) * granules;
        let blocks = (first..).step_by(granules as usize);
        let mut below_limit = blocks.take_while(|&b| b + (granules - 1) <= limit);
        below_limit.any(|b| {
            busy.iter()
                .all(|&(lo, hi)| hi < b || b + (granules - 1) < lo)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random requests, frees, reservations and lookups: every allocation inside the
        /// limit, aligned and disjoint from the live and reserved ranges, a small
        /// size-aligned one never below a free chunk-sized block that ends within its limit; `NoSpace` exactly
        /// when no aligned gap exists; frees, lookups and counters exact; invariants after
        /// every step.
        #[test]
        #[cfg_attr(miri, ignore)] // proptest persists failures through the file system
        fn chunks_and_tree_match_a_model(ops in proptest::collection::vec(op(), 1..600)) {
            let mut r = RangeAllocator::new(0, END).unwrap();
            let mut live: BTreeMap<u64, u64> = BTreeMap::new();
            let mut reserved: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                let busy = || -> Vec<(u64, u64)> {
                    let held = live.iter().map(|(&p, &s)| (p, p + s - 1));
                    held.chain(reserved.iter().copied()).collect()
                };
                match op {
                    Op::Alloc { size, limit, aligned } => {
                        let align = if aligned { size.next_power_of_two() } else { 1 };
                        let could = gap_fits(busy(), limit.min(END), size, align);
                        match r.alloc(size, limit, aligned) {
                            Ok(pfn) => {
                                prop_assert!(pfn % align == 0 && pfn + size - 1 <= limit.min(END));
                                prop_assert!(busy().iter().all(|&(lo, hi)| hi < pfn || pfn + size - 1 < lo));
                                if chunk_class(size, aligned).is_some() {
                                    let above = free_block_above(&busy(), pfn, limit.min(END), chunk_granules(END + 1));
                                    prop_assert!(!above, "{pfn:#x} taken below a free chunk-sized block");
                                }
                                live.insert(pfn, size);
                            }
                            Err(IovaError::NoSpace { .. }) => prop_assert!(!could, "false NoSpace"),
                            Err(e) => prop_assert!(false, "{e}"),
                        }
                    }
                    Op::Free { pick, wrong_size, cached } => {
                        let Some((&pfn, &size)) = live.iter().nth(pick % live.len().max(1)) else {
                            continue;
                        };
                        let freed = if wrong_size { size + 1 } else { size };
                        let res = r.free_tagged(pfn, freed, cached);
                        if cached {
                            prop_assert_eq!(res, Err(IovaError::NotAllocated { pfn }));
                        } else if wrong_size {
                            prop_assert_eq!(res, Err(IovaError::SizeMismatch { pfn, allocated: size, freed }));
                        } else {
                            prop_assert_eq!(res, Ok(()));
                            prop_assert_eq!(r.free(pfn, size), Err(IovaError::NotAllocated { pfn }));
                            live.remove(&pfn);
                        }
                    }
                    Op::Reserve { lo, len } => {
                        let hi = lo + len - 1;
                        let over = live.range(..=hi).next_back().filter(|&(&p, &s)| p + s > lo);
                        match over {
                            Some((&pfn, &size)) => prop_assert_eq!(r.reserve(lo, hi), Err(IovaError::ReserveOverlapsAllocation { pfn, size })),
                            None => {
                                prop_assert_eq!(r.reserve(lo, hi), Ok(()));
                                reserved.push((lo, hi.min(END)));
                            }
                        }
                    }
                    Op::Find { pfn } => {
                        let held = live.range(..=pfn).next_back().filter(|&(&p, &s)| pfn < p + s);
                        let found = r.find(pfn);
                        match held {
                            Some((&p, &s)) => prop_assert_eq!(found, Some(IovaRange { lo: p, hi: p + s - 1, kind: RangeKind::Allocated })),
                            None => {
                                let in_reserved = reserved.iter().any(|&(lo, hi)| lo <= pfn && pfn <= hi);
                                prop_assert_eq!(found.map(|f| f.kind), in_reserved.then_some(RangeKind::Reserved));
                            }
                        }
                    }
                }
                prop_assert_eq!(r.check_invariants(), Ok(()));
                prop_assert_eq!(r.allocated().collect::<Vec<_>>(), live.iter().map(|(&p, &s)| (p, s)).collect::<Vec<_>>());
                let stats = r.stats();
                prop_assert_eq!(stats.allocated_granules, live.values().sum::<u64>());
                let free: u64 = r.free_ranges().iter().map(|f| f.1).sum();
                prop_assert_eq!(free, stats.free_granules);
            }
            for (pfn, size) in std::mem::take(&mut live) {
                r.free(pfn, size).unwrap();
            }
            prop_assert_eq!(r.check_invariants(), Ok(()));
            prop_assert!(r.chunks.iter().count() <= 1, "at most the spare chunk stays");
        }
    }

    #[test]
    fn one_empty_chunk_stays_as_a_spare() {
        let mut r = RangeAllocator::new(0, (1 << 14) - 1).unwrap();
        let bases = |r: &RangeAllocator| r.chunks.iter().map(|c| c.base()).collect::<Vec<_>>();
        for _ in 0..3 {
            let pfn = r.alloc(1, u64::MAX, true).unwrap();
            r.free(pfn, 1).unwrap();
            assert_eq!(bases(&r), [15 << 10], "the same chunk, kept empty");
        }
        // A second chunk: the first is full below the limit of the second request.
        let full: Vec<u64> = (0..16)
            .map(|_| r.alloc(64, u64::MAX, true).unwrap())
            .collect();
        let other = r.alloc(64, (15 << 10) - 1, true).unwrap();
        assert_eq!(bases(&r), [14 << 10, 15 << 10]);
        r.free(other, 64).unwrap();
        assert_eq!(bases(&r), [14 << 10, 15 << 10], "the only empty one stays");
        for pfn in full {
            r.free(pfn, 64).unwrap();
        }
        assert_eq!(
            bases(&r),
            [15 << 10],
            "the older empty chunk goes back, the one emptied last stays"
        );
        r.check_invariants().unwrap();
        assert_eq!(
            r.free_ranges(),
            [(0, 1 << 14)],
            "the spare's space is free space"
        );
        assert_eq!(
            r.alloc(1 << 14, u64::MAX, false),
            Ok(0),
            "and a large request gets it"
        );
    }

    #[test]
    fn a_wide_request_takes_a_new_chunk_above_rather_than_a_low_one() {
        let mut r = RangeAllocator::new(0, (1 << 14) - 1).unwrap();
        let bases = |r: &RangeAllocator| r.chunks.iter().map(|c| c.base()).collect::<Vec<_>>();
        let low_limit = (4 << 10) - 1;
        let low = r.alloc(1, low_limit, true).unwrap();
        assert_eq!((low, bases(&r)), (low_limit, vec![3 << 10]));
        r.free(low, 1).unwrap();
        // A wide request takes a new chunk at the top, not the empty low one, which goes back
        // when the top one empties: a loop of one allocation and free keeps the top one.
        let top = (16 << 10) - 1;
        assert_eq!(r.alloc(1, u64::MAX, true), Ok(top));
        assert_eq!(bases(&r), [3 << 10, 15 << 10]);
        for _ in 0..3 {
            r.free(top, 1).unwrap();
            assert_eq!(bases(&r), [15 << 10], "the low spare went back");
            assert_eq!(r.alloc(1, u64::MAX, true), Ok(top));
        }
        r.free(top, 1).unwrap();
        let low = r.alloc(1, low_limit, true).unwrap();
        assert_eq!(low, low_limit);
        // Wide requests fill the chunks from the top down before they touch the low one:
        // 12 chunks above it, 16 requests of 64 granules each.
        for n in 0..12 * 16 {
            let pfn = r.alloc(64, u64::MAX, true).unwrap();
            assert_eq!(pfn, (16 << 10) - 64 * (n + 1), "request {n}");
        }
        // No chunk-sized block above the low chunk is left: its own space, then the blocks
        // below it.
        assert_eq!(r.alloc(64, u64::MAX, true), Ok(low_limit + 1 - 128));
        assert_eq!(bases(&r).len(), 13);
        r.check_invariants().unwrap();
    }

    #[test]
    fn a_request_only_a_chunks_free_space_completes_dissolves_it() {
        let mut r = RangeAllocator::new(0, (1 << 14) - 1).unwrap();
        let singles: Vec<u64> = (0..512)
            .map(|_| r.alloc(1, u64::MAX, true).unwrap())
            .collect();
        assert_eq!(singles[511], 15 << 10 | 512, "the chunk's top half");
        // Only the tree's range below the chunk and the chunk's free half together hold it.
        let size = (15 << 10) + 512;
        assert_eq!(r.alloc(size, u64::MAX, false), Ok(0));
        assert_eq!(
            r.chunks.iter().count(),
            0,
            "the chunk went back to the tree"
        );
        r.check_invariants().unwrap();
        for pfn in singles {
            r.free(pfn, 1).unwrap();
        }
        r.free(0, size).unwrap();
        assert_eq!(r.free_ranges(), [(0, 1 << 14)]);
    }

    #[test]
    fn errors_leave_the_allocator_usable() {
        let mut r = RangeAllocator::new(10, 20).unwrap();
        assert_eq!(r.alloc(0, 20, false), Err(IovaError::ZeroSize));
        assert_eq!(
            r.alloc(12, 20, false),
            Err(IovaError::TooLarge {
                size: 12,
                space: 11
            })
        );
        assert_eq!(
            r.alloc(1, 9, false),
            Err(IovaError::LimitBelowStart {
                limit: 9,
                start: 10
            })
        );
        let a = r.alloc(4, 20, true).unwrap();
        assert_eq!(a, 16);
        assert_eq!(
            r.free(a, 2),
            Err(IovaError::SizeMismatch {
                pfn: 16,
                allocated: 4,
                freed: 2
            })
        );
        assert_eq!(r.free(17, 1), Err(IovaError::NotAllocated { pfn: 17 }));
        assert_eq!(
            r.reserve(5, 3),
            Err(IovaError::InvalidRange { lo: 5, hi: 3 })
        );
        assert_eq!(
            r.reserve(18, 30),
            Err(IovaError::ReserveOverlapsAllocation { pfn: 16, size: 4 })
        );
        r.check_invariants().unwrap();
        r.free(a, 4).unwrap();
        assert_eq!(r.free(a, 4), Err(IovaError::NotAllocated { pfn: 16 }));
        r.check_invariants().unwrap();
        assert_eq!(
            r.alloc(11, 20, false),
            Ok(10),
            "the whole space is one range again"
        );
    }

    #[test]
    fn frees_merge_with_their_neighbours_and_never_allocate() {
        let mut r = RangeAllocator::new(0, 63).unwrap();
        let all: Vec<u64> = (0..4).map(|_| r.alloc(16, 63, true).unwrap()).collect();
        assert_eq!(all, [48, 32, 16, 0]);
        assert!(r.free_ranges().is_empty());
        // Every free runs with the tree's node site armed: none of them asks for memory.
        let free = |r: &mut RangeAllocator, pfn| {
            let (res, used) = dma_sync::fault::armed(&TREE_NODE, 1, || r.free(pfn, 16));
            assert_eq!((res, used), (Ok(()), 0));
            r.check_invariants().unwrap();
            r.free_ranges()
        };
        assert_eq!(free(&mut r, 48), [(48, 16)], "no free neighbour: in place");
        assert_eq!(free(&mut r, 16), [(16, 16), (48, 16)]);
        assert_eq!(free(&mut r, 32), [(16, 48)], "both neighbours merge");
        assert_eq!(free(&mut r, 0), [(0, 64)], "the neighbour above grows");
        assert_eq!(r.alloc(32, 63, true), Ok(32));
        assert_eq!(r.alloc(16, 63, true), Ok(16));
        assert_eq!(free(&mut r, 16), [(0, 32)], "the neighbour below grows");
        assert_eq!(
            r.reserve(40, 40),
            Err(IovaError::ReserveOverlapsAllocation { pfn: 32, size: 32 })
        );
        assert_eq!(r.find(63).map(|f| (f.lo, f.hi)), Some((32, 63)));
        assert_eq!(r.allocated().collect::<Vec<_>>(), [(32, 32)]);
    }

    #[test]
    fn reservations_merge_and_split_free_ranges() {
        let mut r = RangeAllocator::new(0, 99).unwrap();
        r.reserve(10, 19).unwrap();
        r.reserve(20, 29).unwrap();
        r.reserve(15, 40).unwrap();
        r.reserve(200, 300).unwrap();
        r.check_invariants().unwrap();
        assert_eq!(
            r.find(12),
            Some(IovaRange {
                lo: 10,
                hi: 40,
                kind: RangeKind::Reserved
            })
        );
        assert_eq!(r.free_ranges(), vec![(0, 10), (41, 59)]);
        assert_eq!(r.stats().reserved_granules, 31);
        assert_eq!(r.alloc(59, 99, false), Ok(41));
        assert_eq!(
            r.alloc(11, 99, false),
            Err(IovaError::NoSpace {
                size: 11,
                limit: 99
            })
        );
        assert_eq!(r.alloc(10, 99, false), Ok(0));
        r.check_invariants().unwrap();
    }
}
