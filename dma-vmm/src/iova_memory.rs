//! vm-memory 0.18 I/O virtual memory over our page tables: [`IovaMemory`].
//!
//! [`IovaMemory`] implements vm-memory's [`GuestMemory`] (the "I/O virtual memory" trait that
//! virtio-queue 0.18 and vhost-user backends access buffers through) on top of a
//! [`Translate`] (an io-pgtable [`io_pgtable::PageTable`] or a vIOMMU
//! [`crate::viommu::Endpoint`]) and a [`GuestMemoryBackend`] (the guest's physical
//! memory, e.g. `GuestMemoryMmap`). `check_range` and `get_slices` translate by IOVA through
//! the lock-free page table and check the mapping's permissions; every `Bytes` method
//! (`read_slice`, `write_obj`, `read_volatile_from`, …) follows from vm-memory's blanket impl.
//!
//! # Why `GuestMemory` and not vm-memory's `Iommu`
//!
//! vm-memory's other route, `impl Iommu` plugged into its `IommuMemory`, requires
//! `IotlbGuard<'a>: Deref<Target = Iotlb>`: every translation must come out of vm-memory's
//! own `Iotlb` (a `RangeMap` of byte ranges) through `Iotlb::lookup`. Serving that lock-free
//! means keeping a second copy of every mapping in an `Iotlb` and republishing a snapshot of
//! it on each MAP/UNMAP (O(mappings) per change), plus honouring its "invalidate the IOTLB
//! before restricting a mapping" rule on that copy. Implementing `GuestMemory` directly
//! translates straight from the page table, the one source of truth, with no copy, no lock
//! and no allocation on the access path, and lets the slice iterator hold an RCU read section
//! so that an unmap waits for accesses in progress (see [`crate::quiesce`]).
//!
//! Dirty logging: the slices carry the backend regions' bitmaps, so dirty pages are logged by
//! guest-physical address (what migration copies), and [`GuestMemory::physical_memory`]
//! returns the backend. vm-memory's `IommuMemory` logs by IOVA instead.
//!
//! ```
//! use dma_vmm::IovaMemory;
//! use io_pgtable::{Config, PageTable, Prot};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//!
//! let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
//! let pt = PageTable::new(Config::s1_4k(39)).unwrap();
//! pt.map(0x40_0000, 0x2000, 0x1000, Prot::READ | Prot::WRITE).unwrap();
//! let io = IovaMemory::new(ram, pt);
//!
//! io.write_obj(0xabcd_u32, GuestAddress(0x40_0010)).unwrap(); // by IOVA
//! let ram = io.backend();
//! assert_eq!(ram.read_obj::<u32>(GuestAddress(0x2010)).unwrap(), 0xabcd); // by GPA
//! assert!(io.read_obj::<u32>(GuestAddress(0x50_0000)).is_err()); // unmapped IOVA
//! ```
//!
//! `get_slices` checks the whole range first (all or nothing, like vm-memory's `IommuMemory`: a
//! denied or unmapped byte anywhere, or a translation to guest-physical addresses outside
//! RAM, fails before any copy), keeping the first segment so that the
//! common single-segment access walks the table once, then iterates lazily, handing each segment
//! to the backend's `get_slices` (which splits at RAM-region boundaries). The iterator owns a
//! device read section for its life, so every `Bytes` method copies inside one section. Faults
//! become `GuestMemoryError::IommuError(CannotResolve { iova_range, reason })`.

use crate::quiesce;
use crate::translate::{self, Fault, Segment, Segments, Translate};
use dma_sync::rcu::Guard;
use io_pgtable::Prot;
use std::iter::FusedIterator;
use vm_memory::bitmap::{BS, MS};
use vm_memory::guest_memory::{GuestMemoryBackendSliceIterator, GuestMemorySliceIterator};
use vm_memory::iommu::{Error as IommuError, IovaRange};
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    GuestMemoryResult, Permissions, VolatileSlice,
};

/// The io-pgtable protections a vm-memory access needs.
///
/// ```
/// use dma_vmm::iova_memory::{access_prot, permissions};
/// use io_pgtable::Prot;
/// use vm_memory::Permissions;
/// assert_eq!(access_prot(Permissions::ReadWrite), Prot::READ | Prot::WRITE);
/// assert_eq!(permissions(Prot::WRITE | Prot::CACHE), Permissions::Write);
/// ```
pub fn access_prot(access: Permissions) -> Prot {
    let mut p = Prot::empty();
    if access.allow(Permissions::Read) {
        p |= Prot::READ;
    }
    if access.has_write() {
        p |= Prot::WRITE;
    }
    p
}

/// The vm-memory permissions a mapping's io-pgtable protections grant (attributes dropped).
pub fn permissions(prot: Prot) -> Permissions {
    match (prot.contains(Prot::READ), prot.contains(Prot::WRITE)) {
        (false, false) => Permissions::No,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (true, true) => Permissions::ReadWrite,
    }
}

/// A translation fault as a vm-memory error (`GuestMemoryError::IommuError(CannotResolve)`),
/// naming the IOVA and the access that failed.
pub fn fault_error(fault: Fault, len: usize) -> GuestMemoryError {
    GuestMemoryError::IommuError(IommuError::CannotResolve {
        iova_range: IovaRange {
            base: GuestAddress(fault.iova()),
            length: len,
        },
        reason: fault.to_string(),
    })
}

/// I/O virtual memory: guest memory `M` seen by a device through the translation `X`.
///
/// Cheap to share by reference across device threads (`Sync` when `M` and `X` are); build one
/// per endpoint, or per domain. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct IovaMemory<M, X> {
    backend: M,
    tr: X,
}

