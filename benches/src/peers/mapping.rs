//! Mapping-store peers: cloud-hypervisor's virtio-iommu store (two `RwLock`ed `BTreeMap`s, a
//! linear scan on unmap) and vm-memory 0.18's `Iotlb` behind an `RwLock`.

use std::collections::BTreeMap;
use std::sync::RwLock;
use vm_memory::iommu::Iotlb;
use vm_memory::{GuestAddress, Permissions};

/// An IOVA → physical mapping store: the interface the map/unmap and translation cases drive.
pub trait MappingStore: Sync {
    /// Map `[iova, iova + size)` to `[phys, phys + size)`; `false` if refused (overlap, bad
    /// alignment, out of range).
    fn map(&self, iova: u64, phys: u64, size: u64) -> bool;
    /// Remove the mappings in `[iova, iova + size)`; `false` if nothing was mapped there.
    fn unmap(&self, iova: u64, size: u64) -> bool;
    /// The physical address `iova` maps to.
    fn translate(&self, iova: u64) -> Option<u64>;
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    gpa: u64,
    size: u64,
}

#[derive(Debug, Default)]
struct Domain {
    mappings: BTreeMap<u64, Mapping>,
}

/// cloud-hypervisor's virtio-iommu mapping state, written from its design: endpoint → domain
/// and domain → mappings, each in an `RwLock<BTreeMap>`. A translation takes both read locks; a
/// MAP checks overlap with `range(..=end).next_back()`; an UNMAP scans every mapping of the
/// domain for overlap and removes them with `retain`.
///
/// ```
/// use dma_bench::peers::mapping::{ChMappingStore, MappingStore};
/// let s = ChMappingStore::new();
/// assert!(s.map(0x1000, 0x8000, 0x1000));
/// assert!(!s.map(0x1000, 0x9000, 0x1000));
/// assert_eq!(s.translate(0x1234), Some(0x8234));
/// assert!(s.unmap(0x1000, 0x1000));
/// assert_eq!(s.translate(0x1234), None);
/// ```
#[derive(Debug)]
pub struct ChMappingStore {
    endpoints: RwLock<BTreeMap<u32, u32>>,
    domains: RwLock<BTreeMap<u32, Domain>>,
}

/// The one endpoint and domain the benchmarks use.
const ENDPOINT: u32 = 8;
const DOMAIN: u32 = 1;

impl ChMappingStore {
    /// A store with one endpoint attached to one empty domain.
    pub fn new() -> Self {
        ChMappingStore {
            endpoints: RwLock::new(BTreeMap::from([(ENDPOINT, DOMAIN)])),
            domains: RwLock::new(BTreeMap::from([(DOMAIN, Domain::default())])),
        }
    }
}

impl Default for ChMappingStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MappingStore for ChMappingStore {
    fn map(&self, iova: u64, gpa: u64, size: u64) -> bool {
        let Some(end) = iova.checked_add(size - 1) else {
            return false;
        };
        let mut domains = self.domains.write().unwrap_or_else(|e| e.into_inner());
        let Some(domain) = domains.get_mut(&DOMAIN) else {
            return false;
        };
        if let Some((&base, m)) = domain.mappings.range(..=end).next_back() {
            if base + m.size > iova {
                return false;
            }
        }
        domain.mappings.insert(iova, Mapping { gpa, size });
        true
    }

    fn unmap(&self, iova: u64, size: u64) -> bool {
        let end = iova.saturating_add(size);
        let mut domains = self.domains.write().unwrap_or_else(|e| e.into_inner());
        let Some(domain) = domains.get_mut(&DOMAIN) else {
            return false;
        };
        // The linear scan for overlapping mappings, as the design does it.
        let hit: Vec<u64> = domain
            .mappings
            .iter()
            .filter(|(&base, m)| base < end && base + m.size > iova)
            .map(|(&base, _)| base)
            .collect();
        domain.mappings.retain(|base, _| !hit.contains(base));
        !hit.is_empty()
    }

