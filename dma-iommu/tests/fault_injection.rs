//! Fault injection through a domain: the sites of this crate (`dma_iommu::faults`) and of the
//! crates a domain is made of (`io_pgtable::faults`, `iova_cache::faults`) made to fail during
//! maps, unmaps and the switch to lazy mode. Each failure is a typed error that changes
//! nothing, or a fallback that loses nothing: every IOVA comes back, no bounce slot stays
//! used, live mappings translate as before, and the domain keeps working once disarmed.
//! Arming is per thread, so these tests run in parallel.
#![cfg(not(loom))]

mod common;

use common::{domain_over, hw, quiet_fq, untrusted, G};
use dma_iommu::faults::{FQ_RING_ALLOC, MAPPING_RECORD};
use dma_iommu::{
    Device, DeviceConfig, DmaError, Domain, FqConfig, FqError, PhysSegment, RecordingIotlb,
    Unmapped,
};
use dma_sync::fault::{armed, Site};
use io_pgtable::faults::TABLE_ALLOC;
use iova_cache::faults::{DEPOT_GROW, MAGAZINE_ALLOC, TREE_NODE};
use iova_cache::IovaError;
use proptest::prelude::*;
use std::collections::BTreeMap;
use swiotlb_core::{Config, Direction, OrigMemory, RegionMemory};

const MEM: u64 = 4 << 20;

/// The byte the memory region holds at `offset` (never rewritten: devices only read).
fn pattern(offset: u64) -> u8 {
    (offset ^ (offset >> 8) ^ (offset >> 16)) as u8
}

/// A domain over a 4 KiB-granule table with bounce buffers and a patterned memory region,
/// small magazines on one CPU (so frees need new magazines soon); returns the region's base.
fn domain(lazy: Option<FqConfig>) -> (Domain<RecordingIotlb>, u64) {
    dma_sync::cpu::set_current(Some(0));
    let mem = RegionMemory::new(MEM as usize);
    let base = mem.base();
    let bytes: Vec<u8> = (0..MEM).map(pattern).collect();
    mem.write(base, &bytes).unwrap();
    let dom = domain_over(mem, Config::tiny(1024, 2, 128), |cfg| {
        cfg.iova.cpus = 1;
        cfg.iova.magazine_size = 2;
        cfg.lazy = lazy;
    });
    (dom, base)
}

/// The device reads exactly the buffer's bytes through `dma`.
fn check_reads(dom: &Domain<RecordingIotlb>, dev: &Device, dma: u64, at: u64, len: u64) {
    let mut seen = vec![0u8; len as usize];
    hw(dom, dev).read(dma, &mut seen).unwrap();
    let want: Vec<u8> = (at..at + len).map(pattern).collect();
    assert!(seen == want, "wrong data through {dma:#x}");
}

/// Nothing lost: no live mapping, every IOVA back in the range allocator once the queue and
/// the caches are flushed, no bounce slot used.
fn check_all_back(dom: &Domain<RecordingIotlb>) {
    dom.flush_queue_now();
    assert_eq!(dom.stats().live, 0, "{}", dom.stats());
    let a = dom.iova_allocator();
    a.check_invariants().unwrap();
    a.flush_all();
    assert_eq!(a.allocated_ranges(), vec![], "{}", a.report());
    assert_eq!(dom.swiotlb().unwrap().stats().used, 0);
}

/// Map granules `0..n` of the memory, one mapping each; returns their DMA addresses.
fn map_granules(dom: &Domain<RecordingIotlb>, dev: &Device, base: u64, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            dom.map(dev, base + i * G, G as usize, Direction::ToDevice)
                .unwrap()
        })
        .collect()
}

/// Unmap what [`map_granules`] mapped.
fn unmap_granules(dom: &Domain<RecordingIotlb>, dev: &Device, dmas: Vec<u64>) {
    for dma in dmas {
        dom.unmap(dev, dma, G as usize, Direction::ToDevice)
            .unwrap();
    }
}

