//! The bounce-buffer cases: map+copy+unmap in both directions, pool growth under pressure, the
//! scale sweep (a 4 KiB bounce with 1k to 1M slots held by other mappings), the one-area peer
//! (our allocator with the single global lock Linux had before areas, without thread caches)
//! and the per-I/O allocation peer.

use super::floor::copies;
use super::human_bytes;
use crate::harness::{measure, Measurement, RunConfig};
use crate::peers::bounce::{fresh_from_device, fresh_to_device};
use crate::suite::{Case, Component, Omitted, Options, Role};
use std::collections::VecDeque;
use swiotlb_core::{
    Config, Device, DeviceConfig, Direction, MapAttrs, OrigMemory, RegionMemory, Swiotlb,
};

/// Direction of a bounce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Memory → device: copy in at map.
    ToDevice,
    /// Device → memory: copy out at unmap.
    FromDevice,
}

impl Dir {
    fn direction(self) -> Direction {
        match self {
            Dir::ToDevice => Direction::ToDevice,
            Dir::FromDevice => Direction::FromDevice,
        }
    }
}

/// Workload name of a map+copy+unmap of `size` bytes in `dir`.
pub fn bounce(size: usize, dir: Dir) -> String {
    let d = match dir {
        Dir::ToDevice => "to device",
        Dir::FromDevice => "from device",
    };
    format!("bounce {} {d}", human_bytes(size as u64))
}

/// Workload name of the scale sweep: a 4 KiB bounce to the device while `used` slots are held.
pub fn used_sweep(used: u64) -> String {
    format!(
        "bounce 4 KiB to device, {} slots used",
        super::human_count(used)
    )
}

/// Workload name of the growth case.
pub const GROWTH: &str = "pool growth: 64 KiB maps, 64 live per thread";

/// Implementation name of ours with the default configuration (one area per CPU).
pub const OURS: &str = "ours";
/// Implementation name of our pool with a single area and no thread caches (the global lock
/// Linux had before areas).
pub const ONE_AREA: &str = "ours, one area";
/// Implementation name of the per-I/O allocation peer.
pub const FRESH: &str = "fresh buffer per I/O";

/// The size the peers run (the targets compare at 4 KiB).
pub const PEER_SIZE: usize = 4096;

/// The largest bounce: one segment of slots (256 KiB).
pub const MAX_BOUNCE: usize = swiotlb_core::IO_TLB_SEGSIZE * swiotlb_core::IO_TLB_SIZE;

/// Original memory per thread: room for the largest bounce of every thread count run.
pub const ORIG_PER_THREAD: usize = 1 << 20;

/// An instance over original memory for `threads` threads; the address of each thread's
/// original buffer is `base + t * ORIG_PER_THREAD`.
pub fn instance(cfg: Config, threads: usize) -> (Swiotlb, u64) {
    let mem = RegionMemory::new(threads * ORIG_PER_THREAD);
    let base = mem.base();
    for t in 0..threads {
        // Non-zero original data, so copies move real bytes.
        mem.write(
            base + (t * ORIG_PER_THREAD) as u64,
            &vec![0x5a; ORIG_PER_THREAD],
        )
        .expect("inside the region");
    }
    (
        Swiotlb::new(cfg, mem).expect("valid swiotlb configuration"),
        base,
    )
}

/// One thread's map+copy+unmap op.
pub fn bounce_op(
    bounce: &Swiotlb,
    dev: Device,
    orig: u64,
    size: usize,
    dir: Direction,
) -> impl FnMut() + '_ {
    let attrs = MapAttrs::default();
    move || {
        if let Ok(a) = bounce.map(&dev, orig, size, dir, attrs) {
            // A failed unmap of a live mapping would be a harness bug; nothing to do here.
            let _ = bounce.unmap(&dev, a, size, dir, attrs);
        }
    }
}

fn bounce_run(
    cfg: &RunConfig,
    threads: usize,
    pool: Config,
    size: usize,
    dir: Direction,
) -> Measurement {
    let (bounce, base) = instance(pool, threads);
    let dev = bounce.device(DeviceConfig::default());
    measure(cfg, threads, |t| {
        bounce_op(
            &bounce,
            dev.clone(),
            base + (t * ORIG_PER_THREAD) as u64,
            size,
            dir,
        )
    })
}

/// Each thread keeps 64 live 64 KiB mappings (a FIFO: map the newest, unmap the oldest) on a
/// pool that starts at 1 MiB, so the pool must grow (transient pools, then background growth)
/// while the clock runs.
fn growth_run(cfg: &RunConfig, threads: usize) -> Measurement {
    const SIZE: usize = 64 << 10;
    const LIVE: usize = 64;
    let pool = Config {
        nslabs: 512,
        growth_nslabs: 512,
        ..Config::default()
    };
    let (bounce, base) = instance(pool, threads);
    let dev = bounce.device(DeviceConfig::default());
    measure(cfg, threads, |t| {
        let (bounce, dev) = (&bounce, dev.clone());
        let mut live: VecDeque<u64> = VecDeque::with_capacity(LIVE);
        let orig = base + (t * ORIG_PER_THREAD) as u64;
        let dir = Direction::ToDevice;
        let attrs = MapAttrs::default();
        move || {
            if live.len() == LIVE {
                if let Some(a) = live.pop_front() {
                    let _ = bounce.unmap(&dev, a, SIZE, dir, attrs);
                }
            }
            if let Ok(a) = bounce.map(&dev, orig, SIZE, dir, attrs) {
                live.push_back(a);
            }
        }
    })
}

