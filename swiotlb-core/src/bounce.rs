//! Map, bounce, sync and unmap; alloc and free for restricted pools; device-side access.
//!
//! | Operation | ToDevice | FromDevice | Bidirectional |
//! |---|---|---|---|
//! | map | copy in | copy in | copy in |
//! | sync_for_device | copy in | nothing | copy in |
//! | sync_for_cpu | nothing | copy out | copy out |
//! | unmap (unless `skip_cpu_sync`) | nothing | copy out | copy out |
//!
//! Map copies in for every direction so a device never reads a previous user's bytes and
//! bytes it does not write come back unchanged (CVE-2022-0854).
//!
//! # Fast paths
//!
//! The common bounce is a simple streaming map (no masks, or an IOMMU's alignment to its
//! granule), served by the run the thread's last unmap cached, and an unmap that copies
//! nothing back. Each has a fast path that is a
//! special case of the general one, taken before it and skipping only what its case makes
//! moot:
//!
//! * map: a simple request (no minimum-alignment or boundary mask, an allocation alignment of
//!   at most a page, 1 byte to one segment) gets its plan from `align::simple` (where the
//!   general `plan` starts too) and the thread's cached run
//!   (`take_cached`, as `find_slots` tries first), then is counted, copied in and published
//!   as the general path does (`found`, `bounce_in`). A miss goes to the out-of-line general map, which
//!   does not try the cache again.
//! * unmap: no copy back, a global pool, an address at a slot's start whose slot heads a
//!   mapping without padding: `Pool::unmark_unpadded` makes `unmark`'s checks on the raw
//!   word, claims with the same compare-and-swap (`swiotlb.release.claim`, `.acquire`) and the
//!   run is parked as `release` parks it. Anything else takes the out-of-line general unmap.
//!
//! Both fast paths hold no value with drop glue across a call: the pool goes by `PoolAt` (a
//! global pool has no pin to drop), the unmap looks global pools up first
//! (`Swiotlb::lookup_global`), and the guard that gives a map's allocation back if the copy
//! unwinds (`Unpublished`) is kept only around a caller's [`crate::OrigMemory`]: the copy of
//! a [`crate::RegionMemory`] returns its one error (a range outside the region) and panics
//! only on a bug of this crate, which would leave the allocation allocated, never freed
//! twice. A value a landing pad needs lives on the stack, and a bounce is bound by the
//! stores behind its copy (module `shared`): the change took 16 stores off a map+unmap. For
//! the same reason `map` and `unmap` are inlined wrappers that hand the out-of-line code the
//! attributes it uses as scalars: a `MapAttrs` argument went through the stack.
//!
//! A map publishes its mapping (`HeadWord::publish`) only once the bounce buffer is filled,
//! and issues its release fence (`Swiotlb::handed_on`) after that: until then no unmap can
//! claim it, and a thread that receives the address finds it published. A copy-back
//! unmap claims the mapping before it copies back (`Pool::claim`), so the bytes it copies are
//! the mapping's own even when a racing unmap of the same address (a caller's bug) would
//! otherwise free the slots for a new mapping meanwhile.
//!
//! `fast_path_tests` runs random workloads with and without them and compares every answer,
//! statistic and byte.

use crate::align::Plan;
use crate::device::Device;
use crate::error::Error;
use crate::memory::Memory;
use crate::points::TRANSIENT_GRACE;
use crate::pool::{beyond, Pool};
use crate::swiotlb::{PoolAt, PoolRef, Swiotlb};
use crate::thread_cache::CachedRun;
use crate::OrigMemory;
use crate::{INVALID_PHYS_ADDR, IO_TLB_SHIFT, IO_TLB_SIZE, PAGE_SIZE};

/// Direction of a DMA transfer: which copies sync and unmap make (map always copies in).
///
/// | Operation | ToDevice | FromDevice | Bidirectional |
/// |---|---|---|---|
/// | sync_for_device | copy in | nothing | copy in |
/// | sync_for_cpu | nothing | copy out | copy out |
/// | unmap (unless `skip_cpu_sync`) | nothing | copy out | copy out |
///
/// ```
/// use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, OrigMemory, RegionMemory, Swiotlb};
/// let mem = RegionMemory::new(4096);
/// let orig = mem.base();
/// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
/// let dev = swiotlb.device(DeviceConfig::default());
/// for dir in Direction::ALL {
///     let a = swiotlb.map(&dev, orig, 1, dir, MapAttrs::default()).unwrap();
///     swiotlb.write_bounce(&dev, a, &[0xEE]).unwrap(); // a device write, allowed or not
///     swiotlb.unmap(&dev, a, 1, dir, MapAttrs::default()).unwrap();
///     let mut b = [0u8; 1];
///     swiotlb.memory().read(orig, &mut b).unwrap();
///     // Only a mapping the device may write is copied back.
///     assert_eq!(b[0] == 0xEE, dir != Direction::ToDevice);
///     swiotlb.memory().write(orig, &[0]).unwrap();
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The device reads the buffer.
    ToDevice,
    /// The device writes the buffer.
    FromDevice,
    /// Both.
    Bidirectional,
}

impl Direction {
    /// Every direction, for tests and tools that pick one by index.
    ///
    /// ```
    /// use swiotlb_core::Direction;
    /// assert!(Direction::ALL.contains(&Direction::Bidirectional));
    /// ```
    pub const ALL: [Direction; 3] = [
        Direction::ToDevice,
        Direction::FromDevice,
        Direction::Bidirectional,
    ];

    fn device_writes(self) -> bool {
        matches!(self, Direction::FromDevice | Direction::Bidirectional)
    }

    fn device_reads(self) -> bool {
        matches!(self, Direction::ToDevice | Direction::Bidirectional)
    }
}