/// Disarmed, the domain maps (several leaf tables' worth, and a bounced buffer), translates
/// and unmaps again.
fn check_keeps_working(dom: &Domain<RecordingIotlb>, base: u64) {
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    let bdev = dom.attach(untrusted()).unwrap();
    let len = MEM - 0x3000;
    let dma = dom
        .map(&dev, base + 0x1000, len as usize, Direction::ToDevice)
        .unwrap();
    check_reads(dom, &dev, dma + len - 0x2000, 0x1000 + len - 0x2000, 0x2000);
    let bdma = dom
        .map(&bdev, base + 0x123, 0x300, Direction::ToDevice)
        .unwrap();
    check_reads(dom, &bdev, bdma, 0x123, 0x300);
    dom.unmap(&dev, dma, len as usize, Direction::ToDevice)
        .unwrap();
    assert!(hw(dom, &dev).read(dma, &mut [0u8; 8]).is_err() || dom.is_lazy());
    assert_eq!(
        dom.unmap(&bdev, bdma, 0x300, Direction::ToDevice),
        Ok(Unmapped::Synced)
    );
    check_all_back(dom);
}

#[test]
fn no_table_fails_the_map_and_leaks_no_iova() {
    let (dom, base) = domain(None);
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    // A fresh domain: the first map needs tables.
    let (r, used) = armed(&TABLE_ALLOC, usize::MAX, || {
        dom.map(&dev, base + 0x2000, 0x1000, Direction::ToDevice)
    });
    assert_eq!(r, Err(DmaError::PageTable(io_pgtable::Error::NoMemory)));
    assert_eq!(used, 1);
    check_all_back(&dom);
    // Live mappings, then a map across several new leaf tables (pages, since the buffer is
    // not block-aligned) that fails part-way: the live ones translate as before.
    let small = map_granules(&dom, &dev, base, 4);
    let len = 0x30_0000;
    // Not block-aligned whatever the heap gave: a 2 MiB-aligned buffer would map a block into
    // the existing level-2 table and need no new table at all.
    let start = if (base + 0x1000) % 0x20_0000 == 0 {
        base + 0x2000
    } else {
        base + 0x1000
    };
    let (r, used) = armed(&TABLE_ALLOC, usize::MAX, || {
        dom.map(&dev, start, len, Direction::ToDevice)
    });
    assert_eq!(r, Err(DmaError::PageTable(io_pgtable::Error::NoMemory)));
    assert_eq!(used, 1);
    // A scatter list takes the same path.
    let list: Vec<PhysSegment> = (0..40)
        .map(|i| PhysSegment {
            addr: base + i * 0x1_0000,
            len: 0x1_0000,
        })
        .collect();
    let (r, _) = armed(&TABLE_ALLOC, usize::MAX, || {
        dom.map_sg(&dev, &list, Direction::ToDevice)
    });
    assert_eq!(
        r.err(),
        Some(DmaError::PageTable(io_pgtable::Error::NoMemory))
    );
    for (i, &dma) in small.iter().enumerate() {
        check_reads(&dom, &dev, dma, i as u64 * G, G);
    }
    assert_eq!(dom.stats().live, 4);
    unmap_granules(&dom, &dev, small);
    check_all_back(&dom);
    check_keeps_working(&dom, base);
}

#[test]
fn no_magazine_loses_no_iova() {
    let (dom, base) = domain(None);
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    let dmas = map_granules(&dom, &dev, base, 24);
    // Strict unmaps free on this thread: past two magazines of two, every free wants a new
    // magazine (refused) or a bigger depot (refused); each IOVA goes to the range allocator.
    let (((), depot), mag) = armed(&MAGAZINE_ALLOC, usize::MAX, || {
        armed(&DEPOT_GROW, usize::MAX, || {
            for &dma in &dmas {
                assert_eq!(
                    dom.unmap(&dev, dma, G as usize, Direction::ToDevice),
                    Ok(Unmapped::Synced)
                );
            }
        })
    });
    assert!(mag > 0, "the no-magazine fallback ran ({mag}, {depot})");
    check_all_back(&dom);
    // Every IOVA is handed out again, each once.
    let again = map_granules(&dom, &dev, base, 24);
    let mut sorted = again.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 24);
    unmap_granules(&dom, &dev, again);
    check_all_back(&dom);
    check_keeps_working(&dom, base);
}

