//! The page-table cases: map+unmap of 4 KiB, 2 MiB and 256×4 KiB; translation with 0 and 1
//! concurrent writers, in the two kinds of the chase floor (dependent: each IOVA comes from the
//! previous translation; independent: IOVAs from a counter); translation under a guard held
//! across calls; and the scale sweep (dependent translation from 1k to 1M live mappings), on
//! ours and on the mapping-store peers through [`MappingStore`].

use super::floor::{cycle, dependent_start, CAS, CHASE_DEP, CHASE_INDEP};
use crate::floor::{scrambled_pages, Cycle};
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
/// Workload name of independent translation (each call takes its own read-side protection),
/// no writer.
pub const TRANSLATE_0: &str = "translate, independent (0 writers)";
/// Workload name of independent translation racing one writer that maps and unmaps elsewhere
/// as fast as it can.
pub const TRANSLATE_1: &str = "translate, independent (1 writer)";
/// Workload name of dependent translation, no writer.
pub const TRANSLATE_DEP_0: &str = "translate, dependent (0 writers)";
/// Workload name of dependent translation racing one writer.
pub const TRANSLATE_DEP_1: &str = "translate, dependent (1 writer)";
/// Workload name of independent translation racing a writer throttled to `rate` map+unmap
/// pairs per second.
pub fn translate_paced(rate: u64) -> String {
    format!(
        "translate, independent (1 writer at {}k/s)",
        rate as f64 / 1000.0
    )
}
/// Workload name of dependent translation under a read guard the thread already holds.
pub const GUARDED_DEP: &str = "translate, guard held, dependent";
/// Workload name of independent translation under a read guard the thread already holds.
pub const GUARDED_INDEP: &str = "translate, guard held, independent";
/// Workload name of dependent translation under a held read guard, racing one writer (what the
/// writer costs a reader apart from the pin; see [`WRITER_REGION`]).
pub const GUARDED_DEP_1: &str = "translate, guard held, dependent (1 writer)";

/// Workload name of the scale sweep: dependent translation with `mappings` live 4 KiB mappings.
pub fn sweep(mappings: u64) -> String {
    format!(
        "translate, dependent, {} mappings",
        super::human_count(mappings)
    )
}

/// Whether each translated IOVA comes from the previous translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Each IOVA is the page the previous translation returned (latency).
    Dependent,
    /// IOVAs from a counter, scrambled (throughput).
    Independent,
}

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
        self.0.iova_to_phys(iova).map(|t| t.paddr())
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
/// Base of the output addresses of every mapping.
const PHYS_BASE: u64 = 1 << 44;

/// The output address every mapping of page `page` points to.
pub fn phys_of(page: u64) -> u64 {
    (page << 12) + PHYS_BASE
}

/// The page whose mapping [`phys_of`] gives `phys` (inside the page).
pub fn page_of(phys: u64) -> u64 {
    (phys - PHYS_BASE) >> 12
}
/// Where the racing writer maps and unmaps (away from the translated pages).
///
/// As a VMM's vIOMMU sees it: the guest maps and unmaps other IOVAs while a device model
/// translates its own. The translated pages (from 4 GiB) and this region share the root table
/// and one level-1 table, in entries 992 bytes apart, and nothing below: the writer stores only to
/// its own leaf table (tables emptied by page unmaps stay linked, so it allocates and frees
/// none and touches no counter). What a reader could pay for the writer is therefore the RCU
/// pin: each one-call translation pins, reading the global epoch and writing the reader's own
/// record. The writer retires nothing, so it never collects: it neither advances the epoch nor
/// reads the reader's record, and no line crosses between the two CPUs (no locked instruction
/// either since the RCU's read side became a plain store). With crossbeam-epoch's pin, whose
/// pins collected, one call per pin measured 9.3 ns alone and 9.5–13.4 ns with the writer,
/// and the held guard 8.6 ns with or without it.
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

/// Map every page of `cycle` (the translation working set) to the frame of the page that
/// follows it on the cycle, so a dependent translation finds its next IOVA in its output.
pub fn populate<S: MappingStore + ?Sized>(store: &S, cycle: &Cycle) {
    let first = cycle.first_page();
    for p in first..first + cycle.pages() {
        store.map(p << 12, phys_of(cycle.next(p)), 4096);
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

/// One thread's translation op over `cycle` through `translate` (IOVA → output address), in the
/// order `DEPENDENT` says (a constant, so the op has no branch the chase floor has not).
fn translate_op<'a, const DEPENDENT: bool>(
    translate: impl Fn(u64) -> Option<u64> + 'a,
    cycle: &Cycle,
    t: usize,
) -> impl FnMut() + 'a {
    let mut next = scrambled_pages(cycle.first_page(), cycle.pages(), t as u64 * 7919);
    let start = dependent_start(cycle, t);
    let mut page = start;
    move || {
        if DEPENDENT {
            page = black_box(translate(page << 12)).map_or(start, page_of);
        } else {
            black_box(translate(black_box(next() << 12)));
        }
    }
}

