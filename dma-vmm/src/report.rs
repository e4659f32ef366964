//! Debug reports, the user-space equal of debugfs: page tables, swiotlb, IOVA caches and
//! flush queues, as text (`Display`) and, with the `serde` feature, as serde data.
//!
//! Every report is taken while the structure keeps working: page-table dumps walk the live
//! table under an RCU pin (tables an unmap frees meanwhile stay readable until the walk
//! ends, so the dump shows each entry before or after a concurrent change, never freed
//! memory); the statistics lock each per-CPU part briefly in turn.
//!
//! ```
//! # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
//! use dma_vmm::report;
//! use io_pgtable::{Config, PageTable, Prot};
//! let pt = PageTable::new(Config::s1_4k(39)).unwrap();
//! pt.map(0x20_0000, 0x4000_0000, 0x20_0000, Prot::READ | Prot::WRITE).unwrap();
//! let r = report::page_table(&pt);
//! assert_eq!(r.leaves().count(), 1);
//! assert!(r.to_string().contains("block -> 0x40000000 rw"));
//! ```

use crate::viommu::{Mapping, Viommu};
use dma_iommu::{DomainStats, FlushQueue, FqKind, FqStats, InvalidationOps, Strictness};
use io_pgtable::{Descriptor, PageTable, Prot, TlbOps};
use iova_cache::{IovaAllocator, IovaStats};
use std::fmt;
use swiotlb_core::Swiotlb;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// `"rw"`, `"r-"`, `"-w"` plus attribute letters: `c` cacheable, `m` MMIO, `x` execute-never,
/// `p` privileged.
pub fn prot_string(prot: Prot) -> String {
    let flag = |p: Prot, c: char| if prot.contains(p) { Some(c) } else { None };
    let mut s = String::new();
    s.push(if prot.contains(Prot::READ) { 'r' } else { '-' });
    s.push(if prot.contains(Prot::WRITE) { 'w' } else { '-' });
    s.extend(
        [
            flag(Prot::CACHE, 'c'),
            flag(Prot::MMIO, 'm'),
            flag(Prot::NOEXEC, 'x'),
            flag(Prot::PRIV, 'p'),
        ]
        .into_iter()
        .flatten(),
    );
    s
}

/// What a dumped descriptor is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum EntryKind {
    /// A pointer to a next-level table.
    Table {
        /// The table's address.
        addr: u64,
    },
    /// A page or block mapping.
    Leaf {
        /// Output address of the leaf's first byte.
        paddr: u64,
        /// Leaf size in bytes.
        size: u64,
        /// Permissions and attributes ([`prot_string`]).
        prot: String,
    },
}

/// One valid descriptor of a dumped page table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Entry {
    /// Level of the table holding it (3 = last level with a 4 KiB granule).
    pub level: u32,
    /// Index in that table.
    pub index: usize,
    /// First IOVA it covers.
    pub iova: u64,
    /// The raw 64-bit descriptor.
    pub raw: u64,
    /// What it is.
    pub kind: EntryKind,
}

/// A page-table dump.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct PageTableReport {
    /// Root table address.
    pub root: u64,
    /// Tables reached, the root included.
    pub tables: usize,
    /// Valid descriptors, depth first in IOVA order.
    pub entries: Vec<Entry>,
}

impl PageTableReport {
    /// The leaf entries.
    pub fn leaves(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Leaf { .. }))
    }

    /// Bytes mapped by the leaves.
    pub fn mapped_bytes(&self) -> u64 {
        self.leaves()
            .map(|e| {
                if let EntryKind::Leaf { size, .. } = e.kind {
                    size
                } else {
                    0
                }
            })
            .sum()
    }
}

impl fmt::Display for PageTableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "root @ {:#x}: {} tables, {:#x} bytes mapped",
            self.root,
            self.tables,
            self.mapped_bytes()
        )?;
        let top = self.entries.iter().map(|e| e.level).min().unwrap_or(0);
        for e in &self.entries {
            let indent = 2 * (e.level - top) as usize + 2;
            write!(
                f,
                "{:indent$}L{} [{:4}] iova {:#014x}: {:#018x} ",
                "", e.level, e.index, e.iova, e.raw
            )?;
            match &e.kind {
                EntryKind::Table { addr } => writeln!(f, "table @ {addr:#x}")?,
                EntryKind::Leaf { paddr, size, prot } => {
                    let kind = if e.level == 3 { "page" } else { "block" };
                    writeln!(f, "{kind} -> {paddr:#x} {prot} ({size:#x})")?
                }
            }
        }
        Ok(())
    }
}

