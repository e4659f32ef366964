//! Fault injection: every allocation site of `swiotlb_core::faults` made to fail, alone and
//! during random workloads. Each failure must be a typed error that changes nothing or a
//! fallback that loses nothing: after every step every slot is accounted for (the free-run
//! invariants hold and the used count is exactly the held mappings' slots), every byte of a
//! live mapping is the byte that went in, transient pools come and go with their mappings, and
//! the allocator keeps working once the site is disarmed. Arming is per thread, so these tests
//! run in parallel; growth is driven through the synchronous `grow`/`grow_by` (the background
//! worker's thread is never armed).
#![cfg(not(loom))]

use dma_sync::fault::{armed, Site};
use proptest::prelude::*;
use swiotlb_core::faults::{DEFAULT_POOL, POOL_GROW, TRANSIENT_POOL};
use swiotlb_core::{
    Config, Device, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, StatsSnapshot, Swiotlb,
    IO_TLB_SIZE,
};

/// Original memory per mapping: the largest mapping plus its in-page offset fits.
const CHUNK: u64 = 32 * 1024;
/// Chunks per workload, so at most this many mappings are held at once.
const CHUNKS: usize = 24;
/// Slots of the default pool and of each grown pool; segments of 8 slots (16 KiB).
const NSLABS: usize = 16;
const SEG: usize = 8;

fn tiny() -> Config {
    Config {
        stats: true,
        ..Config::tiny(NSLABS, 2, SEG)
    }
}

/// A mapping held by the test.
struct Held {
    dev: usize,
    addr: u64,
    orig: u64,
    size: usize,
    dir: Direction,
    /// Slots it added to `used` (a transient pool counts whole).
    slots: usize,
    /// What its original bytes hold after unmap.
    after: u8,
}

/// The allocator, two devices (one without and one with NVMe's `min_align_mask`) and what the
/// test holds. `exact`: this thread is the only user, so global counters can be checked.
struct World {
    swiotlb: Swiotlb,
    devs: [Device; 2],
    base: u64,
    held: Vec<Held>,
    exact: bool,
    /// Slots this world added by growth.
    grown: usize,
    grown_pools: usize,
}

impl World {
    fn new(cfg: Config) -> World {
        let mem = RegionMemory::new(CHUNKS * CHUNK as usize);
        let base = mem.base();
        let swiotlb = Swiotlb::new(cfg, mem).unwrap();
        World::on(swiotlb, base, true)
    }

    /// A world on a shared allocator using the chunks at `base`.
    fn on(swiotlb: Swiotlb, base: u64, exact: bool) -> World {
        let devs = [
            swiotlb.device(DeviceConfig::default()),
            swiotlb.device(DeviceConfig {
                min_align_mask: 0xFFF,
                ..Default::default()
            }),
        ];
        World {
            swiotlb,
            devs,
            base,
            held: Vec::new(),
            exact,
            grown: 0,
            grown_pools: 0,
        }
    }

    fn free_chunk(&self) -> Option<u64> {
        (0..CHUNKS as u64)
            .map(|c| self.base + c * CHUNK)
            .find(|&c| !self.held.iter().any(|h| h.orig / CHUNK == c / CHUNK))
    }

    fn orig_bytes(&self, orig: u64, size: usize) -> Vec<u8> {
        let mut v = vec![0; size];
        self.swiotlb.memory().read(orig, &mut v).unwrap();
        v
    }

