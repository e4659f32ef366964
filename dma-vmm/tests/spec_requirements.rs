//! A second, independent pass over the device-normative statements of the virtio-iommu
//! specification (virtio 1.2/1.3, "Device Types / IOMMU Device"), aimed at what a hostile or
//! careless driver can send: every truncation and extension of every request, every flag bit,
//! every refused request followed by a check that nothing changed (the domains, their
//! endpoints and mappings, and what every endpoint's device reaches), the UNMAP and MAP range
//! rules checked exhaustively against the text on a small address space, the domain lifetime
//! through moves and resets, and bounds on what many domains, many endpoints and huge lengths
//! can make the device allocate. Each test names the clause it checks.
#![cfg(not(loom))]

mod common;

use common::{attach, map, unmap};
use dma_vmm::translate::Fault;
use dma_vmm::viommu::wire::{self, T_ATTACH, T_DETACH, T_MAP, T_PROBE, T_UNMAP};
use dma_vmm::viommu::*;
use io_pgtable::Prot;

const PAGE: u64 = 0x1000;
const PROBE_SIZE: u32 = 64;
const RW: u32 = MAP_F_READ | MAP_F_WRITE;
/// Endpoint 9's own reserved region.
const HOLE: ReservedRegion = ReservedRegion {
    kind: ReservedKind::Reserved,
    start: 0x40_0000,
    end: 0x40_ffff,
};

fn cfg() -> ViommuConfig {
    ViommuConfig {
        probe_size: PROBE_SIZE,
        ..ViommuConfig::default()
    }
}

/// Endpoints 7 and 8 without regions, 9 with [`HOLE`].
fn dev_with(config: ViommuConfig) -> Viommu {
    let v = Viommu::new(config).expect("valid config");
    v.add_endpoint(7, vec![]).unwrap();
    v.add_endpoint(8, vec![]).unwrap();
    v.add_endpoint(9, vec![HOLE]).unwrap();
    v
}

fn dev() -> Viommu {
    dev_with(cfg())
}

fn ok(v: &Viommu, r: Request) {
    assert_eq!(v.handle(r).status(), Status::Ok, "{r:?}");
}

/// The writable part a driver gives a request of type `kind`.
fn writable(kind: u8) -> usize {
    if kind == T_PROBE {
        PROBE_SIZE as usize + wire::TAIL_SIZE
    } else {
        wire::TAIL_SIZE
    }
}

/// The status a driver reads after sending `bytes` (the tail at the end of the writable part),
/// `None` for a buffer returned unwritten.
fn status_of(v: &Viommu, bytes: &[u8], writable_len: usize) -> Option<u8> {
    let reply = v.handle_bytes(bytes, writable_len);
    if reply.is_empty() {
        return None;
    }
    assert!(
        reply.len() <= writable_len,
        "reply beyond the writable part"
    );
    Some(reply[reply.len() - wire::TAIL_SIZE])
}

/// Everything a refused request must leave as it was: the domains with their endpoints and
/// mappings, each endpoint's attachment and what its device reaches at a few IOVAs, the
/// config space and the driver's features.
#[derive(Debug, PartialEq)]
struct State {
    domains: Vec<DomainState>,
    endpoints: Vec<EndpointState>,
    config: [u8; wire::CONFIG_SPACE_SIZE],
    features: u64,
}

/// A domain: its id, endpoints and mappings.
type DomainState = (u32, Option<Vec<u32>>, Option<Vec<Mapping>>);
/// An endpoint: its id, domain, whether in bypass mode, and what a write reaches at each
/// probed IOVA.
type EndpointState = (u32, Option<u32>, bool, Vec<Result<u64, Fault>>);

fn state(v: &Viommu) -> State {
    let probes = [0, PAGE, 3 * PAGE, 0x10_0000, HOLE.start, 0x7f_f000];
    State {
        domains: v
            .domain_ids()
            .into_iter()
            .map(|d| (d, v.domain_endpoints(d), v.mappings(d)))
            .collect(),
        endpoints: [7, 8, 9]
            .into_iter()
            .map(|id| {
                let ep = v.endpoint(id).unwrap();
                let reach = probes
                    .iter()
                    .map(|&iova| ep.access(iova, 8, Prot::WRITE, |s| s[0].paddr))
                    .collect();
                (id, ep.domain(), ep.in_bypass_mode(), reach)
            })
            .collect(),
        config: v.config_space(),
        features: v.driver_features(),
    }
}

// ---- Request framing ------------------------------------------------------------------------

