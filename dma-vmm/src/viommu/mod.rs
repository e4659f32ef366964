//! A virtio-iommu device model over our page tables, with quiescent UNMAP and DETACH.
//!
//! [`Viommu`] handles the requests of the virtio-iommu request queue ([`Request`]: attach,
//! detach, map, unmap, probe) with the specification's rules: MAP needs page-aligned ranges
//! and fails with `INVAL` if any byte is already mapped; UNMAP removes every mapping inside
//! its range, succeeds when there is none, and fails with `RANGE`, changing nothing, if it
//! would split a mapping; an ATTACH moves an endpoint attached elsewhere; a domain disappears
//! with its last endpoint; PROBE reports the reserved regions, which MAP refuses to map.
//! Every MUST and SHOULD of the specification's device sections is a row of the
//! conformance table in `tests/conformance.rs`.
//!
//! What the guest sees is consistent with what the device does: the offered features
//! ([`ViommuConfig::offered_features`]), the config space ([`Viommu::config_space`]) and its
//! `bypass` field, which decides whether endpoints attached to no domain are blocked or in
//! bypass mode (identity translation) and which the driver may write
//! ([`Viommu::write_config`]) once `VIRTIO_IOMMU_F_BYPASS_CONFIG` is negotiated.
//!
//! Device threads translate through an [`Endpoint`] handle: a lock-free page-table walk
//! (no lock, no shared write), done inside a read section that also covers the copy
//! ([`Endpoint::access`], or `IovaMemory` (feature `vm-memory`) over the endpoint). UNMAP and
//! DETACH clear the translations, then wait for a grace period ([`crate::quiesce::synchronize`])
//! before they complete: when the guest sees the reply, no device access still uses the old
//! translation, so it may reuse the memory at once. Today's VMMs translate under a lock and
//! copy after dropping it, so their UNMAP replies race with copies in flight.
//! [`Viommu::handle_batch`] pays one grace period for a whole batch of requests.
//!
//! ```
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
//!
//! # The control path and the specification's rules
//!
//! [`Viommu`] serialises requests under one mutex (endpoints, domains with their endpoint sets
//! and mapping trees, the config field `bypass`, the driver's features); devices never take it.
//! The model follows the device-normative statements of virtio 1.2/1.3 "Device Types / IOMMU
//! Device"; `tests/conformance.rs` holds one table with a row per MUST, SHOULD and MAY (section,
//! level, outcome, the model's choice where there is one, a check through the wire format).
//!
//! * Features: offered `INPUT_RANGE | DOMAIN_RANGE | MAP_UNMAP | PROBE | MMIO`, plus
//!   `BYPASS_CONFIG` when `ViommuConfig::bypass_config`; the legacy `F_BYPASS` never.
//!   `set_driver_features` records what the driver accepted (until called: everything offered).
//!   MAP/UNMAP without `MAP_UNMAP` → `UNSUPP`; `MAP_F_MMIO` without `MMIO` and `ATTACH_F_BYPASS`
//!   without `BYPASS_CONFIG` are unrecognised flags → `INVAL`.
//! * Config space: `page_size_mask` is the page table's page sizes (MAP aligns to the smallest),
//!   `input_range`/`domain_range` are what MAP/ATTACH check, `probe_size` is what PROBE fills,
//!   `bypass` is the live field: it starts at `initial_bypass` (default 0; needs
//!   `bypass_config`), survives `reset()` (a device reset: every endpoint detached, domains
//!   destroyed, features back to the offered set), and the driver's one-byte write of 0 or 1 at
//!   offset 36 changes it when `BYPASS_CONFIG` is negotiated (other writes are ignored). A change
//!   republishes every unattached endpoint's attachment; turning bypass off (and a reset that
//!   detached something) waits for a grace period, like UNMAP.
//! * Validation (`ViommuConfig::validate`, before anything is allocated): see module `config`;
//!   `max_mappings`, `max_leaves` and `max_tables` (all domains together) are what bound the
//!   memory a guest can make the device allocate (mapping records, page-table leaves, and the
//!   tables that hold them wherever the guest scatters them).
//! * ATTACH: non-zero `reserved` → `INVAL` (the one reserved field the device must check);
//!   unknown flags → `INVAL`; unknown endpoint → `NOENT`; domain outside `domain_range` →
//!   `RANGE`; bypass flag inconsistent with an existing domain → `INVAL`; joining a domain that
//!   maps one of the endpoint's reserved regions → `UNSUPP` (incompatible properties); a new
//!   domain beyond `max_domains` → `NOMEM`. An endpoint attached elsewhere leaves its old domain
//!   first (as DETACH then ATTACH: the old domain dies with its last endpoint, so a move out of
//!   it to a new domain is not refused for want of a domain slot); a refused ATTACH leaves the
//!   endpoint where it was.
//! * DETACH: `reserved` ignored; unknown endpoint → `NOENT`; a domain that does not exist or that
//!   the endpoint is not attached to → `INVAL` (the specification's MAY). The endpoint becomes
//!   `Blocked` or `Bypass` according to `bypass`.
//! * MAP: `virt_start`, `phys_start`, `virt_end + 1` aligned to the smallest page size
//!   (`RANGE`), inside `input_range` (`RANGE`), known flags (`INVAL`), R or W (`UNSUPP`: stage-1
//!   LPAE cannot express an MMIO-only or no-access mapping), no overlap with an existing mapping
//!   (`INVAL`) nor with a reserved region of any endpoint attached to the domain (`INVAL`),
//!   reversed range (`INVAL`), a physical range past the page table's output size or wrapping
//!   around 2^64 (`RANGE`: the guest-physical range the text asks for cannot be expressed),
//!   under `max_mappings_per_domain`, `max_mappings`, and, counting the
//!   leaves it writes (`PageTable::leaves`) and the tables it installs
//!   (`PageTable::tables_to_install`, exact under the lock), `max_leaves` and `max_tables`
//!   (`NOMEM`, before anything is allocated; UNMAP and a dying domain give the room back);
//!   bypass domain → `INVAL`, unknown domain → `NOENT`.
//!   The range is mapped with the largest page sizes its alignment allows. Write-only mappings
//!   also read (stage-1 AP bits have no write-only; the specification's MAY).
//! * UNMAP removes every mapping inside `[virt_start, virt_end]`, returns OK when there is none,
//!   and returns `RANGE` without removing anything if one mapping is only partly covered
//!   (`MappingTree::plan_unmap` checks before any leaf is cleared); the range need not be
//!   aligned nor inside `input_range` (`[0, u64::MAX]` empties the domain), a reversed one is
//!   `INVAL`; `reserved` is ignored; unknown domain → `NOENT`, bypass domain → `INVAL`. The
//!   tables left empty in the unmapped gap around the range are freed (`PageTable::prune`),
//!   so the domain holds exactly the tables its mappings need.
//! * PROBE: `reserved` ignored; unknown endpoint → `NOENT`; the RESV_MEM properties (24 bytes,
//!   `length` 20, reserved bits and bytes zero), then zeroes up to `probe_size`.
//!
//! [`Viommu::handle_bytes`] takes a request element's device-readable bytes and the size of its
//! device-writable part and returns the bytes to write (their number is the used length): an
//! unknown type, or a writable part shorter than the 4-byte tail, gets nothing (used length 0);
//! a readable part shorter than its type's layout → `INVAL`, bytes past the layout are ignored
//! (room for the future extensions the PROBE padding speaks of); a PROBE's tail always follows
//! `probe_size` bytes of properties, and a PROBE whose writable part is shorter than that gets no
//! property and `INVAL` in the tail at its end. Replies are bounded by `probe_size` + 4 bytes.
//!
//! Fault reporting (module `faults`): a faulting device access appends a record (R_DOMAIN without
//! address for a blocked endpoint, wherever it reaches, reserved regions included; R_MAPPING
//! with `FAULT_F_ADDRESS` and the first faulting IOVA otherwise,
//! `FAULT_F_READ`/`WRITE` from the access) to the bounded log; the VMM's event-queue handler
//! calls [`Viommu::fault_event`] for the 24-byte `struct virtio_iommu_fault`; a full log or a
//! buffer too small drops the report and counts it ([`Viommu::faults_dropped`]), and so does a
//! device reset for the reports still pending (they belong to the driver it ended).