    /// Map `size` bytes (clamped to what the device may map) at offset `off` of a free chunk,
    /// filled with `fill`; the device then writes `!fill` if the direction lets it. On an
    /// error nothing may have changed.
    fn map(
        &mut self,
        dev: usize,
        size: usize,
        off: u64,
        dir: Direction,
        fill: u8,
    ) -> Result<(), Error> {
        let Some(chunk) = self.free_chunk() else {
            return Ok(());
        };
        let d = &self.devs[dev];
        let size = size.clamp(1, self.swiotlb.max_mapping_size(d));
        let orig = chunk + off % 4096;
        self.swiotlb
            .memory()
            .write(orig, &vec![fill; size])
            .unwrap();
        let before = self.swiotlb.stats();
        let (flag, transients) = (d.uses_swiotlb(), d.transient_pools());
        let addr = match self.swiotlb.map(d, orig, size, dir, MapAttrs::default()) {
            Ok(a) => a,
            Err(e) => {
                if self.exact {
                    assert_eq!(
                        self.swiotlb.stats(),
                        before,
                        "a failed map changed the counters"
                    );
                }
                assert_eq!((d.uses_swiotlb(), d.transient_pools()), (flag, transients));
                assert!(
                    same(&self.orig_bytes(orig, size), fill),
                    "a failed map wrote the original"
                );
                return Err(e);
            }
        };
        let mut seen = vec![0; size];
        self.swiotlb.read_bounce(d, addr, &mut seen).unwrap();
        assert!(same(&seen, fill), "map copied the original in");
        let after = if matches!(dir, Direction::ToDevice) {
            fill
        } else {
            self.swiotlb
                .write_bounce(d, addr, &vec![!fill; size])
                .unwrap();
            !fill
        };
        // Other threads' maps and unmaps move `used` too: exact worlds only.
        let slots = if self.exact {
            self.swiotlb.stats().used - before.used
        } else {
            0
        };
        self.held.push(Held {
            dev,
            addr,
            orig,
            size,
            dir,
            slots,
            after,
        });
        Ok(())
    }

    fn unmap(&mut self, pick: usize) {
        if self.held.is_empty() {
            return;
        }
        let h = self.held.swap_remove(pick % self.held.len());
        let d = &self.devs[h.dev];
        let used = self.swiotlb.stats().used;
        self.swiotlb
            .unmap(d, h.addr, h.size, h.dir, MapAttrs::default())
            .unwrap();
        if self.exact {
            assert_eq!(
                self.swiotlb.stats().used,
                used - h.slots,
                "unmap freed its slots"
            );
        }
        assert!(
            same(&self.orig_bytes(h.orig, h.size), h.after),
            "unmap copied back"
        );
        // With other threads mapping, the address may already be someone else's mapping.
        if self.exact {
            let again = self
                .swiotlb
                .unmap(d, h.addr, h.size, h.dir, MapAttrs::default());
            assert_eq!(again, Err(Error::NotMapped { addr: h.addr }));
        }
    }

    /// Add a pool of `NSLABS` slots; on an error nothing may have changed.
    fn grow(&mut self) -> Result<(), Error> {
        let before = self.swiotlb.stats();
        match self.swiotlb.grow_by(NSLABS) {
            Ok(n) => {
                assert_eq!(n, NSLABS);
                self.grown += n;
                self.grown_pools += 1;
                Ok(())
            }
            Err(e) => {
                if self.exact {
                    assert_eq!(
                        self.swiotlb.stats(),
                        before,
                        "a failed growth changed the pools"
                    );
                }
                Err(e)
            }
        }
    }

    fn transient(&self, h: &Held) -> bool {
        self.swiotlb
            .find_pool(&self.devs[h.dev], h.addr)
            .unwrap()
            .transient
    }

    /// Every slot and every byte accounted for.
    fn check(&self) {
        for h in &self.held {
            let mut seen = vec![0; h.size];
            self.swiotlb
                .read_bounce(&self.devs[h.dev], h.addr, &mut seen)
                .unwrap();
            // The device's bytes: the original for to-device, its own write otherwise.
            assert!(
                same(&seen, h.after),
                "bytes of the live mapping at {:#x}",
                h.addr
            );
        }
        for (i, d) in self.devs.iter().enumerate() {
            let mine = self.held.iter().filter(|h| h.dev == i && self.transient(h));
            assert_eq!(
                d.transient_pools(),
                mine.count(),
                "transient pools of device {i}"
            );
        }
        if !self.exact {
            return;
        }
        self.swiotlb.check_invariants().unwrap();
        let s = self.swiotlb.stats();
        assert_eq!(
            s.used,
            self.held.iter().map(|h| h.slots).sum::<usize>(),
            "{s}"
        );
        let transient: Vec<&Held> = self.held.iter().filter(|h| self.transient(h)).collect();
        assert_eq!(s.transient_pools, transient.len(), "{s}");
        assert_eq!(
            s.transient_nslabs,
            transient.iter().map(|h| h.slots).sum::<usize>()
        );
        assert_eq!(s.nslabs, NSLABS + self.grown, "{s}");
        assert!(
            s.hiwater.is_some_and(|h| h >= s.used),
            "high-water below used: {s}"
        );
        assert_eq!(s.pools.len(), 1 + self.grown_pools);
        assert_eq!(s.nslabs, s.pools.iter().map(|p| p.nslabs).sum::<usize>());
    }