/// Dump `pt` (safe while other threads map and unmap: one lock-free walk under an RCU pin).
pub fn page_table<T: TlbOps>(pt: &PageTable<T>) -> PageTableReport {
    let g = pt.geometry();
    let dump = pt.dump();
    let entries = dump
        .entries
        .iter()
        .filter_map(|e| {
            let kind = match e.desc {
                Descriptor::Table { addr } => EntryKind::Table { addr },
                Descriptor::Leaf { paddr, prot } => EntryKind::Leaf {
                    paddr,
                    size: g.block_size(e.level),
                    prot: prot_string(prot),
                },
                Descriptor::Invalid => return None,
            };
            Some(Entry {
                level: e.level,
                index: e.index,
                iova: e.iova,
                raw: e.raw,
                kind,
            })
        })
        .collect();
    PageTableReport {
        root: dump.root,
        tables: dump.tables,
        entries,
    }
}

/// A vIOMMU domain: its endpoints, its MAP requests and its page table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct DomainReport {
    /// Domain id.
    pub id: u32,
    /// Whether it is a bypass domain.
    pub bypass: bool,
    /// Attached endpoints.
    pub endpoints: Vec<u32>,
    /// Mappings, one per MAP request, in IOVA order.
    pub mappings: Vec<Mapping>,
    /// The page table (none for a bypass domain).
    pub page_table: Option<PageTableReport>,
}

impl fmt::Display for DomainReport {
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
            Some(pt) => write!(f, "{pt}"),
            None => Ok(()),
        }
    }
}

/// Report domain `id` of `viommu` (`None` if it does not exist). The mapping list and the
/// page table are read one after the other: under concurrent requests they may differ by
/// the requests in between.
pub fn domain(viommu: &Viommu, id: u32) -> Option<DomainReport> {
    let d = viommu.domain(id)?;
    Some(DomainReport {
        id,
        bypass: d.is_bypass(),
        endpoints: viommu.domain_endpoints(id).unwrap_or_default(),
        mappings: viommu.mappings(id).unwrap_or_default(),
        page_table: d.page_table().map(page_table),
    })
}

/// One swiotlb pool: used slots per area.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct PoolReport {
    /// First bounce address.
    pub start: u64,
    /// Slots.
    pub nslabs: usize,
    /// Used slots, per area.
    pub area_used: Vec<usize>,
}

/// swiotlb statistics (`/sys/kernel/debug/swiotlb`), per pool and area.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct SwiotlbReport {
    /// Slots of all global pools.
    pub nslabs: usize,
    /// Used slots.
    pub used: usize,
    /// High-water mark of `used` (`None` with statistics off).
    pub hiwater: Option<usize>,
    /// Live transient pools.
    pub transient_pools: usize,
    /// Slots in transient pools.
    pub transient_nslabs: usize,
    /// Global pools, oldest first.
    pub pools: Vec<PoolReport>,
}

impl fmt::Display for SwiotlbReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "swiotlb: {}/{} slots used (hiwater {:?}), {} transient pools ({} slots)",
            self.used, self.nslabs, self.hiwater, self.transient_pools, self.transient_nslabs
        )?;
        for (i, p) in self.pools.iter().enumerate() {
            writeln!(f, "  pool {i} @ {:#x}: {} slots", p.start, p.nslabs)?;
            for (a, used) in p.area_used.iter().enumerate() {
                writeln!(f, "    area {a}: {used} used")?;
            }
        }
        Ok(())
    }
}

/// Report the statistics of `tlb`.
pub fn swiotlb(tlb: &Swiotlb) -> SwiotlbReport {
    let s = tlb.stats();
    SwiotlbReport {
        nslabs: s.nslabs,
        used: s.used,
        hiwater: s.hiwater,
        transient_pools: s.transient_pools,
        transient_nslabs: s.transient_nslabs,
        pools: s
            .pools
            .into_iter()
            .map(|p| PoolReport {
                start: p.start,
                nslabs: p.nslabs,
                area_used: p.area_used,
            })
            .collect(),
    }
}

/// Writes `text` with every line indented by two spaces.
fn indented(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    text.lines().try_for_each(|line| writeln!(f, "  {line}"))
}

/// IOVA allocator and cache statistics: iova-cache's own snapshot and text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct IovaReport {
    /// The allocator's statistics.
    #[cfg_attr(feature = "serde", serde(with = "remote::IovaStatsDef"))]
    pub stats: IovaStats,
}

impl fmt::Display for IovaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "iova:")?;
        indented(f, &self.stats.to_string())
    }
}

