//! The virtio-iommu wire format (virtio 1.2, section 5.13): requests as the driver lays them
//! out in the request queue, replies and PROBE properties as the device writes them, and the
//! config space. All fields little-endian.
//!
//! ```
//! # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
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

use super::{ProbeInfo, Reply, Request, Status, ViommuConfig};

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
/// Size of the request head (type and reserved bytes) and of the reply tail.
pub const HEAD_SIZE: usize = 4;
/// Size of a reserved-memory property, header included.
pub const RESV_MEM_SIZE: usize = 24;

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

/// Decode the device-readable part of a request. Unknown types fail with `UNSUPP`, buffers
/// shorter than their type's layout with `INVAL`; reserved fields are ignored.
pub fn decode(buf: &[u8]) -> Result<Request, Status> {
    let kind = *buf.first().ok_or(Status::Inval)?;
    let size = request_size(kind).ok_or(Status::Unsupp)?;
    if buf.len() < size {
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

/// Encode the device-writable part of a reply: for PROBE, `probe_size` bytes of properties
/// (reserved regions, then zeroes: the end marker) and the tail; otherwise the tail alone
/// (status, three reserved bytes). A PROBE whose properties do not fit `probe_size` is
/// answered with `DEVERR` rather than with a truncated list.
pub fn encode_reply(reply: &Reply, probe_size: usize) -> Vec<u8> {
    let status = match reply {
        Reply::Status(s) => return tail(*s),
        Reply::Probe(info) => encode_probe(info, probe_size),
    };
    status.unwrap_or_else(|| {
        let mut out = vec![0; probe_size];
        out.extend(tail(Status::DevErr));
        out
    })
}

fn encode_probe(info: &ProbeInfo, probe_size: usize) -> Option<Vec<u8>> {
    if info.reserved.len() * RESV_MEM_SIZE > probe_size {
        return None;
    }
    let mut out = Vec::with_capacity(probe_size + HEAD_SIZE);
    for r in &info.reserved {
        out.extend_from_slice(&PROBE_T_RESV_MEM.to_le_bytes());
        out.extend_from_slice(&((RESV_MEM_SIZE - 4) as u16).to_le_bytes());
        out.extend_from_slice(&[r.kind as u8, 0, 0, 0]);
        out.extend_from_slice(&r.start.to_le_bytes());
        out.extend_from_slice(&r.end.to_le_bytes());
    }
    out.resize(probe_size, 0);
    out.extend(tail(Status::Ok));
    Some(out)
}

fn tail(status: Status) -> Vec<u8> {
    vec![status.code(), 0, 0, 0]
}

/// The config space (`struct virtio_iommu_config`, 40 bytes): page-size mask, input range,
/// domain range, probe size, bypass.
pub fn config_space(config: &ViommuConfig, page_size_mask: u64, probe_size: u32) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[0..8].copy_from_slice(&page_size_mask.to_le_bytes());
    out[8..16].copy_from_slice(&config.input_range.0.to_le_bytes());
    out[16..24].copy_from_slice(&config.input_range.1.to_le_bytes());
    out[24..28].copy_from_slice(&config.domain_range.0.to_le_bytes());
    out[28..32].copy_from_slice(&config.domain_range.1.to_le_bytes());
    out[32..36].copy_from_slice(&probe_size.to_le_bytes());
    out[36] = config.bypass as u8;
    out
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::viommu::{ReservedKind, ReservedRegion};

    fn head(kind: u8) -> Vec<u8> {
        vec![kind, 0xff, 0xff, 0xff] // reserved bytes are ignored
    }

    #[test]
    fn every_request_type_decodes() {
        let mut a = head(T_ATTACH);
        for v in [5u32, 9, 1, 0xdead] {
            a.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            decode(&a),
            Ok(Request::Attach {
                domain: 5,
                endpoint: 9,
                flags: 1
            })
        );
        let mut d = head(T_DETACH);
        d.extend_from_slice(&5u32.to_le_bytes());
        d.extend_from_slice(&9u32.to_le_bytes());
        d.extend_from_slice(&[0; 8]);
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
        u.extend_from_slice(&[0; 4]);
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
        p.extend_from_slice(&[0; 64]);
        assert_eq!(decode(&p), Ok(Request::Probe { endpoint: 9 }));
        // Every truncation of a valid request is INVAL; unknown types UNSUPP; empty INVAL.
        for cut in 0..u.len() {
            assert_eq!(decode(&u[..cut]), Err(Status::Inval));
        }
        assert_eq!(decode(&head(9)), Err(Status::Unsupp));
        assert_eq!(request_size(0), None);
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
        let out = encode_reply(&Reply::Probe(info.clone()), 64);
        assert_eq!(out.len(), 64 + 4);
        assert_eq!(&out[..4], &[1, 0, 20, 0]);
        assert_eq!(out[4], ReservedKind::Msi as u8);
        assert_eq!(
            u64::from_le_bytes(out[8..16].try_into().unwrap()),
            0xfee0_0000
        );
        assert_eq!(
            u64::from_le_bytes(out[16..24].try_into().unwrap()),
            0xfeef_ffff
        );
        assert!(out[24..64].iter().all(|&b| b == 0), "end marker");
        assert_eq!(out[64], Status::Ok.code());
        // Properties that do not fit: DEVERR, not a truncated list.
        let out = encode_reply(&Reply::Probe(info), 16);
        assert_eq!((out.len(), out[16]), (20, Status::DevErr.code()));
        assert_eq!(
            encode_reply(&Reply::Status(Status::Range), 64),
            vec![5, 0, 0, 0]
        );
    }

    #[test]
    fn config_space_layout() {
        let c = ViommuConfig::default();
        let b = config_space(&c, 0x4020_1000, 512);
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 0x4020_1000);
        assert_eq!(
            u64::from_le_bytes(b[16..24].try_into().unwrap()),
            (1 << 48) - 1
        );
        assert_eq!(u32::from_le_bytes(b[28..32].try_into().unwrap()), u32::MAX);
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 512);
        assert_eq!(b[36], 1);
    }
}
