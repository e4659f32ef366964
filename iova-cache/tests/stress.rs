//! Multithreaded stress: the asymmetric pattern of the depot-scaling report (allocate on
//! every thread, free on one) and a long mixed run. Afterwards, flushing every cache leaves
//! exactly the live ranges allocated; throughout, the ranges taken from the range allocator
//! stay within a bound that does not grow with the length of the run (no hoarding).
#![cfg(not(loom))]

use dma_sync::Arc;
use iova_cache::config::MAX_CACHED_GRANULES;
use iova_cache::{IovaAllocator, IovaConfig, IovaStats};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

const CPUS: usize = 4;
const MAG: usize = 8;
const SIZES: [u64; 4] = [1, 2, 4, 8];

fn allocator() -> Arc<IovaAllocator> {
    let cfg = IovaConfig {
        cpus: CPUS,
        magazine_size: MAG,
        trim_interval: Some(Duration::from_millis(1)),
        ..IovaConfig::with_space(1, (1 << 20) - 1)
    };
    Arc::new(IovaAllocator::new(cfg).unwrap())
}

/// Granules the caches can hold without the depot growing past what misses allow: a miss
/// reaches the range allocator only when the calling CPU's magazines and the depot of its
/// class are empty, so at that moment at most the other CPUs' magazines are cached; allow as
/// much again for the depot and for races between the emptiness checks and the allocation;
/// and one range of the largest class in each of `threads` threads' caches.
fn cache_slack(classes: &[u64], threads: usize) -> u64 {
    let magazines: u64 = classes
        .iter()
        .map(|s| s * (2 * CPUS as u64) * MAG as u64 * 2)
        .sum();
    magazines + threads as u64 * classes.iter().max().unwrap_or(&0)
}

/// Samples the range allocator while the workers run.
fn sampler(
    a: Arc<IovaAllocator>,
    stop: std::sync::Arc<AtomicBool>,
    bound: u64,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut worst = 0;
        while !stop.load(Ordering::Relaxed) {
            let s: IovaStats = a.stats();
            worst = worst.max(s.range.allocated_granules);
            assert!(
                s.range.allocated_granules <= bound,
                "hoarding: {}",
                a.report()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        worst
    })
}

/// Every granule handed out is held by one user only.
#[derive(Default)]
struct Oracle(Mutex<HashSet<u64>>);

impl Oracle {
    fn take(&self, pfn: u64, size: u64) {
        let mut s = self.0.lock().unwrap();
        for g in pfn..pfn + size {
            assert!(s.insert(g), "granule {g:#x} handed out twice");
        }
    }
    fn give(&self, pfn: u64, size: u64) {
        let mut s = self.0.lock().unwrap();
        for g in pfn..pfn + size {
            assert!(s.remove(&g));
        }
    }
}

fn settle(a: &IovaAllocator, live: &[(u64, u64)]) {
    a.flush_all();
    let mut expect = live.to_vec();
    expect.sort_unstable();
    assert_eq!(
        a.allocated_ranges(),
        expect,
        "after flush_all exactly the live ranges remain"
    );
    assert_eq!(a.stats().cached_granules(), 0);
    a.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore)]
