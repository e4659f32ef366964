//! Models of `swiotlb-core` on the real code with tiny pools (segments of 4 slots).
//!
//! * `area_*`: two threads mapping, bouncing and unmapping in one area and across areas (the
//!   area locks, the free-run counters and each area's cached run; no ordering points of the
//!   crate, the locks do the work). The area locks are `dma_sync::SpinLock`s: the twins
//!   `area_shared_spin_*` weaken its acquire or its release and see the area state raced.
//! * `new_pool_*`: "argument 1 on the real code", the seed's swiotlb-new-pool litmus test:
//!   a growth thread publishes a pool, a mapper allocates from it and hands the bounce address
//!   to a third thread through a Relaxed atomic (the driver's private memory), which must find
//!   the pool.
//! * `cache_drain_*`: a thread's cache of freed runs racing a drain (a search that found no
//!   room); `cache_exit_*`: a thread that exits with a run cached, its slot claimed by another
//!   that inherits the run and drains; and `double_unmap_*`, `guessed_unmap_*`,
//!   `overtaken_copy_back_*`: releases claiming a mapping by one compare-and-swap, racing each
//!   other, the map itself, or a copy back and a map that reuses the slots.
//! * `transient_add_*`, `transient_free_*`, `transient_reuse_*`, `transient_unlink_head_*`:
//!   "argument 2 on the real code", the device's transient list: a pool linked while another
//!   thread walks the list, a pool unlinked and freed while a lookup walks past it, deletion
//!   followed by a new transient pool whose address is handed on, and the list's head unlinked
//!   (its successor built by another thread) while a walker looks for an older pool.
//!
//! Every model asserts its invariants inside the model; each mutation point of the crate has a
//! must-fail twin below. The racing parties are always spawned threads and the model's main
//! thread only sets up, joins and checks: loom's DPOR misses the interleavings in which the
//! main thread's operations precede a thread it spawned just before (observed: a model with
//! the walker on the main thread explored one execution).

use dma_sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use dma_sync::mutation::Weakening;
use dma_sync::thread::{spawn, JoinHandle};
use dma_sync::Arc;
use loom_tests::harness::{check, outcomes, Bound};
use loom_tests::must_fail_test;
use swiotlb_core::points;
use swiotlb_core::{
    Config, Device, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, Swiotlb,
};

const SLOT: usize = 2048;

/// The message of the lookup assertion of the hand-off models.
const NOT_FOUND: &str = "holds a bounce address but finds no pool";

/// The message of `transient_add`'s walker when it misses the pool linked before the race.
const MISSED_OLDER: &str = "misses the transient pool linked before";

/// A Relaxed link or traversal shows either way: the walker misses the older pool, or reads a
/// pool whose initialisation it has not seen (a causality violation); which one loom reaches
/// first depends on its exploration order.
const MISSED_OR_RACED: &str = "misses the transient pool linked before | Causality violation";

/// An instance over a fresh region of original memory; returns it and the region's base.
fn instance(cfg: Config, orig_bytes: usize) -> (Arc<Swiotlb>, u64) {
    let mem = RegionMemory::new(orig_bytes);
    let base = mem.base();
    (Arc::new(Swiotlb::new(cfg, mem).expect("tiny config")), base)
}

/// An instance whose 4-slot default pool is full (held by another device), and a fresh device:
/// every map of that device needs a new pool (grown or transient).
fn full_default_pool(cfg: Config, orig_bytes: usize) -> (Arc<Swiotlb>, u64, Device) {
    let (swiotlb, base) = instance(cfg, orig_bytes);
    let other = swiotlb.device(DeviceConfig::default());
    map_to_device(&swiotlb, &other, base, 4 * SLOT).unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    (swiotlb, base, dev)
}

/// Run `f` on a new thread with its own handles of the instance and the device.
fn spawn_with<T: Send + 'static>(
    swiotlb: &Arc<Swiotlb>,
    dev: &Device,
    f: impl FnOnce(&Swiotlb, &Device) -> T + Send + 'static,
) -> JoinHandle<T> {
    let (swiotlb, dev) = (swiotlb.clone(), dev.clone());
    spawn(move || f(&swiotlb, &dev))
}

fn map_to_device(swiotlb: &Swiotlb, dev: &Device, orig: u64, len: usize) -> Result<u64, Error> {
    swiotlb.map(dev, orig, len, Direction::ToDevice, MapAttrs::default())
}

fn unmap_to_device(swiotlb: &Swiotlb, dev: &Device, addr: u64, len: usize) {
    swiotlb
        .unmap(dev, addr, len, Direction::ToDevice, MapAttrs::default())
        .unwrap();
}

