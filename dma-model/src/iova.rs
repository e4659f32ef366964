//! iova-cache: an IOVA allocator as a set of user-held ranges and reservations (Linux
//! `drivers/iommu/iova.c`: `alloc_iova`, `alloc_iova_fast`, `reserve_iova`, and the
//! iova-cache docs).
//!
//! The allocator chooses addresses; the model checks what every choice must satisfy
//! ([`IovaModel::admit`]: inside the space and below the limit, naturally aligned, disjoint
//! from every held and reserved range) and when a refusal is allowed ([`gap_fits`]: a
//! `NoSpace` only when no aligned gap exists). Frees succeed exactly once, with the size
//! allocated and through the path the range came from ([`IovaModel::expect_free`]).

use iova_cache::{IovaConfig, IovaError};
use std::collections::BTreeMap;

/// Sizes below this go through the per-CPU caches, rounded to a power of two.
pub const MAX_CACHED: u64 = iova_cache::config::MAX_CACHED_GRANULES;

/// The granules the allocator holds for a request of `size` through the cached path.
pub fn class_size(size: u64) -> u64 {
    if size < MAX_CACHED {
        size.next_power_of_two()
    } else {
        size
    }
}

/// Whether a run of `size` granules aligned to `align` fits in `[start, limit]` avoiding the
/// inclusive `busy` ranges.
pub fn gap_fits(busy: Vec<(u64, u64)>, start: u64, limit: u64, size: u64, align: u64) -> bool {
    lowest_gap(&busy, start, limit, size, align).is_some()
}

/// The lowest start of a run of `size` granules aligned to `align` in `[start, limit]` that
/// avoids the inclusive `busy` ranges.
pub fn lowest_gap(
    busy: &[(u64, u64)],
    start: u64,
    limit: u64,
    size: u64,
    align: u64,
) -> Option<u64> {
    let mut busy = busy.to_vec();
    busy.sort_unstable();
    let align = align.max(1);
    let mut lo = start;
    for (b_lo, b_hi) in busy
        .into_iter()
        .chain([(limit.saturating_add(1), u64::MAX)])
    {
        if b_lo > lo {
            let hi = (b_lo - 1).min(limit);
            let p = lo.div_ceil(align) * align;
            if p.checked_add(size - 1).is_some_and(|e| e <= hi) {
                return Some(p);
            }
        }
        lo = lo.max(b_hi.saturating_add(1));
        if lo > limit || b_hi == u64::MAX {
            break;
        }
    }
    None
}

/// One range a user holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Granules the allocator holds (the class size for the cached path).
    pub size: u64,
    /// What the caller asked for.
    pub asked: u64,
    /// Allocated through the cached path (`alloc`, `alloc_dma`).
    pub fast: bool,
}

/// The reference model.
#[derive(Debug, Clone)]
pub struct IovaModel {
    /// The allocator's configuration.
    pub cfg: IovaConfig,
    /// User-held ranges by first pfn.
    pub held: BTreeMap<u64, Held>,
    /// Reservations, inclusive.
    pub reserved: Vec<(u64, u64)>,
    /// Ranges freed earlier (for double frees).
    pub freed: Vec<(u64, Held)>,
}

impl IovaModel {
    /// An empty allocator.
    pub fn new(cfg: IovaConfig) -> Self {
        IovaModel {
            cfg,
            held: BTreeMap::new(),
            reserved: Vec::new(),
            freed: Vec::new(),
        }
    }

    /// The error a request of `size` granules below `limit` must get before any search.
    pub fn check_request(&self, size: u64, limit: u64) -> Result<(), IovaError> {
        if size == 0 {
            return Err(IovaError::ZeroSize);
        }
        if size > self.cfg.space() {
            return Err(IovaError::TooLarge {
                size,
                space: self.cfg.space(),
            });
        }
        if limit < self.cfg.start_pfn {
            return Err(IovaError::LimitBelowStart {
                limit,
                start: self.cfg.start_pfn,
            });
        }
        Ok(())
    }

    /// The reservation containing `pfn`.
    pub fn reserved_at(&self, pfn: u64) -> Option<(u64, u64)> {
        self.reserved
            .iter()
            .copied()
            .find(|&(lo, hi)| lo <= pfn && pfn <= hi)
    }

    /// The held range containing `pfn`.
    pub fn held_at(&self, pfn: u64) -> Option<(u64, Held)> {
        let (&p, &h) = self.held.range(..=pfn).next_back()?;
        (pfn < p + h.size).then_some((p, h))
    }