/// Attributes of a mapping.
///
/// ```
/// let a = swiotlb_core::MapAttrs { alloc_align_mask: 0xFFF, ..Default::default() };
/// assert!(!a.skip_cpu_sync);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapAttrs {
    /// Alignment of the allocation start (2^k − 1, at most 64 KiB − 1); the searched size is
    /// rounded up to it, so a caller (an IOMMU with granule `mask + 1`) may expose whole
    /// aligned units to the device.
    pub alloc_align_mask: u64,
    /// Unmap does not copy back (the caller synced already).
    pub skip_cpu_sync: bool,
    /// Zero the bytes of the allocation before and after the mapping, so an untrusted device
    /// given whole aligned units sees no stale data.
    pub zero_padding: bool,
}

impl Swiotlb {
    /// Bounce `size` bytes of original memory at `orig` for `dev`: returns the bounce address.
    /// The original bytes are copied in whatever the direction.
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, OrigMemory, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(8192);
    /// let orig = mem.base() + 0xA00;
    /// mem.write(orig, b"hello").unwrap();
    /// let swiotlb = Swiotlb::new(Config::tiny(128, 1, 128), mem).unwrap();
    /// let nvme = swiotlb.device(DeviceConfig { min_align_mask: 0xFFF, ..Default::default() });
    /// let a = swiotlb.map(&nvme, orig, 5, Direction::Bidirectional, MapAttrs::default()).unwrap();
    /// assert_eq!(a & 0xFFF, 0xA00);
    /// let mut seen = [0u8; 5];
    /// swiotlb.read_bounce(&nvme, a, &mut seen).unwrap();
    /// assert_eq!(&seen, b"hello");
    /// swiotlb.write_bounce(&nvme, a, b"HE").unwrap();
    /// swiotlb.unmap(&nvme, a, 5, Direction::Bidirectional, MapAttrs::default()).unwrap();
    /// let mut back = [0u8; 5];
    /// swiotlb.memory().read(orig, &mut back).unwrap();
    /// assert_eq!(&back, b"HEllo");
    /// assert_eq!(swiotlb.stats().used, 0);
    /// ```
    // A wrapper inlined into the caller: `attrs` (a 16-byte struct, the seventh argument
    // after the returned value's pointer) went through the stack on every call, four stores
    // before the map began; the out-of-line map takes the two fields it uses, in registers.
    #[inline]
    pub fn map(
        &self,
        dev: &Device,
        orig: u64,
        size: usize,
        dir: Direction,
        attrs: MapAttrs,
    ) -> Result<u64, Error> {
        let _ = dir; // Every direction copies in.
        self.map_with(dev, orig, size, attrs.alloc_align_mask, attrs.zero_padding)
    }

    /// [`Swiotlb::map`] with the attributes a map uses (`skip_cpu_sync` concerns unmap only).
    fn map_with(
        &self,
        dev: &Device,
        orig: u64,
        size: usize,
        alloc_align_mask: u64,
        zero_padding: bool,
    ) -> Result<u64, Error> {
        let attrs = MapAttrs {
            alloc_align_mask,
            skip_cpu_sync: false,
            zero_padding,
        };
        self.check_device(dev)?;
        if orig == INVALID_PHYS_ADDR {
            return Err(Error::Memory(crate::MemoryError {
                addr: orig,
                len: size,
            }));
        }
        // The fast path: a simple request (the common streaming map, an IOMMU's bounce of
        // whole granules) served by the thread's cached run. Its plan is the one
        // `map_searched` derives, and it takes the run that path would take first, counted
        // and bounced the same way.
        let simple = self
            .simple_plan(dev, orig, size, attrs.alloc_align_mask)
            .filter(|_| fast_paths());
        if let Some(plan) = &simple {
            if let Some((pool, s)) = self.take_cached(plan) {
                self.found(dev, pool, plan.nslots);
                return self.bounce_in(dev, PoolAt::global(pool), s, plan, orig, attrs);
            }
        }
        // The cached run was tried already for a simple request.
        self.map_searched(dev, orig, size, attrs, simple.is_none())
    }

    /// The general map: derive the plan (or refuse the request), find slots (the thread's
    /// cached run first if `try_cache`, then a search) and bounce in. Out of line: the fast
    /// path of `map` stays short, and this path takes a lock or more anyway.
    #[inline(never)]
    fn map_searched(
        &self,
        dev: &Device,
        orig: u64,
        size: usize,
        attrs: MapAttrs,
        try_cache: bool,
    ) -> Result<u64, Error> {
        let plan = self.plan(dev, Some(orig), size, attrs.alloc_align_mask, false)?;
        let (pool, s) = self.find_slots(dev, &plan, try_cache)?;
        self.bounce_in(dev, pool.at(), s, &plan, orig, attrs)
    }

