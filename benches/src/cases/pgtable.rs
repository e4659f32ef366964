//! The page-table cases: map+unmap of 4 KiB, 2 MiB and 256×4 KiB, and translation with 0 and 1
//! concurrent writers, on ours and on the mapping-store peers through [`MappingStore`].

use super::floor::{CAS, CHASE, FIRST_PAGE};
use crate::floor::scrambled_pages;
use crate::harness::{measure, measure_with_background, paced, Measurement, RunConfig};
use crate::peers::mapping::{ChMappingStore, IotlbPeer, MappingStore};
use crate::suite::{Case, Component, Omitted, Options, Role};
use io_pgtable::{Config, PageTable, Prot};
use parking_lot::Mutex;
use std::hint::black_box;
use std::sync::Arc;

/// Workload name of map+unmap of one 4 KiB page.
pub const MAP_4K: &str = "map+unmap 4 KiB";
/// Workload name of map+unmap of one 2 MiB block.
pub const MAP_2M: &str = "map+unmap 2 MiB";
/// Workload name of map+unmap of 256 4 KiB pages in one call.
pub const MAP_256: &str = "map+unmap 256×4 KiB";
/// Workload name of translation (each call takes its own read-side protection), no writer.
pub const TRANSLATE_0: &str = "translate (0 writers)";
/// Workload name of translation racing one writer that maps and unmaps elsewhere as fast as it
/// can.
pub const TRANSLATE_1: &str = "translate (1 writer)";
/// Workload name of translation racing a writer throttled to `rate` map+unmap pairs per second.
pub fn translate_paced(rate: u64) -> String {
    format!("translate (1 writer at {}k/s)", rate as f64 / 1000.0)
}
/// Workload name of translation under a read guard the thread already holds, no writer.
pub const GUARDED_0: &str = "translate, guard held (0 writers)";
/// Workload name of translation under an already-held guard, one writer.
pub const GUARDED_1: &str = "translate, guard held (1 writer)";

/// Implementation name of the cloud-hypervisor-style store.
pub const CH_STORE: &str = "RwLock<BTreeMap> (cloud-hypervisor)";
/// Implementation name of the vm-memory IOTLB peer.
pub const IOTLB: &str = "vm-memory Iotlb + RwLock";

/// Implementation name of our table.
pub const OURS: &str = "ours";
/// Implementation name of our table behind one global `Mutex`.
pub const OURS_MUTEX: &str = "ours behind one Mutex";

/// Our page table (stage 1, 4 KiB granule, 48-bit input: four levels, like the chase floor).
pub struct Ours(pub PageTable);

impl Ours {
    /// An empty table.
    pub fn new() -> Self {
        Ours(PageTable::new(Config::s1_4k(48)).expect("valid page-table configuration"))
    }
}

impl Default for Ours {
    fn default() -> Self {
        Self::new()
    }
}

const PROT: Prot = Prot::READ.union(Prot::WRITE);

impl MappingStore for Ours {
    #[inline]
    fn map(&self, iova: u64, phys: u64, size: u64) -> bool {
        self.0.map(iova, phys, size, PROT).is_ok()
    }

    #[inline]
    fn unmap(&self, iova: u64, size: u64) -> bool {
        self.0.unmap(iova, size).is_ok()
    }

    #[inline]
    fn translate(&self, iova: u64) -> Option<u64> {
        self.0.iova_to_phys(iova).map(|t| t.paddr)
    }
}

/// Our table behind one global lock: every map, unmap and translation takes it (isolates what
/// the lock-free design buys).
#[derive(Default)]
pub struct OursMutex(pub Mutex<Ours>);

impl MappingStore for OursMutex {
    fn map(&self, iova: u64, phys: u64, size: u64) -> bool {
        self.0.lock().map(iova, phys, size)
    }

    fn unmap(&self, iova: u64, size: u64) -> bool {
        self.0.lock().unmap(iova, size)
    }

    fn translate(&self, iova: u64) -> Option<u64> {
        self.0.lock().translate(iova)
    }
}

/// Where the map+unmap cases of thread `t` map (disjoint per thread, 4 GiB apart).
pub fn map_region(t: usize) -> u64 {
    (1 << 38) + ((t as u64) << 32)
}
/// The output address every mapping of page `page` points to.
pub fn phys_of(page: u64) -> u64 {
    (page << 12) + (1 << 44)
}
/// Where the racing writer maps and unmaps (away from the translated pages).
pub const WRITER_REGION: u64 = 1 << 37;

/// One thread's map+unmap op of `size` bytes on `store`, cycling over 64 slots of its region.
pub fn map_unmap_op<S: MappingStore + ?Sized>(store: &S, t: usize, size: u64) -> impl FnMut() + '_ {
    let base = map_region(t);
    let mut i = 0u64;
    move || {
        let iova = base + (i & 63) * size;
        i += 1;
        if store.map(iova, phys_of(iova >> 12), size) {
            store.unmap(iova, size);
        }
    }
}

