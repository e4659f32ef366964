//! The chunks of a range allocator, in address order, with their top summaries as the
//! leaves of a [`SummaryTree`], so a search from the limit down reads at most 8 summaries per
//! level rather than one per chunk it passes.
//!
//! Chunks are few (a chunk holds up to 65536 granules: a few hundred at 300k live
//! allocations), made when the small allocations need room and dropped when they empty, so
//! an insertion or removal shifts the arrays and rebuilds the summary tree in place.

use crate::chunk::Chunk;
use crate::summarytree::SummaryTree;

/// Chunks by start pfn.
#[derive(Debug, Clone)]
pub(crate) struct Chunks {
    /// Each chunk's first pfn, ascending.
    bases: Vec<u64>,
    /// Leaf `i`: chunk `i`'s [`Chunk::top`]; the leaves past the last chunk are empty.
    tops: SummaryTree,
    chunks: Vec<Chunk>,
}

impl Chunks {
    /// No chunks; `None` if the memory cannot be had.
    pub(crate) fn try_new() -> Option<Self> {
        Some(Self {
            bases: Vec::new(),
            tops: SummaryTree::try_filled(1, 0)?,
            chunks: Vec::new(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.chunks.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter()
    }

    pub(crate) fn get(&self, i: usize) -> &Chunk {
        &self.chunks[i]
    }

    /// The index of the chunk holding `pfn`.
    pub(crate) fn containing(&self, pfn: u64) -> Option<usize> {
        let i = self.bases.partition_point(|&b| b <= pfn).checked_sub(1)?;
        (pfn - self.bases[i] < self.chunks[i].granules()).then_some(i)
    }

    /// Indices of the chunks overlapping `[lo, hi]`, highest first.
    pub(crate) fn overlapping(&self, lo: u64, hi: u64) -> Vec<usize> {
        let end = self.bases.partition_point(|&b| b <= hi);
        (0..end)
            .rev()
            .take_while(|&i| self.bases[i] + (self.chunks[i].granules() - 1) >= lo)
            .collect()
    }

    /// The highest `2^class`-aligned run of `size` free granules (`size <= 2^class <= 64`)
    /// in any chunk, ending at or below `limit`: `(chunk index, pfn)`.
    pub(crate) fn highest_fit(&self, size: u64, class: u32, limit: u64) -> Option<(usize, u64)> {
        // Usually the limit lies above every chunk: no search.
        let mut end = match self.bases.last() {
            Some(&last) if last <= limit => self.bases.len(),
            _ => self.bases.partition_point(|&b| b <= limit),
        };
        // Only the chunk holding the limit can offer a fit that lies above it.
        while let Some(i) = self.tops.highest(end, size, class) {
            let base = self.bases[i];
            if let Some(at) = self.chunks[i].highest_fit(size, class, limit - base) {
                return Some((i, base + at));
            }
            end = i;
        }
        None
    }

    /// Room for one more chunk; `false` if the memory cannot be had.
    pub(crate) fn try_reserve(&mut self) -> bool {
        let need = self.chunks.len() + 1;
        if self.tops.capacity() < need {
            match self.tops.try_grown(need.next_power_of_two()) {
                Some(grown) => self.tops = grown,
                None => return false,
            }
        }
        self.bases.try_reserve(1).is_ok() && self.chunks.try_reserve(1).is_ok()
    }

    /// Add `chunk` (disjoint from the others; room made with
    /// [`try_reserve`](Self::try_reserve)); its index.
    pub(crate) fn insert(&mut self, chunk: Chunk) -> usize {
        let i = self.bases.partition_point(|&b| b < chunk.base());
        self.bases.insert(i, chunk.base());
        self.tops.shift_in(i, chunk.top());
        self.chunks.insert(i, chunk);
        i
    }

    /// When chunk `i` is empty, another empty chunk: the one to give back, so that at most one
    /// empty chunk stays (a spare: an allocation and free of one range in a loop would
    /// otherwise make and drop a chunk's metadata, 170 KB at the largest size, each time).
    /// The spare is the chunk emptied last, the one such a loop uses: an older spare may lie
    /// below a free block that the loop's allocations now take a new chunk from.
    pub(crate) fn other_empty(&self, i: usize) -> Option<usize> {
        if self.chunks[i].live() != 0 {
            return None;
        }
        let mut others = self.chunks.iter().enumerate().filter(|&(j, _)| j != i);
        others.find(|(_, c)| c.live() == 0).map(|(j, _)| j)
    }

    /// Take out chunk `i` (allocates nothing).
    pub(crate) fn remove(&mut self, i: usize) -> Chunk {
        self.bases.remove(i);
        self.tops.shift_out(i);
        self.chunks.remove(i)
    }

    /// Allocate in chunk `i` (see [`Chunk::alloc`]).
    pub(crate) fn alloc(&mut self, i: usize, pfn: u64, size: u64, tag: bool) {
        let c = &mut self.chunks[i];
        c.alloc(pfn - c.base(), size, tag);
        self.tops.set(i, c.top());
    }

    /// Free in chunk `i` (see [`Chunk::free`]).
    pub(crate) fn free(&mut self, i: usize, pfn: u64, size: u64) {
        let c = &mut self.chunks[i];
        c.free(pfn - c.base(), size);
        self.tops.set(i, c.top());
    }

    /// Check every chunk, their order and their copies of the top summaries (tests).
    pub(crate) fn check(&self) -> Result<(), String> {
        for (i, c) in self.chunks.iter().enumerate() {
            c.check()?;
            if self.bases[i] != c.base() || self.tops.leaf(i) != c.top() {
                return Err(format!("chunk {:#x}: stale base or top copy", c.base()));
            }
            if c.base() % c.granules() != 0 {
                return Err(format!("chunk {:#x} not naturally aligned", c.base()));
            }
            if let Some(next) = self.chunks.get(i + 1) {
                if c.base() + c.granules() > next.base() {
                    return Err(format!("chunk {:#x} overlaps the next", c.base()));
                }
            }
        }
        if self.chunks.iter().filter(|c| c.live() == 0).count() > 1 {
            return Err("more than one empty chunk kept".into());
        }
        let unused = self.chunks.len()..self.tops.capacity();
        if unused.into_iter().any(|i| self.tops.leaf(i) != 0) {
            return Err("a summary past the last chunk".into());
        }
        self.tops.check()
    }
}