    /// Finish a map of `orig` whose allocation at slot `s` of `pool` was just found and
    /// recorded and counted for `plan`: check the DMA mask, zero the padding if asked, copy
    /// the original in and publish the mapping; on error (or if the original memory unwinds)
    /// give the allocation back unpublished and uncount it. Returns the bounce address.
    #[inline(always)]
    fn bounce_in(
        &self,
        dev: &Device,
        pool: PoolAt<'_>,
        s: usize,
        plan: &Plan,
        orig: u64,
        attrs: MapAttrs,
    ) -> Result<u64, Error> {
        let size = plan.mapping_size;
        let first = s + plan.pad_slots;
        let addr = pool.start() + ((first as u64) << IO_TLB_SHIFT) + plan.in_off as u64;
        let nslots = plan.nslots;
        if beyond(addr.checked_add(size as u64 - 1), dev.inner.cfg.dma_mask) {
            self.unpublish(dev, pool, s, nslots);
            return Err(Error::NotDmaCapable { addr });
        }
        if attrs.zero_padding {
            let run = (s << IO_TLB_SHIFT)..((s + plan.nslots) << IO_TLB_SHIFT);
            let off = (addr - pool.start()) as usize;
            let (before, after) = (off - run.start, run.end - off - size);
            // A mapping of whole granules (an IOMMU's common bounce) has no padding: no call,
            // no `rep stosb` of zero bytes.
            if before != 0 {
                pool.region().zero(run.start, before);
            }
            if after != 0 {
                pool.region().zero(off + size, after);
            }
        }
        let head = pool.head_word(s, plan);
        // The range was just recorded: copy without looking its metadata up again.
        let off = (addr - pool.start()) as usize;
        let copied = match &self.inner.memory {
            // This crate's own copy, which cannot unwind: no guard is kept (in memory, for a
            // landing pad) across it, and its error is handled below.
            Memory::Region(r) => r.read_into(orig, pool.region().dst(off, size)),
            // Any other memory may unwind: the guard gives the allocation back if it does.
            Memory::Dyn(m) => self.copy_in_guarded(&**m, dev, pool, s, nslots, orig, off, size),
        };
        match copied {
            Ok(()) => {
                // Make the allocation a mapping, then issue the map's release fence
                // (`Swiotlb::handed_on`): it orders the publication before the caller hands
                // the address on, so an unmap on the thread that receives it through the
                // caller's memory finds the mapping (model `transient_unlink_head`).
                head.publish();
                Swiotlb::handed_on();
                Ok(addr)
            }
            Err(e) => {
                self.unpublish(dev, pool, s, nslots);
                Err(e.into())
            }
        }
    }

