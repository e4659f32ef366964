//! The alignment rules through the public API: the reference's worked cases A–D and the
//! postconditions over every combination of masks.
// loom builds run the loom suite only: these tests use real threads and locks.
#![cfg(not(loom))]

use swiotlb_core::{Config, Device, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};

const SLOT: u64 = 2048;

fn instance(nslabs: usize, orig_bytes: usize) -> (Swiotlb, u64) {
    let mem = RegionMemory::new(orig_bytes);
    let base = mem.base();
    let cfg = Config {
        can_grow: false,
        ..Config::tiny(nslabs, 1, 128)
    };
    (Swiotlb::new(cfg, mem).unwrap(), base)
}

fn attrs(alloc_align_mask: u64) -> MapAttrs {
    MapAttrs {
        alloc_align_mask,
        ..Default::default()
    }
}

fn nvme(swiotlb: &Swiotlb) -> Device {
    swiotlb.device(DeviceConfig {
        min_align_mask: 0xFFF,
        ..Default::default()
    })
}

#[test]
fn case_a_nvme_via_dma_direct() {
    let (swiotlb, base) = instance(256, 64 * 1024);
    let dev = nvme(&swiotlb);
    let orig = base + 0x1A00;
    let a = swiotlb
        .map(&dev, orig, 8192, Direction::ToDevice, attrs(0))
        .unwrap();
    assert_eq!(a & 0xFFF, 0xA00);
    assert_eq!((a >> 11) & 1, 1, "the mapping starts in an odd slot");
    assert_eq!(swiotlb.stats().used, 5);
    swiotlb
        .unmap(&dev, a, 8192, Direction::ToDevice, attrs(0))
        .unwrap();
    swiotlb.check_invariants().unwrap();
    assert_eq!(swiotlb.stats().used, 0);
}

#[test]
fn case_b_untrusted_nvme_64k_granule_round_trip_restores_counters() {
    let (swiotlb, base) = instance(256, 512 * 1024);
    let dev = nvme(&swiotlb);
    let orig = base + 0x1_3A00;
    swiotlb.memory().write(orig, &[0xAB; 4096]).unwrap();
    let a = swiotlb
        .map(&dev, orig, 4096, Direction::Bidirectional, attrs(0xFFFF))
        .unwrap();
    assert_eq!(a & 0xFFF, 0xA00);
    // One pad slot, then in-slot offset 0x200: the allocation starts 64 KiB-aligned.
    assert_eq!((a - 0x200 - SLOT) & 0xFFFF, 0);
    assert_eq!(swiotlb.stats().used, 32);
    let mut seen = [0u8; 4096];
    swiotlb.read_bounce(&dev, a, &mut seen).unwrap();
    assert!(seen.iter().all(|&b| b == 0xAB));
    swiotlb
        .unmap(&dev, a, 4096, Direction::Bidirectional, attrs(0xFFFF))
        .unwrap();
    swiotlb.check_invariants().unwrap();
    assert_eq!(swiotlb.stats().used, 0);
    // The counters are whole again: a full segment fits.
    let full = swiotlb
        .map(&dev, base, 128 * 2048 - 4096, Direction::ToDevice, attrs(0))
        .unwrap();
    swiotlb
        .unmap(&dev, full, 128 * 2048 - 4096, Direction::ToDevice, attrs(0))
        .unwrap();
}

#[test]
fn case_c_streaming_mappings_of_a_page_or_more_are_page_aligned() {
    let (swiotlb, base) = instance(256, 64 * 1024);
    let dev = swiotlb.device(DeviceConfig::default());
    // Take one slot first so the next-fit hint sits on an odd slot.
    let small = swiotlb
        .map(&dev, base, 100, Direction::ToDevice, attrs(0))
        .unwrap();
    let a = swiotlb
        .map(&dev, base + 0x123, 6000, Direction::ToDevice, attrs(0))
        .unwrap();
    assert_eq!(a & 0xFFF, 0);
    assert_eq!(swiotlb.stats().used, 1 + 3);
    // Below a page: no page alignment, the next slot is taken.
    let b = swiotlb
        .map(&dev, base + 0x123, 4000, Direction::ToDevice, attrs(0))
        .unwrap();
    assert_eq!(b & 0x7FF, 0);
    for (x, n) in [(small, 100), (a, 6000), (b, 4000)] {
        swiotlb
            .unmap(&dev, x, n, Direction::ToDevice, attrs(0))
            .unwrap();
    }
    swiotlb.check_invariants().unwrap();
}