/// Map `len` bytes at `orig` (filled with `tag`), let the "device" answer with `!tag` in the
/// first half, unmap, and check the bytes that came back.
fn round_trip(swiotlb: &Swiotlb, dev: &Device, orig: u64, len: usize, tag: u8) {
    swiotlb.memory().write(orig, &vec![tag; len]).unwrap();
    let a = swiotlb
        .map(
            dev,
            orig,
            len,
            Direction::Bidirectional,
            MapAttrs::default(),
        )
        .expect("a slot fits");
    let mut seen = vec![0u8; len];
    swiotlb.read_bounce(dev, a, &mut seen).unwrap();
    assert!(
        seen.iter().all(|&b| b == tag),
        "bounce buffer holds another mapping's bytes"
    );
    swiotlb.write_bounce(dev, a, &vec![!tag; len / 2]).unwrap();
    swiotlb
        .unmap(dev, a, len, Direction::Bidirectional, MapAttrs::default())
        .unwrap();
    let mut back = vec![0u8; len];
    swiotlb.memory().read(orig, &mut back).unwrap();
    assert!(
        back[..len / 2].iter().all(|&b| b == !tag) && back[len / 2..].iter().all(|&b| b == tag)
    );
}

/// The receiving side of a hand-off: an address read from the driver's memory must be found.
fn receive(swiotlb: &Swiotlb, dev: &Device, handoff: &AtomicU64) {
    let a = handoff.load(Relaxed);
    if a != 0 {
        assert!(swiotlb.is_bounce_buffer(dev, a), "{NOT_FOUND}");
    }
}

fn quiescent(swiotlb: &Swiotlb) {
    swiotlb.check_invariants().expect("free-run counters");
    assert_eq!(swiotlb.stats().used, 0, "every slot came back");
}

/// Two threads on one CPU share the single area of an 8-slot pool (two segments of 4).
/// Preemptions(3): the area lock and the free-run counters are the shared state; three
/// preemptions interleave either thread's search, copy and release anywhere in the other's
/// (≈1 s; exhaustive takes minutes for no new interleaving class).
fn area_shared() {
    let cfg = Config {
        can_grow: false,
        ..Config::tiny(8, 1, 4)
    };
    let (swiotlb, base) = instance(cfg, 4 * SLOT);
    let dev = swiotlb.device(DeviceConfig::default());
    let t = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        round_trip(swiotlb, dev, base, 3 * SLOT, 0x11)
    });
    let u = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        round_trip(swiotlb, dev, base + 3 * SLOT as u64, SLOT, 0x22)
    });
    t.join().unwrap();
    u.join().unwrap();
    quiescent(&swiotlb);
}

/// Two CPUs, two areas of 4 slots: the thread on CPU 1 fills its area and falls back to
/// area 0, where the thread on CPU 0 allocates. Preemptions(3), as `area_shared`.
fn area_crossing() {
    let cfg = Config {
        can_grow: false,
        ..Config::tiny(8, 2, 4)
    };
    let (swiotlb, base) = instance(cfg, 8 * SLOT);
    let dev = swiotlb.device(DeviceConfig::default());
    let t = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        dma_sync::cpu::set_current(Some(0));
        round_trip(swiotlb, dev, base, SLOT, 0x33);
    });
    let u = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        dma_sync::cpu::set_current(Some(1));
        let fill = map_to_device(swiotlb, dev, base + SLOT as u64, 4 * SLOT).unwrap();
        round_trip(swiotlb, dev, base + 5 * SLOT as u64, SLOT, 0x44);
        unmap_to_device(swiotlb, dev, fill, 4 * SLOT);
    });
    t.join().unwrap();
    u.join().unwrap();
    quiescent(&swiotlb);
}

/// The seed's swiotlb-new-pool on the real code. P0 grows the allocator; P1 maps (finding the
/// new pool if it sees it: the default pool is full, held by another device) and hands the
/// address to P2 through a Relaxed atomic; P2 must find the pool. Preemptions(3): the litmus
/// shape needs at most two preemptions (P2 between P1's flag store and hand-off, P1's
/// traversal right after P0's publication); 3 adds margin (≈1 s; 8 takes 86 s, same verdict).
fn new_pool() {
    new_pool_with_flag(false);
}

/// `new_pool` with the device's flag already set by an earlier map: the flag store is skipped,
/// but the mapper's fence still has to order its traversal (which found the new pool) before
/// the hand-off. Shows the fence is needed on every map, not only on the flag's first store.
/// Preemptions(3), as `new_pool`.
fn new_pool_flag_already_set() {
    new_pool_with_flag(true);
}