    /// The copy in of a map through memory that may unwind (a caller's [`crate::OrigMemory`]):
    /// if it does, the allocation of `nslots` at `s`, recorded and counted, goes back
    /// unpublished. Out of line: the copy of a [`crate::RegionMemory`] is inlined into map.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn copy_in_guarded(
        &self,
        memory: &dyn OrigMemory,
        dev: &Device,
        pool: PoolAt<'_>,
        s: usize,
        nslots: usize,
        orig: u64,
        off: usize,
        size: usize,
    ) -> Result<(), crate::MemoryError> {
        let guard = Unpublished {
            swiotlb: self,
            dev,
            pool,
            s,
            nslots,
        };
        let copied = memory.read_into(orig, pool.region().dst(off, size));
        // Returned, not unwound: the caller publishes or gives back.
        std::mem::forget(guard);
        copied
    }

    /// Give back an allocation found, recorded and counted but not published (a map that
    /// fails after its search): clear its metadata, uncount it and give the run back.
    #[cold]
    #[inline(never)]
    fn unpublish(&self, dev: &Device, pool: PoolAt<'_>, s: usize, nslots: usize) {
        pool.unrecord(s, nslots);
        self.give_back(dev, pool, s, nslots);
    }

    /// Free the slots of the mapping starting in slot `first` and uncount them: a global
    /// pool's run goes to the calling thread's cache (the run it displaces to its area), a
    /// transient pool's to its area, and the transient pool is dropped (its one mapping is
    /// gone). `size` as in `Pool::unmark`.
    // Inlined into the general unmap (a call cost a prologue and an epilogue there).
    #[inline(always)]
    fn release(
        &self,
        dev: &Device,
        pool: PoolAt<'_>,
        first: usize,
        in_off: usize,
        addr: u64,
        size: Option<usize>,
    ) -> Result<(), Error> {
        let (start, nslots) = pool.unmark(first, in_off, addr, size)?;
        self.give_back(dev, pool, start, nslots);
        Ok(())
    }

    /// Uncount the run of `nslots` at `start` of `pool`, held by the caller and clear of
    /// metadata, and give it back: a global pool's to the calling thread's cache (the run it
    /// displaces to its area), a transient pool's to its area, and the transient pool is
    /// dropped (its one mapping is gone).
    #[inline(always)]
    fn give_back(&self, dev: &Device, pool: PoolAt<'_>, start: usize, nslots: usize) {
        if self.inner.stats.enabled() {
            self.inner.stats.sub_used(pool.accounted_slots(nslots));
        }
        if pool.transient {
            pool.put_back(start, nslots);
            self.drop_transient(dev, pool);
        } else {
            self.park(pool.pool, start, nslots);
        }
    }

    /// Give the run of `nslots` at `start` of global pool `pool`, just released by the
    /// caller, to the calling thread's cache; the run it displaces goes back to its area.
    #[inline(always)]
    fn park(&self, pool: &Pool, start: usize, nslots: usize) {
        let run = CachedRun {
            pool,
            start,
            nslots,
        };
        if let Some(back) = self.inner.caches.park(run) {
            back.pool.put_back(back.start, back.nslots);
        }
    }

    /// Copy between the bounce buffer at `addr` and the original memory: `to_device` copies
    /// original → bounce. Any sub-range of a live mapping, starting in any of its slots.
    fn bounce(&self, pool: &Pool, addr: u64, size: usize, to_device: bool) -> Result<(), Error> {
        let at = mapped_range(pool, addr, size)?;
        self.copy(pool, at, addr, size, to_device)
    }

    /// Copy `size` bytes between original address `at` and bounce address `addr` of `pool`,
    /// a range of a live mapping. Inlined: `to_device` is a constant at every call, and a
    /// 4 KiB bounce to the device then makes its copy without a call (of a [`crate::RegionMemory`]
    /// entirely: the instance holds one as itself; other memory is one indirect call).
    #[inline(always)]
    fn copy(
        &self,
        pool: &Pool,
        at: u64,
        addr: u64,
        size: usize,
        to_device: bool,
    ) -> Result<(), Error> {
        // The device may be accessing these bytes right now: they are copied with atomic
        // accesses, never borrowed (module `shared`).
        let (region, off) = (pool.region(), (addr - pool.start()) as usize);
        if to_device {
            self.inner.memory.read_into(at, region.dst(off, size))?;
        } else {
            self.inner.memory.write_from(at, region.src(off, size))?;
        }
        Ok(())
    }

    /// Copy back (unless skipped or to-device) and release the mapping at `addr`. `size` may
    /// be at most the mapped size. A second unmap is [`Error::NotMapped`]; on any error the
    /// mapping stays as it was.
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(4096);
    /// let orig = mem.base();
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
    /// let dev = swiotlb.device(DeviceConfig::default());
    /// let a = swiotlb.map(&dev, orig, 64, Direction::FromDevice, MapAttrs::default()).unwrap();
    /// swiotlb.unmap(&dev, a, 64, Direction::FromDevice, MapAttrs::default()).unwrap();
    /// assert_eq!(
    ///     swiotlb.unmap(&dev, a, 64, Direction::FromDevice, MapAttrs::default()),
    ///     Err(Error::NotMapped { addr: a })
    /// );
    /// ```
    // Inlined into the caller as `map` is: the out-of-line unmap takes whether to copy back.
    #[inline]
    pub fn unmap(
        &self,
        dev: &Device,
        addr: u64,
        size: usize,
        dir: Direction,
        attrs: MapAttrs,
    ) -> Result<(), Error> {
        self.unmap_with(dev, addr, size, dir.device_writes() && !attrs.skip_cpu_sync)
    }

    /// [`Swiotlb::unmap`], copying back if `copy_back`.
    fn unmap_with(
        &self,
        dev: &Device,
        addr: u64,
        size: usize,
        copy_back: bool,
    ) -> Result<(), Error> {
        self.check_device(dev)?;
        let in_off = (addr & (IO_TLB_SIZE as u64 - 1)) as usize;
        // The fast path: no copy back, a global pool (the first part of `lookup`: no pin, so
        // nothing to drop), an address at a slot's start. If the slot heads an unpadded
        // mapping, the general path would make the same checks, claim with the same
        // compare-and-swap and park the run the same way.
        if !copy_back && in_off == 0 && fast_paths() {
            match self.lookup_global(dev, addr) {
                Ok(pool) => {
                    if let Some(released) = pool.unmark_unpadded(pool.slot_of(addr), addr, size) {
                        let (start, nslots) = released?;
                        self.inner.stats.sub_used(nslots);
                        self.park(pool, start, nslots);
                        return Ok(());
                    }
                    return self.unmap_general(dev, PoolAt::global(pool), addr, size, false);
                }
                // Neither a global nor a transient pool: the lookup's answer.
                Err(false) => return Err(Error::NotMapped { addr }),
                Err(true) => {}
            }
        }
        self.unmap_looked_up(dev, addr, size, copy_back)
    }

    /// [`Swiotlb::unmap`] from the lookup on, for every case but the fast path's. Out of line
    /// as `unmap_general` is.
    #[inline(never)]
    fn unmap_looked_up(
        &self,
        dev: &Device,
        addr: u64,
        size: usize,
        copy_back: bool,
    ) -> Result<(), Error> {
        let pool = self.lookup(dev, addr).ok_or(Error::NotMapped { addr })?;
        self.unmap_general(dev, pool.at(), addr, size, copy_back)
    }

    /// The general unmap of `addr` in `pool`: copy back if `copy_back`, then release. Out of
    /// line: the fast path of `unmap` stays short.
    #[inline(never)]
    fn unmap_general(
        &self,
        dev: &Device,
        pool: PoolAt<'_>,
        addr: u64,
        size: usize,
        copy_back: bool,
    ) -> Result<(), Error> {
        let first = pool.slot_of(addr);
        let in_off = (addr & (IO_TLB_SIZE as u64 - 1)) as usize;
        if !copy_back {
            // The mapping and `size` are checked once, by the claim that frees it.
            return self.release(dev, pool, first, in_off, addr, Some(size));
        }
        // Claimed before the copy back: a racing release of the same address that claimed
        // first could free the slots for a new mapping of another buffer while this copy ran,
        // and its bytes would be copied to this mapping's original. On an error (or an
        // unwind) the dropped claim gives the mapping back unchanged.
        let claimed = pool.claim(first, in_off, addr, Some(size))?;
        // The head slot's original address is the mapping's first byte's (an `alloc`
        // allocation has none, so nothing to copy back to).
        let orig = claimed.orig();
        if orig == INVALID_PHYS_ADDR {
            return Err(Error::NotMapped { addr });
        }
        self.copy(pool.pool, orig, addr, size, false)?;
        let (start, nslots) = claimed.clear();
        self.give_back(dev, pool, start, nslots);
        Ok(())
    }

    /// Unlink a transient pool whose one mapping was released, and free it after a grace
    /// period (the caller's pin is the one that found it).
    fn drop_transient(&self, dev: &Device, pool: PoolAt<'_>) {
        let p: *const Pool = pool.pool;
        if !dev.inner.unlink(p) {
            return;
        }
        self.inner.stats.transient_removed(pool.geo.nslabs);
        let p = p as *mut Pool;
        if TRANSIENT_GRACE.on() {
            let pinned;
            let guard = match pool.pin {
                Some(g) => g,
                None => {
                    pinned = dma_sync::rcu::pin();
                    &pinned
                }
            };
            // SAFETY: unlinked under the device lock just now, so retired exactly once; it came
            // from `Box::into_raw` in `link`.
            unsafe { guard.defer_retire(p) };
        } else {
            free_without_grace(p);
        }
    }

    /// Make the device's writes at `addr` visible to the CPU (copy out for from-device and
    /// bidirectional mappings). Any sub-range of a live mapping; the whole range is checked in
    /// every direction, also when nothing is copied (stricter than Linux, which checks only
    /// the ranges it copies): a range leaving the mapping is [`Error::OutOfRange`].
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, Error, MapAttrs, OrigMemory, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(4096);
    /// let orig = mem.base();
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
    /// let dev = swiotlb.device(DeviceConfig::default());
    /// let a = swiotlb.map(&dev, orig, 8, Direction::FromDevice, MapAttrs::default()).unwrap();
    /// swiotlb.write_bounce(&dev, a, b"polled!!").unwrap();
    /// swiotlb.sync_for_cpu(&dev, a + 2, 4, Direction::FromDevice).unwrap(); // bytes 2..6 only
    /// let mut seen = [0u8; 8];
    /// swiotlb.memory().read(orig, &mut seen).unwrap();
    /// assert_eq!(&seen, b"\0\0lled\0\0");
    /// // Past the mapping's end: refused, nothing copied.
    /// assert_eq!(
    ///     swiotlb.sync_for_cpu(&dev, a + 6, 4, Direction::FromDevice),
    ///     Err(Error::OutOfRange { addr: a + 6, size: 4 })
    /// );
    /// ```
    pub fn sync_for_cpu(
        &self,
        dev: &Device,
        addr: u64,
        size: usize,
        dir: Direction,
    ) -> Result<(), Error> {
        self.sync(dev, addr, size, dir, false)
    }

    /// Make the CPU's writes visible to the device (copy in for to-device and bidirectional
    /// mappings; nothing for from-device, so a device writing while the CPU polls keeps its
    /// bytes). Any sub-range of a live mapping, checked whole in every direction as
    /// [`Swiotlb::sync_for_cpu`] does.
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, Error, MapAttrs, OrigMemory, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(8192);
    /// let orig = mem.base();
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
    /// let dev = swiotlb.device(DeviceConfig::default());
    /// let a = swiotlb.map(&dev, orig, 4096, Direction::ToDevice, MapAttrs::default()).unwrap();
    /// swiotlb.memory().write(orig + 3000, b"new").unwrap();
    /// swiotlb.sync_for_device(&dev, a + 3000, 3, Direction::ToDevice).unwrap();
    /// let mut seen = [0u8; 3];
    /// swiotlb.read_bounce(&dev, a + 3000, &mut seen).unwrap();
    /// assert_eq!(&seen, b"new");
    /// // A direction that copies nothing still checks the range.
    /// assert_eq!(
    ///     swiotlb.sync_for_device(&dev, a + 50, 1 << 20, Direction::FromDevice),
    ///     Err(Error::OutOfRange { addr: a + 50, size: 1 << 20 })
    /// );
    /// ```
    pub fn sync_for_device(
        &self,
        dev: &Device,
        addr: u64,
        size: usize,
        dir: Direction,
    ) -> Result<(), Error> {
        self.sync(dev, addr, size, dir, true)
    }

    /// A sync for the CPU (`to_device` false) or for the device of an address that may not
    /// be a bounce address at all: `Ok(false)`, nothing done, if `addr` lies in none of
    /// `dev`'s pools; otherwise [`Swiotlb::sync_for_cpu`] or [`Swiotlb::sync_for_device`]
    /// (`Ok(true)` or its error). One pool lookup: a caller that asked
    /// [`Swiotlb::is_bounce_buffer`] first would look the pool up twice.
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, Error, MapAttrs, OrigMemory, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(4096);
    /// let orig = mem.base();
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
    /// let dev = swiotlb.device(DeviceConfig::default());
    /// let a = swiotlb.map(&dev, orig, 8, Direction::FromDevice, MapAttrs::default()).unwrap();
    /// swiotlb.write_bounce(&dev, a, b"polled!!").unwrap();
    /// assert_eq!(swiotlb.sync_if_bounced(&dev, a, 8, Direction::FromDevice, false), Ok(true));
    /// let mut seen = [0u8; 8];
    /// swiotlb.memory().read(orig, &mut seen).unwrap();
    /// assert_eq!(&seen, b"polled!!");
    /// // Not a bounce address: nothing to do.
    /// assert_eq!(swiotlb.sync_if_bounced(&dev, orig, 8, Direction::FromDevice, false), Ok(false));
    /// // In a pool but past the mapping: the sync's own error.
    /// assert_eq!(
    ///     swiotlb.sync_if_bounced(&dev, a + 6, 4, Direction::FromDevice, true),
    ///     Err(Error::OutOfRange { addr: a + 6, size: 4 })
    /// );
    /// ```
    pub fn sync_if_bounced(
        &self,
        dev: &Device,
        addr: u64,
        size: usize,
        dir: Direction,
        to_device: bool,
    ) -> Result<bool, Error> {
        self.check_device(dev)?;
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let Some(pool) = self.lookup(dev, addr) else {
            return Ok(false);
        };
        let copy = if to_device {
            dir.device_reads()
        } else {
            dir.device_writes()
        };
        if copy {
            self.bounce(&pool, addr, size, to_device)?;
        } else {
            // Nothing to copy, but the whole range must still lie in one live mapping.
            mapped_range(&pool, addr, size)?;
        }
        Ok(true)
    }

    /// [`Swiotlb::sync_if_bounced`] of an address that must be a bounce address.
    fn sync(
        &self,
        dev: &Device,
        addr: u64,
        size: usize,
        dir: Direction,
        to_device: bool,
    ) -> Result<(), Error> {
        if self.sync_if_bounced(dev, addr, size, dir, to_device)? {
            Ok(())
        } else {
            Err(Error::NotMapped { addr })
        }
    }

    /// Allocate `size` bytes of bounce memory for `dev` from a restricted pool
    /// (`Config::for_alloc`): aligned to the size's power-of-two page order, always
    /// page-aligned, never overlapping another allocation.
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, RegionMemory, Swiotlb};
    /// let swiotlb = Swiotlb::new(Config::restricted(128), RegionMemory::new(64)).unwrap();
    /// let dev = swiotlb.device(DeviceConfig::default());
    /// let a = swiotlb.alloc(&dev, 12 * 1024).unwrap();
    /// assert_eq!(a % (16 * 1024), 0);
    /// swiotlb.free(&dev, a).unwrap();
    /// ```
    pub fn alloc(&self, dev: &Device, size: usize) -> Result<u64, Error> {
        self.check_device(dev)?;
        if !self.inner.cfg.for_alloc {
            return Err(Error::NotForAlloc);
        }
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let pages = size.div_ceil(PAGE_SIZE);
        let too_large = Error::TooLarge {
            size,
            max: self.segment_slots() * IO_TLB_SIZE,
        };
        let order_bytes = pages
            .checked_next_power_of_two()
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .ok_or(too_large)?;
        let plan = self.plan(dev, None, size, order_bytes as u64 - 1, true)?;
        let (pool, s) = self.find_slots(dev, &plan, true)?;
        let addr = pool.start() + ((s as u64) << IO_TLB_SHIFT);
        if addr % PAGE_SIZE as u64 != 0 {
            // Defence in depth: a non-page-aligned result would share a page (CVE-2024-35814).
            self.unpublish(dev, pool.at(), s, plan.nslots);
            return Err(Error::NoSpace { size });
        }
        // Published and handed on as a map's mapping is (`bounce_in`).
        pool.head_word(s, &plan).publish();
        Swiotlb::handed_on();
        Ok(addr)
    }

    /// Free an allocation made by [`Swiotlb::alloc`] (example there).
    pub fn free(&self, dev: &Device, addr: u64) -> Result<(), Error> {
        self.check_device(dev)?;
        if !self.inner.cfg.for_alloc {
            return Err(Error::NotForAlloc);
        }
        let pool = self.lookup(dev, addr).ok_or(Error::NotMapped { addr })?;
        if addr % PAGE_SIZE as u64 != 0 {
            return Err(Error::NotMapped { addr });
        }
        self.release(dev, pool.at(), pool.slot_of(addr), 0, addr, None)
    }

    /// Device side: read bounce memory at `addr` (must lie in one pool of `dev`).
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(4096);
    /// let orig = mem.base();
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
    /// let dev = swiotlb.device(DeviceConfig::default());
    /// let a = swiotlb.map(&dev, orig, 16, Direction::FromDevice, MapAttrs::default()).unwrap();
    /// swiotlb.write_bounce(&dev, a, &[7; 16]).unwrap();
    /// let mut seen = [0u8; 16];
    /// swiotlb.read_bounce(&dev, a, &mut seen).unwrap();
    /// assert_eq!(seen, [7; 16]);
    /// // An address outside every pool of the device is refused.
    /// assert_eq!(
    ///     swiotlb.read_bounce(&dev, orig, &mut seen),
    ///     Err(Error::NotMapped { addr: orig })
    /// );
    /// ```
    pub fn read_bounce(&self, dev: &Device, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        let (pool, off) = self.device_range(dev, addr, buf.len())?;
        pool.region().read(off, buf);
        Ok(())
    }

    /// Device side: write bounce memory at `addr` (must lie in one pool of `dev`). See
    /// [`Swiotlb::read_bounce`] for an example.
    pub fn write_bounce(&self, dev: &Device, addr: u64, data: &[u8]) -> Result<(), Error> {
        let (pool, off) = self.device_range(dev, addr, data.len())?;
        pool.region().write(off, data);
        Ok(())
    }

    /// The pool of `dev` holding `[addr, addr + len)` and the range's offset in its memory.
    fn device_range<'a>(
        &'a self,
        dev: &'a Device,
        addr: u64,
        len: usize,
    ) -> Result<(PoolRef<'a>, usize), Error> {
        self.check_device(dev)?;
        let pool = self.lookup(dev, addr).ok_or(Error::NotMapped { addr })?;
        let off = pool
            .region()
            .offset_of(addr, len)
            .ok_or(Error::OutOfRange { addr, size: len })?;
        Ok((pool, off))
    }
}

