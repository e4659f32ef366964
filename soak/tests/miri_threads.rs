//! Multithreaded workloads small enough for Miri, which `scripts/miri` runs under several
//! scheduler seeds: swiotlb-core's shared paths (area locks, the RCU-published pool list
//! growing while others look addresses up, transient pools created and freed through RCU)
//! have no multithreaded unit test of their own that Miri runs. In ordinary builds they are a
//! quick concurrency smoke test.
#![cfg(not(loom))]

use dma_sync::Arc;
use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};

/// Rounds per thread: a few under Miri, more natively.
const ROUNDS: usize = if cfg!(miri) { 3 } else { 200 };

#[test]
fn bounce_maps_race_growth_and_lookups() {
    let mem = RegionMemory::new(64 * 1024);
    let base = mem.base();
    // 16 slots in 2 areas: two threads with three 8 KiB mappings each need 24, so some maps
    // take transient pools until the pools the main thread adds (while looking addresses up)
    // catch up.
    let swiotlb = Swiotlb::new(Config::tiny(16, 2, 8), mem).unwrap();
    let devs: Vec<_> = (0..2)
        .map(|_| swiotlb.device(DeviceConfig::default()))
        .collect();
    let swiotlb = Arc::new(swiotlb);
    let handles: Vec<_> = devs
        .iter()
        .cloned()
        .enumerate()
        .map(|(id, dev)| {
            let swiotlb = swiotlb.clone();
            dma_sync::thread::spawn(move || {
                dma_sync::cpu::set_current(Some(id));
                let orig = base + id as u64 * 32 * 1024;
                for round in 0..ROUNDS {
                    let live: Vec<u64> = (0..3)
                        .map(|k| {
                            let at = orig + k * 8192;
                            swiotlb
                                .map(&dev, at, 8192, Direction::FromDevice, MapAttrs::default())
                                .unwrap()
                        })
                        .collect();
                    for (k, &a) in live.iter().enumerate() {
                        assert!(swiotlb.is_bounce_buffer(&dev, a));
                        swiotlb
                            .write_bounce(&dev, a, &[(round + k) as u8; 64])
                            .unwrap();
                        swiotlb
                            .unmap(&dev, a, 8192, Direction::FromDevice, MapAttrs::default())
                            .unwrap();
                        let mut back = [0u8; 64];
                        swiotlb
                            .memory()
                            .read(orig + k as u64 * 8192, &mut back)
                            .unwrap();
                        assert_eq!(back, [(round + k) as u8; 64], "device bytes came back");
                    }
                }
            })
        })
        .collect();
    for _ in 0..ROUNDS {
        swiotlb.grow_by(8).unwrap();
        for dev in &devs {
            assert!(!swiotlb.is_bounce_buffer(dev, base));
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    let s = swiotlb.stats();
    assert_eq!((s.used, s.transient_pools), (0, 0));
    assert!(devs.iter().all(|d| d.transient_pools() == 0));
    swiotlb.check_invariants().unwrap();
}
