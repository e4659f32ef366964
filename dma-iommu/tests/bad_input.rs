//! Bad input to a domain: configurations beyond their documented maxima are refused before
//! anything is allocated, address arithmetic on caller input never wraps, and a scatter list
//! gets the same answer whatever the device's trust. Each refusal is typed and leaves the
//! domain unchanged and working.
#![cfg(not(loom))]

mod common;

use common::{domain_over, untrusted, G};
use dma_iommu::flush_queue::{MAX_QUEUED, MAX_TIMEOUT};
use dma_iommu::{
    DeviceConfig, DmaError, Domain, DomainConfig, FqConfig, FqError, NoTlb, PhysSegment,
    RecordingIotlb,
};
use proptest::prelude::*;
use std::time::Duration;
use swiotlb_core::{Config, Direction, RegionMemory};

fn domain() -> (Domain<RecordingIotlb>, u64) {
    let mem = RegionMemory::new(1 << 20);
    let base = mem.base();
    (domain_over(mem, Config::tiny(256, 1, 128), |_| {}), base)
}

/// The domain maps and unmaps (directly and bounced) and holds nothing afterwards.
fn still_works(dom: &Domain<RecordingIotlb>, base: u64) {
    for cfg in [DeviceConfig::default(), untrusted()] {
        let dev = dom.attach(cfg).unwrap();
        let dma = dom
            .map(&dev, base + 0x10, 0x30, Direction::ToDevice)
            .unwrap();
        dom.unmap(&dev, dma, 0x30, Direction::ToDevice).unwrap();
    }
    dom.flush_queue_now();
    assert_eq!(dom.stats().live, 0);
    assert_eq!(dom.swiotlb().unwrap().stats().used, 0);
}

#[test]
fn flush_queues_beyond_their_maxima_are_refused_and_the_domain_stays_strict() {
    let (dom, base) = domain();
    let too_large =
        |rings, ring_size| Err(DmaError::FlushQueue(FqError::TooLarge { rings, ring_size }));
    let per_cpu = FqConfig::per_cpu();
    assert_eq!(
        dom.set_lazy(per_cpu.with_cpus(usize::MAX)),
        too_large(usize::MAX, 256)
    );
    assert_eq!(
        dom.set_lazy(per_cpu.with_cpus(10_000)),
        too_large(10_000, 256)
    );
    let ring = 1 << 62;
    assert_eq!(dom.set_lazy(per_cpu.with_ring_size(ring)), {
        too_large(per_cpu.cpus, ring)
    });
    assert_eq!(
        dom.set_lazy(FqConfig::single().with_ring_size(MAX_QUEUED * 2)),
        too_large(1, MAX_QUEUED * 2)
    );
    let forever = per_cpu.with_timeout(Duration::MAX);
    assert_eq!(
        dom.set_lazy(forever),
        Err(DmaError::FlushQueue(FqError::Timeout(Duration::MAX)))
    );
    assert!(!dom.is_lazy());
    still_works(&dom, base);

    // The largest accepted queue is exactly the maximum.
    let largest = FqConfig::single()
        .with_ring_size(MAX_QUEUED)
        .with_timeout(MAX_TIMEOUT);
    assert_eq!(largest.validate(), Ok(()));
    assert_eq!(dom.set_lazy(FqConfig::per_cpu().with_cpus(4)), Ok(true));
    still_works(&dom, base);
}

#[test]
fn domain_configurations_are_refused_before_anything_is_built() {
    let base = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
    let lazy_huge = base.clone().lazy(FqConfig::per_cpu().with_cpus(usize::MAX));
    assert!(matches!(
        Domain::new(lazy_huge, NoTlb, None),
        Err(DmaError::FlushQueue(FqError::TooLarge { .. }))
    ));
    let mut many_cpus = base.clone();
    many_cpus.iova.cpus = usize::MAX;
    assert!(matches!(
        Domain::new(many_cpus, NoTlb, None),
        Err(DmaError::NoIova(_))
    ));
    let mut huge_magazines = base;
    huge_magazines.iova.magazine_size = usize::MAX;
    assert!(matches!(
        Domain::new(huge_magazines, NoTlb, None),
        Err(DmaError::NoIova(_))
    ));
}

