//! vm-memory integration against real mmap-backed guest memory.
#![cfg(all(not(loom), feature = "vm-memory"))]

use dma_vmm::translate::Fault;
use dma_vmm::{GuestBytes, IovaMemory};
use io_pgtable::{Config, PageTable, Prot};
use swiotlb_core::{Config as BounceConfig, DeviceConfig, Direction, MapAttrs, Swiotlb};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions};

type Ram = GuestMemoryMmap<()>;

/// Two RAM regions with a hole: [0, 64K) and [1M, 1M + 64K).
fn ram() -> Ram {
    Ram::from_ranges(&[
        (GuestAddress(0), 0x1_0000),
        (GuestAddress(0x10_0000), 0x1_0000),
    ])
    .unwrap()
}

const RW: Prot = Prot::READ.union(Prot::WRITE);

/// IOVA 0x10000.. is three pages, mapped to scattered guest pages, one of them in the second
/// RAM region; IOVA 0x20000 is read-only; 0x30000 is write-only.
fn scattered() -> IovaMemory<Ram, PageTable> {
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    pt.map(0x1_0000, 0x5000, 0x1000, RW).unwrap();
    pt.map(0x1_1000, 0x10_3000, 0x1000, RW).unwrap();
    pt.map(0x1_2000, 0x2000, 0x1000, RW).unwrap();
    pt.map(0x2_0000, 0x8000, 0x1000, Prot::READ).unwrap();
    pt.map(0x3_0000, 0x9000, 0x1000, Prot::WRITE).unwrap();
    IovaMemory::new(ram(), pt)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn a_range_spanning_several_mappings_lands_in_each_target() {
    let io = scattered();
    let data = pattern(0x2800);
    io.write_slice(&data, GuestAddress(0x1_0400)).unwrap();
    // Each piece sits at its own guest-physical address.
    let ram = io.backend();
    let mut got = vec![0u8; 0xc00];
    ram.read_slice(&mut got, GuestAddress(0x5400)).unwrap();
    assert_eq!(got, data[..0xc00]);
    let mut got = vec![0u8; 0x1000];
    ram.read_slice(&mut got, GuestAddress(0x10_3000)).unwrap();
    assert_eq!(got, data[0xc00..0x1c00]);
    let mut got = vec![0u8; 0xc00];
    ram.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
    assert_eq!(got, data[0x1c00..]);
    // And read back whole through the IOMMU.
    let mut back = vec![0u8; data.len()];
    io.read_slice(&mut back, GuestAddress(0x1_0400)).unwrap();
    assert_eq!(back, data);
    // get_slices yields one slice per physically contiguous piece.
    let lens: Vec<usize> = io
        .get_slices(GuestAddress(0x1_0400), 0x2800, Permissions::Read)
        .unwrap()
        .map(|s| s.unwrap().len())
        .collect();
    assert_eq!(lens, vec![0xc00, 0x1000, 0xc00]);
    assert!(io.check_range(GuestAddress(0x1_0000), 0x3000, Permissions::ReadWrite));
    assert!(io.physical_memory().is_some());
}

#[test]
fn contiguous_mappings_merge_into_one_slice() {
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    pt.map(0x4000, 0x1000, 0x1000, RW).unwrap();
    pt.map(0x5000, 0x2000, 0x1000, RW).unwrap();
    let io = IovaMemory::new(ram(), pt);
    let n = io
        .get_slices(GuestAddress(0x4000), 0x2000, Permissions::Read)
        .unwrap()
        .count();
    assert_eq!(n, 1);
}

#[test]
fn permission_denied_fails_and_writes_nothing() {
    let io = scattered();
    let ram = io.backend();
    ram.write_slice(&[0xaa; 16], GuestAddress(0x8000)).unwrap();
    let err = io
        .write_slice(&[1; 16], GuestAddress(0x2_0000))
        .unwrap_err();
    assert!(matches!(err, GuestMemoryError::IommuError(_)), "{err}");
    assert!(err.to_string().contains("denied"), "{err}");
    let mut seen = [0u8; 16];
    ram.read_slice(&mut seen, GuestAddress(0x8000)).unwrap();
    assert_eq!(seen, [0xaa; 16]);
    // Reading the read-only page works. Stage-1 LPAE descriptors cannot say "write-only", so
    // a write-only mapping also reads (the virtio-iommu specification allows exactly this).
    io.read_slice(&mut seen, GuestAddress(0x2_0000)).unwrap();
    io.write_slice(&[5; 16], GuestAddress(0x3_0000)).unwrap();
    io.read_slice(&mut seen, GuestAddress(0x3_0000)).unwrap();
    assert_eq!(seen, [5; 16]);
    assert!(!io.check_range(GuestAddress(0x2_0000), 16, Permissions::Write));
    assert!(io.check_range(GuestAddress(0x2_0000), 16, Permissions::Read));
    // A write that would cross from a writable page into the read-only one writes nothing.
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    pt.map(0x1000, 0x1000, 0x1000, RW).unwrap();
    pt.map(0x2000, 0x2000, 0x1000, Prot::READ).unwrap();
    let io = IovaMemory::new(ram.clone(), pt);
    assert!(io.write_slice(&[9; 32], GuestAddress(0x1ff0)).is_err());
    let mut seen = [0u8; 16];
    ram.read_slice(&mut seen, GuestAddress(0x1ff0)).unwrap();
    assert_ne!(seen, [9; 16]);
}

/// A write whose second page translates to guest-physical addresses outside RAM is refused
/// before its first byte: the page inside RAM keeps its bytes (it was written before the
/// copy met the hole).
#[test]
fn a_write_reaching_outside_ram_writes_nothing() {
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    // RAM ends at 64K: the first page is its last, the second lies in the hole.
    pt.map(0x40_0000, 0xf000, 0x1000, RW).unwrap();
    pt.map(0x40_1000, 0x1_0000, 0x1000, RW).unwrap();
    let io = IovaMemory::new(ram(), pt);
    io.backend()
        .write_slice(&[0xaa; 0x1000], GuestAddress(0xf000))
        .unwrap();
    let err = io
        .write_slice(&[0x55; 0x2000], GuestAddress(0x40_0000))
        .unwrap_err();
    assert!(
        matches!(
            err,
            GuestMemoryError::InvalidGuestAddress(GuestAddress(0x1_0000))
        ),
        "{err}"
    );
    let mut seen = vec![0u8; 0x1000];
    io.backend()
        .read_slice(&mut seen, GuestAddress(0xf000))
        .unwrap();
    assert!(seen.iter().all(|&b| b == 0xaa));
    assert!(!io.check_range(GuestAddress(0x40_0000), 0x2000, Permissions::Write));
    // The part inside RAM still works.
    io.write_slice(&[0x55; 0x1000], GuestAddress(0x40_0000))
        .unwrap();
}

#[test]
fn unmapped_and_outside_ram_are_errors() {
    let io = scattered();
    let mut buf = [0u8; 8];
    assert!(io.read_slice(&mut buf, GuestAddress(0x7_0000)).is_err());
    // A range running off the end of a mapping fails up front.
    assert!(io
        .read_slice(&mut [0u8; 0x20], GuestAddress(0x1_2ff0))
        .is_err());
    assert!(!io.check_range(GuestAddress(0x1_2ff0), 0x20, Permissions::Read));
    // Mapped, but to guest-physical memory that does not exist.
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    pt.map(0x1000, 0x8_0000, 0x1000, RW).unwrap();
    let io = IovaMemory::new(ram(), pt);
    assert!(io.read_slice(&mut buf, GuestAddress(0x1000)).is_err());
    assert!(!io.check_range(GuestAddress(0x1000), 8, Permissions::Read));
    // Wrapping ranges fault instead of overflowing.
    assert!(!io.check_range(GuestAddress(u64::MAX - 3), 8, Permissions::Read));
    // The error names the IOVA.
    let e = dma_vmm::iova_memory::fault_error(Fault::Unmapped { iova: 0x7_0000 }, 8);
    assert!(e.to_string().contains("0x70000"), "{e}");
}

#[test]
fn bounce_copies_go_to_and_from_guest_memory() {
    let bounce = Swiotlb::new(BounceConfig::tiny(64, 2, 16), GuestBytes::new(ram())).unwrap();
    let dev = bounce.device(DeviceConfig {
        min_align_mask: 0xfff,
        ..Default::default()
    });
    let data = pattern(3000);
    bounce.memory().write(0x10_0123, &data).unwrap();
    let dma = bounce
        .map(
            &dev,
            0x10_0123,
            data.len(),
            Direction::ToDevice,
            MapAttrs::default(),
        )
        .unwrap();
    assert_eq!(dma & 0xfff, 0x123);
    let mut seen = vec![0u8; data.len()];
    bounce.read_bounce(&dev, dma, &mut seen).unwrap();
    assert_eq!(seen, data);
    bounce
        .unmap(
            &dev,
            dma,
            data.len(),
            Direction::ToDevice,
            MapAttrs::default(),
        )
        .unwrap();
    // FromDevice: the device's bytes land in guest memory, the rest keeps its value.
    let dma = bounce
        .map(&dev, 0x4000, 64, Direction::FromDevice, MapAttrs::default())
        .unwrap();
    bounce.write_bounce(&dev, dma + 8, &[0xee; 8]).unwrap();
    bounce
        .unmap(&dev, dma, 64, Direction::FromDevice, MapAttrs::default())
        .unwrap();
    let mut back = [0u8; 24];
    bounce.memory().read(0x4000, &mut back).unwrap();
    assert_eq!(back[..8], [0; 8]);
    assert_eq!(back[8..16], [0xee; 8]);
    // Guest addresses outside RAM are refused and the allocator keeps working.
    assert!(bounce
        .map(&dev, 0x8_0000, 16, Direction::ToDevice, MapAttrs::default())
        .is_err());
    assert_eq!(bounce.stats().used, 0);
}

#[test]
fn bounce_through_an_iommu_respects_permissions() {
    // Original addresses are IOVAs: the bounce copy-back needs write permission.
    let bounce = Swiotlb::new(BounceConfig::tiny(64, 2, 16), GuestBytes::new(scattered())).unwrap();
    let dev = bounce.device(DeviceConfig::default());
    let dma = bounce
        .map(&dev, 0x2_0000, 16, Direction::ToDevice, MapAttrs::default())
        .unwrap();
    bounce
        .unmap(&dev, dma, 16, Direction::ToDevice, MapAttrs::default())
        .unwrap();
    let mut back = [0u8; 16];
    assert!(bounce.memory().read(0x2_0000, &mut back).is_ok());
    assert!(bounce.memory().write(0x2_0000, &back).is_err());
    assert!(bounce.memory().read(0x7_0000, &mut back).is_err());
}

#[test]
fn device_writes_are_logged_dirty_by_guest_physical_page() {
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let ram = GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    pt.map(0x40_0000, 0x3000, 0x1000, RW).unwrap();
    let io = IovaMemory::new(ram, pt);
    io.write_obj(1u64, GuestAddress(0x40_0008)).unwrap();
    let region = io.backend().find_region(GuestAddress(0)).unwrap();
    assert!(
        region.bitmap().dirty_at(0x3008),
        "the guest-physical page is dirty"
    );
    assert!(
        !region.bitmap().dirty_at(0x0),
        "no page at the IOVA's numeric address is"
    );
}

#[test]
fn handles_are_shareable_across_device_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<IovaMemory<Ram, PageTable>>();
    shareable::<IovaMemory<Ram, dma_vmm::viommu::Endpoint>>();
    shareable::<dma_vmm::viommu::Viommu>();
    shareable::<GuestBytes<IovaMemory<Ram, dma_vmm::viommu::Endpoint>>>();
}
