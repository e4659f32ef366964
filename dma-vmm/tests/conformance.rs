//! Conformance of the virtio-iommu device model to the device-normative statements of the
//! specification (virtio 1.2/1.3, "Device Types / IOMMU Device"), as one table: every MUST,
//! SHOULD and MAY of the device sections (feature bits, configuration layout, initialization,
//! requests, ATTACH, DETACH, MAP, UNMAP, PROBE, RESV_MEM, fault reporting), each with the
//! section it comes from, the outcome the model gives, the model's choice where the
//! specification leaves one, and a check that exercises it, through the wire format wherever
//! the request has one.
#![cfg(not(loom))]

use dma_vmm::translate::{Fault, Translate};
use dma_vmm::viommu::wire::{self, T_ATTACH, T_DETACH, T_MAP, T_PROBE, T_UNMAP};
use dma_vmm::viommu::*;
use io_pgtable::Prot;

/// How binding a statement is.
#[derive(Debug, Clone, Copy)]
enum Level {
    Must,
    MustNot,
    Should,
    ShouldNot,
    May,
    /// A normative sentence of the section's body (no keyword) the device relies on.
    Text,
}

/// One device requirement and the check that shows the model meets it.
struct Row {
    section: &'static str,
    level: Level,
    statement: &'static str,
    /// What the model does: the status it sets, or the behaviour.
    expect: &'static str,
    /// Where the specification leaves a choice (MAY, or a SHOULD the model replaces with a
    /// documented alternative), the one the model makes.
    choice: Option<&'static str>,
    check: fn() -> Result<(), String>,
}

const FEATURES: &str = "Feature bits";
const CONFIG: &str = "Device configuration layout";
const INIT: &str = "Device initialization";
const OPS: &str = "Device operations";
const ATTACH: &str = "Device operations / ATTACH request";
const DETACH: &str = "Device operations / DETACH request";
const MAP: &str = "Device operations / MAP request";
const UNMAP: &str = "Device operations / UNMAP request";
const PROBE: &str = "Device operations / PROBE request";
const RESV_MEM: &str = "Device operations / PROBE properties / RESVMEM";
const FAULTS: &str = "Device operations / Fault reporting";

const PROBE_SIZE: usize = 96;
const PAGE: u64 = 0x1000;
const RW: u32 = MAP_F_READ | MAP_F_WRITE;
const MSI: ReservedRegion = ReservedRegion {
    kind: ReservedKind::Msi,
    start: 0xfee0_0000,
    end: 0xfeef_ffff,
};

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

macro_rules! expect_status {
    ($v:expr, $req:expr, $status:expr) => {{
        let got = send(&$v, &$req);
        ensure!(
            got == Some($status.code()),
            "{}: status {:?}, expected {}",
            stringify!($req),
            got,
            $status
        );
    }};
}

fn config() -> ViommuConfig {
    ViommuConfig {
        probe_size: PROBE_SIZE as u32,
        reserved: vec![MSI],
        ..ViommuConfig::default()
    }
}

/// A device with endpoints 1, 2 and 3 (3 with its own reserved hole at 64 KiB).
fn device_with(config: ViommuConfig) -> Viommu {
    let v = Viommu::new(config).expect("valid config");
    v.add_endpoint(1, vec![]).unwrap();
    v.add_endpoint(2, vec![]).unwrap();
    v.add_endpoint(3, vec![hole()]).unwrap();
    v
}

fn device() -> Viommu {
    device_with(config())
}

fn hole() -> ReservedRegion {
    ReservedRegion {
        kind: ReservedKind::Reserved,
        start: 0x1_0000,
        end: 0x1_ffff,
    }
}

fn request(kind: u8, body: &[&[u8]]) -> Vec<u8> {
    [&[kind, 0, 0, 0][..], &body.concat()].concat()
}

fn attach_with(domain: u32, endpoint: u32, flags: u32, reserved: [u8; 4]) -> Vec<u8> {
    let body: [&[u8]; 4] = [
        &domain.to_le_bytes(),
        &endpoint.to_le_bytes(),
        &flags.to_le_bytes(),
        &reserved,
    ];
    request(T_ATTACH, &body)
}

fn attach(domain: u32, endpoint: u32) -> Vec<u8> {
    attach_with(domain, endpoint, 0, [0; 4])
}

fn detach_with(domain: u32, endpoint: u32, reserved: [u8; 8]) -> Vec<u8> {
    request(
        T_DETACH,
        &[&domain.to_le_bytes(), &endpoint.to_le_bytes(), &reserved],
    )
}

fn detach(domain: u32, endpoint: u32) -> Vec<u8> {
    detach_with(domain, endpoint, [0; 8])
}

fn map(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Vec<u8> {
    let body: [&[u8]; 5] = [
        &domain.to_le_bytes(),
        &start.to_le_bytes(),
        &end.to_le_bytes(),
        &phys.to_le_bytes(),
        &flags.to_le_bytes(),
    ];
    request(T_MAP, &body)
}

fn unmap_with(domain: u32, start: u64, end: u64, reserved: [u8; 4]) -> Vec<u8> {
    let body: [&[u8]; 4] = [
        &domain.to_le_bytes(),
        &start.to_le_bytes(),
        &end.to_le_bytes(),
        &reserved,
    ];
    request(T_UNMAP, &body)
}

fn unmap(domain: u32, start: u64, end: u64) -> Vec<u8> {
    unmap_with(domain, start, end, [0; 4])
}

fn probe_with(endpoint: u32, reserved: [u8; 64]) -> Vec<u8> {
    request(T_PROBE, &[&endpoint.to_le_bytes(), &reserved])
}

fn probe(endpoint: u32) -> Vec<u8> {
    probe_with(endpoint, [0; 64])
}

/// The writable part the driver gives each request type (the layouts of the spec).
fn writable_len(req: &[u8]) -> usize {
    match req.first() {
        Some(&T_PROBE) => PROBE_SIZE + wire::TAIL_SIZE,
        _ => wire::TAIL_SIZE,
    }
}

/// Send a request in wire format; the status the driver reads in the tail (at the end of
/// the writable part, where Linux's driver looks), or `None` if the device wrote nothing.
/// A reply of any other length fails the check.
fn send(v: &Viommu, req: &[u8]) -> Option<u8> {
    let len = writable_len(req);
    let reply = v.handle_bytes(req, len);
    match reply.len() {
        0 => None,
        n => {
            assert_eq!(n, len, "used length of {req:?}");
            Some(reply[n - wire::TAIL_SIZE])
        }
    }
}

fn mapped(v: &Viommu, domain: u32) -> usize {
    v.mappings(domain).map_or(0, |m| m.len())
}

fn reads(ep: &Endpoint, iova: u64) -> Result<u64, Fault> {
    ep.access(iova, 8, Prot::READ, |s| s[0].paddr)
}

fn writes(ep: &Endpoint, iova: u64) -> Result<u64, Fault> {
    ep.access(iova, 8, Prot::WRITE, |s| s[0].paddr)
}

fn endpoint(v: &Viommu, id: u32) -> Endpoint {
    v.endpoint(id).expect("declared endpoint")
}

// ---- Feature bits -------------------------------------------------------------------------

fn offers_map_unmap() -> Result<(), String> {
    let v = device();
    ensure!(
        v.device_features() & F_MAP_UNMAP != 0,
        "MAP_UNMAP not offered"
    );
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0, RW), Status::Ok);
    Ok(())
}

fn never_offers_legacy_bypass() -> Result<(), String> {
    for bypass_config in [false, true] {
        let v = device_with(ViommuConfig {
            bypass_config,
            ..config()
        });
        let f = v.device_features();
        ensure!(f & F_BYPASS == 0, "F_BYPASS offered");
        ensure!(
            (f & F_BYPASS_CONFIG != 0) == bypass_config,
            "BYPASS_CONFIG offered = {}",
            f & F_BYPASS_CONFIG != 0
        );
    }
    Ok(())
}

fn features_match_behaviour() -> Result<(), String> {
    let v = device();
    let offered = v.device_features();
    for f in [F_INPUT_RANGE, F_DOMAIN_RANGE, F_PROBE, F_MMIO] {
        ensure!(offered & f != 0, "feature {f:#x} not offered");
    }
    // The driver's choice is recorded, restricted to the offered bits.
    ensure!(
        v.set_driver_features(u64::MAX) == offered,
        "unoffered bits accepted"
    );
    // Without MAP_UNMAP negotiated, MAP and UNMAP are unsupported.
    v.set_driver_features(offered & !F_MAP_UNMAP);
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0, RW), Status::Unsupp);
    expect_status!(v, unmap(1, 0, PAGE - 1), Status::Unsupp);
    Ok(())
}

// ---- Device configuration layout ----------------------------------------------------------

fn page_size_mask_has_a_bit_and_is_the_granule() -> Result<(), String> {
    let v = device();
    let cs = v.config_space();
    let mask = u64::from_le_bytes(cs[0..8].try_into().unwrap());
    ensure!(
        mask != 0 && mask == v.page_size_mask(),
        "page_size_mask {mask:#x}"
    );
    let granule = 1u64 << mask.trailing_zeros();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, granule, 2 * granule - 1, 0, RW), Status::Ok);
    expect_status!(
        v,
        map(1, 4 * granule, 4 * granule + granule / 2 - 1, 0, RW),
        Status::Range
    );
    Ok(())
}

fn ranges_and_probe_size_are_what_the_device_enforces() -> Result<(), String> {
    let v = device_with(ViommuConfig {
        input_range: (0x10_0000, 0xffff_ffff),
        domain_range: (1, 9),
        ..config()
    });
    let cs = v.config_space();
    let le64 = |r: std::ops::Range<usize>| u64::from_le_bytes(cs[r].try_into().unwrap());
    let le32 = |r: std::ops::Range<usize>| u32::from_le_bytes(cs[r].try_into().unwrap());
    ensure!(
        (le64(8..16), le64(16..24)) == (0x10_0000, 0xffff_ffff),
        "input_range"
    );
    ensure!((le32(24..28), le32(28..32)) == (1, 9), "domain_range");
    ensure!(le32(32..36) as usize == PROBE_SIZE, "probe_size");
    expect_status!(v, attach(0, 1), Status::Range);
    expect_status!(v, attach(10, 1), Status::Range);
    expect_status!(v, attach(9, 1), Status::Ok);
    expect_status!(v, map(9, 0xf_f000, 0x10_0fff, 0, RW), Status::Range);
    expect_status!(v, map(9, 0xffff_f000, 0x1_0000_0fff, 0, RW), Status::Range);
    expect_status!(v, map(9, 0x10_0000, 0x10_0fff, 0, RW), Status::Ok);
    let reply = v.handle_bytes(&probe(1), PROBE_SIZE + 4);
    ensure!(reply.len() == PROBE_SIZE + 4, "PROBE reply {}", reply.len());
    Ok(())
}