#[test]
fn inconsistent_device_configurations_are_refused_at_attach() {
    let (dom, base) = domain();
    for (what, cfg) in [
        (
            "boundary not 2^k - 1",
            DeviceConfig {
                seg_boundary_mask: 0x1_2FFF,
                ..DeviceConfig::default()
            },
        ),
        (
            "boundary below a granule",
            DeviceConfig {
                seg_boundary_mask: 0x7FF,
                ..DeviceConfig::default()
            },
        ),
        (
            "empty segments",
            DeviceConfig {
                max_segment_size: 0,
                ..untrusted()
            },
        ),
    ] {
        assert!(
            matches!(dom.attach(cfg), Err(DmaError::DeviceConfig(_))),
            "{what}"
        );
    }
    still_works(&dom, base);
}

#[test]
fn a_segment_length_that_wraps_is_refused() {
    let (dom, base) = domain();
    for cfg in [DeviceConfig::default(), untrusted()] {
        let dev = dom
            .attach(DeviceConfig {
                max_segment_size: u64::MAX,
                ..cfg
            })
            .unwrap();
        let wraps = [PhysSegment {
            addr: base + 0x10,
            len: u64::MAX - 8,
        }];
        assert_eq!(
            dom.map_sg(&dev, &wraps, Direction::ToDevice),
            Err(DmaError::Overflow),
            "trusted: {}",
            cfg.trusted
        );
        // The end does not wrap, but no mask holds that many granules (or bounce segment).
        let too_long = [PhysSegment {
            addr: G + 0x10,
            len: u64::MAX - G - 0x11,
        }];
        let r = dom.map_sg(&dev, &too_long, Direction::ToDevice);
        assert!(
            matches!(
                r,
                Err(DmaError::BeyondMask { .. }
                    | DmaError::Bounce(swiotlb_core::Error::TooLarge { .. }))
            ),
            "{r:?}"
        );
    }
    assert_eq!(dom.stats().live, 0);
    still_works(&dom, base);
}

#[test]
fn an_empty_scatter_list_is_zero_size_for_every_device() {
    let (dom, base) = domain();
    for cfg in [DeviceConfig::default(), untrusted()] {
        let dev = dom.attach(cfg).unwrap();
        assert_eq!(
            dom.map_sg(&dev, &[], Direction::ToDevice),
            Err(DmaError::ZeroSize),
            "trusted: {}",
            cfg.trusted
        );
    }
    assert_eq!(dom.stats().errors, 2);
    still_works(&dom, base);
}

#[test]
fn segment_limits_hold_for_every_device() {
    let (dom, base) = domain();
    for cfg in [DeviceConfig::default(), untrusted()] {
        let dev = dom
            .attach(DeviceConfig {
                max_segment_size: 0x100,
                ..cfg
            })
            .unwrap();
        let list = [
            PhysSegment {
                addr: base,
                len: 0x100,
            },
            PhysSegment {
                addr: base + 0x1010,
                len: 0x101,
            },
        ];
        assert_eq!(
            dom.map_sg(&dev, &list, Direction::ToDevice),
            Err(DmaError::BadSegment {
                index: 1,
                len: 0x101
            }),
            "trusted: {}",
            cfg.trusted
        );
    }
    assert_eq!(dom.stats().live, 0);
    still_works(&dom, base);
}

/// An `SgMapping` cannot be changed (its fields are private; see its `compile_fail` example),
/// so a second `unmap_sg` of a clone, trusted or not, is the one misuse left: refused with
/// `NotMapped`, nothing else unmapped.
#[test]
fn a_cloned_scatter_mapping_unmaps_once() {
    let (dom, base) = domain();
    for cfg in [DeviceConfig::default(), untrusted()] {
        let dev = dom.attach(cfg).unwrap();
        let list = [
            PhysSegment {
                addr: base,
                len: 0x1000,
            },
            PhysSegment {
                addr: base + 0x3000,
                len: 0x800,
            },
        ];
        let m = dom.map_sg(&dev, &list, Direction::ToDevice).unwrap();
        let other = dom
            .map(&dev, base + 0x8000, 0x1000, Direction::ToDevice)
            .unwrap();
        let copy = m.clone();
        dom.unmap_sg(&dev, &m, Direction::ToDevice).unwrap();
        assert!(matches!(
            dom.unmap_sg(&dev, &copy, Direction::ToDevice),
            Err(DmaError::NotMapped { .. })
        ));
        assert!(m.per_input().iter().all(|&d| dom.translate(d).is_none()));
        assert_eq!(dom.translate(other), Some(base + 0x8000));
        dom.unmap(&dev, other, 0x1000, Direction::ToDevice).unwrap();
        assert_eq!(dom.stats().live, 0, "trusted: {}", cfg.trusted);
    }
    still_works(&dom, base);
}