#[test]
fn case_d_alloc_is_size_order_aligned() {
    let swiotlb = Swiotlb::new(Config::restricted(256), RegionMemory::new(1)).unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    let filler = swiotlb.alloc(&dev, 2048).unwrap();
    let a = swiotlb.alloc(&dev, 12 * 1024).unwrap();
    assert_eq!(a % (16 * 1024), 0);
    assert_eq!(swiotlb.stats().used, 1 + 6);
    swiotlb.free(&dev, a).unwrap();
    swiotlb.free(&dev, filler).unwrap();
    swiotlb.check_invariants().unwrap();
}

/// The postconditions for every combination of masks, offsets and sizes (the slot-alignment
/// fixes 0eee5ae10256, bbb73a103fbb and 2fd4fa5d3fb5, a Hyper-V/WSL regression).
#[test]
#[cfg_attr(miri, ignore)]
fn postconditions_over_all_mask_combinations() {
    let (swiotlb, base) = instance(1024, 256 * 1024);
    let offsets = [0u64, 1, 0x7FF, 0x800, 0xA00, 0xFFF, 0x1234, 0x3A00, 0xFA01];
    let sizes = [1usize, 100, 2048, 2049, 4096, 6000, 12345, 65536];
    for min_align in [0u64, 0x7FF, 0xFFF, 0x3FFF] {
        for boundary in [u64::MAX, 0xFFFF, 0x1_FFFF] {
            let dev = swiotlb.device(DeviceConfig {
                min_align_mask: min_align,
                seg_boundary_mask: boundary,
                ..Default::default()
            });
            for align in [0u64, 0x7FF, 0xFFF, 0x3FFF, 0xFFFF] {
                let mut live = Vec::new();
                for &off in &offsets {
                    for &size in &sizes {
                        let orig = base + off;
                        let before = swiotlb.stats().used as u64;
                        let a = match swiotlb.map(
                            &dev,
                            orig,
                            size,
                            Direction::ToDevice,
                            attrs(align),
                        ) {
                            Ok(a) => a,
                            // A boundary window can exclude every slot with the right
                            // min-align bits (a 64 KiB run in a 64 KiB window must start on
                            // it, but an odd slot is required): no space, correctly.
                            Err(
                                swiotlb_core::Error::Unsatisfiable
                                | swiotlb_core::Error::NoSpace { .. },
                            ) if boundary != u64::MAX => {
                                continue;
                            }
                            Err(e) => panic!(
                                "min {min_align:#x} align {align:#x} off {off:#x} size {size}: {e}"
                            ),
                        };
                        let nslots = swiotlb.stats().used as u64 - before;
                        assert_eq!((a ^ orig) & min_align, 0, "min_align bits kept");
                        let offset = orig & min_align & (align | 0x7FF);
                        let start = a - offset;
                        let eff = if min_align == 0 && align == 0 && size >= 4096 {
                            0xFFF
                        } else {
                            align
                        };
                        assert_eq!(start & (eff | 0x7FF), 0, "allocation aligned");
                        let end = start + nslots * SLOT;
                        assert!(a + size as u64 <= end, "mapping inside the allocation");
                        assert_eq!(
                            start & !boundary,
                            (end - 1) & !boundary,
                            "no boundary crossed"
                        );
                        let pool = swiotlb.find_pool(&dev, a).unwrap().start;
                        assert_eq!(
                            (start - pool) / (128 * SLOT),
                            (end - 1 - pool) / (128 * SLOT),
                            "one segment"
                        );
                        live.push((start, end, a, size));
                    }
                    // Keep the pool from filling: release this offset's mappings.
                    live.sort();
                    for w in live.windows(2) {
                        assert!(w[0].1 <= w[1].0, "live allocations overlap");
                    }
                    for (_, _, a, size) in live.drain(..) {
                        swiotlb
                            .unmap(&dev, a, size, Direction::ToDevice, attrs(align))
                            .unwrap();
                    }
                }
                swiotlb.check_invariants().unwrap();
            }
        }
    }
    assert_eq!(swiotlb.stats().used, 0);
}