#[test]
fn no_tree_node_fails_the_map_cleanly() {
    let (dom, base) = domain(None);
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    // Larger than any cached size class: the range allocator needs a node.
    let (r, used) = armed(&TREE_NODE, 1, || {
        dom.map(&dev, base, 0x10_0000, Direction::ToDevice)
    });
    assert!(
        matches!(r, Err(DmaError::NoIova(IovaError::OutOfMemory { .. }))),
        "{r:?}"
    );
    assert_eq!(used, 1);
    check_all_back(&dom);
    check_keeps_working(&dom, base);
}

#[test]
fn no_record_undoes_the_map() {
    let (dom, base) = domain(None);
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    let bdev = dom.attach(untrusted()).unwrap();
    let keep = dom
        .map(&dev, base + 0x5000, 0x2000, Direction::ToDevice)
        .unwrap();
    let (r, used) = armed(&MAPPING_RECORD, 1, || {
        dom.map(&dev, base + 0x8000, 0x3000, Direction::ToDevice)
    });
    assert_eq!((r, used), (Err(DmaError::NoMemory), 1));
    // Bounced: the bounce slots go back too.
    let (r, used) = armed(&MAPPING_RECORD, 1, || {
        dom.map(&bdev, base + 0x8010, 0x100, Direction::ToDevice)
    });
    assert_eq!((r, used), (Err(DmaError::NoMemory), 1));
    assert_eq!(dom.swiotlb().unwrap().stats().used, 0);
    let list = [
        PhysSegment {
            addr: base + 0x1_0000,
            len: 0x1000,
        },
        PhysSegment {
            addr: base + 0x3_0000,
            len: 0x2000,
        },
    ];
    let (r, used) = armed(&MAPPING_RECORD, 1, || {
        dom.map_sg(&dev, &list, Direction::ToDevice)
    });
    assert_eq!((r.err(), used), (Some(DmaError::NoMemory), 1));
    // The undone IOVAs were unmapped: only `keep` translates, and it still does.
    assert_eq!(dom.stats().live, 1);
    check_reads(&dom, &dev, keep, 0x5000, 0x2000);
    dom.unmap(&dev, keep, 0x2000, Direction::ToDevice).unwrap();
    check_all_back(&dom);
    check_keeps_working(&dom, base);
}

#[test]
fn no_ring_keeps_the_domain_strict() {
    let (dom, base) = domain(None);
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    let (r, used) = armed(&FQ_RING_ALLOC, 1, || dom.set_lazy(quiet_fq()));
    assert_eq!((r, used), (Err(DmaError::FlushQueue(FqError::NoMemory)), 1));
    assert!(!dom.is_lazy());
    let dma = dom
        .map(&dev, base, G as usize, Direction::ToDevice)
        .unwrap();
    assert_eq!(
        dom.unmap(&dev, dma, G as usize, Direction::ToDevice),
        Ok(Unmapped::Synced)
    );
    assert!(
        hw(&dom, &dev).read(dma, &mut [0u8; 4]).is_err(),
        "strict: gone at once"
    );
    check_all_back(&dom);
    // Disarmed, the switch succeeds and unmaps queue.
    assert_eq!(dom.set_lazy(quiet_fq()), Ok(true));
    let dma = dom
        .map(&dev, base, G as usize, Direction::ToDevice)
        .unwrap();
    assert_eq!(
        dom.unmap(&dev, dma, G as usize, Direction::ToDevice),
        Ok(Unmapped::Queued)
    );
    check_all_back(&dom);
    check_keeps_working(&dom, base);
}

#[test]
fn no_ring_at_creation_starts_strict() {
    let ((dom, base), used) = armed(&FQ_RING_ALLOC, 1, || domain(Some(quiet_fq())));
    assert_eq!(used, 1);
    assert!(!dom.is_lazy(), "Linux falls back to strict");
    check_keeps_working(&dom, base);
    assert_eq!(dom.set_lazy(quiet_fq()), Ok(true));
    check_keeps_working(&dom, base);
}

/// Every site a domain reaches, and "none".
const SITES: [Option<&Site>; 6] = [
    None,
    Some(&TABLE_ALLOC),
    Some(&TREE_NODE),
    Some(&MAGAZINE_ALLOC),
    Some(&DEPOT_GROW),
    Some(&MAPPING_RECORD),
];