/// "Device operations": "When the device fails to parse a request, for instance if a request
/// is too small for its type and the device cannot find the tail, then it is unable to set
/// status. In that case, it returns the buffers without writing to them." and "If a request
/// type is not recognized, the device SHOULD NOT write the buffer and SHOULD set the used
/// length to zero." Every cut of every request type's readable part, and every extension of
/// it with non-zero bytes, against writable parts from empty to huge: a readable part shorter
/// than its layout is INVAL (the tail can be found), bytes past the layout are ignored (the
/// same status as the exact request on an identical device), no reply is longer than the
/// writable part nor than `probe_size` + tail, and nothing panics.
#[test]
fn every_cut_and_extension_of_every_request() {
    let requests = [
        attach(1, 7),
        Request::Detach {
            domain: 1,
            endpoint: 7,
        },
        map(1, 0, PAGE - 1, 0x8000, RW),
        unmap(1, 0, PAGE - 1),
        Request::Probe { endpoint: 9 },
    ];
    // A device where each request above succeeds: endpoint 7 attached to domain 1, which
    // maps nothing yet at page 0.
    let fresh = || {
        let v = dev();
        ok(&v, attach(1, 7));
        v
    };
    let cap = PROBE_SIZE as usize + wire::TAIL_SIZE;
    for r in requests {
        let exact = wire::encode_request(&r);
        let kind = exact[0];
        let want = status_of(&fresh(), &exact, writable(kind));
        assert!(want.is_some(), "{r:?}");
        for cut in 0..exact.len() {
            let v = fresh();
            let before = state(&v);
            let got = status_of(&v, &exact[..cut], writable(kind));
            let expected = (cut > 0).then_some(Status::Inval.code());
            assert_eq!(got, expected, "{r:?} cut to {cut}");
            assert_eq!(state(&v), before, "a truncated {r:?} changed the device");
        }
        for extra in [1, 3, 4, 64, 4096] {
            let mut long = exact.clone();
            long.resize(exact.len() + extra, 0xa5);
            assert_eq!(
                status_of(&fresh(), &long, writable(kind)),
                want,
                "{r:?} with {extra} trailing bytes"
            );
        }
        for writable_len in [0, 1, 3, 4, 5, 8, cap - 1, cap, cap + 1, 1 << 20, usize::MAX] {
            let reply = fresh().handle_bytes(&exact, writable_len);
            assert!(reply.len() <= writable_len.min(cap), "{r:?} {writable_len}");
            // Too short for the tail: the buffer comes back unwritten.
            assert_eq!(reply.is_empty(), writable_len < wire::TAIL_SIZE);
        }
    }
    // Every unknown type, whatever follows and however big the writable part.
    for kind in (0..=255u8).filter(|k| wire::request_size(*k).is_none()) {
        let v = dev();
        let mut bytes = vec![kind, 0, 0, 0];
        bytes.resize(100, 0xff);
        assert!(v.handle_bytes(&bytes, usize::MAX).is_empty(), "type {kind}");
        assert!(v.handle_bytes(&bytes[..1], 4).is_empty(), "type {kind}");
    }
    // An empty readable part has no type: nothing written.
    assert!(dev().handle_bytes(&[], 4).is_empty());
}

/// "Device operations": "The device MUST ignore field reserved of struct
/// virtio_iommu_req_head and SHOULD set field reserved of struct virtio_iommu_req_tail to
/// zero." Every value of each head reserved byte, on every request type.
#[test]
fn head_reserved_bytes_never_matter_and_tail_reserved_is_zero() {
    for r in [
        attach(2, 8),
        map(2, 0, PAGE - 1, 0, MAP_F_READ),
        unmap(2, 0, u64::MAX),
        Request::Probe { endpoint: 8 },
        Request::Detach {
            domain: 2,
            endpoint: 8,
        },
    ] {
        let exact = wire::encode_request(&r);
        for byte in 1..wire::HEAD_SIZE {
            for value in [1u8, 0x80, 0xff] {
                let v = dev();
                ok(&v, attach(2, 8));
                let mut bytes = exact.clone();
                bytes[byte] = value;
                let reply = v.handle_bytes(&bytes, writable(exact[0]));
                let tail = &reply[reply.len() - wire::TAIL_SIZE..];
                assert_eq!(tail, [Status::Ok.code(), 0, 0, 0], "{r:?} head[{byte}]");
            }
        }
    }
}

// ---- Refused requests change nothing ---------------------------------------------------------

