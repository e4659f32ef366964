//! Memory the allocator copies between: the caller's original buffers and the pools.
//!
//! Original buffers and bounce buffers share one address space: the *physical/DMA* addresses a
//! device is given. [`OrigMemory`] names the caller's memory by such addresses. The pools own
//! real page-aligned memory whose bounce address is the address of that memory in the process,
//! so [`ProcessMemory`] and [`RegionMemory`] (which also use process addresses) live in the same
//! space and never overlap a pool. A guest-memory implementation (guest-physical addresses)
//! only has to implement [`OrigMemory`].
//!
//! A device may touch its bounce buffer at any moment, also while the CPU syncs or unmaps (a
//! real device does not wait; an untrusted one may try on purpose). Bounce memory is therefore
//! never lent out as a slice: an implementation receives a [`DmaDst`] or [`DmaSrc`], which it
//! fills or reads piece by piece, and the allocator's side of the copy uses atomic accesses
//! only (module `shared`: byte copies in assembly on x86-64, word copies elsewhere). The
//! bytes a racing device sees or leaves behind are then unspecified, the behaviour never
//! undefined.

use crate::error::MemoryError;
use crate::shared::{DmaDst, DmaSrc, SharedRegion};

/// Memory holding original buffers, addressed by physical/DMA address.
///
/// An implementation copies between its memory and a [`DmaDst`] / [`DmaSrc`] that may be
/// bounce memory a device is accessing concurrently; it sees those bytes only as pieces copied
/// to or from its own buffers, never as a reference into device-reachable memory. `read` and
/// `write` on plain buffers come for free.
///
/// ```
/// use std::sync::Mutex;
/// use swiotlb_core::{DmaDst, DmaSrc, MemoryError, OrigMemory};
///
/// /// Original memory in a locked vector, addressed from 0.
/// struct Locked(Mutex<Vec<u8>>);
///
/// impl OrigMemory for Locked {
///     fn read_into(&self, addr: u64, mut dst: DmaDst<'_>) -> Result<(), MemoryError> {
///         let mem = self.0.lock().unwrap();
///         let err = MemoryError { addr, len: dst.len() };
///         let at = usize::try_from(addr).map_err(|_| err)?;
///         let src = mem.get(at..).and_then(|m| m.get(..dst.len())).ok_or(err)?;
///         dst.fill_chunks(|off, piece| {
///             piece.copy_from_slice(&src[off..off + piece.len()]);
///             Ok(())
///         })
///     }
///
///     fn write_from(&self, addr: u64, src: DmaSrc<'_>) -> Result<(), MemoryError> {
///         let mut mem = self.0.lock().unwrap();
///         let err = MemoryError { addr, len: src.len() };
///         let at = usize::try_from(addr).map_err(|_| err)?;
///         let dst = mem.get_mut(at..).and_then(|m| m.get_mut(..src.len())).ok_or(err)?;
///         src.for_each_chunk(|off, piece| {
///             dst[off..off + piece.len()].copy_from_slice(piece);
///             Ok(())
///         })
///     }
/// }
///
/// let m = Locked(Mutex::new(vec![0; 4096]));
/// m.write(10, b"abc").unwrap();
/// let mut buf = [0u8; 3];
/// m.read(10, &mut buf).unwrap();
/// assert_eq!(&buf, b"abc");
/// assert!(m.read(4095, &mut buf).is_err());
/// ```
pub trait OrigMemory: Send + Sync {
    /// Copy `dst.len()` bytes starting at `addr` into `dst`. On error the bytes of `dst` are
    /// unspecified (the allocator then discards them).
    fn read_into(&self, addr: u64, dst: DmaDst<'_>) -> Result<(), MemoryError>;

    /// Copy `src` to memory starting at `addr`. On error nothing should have been written
    /// (check the whole range first): a refused sync or unmap must leave the original as it
    /// was.
    fn write_from(&self, addr: u64, src: DmaSrc<'_>) -> Result<(), MemoryError>;

    /// Copy `buf.len()` bytes starting at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.read_into(addr, DmaDst::from(buf))
    }

    /// Copy `data` to memory starting at `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.write_from(addr, DmaSrc::from(data))
    }
}

/// The calling process's own memory: an address is a pointer value.
///
/// ```
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
    /// mapping) must be valid for the access for as long as it is used (an address is the
    /// pointer cast to an integer), and no other thread may write those bytes during a copy
    /// (or access them during a write): they are borrowed as a slice for the copy. In
    /// particular an original address must not lie in a pool, which a device writes at will.
    pub unsafe fn new() -> Self {
        ProcessMemory(())
    }
}

impl OrigMemory for ProcessMemory {
    fn read_into(&self, addr: u64, dst: DmaDst<'_>) -> Result<(), MemoryError> {
        let len = dst.len();
        if len == 0 {
            // A slice needs a non-null pointer even when empty; `addr` may be anything.
            return Ok(());
        }
        // SAFETY: the constructor's contract: `addr..addr+len` is valid and nobody writes it
        // during the copy.
        let src = unsafe { std::slice::from_raw_parts(addr as usize as *const u8, len) };
        DmaSrc::from(src).copy_to(dst);
        Ok(())
    }

