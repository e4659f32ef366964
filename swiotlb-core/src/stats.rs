//! Statistics: used slots, the high-water mark, transient pools; a debugfs-style report.
//!
//! Statistics only: no correctness depends on them (the per-area `used` under the area lock
//! is the authoritative count). With `Config::stats` off, maps and unmaps touch no shared
//! counter at all and `used` is the unlocked sum of the per-area counts.

use crate::error::Error;
use dma_sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::fmt;

#[derive(Debug)]
pub(crate) struct Stats {
    enabled: bool,
    total_used: AtomicUsize,
    hiwater: AtomicUsize,
    pub(crate) transient_pools: AtomicUsize,
    pub(crate) transient_nslabs: AtomicUsize,
}

impl Stats {
    pub(crate) fn new(enabled: bool) -> Stats {
        Stats {
            enabled,
            total_used: AtomicUsize::new(0),
            hiwater: AtomicUsize::new(0),
            transient_pools: AtomicUsize::new(0),
            transient_nslabs: AtomicUsize::new(0),
        }
    }

    /// Whether the used count and high-water mark are kept (`Config::stats`): callers check
    /// it before working out a count, so with statistics off a map or unmap does no work
    /// for them at all.
    #[inline(always)]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Count `n` more used slots and raise the high-water mark (CAS-max: never lowers it).
    pub(crate) fn add_used(&self, n: usize) {
        if !self.enabled {
            return;
        }
        let now = self.total_used.fetch_add(n, Relaxed) + n;
        let mut seen = self.hiwater.load(Relaxed);
        while now > seen {
            match self
                .hiwater
                .compare_exchange_weak(seen, now, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(v) => seen = v,
            }
        }
    }

    pub(crate) fn sub_used(&self, n: usize) {
        if self.enabled {
            self.total_used.fetch_sub(n, Relaxed);
        }
    }

    pub(crate) fn transient_added(&self, nslabs: usize) {
        self.transient_pools.fetch_add(1, Relaxed);
        self.transient_nslabs.fetch_add(nslabs, Relaxed);
    }

    pub(crate) fn transient_removed(&self, nslabs: usize) {
        self.transient_pools.fetch_sub(1, Relaxed);
        self.transient_nslabs.fetch_sub(nslabs, Relaxed);
    }

    /// Reset the high-water mark: only 0 is accepted, as the kernel's debugfs file does.
    pub(crate) fn reset_hiwater(&self, value: u64) -> Result<(), Error> {
        if value != 0 {
            return Err(Error::BadReset { value });
        }
        self.hiwater.store(0, Relaxed);
        Ok(())
    }

    pub(crate) fn hiwater(&self) -> Option<usize> {
        self.enabled.then(|| self.hiwater.load(Relaxed))
    }
}

/// Use of one global pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PoolStats {
    /// First bounce address.
    pub start: u64,
    /// Slots.
    pub nslabs: usize,
    /// Used slots per area.
    pub area_used: Vec<usize>,
}

/// A snapshot of the allocator's statistics ([`crate::Swiotlb::stats`]).
///
/// ```
/// use swiotlb_core::{Config, RegionMemory, Swiotlb};
/// let swiotlb = Swiotlb::new(Config::tiny(16, 2, 8), RegionMemory::new(4096)).unwrap();
/// let s = swiotlb.stats();
/// assert_eq!((s.nslabs, s.used), (16, 0));
/// assert!(s.to_string().contains("io_tlb_nslabs: 16"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StatsSnapshot {
    /// Slots of all global pools.
    pub nslabs: usize,
    /// Used slots (global and transient pools).
    pub used: usize,
    /// Highest `used` seen since creation or the last reset (`None` with stats off).
    pub hiwater: Option<usize>,
    /// Live transient pools.
    pub transient_pools: usize,
    /// Slots of live transient pools.
    pub transient_nslabs: usize,
    /// Global pools, oldest first.
    pub pools: Vec<PoolStats>,
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "io_tlb_nslabs: {}", self.nslabs)?;
        writeln!(f, "io_tlb_used: {}", self.used)?;
        match self.hiwater {
            Some(h) => writeln!(f, "io_tlb_used_hiwater: {h}")?,
            None => writeln!(f, "io_tlb_used_hiwater: (disabled)")?,
        }
        writeln!(f, "io_tlb_transient_pools: {}", self.transient_pools)?;
        writeln!(f, "io_tlb_transient_nslabs: {}", self.transient_nslabs)?;
        for (i, p) in self.pools.iter().enumerate() {
            writeln!(
                f,
                "pool{i}: start {:#x} nslabs {} area_used {:?}",
                p.start, p.nslabs, p.area_used
            )?;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn hiwater_never_lowers_and_resets_only_to_zero() {
        let s = Stats::new(true);
        s.add_used(5);
        s.sub_used(5);
        s.add_used(3);
        assert_eq!(s.hiwater(), Some(5));
        assert_eq!(s.reset_hiwater(7), Err(Error::BadReset { value: 7 }));
        assert_eq!(s.hiwater(), Some(5));
        s.reset_hiwater(0).unwrap();
        assert_eq!(s.hiwater(), Some(0));
        s.add_used(1);
        assert_eq!(s.hiwater(), Some(4));
    }

    #[test]
    fn disabled_stats_touch_nothing() {
        let s = Stats::new(false);
        s.add_used(5);
        assert_eq!(s.hiwater(), None);
        assert_eq!(s.total_used.load(Relaxed), 0);
    }
}
