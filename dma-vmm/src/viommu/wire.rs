//! The virtio-iommu wire format (virtio 1.2, "Device Types / IOMMU Device"): requests as the
//! driver lays them out in the request queue, replies and PROBE properties as the device
//! writes them, and the config space. All fields little-endian.
//!
//! Reserved fields follow each request's own rule: the head's, DETACH's and PROBE's are
//! ignored (the device MUST ignore them), a non-zero ATTACH `reserved` fails the request with
//! `INVAL` (the device MUST reject it), and UNMAP's is ignored (the device MAY fail with
//! `INVAL`; this one does not, and performs the UNMAP).
//!
//! ```
//! use dma_vmm::viommu::{wire, Request, Status};
//! // A MAP request as the guest driver writes it (head, body; the tail is device-writable).
//! let mut buf = vec![wire::T_MAP, 0, 0, 0];
//! buf.extend_from_slice(&7u32.to_le_bytes());          // domain
//! buf.extend_from_slice(&0x1000u64.to_le_bytes());     // virt_start
//! buf.extend_from_slice(&0x1fffu64.to_le_bytes());     // virt_end
//! buf.extend_from_slice(&0x8000u64.to_le_bytes());     // phys_start
//! buf.extend_from_slice(&3u32.to_le_bytes());          // flags: READ | WRITE
//! assert_eq!(wire::decode(&buf), Ok(Request::Map {
//!     domain: 7, virt_start: 0x1000, virt_end: 0x1fff, phys_start: 0x8000, flags: 3 }));
//! assert_eq!(wire::decode(&buf[..10]), Err(Status::Inval)); // truncated
//! ```

use super::{FaultRecord, ProbeInfo, Reply, Request, Status, ViommuConfig};

/// `VIRTIO_IOMMU_T_ATTACH`.
pub const T_ATTACH: u8 = 1;
/// `VIRTIO_IOMMU_T_DETACH`.
pub const T_DETACH: u8 = 2;
/// `VIRTIO_IOMMU_T_MAP`.
pub const T_MAP: u8 = 3;
/// `VIRTIO_IOMMU_T_UNMAP`.
pub const T_UNMAP: u8 = 4;
/// `VIRTIO_IOMMU_T_PROBE`.
pub const T_PROBE: u8 = 5;
/// `VIRTIO_IOMMU_PROBE_T_RESV_MEM`.
pub const PROBE_T_RESV_MEM: u16 = 1;
/// Size of the request head (type and reserved bytes).
pub const HEAD_SIZE: usize = 4;
/// Size of the reply tail (status and reserved bytes).
pub const TAIL_SIZE: usize = 4;
/// Size of a reserved-memory property, header included.
pub const RESV_MEM_SIZE: usize = 24;
/// Size of `struct virtio_iommu_config`.
pub const CONFIG_SPACE_SIZE: usize = 40;
/// Offset of the config field `bypass`, the one field the driver may write.
pub const CONFIG_BYPASS_OFFSET: usize = 36;
/// Size of a fault report (`struct virtio_iommu_fault`).
pub const FAULT_SIZE: usize = 24;
/// Offset of ATTACH's `reserved[4]` in the request.
const ATTACH_RESERVED: std::ops::Range<usize> = 16..20;

/// Bytes of the device-readable part (head and body) of each request type.
pub fn request_size(kind: u8) -> Option<usize> {
    Some(
        HEAD_SIZE
            + match kind {
                T_ATTACH | T_DETACH => 16,
                T_MAP => 32,
                T_UNMAP => 24,
                T_PROBE => 68,
                _ => return None,
            },
    )
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> u32 {
        let (v, rest) = self.0.split_at(4);
        self.0 = rest;
        u32::from_le_bytes(v.try_into().unwrap_or_default())
    }
    fn u64(&mut self) -> u64 {
        let (v, rest) = self.0.split_at(8);
        self.0 = rest;
        u64::from_le_bytes(v.try_into().unwrap_or_default())
    }
}

/// Decode the device-readable part of a request. Unknown types fail with `UNSUPP` (but see
/// [`reply_layout`]: the device writes nothing for them), buffers shorter than their type's
/// layout with `INVAL`, an ATTACH with a non-zero `reserved` field with `INVAL`; other
/// reserved fields and bytes past the layout are ignored.
pub fn decode(buf: &[u8]) -> Result<Request, Status> {
    let kind = *buf.first().ok_or(Status::Inval)?;
    let size = request_size(kind).ok_or(Status::Unsupp)?;
    if buf.len() < size {
        return Err(Status::Inval);
    }
    if kind == T_ATTACH && buf[ATTACH_RESERVED].iter().any(|&b| b != 0) {
        return Err(Status::Inval);
    }
    let mut r = Reader(&buf[HEAD_SIZE..size]);
    Ok(match kind {
        T_ATTACH => Request::Attach {
            domain: r.u32(),
            endpoint: r.u32(),
            flags: r.u32(),
        },
        T_DETACH => Request::Detach {
            domain: r.u32(),
            endpoint: r.u32(),
        },
        T_MAP => Request::Map {
            domain: r.u32(),
            virt_start: r.u64(),
            virt_end: r.u64(),
            phys_start: r.u64(),
            flags: r.u32(),
        },
        T_UNMAP => Request::Unmap {
            domain: r.u32(),
            virt_start: r.u64(),
            virt_end: r.u64(),
        },
        _ => Request::Probe { endpoint: r.u32() },
    })
}