/// Every status the device-normative text gives a refused request, each on the same device,
/// each followed by a check that the request changed nothing (domains, endpoints, mappings,
/// what every device reaches, the config space), and that the device then still serves
/// valid requests.
#[test]
fn every_refusal_changes_nothing_and_the_device_keeps_working() {
    let v = dev();
    // Domain 1 (translated): endpoints 7 and 9; [0, 4 pages) mapped RW, [1 MiB, +4 KiB) R.
    ok(&v, attach(1, 7));
    ok(&v, attach(1, 9));
    ok(&v, map(1, 0, 4 * PAGE - 1, 0x10_0000, RW));
    ok(&v, map(1, 0x10_0000, 0x10_0fff, 0x20_0000, MAP_F_READ));
    // Domain 2 (bypass): endpoint 8.
    ok(
        &v,
        Request::Attach {
            domain: 2,
            endpoint: 8,
            flags: ATTACH_F_BYPASS,
        },
    );
    // A third domain, 3, mapping endpoint 9's reserved hole; it needs an endpoint: none is
    // left without a domain, so it is built on a second device below.
    let mut attach_reserved = wire::encode_request(&attach(1, 8));
    attach_reserved[19] = 1;
    let refusals: Vec<(&str, Vec<u8>, Status)> = vec![
        // ATTACH: "If the reserved field of an ATTACH request is not zero, the device MUST
        // reject the request and set status to VIRTIO_IOMMU_S_INVAL."
        ("ATTACH reserved", attach_reserved, Status::Inval),
        // ATTACH: "If the device does not recognize a flags bit, it MUST reject the request
        // and set status to VIRTIO_IOMMU_S_INVAL."
        (
            "ATTACH flag bit 1",
            wire::encode_request(&Request::Attach {
                domain: 1,
                endpoint: 8,
                flags: 1 << 1,
            }),
            Status::Inval,
        ),
        // ATTACH: "If the endpoint identified by endpoint doesn't exist, the device MUST
        // reject the request and set status to VIRTIO_IOMMU_S_NOENT."
        (
            "ATTACH unknown endpoint",
            wire::encode_request(&attach(1, 1234)),
            Status::NoEnt,
        ),
        // ATTACH: "If the domain already exists and the VIRTIO_IOMMU_ATTACH_F_BYPASS flag is
        // not consistent with that domain, the device SHOULD reject the request and set
        // status to VIRTIO_IOMMU_S_INVAL." Both ways, for an endpoint moving in.
        (
            "ATTACH bypass flag to a translated domain",
            wire::encode_request(&Request::Attach {
                domain: 1,
                endpoint: 8,
                flags: ATTACH_F_BYPASS,
            }),
            Status::Inval,
        ),
        (
            "ATTACH without the bypass flag to a bypass domain",
            wire::encode_request(&attach(2, 7)),
            Status::Inval,
        ),
        // DETACH: "If the endpoint identified by endpoint doesn't exist, then the device
        // MUST reject the request and set status to VIRTIO_IOMMU_S_NOENT."
        (
            "DETACH unknown endpoint",
            wire::encode_request(&Request::Detach {
                domain: 1,
                endpoint: 1234,
            }),
            Status::NoEnt,
        ),
        // DETACH: "If the domain identified by domain doesn't exist, or if the endpoint
        // identified by endpoint isn't attached to this domain, then the device MAY set the
        // request status to VIRTIO_IOMMU_S_INVAL." (the model's choice: it does, and the
        // endpoint stays attached where it is).
        (
            "DETACH from another endpoint's domain",
            wire::encode_request(&Request::Detach {
                domain: 2,
                endpoint: 7,
            }),
            Status::Inval,
        ),
        (
            "DETACH from a domain that does not exist",
            wire::encode_request(&Request::Detach {
                domain: 99,
                endpoint: 7,
            }),
            Status::Inval,
        ),
        // MAP: "If virt_start, phys_start or (virt_end + 1) is not aligned on the page
        // granularity, the device SHOULD reject the request and set status to
        // VIRTIO_IOMMU_S_RANGE."
        (
            "MAP virt_start unaligned",
            wire::encode_request(&map(1, 0x20_0800, 0x20_1fff, 0, RW)),
            Status::Range,
        ),
        (
            "MAP phys_start unaligned",
            wire::encode_request(&map(1, 0x20_0000, 0x20_0fff, 0x10, RW)),
            Status::Range,
        ),
        (
            "MAP virt_end + 1 unaligned",
            wire::encode_request(&map(1, 0x20_0000, 0x20_0ffe, 0, RW)),
            Status::Range,
        ),
        // MAP: "If a mapping already exists in the requested range, the device SHOULD reject
        // the request and set status to VIRTIO_IOMMU_S_INVAL." One page over the end of the
        // first mapping, one over the start of the second, and one covering both.
        (
            "MAP over the last page of a mapping",
            wire::encode_request(&map(1, 3 * PAGE, 5 * PAGE - 1, 0, RW)),
            Status::Inval,
        ),
        (
            "MAP ending on the first page of a mapping",
            wire::encode_request(&map(1, 0xf_f000, 0x10_0fff, 0, RW)),
            Status::Inval,
        ),
        (
            "MAP around two mappings",
            wire::encode_request(&map(1, 0, 0x1f_ffff, 0, RW)),
            Status::Inval,
        ),
        // MAP: "If the device doesn't recognize a flags bit, it MUST reject the request and
        // set status to VIRTIO_IOMMU_S_INVAL."
        (
            "MAP flag bit 3",
            wire::encode_request(&map(1, 0x20_0000, 0x20_0fff, 0, RW | 1 << 3)),
            Status::Inval,
        ),
        (
            "MAP flag bit 31",
            wire::encode_request(&map(1, 0x20_0000, 0x20_0fff, 0, RW | 1 << 31)),
            Status::Inval,
        ),
        // MAP: "If domain does not exist, the device SHOULD reject the request and set status
        // to VIRTIO_IOMMU_S_NOENT."
        (
            "MAP unknown domain",
            wire::encode_request(&map(99, 0x20_0000, 0x20_0fff, 0, RW)),
            Status::NoEnt,
        ),
        // MAP: "If the domain is a bypass domain, the device SHOULD reject the request and
        // set status to VIRTIO_IOMMU_S_INVAL."
        (
            "MAP bypass domain",
            wire::encode_request(&map(2, 0x20_0000, 0x20_0fff, 0, RW)),
            Status::Inval,
        ),
        // "Any mapping request to virtual addresses outside of this range [input_range]
        // fails." (the model: RANGE)
        (
            "MAP past input_range",
            wire::encode_request(&map(1, 1 << 48, (1 << 48) + PAGE - 1, 0, RW)),
            Status::Range,
        ),
        (
            "MAP straddling the end of input_range",
            wire::encode_request(&map(1, (1 << 48) - PAGE, (1 << 48) + PAGE - 1, 0, RW)),
            Status::Range,
        ),
        (
            "MAP to the end of the 64-bit space",
            wire::encode_request(&map(1, u64::MAX - PAGE + 1, u64::MAX, 0, RW)),
            Status::Range,
        ),
        // MAP (driver): "virt_end MUST be strictly greater than virt_start." (the model:
        // INVAL for a reversed range)
        (
            "MAP reversed",
            wire::encode_request(&map(1, 0x20_1000, 0x20_0fff, 0, RW)),
            Status::Inval,
        ),
        // "Given phys_end = phys_start + virt_end - virt_start, the range defined by
        // phys_start and phys_end should be within the guest-physical address space": a
        // range whose physical end wraps around 2^64 is refused (RANGE), not mapped.
        (
            "MAP physical range wrapping",
            wire::encode_request(&map(1, 0x20_0000, 0x20_1fff, u64::MAX - PAGE + 1, RW)),
            Status::Range,
        ),
        // RESV_MEM: "The device SHOULD reject a MAP request that overlaps a RESV_MEM region."
        // (endpoint 9's hole, one byte of it)
        (
            "MAP over a reserved region",
            wire::encode_request(&map(1, HOLE.end & !(PAGE - 1), HOLE.end + PAGE, 0, RW)),
            Status::Inval,
        ),
        // UNMAP: "If a mapping affected by the range is not covered in its entirety by the
        // range (the UNMAP request would split the mapping), then the device SHOULD set the
        // request status to VIRTIO_IOMMU_S_RANGE, and SHOULD NOT remove any mapping." The
        // second mapping is covered whole: it stays too.
        (
            "UNMAP splitting the first mapping",
            wire::encode_request(&unmap(1, PAGE, u64::MAX)),
            Status::Range,
        ),
        (
            "UNMAP ending one byte short",
            wire::encode_request(&unmap(1, 0, 4 * PAGE - 2)),
            Status::Range,
        ),
        // UNMAP: "If domain does not exist, the device SHOULD set the request status to
        // VIRTIO_IOMMU_S_NOENT."
        (
            "UNMAP unknown domain",
            wire::encode_request(&unmap(99, 0, u64::MAX)),
            Status::NoEnt,
        ),
        // UNMAP: "If the domain is a bypass domain, the device SHOULD reject the request and
        // set status to VIRTIO_IOMMU_S_INVAL."
        (
            "UNMAP bypass domain",
            wire::encode_request(&unmap(2, 0, u64::MAX)),
            Status::Inval,
        ),
        // PROBE: "If the endpoint identified by endpoint doesn't exist, then the device
        // SHOULD reject the request and set status to VIRTIO_IOMMU_S_NOENT."
        (
            "PROBE unknown endpoint",
            wire::encode_request(&Request::Probe { endpoint: 1234 }),
            Status::NoEnt,
        ),
    ];
    let before = state(&v);
    for (what, bytes, status) in &refusals {
        let got = status_of(&v, bytes, writable(bytes[0]));
        assert_eq!(got, Some(status.code()), "{what}");
        assert_eq!(state(&v), before, "{what} changed the device");
    }
    // The same refusals as one batch: one grace period at most, the same answers.
    let batch: Vec<Request> = refusals
        .iter()
        .filter_map(|(_, b, _)| wire::decode(b).ok())
        .collect();
    for (reply, (what, bytes, status)) in v
        .handle_batch(batch)
        .iter()
        .zip(refusals.iter().filter(|(_, b, _)| wire::decode(b).is_ok()))
    {
        assert_eq!(reply.status(), *status, "{what} in a batch: {bytes:?}");
    }
    assert_eq!(state(&v), before, "the batch changed the device");
    // Still working: a MAP next to the others, an UNMAP of both old mappings, a move.
    ok(&v, map(1, 0x20_0000, 0x20_0fff, 0x30_0000, MAP_F_WRITE));
    let ep7 = v.endpoint(7).unwrap();
    assert_eq!(
        ep7.access(0x20_0010, 4, Prot::WRITE, |s| s[0].paddr),
        Ok(0x30_0010)
    );
    ok(&v, unmap(1, 0, 0x10_0fff));
    assert_eq!(v.mappings(1).unwrap().len(), 1);
    ok(
        &v,
        Request::Attach {
            domain: 2,
            endpoint: 7,
            flags: ATTACH_F_BYPASS,
        },
    );
    assert!(ep7.in_bypass_mode());
}