mod config;
mod faults;
mod mappings;
mod request;
pub mod wire;

pub use config::*;
pub use faults::*;
pub use mappings::{MapConflict, Mapping, MappingTree};
pub use request::*;

use crate::quiesce;
use crate::translate::{self, Fault, Leaf, Segment, Translate};
use dma_sync::published::Snapshot;
use dma_sync::{Arc, Mutex, Published};
use io_pgtable::{PageTable, Prot};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a domain translates with.
enum DomainKind {
    /// A page table filled by MAP requests.
    Translated(Box<PageTable>),
    /// Identity translation with read and write (`ATTACH_F_BYPASS`).
    Bypass,
}

/// A vIOMMU domain, one address space: the page table devices translate through (shared
/// with them).
pub struct ViommuDomain {
    id: u32,
    kind: DomainKind,
}

impl ViommuDomain {
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

impl fmt::Debug for ViommuDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViommuDomain")
            .field("id", &self.id)
            .field("bypass", &self.is_bypass())
            .finish()
    }
}

impl Translate for ViommuDomain {
    fn lookup(&self, iova: u64) -> Result<Leaf, Fault> {
        match &self.kind {
            DomainKind::Translated(pt) => pt.lookup(iova),
            DomainKind::Bypass => Ok(identity(iova)),
        }
    }
}