    /// Unmap everything: every slot comes back, every transient pool is gone.
    fn drain(&mut self) {
        while !self.held.is_empty() {
            self.unmap(0);
        }
        if self.exact {
            all_back(&self.swiotlb);
        }
        assert_eq!(
            self.devs.iter().map(Device::transient_pools).sum::<usize>(),
            0
        );
    }

    /// Disarmed, the allocator fills every global segment, spills into transient pools, and
    /// takes it all back.
    fn keeps_working(&mut self) {
        self.drain();
        let orig = self.base;
        let seg_bytes = SEG * IO_TLB_SIZE;
        let segments = self.swiotlb.stats().nslabs / SEG;
        let d = &self.devs[0];
        let maps: Vec<u64> = (0..segments + 2)
            .map(|_| {
                let a =
                    self.swiotlb
                        .map(d, orig, seg_bytes, Direction::ToDevice, MapAttrs::default());
                a.unwrap()
            })
            .collect();
        let s = self.swiotlb.stats();
        assert_eq!((s.transient_pools, s.used), (2, s.nslabs + 2 * SEG), "{s}");
        self.swiotlb.check_invariants().unwrap();
        for a in maps {
            self.swiotlb
                .unmap(d, a, seg_bytes, Direction::ToDevice, MapAttrs::default())
                .unwrap();
        }
        all_back(&self.swiotlb);
    }
}

/// Whether every byte is `b` (an assertion on the bytes would print them all).
fn same(bytes: &[u8], b: u8) -> bool {
    bytes.iter().all(|&x| x == b)
}

fn all_back(swiotlb: &Swiotlb) {
    swiotlb.check_invariants().unwrap();
    let s: StatsSnapshot = swiotlb.stats();
    assert_eq!(
        (s.used, s.transient_pools, s.transient_nslabs),
        (0, 0, 0),
        "{s}"
    );
    assert!(s.pools.iter().all(|p| p.area_used.iter().all(|&u| u == 0)));
}

#[test]
fn no_default_pool_fails_the_constructor() {
    let (r, used) = armed(&DEFAULT_POOL, 1, || {
        Swiotlb::new(tiny(), RegionMemory::new(64))
    });
    assert_eq!(used, 1);
    assert!(
        matches!(r, Err(Error::PoolAlloc { nslabs: NSLABS })),
        "{r:?}"
    );
    let mut w = World::new(tiny());
    w.check();
    w.keeps_working();
}

#[test]
fn no_dynamic_pool_leaves_the_pool_list_unchanged() {
    let mut w = World::new(tiny());
    // Fill the default pool (two whole segments).
    for fill in [1, 2] {
        w.map(0, SEG * IO_TLB_SIZE, 0, Direction::Bidirectional, fill)
            .unwrap();
    }
    let (r, used) = armed(&POOL_GROW, 1, || w.grow());
    assert_eq!((r, used), (Err(Error::PoolAlloc { nslabs: NSLABS }), 1));
    w.check();
    // Later maps still work: a transient pool now, the default pool once a segment is free.
    w.map(1, 100, 0x10, Direction::FromDevice, 3).unwrap();
    assert!(w.transient(&w.held[2]));
    w.unmap(0);
    w.map(1, 100, 0x20, Direction::ToDevice, 4).unwrap();
    assert!(!w.transient(&w.held[2]));
    w.check();
    // Disarmed, growth works and the new pool serves maps.
    w.grow().unwrap();
    w.map(0, SEG * IO_TLB_SIZE, 0, Direction::ToDevice, 5)
        .unwrap();
    assert!(!w.transient(w.held.last().unwrap()));
    w.check();
    w.keeps_working();
}

