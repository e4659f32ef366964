//! A virtio-iommu device model over our page tables, with quiescent UNMAP and DETACH.
//!
//! [`Viommu`] handles the requests of the virtio-iommu request queue ([`Request`]: attach,
//! detach, map, unmap, probe) with the specification's rules: MAP needs page-aligned ranges
//! and fails with `INVAL` if any byte is already mapped; UNMAP removes every mapping inside
//! its range, succeeds when there is none, and fails with `RANGE`, changing nothing, if it
//! would split a mapping; an ATTACH moves an endpoint attached elsewhere; a domain disappears
//! with its last endpoint; PROBE reports the page-size mask and the reserved regions.
//!
//! Device threads translate through a [`DeviceEndpoint`] handle: a lock-free page-table walk
//! (no lock, no shared write), done inside a read section that also covers the copy
//! ([`DeviceEndpoint::access`], or `IoMemory` (feature `vm-memory`) over the endpoint). UNMAP and DETACH
//! clear the translations, then wait for a grace period ([`crate::quiesce::synchronize`])
//! before they complete: when the guest sees the reply, no device access still uses the old
//! translation, so it may reuse the memory at once. Today's VMMs translate under a lock and
//! copy after dropping it, so their UNMAP replies race with copies in flight.
//! [`Viommu::handle_batch`] pays one grace period for a whole batch of requests.
//!
//! ```
//! # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
//! use dma_vmm::viommu::{Request, Status, Viommu, ViommuConfig, MAP_F_READ};
//!
//! let v = Viommu::new(ViommuConfig::default()).unwrap();
//! v.add_endpoint(3, vec![]).unwrap();
//! let map = |s, e| Request::Map { domain: 1, virt_start: s, virt_end: e, phys_start: s, flags: MAP_F_READ };
//! assert_eq!(v.handle(Request::Attach { domain: 1, endpoint: 3, flags: 0 }).status(), Status::Ok);
//! assert_eq!(v.handle(map(0x0000, 0x0fff)).status(), Status::Ok);
//! assert_eq!(v.handle(map(0x1000, 0x2fff)).status(), Status::Ok);
//! assert_eq!(v.handle(map(0x2000, 0x2fff)).status(), Status::Inval); // overlap
//! assert_eq!(v.handle(map(0x3000, 0x37ff)).status(), Status::Range); // not page aligned
//! // UNMAP [0, 0x1fff] would split the second mapping: refused, nothing removed.
//! let unmap = |s, e| Request::Unmap { domain: 1, virt_start: s, virt_end: e };
//! assert_eq!(v.handle(unmap(0, 0x1fff)).status(), Status::Range);
//! assert_eq!(v.mappings(1).unwrap().len(), 2);
//! assert_eq!(v.handle(unmap(0, 0x2fff)).status(), Status::Ok);
//! assert!(v.mappings(1).unwrap().is_empty());
//! ```

mod mappings;
mod request;
pub mod wire;

pub use mappings::{MapConflict, Mapping, MappingTree};
pub use request::*;

use crate::quiesce;
use crate::translate::{self, Fault, Leaf, Segment, Translate};
use dma_sync::{Arc, Mutex, Published};
use io_pgtable::{Config, PageTable, Prot};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Device configuration (the virtio-iommu config space, plus caps).
#[derive(Debug, Clone)]
pub struct ViommuConfig {
    /// Page-table format of every translated domain; its page sizes are the page-size mask.
    pub pgtable: Config,
    /// IOVAs a mapping may use, inclusive (`input_range` of the config space).
    pub input_range: (u64, u64),
    /// Domain ids the driver may use, inclusive (`domain_range`).
    pub domain_range: (u32, u32),
    /// Most domains alive at once (cloud-hypervisor: 2^16).
    pub max_domains: usize,
    /// Most mappings per domain (cloud-hypervisor: 2^20).
    pub max_mappings_per_domain: usize,
    /// Whether ATTACH may ask for a bypass domain (`VIRTIO_IOMMU_F_BYPASS_CONFIG`).
    pub bypass: bool,
    /// Reserved regions of every endpoint (e.g. the MSI doorbell window).
    pub reserved: Vec<ReservedRegion>,
}