fn new_pool_with_flag(flag_set: bool) {
    let cfg = Config {
        transient_pools: false,
        ..Config::tiny(4, 1, 4)
    };
    let (swiotlb, base) = instance(cfg, 4 * SLOT);
    let dev = swiotlb.device(DeviceConfig::default());
    if flag_set {
        let a = map_to_device(&swiotlb, &dev, base, SLOT).unwrap();
        unmap_to_device(&swiotlb, &dev, a, SLOT);
    }
    // The default pool full, held by another device: the map needs the grown pool.
    let other = swiotlb.device(DeviceConfig::default());
    map_to_device(&swiotlb, &other, base, 4 * SLOT).unwrap();
    let handoff = Arc::new(AtomicU64::new(0));
    let p0 = {
        let swiotlb = swiotlb.clone();
        spawn(move || {
            swiotlb.grow_by(4).unwrap();
        })
    };
    let p1 = {
        let handoff = handoff.clone();
        spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
            if let Ok(a) = map_to_device(swiotlb, dev, base, SLOT) {
                handoff.store(a, Relaxed);
            }
        })
    };
    let p2 = spawn(move || receive(&swiotlb, &dev, &handoff));
    p0.join().unwrap();
    p1.join().unwrap();
    p2.join().unwrap();
}

/// Default pool full (held by another device), so every map of `dev` gets a transient pool.
fn transient_setup() -> (Arc<Swiotlb>, u64, Device) {
    full_default_pool(Config::tiny(4, 1, 4), 8 * SLOT)
}

/// A mapper links a new transient pool while a lookup walks the device's list (the device
/// already uses bounce buffers, so the walk happens). The walker reaches the new pool only
/// through the list, not through the mapper's fence: the link must be a release, the walk an
/// acquire. Exhaustive: two threads, one map against one lookup.
fn transient_add() {
    let (swiotlb, base, dev) = transient_setup();
    let first = map_to_device(&swiotlb, &dev, base, SLOT).unwrap();
    let t = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        map_to_device(swiotlb, dev, base + SLOT as u64, SLOT).unwrap();
    });
    let w = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        assert!(
            !swiotlb.is_bounce_buffer(dev, base),
            "an original address is no bounce buffer"
        );
        assert!(swiotlb.is_bounce_buffer(dev, first), "{MISSED_OLDER}");
    });
    t.join().unwrap();
    w.join().unwrap();
    assert_eq!(dev.transient_pools(), 2);
}

/// A transient pool is unmapped (unlinked, freed after a grace period) while a lookup of the
/// same device walks past it. The walker is pinned, so the pool is not freed under it.
/// Exhaustive: two threads; the grace period spins until the reader leaves.
fn transient_free() {
    let (swiotlb, base, dev) = transient_setup();
    let x = map_to_device(&swiotlb, &dev, base, SLOT).unwrap();
    let t = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        unmap_to_device(swiotlb, dev, x, SLOT)
    });
    let w = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        assert!(
            !swiotlb.is_bounce_buffer(dev, base),
            "an original address is no bounce buffer"
        )
    });
    t.join().unwrap();
    w.join().unwrap();
    assert_eq!(dev.transient_pools(), 0);
    assert_eq!(swiotlb.stats().transient_pools, 0);
}

/// Deletion then reuse: a thread unmaps its transient mapping, maps again (a new transient
/// pool) and hands the new address on through a Relaxed atomic; the receiver must find the new
/// pool and never touch the freed one. Exhaustive: two racing threads, well under a second.
fn transient_reuse() {
    let (swiotlb, base, dev) = transient_setup();
    let x = map_to_device(&swiotlb, &dev, base, SLOT).unwrap();
    let handoff = Arc::new(AtomicU64::new(0));
    let t = {
        let handoff = handoff.clone();
        spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
            unmap_to_device(swiotlb, dev, x, SLOT);
            let y = map_to_device(swiotlb, dev, base + SLOT as u64, SLOT).unwrap();
            handoff.store(y, Relaxed);
        })
    };
    let w = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        receive(swiotlb, dev, &handoff)
    });
    t.join().unwrap();
    w.join().unwrap();
    assert_eq!(dev.transient_pools(), 1);
}

/// The message of `area_cached_run` when a map took a transient pool although the other
/// thread held no slot: a cached run kept slots from a map that needed them.
const HOARDED: &str = "a transient pool although the other thread held no slot";

/// Phases of a thread of `area_cached_run`, published to the other: not started, mapping or
/// holding its slots, released.
const IDLE: u64 = 0;
const BUSY: u64 = 1;
const DONE: u64 = 2;

/// Map `len` bytes, check that a transient pool was needed, unmap. The area is too small for
/// both threads' runs at once, so a transient pool is only right if the other thread may have
/// held its slots during this map: it had started (`BUSY` before its map, so its slots, held
/// under the area lock, are ordered before this map's later read of its phase) and had not
/// finished (`DONE` after its unmap) when this map began.
fn bounce_beside(
    swiotlb: &Swiotlb,
    dev: &Device,
    orig: u64,
    len: usize,
    me: &AtomicU64,
    other: &AtomicU64,
) {
    me.store(BUSY, Release);
    let before = other.load(Acquire);
    let a = map_to_device(swiotlb, dev, orig, len).expect("a run or a transient pool");
    let after = other.load(Acquire);
    let transient = swiotlb.find_pool(dev, a).expect("a live mapping").transient;
    assert!(!transient || (before != DONE && after != IDLE), "{HOARDED}");
    unmap_to_device(swiotlb, dev, a, len);
    me.store(DONE, Release);
}

