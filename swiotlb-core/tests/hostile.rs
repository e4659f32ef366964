//! Hostile calls through the safe API: stale handles, racing and misdirected unmaps, sizes at
//! the edges. Each test asserts the typed error and that the instance still works.

use swiotlb_core::{Config, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, Swiotlb};

const NONE: MapAttrs = MapAttrs {
    alloc_align_mask: 0,
    skip_cpu_sync: false,
    zero_padding: false,
};

/// A device outlives its instance; the next instance may be allocated at the same address.
/// The stale device must stay foreign to it (it was taken for the new instance's own device).
#[test]
fn a_device_of_a_dropped_instance_is_foreign_to_its_successor() {
    dma_sync::cpu::set_current(Some(0));
    for _ in 0..64 {
        let mem = RegionMemory::new(4096);
        let orig = mem.base();
        let old = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
        let stale = old.device(DeviceConfig::default());
        let a = old
            .map(&stale, orig, 64, Direction::ToDevice, NONE)
            .unwrap();
        drop(old);
        let mem = RegionMemory::new(4096);
        let orig = mem.base();
        let new = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
        assert_eq!(
            new.map(&stale, orig, 64, Direction::ToDevice, NONE),
            Err(Error::ForeignDevice)
        );
        assert_eq!(
            new.unmap(&stale, a, 64, Direction::ToDevice, NONE),
            Err(Error::ForeignDevice)
        );
        let dev = new.device(DeviceConfig::default());
        let b = new.map(&dev, orig, 64, Direction::ToDevice, NONE).unwrap();
        new.unmap(&dev, b, 64, Direction::ToDevice, NONE).unwrap();
        assert_eq!(new.stats().used, 0);
        new.check_invariants().unwrap();
    }
}
