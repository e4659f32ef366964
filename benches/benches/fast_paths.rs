//! Criterion micro-benchmarks of the single-thread fast paths, next to the floor and the peers.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dma_bench::cases::alloc::{self, SPACE_BASE, SPACE_SIZE};
use dma_bench::cases::floor::{self, cycle, FIRST_PAGE};
use dma_bench::cases::pgtable::{self, populate};
use dma_bench::cases::{iommu, swiotlb};
use dma_bench::floor::{cas_op, memcpy_op, own_copy_op, scrambled_pages, Chase};
use dma_bench::peers::alloc::{BTreeFirstFit, VmAllocatorPeer};
use dma_bench::peers::mapping::{ChMappingStore, IotlbPeer, MappingStore};
use dma_bench::peers::RangeAlloc;
use std::hint::black_box;

const PAGES: u64 = 4096;

fn floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    let mut cas = cas_op();
    g.bench_function("compare-and-swap", |b| b.iter(&mut cas));
    let chase = Chase::new(&cycle(PAGES));
    let mut walk = chase.independent_op(FIRST_PAGE, PAGES, 1);
    g.bench_function(floor::CHASE_INDEP, |b| b.iter(&mut walk));
    let mut walk = chase.dependent_op(FIRST_PAGE);
    g.bench_function(floor::CHASE_DEP, |b| b.iter(&mut walk));
    for size in [2048, 4096, 65536] {
        let mut copy = memcpy_op(size);
        g.bench_function(format!("memcpy {size} B"), |b| b.iter(&mut copy));
        let mut copy = own_copy_op(size);
        g.bench_function(format!("swiotlb-core copy {size} B"), |b| b.iter(&mut copy));
    }
    g.finish();
}

fn alloc_pair<A: RangeAlloc>(c: &mut Criterion, name: &str, a: &A) {
    c.bench_function(name, |b| {
        b.iter(|| {
            if let Some(x) = a.alloc(1) {
                a.free(x, 1);
            }
        })
    });
}

fn allocators(c: &mut Criterion) {
    alloc_pair(
        c,
        "iova alloc+free 1 granule/ours",
        &alloc::Ours::new(|_| ()),
    );
    alloc_pair(
        c,
        "iova alloc+free 1 granule/ours, unchecked frees",
        &alloc::Ours::new(|cfg| cfg.checked_frees = false),
    );
    alloc_pair(
        c,
        "iova alloc+free 1 granule/ours, caches off",
        &alloc::Ours::new(|cfg| cfg.caching = false),
    );
    alloc_pair(
        c,
        "iova alloc+free 1 granule/vm-allocator + Mutex",
        &VmAllocatorPeer::new(SPACE_BASE, SPACE_SIZE),
    );
    alloc_pair(
        c,
        "iova alloc+free 1 granule/Mutex<BTreeMap> first-fit",
        &BTreeFirstFit::new(SPACE_BASE, SPACE_SIZE),
    );
}

fn translate<S: MappingStore>(c: &mut Criterion, name: &str, s: &S) {
    populate(s, &cycle(PAGES));
    let mut next = scrambled_pages(FIRST_PAGE, PAGES, 1);
    c.bench_function(name, |b| b.iter(|| black_box(s.translate(next() << 12))));
}

fn stores(c: &mut Criterion) {
    let ours = pgtable::Ours::new();
    translate(c, "translate/ours", &ours);
    let reader = ours.0.reader();
    let mut next = scrambled_pages(FIRST_PAGE, PAGES, 1);
    c.bench_function("translate, guard held/ours", |b| {
        b.iter(|| black_box(reader.translate(next() << 12)))
    });
    drop(reader);
    for (name, size) in [
        (pgtable::MAP_4K, 4096u64),
        (pgtable::MAP_2M, 2 << 20),
        (pgtable::MAP_256, 1 << 20),
    ] {
        let mut op = pgtable::map_unmap_op(&ours, 0, size);
        c.bench_function(&format!("{name}/ours"), |b| b.iter(&mut op));
    }
    translate(
        c,
        "translate/RwLock<BTreeMap> (cloud-hypervisor)",
        &ChMappingStore::new(),
    );
    translate(c, "translate/vm-memory Iotlb + RwLock", &IotlbPeer::new());
}

fn dma(c: &mut Criterion) {
    for (name, mode) in [
        (iommu::STRICT, iommu::Mode::Strict),
        (iommu::LAZY, iommu::Mode::Lazy),
        (iommu::BOUNCED, iommu::Mode::Bounced),
    ] {
        let (d, dev, base) = iommu::domain(mode, 1, dma_bench::suite::DEFAULT_IOTLB_SYNC_NS, 32768);
        let paddr = base + mode.offset();
        c.bench_function(&format!("{name}/ours"), |b| {
            b.iter(|| {
                if let Ok(dma) = d.map(&dev, paddr, 4096, dma_iommu::Direction::ToDevice) {
                    let _ = d.unmap(&dev, dma, 4096, dma_iommu::Direction::ToDevice);
                }
            })
        });
    }
}

fn bounce(c: &mut Criterion) {
    for (name, areas) in [("ours", 0), ("ours, one area", 1)] {
        let (bounce, base) = swiotlb::instance(
            swiotlb_core::Config {
                nareas: areas,
                ..Default::default()
            },
            1,
        );
        let dev = bounce.device(swiotlb_core::DeviceConfig::default());
        let mut op =
            swiotlb::bounce_op(&bounce, dev, base, 4096, swiotlb_core::Direction::ToDevice);
        c.bench_function(&format!("bounce 4 KiB to device/{name}"), |b| {
            b.iter(&mut op)
        });
    }
    let data = vec![0x5au8; 4096];
    c.bench_function("bounce 4 KiB to device/fresh buffer per I/O", |b| {
        b.iter_batched_ref(
            || (),
            |_| dma_bench::peers::bounce::fresh_to_device(&data, 0),
            BatchSize::SmallInput,
        )
    });
}

/// The group lives in a private module: criterion's macro makes an undocumented `pub fn`.
mod group {
    use super::*;
    criterion_group!(benches, floor, allocators, stores, bounce, dma);
}
criterion_main!(group::benches);