fn page_size_mask_may_hold_larger_sizes() -> Result<(), String> {
    let v = device();
    let mask = v.page_size_mask();
    ensure!(
        mask == PAGE | 0x20_0000 | 0x4000_0000,
        "page_size_mask {mask:#x}"
    );
    // The larger sizes are not just advertised: a MAP aligned on one is mapped with it.
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0x20_0000, 0x3f_ffff, 0x40_0000, RW), Status::Ok);
    expect_status!(v, map(1, 0x40_1000, 0x40_1fff, 0x9000, RW), Status::Ok);
    let domain = v.domain(1).ok_or("no domain 1")?;
    let leaf = |iova| domain.lookup(iova).map(|l| l.len);
    ensure!(
        leaf(0x20_0000) == Ok(0x20_0000),
        "2 MiB mapping: leaf {:?}",
        leaf(0x20_0000)
    );
    ensure!(
        leaf(0x40_1000) == Ok(PAGE),
        "4 KiB mapping: leaf {:?}",
        leaf(0x40_1000)
    );
    Ok(())
}

fn bypass_may_start_at_one() -> Result<(), String> {
    for initial_bypass in [false, true] {
        let v = device_with(ViommuConfig {
            initial_bypass,
            ..config()
        });
        ensure!(
            v.config_space()[wire::CONFIG_BYPASS_OFFSET] == u8::from(initial_bypass),
            "bypass byte"
        );
        let got = reads(&endpoint(&v, 1), 0x4000);
        let want = if initial_bypass {
            Ok(0x4000)
        } else {
            Err(Fault::Detached)
        };
        ensure!(got == want, "unattached access {got:?}, expected {want:?}");
    }
    Ok(())
}

fn bypass_survives_device_reset_not_system_reset() -> Result<(), String> {
    let v = device();
    ensure!(v.write_config(wire::CONFIG_BYPASS_OFFSET, &[1]), "write");
    v.reset();
    ensure!(v.bypass(), "device reset changed bypass");
    ensure!(
        reads(&endpoint(&v, 2), 0x4000) == Ok(0x4000),
        "bypass not in force after reset"
    );
    // A system reset is a new device: the initial value again.
    let fresh = device();
    ensure!(!fresh.bypass(), "system reset kept bypass");
    Ok(())
}

fn bypass_is_zero_or_one_and_the_only_writable_field() -> Result<(), String> {
    let v = device();
    let before = v.config_space();
    for value in [2u8, 0x80, 0xff] {
        ensure!(
            !v.write_config(wire::CONFIG_BYPASS_OFFSET, &[value]),
            "{value} accepted"
        );
    }
    ensure!(!v.write_config(0, &[0; 8]), "page_size_mask writable");
    ensure!(!v.write_config(32, &[1, 0, 0, 0]), "probe_size writable");
    ensure!(
        !v.write_config(wire::CONFIG_BYPASS_OFFSET, &[1, 0]),
        "two-byte write"
    );
    ensure!(v.config_space() == before, "config space changed");
    // Only with BYPASS_CONFIG negotiated.
    v.set_driver_features(v.device_features() & !F_BYPASS_CONFIG);
    ensure!(
        !v.write_config(wire::CONFIG_BYPASS_OFFSET, &[1]),
        "written without the feature"
    );
    v.set_driver_features(v.device_features());
    ensure!(
        v.write_config(wire::CONFIG_BYPASS_OFFSET, &[1]),
        "refused with the feature"
    );
    ensure!(v.config_space()[wire::CONFIG_BYPASS_OFFSET] == 1, "not 1");
    Ok(())
}

fn writing_bypass_switches_unattached_endpoints() -> Result<(), String> {
    let v = device();
    let free = endpoint(&v, 2);
    let bound = endpoint(&v, 1);
    expect_status!(v, attach(1, 1), Status::Ok);
    ensure!(reads(&free, 0x4000) == Err(Fault::Detached), "blocked");
    ensure!(v.write_config(wire::CONFIG_BYPASS_OFFSET, &[1]), "write 1");
    ensure!(
        reads(&free, 0x4000) == Ok(0x4000) && free.in_bypass_mode(),
        "not identity"
    );
    ensure!(
        reads(&bound, 0x4000).is_err(),
        "an attached endpoint was put in bypass"
    );
    ensure!(v.write_config(wire::CONFIG_BYPASS_OFFSET, &[0]), "write 0");
    ensure!(
        reads(&free, 0x4000) == Err(Fault::Detached),
        "still identity"
    );
    Ok(())
}

fn domain_range_is_inclusive_at_both_ends() -> Result<(), String> {
    // The default range is every u32: both ends are usable ids.
    let v = device();
    expect_status!(v, attach(0, 1), Status::Ok);
    expect_status!(v, attach(u32::MAX, 2), Status::Ok);
    expect_status!(v, map(u32::MAX, 0, PAGE - 1, 0x8000, RW), Status::Ok);
    ensure!(reads(&endpoint(&v, 2), 0) == Ok(0x8000), "domain u32::MAX");
    expect_status!(v, detach(u32::MAX, 2), Status::Ok);
    expect_status!(v, detach(0, 1), Status::Ok);
    let v = device_with(ViommuConfig {
        domain_range: (4, 8),
        ..config()
    });
    expect_status!(v, attach(8, 1), Status::Ok);
    expect_status!(v, attach(4, 2), Status::Ok);
    expect_status!(v, attach(9, 3), Status::Range);
    expect_status!(v, attach(3, 3), Status::Range);
    ensure!(v.domain_ids() == [4, 8], "domains {:?}", v.domain_ids());
    Ok(())
}

// ---- Device initialization ----------------------------------------------------------------

fn reset_detaches_every_endpoint() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0x5000, RW), Status::Ok);
    v.set_driver_features(0);
    v.reset();
    let ep = endpoint(&v, 1);
    ensure!(ep.domain().is_none(), "still attached");
    ensure!(v.domain_ids().is_empty(), "domains left");
    ensure!(
        reads(&ep, 0) == Err(Fault::Detached),
        "old mapping reachable"
    );
    ensure!(
        v.driver_features() == v.device_features(),
        "features not reset"
    );
    Ok(())
}

// ---- Device operations --------------------------------------------------------------------

fn ok_on_success() -> Result<(), String> {
    let v = device();
    expect_status!(v, probe(1), Status::Ok);
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0, RW), Status::Ok);
    expect_status!(v, unmap(1, 0, PAGE - 1), Status::Ok);
    expect_status!(v, detach(1, 1), Status::Ok);
    Ok(())
}

fn unknown_type_is_not_written() -> Result<(), String> {
    let v = device();
    for kind in [0u8, 6, 0x7f, 0xff] {
        let req = request(kind, &[&[0; 64]]);
        ensure!(v.handle_bytes(&req, 4).is_empty(), "type {kind} written");
    }
    ensure!(v.handle_bytes(&[], 4).is_empty(), "empty request written");
    Ok(())
}

fn head_reserved_ignored_tail_reserved_zero() -> Result<(), String> {
    let v = device();
    let mut req = attach(1, 1);
    req[1..4].copy_from_slice(&[0xff, 0x12, 0x80]);
    ensure!(v.handle_bytes(&req, 4) == [0, 0, 0, 0], "attach reply");
    let mut req = map(1, 0, PAGE, 0, RW); // unaligned end: an error tail
    req[1] = 0xaa;
    ensure!(
        v.handle_bytes(&req, 4) == [Status::Range.code(), 0, 0, 0],
        "map reply"
    );
    let reply = v.handle_bytes(&probe(9), PROBE_SIZE + 4);
    ensure!(
        reply[PROBE_SIZE..] == [Status::NoEnt.code(), 0, 0, 0],
        "probe tail {:?}",
        &reply[PROBE_SIZE..]
    );
    Ok(())
}

fn unattached_endpoints_reach_nothing_unless_bypassed() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 1);
    for iova in [0, 0x4000, 1 << 40] {
        ensure!(reads(&ep, iova) == Err(Fault::Detached), "read {iova:#x}");
        ensure!(writes(&ep, iova) == Err(Fault::Detached), "write {iova:#x}");
    }
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, detach(1, 1), Status::Ok);
    ensure!(reads(&ep, 0) == Err(Fault::Detached), "after DETACH");
    Ok(())
}

fn unparsable_requests_are_returned_unwritten() -> Result<(), String> {
    let v = device();
    for req in [attach(1, 1), map(1, 0, PAGE - 1, 0, RW), probe(1)] {
        for writable in 0..wire::TAIL_SIZE {
            ensure!(
                v.handle_bytes(&req, writable).is_empty(),
                "written with {writable} writable bytes"
            );
        }
    }
    ensure!(
        v.domain_ids().is_empty(),
        "an unreplied request took effect"
    );
    // A readable part too short for its type, with a tail: INVAL, nothing done.
    let short = attach(1, 1);
    ensure!(
        v.handle_bytes(&short[..12], 4) == [Status::Inval.code(), 0, 0, 0],
        "short ATTACH"
    );
    ensure!(v.domain_ids().is_empty(), "short ATTACH attached");
    Ok(())
}

fn request_parts_beyond_their_layout() -> Result<(), String> {
    let v = device();
    // Readable bytes past the layout are ignored.
    let long_attach = [attach(1, 1), vec![0xee; 8]].concat();
    ensure!(
        v.handle_bytes(&long_attach, 4) == [0, 0, 0, 0],
        "long ATTACH"
    );
    ensure!(endpoint(&v, 1).domain() == Some(1), "not attached");
    // A writable part longer than the layout gets the layout's reply: the tail where the
    // structure puts it, the used length the structure's size.
    let reply = v.handle_bytes(&map(1, 0, PAGE, 0, RW), 16);
    ensure!(
        reply == [Status::Range.code(), 0, 0, 0],
        "MAP reply {reply:?}"
    );
    let reply = v.handle_bytes(&probe(3), PROBE_SIZE + 4 + 12);
    ensure!(
        reply.len() == PROBE_SIZE + 4,
        "PROBE used length {}",
        reply.len()
    );
    ensure!(
        reply[PROBE_SIZE..] == [0, 0, 0, 0]
            && reply[..PROBE_SIZE] == probed_properties()[..PROBE_SIZE],
        "PROBE reply"
    );
    Ok(())
}

fn bypass_mode_even_without_the_feature_accepted() -> Result<(), String> {
    let v = device_with(ViommuConfig {
        initial_bypass: true,
        ..config()
    });
    v.set_driver_features(v.device_features() & !F_BYPASS_CONFIG);
    let ep = endpoint(&v, 1);
    ensure!(reads(&ep, 0x7000) == Ok(0x7000), "not in bypass mode");
    ensure!(
        writes(&ep, 0x7000) == Ok(0x7000),
        "bypass mode denies writes"
    );
    Ok(())
}

fn bypass_domains_translate_by_identity() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 1);
    let req = attach_with(5, 1, ATTACH_F_BYPASS, [0; 4]);
    expect_status!(v, req, Status::Ok);
    ensure!(
        ep.in_bypass_mode() && ep.domain() == Some(5),
        "bypass domain"
    );
    ensure!(writes(&ep, 0x12_3000) == Ok(0x12_3000), "identity");
    Ok(())
}

// ---- ATTACH -------------------------------------------------------------------------------

fn attach_reserved_rejected() -> Result<(), String> {
    let v = device();
    for reserved in [[1, 0, 0, 0], [0, 0, 0, 0x80], [0xff; 4]] {
        expect_status!(v, attach_with(1, 1, 0, reserved), Status::Inval);
    }
    ensure!(v.domain_ids().is_empty(), "attached anyway");
    expect_status!(v, attach_with(1, 1, 0, [0; 4]), Status::Ok);
    Ok(())
}