    fn translate(&self, iova: u64) -> Option<u64> {
        let endpoints = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        let domain_id = *endpoints.get(&ENDPOINT)?;
        let domains = self.domains.read().unwrap_or_else(|e| e.into_inner());
        let domain = domains.get(&domain_id)?;
        let (&base, m) = domain.mappings.range(..=iova).next_back()?;
        (iova < base + m.size).then(|| m.gpa + (iova - base))
    }
}

/// vm-memory 0.18's `Iotlb` (a `RangeMap` of byte ranges) behind an `RwLock`, the way its
/// `Iommu` implementations hand out `RwLockReadGuard<Iotlb>` as the translation guard.
///
/// ```
/// use dma_bench::peers::mapping::{IotlbPeer, MappingStore};
/// let s = IotlbPeer::new();
/// assert!(s.map(0x1000, 0x8000, 0x1000));
/// assert_eq!(s.translate(0x1234), Some(0x8234));
/// assert!(s.unmap(0x1000, 0x1000));
/// assert_eq!(s.translate(0x1234), None);
/// ```
#[derive(Debug, Default)]
pub struct IotlbPeer {
    iotlb: RwLock<Iotlb>,
}

impl IotlbPeer {
    /// An empty IOTLB.
    pub fn new() -> Self {
        Self::default()
    }
}

impl MappingStore for IotlbPeer {
    fn map(&self, iova: u64, phys: u64, size: u64) -> bool {
        let mut iotlb = self.iotlb.write().unwrap_or_else(|e| e.into_inner());
        iotlb
            .set_mapping(
                GuestAddress(iova),
                GuestAddress(phys),
                size as usize,
                Permissions::ReadWrite,
            )
            .is_ok()
    }

    fn unmap(&self, iova: u64, size: u64) -> bool {
        let mut iotlb = self.iotlb.write().unwrap_or_else(|e| e.into_inner());
        iotlb.invalidate_mapping(GuestAddress(iova), size as usize);
        true
    }

    fn translate(&self, iova: u64) -> Option<u64> {
        let guard = self.iotlb.read().unwrap_or_else(|e| e.into_inner());
        let mut it = Iotlb::lookup(guard, GuestAddress(iova), 1, Permissions::Read).ok()?;
        it.next().map(|r| r.base.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behaves_as_a_map<S: MappingStore>(s: &S) {
        for p in 0..64u64 {
            assert!(s.map(0x10_0000 + p * 0x1000, 0x8000_0000 + p * 0x1000, 0x1000));
        }
        for p in 0..64u64 {
            assert_eq!(
                s.translate(0x10_0000 + p * 0x1000 + 0x123),
                Some(0x8000_0000 + p * 0x1000 + 0x123)
            );
        }
        assert_eq!(s.translate(0x10_0000 + 64 * 0x1000), None);
        assert!(s.unmap(0x10_0000, 0x1000 * 32));
        assert_eq!(s.translate(0x10_0000), None);
        assert_eq!(
            s.translate(0x10_0000 + 40 * 0x1000),
            Some(0x8000_0000 + 40 * 0x1000)
        );
    }

    #[test]
    fn ch_store_maps_translates_unmaps() {
        behaves_as_a_map(&ChMappingStore::new());
    }

    #[test]
    fn iotlb_peer_maps_translates_unmaps() {
        behaves_as_a_map(&IotlbPeer::new());
    }

    #[test]
    fn ch_store_refuses_overlap_and_keeps_working() {
        let s = ChMappingStore::new();
        assert!(s.map(0x4000, 0x1000, 0x2000));
        assert!(!s.map(0x5000, 0x9000, 0x1000));
        assert!(!s.unmap(0x10000, 0x1000));
        assert_eq!(s.translate(0x5008), Some(0x2008));
    }
}
