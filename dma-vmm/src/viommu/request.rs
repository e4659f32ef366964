//! virtio-iommu requests, replies and status codes (virtio 1.2, section 5.13).

/// `VIRTIO_IOMMU_MAP_F_READ`: the device may read through the mapping.
pub const MAP_F_READ: u32 = 1 << 0;
/// `VIRTIO_IOMMU_MAP_F_WRITE`: the device may write through the mapping.
pub const MAP_F_WRITE: u32 = 1 << 1;
/// `VIRTIO_IOMMU_MAP_F_MMIO`: the target is device memory (mapped, never cached).
pub const MAP_F_MMIO: u32 = 1 << 2;
/// Every MAP flag this device understands; any other bit fails the request with `INVAL`.
pub const MAP_F_KNOWN: u32 = MAP_F_READ | MAP_F_WRITE | MAP_F_MMIO;
/// `VIRTIO_IOMMU_ATTACH_F_BYPASS`: attach to a bypass domain (identity, no translation).
pub const ATTACH_F_BYPASS: u32 = 1 << 0;

/// A request from the guest driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Request {
    /// `VIRTIO_IOMMU_T_ATTACH`: attach `endpoint` to `domain`, creating the domain if needed;
    /// an endpoint attached elsewhere is detached from there first.
    Attach {
        /// Domain id.
        domain: u32,
        /// Endpoint id.
        endpoint: u32,
        /// `ATTACH_F_*` flags.
        flags: u32,
    },
    /// `VIRTIO_IOMMU_T_DETACH`: detach `endpoint` from `domain`.
    Detach {
        /// Domain id.
        domain: u32,
        /// Endpoint id.
        endpoint: u32,
    },
    /// `VIRTIO_IOMMU_T_MAP`: map `[virt_start, virt_end]` to `phys_start`.
    Map {
        /// Domain id.
        domain: u32,
        /// First IOVA.
        virt_start: u64,
        /// Last IOVA (inclusive).
        virt_end: u64,
        /// Guest-physical address of `virt_start`.
        phys_start: u64,
        /// `MAP_F_*` flags.
        flags: u32,
    },
    /// `VIRTIO_IOMMU_T_UNMAP`: remove every mapping inside `[virt_start, virt_end]`.
    Unmap {
        /// Domain id.
        domain: u32,
        /// First IOVA.
        virt_start: u64,
        /// Last IOVA (inclusive).
        virt_end: u64,
    },
    /// `VIRTIO_IOMMU_T_PROBE`: properties of `endpoint`.
    Probe {
        /// Endpoint id.
        endpoint: u32,
    },
}

/// `VIRTIO_IOMMU_S_*`: the status a request completes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum Status {
    /// `S_OK`.
    Ok = 0,
    /// `S_IOERR`: the request could not be read.
    IoErr = 1,
    /// `S_UNSUPP`: unsupported request or flag combination.
    Unsupp = 2,
    /// `S_DEVERR`: internal device error.
    DevErr = 3,
    /// `S_INVAL`: invalid parameters (unknown flags, overlap, not attached, bypass domain).
    Inval = 4,
    /// `S_RANGE`: out of range (unaligned, outside the input range, split mapping, domain id).
    Range = 5,
    /// `S_NOENT`: no such domain or endpoint.
    NoEnt = 6,
    /// `S_FAULT`: bad address.
    Fault = 7,
    /// `S_NOMEM`: out of resources (mapping or domain caps, page-table memory).
    NoMem = 8,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::IoErr,
        Status::Unsupp,
        Status::DevErr,
        Status::Inval,
        Status::Range,
        Status::NoEnt,
        Status::Fault,
        Status::NoMem,
    ];

    /// The wire value.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The status with wire value `code`, if it is one.
    ///
    /// ```
    /// use dma_vmm::viommu::Status;
    /// assert!(Status::ALL.iter().all(|&s| Status::from_code(s.code()) == Some(s)));
    /// assert_eq!(Status::from_code(9), None);
    /// ```
    pub fn from_code(code: u8) -> Option<Status> {
        Status::ALL.get(usize::from(code)).copied()
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Ok => "OK",
            Status::IoErr => "IOERR",
            Status::Unsupp => "UNSUPP",
            Status::DevErr => "DEVERR",
            Status::Inval => "INVAL",
            Status::Range => "RANGE",
            Status::NoEnt => "NOENT",
            Status::Fault => "FAULT",
            Status::NoMem => "NOMEM",
        };
        write!(f, "VIRTIO_IOMMU_S_{s}")
    }
}

/// `VIRTIO_IOMMU_RESV_MEM_T_*`: what a reserved region is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum ReservedKind {
    /// `RESV_MEM_T_RESERVED`: accesses are not translated and fault.
    Reserved = 0,
    /// `RESV_MEM_T_MSI`: the MSI doorbell window, bypassing translation.
    Msi = 1,
}

/// A reserved IOVA region (`VIRTIO_IOMMU_PROBE_T_RESV_MEM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ReservedRegion {
    /// Kind of region.
    pub kind: ReservedKind,
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub end: u64,
}

/// What PROBE reports for an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ProbeInfo {
    /// Page sizes the domain's page table supports (bit n set: 2^n-byte pages), as in the
    /// config space (the PROBE reply on the wire has no property for it); the smallest is the
    /// granularity MAP ranges must be aligned to (UNMAP ranges need not be).
    pub page_size_mask: u64,
    /// Reserved regions of the endpoint, the device-wide ones and its own, sorted by start (the
    /// order of the RESV_MEM properties).
    pub reserved: Vec<ReservedRegion>,
}

/// The device's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Reply {
    /// The request completed with this status (`Ok` or an error).
    Status(Status),
    /// A successful PROBE.
    Probe(ProbeInfo),
}

impl Reply {
    /// The status of the reply (`Ok` for a probe).
    pub fn status(&self) -> Status {
        match self {
            Reply::Status(s) => *s,
            Reply::Probe(_) => Status::Ok,
        }
    }
}