impl Default for ViommuConfig {
    /// 4 KiB granule, 48-bit IOVAs, the whole input range, every domain id, the caps of
    /// cloud-hypervisor, bypass allowed, no reserved regions.
    fn default() -> Self {
        ViommuConfig {
            pgtable: Config::s1_4k(48),
            input_range: (0, (1 << 48) - 1),
            domain_range: (0, u32::MAX),
            max_domains: 1 << 16,
            max_mappings_per_domain: 1 << 20,
            bypass: true,
            reserved: Vec::new(),
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
    /// A reserved region ends before it starts.
    ReservedRegion(ReservedRegion),
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
            ViommuError::ReservedRegion(r) => {
                write!(f, "reserved region {:#x}..={:#x} is empty", r.start, r.end)
            }
            ViommuError::EndpointExists(id) => write!(f, "endpoint {id} already exists"),
        }
    }
}

impl std::error::Error for ViommuError {}

/// What a domain translates with.
enum DomainKind {
    /// A page table filled by MAP requests.
    Translated(Box<PageTable>),
    /// Identity translation with read and write (`ATTACH_F_BYPASS`).
    Bypass,
}

/// One address space: the page table devices translate through (shared with them).
pub struct Domain {
    id: u32,
    kind: DomainKind,
}

impl Domain {
    /// The domain id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether this is a bypass (identity) domain.
    pub fn is_bypass(&self) -> bool {
        matches!(self.kind, DomainKind::Bypass)
    }

    /// The page table (none for a bypass domain).
    pub fn page_table(&self) -> Option<&PageTable> {
        match &self.kind {
            DomainKind::Translated(pt) => Some(pt),
            DomainKind::Bypass => None,
        }
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("id", &self.id)
            .field("bypass", &self.is_bypass())
            .finish()
    }
}

impl Translate for Domain {
    fn lookup(&self, iova: u64) -> Result<Leaf, Fault> {
        match &self.kind {
            DomainKind::Translated(pt) => pt.lookup(iova),
            DomainKind::Bypass => Ok(Leaf {
                paddr: iova,
                len: (u64::MAX - iova).saturating_add(1),
                prot: Prot::READ | Prot::WRITE,
            }),
        }
    }
}

/// What an endpoint currently translates through.
enum Attachment {
    Blocked,
    Domain(Arc<Domain>),
}

struct EndpointState {
    id: u32,
    /// Device-wide reserved regions followed by the endpoint's own, sorted by start.
    reserved: Vec<ReservedRegion>,
    attached: Published<Attachment>,
}

/// A device's view of the vIOMMU: cheap to clone, one per device thread if you like.
///
/// Translation loads the endpoint's current domain and walks its page table, lock-free; the
/// endpoint's reserved regions fault. Use [`DeviceEndpoint::access`] (translate and copy in
/// one read section) or wrap it in an `IoMemory` (feature `vm-memory`) for vm-memory.
#[derive(Clone)]
pub struct DeviceEndpoint {
    state: Arc<EndpointState>,
}

impl fmt::Debug for DeviceEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceEndpoint")
            .field("id", &self.state.id)
            .finish()
    }
}

impl DeviceEndpoint {
    /// The endpoint id.
    pub fn id(&self) -> u32 {
        self.state.id
    }

    /// The domain the endpoint is attached to, if any.
    pub fn domain(&self) -> Option<u32> {
        match &**self.state.attached.load() {
            Attachment::Blocked => None,
            Attachment::Domain(d) => Some(d.id),
        }
    }

    /// Translate `[iova, iova + len)` for `access` and run `f` on its guest-physical
    /// segments inside one read section: an UNMAP or DETACH of the range does not complete
    /// before `f` returns. Fails, without calling `f`, if any byte faults.
    ///
    /// ```
    /// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
    /// use dma_vmm::viommu::{Request, Viommu, ViommuConfig, MAP_F_READ};
    /// use io_pgtable::Prot;
    /// let v = Viommu::new(ViommuConfig::default()).unwrap();
    /// let dev = v.add_endpoint(0, vec![]).unwrap();
    /// v.handle(Request::Attach { domain: 0, endpoint: 0, flags: 0 });
    /// v.handle(Request::Map { domain: 0, virt_start: 0, virt_end: 0xfff, phys_start: 0x5000, flags: MAP_F_READ });
    /// assert_eq!(dev.access(0x10, 4, Prot::READ, |s| s.to_vec()).unwrap()[0].paddr, 0x5010);
    /// assert!(dev.access(0x10, 4, Prot::WRITE, |_| ()).is_err()); // read-only mapping
    /// ```
    pub fn access<R>(
        &self,
        iova: u64,
        len: u64,
        access: Prot,
        f: impl FnOnce(&[Segment]) -> R,
    ) -> Result<R, Fault> {
        translate::access(self, iova, len, access, f)
    }

