//! What the device offers: its configuration, its validation against documented maxima, and
//! the virtio-iommu feature bits (virtio 1.2, "Device Types / IOMMU Device / Feature bits";
//! the config space's byte layout is in [`super::wire`]).
//!
//! Every field the guest can see follows from [`ViommuConfig`] and is checked once, by
//! [`ViommuConfig::validate`] (called by `Viommu::new`), before anything is allocated: the
//! page-size mask is the page table's, `input_range` fits its input size, `domain_range` is
//! not empty, every count is within its documented maximum, and every endpoint's reserved
//! regions fit in `probe_size` (so PROBE never has to truncate or fail).

use super::wire::RESV_MEM_SIZE;
use super::{ReservedKind, ReservedRegion};
use io_pgtable::Config;
use std::fmt;

/// `VIRTIO_IOMMU_F_INPUT_RANGE`: `input_range` is valid.
pub const F_INPUT_RANGE: u64 = 1 << 0;
/// `VIRTIO_IOMMU_F_DOMAIN_RANGE`: `domain_range` is valid.
pub const F_DOMAIN_RANGE: u64 = 1 << 1;
/// `VIRTIO_IOMMU_F_MAP_UNMAP`: MAP and UNMAP requests are available.
pub const F_MAP_UNMAP: u64 = 1 << 2;
/// `VIRTIO_IOMMU_F_BYPASS` (legacy, superseded by [`F_BYPASS_CONFIG`]; never offered).
pub const F_BYPASS: u64 = 1 << 3;
/// `VIRTIO_IOMMU_F_PROBE`: the PROBE request is available.
pub const F_PROBE: u64 = 1 << 4;
/// `VIRTIO_IOMMU_F_MMIO`: the `MAP_F_MMIO` flag is available.
pub const F_MMIO: u64 = 1 << 5;
/// `VIRTIO_IOMMU_F_BYPASS_CONFIG`: the config field `bypass` and `ATTACH_F_BYPASS`.
pub const F_BYPASS_CONFIG: u64 = 1 << 6;

/// Most domains a device may be configured to hold at once.
pub const MAX_DOMAINS: usize = 1 << 20;
/// Most mappings per domain a device may be configured to hold.
pub const MAX_MAPPINGS_PER_DOMAIN: usize = 1 << 24;
/// Most mappings in all a device may be configured to hold.
pub const MAX_MAPPINGS: usize = 1 << 24;
/// Most page-table leaves a device may be configured to hold in all domains together.
pub const MAX_LEAVES: u64 = 1 << 32;
/// Most page tables (below the roots) a device may be configured to hold in all domains
/// together.
pub const MAX_TABLES: u64 = 1 << 24;
/// Largest `probe_size`: every PROBE reply is this big, so it bounds the reply allocation.
pub const MAX_PROBE_SIZE: u32 = 4096;
/// Most fault reports a device may be configured to keep pending.
pub const MAX_FAULT_LOG: usize = 4096;