fn attach_unknown_flags_rejected() -> Result<(), String> {
    let v = device();
    for flags in [1 << 1, 1 << 31, !ATTACH_F_BYPASS] {
        expect_status!(v, attach_with(1, 1, flags, [0; 4]), Status::Inval);
    }
    // ATTACH_F_BYPASS is unknown to a device without BYPASS_CONFIG in force.
    let v = device_with(ViommuConfig {
        bypass_config: false,
        ..config()
    });
    expect_status!(v, attach_with(1, 1, ATTACH_F_BYPASS, [0; 4]), Status::Inval);
    let v = device();
    v.set_driver_features(v.device_features() & !F_BYPASS_CONFIG);
    expect_status!(v, attach_with(1, 1, ATTACH_F_BYPASS, [0; 4]), Status::Inval);
    ensure!(v.domain_ids().is_empty(), "attached anyway");
    Ok(())
}

fn attach_unknown_endpoint() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 42), Status::NoEnt);
    ensure!(v.domain_ids().is_empty(), "domain created");
    Ok(())
}

fn attach_shares_domains() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0x9000, RW), Status::Ok);
    expect_status!(v, attach(1, 2), Status::Ok);
    ensure!(
        reads(&endpoint(&v, 2), 0x10) == Ok(0x9010),
        "second endpoint"
    );
    ensure!(v.domain_endpoints(1) == Some(vec![1, 2]), "endpoints");
    Ok(())
}

fn attached_endpoints_share_only_their_domain() -> Result<(), String> {
    let v = device();
    let (one, two, three) = (endpoint(&v, 1), endpoint(&v, 2), endpoint(&v, 3));
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, attach(1, 2), Status::Ok);
    expect_status!(v, attach(2, 3), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0x8000, RW), Status::Ok);
    expect_status!(v, map(2, 0, PAGE - 1, 0x9000, RW), Status::Ok);
    ensure!(
        reads(&one, 0) == Ok(0x8000) && reads(&two, 0) == Ok(0x8000),
        "domain 1 not shared"
    );
    ensure!(reads(&three, 0) == Ok(0x9000), "domain 2 sees domain 1");
    // What one domain's requests change, the other does not see.
    expect_status!(v, map(1, PAGE, 2 * PAGE - 1, 0xa000, RW), Status::Ok);
    ensure!(
        reads(&three, PAGE) == Err(Fault::Unmapped { iova: PAGE }),
        "domain 1's MAP reached domain 2"
    );
    expect_status!(v, unmap(2, 0, PAGE - 1), Status::Ok);
    ensure!(
        reads(&one, 0) == Ok(0x8000),
        "domain 2's UNMAP reached domain 1"
    );
    // One domain at a time: joining domain 2 leaves domain 1.
    expect_status!(v, attach(2, 2), Status::Ok);
    ensure!(
        v.domain_endpoints(1) == Some(vec![1]) && v.domain_endpoints(2) == Some(vec![2, 3]),
        "endpoint in two domains"
    );
    ensure!(
        reads(&two, PAGE) == Err(Fault::Unmapped { iova: PAGE }),
        "moved endpoint still reaches domain 1"
    );
    Ok(())
}

fn attach_bypass_mismatch() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, attach_with(1, 2, ATTACH_F_BYPASS, [0; 4]), Status::Inval);
    expect_status!(v, attach_with(2, 2, ATTACH_F_BYPASS, [0; 4]), Status::Ok);
    expect_status!(v, attach(2, 1), Status::Inval);
    ensure!(endpoint(&v, 1).domain() == Some(1), "moved anyway");
    Ok(())
}

fn attach_moves_as_detach_then_attach() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 1);
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0x9000, RW), Status::Ok);
    expect_status!(v, attach(2, 1), Status::Ok);
    ensure!(ep.domain() == Some(2), "not moved");
    ensure!(
        reads(&ep, 0) == Err(Fault::Unmapped { iova: 0 }),
        "old mapping"
    );
    // Domain 1 lost its last endpoint, as after a DETACH: it no longer exists.
    expect_status!(v, map(1, PAGE, 2 * PAGE - 1, 0, RW), Status::NoEnt);
    Ok(())
}

fn attach_move_frees_the_old_domain_first() -> Result<(), String> {
    let v = device_with(ViommuConfig {
        max_domains: 1,
        ..config()
    });
    let ep = endpoint(&v, 1);
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0x8000, RW), Status::Ok);
    // DETACH would destroy domain 1, then ATTACH create domain 2: room for it.
    expect_status!(v, attach(2, 1), Status::Ok);
    ensure!(ep.domain() == Some(2), "not moved");
    ensure!(v.domain_ids() == [2], "domains {:?}", v.domain_ids());
    ensure!(
        reads(&ep, 0) == Err(Fault::Unmapped { iova: 0 }),
        "old mapping"
    );
    // An endpoint attached nowhere frees nothing; one sharing its domain neither.
    expect_status!(v, attach(3, 2), Status::NoMem);
    expect_status!(v, attach(2, 2), Status::Ok);
    expect_status!(v, attach(3, 1), Status::NoMem);
    ensure!(
        ep.domain() == Some(2) && v.domain_endpoints(2) == Some(vec![1, 2]),
        "a refused ATTACH moved the endpoint"
    );
    Ok(())
}

fn attach_incompatible_properties() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    // Domain 1 maps endpoint 3's reserved hole: endpoint 3 cannot join it.
    expect_status!(v, map(1, 0x1_0000, 0x1_0fff, 0, RW), Status::Ok);
    expect_status!(v, attach(1, 3), Status::Unsupp);
    ensure!(endpoint(&v, 3).domain().is_none(), "attached anyway");
    // Different reserved regions but no conflicting mapping: compatible.
    expect_status!(v, attach(2, 2), Status::Ok);
    expect_status!(v, map(2, 0x2_0000, 0x2_0fff, 0, RW), Status::Ok);
    expect_status!(v, attach(2, 3), Status::Ok);
    Ok(())
}

fn attach_not_rejected_means_attached() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(7, 2), Status::Ok);
    let ep = endpoint(&v, 2);
    ensure!(ep.domain() == Some(7), "not attached");
    ensure!(v.domain_endpoints(7) == Some(vec![2]), "not in the domain");
    Ok(())
}

fn attach_domain_out_of_range() -> Result<(), String> {
    let v = device_with(ViommuConfig {
        domain_range: (4, 8),
        max_domains: 1,
        ..config()
    });
    expect_status!(v, attach(3, 1), Status::Range);
    expect_status!(v, attach(4, 1), Status::Ok);
    expect_status!(v, attach(5, 2), Status::NoMem);
    Ok(())
}

// ---- DETACH -------------------------------------------------------------------------------

fn detach_reserved_ignored() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, detach_with(1, 1, [0xff; 8]), Status::Ok);
    ensure!(endpoint(&v, 1).domain().is_none(), "still attached");
    Ok(())
}

fn detach_unknown_endpoint() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, detach(1, 42), Status::NoEnt);
    Ok(())
}

fn detach_wrong_domain() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, attach(2, 2), Status::Ok);
    expect_status!(v, detach(9, 1), Status::Inval); // no such domain
    expect_status!(v, detach(2, 1), Status::Inval); // not attached there
    expect_status!(v, detach(1, 3), Status::Inval); // endpoint attached nowhere
    ensure!(endpoint(&v, 1).domain() == Some(1), "detached anyway");
    Ok(())
}

fn detach_cuts_every_mapping() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 1);
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, attach(1, 2), Status::Ok);
    expect_status!(v, map(1, 0, 4 * PAGE - 1, 0x8000, RW), Status::Ok);
    // A device access in progress on another thread when DETACH is sent: the reply waits
    // for it (quiescence), and afterwards nothing of domain 1 is reachable.
    let (inside_tx, inside_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let dev = ep.clone();
    let device = std::thread::spawn(move || {
        dev.access(0, 8, Prot::READ, |_| {
            inside_tx.send(()).unwrap();
            go_rx
                .recv_timeout(std::time::Duration::from_millis(50))
                .ok();
            std::time::Instant::now()
        })
    });
    inside_rx.recv().unwrap();
    expect_status!(v, detach(1, 1), Status::Ok);
    let replied = std::time::Instant::now();
    drop(go_tx);
    let left = device.join().unwrap().map_err(|f| f.to_string())?;
    ensure!(
        left <= replied,
        "DETACH replied while an access was in flight"
    );
    for iova in [0, PAGE, 3 * PAGE] {
        ensure!(
            reads(&ep, iova) == Err(Fault::Detached),
            "{iova:#x} reachable"
        );
    }
    ensure!(
        reads(&endpoint(&v, 2), 0) == Ok(0x8000),
        "other endpoint lost it"
    );
    Ok(())
}

fn detach_may_leave_bypass_mode() -> Result<(), String> {
    for bypass in [false, true] {
        let v = device();
        let ep = endpoint(&v, 1);
        ensure!(
            v.write_config(wire::CONFIG_BYPASS_OFFSET, &[u8::from(bypass)]),
            "bypass write"
        );
        expect_status!(v, attach(1, 1), Status::Ok);
        expect_status!(v, map(1, 0, PAGE - 1, 0x8000, RW), Status::Ok);
        expect_status!(v, detach(1, 1), Status::Ok);
        let want = if bypass { Ok(0) } else { Err(Fault::Detached) };
        ensure!(
            reads(&ep, 0) == want,
            "bypass {bypass}: {:?}, expected {want:?}",
            reads(&ep, 0)
        );
        ensure!(ep.in_bypass_mode() == bypass, "bypass mode");
    }
    Ok(())
}

fn detach_last_endpoint_destroys_domain() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0x8000, RW), Status::Ok);
    expect_status!(v, detach(1, 1), Status::Ok);
    ensure!(v.domain(1).is_none(), "domain 1 still exists");
    expect_status!(v, map(1, 0, PAGE - 1, 0x8000, RW), Status::NoEnt);
    // The id is reused for a new, empty domain.
    expect_status!(v, attach(1, 2), Status::Ok);
    ensure!(mapped(&v, 1) == 0, "old mappings came back");
    Ok(())
}

// ---- MAP ----------------------------------------------------------------------------------

fn map_unaligned() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0x800, 0x17ff, 0, RW), Status::Range); // virt_start
    expect_status!(v, map(1, 0x1000, 0x1fff, 0x800, RW), Status::Range); // phys_start
    expect_status!(v, map(1, 0x1000, 0x1ffe, 0, RW), Status::Range); // virt_end + 1
    ensure!(mapped(&v, 1) == 0, "mapped anyway");
    Ok(())
}

fn map_existing_mapping() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, PAGE, 3 * PAGE - 1, 0x8000, RW), Status::Ok);
    expect_status!(v, map(1, 0, 2 * PAGE - 1, 0, RW), Status::Inval);
    expect_status!(v, map(1, 2 * PAGE, 4 * PAGE - 1, 0, RW), Status::Inval);
    expect_status!(v, map(1, PAGE, 3 * PAGE - 1, 0x8000, RW), Status::Inval);
    ensure!(mapped(&v, 1) == 1, "mappings changed");
    Ok(())
}

