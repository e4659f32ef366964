//! One regression test per applicable entry of the reference's bug table, and the error
//! paths: every error is typed, changes nothing, and the allocator keeps working.
// loom builds run the loom suite only: these tests use real threads and locks.
#![cfg(not(loom))]

use swiotlb_core::{
    Config, Device, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, Swiotlb,
};

const SLOT: usize = 2048;
const NONE: MapAttrs = MapAttrs {
    alloc_align_mask: 0,
    skip_cpu_sync: false,
    zero_padding: false,
};

fn fixed(nslabs: usize) -> (Swiotlb, u64) {
    let mem = RegionMemory::new(512 * 1024);
    let base = mem.base();
    let cfg = Config {
        can_grow: false,
        ..Config::tiny(nslabs, 1, 128)
    };
    (Swiotlb::new(cfg, mem).unwrap(), base)
}

fn read(swiotlb: &Swiotlb, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    swiotlb.memory().read(addr, &mut v).unwrap();
    v
}

/// Leave `len` bytes of bounce slots holding `byte`, as a previous user would; returns the
/// bounce address those slots had.
fn dirty(swiotlb: &Swiotlb, dev: &Device, base: u64, len: usize, byte: u8) -> u64 {
    let a = swiotlb
        .map(dev, base, len, Direction::ToDevice, NONE)
        .unwrap();
    swiotlb.write_bounce(dev, a, &vec![byte; len]).unwrap();
    swiotlb
        .unmap(dev, a, len, Direction::ToDevice, NONE)
        .unwrap();
    a
}

/// CVE-2022-0854 (ddbd89deb7d3): a from-device mapping over dirty slots; the device writes
/// half; unmap must return the other half unchanged, not a previous user's bytes.
#[test]
fn from_device_mapping_never_leaks_stale_bytes() {
    let (swiotlb, base) = fixed(8);
    let dev = swiotlb.device(DeviceConfig::default());
    let a = dirty(&swiotlb, &dev, base, 8 * SLOT, 0xEE);

    let buf = base + 0x10000;
    swiotlb.memory().write(buf, &vec![0x55; 8 * SLOT]).unwrap();
    let b = swiotlb
        .map(&dev, buf, 8 * SLOT, Direction::FromDevice, NONE)
        .unwrap();
    assert_eq!(b, a, "the dirty slots are reused");
    swiotlb
        .write_bounce(&dev, b, &vec![0x11; 4 * SLOT])
        .unwrap();
    swiotlb
        .unmap(&dev, b, 8 * SLOT, Direction::FromDevice, NONE)
        .unwrap();
    let back = read(&swiotlb, buf, 8 * SLOT);
    assert!(back[..4 * SLOT].iter().all(|&x| x == 0x11));
    assert!(
        back[4 * SLOT..].iter().all(|&x| x == 0x55),
        "stale bytes leaked"
    );
}

/// The reverted rework (aa6f8dcbab47): `sync_for_device(FROM_DEVICE)` copies nothing, so a
/// device writing while the CPU polls keeps its bytes.
#[test]
fn sync_for_device_from_device_copies_nothing() {
    let (swiotlb, base) = fixed(128);
    let dev = swiotlb.device(DeviceConfig::default());
    let a = swiotlb
        .map(&dev, base, 4096, Direction::FromDevice, NONE)
        .unwrap();
    swiotlb.write_bounce(&dev, a, &[0x77; 4096]).unwrap();
    swiotlb.memory().write(base, &[0x01; 4096]).unwrap();
    swiotlb
        .sync_for_device(&dev, a, 4096, Direction::FromDevice)
        .unwrap();
    let mut seen = [0u8; 4096];
    swiotlb.read_bounce(&dev, a, &mut seen).unwrap();
    assert!(seen.iter().all(|&x| x == 0x77));
    // And sync_for_cpu(TO_DEVICE) copies nothing back.
    let t = swiotlb
        .map(&dev, base + 8192, 64, Direction::ToDevice, NONE)
        .unwrap();
    swiotlb.write_bounce(&dev, t, &[0x99; 64]).unwrap();
    swiotlb
        .sync_for_cpu(&dev, t, 64, Direction::ToDevice)
        .unwrap();
    swiotlb
        .unmap(&dev, t, 64, Direction::ToDevice, NONE)
        .unwrap();
    assert!(read(&swiotlb, base + 8192, 64).iter().all(|&x| x == 0));
}