/// Device configuration: what the config space advertises, plus the device's caps.
#[derive(Debug, Clone)]
pub struct ViommuConfig {
    /// Page-table format of every translated domain; its page sizes are the page-size mask.
    pub pgtable: Config,
    /// IOVAs a mapping may use, inclusive (`input_range` of the config space).
    pub input_range: (u64, u64),
    /// Domain ids the driver may use, inclusive (`domain_range`).
    pub domain_range: (u32, u32),
    /// Most domains alive at once, 1 ..= [`MAX_DOMAINS`] (cloud-hypervisor: 2^16).
    pub max_domains: usize,
    /// Most mappings per domain, 1 ..= [`MAX_MAPPINGS_PER_DOMAIN`] (cloud-hypervisor: 2^20).
    pub max_mappings_per_domain: usize,
    /// Most mappings of all domains together, 1 ..= [`MAX_MAPPINGS`]: what bounds the
    /// memory a guest can make the device allocate (domains × mappings per domain does not).
    pub max_mappings: usize,
    /// Most page-table leaves (pages and blocks) of all domains together, 1 ..=
    /// [`MAX_LEAVES`]: what bounds the page-table memory one MAP can make the device allocate
    /// (a MAP whose addresses allow 4 KiB pages only needs a leaf table per 2 MiB).
    pub max_leaves: u64,
    /// Most page tables below the domains' roots, of all domains together, 1 ..=
    /// [`MAX_TABLES`]: what bounds the page-table memory scattered MAPs can make the device
    /// allocate (a one-page MAP far from the others needs a table per level below the root:
    /// three, 12 KiB, with the four-level 4 KiB format). A MAP is refused (`NOMEM`) if the
    /// tables it would install (`PageTable::tables_to_install`, exact) do not fit; UNMAP frees
    /// the tables its gap no longer needs (`PageTable::prune`), and a dying domain all of its.
    pub max_tables: u64,
    /// Offer `VIRTIO_IOMMU_F_BYPASS_CONFIG`: bypass domains (`ATTACH_F_BYPASS`) and the
    /// config field `bypass`.
    pub bypass_config: bool,
    /// Initial value of the config field `bypass` (restored by a system reset, i.e. a new
    /// device; kept by a device reset): whether endpoints attached to no domain are in bypass
    /// mode (identity translation) instead of blocked. Needs `bypass_config`.
    pub initial_bypass: bool,
    /// Bytes of PROBE properties (`probe_size`), at most [`MAX_PROBE_SIZE`]; every endpoint's
    /// reserved regions must fit ([`RESV_MEM_SIZE`] bytes each).
    pub probe_size: u32,
    /// Reserved regions of every endpoint (e.g. the MSI doorbell window).
    pub reserved: Vec<ReservedRegion>,
    /// Fault reports kept for the event queue, at most [`MAX_FAULT_LOG`]; further faults
    /// are dropped (and counted) until the driver consumes some.
    pub fault_log: usize,
}

impl Default for ViommuConfig {
    /// 4 KiB granule, 48-bit IOVAs, the whole input range, every domain id, the caps of
    /// cloud-hypervisor (2^20 mappings in all), 2^24 leaves (128 MiB of leaf tables), 2^16
    /// tables (256 MiB of 4 KiB tables), bypass domains offered, unattached endpoints blocked,
    /// 512 bytes of PROBE properties, no reserved regions, 64 pending fault reports.
    fn default() -> Self {
        ViommuConfig {
            pgtable: Config::s1_4k(48),
            input_range: (0, (1 << 48) - 1),
            domain_range: (0, u32::MAX),
            max_domains: 1 << 16,
            max_mappings_per_domain: 1 << 20,
            max_mappings: 1 << 20,
            max_leaves: 1 << 24,
            max_tables: 1 << 16,
            bypass_config: true,
            initial_bypass: false,
            probe_size: 512,
            reserved: Vec::new(),
            fault_log: 64,
        }
    }
}

/// Why the device or an endpoint cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViommuError {
    /// The page-table configuration is invalid.
    PageTable(io_pgtable::Error),
    /// The input range is empty or exceeds the page table's input size.
    InputRange {
        /// The rejected range.
        range: (u64, u64),
    },
    /// The domain range is empty.
    DomainRange,
    /// A count or size is outside `1 ..= max` (`0 ..= max` for `probe_size`).
    Limit {
        /// Which setting.
        what: &'static str,
        /// The rejected value.
        value: u64,
        /// Its documented maximum.
        max: u64,
    },
    /// `initial_bypass` without `bypass_config`: the `bypass` field would not exist.
    BypassWithoutFeature,
    /// A reserved region ends before it starts.
    ReservedRegion(ReservedRegion),
    /// Two reserved regions of one endpoint overlap (RESV_MEM: the device SHOULD NOT present
    /// overlapping properties).
    ReservedOverlap(ReservedRegion, ReservedRegion),
    /// An endpoint would have more than one MSI region (RESV_MEM: SHOULD NOT).
    SecondMsiRegion(ReservedRegion),
    /// An endpoint's reserved regions do not fit in `probe_size`.
    ProbeSize {
        /// Bytes the endpoint's RESV_MEM properties need.
        needed: usize,
        /// The configured `probe_size`.
        probe_size: u32,
    },
    /// An endpoint with this id already exists.
    EndpointExists(u32),
}