/// Bypass mode: the identity translation, read and write, to the end of the address space.
fn identity(iova: u64) -> Leaf {
    Leaf {
        paddr: iova,
        len: (u64::MAX - iova).saturating_add(1),
        prot: Prot::READ | Prot::WRITE,
    }
}

/// What an endpoint currently translates through.
enum Attachment {
    /// Attached to no domain, config field `bypass` 0: every access faults.
    Blocked,
    /// Attached to no domain, config field `bypass` 1: bypass mode (identity).
    Bypass,
    /// Attached to a domain.
    Domain(Arc<ViommuDomain>),
}

impl Attachment {
    /// The state of an endpoint attached to no domain, given the config field `bypass`.
    fn unattached(bypass: bool) -> Arc<Attachment> {
        Arc::new(if bypass {
            Attachment::Bypass
        } else {
            Attachment::Blocked
        })
    }

    fn domain_id(&self) -> Option<u32> {
        match self {
            Attachment::Domain(d) => Some(d.id),
            Attachment::Blocked | Attachment::Bypass => None,
        }
    }
}

struct EndpointState {
    id: u32,
    /// The device's fault log, shared by its endpoints.
    faults: Arc<FaultLog>,
    /// The device-wide reserved regions and the endpoint's own, together sorted by start.
    reserved: Vec<ReservedRegion>,
    attached: Published<Attachment>,
}

impl EndpointState {
    /// The attachment, for everything but translation (the control path, `domain()`): one
    /// out-of-line load, leaving the endpoint lookup as the one inlined copy.
    #[inline(never)]
    fn attachment(&self) -> Snapshot<Attachment> {
        self.attached.load()
    }
}

/// A vIOMMU endpoint, the device's view of the vIOMMU: cheap to clone, one per device thread
/// if you like.
///
/// Translation loads the endpoint's current domain and walks its page table, lock-free; the
/// endpoint's reserved regions fault. Use [`Endpoint::access`] (translate and copy in
/// one read section) or wrap it in an `IovaMemory` (feature `vm-memory`) for vm-memory.
#[derive(Clone)]
pub struct Endpoint {
    state: Arc<EndpointState>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.state.id)
            .finish()
    }
}

impl Endpoint {
    /// The endpoint id.
    pub fn id(&self) -> u32 {
        self.state.id
    }

    /// The domain the endpoint is attached to, if any.
    pub fn domain(&self) -> Option<u32> {
        self.state.attachment().domain_id()
    }

    /// Whether the endpoint is in bypass mode: attached to no domain while the config field
    /// `bypass` is 1, or attached to a bypass domain.
    pub fn in_bypass_mode(&self) -> bool {
        match &**self.state.attachment() {
            Attachment::Blocked => false,
            Attachment::Bypass => true,
            Attachment::Domain(d) => d.is_bypass(),
        }
    }

    /// Translate `[iova, iova + len)` for `access` and run `f` on its guest-physical
    /// segments inside one read section: an UNMAP or DETACH of the range does not complete
    /// before `f` returns. Fails, without calling `f`, if any byte faults.
    ///
    /// ```
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
    pub fn iova_memory<M: vm_memory::GuestMemoryBackend>(
        &self,
        ram: M,
    ) -> crate::IovaMemory<M, Endpoint> {
        crate::IovaMemory::new(ram, self.clone())
    }

