//! A 4 KiB bounce to the device (map, copy, unmap) in a loop, for instruction counts:
//! `valgrind --tool=callgrind target/release/examples/bounce_loop N` for two values of `N`;
//! the difference over the difference in `N` is the cost of one map+unmap, and the copy's
//! share is the inclusive cost of the `copies` functions in the report.
//!
//! The pool is configured as the benchmark's fast-path case is: default geometry, no
//! high-water statistics. `bounce_loop N iommu` maps as dma-iommu bounces an untrusted
//! device's 4 KiB buffer that is not page-aligned: allocation aligned to the 4 KiB granule,
//! padding zeroed (here there is none, as in the benchmark's untrusted case).

use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let iommu = args.next().as_deref() == Some("iommu");
    let mem = RegionMemory::new(1 << 20);
    let orig = mem.base() + if iommu { 512 } else { 0 };
    let swiotlb = Swiotlb::new(Config::default(), mem).expect("default configuration");
    let dev = swiotlb.device(DeviceConfig::default());
    let attrs = if iommu {
        MapAttrs {
            alloc_align_mask: 0xFFF,
            zero_padding: true,
            ..MapAttrs::default()
        }
    } else {
        MapAttrs::default()
    };
    let dir = Direction::ToDevice;
    for _ in 0..n {
        let a = swiotlb.map(&dev, orig, 4096, dir, attrs).expect("room");
        swiotlb.unmap(&dev, a, 4096, dir, attrs).expect("mapped");
    }
    assert_eq!(swiotlb.stats().used, 0);
}
