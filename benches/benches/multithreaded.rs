//! Criterion benchmarks of the multithreaded paths: `iter_custom` with the threads started on
//! one barrier and the clock stopped on a second, the structure built outside the timed region.

use criterion::{criterion_group, criterion_main, Criterion};
use dma_bench::cases::alloc::{self, SPACE_BASE, SPACE_SIZE};
use dma_bench::cases::floor::{cycle, FIRST_PAGE};
use dma_bench::cases::pgtable::{self, populate};
use dma_bench::cases::swiotlb;
use dma_bench::floor::{cas_op, scrambled_pages};
use dma_bench::harness::pin_current;
use dma_bench::peers::alloc::VmAllocatorPeer;
use dma_bench::peers::mapping::{ChMappingStore, MappingStore};
use dma_bench::peers::RangeAlloc;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const THREADS: usize = 2;
const PAGES: u64 = 4096;

/// Time `iters` calls of the op `make(t)` returns on each of `threads` threads sharing `s`.
/// The op gets its own `Arc` of the structure, so it may keep it for as long as it runs.
fn mt<S: Send + Sync, G: FnMut()>(
    c: &mut Criterion,
    name: &str,
    threads: usize,
    setup: impl Fn() -> S,
    make: impl Fn(Arc<S>, usize) -> G + Sync,
) {
    c.bench_function(&format!("{name}/{threads} threads"), |b| {
        b.iter_custom(|iters| {
            let s = Arc::new(setup());
            let (start, end) = (Barrier::new(threads + 1), Barrier::new(threads + 1));
            std::thread::scope(|sc| {
                for t in 0..threads {
                    let (s, make, start, end) = (&s, &make, &start, &end);
                    sc.spawn(move || {
                        pin_current(t);
                        let mut op = make(s.clone(), t);
                        start.wait();
                        for _ in 0..iters {
                            op();
                        }
                        end.wait();
                    });
                }
                start.wait();
                let t0 = Instant::now();
                end.wait();
                let d: Duration = t0.elapsed();
                d
            })
        })
    });
}

fn floor(c: &mut Criterion) {
    mt(c, "floor/compare-and-swap", THREADS, || (), |_, _| cas_op());
}

fn ours(c: &mut Criterion) {
    mt(
        c,
        "iova alloc+free 1 granule/ours",
        THREADS,
        || alloc::Ours::new(|_| ()),
        |a, _| {
            move || {
                if let Some(x) = a.alloc(1) {
                    a.free(x, 1);
                }
            }
        },
    );
    mt(
        c,
        "translate/ours",
        THREADS,
        || {
            let s = pgtable::Ours::new();
            populate(&s, &cycle(PAGES));
            s
        },
        |s, t| {
            let mut next = scrambled_pages(FIRST_PAGE, PAGES, t as u64);
            move || {
                black_box(s.translate(next() << 12));
            }
        },
    );
    mt(
        c,
        "map+unmap 4 KiB/ours",
        THREADS,
        pgtable::Ours::new,
        |s, t| {
            let mut i = 0u64;
            move || {
                // Disjoint per-thread regions, as in the dmabench case.
                let iova = pgtable::map_region(t) + (i & 63) * 4096;
                i += 1;
                if s.map(iova, pgtable::phys_of(iova >> 12), 4096) {
                    s.unmap(iova, 4096);
                }
            }
        },
    );
}

fn bounce(c: &mut Criterion) {
    for (name, areas) in [("ours", 0), ("ours, one area", 1)] {
        mt(
            c,
            &format!("bounce 4 KiB to device/{name}"),
            THREADS,
            || {
                swiotlb::instance(
                    swiotlb_core::Config {
                        nareas: areas,
                        ..Default::default()
                    },
                    THREADS,
                )
            },
            |s, t| {
                let (bounce, base) = &*s;
                let dev = bounce.device(swiotlb_core::DeviceConfig::default());
                let orig = base + (t * swiotlb::ORIG_PER_THREAD) as u64;
                let attrs = swiotlb_core::MapAttrs::default();
                let dir = swiotlb_core::Direction::ToDevice;
                let s = s.clone();
                move || {
                    if let Ok(a) = s.0.map(&dev, orig, 4096, dir, attrs) {
                        let _ = s.0.unmap(&dev, a, 4096, dir, attrs);
                    }
                }
            },
        );
    }
}

fn peers(c: &mut Criterion) {
    mt(
        c,
        "iova alloc+free 1 granule/vm-allocator + Mutex",
        THREADS,
        || VmAllocatorPeer::new(SPACE_BASE, SPACE_SIZE),
        |a, _| {
            move || {
                if let Some(x) = a.alloc(1) {
                    a.free(x, 1);
                }
            }
        },
    );
    mt(
        c,
        "translate/RwLock<BTreeMap> (cloud-hypervisor)",
        THREADS,
        || {
            let s = ChMappingStore::new();
            populate(&s, &cycle(PAGES));
            s
        },
        |s, t| {
            let mut next = scrambled_pages(FIRST_PAGE, PAGES, t as u64);
            move || {
                black_box(s.translate(next() << 12));
            }
        },
    );
}

/// The group lives in a private module: criterion's macro makes an undocumented `pub fn`.
mod group {
    use super::*;
    criterion_group!(benches, floor, ours, bounce, peers);
}
criterion_main!(group::benches);
