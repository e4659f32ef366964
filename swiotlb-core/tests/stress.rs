//! Multithreaded stress: threads on eight simulated CPUs map, check, write as the device,
//! sync and unmap, holding several mappings at once so the pools fill, transient pools appear
//! and the background worker grows the allocator. At the end every slot is free, every
//! transient pool is gone and every byte that came back is the byte that went in.
// loom builds run the loom suite only: these tests use real threads and locks.
#![cfg(not(loom))]

use dma_model::XorShift;
use dma_sync::thread;
use swiotlb_core::{Config, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, Swiotlb};

const THREADS: usize = 4;
const ROUNDS: usize = if cfg!(miri) { 3 } else { 1500 };
const REGION: u64 = 1 << 20;

#[test]
#[cfg_attr(miri, ignore)]
fn threads_map_sync_unmap_with_growth() {
    let mem = RegionMemory::new(THREADS * REGION as usize);
    let base = mem.base();
    let cfg = Config {
        nslabs: 256,
        nareas: 4,
        growth_nslabs: 256,
        background_growth: true,
        stats: true,
        ..Config::default()
    };
    let swiotlb = Swiotlb::new(cfg, mem).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let swiotlb = swiotlb.clone();
            thread::spawn(move || {
                // The checkers' one generator, one per thread.
                let mut rng = XorShift::new(t as u64 + 1);
                let dev = swiotlb.device(DeviceConfig {
                    min_align_mask: [0, 0xFFF][t % 2],
                    ..Default::default()
                });
                let region = base + t as u64 * REGION;
                let mut held: Vec<(u64, u64, usize, u8)> = Vec::new();
                for round in 0..ROUNDS {
                    dma_sync::cpu::set_current(Some((t * 2 + round) % 8));
                    let slot = (round % 8) as u64;
                    let orig = region + slot * (REGION / 8) + rng.below(4096);
                    let len = 1 + rng.below(48 * 1024) as usize;
                    let tag = rng.next_u64() as u8;
                    swiotlb.memory().write(orig, &vec![tag; len]).unwrap();
                    let align = [0u64, 0xFFF, 0xFFFF][rng.below(3) as usize];
                    let attrs = MapAttrs {
                        alloc_align_mask: align,
                        ..Default::default()
                    };
                    let a = match swiotlb.map(&dev, orig, len, Direction::Bidirectional, attrs) {
                        Ok(a) => a,
                        Err(Error::NoSpace { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    };
                    let mut seen = vec![0u8; len];
                    swiotlb.read_bounce(&dev, a, &mut seen).unwrap();
                    assert!(
                        seen.iter().all(|&b| b == tag),
                        "bounce buffer does not hold the original"
                    );
                    // The device answers with !tag; half is synced early, the rest at unmap.
                    swiotlb.write_bounce(&dev, a, &vec![!tag; len]).unwrap();
                    swiotlb
                        .sync_for_cpu(&dev, a, len / 2 + 1, Direction::Bidirectional)
                        .unwrap();
                    held.push((a, orig, len, tag));
                    if held.len() > 6 || round % 3 == 0 {
                        let i = rng.below(held.len() as u64) as usize;
                        let (a, orig, len, tag) = held.swap_remove(i);
                        swiotlb
                            .unmap(&dev, a, len, Direction::Bidirectional, MapAttrs::default())
                            .unwrap();
                        let mut back = vec![0u8; len];
                        swiotlb.memory().read(orig, &mut back).unwrap();
                        assert!(back.iter().all(|&b| b == !tag), "a byte came back changed");
                    }
                    // Slots are reused by their round index: drop any holder of the next one.
                    let next = region + ((round + 1) % 8) as u64 * (REGION / 8);
                    while let Some(i) = held
                        .iter()
                        .position(|h| h.1 >= next && h.1 < next + REGION / 8)
                    {
                        let (a, orig, len, tag) = held.swap_remove(i);
                        swiotlb
                            .unmap(&dev, a, len, Direction::Bidirectional, MapAttrs::default())
                            .unwrap();
                        let mut back = vec![0u8; len];
                        swiotlb.memory().read(orig, &mut back).unwrap();
                        assert!(back.iter().all(|&b| b == !tag));
                    }
                }
                for (a, _, len, _) in held {
                    swiotlb
                        .unmap(&dev, a, len, Direction::Bidirectional, MapAttrs::default())
                        .unwrap();
                }
                assert_eq!(dev.transient_pools(), 0);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    while swiotlb.growth_in_progress() {
        thread::yield_now();
    }
    let s = swiotlb.stats();
    assert_eq!(s.used, 0, "every slot came back");
    assert_eq!(s.transient_pools, 0);
    assert!(s.pools.len() > 1, "the worker grew the allocator");
    assert_eq!(s.nslabs, s.pools.iter().map(|p| p.nslabs).sum::<usize>());
    assert!(s.hiwater.unwrap() > 256);
    swiotlb.check_invariants().unwrap();
}

/// Lookups from other threads while the allocator grows: every address handed over through a
/// channel is found, and addresses of other devices' mappings never are.
#[test]
#[cfg_attr(miri, ignore)]
fn lookups_race_growth() {
    let mem = RegionMemory::new(1 << 20);
    let base = mem.base();
    let swiotlb = Swiotlb::new(
        Config {
            transient_pools: false,
            ..Config::tiny(128, 1, 128)
        },
        mem,
    )
    .unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let grower = {
        let swiotlb = swiotlb.clone();
        thread::spawn(move || {
            for _ in 0..16 {
                swiotlb.grow_by(128).unwrap();
            }
        })
    };
    let checker = {
        let (swiotlb, dev) = (swiotlb.clone(), dev.clone());
        thread::spawn(move || {
            let mut n = 0;
            for a in rx {
                assert!(swiotlb.is_bounce_buffer(&dev, a));
                n += 1;
            }
            n
        })
    };
    let mut live = Vec::new();
    while live.len() < 16 * 128 / 4 {
        match swiotlb.map(
            &dev,
            base,
            4 * 2048,
            Direction::ToDevice,
            MapAttrs::default(),
        ) {
            Ok(a) => {
                tx.send(a).unwrap();
                live.push(a);
            }
            Err(Error::NoSpace { .. }) => thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    drop(tx);
    grower.join().unwrap();
    assert_eq!(checker.join().unwrap(), live.len());
    for a in live {
        swiotlb
            .unmap(&dev, a, 4 * 2048, Direction::ToDevice, MapAttrs::default())
            .unwrap();
    }
    swiotlb.check_invariants().unwrap();
    assert_eq!(swiotlb.stats().used, 0);
}

/// Concurrent double unmaps of the same addresses (a caller bug): exactly one unmap of each
/// mapping succeeds, the other gets `NotMapped`, and the counters stay exact.
#[test]
#[cfg_attr(miri, ignore)]
fn racing_double_unmaps_never_corrupt_counters() {
    let mem = RegionMemory::new(1 << 20);
    let base = mem.base();
    let swiotlb = Swiotlb::new(Config::tiny(64, 2, 16), mem).unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    for round in 0..200u64 {
        // Global and (once the pool is full) transient mappings.
        let addrs: Vec<u64> = (0..24)
            .map(|i| {
                let orig = base + (i * 3 + round % 7) * 2048;
                swiotlb
                    .map(
                        &dev,
                        orig,
                        2048,
                        Direction::Bidirectional,
                        MapAttrs::default(),
                    )
                    .unwrap()
            })
            .collect();
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (swiotlb, dev, addrs) = (swiotlb.clone(), dev.clone(), addrs.clone());
                thread::spawn(move || {
                    addrs
                        .iter()
                        .filter(|&&a| {
                            let attrs = MapAttrs::default();
                            match swiotlb.unmap(&dev, a, 2048, Direction::Bidirectional, attrs) {
                                Ok(()) => true,
                                Err(Error::NotMapped { .. }) => false,
                                Err(e) => panic!("{e}"),
                            }
                        })
                        .count()
                })
            })
            .collect();
        let won: usize = racers.into_iter().map(|r| r.join().unwrap()).sum();
        assert_eq!(won, addrs.len(), "each mapping is unmapped exactly once");
        assert_eq!(swiotlb.stats().used, 0);
        assert_eq!(dev.transient_pools(), 0);
        swiotlb.check_invariants().unwrap();
    }
}