/// Map `pages` 4 KiB pages from [`FIRST_PAGE`] on (the translation working set).
pub fn populate<S: MappingStore + ?Sized>(store: &S, pages: u64) {
    for p in FIRST_PAGE..FIRST_PAGE + pages {
        store.map(p << 12, phys_of(p), 4096);
    }
}

/// The racing writer: map and unmap one 4 KiB page at a time in [`WRITER_REGION`].
pub fn writer_op<S: MappingStore + ?Sized>(store: &S) -> impl FnMut() + Send + '_ {
    let mut i = 0u64;
    move || {
        let iova = WRITER_REGION + (i & 255) * 4096;
        i += 1;
        if store.map(iova, phys_of(iova >> 12), 4096) {
            store.unmap(iova, 4096);
        }
    }
}

/// Translate pages of the working set in the chase floor's order, one per op; with `writer`,
/// racing [`writer_op`] on its own thread.
fn translate_run<S: MappingStore>(
    cfg: &RunConfig,
    t: usize,
    store: &S,
    pages: u64,
    writer: Option<u64>,
) -> Measurement {
    let make = |t: usize| {
        let mut next = scrambled_pages(FIRST_PAGE, pages, t as u64 * 7919);
        move || {
            black_box(store.translate(black_box(next() << 12)));
        }
    };
    match writer {
        Some(rate) => measure_with_background(cfg, t, paced(rate, writer_op(store)), make),
        None => measure(cfg, t, make),
    }
}

/// The map+unmap and translation cases of one store implementation; `sizes` are the map+unmap
/// workloads it runs.
pub fn store_cases<S: MappingStore + Send + 'static>(
    opts: &Options,
    implementation: &str,
    role: Role,
    sizes: &[(&'static str, u64)],
    make: Arc<dyn Fn() -> S + Send + Sync>,
) -> Vec<Case> {
    let c = Component::Pgtable;
    let mut v = Vec::new();
    for &(name, size) in sizes {
        let make = make.clone();
        v.push(
            Case::new(c, name, implementation, role, move |cfg, t| {
                let s = make();
                measure(cfg, t, |t| map_unmap_op(&s, t, size))
            })
            .with_floor(CAS),
        );
    }
    let (pages, rate) = (opts.translate_pages, opts.writer_rate);
    let workloads = [
        (TRANSLATE_0.to_string(), None),
        (TRANSLATE_1.to_string(), Some(0)),
        (translate_paced(rate), Some(rate)),
    ];
    for (name, writer) in workloads {
        let make = make.clone();
        v.push(
            Case::new(c, name, implementation, role, move |cfg, t| {
                let s = make();
                populate(&s, pages);
                translate_run(cfg, t, &s, pages, writer)
            })
            .with_floor(CHASE),
        );
    }
    v
}

/// Translation under a reader pinned once per thread before the clock starts, with 0 and 1
/// writers.
fn guarded_cases(opts: &Options) -> Vec<Case> {
    let pages = opts.translate_pages;
    [(GUARDED_0, None), (GUARDED_1, Some(0))]
        .into_iter()
        .map(|(name, writer)| {
            Case::new(Component::Pgtable, name, OURS, Role::Ours, move |cfg, t| {
                let s = Ours::new();
                populate(&s, pages);
                let make = |t: usize| {
                    let reader = s.0.reader();
                    let mut next = scrambled_pages(FIRST_PAGE, pages, t as u64 * 7919);
                    move || {
                        black_box(reader.translate(black_box(next() << 12)));
                    }
                };
                match writer {
                    Some(rate) => measure_with_background(cfg, t, paced(rate, writer_op(&s)), make),
                    None => measure(cfg, t, make),
                }
            })
            .with_floor(CHASE)
        })
        .collect()
}

/// The page-table cases selected by `opts`: ours, ours behind a lock, and the peers.
pub fn cases(opts: &Options) -> (Vec<Case>, Vec<Omitted>) {
    if !opts.has(Component::Pgtable) {
        return (Vec::new(), Vec::new());
    }
    let mut v = Vec::new();
    let all_sizes = [(MAP_4K, 4096), (MAP_2M, 2 << 20), (MAP_256, 256 * 4096)];
    v.extend(store_cases(
        opts,
        OURS,
        Role::Ours,
        &all_sizes,
        Arc::new(Ours::new),
    ));
    v.extend(guarded_cases(opts));
    v.extend(store_cases(
        opts,
        OURS_MUTEX,
        // Our code with the design choice under test turned off: compared like a peer.
        Role::Peer,
        &all_sizes,
        Arc::new(OursMutex::default),
    ));
    let sizes = [(MAP_4K, 4096)];
    v.extend(store_cases(
        opts,
        CH_STORE,
        Role::Peer,
        &sizes,
        Arc::new(ChMappingStore::new),
    ));
    v.extend(store_cases(
        opts,
        IOTLB,
        Role::Peer,
        &sizes,
        Arc::new(IotlbPeer::new),
    ));
    (v, Vec::new())
}