#[test]
#[cfg_attr(miri, ignore)]
fn growth_halves_down_to_the_minimum_before_giving_up() {
    let swiotlb = Swiotlb::new(
        Config {
            growth_nslabs: 2048,
            ..tiny()
        },
        RegionMemory::new(64),
    )
    .unwrap();
    let before = swiotlb.stats();
    // 2048, 1024, then 512 = IO_TLB_MIN_SLABS: three attempts, then the error.
    let (r, used) = armed(&POOL_GROW, usize::MAX, || swiotlb.grow());
    assert_eq!((r, used), (Err(Error::PoolAlloc { nslabs: 512 }), 3));
    assert_eq!(swiotlb.stats(), before);
    assert_eq!(armed(&POOL_GROW, 1, || swiotlb.grow()), (Ok(1024), 1));
    assert_eq!(armed(&POOL_GROW, 2, || swiotlb.grow()), (Ok(512), 2));
    assert_eq!(swiotlb.grow(), Ok(2048));
    let s = swiotlb.stats();
    assert_eq!(s.nslabs, NSLABS + 1024 + 512 + 2048);
    let sizes: Vec<usize> = s.pools.iter().map(|p| p.nslabs).collect();
    assert_eq!(sizes, [NSLABS, 1024, 512, 2048]);
    swiotlb.check_invariants().unwrap();
    // A configured size under the minimum is the floor itself: one attempt.
    let small = Swiotlb::new(tiny(), RegionMemory::new(64)).unwrap();
    let (r, used) = armed(&POOL_GROW, usize::MAX, || small.grow());
    assert_eq!((r, used), (Err(Error::PoolAlloc { nslabs: NSLABS }), 1));
    assert_eq!(small.grow(), Ok(NSLABS));
}

#[test]
fn no_transient_pool_is_buffer_full_and_links_nothing() {
    let mut w = World::new(tiny());
    for fill in [1, 2] {
        w.map(0, SEG * IO_TLB_SIZE, 0, Direction::ToDevice, fill)
            .unwrap();
    }
    // Device 1 never mapped: the failed maps must not set its flag either (checked in `map`).
    let (r, used) = armed(&TRANSIENT_POOL, usize::MAX, || {
        [100, 3000, 12 * 1024].map(|size| w.map(1, size, 0x234, Direction::FromDevice, 7))
    });
    assert_eq!(used, 3);
    assert_eq!(
        r,
        [100, 3000, 12 * 1024].map(|size| Err(Error::NoSpace { size }))
    );
    assert!(!w.devs[1].uses_swiotlb());
    w.check();
    // Disarmed: a transient pool, freed again at unmap.
    w.map(1, 3000, 0x234, Direction::FromDevice, 7).unwrap();
    assert!(w.transient(&w.held[2]));
    assert_eq!(w.swiotlb.stats().transient_pools, 1);
    w.check();
    w.unmap(2);
    assert_eq!(w.swiotlb.stats().transient_pools, 0);
    w.check();
    w.keeps_working();
}

const SITES: [&Site; 2] = [&POOL_GROW, &TRANSIENT_POOL];

#[derive(Debug, Clone)]
enum Op {
    Map {
        dev: usize,
        size: usize,
        off: u64,
        dir: usize,
    },
    Unmap {
        pick: usize,
    },
    Grow,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 1..16 * 1024usize, 0..4096u64, 0..3usize)
            .prop_map(|(dev, size, off, dir)| Op::Map { dev, size, off, dir }),
        3 => any::<usize>().prop_map(|pick| Op::Unmap { pick }),
        1 => Just(Op::Grow),
    ]
}

