//! Multithreaded stress: maps and unmaps on four threads (one with an untrusted device whose
//! buffers are bounced) while the domain switches from strict to lazy in the middle. Checks:
//! no IOVA handed out while live, no IOVA reused before an invalidation covering its unmap
//! (recorded IOTLB), and at the end every IOVA and bounce slot back.
#![cfg(not(loom))]

mod common;

use common::{domain_over, pages, ReuseCheck, G};
use dma_iommu::{DeviceConfig, FqConfig, Unmapped};
use dma_sync::atomic::{AtomicUsize, Ordering};
use dma_sync::{Arc, Mutex};
use std::collections::BTreeMap;
use swiotlb_core::{Config, Direction, RegionMemory};

const THREADS: usize = 4;
const OPS: usize = if cfg!(miri) { 20 } else { 800 };

#[derive(Default)]
struct Shared {
    /// Live IOVA pages -> owning thread.
    live: BTreeMap<u64, usize>,
    reuse: ReuseCheck,
}

#[test]
#[cfg_attr(miri, ignore)]
fn map_unmap_with_a_switch_to_lazy_in_the_middle() {
    let mem = RegionMemory::new(8 << 20);
    let base = mem.base();
    let dom = Arc::new(domain_over(mem, Config::tiny(2048, 2, 128), |cfg| {
        cfg.iova.end_pfn = 512;
        cfg.iova.cpus = THREADS;
    }));
    let shared = Arc::new(Mutex::new(Shared::default()));
    let progress = Arc::new(AtomicUsize::new(0));

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (dom, shared, progress) = (dom.clone(), shared.clone(), progress.clone());
            dma_sync::thread::spawn(move || {
                dma_sync::cpu::set_current(Some(t));
                let dev = dom
                    .attach(DeviceConfig {
                        trusted: t != 0,
                        ..DeviceConfig::default()
                    })
                    .unwrap();
                let mut mine: Vec<(u64, u64)> = Vec::new();
                let mut queued = 0;
                let mut x = t as u64 * 7919 + 1;
                for i in 0..OPS {
                    // The switch happens while every worker is still running: none gets past
                    // three quarters of its work before it.
                    if i == OPS * 3 / 4 {
                        while !dom.is_lazy() {
                            dma_sync::thread::yield_now();
                        }
                    }
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let size = 1 + (x >> 33) % (3 * G);
                    let paddr =
                        base + (t as u64) * (2 << 20) + ((x >> 20) % 256) * G + (x >> 50) % 64;
                    let dma = dom
                        .map(&dev, paddr, size as usize, Direction::Bidirectional)
                        .unwrap();
                    {
                        let now = dom.iotlb().tick();
                        let mut s = shared.lock();
                        for p in pages(dma, size) {
                            assert!(
                                s.live.insert(p, t).is_none(),
                                "IOVA {p:#x} handed out while live"
                            );
                        }
                        s.reuse.mapped(dom.iotlb(), now, dma, size);
                    }
                    mine.push((dma, size));
                    if mine.len() > 3 || (i % 5 == 0 && !mine.is_empty()) {
                        let (dma, size) = mine.swap_remove((x as usize >> 7) % mine.len());
                        {
                            let at = dom.iotlb().tick();
                            let mut s = shared.lock();
                            for p in pages(dma, size) {
                                assert_eq!(s.live.remove(&p), Some(t));
                            }
                            s.reuse.unmapping(at, dma, size);
                        }
                        let how = dom
                            .unmap(&dev, dma, size as usize, Direction::Bidirectional)
                            .unwrap();
                        if how == Unmapped::Queued {
                            queued += 1;
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                for (dma, size) in mine {
                    {
                        let mut s = shared.lock();
                        for p in pages(dma, size) {
                            s.live.remove(&p);
                        }
                    }
                    dom.unmap(&dev, dma, size as usize, Direction::Bidirectional)
                        .unwrap();
                }
                queued
            })
        })
        .collect();

    while progress.load(Ordering::Relaxed) < THREADS * OPS / 2 {
        dma_sync::thread::yield_now();
    }
    assert!(dom
        .set_lazy(FqConfig::per_cpu().with_cpus(THREADS).with_ring_size(16))
        .unwrap());
    let queued: Vec<usize> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    assert_eq!(queued[0], 0, "the untrusted device stays strict");
    assert!(
        queued[1..].iter().sum::<usize>() > 0,
        "trusted devices queued after the switch"
    );
    assert!(
        shared.lock().reuse.reuses > 100,
        "IOVAs were reused under the check"
    );
    let s = dom.stats();
    assert_eq!(s.live, 0);
    assert_eq!(s.unmaps_synced + s.unmaps_queued, (THREADS * OPS) as u64);
    assert!(s.bounced > 0);
    dom.flush_queue_now();
    assert_eq!(dom.stats().fq.pending, 0);
    dom.iova_allocator().flush_all();
    assert_eq!(
        dom.iova_allocator().allocated_ranges(),
        vec![],
        "every IOVA came back"
    );
    assert_eq!(
        dom.swiotlb().unwrap().stats().used,
        0,
        "every bounce slot came back"
    );
    dom.iova_allocator().check_invariants().unwrap();
}