fn map_unknown_flags() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    for flags in [RW | 1 << 3, RW | 1 << 31] {
        expect_status!(v, map(1, 0, PAGE - 1, 0, flags), Status::Inval);
    }
    // MAP_F_MMIO is known only with F_MMIO negotiated.
    v.set_driver_features(v.device_features() & !F_MMIO);
    expect_status!(v, map(1, 0, PAGE - 1, 0, RW | MAP_F_MMIO), Status::Inval);
    v.set_driver_features(v.device_features());
    expect_status!(v, map(1, 0, PAGE - 1, 0, RW | MAP_F_MMIO), Status::Ok);
    Ok(())
}

fn map_unknown_domain() -> Result<(), String> {
    let v = device();
    expect_status!(v, map(3, 0, PAGE - 1, 0, RW), Status::NoEnt);
    Ok(())
}

fn map_bypass_domain() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach_with(1, 1, ATTACH_F_BYPASS, [0; 4]), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0, RW), Status::Inval);
    Ok(())
}

fn map_permissions() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 1);
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0x8000, MAP_F_READ), Status::Ok);
    expect_status!(
        v,
        map(1, PAGE, 2 * PAGE - 1, 0x9000, MAP_F_WRITE),
        Status::Ok
    );
    ensure!(reads(&ep, 0) == Ok(0x8000), "read of a READ mapping");
    ensure!(
        matches!(writes(&ep, 0), Err(Fault::Denied { .. })),
        "write to a READ mapping"
    );
    ensure!(writes(&ep, PAGE) == Ok(0x9000), "write to a WRITE mapping");
    // Stage-1 LPAE has no write-only pages: the MAY is taken.
    ensure!(reads(&ep, PAGE) == Ok(0x9000), "read of a WRITE mapping");
    Ok(())
}

fn map_outside_input_range() -> Result<(), String> {
    let v = device_with(ViommuConfig {
        input_range: (0x1_0000, 0xf_ffff),
        ..config()
    });
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0, RW), Status::Range);
    expect_status!(v, map(1, 0xf_f000, 0x10_0fff, 0, RW), Status::Range);
    expect_status!(v, map(1, 0x1_0000, 0x1_0fff, 0, RW), Status::Ok);
    Ok(())
}

fn map_beyond_the_caps() -> Result<(), String> {
    let v = device_with(ViommuConfig {
        max_mappings_per_domain: 2,
        max_mappings: 3,
        ..config()
    });
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, attach(2, 2), Status::Ok);
    for page in 0..2 {
        expect_status!(
            v,
            map(1, page * PAGE, (page + 1) * PAGE - 1, 0, RW),
            Status::Ok
        );
    }
    expect_status!(v, map(1, 4 * PAGE, 5 * PAGE - 1, 0, RW), Status::NoMem); // per domain
    expect_status!(v, map(2, 0, PAGE - 1, 0, RW), Status::Ok);
    expect_status!(v, map(2, PAGE, 2 * PAGE - 1, 0, RW), Status::NoMem); // in all
                                                                         // UNMAP, and a domain dying with its mappings, give the room back.
    expect_status!(v, unmap(1, 0, PAGE - 1), Status::Ok);
    expect_status!(v, map(2, PAGE, 2 * PAGE - 1, 0, RW), Status::Ok);
    expect_status!(v, detach(2, 2), Status::Ok);
    expect_status!(v, attach(3, 2), Status::Ok);
    expect_status!(v, map(3, 0, PAGE - 1, 0, RW), Status::Ok);
    expect_status!(v, map(3, PAGE, 2 * PAGE - 1, 0, RW), Status::Ok);
    expect_status!(v, map(1, 8 * PAGE, 9 * PAGE - 1, 0, RW), Status::NoMem);
    Ok(())
}

fn map_covers_exactly_the_inclusive_range() -> Result<(), String> {
    let v = device_with(ViommuConfig {
        input_range: (0x1_0000, 0xf_ffff),
        ..config()
    });
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, attach(1, 2), Status::Ok);
    // The input range's first and last pages, each its own mapping.
    expect_status!(
        v,
        map(1, 0x1_0000, 0x1_0fff, 0x5000, MAP_F_READ),
        Status::Ok
    );
    expect_status!(v, map(1, 0xf_e000, 0xf_ffff, 0x30_0000, RW), Status::Ok);
    for id in [1, 2] {
        let ep = endpoint(&v, id);
        let byte = |iova| ep.access(iova, 1, Prot::READ, |s| s[0].paddr);
        // PA = VA - virt_start + phys_start, for the first and last byte.
        ensure!(byte(0x1_0000) == Ok(0x5000), "ep {id}: first byte");
        ensure!(byte(0x1_0fff) == Ok(0x5fff), "ep {id}: last byte");
        ensure!(byte(0xf_ffff) == Ok(0x30_1fff), "ep {id}: last input byte");
        ensure!(
            byte(0x1_1000) == Err(Fault::Unmapped { iova: 0x1_1000 }),
            "ep {id}: byte after virt_end"
        );
        ensure!(
            byte(0xf_dfff) == Err(Fault::Unmapped { iova: 0xf_dfff }),
            "ep {id}: byte before virt_start"
        );
        // An access running past virt_end faults at the first byte outside.
        ensure!(
            ep.access(0x1_0ff8, 16, Prot::READ, |_| ()) == Err(Fault::Unmapped { iova: 0x1_1000 }),
            "ep {id}: access across virt_end"
        );
    }
    Ok(())
}

fn map_ranges_at_the_end_of_the_address_space() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    // virt_end + 1 wraps to 0 (aligned), but the range is outside input_range.
    expect_status!(
        v,
        map(1, u64::MAX - (PAGE - 1), u64::MAX, 0, RW),
        Status::Range
    );
    expect_status!(v, map(1, 0, u64::MAX, 0, RW), Status::Range);
    // phys_end = phys_start + virt_end - virt_start past 64 bits, or past the output size.
    expect_status!(
        v,
        map(1, 0, 2 * PAGE - 1, u64::MAX - (PAGE - 1), RW),
        Status::Range
    );
    expect_status!(v, map(1, 0, PAGE - 1, 1 << 48, RW), Status::Range);
    expect_status!(
        v,
        map(1, 0, 2 * PAGE - 1, (1 << 48) - PAGE, RW),
        Status::Range
    );
    ensure!(mapped(&v, 1) == 0, "mapped anyway");
    ensure!(
        reads(&endpoint(&v, 1), 0) == Err(Fault::Unmapped { iova: 0 }),
        "a refused MAP left a translation"
    );
    expect_status!(v, map(1, 0, PAGE - 1, (1 << 48) - PAGE, RW), Status::Ok);
    Ok(())
}

fn map_mmio_is_a_memory_type() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 1);
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(
        v,
        map(1, 0, PAGE - 1, 0xfe00_0000, MAP_F_READ | MAP_F_MMIO),
        Status::Ok
    );
    expect_status!(
        v,
        map(1, PAGE, 2 * PAGE - 1, 0x8000, MAP_F_READ | MAP_F_WRITE),
        Status::Ok
    );
    let domain = v.domain(1).ok_or("no domain 1")?;
    let prot = |iova| domain.lookup(iova).map(|l| l.prot);
    ensure!(
        prot(0).is_ok_and(|p| p.contains(Prot::MMIO | Prot::READ) && !p.contains(Prot::WRITE)),
        "MMIO mapping {:?}",
        prot(0)
    );
    ensure!(
        prot(PAGE).is_ok_and(|p| !p.contains(Prot::MMIO)),
        "normal mapping {:?}",
        prot(PAGE)
    );
    // The protections still apply to an MMIO mapping.
    ensure!(reads(&ep, 0) == Ok(0xfe00_0000), "MMIO read");
    ensure!(
        matches!(writes(&ep, 0), Err(Fault::Denied { .. })),
        "write to a READ | MMIO mapping"
    );
    Ok(())
}

fn map_other_choices() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0, 0), Status::Unsupp);
    expect_status!(v, map(1, 0, PAGE - 1, 0, MAP_F_MMIO), Status::Unsupp);
    expect_status!(v, map(1, 2 * PAGE, PAGE - 1, 0, RW), Status::Inval);
    ensure!(mapped(&v, 1) == 0, "mapped anyway");
    Ok(())
}

// ---- UNMAP --------------------------------------------------------------------------------

fn unmap_reserved_ignored() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, PAGE - 1, 0, RW), Status::Ok);
    expect_status!(v, unmap_with(1, 0, PAGE - 1, [0xff; 4]), Status::Ok);
    ensure!(mapped(&v, 1) == 0, "not unmapped");
    Ok(())
}

fn unmap_unknown_domain() -> Result<(), String> {
    let v = device();
    expect_status!(v, unmap(4, 0, PAGE - 1), Status::NoEnt);
    Ok(())
}

fn unmap_bypass_domain() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach_with(1, 1, ATTACH_F_BYPASS, [0; 4]), Status::Ok);
    expect_status!(v, unmap(1, 0, PAGE - 1), Status::Inval);
    Ok(())
}

fn unmap_split_refused() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 1);
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, 0, 2 * PAGE - 1, 0x8000, RW), Status::Ok);
    expect_status!(v, map(1, 2 * PAGE, 3 * PAGE - 1, 0xa000, RW), Status::Ok);
    // Covers the second mapping whole and half of the first: nothing is removed.
    expect_status!(v, unmap(1, PAGE, 3 * PAGE - 1), Status::Range);
    ensure!(mapped(&v, 1) == 2, "a mapping was removed");
    ensure!(reads(&ep, 2 * PAGE) == Ok(0xa000), "translation removed");
    Ok(())
}

/// The seven examples of the UNMAP section, each from a blank address space, in pages.
fn unmap_examples() -> Result<(), String> {
    let p = |n: u64| n * PAGE;
    let end = |n: u64| (n + 1) * PAGE - 1;
    type Example = (&'static [(u64, u64)], (u64, u64), Status, usize);
    let examples: [Example; 7] = [
        (&[], (0, 4), Status::Ok, 0),
        (&[(0, 9)], (0, 9), Status::Ok, 0),
        (&[(0, 4), (5, 9)], (0, 9), Status::Ok, 0),
        (&[(0, 9)], (0, 4), Status::Range, 1),
        (&[(0, 4), (5, 9)], (0, 4), Status::Ok, 1),
        (&[(0, 4)], (0, 9), Status::Ok, 0),
        (&[(0, 4), (10, 14)], (0, 14), Status::Ok, 0),
    ];
    for (i, (maps, (s, e), status, left)) in examples.into_iter().enumerate() {
        let v = device();
        expect_status!(v, attach(1, 1), Status::Ok);
        for &(ms, me) in maps {
            expect_status!(v, map(1, p(ms), end(me), p(ms), RW), Status::Ok);
        }
        let got = send(&v, &unmap(1, p(s), end(e)));
        ensure!(
            got == Some(status.code()),
            "example ({}): {got:?}, expected {status}",
            i + 1
        );
        ensure!(mapped(&v, 1) == left, "example ({}): mappings left", i + 1);
    }
    Ok(())
}

fn unmap_spilling_over_holes() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 1);
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, PAGE, 2 * PAGE - 1, 0x8000, RW), Status::Ok);
    expect_status!(v, map(1, 5 * PAGE, 6 * PAGE - 1, 0x9000, RW), Status::Ok);
    expect_status!(v, unmap(1, 0, u64::MAX), Status::Ok);
    ensure!(mapped(&v, 1) == 0, "mappings left");
    ensure!(reads(&ep, 5 * PAGE).is_err(), "translation left");
    Ok(())
}