/// One step of a workload, with `fault` (an index into [`SITES`]) armed once or nothing.
/// Returns whether an injected failure was consumed.
fn step(w: &mut World, i: usize, op: &Op, fault: Option<usize>) -> bool {
    let run = |w: &mut World| match *op {
        Op::Map {
            dev,
            size,
            off,
            dir,
        } => w.map(dev, size, off, Direction::ALL[dir], i as u8),
        Op::Unmap { pick } => {
            w.unmap(pick);
            Ok(())
        }
        Op::Grow => w.grow(),
    };
    let (r, used) = match fault {
        Some(site) => armed(SITES[site], 1, || run(w)),
        None => (run(w), 0),
    };
    // A site fails exactly the operation that reached it, with its typed error.
    match (op, r) {
        (_, Ok(())) => assert_eq!(used, 0, "{op:?}: an injected failure was swallowed"),
        (Op::Map { .. }, Err(Error::NoSpace { .. })) if used == 1 => {
            assert_eq!(fault, Some(1));
        }
        (Op::Grow, Err(Error::PoolAlloc { nslabs: NSLABS })) if used == 1 => {
            assert_eq!(fault, Some(0));
        }
        (_, Err(e)) => panic!("{op:?} under {fault:?}: {e}"),
    }
    w.check();
    used == 1
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random maps, unmaps and growth on two devices with a random site failing once now and
    /// then: conservation after every step, nothing leaked, and a working allocator after.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn random_faults_lose_nothing(
        ops in prop::collection::vec((op(), prop::option::weighted(0.4, 0..SITES.len())), 1..150)
    ) {
        dma_sync::cpu::set_current(Some(0));
        let mut w = World::new(tiny());
        for (i, (op, fault)) in ops.iter().enumerate() {
            step(&mut w, i, op, *fault);
        }
        w.keeps_working();
        dma_sync::cpu::set_current(None);
    }
}

/// Two threads on their own CPUs, devices and original memory, each failing its sites now and
/// then: the fallbacks run while the other thread maps, unmaps and grows the shared pools.
#[test]
#[cfg_attr(miri, ignore)]
fn concurrent_faults_lose_nothing() {
    const THREADS: usize = 2;
    let mem = RegionMemory::new(THREADS * CHUNKS * CHUNK as usize);
    let base = mem.base();
    let swiotlb = Swiotlb::new(tiny(), mem).unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let swiotlb = swiotlb.clone();
            std::thread::spawn(move || {
                dma_sync::cpu::set_current(Some(t));
                let mut w = World::on(swiotlb, base + (t * CHUNKS) as u64 * CHUNK, false);
                let mut injected = [0; SITES.len()];
                for i in 0..1500usize {
                    let op = match i % 9 {
                        0..=4 => Op::Map {
                            dev: i % 2,
                            size: 1 + (i * 7919) % (16 * 1024),
                            off: (i * 131) as u64 % 4096,
                            dir: i % 3,
                        },
                        5..=7 => Op::Unmap { pick: i * 31 },
                        _ if i % 27 == 8 => Op::Grow,
                        _ => Op::Unmap { pick: i },
                    };
                    let fault = (i % 4 == 0).then_some(i / 4 % SITES.len());
                    if let Some(site) = fault {
                        injected[site] += usize::from(step(&mut w, i, &op, fault));
                    } else {
                        step(&mut w, i, &op, None);
                    }
                }
                w.drain();
                (w.grown, injected)
            })
        })
        .collect();
    let (mut grown, mut injected) = (0, [0; SITES.len()]);
    for h in workers {
        let (g, n) = h.join().unwrap();
        grown += g;
        injected = [injected[0] + n[0], injected[1] + n[1]];
    }
    assert!(
        injected.iter().all(|&n| n > 0),
        "each site failed: {injected:?}"
    );
    all_back(&swiotlb);
    assert_eq!(swiotlb.stats().nslabs, NSLABS + grown);
    let mut w = World::on(swiotlb, base, true);
    w.grown = grown;
    w.grown_pools = grown / NSLABS;
    w.check();
    w.keeps_working();
}