/// ATTACH: "If properties of the endpoint (obtained with a PROBE request) are compatible with
/// properties of other endpoints already attached to the requested domain, then the device
/// SHOULD attach the endpoint. Otherwise the device SHOULD reject the request and set status
/// to VIRTIO_IOMMU_S_UNSUPP." and "If the endpoint identified by endpoint is already attached
/// to another domain, then the device SHOULD first detach it from that domain [...]. If the
/// device cannot do so, it MUST reject the request and set status to VIRTIO_IOMMU_S_UNSUPP."
/// A move refused for incompatible properties leaves the endpoint where it was, its device
/// still translating through the old domain, and the old domain alive (it was its last
/// endpoint).
#[test]
fn refused_move_keeps_the_endpoint_translating_through_its_domain() {
    let v = dev();
    ok(&v, attach(1, 9));
    ok(&v, map(1, 0, PAGE - 1, 0x5000, RW));
    ok(&v, attach(2, 7));
    ok(&v, map(2, HOLE.start, HOLE.end, 0x9_0000, RW)); // endpoint 7 has no hole
    let before = state(&v);
    assert_eq!(v.handle(attach(2, 9)).status(), Status::Unsupp);
    assert_eq!(state(&v), before);
    let ep9 = v.endpoint(9).unwrap();
    assert_eq!(ep9.domain(), Some(1));
    assert_eq!(ep9.access(8, 8, Prot::READ, |s| s[0].paddr), Ok(0x5008));
    // Once the hole is unmapped the properties are compatible: the move happens and the old
    // domain, left without endpoints, ceases to exist.
    ok(&v, unmap(2, 0, u64::MAX));
    ok(&v, attach(2, 9));
    assert_eq!(v.domain_ids(), vec![2]);
    assert_eq!(v.handle(map(1, 0, PAGE - 1, 0, RW)).status(), Status::NoEnt);
}