    /// The fault of an access to one of the endpoint's reserved regions. A blocked endpoint
    /// (attached to no domain, not in bypass mode) faults as a whole, whatever the address:
    /// `FAULT_R_DOMAIN` ("without being attached to a domain"), not `R_MAPPING`, which speaks
    /// of a domain's mappings.
    #[cold]
    #[inline(never)]
    fn reserved_fault(&self, iova: u64) -> Fault {
        match **self.state.attachment() {
            Attachment::Blocked => Fault::Detached,
            Attachment::Bypass | Attachment::Domain(_) => Fault::Reserved { iova },
        }
    }
}

impl Translate for Endpoint {
    fn lookup(&self, iova: u64) -> Result<Leaf, Fault> {
        let reserved = &self.state.reserved;
        if reserved.iter().any(|r| r.start <= iova && iova <= r.end) {
            return Err(self.reserved_fault(iova));
        }
        let mut leaf = match &**self.state.attached.load() {
            Attachment::Blocked => return Err(Fault::Detached),
            Attachment::Bypass => identity(iova),
            Attachment::Domain(d) => d.lookup(iova)?,
        };
        // A leaf (a bypass window) never reaches into the next reserved region.
        if let Some(r) = reserved.iter().find(|r| r.start > iova) {
            leaf.len = leaf.len.min(r.start - iova);
        }
        Ok(leaf)
    }

    fn report(&self, fault: &Fault, access: Prot) {
        self.state
            .faults
            .push(FaultRecord::new(self.state.id, fault, access));
    }
}

/// A domain as the control path sees it: the shared domain, its endpoints, its mappings.
struct DomainSlot {
    domain: Arc<ViommuDomain>,
    endpoints: BTreeSet<u32>,
    mappings: MappingTree,
    /// Page-table leaves of its mappings.
    leaves: u64,
    /// Page tables below its root (none are left empty: UNMAP prunes its gap).
    tables: u64,
}

struct Control {
    endpoints: BTreeMap<u32, Arc<EndpointState>>,
    domains: BTreeMap<u32, DomainSlot>,
    /// The config field `bypass`: endpoints attached to no domain are in bypass mode.
    bypass: bool,
    /// The device-specific features the driver accepted.
    driver_features: u64,
    /// Mappings of all domains together (bounded by `max_mappings`).
    mapped: usize,
    /// Page-table leaves of all domains together (bounded by `max_leaves`).
    leaves: u64,
    /// Page tables below the roots of all domains together (bounded by `max_tables`).
    tables: u64,
}

impl Control {
    /// Publish the state `bypass` gives every endpoint attached to no domain (blocked or in
    /// bypass mode); says whether one of them left bypass mode, which needs a grace period.
    fn publish_unattached(&mut self) -> bool {
        let mut removed = false;
        for ep in self.endpoints.values() {
            let (unattached, in_bypass) = {
                let now = ep.attachment();
                (
                    now.domain_id().is_none(),
                    matches!(**now, Attachment::Bypass),
                )
            };
            if unattached {
                removed |= in_bypass && !self.bypass;
                ep.attached.store(Attachment::unattached(self.bypass));
            }
        }
        removed
    }

    fn negotiated(&self, feature: u64) -> bool {
        self.driver_features & feature != 0
    }
}

/// The virtio-iommu device. See the [module documentation](self).
pub struct Viommu {
    config: ViommuConfig,
    page_size_mask: u64,
    /// The control path: requests are serialised here; devices never take this lock.
    control: Mutex<Control>,
    /// Faults met by the endpoints' devices, waiting for the event queue.
    faults: Arc<FaultLog>,
}