    /// This endpoint's I/O memory over the guest's RAM, for vm-memory users (virtio queues,
    /// vhost-user backends).
    #[cfg(feature = "vm-memory")]
    pub fn io_memory<M: vm_memory::GuestMemoryBackend>(
        &self,
        ram: M,
    ) -> crate::IoMemory<M, DeviceEndpoint> {
        crate::IoMemory::new(ram, self.clone())
    }
}

impl Translate for DeviceEndpoint {
    fn lookup(&self, iova: u64) -> Result<Leaf, Fault> {
        let reserved = &self.state.reserved;
        if reserved.iter().any(|r| r.start <= iova && iova <= r.end) {
            return Err(Fault::Reserved { iova });
        }
        let mut leaf = match &**self.state.attached.load() {
            Attachment::Blocked => return Err(Fault::Detached),
            Attachment::Domain(d) => d.lookup(iova)?,
        };
        // A leaf (a bypass window) never reaches into the next reserved region.
        if let Some(r) = reserved.iter().find(|r| r.start > iova) {
            leaf.len = leaf.len.min(r.start - iova);
        }
        Ok(leaf)
    }
}

/// A domain as the control path sees it: the shared domain, its endpoints, its mappings.
struct DomainSlot {
    domain: Arc<Domain>,
    endpoints: BTreeSet<u32>,
    mappings: MappingTree,
}

#[derive(Default)]
struct Control {
    endpoints: BTreeMap<u32, Arc<EndpointState>>,
    domains: BTreeMap<u32, DomainSlot>,
}

/// The virtio-iommu device. See the [module documentation](self).
pub struct Viommu {
    config: ViommuConfig,
    page_size_mask: u64,
    /// The control path: requests are serialised here; devices never take this lock.
    control: Mutex<Control>,
}