/// Report the statistics of `iova`.
pub fn iova(iova: &IovaAllocator) -> IovaReport {
    IovaReport {
        stats: iova.stats(),
    }
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
    #[cfg_attr(feature = "serde", serde(with = "remote::FqStatsDef"))]
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
        // `FqStats` has no text of its own (dma-iommu prints it inside `DomainStats`).
        let s = &self.stats;
        writeln!(
            f,
            "  enqueued {} reclaimed {} pending {} flushes {} (full {}) timer fires {}",
            s.enqueued, s.reclaimed, s.pending, s.flushes, s.full_flushes, s.timer_fires
        )
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
    #[cfg_attr(feature = "serde", serde(with = "remote::DomainStatsDef"))]
    pub stats: DomainStats,
    /// The IOVA allocator.
    pub iova: IovaReport,
    /// The bounce-buffer pool, if the domain has one.
    pub swiotlb: Option<SwiotlbReport>,
}

impl fmt::Display for DmaDomainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dma domain:")?;
        indented(f, &self.stats.to_string())?;
        write!(f, "{}", self.iova)?;
        match &self.swiotlb {
            Some(s) => write!(f, "{s}"),
            None => Ok(()),
        }
    }
}

/// Report a dma-iommu domain (each part read in turn while the domain keeps working).
pub fn dma_domain<T: dma_iommu::TlbOps + 'static>(d: &dma_iommu::Domain<T>) -> DmaDomainReport {
    DmaDomainReport {
        stats: d.stats(),
        iova: iova(d.iova_allocator()),
        swiotlb: d.swiotlb().map(swiotlb),
    }
}

/// serde definitions of the statistics types of iova-cache and dma-iommu, which do not
/// implement serde themselves (the compiler checks they list every field).
#[cfg(feature = "serde")]
mod remote {
    use dma_iommu::{DomainStats, FqStats};
    use iova_cache::{ClassStats, IovaStats, RangeStats};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "ClassStats")]
    struct ClassStatsDef {
        granules: u64,
        hits: u64,
        misses: u64,
        depot_magazines: usize,
        depot_granules: u64,
        cpu_granules: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "RangeStats")]
    struct RangeStatsDef {
        allocated_granules: u64,
        allocated_ranges: u64,
        reserved_granules: u64,
        free_granules: u64,
        free_ranges: u64,
        failures: u64,
    }

    /// `Vec<ClassStats>` through [`ClassStatsDef`].
    mod classes {
        use super::*;

        #[derive(Serialize, Deserialize)]
        struct Class(#[serde(with = "ClassStatsDef")] ClassStats);

        pub(super) fn serialize<S: Serializer>(v: &[ClassStats], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().cloned().map(Class))
        }

        pub(super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<ClassStats>, D::Error> {
            let v = Vec::<Class>::deserialize(d)?;
            Ok(v.into_iter().map(|Class(c)| c).collect())
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "IovaStats")]
    pub(super) struct IovaStatsDef {
        #[serde(with = "classes")]
        classes: Vec<ClassStats>,
        per_cpu_cached_granules: Vec<u64>,
        depot_cached_granules: u64,
        #[serde(with = "RangeStatsDef")]
        range: RangeStats,
        flushes: u64,
        trimmed_magazines: u64,
        refused_cached_frees: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "FqStats")]
    pub(super) struct FqStatsDef {
        enqueued: u64,
        reclaimed: u64,
        pending: u64,
        flushes: u64,
        full_flushes: u64,
        timer_fires: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "DomainStats")]
    pub(super) struct DomainStatsDef {
        maps: u64,
        bounced: u64,
        lists: u64,
        unmaps_synced: u64,
        unmaps_queued: u64,
        errors: u64,
        live: u64,
        lazy: bool,
        #[serde(with = "FqStatsDef")]
        fq: FqStats,
    }
}

/// Everything at once: what a VMM serves on its debug endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Report {
    /// vIOMMU domains.
    pub domains: Vec<DomainReport>,
    /// Bounce-buffer pools.
    pub swiotlb: Option<SwiotlbReport>,
    /// IOVA allocator.
    pub iova: Option<IovaReport>,
    /// Flush queues reported on their own.
    pub flush_queues: Vec<FlushQueueReport>,
    /// dma-iommu DMA domains.
    pub dma_domains: Vec<DmaDomainReport>,
}

impl Report {
    /// Every domain of `viommu`.
    pub fn with_viommu(mut self, viommu: &Viommu) -> Self {
        self.domains.extend(
            viommu
                .domain_ids()
                .into_iter()
                .filter_map(|id| domain(viommu, id)),
        );
        self
    }

    /// The statistics of `tlb`.
    pub fn with_swiotlb(mut self, tlb: &Swiotlb) -> Self {
        self.swiotlb = Some(swiotlb(tlb));
        self
    }

    /// The statistics of `alloc`.
    pub fn with_iova(mut self, alloc: &IovaAllocator) -> Self {
        self.iova = Some(iova(alloc));
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
        for d in &self.domains {
            write!(f, "{d}")?;
        }
        if let Some(s) = &self.swiotlb {
            write!(f, "{s}")?;
        }
        if let Some(i) = &self.iova {
            write!(f, "{i}")?;
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
