//! The DMA-mapping cases: map+unmap of 4 KiB through a domain in strict and lazy invalidation
//! mode, and with bouncing for an untrusted device, over dma-iommu's [`SimulatedIotlb`] whose
//! every invalidation (range sync, global flush, walk-cache flush) busy-waits a modelled time.

use crate::harness::{measure, Measurement, RunConfig};
use crate::suite::{Case, Component, Omitted, Options, Role};
use dma_iommu::{Device, DeviceConfig, Direction, Domain, DomainConfig, FqConfig, SimulatedIotlb};
use std::time::Duration;
use swiotlb_core::{OrigMemory, RegionMemory, Swiotlb};

/// Workload name of strict-mode map+unmap.
pub const STRICT: &str = "map+unmap 4 KiB, strict";
/// Workload name of lazy-mode (per-CPU flush queues) map+unmap.
pub const LAZY: &str = "map+unmap 4 KiB, lazy";
/// Workload name of map+unmap for an untrusted device: the buffer starts 512 bytes into a
/// page, so it is bounced (and the mapping is strict, as for every untrusted device).
pub const BOUNCED: &str = "map+unmap 4 KiB, untrusted (bounced)";
/// Workload name of the untrusted map+unmap with invalidations that cost nothing: what the
/// layer itself adds to a bounce (untrusted devices are always strict, so with the modelled
/// cost every unmap also pays one IOTLB sync).
pub const BOUNCED_FREE: &str = "map+unmap 4 KiB, untrusted (bounced), IOTLB free";

/// Implementation name of ours.
pub const OURS: &str = "ours";

/// Bytes of original memory per thread (the bounced case copies from it).
pub const ORIG_PER_THREAD: u64 = 64 << 10;

/// Which flavour of domain and device a case uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Strict invalidation, trusted device.
    Strict,
    /// Lazy invalidation (per-CPU flush queues), trusted device.
    Lazy,
    /// Untrusted device (strict, sub-granule buffers bounced).
    Bounced,
}

impl Mode {
    /// Offset of the buffer in its page: untrusted mappings are bounced only when not
    /// granule-aligned.
    pub fn offset(self) -> u64 {
        if self == Mode::Bounced {
            512
        } else {
            0
        }
    }
}

/// A domain over a 48-bit 4 KiB-granule table, original memory for `threads` threads, a
/// bounce pool of `pool_slots` slots, and a device; the original buffers are
/// `base + t * ORIG_PER_THREAD`.
pub fn domain(
    mode: Mode,
    threads: usize,
    cost_ns: u64,
    pool_slots: usize,
) -> (Domain<SimulatedIotlb>, Device, u64) {
    let mut cfg =
        DomainConfig::new(io_pgtable::Config::s1_4k(48)).expect("valid domain configuration");
    if mode == Mode::Lazy {
        cfg = cfg.lazy(FqConfig::per_cpu());
    }
    let mem = RegionMemory::new(threads * ORIG_PER_THREAD as usize);
    let base = mem.base();
    mem.write(base, &vec![0x5a; mem.len()])
        .expect("inside the region");
    // Configured as the bounce case's pool is, so the bounced path is compared with the bounce
    // it contains.
    let pool = swiotlb_core::Config {
        nslabs: pool_slots,
        ..Default::default()
    };
    let bounce = Swiotlb::new(pool, mem).expect("valid swiotlb configuration");
    let cost = Duration::from_nanos(cost_ns);
    let iotlb = SimulatedIotlb::new(cost, cost);
    let d = Domain::new(cfg, iotlb, Some(bounce)).expect("valid domain");
    let dev = d
        .attach(DeviceConfig {
            trusted: mode != Mode::Bounced,
            ..DeviceConfig::default()
        })
        .expect("device attaches");
    (d, dev, base)
}

fn run(cfg: &RunConfig, threads: usize, mode: Mode, cost_ns: u64, slots: usize) -> Measurement {
    let (d, dev, base) = domain(mode, threads, cost_ns, slots);
    let offset = mode.offset();
    measure(cfg, threads, |t| {
        let (d, dev) = (&d, dev.clone());
        let paddr = base + t as u64 * ORIG_PER_THREAD + offset;
        move || {
            if let Ok(dma) = d.map(&dev, paddr, 4096, Direction::ToDevice) {
                // A refused unmap of a live mapping would be a harness bug.
                let _ = d.unmap(&dev, dma, 4096, Direction::ToDevice);
            }
        }
    })
}

/// The DMA-mapping cases selected by `opts`.
pub fn cases(opts: &Options) -> (Vec<Case>, Vec<Omitted>) {
    if !opts.has(Component::Iommu) {
        return (Vec::new(), Vec::new());
    }
    let (cost, slots) = (opts.iotlb_sync_ns, opts.pool_slots);
    let v = [
        (STRICT, Mode::Strict, cost),
        (LAZY, Mode::Lazy, cost),
        (BOUNCED, Mode::Bounced, cost),
        (BOUNCED_FREE, Mode::Bounced, 0),
    ]
    .into_iter()
    .map(|(name, mode, cost)| {
        Case::new(Component::Iommu, name, OURS, Role::Ours, move |cfg, t| {
            run(cfg, t, mode, cost, slots)
        })
    })
    .collect();
    (v, Vec::new())
}