/// DETACH: "After all endpoints have been successfully detached from a domain, it ceases to
/// exist and its ID can be reused by the driver for another domain." and ATTACH: "In that
/// case the device SHOULD behave as if the driver issued a DETACH request with this endpoint,
/// followed by the ATTACH request." A domain emptied by moves (not DETACH) dies too; its id,
/// reused, is a new domain with no mapping, even of the other kind, and the old mappings are
/// unreachable from every device.
#[test]
fn a_domain_emptied_by_moves_dies_and_its_id_starts_afresh() {
    let v = dev();
    ok(&v, attach(5, 7));
    ok(&v, attach(5, 8));
    ok(&v, map(5, 0, 8 * PAGE - 1, 0x10_0000, RW));
    ok(&v, attach(6, 7));
    assert_eq!(v.domain_endpoints(5), Some(vec![8]));
    assert_eq!(v.mappings(5).unwrap().len(), 1, "alive while 8 is attached");
    ok(&v, attach(6, 8));
    assert_eq!(v.domain_ids(), vec![6]);
    for id in [7, 8] {
        let ep = v.endpoint(id).unwrap();
        assert!(matches!(
            ep.access(0, 8, Prot::READ, |_| ()),
            Err(Fault::Unmapped { iova: 0 })
        ));
    }
    // The id comes back as a bypass domain, then (emptied again) as a translated one.
    ok(
        &v,
        Request::Attach {
            domain: 5,
            endpoint: 9,
            flags: ATTACH_F_BYPASS,
        },
    );
    assert!(v.domain(5).unwrap().is_bypass());
    ok(
        &v,
        Request::Detach {
            domain: 5,
            endpoint: 9,
        },
    );
    ok(&v, attach(5, 9));
    assert_eq!(v.mappings(5), Some(vec![]));
    // The same (domain, range) maps again: nothing of the first life is left.
    ok(&v, map(5, 0, 8 * PAGE - 1, 0x10_0000, RW));
}

// ---- MAP and UNMAP range rules, exhaustively -------------------------------------------------

/// MAP: "If a mapping already exists in the requested range, the device SHOULD reject the
/// request and set status to VIRTIO_IOMMU_S_INVAL." UNMAP: "If a mapping affected by the
/// range is not covered in its entirety by the range [...] VIRTIO_IOMMU_S_RANGE, and SHOULD NOT
/// remove any mapping. If part of the range or the full range is not covered by an existing
/// mapping, then the device SHOULD remove all mappings affected by the range and set the
/// request status to VIRTIO_IOMMU_S_OK." Against the text itself, on eight pages holding the
/// mappings [1, 2] and [4, 4] (in pages): every page-granular MAP, and every UNMAP whose ends
/// are a page boundary or one byte either side of it, on a fresh copy each time.
#[test]
fn map_and_unmap_range_rules_on_every_small_range() {
    let layout = [(PAGE, 3 * PAGE - 1), (4 * PAGE, 5 * PAGE - 1)];
    let fresh = || {
        let v = dev();
        ok(&v, attach(1, 7));
        for (s, e) in layout {
            ok(&v, map(1, s, e, s + 0x100_0000, RW));
        }
        v
    };
    for first in 0..8u64 {
        for last in first..8 {
            let (s, e) = (first * PAGE, (last + 1) * PAGE - 1);
            let overlaps = layout.iter().any(|&(ms, me)| ms <= e && s <= me);
            let v = fresh();
            let want = if overlaps { Status::Inval } else { Status::Ok };
            assert_eq!(
                v.handle(map(1, s, e, 0, RW)).status(),
                want,
                "MAP {s:#x}..={e:#x}"
            );
            assert_eq!(v.mappings(1).unwrap().len(), 2 + usize::from(!overlaps));
        }
    }
    let ends: Vec<u64> = (0..=8u64)
        .flat_map(|p| [p * PAGE, (p * PAGE).wrapping_sub(1), p * PAGE + 1])
        .filter(|&a| a <= 8 * PAGE)
        .collect();
    for &s in &ends {
        for &e in ends.iter().filter(|&&e| e >= s) {
            let affected: Vec<_> = layout
                .iter()
                .filter(|&&(ms, me)| ms <= e && s <= me)
                .collect();
            let splits = affected.iter().any(|&&(ms, me)| ms < s || me > e);
            let v = fresh();
            let before = state(&v);
            let got = v.handle(unmap(1, s, e)).status();
            if splits {
                assert_eq!(got, Status::Range, "UNMAP {s:#x}..={e:#x}");
                assert_eq!(state(&v), before, "a refused UNMAP {s:#x}..={e:#x}");
            } else {
                assert_eq!(got, Status::Ok, "UNMAP {s:#x}..={e:#x}");
                let left: Vec<_> = v
                    .mappings(1)
                    .unwrap()
                    .iter()
                    .map(|m| (m.virt_start, m.virt_end))
                    .collect();
                let want: Vec<_> = layout
                    .iter()
                    .filter(|m| !affected.contains(m))
                    .copied()
                    .collect();
                assert_eq!(left, want, "UNMAP {s:#x}..={e:#x}");
                // What was removed is unreachable; what was kept is not.
                let ep = v.endpoint(7).unwrap();
                for (ms, _) in layout {
                    let reached = ep.access(ms, 1, Prot::READ, |_| ()).is_ok();
                    assert_eq!(reached, want.iter().any(|m| m.0 == ms));
                }
            }
        }
    }
}

