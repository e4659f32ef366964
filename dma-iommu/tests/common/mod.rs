//! Helpers shared by the integration tests: the domain they build, the lazy queue they switch
//! to, and the oracle that checks IOVA reuse against the recorded invalidations.
// Each test crate includes this module and uses a subset of it.
#![allow(dead_code)]

use dma_iommu::test_util::SimulatedDevice;
use dma_iommu::{Device, DeviceConfig, Domain, DomainConfig, FqConfig, RecordingIotlb, TlbOps};
use std::collections::BTreeMap;
use std::time::Duration;
use swiotlb_core::{Config, RegionMemory, Swiotlb};

/// The granule of every test domain.
pub const G: u64 = 0x1000;

/// A domain over a 4 KiB-granule table, with a bounce pool configured by `bounce_config` over
/// the device-visible memory `mem`; `tune` adjusts the configuration (the IOVA space, the
/// caches, the lazy queue) before the domain is built.
pub fn domain_over(
    mem: RegionMemory,
    bounce_config: Config,
    tune: impl FnOnce(&mut DomainConfig),
) -> Domain<RecordingIotlb> {
    let bounce = Swiotlb::new(bounce_config, mem).unwrap();
    let mut cfg = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
    cfg.iova.trim_interval = None;
    tune(&mut cfg);
    Domain::new(cfg, RecordingIotlb::new(), Some(bounce)).unwrap()
}

/// `dev`'s side of `dom`, seeing the memory the domain's bounce buffers copy from and to.
pub fn hw<'a, T: TlbOps>(dom: &'a Domain<T>, dev: &'a Device) -> SimulatedDevice<'a, T> {
    SimulatedDevice::new(dom, dev, dom.swiotlb().expect("bounce buffers").memory())
}

/// A lazy queue whose timer never fires by itself during a test.
pub fn quiet_fq() -> FqConfig {
    FqConfig::per_cpu()
        .with_ring_size(8)
        .with_timeout(Duration::from_secs(3600))
}

/// An untrusted device with the default limits.
pub fn untrusted() -> DeviceConfig {
    DeviceConfig {
        trusted: false,
        ..DeviceConfig::default()
    }
}

/// The IOVA granules `[dma, dma + size)` touches.
pub fn pages(dma: u64, size: u64) -> impl Iterator<Item = u64> {
    (dma & !(G - 1)..dma + size).step_by(G as usize)
}

/// Checks that no granule is handed out again before an invalidation that started after its
/// unmap began and covers it completed. Times come from the [`RecordingIotlb`]'s clock.
#[derive(Default)]
pub struct ReuseCheck {
    unmapped_at: BTreeMap<u64, u64>,
    /// Granules handed out again after an unmap.
    pub reuses: usize,
}

impl ReuseCheck {
    /// `[dma, dma + size)` was mapped, returning at time `now`.
    pub fn mapped(&mut self, iotlb: &RecordingIotlb, now: u64, dma: u64, size: u64) {
        for page in pages(dma, size) {
            if let Some(t) = self.unmapped_at.remove(&page) {
                self.reuses += 1;
                assert!(
                    iotlb.covered_between(page, page + G, t, now),
                    "IOVA {page:#x} reused before an invalidation covering its unmap"
                );
            }
        }
    }

    /// The unmap of `[dma, dma + size)` begins at time `at`.
    pub fn unmapping(&mut self, at: u64, dma: u64, size: u64) {
        for page in pages(dma, size) {
            self.unmapped_at.insert(page, at);
        }
    }
}