impl fmt::Display for ViommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViommuError::PageTable(e) => write!(f, "page-table configuration: {e}"),
            ViommuError::InputRange { range } => {
                write!(
                    f,
                    "input range {:#x}..={:#x} is empty or too large",
                    range.0, range.1
                )
            }
            ViommuError::DomainRange => f.write_str("domain range is empty"),
            ViommuError::Limit { what, value, max } => {
                write!(f, "{what} = {value} is outside its limits (max {max})")
            }
            ViommuError::BypassWithoutFeature => {
                f.write_str("initial_bypass needs bypass_config (VIRTIO_IOMMU_F_BYPASS_CONFIG)")
            }
            ViommuError::ReservedRegion(r) => {
                write!(f, "reserved region {:#x}..={:#x} is empty", r.start, r.end)
            }
            ViommuError::ReservedOverlap(a, b) => write!(
                f,
                "reserved regions {:#x}..={:#x} and {:#x}..={:#x} overlap",
                a.start, a.end, b.start, b.end
            ),
            ViommuError::SecondMsiRegion(r) => {
                write!(f, "second MSI region {:#x}..={:#x}", r.start, r.end)
            }
            ViommuError::ProbeSize { needed, probe_size } => write!(
                f,
                "reserved regions need {needed} bytes of PROBE properties, probe_size is {probe_size}"
            ),
            ViommuError::EndpointExists(id) => write!(f, "endpoint {id} already exists"),
        }
    }
}

impl std::error::Error for ViommuError {}

impl ViommuConfig {
    /// Check every field against the page table and the documented maxima; returns the
    /// page-size mask. Allocates nothing.
    pub fn validate(&self) -> Result<u64, ViommuError> {
        let geom = self.pgtable.geometry().map_err(ViommuError::PageTable)?;
        let (lo, hi) = self.input_range;
        if lo > hi || (geom.ias() < 64 && hi >> geom.ias() != 0) {
            return Err(ViommuError::InputRange {
                range: self.input_range,
            });
        }
        if self.domain_range.0 > self.domain_range.1 {
            return Err(ViommuError::DomainRange);
        }
        limit(
            "max_domains",
            self.max_domains as u64,
            1,
            MAX_DOMAINS as u64,
        )?;
        limit(
            "max_mappings_per_domain",
            self.max_mappings_per_domain as u64,
            1,
            MAX_MAPPINGS_PER_DOMAIN as u64,
        )?;
        limit(
            "max_mappings",
            self.max_mappings as u64,
            1,
            MAX_MAPPINGS as u64,
        )?;
        limit("max_leaves", self.max_leaves, 1, MAX_LEAVES)?;
        limit("max_tables", self.max_tables, 1, MAX_TABLES)?;
        limit(
            "probe_size",
            u64::from(self.probe_size),
            0,
            u64::from(MAX_PROBE_SIZE),
        )?;
        limit("fault_log", self.fault_log as u64, 0, MAX_FAULT_LOG as u64)?;
        if self.initial_bypass && !self.bypass_config {
            return Err(ViommuError::BypassWithoutFeature);
        }
        self.endpoint_regions(&[])?;
        // `geometry()` succeeded, so the page table has at least one page size.
        Ok(geom.pgsize_bitmap())
    }

    /// The reserved regions of an endpoint with `own` regions: the device-wide ones and its
    /// own, sorted by start, checked (non-empty, disjoint, one MSI region at most, fitting
    /// `probe_size`) before anything is allocated.
    pub fn endpoint_regions(
        &self,
        own: &[ReservedRegion],
    ) -> Result<Vec<ReservedRegion>, ViommuError> {
        let all = || self.reserved.iter().chain(own);
        if let Some(r) = all().find(|r| r.start > r.end) {
            return Err(ViommuError::ReservedRegion(*r));
        }
        let needed = (self.reserved.len() + own.len()).saturating_mul(RESV_MEM_SIZE);
        if needed > self.probe_size as usize {
            return Err(ViommuError::ProbeSize {
                needed,
                probe_size: self.probe_size,
            });
        }
        if let Some(r) = all().filter(|r| r.kind == ReservedKind::Msi).nth(1) {
            return Err(ViommuError::SecondMsiRegion(*r));
        }
        let mut sorted: Vec<ReservedRegion> = all().copied().collect();
        sorted.sort_by_key(|r| r.start);
        if let Some(w) = sorted.windows(2).find(|w| w[1].start <= w[0].end) {
            return Err(ViommuError::ReservedOverlap(w[0], w[1]));
        }
        Ok(sorted)
    }