// ---- Flags ------------------------------------------------------------------------------------

/// MAP: "If the device doesn't recognize a flags bit, it MUST reject the request and set
/// status to VIRTIO_IOMMU_S_INVAL." with "[MAP_F_MMIO] is only available when the
/// VIRTIO_IOMMU_F_MMIO feature has been negotiated." ATTACH: the same for its flags, with
/// ATTACH_F_BYPASS available when VIRTIO_IOMMU_F_BYPASS_CONFIG is negotiated. Every one of the
/// 32 bits, with and without the feature; the device's choice for a known combination
/// granting no access is UNSUPP.
#[test]
fn every_flag_bit_with_and_without_its_feature() {
    for negotiate_mmio in [false, true] {
        let v = dev();
        let offered = v.device_features();
        let features = if negotiate_mmio {
            offered
        } else {
            offered & !F_MMIO
        };
        v.set_driver_features(features);
        ok(&v, attach(1, 7));
        for bit in 0..32u32 {
            let flags = 1u32 << bit;
            let known = match flags {
                MAP_F_READ | MAP_F_WRITE => Some(Status::Ok),
                MAP_F_MMIO if negotiate_mmio => Some(Status::Unsupp), // MMIO, no access
                _ => None,
            };
            let want = known.unwrap_or(Status::Inval);
            let s = u64::from(bit) * PAGE;
            let got = v.handle(map(1, s, s + PAGE - 1, 0, flags)).status();
            assert_eq!(got, want, "MAP flags {flags:#x}, F_MMIO {negotiate_mmio}");
            // With a known bit beside it, an unknown bit still fails the request.
            if known.is_none() {
                let got = v.handle(map(1, s, s + PAGE - 1, 0, flags | RW)).status();
                assert_eq!(got, Status::Inval, "MAP flags {:#x}", flags | RW);
            }
        }
        let mmio_rw = v.handle(map(1, 1 << 30, (1 << 30) + PAGE - 1, 0, MAP_F_MMIO | RW));
        let want = if negotiate_mmio {
            Status::Ok
        } else {
            Status::Inval
        };
        assert_eq!(mmio_rw.status(), want);
    }
    for negotiate_bypass in [false, true] {
        let v = dev();
        let offered = v.device_features();
        assert_ne!(offered & F_BYPASS_CONFIG, 0);
        let features = if negotiate_bypass {
            offered
        } else {
            offered & !F_BYPASS_CONFIG
        };
        v.set_driver_features(features);
        for bit in 0..32 {
            let flags = 1u32 << bit;
            let want = if flags == ATTACH_F_BYPASS && negotiate_bypass {
                Status::Ok
            } else {
                Status::Inval
            };
            let r = Request::Attach {
                domain: 100 + bit,
                endpoint: 7,
                flags,
            };
            assert_eq!(v.handle(r).status(), want, "ATTACH flags {flags:#x}");
        }
    }
}

// ---- Configuration space ----------------------------------------------------------------------

/// "Device configuration layout": "The device MUST NOT present a value different than 0 or 1
/// in bypass." and (driver) "The driver MUST NOT write to any other device configuration
/// field. The driver MUST NOT write a value different than 0 or 1 to bypass." Every write of
/// one to eight bytes at every offset of the 40-byte space and past it, with several values:
/// only a one-byte 0 or 1 to `bypass` takes effect; no other byte of the space ever changes,
/// and `bypass` reads 0 or 1.
#[test]
fn hostile_config_writes() {
    let v = dev();
    let initial = v.config_space();
    for offset in (0..48).chain([usize::MAX - 1, usize::MAX]) {
        for len in 0..=8 {
            for value in [0u8, 1, 2, 0x80, 0xff] {
                let data = vec![value; len];
                let took = v.write_config(offset, &data);
                let expected = offset == wire::CONFIG_BYPASS_OFFSET && len == 1 && value <= 1;
                assert_eq!(took, expected, "write {data:?} at {offset}");
                let now = v.config_space();
                assert!(now[wire::CONFIG_BYPASS_OFFSET] <= 1);
                for i in (0..wire::CONFIG_SPACE_SIZE).filter(|&i| i != wire::CONFIG_BYPASS_OFFSET) {
                    assert_eq!(now[i], initial[i], "byte {i} after {data:?} at {offset}");
                }
                if took {
                    assert_eq!(now[wire::CONFIG_BYPASS_OFFSET], value);
                }
            }
        }
    }
    // Without F_BYPASS_CONFIG negotiated, even a valid write has no effect.
    v.write_config(wire::CONFIG_BYPASS_OFFSET, &[0]);
    v.set_driver_features(v.device_features() & !F_BYPASS_CONFIG);
    assert!(!v.write_config(wire::CONFIG_BYPASS_OFFSET, &[1]));
    assert!(!v.bypass());
}