fn unmap_range_is_inclusive() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 1);
    expect_status!(v, attach(1, 1), Status::Ok);
    expect_status!(v, map(1, PAGE, 3 * PAGE - 1, 0x8000, RW), Status::Ok);
    // One byte short at either end splits the mapping.
    expect_status!(v, unmap(1, PAGE, 3 * PAGE - 2), Status::Range);
    expect_status!(v, unmap(1, PAGE + 1, 3 * PAGE - 1), Status::Range);
    expect_status!(v, unmap(1, 3 * PAGE - 1, 3 * PAGE - 1), Status::Range);
    // Ranges that touch it nowhere, up to the last address, remove nothing.
    expect_status!(v, unmap(1, 0, PAGE - 1), Status::Ok);
    expect_status!(v, unmap(1, 3 * PAGE, u64::MAX), Status::Ok);
    expect_status!(v, unmap(1, u64::MAX, u64::MAX), Status::Ok);
    ensure!(mapped(&v, 1) == 1, "a mapping was removed");
    ensure!(
        reads(&ep, 3 * PAGE - 8) == Ok(0x9ff8),
        "translation removed"
    );
    // A reversed range is invalid.
    expect_status!(v, unmap(1, 3 * PAGE - 1, PAGE), Status::Inval);
    // The exact range, with an unaligned spill-over on each side.
    expect_status!(v, unmap(1, PAGE - 1, 3 * PAGE), Status::Ok);
    ensure!(mapped(&v, 1) == 0, "not removed");
    ensure!(reads(&ep, PAGE).is_err(), "translation left");
    Ok(())
}

// ---- PROBE --------------------------------------------------------------------------------

fn probe_reserved_ignored() -> Result<(), String> {
    let v = device();
    let plain = v.handle_bytes(&probe(3), PROBE_SIZE + 4);
    let noisy = v.handle_bytes(&probe_with(3, [0xa5; 64]), PROBE_SIZE + 4);
    ensure!(plain == noisy, "reserved changed the reply");
    ensure!(plain[PROBE_SIZE] == Status::Ok.code(), "status");
    Ok(())
}

fn probe_unknown_endpoint() -> Result<(), String> {
    let v = device();
    let reply = v.handle_bytes(&probe(42), PROBE_SIZE + 4);
    ensure!(reply.len() == PROBE_SIZE + 4, "used length");
    ensure!(reply[..PROBE_SIZE].iter().all(|&b| b == 0), "properties");
    ensure!(reply[PROBE_SIZE] == Status::NoEnt.code(), "status");
    Ok(())
}

fn probe_always_offered() -> Result<(), String> {
    let v = device();
    ensure!(v.device_features() & F_PROBE != 0, "F_PROBE not offered");
    ensure!(
        !v.handle_bytes(&probe(1), PROBE_SIZE + 4).is_empty(),
        "PROBE not answered"
    );
    Ok(())
}

/// The RESV_MEM properties of endpoint 3 (its hole, then the device-wide MSI window).
fn probed_properties() -> Vec<u8> {
    device().handle_bytes(&probe(3), PROBE_SIZE + 4)
}

fn probe_property_header() -> Result<(), String> {
    let reply = probed_properties();
    for at in [0, 24] {
        let kind = u16::from_le_bytes([reply[at], reply[at + 1]]);
        let len = u16::from_le_bytes([reply[at + 2], reply[at + 3]]);
        ensure!(kind & 0xf000 == 0, "reserved bits of type set at {at}");
        ensure!(kind == wire::PROBE_T_RESV_MEM, "type {kind} at {at}");
        ensure!(
            len as usize == wire::RESV_MEM_SIZE - 4,
            "length {len} at {at}"
        );
    }
    Ok(())
}

fn probe_properties_follow_each_other() -> Result<(), String> {
    let reply = probed_properties();
    let len = u16::from_le_bytes([reply[2], reply[3]]) as usize;
    let second = len + 4;
    let start = u64::from_le_bytes(reply[second + 8..second + 16].try_into().unwrap());
    ensure!(
        start == MSI.start,
        "second property at {second}: start {start:#x}"
    );
    let first = u64::from_le_bytes(reply[8..16].try_into().unwrap());
    ensure!(first == hole().start, "first property start {first:#x}");
    Ok(())
}

fn probe_short_buffer() -> Result<(), String> {
    let v = device();
    for writable in [4, 24, PROBE_SIZE + 3] {
        let reply = v.handle_bytes(&probe(3), writable);
        ensure!(reply.len() == writable, "used length {}", reply.len());
        let (props, tail) = reply.split_at(writable - 4);
        ensure!(props.iter().all(|&b| b == 0), "a property was written");
        ensure!(
            tail == [Status::Inval.code(), 0, 0, 0],
            "tail {tail:?} with {writable}"
        );
    }
    Ok(())
}

fn probe_zero_fill() -> Result<(), String> {
    let reply = probed_properties();
    ensure!(reply.len() == PROBE_SIZE + 4, "used length");
    ensure!(
        reply[2 * wire::RESV_MEM_SIZE..PROBE_SIZE]
            .iter()
            .all(|&b| b == 0),
        "remaining bytes not zero"
    );
    Ok(())
}

/// The driver's parse of a PROBE reply's properties, as the PROBE section describes it: from
/// the first property, each next one `length + 4` bytes on, until a property of type 0 or the
/// end of `probe_size` bytes. Returns (type, start, end) of each property.
fn parse_properties(props: &[u8]) -> Vec<(u16, u64, u64)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at + 4 <= props.len() {
        let kind = u16::from_le_bytes([props[at], props[at + 1]]) & 0x0fff;
        let len = usize::from(u16::from_le_bytes([props[at + 2], props[at + 3]]));
        if kind == 0 || at + 4 + len > props.len() {
            break;
        }
        let le64 = |r: std::ops::Range<usize>| u64::from_le_bytes(props[r].try_into().unwrap());
        found.push((kind, le64(at + 8..at + 16), le64(at + 16..at + 24)));
        at += 4 + len;
    }
    found
}

fn probe_list_ends_with_an_empty_property_or_probe_size() -> Result<(), String> {
    let want = vec![
        (wire::PROBE_T_RESV_MEM, hole().start, hole().end),
        (wire::PROBE_T_RESV_MEM, MSI.start, MSI.end),
    ];
    // Exactly two properties' worth (no room for an end marker), then a little more.
    for probe_size in [48usize, 49, 51, 52, PROBE_SIZE] {
        let v = device_with(ViommuConfig {
            probe_size: probe_size as u32,
            ..config()
        });
        let reply = v.handle_bytes(&probe(3), probe_size + 4);
        ensure!(reply.len() == probe_size + 4, "used length {}", reply.len());
        let (props, tail) = reply.split_at(probe_size);
        ensure!(
            tail == [0, 0, 0, 0],
            "probe_size {probe_size}: tail {tail:?}"
        );
        let got = parse_properties(props);
        ensure!(got == want, "probe_size {probe_size}: parsed {got:?}");
        ensure!(
            props[48..].iter().all(|&b| b == 0),
            "probe_size {probe_size}: bytes after the list"
        );
    }
    // Properties that would not fit in probe_size are refused when the endpoint is declared,
    // so a PROBE never truncates the list.
    let v = Viommu::new(ViommuConfig {
        probe_size: 47,
        ..config()
    })
    .map_err(|e| e.to_string())?;
    ensure!(
        v.add_endpoint(3, vec![hole()]).err()
            == Some(ViommuError::ProbeSize {
                needed: 48,
                probe_size: 47
            }),
        "an endpoint whose properties overflow probe_size was declared"
    );
    Ok(())
}

// ---- RESV_MEM -----------------------------------------------------------------------------

fn resv_mem_reserved_zero() -> Result<(), String> {
    let reply = probed_properties();
    for at in [0, 24] {
        ensure!(reply[at + 5..at + 8] == [0, 0, 0], "reserved bytes at {at}");
    }
    ensure!(
        reply[4] == ReservedKind::Reserved as u8,
        "subtype of the hole"
    );
    ensure!(
        reply[28] == ReservedKind::Msi as u8,
        "subtype of the MSI window"
    );
    Ok(())
}

fn resv_mem_one_msi_window() -> Result<(), String> {
    let v = device();
    let second = ReservedRegion {
        kind: ReservedKind::Msi,
        start: 0x8000_0000,
        end: 0x8000_ffff,
    };
    ensure!(
        v.add_endpoint(9, vec![second]).err() == Some(ViommuError::SecondMsiRegion(second)),
        "second MSI window accepted"
    );
    ensure!(v.endpoint(9).is_none(), "endpoint created");
    Ok(())
}

fn resv_mem_no_overlap() -> Result<(), String> {
    let v = device();
    let inside = ReservedRegion {
        kind: ReservedKind::Reserved,
        start: 0xfee0_8000,
        end: 0xfef0_ffff,
    };
    ensure!(
        v.add_endpoint(9, vec![inside]).err() == Some(ViommuError::ReservedOverlap(MSI, inside)),
        "overlap accepted"
    );
    ensure!(
        Viommu::new(ViommuConfig {
            reserved: vec![MSI, inside],
            ..config()
        })
        .is_err(),
        "device-wide overlap accepted"
    );
    Ok(())
}

fn resv_mem_map_rejected() -> Result<(), String> {
    let v = device();
    expect_status!(v, attach(1, 3), Status::Ok);
    // The device-wide MSI window and endpoint 3's own hole, overlapped in part or whole.
    expect_status!(v, map(1, 0xfee0_0000, 0xfee0_0fff, 0, RW), Status::Inval);
    expect_status!(v, map(1, 0xfe00_0000, 0xfeff_ffff, 0, RW), Status::Inval);
    expect_status!(v, map(1, 0xf000, 0x1_0fff, 0, RW), Status::Inval);
    expect_status!(v, map(1, 0x1_f000, 0x2_0fff, 0, RW), Status::Inval);
    ensure!(mapped(&v, 1) == 0, "mapped anyway");
    expect_status!(v, map(1, 0x2_0000, 0x2_0fff, 0, RW), Status::Ok);
    Ok(())
}

fn resv_mem_accesses_stay_contained() -> Result<(), String> {
    let v = device_with(ViommuConfig {
        initial_bypass: true,
        ..config()
    });
    let ep = endpoint(&v, 3);
    // Even in bypass mode (identity everywhere else) the regions fault.
    ensure!(reads(&ep, 0x2_0000) == Ok(0x2_0000), "bypass");
    for iova in [0x1_0000, 0x1_fff8, 0xfee0_0000] {
        ensure!(
            writes(&ep, iova) == Err(Fault::Reserved { iova }),
            "{iova:#x} reachable"
        );
    }
    Ok(())
}

// ---- Fault reporting ----------------------------------------------------------------------

/// Two faults of endpoint 3: a write to an unmapped IOVA, a read while attached nowhere.
fn two_fault_events() -> (Viommu, Vec<Vec<u8>>) {
    let v = device();
    let ep = endpoint(&v, 3);
    let send = |req: Vec<u8>| assert_eq!(send(&v, &req), Some(0));
    send(attach(1, 3));
    assert!(writes(&ep, 0x4_0000).is_err());
    send(detach(1, 3));
    assert!(reads(&ep, 0x5_0000).is_err());
    let events = std::iter::from_fn(|| v.fault_event(64)).collect();
    (v, events)
}