/// One area of 4 slots (one segment): one thread bounces 2 slots while the other bounces 3,
/// so a map meets the other's cached run (taken, or merged back into the counters, which alone
/// have no room), its live mapping (the area is full: a transient pool, and only then) or a
/// free area, and a release may displace the other's cached run. Preemptions(3), as
/// `area_shared`: what is shared is under the area lock, plus the transient list.
fn area_cached_run() {
    let (swiotlb, base) = instance(Config::tiny(4, 1, 4), 8 * SLOT);
    let dev = swiotlb.device(DeviceConfig::default());
    let phases = Arc::new([AtomicU64::new(IDLE), AtomicU64::new(IDLE)]);
    let p = phases.clone();
    let t = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        bounce_beside(swiotlb, dev, base, 2 * SLOT, &p[0], &p[1])
    });
    let p = phases.clone();
    let u = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        let orig = base + 4 * SLOT as u64;
        bounce_beside(swiotlb, dev, orig, 3 * SLOT, &p[1], &p[0])
    });
    t.join().unwrap();
    u.join().unwrap();
    quiescent(&swiotlb);
    assert_eq!(dev.transient_pools(), 0);
}

#[test]
fn area_cached_run_passes() {
    check(Bound::Preemptions(3), area_cached_run);
}

/// A run owned twice (by a thread cache and by a drain) shows as another mapping's bytes in a
/// bounce buffer or as broken counters; a run the drainer misses (it empties a slot the owner
/// just filled) is lost: not every slot comes back. Each twin below is caught as a lost run.
const OWNED_TWICE: &str =
    "bounce buffer holds another mapping's bytes | free-run counters | every slot came back";

/// A thread's cache racing a drain. The owner bounces the whole 4-slot pool twice: its unmap
/// caches the run and its second map takes it back from its cache. The other thread bounces 2
/// slots: while the owner's run is cached, its search fails and drains the owner's cache; while
/// the run is live, it gets a transient pool, and only then (`HOARDED`). Bytes round-trip (a run
/// owned twice mixes them) and every slot comes back. Preemptions(3): the race is one owner
/// section (take or park) against one drain (close, fence, wait, take, reopen); two preemptions
/// put the drain's close-and-fence inside either of the owner's sections and its take-and-reopen
/// before the owner's next one, the third adds margin (≈30 s; every twin is caught at 2; 4
/// passes in ≈250 s).
fn cache_drain() {
    let (swiotlb, base) = instance(Config::tiny(4, 1, 4), 8 * SLOT);
    let dev = swiotlb.device(DeviceConfig::default());
    let phases = Arc::new([AtomicU64::new(IDLE), AtomicU64::new(IDLE)]);
    let p = phases.clone();
    let owner = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        p[0].store(BUSY, Release);
        round_trip(swiotlb, dev, base, 4 * SLOT, 0x55);
        round_trip(swiotlb, dev, base, 4 * SLOT, 0x66);
        p[0].store(DONE, Release);
    });
    let p = phases.clone();
    let drainer = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        bounce_beside(swiotlb, dev, base + 4 * SLOT as u64, 2 * SLOT, &p[1], &p[0])
    });
    owner.join().unwrap();
    drainer.join().unwrap();
    quiescent(&swiotlb);
}

#[test]
fn cache_drain_passes() {
    check(Bound::Preemptions(3), cache_drain);
}

/// A thread that caches a run and exits, racing its heir. The leaver bounces 4 slots of an
/// 8-slot pool (its unmap caches the run) and exits: its registry gives its cache slot back
/// with the run still in it. The heir bounces 2 slots, then 6: its first unmap, in the
/// leaver's slot if it claimed it after the exit, displaces the inherited run back to the area
/// (a claimer that did not see the run would overwrite it, and it would be lost); its 6-slot
/// map finds no room while a run is cached and drains every slot, the leaver's whether it is
/// owned, given back or inherited (or, while the leaver's run is live, gets a transient pool,
/// and only then: `HOARDED`, as in `area_cached_run`, so a run the drain leaves in its slot
/// shows). With two cache slots under loom, the leaver's is the last one whenever the heir
/// claims first. Conservation: every slot comes back once. Preemptions(2): the heir's claim
/// before or after the leaver's exit and inside its sections, and its drain inside the
/// leaver's unmap; the twin fails with 1 (none needed: the heir runs after the exit and reads a
/// stale run).
fn cache_exit() {
    let (swiotlb, base) = instance(Config::tiny(8, 1, 8), 10 * SLOT);
    let dev = swiotlb.device(DeviceConfig::default());
    let phases = Arc::new([AtomicU64::new(IDLE), AtomicU64::new(IDLE)]);
    let p = phases.clone();
    let leaver = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        p[0].store(BUSY, Release);
        round_trip(swiotlb, dev, base, 4 * SLOT, 0x77);
        p[0].store(DONE, Release);
    });
    let p = phases.clone();
    let heir = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        let orig = base + 4 * SLOT as u64;
        round_trip(swiotlb, dev, orig, 2 * SLOT, 0x88);
        bounce_beside(swiotlb, dev, orig, 6 * SLOT, &p[1], &p[0]);
    });
    leaver.join().unwrap();
    heir.join().unwrap();
    quiescent(&swiotlb);
}