fn asymmetric_alloc_everywhere_free_on_one() {
    const PRODUCERS: usize = 3;
    const OPS: usize = 15_000;
    const IN_FLIGHT: usize = 64;
    let a = allocator();
    let oracle = std::sync::Arc::new(Oracle::default());
    // Live at once: what sits in the channel plus one per producer and the batch the freer
    // holds; each range at most 8 granules.
    let max_live = (IN_FLIGHT + PRODUCERS + 1) as u64 * 8;
    let bound = max_live + cache_slack(&SIZES, PRODUCERS + 1);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let watch = sampler(a.clone(), stop.clone(), bound);
    let (tx, rx) = mpsc::sync_channel::<(u64, u64)>(IN_FLIGHT);
    let freer = {
        let (a, oracle) = (a.clone(), oracle.clone());
        std::thread::spawn(move || {
            dma_sync::cpu::set_current(Some(CPUS - 1));
            let mut kept = Vec::new();
            for (i, (p, s)) in rx.into_iter().enumerate() {
                if i % 500 == 0 {
                    kept.push((p, s)); // stays live to the end
                    continue;
                }
                oracle.give(p, s);
                a.free(p, s).unwrap();
            }
            kept
        })
    };
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|t| {
            let (a, oracle, tx) = (a.clone(), oracle.clone(), tx.clone());
            std::thread::spawn(move || {
                dma_sync::cpu::set_current(Some(t));
                for i in 0..OPS {
                    let size = SIZES[(i * 7 + t) % SIZES.len()];
                    let p = a.alloc(size, (1 << 20) - 1).unwrap();
                    assert_eq!(p % size, 0);
                    oracle.take(p, size);
                    tx.send((p, size)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    let kept = freer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let worst = watch.join().unwrap();
    eprintln!("asymmetric: worst range-allocated {worst} granules, bound {bound}");
    assert!(worst <= bound);
    let s = a.stats();
    assert!(
        s.classes.iter().map(|c| c.hits).sum::<u64>() > 0,
        "the depot fed the producers"
    );
    settle(&a, &kept);
}

#[test]
#[cfg_attr(miri, ignore)]
fn long_mixed_run() {
    const THREADS: usize = 4;
    const OPS: usize = 20_000;
    const KEEP: usize = 24;
    let a = allocator();
    let oracle = std::sync::Arc::new(Oracle::default());
    // Sizes as asked, and as the cache classes they round to (80 is not cached).
    const MIXED: [u64; 8] = [1, 2, 3, 8, 32, 40, 64, 80];
    const CLASSES: [u64; 6] = [1, 2, 4, 8, 32, 64];
    let max_live = (THREADS * (KEEP + 1)) as u64 * 80;
    let bound = max_live + cache_slack(&CLASSES, THREADS);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let watch = sampler(a.clone(), stop.clone(), bound);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (a, oracle) = (a.clone(), oracle.clone());
            std::thread::spawn(move || {
                let mut held: Vec<(u64, u64, u64)> = Vec::new();
                let mut x = 0x9e37_79b9u64 ^ t as u64;
                for _ in 0..OPS {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Threads wander between CPU slots, as tasks migrate.
                    dma_sync::cpu::set_current(Some((x >> 40) as usize % CPUS));
                    match x % 16 {
                        0 => a.flush_cpu((x >> 20) as usize % CPUS),
                        1 => {
                            a.trim_once();
                        }
                        _ if held.len() < KEEP && x % 3 != 0 => {
                            let size = MIXED[(x >> 8) as usize % MIXED.len()];
                            let limit = if x & 0x100 == 0 {
                                (1 << 20) - 1
                            } else {
                                (1 << 19) - 1
                            };
                            let p = a.alloc(size, limit).unwrap();
                            let granules = if size < MAX_CACHED_GRANULES {
                                size.next_power_of_two()
                            } else {
                                size
                            };
                            assert!(p + granules - 1 <= limit);
                            assert_eq!(p % granules.next_power_of_two(), 0);
                            oracle.take(p, granules);
                            held.push((p, size, granules));
                        }
                        _ if !held.is_empty() => {
                            let (p, size, granules) =
                                held.swap_remove((x >> 12) as usize % held.len());
                            oracle.give(p, granules);
                            a.free(p, size).unwrap();
                        }
                        _ => {}
                    }
                }
                held.into_iter().map(|(p, _, g)| (p, g)).collect::<Vec<_>>()
            })
        })
        .collect();
    let live: Vec<(u64, u64)> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    let worst = watch.join().unwrap();
    eprintln!("mixed: worst range-allocated {worst} granules, bound {bound}");
    settle(&a, &live);
}

/// Checked frees racing double frees: every held range is freed by two threads at once, on
/// different CPU slots; exactly one free of each succeeds, and after a flush nothing is left
/// allocated.
#[test]
fn racing_double_frees_succeed_once() {
    const RANGES: usize = 2000;
    let a = Arc::new(
        IovaAllocator::new(IovaConfig {
            cpus: 2,
            trim_interval: None,
            ..IovaConfig::with_space(1, (1 << 20) - 1)
        })
        .unwrap(),
    );
    let end = a.config().end_pfn;
    let held: Arc<Vec<(u64, u64)>> = Arc::new(
        (0..RANGES)
            .map(|i| {
                let size = 1u64 << (i % 6);
                (a.alloc(size, end).unwrap(), size)
            })
            .collect(),
    );
    let freer = |cpu: usize| {
        let (a, held) = (a.clone(), held.clone());
        std::thread::spawn(move || {
            dma_sync::cpu::set_current(Some(cpu));
            let oks: Vec<bool> = held.iter().map(|&(p, s)| a.free(p, s).is_ok()).collect();
            dma_sync::cpu::set_current(None);
            oks
        })
    };
    let (t0, t1) = (freer(0), freer(1));
    let (oks0, oks1) = (t0.join().unwrap(), t1.join().unwrap());
    for (i, (x, y)) in oks0.iter().zip(&oks1).enumerate() {
        assert!(
            x ^ y,
            "range {:?} freed {} times",
            held[i],
            u8::from(*x) + u8::from(*y)
        );
    }
    a.flush_all();
    assert!(a.allocated_ranges().is_empty());
    assert_eq!(a.stats().refused_cached_frees, 0);
    a.check_invariants().unwrap();
}