/// Min-align mismatch plus stride on an area whose free slots all have the wrong parity:
/// the search ends (7c3940bf81e5: the old loop spun forever with the lock held).
#[test]
fn search_terminates_when_no_candidate_matches() {
    let mem = RegionMemory::new(64 * 1024);
    let base = mem.base();
    let swiotlb = Swiotlb::new(
        Config {
            can_grow: false,
            ..Config::tiny(8, 1, 8)
        },
        mem,
    )
    .unwrap();
    let plain = swiotlb.device(DeviceConfig::default());
    let singles: Vec<u64> = (0..8)
        .map(|i| {
            swiotlb
                .map(&plain, base + i * SLOT, 10, Direction::ToDevice, attrs(0))
                .unwrap()
        })
        .collect();
    // Free the even slots: every free slot has DMA address bit 11 clear.
    for &a in singles.iter().filter(|&&a| (a >> 11) & 1 == 0) {
        swiotlb
            .unmap(&plain, a, 10, Direction::ToDevice, attrs(0))
            .unwrap();
    }
    let dev = nvme(&swiotlb);
    // Bit 11 of the original is set, so only odd slots qualify; and stride 2 for 2 slots.
    for (off, size) in [(0xA00u64, 100usize), (0x800, 3000), (0xA00, 5000)] {
        let r = swiotlb.map(&dev, base + off, size, Direction::ToDevice, attrs(0));
        assert_eq!(r, Err(swiotlb_core::Error::NoSpace { size }));
    }
    // An even-slot original still fits.
    let ok = swiotlb
        .map(&dev, base + 0x200, 100, Direction::ToDevice, attrs(0))
        .unwrap();
    assert_eq!(ok & 0xFFF, 0x200);
    swiotlb.check_invariants().unwrap();
}

/// A cached run is reused only where a search could have placed the map: a 2-slot run that
/// crosses a 4 KiB boundary, cached by a device without one (in the thread's cache, or as the
/// area's cached run with the thread caches off), is not taken by a map of its size from a
/// device whose segments must not cross 4 KiB.
#[test]
fn a_cached_run_across_a_boundary_is_not_reused_by_a_device_bounded_there() {
    for thread_caches in [true, false] {
        let mem = RegionMemory::new(64 * 1024);
        let base = mem.base();
        let cfg = Config {
            can_grow: false,
            thread_caches,
            ..Config::tiny(16, 1, 16)
        };
        let swiotlb = Swiotlb::new(cfg, mem).unwrap();
        let unbounded = swiotlb.device(DeviceConfig::default());
        let bounded = swiotlb.device(DeviceConfig {
            seg_boundary_mask: 0xFFF,
            ..Default::default()
        });
        let crosses = |a: u64, len: u64| a & !0xFFF != (a + len - 1) & !0xFFF;
        // Under a page, so not page-aligned: after the held slot 0, the run is slots 1 and 2.
        let len = 3000;
        let map = |dev: &Device| {
            swiotlb
                .map(dev, base, len, Direction::ToDevice, attrs(0))
                .unwrap()
        };
        let unmap = |dev: &Device, a: u64, len: usize| {
            swiotlb
                .unmap(dev, a, len, Direction::ToDevice, attrs(0))
                .unwrap()
        };
        let held = swiotlb
            .map(&unbounded, base, 1, Direction::ToDevice, attrs(0))
            .unwrap();
        let cached = map(&unbounded);
        assert!(
            crosses(cached, len as u64),
            "the run to cache crosses 4 KiB"
        );
        unmap(&unbounded, cached, len);
        let a = map(&bounded);
        assert!(
            !crosses(a, len as u64),
            "thread caches {thread_caches}: the cached run was reused across the boundary"
        );
        unmap(&bounded, a, len);
        unmap(&unbounded, held, 1);
        swiotlb.check_invariants().unwrap();
        assert_eq!(swiotlb.stats().used, 0);
    }
}