fn fault_reserved_and_flags_zero() -> Result<(), String> {
    let (_, events) = two_fault_events();
    ensure!(events.len() == 2, "{} events", events.len());
    for e in &events {
        ensure!(e.len() == wire::FAULT_SIZE, "event of {} bytes", e.len());
        ensure!(e[1..4] == [0; 3] && e[12..16] == [0; 4], "reserved {e:?}");
        let flags = u32::from_le_bytes(e[4..8].try_into().unwrap());
        let defined = FAULT_F_READ | FAULT_F_WRITE | FAULT_F_ADDRESS;
        ensure!(flags & !defined == 0, "undefined flags {flags:#x}");
    }
    Ok(())
}

fn fault_names_the_endpoint() -> Result<(), String> {
    let (_, events) = two_fault_events();
    for e in &events {
        let ep = u32::from_le_bytes(e[8..12].try_into().unwrap());
        ensure!(ep == 3, "endpoint {ep}");
    }
    let write = &events[0];
    ensure!(
        write[0] == FaultReason::Mapping as u8
            && u32::from_le_bytes(write[4..8].try_into().unwrap())
                == FAULT_F_WRITE | FAULT_F_ADDRESS
            && u64::from_le_bytes(write[16..24].try_into().unwrap()) == 0x4_0000,
        "unmapped write reported as {write:?}"
    );
    Ok(())
}

fn fault_address_omitted_when_detached() -> Result<(), String> {
    let (_, events) = two_fault_events();
    let read = &events[1];
    ensure!(read[0] == FaultReason::Domain as u8, "reason {}", read[0]);
    let flags = u32::from_le_bytes(read[4..8].try_into().unwrap());
    ensure!(flags == FAULT_F_READ, "flags {flags:#x}");
    ensure!(read[16..24] == [0; 8], "address written");
    Ok(())
}

fn fault_reasons_name_what_failed() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 3);
    let event = || v.fault_event(wire::FAULT_SIZE).ok_or("no report");
    let fields = |e: &[u8]| {
        (
            e[0],
            u32::from_le_bytes(e[4..8].try_into().unwrap()),
            u64::from_le_bytes(e[16..24].try_into().unwrap()),
        )
    };
    // Blocked, the endpoint faults for want of a domain, even inside its reserved region.
    ensure!(reads(&ep, 0x1_0000).is_err(), "blocked read served");
    let e = event()?;
    ensure!(
        fields(&e) == (FaultReason::Domain as u8, FAULT_F_READ, 0),
        "blocked endpoint in its reserved region: {:?}",
        fields(&e)
    );
    // Attached: the reserved region and a missing permission are mapping faults, with address.
    expect_status!(v, attach(1, 3), Status::Ok);
    expect_status!(
        v,
        map(1, 0x4_0000, 0x4_0fff, 0x8000, MAP_F_READ),
        Status::Ok
    );
    ensure!(reads(&ep, 0x1_0000).is_err(), "reserved read served");
    ensure!(writes(&ep, 0x4_0008).is_err(), "read-only write served");
    let want = [
        (
            FaultReason::Mapping as u8,
            FAULT_F_READ | FAULT_F_ADDRESS,
            0x1_0000,
        ),
        (
            FaultReason::Mapping as u8,
            FAULT_F_WRITE | FAULT_F_ADDRESS,
            0x4_0008,
        ),
    ];
    for w in want {
        let e = event()?;
        ensure!(fields(&e) == w, "{:?}, expected {w:?}", fields(&e));
    }
    // In bypass mode (attached to no domain, identity elsewhere) the region is a mapping
    // fault too: the access was refused for its address, not for a missing domain.
    expect_status!(v, detach(1, 3), Status::Ok);
    ensure!(
        v.write_config(wire::CONFIG_BYPASS_OFFSET, &[1]),
        "bypass write"
    );
    ensure!(
        reads(&ep, 0x1_0008).is_err(),
        "bypass-mode reserved read served"
    );
    let e = event()?;
    let w = (
        FaultReason::Mapping as u8,
        FAULT_F_READ | FAULT_F_ADDRESS,
        0x1_0008,
    );
    ensure!(
        fields(&e) == w,
        "bypass mode: {:?}, expected {w:?}",
        fields(&e)
    );
    Ok(())
}

fn fault_never_split_over_buffers() -> Result<(), String> {
    let v = device();
    let ep = endpoint(&v, 1);
    for iova in [0, PAGE] {
        ensure!(reads(&ep, iova).is_err(), "access served");
    }
    ensure!(
        v.fault_event(wire::FAULT_SIZE - 1) == Some(Vec::new()),
        "short buffer written"
    );
    ensure!(v.faults_dropped() == 1, "dropped {}", v.faults_dropped());
    // The next report still goes whole into a buffer that holds it.
    let next = v
        .fault_event(wire::FAULT_SIZE)
        .ok_or("second report lost")?;
    ensure!(next.len() == wire::FAULT_SIZE, "split report");
    ensure!(v.fault_event(wire::FAULT_SIZE).is_none(), "phantom report");
    Ok(())
}

fn fault_dropped_without_buffers() -> Result<(), String> {
    let v = device_with(ViommuConfig {
        fault_log: 2,
        ..config()
    });
    let ep = endpoint(&v, 1);
    for iova in 0..5 {
        ensure!(reads(&ep, iova * PAGE).is_err(), "access served");
    }
    ensure!(v.faults_dropped() == 3, "dropped {}", v.faults_dropped());
    let kept: Vec<_> = std::iter::from_fn(|| v.fault_event(64)).collect();
    ensure!(kept.len() == 2, "{} kept", kept.len());
    Ok(())
}

// ---- The table ----------------------------------------------------------------------------

use Level::*;