/// The device-readable part of `request` as a driver lays it out, reserved fields zero (the
/// driver side of [`decode`], for guest-side code and tests).
///
/// ```
/// use dma_vmm::viommu::{wire, Request};
/// let unmap = Request::Unmap { domain: 1, virt_start: 0x1000, virt_end: 0x1fff };
/// let bytes = wire::encode_request(&unmap);
/// assert_eq!(bytes.len(), wire::request_size(wire::T_UNMAP).unwrap());
/// assert_eq!(wire::decode(&bytes), Ok(unmap));
/// ```
pub fn encode_request(request: &Request) -> Vec<u8> {
    fn le32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    fn le64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let kind = match request {
        Request::Attach { .. } => T_ATTACH,
        Request::Detach { .. } => T_DETACH,
        Request::Map { .. } => T_MAP,
        Request::Unmap { .. } => T_UNMAP,
        Request::Probe { .. } => T_PROBE,
    };
    let mut out = vec![kind, 0, 0, 0];
    match *request {
        Request::Attach {
            domain,
            endpoint,
            flags,
        } => {
            le32(&mut out, domain);
            le32(&mut out, endpoint);
            le32(&mut out, flags);
        }
        Request::Detach { domain, endpoint } => {
            le32(&mut out, domain);
            le32(&mut out, endpoint);
        }
        Request::Map {
            domain,
            virt_start,
            virt_end,
            phys_start,
            flags,
        } => {
            le32(&mut out, domain);
            le64(&mut out, virt_start);
            le64(&mut out, virt_end);
            le64(&mut out, phys_start);
            le32(&mut out, flags);
        }
        Request::Unmap {
            domain,
            virt_start,
            virt_end,
        } => {
            le32(&mut out, domain);
            le64(&mut out, virt_start);
            le64(&mut out, virt_end);
        }
        Request::Probe { endpoint } => le32(&mut out, endpoint),
    }
    // The reserved fields at the end of the layout stay zero.
    out.resize(request_size(kind).unwrap_or(out.len()), 0);
    out
}

/// Where a reply goes in the device-writable part of a request of type `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyLayout {
    /// Write nothing and report a used length of 0: the type is unknown, or the writable
    /// part cannot hold the tail.
    Nothing,
    /// The tail goes at this offset (0, or `probe_size` after a PROBE's properties).
    Tail(usize),
    /// A PROBE whose writable part is shorter than `probe_size` properties and the tail: no
    /// property is written, the tail at this offset (the end of the part) says `INVAL`.
    ShortProbe(usize),
}

/// The layout of the reply to a request of type `kind` whose device-writable part is
/// `writable_len` bytes long, for a device with `probe_size` bytes of PROBE properties.
pub fn reply_layout(kind: Option<u8>, probe_size: usize, writable_len: usize) -> ReplyLayout {
    match kind {
        _ if writable_len < TAIL_SIZE => ReplyLayout::Nothing,
        Some(T_PROBE) if writable_len < probe_size.saturating_add(TAIL_SIZE) => {
            ReplyLayout::ShortProbe(writable_len - TAIL_SIZE)
        }
        Some(T_PROBE) => ReplyLayout::Tail(probe_size),
        Some(k) if request_size(k).is_some() => ReplyLayout::Tail(0),
        _ => ReplyLayout::Nothing,
    }
}

/// Encode the device-writable bytes of a reply laid out as `layout`: for a PROBE, the
/// properties (reserved regions, then zeroes: the end marker) before the tail; otherwise the
/// tail alone (status, three reserved zeroes). The length is the used length. Properties
/// that do not fit in `probe_size` are answered with `DEVERR`, never truncated (a validated
/// [`ViommuConfig`] makes them fit).
pub fn encode_reply(reply: &Reply, layout: ReplyLayout) -> Vec<u8> {
    let (tail_at, status) = match layout {
        ReplyLayout::Nothing => return Vec::new(),
        ReplyLayout::ShortProbe(at) => (at, Status::Inval),
        ReplyLayout::Tail(at) => (at, reply.status()),
    };
    let mut out = vec![0; tail_at + TAIL_SIZE];
    let status = match reply {
        Reply::Probe(info) if status == Status::Ok => match encode_probe(info, tail_at) {
            Some(props) => {
                out[..props.len()].copy_from_slice(&props);
                Status::Ok
            }
            None => Status::DevErr,
        },
        _ => status,
    };
    out[tail_at] = status.code();
    out
}

