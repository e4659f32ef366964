//! Debug reports, the user-space equal of debugfs: page tables, swiotlb, IOVA caches and
//! flush queues, as text (`Display`) and, with the `serde` feature, as serde data.
//!
//! Every report is taken while the structure keeps working: page-table dumps walk the live
//! table under an RCU pin (tables an unmap frees meanwhile stay readable until the walk
//! ends, so the dump shows each entry before or after a concurrent change, never freed
//! memory); the statistics lock each per-CPU part briefly in turn.
//!
//! ```
//! use dma_vmm::report::Report;
//! use swiotlb_core::{Config, RegionMemory, Swiotlb};
//! let bounce = Swiotlb::new(Config::tiny(16, 2, 8), RegionMemory::new(4096)).unwrap();
//! let r = Report::default().with_swiotlb(&bounce);
//! assert_eq!(r.swiotlb.as_ref().unwrap().nslabs, 16);
//! assert!(r.to_string().contains("swiotlb:\n  io_tlb_nslabs: 16\n"));
//! ```
//!
//! `domain` (a vIOMMU domain: endpoints, MAP list, and io-pgtable's `Dump` of its page table),
//! `flush_queue` / `strictness` (mode, geometry, timer, counters), `dma_domain` (a dma-iommu
//! domain: its `DomainStats` with mode and flush-queue counters, its allocator's `IovaStats` and
//! its bounce pool's `StatsSnapshot`), and `Report` aggregating them (`with_swiotlb`,
//! `with_iova` hold the crates' snapshots as they are). The crates' snapshots print with their
//! own `Display`, indented under a title; with `serde` they derive serde under each crate's
//! `serde` feature (no copies to keep in step). A dma-iommu domain exposes neither its page table
//! nor its queue's geometry and timer state, so its report has no dump and `geometry` /
//! `timer_armed` are `None`.

use crate::viommu::{Mapping, Viommu};
use dma_iommu::{DomainStats, FlushQueue, FqKind, FqStats, InvalidationOps, Strictness};
use io_pgtable::Dump;
use iova_cache::{IovaAllocator, IovaStats};
use std::fmt;
use swiotlb_core::{StatsSnapshot, Swiotlb};

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// A vIOMMU domain: its endpoints, its MAP requests and its page table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct ViommuDomainReport {
    /// Domain id.
    pub id: u32,
    /// Whether it is a bypass domain.
    pub bypass: bool,
    /// Attached endpoints.
    pub endpoints: Vec<u32>,
    /// Mappings, one per MAP request, in IOVA order.
    pub mappings: Vec<Mapping>,
    /// The page table's dump (none for a bypass domain).
    pub page_table: Option<Dump>,
}

impl fmt::Display for ViommuDomainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.bypass { "bypass" } else { "translated" };
        writeln!(
            f,
            "domain {} ({kind}), endpoints {:?}, {} mappings",
            self.id,
            self.endpoints,
            self.mappings.len()
        )?;
        for m in &self.mappings {
            writeln!(
                f,
                "  map {:#x}..={:#x} -> {:#x} flags {:#x}",
                m.virt_start, m.virt_end, m.phys_start, m.flags
            )?;
        }
        match &self.page_table {
            Some(pt) => indented(f, pt),
            None => Ok(()),
        }
    }
}

/// Report domain `id` of `viommu` (`None` if it does not exist). The mapping list and the
/// page table are read one after the other: under concurrent requests they may differ by
/// the requests in between.
pub fn viommu_domain(viommu: &Viommu, id: u32) -> Option<ViommuDomainReport> {
    let d = viommu.domain(id)?;
    Some(ViommuDomainReport {
        id,
        bypass: d.is_bypass(),
        endpoints: viommu.domain_endpoints(id).unwrap_or_default(),
        mappings: viommu.mappings(id).unwrap_or_default(),
        page_table: d.page_table().map(|pt| pt.dump()),
    })
}

/// Writes `body`'s text with every line indented by two spaces.
fn indented(f: &mut fmt::Formatter<'_>, body: &dyn fmt::Display) -> fmt::Result {
    body.to_string()
        .lines()
        .try_for_each(|line| writeln!(f, "  {line}"))
}

/// Writes `title:` and then `body`'s text indented.
fn section(f: &mut fmt::Formatter<'_>, title: &str, body: &dyn fmt::Display) -> fmt::Result {
    writeln!(f, "{title}:")?;
    indented(f, body)
}

/// A flush queue's geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct FqGeometry {
    /// `"per-cpu"` or `"single"`.
    pub kind: String,
    /// Number of rings.
    pub rings: usize,
    /// Entries per ring.
    pub ring_size: usize,
    /// Timer timeout in microseconds.
    pub timeout_us: u64,
}

/// Flush-queue state: the invalidation mode and, when lazy, the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct FlushQueueReport {
    /// Whether unmaps are lazy (queued until a global flush).
    pub lazy: bool,
    /// The queue's geometry, when known (lazy, and reported by the queue itself).
    pub geometry: Option<FqGeometry>,
    /// Whether the timer is armed, when known.
    pub timer_armed: Option<bool>,
    /// The queue's counters (zero while strict).
    pub stats: FqStats,
}

