//! The soak: a long mixed workload over every crate, with invariants checked at quiescent
//! points during the run and at the end.
//!
//! Worker threads each loop over one operation per crate: bounce a buffer through
//! swiotlb-core (map, device write, sync, unmap, bytes checked), allocate and free IOVAs
//! (ownership of every pfn tracked in an atomic bitmap, so a range handed to two users is
//! seen at once), and map/unmap pages of their own region of a shared page table whose
//! output address is a function of the input address. A reader thread translates and dumps
//! the table throughout: every translation it sees must be that function of its input (a
//! stale or freed table would show something else) and nothing is ever translated in the
//! guard region that no one maps.
//!
//! Every [`SoakConfig::check_every`] the checker pauses the workers (they park between
//! operations, keeping their live mappings) and compares each crate's statistics with what
//! the workers hold: swiotlb slots used = slots of live mappings, the IOVA tree = held plus
//! cached ranges, tables reachable = tables linked, leaves = live mappings. At the end every
//! worker releases everything and the checker requires all slots free, all IOVAs back, only
//! the root table left, and no growth trend in the memory the crates report.

use dma_iommu::test_util::SimulatedDevice;
use dma_iommu::{
    Device as DmaDevice, DeviceConfig as DmaDeviceConfig, Domain, DomainConfig, FqConfig, NoTlb,
};
use dma_model::iova::{class_size, MAX_CACHED};
use dma_model::XorShift;
use dma_sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use dma_sync::{Arc, Mutex};
use io_pgtable::{Config as PtConfig, PageTable, Prot};
use iova_cache::config::CACHE_CLASSES;
use iova_cache::{IovaAllocator, IovaConfig};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};
use swiotlb_core::{
    Config as BounceConfig, Device, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb,
};

/// How long and how wide the soak runs.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Total run time.
    pub duration: Duration,
    /// Worker threads (a translating reader runs besides them).
    pub workers: usize,
    /// Period of the quiescent invariant checks.
    pub check_every: Duration,
    /// Seed of the workers' pseudo-random choices.
    pub seed: u64,
    /// One operation in this many runs with an allocation site it reaches armed to fail
    /// (0: never). A failure must be a typed error that loses nothing.
    pub fault_one_in: u64,
}

impl SoakConfig {
    /// `DMALOOM_SOAK_SECS` (default `default_secs`), `DMALOOM_SOAK_WORKERS` (default 3),
    /// `DMALOOM_SOAK_SEED` and `DMALOOM_SOAK_FAULTS` (one operation in this many gets a
    /// failing allocation; default 16, 0 for none) from the environment; checks every 250 ms,
    /// or ten times per run for short runs.
    ///
    /// ```
    /// let cfg = dma_soak::workload::SoakConfig::from_env(1);
    /// assert!(cfg.workers >= 1);
    /// ```
    pub fn from_env(default_secs: u64) -> Self {
        let get = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let duration = Duration::from_secs_f64(
            std::env::var("DMALOOM_SOAK_SECS")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(default_secs as f64),
        );
        SoakConfig {
            duration,
            workers: get("DMALOOM_SOAK_WORKERS").unwrap_or(3).max(1) as usize,
            check_every: (duration / 10).min(Duration::from_millis(250)),
            seed: get("DMALOOM_SOAK_SEED").unwrap_or(0x5eed),
            fault_one_in: get("DMALOOM_SOAK_FAULTS").unwrap_or(16),
        }
    }
}