/// The RESV_MEM properties of `info`, if they fit in `probe_size` bytes.
fn encode_probe(info: &ProbeInfo, probe_size: usize) -> Option<Vec<u8>> {
    if info.reserved.len() * RESV_MEM_SIZE > probe_size {
        return None;
    }
    let mut out = Vec::with_capacity(info.reserved.len() * RESV_MEM_SIZE);
    for r in &info.reserved {
        out.extend_from_slice(&PROBE_T_RESV_MEM.to_le_bytes());
        out.extend_from_slice(&((RESV_MEM_SIZE - 4) as u16).to_le_bytes());
        out.extend_from_slice(&[r.kind as u8, 0, 0, 0]);
        out.extend_from_slice(&r.start.to_le_bytes());
        out.extend_from_slice(&r.end.to_le_bytes());
    }
    Some(out)
}

/// A fault report as the device writes it into an event-queue buffer
/// (`struct virtio_iommu_fault`): reason, three reserved zeroes, flags, endpoint, a reserved
/// zero word, address.
pub fn encode_fault(record: &FaultRecord) -> [u8; FAULT_SIZE] {
    let mut out = [0u8; FAULT_SIZE];
    out[0] = record.reason as u8;
    out[4..8].copy_from_slice(&record.flags.to_le_bytes());
    out[8..12].copy_from_slice(&record.endpoint.to_le_bytes());
    out[16..24].copy_from_slice(&record.address.to_le_bytes());
    out
}