fn run_armed<R>(site: Option<&'static Site>, n: usize, f: impl FnOnce() -> R) -> R {
    match site {
        Some(s) => armed(s, n, f).0,
        None => f(),
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Map `pages` pages from `page` (plus `offset` bytes), bounced if `untrusted`.
    Map {
        page: u64,
        pages: u64,
        offset: u64,
        untrusted: bool,
        site: usize,
        failures: usize,
    },
    /// Unmap the `nth` live mapping.
    Unmap { nth: usize, site: usize },
    /// Run the flush queue's timer work now.
    Flush { site: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..512u64, prop_oneof![1..4u64, 500..700u64], 0..G, any::<bool>(), 0..SITES.len(), 1..3usize)
            .prop_map(|(page, pages, offset, untrusted, site, failures)| Op::Map {
                page,
                pages: if untrusted { pages.min(8) } else { pages },
                offset,
                untrusted,
                site,
                failures,
            }),
        3 => (any::<usize>(), 0..SITES.len()).prop_map(|(nth, site)| Op::Unmap { nth, site }),
        1 => (0..SITES.len()).prop_map(|site| Op::Flush { site }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Maps, unmaps and flushes with a random site armed: failed maps are typed errors that
    /// change nothing, no IOVA is handed out twice, live mappings read their buffers, and in
    /// the end everything comes back.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn random_workload_with_failing_allocations(ops in proptest::collection::vec(op(), 1..40), lazy: bool) {
        let (dom, base) = domain(lazy.then(quiet_fq));
        let devs = [dom.attach(DeviceConfig::default()).unwrap(), dom.attach(untrusted()).unwrap()];
        // dma -> (device index, buffer offset in the region, length)
        let mut live: BTreeMap<u64, (usize, u64, u64)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Map { page, pages, offset, untrusted, site, failures } => {
                    let at = (page * G + offset).min(MEM - pages * G - G);
                    let len = pages * G - if offset % 3 == 0 { 0 } else { offset };
                    let d = usize::from(untrusted);
                    let r = run_armed(SITES[site], failures, || {
                        dom.map(&devs[d], base + at, len as usize, Direction::ToDevice)
                    });
                    match r {
                        Ok(dma) => {
                            // No IOVA granule is handed out twice.
                            let first = dma & !(G - 1);
                            let below = live.range(..first).next_back();
                            prop_assert!(below.map_or(true, |(&b, &(_, _, l))| b + l <= first), "{dma:#x} overlaps {below:?}");
                            let above = live.range(first..).next();
                            prop_assert!(above.map_or(true, |(&b, _)| dma + len <= b & !(G - 1)), "{dma:#x} overlaps {above:?}");
                            check_reads(&dom, &devs[d], dma, at, len);
                            live.insert(dma, (d, at, len));
                        }
                        Err(DmaError::PageTable(io_pgtable::Error::NoMemory)
                            | DmaError::NoIova(IovaError::OutOfMemory { .. })
                            | DmaError::NoMemory) => prop_assert!(SITES[site].is_some()),
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                }
                Op::Unmap { nth, site } => {
                    if live.is_empty() {
                        continue;
                    }
                    let dma = *live.keys().nth(nth % live.len()).unwrap();
                    let (d, _, len) = live.remove(&dma).unwrap();
                    let r = run_armed(SITES[site], usize::MAX, || {
                        dom.unmap(&devs[d], dma, len as usize, Direction::ToDevice)
                    });
                    prop_assert!(r.is_ok(), "{:?}", r);
                }
                Op::Flush { site } => {
                    run_armed(SITES[site], usize::MAX, || dom.flush_queue_now());
                }
            }
            prop_assert_eq!(dom.stats().live, live.len() as u64);
            for (&dma, &(d, at, len)) in &live {
                check_reads(&dom, &devs[d], dma, at, len.min(64));
            }
        }
        for (&dma, &(d, _, len)) in &live {
            prop_assert!(dom.unmap(&devs[d], dma, len as usize, Direction::ToDevice).is_ok());
        }
        check_all_back(&dom);
        check_keeps_working(&dom, base);
    }
}
