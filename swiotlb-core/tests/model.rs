//! proptest: random sequences of map / device write / sync / unmap / bogus unmap with random
//! masks against a reference model of the bytes on both sides; after every step the free-run
//! invariant (`list[i]`), the metadata of free slots and `used` are checked.
// loom builds run the loom suite only: these tests use real threads and locks.
#![cfg(not(loom))]

use proptest::prelude::*;
use std::ops::Range;
use swiotlb_core::{Config, Device, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};

const CHUNK: u64 = 64 * 1024;
const CHUNKS: usize = 8;
const ALIGNS: [u64; 4] = [0, 0x7FF, 0xFFF, 0xFFFF];

/// What a [`Op::Touch`] does to its sub-range.
#[derive(Debug, Clone, Copy)]
enum Touch {
    /// The device writes `byte`s.
    DeviceWrite,
    SyncForCpu,
    /// The CPU writes `byte`s, then syncs for the device.
    SyncForDevice,
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        dev: usize,
        off: u64,
        len: usize,
        align: usize,
        dir: usize,
        seed: u8,
    },
    Unmap {
        pick: usize,
        skip: bool,
    },
    /// Touch a sub-range of a live mapping.
    Touch {
        what: Touch,
        pick: usize,
        at: usize,
        len: usize,
        byte: u8,
    },
    BogusUnmap {
        pick: usize,
        delta: i64,
    },
}

fn touch() -> impl Strategy<Value = Touch> {
    prop_oneof![
        Just(Touch::DeviceWrite),
        Just(Touch::SyncForCpu),
        Just(Touch::SyncForDevice)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 0..0x4000u64, 1..20_000usize, 0..4usize, 0..3usize, any::<u8>())
            .prop_map(|(dev, off, len, align, dir, seed)| Op::Map { dev, off, len, align, dir, seed }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, skip)| Op::Unmap { pick, skip }),
        6 => (touch(), any::<usize>(), any::<usize>(), 1..5000usize, any::<u8>())
            .prop_map(|(what, pick, at, len, byte)| Op::Touch { what, pick, at, len, byte }),
        1 => (any::<usize>(), prop_oneof![Just(1i64), Just(-1), Just(2048), Just(-2048), Just(4096)])
            .prop_map(|(pick, delta)| Op::BogusUnmap { pick, delta }),
    ]
}

/// One live mapping as the reference model sees it.
struct Live {
    dev: usize,
    chunk: usize,
    orig: u64,
    addr: u64,
    dir: Direction,
    /// What the bounce buffer must hold.
    bounce: Vec<u8>,
    /// What the original buffer must hold.
    original: Vec<u8>,
}

impl Live {
    /// The sub-range `[at, at + len)` of the mapping, clamped into it: its bounce address and
    /// its byte range.
    fn sub(&self, at: usize, len: usize) -> (u64, Range<usize>) {
        let size = self.bounce.len();
        let at = at % size;
        (self.addr + at as u64, at..at + len.min(size - at))
    }
}

struct Harness {
    tlb: Swiotlb,
    base: u64,
    devs: Vec<Device>,
    live: Vec<Live>,
}

impl Harness {
    fn new() -> Harness {
        let mem = RegionMemory::new(CHUNKS * CHUNK as usize);
        let base = mem.base();
        let tlb = Swiotlb::new(
            Config {
                can_grow: false,
                ..Config::tiny(512, 2, 128)
            },
            mem,
        )
        .unwrap();
        let devs = vec![
            tlb.device(DeviceConfig::default()),
            tlb.device(DeviceConfig {
                min_align_mask: 0xFFF,
                ..Default::default()
            }),
            tlb.device(DeviceConfig {
                min_align_mask: 0x7FF,
                seg_boundary_mask: 0xFFFF,
                ..Default::default()
            }),
        ];
        Harness {
            tlb,
            base,
            devs,
            live: Vec::new(),
        }
    }

    fn read_orig(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.tlb.memory().read(addr, &mut v).unwrap();
        v
    }

    fn read_bounce(&self, l: &Live) -> Vec<u8> {
        let mut v = vec![0; l.bounce.len()];
        self.tlb
            .read_bounce(&self.devs[l.dev], l.addr, &mut v)
            .unwrap();
        v
    }

