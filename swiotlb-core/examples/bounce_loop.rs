//! A 4 KiB bounce to the device (map, copy, unmap) in a loop, for instruction counts:
//! `valgrind --tool=callgrind target/release/examples/bounce_loop N` for two values of `N`;
//! the difference over the difference in `N` is the cost of one map+unmap, and the copy's
//! share is the inclusive cost of the `copies` functions in the report.
//!
//! The pool is configured as the benchmark's fast-path case is: default geometry, no
//! high-water statistics.

use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mem = RegionMemory::new(1 << 20);
    let orig = mem.base();
    let swiotlb = Swiotlb::new(Config::default(), mem).expect("default configuration");
    let dev = swiotlb.device(DeviceConfig::default());
    let (dir, attrs) = (Direction::ToDevice, MapAttrs::default());
    for _ in 0..n {
        let a = swiotlb.map(&dev, orig, 4096, dir, attrs).expect("room");
        swiotlb.unmap(&dev, a, 4096, dir, attrs).expect("mapped");
    }
    assert_eq!(swiotlb.stats().used, 0);
}