/// A value from the edges callers get wrong: near the top of the address space, half-way, or
/// anything; otherwise (most often) one of `ordinary`.
fn edgy(ordinary: std::ops::Range<u64>) -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => ordinary,
        1 => (0u64..0x20).prop_map(|d| u64::MAX - d),
        1 => (0u64..0x20).prop_map(|d| u64::MAX / 2 + d),
        1 => any::<u64>(),
    ]
}

/// A segment: an address (an offset into the domain's memory when `in_memory`, so bounced
/// segments can be copied) and a length.
fn segment() -> impl Strategy<Value = (bool, u64, u64)> {
    (any::<bool>(), edgy(0..0x8000), edgy(1..0x3000))
}

/// The answer the checks every list goes through give, in the order they are documented
/// (`Domain::map_sg`): the first segment that is empty, too long or runs past 2^64 decides.
fn refusal(list: &[PhysSegment], max_segment_size: u64) -> Option<DmaError> {
    if list.is_empty() {
        return Some(DmaError::ZeroSize);
    }
    list.iter().enumerate().find_map(|(index, s)| {
        if s.len == 0 {
            Some(DmaError::ZeroSize)
        } else if s.len > max_segment_size {
            Some(DmaError::BadSegment { index, len: s.len })
        } else if s.addr.checked_add(s.len).is_none() {
            Some(DmaError::Overflow)
        } else {
            None
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Arbitrary scatter lists never panic and never half-map: refused as the checks predict
    /// with nothing left behind, or mapped with every byte accounted for and unmapped again.
    #[test]
    fn arbitrary_scatter_lists_are_mapped_whole_or_refused_cleanly(
        raw in proptest::collection::vec(segment(), 0..4),
        max_segment_size in prop_oneof![Just(u64::MAX), Just(0x2000u64), 1u64..0x10000],
        trusted: bool,
    ) {
        let (dom, base) = domain();
        let cfg = DeviceConfig { max_segment_size, trusted, ..DeviceConfig::default() };
        let dev = dom.attach(cfg).unwrap();
        let list: Vec<PhysSegment> = raw
            .iter()
            .map(|&(in_memory, at, len)| PhysSegment {
                addr: if in_memory { base.wrapping_add(at) } else { at },
                len,
            })
            .collect();
        let predicted = refusal(&list, max_segment_size);
        match dom.map_sg(&dev, &list, Direction::ToDevice) {
            Ok(m) => {
                prop_assert_eq!(predicted, None);
                prop_assert_eq!(m.per_input().len(), list.len());
                let mapped: u64 = m.segments().iter().map(|s| s.len).sum();
                prop_assert_eq!(mapped, list.iter().map(|s| s.len).sum::<u64>());
                for s in m.segments() {
                    prop_assert!(s.len <= max_segment_size);
                }
                if trusted {
                    for (s, &dma) in list.iter().zip(m.per_input()) {
                        prop_assert_eq!(dom.translate(dma), Some(s.addr));
                    }
                }
                prop_assert!(dom.unmap_sg(&dev, &m, Direction::ToDevice).is_ok());
            }
            Err(e) => {
                if let Some(p) = predicted {
                    prop_assert_eq!(e, p);
                }
            }
        }
        let s = dom.stats();
        prop_assert_eq!(s.live, 0);
        prop_assert_eq!(s.maps, s.unmaps_synced + s.unmaps_queued);
        prop_assert_eq!(dom.swiotlb().unwrap().stats().used, 0);
        dom.iova_allocator().flush_all();
        prop_assert!(dom.iova_allocator().allocated_ranges().is_empty());
    }
}
