//! Devices attached to a domain: DMA limits, trust, and their per-device state.

use crate::error::DmaError;
use crate::policy::DevicePolicy;
use dma_sync::Arc;

/// What a device declares when it attaches (Linux `dma_parms` and friends).
///
/// ```
/// use dma_iommu::DeviceConfig;
/// let nvme = DeviceConfig { min_align_mask: 0xFFF, trusted: false, ..DeviceConfig::default() };
/// assert_eq!(nvme.dma_mask, u64::MAX);
/// assert_eq!(DeviceConfig::default().max_segment_size, 64 << 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Highest DMA (IO virtual) address the device can emit.
    pub dma_mask: u64,
    /// Offset bits of the original address a bounce buffer keeps (NVMe: 0xFFF).
    pub min_align_mask: u64,
    /// Longest DMA segment the device accepts in a scatter list.
    pub max_segment_size: u64,
    /// No DMA segment may cross a `seg_boundary_mask + 1` boundary (all ones: unbounded).
    pub seg_boundary_mask: u64,
    /// Whether the device is trusted; untrusted devices are always strict and have every
    /// mapping not aligned to the IOVA granule at both ends bounced.
    pub trusted: bool,
    /// Try 32-bit IOVAs first (PCI SAC addresses are cheaper), until the first miss.
    pub prefer_32bit: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            dma_mask: u64::MAX,
            min_align_mask: 0,
            max_segment_size: 64 << 10,
            seg_boundary_mask: u64::MAX,
            trusted: true,
            prefer_32bit: false,
        }
    }
}

impl DeviceConfig {
    /// Check the limits against a domain of IOVA granule `granule` ([`crate::Domain::attach`]
    /// calls it before anything is allocated): a segment boundary is `2^k - 1` with `2^k` at
    /// least one granule (scatter-list placement and merging rely on that form), and a
    /// segment holds at least one byte. Masks and sizes are otherwise free: a mask too small
    /// for a mapping is [`DmaError::BeyondMask`] at map time.
    ///
    /// ```
    /// use dma_iommu::{DeviceConfig, DmaError};
    /// assert_eq!(DeviceConfig::default().validate(0x1000), Ok(()));
    /// let odd = DeviceConfig { seg_boundary_mask: 0x1_2FFF, ..DeviceConfig::default() };
    /// assert!(matches!(odd.validate(0x1000), Err(DmaError::DeviceConfig(_))));
    /// let small = DeviceConfig { seg_boundary_mask: 0x7FF, ..DeviceConfig::default() };
    /// assert!(matches!(small.validate(0x1000), Err(DmaError::DeviceConfig(_))));
    /// ```
    pub fn validate(&self, granule: u64) -> Result<(), DmaError> {
        let boundary = self.seg_boundary_mask;
        if boundary & boundary.wrapping_add(1) != 0 || boundary < granule - 1 {
            return Err(DmaError::DeviceConfig(
                "seg_boundary_mask must be 2^k - 1, at least one granule",
            ));
        }
        if self.max_segment_size == 0 {
            return Err(DmaError::DeviceConfig(
                "max_segment_size must be at least one byte",
            ));
        }
        Ok(())
    }
}

/// A device attached to a [`crate::Domain`]: a cheap, cloneable handle.
///
/// ```
/// use dma_iommu::{DeviceConfig, Direction, Domain, DomainConfig, NoTlb};
/// let dom = Domain::new(DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(), NoTlb, None).unwrap();
/// let dev = dom.attach(DeviceConfig { dma_mask: 0xffff_ffff, ..DeviceConfig::default() }).unwrap();
/// assert_eq!(dev.config().dma_mask, 0xffff_ffff);
/// let same = dev.clone(); // another handle to the same device
/// let dma = dom.map(&same, 0x1_2000_0000, 0x1000, Direction::ToDevice).unwrap();
/// assert!(dma + 0xfff <= 0xffff_ffff); // the IOVA fits the device's mask
/// dom.unmap(&dev, dma, 0x1000, Direction::ToDevice).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Device {
    pub(crate) inner: Arc<DeviceInner>,
}

#[derive(Debug)]
pub(crate) struct DeviceInner {
    /// Identifies the device within its domain (never 0).
    pub(crate) id: u64,
    /// The domain the device is attached to.
    pub(crate) domain: Arc<crate::domain::DomainKey>,
    pub(crate) config: DeviceConfig,
    pub(crate) policy: DevicePolicy,
    /// The device as the domain's bounce pool knows it (untrusted devices only).
    pub(crate) bounce_dev: Option<swiotlb_core::Device>,
}

impl Device {
    /// What the device declared.
    pub fn config(&self) -> &DeviceConfig {
        &self.inner.config
    }

    /// Whether IOVA allocations for this device still try below 4 GiB first.
    pub fn prefers_32bit(&self) -> bool {
        self.inner.policy.tries_32bit_first()
    }
}
