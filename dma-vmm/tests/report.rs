//! Debug reports: text, serde data, and dumps taken while the page table changes.
#![cfg(not(loom))]

use dma_iommu::{
    DeviceConfig as DmaDeviceConfig, Domain, DomainConfig, FqConfig, Gather, InvalidationOps,
    NoTlb, Strictness,
};
use dma_vmm::report::Report;
use dma_vmm::viommu::{Request, Status, Viommu, ViommuConfig, MAP_F_READ, MAP_F_WRITE};
use io_pgtable::{Config, Descriptor, PageTable, Prot};
use iova_cache::{IovaAllocator, IovaConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use swiotlb_core::{
    Config as BounceConfig, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb,
};

struct Ops;
impl InvalidationOps for Ops {
    type Entry = u64;
    fn flush_all(&self) {}
    fn sync(&self, _g: &mut Gather) {}
    fn reclaim(&self, _iova: u64) {}
}

fn viommu() -> Viommu {
    let v = Viommu::new(ViommuConfig::default()).unwrap();
    v.add_endpoint(3, vec![]).unwrap();
    assert_eq!(
        v.handle(Request::Attach {
            domain: 9,
            endpoint: 3,
            flags: 0
        })
        .status(),
        Status::Ok
    );
    let map = Request::Map {
        domain: 9,
        virt_start: 0x1000,
        virt_end: 0x2fff,
        phys_start: 0x7000,
        flags: MAP_F_READ | MAP_F_WRITE,
    };
    assert_eq!(v.handle(map).status(), Status::Ok);
    v
}

/// A lazy dma-iommu domain with one live and one queued mapping.
fn dma_domain() -> Domain<NoTlb> {
    let mem = RegionMemory::new(1 << 16);
    let buf = mem.base() + 0x1000;
    let bounce = Swiotlb::new(BounceConfig::tiny(64, 1, 16), mem).unwrap();
    let cfg = DomainConfig::new(Config::s1_4k(39))
        .unwrap()
        .lazy(FqConfig::single());
    let dom = Domain::new(cfg, NoTlb, Some(bounce)).unwrap();
    let nic = dom.attach(DmaDeviceConfig::default()).unwrap();
    dom.map(&nic, buf, 64, Direction::ToDevice).unwrap();
    let dma = dom
        .map(&nic, buf + 0x1000, 64, Direction::ToDevice)
        .unwrap();
    dom.unmap(&nic, dma, 64, Direction::ToDevice).unwrap();
    dom
}

fn full_report(v: &Viommu) -> Report {
    let mem = RegionMemory::new(1 << 16);
    let orig = mem.base() + 0x100;
    let bounce = Swiotlb::new(BounceConfig::tiny(64, 2, 16), mem).unwrap();
    let dev = bounce.device(DeviceConfig::default());
    bounce
        .map(&dev, orig, 5000, Direction::ToDevice, MapAttrs::default())
        .unwrap();
    let iova = IovaAllocator::new(IovaConfig::with_space(1, (1 << 20) - 1)).unwrap();
    let p = iova.alloc(4, (1 << 20) - 1).unwrap();
    iova.free(p, 4).unwrap();
    let strict = Strictness::new(Arc::new(Ops));
    let lazy = Strictness::new(Arc::new(Ops));
    lazy.enable_lazy(FqConfig::per_cpu().with_cpus(2)).unwrap();
    let dom = dma_domain();
    Report::default()
        .with_dma_domain(&dom)
        .with_viommu(v)
        .with_swiotlb(&bounce)
        .with_iova(&iova)
        .with_strictness(&strict)
        .with_strictness(&lazy)
}

#[test]
fn the_full_report_reads_like_debugfs() {
    let v = viommu();
    let r = full_report(&v);
    assert_eq!(r.viommu_domains.len(), 1);
    let d = &r.viommu_domains[0];
    assert_eq!(
        (d.id, d.endpoints.clone(), d.mappings.len()),
        (9, vec![3], 1)
    );
    let pt = d.page_table.as_ref().unwrap();
    let leaves: Vec<_> = pt.leaves().map(|e| (e.iova, e.size, e.desc)).collect();
    let rwc = Prot::READ | Prot::WRITE | Prot::CACHE;
    assert_eq!(
        leaves,
        vec![
            (
                0x1000,
                0x1000,
                Descriptor::Leaf {
                    paddr: 0x7000,
                    prot: rwc
                }
            ),
            (
                0x2000,
                0x1000,
                Descriptor::Leaf {
                    paddr: 0x8000,
                    prot: rwc
                }
            ),
        ]
    );
    let s = r.swiotlb.as_ref().unwrap();
    assert_eq!((s.nslabs, s.used), (64, 3)); // 5000 bytes + offset in 2 KiB slots
    assert_eq!(s.pools[0].area_used.iter().sum::<usize>(), 3);
    let i = r.iova.as_ref().unwrap();
    assert_eq!(i.classes[2].misses, 1); // one 4-granule allocation, served by the range allocator
    assert_eq!(i.cached_granules(), 4);
    assert!(!r.flush_queues[0].lazy);
    assert_eq!(
        (
            r.flush_queues[1].lazy,
            r.flush_queues[1].geometry.as_ref().map(|g| g.rings)
        ),
        (true, Some(2))
    );
    let dd = &r.dma_domains[0];
    let ds = &dd.stats;
    assert_eq!((ds.maps, ds.unmaps_queued, ds.live), (2, 1, 1));
    assert_eq!((ds.lazy, ds.fq.enqueued, ds.fq.pending), (true, 1, 1));
    assert!(dd.swiotlb.is_some());
    let text = r.to_string();
    for needle in [
        "domain 9 (translated), endpoints [3], 1 mappings",
        "map 0x1000..=0x2fff -> 0x7000",
        "page -> 0x8000 rwc",
        "swiotlb:\n  io_tlb_nslabs: 64\n  io_tlb_used: 3\n",
        "  pool0: start ",
        "iova:\n  range: ",
        "flush queue: strict",
        "flush queue: lazy, 2 x 256 (per-cpu)",
        "dma domain:\n  mode lazy\n  maps 2 ",
        "  flush queue: enqueued 1 reclaimed ",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
}

#[cfg(feature = "serde")]
#[test]
fn the_report_round_trips_through_serde() {
    let v = viommu();
    let r = full_report(&v);
    let json = serde_json::to_string_pretty(&r).unwrap();
    assert!(json.contains("\"virt_start\": 4096"), "{json}");
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}

#[test]
fn dumps_are_safe_and_consistent_while_the_table_changes() {
    // Mapped pages always translate to iova + 0x1000_0000: any leaf a dump shows must too,
    // and blocks must be the 2 MiB ones the churn maps.
    let pt = Arc::new(PageTable::new(Config::s1_4k(39)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let churn = {
        let (pt, stop, rounds) = (pt.clone(), stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let iova = (n % 4) * 0x20_0000; // whole 2 MiB blocks and the tables they replace
                let size = if n % 3 == 0 { 0x20_0000 } else { 0x1000 };
                pt.map(iova, iova + 0x1000_0000, size, Prot::READ).unwrap();
                assert_eq!(pt.unmap(iova, size), Ok(size));
                n += 1;
                rounds.store(n, Ordering::Relaxed);
            }
        })
    };
    let mut dumps = 0;
    // Enough dumps, taken while enough map/unmap rounds ran.
    while dumps < 300 || rounds.load(Ordering::Relaxed) < 300 {
        let r = pt.dump();
        for e in r.leaves() {
            let Descriptor::Leaf { paddr, .. } = e.desc else {
                unreachable!()
            };
            assert_eq!(paddr, e.iova + 0x1000_0000, "{r}");
            assert!(e.size == 0x1000 || e.size == 0x20_0000);
        }
        dumps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
}