/// The guard of a map's copy through memory that may unwind: an allocation found, recorded
/// (`Pool::record`) and counted, not yet published; dropped by an unwind, it clears its
/// metadata, uncounts it and gives the run back. No release can claim it meanwhile.
struct Unpublished<'a> {
    swiotlb: &'a Swiotlb,
    dev: &'a Device,
    pool: PoolAt<'a>,
    s: usize,
    nslots: usize,
}

impl Drop for Unpublished<'_> {
    fn drop(&mut self) {
        self.swiotlb
            .unpublish(self.dev, self.pool, self.s, self.nslots);
    }
}

/// Whether `map` and `unmap` take their fast paths: always, except in the tests that run the
/// general paths alone to compare them (a switch of the calling thread).
#[cfg(any(not(test), loom))]
#[inline(always)]
fn fast_paths() -> bool {
    true
}

#[cfg(all(test, not(loom)))]
use fast_path_tests::fast_paths;

/// Check that `[addr, addr + size)` lies inside one live mapping of `pool`, starting in any of
/// its slots; returns the original address of `addr`.
fn mapped_range(pool: &Pool, addr: u64, size: usize) -> Result<u64, Error> {
    let (orig, meta) = pool.meta(pool.slot_of(addr));
    let m = match meta {
        Some(m) if orig != INVALID_PHYS_ADDR => m,
        _ => return Err(Error::NotMapped { addr }),
    };
    let x = (addr & (IO_TLB_SIZE as u64 - 1)) as usize;
    // Before the mapping's first byte, or past its end.
    if (m.head && x < m.in_off) || x >= m.alloc_size || size > m.alloc_size - x {
        return Err(Error::OutOfRange { addr, size });
    }
    // The signed in-slot delta: negative inside the first in_off bytes of a later slot.
    Ok(orig.wrapping_add(x as u64).wrapping_sub(m.in_off as u64))
}

