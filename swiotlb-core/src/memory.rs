//! Memory the allocator copies between: the caller's original buffers and the pools.
//!
//! Original buffers and bounce buffers share one address space: the *physical/DMA* addresses a
//! device is given. [`OrigMemory`] names the caller's memory by such addresses. The pools own
//! real page-aligned memory whose bounce address is the address of that memory in the process,
//! so [`ProcessMemory`] and [`RegionMemory`] (which also use process addresses) live in the same
//! space and never overlap a pool. A guest-memory implementation (guest-physical addresses)
//! only has to implement [`OrigMemory`].
//!
//! Concurrent accesses to the *same bytes* (a device writing while the CPU syncs) are a
//! programming error, as in the kernel: the bytes read are then unspecified.

use crate::error::MemoryError;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Memory holding original buffers, addressed by physical/DMA address.
///
/// ```
/// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
/// use swiotlb_core::{OrigMemory, RegionMemory};
/// let m = RegionMemory::new(4096);
/// m.write(m.base() + 10, b"abc").unwrap();
/// let mut buf = [0u8; 3];
/// m.read(m.base() + 10, &mut buf).unwrap();
/// assert_eq!(&buf, b"abc");
/// assert!(m.read(m.base() + 4095, &mut buf).is_err());
/// ```
pub trait OrigMemory: Send + Sync {
    /// Copy `buf.len()` bytes starting at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Copy `data` to memory starting at `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError>;
}

/// The calling process's own memory: an address is a pointer value.
///
/// ```
/// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
/// use swiotlb_core::{OrigMemory, ProcessMemory};
/// let buf = vec![7u8; 16];
/// // SAFETY: only addresses of `buf` (alive, not otherwise borrowed mutably) are used.
/// let m = unsafe { ProcessMemory::new() };
/// let mut out = [0u8; 4];
/// m.read(buf.as_ptr() as usize as u64, &mut out).unwrap();
/// assert_eq!(out, [7; 4]);
/// ```
#[derive(Debug)]
pub struct ProcessMemory(());

impl ProcessMemory {
    /// Memory of this process, addressed by exposed pointer values.
    ///
    /// # Safety
    /// Every address later passed to `read`/`write` (directly, or as the original address of a
    /// mapping) must be valid for the access for as long as it is used, (an address is the
    /// pointer cast to an integer).
    pub unsafe fn new() -> Self {
        ProcessMemory(())
    }
}

impl OrigMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let src = addr as usize as *const u8;
        // SAFETY: the constructor's contract makes `addr..addr+len` valid for reads.
        unsafe { std::ptr::copy(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let dst = addr as usize as *mut u8;
        // SAFETY: the constructor's contract makes `addr..addr+len` valid for writes.
        unsafe { std::ptr::copy(data.as_ptr(), dst, data.len()) };
        Ok(())
    }
}

/// A page-aligned, zeroed region of process memory, addressed by its process addresses and
/// bounds-checked: a safe [`OrigMemory`] for tests, examples and simple users.
///
/// ```
/// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
/// use swiotlb_core::{OrigMemory, RegionMemory};
/// let m = RegionMemory::new(8192);
/// assert_eq!(m.base() % 4096, 0);
/// assert_eq!(m.len(), 8192);
/// assert!(m.write(m.base() - 1, &[1]).is_err());
/// ```
#[derive(Debug)]
pub struct RegionMemory {
    region: Region,
}

impl RegionMemory {
    /// A zeroed region of `len` bytes (at least one byte is allocated).
    ///
    /// # Panics
    /// If the system allocator fails (as `Vec` does).
    pub fn new(len: usize) -> Self {
        let region = Region::new(len.max(1), crate::PAGE_SIZE)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Layout::new::<u8>()));
        RegionMemory { region }
    }

    /// First address of the region.
    pub fn base(&self) -> u64 {
        self.region.addr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Whether the region is empty (never: at least one byte is allocated).
    pub fn is_empty(&self) -> bool {
        self.region.len() == 0
    }
}

impl OrigMemory for RegionMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.region.offset_of(addr, buf.len()).ok_or(MemoryError {
            addr,
            len: buf.len(),
        })?;
        self.region.read(off, buf);
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let off = self.region.offset_of(addr, data.len()).ok_or(MemoryError {
            addr,
            len: data.len(),
        })?;
        self.region.write(off, data);
        Ok(())
    }
}

/// An owned, aligned, zeroed allocation addressed by its exposed process address.
#[derive(Debug)]
pub(crate) struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the region is plain bytes owned by this value; all access goes through raw-pointer
// copies whose ranges callers keep disjoint (see the module documentation).
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// A zeroed allocation of `len` bytes aligned to `align`, or `None` if the allocator fails.
    pub(crate) fn new(len: usize, align: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len.max(1), align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(Region { ptr, layout })
    }

    /// The address devices and [`ProcessMemory`] use for the first byte.
    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as usize as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    /// Offset of `addr..addr+len` inside the region, if it lies wholly inside.
    pub(crate) fn offset_of(&self, addr: u64, len: usize) -> Option<usize> {
        let off = addr.checked_sub(self.addr())?;
        let end = off.checked_add(len as u64)?;
        (end <= self.len() as u64).then_some(off as usize)
    }

    /// Copy out of the region. `off + buf.len()` must be within the region (checked).
    pub(crate) fn read(&self, off: usize, buf: &mut [u8]) {
        assert!(off + buf.len() <= self.len(), "region read out of bounds");
        // SAFETY: in bounds (checked above); the region is live while `self` is.
        unsafe { std::ptr::copy(self.ptr.as_ptr().add(off), buf.as_mut_ptr(), buf.len()) };
    }

    /// Copy into the region. `off + data.len()` must be within the region (checked).
    pub(crate) fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len(), "region write out of bounds");
        // SAFETY: in bounds (checked above); the region is live while `self` is.
        unsafe { std::ptr::copy(data.as_ptr(), self.ptr.as_ptr().add(off), data.len()) };
    }

    /// The bytes `off..off + len` (bounds checked).
    ///
    /// # Safety
    /// No write to these bytes happens while the slice lives.
    pub(crate) unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.len(), "region slice out of bounds");
        // SAFETY: in bounds; the caller excludes concurrent writes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    /// The bytes `off..off + len`, mutably (bounds checked).
    ///
    /// # Safety
    /// No other access to these bytes happens while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.len(), "region slice out of bounds");
        // SAFETY: in bounds; the caller excludes concurrent accesses.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
    }

    /// Zero `len` bytes at `off` (checked).
    pub(crate) fn zero(&self, off: usize, len: usize) {
        assert!(off + len <= self.len(), "region zero out of bounds");
        // SAFETY: in bounds (checked above).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(off), 0, len) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}
