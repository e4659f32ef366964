//! The device model against a reference model written from the specification's text:
//! random sequences of wire-format requests (valid and invalid: unknown ids, bad flags,
//! non-zero reserved fields, unaligned, reversed, overlapping and splitting ranges, reserved
//! regions, bypass domains, config writes) on a small geometry. After every request the
//! status must be one the specification allows for the conditions that hold (OK when none
//! does), a refused request must change nothing, and every endpoint must translate every
//! page exactly as the reference says, each fault reaching the event queue with the reason the
//! reference gives (`R_DOMAIN` attached to no domain and not in bypass mode, else `R_MAPPING`).
#![cfg(not(loom))]

use dma_vmm::translate::Fault;
use dma_vmm::viommu::wire;
use dma_vmm::viommu::*;
use io_pgtable::Prot;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const PAGE: u64 = 0x1000;
/// IOVAs the model covers: 16 pages; the input range stops two pages short.
const SPACE: u64 = 16 * PAGE;
const INPUT_END: u64 = 14 * PAGE - 1;
/// Endpoint 3 has its own reserved page; 9 is never declared.
const HOLE: (u64, u64) = (6 * PAGE, 10 * PAGE - 1);
const ENDPOINTS: [u32; 3] = [1, 2, 3];
const DOMAIN_END: u32 = 2;
const MAX_DOMAINS: usize = 2;
const MAX_MAPPINGS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    Attach {
        domain: u32,
        endpoint: u32,
        flags: u32,
        reserved: u32,
    },
    Detach {
        domain: u32,
        endpoint: u32,
        reserved: u64,
    },
    Map {
        domain: u32,
        start: u64,
        end: u64,
        phys: u64,
        flags: u32,
    },
    Unmap {
        domain: u32,
        start: u64,
        end: u64,
        reserved: u32,
    },
    Probe {
        endpoint: u32,
    },
    WriteBypass(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let domain = 0u32..4;
    let endpoint = prop::sample::select(vec![1u32, 2, 3, 3, 9]);
    // Page-aligned bounds mostly; sometimes half a page off.
    let addr = (0u64..17, prop::bool::weighted(0.1))
        .prop_map(|(p, odd)| p * PAGE + if odd { PAGE / 2 } else { 0 });
    prop_oneof![
        (
            domain.clone(),
            endpoint.clone(),
            prop::sample::select(vec![0u32, 0, 0, 0, ATTACH_F_BYPASS, 2]),
            prop::sample::select(vec![0u32, 0, 0, 0, 0, 0, 0, 1 << 24])
        )
            .prop_map(|(domain, endpoint, flags, reserved)| Op::Attach {
                domain,
                endpoint,
                flags,
                reserved
            }),
        (domain.clone(), endpoint.clone(), any::<u64>()).prop_map(
            |(domain, endpoint, reserved)| Op::Detach {
                domain,
                endpoint,
                reserved
            }
        ),
        (
            domain.clone(),
            addr.clone(),
            1u64..5,
            0u64..8,
            prop::sample::select(vec![
                MAP_F_READ,
                MAP_F_WRITE,
                MAP_F_READ | MAP_F_WRITE,
                0,
                1 << 3
            ])
        )
            .prop_map(|(domain, start, pages, phys, flags)| Op::Map {
                domain,
                start,
                end: (start + pages * PAGE).wrapping_sub(1),
                phys: 0x10_0000 + phys * PAGE,
                flags
            }),
        (domain, addr.clone(), addr, any::<u32>()).prop_map(|(domain, a, b, reserved)| {
            Op::Unmap {
                domain,
                start: a,
                end: b.wrapping_sub(1),
                reserved,
            }
        }),
        endpoint.prop_map(|endpoint| Op::Probe { endpoint }),
        prop::sample::select(vec![0u8, 1, 2]).prop_map(Op::WriteBypass),
    ]
}

/// A mapping: start, end (inclusive), phys, flags.
type MapEntry = (u64, u64, u64, u32);
/// A domain: bypass domain, endpoints, mappings.
type DomainState = (bool, BTreeSet<u32>, Vec<MapEntry>);

/// The specification's device, as plain data.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    domains: BTreeMap<u32, DomainState>,
    attached: BTreeMap<u32, u32>,
    bypass: bool,
}

