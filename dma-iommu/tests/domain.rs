//! Domain behaviour: strict and lazy unmaps, the run-time switch, bouncing for untrusted
//! devices, scatter lists, errors, and the reuse rule checked against a recording IOTLB.
#![cfg(not(loom))]

mod common;

use common::{domain_over, hw, quiet_fq, ReuseCheck, G};
use dma_iommu::{
    DeviceConfig, DmaError, Domain, DomainConfig, FqConfig, InvalidationKind, PhysSegment,
    RecordingIotlb, Unmapped,
};
use std::time::Duration;
use swiotlb_core::{Config, Direction, RegionMemory};

/// A scatter-list segment.
fn seg(addr: u64, len: u64) -> PhysSegment {
    PhysSegment { addr, len }
}

/// A domain over a 4 KiB-granule table with `iova_granules` IOVAs, bounce buffers, and a
/// memory region; returns the region's base.
fn domain(iova_granules: u64, lazy: Option<FqConfig>) -> (Domain<RecordingIotlb>, u64) {
    let mem = RegionMemory::new(4 << 20);
    let base = mem.base();
    let dom = domain_over(mem, Config::tiny(1024, 2, 128), |cfg| {
        cfg.iova.end_pfn = iova_granules;
        cfg.lazy = lazy;
    });
    (dom, base)
}

#[test]
fn strict_unmap_syncs_then_frees() {
    let (dom, base) = domain(64, None);
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    let dma = dom
        .map(&dev, base + 0x2000, 0x1800, Direction::Bidirectional)
        .unwrap();
    assert_eq!(dom.translate(dma + 0x1000), Some(base + 0x3000));
    assert_eq!(
        dom.unmap(&dev, dma, 0x1800, Direction::Bidirectional),
        Ok(Unmapped::Synced)
    );
    assert_eq!(dom.translate(dma), None);
    let log = dom.iotlb().log();
    assert!(
        log.iter().any(|i| i.covers(dma, dma + 0x2000)),
        "the unmap synced its range: {log:?}"
    );
    assert_eq!(dom.iotlb().flushes(), 0);
    let s = dom.stats();
    assert_eq!(
        (s.maps, s.unmaps_synced, s.unmaps_queued, s.live),
        (1, 1, 0, 0)
    );
}

#[test]
fn lazy_unmap_queues_until_a_flush() {
    let (dom, base) = domain(64, Some(quiet_fq()));
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    let dma = dom.map(&dev, base, 0x1000, Direction::ToDevice).unwrap();
    assert_eq!(
        dom.unmap(&dev, dma, 0x1000, Direction::ToDevice),
        Ok(Unmapped::Queued)
    );
    assert_eq!(
        (dom.iotlb().syncs(), dom.iotlb().flushes()),
        (0, 0),
        "no invalidation at unmap"
    );
    assert_eq!(dom.stats().fq.pending, 1);
    assert!(dom.flush_queue_now());
    assert_eq!(dom.iotlb().flushes(), 1);
    let s = dom.stats();
    assert_eq!((s.fq.pending, s.fq.reclaimed, s.unmaps_queued), (0, 1, 1));
    assert!(s.to_string().contains("mode lazy"));
}