/// Partial syncs (e8068f2d756d): every offset and several lengths of an NVMe mapping with an
/// in-slot offset, including offsets inside the first in_off bytes of slot 2 and beyond.
#[test]
#[cfg_attr(miri, ignore)]
fn partial_syncs_at_every_offset() {
    let (swiotlb, base) = fixed(128);
    let dev = swiotlb.device(DeviceConfig {
        min_align_mask: 0xFFF,
        ..Default::default()
    });
    let orig = base + 0x1A00;
    let size = 8192;
    let a = swiotlb
        .map(&dev, orig, size, Direction::Bidirectional, NONE)
        .unwrap();
    assert_eq!(a & 0xFFF, 0xA00);
    for off in (0..size)
        .step_by(7)
        .chain([1535, 1536, 1537, 2047, 2048, 3583, 3584, 8191])
    {
        for len in [1usize, 48, 513, 2048] {
            let len = len.min(size - off);
            let tag = (off as u8).wrapping_mul(31) ^ len as u8;
            // Device → CPU.
            swiotlb
                .write_bounce(&dev, a + off as u64, &vec![tag; len])
                .unwrap();
            swiotlb
                .sync_for_cpu(&dev, a + off as u64, len, Direction::Bidirectional)
                .unwrap();
            assert!(
                read(&swiotlb, orig + off as u64, len)
                    .iter()
                    .all(|&x| x == tag),
                "sync_for_cpu at {off}+{len}"
            );
            // CPU → device.
            swiotlb
                .memory()
                .write(orig + off as u64, &vec![!tag; len])
                .unwrap();
            swiotlb
                .sync_for_device(&dev, a + off as u64, len, Direction::Bidirectional)
                .unwrap();
            let mut seen = vec![0; len];
            swiotlb
                .read_bounce(&dev, a + off as u64, &mut seen)
                .unwrap();
            assert!(
                seen.iter().all(|&x| x == !tag),
                "sync_for_device at {off}+{len}"
            );
        }
    }
    // Bytes around the mapping were never touched.
    assert!(read(&swiotlb, orig - 16, 16).iter().all(|&x| x == 0));
    assert!(read(&swiotlb, orig + size as u64, 16)
        .iter()
        .all(|&x| x == 0));
    // Ranges leaving the mapping are refused.
    let oor = |addr: u64, len: usize| Error::OutOfRange { addr, size: len };
    assert_eq!(
        swiotlb.sync_for_cpu(&dev, a + 8000, 193, Direction::Bidirectional),
        Err(oor(a + 8000, 193))
    );
    assert_eq!(
        swiotlb.sync_for_cpu(&dev, a - 1, 1, Direction::Bidirectional),
        Err(oor(a - 1, 1))
    );
    swiotlb
        .unmap(&dev, a, size, Direction::Bidirectional, NONE)
        .unwrap();
}

/// A sync whose direction copies nothing still checks its whole range against one live
/// mapping (stricter than Linux, which only checks ranges it copies): `sync_for_cpu(a,
/// usize::MAX, ToDevice)` and `sync_for_device(a + 50, 1 MiB, FromDevice)` on a 100-byte
/// mapping used to return `Ok`.
#[test]
fn syncs_past_the_end_are_refused_in_every_direction() {
    let (swiotlb, base) = fixed(128);
    let dev = swiotlb.device(DeviceConfig::default());
    let oor = |addr: u64, size: usize| Err(Error::OutOfRange { addr, size });
    for dir in Direction::ALL {
        let a = swiotlb.map(&dev, base + 8, 100, dir, NONE).unwrap();
        swiotlb.memory().write(base + 8, &[0x42; 100]).unwrap();
        swiotlb.write_bounce(&dev, a, &[0x24; 100]).unwrap();
        for (addr, size) in [
            (a, usize::MAX),
            (a + 50, 1 << 20),
            (a, 101),
            (a + 99, 2),
            (a + 100, 1),
        ] {
            assert_eq!(swiotlb.sync_for_cpu(&dev, addr, size, dir), oor(addr, size));
            assert_eq!(
                swiotlb.sync_for_device(&dev, addr, size, dir),
                oor(addr, size)
            );
        }
        // Nothing was copied either way by the refused syncs.
        assert!(read(&swiotlb, base + 8, 100).iter().all(|&x| x == 0x42));
        let mut seen = [0u8; 100];
        swiotlb.read_bounce(&dev, a, &mut seen).unwrap();
        assert!(seen.iter().all(|&x| x == 0x24));
        // The whole mapping and its last byte are accepted.
        swiotlb.sync_for_cpu(&dev, a, 100, dir).unwrap();
        swiotlb.sync_for_device(&dev, a + 99, 1, dir).unwrap();
        swiotlb.unmap(&dev, a, 100, dir, NONE).unwrap();
        swiotlb.memory().write(base + 8, &[0; 100]).unwrap();
    }
    swiotlb.check_invariants().unwrap();
}