    /// The device-specific feature bits the device offers.
    pub fn offered_features(&self) -> u64 {
        let bypass = if self.bypass_config {
            F_BYPASS_CONFIG
        } else {
            0
        };
        F_INPUT_RANGE | F_DOMAIN_RANGE | F_MAP_UNMAP | F_PROBE | F_MMIO | bypass
    }
}

fn limit(what: &'static str, value: u64, min: u64, max: u64) -> Result<(), ViommuError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ViommuError::Limit { what, value, max })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn region(kind: ReservedKind, start: u64, end: u64) -> ReservedRegion {
        ReservedRegion { kind, start, end }
    }

    #[test]
    fn every_count_and_size_is_checked_against_its_maximum() {
        let with = |f: fn(&mut ViommuConfig)| {
            let mut c = ViommuConfig::default();
            f(&mut c);
            c.validate()
        };
        assert_eq!(with(|_| ()), Ok(0x1000 | 0x20_0000 | 0x4000_0000));
        type Edit = fn(&mut ViommuConfig);
        let cases: [(Edit, &str, u64); 11] = [
            (|c| c.max_domains = 0, "max_domains", 0),
            (
                |c| c.max_domains = MAX_DOMAINS + 1,
                "max_domains",
                1 << 20 | 1,
            ),
            (
                |c| c.max_mappings_per_domain = 0,
                "max_mappings_per_domain",
                0,
            ),
            (
                |c| c.max_mappings_per_domain = usize::MAX,
                "max_mappings_per_domain",
                u64::MAX,
            ),
            (|c| c.probe_size = MAX_PROBE_SIZE + 1, "probe_size", 4097),
            (|c| c.fault_log = MAX_FAULT_LOG + 1, "fault_log", 4097),
            (|c| c.max_mappings = 0, "max_mappings", 0),
            (|c| c.max_leaves = 0, "max_leaves", 0),
            (|c| c.max_leaves = MAX_LEAVES + 1, "max_leaves", 1 << 32 | 1),
            (|c| c.max_tables = 0, "max_tables", 0),
            (|c| c.max_tables = MAX_TABLES + 1, "max_tables", 1 << 24 | 1),
        ];
        for (f, what, value) in cases {
            assert!(
                matches!(with(f), Err(ViommuError::Limit { what: w, value: v, .. }) if w == what && v == value),
                "{what}"
            );
        }
        assert_eq!(
            with(|c| {
                c.bypass_config = false;
                c.initial_bypass = true;
            }),
            Err(ViommuError::BypassWithoutFeature)
        );
        // 22 regions need 528 bytes of properties: more than the default 512.
        assert_eq!(
            with(|c| c.reserved = (0..22)
                .map(|i| region(ReservedKind::Reserved, i << 20, (i << 20) + 1))
                .collect()),
            Err(ViommuError::ProbeSize {
                needed: 528,
                probe_size: 512
            })
        );
    }

    #[test]
    fn endpoint_regions_are_sorted_disjoint_with_one_msi_window() {
        let msi = region(ReservedKind::Msi, 0xfee0_0000, 0xfeef_ffff);
        let c = ViommuConfig {
            reserved: vec![msi],
            ..ViommuConfig::default()
        };
        let hole = region(ReservedKind::Reserved, 0x1000, 0x1fff);
        assert_eq!(c.endpoint_regions(&[hole]), Ok(vec![hole, msi]));
        let inside = region(ReservedKind::Reserved, 0xfee0_1000, 0xfee0_1fff);
        assert_eq!(
            c.endpoint_regions(&[inside]),
            Err(ViommuError::ReservedOverlap(msi, inside))
        );
        let msi2 = region(ReservedKind::Msi, 0x8000, 0x8fff);
        assert_eq!(
            c.endpoint_regions(&[msi2]),
            Err(ViommuError::SecondMsiRegion(msi2))
        );
        let empty = region(ReservedKind::Reserved, 2, 1);
        assert_eq!(
            c.endpoint_regions(&[empty]),
            Err(ViommuError::ReservedRegion(empty))
        );
    }
}