    /// Whether an aligned `size` run fits in `[start, limit]` avoiding held, reserved and
    /// the given `cached` (pfn, size) ranges.
    pub fn fits(&self, size: u64, align: u64, limit: u64, cached: &[(u64, u64)]) -> bool {
        let mut busy: Vec<(u64, u64)> = self
            .held
            .iter()
            .map(|(&p, h)| (p, p + h.size - 1))
            .collect();
        busy.extend(self.reserved.iter().copied());
        busy.extend(cached.iter().map(|&(p, s)| (p, p + s - 1)));
        gap_fits(
            busy,
            self.cfg.start_pfn,
            limit.min(self.cfg.end_pfn),
            size,
            align,
        )
    }

    /// Record a range the allocator handed out, if it is one it may hand out: inside
    /// `[start, limit]`, aligned to `align`, disjoint from every held and reserved range.
    pub fn admit(&mut self, pfn: u64, held: Held, align: u64, limit: u64) -> Result<(), String> {
        let last = pfn
            .checked_add(held.size - 1)
            .filter(|&e| pfn >= self.cfg.start_pfn && e <= limit.min(self.cfg.end_pfn))
            .ok_or_else(|| {
                format!(
                    "pfn {pfn:#x}+{} outside [{:#x}, {limit:#x}]",
                    held.size, self.cfg.start_pfn
                )
            })?;
        if pfn % align != 0 {
            return Err(format!("pfn {pfn:#x} not aligned to {align}"));
        }
        let clash = self
            .held_at(last)
            .or_else(|| self.held.range(pfn..=last).next().map(|(&p, &h)| (p, h)));
        if let Some(c) = clash {
            return Err(format!(
                "pfn {pfn:#x}+{} overlaps user-held {c:?}",
                held.size
            ));
        }
        if let Some(r) = self
            .reserved
            .iter()
            .find(|&&(lo, hi)| lo <= last && pfn <= hi)
        {
            return Err(format!(
                "pfn {pfn:#x}+{} overlaps reservation {r:?}",
                held.size
            ));
        }
        self.held.insert(pfn, held);
        Ok(())
    }

    /// Whether a held range came from the cached path (only `free` may release it).
    pub fn cached_family(&self, h: &Held) -> bool {
        self.cfg.caching && h.fast && h.size <= MAX_CACHED
    }

    /// The result of a free of `size` granules at `pfn` through the cache (`via_cache`) or
    /// the tree.
    pub fn expect_free(&self, pfn: u64, size: u64, via_cache: bool) -> Result<(), IovaError> {
        match self.held.get(&pfn) {
            Some(h) if via_cache != self.cached_family(h) => Err(IovaError::NotAllocated { pfn }),
            Some(h) if h.size != size => Err(IovaError::SizeMismatch {
                pfn,
                allocated: h.size,
                freed: size,
            }),
            Some(_) => Ok(()),
            None => Err(IovaError::NotAllocated { pfn }),
        }
    }

    /// The result of `reserve(lo, hi)`; records the reservation when it is accepted.
    pub fn reserve(&mut self, lo: u64, hi: u64) -> Result<(), IovaError> {
        if lo > hi {
            return Err(IovaError::InvalidRange { lo, hi });
        }
        let (clo, chi) = (lo.max(self.cfg.start_pfn), hi.min(self.cfg.end_pfn));
        match self.held.range(..=chi).next_back() {
            Some((&pfn, h)) if clo <= chi && pfn + h.size > clo => {
                Err(IovaError::ReserveOverlapsAllocation { pfn, size: h.size })
            }
            _ => {
                if clo <= chi {
                    self.reserved.push((clo, chi));
                }
                Ok(())
            }
        }
    }

    /// Record a successful free.
    pub fn free(&mut self, pfn: u64) {
        if let Some(h) = self.held.remove(&pfn) {
            self.freed.push((pfn, h));
        }
    }
}

// Not under loom: the real structures are built outside a model.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn gaps_respect_alignment_and_limit() {
        // Busy 0..=3 and 8..=9 in [0, 15]: a 4-run aligned to 4 fits at 4 or 12.
        assert!(gap_fits(vec![(0, 3), (8, 9)], 0, 15, 4, 4));
        assert!(!gap_fits(vec![(0, 3), (8, 9)], 0, 11, 4, 8));
        assert!(!gap_fits(vec![(0, 15)], 0, 15, 1, 1));
    }
}