impl<M: GuestMemoryBackend, X: Translate> IovaMemory<M, X> {
    /// Guest memory `backend` accessed by IOVA through `tr`.
    pub fn new(backend: M, tr: X) -> Self {
        IovaMemory { backend, tr }
    }

    /// The guest's physical memory.
    pub fn backend(&self) -> &M {
        &self.backend
    }

    /// The translation.
    pub fn translation(&self) -> &X {
        &self.tr
    }

    /// An RCU read section: no UNMAP or DETACH that removes a translation obtained while it
    /// lives completes before it ends, so slices stay usable. It does not freeze translations:
    /// each `Bytes` call translates afresh (an UNMAP clears entries at once; an ATTACH may
    /// switch domains), so copy through one [`GuestMemory::get_slices`] iterator to use one
    /// translation for several copies. The iterator holds a section itself; take one
    /// explicitly to keep slices in use after dropping the iterator, or to make several calls
    /// one unit with respect to UNMAP.
    pub fn section(&self) -> Guard {
        quiesce::read_section()
    }
}

impl<M: GuestMemoryBackend, X: Translate> GuestMemory for IovaMemory<M, X> {
    type PhysicalMemory = M;
    type Bitmap = <M::R as GuestMemoryRegion>::B;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        let _section = quiesce::read_section();
        let access = access_prot(access);
        Segments::new(&self.tr, addr.0, count as u64, access).all(|seg| match seg {
            Ok(s) => self
                .backend
                .check_range(GuestAddress(s.paddr), s.len as usize),
            Err(fault) => {
                translate::report(&self.tr, &fault, access);
                false
            }
        })
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>> {
        let section = quiesce::read_section();
        let access = access_prot(access);
        let len = count as u64;
        // All or nothing, as vm-memory's IommuMemory: a fault anywhere fails before any copy.
        // The first segment is kept; the usual single-segment access translates once.
        let failed = |fault: Fault| {
            translate::report(&self.tr, &fault, access);
            fault_error(fault, count)
        };
        let mut probe = Segments::new(&self.tr, addr.0, len, access);
        let first = probe.next().transpose().map_err(failed)?;
        if let Some(seg) = &first {
            self.in_ram(seg)?;
        }
        let covered = first.map_or(len, |s| s.len);
        let rest = if covered < len {
            for seg in probe {
                self.in_ram(&seg.map_err(failed)?)?;
            }
            Some(Segments::new(
                &self.tr,
                addr.0.wrapping_add(covered),
                len - covered,
                access,
            ))
        } else {
            None
        };
        Ok(IovaSlices {
            _section: section,
            count,
            first,
            rest,
            backend: &self.backend,
            current: None,
            done: false,
        })
    }

    fn physical_memory(&self) -> Option<&M> {
        Some(&self.backend)
    }
}

impl<M: GuestMemoryBackend, X: Translate> IovaMemory<M, X> {
    /// Whether guest RAM holds all of `seg`: an IOVA may map guest-physical addresses outside
    /// RAM (a vIOMMU maps what its guest asks), and a copy must fail before its first byte,
    /// not at the first piece outside RAM. The error is the one the backend gives.
    fn in_ram(&self, seg: &Segment) -> GuestMemoryResult<()> {
        let (start, len) = (GuestAddress(seg.paddr), seg.len as usize);
        // Inside one region, the usual case: a lookup, no walk over the regions.
        let in_one = self
            .backend
            .find_region(start)
            .is_some_and(|r| (seg.paddr - r.start_addr().0).checked_add(seg.len) <= Some(r.len()));
        if in_one || self.backend.check_range(start, len) {
            return Ok(());
        }
        for piece in self.backend.get_slices(start, len) {
            piece?;
        }
        // `check_range` refused what `get_slices` accepts: refuse it still.
        Err(GuestMemoryError::InvalidGuestAddress(start))
    }
}

/// The slices of one IOVA range ([`IovaMemory`]'s `get_slices`); holds a device read section.
pub struct IovaSlices<'a, M: GuestMemoryBackend, X> {
    _section: Guard,
    count: usize,
    /// The segment translated (and checked) by `get_slices`.
    first: Option<Segment>,
    /// The rest of the range, checked by `get_slices` and translated again while iterating.
    rest: Option<Segments<&'a X>>,
    backend: &'a M,
    current: Option<GuestMemoryBackendSliceIterator<'a, M>>,
    done: bool,
}

impl<'a, M: GuestMemoryBackend, X: Translate> Iterator for IovaSlices<'a, M, X> {
    type Item = GuestMemoryResult<VolatileSlice<'a, MS<'a, M>>>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if let Some(item) = self.current.as_mut().and_then(Iterator::next) {
                self.done = item.is_err();
                return Some(item);
            }
            let next = match self.first.take() {
                Some(seg) => Some(Ok(seg)),
                None => self.rest.as_mut().and_then(Iterator::next),
            };
            match next {
                None => self.done = true,
                Some(Err(fault)) => {
                    // An unmap raced with this access after the up-front check.
                    self.done = true;
                    if let Some(rest) = &self.rest {
                        translate::report(rest.translation(), &fault, rest.access());
                    }
                    return Some(Err(fault_error(fault, self.count)));
                }
                Some(Ok(seg)) => {
                    self.current = Some(
                        self.backend
                            .get_slices(GuestAddress(seg.paddr), seg.len as usize),
                    )
                }
            }
        }
        None
    }
}

impl<M: GuestMemoryBackend, X: Translate> FusedIterator for IovaSlices<'_, M, X> {}

impl<'a, M: GuestMemoryBackend, X: Translate> GuestMemorySliceIterator<'a, MS<'a, M>>
    for IovaSlices<'a, M, X>
{
}