// ---- Device reset -----------------------------------------------------------------------------

/// "Device initialization": "When the device is reset, endpoints are not attached to any
/// domain." and "Field bypass SHOULD NOT change on device reset". After a reset every
/// domain is gone (MAP and UNMAP on them: NOENT), devices holding endpoint handles from
/// before reach nothing (bypass 0) or everything but their holes (bypass 1), the room the
/// domains took is given back, and the device serves a new driver from scratch.
#[test]
fn reset_forgets_every_domain_and_keeps_serving() {
    for bypass in [false, true] {
        let v = dev_with(ViommuConfig {
            max_domains: 2,
            max_mappings: 2,
            ..cfg()
        });
        let ep9 = v.endpoint(9).unwrap();
        ok(&v, attach(1, 7));
        ok(&v, attach(2, 9));
        ok(&v, map(1, 0, PAGE - 1, 0, RW));
        ok(&v, map(2, 0, PAGE - 1, 0, RW));
        assert_eq!(v.handle(attach(3, 8)).status(), Status::NoMem);
        assert!(v.write_config(wire::CONFIG_BYPASS_OFFSET, &[u8::from(bypass)]));
        v.reset();
        assert_eq!(v.bypass(), bypass, "bypass survives a device reset");
        assert!(v.domain_ids().is_empty());
        for d in [1, 2] {
            assert_eq!(
                v.handle(map(d, PAGE, 2 * PAGE - 1, 0, RW)).status(),
                Status::NoEnt
            );
            assert_eq!(v.handle(unmap(d, 0, u64::MAX)).status(), Status::NoEnt);
        }
        assert_eq!(ep9.domain(), None);
        assert_eq!(ep9.in_bypass_mode(), bypass);
        let at_0 = ep9.access(0, 8, Prot::READ, |s| s[0].paddr);
        assert_eq!(at_0.is_ok(), bypass, "{at_0:?}");
        assert!(ep9.access(HOLE.start, 8, Prot::READ, |_| ()).is_err());
        // The new driver gets all the room back: two domains, two mappings.
        ok(&v, attach(1, 8));
        ok(&v, attach(2, 9));
        ok(&v, map(1, 0, PAGE - 1, 0, RW));
        ok(&v, map(2, 0, PAGE - 1, 0x7000, RW));
        assert_eq!(ep9.access(0, 8, Prot::READ, |s| s[0].paddr), Ok(0x7000));
    }
}

// ---- Bounds: many domains, many endpoints, huge lengths ----------------------------------------

/// "VIRTIO_IOMMU_S_NOMEM: Insufficient resources." Domains beyond `max_domains` are refused
/// with NOMEM and nothing changes; a move out of a domain its endpoint is the last one of
/// still succeeds (the old one dies first, as DETACH then ATTACH); a detach gives a slot back.
/// Many endpoints can share one domain and all leave it; the domain dies with the last.
#[test]
fn many_domains_and_many_endpoints_stay_bounded() {
    let v = Viommu::new(ViommuConfig {
        max_domains: 4,
        ..cfg()
    })
    .unwrap();
    let n = if cfg!(miri) { 16 } else { 512 };
    for id in 0..n {
        v.add_endpoint(id, vec![]).unwrap();
    }
    for id in 0..4 {
        ok(&v, attach(id, id));
    }
    let before = state_of_domains(&v);
    for id in 4..n.min(64) {
        assert_eq!(v.handle(attach(1000 + id, id)).status(), Status::NoMem);
    }
    assert_eq!(state_of_domains(&v), before);
    // Endpoint 0 is alone in domain 0: moving it to a new domain is room enough.
    ok(&v, attach(500, 0));
    assert_eq!(v.domain_ids(), vec![1, 2, 3, 500]);
    ok(
        &v,
        Request::Detach {
            domain: 500,
            endpoint: 0,
        },
    );
    ok(&v, attach(600, 4));
    // Every endpoint into domain 1, then out again: it dies with the last.
    for id in 0..n {
        ok(&v, attach(1, id));
    }
    assert_eq!(v.domain_ids(), vec![1]);
    assert_eq!(v.domain_endpoints(1).unwrap().len(), n as usize);
    for id in 0..n {
        ok(
            &v,
            Request::Detach {
                domain: 1,
                endpoint: id,
            },
        );
    }
    assert!(v.domain_ids().is_empty());
}

fn state_of_domains(v: &Viommu) -> Vec<(u32, Option<Vec<u32>>)> {
    v.domain_ids()
        .into_iter()
        .map(|d| (d, v.domain_endpoints(d)))
        .collect()
}

