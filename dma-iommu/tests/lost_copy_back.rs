//! A copy-back that original memory refuses. An unmap still takes the mapping down and
//! releases its bounce slots exactly once, and says which bytes of the device's writes were
//! lost; a sync leaves the mapping live so it can be retried. The statistics stay consistent:
//! every map is an unmap or a live mapping, and every refused call is counted.
#![cfg(not(loom))]

mod common;

use common::hw;
use dma_iommu::{
    Device, DeviceConfig, DmaError, Domain, DomainConfig, NoTlb, PhysSegment, Unmapped,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use swiotlb_core::{
    Config, Direction, DmaDst, DmaSrc, MemoryError, OrigMemory, RegionMemory, Swiotlb,
};

/// Memory whose writes can be refused (a guest page that went away, a failing MMIO window).
struct RefusingMemory {
    inner: RegionMemory,
    refuse_writes: Arc<AtomicBool>,
}

impl OrigMemory for RefusingMemory {
    fn read_into(&self, addr: u64, dst: DmaDst<'_>) -> Result<(), MemoryError> {
        self.inner.read_into(addr, dst)
    }

    fn write_from(&self, addr: u64, src: DmaSrc<'_>) -> Result<(), MemoryError> {
        if self.refuse_writes.load(Ordering::Relaxed) {
            return Err(MemoryError {
                addr,
                len: src.len(),
            });
        }
        self.inner.write_from(addr, src)
    }
}

/// A strict domain with bounce buffers over refusable memory, an untrusted device, the
/// memory's base and the switch that makes its writes fail.
fn setup() -> (Domain<NoTlb>, Device, u64, Arc<AtomicBool>) {
    let inner = RegionMemory::new(1 << 20);
    let base = inner.base();
    let refuse_writes = Arc::new(AtomicBool::new(false));
    let mem = RefusingMemory {
        inner,
        refuse_writes: refuse_writes.clone(),
    };
    let bounce = Swiotlb::new(Config::tiny(256, 1, 128), mem).unwrap();
    let cfg = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
    let dom = Domain::new(cfg, NoTlb, Some(bounce)).unwrap();
    let dev = dom
        .attach(DeviceConfig {
            trusted: false,
            ..DeviceConfig::default()
        })
        .unwrap();
    (dom, dev, base, refuse_writes)
}

fn slots_used(dom: &Domain<NoTlb>) -> usize {
    dom.swiotlb().unwrap().stats().used
}

fn read_host(dom: &Domain<NoTlb>, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    dom.swiotlb()
        .unwrap()
        .memory()
        .read(addr, &mut buf)
        .unwrap();
    buf
}

#[test]
fn a_refused_copy_back_on_unmap_is_a_typed_loss_and_frees_the_slots() {
    let (dom, dev, base, refuse) = setup();
    let buf = base + 0x2010; // not granule-aligned: bounced
    let dma = dom.map(&dev, buf, 8, Direction::FromDevice).unwrap();
    assert!(slots_used(&dom) > 0);
    hw(&dom, &dev).write(dma, b"received").unwrap();
    refuse.store(true, Ordering::Relaxed);
    assert_eq!(
        dom.unmap(&dev, dma, 8, Direction::FromDevice),
        Err(DmaError::LostCopyBack {
            dma,
            size: 8,
            cause: MemoryError { addr: buf, len: 8 },
        })
    );
    // The mapping is gone and its slots are free: nothing to retry, nothing leaked.
    assert_eq!(dom.translate(dma), None);
    assert_eq!(slots_used(&dom), 0);
    assert_eq!(
        dom.unmap(&dev, dma, 8, Direction::FromDevice),
        Err(DmaError::NotMapped { dma })
    );
    let s = dom.stats();
    assert_eq!(
        (s.maps, s.unmaps_synced, s.live, s.errors),
        (1, 1, 0, 2),
        "the lost unmap is an unmap and an error; the retry an error: {s:?}"
    );

    // The domain keeps working once the memory accepts writes again.
    refuse.store(false, Ordering::Relaxed);
    let dma = dom.map(&dev, buf, 8, Direction::FromDevice).unwrap();
    hw(&dom, &dev).write(dma, b"arrived!").unwrap();
    assert_eq!(
        dom.unmap(&dev, dma, 8, Direction::FromDevice),
        Ok(Unmapped::Synced)
    );
    assert_eq!(read_host(&dom, buf, 8), b"arrived!");
    assert_eq!(slots_used(&dom), 0);
}

#[test]
fn a_refused_copy_back_on_unmap_sg_unmaps_every_segment() {
    let (dom, dev, base, refuse) = setup();
    let list = [
        PhysSegment {
            addr: base + 0x10,
            len: 0x20,
        },
        PhysSegment {
            addr: base + 0x4000,
            len: 0x1000,
        },
        PhysSegment {
            addr: base + 0x8030,
            len: 0x40,
        },
    ];
    let m = dom.map_sg(&dev, &list, Direction::FromDevice).unwrap();
    refuse.store(true, Ordering::Relaxed);
    let first = m.per_input()[0];
    assert_eq!(
        dom.unmap_sg(&dev, &m, Direction::FromDevice),
        Err(DmaError::LostCopyBack {
            dma: first,
            size: 0x20,
            cause: MemoryError {
                addr: list[0].addr,
                len: 0x20,
            },
        }),
        "the first loss is reported"
    );
    for &dma in m.per_input() {
        assert_eq!(dom.translate(dma), None, "{dma:#x} still mapped");
    }
    assert_eq!(slots_used(&dom), 0);
    assert_eq!(dom.stats().live, 0);
    assert!(matches!(
        dom.unmap_sg(&dev, &m, Direction::FromDevice),
        Err(DmaError::NotMapped { .. })
    ));
    let s = dom.stats();
    assert_eq!(s.maps, s.unmaps_synced + s.unmaps_queued + s.live, "{s:?}");
}

#[test]
fn a_refused_sync_for_cpu_keeps_the_mapping_for_a_retry() {
    let (dom, dev, base, refuse) = setup();
    let buf = base + 0x3040;
    let dma = dom.map(&dev, buf, 4, Direction::FromDevice).unwrap();
    hw(&dom, &dev).write(dma, b"data").unwrap();
    refuse.store(true, Ordering::Relaxed);
    assert_eq!(
        dom.sync_for_cpu(&dev, dma, 4, Direction::FromDevice),
        Err(DmaError::CopyRefused {
            dma,
            size: 4,
            cause: MemoryError { addr: buf, len: 4 },
        })
    );
    assert!(dom.translate(dma).is_some(), "still mapped");
    assert_eq!(dom.stats().errors, 1);
    refuse.store(false, Ordering::Relaxed);
    dom.sync_for_cpu(&dev, dma, 4, Direction::FromDevice)
        .unwrap();
    assert_eq!(read_host(&dom, buf, 4), b"data");
    dom.unmap(&dev, dma, 4, Direction::FromDevice).unwrap();
    assert_eq!(slots_used(&dom), 0);
}