fn reserved_of(endpoint: u32) -> Vec<(u64, u64)> {
    if endpoint == 3 {
        vec![HOLE]
    } else {
        vec![]
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

impl Model {
    /// Apply `op`; returns the statuses the specification (and the model's documented
    /// choices) allow: `[Ok]` when no error condition holds.
    fn apply(&mut self, op: &Op) -> Vec<Status> {
        let mut errors = Vec::new();
        match *op {
            Op::Attach {
                domain,
                endpoint,
                flags,
                reserved,
            } => {
                let bypass = flags & ATTACH_F_BYPASS != 0;
                if reserved != 0 || flags & !ATTACH_F_BYPASS != 0 {
                    errors.push(Status::Inval);
                }
                if !ENDPOINTS.contains(&endpoint) {
                    errors.push(Status::NoEnt);
                }
                if domain > DOMAIN_END {
                    errors.push(Status::Range);
                }
                match self.domains.get(&domain) {
                    Some(d) if d.0 != bypass => errors.push(Status::Inval),
                    Some(d) if d.1.contains(&endpoint) => {}
                    Some(d) => {
                        let clash = reserved_of(endpoint)
                            .iter()
                            .any(|&r| d.2.iter().any(|m| overlaps(r, (m.0, m.1))));
                        if clash {
                            errors.push(Status::Unsupp);
                        }
                    }
                    None => {
                        // As DETACH then ATTACH: leaving a domain as its last endpoint
                        // destroys it before the new one is created.
                        let freed = self
                            .attached
                            .get(&endpoint)
                            .is_some_and(|old| self.domains[old].1.len() == 1);
                        if self.domains.len() - usize::from(freed) >= MAX_DOMAINS {
                            errors.push(Status::NoMem);
                        }
                    }
                }
                if errors.is_empty() {
                    if self.attached.get(&endpoint) != Some(&domain) {
                        self.leave(endpoint);
                    }
                    let d =
                        self.domains
                            .entry(domain)
                            .or_insert((bypass, BTreeSet::new(), Vec::new()));
                    d.1.insert(endpoint);
                    self.attached.insert(endpoint, domain);
                }
            }
            Op::Detach {
                domain, endpoint, ..
            } => {
                if !ENDPOINTS.contains(&endpoint) {
                    errors.push(Status::NoEnt);
                } else if self.attached.get(&endpoint) != Some(&domain) {
                    errors.push(Status::Inval);
                } else {
                    self.leave(endpoint);
                }
            }
            Op::Map {
                domain,
                start,
                end,
                phys,
                flags,
            } => {
                if flags & !(MAP_F_READ | MAP_F_WRITE | MAP_F_MMIO) != 0 {
                    errors.push(Status::Inval);
                }
                if flags & (MAP_F_READ | MAP_F_WRITE) == 0 {
                    errors.push(Status::Unsupp);
                }
                if end < start {
                    errors.push(Status::Inval);
                }
                if (start | phys | end.wrapping_add(1)) % PAGE != 0 || end > INPUT_END {
                    errors.push(Status::Range);
                }
                match self.domains.get(&domain) {
                    None => errors.push(Status::NoEnt),
                    Some(d) if d.0 => errors.push(Status::Inval),
                    Some(d) => {
                        if d.2.iter().any(|m| overlaps((start, end), (m.0, m.1))) {
                            errors.push(Status::Inval);
                        }
                        let reserved = d.1.iter().flat_map(|&e| reserved_of(e));
                        if reserved.into_iter().any(|r| overlaps(r, (start, end))) {
                            errors.push(Status::Inval);
                        }
                        if d.2.len() >= MAX_MAPPINGS {
                            errors.push(Status::NoMem);
                        }
                    }
                }
                if errors.is_empty() {
                    let d = self.domains.get_mut(&domain).unwrap();
                    d.2.push((start, end, phys, flags));
                }
            }
            Op::Unmap {
                domain, start, end, ..
            } => {
                if end < start {
                    errors.push(Status::Inval);
                }
                match self.domains.get_mut(&domain) {
                    None => errors.push(Status::NoEnt),
                    Some(d) if d.0 => errors.push(Status::Inval),
                    Some(d) => {
                        let touched = |m: &&MapEntry| overlaps((start, end), (m.0, m.1));
                        if d.2.iter().filter(touched).any(|m| m.0 < start || m.1 > end) {
                            errors.push(Status::Range);
                        }
                        if errors.is_empty() {
                            d.2.retain(|m| !overlaps((start, end), (m.0, m.1)));
                        }
                    }
                }
            }
            Op::Probe { endpoint } => {
                if !ENDPOINTS.contains(&endpoint) {
                    errors.push(Status::NoEnt);
                }
            }
            Op::WriteBypass(v) => {
                if v <= 1 {
                    self.bypass = v == 1;
                }
            }
        }
        if errors.is_empty() {
            vec![Status::Ok]
        } else {
            errors
        }
    }

    fn leave(&mut self, endpoint: u32) {
        if let Some(old) = self.attached.remove(&endpoint) {
            let d = self.domains.get_mut(&old).unwrap();
            d.1.remove(&endpoint);
            if d.1.is_empty() {
                self.domains.remove(&old);
            }
        }
    }

    /// Why an access of `endpoint` faults: `R_DOMAIN` when it is attached to no domain and
    /// not in bypass mode, `R_MAPPING` otherwise (a missing mapping, or a reserved region).
    fn fault_reason(&self, endpoint: u32) -> FaultReason {
        if self.attached.contains_key(&endpoint) || self.bypass {
            FaultReason::Mapping
        } else {
            FaultReason::Domain
        }
    }

    /// Where `endpoint`'s read of `iova` goes, or `None` if it faults.
    fn translate(&self, endpoint: u32, iova: u64) -> Option<u64> {
        if reserved_of(endpoint)
            .iter()
            .any(|r| overlaps(*r, (iova, iova)))
        {
            return None;
        }
        match self.attached.get(&endpoint) {
            None => self.bypass.then_some(iova),
            Some(d) => {
                let (bypass, _, maps) = &self.domains[d];
                if *bypass {
                    return Some(iova);
                }
                // Stage-1 has no write-only: a WRITE mapping also reads.
                maps.iter()
                    .find(|m| m.0 <= iova && iova <= m.1)
                    .map(|m| m.2 + (iova - m.0))
            }
        }
    }
}

/// The request in wire format, with its reserved field (if it has one) set as generated.
fn encode(op: &Op) -> Option<Vec<u8>> {
    let (request, reserved): (Request, Vec<u8>) = match *op {
        Op::Attach {
            domain,
            endpoint,
            flags,
            reserved,
        } => (
            Request::Attach {
                domain,
                endpoint,
                flags,
            },
            reserved.to_le_bytes().to_vec(),
        ),
        Op::Detach {
            domain,
            endpoint,
            reserved,
        } => (
            Request::Detach { domain, endpoint },
            reserved.to_le_bytes().to_vec(),
        ),
        Op::Map {
            domain,
            start,
            end,
            phys,
            flags,
        } => (
            Request::Map {
                domain,
                virt_start: start,
                virt_end: end,
                phys_start: phys,
                flags,
            },
            vec![],
        ),
        Op::Unmap {
            domain,
            start,
            end,
            reserved,
        } => (
            Request::Unmap {
                domain,
                virt_start: start,
                virt_end: end,
            },
            reserved.to_le_bytes().to_vec(),
        ),
        Op::Probe { endpoint } => (Request::Probe { endpoint }, vec![0x5a; 64]),
        Op::WriteBypass(_) => return None,
    };
    // Every request's reserved field ends its device-readable part.
    let mut bytes = wire::encode_request(&request);
    let at = bytes.len() - reserved.len();
    bytes[at..].copy_from_slice(&reserved);
    Some(bytes)
}

fn device() -> (Viommu, Vec<Endpoint>) {
    let v = Viommu::new(ViommuConfig {
        input_range: (0, INPUT_END),
        domain_range: (0, DOMAIN_END),
        max_domains: MAX_DOMAINS,
        max_mappings_per_domain: MAX_MAPPINGS,
        probe_size: 64,
        ..ViommuConfig::default()
    })
    .unwrap();
    let hole = ReservedRegion {
        kind: ReservedKind::Reserved,
        start: HOLE.0,
        end: HOLE.1,
    };
    let eps = ENDPOINTS
        .iter()
        .map(|&id| {
            let own = if id == 3 { vec![hole] } else { vec![] };
            v.add_endpoint(id, own).unwrap()
        })
        .collect();
    (v, eps)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[cfg_attr(miri, ignore)] // proptest persists failures through the file system
    #[test]
    fn requests_match_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
        let (v, eps) = device();
        let mut model = Model::default();
        for (i, op) in ops.iter().enumerate() {
            let before = model.clone();
            let allowed = model.apply(op);
            let status = match (encode(op), op) {
                (Some(req), _) => {
                    let writable = if matches!(op, Op::Probe { .. }) { 68 } else { 4 };
                    let reply = v.handle_bytes(&req, writable);
                    prop_assert_eq!(reply.len(), writable, "op {} {:?}", i, op);
                    Status::from_code(reply[writable - 4]).unwrap()
                }
                (None, Op::WriteBypass(b)) => {
                    let took = v.write_config(wire::CONFIG_BYPASS_OFFSET, &[*b]);
                    prop_assert_eq!(took, *b <= 1);
                    Status::Ok
                }
                (None, other) => unreachable!("{:?} has a wire form", other),
            };
            prop_assert!(allowed.contains(&status), "op {} {:?}: {:?} not in {:?}", i, op, status, allowed);
            if status != Status::Ok {
                prop_assert_eq!(&model, &before, "a refused request changed the model");
            }
            for (ep, &id) in eps.iter().zip(&ENDPOINTS) {
                prop_assert_eq!(ep.domain(), model.attached.get(&id).copied());
                for page in 0..SPACE / PAGE {
                    let iova = page * PAGE + 0x10;
                    let got = ep.access(iova, 1, Prot::READ, |s| s[0].paddr);
                    let want = model.translate(id, iova);
                    prop_assert_eq!(got.ok(), want, "op {} {:?}: endpoint {} iova {:#x}", i, op, id, iova);
                    // Each fault is reported on the event queue, with the reason that holds.
                    let reported = v.fault_event(wire::FAULT_SIZE).map(|e| e[0]);
                    let reason = want.is_none().then(|| model.fault_reason(id) as u8);
                    prop_assert_eq!(reported, reason, "op {} {:?}: endpoint {} iova {:#x}", i, op, id, iova);
                }
            }
        }
        prop_assert_eq!(v.faults_dropped(), 0);
        prop_assert_eq!(v.domain_ids(), model.domains.keys().copied().collect::<Vec<_>>());
        for (id, (_, _, maps)) in &model.domains {
            prop_assert_eq!(v.mappings(*id).map(|m| m.len()), Some(maps.len()));
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic_and_replies_stay_bounded() {
    let (v, _) = device();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..20_000 {
        let len = (next() % 80) as usize;
        let mut req: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(t) = req.first_mut() {
            *t %= 7; // mostly known types
        }
        let writable = (next() % 100) as usize;
        let reply = v.handle_bytes(&req, writable);
        assert!(
            reply.is_empty() || (reply.len() <= writable && reply.len() <= 64 + 4),
            "{} bytes for a {writable}-byte writable part",
            reply.len()
        );
    }
    // Still a working device: reset, attach, map, translate.
    v.reset();
    assert!(v.domain_ids().is_empty());
    let ep = v.endpoint(1).unwrap();
    assert_eq!(ep.access(0, 1, Prot::READ, |_| ()), Err(Fault::Detached));
    let attach = encode(&Op::Attach {
        domain: 1,
        endpoint: 1,
        flags: 0,
        reserved: 0,
    })
    .unwrap();
    assert_eq!(v.handle_bytes(&attach, 4), [0, 0, 0, 0]);
    let map = encode(&Op::Map {
        domain: 1,
        start: 0,
        end: PAGE - 1,
        phys: 0x5000,
        flags: MAP_F_READ,
    })
    .unwrap();
    assert_eq!(v.handle_bytes(&map, 4), [0, 0, 0, 0]);
    assert_eq!(ep.access(0x10, 1, Prot::READ, |s| s[0].paddr), Ok(0x5010));
}