    fn write_from(&self, addr: u64, src: DmaSrc<'_>) -> Result<(), MemoryError> {
        let len = src.len();
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the constructor's contract: `addr..addr+len` is valid and nobody else
        // accesses it during the copy.
        let dst = unsafe { std::slice::from_raw_parts_mut(addr as usize as *mut u8, len) };
        src.copy_to(DmaDst::from(dst));
        Ok(())
    }
}

/// A page-aligned, zeroed region of process memory, addressed by its process addresses and
/// bounds-checked: a safe [`OrigMemory`] for tests, examples and simple users. Its bytes are
/// accessed only atomically, as the pools' are, so threads (and devices given
/// its addresses directly) may race on them without undefined behaviour.
///
/// ```
/// use swiotlb_core::{OrigMemory, RegionMemory};
/// let m = RegionMemory::new(8192);
/// assert_eq!(m.base() % 4096, 0);
/// assert_eq!(m.len(), 8192);
/// assert!(m.write(m.base() - 1, &[1]).is_err());
/// ```
#[derive(Debug)]
pub struct RegionMemory {
    region: SharedRegion,
}

impl RegionMemory {
    /// A zeroed region of `len` bytes (at least one byte is allocated).
    ///
    /// # Panics
    /// If the system allocator fails (as `Vec` does).
    pub fn new(len: usize) -> Self {
        let region = SharedRegion::new(len.max(1), crate::PAGE_SIZE)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(std::alloc::Layout::new::<u8>()));
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
    #[inline]
    fn read_into(&self, addr: u64, dst: DmaDst<'_>) -> Result<(), MemoryError> {
        let len = dst.len();
        let src = self
            .region
            .src_at(addr, len)
            .ok_or(MemoryError { addr, len })?;
        src.copy_to(dst);
        Ok(())
    }

    #[inline]
    fn write_from(&self, addr: u64, src: DmaSrc<'_>) -> Result<(), MemoryError> {
        let len = src.len();
        let dst = self
            .region
            .dst_at(addr, len)
            .ok_or(MemoryError { addr, len })?;
        src.copy_to(dst);
        Ok(())
    }
}

/// An instance's original memory: a [`RegionMemory`] held as itself, so that a bounce's copy
/// of the common safe memory is inlined into map and unmap (no indirect call, no spill of the
/// caller's registers around it), or any other implementation behind a trait object.
pub(crate) enum Memory {
    Region(RegionMemory),
    Dyn(Box<dyn OrigMemory>),
}

impl Memory {
    /// `memory`, held as itself if it is a [`RegionMemory`].
    pub(crate) fn new(memory: impl OrigMemory + 'static) -> Memory {
        let mut memory = Some(memory);
        let region = (&mut memory as &mut dyn std::any::Any)
            .downcast_mut::<Option<RegionMemory>>()
            .and_then(Option::take);
        match (region, memory) {
            (Some(r), _) => Memory::Region(r),
            (None, Some(m)) => Memory::Dyn(Box::new(m)),
            // Taken only by the downcast, which then answered `Some`.
            (None, None) => unreachable!("the memory was taken as a RegionMemory"),
        }
    }

    /// The memory as the trait object callers see.
    pub(crate) fn as_dyn(&self) -> &dyn OrigMemory {
        match self {
            Memory::Region(r) => r,
            Memory::Dyn(m) => &**m,
        }
    }

    /// [`OrigMemory::read_into`], without an indirect call for a [`RegionMemory`].
    #[inline(always)]
    pub(crate) fn read_into(&self, addr: u64, dst: DmaDst<'_>) -> Result<(), MemoryError> {
        match self {
            Memory::Region(r) => r.read_into(addr, dst),
            Memory::Dyn(m) => m.read_into(addr, dst),
        }
    }

    /// [`OrigMemory::write_from`], without an indirect call for a [`RegionMemory`].
    #[inline(always)]
    pub(crate) fn write_from(&self, addr: u64, src: DmaSrc<'_>) -> Result<(), MemoryError> {
        match self {
            Memory::Region(r) => r.write_from(addr, src),
            Memory::Dyn(m) => m.write_from(addr, src),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A `RegionMemory` is held as itself (its copies inlined), anything else as a trait
    /// object, and both copy the same bytes.
    #[test]
    fn region_memory_is_held_as_itself() {
        let region = RegionMemory::new(64);
        let base = region.base();
        region.write(base, &[1, 2, 3]).unwrap();
        let held = Memory::new(region);
        assert!(matches!(held, Memory::Region(_)));
        let other = Memory::new(RegionMemory::new(64));
        // SAFETY: only the addresses of `buf`, alive and not otherwise borrowed, are used.
        let process = Memory::new(unsafe { ProcessMemory::new() });
        assert!(matches!(process, Memory::Dyn(_)));
        let mut buf = [0u8; 3];
        held.as_dyn().read(base, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3]);
        let at = buf.as_mut_ptr() as usize as u64;
        process.as_dyn().write(at, &[7, 8, 9]).unwrap();
        assert_eq!(buf, [7, 8, 9]);
        assert!(other.as_dyn().read(base, &mut buf).is_err());
    }
}
