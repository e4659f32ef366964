//! Statistics and the text report.

use crate::allocator::IovaAllocator;
use crate::config::CACHE_CLASSES;
use crate::range::RangeStats;
use dma_sync::atomic::Ordering;
use std::fmt;

/// Counters of one size class of the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClassStats {
    /// Granules per range of this class (1, 2, 4, ... 64).
    pub granules: u64,
    /// Allocations served from a magazine.
    pub hits: u64,
    /// Allocations of this class that fell through to the range allocator.
    pub misses: u64,
    /// Full magazines in the depot.
    pub depot_magazines: usize,
    /// Granules cached in the depot.
    pub depot_granules: u64,
    /// Granules cached in CPU slots.
    pub cpu_granules: u64,
}

/// A snapshot of the allocator's counters (each lock taken in turn, so concurrent use makes
/// it approximate, never inconsistent per lock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IovaStats {
    /// Per size class, smallest first (empty when caching is off).
    pub classes: Vec<ClassStats>,
    /// Granules cached per CPU slot, all classes.
    pub per_cpu_cached_granules: Vec<u64>,
    /// Granules cached in the depots, all classes.
    pub depot_cached_granules: u64,
    /// Granules cached in the per-thread caches, all classes (an unordered snapshot).
    pub thread_cached_granules: u64,
    /// The range allocator's counters (cached ranges count as allocated there).
    pub range: RangeStats,
    /// Flush-all passes (explicit, on allocation failure, before a reservation).
    pub flushes: u64,
    /// Depot magazines returned by trimming.
    pub trimmed_magazines: u64,
    /// Cached ranges the range allocator refused when they left the cache: each is a second
    /// copy of a range cached twice by a double free that went unchecked
    /// ([`IovaConfig::checked_frees`](crate::IovaConfig::checked_frees) off). Always 0 with
    /// checked frees.
    pub refused_cached_frees: u64,
}

impl IovaStats {
    /// Granules sitting in caches (thread caches, CPU slots and depots).
    pub fn cached_granules(&self) -> u64 {
        self.per_cpu_cached_granules.iter().sum::<u64>()
            + self.depot_cached_granules
            + self.thread_cached_granules
    }
}

impl IovaAllocator {
    /// Gather the statistics.
    ///
    /// ```
    /// let a = iova_cache::IovaAllocator::new(iova_cache::IovaConfig::with_space(1, 1 << 16)).unwrap();
    /// let p = a.alloc(1, 1 << 16).unwrap();
    /// a.free(p, 1).unwrap();
    /// let s = a.stats();
    /// assert_eq!(s.cached_granules(), 1);
    /// assert_eq!(s.classes[0].misses, 1);
    /// assert!(a.report().contains("depot"));
    /// ```
    pub fn stats(&self) -> IovaStats {
        let inner = &*self.inner;
        let mut s = IovaStats {
            range: inner.tree.with(|t| t.stats()),
            flushes: inner.flushes.load(Ordering::Relaxed),
            trimmed_magazines: inner.trimmed.load(Ordering::Relaxed),
            ..Default::default()
        };
        if let Some(rc) = &inner.rcache {
            s.refused_cached_frees = rc.refused();
            s.per_cpu_cached_granules = vec![0; rc.cpus()];
            if let Some(threads) = &inner.threads {
                s.thread_cached_granules = threads.cached().iter().map(|r| r.1).sum();
            }
            for order in 0..CACHE_CLASSES {
                let snap = rc.snapshot(order);
                let granules = 1u64 << order;
                for (cpu, &n) in snap.cpu_entries.iter().enumerate() {
                    s.per_cpu_cached_granules[cpu] += n * granules;
                }
                s.depot_cached_granules += snap.depot_entries * granules;
                s.classes.push(ClassStats {
                    granules,
                    hits: snap.hits,
                    misses: snap.misses,
                    depot_magazines: snap.depot_magazines,
                    depot_granules: snap.depot_entries * granules,
                    cpu_granules: snap.cpu_entries.iter().sum::<u64>() * granules,
                });
            }
        }
        s
    }

    /// The statistics as a text report.
    pub fn report(&self) -> String {
        self.stats().to_string()
    }
}

impl fmt::Display for IovaStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.range;
        writeln!(
            f,
            "range: {} allocated granules in {} ranges, {} free in {} ranges, {} reserved, {} failures",
            r.allocated_granules, r.allocated_ranges, r.free_granules, r.free_ranges, r.reserved_granules, r.failures
        )?;
        writeln!(
            f,
            "cache: {} granules cached, {} in the depot, {} in thread caches, {} flushes, {} magazines trimmed, {} refused cached frees",
            self.cached_granules(),
            self.depot_cached_granules,
            self.thread_cached_granules,
            self.flushes,
            self.trimmed_magazines,
            self.refused_cached_frees
        )?;
        for c in &self.classes {
            writeln!(
                f,
                "  class {:>2}: hits {:>10} misses {:>10} depot {:>4} mags ({} granules), cpus {} granules",
                c.granules, c.hits, c.misses, c.depot_magazines, c.depot_granules, c.cpu_granules
            )?;
        }
        for (cpu, n) in self
            .per_cpu_cached_granules
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
        {
            writeln!(f, "  cpu {cpu}: {n} granules cached")?;
        }
        Ok(())
    }
}
