//! The swiotlb slot search against the free-space model: a free qualifying run must be found.
#![cfg(not(loom))]

use dma_model::swiotlb::{plan, Masks, SlotSpace};
use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};

const SLOTS: usize = 64;
const SEG: usize = 16;

/// One restricted pool full of one-slot mappings but for an odd slot and the even slot after
/// it, freed in that order; then an NVMe-style map whose offset bits need an odd slot.
#[test]
fn a_free_odd_slot_before_the_search_start_is_found() {
    let mem = RegionMemory::new(1 << 20);
    let base = mem.base();
    let cfg = Config {
        segment_slots: SEG,
        ..Config::restricted(SLOTS)
    };
    let swiotlb = Swiotlb::new(cfg, mem).unwrap();
    let plain = swiotlb.device(DeviceConfig::default());
    let nvme = swiotlb.device(DeviceConfig {
        min_align_mask: 0xFFF,
        ..Default::default()
    });
    let maps: Vec<u64> = (0..SLOTS)
        .map(|_| {
            swiotlb
                .map(&plain, base, 100, Direction::ToDevice, MapAttrs::default())
                .unwrap()
        })
        .collect();
    let mut space = SlotSpace::default();
    let pool = &swiotlb.stats().pools[0];
    space.add_pool(pool.start, pool.nslabs, SEG);
    let one = Masks {
        min_align: 0,
        alloc_align: 0,
        boundary: u64::MAX,
    };
    let one_slot = plan(Some(base), 100, one, true, 0xFFFF, SEG).unwrap();
    for &a in &maps {
        space.occupy(a, &one_slot).unwrap();
    }
    let slot = |k: usize| {
        maps.iter()
            .copied()
            .find(|a| (a - pool.start) as usize / 2048 == k)
    };
    for k in [53, 54] {
        let a = slot(k).unwrap();
        swiotlb
            .unmap(&plain, a, 100, Direction::ToDevice, MapAttrs::default())
            .unwrap();
        assert!(space.release(a));
    }
    let orig = base + 0x1A00;
    let m = Masks {
        min_align: 0xFFF,
        ..one
    };
    let odd = plan(Some(orig), 100, m, true, 0xFFFF, SEG).unwrap();
    let free = space.first_fit(&odd);
    assert!(free.is_some(), "the model has a run for {odd:?}");
    let got = swiotlb.map(&nvme, orig, 100, Direction::ToDevice, MapAttrs::default());
    assert!(
        got.is_ok(),
        "map refused with {got:?} although slots {:?} are free and qualify",
        free.map(|a| (a - pool.start) / 2048)
    );
}
