//! The flow of the README's "Using it in a VMM": config space, raw request buffers, devices
//! reading and writing by IOVA, bounce buffers into guest RAM, the debug report.
#![cfg(all(not(loom), feature = "vm-memory"))]

use dma_vmm::report::Report;
use dma_vmm::viommu::{wire, ReservedKind, ReservedRegion, Status, Viommu, ViommuConfig};
use dma_vmm::GuestBytes;
use io_pgtable::Prot;
use std::sync::Arc;
use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, Swiotlb};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PROBE_SIZE: usize = 512;

fn le(fields: &[&[u8]]) -> Vec<u8> {
    fields.concat()
}

#[test]
fn a_guest_session_in_wire_format() {
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let msi = ReservedRegion {
        kind: ReservedKind::Msi,
        start: 0xfee0_0000,
        end: 0xfeef_ffff,
    };
    let viommu = Arc::new(
        Viommu::new(ViommuConfig {
            reserved: vec![msi],
            probe_size: PROBE_SIZE as u32,
            ..ViommuConfig::default()
        })
        .unwrap(),
    );
    let net = viommu.add_endpoint(0x08, vec![]).unwrap();
    let cfg = viommu.config_space();
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        viommu.page_size_mask()
    );

    // The guest probes, attaches and maps with raw requests.
    let probe = le(&[&[wire::T_PROBE, 0, 0, 0], &8u32.to_le_bytes(), &[0; 64]]);
    let reply = viommu.handle_bytes(&probe, PROBE_SIZE + 4);
    assert_eq!(reply[PROBE_SIZE], Status::Ok.code());
    assert_eq!(
        u64::from_le_bytes(reply[8..16].try_into().unwrap()),
        0xfee0_0000
    );
    let attach = le(&[
        &[wire::T_ATTACH, 0, 0, 0],
        &1u32.to_le_bytes(),
        &8u32.to_le_bytes(),
        &0u32.to_le_bytes(),
        &[0; 4],
    ]);
    assert_eq!(viommu.handle_bytes(&attach, 4), vec![0, 0, 0, 0]);
    let map = |start: u64, gpa: u64, flags: u32| {
        le(&[
            &[wire::T_MAP, 0, 0, 0],
            &1u32.to_le_bytes(),
            &start.to_le_bytes(),
            &(start + 0xfff).to_le_bytes(),
            &gpa.to_le_bytes(),
            &flags.to_le_bytes(),
        ])
    };
    assert_eq!(
        viommu.handle_bytes(&map(0x10_0000, 0x4000, 3), 4)[0],
        Status::Ok.code()
    );
    assert_eq!(
        viommu.handle_bytes(&map(0x10_0000, 0x5000, 3), 4)[0],
        Status::Inval.code()
    );
    assert_eq!(
        viommu.handle_bytes(&map(0x20_0000, 0x6000, 1), 4)[0],
        Status::Ok.code()
    );

    // The device reads the guest's request and writes its reply by IOVA.
    let net_mem = net.iova_memory(ram.clone());
    ram.write_obj(0x1234_u64, GuestAddress(0x4000)).unwrap();
    let hdr: u64 = net_mem.read_obj(GuestAddress(0x10_0000)).unwrap();
    net_mem.write_obj(hdr + 1, GuestAddress(0x10_0008)).unwrap();
    assert_eq!(ram.read_obj::<u64>(GuestAddress(0x4008)).unwrap(), 0x1235);
    assert!(
        net_mem.write_obj(1u8, GuestAddress(0x20_0000)).is_err(),
        "read-only"
    );
    assert!(
        net_mem.read_obj::<u32>(GuestAddress(0xfee0_0000)).is_err(),
        "MSI window"
    );
    assert_eq!(
        net.access(0x10_0000, 16, Prot::READ, |s| s.len()).unwrap(),
        1
    );

    // Bounce buffers over guest RAM.
    let bounce = Swiotlb::new(Config::tiny(64, 2, 16), GuestBytes::new(ram.clone())).unwrap();
    let dev = bounce.device(DeviceConfig::default());
    let dma = bounce
        .map(&dev, 0x4000, 16, Direction::FromDevice, MapAttrs::default())
        .unwrap();
    bounce.write_bounce(&dev, dma, &[7; 16]).unwrap();
    bounce
        .unmap(&dev, dma, 16, Direction::FromDevice, MapAttrs::default())
        .unwrap();
    assert_eq!(
        ram.read_obj::<u64>(GuestAddress(0x4000)).unwrap(),
        0x0707_0707_0707_0707
    );

    // UNMAP in wire format, then the device faults.
    let unmap = le(&[
        &[wire::T_UNMAP, 0, 0, 0],
        &1u32.to_le_bytes(),
        &0u64.to_le_bytes(),
        &u64::MAX.to_le_bytes(),
        &[0; 4],
    ]);
    assert_eq!(viommu.handle_bytes(&unmap, 4), vec![0, 0, 0, 0]);
    assert!(net_mem.read_obj::<u64>(GuestAddress(0x10_0000)).is_err());

    let report = Report::default().with_viommu(&viommu).with_swiotlb(&bounce);
    let text = report.to_string();
    assert!(
        text.contains("domain 1 (translated), endpoints [8], 0 mappings"),
        "{text}"
    );
    assert!(
        text.contains("swiotlb:\n  io_tlb_nslabs: 64\n  io_tlb_used: 0\n"),
        "{text}"
    );
}