#[test]
fn the_background_timer_frees_queued_iovas() {
    let fq = FqConfig::per_cpu().with_timeout(Duration::from_millis(1));
    let (dom, base) = domain(64, Some(fq));
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    let dma = dom.map(&dev, base, 0x1000, Direction::ToDevice).unwrap();
    dom.unmap(&dev, dma, 0x1000, Direction::ToDevice).unwrap();
    for _ in 0..20_000 {
        if dom.stats().fq.pending == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(dom.stats().fq.reclaimed, 1);
    assert!(dom.iotlb().flushes() >= 1);
}

#[test]
fn no_iova_is_reused_before_a_covering_invalidation_in_both_modes() {
    // Eight granules of IOVA space: reuse is immediate in strict mode, and in lazy mode an
    // allocation failure drains the queue first.
    let (dom, base) = domain(8, None);
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    let mut check = ReuseCheck::default();
    let mut live = Vec::new();
    for round in 0..400u64 {
        if round == 200 {
            assert!(dom.set_lazy(quiet_fq()).unwrap());
        }
        let size = 0x800 + (round % 3) * 0x1000;
        let dma = dom
            .map(
                &dev,
                base + (round % 16) * G,
                size as usize,
                Direction::FromDevice,
            )
            .unwrap();
        check.mapped(dom.iotlb(), dom.iotlb().tick(), dma, size);
        live.push((dma, size));
        if live.len() >= 2 {
            let (dma, size) = live.remove((round % 2) as usize);
            check.unmapping(dom.iotlb().tick(), dma, size);
            let how = dom
                .unmap(&dev, dma, size as usize, Direction::FromDevice)
                .unwrap();
            assert_eq!(
                how,
                if round < 200 {
                    Unmapped::Synced
                } else {
                    Unmapped::Queued
                }
            );
        }
    }
    assert!(
        check.reuses > 300,
        "the test must actually reuse IOVAs ({})",
        check.reuses
    );
    let log = dom.iotlb().log();
    assert!(log.iter().any(|i| i.kind == InvalidationKind::FlushAll));
    for (dma, size) in live {
        dom.unmap(&dev, dma, size as usize, Direction::FromDevice)
            .unwrap();
    }
    dom.flush_queue_now();
    dom.iova_allocator().flush_all();
    assert!(
        dom.iova_allocator().allocated_ranges().is_empty(),
        "every IOVA came back"
    );
}

#[test]
fn untrusted_devices_bounce_unaligned_buffers_with_zeroed_padding() {
    let (dom, base) = domain(1 << 16, Some(quiet_fq()));
    let mem_buf = base + 0x5010;
    let dev = dom
        .attach(DeviceConfig {
            trusted: false,
            min_align_mask: 0xFFF,
            ..DeviceConfig::default()
        })
        .unwrap();
    // Neighbouring data in the same page the device must not see.
    let host = dom.swiotlb().unwrap().memory();
    host.write(base + 0x5000, &[0xAA; 0x10]).unwrap();
    host.write(mem_buf, b"payload").unwrap();
    host.write(mem_buf + 7, &[0xBB; 0x20]).unwrap();

    let dma = dom.map(&dev, mem_buf, 7, Direction::Bidirectional).unwrap();
    assert_eq!(dma & 0xFFF, 0x010, "min_align_mask offset kept");
    assert_ne!(
        dom.translate(dma),
        Some(mem_buf),
        "bounced, not mapped directly"
    );
    let mut page = vec![0u8; G as usize];
    hw(&dom, &dev).read(dma & !(G - 1), &mut page).unwrap();
    assert_eq!(&page[0x10..0x17], b"payload");
    assert!(
        page[..0x10].iter().chain(&page[0x17..]).all(|&b| b == 0),
        "padding is zeroed"
    );

    hw(&dom, &dev).write(dma, b"PAY").unwrap();
    dom.sync_for_cpu(&dev, dma, 7, Direction::Bidirectional)
        .unwrap();
    let mut back = [0u8; 7];
    host.read(mem_buf, &mut back).unwrap();
    assert_eq!(&back, b"PAYload");
    hw(&dom, &dev).write(dma + 3, b"LOAD").unwrap();
    // Untrusted: strict even though the domain is lazy; the unmap copies back.
    assert_eq!(
        dom.unmap(&dev, dma, 7, Direction::Bidirectional),
        Ok(Unmapped::Synced)
    );
    host.read(mem_buf, &mut back).unwrap();
    assert_eq!(&back, b"PAYLOAD");
    let mut after = [0u8; 0x20];
    host.read(mem_buf + 7, &mut after).unwrap();
    assert_eq!(
        after, [0xBB; 0x20],
        "bytes next to the buffer are untouched"
    );
    assert_eq!(dom.stats().bounced, 1);

    // Granule-aligned at both ends: mapped directly, still strict.
    let dma = dom
        .map(&dev, base + 0x8000, 0x2000, Direction::ToDevice)
        .unwrap();
    assert_eq!(dom.translate(dma), Some(base + 0x8000));
    assert_eq!(
        dom.unmap(&dev, dma, 0x2000, Direction::ToDevice),
        Ok(Unmapped::Synced)
    );
    assert_eq!(dom.stats().bounced, 1);
}

#[test]
fn bad_requests_are_typed_errors_and_change_nothing() {
    let (dom, base) = domain(64, None);
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    let small = dom
        .attach(DeviceConfig {
            dma_mask: 0xFFF,
            ..DeviceConfig::default()
        })
        .unwrap();
    assert_eq!(
        dom.map(&dev, base, 0, Direction::ToDevice),
        Err(DmaError::ZeroSize)
    );
    // IOVA 0 is never handed out, so a 4 KiB mask leaves no room at all.
    assert!(matches!(
        dom.map(&small, base, 0x10, Direction::ToDevice),
        Err(DmaError::BeyondMask { .. })
    ));
    let wide = dom
        .attach(DeviceConfig {
            dma_mask: 0xF_FFFF,
            ..DeviceConfig::default()
        })
        .unwrap();
    assert!(matches!(
        dom.map(&wide, base, 0x20_0000, Direction::ToDevice),
        Err(DmaError::BeyondMask { .. })
    ));

    let dma = dom
        .map(&dev, base + 0x100, 0x100, Direction::ToDevice)
        .unwrap();
    assert_eq!(
        dom.unmap(&dev, dma + G, 0x100, Direction::ToDevice),
        Err(DmaError::NotMapped { dma: dma + G })
    );
    assert!(matches!(
        dom.unmap(&dev, dma, 0x80, Direction::ToDevice),
        Err(DmaError::Mismatch { .. })
    ));
    assert_eq!(
        dom.unmap(&wide, dma, 0x100, Direction::ToDevice),
        Err(DmaError::NotMapped { dma })
    );
    assert!(matches!(
        dom.unmap_resource(&dev, dma, 0x100, Direction::ToDevice),
        Err(DmaError::Mismatch { .. })
    ));
    assert_eq!(
        dom.unmap(&dev, dma, 0, Direction::ToDevice),
        Err(DmaError::ZeroSize)
    );
    assert_eq!(
        dom.translate(dma),
        Some(base + 0x100),
        "still mapped after the refusals"
    );
    dom.unmap(&dev, dma, 0x100, Direction::ToDevice).unwrap();
    assert_eq!(
        dom.unmap(&dev, dma, 0x100, Direction::ToDevice),
        Err(DmaError::NotMapped { dma })
    );
    assert_eq!(
        dom.sync_for_cpu(&dev, dma, 4, Direction::ToDevice),
        Err(DmaError::NotMapped { dma })
    );

    let (other, _) = domain(64, None);
    let stranger = other.attach(DeviceConfig::default()).unwrap();
    assert_eq!(
        dom.map(&stranger, base, 16, Direction::ToDevice),
        Err(DmaError::ForeignDevice)
    );
    let no_bounce = Domain::new(
        DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(),
        RecordingIotlb::new(),
        None,
    )
    .unwrap();
    assert_eq!(
        no_bounce
            .attach(DeviceConfig {
                trusted: false,
                ..DeviceConfig::default()
            })
            .unwrap_err(),
        DmaError::NoBounceBuffers
    );

    // A read-only mapping refuses device writes.
    let ro = dom.map(&dev, base, 0x10, Direction::ToDevice).unwrap();
    assert_eq!(
        hw(&dom, &dev).write(ro, &[1]),
        Err(DmaError::Fault { dma: ro })
    );
    dom.unmap(&dev, ro, 0x10, Direction::ToDevice).unwrap();

    // Everything still works, and nothing leaked.
    let dma = dom.map(&dev, base, 0x3000, Direction::ToDevice).unwrap();
    dom.unmap(&dev, dma, 0x3000, Direction::ToDevice).unwrap();
    let s = dom.stats();
    assert_eq!(s.live, 0);
    assert!(s.errors >= 10, "refusals are counted: {s:?}");
    dom.iova_allocator().flush_all();
    assert!(dom.iova_allocator().allocated_ranges().is_empty());
}

#[test]
fn exhausted_iova_space_is_an_error_not_a_panic() {
    // pfns 1..=8: one naturally aligned 4-granule range fits (pfns 4..8), a second does not.
    let (dom, base) = domain(8, None);
    let dev = dom.attach(DeviceConfig::default()).unwrap();
    let a = dom.map(&dev, base, 0x4000, Direction::ToDevice).unwrap();
    assert!(matches!(
        dom.map(&dev, base, 0x4000, Direction::ToDevice),
        Err(DmaError::NoIova(_))
    ));
    dom.unmap(&dev, a, 0x4000, Direction::ToDevice).unwrap();
    let b = dom.map(&dev, base, 0x4000, Direction::ToDevice).unwrap();
    dom.unmap(&dev, b, 0x4000, Direction::ToDevice).unwrap();
}

#[test]
fn scatter_lists_get_one_contiguous_range() {
    let (dom, base) = domain(1 << 16, None);
    let dev = dom
        .attach(DeviceConfig {
            max_segment_size: 0x10000,
            ..DeviceConfig::default()
        })
        .unwrap();
    let list = [
        seg(base + 0x10_0200, 0xE00),
        seg(base + 0x20_0000, 0x2000),
        seg(base + 0x30_0000, 0x100),
    ];
    let m = dom.map_sg(&dev, &list, Direction::ToDevice).unwrap();
    assert_eq!(m.per_input().len(), 3);
    assert_eq!(m.per_input()[0] & 0xFFF, 0x200);
    assert_eq!(
        m.per_input()[1],
        m.per_input()[0] + 0xE00,
        "IOVA-contiguous"
    );
    assert_eq!(m.segments().len(), 1, "merged: {:?}", m.segments());
    assert_eq!(m.segments()[0].len, 0x2F00);
    for (dma, seg) in m.per_input().iter().zip(&list) {
        assert_eq!(dom.translate(*dma), Some(seg.addr));
    }
    assert_eq!(dom.stats().lists, 1);
    dom.unmap_sg(&dev, &m, Direction::ToDevice).unwrap();
    assert!(m.per_input().iter().all(|d| dom.translate(*d).is_none()));
    assert!(
        dom.unmap_sg(&dev, &m, Direction::ToDevice).is_err(),
        "twice"
    );

    // A 16 KiB boundary: the second segment is moved to the next boundary.
    let bounded = dom
        .attach(DeviceConfig {
            seg_boundary_mask: 0x3FFF,
            ..DeviceConfig::default()
        })
        .unwrap();
    let list = [seg(base, 0x3000), seg(base + 0x8000, 0x2000)];
    let m = dom.map_sg(&bounded, &list, Direction::ToDevice).unwrap();
    assert_eq!(m.segments().len(), 2);
    for s in m.segments() {
        assert_eq!(
            s.addr >> 14,
            (s.addr + s.len - 1) >> 14,
            "no segment crosses the boundary"
        );
    }
    dom.unmap_sg(&bounded, &m, Direction::ToDevice).unwrap();

    let too_long = [seg(base, 0x2_0000)];
    assert!(matches!(
        dom.map_sg(&dev, &too_long, Direction::ToDevice),
        Err(DmaError::BadSegment { index: 0, .. })
    ));
    assert_eq!(dom.stats().live, 0);
}

#[test]
fn untrusted_scatter_lists_map_each_segment() {
    let (dom, base) = domain(1 << 16, None);
    let dev = dom
        .attach(DeviceConfig {
            trusted: false,
            ..DeviceConfig::default()
        })
        .unwrap();
    let list = [seg(base + 0x10, 0x20), seg(base + 0x4000, 0x1000)];
    let m = dom.map_sg(&dev, &list, Direction::ToDevice).unwrap();
    assert_eq!(m.segments().len(), 2);
    assert_ne!(
        dom.translate(m.per_input()[0]),
        Some(list[0].addr),
        "unaligned segment bounced"
    );
    assert_eq!(
        dom.translate(m.per_input()[1]),
        Some(list[1].addr),
        "aligned segment direct"
    );
    assert_eq!(
        dom.unmap_sg(&dev, &m, Direction::ToDevice),
        Ok(Unmapped::Synced)
    );
    assert_eq!(dom.stats().live, 0);
}

#[test]
fn resources_are_mapped_without_bouncing() {
    let (dom, _) = domain(64, None);
    let dev = dom
        .attach(DeviceConfig {
            trusted: false,
            ..DeviceConfig::default()
        })
        .unwrap();
    let mmio = 0xFE00_0010;
    let dma = dom
        .map_resource(&dev, mmio, 0x40, Direction::Bidirectional)
        .unwrap();
    assert_eq!(dom.translate(dma), Some(mmio));
    assert!(matches!(
        dom.unmap(&dev, dma, 0x40, Direction::Bidirectional),
        Err(DmaError::Mismatch { .. })
    ));
    dom.unmap_resource(&dev, dma, 0x40, Direction::Bidirectional)
        .unwrap();
}

#[test]
fn mapping_size_limits() {
    let (dom, base) = domain(1 << 16, None);
    assert_eq!(
        dom.opt_mapping_size(),
        64 * G,
        "the largest IOVA cache class"
    );
    let trusted = dom.attach(DeviceConfig::default()).unwrap();
    let untrusted = dom
        .attach(DeviceConfig {
            trusted: false,
            ..DeviceConfig::default()
        })
        .unwrap();
    let cap = dom.max_mapping_size(&untrusted);
    assert!(cap < dom.max_mapping_size(&trusted));
    // One byte over the cap, unaligned: the bounce allocator refuses, typed, nothing leaks.
    let r = dom.map(&untrusted, base + 1, cap as usize + 1, Direction::ToDevice);
    assert!(matches!(r, Err(DmaError::Bounce(_))), "{r:?}");
    let dma = dom
        .map(&untrusted, base + 1, 100, Direction::ToDevice)
        .unwrap();
    dom.unmap(&untrusted, dma, 100, Direction::ToDevice)
        .unwrap();
    assert_eq!(dom.stats().live, 0);
}

#[test]
fn devices_prefer_32bit_iovas_until_the_first_miss() {
    let mem = RegionMemory::new(1 << 16);
    let base = mem.base();
    let dom = domain_over(mem, Config::tiny(64, 1, 64), |_| {});
    let nic = dom
        .attach(DeviceConfig {
            prefer_32bit: true,
            ..DeviceConfig::default()
        })
        .unwrap();
    let dma = dom.map(&nic, base, 0x1000, Direction::ToDevice).unwrap();
    assert!(dma < 1 << 32);
    assert!(nic.prefers_32bit());
    dom.unmap(&nic, dma, 0x1000, Direction::ToDevice).unwrap();
}