/// How a run lost at a thread's exit shows in `cache_exit`: as in `cache_drain`, or as the
/// heir's map needing a transient pool while only cached runs held the area.
const LOST_AT_EXIT: &str = "bounce buffer holds another mapping's bytes | free-run counters | \
    every slot came back | a transient pool although the other thread held no slot | \
    Causality violation";

#[test]
fn cache_exit_passes() {
    check(Bound::Preemptions(2), cache_exit);
}

/// Two threads unmap the same 2-slot mapping (its address reached both through the spawn):
/// exactly one succeeds, the other gets `NotMapped`, and the run is freed once. Exhaustive:
/// two threads, one claim each.
fn double_unmap() {
    let (swiotlb, base) = instance(Config::tiny(4, 1, 4), 4 * SLOT);
    let dev = swiotlb.device(DeviceConfig::default());
    let len = SLOT + 8;
    let a = map_to_device(&swiotlb, &dev, base, len).unwrap();
    let unmap = move |swiotlb: &Swiotlb, dev: &Device| {
        swiotlb.unmap(dev, a, len, Direction::ToDevice, MapAttrs::default())
    };
    let t = spawn_with(&swiotlb, &dev, unmap);
    let u = spawn_with(&swiotlb, &dev, unmap);
    let results = [t.join().unwrap(), u.join().unwrap()];
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{BOTH_WON}: {results:?}");
    assert!(results.contains(&Err(Error::NotMapped { addr: a })));
    quiescent(&swiotlb);
}

/// The message of `double_unmap` when both releases claim the mapping.
const BOTH_WON: &str = "exactly one unmap wins";

#[test]
fn double_unmap_passes() {
    check(Bound::Exhaustive, double_unmap);
}

/// Two unmaps of one copy-back mapping, one thread's followed by a map of the same size of
/// another buffer (which may reuse the slots) and its unmap. The copy back is made under the
/// claim: whichever unmap claims a mapping copies that mapping's bytes to that mapping's
/// original, and an unmap that finds the slots holding the new mapping may free it only with
/// its copy back (to the new buffer). Each mapping is unmapped once; the old buffer gets the
/// device's answer, the new one its own bytes. A copy back made before the claim copied the
/// new mapping's bytes into the old buffer. Exhaustive (about a second of CPU; it ran at 2
/// preemptions before, with no reason given, and 4, 6 and 8 preemptions cost 0.3, 1.1 and
/// 2 s), so every placement of the remapper's map and second unmap inside the other
/// thread's claim and copy back is explored.
fn overtaken_copy_back() {
    const LEN: usize = 8;
    let (swiotlb, base) = instance(Config::tiny(4, 1, 4), 4 * SLOT);
    let dev = swiotlb.device(DeviceConfig::default());
    let (old, new) = (base, base + SLOT as u64);
    swiotlb.memory().write(old, &[0x11; LEN]).unwrap();
    swiotlb.memory().write(new, &[0x22; LEN]).unwrap();
    let bi = Direction::Bidirectional;
    let attrs = MapAttrs::default();
    let a = swiotlb.map(&dev, old, LEN, bi, attrs).unwrap();
    swiotlb.write_bounce(&dev, a, &[0xAA; LEN]).unwrap();
    let remapper = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        let first = swiotlb.unmap(dev, a, LEN, bi, attrs).is_ok();
        let b = swiotlb.map(dev, new, LEN, bi, attrs).unwrap();
        usize::from(first) + usize::from(swiotlb.unmap(dev, b, LEN, bi, attrs).is_ok())
    });
    let other = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        usize::from(swiotlb.unmap(dev, a, LEN, bi, attrs).is_ok())
    });
    let unmapped = remapper.join().unwrap() + other.join().unwrap();
    let mut back = [0u8; LEN];
    swiotlb.memory().read(old, &mut back).unwrap();
    assert_eq!(
        back, [0xAA; LEN],
        "the old buffer got another mapping's bytes"
    );
    swiotlb.memory().read(new, &mut back).unwrap();
    assert_eq!(back, [0x22; LEN], "the new buffer changed");
    assert_eq!(unmapped, 2, "each mapping is unmapped once");
    quiescent(&swiotlb);
}

#[test]
fn overtaken_copy_back_passes() {
    check(Bound::Exhaustive, overtaken_copy_back);
}

