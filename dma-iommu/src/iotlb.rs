//! IOTLB invalidation: the caller implements [`TlbOps`] (io-pgtable's callback trait, which
//! the page table itself also calls); two ready-made implementations are here, one whose
//! invalidations cost a configurable time (benchmarks) and one that records every
//! invalidation on a logical clock (tests).
//!
//! The callbacks are the only place where the library talks to "the IOMMU": an emulated IOTLB
//! in a VMM, a VFIO ioctl, or a counter. They are synchronous: they return once the
//! invalidation has completed, i.e. no translation of the invalidated range is cached any more
//! and none will be re-created from the cleared page-table entries.

pub use io_pgtable::{Gather, TlbOps, TlbRange};

use dma_sync::atomic::{AtomicU64, Ordering};
use dma_sync::{cpu, CachePadded, Mutex};
use std::time::{Duration, Instant};

/// An IOTLB whose invalidations cost a configurable busy-wait, for benchmarks (an expensive
/// flush models a hypervisor intercept, the case the single large flush queue is for) and
/// tests. Its counters are per CPU, so counting adds no shared write to what is measured.
///
/// ```
/// use dma_iommu::{SimulatedIotlb, TlbOps, TlbRange};
/// use std::time::Duration;
/// let t = SimulatedIotlb::new(Duration::ZERO, Duration::ZERO);
/// t.flush_all();
/// t.sync(&TlbRange { start: 0, end: 0xfff, pgsize: 0x1000 });
/// assert_eq!((t.flushes(), t.syncs()), (1, 1));
/// ```
#[derive(Debug)]
pub struct SimulatedIotlb {
    flush_cost: Duration,
    sync_cost: Duration,
    /// Per CPU: global flushes, range syncs (walk-cache flushes included).
    counts: Box<[CachePadded<[AtomicU64; 2]>]>,
}

const FLUSHES: usize = 0;
const SYNCS: usize = 1;

impl SimulatedIotlb {
    /// An IOTLB whose global flush takes `flush_cost` and whose range sync (and walk-cache
    /// flush) takes `sync_cost`.
    pub fn new(flush_cost: Duration, sync_cost: Duration) -> Self {
        Self {
            flush_cost,
            sync_cost,
            counts: (0..cpu::count().max(1))
                .map(|_| CachePadded::default())
                .collect(),
        }
    }

    /// Global flushes so far.
    pub fn flushes(&self) -> u64 {
        self.sum(FLUSHES)
    }

    /// Range syncs so far.
    pub fn syncs(&self) -> u64 {
        self.sum(SYNCS)
    }

    fn count(&self, what: usize, cost: Duration) {
        busy_wait(cost);
        let here = &self.counts[cpu::current_in(self.counts.len())];
        here[what].fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self, what: usize) -> u64 {
        self.counts
            .iter()
            .map(|c| c[what].load(Ordering::Relaxed))
            .sum()
    }
}

/// Spin for `cost` (measured as elapsed time: no deadline that could overflow the clock).
fn busy_wait(cost: Duration) {
    if cost.is_zero() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < cost {
        std::hint::spin_loop();
    }
}

impl TlbOps for SimulatedIotlb {
    fn flush_all(&self) {
        self.count(FLUSHES, self.flush_cost);
    }

    fn flush_walk(&self, _iova: u64, _size: u64, _granule: u64) {
        self.count(SYNCS, self.sync_cost);
    }

    fn sync(&self, _range: &TlbRange) {
        self.count(SYNCS, self.sync_cost);
    }
}

/// What a [`RecordingIotlb`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationKind {
    /// A global flush.
    FlushAll,
    /// A range sync (or walk-cache flush) of `[start, end)`.
    Range {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
}

/// One recorded invalidation, with the logical times at which it started and completed.
///
/// ```
/// use dma_iommu::{InvalidationKind, RecordingIotlb, TlbOps, TlbRange};
/// let t = RecordingIotlb::new();
/// t.sync(&TlbRange { start: 0x2000, end: 0x2fff, pgsize: 0x1000 }); // `end` inclusive
/// t.flush_all();
/// let log = t.log();
/// assert_eq!(log[0].kind, InvalidationKind::Range { start: 0x2000, end: 0x3000 });
/// assert!(log[0].covers(0x2000, 0x3000) && !log[0].covers(0x2000, 0x4000));
/// assert!(log[1].covers(0, u64::MAX) && log[0].completed < log[1].started);
/// assert_eq!((t.syncs(), t.flushes()), (1, 1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalidation {
    /// What was invalidated.
    pub kind: InvalidationKind,
    /// Logical time when the callback was entered.
    pub started: u64,
    /// Logical time when it returned.
    pub completed: u64,
}