/// Map `n` one-slot buffers from `orig` and keep them (they stay until the pool is dropped); how
/// many were mapped.
pub fn hold_slots(bounce: &Swiotlb, dev: &Device, orig: u64, n: usize) -> usize {
    let (dir, attrs) = (Direction::ToDevice, MapAttrs::default());
    (0..n)
        .filter(|_| {
            bounce
                .map(dev, orig, swiotlb_core::IO_TLB_SIZE, dir, attrs)
                .is_ok()
        })
        .count()
}

/// A 4 KiB bounce to the device on a pool of `used + free` slots of which `used` are held by
/// one-slot mappings, made by the measuring thread before the clock starts (so they fill its
/// own area first, then the others, as a busy CPU does).
fn used_run(cfg: &RunConfig, threads: usize, used: usize, free: usize) -> Measurement {
    let pool = Config {
        nslabs: used + free,
        ..Config::default()
    };
    let (bounce, base) = instance(pool, threads);
    let dev = bounce.device(DeviceConfig::default());
    measure(cfg, threads, |t| {
        let orig = base + (t * ORIG_PER_THREAD) as u64;
        let per_thread = used / threads;
        hold_slots(&bounce, &dev, orig, per_thread);
        bounce_op(&bounce, dev.clone(), orig, PEER_SIZE, Direction::ToDevice)
    })
}

/// The bounce cases selected by `opts`.
pub fn cases(opts: &Options) -> (Vec<Case>, Vec<Omitted>) {
    if !opts.has(Component::Swiotlb) {
        return (Vec::new(), Vec::new());
    }
    let c = Component::Swiotlb;
    let mut v = Vec::new();
    let sizes: Vec<usize> = opts
        .bounce_sizes
        .iter()
        .copied()
        .filter(|&s| s <= MAX_BOUNCE)
        .collect();
    let slots = opts.pool_slots;
    // The default configuration: no high-water counter (`Config::stats`), for the one-area
    // peer too. The one-area peer is the design Linux had before areas: one lock for every map and
    // unmap, so no thread caches either (with them, a map+unmap loop takes no lock at all).
    let pool = move |nareas| Config {
        nslabs: slots,
        nareas,
        thread_caches: nareas != 1,
        ..Config::default()
    };
    for &size in &sizes {
        for dir in [Dir::ToDevice, Dir::FromDevice] {
            v.push(
                Case::new(c, bounce(size, dir), OURS, Role::Ours, move |cfg, t| {
                    bounce_run(cfg, t, pool(0), size, dir.direction())
                })
                .with_floors(copies(size)),
            );
        }
    }
    v.push(Case::new(c, GROWTH, OURS, Role::Ours, growth_run));
    for &used in &opts.sweep {
        let case = Case::new(c, used_sweep(used), OURS, Role::Ours, move |cfg, t| {
            used_run(cfg, t, used as usize, slots)
        });
        v.push(case.with_floors(copies(PEER_SIZE)).up_to(1));
    }
    for dir in [Dir::ToDevice, Dir::FromDevice] {
        v.push(
            Case::new(
                c,
                bounce(PEER_SIZE, dir),
                ONE_AREA,
                Role::Peer,
                move |cfg, t| bounce_run(cfg, t, pool(1), PEER_SIZE, dir.direction()),
            )
            .with_floors(copies(PEER_SIZE)),
        );
        v.push(
            Case::new(
                c,
                bounce(PEER_SIZE, dir),
                FRESH,
                Role::Peer,
                move |cfg, t| {
                    measure(cfg, t, |_| {
                        let mut data = vec![0x5au8; PEER_SIZE];
                        move || match dir {
                            Dir::ToDevice => fresh_to_device(&data, 0),
                            Dir::FromDevice => fresh_from_device(&mut data, 0),
                        }
                    })
                },
            )
            .with_floors(copies(PEER_SIZE)),
        );
    }
    let mut omitted = Vec::new();
    if sizes.len() < opts.bounce_sizes.len() {
        omitted.push(Omitted {
            component: c,
            what: format!("bounce sizes above {}", human_bytes(MAX_BOUNCE as u64)),
            reason: "a bounce mapping is at most one segment of slots".into(),
        });
    }
    (v, omitted)
}

// Not under loom: real pools outside a model (benchmarks are production builds).
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)] // large pools
    fn the_used_sweep_holds_every_slot_it_asks_for_and_leaves_the_free_ones() {
        let (used, free) = (5_000, 2_048);
        let pool = Config {
            nslabs: used + free,
            ..Config::default()
        };
        let (bounce, base) = instance(pool, 1);
        let dev = bounce.device(DeviceConfig::default());
        assert_eq!(hold_slots(&bounce, &dev, base, used), used);
        assert_eq!(bounce.stats().used, used);
        // The measured op still finds room, and gives it back.
        let mut op = bounce_op(&bounce, dev, base, PEER_SIZE, Direction::ToDevice);
        for _ in 0..10_000 {
            op();
        }
        assert_eq!(bounce.stats().used, used);
    }
}