/// Every count of `Config` is checked against its documented maximum before anything is
/// allocated (a growth size above the maximum used to be accepted, with the default pool
/// allocated, and refused only at the first growth); device masks likewise, before a map
/// takes a slot.
#[test]
fn configurations_are_refused_before_anything_is_allocated() {
    use swiotlb_core::{MAX_MIN_ALIGN_MASK, MAX_NAREAS, MAX_NSLABS};
    let refused = |cfg: Config| {
        let r = Swiotlb::new(cfg.clone(), RegionMemory::new(64));
        assert!(
            matches!(cfg.validate(), Err(Error::InvalidConfig(_))),
            "{cfg:?}"
        );
        assert!(matches!(r, Err(Error::InvalidConfig(_))), "{cfg:?}");
    };
    let tiny = Config::tiny(8, 1, 8);
    refused(Config {
        nslabs: 0,
        ..tiny.clone()
    });
    refused(Config {
        nslabs: MAX_NSLABS + 1,
        ..tiny.clone()
    });
    refused(Config {
        nareas: MAX_NAREAS + 1,
        ..tiny.clone()
    });
    refused(Config {
        segment_slots: 256,
        ..tiny.clone()
    });
    refused(Config {
        segment_slots: 0,
        ..tiny.clone()
    });
    refused(Config {
        growth_nslabs: MAX_NSLABS + 1,
        ..tiny.clone()
    });
    refused(Config {
        growth_nslabs: usize::MAX,
        ..Config::default()
    });
    assert_eq!(
        Config {
            growth_nslabs: MAX_NSLABS,
            ..tiny.clone()
        }
        .validate(),
        Ok(())
    );

    // 64 KiB of slots: every value of the offset bits under the largest min-align mask.
    let (swiotlb, base) = fixed(32);
    let bad = [
        DeviceConfig {
            min_align_mask: 0x1234,
            ..Default::default()
        },
        DeviceConfig {
            min_align_mask: MAX_MIN_ALIGN_MASK * 2 + 1,
            ..Default::default()
        },
        DeviceConfig {
            seg_boundary_mask: 0x3FF,
            ..Default::default()
        },
        DeviceConfig {
            seg_boundary_mask: 0x1000,
            ..Default::default()
        },
    ];
    for cfg in bad {
        assert!(
            matches!(swiotlb.try_device(cfg), Err(Error::InvalidConfig(_))),
            "{cfg:?}"
        );
        let dev = swiotlb.device(cfg);
        assert!(matches!(
            swiotlb.map(&dev, base, 1, Direction::ToDevice, NONE),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            swiotlb.sync_for_cpu(&dev, base, 1, Direction::FromDevice),
            Err(Error::InvalidConfig(_))
        ));
        assert!(!swiotlb.is_bounce_buffer(&dev, base));
        assert!(!dev.uses_swiotlb());
    }
    assert_eq!(swiotlb.stats().used, 0);
    let ok = DeviceConfig {
        min_align_mask: MAX_MIN_ALIGN_MASK,
        ..Default::default()
    };
    let dev = swiotlb.try_device(ok).unwrap();
    let a = swiotlb
        .map(&dev, base + 0x1234, 1, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!((a ^ (base + 0x1234)) & MAX_MIN_ALIGN_MASK, 0);
    swiotlb
        .unmap(&dev, a, 1, Direction::ToDevice, NONE)
        .unwrap();
    swiotlb.check_invariants().unwrap();
}

/// Out-of-bounds TLB allocations with SWIOTLB_DYNAMIC: transient pools of 1..127 slots never
/// claim slots beyond their end (was s390 memory corruption).
#[test]
fn transient_pools_of_every_small_size() {
    let mem = RegionMemory::new(512 * 1024);
    let base = mem.base();
    let swiotlb = Swiotlb::new(Config::tiny(128, 1, 128), mem).unwrap();
    let other = swiotlb.device(DeviceConfig::default());
    let hog = swiotlb
        .map(&other, base, 128 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    for n in 1..=127usize {
        let size = n * SLOT - 5;
        let a = swiotlb
            .map(&dev, base, size, Direction::Bidirectional, NONE)
            .unwrap();
        let p = swiotlb.find_pool(&dev, a).unwrap();
        assert!(p.transient);
        assert_eq!(p.nslabs, n);
        assert!(a >= p.start && a + size as u64 <= p.end);
        assert_eq!(swiotlb.stats().transient_nslabs, n);
        swiotlb
            .unmap(&dev, a, size, Direction::Bidirectional, NONE)
            .unwrap();
        assert_eq!(dev.transient_pools(), 0);
    }
    swiotlb
        .unmap(&other, hog, 128 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(swiotlb.stats().transient_pools, 0);
    swiotlb.check_invariants().unwrap();
}

/// A transient pool for an NVMe mapping whose original needs an odd slot is still just big
/// enough: the leading slot is the only extra.
#[test]
fn transient_pool_honours_min_align() {
    let mem = RegionMemory::new(64 * 1024);
    let base = mem.base();
    let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
    let other = swiotlb.device(DeviceConfig::default());
    swiotlb
        .map(&other, base, 8 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    let dev = swiotlb.device(DeviceConfig {
        min_align_mask: 0xFFF,
        ..Default::default()
    });
    let a = swiotlb
        .map(&dev, base + 0xA00, 4000, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(a & 0xFFF, 0xA00);
    assert_eq!(swiotlb.find_pool(&dev, a).unwrap().nslabs, 1 + 3);
}

/// Check alloc_size before allocating a new pool (3dc2f209208d): a request over one segment
/// allocates nothing, not even a transient pool.
#[test]
fn oversized_request_allocates_nothing() {
    let (swiotlb, base) = fixed(128);
    let grow = Swiotlb::new(Config::tiny(128, 1, 128), RegionMemory::new(1)).unwrap();
    for t in [&swiotlb, &grow] {
        let dev = t.device(DeviceConfig::default());
        let r = t.map(&dev, base, 256 * 1024 + 1, Direction::ToDevice, NONE);
        assert!(matches!(
            r,
            Err(Error::TooLarge {
                size: 262_145,
                max: 262_144
            })
        ));
        assert_eq!(t.stats().transient_pools, 0);
        assert_eq!(t.stats().nslabs, 128);
        assert!(!dev.uses_swiotlb());
    }
}

/// Double allocation due to broken alignment (04867a7a3332, CVE-2024-35814): `alloc` of 1..N
/// pages from a restricted pool is page-aligned and disjoint.
#[test]
fn restricted_alloc_is_page_aligned_and_disjoint() {
    let swiotlb = Swiotlb::new(Config::restricted(1024), RegionMemory::new(1)).unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    let mut live = Vec::new();
    for round in 0..3 {
        for pages in 1..=8usize {
            let size = pages * 4096 - round * 100;
            let a = swiotlb.alloc(&dev, size).unwrap();
            assert_eq!(a % 4096, 0);
            assert_eq!(
                a % (pages.next_power_of_two() as u64 * 4096),
                0,
                "size-order alignment"
            );
            live.push((a, a + size as u64));
        }
    }
    live.sort();
    for w in live.windows(2) {
        assert!(w[0].1 <= w[1].0, "allocations overlap: {:x?}", w);
    }
    for (a, _) in &live {
        swiotlb.free(&dev, *a).unwrap();
    }
    assert_eq!(
        swiotlb.free(&dev, live[0].0),
        Err(Error::NotMapped { addr: live[0].0 })
    );
    swiotlb.check_invariants().unwrap();
    assert_eq!(swiotlb.stats().used, 0);
}

/// Reduce areas to match the pool size (8ac04063354a), set areas before allocating
/// (aabd12609f91): a small pool on many CPUs still has whole-segment areas and still serves
/// the maximum mapping.
#[test]
fn small_pool_many_cpus() {
    let mem = RegionMemory::new(512 * 1024);
    let base = mem.base();
    let swiotlb = Swiotlb::new(
        Config {
            nslabs: 256,
            nareas: 64,
            can_grow: false,
            ..Config::default()
        },
        mem,
    )
    .unwrap();
    assert_eq!(swiotlb.stats().pools[0].area_used.len(), 2);
    let dev = swiotlb.device(DeviceConfig::default());
    for cpu in 0..64 {
        dma_sync::cpu::set_current(Some(cpu));
        let a = swiotlb
            .map(&dev, base, 256 * 1024, Direction::ToDevice, NONE)
            .unwrap();
        swiotlb
            .unmap(&dev, a, 256 * 1024, Direction::ToDevice, NONE)
            .unwrap();
    }
    dma_sync::cpu::set_current(None);
    swiotlb.check_invariants().unwrap();
}

/// Free goes to the owning area, not the CPU's: map on CPU 0, unmap on CPU 1.
#[test]
fn free_goes_to_the_owning_area() {
    let mem = RegionMemory::new(64 * 1024);
    let base = mem.base();
    let swiotlb = Swiotlb::new(
        Config {
            can_grow: false,
            ..Config::tiny(16, 2, 8)
        },
        mem,
    )
    .unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    dma_sync::cpu::set_current(Some(0));
    let a = swiotlb
        .map(&dev, base, 3 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(swiotlb.stats().pools[0].area_used, vec![3, 0]);
    dma_sync::cpu::set_current(Some(1));
    swiotlb
        .unmap(&dev, a, 3 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(swiotlb.stats().pools[0].area_used, vec![0, 0]);
    // A full local area falls back to the other one.
    let b = swiotlb
        .map(&dev, base, 8 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    let c = swiotlb
        .map(&dev, base, SLOT, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(swiotlb.stats().pools[0].area_used, vec![1, 8]);
    swiotlb
        .unmap(&dev, b, 8 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    swiotlb
        .unmap(&dev, c, SLOT, Direction::ToDevice, NONE)
        .unwrap();
    dma_sync::cpu::set_current(None);
    swiotlb.check_invariants().unwrap();
}

/// used_hiwater: a CAS-max that never lowers, reset only to 0 (8b0977ecc8b3); counters are
/// never zeroed when statistics are first read late (a1255ccab8ec).
#[test]
fn hiwater_and_late_statistics() {
    let mem = RegionMemory::new(512 * 1024);
    let base = mem.base();
    let cfg = Config {
        can_grow: false,
        stats: true,
        ..Config::tiny(128, 1, 128)
    };
    let swiotlb = Swiotlb::new(cfg, mem).unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    let a = swiotlb
        .map(&dev, base, 5 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    let b = swiotlb
        .map(&dev, base, 2 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    // First look at the statistics only now.
    let s = swiotlb.stats();
    assert_eq!((s.used, s.hiwater), (7, Some(7)));
    swiotlb
        .unmap(&dev, a, 5 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(swiotlb.stats().hiwater, Some(7));
    assert_eq!(swiotlb.reset_hiwater(3), Err(Error::BadReset { value: 3 }));
    swiotlb.reset_hiwater(0).unwrap();
    let c = swiotlb
        .map(&dev, base, SLOT, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(swiotlb.stats().hiwater, Some(3));
    swiotlb
        .unmap(&dev, b, 2 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    swiotlb
        .unmap(&dev, c, SLOT, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(swiotlb.stats().used, 0);
    let report = swiotlb.stats().to_string();
    assert!(
        report.contains("io_tlb_used: 0") && report.contains("io_tlb_used_hiwater: 3"),
        "{report}"
    );
    let quiet = Swiotlb::new(Config::tiny(8, 1, 8), RegionMemory::new(1)).unwrap();
    assert_eq!(quiet.stats().hiwater, None, "off by default");
}

/// Untrusted devices' maximum mapping size is swiotlb's: the maximum always fits, whatever the
/// original's offset; more does not.
#[test]
fn max_mapping_size_always_fits() {
    let (swiotlb, base) = fixed(128);
    let dev = swiotlb.device(DeviceConfig {
        min_align_mask: 0xFFF,
        ..Default::default()
    });
    let max = swiotlb.max_mapping_size(&dev);
    assert_eq!(max, 252 * 1024);
    for off in [0u64, 0x7FF, 0x800, 0xFFF] {
        let a = swiotlb
            .map(&dev, base + off, max, Direction::ToDevice, NONE)
            .unwrap();
        swiotlb
            .unmap(&dev, a, max, Direction::ToDevice, NONE)
            .unwrap();
    }
    assert!(matches!(
        swiotlb.map(&dev, base, 256 * 1024 + 1, Direction::ToDevice, NONE),
        Err(Error::TooLarge { .. })
    ));
}

/// Padding of an IOMMU-granule mapping is zeroed on request.
#[test]
fn zero_padding_clears_the_whole_granule() {
    let (swiotlb, base) = fixed(128);
    let dev = swiotlb.device(DeviceConfig::default());
    dirty(&swiotlb, &dev, base, 32 * SLOT, 0xCC);
    swiotlb.memory().write(base + 0x300, &[7; 100]).unwrap();
    let attrs = MapAttrs {
        alloc_align_mask: 0xFFFF,
        zero_padding: true,
        ..NONE
    };
    let b = swiotlb
        .map(&dev, base + 0x300, 100, Direction::ToDevice, attrs)
        .unwrap();
    let start = b & !0xFFFF;
    let mut granule = vec![1u8; 0x10000];
    swiotlb.read_bounce(&dev, start, &mut granule).unwrap();
    let off = (b - start) as usize;
    assert!(granule[..off].iter().all(|&x| x == 0));
    assert!(granule[off..off + 100].iter().all(|&x| x == 7));
    assert!(granule[off + 100..].iter().all(|&x| x == 0));
}

/// Padding of a few bytes on either side of a 4 KiB-granule mapping is zeroed too (the map
/// zeroes each side only when it is not empty): mappings that end short of their granule, and
/// mappings whose min-align offset leaves bytes before their start.
#[test]
fn zero_padding_clears_short_padding() {
    let (swiotlb, base) = fixed(16);
    let plain = swiotlb.device(DeviceConfig::default());
    let nvme = swiotlb.device(DeviceConfig {
        min_align_mask: 0xFFF,
        ..Default::default()
    });
    let attrs = MapAttrs {
        alloc_align_mask: 0xFFF,
        zero_padding: true,
        ..NONE
    };
    // The device writes all its pool's slots before each map (a first map sets its flag).
    dirty(&swiotlb, &plain, base, SLOT, 0xCC);
    let pool = swiotlb.stats().pools[0].start;
    let cases = [
        (&plain, 0, 4095),
        (&plain, 0, 4000),
        (&plain, 0, 2049),
        (&plain, 0, 2047),
        (&plain, 0, 6000),
        (&nvme, 0x10, 4000),
        (&nvme, 0x7F0, 100),
        (&nvme, 0x801, 10),
        (&nvme, 0xFFF, 1),
    ];
    for (dev, off, len) in cases {
        swiotlb
            .write_bounce(&plain, pool, &[0xCC; 16 * SLOT])
            .unwrap();
        let orig = base + off;
        swiotlb.memory().write(orig, &vec![7; len]).unwrap();
        let b = swiotlb
            .map(dev, orig, len, Direction::ToDevice, attrs)
            .unwrap();
        let start = b & !0xFFF;
        let end = (b + len as u64 + 0xFFF) & !0xFFF;
        let mut granules = vec![1u8; (end - start) as usize];
        swiotlb.read_bounce(dev, start, &mut granules).unwrap();
        let at = (b - start) as usize;
        let case = format!("offset {off:#x}, {len} bytes");
        assert!(granules[..at].iter().all(|&x| x == 0), "{case}: before");
        assert!(
            granules[at..at + len].iter().all(|&x| x == 7),
            "{case}: mapping"
        );
        assert!(
            granules[at + len..].iter().all(|&x| x == 0),
            "{case}: after"
        );
        swiotlb
            .unmap(dev, b, len, Direction::ToDevice, attrs)
            .unwrap();
    }
}

/// Every bad input is a typed error, changes nothing, and the allocator keeps working.
#[test]
fn bad_input_is_a_typed_error_and_changes_nothing() {
    let (swiotlb, base) = fixed(128);
    let dev = swiotlb.device(DeviceConfig::default());
    let a = swiotlb
        .map(&dev, base, 3 * SLOT, Direction::Bidirectional, NONE)
        .unwrap();
    let used = swiotlb.stats().used;

    assert_eq!(
        swiotlb.map(&dev, base, 0, Direction::ToDevice, NONE),
        Err(Error::ZeroSize)
    );
    let odd = MapAttrs {
        alloc_align_mask: 0x1000,
        ..NONE
    };
    assert_eq!(
        swiotlb.map(&dev, base, 10, Direction::ToDevice, odd),
        Err(Error::BadAlignMask { mask: 0x1000 })
    );
    let huge = MapAttrs {
        alloc_align_mask: 0x1_FFFF,
        ..NONE
    };
    assert!(matches!(
        swiotlb.map(&dev, base, 10, Direction::ToDevice, huge),
        Err(Error::BadAlignMask { .. })
    ));
    let tiny_boundary = swiotlb.device(DeviceConfig {
        seg_boundary_mask: 0x7FF,
        ..Default::default()
    });
    assert_eq!(
        swiotlb.map(&tiny_boundary, base, 4096, Direction::ToDevice, NONE),
        Err(Error::Unsatisfiable)
    );
    // Original memory that refuses the copy: the slots are given back.
    assert!(matches!(
        swiotlb.map(&dev, base - 4096, 10, Direction::ToDevice, NONE),
        Err(Error::Memory(_))
    ));
    // Not a bounce address, a middle slot of a mapping, a misaligned start, an oversize unmap.
    assert_eq!(
        swiotlb.unmap(&dev, base, 10, Direction::ToDevice, NONE),
        Err(Error::NotMapped { addr: base })
    );
    let mid = a + SLOT as u64;
    assert_eq!(
        swiotlb.unmap(&dev, mid, 10, Direction::ToDevice, NONE),
        Err(Error::NotMapped { addr: mid })
    );
    assert_eq!(
        swiotlb.unmap(&dev, a + 1, 10, Direction::ToDevice, NONE),
        Err(Error::NotMapped { addr: a + 1 })
    );
    let big = 3 * SLOT + 1;
    assert_eq!(
        swiotlb.unmap(&dev, a, big, Direction::ToDevice, NONE),
        Err(Error::OutOfRange { addr: a, size: big })
    );
    assert_eq!(
        swiotlb.sync_for_cpu(&dev, a, 0, Direction::FromDevice),
        Err(Error::ZeroSize)
    );
    let free_slot = a + 3 * SLOT as u64;
    assert_eq!(
        swiotlb.sync_for_cpu(&dev, free_slot, 1, Direction::FromDevice),
        Err(Error::NotMapped { addr: free_slot })
    );
    assert_eq!(
        swiotlb.sync_for_device(&dev, free_slot, 1, Direction::FromDevice),
        Err(Error::NotMapped { addr: free_slot })
    );
    assert_eq!(
        swiotlb.read_bounce(&dev, base, &mut [0]),
        Err(Error::NotMapped { addr: base })
    );
    // A device of another instance.
    let stranger = Swiotlb::new(Config::tiny(8, 1, 8), RegionMemory::new(1))
        .unwrap()
        .device(DeviceConfig::default());
    assert_eq!(
        swiotlb.map(&stranger, base, 10, Direction::ToDevice, NONE),
        Err(Error::ForeignDevice)
    );
    assert_eq!(
        swiotlb.unmap(&stranger, a, 10, Direction::ToDevice, NONE),
        Err(Error::ForeignDevice)
    );
    assert!(!swiotlb.is_bounce_buffer(&stranger, a));
    // Absurd sizes.
    assert!(matches!(
        swiotlb.map(&dev, base, usize::MAX, Direction::ToDevice, NONE),
        Err(Error::TooLarge { .. })
    ));
    let huge = Config {
        nslabs: usize::MAX,
        ..Config::default()
    };
    assert!(matches!(
        Swiotlb::new(huge, RegionMemory::new(1)),
        Err(Error::InvalidConfig(_))
    ));
    // Growth and allocations are refused where not configured.
    assert_eq!(swiotlb.grow(), Err(Error::GrowthDisabled));
    assert_eq!(swiotlb.alloc(&dev, 4096), Err(Error::NotForAlloc));
    assert_eq!(swiotlb.free(&dev, a), Err(Error::NotForAlloc));
    let restricted = Swiotlb::new(Config::restricted(8), RegionMemory::new(1)).unwrap();
    let rdev = restricted.device(DeviceConfig::default());
    assert!(matches!(
        restricted.alloc(&rdev, usize::MAX),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(restricted.alloc(&rdev, 0), Err(Error::ZeroSize));
    assert_eq!(restricted.grow_by(8), Err(Error::GrowthDisabled));

    assert_eq!(swiotlb.stats().used, used);
    swiotlb.check_invariants().unwrap();
    swiotlb
        .unmap(&dev, a, 3 * SLOT, Direction::Bidirectional, NONE)
        .unwrap();
    assert_eq!(
        swiotlb.unmap(&dev, a, 3 * SLOT, Direction::Bidirectional, NONE),
        Err(Error::NotMapped { addr: a })
    );
    assert_eq!(swiotlb.stats().used, 0);
    swiotlb.check_invariants().unwrap();
    // Still works.
    let b = swiotlb
        .map(&dev, base, 128 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    swiotlb
        .unmap(&dev, b, 128 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
}

/// A bounce buffer beyond the device's DMA mask is refused and released (dma-direct's
/// capability re-check).
#[test]
fn bounce_beyond_the_dma_mask_is_released() {
    let (swiotlb, base) = fixed(2);
    let start = swiotlb.stats().pools[0].start;
    let dev = swiotlb.device(DeviceConfig {
        dma_mask: start + 2047,
        ..Default::default()
    });
    let r = swiotlb.map(&dev, base, 4096, Direction::ToDevice, NONE);
    assert!(matches!(r, Err(Error::NotDmaCapable { .. })));
    assert_eq!(swiotlb.stats().used, 0);
    swiotlb.check_invariants().unwrap();
    let ok = swiotlb
        .map(&dev, base, 2048, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(ok, start);
}

/// The lookup only answers for devices that used bounce buffers, and for their pools.
#[test]
fn lookup_needs_the_device_flag() {
    let (swiotlb, base) = fixed(128);
    let a_dev = swiotlb.device(DeviceConfig::default());
    let b_dev = swiotlb.device(DeviceConfig::default());
    let a = swiotlb
        .map(&a_dev, base, 64, Direction::ToDevice, NONE)
        .unwrap();
    assert!(a_dev.uses_swiotlb() && !b_dev.uses_swiotlb());
    assert!(swiotlb.is_bounce_buffer(&a_dev, a));
    assert!(
        !swiotlb.is_bounce_buffer(&b_dev, a),
        "a device that never bounced pays one flag check"
    );
    let info = swiotlb.find_pool(&a_dev, a).unwrap();
    assert!(!info.transient && info.start <= a && a < info.end && info.nslabs == 128);
}

/// Growth publishes a pool later mappings use; the worker starts on a failed search.
#[test]
fn growth_adds_pools() {
    let mem = RegionMemory::new(64 * 1024);
    let base = mem.base();
    let cfg = Config {
        background_growth: true,
        transient_pools: false,
        ..Config::tiny(8, 1, 8)
    };
    let swiotlb = Swiotlb::new(cfg, mem).unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    let a = swiotlb
        .map(&dev, base, 8 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(
        swiotlb.map(&dev, base, SLOT, Direction::ToDevice, NONE),
        Err(Error::NoSpace { size: SLOT })
    );
    let b = loop {
        match swiotlb.map(&dev, base, SLOT, Direction::ToDevice, NONE) {
            Ok(b) => break b,
            Err(Error::NoSpace { .. }) => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    };
    while swiotlb.growth_in_progress() {
        std::thread::yield_now();
    }
    let info = swiotlb.find_pool(&dev, b).unwrap();
    assert!(!info.transient);
    assert!(swiotlb.stats().nslabs >= 16);
    swiotlb
        .unmap(&dev, a, 8 * SLOT, Direction::ToDevice, NONE)
        .unwrap();
    swiotlb
        .unmap(&dev, b, SLOT, Direction::ToDevice, NONE)
        .unwrap();
    swiotlb.check_invariants().unwrap();
    // Growth below the physical limit fails cleanly.
    let low = Swiotlb::new(
        Config {
            phys_limit: u64::MAX,
            ..Config::tiny(8, 1, 8)
        },
        RegionMemory::new(1),
    )
    .unwrap();
    assert_eq!(low.grow_by(8), Ok(8));
    let start = low.stats().pools[0].start;
    assert!(matches!(
        Swiotlb::new(
            Config {
                phys_limit: start.min(4096),
                ..Config::tiny(8, 1, 8)
            },
            RegionMemory::new(1)
        ),
        Err(Error::PoolAlloc { .. })
    ));
}

/// `free` of an allocation that landed in a transient pool unlinks and uncounts the pool,
/// exactly as `unmap` does for a mapping (a `for_alloc` instance that may grow).
#[test]
fn free_drops_a_transient_pool() {
    let mem = RegionMemory::new(4096);
    let cfg = Config {
        for_alloc: true,
        background_growth: false,
        ..Config::tiny(8, 1, 8)
    };
    let swiotlb = Swiotlb::new(cfg, mem).unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    let held: Vec<u64> = (0..4).map(|_| swiotlb.alloc(&dev, 4096).unwrap()).collect();
    let spilled = swiotlb.alloc(&dev, 4096).unwrap();
    let s = swiotlb.stats();
    assert_eq!(s.transient_pools, 1, "{s}");
    swiotlb.free(&dev, spilled).unwrap();
    let s = swiotlb.stats();
    assert_eq!((s.transient_pools, s.transient_nslabs), (0, 0), "{s}");
    assert_eq!(
        swiotlb.free(&dev, spilled),
        Err(Error::NotMapped { addr: spilled })
    );
    for a in held {
        swiotlb.free(&dev, a).unwrap();
    }
    assert_eq!(swiotlb.stats().used, 0);
    swiotlb.check_invariants().unwrap();
}