impl Invalidation {
    /// Whether this invalidation covers `[start, end)`.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        match self.kind {
            InvalidationKind::FlushAll => true,
            InvalidationKind::Range { start: s, end: e } => s <= start && end <= e,
        }
    }
}

/// An IOTLB that records every invalidation against a logical clock shared with the test,
/// so a test can check that no IOVA was reused before an invalidation covering its unmap.
///
/// ```
/// use dma_iommu::{RecordingIotlb, TlbOps, TlbRange};
/// let t = RecordingIotlb::new();
/// let unmapped_at = t.tick();
/// t.sync(&TlbRange { start: 0x2000, end: 0x2fff, pgsize: 0x1000 });
/// let reused_at = t.tick();
/// assert!(t.covered_between(0x2000, 0x3000, unmapped_at, reused_at));
/// assert!(!t.covered_between(0x4000, 0x5000, unmapped_at, reused_at));
/// ```
#[derive(Debug, Default)]
pub struct RecordingIotlb {
    /// The logical clock and the log, under one lock so times follow the log order.
    state: Mutex<(u64, Vec<Invalidation>)>,
}

impl RecordingIotlb {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Advance the logical clock and return the new time (tests stamp their own events).
    pub fn tick(&self) -> u64 {
        let mut st = self.state.lock();
        st.0 += 1;
        st.0
    }

    /// Every invalidation so far, in completion order.
    pub fn log(&self) -> Vec<Invalidation> {
        self.state.lock().1.clone()
    }

    /// Global flushes so far.
    pub fn flushes(&self) -> usize {
        self.state
            .lock()
            .1
            .iter()
            .filter(|i| i.kind == InvalidationKind::FlushAll)
            .count()
    }

    /// Range syncs so far.
    pub fn syncs(&self) -> usize {
        self.state
            .lock()
            .1
            .iter()
            .filter(|i| i.kind != InvalidationKind::FlushAll)
            .count()
    }

    /// Whether an invalidation covering `[start, end)` started after `after` and completed
    /// before `before`.
    pub fn covered_between(&self, start: u64, end: u64, after: u64, before: u64) -> bool {
        self.state
            .lock()
            .1
            .iter()
            .any(|i| i.started > after && i.completed < before && i.covers(start, end))
    }

    fn record(&self, kind: InvalidationKind) {
        let mut st = self.state.lock();
        let started = st.0 + 1;
        let completed = st.0 + 2;
        st.0 = completed;
        st.1.push(Invalidation {
            kind,
            started,
            completed,
        });
    }
}

impl TlbOps for RecordingIotlb {
    fn flush_all(&self) {
        self.record(InvalidationKind::FlushAll);
    }

    fn flush_walk(&self, iova: u64, size: u64, _granule: u64) {
        self.record(InvalidationKind::Range {
            start: iova,
            end: iova.saturating_add(size),
        });
    }

    fn sync(&self, range: &TlbRange) {
        self.record(InvalidationKind::Range {
            start: range.start,
            end: range.end.saturating_add(1),
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn recording_orders_invalidations_on_the_clock() {
        let t = RecordingIotlb::new();
        let before = t.tick();
        t.flush_all();
        let after = t.tick();
        let log = t.log();
        assert_eq!(log.len(), 1);
        assert!(log[0].started > before && log[0].completed < after);
        assert!(t.covered_between(0, u64::MAX, before, after));
        assert!(!t.covered_between(0, 1, after, u64::MAX));
        assert_eq!((t.flushes(), t.syncs()), (1, 0));
        t.sync(&TlbRange {
            start: 0x1000,
            end: 0x2fff,
            pgsize: 0x1000,
        });
        t.flush_walk(0x4000, 0x1000, 0x1000);
        let log = t.log();
        assert!(log[1].covers(0x1000, 0x3000) && !log[1].covers(0x1000, 0x3001));
        assert!(log[2].covers(0x4000, 0x5000));
        assert_eq!(t.syncs(), 2);
    }

    #[test]
    fn simulated_costs_are_paid() {
        let t = SimulatedIotlb::new(Duration::from_micros(50), Duration::from_micros(5));
        let r = TlbRange {
            start: 0,
            end: 0xfff,
            pgsize: 0x1000,
        };
        t.flush_all();
        t.sync(&r);
        t.flush_walk(0, 0x1000, 0x1000);
        assert_eq!((t.flushes(), t.syncs()), (1, 2));
    }
}
