//! Concurrent growth of the swiotlb pool list on the real code (segments of 4 slots).
//!
//! * `two_growers`: two threads add a pool each (`grow_by`), a third maps through whatever
//!   pools it finds; every pool must end up linked exactly once.
//! * `grower_vs_background`: a mapper whose search fails starts the background worker
//!   (`grow`), while another thread adds a pool with `grow_by`; both pools are linked.
//!
//! The writer lock orders growers; the models check the list after the threads join (and,
//! where every grower was joined, the slot counter the growers add to).

use dma_sync::mutation::Weakening;
use dma_sync::thread::spawn;
use dma_sync::Arc;
use loom_tests::harness::{check, Bound};
use loom_tests::must_fail_test;
use swiotlb_core::{points, Config, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};

const SLOT: usize = 2048;
/// Slots of every pool in these models: one segment.
const POOL: usize = 4;

/// Afterwards: `pools` pools of [`POOL`] slots are linked, each once.
fn all_linked(swiotlb: &Swiotlb, pools: usize) {
    let s = swiotlb.stats();
    assert_eq!(
        s.pools.len(),
        pools,
        "a grown pool was lost from the list: {s:?}"
    );
    assert!(s.pools.iter().all(|p| p.nslabs == POOL), "{s:?}");
    swiotlb.check_invariants().expect("free-run counters");
}

/// Two growers and a mapper; the default pool is one segment, so the mapper's 2-slot
/// mapping fits the default pool or a new one.
fn two_growers() {
    let cfg = Config {
        transient_pools: false,
        ..Config::tiny(POOL, 1, POOL)
    };
    let mem = RegionMemory::new(2 * SLOT);
    let base = mem.base();
    let swiotlb = Arc::new(Swiotlb::new(cfg, mem).expect("tiny config"));
    let growers: Vec<_> = (0..2)
        .map(|_| {
            let swiotlb = swiotlb.clone();
            spawn(move || assert_eq!(swiotlb.grow_by(POOL), Ok(POOL)))
        })
        .collect();
    let mapper = {
        let swiotlb = swiotlb.clone();
        spawn(move || {
            let dev = swiotlb.device(DeviceConfig::default());
            let a = swiotlb
                .map(
                    &dev,
                    base,
                    2 * SLOT,
                    Direction::ToDevice,
                    MapAttrs::default(),
                )
                .expect("the default pool has room");
            assert!(swiotlb.is_bounce_buffer(&dev, a));
            swiotlb
                .unmap(&dev, a, 2 * SLOT, Direction::ToDevice, MapAttrs::default())
                .unwrap();
        })
    };
    for g in growers {
        g.join().unwrap();
    }
    mapper.join().unwrap();
    all_linked(&swiotlb, 3);
    // Every grower joined: the slot counter is ordered before this read too.
    assert_eq!(
        swiotlb.stats().nslabs,
        3 * POOL,
        "slots counted but not linked"
    );
}

/// Three threads (two growers, a mapper), each one operation. Bound 3 preemptions: a grower
/// can be stopped between its tail search and its append while the other grower runs its
/// whole append, and the mapper's search can interleave either append.
#[test]
fn two_growers_link_both_pools() {
    check(Bound::Preemptions(3), two_growers);
}

must_fail_test! {
    /// A grower that appends after leaving the writer's critical section can append to the
    /// tail another grower just extended: that pool is lost.
    fn growers_append_outside_lock: points::POOLS_APPEND_LOCKED, Weakening::Relax,
        "a grown pool was lost", Bound::Preemptions(2), two_growers;
}

/// A mapper whose default pool is full fails its search, which starts the background worker
/// (a thread the library spawns), unless the pool another thread grows meanwhile is already
/// there for it.
fn grower_vs_background() {
    let cfg = Config {
        transient_pools: false,
        background_growth: true,
        ..Config::tiny(POOL, 1, POOL)
    };
    let mem = RegionMemory::new(POOL * SLOT);
    let base = mem.base();
    let swiotlb = Arc::new(Swiotlb::new(cfg, mem).expect("tiny config"));
    let dev = swiotlb.device(DeviceConfig::default());
    let full = swiotlb
        .map(
            &dev,
            base,
            POOL * SLOT,
            Direction::ToDevice,
            MapAttrs::default(),
        )
        .expect("the default pool has room");
    let mapper = {
        let (swiotlb, dev) = (swiotlb.clone(), dev.clone());
        spawn(move || {
            // The default pool is full: the map fits the grower's pool if it is already
            // published, or fails, and the failure kicks the background worker.
            let attrs = MapAttrs::default();
            match swiotlb.map(&dev, base, SLOT, Direction::ToDevice, attrs) {
                Ok(a) => {
                    swiotlb
                        .unmap(&dev, a, SLOT, Direction::ToDevice, attrs)
                        .unwrap();
                    false
                }
                Err(_) => true,
            }
        })
    };
    let grower = {
        let swiotlb = swiotlb.clone();
        spawn(move || assert_eq!(swiotlb.grow_by(POOL), Ok(POOL)))
    };
    let kicked = mapper.join().unwrap();
    grower.join().unwrap();
    let pools = 2 + usize::from(kicked);
    // The worker is not joinable and its "in progress" flag is Relaxed: wait until it is done
    // and its pool is visible, yielding (after a yield loom lets the loads see newer stores);
    // a pool that never shows up is reported by `all_linked` after a few rounds.
    let mut rounds = 0;
    while swiotlb.growth_in_progress() || (swiotlb.stats().pools.len() < pools && rounds < 4) {
        rounds += 1;
        dma_sync::thread::yield_now();
    }
    swiotlb
        .unmap(
            &dev,
            full,
            POOL * SLOT,
            Direction::ToDevice,
            MapAttrs::default(),
        )
        .unwrap();
    all_linked(&swiotlb, pools);
}

/// Four threads (main, mapper, grower, the library's worker), one operation each. Bound 2
/// preemptions: the worker's append and the grower's can interleave at their tail searches.
#[test]
fn grower_and_background_worker_link_both_pools() {
    check(Bound::Preemptions(2), grower_vs_background);
}

must_fail_test! {
    /// The same lost append, between the background worker and a caller of `grow_by`.
    fn background_append_outside_lock: points::POOLS_APPEND_LOCKED, Weakening::Relax,
        "a grown pool was lost", Bound::Preemptions(2), grower_vs_background;
}