/// A bogus unmap: a thread unmaps every address a 2-slot mapping could start at, racing the
/// map, so nothing but the head slot's metadata word orders it after the mapper (a hand-off
/// through memory would be ordered by the map's flag fence and the lookup's). Its claim must
/// see the mapper's write of the second slot's metadata, or its clearing could land before it
/// and leave a free slot with metadata. An earlier map of the device sets its flag. Exhaustive:
/// two threads.
fn guessed_unmap() {
    let (swiotlb, base) = instance(Config::tiny(4, 1, 4), 4 * SLOT);
    let dev = swiotlb.device(DeviceConfig::default());
    let first = map_to_device(&swiotlb, &dev, base, 8).unwrap();
    unmap_to_device(&swiotlb, &dev, first, 8);
    let start = swiotlb.stats().pools[0].start;
    let len = SLOT + 8;
    let mapper = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        map_to_device(swiotlb, dev, base, len).unwrap()
    });
    let guesser = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        (0..3).any(|i| {
            let a = start + (i * SLOT) as u64;
            let attrs = MapAttrs::default();
            swiotlb
                .unmap(dev, a, len, Direction::ToDevice, attrs)
                .is_ok()
        })
    });
    let a = mapper.join().unwrap();
    if !guesser.join().unwrap() {
        unmap_to_device(&swiotlb, &dev, a, len);
    }
    quiescent(&swiotlb);
}

#[test]
fn guessed_unmap_passes() {
    check(Bound::Exhaustive, guessed_unmap);
}

/// A bogus unmap with a copy back, racing the map: a thread unmaps every address a mapping
/// could start at, with a copy back, while another maps a buffer into slots that hold a
/// device's earlier bytes. The map publishes the mapping (its head slot's word,
/// `swiotlb.meta.publish`) only once it has filled the bounce buffer, so an unmap that claims
/// it copies back the bytes the map copied in; published in `record`, the claimer copied the
/// earlier bytes into the buffer (checked). A publication right before the copy is not seen
/// here: no tracked step lies between them, and loom cannot stop a thread inside the
/// untracked copy (`hostile::a_map_still_copying_in_cannot_be_unmapped` stops it there); nor
/// is a Relaxed publication (the bytes are untracked atomics: the point is unobservable).
/// Exhaustive: two threads.
fn guessed_copy_back() {
    const LEN: usize = 8;
    let (swiotlb, base) = instance(Config::tiny(4, 1, 4), 4 * SLOT);
    let dev = swiotlb.device(DeviceConfig::default());
    let first = map_to_device(&swiotlb, &dev, base, LEN).unwrap();
    unmap_to_device(&swiotlb, &dev, first, LEN);
    let start = swiotlb.stats().pools[0].start;
    // A device may write anywhere in its pools: every slot holds its bytes.
    swiotlb
        .write_bounce(&dev, start, &[0xEE; 4 * SLOT])
        .unwrap();
    let orig = base + SLOT as u64;
    swiotlb.memory().write(orig, &[0x33; LEN]).unwrap();
    let bi = Direction::Bidirectional;
    let attrs = MapAttrs::default();
    let mapper = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        swiotlb.map(dev, orig, LEN, bi, attrs).unwrap()
    });
    let guesser = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        (0..4).any(|i| {
            let a = start + (i * SLOT) as u64;
            swiotlb.unmap(dev, a, LEN, bi, attrs).is_ok()
        })
    });
    let a = mapper.join().unwrap();
    if !guesser.join().unwrap() {
        swiotlb.unmap(&dev, a, LEN, bi, attrs).unwrap();
    }
    let mut back = [0u8; LEN];
    swiotlb.memory().read(orig, &mut back).unwrap();
    assert_eq!(
        back, [0x33; LEN],
        "a copy back read the slots' earlier bytes"
    );
    quiescent(&swiotlb);
}

#[test]
fn guessed_copy_back_passes() {
    check(Bound::Exhaustive, guessed_copy_back);
}

