//! Domain statistics: per-CPU counters summed on demand, and a text report.
//!
//! The lazy map+unmap path bumps none of them: successful maps are counted by the registry
//! within the claim of its slot the record takes anyway (or under its table's lock), queued
//! unmaps by the flush queue under its ring lock. Only the slow or rare events (a bounce, a list, a strict unmap, which pays an
//! IOTLB sync, an error) bump a per-CPU counter here.

use crate::flush_queue::FqStats;
use crate::registry::Counts;
use dma_sync::atomic::{AtomicU64, Ordering};
use dma_sync::{cpu, CachePadded};
use std::fmt;

/// Which counter to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    Bounce,
    List,
    Synced,
    Error,
}

#[derive(Default)]
struct Counters([AtomicU64; 4]);

pub(crate) struct Stats {
    cpus: Box<[CachePadded<Counters>]>,
}

impl Stats {
    pub(crate) fn new(cpus: usize) -> Self {
        Self {
            cpus: (0..cpus.max(1)).map(|_| CachePadded::default()).collect(),
        }
    }

    /// Count one event on this CPU's line (a relaxed counter: statistics only).
    pub(crate) fn count(&self, e: Event) {
        let c = &self.cpus[cpu::current_in(self.cpus.len())];
        c.0[e as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self, e: Event) -> u64 {
        self.cpus
            .iter()
            .map(|c| c.0[e as usize].load(Ordering::Relaxed))
            .sum()
    }

    /// The counters with the registry's `mappings` and the flush queue's `fq` (every queued
    /// unmap is one enqueue).
    pub(crate) fn snapshot(&self, mappings: Counts, lazy: bool, fq: FqStats) -> DomainStats {
        DomainStats {
            maps: mappings.recorded,
            bounced: self.sum(Event::Bounce),
            lists: self.sum(Event::List),
            unmaps_synced: self.sum(Event::Synced),
            unmaps_queued: fq.enqueued,
            errors: self.sum(Event::Error),
            live: mappings.live,
            lazy,
            fq,
        }
    }
}

/// A snapshot of a domain's counters.
///
/// ```
/// use dma_iommu::DomainStats;
/// let s = DomainStats { maps: 3, unmaps_synced: 1, unmaps_queued: 1, live: 1, ..DomainStats::default() };
/// let text = s.to_string();
/// assert!(text.contains("maps 3") && text.contains("live 1"));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DomainStats {
    /// Successful mappings (single, resource, and one per scatter list).
    pub maps: u64,
    /// Mappings bounced through the bounce-buffer allocator.
    pub bounced: u64,
    /// Scatter lists mapped.
    pub lists: u64,
    /// Unmaps that synced the IOTLB before freeing (strict).
    pub unmaps_synced: u64,
    /// Unmaps that queued their IOVA (lazy).
    pub unmaps_queued: u64,
    /// Refused operations.
    pub errors: u64,
    /// Live mappings.
    pub live: u64,
    /// Whether the domain is in lazy mode.
    pub lazy: bool,
    /// Flush-queue counters (zero while strict).
    pub fq: FqStats,
}

impl fmt::Display for DomainStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "mode {}", if self.lazy { "lazy" } else { "strict" })?;
        writeln!(
            f,
            "maps {} (bounced {}, lists {})",
            self.maps, self.bounced, self.lists
        )?;
        writeln!(
            f,
            "unmaps synced {} queued {}",
            self.unmaps_synced, self.unmaps_queued
        )?;
        writeln!(f, "live {}", self.live)?;
        writeln!(f, "errors {}", self.errors)?;
        writeln!(f, "flush queue: {}", self.fq)
    }
}