/// What a soak run did.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Operations per crate: swiotlb maps, IOVA allocations, page-table maps, DMA maps.
    pub ops: [u64; 4],
    /// Translations and dumps taken by the reader.
    pub reads: u64,
    /// Quiescent checks passed.
    pub checks: u64,
    /// Injected allocation failures the operations met (each a typed error that lost
    /// nothing, or a fallback).
    pub faults: u64,
    /// Peak memory the crates reported, first and second half of the run: swiotlb slots,
    /// IOVA cached granules, linked page-table levels, retired levels not yet freed.
    pub peaks: [[u64; 4]; 2],
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bounce maps, {} IOVA allocations, {} page-table maps, {} DMA maps, {} reads, {} checks, {} injected allocation failures; peaks (slots, cached granules, linked tables, tables awaiting free) {:?} then {:?}",
            self.ops[0], self.ops[1], self.ops[2], self.ops[3], self.reads, self.checks, self.faults, self.peaks[0], self.peaks[1]
        )
    }
}

/// Bytes of original memory the bounce workload copies from and to.
const ORIG_LEN: usize = 1 << 20;
/// IOVA space in granules.
const IOVA_PFNS: u64 = 1 << 16;
/// Each worker's slice of the DMA domain's memory.
const DOM_SLICE: usize = 64 * 1024;
/// Each worker's page-table region (input addresses).
const REGION: u64 = 1 << 30;
/// The output address every mapping of `iova` uses.
fn paddr_of(iova: u64) -> u64 {
    iova ^ 0x0000_5a5a_0000_0000
}

/// Everything the workers share.
struct Shared {
    swiotlb: Swiotlb,
    dev: Device,
    base: u64,
    iova: IovaAllocator,
    owners: Vec<AtomicU64>,
    pt: PageTable,
    /// A DMA domain (strict, switched to lazy halfway) with a trusted and an untrusted device.
    dom: Domain<NoTlb>,
    dom_devs: [DmaDevice; 2],
    dom_base: u64,
    /// Page-table levels the reader saw freed-looking data in, or translations that broke the
    /// paddr function; any is a failure.
    bad: Mutex<Vec<String>>,
    pause: AtomicBool,
    parked: AtomicUsize,
    stop: AtomicBool,
    /// What each worker holds, published at each pause: (slots, iova (pfn, size) list, page-table leaves).
    held: Mutex<Vec<Held>>,
}

#[derive(Debug, Default, Clone)]
struct Held {
    slots: usize,
    iovas: Vec<(u64, u64)>,
    leaves: BTreeMap<u64, u64>,
    dma: Vec<(usize, u64, u64, usize)>,
}

/// The fault sites each crate's operation may reach (per thread: a worker arms only its own
/// calls).
mod sites {
    use dma_sync::fault::Site;
    pub(super) const BOUNCE: &[&Site] = &[&swiotlb_core::faults::TRANSIENT_POOL];
    pub(super) const IOVA: &[&Site] = &[
        &iova_cache::faults::MAGAZINE_ALLOC,
        &iova_cache::faults::DEPOT_GROW,
        &iova_cache::faults::TREE_NODE,
        &iova_cache::faults::OWNER_RECORD,
        &iova_cache::faults::CHUNK_ALLOC,
    ];
    pub(super) const PGTABLE: &[&Site] = &[&io_pgtable::faults::TABLE_ALLOC];
    pub(super) const DMA: &[&Site] = &[
        &dma_iommu::faults::MAPPING_RECORD,
        &io_pgtable::faults::TABLE_ALLOC,
        &iova_cache::faults::TREE_NODE,
        &iova_cache::faults::MAGAZINE_ALLOC,
        &swiotlb_core::faults::TRANSIENT_POOL,
    ];
}