/// Unlinking the list's head: the unlink's store must be a release. P is linked before the
/// threads start; the mapper links Q, then B above it (`B → Q → P`), and hands B's address on
/// through a Relaxed atomic; the unmapper, already inside a read section of its own, unmaps B,
/// which writes `transients = Q`; the walker checks P's address. A walker that reads that store
/// must see Q built (its bounds, and its link to P), and only the unlink's release carries Q
/// to it: the unmapper learns of Q through the hand-off (the lookup's acquire fence) and B's
/// link (the walk), both after its last fence, since the lookup's pin is nested in the
/// unmapper's own and issues none. With an outermost pin instead, the pin's full fence would
/// release everything the unmapper saw, as the map's flag fence does for a mapper that unlinks
/// its own pool: a Relaxed unlink then survives (checked). A Relaxed unlink fails here as a
/// causality violation on Q's bounds (or, read as null, its link misses P). Returns whether
/// the unmapper received B's address; both outcomes are reached.
///
/// Bound: Preemptions(2) (≈5 s). The shared steps are the mapper's two maps and hand-off, the
/// unmapper's pin, hand-off read, lookup, unlink and retirement, and the walker's pin and walk;
/// two preemptions place the walker's walk anywhere in the unmapper's unmap and both pins
/// before or after either of the mapper's maps (one switch away from each of the unmapper
/// and the walker). Bound 3 passes too, in ≈90 s.
fn transient_unlink_head() -> bool {
    let (swiotlb, base, dev) = transient_setup();
    let p = map_to_device(&swiotlb, &dev, base, SLOT).unwrap();
    let handoff = Arc::new(AtomicU64::new(0));
    let mapper = {
        let handoff = handoff.clone();
        spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
            map_to_device(swiotlb, dev, base + SLOT as u64, SLOT).unwrap();
            let b = map_to_device(swiotlb, dev, base + 2 * SLOT as u64, SLOT).unwrap();
            handoff.store(b, Relaxed);
        })
    };
    let unmapper = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        let _outer = dma_sync::rcu::pin();
        let b = handoff.load(Relaxed);
        if b != 0 {
            unmap_to_device(swiotlb, dev, b, SLOT);
        }
        b != 0
    });
    let walker = spawn_with(&swiotlb, &dev, move |swiotlb, dev| {
        assert!(swiotlb.is_bounce_buffer(dev, p), "{MISSED_OLDER}");
    });
    mapper.join().unwrap();
    let unmapped = unmapper.join().unwrap();
    walker.join().unwrap();
    assert_eq!(dev.transient_pools(), if unmapped { 2 } else { 3 });
    unmap_to_device(&swiotlb, &dev, p, SLOT);
    unmapped
}

#[test]
fn area_shared_passes() {
    check(Bound::Preemptions(3), area_shared);
}

#[test]
fn area_crossing_passes() {
    check(Bound::Preemptions(3), area_crossing);
}

#[test]
fn new_pool_passes() {
    // Bound 4 (half a second of CPU): every window of the three parties at bound 3, plus a
    // switch inside the grower's publication.
    check(Bound::Preemptions(4), new_pool);
}

/// Row D of the reference's table: the mapper's fence is a release fence (the kernel's
/// `smp_mb` weakened), which C11 accepts (it also orders the earlier list reads, and
/// happens-before is transitive) unlike LKMM's `smp_wmb`; strengthening it changes nothing.
#[test]
fn new_pool_seqcst_fence_adds_nothing() {
    let ((), hits) = dma_sync::mutation::weakened(
        &points::FLAG_FENCE,
        Weakening::To(dma_sync::atomic::Ordering::SeqCst),
        || check(Bound::Preemptions(3), new_pool),
    );
    assert!(hits > 0, "the fence was reached");
}

#[test]
fn new_pool_flag_already_set_passes() {
    check(Bound::Preemptions(3), new_pool_flag_already_set);
}

#[test]
fn transient_add_passes() {
    check(Bound::Exhaustive, transient_add);
}

#[test]
fn transient_free_passes() {
    check(Bound::Exhaustive, transient_free);
}

#[test]
fn transient_reuse_passes() {
    check(Bound::Exhaustive, transient_reuse);
}

#[test]
fn transient_unlink_head_passes() {
    let seen = outcomes(Bound::Preemptions(2), transient_unlink_head);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [false, true]);
}

must_fail_test! {
    /// Two releases read the head word before either clears it: both win.
    fn double_unmap_claim_not_atomic: points::RELEASE_CLAIM, Weakening::Relax, BOTH_WON, Bound::Exhaustive, double_unmap;
}

must_fail_test! {
    /// The claim does not acquire the mapper's metadata writes: a slot's clearing can land
    /// before the mapper's write of it.
    fn guessed_unmap_claim_relaxed: points::RELEASE_CLAIM_ACQUIRE, Weakening::Relax, "free-run counters", Bound::Exhaustive, guessed_unmap;
}

must_fail_test! {
    /// No fence in the owner's section: it and the drainer both take the run.
    fn cache_drain_enter_fence_dropped: points::CACHE_ENTER, Weakening::Relax, OWNED_TWICE, Bound::Preemptions(2), cache_drain;
}

must_fail_test! {
    /// No fence in the drain: as above.
    fn cache_drain_fence_dropped: points::CACHE_DRAIN, Weakening::Relax, OWNED_TWICE, Bound::Preemptions(2), cache_drain;
}

must_fail_test! {
    /// A Relaxed section end: the drainer reads a run the owner has replaced, and the new one
    /// is lost or owned twice.
    fn cache_drain_exit_relaxed: points::CACHE_EXIT, Weakening::Relax, OWNED_TWICE, Bound::Preemptions(2), cache_drain;
}