/// Measure translation over `cycle` in `order` on `threads` threads, each translating through
/// what `translator(t)` returns (built in thread `t`); with `writer`, racing it on its own
/// thread.
pub fn measure_translation<T, W>(
    cfg: &RunConfig,
    threads: usize,
    order: Order,
    cycle: &Cycle,
    writer: Option<W>,
    translator: impl Fn(usize) -> T + Sync,
) -> Measurement
where
    T: Fn(u64) -> Option<u64>,
    W: FnMut() + Send,
{
    let dep = |t| translate_op::<true>(translator(t), cycle, t);
    let indep = |t| translate_op::<false>(translator(t), cycle, t);
    match (order, writer) {
        (Order::Dependent, None) => measure(cfg, threads, dep),
        (Order::Independent, None) => measure(cfg, threads, indep),
        (Order::Dependent, Some(w)) => measure_with_background(cfg, threads, w, dep),
        (Order::Independent, Some(w)) => measure_with_background(cfg, threads, w, indep),
    }
}

/// A translation case of one store: `pages` mapped, translated in `order`, with a writer at
/// `writer` pairs per second (`Some(0)`: flat out) or none.
fn translate_case<S: MappingStore + 'static>(
    (name, implementation, role): (String, &str, Role),
    pages: u64,
    order: Order,
    writer: Option<u64>,
    make: Arc<dyn Fn() -> S + Send + Sync>,
) -> Case {
    let floor = match order {
        Order::Dependent => CHASE_DEP,
        Order::Independent => CHASE_INDEP,
    };
    Case::new(
        Component::Pgtable,
        name,
        implementation,
        role,
        move |cfg, t| {
            let s = make();
            let cycle = cycle(pages);
            populate(&s, &cycle);
            let w = writer.map(|rate| paced(rate, writer_op(&s)));
            measure_translation(cfg, t, order, &cycle, w, |_| |iova| s.translate(iova))
        },
    )
    .with_floor(floor)
}

/// The map+unmap and independent translation cases of one store implementation; `sizes` are
/// the map+unmap workloads it runs.
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
        v.push(translate_case(
            (name, implementation, role),
            pages,
            Order::Independent,
            writer,
            make.clone(),
        ));
    }
    v
}

/// Our dependent translation cases (0 and 1 writer) and the scale sweep.
fn dependent_cases(opts: &Options) -> Vec<Case> {
    let make: Arc<dyn Fn() -> Ours + Send + Sync> = Arc::new(Ours::new);
    let mut v: Vec<Case> = [(TRANSLATE_DEP_0, None), (TRANSLATE_DEP_1, Some(0))]
        .into_iter()
        .map(|(name, writer)| {
            translate_case(
                (name.into(), OURS, Role::Ours),
                opts.translate_pages,
                Order::Dependent,
                writer,
                make.clone(),
            )
        })
        .collect();
    for &n in &opts.sweep {
        let case = Case::new(
            Component::Pgtable,
            sweep(n),
            OURS,
            Role::Ours,
            move |cfg, t| {
                let s = Ours::new();
                let cycle = cycle(n);
                populate(&s, &cycle);
                let none: Option<fn()> = None;
                let mut m = measure_translation(cfg, t, Order::Dependent, &cycle, none, |_| {
                    |iova| s.translate(iova)
                });
                m.huge_page_share = huge_page_share(&s.0);
                m
            },
        );
        // Compared with the dependent chase over the same number of pages (the same bytes).
        v.push(case.with_floor(super::floor::chase_sweep(n)).up_to(1));
    }
    v
}

/// The share of `pt`'s tables' 4 KiB pages that transparent huge pages back now (`None` where
/// the kernel does not say; see [`crate::hugepages`]).
pub fn huge_page_share(pt: &PageTable) -> Option<f64> {
    let mut tables = Vec::new();
    pt.reader().walk(|e| {
        // Depth first in address order: a table's descriptors come one after another.
        if tables.last() != Some(&e.table) {
            tables.push(e.table);
        }
    });
    crate::hugepages::share(tables)
}

/// Translation under a reader pinned once per thread before the clock starts, in both orders
/// with no writer, and dependent with one.
fn guarded_cases(opts: &Options) -> Vec<Case> {
    let pages = opts.translate_pages;
    [
        (GUARDED_DEP, Order::Dependent, false, CHASE_DEP),
        (GUARDED_INDEP, Order::Independent, false, CHASE_INDEP),
        (GUARDED_DEP_1, Order::Dependent, true, CHASE_DEP),
    ]
    .into_iter()
    .map(|(name, order, writer, floor)| {
        Case::new(Component::Pgtable, name, OURS, Role::Ours, move |cfg, t| {
            let s = Ours::new();
            let cycle = cycle(pages);
            populate(&s, &cycle);
            let translator = |_| {
                let reader = s.0.reader();
                move |iova| reader.translate(iova).map(|x| x.paddr())
            };
            let w = writer.then(|| writer_op(&s));
            measure_translation(cfg, t, order, &cycle, w, translator)
        })
        .with_floor(floor)
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
    v.extend(dependent_cases(opts));
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
