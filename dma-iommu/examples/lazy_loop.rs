//! Lazy 4 KiB map+unmap of a trusted device in a loop, for instruction counts:
//! `valgrind --tool=callgrind target/release/examples/lazy_loop N` for two values of `N`;
//! the difference over the difference in `N` is the cost of one map+unmap, flushes and
//! drains included (one flush per 255 unmaps, the per-CPU ring's capacity).
//!
//! The domain is configured as the benchmark's lazy case is: a 48-bit 4 KiB-granule table,
//! per-CPU flush queues; its invalidations cost nothing here.

use dma_iommu::{DeviceConfig, Direction, Domain, DomainConfig, FqConfig, NoTlb};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let cfg = DomainConfig::new(io_pgtable::Config::s1_4k(48))
        .expect("valid domain configuration")
        .lazy(FqConfig::per_cpu());
    let dom = Domain::new(cfg, NoTlb, None).expect("valid domain");
    let dev = dom
        .attach(DeviceConfig {
            trusted: true,
            ..DeviceConfig::default()
        })
        .expect("device attaches");
    let (paddr, dir) = (0x10_0000, Direction::ToDevice);
    for _ in 0..n {
        let dma = dom.map(&dev, paddr, 4096, dir).expect("room");
        dom.unmap(&dev, dma, 4096, dir).expect("mapped");
    }
    let st = dom.stats();
    assert_eq!(
        (st.maps, st.unmaps_queued, st.live),
        (n as u64, n as u64, 0)
    );
}