/// The weakened form of `swiotlb.transient.grace` (never taken in normal builds): the pool
/// is overwritten at once, as an immediate free would, and parked so no real memory is reused.
fn free_without_grace(p: *mut Pool) {
    use dma_sync::rcu::Retire;
    // SAFETY: unlinked and owned by the caller; leaked afterwards, never freed twice.
    let mut pool = unsafe { Box::from_raw(p) };
    pool.poison();
    Box::leak(pool);
}

#[cfg(all(test, not(loom)))]
mod fast_path_tests;

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::{
        Config, Device, DeviceConfig, Direction, Error, MapAttrs, OrigMemory, ProcessMemory,
        RegionMemory, Swiotlb,
    };

    const NONE: MapAttrs = MapAttrs {
        alloc_align_mask: 0,
        skip_cpu_sync: false,
        zero_padding: false,
    };

    /// The unsafe paths end to end (run under Miri): copies both ways, partial syncs, a
    /// transient pool retired through RCU, growth, and drops of devices and instances that
    /// still own pools.
    #[test]
    fn copies_transients_growth_and_drops() {
        // Miri cannot ask the kernel for the CPU.
        dma_sync::cpu::set_current(Some(0));
        let mem = RegionMemory::new(64 * 1024);
        let base = mem.base();
        let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
        let dev = swiotlb.device(DeviceConfig {
            min_align_mask: 0xFFF,
            ..Default::default()
        });
        swiotlb.memory().write(base + 0xA00, &[5; 3000]).unwrap();
        let a = swiotlb
            .map(&dev, base + 0xA00, 3000, Direction::Bidirectional, NONE)
            .unwrap();
        swiotlb.write_bounce(&dev, a + 2000, &[6; 1000]).unwrap();
        swiotlb
            .sync_for_cpu(&dev, a + 2000, 1000, Direction::Bidirectional)
            .unwrap();
        let mut back = [0u8; 3000];
        swiotlb.memory().read(base + 0xA00, &mut back).unwrap();
        assert!(back[..2000].iter().all(|&b| b == 5) && back[2000..].iter().all(|&b| b == 6));
        // Fill the pool; the next mapping gets a transient pool, freed at unmap.
        let other = swiotlb.device(DeviceConfig::default());
        let hogs: Vec<u64> = (0..5)
            .map(|_| {
                swiotlb
                    .map(&other, base, 2048, Direction::ToDevice, NONE)
                    .unwrap()
            })
            .collect();
        let t = swiotlb
            .map(&dev, base + 0x4800, 2048, Direction::FromDevice, NONE)
            .unwrap();
        assert!(swiotlb.find_pool(&dev, t).unwrap().transient);
        swiotlb
            .unmap(&dev, t, 2048, Direction::FromDevice, NONE)
            .unwrap();
        assert_eq!(dev.transient_pools(), 0);
        // A transient pool still owned when its device is dropped.
        let leak = swiotlb
            .map(&dev, base + 0x5000, 100, Direction::ToDevice, NONE)
            .unwrap();
        assert!(swiotlb.is_bounce_buffer(&dev, leak));
        swiotlb.grow_by(8).unwrap();
        let g = swiotlb
            .map(&other, base, 8 * 2048, Direction::ToDevice, NONE)
            .unwrap();
        assert!(!swiotlb.find_pool(&other, g).unwrap().transient);
        for h in hogs {
            swiotlb
                .unmap(&other, h, 2048, Direction::ToDevice, NONE)
                .unwrap();
        }
        swiotlb
            .unmap(&dev, a, 3000, Direction::Bidirectional, NONE)
            .unwrap();
        drop(dev);
        drop(swiotlb);
    }

    /// A device thread writing and reading its bounce buffer while the CPU syncs both ways
    /// and finally unmaps: a real device does not wait for the CPU, so these safe calls race
    /// on the same bytes. The bytes seen are unspecified; the behaviour must stay defined
    /// (Miri runs this under several seeds and reports any data race).
    #[test]
    fn device_racing_syncs_and_unmap() {
        dma_sync::cpu::set_current(Some(0));
        const LEN: usize = 100;
        let mem = RegionMemory::new(4096);
        let orig = mem.base() + 3; // not word-aligned: partial words at both ends
        let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
        let dev = swiotlb.device(DeviceConfig::default());
        let dir = Direction::Bidirectional;
        let a = swiotlb.map(&dev, orig, LEN, dir, NONE).unwrap();
        let rounds = if cfg!(miri) { 4 } else { 1000 };
        let device = {
            let (swiotlb, dev) = (swiotlb.clone(), dev.clone());
            std::thread::spawn(move || {
                let mut seen = [0u8; LEN];
                for r in 0..rounds {
                    swiotlb
                        .write_bounce(&dev, a + 1, &[r as u8; LEN - 2])
                        .unwrap();
                    swiotlb.read_bounce(&dev, a, &mut seen).unwrap();
                }
            })
        };
        for _ in 0..rounds {
            swiotlb.sync_for_cpu(&dev, a, LEN, dir).unwrap();
            swiotlb.sync_for_device(&dev, a + 5, LEN - 5, dir).unwrap();
        }
        swiotlb.unmap(&dev, a, LEN, dir, NONE).unwrap();
        device.join().unwrap();
        assert_eq!(swiotlb.stats().used, 0);
        swiotlb.check_invariants().unwrap();
    }

    /// One area of 8 slots that never grows (no transient pool either), on CPU 0, with a
    /// device and the base of 64 KiB of original memory.
    fn fixed_pool() -> (Swiotlb, Device, u64) {
        dma_sync::cpu::set_current(Some(0));
        let mem = RegionMemory::new(64 * 1024);
        let base = mem.base();
        let cfg = Config {
            can_grow: false,
            ..Config::tiny(8, 1, 8)
        };
        let swiotlb = Swiotlb::new(cfg, mem).unwrap();
        let dev = swiotlb.device(DeviceConfig::default());
        (swiotlb, dev, base)
    }

    /// An area caches the run freed last for the next map of its size, and gives it back to
    /// its counters when a map needs the slots: a cached run never makes a map fail.
    #[test]
    fn the_run_freed_last_is_reused_and_never_hoarded() {
        const HALF: usize = 4 * 2048;
        let (swiotlb, dev, base) = fixed_pool();
        let map = |len| swiotlb.map(&dev, base, len, Direction::ToDevice, NONE);
        let unmap = |a, len| {
            swiotlb
                .unmap(&dev, a, len, Direction::ToDevice, NONE)
                .unwrap()
        };
        let a = map(HALF).unwrap();
        unmap(a, HALF);
        assert_eq!(map(HALF), Ok(a), "the run just freed serves the same size");
        let b = map(HALF).unwrap();
        // `a` goes to the cache, then back to the counters when `b` takes its place.
        unmap(a, HALF);
        unmap(b, HALF);
        assert_eq!(swiotlb.stats().used, 0, "a cached run is not in use");
        swiotlb.check_invariants().unwrap();
        // The whole pool fits only once the cached run is merged back.
        let all = map(2 * HALF).unwrap();
        assert_eq!(all, a.min(b));
        assert_eq!(map(1), Err(Error::NoSpace { size: 1 }));
        unmap(all, 2 * HALF);
        // A cached run of another size (the whole pool): the smaller maps that follow find
        // no free counter, so the first one merges the cached run back.
        let c = map(HALF).unwrap();
        let d = map(HALF).unwrap();
        assert_eq!((c, d), (all, all + HALF as u64));
        assert_eq!(map(1), Err(Error::NoSpace { size: 1 }));
        unmap(c, HALF);
        unmap(d, HALF);
        assert_eq!(swiotlb.stats().used, 0);
        swiotlb.check_invariants().unwrap();
    }

    /// A thread's unmap caches its run for the thread's next map of that size; the run is not
    /// in use, and a map on another thread that needs its slots drains it.
    #[test]
    fn a_run_cached_by_another_thread_is_drained_when_a_map_needs_it() {
        const ALL: usize = 8 * 2048;
        let (swiotlb, dev, base) = fixed_pool();
        let map = |len| swiotlb.map(&dev, base, len, Direction::ToDevice, NONE);
        let unmap = |a, len| swiotlb.unmap(&dev, a, len, Direction::ToDevice, NONE);
        std::thread::scope(|s| {
            s.spawn(|| {
                let a = map(ALL).unwrap();
                unmap(a, ALL).unwrap();
                assert_eq!(map(ALL), Ok(a), "the thread's own cached run");
                unmap(a, ALL).unwrap();
            });
        });
        let stats = swiotlb.stats();
        assert_eq!((stats.used, &stats.pools[0].area_used[..]), (0, &[0][..]));
        swiotlb.check_invariants().unwrap();
        // The whole pool is in the other thread's cache: this map drains it.
        let b = map(2048).unwrap();
        assert_eq!(swiotlb.stats().used, 1);
        unmap(b, 2048).unwrap();
        assert_eq!(unmap(b, 2048), Err(Error::NotMapped { addr: b }));
        // Cached here now; the whole pool fits once more.
        let all = map(ALL).unwrap();
        assert_eq!(map(1), Err(Error::NoSpace { size: 1 }));
        unmap(all, ALL).unwrap();
        assert_eq!(swiotlb.stats().used, 0);
        swiotlb.check_invariants().unwrap();
    }

    #[test]
    fn process_memory_round_trip() {
        dma_sync::cpu::set_current(Some(1));
        let mut buf = vec![3u8; 4096];
        let addr = buf.as_mut_ptr() as usize as u64;
        // SAFETY: only addresses inside `buf`, which outlives the instance's use of them.
        let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), unsafe { ProcessMemory::new() }).unwrap();
        let dev = swiotlb.device(DeviceConfig::default());
        let a = swiotlb
            .map(&dev, addr, 4096, Direction::FromDevice, NONE)
            .unwrap();
        swiotlb.write_bounce(&dev, a + 10, &[9; 10]).unwrap();
        swiotlb
            .unmap(&dev, a, 4096, Direction::FromDevice, NONE)
            .unwrap();
        // Empty accesses touch nothing, whatever the address.
        // SAFETY: no access has a byte to touch.
        let mem = unsafe { ProcessMemory::new() };
        mem.read(0, &mut []).unwrap();
        mem.write(0, &[]).unwrap();
        drop(swiotlb);
        assert!(buf[10..20].iter().all(|&b| b == 9) && buf[..10].iter().all(|&b| b == 3));
    }
}