impl fmt::Debug for Viommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Viommu")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Viommu {
    /// A device with no endpoints, its configuration validated first (nothing is allocated
    /// for a rejected one). Until [`Viommu::set_driver_features`] says otherwise, the driver
    /// is taken to accept every offered feature.
    pub fn new(config: ViommuConfig) -> Result<Viommu, ViommuError> {
        let page_size_mask = config.validate()?;
        let control = Control {
            endpoints: BTreeMap::new(),
            domains: BTreeMap::new(),
            bypass: config.initial_bypass,
            driver_features: config.offered_features(),
            mapped: 0,
            leaves: 0,
            tables: 0,
        };
        Ok(Viommu {
            page_size_mask,
            faults: Arc::new(FaultLog::new(config.fault_log)),
            config,
            control: Mutex::new(control),
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

    /// The device-specific feature bits offered (`F_*`).
    pub fn device_features(&self) -> u64 {
        self.config.offered_features()
    }

    /// Record the features the driver accepted (the transport calls this when the driver
    /// sets FEATURES_OK); bits the device did not offer are dropped. Returns the result.
    pub fn set_driver_features(&self, features: u64) -> u64 {
        let accepted = features & self.device_features();
        self.control.lock().driver_features = accepted;
        accepted
    }

    /// The device-specific features in force.
    pub fn driver_features(&self) -> u64 {
        self.control.lock().driver_features
    }

    /// The 40-byte config space the guest reads, with the current value of `bypass`.
    pub fn config_space(&self) -> [u8; wire::CONFIG_SPACE_SIZE] {
        let bypass = self.control.lock().bypass;
        wire::config_space(&self.config, self.page_size_mask, bypass)
    }

    /// The current value of the config field `bypass`.
    pub fn bypass(&self) -> bool {
        self.control.lock().bypass
    }

    /// A driver write of `data` at `offset` of the config space. Only a one-byte write of 0
    /// or 1 to `bypass` with `VIRTIO_IOMMU_F_BYPASS_CONFIG` negotiated has an effect (the
    /// driver MUST NOT write other fields or other values; the device keeps presenting 0 or
    /// 1). Returns whether the write took effect. When it turns bypass off, it returns once
    /// no access of an endpoint attached to no domain still uses the identity translation.
    pub fn write_config(&self, offset: usize, data: &[u8]) -> bool {
        let wait = {
            let mut c = self.control.lock();
            let value = match (offset, data) {
                (wire::CONFIG_BYPASS_OFFSET, [v @ (0 | 1)]) if c.negotiated(F_BYPASS_CONFIG) => {
                    *v == 1
                }
                _ => return false,
            };
            c.bypass = value;
            c.publish_unattached()
        };
        if wait {
            quiesce::synchronize();
        }
        true
    }

    /// Device reset: every endpoint is detached and every domain destroyed; the driver's
    /// features go back to the offered set; `bypass` keeps its value (the specification:
    /// it SHOULD NOT change on device reset). Returns once no device access still uses a
    /// translation the reset removed. Fault reports not yet taken are discarded (and counted
    /// in [`Viommu::faults_dropped`]): they name attachments and domains of the driver the
    /// reset ended, whose event buffers the reset took back.
    pub fn reset(&self) {
        let wait = {
            let mut c = self.control.lock();
            let attached = !c.domains.is_empty();
            c.domains.clear();
            c.mapped = 0;
            c.leaves = 0;
            c.tables = 0;
            for ep in c.endpoints.values() {
                ep.attached.store(Attachment::unattached(c.bypass));
            }
            c.driver_features = self.config.offered_features();
            attached
        };
        if wait {
            quiesce::synchronize();
        }
        // After the wait, so a report of an access that began before the reset goes too.
        self.faults.discard_pending();
    }

    /// Handle one request-queue element in wire format: `readable` is its device-readable
    /// part (head and body), `writable_len` the size of its device-writable part. Returns the
    /// bytes to write at the start of the writable part; their number is the used length.
    /// Nothing is written (an empty reply, used length 0) for an unknown request type or a
    /// writable part too short for the tail; see [`wire::reply_layout`].
    ///
    /// ```
    /// use dma_vmm::viommu::{wire, Status, Viommu, ViommuConfig};
    /// let v = Viommu::new(ViommuConfig { probe_size: 128, ..ViommuConfig::default() }).unwrap();
    /// v.add_endpoint(2, vec![]).unwrap();
    /// let mut probe = vec![wire::T_PROBE, 0, 0, 0];
    /// probe.extend_from_slice(&2u32.to_le_bytes());
    /// probe.extend_from_slice(&[0; 64]);
    /// let reply = v.handle_bytes(&probe, 128 + 4);
    /// assert_eq!((reply.len(), reply[128]), (132, Status::Ok.code()));
    /// assert!(v.handle_bytes(&[42, 0, 0, 0], 4).is_empty()); // unknown type: untouched
    /// ```
    pub fn handle_bytes(&self, readable: &[u8], writable_len: usize) -> Vec<u8> {
        let layout = wire::reply_layout(
            readable.first().copied(),
            self.config.probe_size as usize,
            writable_len,
        );
        let reply = match layout {
            wire::ReplyLayout::Nothing | wire::ReplyLayout::ShortProbe(_) => {
                Reply::Status(Status::Inval)
            }
            wire::ReplyLayout::Tail(_) => match wire::decode(readable) {
                Ok(r) => self.handle(r),
                Err(status) => Reply::Status(status),
            },
        };
        wire::encode_reply(&reply, layout)
    }

    /// Declare an endpoint (a device behind the vIOMMU) with its own reserved regions,
    /// attached to no domain (blocked, or in bypass mode if `bypass` is 1); returns the
    /// handle its device threads translate with. The endpoint's regions, with the device-wide
    /// ones, must be non-empty, disjoint, hold one MSI window at most and fit `probe_size`.
    pub fn add_endpoint(
        &self,
        id: u32,
        reserved: Vec<ReservedRegion>,
    ) -> Result<Endpoint, ViommuError> {
        let all = self.config.endpoint_regions(&reserved)?;
        let mut control = self.control.lock();
        if control.endpoints.contains_key(&id) {
            return Err(ViommuError::EndpointExists(id));
        }
        let state = Arc::new(EndpointState {
            id,
            faults: self.faults.clone(),
            reserved: all,
            attached: Published::new(Attachment::unattached(control.bypass)),
        });
        control.endpoints.insert(id, state.clone());
        Ok(Endpoint { state })
    }

    /// The next fault report for the event queue, for a device-writable buffer of
    /// `writable_len` bytes: the bytes to write (their number is the used length), or `None`
    /// when no fault is pending (keep the buffer). A buffer too small for the report gets
    /// `Some` of nothing (return it with used length 0) and the report is dropped and counted:
    /// the specification forbids spreading a report over several buffers.
    pub fn fault_event(&self, writable_len: usize) -> Option<Vec<u8>> {
        let record = self.faults.pop()?;
        if writable_len < wire::FAULT_SIZE {
            self.faults.drop_one();
            return Some(Vec::new());
        }
        Some(wire::encode_fault(&record).to_vec())
    }

    /// Fault reports dropped so far (log full, event buffer too small, or discarded by a
    /// device reset).
    pub fn faults_dropped(&self) -> u64 {
        self.faults.dropped()
    }

    /// The device handle of endpoint `id`.
    pub fn endpoint(&self, id: u32) -> Option<Endpoint> {
        self.control
            .lock()
            .endpoints
            .get(&id)
            .map(|state| Endpoint {
                state: state.clone(),
            })
    }

    /// The domain `id`, shared with the devices (for dumps).
    pub fn domain(&self, id: u32) -> Option<Arc<ViommuDomain>> {
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
    /// moved an endpoint, or took it out of bypass mode) returns only after a grace period:
    /// no device access still uses them.
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
        // ATTACH_F_BYPASS is a flag this device recognises only with BYPASS_CONFIG in force.
        let known = if c.negotiated(F_BYPASS_CONFIG) {
            ATTACH_F_BYPASS
        } else {
            0
        };
        if flags & !known != 0 {
            return Err(Status::Inval);
        }
        let bypass = flags & ATTACH_F_BYPASS != 0;
        let state = c.endpoints.get(&endpoint).ok_or(Status::NoEnt)?.clone();
        if domain < self.config.domain_range.0 || domain > self.config.domain_range.1 {
            return Err(Status::Range);
        }
        match c.domains.get(&domain) {
            Some(slot) if slot.domain.is_bypass() != bypass => return Err(Status::Inval),
            Some(slot) if slot.endpoints.contains(&endpoint) => return Ok(false),
            // The endpoint's reserved regions must stay unmapped in its domain (RESV_MEM);
            // a domain that maps one is incompatible with it.
            Some(slot)
                if state
                    .reserved
                    .iter()
                    .any(|r| slot.mappings.intersecting(r.start, r.end).next().is_some()) =>
            {
                return Err(Status::Unsupp)
            }
            Some(_) => {}
            // A move out of a domain the endpoint is the last one of frees that domain first
            // (DETACH, then ATTACH), so it counts as room.
            None if c.domains.len() - usize::from(Self::leaving_frees_a_domain(c, &state))
                >= self.config.max_domains =>
            {
                return Err(Status::NoMem)
            }
            None => {
                let kind = if bypass {
                    DomainKind::Bypass
                } else {
                    DomainKind::Translated(Box::new(
                        PageTable::new(self.config.pgtable).map_err(|_| Status::DevErr)?,
                    ))
                };
                let domain = Arc::new(ViommuDomain { id: domain, kind });
                c.domains.insert(
                    domain.id,
                    DomainSlot {
                        domain,
                        endpoints: BTreeSet::new(),
                        mappings: MappingTree::new(),
                        leaves: 0,
                        tables: 0,
                    },
                );
            }
        }
        // A translation goes away unless the endpoint was blocked: its previous domain's, or
        // the identity of bypass mode.
        let (previous, removes) = {
            let now = state.attachment();
            (now.domain_id(), !matches!(**now, Attachment::Blocked))
        };
        // Leave the previous domain first, as if the driver had sent DETACH.
        if let Some(old) = previous {
            Self::leave(c, old, endpoint);
        }
        let slot = c.domains.get_mut(&domain).ok_or(Status::DevErr)?;
        slot.endpoints.insert(endpoint);
        state
            .attached
            .store(Arc::new(Attachment::Domain(slot.domain.clone())));
        Ok(removes)
    }

    /// Whether `state`'s endpoint is the last one of the domain it is attached to (leaving it
    /// destroys the domain).
    fn leaving_frees_a_domain(c: &Control, state: &EndpointState) -> bool {
        state
            .attachment()
            .domain_id()
            .and_then(|old| c.domains.get(&old))
            .is_some_and(|slot| slot.endpoints.len() == 1)
    }

    /// DETACH: an unknown endpoint is `NOENT`; a domain that does not exist, or that the
    /// endpoint is not attached to, is `INVAL` (the specification's MAY).
    fn detach(c: &mut Control, domain: u32, endpoint: u32) -> Result<bool, Status> {
        let state = c.endpoints.get(&endpoint).ok_or(Status::NoEnt)?.clone();
        if state.attachment().domain_id() != Some(domain) {
            return Err(Status::Inval);
        }
        state.attached.store(Attachment::unattached(c.bypass));
        Self::leave(c, domain, endpoint);
        Ok(true)
    }

    /// Remove `endpoint` from `domain`'s set; a domain left without endpoints is destroyed.
    fn leave(c: &mut Control, domain: u32, endpoint: u32) {
        if let Some(slot) = c.domains.get_mut(&domain) {
            slot.endpoints.remove(&endpoint);
            if slot.endpoints.is_empty() {
                c.mapped -= slot.mappings.len();
                c.leaves -= slot.leaves;
                c.tables -= slot.tables;
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
        if !c.negotiated(F_MAP_UNMAP) {
            return Err(Status::Unsupp);
        }
        // MAP_F_MMIO is a flag this device recognises only with F_MMIO in force.
        let known = if c.negotiated(F_MMIO) {
            MAP_F_KNOWN
        } else {
            MAP_F_KNOWN & !MAP_F_MMIO
        };
        if flags & !known != 0 {
            return Err(Status::Inval);
        }
        let Control {
            endpoints,
            domains,
            mapped,
            leaves,
            tables,
            ..
        } = c;
        let slot = domains.get_mut(&domain).ok_or(Status::NoEnt)?;
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
        // RESV_MEM: a MAP overlapping a reserved region of an attached endpoint is refused.
        let reserved = slot
            .endpoints
            .iter()
            .filter_map(|ep| endpoints.get(ep))
            .flat_map(|ep| ep.reserved.iter());
        if reserved
            .into_iter()
            .any(|r| r.start <= virt_end && virt_start <= r.end)
        {
            return Err(Status::Inval);
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
        let status = |e| match e {
            io_pgtable::Error::NoMemory => Status::NoMem,
            io_pgtable::Error::OutOfRange { .. } | io_pgtable::Error::Overflow => Status::Range,
            _ => Status::DevErr,
        };
        // The table memory a MAP costs follows its leaves and where they lie, not its count:
        // one MAP of 2^48 bytes whose addresses allow 4 KiB pages only would need 2^36 leaves,
        // and each one-page MAP far from the others three tables. Leaves first: they bound
        // the work of counting the tables.
        let new_leaves = pt
            .leaves(virt_start, phys_start, mapping.len())
            .map_err(status)?;
        if slot.mappings.len() >= self.config.max_mappings_per_domain
            || *mapped >= self.config.max_mappings
            || new_leaves > self.config.max_leaves - *leaves
        {
            return Err(Status::NoMem);
        }
        let new_tables = pt
            .tables_to_install(virt_start, phys_start, mapping.len())
            .map_err(status)?;
        if new_tables > self.config.max_tables - *tables {
            return Err(Status::NoMem);
        }
        let mapped_ok = pt.map(virt_start, phys_start, mapping.len(), prot);
        // Counted from the table itself, also after a failed map (which keeps its tables).
        Self::count_tables(slot, tables);
        mapped_ok.map_err(status)?;
        slot.mappings.insert(mapping).map_err(|_| Status::DevErr)?;
        *mapped += 1;
        *leaves += new_leaves;
        slot.leaves += new_leaves;
        Ok(false)
    }

    fn unmap(c: &mut Control, domain: u32, virt_start: u64, virt_end: u64) -> Result<bool, Status> {
        if !c.negotiated(F_MAP_UNMAP) {
            return Err(Status::Unsupp);
        }
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
        let mut freed = 0;
        for m in &covered {
            // Each mapping was mapped whole by one `map`, so it unmaps whole, and its leaves
            // are the ones that `map` counted.
            freed += pt.leaves(m.virt_start, m.phys_start, m.len()).unwrap_or(0);
            failed |= pt.unmap(m.virt_start, m.len()) != Ok(m.len());
            slot.mappings.remove(m.virt_start);
        }
        slot.leaves -= freed;
        c.mapped -= covered.len();
        c.leaves -= freed;
        // The tables left empty lie in the gap the UNMAP opened (it removed every mapping in
        // its range, so one gap holds them all): free them, so that scattered MAP and UNMAP
        // cycles do not pile up tables, and give their room back.
        let gap = covered
            .first()
            .and_then(|m| slot.mappings.gap_around(m.virt_start));
        if let Some((start, end)) = gap {
            let geom = pt.geometry();
            let end = end.min(u64::MAX >> (64 - geom.ias()));
            // A table is freed only if its whole span lies in the gap, so a gap without an
            // aligned leaf-table span (neighbours close by: the usual case) frees nothing.
            let smallest = geom.table_span(3);
            let holds_one = start
                .checked_next_multiple_of(smallest)
                .is_some_and(|aligned| aligned <= end && end - aligned >= smallest - 1);
            if holds_one {
                failed |= pt.prune(start, end - start + 1).is_err();
                Self::count_tables(slot, &mut c.tables);
            }
        }
        if failed {
            // Cannot happen while the tree and the table agree; still quiesce what was cleared.
            quiesce::synchronize();
            return Err(Status::DevErr);
        }
        Ok(!covered.is_empty())
    }

    /// Recount `slot`'s tables below the root from its page table, adjusting the device's
    /// total `tables` (only the control path, under its lock, changes the table).
    fn count_tables(slot: &mut DomainSlot, tables: &mut u64) {
        if let DomainKind::Translated(pt) = &slot.domain.kind {
            let now = pt.stats().linked() - 1;
            *tables = *tables - slot.tables + now;
            slot.tables = now;
        }
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
    use io_pgtable::Config;

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

    /// Turning bypass off while a device thread accesses through the identity translation,
    /// and the device's faults reaching the event queue (small enough for Miri: the
    /// republished attachments, the grace period, the fault log).
    #[test]
    fn bypass_off_with_a_concurrent_device() {
        let cfg = ViommuConfig {
            pgtable: Config::tiny(2),
            input_range: (0, 0xffff),
            initial_bypass: true,
            fault_log: 4,
            ..ViommuConfig::default()
        };
        let v = Viommu::new(cfg).unwrap();
        let dev = v.add_endpoint(1, vec![]).unwrap();
        let device = std::thread::spawn(move || {
            (0..10)
                .filter(|_| {
                    dev.access(0x2000, 8, Prot::WRITE, |s| assert_eq!(s[0].paddr, 0x2000))
                        .is_ok()
                })
                .count()
        });
        assert!(v.write_config(wire::CONFIG_BYPASS_OFFSET, &[0]));
        let ep = v.endpoint(1).unwrap();
        assert_eq!(
            ep.access(0x2000, 8, Prot::READ, |_| ()),
            Err(Fault::Detached)
        );
        let served = device.join().unwrap();
        let mut logged = 0;
        while let Some(event) = v.fault_event(wire::FAULT_SIZE) {
            assert_eq!(
                (event[0], &event[8..12]),
                (FaultReason::Domain as u8, &[1, 0, 0, 0][..])
            );
            logged += 1;
        }
        assert_eq!(logged + v.faults_dropped(), (10 - served as u64) + 1);
    }
}