/// Run `f`, one time in `rate` (never for 0) with the next allocation at one of `sites`
/// failing; returns `f`'s result and whether an injected failure was consumed.
fn with_random_fault<R>(
    rng: &mut XorShift,
    rate: u64,
    sites: &[&'static dma_sync::fault::Site],
    f: impl FnOnce() -> R,
) -> (R, bool) {
    #[cfg(feature = "fault-injection")]
    if rng.one_in(rate) {
        let site = sites[rng.below(sites.len() as u64) as usize];
        let (r, used) = dma_sync::fault::armed(site, 1, f);
        return (r, used > 0);
    }
    let _ = (rng, rate, sites);
    (f(), false)
}

impl Shared {
    fn fail(&self, what: String) {
        self.bad.lock().push(what);
    }

    /// Claim (or release) every pfn of a range in the ownership bitmap; a claim of a pfn that
    /// is already owned is a range handed out twice.
    fn own(&self, pfn: u64, size: u64, claim: bool) {
        for p in pfn..pfn + size {
            let bit = 1u64 << (p % 64);
            let word = &self.owners[(p / 64) as usize];
            let old = if claim {
                word.fetch_or(bit, Relaxed)
            } else {
                word.fetch_and(!bit, Relaxed)
            };
            if (old & bit != 0) == claim {
                self.fail(format!(
                    "pfn {p:#x} {} twice",
                    if claim { "handed out" } else { "returned" }
                ));
            }
        }
    }

    fn park_if_asked(&self, held: &Held, slot: usize) {
        if !self.pause.load(Acquire) {
            return;
        }
        self.held.lock()[slot] = held.clone();
        self.parked.fetch_add(1, AcqRel);
        while self.pause.load(Acquire) {
            dma_sync::thread::yield_now();
        }
        self.parked.fetch_sub(1, AcqRel);
    }
}

/// One worker: a bounce, an IOVA and a page-table operation per iteration.
fn worker(sh: &Shared, id: usize, seed: u64, rate: u64, ops: &[AtomicU64; 5]) {
    dma_sync::cpu::set_current(Some(id));
    let mut rng = XorShift::new(seed);
    let mut held = Held::default();
    let mut maps: Vec<(u64, usize, usize)> = Vec::new(); // (bounce addr, orig offset, size)
    let region = (id as u64 + 1) * REGION;
    while !sh.stop.load(Acquire) {
        sh.park_if_asked(&held, id);
        // swiotlb: keep up to 4 live mappings; each round trip must bring the device's bytes back.
        if maps.len() < 4 && rng.below(2) == 0 {
            let size = 1 + rng.below(16 * 1024) as usize;
            let off = (id * ORIG_LEN / 8 + maps.len() * 32 * 1024) % (ORIG_LEN - 32 * 1024);
            let (r, injected) = with_random_fault(&mut rng, rate, sites::BOUNCE, || {
                sh.swiotlb.map(
                    &sh.dev,
                    sh.base + off as u64,
                    size,
                    Direction::Bidirectional,
                    MapAttrs::default(),
                )
            });
            match r {
                Ok(a) => {
                    held.slots += size.div_ceil(swiotlb_core::IO_TLB_SIZE);
                    maps.push((a, off, size));
                    ops[0].fetch_add(1, Relaxed);
                }
                Err(swiotlb_core::Error::NoSpace { .. }) if injected => {
                    ops[4].fetch_add(1, Relaxed);
                }
                Err(e) => sh.fail(format!("bounce map of {size}: {e}")),
            }
        } else if let Some((a, off, size)) = maps.pop() {
            let byte = rng.next_u64() as u8;
            let data = vec![byte; size];
            let r = sh
                .swiotlb
                .write_bounce(&sh.dev, a, &data)
                .and_then(|()| {
                    sh.swiotlb
                        .sync_for_cpu(&sh.dev, a, size, Direction::Bidirectional)
                })
                .and_then(|()| {
                    sh.swiotlb.unmap(
                        &sh.dev,
                        a,
                        size,
                        Direction::Bidirectional,
                        MapAttrs::default(),
                    )
                });
            held.slots -= size.div_ceil(swiotlb_core::IO_TLB_SIZE);
            let mut back = vec![0; size];
            let read = sh.swiotlb.memory().read(sh.base + off as u64, &mut back);
            if r.is_err() || read.is_err() || back != data {
                sh.fail(format!("bounce round trip at {a:#x}: {r:?} {read:?}"));
            }
        }
        // iova-cache: up to 64 live ranges of 1 to 80 granules (cached up to 64, rounded up).
        if held.iovas.len() < 64 && rng.below(2) == 0 {
            let size = 1 + rng.below(MAX_CACHED + 16);
            let limit = if rng.below(4) == 0 {
                IOVA_PFNS / 4
            } else {
                IOVA_PFNS - 1
            };
            let (r, injected) =
                with_random_fault(&mut rng, rate, sites::IOVA, || sh.iova.alloc(size, limit));
            match r {
                Err(iova_cache::IovaError::OutOfMemory { .. }) if injected => {
                    ops[4].fetch_add(1, Relaxed);
                }
                Ok(pfn) => {
                    let rounded = class_size(size);
                    sh.own(pfn, rounded, true);
                    held.iovas.push((pfn, size));
                    ops[1].fetch_add(1, Relaxed);
                }
                Err(e) => sh.fail(format!("iova alloc of {size} below {limit:#x}: {e}")),
            }
        } else if !held.iovas.is_empty() {
            let (pfn, size) = held
                .iovas
                .swap_remove(rng.below(held.iovas.len() as u64) as usize);
            let rounded = class_size(size);
            sh.own(pfn, rounded, false);
            // A free allocates only on its fast path, whose failure falls back: never refused.
            let (r, injected) =
                with_random_fault(&mut rng, rate, sites::IOVA, || sh.iova.free(pfn, size));
            ops[4].fetch_add(u64::from(injected), Relaxed);
            if let Err(e) = r {
                sh.fail(format!(
                    "iova free {pfn:#x} (fault injected: {injected}): {e}"
                ));
            }
        }
        // dma-iommu: map a buffer of this worker's slice for either device, let the device
        // write it through the IOMMU, unmap, and find the device's bytes in memory.
        if held.dma.len() < 4 && rng.below(2) == 0 {
            let d = rng.below(2) as usize;
            let size = 1 + rng.below(8 * 1024) as usize;
            let paddr =
                sh.dom_base + (id * DOM_SLICE + held.dma.len() * 8 * 1024) as u64 + rng.below(64);
            let (r, injected) = with_random_fault(&mut rng, rate, sites::DMA, || {
                sh.dom
                    .map(&sh.dom_devs[d], paddr, size, Direction::Bidirectional)
            });
            match r {
                Err(
                    dma_iommu::DmaError::NoMemory
                    | dma_iommu::DmaError::PageTable(io_pgtable::Error::NoMemory)
                    | dma_iommu::DmaError::NoIova(iova_cache::IovaError::OutOfMemory { .. })
                    | dma_iommu::DmaError::Bounce(swiotlb_core::Error::NoSpace { .. }),
                ) if injected => {
                    ops[4].fetch_add(1, Relaxed);
                }
                Ok(dma) => {
                    if sh.dom.translate(dma).is_none() {
                        sh.fail(format!("fresh DMA mapping {dma:#x} does not translate"));
                    }
                    held.dma.push((d, dma, paddr, size));
                    ops[3].fetch_add(1, Relaxed);
                }
                Err(e) => sh.fail(format!("dma map of {size} for device {d}: {e}")),
            }
        } else if let Some((d, dma, paddr, size)) = held.dma.pop() {
            let data = vec![rng.next_u64() as u8; size];
            let dev = &sh.dom_devs[d];
            if let Err(e) = SimulatedDevice::new(
                &sh.dom,
                dev,
                sh.dom.swiotlb().expect("bounce buffers").memory(),
            )
            .write(dma, &data)
            {
                sh.fail(format!("device write through {dma:#x}: {e}"));
            }
            let (r, injected) = with_random_fault(&mut rng, rate, sites::DMA, || {
                sh.dom.unmap(dev, dma, size, Direction::Bidirectional)
            });
            ops[4].fetch_add(u64::from(injected), Relaxed);
            if let Err(e) = r {
                sh.fail(format!(
                    "dma unmap {dma:#x} (fault injected: {injected}): {e}"
                ));
            }
            // Another worker may own this IOVA by now, never with our physical page.
            if sh.dom.translate(dma) == Some(paddr) {
                sh.fail(format!(
                    "{dma:#x} still translates to our buffer after its unmap"
                ));
            }
            let mut back = vec![0; size];
            let mem = sh.dom.swiotlb().expect("bounce buffers").memory();
            if mem.read(paddr, &mut back).is_err() || back != data {
                sh.fail(format!(
                    "device bytes through {dma:#x} did not reach memory"
                ));
            }
        }
        // io-pgtable: 4 KiB pages and 2 MiB blocks in this worker's own region.
        if held.leaves.len() < 64 && rng.below(2) == 0 {
            let block = rng.below(4) == 0;
            let size: u64 = if block { 2 << 20 } else { 4096 };
            let iova = region + rng.below(REGION / size) * size;
            let (r, injected) = with_random_fault(&mut rng, rate, sites::PGTABLE, || {
                sh.pt
                    .map_pages(iova, paddr_of(iova), size, 1, Prot::READ | Prot::WRITE)
            });
            match r {
                Err(io_pgtable::Error::NoMemory) if injected => {
                    ops[4].fetch_add(1, Relaxed);
                }
                Ok(_) => {
                    held.leaves.insert(iova, size);
                    ops[2].fetch_add(1, Relaxed);
                }
                Err(io_pgtable::Error::Exists { .. }) => {}
                Err(e) => sh.fail(format!("map {iova:#x}: {e}")),
            }
        } else if let Some((&iova, &size)) = held
            .leaves
            .iter()
            .nth(rng.below(held.leaves.len() as u64) as usize)
        {
            held.leaves.remove(&iova);
            if sh.pt.unmap(iova, size) != Ok(size) {
                sh.fail(format!("unmap {iova:#x}"));
            }
            // Our own unmap is complete: we must not translate it any more.
            if sh.pt.iova_to_phys(iova).is_some() {
                sh.fail(format!(
                    "{iova:#x} still translates after its unmap returned"
                ));
            }
        }
    }
    // Release everything.
    for (d, dma, _, size) in held.dma.drain(..) {
        if let Err(e) = sh
            .dom
            .unmap(&sh.dom_devs[d], dma, size, Direction::Bidirectional)
        {
            sh.fail(format!("final dma unmap: {e}"));
        }
    }
    for (a, _, size) in maps.drain(..) {
        if let Err(e) = sh
            .swiotlb
            .unmap(&sh.dev, a, size, Direction::ToDevice, MapAttrs::default())
        {
            sh.fail(format!("final bounce unmap: {e}"));
        }
    }
    for (pfn, size) in held.iovas.drain(..) {
        sh.own(pfn, class_size(size), false);
        if let Err(e) = sh.iova.free(pfn, size) {
            sh.fail(format!("final iova free: {e}"));
        }
    }
    if sh.pt.unmap(region, REGION).is_err() && !held.leaves.is_empty() {
        sh.fail(format!("final unmap of region {region:#x}"));
    }
}

/// The reader: translations and dumps of the shared table while the workers change it.
fn reader(sh: &Shared, seed: u64, reads: &AtomicU64, workers: usize) {
    let mut rng = XorShift::new(seed);
    let guard_region = (workers as u64 + 1) * REGION;
    while !sh.stop.load(Acquire) {
        sh.park_if_asked(&Held::default(), workers);
        for _ in 0..64 {
            let iova = REGION + rng.below((workers as u64 + 1) * REGION);
            match sh.pt.iova_to_phys(iova) {
                Some(t) if iova >= guard_region => {
                    sh.fail(format!("never-mapped {iova:#x} translates: {t:?}"))
                }
                Some(t) if t.paddr() != paddr_of(iova) => {
                    sh.fail(format!("{iova:#x} translates to {:#x}", t.paddr()))
                }
                _ => {}
            }
        }
        for leaf in sh.pt.dump().leaves() {
            if let io_pgtable::Descriptor::Leaf { paddr, .. } = leaf.desc {
                if paddr != paddr_of(leaf.iova) {
                    sh.fail(format!("dump: leaf at {:#x} -> {paddr:#x}", leaf.iova));
                }
            }
        }
        sh.iova.trim_once();
        reads.fetch_add(65, Relaxed);
    }
}

/// Run the soak; `Err` lists every invariant that broke.
///
/// ```
/// // Two checks: too short for the memory-trend checks, which need four.
/// let cfg = dma_soak::workload::SoakConfig {
///     duration: std::time::Duration::from_millis(200),
///     workers: 2,
///     check_every: std::time::Duration::from_millis(80),
///     seed: 1,
///     fault_one_in: 8,
/// };
/// let report = dma_soak::workload::run(&cfg).unwrap();
/// assert!(report.checks >= 1);
/// ```
pub fn run(cfg: &SoakConfig) -> Result<SoakReport, Vec<String>> {
    let mem = RegionMemory::new(ORIG_LEN);
    let base = mem.base();
    let swiotlb_config = BounceConfig {
        background_growth: true,
        growth_nslabs: 256,
        ..BounceConfig::tiny(256, 2, 32)
    };
    let swiotlb = Swiotlb::new(swiotlb_config, mem).map_err(|e| vec![e.to_string()])?;
    let dev = swiotlb.device(DeviceConfig::default());
    let iova_cfg = IovaConfig {
        cpus: cfg.workers,
        magazine_size: 8,
        // The reader trims between its rounds, so the quiescent checks see a still cache.
        trim_interval: None,
        ..IovaConfig::with_space(1, IOVA_PFNS - 1)
    };
    let iova = IovaAllocator::new(iova_cfg).map_err(|e| vec![e.to_string()])?;
    let pt = PageTable::new(PtConfig::s1_4k(39)).map_err(|e| vec![e.to_string()])?;
    let dom_mem = RegionMemory::new(cfg.workers * DOM_SLICE);
    let dom_base = dom_mem.base();
    let dom_bounce =
        Swiotlb::new(BounceConfig::tiny(256, 2, 32), dom_mem).map_err(|e| vec![e.to_string()])?;
    let dom_cfg = DomainConfig::new(PtConfig::s1_4k(39)).map_err(|e| vec![e.to_string()])?;
    let dom = Domain::new(dom_cfg, NoTlb, Some(dom_bounce)).map_err(|e| vec![e.to_string()])?;
    let attach = |trusted| {
        dom.attach(DmaDeviceConfig {
            trusted,
            ..DmaDeviceConfig::default()
        })
    };
    let dom_devs = [attach(true), attach(false)];
    let dom_devs = match dom_devs {
        [Ok(a), Ok(b)] => [a, b],
        _ => return Err(vec!["attach to the DMA domain failed".into()]),
    };
    let sh = Arc::new(Shared {
        swiotlb,
        dev,
        base,
        iova,
        owners: (0..IOVA_PFNS / 64).map(|_| AtomicU64::new(0)).collect(),
        pt,
        dom,
        dom_devs,
        dom_base,
        bad: Mutex::new(Vec::new()),
        pause: AtomicBool::new(false),
        parked: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        held: Mutex::new(vec![Held::default(); cfg.workers + 1]),
    });
    // Per crate, then injected failures met.
    let ops = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let reads = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for id in 0..cfg.workers {
        let (sh, ops, seed) = (
            sh.clone(),
            ops.clone(),
            cfg.seed.wrapping_mul(id as u64 + 7),
        );
        let rate = cfg.fault_one_in;
        handles.push(dma_sync::thread::spawn(move || {
            worker(&sh, id, seed, rate, &ops)
        }));
    }
    {
        let (sh, reads, seed, n) = (sh.clone(), reads.clone(), cfg.seed ^ 0xabcdef, cfg.workers);
        handles.push(dma_sync::thread::spawn(move || {
            reader(&sh, seed, &reads, n)
        }));
    }
    let mut report = SoakReport::default();
    let start = Instant::now();
    while start.elapsed() < cfg.duration {
        std::thread::sleep(
            cfg.check_every
                .min(cfg.duration.saturating_sub(start.elapsed())),
        );
        sh.pause.store(true, Release);
        let asked = Instant::now();
        while sh.parked.load(Acquire) < cfg.workers + 1 && asked.elapsed() < Duration::from_secs(30)
        {
            dma_sync::thread::yield_now();
        }
        if sh.parked.load(Acquire) < cfg.workers + 1 {
            sh.fail(
                "a soak thread did not reach its pause point within 30 s (hang or panic)".into(),
            );
            sh.pause.store(false, Release);
            break;
        }
        let half = usize::from(start.elapsed() > cfg.duration / 2);
        let peaks = quiescent_check(&sh);
        for (p, v) in report.peaks[half].iter_mut().zip(peaks) {
            *p = (*p).max(v);
        }
        report.checks += 1;
        sh.pause.store(false, Release);
        // Halfway: strict to lazy while the workers map and unmap.
        if half == 1 && !sh.dom.is_lazy() {
            if let Err(e) = sh.dom.set_lazy(FqConfig::per_cpu().with_cpus(cfg.workers)) {
                sh.fail(format!("set_lazy: {e}"));
            }
        }
        if !sh.bad.lock().is_empty() {
            break;
        }
    }
    sh.stop.store(true, Release);
    for h in handles {
        if h.join().is_err() {
            sh.fail("a soak thread panicked".into());
        }
    }
    final_check(&sh, &report);
    report.ops = [0, 1, 2, 3].map(|i| ops[i].load(Relaxed));
    report.faults = ops[4].load(Relaxed);
    report.reads = reads.load(Relaxed);
    let bad = std::mem::take(&mut *sh.bad.lock());
    if bad.is_empty() {
        Ok(report)
    } else {
        Err(bad)
    }
}

/// With every worker parked: each crate's own accounting against what the workers hold.
/// Returns the memory figures for the trend check.
fn quiescent_check(sh: &Shared) -> [u64; 4] {
    let held = sh.held.lock().clone();
    let s = sh.swiotlb.stats();
    let slots: usize = held.iter().map(|h| h.slots).sum();
    if s.used != slots {
        sh.fail(format!(
            "swiotlb: {} slots used, workers hold {slots}",
            s.used
        ));
    }
    if let Err(e) = sh.swiotlb.check_invariants() {
        sh.fail(format!("swiotlb invariants: {e}"));
    }
    let mut expected: Vec<(u64, u64)> = held
        .iter()
        .flat_map(|h| h.iovas.iter().map(|&(p, s)| (p, class_size(s))))
        .chain(sh.iova.cached_ranges())
        .collect();
    expected.sort_unstable();
    let mut real = sh.iova.allocated_ranges();
    real.sort_unstable();
    if real != expected {
        sh.fail(format!(
            "iova: {} ranges allocated, held + cached = {}",
            real.len(),
            expected.len()
        ));
    }
    if let Err(e) = sh.iova.check_invariants() {
        sh.fail(format!("iova invariants: {e}"));
    }
    let dma_live: usize = held.iter().map(|h| h.dma.len()).sum();
    if sh.dom.stats().live != dma_live as u64 {
        sh.fail(format!(
            "dma domain: {} live mappings, workers hold {dma_live}",
            sh.dom.stats().live
        ));
    }
    let dump = sh.pt.dump();
    let st = sh.pt.stats();
    if dump.tables as u64 != st.linked() {
        sh.fail(format!(
            "page table: {} tables reachable, {} linked",
            dump.tables,
            st.linked()
        ));
    }
    let leaves: BTreeMap<u64, u64> = dump.leaves().map(|e| (e.iova, 0)).collect();
    let held_leaves: usize = held.iter().map(|h| h.leaves.len()).sum();
    if leaves.len() != held_leaves
        || held
            .iter()
            .flat_map(|h| h.leaves.keys())
            .any(|k| !leaves.contains_key(k))
    {
        sh.fail(format!(
            "page table: {} leaves, workers hold {held_leaves}",
            leaves.len()
        ));
    }
    [
        s.nslabs as u64,
        sh.iova.stats().cached_granules(),
        st.linked(),
        st.discarded + st.retired - st.freed,
    ]
}

/// After every worker released everything.
fn final_check(sh: &Shared, report: &SoakReport) {
    let s = sh.swiotlb.stats();
    if s.used != 0 || s.transient_pools != 0 || sh.dev.transient_pools() != 0 {
        sh.fail(format!(
            "swiotlb at the end: {} slots used, {} transient pools",
            s.used, s.transient_pools
        ));
    }
    sh.iova.flush_all();
    let left = sh.iova.allocated_ranges();
    if !left.is_empty() {
        sh.fail(format!(
            "iova at the end: {} ranges still allocated",
            left.len()
        ));
    }
    if sh.owners.iter().any(|w| w.load(Relaxed) != 0) {
        sh.fail("iova ownership bitmap not empty at the end".into());
    }
    sh.dom.flush_queue_now();
    let ds = sh.dom.stats();
    if ds.live != 0 || ds.fq.pending != 0 {
        sh.fail(format!(
            "dma domain at the end: {} live, {} queued",
            ds.live, ds.fq.pending
        ));
    }
    if !ds.lazy && report.checks >= 4 {
        sh.fail("the strict-to-lazy switch did not happen".into());
    }
    sh.dom.iova_allocator().flush_all();
    let left = sh.dom.iova_allocator().allocated_ranges();
    let used = sh.dom.swiotlb().map_or(0, |t| t.stats().used);
    if !left.is_empty() || used != 0 {
        sh.fail(format!(
            "dma domain at the end: {} IOVA ranges, {used} bounce slots",
            left.len()
        ));
    }
    // Every retired table is freed once the grace periods have run: push the deferred frees
    // until they are (a table never freed is a leak).
    let mut st = sh.pt.stats();
    for _ in 0..10_000 {
        if st.freed == st.discarded + st.retired {
            break;
        }
        dma_sync::rcu::pin().flush();
        st = sh.pt.stats();
    }
    if st.freed != st.discarded + st.retired {
        sh.fail(format!(
            "page table: {} tables released, {} freed",
            st.discarded + st.retired,
            st.freed
        ));
    }
    if st.linked() != 1 || sh.pt.dump().tables != 1 {
        sh.fail(format!(
            "page table at the end: {} tables linked, {} reachable",
            st.linked(),
            sh.pt.dump().tables
        ));
    }
    // Flat memory: the second half of the run may not need more than the first half did,
    // beyond one growth step of bounce slots and the allowance of the caches.
    let [first, second] = report.peaks;
    if report.checks >= 4 && first[0] > 0 && second[0] > first[0] + 256 {
        sh.fail(format!(
            "swiotlb kept growing: {} then {} slots",
            first[0], second[0]
        ));
    }
    if report.checks >= 4 && second[1] > 2 * first[1] + 8 * MAX_CACHED * CACHE_CLASSES as u64 {
        sh.fail(format!(
            "IOVA caches kept growing: {} then {} granules",
            first[1], second[1]
        ));
    }
    // Retired levels wait for the RCU's collection (every 64 retirements per thread); it may
    // lag, never run away.
    if report.checks >= 4 && second[3] > 8 * first[3] + 16_384 {
        sh.fail(format!(
            "retired page-table levels pile up: {} then {}",
            first[3], second[3]
        ));
    }
    if report.checks >= 4 && first[2] > 0 && second[2] > 2 * first[2] + 8 {
        sh.fail(format!(
            "page-table levels kept growing: {} then {}",
            first[2], second[2]
        ));
    }
}