/// The config space (`struct virtio_iommu_config`, 40 bytes): page-size mask, input range,
/// domain range, probe size, the current `bypass` value, three reserved zeroes.
pub fn config_space(config: &ViommuConfig, page_size_mask: u64, bypass: bool) -> [u8; 40] {
    let mut out = [0u8; CONFIG_SPACE_SIZE];
    out[0..8].copy_from_slice(&page_size_mask.to_le_bytes());
    out[8..16].copy_from_slice(&config.input_range.0.to_le_bytes());
    out[16..24].copy_from_slice(&config.input_range.1.to_le_bytes());
    out[24..28].copy_from_slice(&config.domain_range.0.to_le_bytes());
    out[28..32].copy_from_slice(&config.domain_range.1.to_le_bytes());
    out[32..36].copy_from_slice(&config.probe_size.to_le_bytes());
    out[CONFIG_BYPASS_OFFSET] = u8::from(bypass);
    out
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::viommu::{ReservedKind, ReservedRegion, ATTACH_F_BYPASS};

    fn head(kind: u8) -> Vec<u8> {
        vec![kind, 0xff, 0xff, 0xff] // reserved bytes are ignored
    }

    #[test]
    fn every_request_type_decodes() {
        let attach = |reserved: u32| {
            let mut a = head(T_ATTACH);
            for v in [5u32, 9, 1, reserved] {
                a.extend_from_slice(&v.to_le_bytes());
            }
            a
        };
        assert_eq!(
            decode(&attach(0)),
            Ok(Request::Attach {
                domain: 5,
                endpoint: 9,
                flags: 1
            })
        );
        // ATTACH's reserved field is checked, every byte of it; DETACH's is ignored.
        for byte in 0..4 {
            assert_eq!(decode(&attach(0x80 << (8 * byte))), Err(Status::Inval));
        }
        let mut d = head(T_DETACH);
        d.extend_from_slice(&5u32.to_le_bytes());
        d.extend_from_slice(&9u32.to_le_bytes());
        d.extend_from_slice(&[0xff; 8]);
        assert_eq!(
            decode(&d),
            Ok(Request::Detach {
                domain: 5,
                endpoint: 9
            })
        );
        let mut u = head(T_UNMAP);
        u.extend_from_slice(&5u32.to_le_bytes());
        u.extend_from_slice(&0x1000u64.to_le_bytes());
        u.extend_from_slice(&u64::MAX.to_le_bytes());
        u.extend_from_slice(&[0xff; 4]);
        assert_eq!(
            decode(&u),
            Ok(Request::Unmap {
                domain: 5,
                virt_start: 0x1000,
                virt_end: u64::MAX
            })
        );
        let mut p = head(T_PROBE);
        p.extend_from_slice(&9u32.to_le_bytes());
        p.extend_from_slice(&[0xff; 64]);
        assert_eq!(decode(&p), Ok(Request::Probe { endpoint: 9 }));
        // Every truncation of a valid request is INVAL; unknown types UNSUPP; empty INVAL.
        for cut in 0..u.len() {
            assert_eq!(decode(&u[..cut]), Err(Status::Inval));
        }
        assert_eq!(decode(&head(9)), Err(Status::Unsupp));
        assert_eq!(request_size(0), None);
    }

    #[test]
    fn encoded_requests_decode_to_themselves() {
        let requests = [
            Request::Attach {
                domain: u32::MAX,
                endpoint: 7,
                flags: ATTACH_F_BYPASS,
            },
            Request::Detach {
                domain: 1,
                endpoint: u32::MAX,
            },
            Request::Map {
                domain: 2,
                virt_start: 0x1000,
                virt_end: u64::MAX,
                phys_start: 0xdead_b000,
                flags: 5,
            },
            Request::Unmap {
                domain: 3,
                virt_start: 0,
                virt_end: 0xffff,
            },
            Request::Probe { endpoint: 9 },
        ];
        for r in requests {
            let bytes = encode_request(&r);
            assert_eq!(Some(bytes.len()), request_size(bytes[0]), "{r:?}");
            assert_eq!(decode(&bytes), Ok(r));
        }
    }

    #[test]
    fn probe_reply_lists_reserved_regions_then_the_tail() {
        let msi = ReservedRegion {
            kind: ReservedKind::Msi,
            start: 0xfee0_0000,
            end: 0xfeef_ffff,
        };
        let info = ProbeInfo {
            page_size_mask: 0x1000,
            reserved: vec![msi],
        };
        let layout = reply_layout(Some(T_PROBE), 64, 200);
        assert_eq!(layout, ReplyLayout::Tail(64));
        let out = encode_reply(&Reply::Probe(info.clone()), layout);
        assert_eq!(out.len(), 64 + 4);
        assert_eq!(&out[..4], &[1, 0, 20, 0]);
        assert_eq!(&out[4..8], &[ReservedKind::Msi as u8, 0, 0, 0]);
        assert_eq!(
            u64::from_le_bytes(out[8..16].try_into().unwrap()),
            0xfee0_0000
        );
        assert_eq!(
            u64::from_le_bytes(out[16..24].try_into().unwrap()),
            0xfeef_ffff
        );
        assert!(out[24..64].iter().all(|&b| b == 0), "end marker");
        assert_eq!(&out[64..], &[Status::Ok.code(), 0, 0, 0]);
        // Properties that do not fit: DEVERR, not a truncated list.
        let out = encode_reply(&Reply::Probe(info.clone()), ReplyLayout::Tail(16));
        assert_eq!(
            out,
            [&[0; 16][..], &[Status::DevErr.code(), 0, 0, 0]].concat()
        );
        // A failed PROBE still puts its tail after the properties.
        let out = encode_reply(&Reply::Status(Status::NoEnt), layout);
        assert_eq!(
            out,
            [&[0; 64][..], &[Status::NoEnt.code(), 0, 0, 0]].concat()
        );
        // A writable part shorter than probe_size + tail: INVAL at its end, no property.
        let short = reply_layout(Some(T_PROBE), 64, 40);
        assert_eq!(short, ReplyLayout::ShortProbe(36));
        let out = encode_reply(&Reply::Probe(info), short);
        assert_eq!(
            out,
            [&[0; 36][..], &[Status::Inval.code(), 0, 0, 0]].concat()
        );
    }

    #[test]
    fn other_replies_are_the_tail_and_unparsable_requests_get_nothing() {
        let layout = reply_layout(Some(T_MAP), 64, 4);
        assert_eq!(layout, ReplyLayout::Tail(0));
        assert_eq!(
            encode_reply(&Reply::Status(Status::Range), layout),
            vec![5, 0, 0, 0]
        );
        for (kind, writable) in [
            (Some(T_MAP), 3),
            (Some(T_PROBE), 3),
            (Some(0), 4),
            (Some(6), 64),
            (None, 64),
        ] {
            let layout = reply_layout(kind, 64, writable);
            assert_eq!(layout, ReplyLayout::Nothing, "{kind:?} {writable}");
            assert!(encode_reply(&Reply::Status(Status::Ok), layout).is_empty());
        }
    }

    #[test]
    fn config_space_layout() {
        let c = ViommuConfig::default();
        let b = config_space(&c, 0x4020_1000, true);
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 0x4020_1000);
        assert_eq!(
            u64::from_le_bytes(b[16..24].try_into().unwrap()),
            (1 << 48) - 1
        );
        assert_eq!(u32::from_le_bytes(b[28..32].try_into().unwrap()), u32::MAX);
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 512);
        assert_eq!(&b[36..], &[1, 0, 0, 0]);
        assert_eq!(config_space(&c, 0x1000, false)[CONFIG_BYPASS_OFFSET], 0);
    }
}