impl fmt::Debug for Viommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Viommu")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Viommu {
    /// A device with no endpoints.
    pub fn new(config: ViommuConfig) -> Result<Viommu, ViommuError> {
        let geom = config.pgtable.geometry().map_err(ViommuError::PageTable)?;
        let (lo, hi) = config.input_range;
        if lo > hi || (geom.ias() < 64 && hi >> geom.ias() != 0) {
            return Err(ViommuError::InputRange {
                range: config.input_range,
            });
        }
        if config.domain_range.0 > config.domain_range.1 {
            return Err(ViommuError::DomainRange);
        }
        if let Some(r) = config.reserved.iter().find(|r| r.start > r.end) {
            return Err(ViommuError::ReservedRegion(*r));
        }
        Ok(Viommu {
            page_size_mask: geom.pgsize_bitmap(),
            config,
            control: Mutex::new(Control::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ViommuConfig {
        &self.config
    }

    /// Page sizes of the domains' page tables (`page_size_mask` of the config space).
    pub fn page_size_mask(&self) -> u64 {
        self.page_size_mask
    }

    /// The 40-byte virtio-iommu config space the guest reads, advertising `probe_size`
    /// bytes of PROBE properties.
    pub fn config_space(&self, probe_size: u32) -> [u8; 40] {
        wire::config_space(&self.config, self.page_size_mask, probe_size)
    }

    /// Handle one request in wire format (its device-readable bytes) and return the
    /// device-writable reply bytes; see [`wire`]. Undecodable requests get `INVAL`/`UNSUPP`.
    ///
    /// ```
    /// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
    /// use dma_vmm::viommu::{wire, Status, Viommu, ViommuConfig};
    /// let v = Viommu::new(ViommuConfig::default()).unwrap();
    /// v.add_endpoint(2, vec![]).unwrap();
    /// let mut probe = vec![wire::T_PROBE, 0, 0, 0];
    /// probe.extend_from_slice(&2u32.to_le_bytes());
    /// probe.extend_from_slice(&[0; 64]);
    /// let reply = v.handle_bytes(&probe, 128);
    /// assert_eq!((reply.len(), reply[128]), (132, Status::Ok.code()));
    /// assert_eq!(v.handle_bytes(&[42, 0, 0, 0], 128), vec![Status::Unsupp.code(), 0, 0, 0]);
    /// ```
    pub fn handle_bytes(&self, request: &[u8], probe_size: usize) -> Vec<u8> {
        let reply = match wire::decode(request) {
            Ok(r) => self.handle(r),
            Err(status) => Reply::Status(status),
        };
        wire::encode_reply(&reply, probe_size)
    }

    /// Declare an endpoint (a device behind the vIOMMU), blocked until the guest attaches it,
    /// with its own reserved regions; returns the handle its device threads translate with.
    pub fn add_endpoint(
        &self,
        id: u32,
        reserved: Vec<ReservedRegion>,
    ) -> Result<DeviceEndpoint, ViommuError> {
        if let Some(r) = reserved.iter().find(|r| r.start > r.end) {
            return Err(ViommuError::ReservedRegion(*r));
        }
        let mut all: Vec<ReservedRegion> = self
            .config
            .reserved
            .iter()
            .copied()
            .chain(reserved)
            .collect();
        all.sort_by_key(|r| r.start);
        let mut control = self.control.lock();
        if control.endpoints.contains_key(&id) {
            return Err(ViommuError::EndpointExists(id));
        }
        let state = Arc::new(EndpointState {
            id,
            reserved: all,
            attached: Published::new(Arc::new(Attachment::Blocked)),
        });
        control.endpoints.insert(id, state.clone());
        Ok(DeviceEndpoint { state })
    }

    /// The device handle of endpoint `id`.
    pub fn endpoint(&self, id: u32) -> Option<DeviceEndpoint> {
        self.control
            .lock()
            .endpoints
            .get(&id)
            .map(|state| DeviceEndpoint {
                state: state.clone(),
            })
    }

    /// The domain `id`, shared with the devices (for dumps).
    pub fn domain(&self, id: u32) -> Option<Arc<Domain>> {
        self.control
            .lock()
            .domains
            .get(&id)
            .map(|s| s.domain.clone())
    }

    /// Ids of the live domains.
    pub fn domain_ids(&self) -> Vec<u32> {
        self.control.lock().domains.keys().copied().collect()
    }

    /// The mappings of domain `id`, in IOVA order.
    pub fn mappings(&self, id: u32) -> Option<Vec<Mapping>> {
        self.control
            .lock()
            .domains
            .get(&id)
            .map(|s| s.mappings.iter().copied().collect())
    }

    /// The endpoints attached to domain `id`.
    pub fn domain_endpoints(&self, id: u32) -> Option<Vec<u32>> {
        self.control
            .lock()
            .domains
            .get(&id)
            .map(|s| s.endpoints.iter().copied().collect())
    }

    /// Handle one request. An UNMAP or DETACH that removed translations (and an ATTACH that
    /// moved an endpoint) returns only after a grace period: no device access still uses them.
    pub fn handle(&self, request: Request) -> Reply {
        let (reply, wait) = self.apply(request);
        if wait {
            quiesce::synchronize();
        }
        reply
    }

    /// Handle requests in order, with one grace period for all of them before any reply is
    /// returned (the guest sees no reply before its translations are quiescent).
    pub fn handle_batch(&self, requests: impl IntoIterator<Item = Request>) -> Vec<Reply> {
        let mut wait = false;
        let replies = requests
            .into_iter()
            .map(|r| {
                let (reply, w) = self.apply(r);
                wait |= w;
                reply
            })
            .collect();
        if wait {
            quiesce::synchronize();
        }
        replies
    }

    /// Apply a request under the control lock; also says whether it needs a grace period.
    fn apply(&self, request: Request) -> (Reply, bool) {
        let mut control = self.control.lock();
        let result = match request {
            Request::Attach {
                domain,
                endpoint,
                flags,
            } => self.attach(&mut control, domain, endpoint, flags),
            Request::Detach { domain, endpoint } => Self::detach(&mut control, domain, endpoint),
            Request::Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } => self.map(
                &mut control,
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            ),
            Request::Unmap {
                domain,
                virt_start,
                virt_end,
            } => Self::unmap(&mut control, domain, virt_start, virt_end),
            Request::Probe { endpoint } => return (self.probe(&control, endpoint), false),
        };
        match result {
            Ok(wait) => (Reply::Status(Status::Ok), wait),
            Err(status) => (Reply::Status(status), false),
        }
    }

    fn attach(
        &self,
        c: &mut Control,
        domain: u32,
        endpoint: u32,
        flags: u32,
    ) -> Result<bool, Status> {
        if flags & !ATTACH_F_BYPASS != 0 {
            return Err(Status::Inval);
        }
        let bypass = flags & ATTACH_F_BYPASS != 0;
        let state = c.endpoints.get(&endpoint).ok_or(Status::NoEnt)?.clone();
        if domain < self.config.domain_range.0 || domain > self.config.domain_range.1 {
            return Err(Status::Range);
        }
        if bypass && !self.config.bypass {
            return Err(Status::Unsupp);
        }
        match c.domains.get(&domain) {
            Some(slot) if slot.domain.is_bypass() != bypass => return Err(Status::Inval),
            Some(slot) if slot.endpoints.contains(&endpoint) => return Ok(false),
            Some(_) => {}
            None if c.domains.len() >= self.config.max_domains => return Err(Status::NoMem),
            None => {
                let kind = if bypass {
                    DomainKind::Bypass
                } else {
                    DomainKind::Translated(Box::new(
                        PageTable::new(self.config.pgtable).map_err(|_| Status::DevErr)?,
                    ))
                };
                let domain = Arc::new(Domain { id: domain, kind });
                c.domains.insert(
                    domain.id,
                    DomainSlot {
                        domain,
                        endpoints: BTreeSet::new(),
                        mappings: MappingTree::new(),
                    },
                );
            }
        }
        // Leave the previous domain first, as if the driver had sent DETACH.
        let previous = match &**state.attached.load() {
            Attachment::Domain(d) => Some(d.id),
            Attachment::Blocked => None,
        };
        if let Some(old) = previous {
            Self::leave(c, old, endpoint);
        }
        let slot = c.domains.get_mut(&domain).ok_or(Status::DevErr)?;
        slot.endpoints.insert(endpoint);
        state
            .attached
            .store(Arc::new(Attachment::Domain(slot.domain.clone())));
        Ok(previous.is_some())
    }

    fn detach(c: &mut Control, domain: u32, endpoint: u32) -> Result<bool, Status> {
        let state = c.endpoints.get(&endpoint).ok_or(Status::NoEnt)?.clone();
        let slot = c.domains.get(&domain).ok_or(Status::NoEnt)?;
        if !slot.endpoints.contains(&endpoint) {
            return Err(Status::Inval);
        }
        state.attached.store(Arc::new(Attachment::Blocked));
        Self::leave(c, domain, endpoint);
        Ok(true)
    }

    /// Remove `endpoint` from `domain`'s set; a domain left without endpoints is destroyed.
    fn leave(c: &mut Control, domain: u32, endpoint: u32) {
        if let Some(slot) = c.domains.get_mut(&domain) {
            slot.endpoints.remove(&endpoint);
            if slot.endpoints.is_empty() {
                c.domains.remove(&domain);
            }
        }
    }

    fn map(
        &self,
        c: &mut Control,
        domain: u32,
        virt_start: u64,
        virt_end: u64,
        phys_start: u64,
        flags: u32,
    ) -> Result<bool, Status> {
        if flags & !MAP_F_KNOWN != 0 {
            return Err(Status::Inval);
        }
        let slot = c.domains.get_mut(&domain).ok_or(Status::NoEnt)?;
        let DomainKind::Translated(pt) = &slot.domain.kind else {
            return Err(Status::Inval);
        };
        if virt_end < virt_start {
            return Err(Status::Inval);
        }
        let granule = 1u64 << self.page_size_mask.trailing_zeros();
        if (virt_start | phys_start | virt_end.wrapping_add(1)) & (granule - 1) != 0 {
            return Err(Status::Range);
        }
        if virt_start < self.config.input_range.0 || virt_end > self.config.input_range.1 {
            return Err(Status::Range);
        }
        let mut prot = if flags & MAP_F_MMIO != 0 {
            Prot::MMIO
        } else {
            Prot::CACHE
        };
        if flags & MAP_F_READ != 0 {
            prot |= Prot::READ;
        }
        if flags & MAP_F_WRITE != 0 {
            prot |= Prot::WRITE;
        }
        if !prot.intersects(Prot::READ | Prot::WRITE) {
            return Err(Status::Unsupp);
        }
        let mapping = Mapping {
            virt_start,
            virt_end,
            phys_start,
            flags,
        };
        slot.mappings
            .check_insert(&mapping)
            .map_err(|_| Status::Inval)?;
        if slot.mappings.len() >= self.config.max_mappings_per_domain {
            return Err(Status::NoMem);
        }
        pt.map(virt_start, phys_start, mapping.len(), prot)
            .map_err(|e| match e {
                io_pgtable::Error::NoMemory => Status::NoMem,
                io_pgtable::Error::OutOfRange { .. } | io_pgtable::Error::Overflow => Status::Range,
                _ => Status::DevErr,
            })?;
        slot.mappings.insert(mapping).map_err(|_| Status::DevErr)?;
        Ok(false)
    }

    fn unmap(c: &mut Control, domain: u32, virt_start: u64, virt_end: u64) -> Result<bool, Status> {
        let slot = c.domains.get_mut(&domain).ok_or(Status::NoEnt)?;
        let DomainKind::Translated(pt) = &slot.domain.kind else {
            return Err(Status::Inval);
        };
        if virt_end < virt_start {
            return Err(Status::Inval);
        }
        let covered = slot
            .mappings
            .plan_unmap(virt_start, virt_end)
            .map_err(|_| Status::Range)?;
        let mut failed = false;
        for m in &covered {
            // Each mapping was mapped whole by one `map`, so it unmaps whole.
            failed |= pt.unmap(m.virt_start, m.len()) != Ok(m.len());
            slot.mappings.remove(m.virt_start);
        }
        if failed {
            // Cannot happen while the tree and the table agree; still quiesce what was cleared.
            quiesce::synchronize();
            return Err(Status::DevErr);
        }
        Ok(!covered.is_empty())
    }

    fn probe(&self, c: &Control, endpoint: u32) -> Reply {
        match c.endpoints.get(&endpoint) {
            None => Reply::Status(Status::NoEnt),
            Some(state) => Reply::Probe(ProbeInfo {
                page_size_mask: self.page_size_mask,
                reserved: state.reserved.clone(),
            }),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The whole request cycle on a small table, with a device thread translating meanwhile
    /// (small enough for Miri, which checks the page-table walks and the grace period).
    #[test]
    fn request_cycle_with_a_concurrent_device() {
        let cfg = ViommuConfig {
            pgtable: Config::tiny(2),
            input_range: (0, 0xffff),
            ..ViommuConfig::default()
        };
        let v = Viommu::new(cfg).unwrap();
        let dev = v.add_endpoint(1, vec![]).unwrap();
        assert_eq!(
            v.handle(Request::Attach {
                domain: 1,
                endpoint: 1,
                flags: 0
            })
            .status(),
            Status::Ok
        );
        let map = Request::Map {
            domain: 1,
            virt_start: 0x1000,
            virt_end: 0x2fff,
            phys_start: 0x4000,
            flags: MAP_F_READ,
        };
        assert_eq!(v.handle(map).status(), Status::Ok);
        let device = {
            let dev = dev.clone();
            std::thread::spawn(move || {
                (0..20)
                    .filter_map(|_| {
                        dev.access(0x1ff8, 16, Prot::READ, |s| (s.len(), s[0].paddr))
                            .ok()
                    })
                    .inspect(|&got| assert_eq!(got, (1, 0x4ff8), "contiguous pages merge"))
                    .count()
            })
        };
        let unmap = Request::Unmap {
            domain: 1,
            virt_start: 0x1000,
            virt_end: 0x2fff,
        };
        assert_eq!(v.handle(unmap).status(), Status::Ok);
        assert_eq!(
            dev.access(0x1ff8, 16, Prot::READ, |_| ()),
            Err(Fault::Unmapped { iova: 0x1ff8 })
        );
        assert!(device.join().unwrap() <= 20);
        assert_eq!(
            v.handle(Request::Detach {
                domain: 1,
                endpoint: 1
            })
            .status(),
            Status::Ok
        );
        assert_eq!(dev.access(0, 1, Prot::READ, |_| ()), Err(Fault::Detached));
        assert!(v.domain_ids().is_empty());
    }
}
