//! A device's view of the allocator: its masks, its sticky flag and its transient pools.
//!
//! # Limits
//!
//! `DeviceConfig::validate`: `min_align_mask` of the form 2^k − 1 up to `MAX_MIN_ALIGN_MASK` =
//! 64 KiB − 1 (higher offset bits could not be reproduced in a transient pool, which is only
//! 64 KiB-aligned), `seg_boundary_mask` of the form 2^k − 1 and at least one slot.
//!
//! # The per-device flag
//!
//! The fix "swiotlb: fix the check whether a device has used software IO TLB", in C11. Map, after
//! every successful search: the flag store (Relaxed, skipped if already set: the flag is sticky;
//! `swiotlb.flag.set`), then, once the mapping is filled and published, `fence(Release)`
//! (`swiotlb.flag.fence`, the kernel's `smp_mb`).
//! Lookup: `fence(Acquire)` (`swiotlb.lookup.rmb`, the kernel's `smp_rmb`), a Relaxed flag load,
//! then the list walks. The mapper's fence orders its reads of the pool lists and its flag store
//! before the caller hands the address on through its own memory; the receiver's fence orders
//! that hand-off before its flag and list reads. In C11 a release fence suffices, since it also
//! orders the earlier list reads and happens-before is transitive; LKMM's `smp_wmb` would not
//! (it is not A-cumulative). The fence is issued on every map, not only on the flag's first
//! store: with the flag already set, the pool the map found may have been published since, and
//! only the fence carries that publication to the receiver (model `new_pool_flag_already_set`
//! and its twin). On x86 a release fence is no instruction; the SeqCst fence it replaced was one
//! locked operation per map.
//!
//! # The transient list
//!
//! Link at the head and unlink under the device lock with release stores
//! (`swiotlb.transient.link`); walks use acquire loads (`swiotlb.transient.traverse`) under an
//! RCU pin (`swiotlb.lookup.pin`). The unlink's release matters when it unlinks the head: it
//! writes `transients` = the successor, which another thread may have built, and a walker
//! reading that store sees the successor through nothing else when the unmapper issued no
//! fence since it learnt of it (its lookup's pin nested in a read section of the caller's, or
//! the address guessed rather than handed over; model `transient_unlink_head`). Linux's `list_del_rcu` writes it with a plain
//! store and relies on `rcu_dereference`'s address dependency, which C11 acquire lacks.
//! (Unlinking another pool needs no release: a walker reached its predecessor through the
//! head's acquire, which comes after the successor's link under the lock.) An
//! unlinked pool is retired through `defer_retire` and freed after a grace period
//! (`swiotlb.transient.grace`). A lookup that finds a transient pool keeps the pin in the
//! returned reference for the whole operation (unmap, sync, device access). A map
//! that creates a transient pool pins before building it and keeps the pin until it returns: any
//! thread may unmap the new address (guessed, or handed over early) before the map has copied
//! into the pool, and the grace period then waits for the map. Pinning before the pool is built
//! keeps the pin's own fences from standing in for the link's release in the loom models. A
//! lookup skips the pin when the device's list is empty (a Relaxed check, ordered by the lookup
//! fence).

use crate::points::{TRANSIENT_LINK, TRANSIENT_TRAVERSE};
use crate::pool::Pool;
use dma_sync::atomic::{
    AtomicBool, AtomicPtr,
    Ordering::{Acquire, Relaxed, Release},
};
use dma_sync::rcu::Guard;
use dma_sync::{Arc, Mutex};

/// Constraints of a device on its bounce addresses.
///
/// ```
/// let nvme = swiotlb_core::DeviceConfig { min_align_mask: 0xFFF, ..Default::default() };
/// assert_eq!(nvme.dma_mask, u64::MAX);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Offset bits of the original address the bounce address keeps (NVMe: 0xFFF).
    pub min_align_mask: u64,
    /// No mapping crosses a `seg_boundary_mask + 1` boundary (all ones: unbounded).
    pub seg_boundary_mask: u64,
    /// Highest address the device can reach.
    pub dma_mask: u64,
}

/// Smallest segment boundary a device may declare (`seg_boundary_mask`): one slot.
pub const MIN_SEG_BOUNDARY_MASK: u64 = crate::IO_TLB_SIZE as u64 - 1;
/// Largest `min_align_mask`: the pool alignment less one. Offset bits above it could not be
/// reproduced in a transient pool, which is only `POOL_ALIGN`-aligned.
pub const MAX_MIN_ALIGN_MASK: u64 = crate::POOL_ALIGN as u64 - 1;

impl DeviceConfig {
    /// Check the masks: `min_align_mask` of the form 2^k − 1 up to [`MAX_MIN_ALIGN_MASK`],
    /// `seg_boundary_mask` of the form 2^k − 1 and at least [`MIN_SEG_BOUNDARY_MASK`] (a
    /// boundary inside one slot can never be met). `dma_mask` may be anything: a pool above
    /// it is refused per mapping ([`crate::Error::NotDmaCapable`]).
    ///
    /// ```
    /// use swiotlb_core::DeviceConfig;
    /// assert!(DeviceConfig { min_align_mask: 0xFFF, ..Default::default() }.validate().is_ok());
    /// assert!(DeviceConfig { seg_boundary_mask: 0xFF, ..Default::default() }.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), crate::Error> {
        use crate::align::is_low_mask;
        let why = if !is_low_mask(self.min_align_mask) || self.min_align_mask > MAX_MIN_ALIGN_MASK {
            "min_align_mask must be 2^k - 1 below 64 KiB"
        } else if !is_low_mask(self.seg_boundary_mask)
            || self.seg_boundary_mask < MIN_SEG_BOUNDARY_MASK
        {
            "seg_boundary_mask must be 2^k - 1 of at least one slot"
        } else {
            return Ok(());
        };
        Err(crate::Error::InvalidConfig(why))
    }
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            min_align_mask: 0,
            seg_boundary_mask: u64::MAX,
            dma_mask: u64::MAX,
        }
    }
}