    /// Both sides of live mapping `i` hold what the model says.
    fn check_live(&self, i: usize) {
        let l = &self.live[i];
        assert_eq!(self.read_orig(l.orig, l.original.len()), l.original);
        assert_eq!(self.read_bounce(l), l.bounce);
    }
    fn step(&mut self, op: &Op) {
        let n = self.live.len();
        match *op {
            Op::Map {
                dev,
                off,
                len,
                align,
                dir,
                seed,
            } => {
                let Some(chunk) = (0..CHUNKS).find(|c| self.live.iter().all(|l| l.chunk != *c))
                else {
                    return;
                };
                let orig = self.base + chunk as u64 * CHUNK + off;
                let len = len.min((CHUNK - off) as usize);
                let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                self.tlb.memory().write(orig, &data).unwrap();
                let attrs = MapAttrs {
                    alloc_align_mask: ALIGNS[align],
                    ..Default::default()
                };
                let d = &self.devs[dev];
                let addr = self
                    .tlb
                    .map(d, orig, len, Direction::ALL[dir], attrs)
                    .expect("the pool has room by construction");
                assert_eq!((addr ^ orig) & d.config().min_align_mask, 0);
                for l in &self.live {
                    assert!(
                        addr + len as u64 <= l.addr || l.addr + l.bounce.len() as u64 <= addr,
                        "overlap"
                    );
                }
                let l = Live {
                    dev,
                    chunk,
                    orig,
                    addr,
                    dir: Direction::ALL[dir],
                    bounce: data.clone(),
                    original: data,
                };
                assert_eq!(
                    self.read_bounce(&l),
                    l.bounce,
                    "map copies in for every direction"
                );
                self.live.push(l);
            }
            Op::Unmap { pick, skip } if n > 0 => {
                let l = self.live.swap_remove(pick % n);
                let attrs = MapAttrs {
                    skip_cpu_sync: skip,
                    ..Default::default()
                };
                self.tlb
                    .unmap(&self.devs[l.dev], l.addr, l.bounce.len(), l.dir, attrs)
                    .unwrap();
                let copies = !skip && l.dir != Direction::ToDevice;
                let want = if copies { &l.bounce } else { &l.original };
                assert_eq!(&self.read_orig(l.orig, l.bounce.len()), want);
            }
            Op::Touch {
                what,
                pick,
                at,
                len,
                byte,
            } if n > 0 => {
                let l = &mut self.live[pick % n];
                let (addr, r) = l.sub(at, len);
                let dev = &self.devs[l.dev];
                match what {
                    Touch::DeviceWrite => {
                        self.tlb
                            .write_bounce(dev, addr, &vec![byte; r.len()])
                            .unwrap();
                        l.bounce[r].fill(byte);
                    }
                    Touch::SyncForCpu => {
                        self.tlb.sync_for_cpu(dev, addr, r.len(), l.dir).unwrap();
                        if l.dir != Direction::ToDevice {
                            let b = l.bounce[r.clone()].to_vec();
                            l.original[r].copy_from_slice(&b);
                        }
                    }
                    Touch::SyncForDevice => {
                        let orig = l.orig + r.start as u64;
                        self.tlb.memory().write(orig, &vec![byte; r.len()]).unwrap();
                        l.original[r.clone()].fill(byte);
                        self.tlb.sync_for_device(dev, addr, r.len(), l.dir).unwrap();
                        if l.dir != Direction::FromDevice {
                            l.bounce[r].fill(byte);
                        }
                    }
                }
                self.check_live(pick % n);
            }
            Op::BogusUnmap { pick, delta } if n > 0 => {
                let l = &self.live[pick % n];
                let bogus = l.addr.wrapping_add_signed(delta);
                if self.live.iter().any(|o| o.addr == bogus) {
                    return;
                }
                let before = self.tlb.stats().used;
                assert!(self
                    .tlb
                    .unmap(&self.devs[l.dev], bogus, 1, l.dir, MapAttrs::default())
                    .is_err());
                assert_eq!(self.tlb.stats().used, before);
            }
            _ => {}
        }
        self.tlb.check_invariants().unwrap();
        assert_eq!(self.tlb.stats().used == 0, self.live.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 128 }, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_match_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        for op in &ops {
            h.step(op);
        }
        while let Some(l) = h.live.pop() {
            h.tlb.unmap(&h.devs[l.dev], l.addr, l.bounce.len(), l.dir, MapAttrs::default()).unwrap();
        }
        h.tlb.check_invariants().unwrap();
        prop_assert_eq!(h.tlb.stats().used, 0);
    }
}