/// PROBE: "If the properties list is smaller than probe_size, the device SHOULD NOT write any
/// property. It SHOULD reject the request and set status to VIRTIO_IOMMU_S_INVAL." and "If the
/// device doesn't fill all probe_size bytes with properties, it SHOULD fill the remaining
/// bytes of properties with zeroes." Every writable length from 0 to twice `probe_size`, and
/// huge ones: the reply never exceeds `probe_size` + tail, a short one carries no property and
/// INVAL at its end, a long enough one the property, zeroes and OK after `probe_size` bytes.
#[test]
fn probe_reply_for_every_writable_length() {
    let v = dev();
    let req = wire::encode_request(&Request::Probe { endpoint: 9 });
    let full = PROBE_SIZE as usize + wire::TAIL_SIZE;
    for len in (0..2 * full).chain([usize::MAX / 2, usize::MAX]) {
        let reply = v.handle_bytes(&req, len);
        if len < wire::TAIL_SIZE {
            assert!(reply.is_empty(), "{len}");
        } else if len < full {
            assert_eq!(reply.len(), len);
            assert!(
                reply[..len - 4].iter().all(|&b| b == 0),
                "no property: {len}"
            );
            assert_eq!(&reply[len - 4..], [Status::Inval.code(), 0, 0, 0]);
        } else {
            assert_eq!(reply.len(), full, "{len}");
            assert_eq!(&reply[..4], [wire::PROBE_T_RESV_MEM as u8, 0, 20, 0]);
            assert_eq!(&reply[8..16], HOLE.start.to_le_bytes());
            assert_eq!(&reply[16..24], HOLE.end.to_le_bytes());
            assert!(reply[24..full - 4].iter().all(|&b| b == 0));
            assert_eq!(&reply[full - 4..], [Status::Ok.code(), 0, 0, 0]);
        }
    }
}

/// "Device operations": the status of every request is one of the `VIRTIO_IOMMU_S_*` codes the
/// section defines ("A few general-purpose status codes are defined here"). Every known type
/// with all its fields (reserved ones included) all-zeroes, all-ones, 0x80 or 0x01 bytes: the
/// device answers each with a defined status, never panics, keeps its reply within the
/// writable part, and afterwards still serves a valid request.
#[test]
fn extreme_field_values_on_every_type() {
    let v = dev();
    for kind in [T_ATTACH, T_DETACH, T_MAP, T_UNMAP, T_PROBE] {
        let size = wire::request_size(kind).unwrap();
        for fill in [0x00u8, 0xff, 0x80, 0x01] {
            let mut bytes = vec![fill; size];
            bytes[0] = kind;
            let s = status_of(&v, &bytes, writable(kind));
            assert!(s.and_then(Status::from_code).is_some(), "{kind} {fill:#x}");
        }
    }
    ok(&v, attach(3, 7));
    ok(&v, map(3, 0, PAGE - 1, 0, RW));
    ok(&v, unmap(3, 0, u64::MAX));
    ok(
        &v,
        Request::Detach {
            domain: 3,
            endpoint: 7,
        },
    );
}

/// MAP: "Given phys_end = phys_start + virt_end - virt_start, the range defined by phys_start
/// and phys_end should be within the guest-physical address space." The model refuses, with
/// RANGE and nothing mapped, a physical range the page table cannot express: past its output
/// size (48 bits by default), or straddling it.
#[test]
fn map_beyond_the_output_size_is_range() {
    let v = dev();
    ok(&v, attach(1, 7));
    let oas_end = 1u64 << 48;
    for (phys, len) in [
        (oas_end, PAGE),
        (oas_end - PAGE, 2 * PAGE),
        (1 << 63, PAGE),
        (!(PAGE - 1), PAGE),
    ] {
        let before = state(&v);
        let got = v
            .handle(map(1, 0x20_0000, 0x20_0000 + len - 1, phys, RW))
            .status();
        assert_eq!(got, Status::Range, "phys {phys:#x} + {len:#x}");
        assert_eq!(state(&v), before);
    }
    // The last page the output size holds maps.
    ok(&v, map(1, 0x20_0000, 0x20_0fff, oas_end - PAGE, RW));
}

/// "Fault reporting": "If a buffer is too small to contain the fault report, the device SHOULD
/// NOT use multiple buffers to describe it." and "The device SHOULD set reserved and reserved1
/// to zero." with "If no buffer is available, the device can either wait for one to be
/// consumed, or drop the event." A flood of faults keeps at most `fault_log` reports; event
/// buffers of every size get either nothing (too small: that report is dropped) or exactly
/// one 24-byte report, reserved bytes zero.
#[test]
fn a_fault_flood_is_bounded_and_every_event_buffer_size_is_safe() {
    let v = dev_with(ViommuConfig {
        fault_log: 8,
        ..cfg()
    });
    let ep = v.endpoint(7).unwrap();
    let flood = if cfg!(miri) { 32 } else { 10_000 };
    for i in 0..flood {
        assert_eq!(
            ep.access(i * PAGE, 1, Prot::WRITE, |_| ()),
            Err(Fault::Detached)
        );
    }
    assert_eq!(v.faults_dropped(), flood - 8);
    let mut reports = 0;
    for len in [0, 1, 23, 24, 25, 4096, usize::MAX] {
        let Some(bytes) = v.fault_event(len) else {
            break;
        };
        if len < wire::FAULT_SIZE {
            assert!(bytes.is_empty(), "{len}");
            continue;
        }
        reports += 1;
        assert_eq!(bytes.len(), wire::FAULT_SIZE);
        assert_eq!(bytes[0], FaultReason::Domain as u8);
        assert_eq!(&bytes[1..4], [0, 0, 0]);
        assert_eq!(&bytes[8..12], 7u32.to_le_bytes());
        assert_eq!(&bytes[12..16], [0; 4]);
    }
    assert_eq!(reports, 4);
    assert_eq!(v.faults_dropped(), flood - 8 + 3);
    assert!(v.fault_event(64).is_some());
    assert!(v.fault_event(64).is_none(), "eight reports in all");
}