must_fail_test! {
    /// A Relaxed wait: as above.
    fn cache_drain_wait_relaxed: points::CACHE_WAIT, Weakening::Relax, OWNED_TWICE, Bound::Preemptions(2), cache_drain;
}

must_fail_test! {
    /// A Relaxed reopening: the owner sees its slot open but still holding the drained run.
    fn cache_drain_reopen_relaxed: points::CACHE_REOPEN, Weakening::Relax, OWNED_TWICE, Bound::Preemptions(2), cache_drain;
}

must_fail_test! {
    /// A Relaxed check of the slot's flag: as above.
    fn cache_drain_reopened_relaxed: points::CACHE_REOPENED, Weakening::Relax, OWNED_TWICE, Bound::Preemptions(2), cache_drain;
}

must_fail_test! {
    /// A Relaxed give-back at thread exit: the heir claims the slot without seeing the run
    /// cached in it, overwrites it, and the run is lost; its first section's check of its own
    /// section flag (an unsynchronised read under loom) already reads the leaver's unacquired
    /// store.
    fn cache_exit_disown_relaxed: points::CACHE_DISOWN, Weakening::Relax, LOST_AT_EXIT, Bound::Preemptions(1), cache_exit;
}

must_fail_test! {
    /// Without the flag store the receiver skips the device's pools.
    fn new_pool_flag_unset: points::FLAG_SET, Weakening::Relax, NOT_FOUND, Bound::Preemptions(3), new_pool;
}

must_fail_test! {
    /// Without the mapper's fence the hand-off store may pass the flag store.
    fn new_pool_flag_fence_dropped: points::FLAG_FENCE, Weakening::Relax, NOT_FOUND, Bound::Preemptions(3), new_pool;
}

must_fail_test! {
    /// With the flag already set, the fence alone orders the mapper's traversal before the
    /// hand-off.
    fn new_pool_flag_set_fence_dropped: points::FLAG_FENCE, Weakening::Relax, NOT_FOUND, Bound::Preemptions(3), new_pool_flag_already_set;
}

must_fail_test! {
    /// Without the lookup's acquire fence the flag may be read before the hand-off.
    fn new_pool_lookup_rmb_dropped: points::LOOKUP_RMB, Weakening::Relax, NOT_FOUND, Bound::Preemptions(3), new_pool;
}

must_fail_test! {
    /// A Relaxed publication lets the mapper read a pool it has no happens-before to.
    fn new_pool_publish_relaxed: points::POOLS_PUBLISH, Weakening::Relax, "Causality violation", Bound::Preemptions(3), new_pool;
}

must_fail_test! {
    /// A Relaxed traversal breaks the mapper's message passing from the publisher.
    fn new_pool_traverse_relaxed: points::POOLS_TRAVERSE, Weakening::Relax, "Causality violation", Bound::Preemptions(3), new_pool;
}

must_fail_test! {
    /// A Relaxed link lets a concurrent walker read the new transient pool uninitialised: its
    /// link to the older pool reads as null, and the walker misses that pool.
    fn transient_link_relaxed: points::TRANSIENT_LINK, Weakening::Relax, MISSED_OR_RACED, Bound::Exhaustive, transient_add;
}

must_fail_test! {
    /// A Relaxed walk of the transient list reads the new pool without happens-before: its
    /// link to the older pool reads as null, and the walker misses that pool.
    fn transient_traverse_relaxed: points::TRANSIENT_TRAVERSE, Weakening::Relax, MISSED_OR_RACED, Bound::Exhaustive, transient_add;
}

must_fail_test! {
    /// Without the lookup's pin the grace period does not wait for the walker.
    fn transient_lookup_unpinned: points::LOOKUP_PIN, Weakening::Relax, "Causality violation", Bound::Exhaustive, transient_free;
}

must_fail_test! {
    /// Freeing the unlinked pool at once frees it under the walker.
    fn transient_freed_without_grace: points::TRANSIENT_GRACE, Weakening::Relax, "Causality violation", Bound::Exhaustive, transient_free;
}

must_fail_test! {
    /// The reuse hand-off also depends on the mapper's fence.
    fn transient_reuse_flag_fence_dropped: points::FLAG_FENCE, Weakening::Relax, NOT_FOUND, Bound::Exhaustive, transient_reuse;
}

must_fail_test! {
    /// A Relaxed acquire of the area's spin lock: a map reads the counters and cached run the
    /// previous holder wrote without happens-before.
    fn area_shared_spin_acquire_relaxed: dma_sync::points::SPIN_ACQUIRE, Weakening::Relax, "Causality violation", Bound::Preemptions(3), area_shared;
}

must_fail_test! {
    /// A Relaxed release of the area's spin lock: the next holder's section races with this
    /// one's writes.
    fn area_shared_spin_release_relaxed: dma_sync::points::SPIN_RELEASE, Weakening::Relax, "Causality violation", Bound::Preemptions(3), area_shared;
}