/// A device using a [`crate::Swiotlb`]: cheap to clone (shared handle).
///
/// ```
/// use swiotlb_core::{Config, DeviceConfig, RegionMemory, Swiotlb};
/// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), RegionMemory::new(4096)).unwrap();
/// let dev = swiotlb.device(DeviceConfig::default());
/// assert!(!dev.uses_swiotlb());
/// assert_eq!(dev.transient_pools(), 0);
/// ```
#[derive(Clone, Debug)]
pub struct Device {
    pub(crate) inner: Arc<DeviceInner>,
}

#[derive(Debug)]
pub(crate) struct DeviceInner {
    /// The instance the device belongs to (0: none, its configuration was refused).
    pub(crate) mem_id: usize,
    /// Why the configuration was refused: every operation returns it.
    pub(crate) invalid: Option<crate::Error>,
    pub(crate) cfg: DeviceConfig,
    /// Sticky: set by the first successful map, never cleared.
    pub(crate) uses: AtomicBool,
    /// Writer lock of the transient list.
    lock: Mutex<()>,
    transients: AtomicPtr<Pool>,
}

impl Device {
    pub(crate) fn new(mem_id: usize, cfg: DeviceConfig, invalid: Option<crate::Error>) -> Device {
        Device {
            inner: Arc::new(DeviceInner {
                mem_id,
                invalid,
                cfg,
                uses: AtomicBool::new(false),
                lock: Mutex::new(()),
                transients: AtomicPtr::new(std::ptr::null_mut()),
            }),
        }
    }

    /// The device's constraints.
    pub fn config(&self) -> DeviceConfig {
        self.inner.cfg
    }

    /// Whether the device has ever been given a bounce buffer.
    pub fn uses_swiotlb(&self) -> bool {
        self.inner.uses.load(Relaxed)
    }

    /// Transient pools currently owned by the device.
    pub fn transient_pools(&self) -> usize {
        let _w = self.inner.lock.lock();
        let mut n = 0;
        let mut p = self.inner.transients.load(Relaxed);
        while !p.is_null() {
            n += 1;
            // SAFETY: list members are freed only after unlinking under the lock we hold.
            p = unsafe { &*p }.next.load(Relaxed);
        }
        n
    }
}

impl DeviceInner {
    /// Whether the list may hold pools (Relaxed: the caller's lookup fence orders it).
    pub(crate) fn has_transients(&self) -> bool {
        !self.transients.load(Relaxed).is_null()
    }

    /// Link a transient pool at the head of the list; returns its address.
    pub(crate) fn link(&self, pool: Box<Pool>) -> *mut Pool {
        let p = Box::into_raw(pool);
        // Readers reach it under RCU: loom builds report a free that bypasses the grace period.
        dma_sync::rcu::track(p as *const u8, std::mem::size_of::<Pool>());
        let _w = self.lock.lock();
        // SAFETY: `p` is fresh and not yet shared.
        unsafe { &*p }
            .next
            .store(self.transients.load(Relaxed), Relaxed);
        self.transients.store(p, TRANSIENT_LINK.ord(Release));
        p
    }

    /// Unlink `victim`; false if it is not in the list (already unlinked).
    pub(crate) fn unlink(&self, victim: *const Pool) -> bool {
        let _w = self.lock.lock();
        let mut link = &self.transients;
        loop {
            let p = link.load(Relaxed);
            if p.is_null() {
                return false;
            }
            // SAFETY: members are freed only after unlinking under this lock.
            let pool = unsafe { &*p };
            if std::ptr::eq(p, victim) {
                link.store(pool.next.load(Relaxed), TRANSIENT_LINK.ord(Release));
                return true;
            }
            link = &pool.next;
        }
    }

    /// The transient pool containing `addr`, read under `guard`.
    pub(crate) fn find<'g>(&self, addr: u64, guard: &'g Guard) -> Option<&'g Pool> {
        let mut p = self.transients.load(TRANSIENT_TRAVERSE.ord(Acquire));
        // SAFETY: pools of the list are retired through RCU after unlinking.
        while let Some(pool) = unsafe { guard.deref(p) } {
            if pool.contains(addr) {
                return Some(pool);
            }
            p = pool.next.load(TRANSIENT_TRAVERSE.ord(Acquire));
        }
        None
    }
}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // Pools of mappings never unmapped: nobody can reach them any more.
        let mut p = self.transients.load(Relaxed);
        while !p.is_null() {
            // SAFETY: exclusive access; every member came from `Box::into_raw` in `link`.
            let pool = unsafe { Box::from_raw(p) };
            p = pool.next.load(Relaxed);
        }
    }
}