const ROWS: &[Row] = &[
    Row {
        section: FEATURES,
        level: Should,
        statement: "The device SHOULD offer feature bit VIRTIO_IOMMU_F_MAP_UNMAP.",
        expect: "offered; MAP and UNMAP work",
        choice: None,
        check: offers_map_unmap,
    },
    Row {
        section: FEATURES,
        level: ShouldNot,
        statement: "New devices SHOULD NOT offer VIRTIO_IOMMU_F_BYPASS. Devices SHOULD NOT offer both VIRTIO_IOMMU_F_BYPASS and VIRTIO_IOMMU_F_BYPASS_CONFIG.",
        expect: "F_BYPASS never offered; F_BYPASS_CONFIG as configured",
        choice: None,
        check: never_offers_legacy_bypass,
    },
    Row {
        section: FEATURES,
        level: Text,
        statement: "Map and unmap requests are available (F_MAP_UNMAP); the PROBE request is available (F_PROBE); the MAP_F_MMIO flag is available (F_MMIO); input_range, domain_range are described (F_INPUT_RANGE, F_DOMAIN_RANGE).",
        expect: "all offered; MAP/UNMAP without F_MAP_UNMAP negotiated: S_UNSUPP",
        choice: Some("the model is told the driver's features by set_driver_features; until then it takes every offered feature as accepted"),
        check: features_match_behaviour,
    },
    Row {
        section: CONFIG,
        level: Must,
        statement: "The device MUST set at least one bit in page_size_mask, describing the page granularity.",
        expect: "the page table's page sizes; MAP enforces the smallest",
        choice: None,
        check: page_size_mask_has_a_bit_and_is_the_granule,
    },
    Row {
        section: CONFIG,
        level: May,
        statement: "The device MAY set more than one bit in page_size_mask.",
        expect: "4 KiB | 2 MiB | 1 GiB, the page table's sizes; a MAP aligned on 2 MiB is one 2 MiB leaf",
        choice: Some("every page size of the page table (the larger ones are the hints of the Device operations section)"),
        check: page_size_mask_may_hold_larger_sizes,
    },
    Row {
        section: CONFIG,
        level: Text,
        statement: "input_range contains the virtual address range that the IOMMU is able to translate; domain_range describes the values supported in a domain field; the length of properties is probe_size bytes.",
        expect: "the config space holds the values the requests are checked against",
        choice: Some("ATTACH to a domain outside domain_range: S_RANGE"),
        check: ranges_and_probe_size_are_what_the_device_enforces,
    },
    Row {
        section: OPS,
        level: Text,
        statement: "If the VIRTIO_IOMMU_F_DOMAIN_RANGE feature is offered, domain_range describes the values supported in a domain field.",
        expect: "both ends inclusive: 0 and u32::MAX by default; start and end of a narrower range usable, one past either S_RANGE",
        choice: None,
        check: domain_range_is_inclusive_at_both_ends,
    },
    Row {
        section: CONFIG,
        level: May,
        statement: "If the device offers the VIRTIO_IOMMU_F_BYPASS_CONFIG feature, it MAY initialize the bypass field to 1.",
        expect: "ViommuConfig::initial_bypass (default 0); unattached endpoints blocked at 0, identity at 1",
        choice: Some("initialised to 0 unless configured"),
        check: bypass_may_start_at_one,
    },
    Row {
        section: CONFIG,
        level: Should,
        statement: "Field bypass SHOULD NOT change on device reset, but SHOULD be restored to its initial value on system reset.",
        expect: "Viommu::reset keeps it; a new Viommu starts from initial_bypass",
        choice: None,
        check: bypass_survives_device_reset_not_system_reset,
    },
    Row {
        section: CONFIG,
        level: MustNot,
        statement: "The device MUST NOT present a value different than 0 or 1 in bypass. (Driver: MAY write bypass when F_BYPASS_CONFIG is negotiated, MUST NOT write any other field.)",
        expect: "writes of other values, other fields, or without the feature are ignored",
        choice: Some("an invalid write leaves the field unchanged (rather than keeping bit 0)"),
        check: bypass_is_zero_or_one_and_the_only_writable_field,
    },
    Row {
        section: CONFIG,
        level: Text,
        statement: "Field bypass of struct virtio_iommu_config determines whether endpoints that are not attached to a domain are in bypass mode.",
        expect: "a driver write switches every unattached endpoint (and only those) at once; turning it off waits for accesses in flight",
        choice: None,
        check: writing_bypass_switches_unattached_endpoints,
    },
    Row {
        section: INIT,
        level: Text,
        statement: "When the device is reset, endpoints are not attached to any domain.",
        expect: "Viommu::reset detaches all, destroys the domains, restores the offered features",
        choice: None,
        check: reset_detaches_every_endpoint,
    },
    Row {
        section: OPS,
        level: Should,
        statement: "The device SHOULD set status to VIRTIO_IOMMU_S_OK if a request succeeds.",
        expect: "S_OK",
        choice: None,
        check: ok_on_success,
    },
    Row {
        section: OPS,
        level: Should,
        statement: "If a request type is not recognized, the device SHOULD NOT write the buffer and SHOULD set the used length to zero.",
        expect: "nothing written, used length 0",
        choice: None,
        check: unknown_type_is_not_written,
    },
    Row {
        section: OPS,
        level: Must,
        statement: "The device MUST ignore field reserved of struct virtio_iommu_req_head and SHOULD set field reserved of struct virtio_iommu_req_tail to zero.",
        expect: "head reserved ignored; tail reserved zero",
        choice: None,
        check: head_reserved_ignored_tail_reserved_zero,
    },
    Row {
        section: OPS,
        level: ShouldNot,
        statement: "The device SHOULD NOT let unattached endpoints that are not in bypass mode access the guest-physical address space.",
        expect: "every access faults (Fault::Detached)",
        choice: None,
        check: unattached_endpoints_reach_nothing_unless_bypassed,
    },
    Row {
        section: OPS,
        level: Text,
        statement: "When the device fails to parse a request, for instance if a request is too small for its type and the device cannot find the tail, then it is unable to set status. In that case, it returns the buffers without writing to them.",
        expect: "writable part shorter than the tail: nothing written, nothing done",
        choice: Some("a readable part too short for its type, with a tail to write: S_INVAL"),
        check: unparsable_requests_are_returned_unwritten,
    },
    Row {
        section: OPS,
        level: Text,
        statement: "All requests are split in two parts: one device-readable, one device-writable.",
        expect: "readable bytes past the type's layout ignored; a longer writable part gets the layout's reply (tail at 0, or after probe_size bytes of properties) and that used length",
        choice: Some("the reply follows the structure, not the end of the buffer"),
        check: request_parts_beyond_their_layout,
    },
    Row {
        section: OPS,
        level: Text,
        statement: "An endpoint is in bypass mode if F_BYPASS_CONFIG is offered and bypass is 1 and the endpoint is not attached to a domain. This applies even if the driver does not accept the VIRTIO_IOMMU_F_BYPASS_CONFIG feature.",
        expect: "identity translation, read and write",
        choice: None,
        check: bypass_mode_even_without_the_feature_accepted,
    },
    Row {
        section: OPS,
        level: Text,
        statement: "[An endpoint is in bypass mode if] the endpoint is attached to a domain with VIRTIO_IOMMU_ATTACH_F_BYPASS. All accesses from an endpoint in bypass mode are allowed and translated by the IOMMU using the identity function.",
        expect: "identity translation, read and write",
        choice: None,
        check: bypass_domains_translate_by_identity,
    },
    Row {
        section: ATTACH,
        level: Must,
        statement: "If the reserved field of an ATTACH request is not zero, the device MUST reject the request and set status to VIRTIO_IOMMU_S_INVAL.",
        expect: "S_INVAL, nothing attached",
        choice: None,
        check: attach_reserved_rejected,
    },
    Row {
        section: ATTACH,
        level: Must,
        statement: "If the device does not recognize a flags bit, it MUST reject the request and set status to VIRTIO_IOMMU_S_INVAL.",
        expect: "S_INVAL",
        choice: Some("ATTACH_F_BYPASS is not recognised unless F_BYPASS_CONFIG is offered and negotiated"),
        check: attach_unknown_flags_rejected,
    },
    Row {
        section: ATTACH,
        level: Must,
        statement: "If the endpoint identified by endpoint doesn't exist, the device MUST reject the request and set status to VIRTIO_IOMMU_S_NOENT.",
        expect: "S_NOENT",
        choice: None,
        check: attach_unknown_endpoint,
    },
    Row {
        section: ATTACH,
        level: May,
        statement: "If another endpoint is already attached to the domain identified by domain, then the device MAY attach the endpoint identified by endpoint to the domain. If it cannot do so, the device MUST reject the request and set status to VIRTIO_IOMMU_S_UNSUPP.",
        expect: "S_OK: endpoints share the domain",
        choice: Some("always attaches"),
        check: attach_shares_domains,
    },
    Row {
        section: ATTACH,
        level: Text,
        statement: "Multiple endpoints can be attached to the same domain. An endpoint can be attached to a single domain at a time. Endpoints attached to different domains are isolated from each other.",
        expect: "endpoints of one domain see its mappings; another domain's MAP and UNMAP do not reach them; joining a second domain leaves the first",
        choice: None,
        check: attached_endpoints_share_only_their_domain,
    },
    Row {
        section: ATTACH,
        level: Should,
        statement: "If the domain already exists and the VIRTIO_IOMMU_ATTACH_F_BYPASS flag is not consistent with that domain, the device SHOULD reject the request and set status to VIRTIO_IOMMU_S_INVAL.",
        expect: "S_INVAL, endpoint unchanged",
        choice: None,
        check: attach_bypass_mismatch,
    },
    Row {
        section: ATTACH,
        level: Should,
        statement: "If the endpoint identified by endpoint is already attached to another domain, then the device SHOULD first detach it from that domain and attach it to the one identified by domain. In that case the device SHOULD behave as if the driver issued a DETACH request with this endpoint, followed by the ATTACH request.",
        expect: "S_OK; the old domain loses the endpoint (and dies with its last one)",
        choice: None,
        check: attach_moves_as_detach_then_attach,
    },
    Row {
        section: ATTACH,
        level: Should,
        statement: "In that case the device SHOULD behave as if the driver issued a DETACH request with this endpoint, followed by the ATTACH request.",
        expect: "a move out of a domain the endpoint is the last one of frees that domain before the new one counts against max_domains; a refused ATTACH leaves the endpoint where it was",
        choice: None,
        check: attach_move_frees_the_old_domain_first,
    },
    Row {
        section: ATTACH,
        level: Should,
        statement: "If properties of the endpoint (obtained with a PROBE request) are compatible with properties of other endpoints already attached to the requested domain, then the device SHOULD attach the endpoint. Otherwise the device SHOULD reject the request and set status to VIRTIO_IOMMU_S_UNSUPP.",
        expect: "S_UNSUPP when the domain maps one of the endpoint's reserved regions; S_OK otherwise",
        choice: Some("compatibility means: no mapping of the domain overlaps the endpoint's RESV_MEM regions"),
        check: attach_incompatible_properties,
    },
    Row {
        section: ATTACH,
        level: Must,
        statement: "A device that does not reject the request MUST attach the endpoint.",
        expect: "attached",
        choice: None,
        check: attach_not_rejected_means_attached,
    },
    Row {
        section: ATTACH,
        level: Text,
        statement: "If the domain doesn't exist in the device, it is created. (Driver: MUST NOT send domain outside domain_range.)",
        expect: "outside domain_range: S_RANGE; beyond max_domains: S_NOMEM",
        choice: Some("S_RANGE and S_NOMEM"),
        check: attach_domain_out_of_range,
    },
    Row {
        section: DETACH,
        level: Must,
        statement: "The device MUST ignore reserved.",
        expect: "S_OK",
        choice: None,
        check: detach_reserved_ignored,
    },
    Row {
        section: DETACH,
        level: Must,
        statement: "If the endpoint identified by endpoint doesn't exist, then the device MUST reject the request and set status to VIRTIO_IOMMU_S_NOENT.",
        expect: "S_NOENT",
        choice: None,
        check: detach_unknown_endpoint,
    },
    Row {
        section: DETACH,
        level: May,
        statement: "If the domain identified by domain doesn't exist, or if the endpoint identified by endpoint isn't attached to this domain, then the device MAY set the request status to VIRTIO_IOMMU_S_INVAL.",
        expect: "S_INVAL, nothing detached",
        choice: Some("S_INVAL in both cases"),
        check: detach_wrong_domain,
    },
    Row {
        section: DETACH,
        level: Must,
        statement: "The device MUST ensure that after being detached from a domain, the endpoint cannot access any mapping from that domain.",
        expect: "blocked when the reply is returned; the reply waits for accesses in flight",
        choice: None,
        check: detach_cuts_every_mapping,
    },
    Row {
        section: DETACH,
        level: Text,
        statement: "When this request completes, the endpoint cannot access any mapping from that domain anymore. However the endpoint may then be in bypass mode and access the guest-physical address space.",
        expect: "bypass 1: identity translation after DETACH; bypass 0: blocked",
        choice: None,
        check: detach_may_leave_bypass_mode,
    },
    Row {
        section: DETACH,
        level: Text,
        statement: "After all endpoints have been successfully detached from a domain, it ceases to exist and its ID can be reused by the driver for another domain.",
        expect: "MAP on it: S_NOENT; ATTACH creates a new empty domain",
        choice: None,
        check: detach_last_endpoint_destroys_domain,
    },
    Row {
        section: MAP,
        level: Should,
        statement: "If virt_start, phys_start or (virt_end + 1) is not aligned on the page granularity, the device SHOULD reject the request and set status to VIRTIO_IOMMU_S_RANGE.",
        expect: "S_RANGE",
        choice: None,
        check: map_unaligned,
    },
    Row {
        section: MAP,
        level: Should,
        statement: "If a mapping already exists in the requested range, the device SHOULD reject the request and set status to VIRTIO_IOMMU_S_INVAL.",
        expect: "S_INVAL, mappings unchanged",
        choice: None,
        check: map_existing_mapping,
    },
    Row {
        section: MAP,
        level: Must,
        statement: "If the device doesn't recognize a flags bit, it MUST reject the request and set status to VIRTIO_IOMMU_S_INVAL.",
        expect: "S_INVAL",
        choice: Some("MAP_F_MMIO is not recognised unless F_MMIO is negotiated"),
        check: map_unknown_flags,
    },
    Row {
        section: MAP,
        level: Text,
        statement: "The VIRTIO_IOMMU_MAP_F_MMIO flag is a memory type rather than a protection flag. It is only available when the VIRTIO_IOMMU_F_MMIO feature has been negotiated.",
        expect: "MAP_F_MMIO maps device memory (Prot::MMIO); READ and WRITE keep their meaning on it",
        choice: None,
        check: map_mmio_is_a_memory_type,
    },
    Row {
        section: MAP,
        level: Should,
        statement: "If domain does not exist, the device SHOULD reject the request and set status to VIRTIO_IOMMU_S_NOENT.",
        expect: "S_NOENT",
        choice: None,
        check: map_unknown_domain,
    },
    Row {
        section: MAP,
        level: Should,
        statement: "If the domain is a bypass domain, the device SHOULD reject the request and set status to VIRTIO_IOMMU_S_INVAL.",
        expect: "S_INVAL",
        choice: None,
        check: map_bypass_domain,
    },
    Row {
        section: MAP,
        level: MustNot,
        statement: "The device MUST NOT allow writes to a range mapped without the VIRTIO_IOMMU_MAP_F_WRITE flag. However, if the underlying architecture does not support write-only mappings, the device MAY allow reads to a range mapped with VIRTIO_IOMMU_MAP_F_WRITE but not VIRTIO_IOMMU_MAP_F_READ.",
        expect: "writes to READ mappings fault (Fault::Denied); WRITE-only mappings also read",
        choice: Some("reads allowed on WRITE-only mappings (stage-1 LPAE has no write-only)"),
        check: map_permissions,
    },
    Row {
        section: MAP,
        level: Text,
        statement: "After the request succeeds, all endpoints attached to this domain can access memory in the range [virt_start; virt_end] (inclusive). PA = VA - virt_start + phys_start.",
        expect: "every attached endpoint reaches the first and last byte, at the formula's address, mappings at both ends of input_range included; the bytes just outside fault",
        choice: None,
        check: map_covers_exactly_the_inclusive_range,
    },
    Row {
        section: MAP,
        level: Text,
        statement: "The range defined by virt_start and virt_end should be within the limits specified by input_range. Given phys_end = phys_start + virt_end - virt_start, the range defined by phys_start and phys_end should be within the guest-physical address space.",
        expect: "ranges ending at u64::MAX, and physical ranges past 64 bits or past the 48-bit output size: S_RANGE, nothing mapped",
        choice: Some("S_RANGE for a physical range the page table cannot hold"),
        check: map_ranges_at_the_end_of_the_address_space,
    },
    Row {
        section: OPS,
        level: Text,
        statement: "Any mapping request to virtual addresses outside of this range [input_range] fails.",
        expect: "S_RANGE",
        choice: None,
        check: map_outside_input_range,
    },
    Row {
        section: OPS,
        level: Text,
        statement: "VIRTIO_IOMMU_S_NOMEM: Insufficient resources.",
        expect: "MAP beyond max_mappings_per_domain or the device-wide max_mappings: S_NOMEM; UNMAP and dying domains give the room back",
        choice: Some("the caps bound what a guest can make the device allocate"),
        check: map_beyond_the_caps,
    },
    Row {
        section: MAP,
        level: Text,
        statement: "Availability and allowed combinations of flags depend on the underlying IOMMU architectures. (Driver: virt_end MUST be strictly greater than virt_start.)",
        expect: "neither READ nor WRITE: S_UNSUPP; virt_end < virt_start: S_INVAL",
        choice: Some("S_UNSUPP for a mapping granting no access; S_INVAL for a reversed range"),
        check: map_other_choices,
    },
    Row {
        section: UNMAP,
        level: May,
        statement: "If the reserved field of an UNMAP request is not zero, the device MAY set the request status to VIRTIO_IOMMU_S_INVAL, in which case the device MAY perform the UNMAP operation.",
        expect: "reserved ignored: the UNMAP is performed, S_OK",
        choice: Some("ignore the field"),
        check: unmap_reserved_ignored,
    },
    Row {
        section: UNMAP,
        level: Should,
        statement: "If domain does not exist, the device SHOULD set the request status to VIRTIO_IOMMU_S_NOENT.",
        expect: "S_NOENT",
        choice: None,
        check: unmap_unknown_domain,
    },
    Row {
        section: UNMAP,
        level: Should,
        statement: "If the domain is a bypass domain, the device SHOULD reject the request and set status to VIRTIO_IOMMU_S_INVAL.",
        expect: "S_INVAL",
        choice: None,
        check: unmap_bypass_domain,
    },
    Row {
        section: UNMAP,
        level: Should,
        statement: "If a mapping affected by the range is not covered in its entirety by the range (the UNMAP request would split the mapping), then the device SHOULD set the request status to VIRTIO_IOMMU_S_RANGE, and SHOULD NOT remove any mapping.",
        expect: "S_RANGE, nothing removed",
        choice: None,
        check: unmap_split_refused,
    },
    Row {
        section: UNMAP,
        level: Should,
        statement: "If part of the range or the full range is not covered by an existing mapping, then the device SHOULD remove all mappings affected by the range and set the request status to VIRTIO_IOMMU_S_OK.",
        expect: "S_OK, every mapping inside removed",
        choice: None,
        check: unmap_spilling_over_holes,
    },
    Row {
        section: UNMAP,
        level: Text,
        statement: "The examples (1) to (7) of the UNMAP request.",
        expect: "(4) fails and unmaps nothing, the others succeed",
        choice: None,
        check: unmap_examples,
    },
    Row {
        section: UNMAP,
        level: Text,
        statement: "All mappings covered by the range [virt_start; virt_end] (inclusive) are removed.",
        expect: "one byte short at either end: S_RANGE; ranges up to u64::MAX beside it: S_OK, nothing removed; the exact range with unaligned spill-over: removed",
        choice: Some("a reversed range (virt_end < virt_start): S_INVAL"),
        check: unmap_range_is_inclusive,
    },
    Row {
        section: PROBE,
        level: Must,
        statement: "The device MUST ignore field reserved of a PROBE request.",
        expect: "same reply",
        choice: None,
        check: probe_reserved_ignored,
    },
    Row {
        section: PROBE,
        level: Should,
        statement: "If the endpoint identified by endpoint doesn't exist, then the device SHOULD reject the request and set status to VIRTIO_IOMMU_S_NOENT.",
        expect: "S_NOENT, in the tail after probe_size zero bytes",
        choice: None,
        check: probe_unknown_endpoint,
    },
    Row {
        section: PROBE,
        level: ShouldNot,
        statement: "If the device does not offer the VIRTIO_IOMMU_F_PROBE feature, and if the driver sends a VIRTIO_IOMMU_T_PROBE request, then the device SHOULD NOT write the buffer and SHOULD set the used length to zero.",
        expect: "not applicable: F_PROBE is always offered and PROBE answered",
        choice: Some("F_PROBE always offered"),
        check: probe_always_offered,
    },
    Row {
        section: PROBE,
        level: Should,
        statement: "The device SHOULD set field reserved of a property to zero.",
        expect: "the 4 reserved bits of every property header are zero",
        choice: None,
        check: probe_property_header,
    },
    Row {
        section: PROBE,
        level: Must,
        statement: "The device MUST write the size of a property without the struct virtio_iommu_probe_property header, in bytes, into length.",
        expect: "RESV_MEM length 20",
        choice: None,
        check: probe_property_header,
    },
    Row {
        section: PROBE,
        level: Must,
        statement: "When two properties follow each other, the device MUST put the second property exactly (length + 4) bytes after the beginning of the first one.",
        expect: "second RESV_MEM at byte 24",
        choice: None,
        check: probe_properties_follow_each_other,
    },
    Row {
        section: PROBE,
        level: Should,
        statement: "If the properties list is smaller than probe_size, the device SHOULD NOT write any property. It SHOULD reject the request and set status to VIRTIO_IOMMU_S_INVAL.",
        expect: "writable part < probe_size + 4: no property, S_INVAL in the tail at its end",
        choice: None,
        check: probe_short_buffer,
    },
    Row {
        section: PROBE,
        level: Should,
        statement: "If the device doesn't fill all probe_size bytes with properties, it SHOULD fill the remaining bytes of properties with zeroes.",
        expect: "zeroes",
        choice: None,
        check: probe_zero_fill,
    },
    Row {
        section: PROBE,
        level: Text,
        statement: "The driver parses all properties until it reaches an empty property (type is 0) or the end of properties. The length of the properties field is probe_size bytes.",
        expect: "the driver's parse finds exactly the endpoint's regions, whether they fill probe_size exactly or are followed by zeroes; regions that cannot fit are refused when the endpoint is declared",
        choice: None,
        check: probe_list_ends_with_an_empty_property_or_probe_size,
    },
    Row {
        section: RESV_MEM,
        level: Should,
        statement: "The device SHOULD set reserved to zero.",
        expect: "zero",
        choice: None,
        check: resv_mem_reserved_zero,
    },
    Row {
        section: RESV_MEM,
        level: ShouldNot,
        statement: "The device SHOULD NOT present more than one VIRTIO_IOMMU_RESV_MEM_T_MSI property per endpoint.",
        expect: "an endpoint with a second MSI window is refused (ViommuError::SecondMsiRegion)",
        choice: None,
        check: resv_mem_one_msi_window,
    },
    Row {
        section: RESV_MEM,
        level: ShouldNot,
        statement: "The device SHOULD NOT present multiple RESV_MEM properties that overlap each other for the same endpoint.",
        expect: "overlapping regions are refused (ViommuError::ReservedOverlap)",
        choice: None,
        check: resv_mem_no_overlap,
    },
    Row {
        section: RESV_MEM,
        level: Should,
        statement: "The device SHOULD reject a MAP request that overlaps a RESV_MEM region.",
        expect: "S_INVAL for a region of any endpoint attached to the domain, device-wide or its own",
        choice: Some("S_INVAL (the specification names no status)"),
        check: resv_mem_map_rejected,
    },
    Row {
        section: RESV_MEM,
        level: ShouldNot,
        statement: "The device SHOULD NOT allow accesses from the endpoint to RESV_MEM regions to affect any other component than the endpoint and the driver.",
        expect: "accesses fault (Fault::Reserved), even in bypass mode",
        choice: None,
        check: resv_mem_accesses_stay_contained,
    },
    Row {
        section: FAULTS,
        level: Should,
        statement: "The device SHOULD set reserved and reserved1 to zero. The device SHOULD set undefined flags to zero.",
        expect: "24-byte struct virtio_iommu_fault, reserved bytes and undefined flags zero",
        choice: None,
        check: fault_reserved_and_flags_zero,
    },
    Row {
        section: FAULTS,
        level: Should,
        statement: "The device SHOULD write a valid endpoint ID in endpoint.",
        expect: "the faulting endpoint; R_MAPPING, FAULT_F_WRITE and the address for a write to an unmapped IOVA",
        choice: None,
        check: fault_names_the_endpoint,
    },
    Row {
        section: FAULTS,
        level: May,
        statement: "The device MAY omit setting VIRTIO_IOMMU_FAULT_F_ADDRESS and writing address in any fault report, regardless of the reason.",
        expect: "R_DOMAIN reports (endpoint attached to no domain) carry no address; R_MAPPING reports do",
        choice: Some("address omitted for R_DOMAIN only"),
        check: fault_address_omitted_when_detached,
    },
    Row {
        section: FAULTS,
        level: Text,
        statement: "VIRTIO_IOMMU_FAULT_R_DOMAIN: the endpoint attempted to access address without being attached to a domain. VIRTIO_IOMMU_FAULT_R_MAPPING: the endpoint attempted to access address, which wasn't mapped in the domain or didn't have the correct protection flags.",
        expect: "a blocked endpoint: R_DOMAIN wherever it reaches, its reserved regions included; attached: R_MAPPING with the faulting address for a reserved region or a missing permission",
        choice: Some("an endpoint in bypass mode reaching a reserved region: R_MAPPING with the address (its identity translation leaves the region out)"),
        check: fault_reasons_name_what_failed,
    },
    Row {
        section: FAULTS,
        level: ShouldNot,
        statement: "If a buffer is too small to contain the fault report, the device SHOULD NOT use multiple buffers to describe it. The device MAY fall back to using an older fault report format that fits in the buffer.",
        expect: "the buffer is returned unwritten and the report dropped (and counted); the next one goes whole into a large enough buffer",
        choice: Some("no older format: drop"),
        check: fault_never_split_over_buffers,
    },
    Row {
        section: FAULTS,
        level: Text,
        statement: "If no buffer is available, the device can either wait for one to be consumed, or drop the event.",
        expect: "up to ViommuConfig::fault_log reports wait; later ones are dropped and counted",
        choice: Some("bounded log, then drop"),
        check: fault_dropped_without_buffers,
    },
];

#[test]
fn every_device_requirement_of_the_specification_holds() {
    let mut failures = Vec::new();
    for (i, row) in ROWS.iter().enumerate() {
        if let Err(why) = (row.check)() {
            failures.push(format!(
                "row {i} [{} / {:?}] {}\n    expected: {}\n    {why}",
                row.section, row.level, row.statement, row.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_table_names_real_sections_and_explains_every_choice() {
    for row in ROWS {
        assert!(!row.statement.is_empty() && !row.expect.is_empty());
        // A MAY always comes with the model's choice.
        if matches!(row.level, May) {
            assert!(row.choice.is_some(), "{}", row.statement);
        }
    }
    // Every device-normative section is represented.
    for section in [
        FEATURES, CONFIG, INIT, OPS, ATTACH, DETACH, MAP, UNMAP, PROBE, RESV_MEM, FAULTS,
    ] {
        assert!(ROWS.iter().any(|r| r.section == section), "{section}");
    }
}
