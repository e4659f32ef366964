//! The virtio-iommu device model: request rules, and device round trips through real guest
//! memory.
#![cfg(all(not(loom), feature = "vm-memory"))]

mod common;

use common::{attach, map, unmap};
use dma_vmm::translate::Fault;
use dma_vmm::viommu::*;
use io_pgtable::Prot;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Ram = GuestMemoryMmap<()>;

fn ram() -> Ram {
    Ram::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

const RW: u32 = MAP_F_READ | MAP_F_WRITE;

fn status(v: &Viommu, r: Request) -> Status {
    v.handle(r).status()
}

/// Send each request in turn, expecting its status (`why` names the rule).
fn replies<const N: usize>(v: &Viommu, rows: [(Request, Status, &str); N]) {
    for (r, want, why) in rows {
        let shown = format!("{r:?}");
        assert_eq!(status(v, r), want, "{why}: {shown}");
    }
}

#[test]
fn device_round_trip_mapped_unmapped_and_read_only() {
    let ram = ram();
    let v = Viommu::new(ViommuConfig::default()).unwrap();
    let dev = v.add_endpoint(1, vec![]).unwrap();
    assert_eq!(status(&v, attach(5, 1)), Status::Ok);
    assert_eq!(status(&v, map(5, 0x10000, 0x11fff, 0x4000, RW)), Status::Ok);
    assert_eq!(
        status(&v, map(5, 0x20000, 0x20fff, 0x8000, MAP_F_READ)),
        Status::Ok
    );
    let io = dev.iova_memory(ram.clone());

    // Mapped: guest writes, device reads through the IOMMU; device writes, guest reads.
    ram.write_slice(b"request from the guest", GuestAddress(0x4100))
        .unwrap();
    let mut seen = [0u8; 22];
    io.read_slice(&mut seen, GuestAddress(0x10100)).unwrap();
    assert_eq!(&seen, b"request from the guest");
    io.write_slice(b"device reply", GuestAddress(0x10ff8))
        .unwrap(); // crosses a page
    let mut back = [0u8; 12];
    ram.read_slice(&mut back, GuestAddress(0x4ff8)).unwrap();
    assert_eq!(&back, b"device reply");

    // Unmapped: both directions fail and guest memory is untouched.
    assert!(io.read_slice(&mut seen, GuestAddress(0x30000)).is_err());
    assert!(io.write_slice(&[1; 8], GuestAddress(0x30000)).is_err());

    // Read-only: the device reads the guest's bytes, its write fails and changes nothing.
    ram.write_slice(b"ro data!", GuestAddress(0x8000)).unwrap();
    let mut ro = [0u8; 8];
    io.read_slice(&mut ro, GuestAddress(0x20000)).unwrap();
    assert_eq!(&ro, b"ro data!");
    assert!(io.write_slice(b"clobber!", GuestAddress(0x20000)).is_err());
    ram.read_slice(&mut ro, GuestAddress(0x8000)).unwrap();
    assert_eq!(&ro, b"ro data!");
    assert_eq!(
        dev.access(0x20000, 8, Prot::WRITE, |_| ()).unwrap_err(),
        Fault::Denied {
            iova: 0x20000,
            access: Prot::WRITE,
            prot: Prot::READ | Prot::CACHE,
        }
    );

    // After UNMAP completes the device can no longer reach the page.
    assert_eq!(status(&v, unmap(5, 0x10000, 0x11fff)), Status::Ok);
    assert!(io.read_slice(&mut seen, GuestAddress(0x10100)).is_err());
    // After DETACH, nothing translates.
    assert_eq!(
        status(
            &v,
            Request::Detach {
                domain: 5,
                endpoint: 1
            }
        ),
        Status::Ok
    );
    assert_eq!(
        dev.access(0x20000, 8, Prot::READ, |_| ()).unwrap_err(),
        Fault::Detached
    );
    assert_eq!(dev.domain(), None);
}

#[test]
fn attach_moves_endpoints_and_domains_die_with_their_last_endpoint() {
    let v = Viommu::new(ViommuConfig::default()).unwrap();
    let a = v.add_endpoint(1, vec![]).unwrap();
    let _b = v.add_endpoint(2, vec![]).unwrap();
    assert_eq!(status(&v, attach(1, 1)), Status::Ok);
    assert_eq!(status(&v, attach(1, 2)), Status::Ok);
    assert_eq!(status(&v, attach(1, 2)), Status::Ok); // again: no change
    assert_eq!(v.domain_endpoints(1), Some(vec![1, 2]));
    assert_eq!(status(&v, map(1, 0, 0xfff, 0x1000, RW)), Status::Ok);
    // Moving endpoint 1 to domain 2: implicit detach from domain 1.
    assert_eq!(status(&v, attach(2, 1)), Status::Ok);
    assert_eq!(a.domain(), Some(2));
    assert_eq!(v.domain_endpoints(1), Some(vec![2]));
    assert!(
        a.access(0, 8, Prot::READ, |_| ()).is_err(),
        "domain 2 has no mappings"
    );
    // The last endpoint leaves domain 1: it disappears with its mappings.
    assert_eq!(
        status(
            &v,
            Request::Detach {
                domain: 1,
                endpoint: 2
            }
        ),
        Status::Ok
    );
    assert_eq!(v.domain(1).map(|d| d.id()), None);
    assert_eq!(status(&v, map(1, 0, 0xfff, 0x1000, RW)), Status::NoEnt);
    assert_eq!(v.domain_ids(), vec![2]);
}

#[test]
fn requests_follow_the_specification_and_errors_change_nothing() {
    let cfg = ViommuConfig {
        input_range: (0, (1 << 32) - 1),
        domain_range: (1, 100),
        max_mappings_per_domain: 3,
        max_domains: 2,
        bypass_config: false,
        ..ViommuConfig::default()
    };
    let v = Viommu::new(cfg).unwrap();
    v.add_endpoint(9, vec![]).unwrap();
    v.add_endpoint(8, vec![]).unwrap();
    v.add_endpoint(7, vec![]).unwrap();
    let attach_flags = |flags| Request::Attach {
        domain: 1,
        endpoint: 9,
        flags,
    };
    let detach = |domain, endpoint| Request::Detach { domain, endpoint };
    let mmio = RW | MAP_F_MMIO;
    #[rustfmt::skip]
    let rows = [
        (attach(1, 42), Status::NoEnt, "unknown endpoint"),
        (attach(0, 9), Status::Range, "domain below domain_range"),
        (attach(101, 9), Status::Range, "domain above domain_range"),
        (attach_flags(1 << 5), Status::Inval, "unknown flag"),
        (attach_flags(ATTACH_F_BYPASS), Status::Inval, "bypass not offered"),
        (attach(1, 9), Status::Ok, "attach"),
        (attach(2, 8), Status::Ok, "attach"),
        (attach(3, 7), Status::NoMem, "max_domains"),
        (map(1, 0x1000, 0x1fff, 0x1000, 1 << 7), Status::Inval, "unknown flag"),
        (map(4, 0x1000, 0x1fff, 0x1000, RW), Status::NoEnt, "unknown domain"),
        (map(1, 0x1000, 0x1fff, 0x1800, RW), Status::Range, "unaligned phys_start"),
        (map(1, 0x1800, 0x1fff, 0x1000, RW), Status::Range, "unaligned virt_start"),
        (map(1, 0x1000, 0x17ff, 0x1000, RW), Status::Range, "unaligned virt_end"),
        (map(1, 0x2000, 0x1fff, 0x1000, RW), Status::Inval, "end before start"),
        (map(1, 1 << 32, (1 << 32) + 0xfff, 0x1000, RW), Status::Range, "beyond input_range"),
        (map(1, 0x1000, 0x1fff, 0x1000, 0), Status::Unsupp, "no access flag"),
        (map(1, 0x1000, 0x2fff, 0x1000, RW), Status::Ok, "map"),
        (map(1, 0x2000, 0x2fff, 0x9000, RW), Status::Inval, "overlaps the end"),
        (map(1, 0x0000, 0x1fff, 0x9000, RW), Status::Inval, "overlaps the start"),
        (map(1, 0x3000, 0x3fff, 0x9000, mmio), Status::Ok, "MMIO map"),
        (map(1, 0x4000, 0x4fff, 0x9000, MAP_F_WRITE), Status::Ok, "write-only map"),
        (map(1, 0x8000, 0x8fff, 0x9000, RW), Status::NoMem, "max_mappings_per_domain"),
        (unmap(4, 0, 0xffff), Status::NoEnt, "unknown domain"),
        (unmap(1, 0x2000, 0x1000), Status::Inval, "end before start"),
        (unmap(1, 0x1000, 0x1fff), Status::Range, "would split a mapping"),
        (unmap(1, 0x2000, 0x3fff), Status::Range, "would split the first mapping"),
    ];
    replies(&v, rows);
    assert_eq!(
        v.mappings(1).unwrap().len(),
        3,
        "refused unmaps remove nothing"
    );
    #[rustfmt::skip]
    let rows = [
        (unmap(1, 0x10000, 0x1ffff), Status::Ok, "nothing there"),
        (unmap(1, 0x800, 0x3fff), Status::Ok, "two mappings, whole"),
    ];
    replies(&v, rows);
    let left = v.mappings(1).unwrap();
    assert_eq!(
        left,
        vec![Mapping {
            virt_start: 0x4000,
            virt_end: 0x4fff,
            phys_start: 0x9000,
            flags: MAP_F_WRITE
        }]
    );
    let pt = v.domain(1).unwrap();
    assert!(pt.page_table().unwrap().iova_to_phys(0x1000).is_none());
    #[rustfmt::skip]
    let rows = [
        (detach(1, 8), Status::Inval, "endpoint attached elsewhere"),
        (detach(1, 77), Status::NoEnt, "unknown endpoint"),
        (detach(55, 9), Status::Inval, "not attached to that (unknown) domain"),
        (Request::Probe { endpoint: 77 }, Status::NoEnt, "unknown endpoint"),
        // Everything still works after the errors.
        (map(1, 0x1000, 0x1fff, 0x1000, RW), Status::Ok, "map after the errors"),
        (unmap(1, 0, u64::MAX), Status::Ok, "unmap after the errors"),
    ];
    replies(&v, rows);
    assert!(v.mappings(1).unwrap().is_empty());
    assert_eq!(Status::Range.code(), 5);
    assert_eq!(Status::Range.to_string(), "VIRTIO_IOMMU_S_RANGE");
}

#[test]
fn probe_reports_page_sizes_and_reserved_regions_which_fault() {
    let msi = ReservedRegion {
        kind: ReservedKind::Msi,
        start: 0xfee0_0000,
        end: 0xfeef_ffff,
    };
    let hole = ReservedRegion {
        kind: ReservedKind::Reserved,
        start: 0x10_0000,
        end: 0x1f_ffff,
    };
    let v = Viommu::new(ViommuConfig {
        reserved: vec![msi],
        ..ViommuConfig::default()
    })
    .unwrap();
    let dev = v.add_endpoint(4, vec![hole]).unwrap();
    match v.handle(Request::Probe { endpoint: 4 }) {
        Reply::Probe(p) => {
            assert_eq!(p.page_size_mask, 0x1000 | 0x20_0000 | 0x4000_0000);
            assert_eq!(p.reserved, vec![hole, msi]);
        }
        other => panic!("{other:?}"),
    }
    // A bypass domain translates everything by identity, except the reserved regions.
    assert_eq!(
        status(
            &v,
            Request::Attach {
                domain: 3,
                endpoint: 4,
                flags: ATTACH_F_BYPASS
            }
        ),
        Status::Ok
    );
    assert_eq!(
        dev.access(0x5000, 16, Prot::WRITE, |s| s[0].paddr).unwrap(),
        0x5000
    );
    assert_eq!(
        dev.access(0x10_0010, 4, Prot::READ, |_| ()).unwrap_err(),
        Fault::Reserved { iova: 0x10_0010 }
    );
    // A range running into a reserved region faults at its start.
    assert_eq!(
        dev.access(0xf_fff0, 32, Prot::READ, |_| ()).unwrap_err(),
        Fault::Reserved { iova: 0x10_0000 }
    );
    // MAP on a bypass domain is invalid; a translated ATTACH to it too.
    assert_eq!(status(&v, map(3, 0, 0xfff, 0, RW)), Status::Inval);
    assert_eq!(status(&v, unmap(3, 0, 0xfff)), Status::Inval);
    v.add_endpoint(5, vec![]).unwrap();
    assert_eq!(status(&v, attach(3, 5)), Status::Inval);
    // Setup errors.
    assert_eq!(
        v.add_endpoint(4, vec![]).unwrap_err(),
        ViommuError::EndpointExists(4)
    );
    let bad = ReservedRegion {
        kind: ReservedKind::Reserved,
        start: 2,
        end: 1,
    };
    assert!(v.add_endpoint(6, vec![bad]).is_err());
    assert!(Viommu::new(ViommuConfig {
        input_range: (0, 1 << 50),
        ..ViommuConfig::default()
    })
    .is_err());
    assert!(Viommu::new(ViommuConfig {
        domain_range: (2, 1),
        ..ViommuConfig::default()
    })
    .is_err());
}

#[test]
fn a_batch_replies_in_order_after_one_grace_period() {
    let v = Viommu::new(ViommuConfig::default()).unwrap();
    let dev = v.add_endpoint(1, vec![]).unwrap();
    let replies = v.handle_batch([
        attach(1, 1),
        map(1, 0, 0x1fff, 0x10000, RW),
        unmap(1, 0, 0xfff),
        unmap(1, 0, 0x1fff),
        map(1, 0, 0xfff, 0x20000, MAP_F_READ),
    ]);
    let st: Vec<Status> = replies.iter().map(Reply::status).collect();
    assert_eq!(
        st,
        vec![
            Status::Ok,
            Status::Ok,
            Status::Range,
            Status::Ok,
            Status::Ok
        ]
    );
    assert_eq!(
        dev.access(0x10, 1, Prot::READ, |s| s[0].paddr).unwrap(),
        0x20010
    );
}

#[test]
fn device_reset_discards_the_old_drivers_fault_reports() {
    let v = Viommu::new(ViommuConfig::default()).unwrap();
    let dev = v.add_endpoint(1, vec![]).unwrap();
    assert_eq!(status(&v, attach(1, 1)), Status::Ok);
    for iova in [0x1000, 0x2000] {
        assert!(dev.access(iova, 8, Prot::READ, |_| ()).is_err());
    }
    v.reset();
    assert_eq!(
        v.fault_event(64),
        None,
        "a report of the reset driver's domain"
    );
    assert_eq!(v.faults_dropped(), 2);
    // Faults after the reset are reported again: attached nowhere now, no address.
    assert!(dev.access(0x3000, 8, Prot::READ, |_| ()).is_err());
    let event = v.fault_event(64).expect("a fault after the reset");
    assert_eq!(event[0], FaultReason::Domain as u8);
    assert_eq!(v.fault_event(64), None);
}