impl fmt::Display for FlushQueueReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.lazy {
            return writeln!(f, "flush queue: strict (no queue)");
        }
        write!(f, "flush queue: lazy")?;
        if let Some(g) = &self.geometry {
            write!(
                f,
                ", {} x {} ({}), timeout {} us",
                g.rings, g.ring_size, g.kind, g.timeout_us
            )?;
        }
        match self.timer_armed {
            Some(true) => writeln!(f, ", timer armed")?,
            Some(false) => writeln!(f, ", timer idle")?,
            None => writeln!(f)?,
        }
        writeln!(f, "  {}", self.stats)
    }
}

/// Report one flush queue.
pub fn flush_queue<O: InvalidationOps>(fq: &FlushQueue<O>) -> FlushQueueReport {
    let c = fq.config();
    let kind = match c.kind {
        FqKind::PerCpu => "per-cpu",
        FqKind::Single => "single",
    };
    FlushQueueReport {
        lazy: true,
        geometry: Some(FqGeometry {
            kind: kind.to_string(),
            rings: c.rings(),
            ring_size: c.ring_size,
            timeout_us: c.timeout.as_micros().min(u64::MAX as u128) as u64,
        }),
        timer_armed: Some(fq.timer_armed()),
        stats: fq.stats(),
    }
}

/// Report the invalidation mode of a domain and its flush queue, if lazy.
pub fn strictness<O: InvalidationOps>(s: &Strictness<O>) -> FlushQueueReport {
    match s.queue() {
        Some(fq) => flush_queue(fq),
        None => FlushQueueReport::default(),
    }
}

/// A dma-iommu DMA domain: its counters (with the invalidation mode and flush-queue counters),
/// IOVA allocator and bounce pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct DmaDomainReport {
    /// The domain's counters.
    pub stats: DomainStats,
    /// The IOVA allocator's statistics.
    pub iova: IovaStats,
    /// The bounce-buffer pool's statistics, if the domain has one.
    pub swiotlb: Option<StatsSnapshot>,
}

impl fmt::Display for DmaDomainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        section(f, "dma domain", &self.stats)?;
        section(f, "iova", &self.iova)?;
        match &self.swiotlb {
            Some(s) => section(f, "swiotlb", s),
            None => Ok(()),
        }
    }
}

/// Report a dma-iommu domain (each part read in turn while the domain keeps working).
pub fn dma_domain<T: dma_iommu::TlbOps + 'static>(d: &dma_iommu::Domain<T>) -> DmaDomainReport {
    DmaDomainReport {
        stats: d.stats(),
        iova: d.iova_allocator().stats(),
        swiotlb: d.swiotlb().map(Swiotlb::stats),
    }
}

/// Everything at once: what a VMM serves on its debug endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Report {
    /// vIOMMU domains.
    pub viommu_domains: Vec<ViommuDomainReport>,
    /// Bounce-buffer pools' statistics.
    pub swiotlb: Option<StatsSnapshot>,
    /// IOVA allocator's statistics.
    pub iova: Option<IovaStats>,
    /// Flush queues reported on their own.
    pub flush_queues: Vec<FlushQueueReport>,
    /// dma-iommu DMA domains.
    pub dma_domains: Vec<DmaDomainReport>,
}

impl Report {
    /// Every domain of `viommu`.
    pub fn with_viommu(mut self, viommu: &Viommu) -> Self {
        self.viommu_domains.extend(
            viommu
                .domain_ids()
                .into_iter()
                .filter_map(|id| viommu_domain(viommu, id)),
        );
        self
    }

    /// The statistics of `bounce`.
    pub fn with_swiotlb(mut self, bounce: &Swiotlb) -> Self {
        self.swiotlb = Some(bounce.stats());
        self
    }

    /// The statistics of `alloc`.
    pub fn with_iova(mut self, alloc: &IovaAllocator) -> Self {
        self.iova = Some(alloc.stats());
        self
    }

    /// The flush-queue state of one invalidation context.
    pub fn with_strictness<O: InvalidationOps>(mut self, s: &Strictness<O>) -> Self {
        self.flush_queues.push(strictness(s));
        self
    }

    /// One dma-iommu DMA domain.
    pub fn with_dma_domain<T: dma_iommu::TlbOps + 'static>(
        mut self,
        d: &dma_iommu::Domain<T>,
    ) -> Self {
        self.dma_domains.push(dma_domain(d));
        self
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.viommu_domains {
            write!(f, "{d}")?;
        }
        if let Some(s) = &self.swiotlb {
            section(f, "swiotlb", s)?;
        }
        if let Some(i) = &self.iova {
            section(f, "iova", i)?;
        }
        for q in &self.flush_queues {
            write!(f, "{q}")?;
        }
        for d in &self.dma_domains {
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
