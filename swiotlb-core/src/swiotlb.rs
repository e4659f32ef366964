//! The allocator instance: its configuration, the RCU-published list of global pools, growth,
//! transient pools and the lock-free lookup.
//!
//! Global pools are immortal (freed only when the instance is dropped), so a walk of the global
//! list needs no pin; it needs the list pointers' acquire loads, paired with the release that
//! publishes a new pool. Transient pools belong to one device and are freed through RCU, so a
//! walk of a device's list pins.
//!
//! # Geometry
//!
//! `Config::segment_slots` (a power of two ≤ 128) is the segment; areas are whole segments
//! (`nareas` is rounded up to a power of two, then halved until each area has a segment: "small
//! pool, many CPUs"). A transient pool is one area whose segment is the pool, so no counter
//! claims a slot past its end. Tiny configurations (`Config::tiny(8, 2, 4)`) are only
//! configurations of the same code; the loom models use them.
//!
//! # Limits
//!
//! Checked before anything is allocated (`Config::validate`, `DeviceConfig::validate`, typed
//! `InvalidConfig`): `nslabs`, `growth_nslabs` and `grow_by`'s size at most `MAX_NSLABS` = 2^24
//! slots (32 GiB), `nareas` at most `MAX_NAREAS` = 2^16, `segment_slots` a power of two up to 128.
//! `Swiotlb::device` keeps an infallible signature: an invalid device is bound to no instance and
//! every operation refuses it with its `InvalidConfig`; `Swiotlb::try_device` reports it up front.
//!
//! # The global pool list
//!
//! Singly linked; the head is the default pool, a plain field (built before the instance can
//! be shared, never replaced). Growth finds the tail and appends under the instance's writer
//! lock (`swiotlb.pools.append_locked`: search and append in one critical section) with a
//! release store (`swiotlb.pools.publish`); readers follow each `next` link with an acquire
//! load (`swiotlb.pools.traverse`). Global pools are never freed before the instance, so the
//! walk needs no pin.
//!
//! A lookup for a device that never bounced costs one acquire fence and one Relaxed load: the
//! flag check of the device module (see `device`) comes before any list walk.

use crate::align::{self, Masks, Plan};
use crate::device::{Device, DeviceConfig};
use crate::error::Error;
use crate::faults::{DEFAULT_POOL, POOL_GROW, TRANSIENT_POOL};
use crate::memory::{Memory, OrigMemory};
use crate::points::{
    FLAG_FENCE, FLAG_SET, LOOKUP_PIN, LOOKUP_RMB, POOLS_APPEND_LOCKED, POOLS_PUBLISH,
    POOLS_TRAVERSE,
};
use crate::pool::{Geometry, Pool};
use crate::stats::{PoolStats, Stats, StatsSnapshot};
use crate::thread_cache::ThreadCaches;
use crate::{IO_TLB_MIN_SLABS, IO_TLB_SEGSIZE, IO_TLB_SHIFT, POOL_ALIGN};
use dma_sync::atomic::{
    AtomicBool, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use dma_sync::rcu::{self, Guard};
use dma_sync::{Arc, Mutex};
use std::ops::Deref;

/// Most areas a configuration may ask for (the kernel derives them from the CPU count).
pub const MAX_NAREAS: usize = 1 << 16;
/// Largest pool, in slots (32 GiB of bounce memory, 16 B of metadata per slot besides): the
/// bound on what one configuration or one growth step may make the allocator allocate.
pub const MAX_NSLABS: usize = 1 << 24;

/// Thread cache slots of an instance whose default pool has `nareas` areas (one per CPU by
/// default): room for a few threads per CPU, bounded so a drain stays short. Under loom, two:
/// as many as a model has threads that cache, so every slot, the last one a drain visits
/// included, is one a model thread can own (with eight, the models' threads only ever own the
/// first slots, and a drain that skips the last one passes them all).
fn thread_caches(nareas: usize) -> usize {
    if cfg!(loom) {
        2
    } else {
        (4 * nareas).clamp(8, 1024)
    }
}

/// Configuration of a [`Swiotlb`] instance.
///
/// ```
/// use swiotlb_core::Config;
/// let c = Config { nslabs: 1024, nareas: 4, ..Config::default() };
/// assert!(c.can_grow);
/// let r = Config::restricted(512);
/// assert!(r.for_alloc && !r.can_grow);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Slots of the default pool (rounded up to whole areas of whole segments).
    pub nslabs: usize,
    /// Areas (per-CPU locks) of the default pool; 0: one per CPU. Rounded up to a power of
    /// two, then reduced so each area holds at least one segment.
    pub nareas: usize,
    /// Slots per segment, the longest run: a power of two up to 128. Small values give tiny
    /// pools for model checking.
    pub segment_slots: usize,
    /// Whether the allocator may add memory when no slot fits (transient pools, growth).
    pub can_grow: bool,
    /// Whether a failed search allocates a transient pool for the one mapping.
    pub transient_pools: bool,
    /// Whether a failed search starts a background thread that adds a pool.
    pub background_growth: bool,
    /// Slots of a pool added by growth (0: `nslabs`); halved on failure down to 512.
    pub growth_nslabs: usize,
    /// Highest address a pool may occupy.
    pub phys_limit: u64,
    /// Whether to keep the high-water mark ([`StatsSnapshot::hiwater`]). It needs the total
    /// of used slots at every instant, so each map and unmap then updates one instance-wide
    /// counter (and a map that raises the mark, the mark too): the only shared writes of the
    /// fast path besides the area lock. A per-area count would not do: the sum of per-area
    /// peaks reached at different times overstates the real peak. Off, the map and unmap paths
    /// write only per-area state and `hiwater` is `None`; `used` is exact either way (the sum
    /// of the per-area counts). Off by default, so the default fast path makes no shared
    /// write; turn it on to read the mark (as the kernel keeps it only in its debugfs build).
    pub stats: bool,
    /// Whether the instance serves [`Swiotlb::alloc`] (a restricted pool).
    pub for_alloc: bool,
    /// Whether each thread keeps the run its last unmap freed for its next map of that size
    /// (module `thread_cache`): a map+unmap loop then takes no lock. Off, every map and unmap
    /// takes its area's lock, as in Linux.
    pub thread_caches: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nslabs: crate::IO_TLB_DEFAULT_SIZE >> IO_TLB_SHIFT,
            nareas: 0,
            segment_slots: IO_TLB_SEGSIZE,
            can_grow: true,
            transient_pools: true,
            background_growth: true,
            growth_nslabs: 0,
            phys_limit: u64::MAX,
            stats: false,
            for_alloc: false,
            thread_caches: true,
        }
    }
}

impl Config {
    /// Check every count against its documented maximum: `nslabs` in 1..=[`MAX_NSLABS`],
    /// `nareas` at most [`MAX_NAREAS`], `segment_slots` a power of two up to
    /// [`crate::IO_TLB_SEGSIZE`], `growth_nslabs` at most [`MAX_NSLABS`]. [`Swiotlb::new`]
    /// calls it before it allocates anything.
    ///
    /// ```
    /// use swiotlb_core::{Config, Error, MAX_NSLABS};
    /// assert_eq!(Config::default().validate(), Ok(()));
    /// let huge = Config { growth_nslabs: MAX_NSLABS + 1, ..Config::default() };
    /// assert!(matches!(huge.validate(), Err(Error::InvalidConfig(_))));
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        let why = if !self.segment_slots.is_power_of_two() || self.segment_slots > IO_TLB_SEGSIZE {
            "segment_slots must be a power of two up to 128"
        } else if self.nslabs == 0 || self.nslabs > MAX_NSLABS {
            "nslabs must be in 1..=2^24"
        } else if self.nareas > MAX_NAREAS {
            "nareas must be at most 65536"
        } else if self.growth_nslabs > MAX_NSLABS {
            "growth_nslabs must be at most 2^24"
        } else {
            return Ok(());
        };
        Err(Error::InvalidConfig(why))
    }

    /// A restricted pool: one fixed region for one device, one area, never growing, serving
    /// allocations as well as mappings.
    pub fn restricted(nslabs: usize) -> Config {
        Config {
            nslabs,
            nareas: 1,
            can_grow: false,
            transient_pools: false,
            background_growth: false,
            for_alloc: true,
            ..Config::default()
        }
    }

    /// A small geometry for tests and models: `nslabs` slots in `nareas` areas of segments of
    /// `segment_slots`, growth by explicit [`Swiotlb::grow_by`] only, transient pools on.
    ///
    /// ```
    /// use swiotlb_core::{Config, RegionMemory, Swiotlb};
    /// let swiotlb = Swiotlb::new(Config::tiny(16, 2, 4), RegionMemory::new(64)).unwrap();
    /// assert_eq!(swiotlb.segment_slots(), 4);
    /// assert_eq!(swiotlb.stats().pools[0].area_used, [0, 0]); // two areas of 8 slots
    /// assert!(!swiotlb.growth_in_progress()); // no background worker in tiny configurations
    /// ```
    pub fn tiny(nslabs: usize, nareas: usize, segment_slots: usize) -> Config {
        Config {
            nslabs,
            nareas,
            segment_slots,
            background_growth: false,
            growth_nslabs: nslabs,
            ..Config::default()
        }
    }
}

/// Where a bounce address lives: the answer of [`Swiotlb::find_pool`] (example there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolInfo {
    /// First bounce address of the pool.
    pub start: u64,
    /// One past its last bounce address.
    pub end: u64,
    /// Slots.
    pub nslabs: usize,
    /// Areas.
    pub nareas: usize,
    /// Whether it is a device's transient pool.
    pub transient: bool,
}

/// A bounce-buffer allocator: cheap to clone (shared handle). See the crate documentation.
///
/// Clones share the pools and the statistics, so threads (or the device and driver sides of
/// a simulation) each hold their own handle.
///
/// ```
/// use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};
/// let mem = RegionMemory::new(4096);
/// let orig = mem.base();
/// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
/// let dev = swiotlb.device(DeviceConfig::default());
/// let driver = {
///     let (swiotlb, dev) = (swiotlb.clone(), dev.clone());
///     let attrs = MapAttrs::default();
///     std::thread::spawn(move || swiotlb.map(&dev, orig, 512, Direction::ToDevice, attrs))
/// };
/// let a = driver.join().unwrap().unwrap();
/// assert!(swiotlb.is_bounce_buffer(&dev, a)); // mapped through the clone, found through this one
/// assert_eq!(swiotlb.stats().used, 1);
/// ```
#[derive(Clone)]
pub struct Swiotlb {
    pub(crate) inner: Arc<MemInner>,
}

pub(crate) struct MemInner {
    /// The instance's name (`dma_sync::thread::unique`), which its devices carry: a device of
    /// a dropped instance stays foreign to one allocated at the same address.
    id: usize,
    pub(crate) cfg: Config,
    /// Geometry of the default pool (its area count bounds every pool's).
    geo: Geometry,
    /// Head of the global pool list: the default pool. Built before the instance can be
    /// shared and never replaced (growth appends at the tail), so it needs no atomic.
    head: Box<Pool>,
    /// Writer lock of the global list (holds the number of pools).
    writer: Mutex<usize>,
    nslabs: AtomicUsize,
    growing: AtomicBool,
    pub(crate) memory: Memory,
    pub(crate) stats: Stats,
    /// Each thread's last freed run of a global pool (module `thread_cache`).
    pub(crate) caches: ThreadCaches,
}

impl std::fmt::Debug for Swiotlb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swiotlb")
            .field("cfg", &self.inner.cfg)
            .field("geometry", &self.inner.geo)
            .finish()
    }
}

/// A pool found by a search or lookup; a transient one is kept alive by the pin it holds.
pub(crate) struct PoolRef<'a> {
    pool: &'a Pool,
    pub(crate) guard: Option<Guard>,
}

impl Deref for PoolRef<'_> {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        self.pool
    }
}

impl PoolRef<'_> {
    /// The pool and its pin, borrowed.
    #[inline(always)]
    pub(crate) fn at(&self) -> PoolAt<'_> {
        PoolAt {
            pool: self.pool,
            pin: self.guard.as_ref(),
        }
    }
}

/// A pool and the pin that keeps it alive if it is transient, borrowed: what map and unmap
/// pass on. It has no drop glue, so the fast paths, which reach a global pool (no pin), keep
/// it in registers across calls instead of in memory for an unwind's landing pad.
#[derive(Clone, Copy)]
pub(crate) struct PoolAt<'a> {
    pub(crate) pool: &'a Pool,
    pub(crate) pin: Option<&'a Guard>,
}

impl<'a> PoolAt<'a> {
    /// A global pool (alive as long as its instance: no pin).
    #[inline(always)]
    pub(crate) fn global(pool: &'a Pool) -> PoolAt<'a> {
        PoolAt { pool, pin: None }
    }
}

impl Deref for PoolAt<'_> {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        self.pool
    }
}

/// Iterator over the global pools (acquire loads: pairs with the publication).
struct Pools<'a> {
    next: *const Pool,
    _mem: &'a MemInner,
}

impl<'a> Iterator for Pools<'a> {
    type Item = &'a Pool;
    fn next(&mut self) -> Option<&'a Pool> {
        // SAFETY: global pools are freed only when the instance is dropped.
        let pool = unsafe { self.next.as_ref() }?;
        self.next = pool.next.load(POOLS_TRAVERSE.ord(Acquire));
        Some(pool)
    }
}

impl Swiotlb {
    /// Build an instance with its default pool, copying to and from `memory`.
    ///
    /// ```
    /// use swiotlb_core::{Config, Error, RegionMemory, Swiotlb};
    /// let swiotlb = Swiotlb::new(Config::tiny(256, 2, 128), RegionMemory::new(4096)).unwrap();
    /// assert_eq!(swiotlb.stats().nslabs, 256);
    /// let bad = Config { segment_slots: 3, ..Config::default() };
    /// assert!(matches!(Swiotlb::new(bad, RegionMemory::new(1)), Err(Error::InvalidConfig(_))));
    /// ```
    pub fn new(cfg: Config, memory: impl OrigMemory + 'static) -> Result<Swiotlb, Error> {
        cfg.validate()?;
        let nareas = if cfg.nareas == 0 {
            dma_sync::cpu::count().min(MAX_NAREAS)
        } else {
            cfg.nareas
        };
        let geo = Geometry::new(cfg.nslabs, nareas, cfg.segment_slots);
        let pool = Pool::new(geo, false, cfg.phys_limit, &DEFAULT_POOL)?;
        let id = dma_sync::thread::unique();
        Ok(Swiotlb {
            inner: Arc::new(MemInner {
                id,
                stats: Stats::new(cfg.stats),
                geo,
                head: pool,
                writer: Mutex::new(1),
                nslabs: AtomicUsize::new(geo.nslabs),
                growing: AtomicBool::new(false),
                memory: Memory::new(memory),
                caches: ThreadCaches::new(if cfg.thread_caches {
                    thread_caches(geo.nareas)
                } else {
                    0
                }),
                cfg,
            }),
        })
    }

    /// The configuration this instance was built with.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The segment size in slots (the longest run).
    pub fn segment_slots(&self) -> usize {
        self.inner.geo.seg
    }

    /// A new device handle bound to this instance.
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, RegionMemory, Swiotlb};
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), RegionMemory::new(64)).unwrap();
    /// let dev = swiotlb.device(DeviceConfig { min_align_mask: 0xFFF, ..Default::default() });
    /// assert_eq!(dev.config().min_align_mask, 0xFFF);
    /// ```
    pub fn device(&self, cfg: DeviceConfig) -> Device {
        match cfg.validate() {
            Ok(()) => Device::new(self.id(), cfg, None),
            // Bound to no instance: every operation refuses it with the reason.
            Err(e) => Device::new(0, cfg, Some(e)),
        }
    }

    /// A new device handle, or the reason its configuration is refused
    /// ([`DeviceConfig::validate`]). [`Swiotlb::device`] accepts any configuration and
    /// reports an invalid one at the device's first operation instead.
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(4096);
    /// let orig = mem.base();
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
    /// let odd = DeviceConfig { min_align_mask: 0x1234, ..Default::default() };
    /// assert!(matches!(swiotlb.try_device(odd), Err(Error::InvalidConfig(_))));
    /// let dev = swiotlb.device(odd);
    /// let refused = swiotlb.map(&dev, orig, 8, Direction::ToDevice, MapAttrs::default());
    /// assert!(matches!(refused, Err(Error::InvalidConfig(_))));
    /// assert_eq!(swiotlb.stats().used, 0);
    /// ```
    pub fn try_device(&self, cfg: DeviceConfig) -> Result<Device, Error> {
        cfg.validate()?;
        Ok(Device::new(self.id(), cfg, None))
    }

    /// The original memory the instance copies to and from.
    pub fn memory(&self) -> &dyn OrigMemory {
        self.inner.memory.as_dyn()
    }

    fn id(&self) -> usize {
        self.inner.id
    }

    pub(crate) fn check_device(&self, dev: &Device) -> Result<(), Error> {
        if dev.inner.mem_id == self.id() {
            Ok(())
        } else if let Some(e) = &dev.inner.invalid {
            Err(e.clone())
        } else {
            Err(Error::ForeignDevice)
        }
    }

    /// The largest mapping `dev` can always get: one segment minus the offset bits its
    /// `min_align_mask` may have to reproduce (252 KiB for NVMe's 0xFFF).
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, RegionMemory, Swiotlb};
    /// let swiotlb = Swiotlb::new(Config::tiny(128, 1, 128), RegionMemory::new(64)).unwrap();
    /// let nvme = swiotlb.device(DeviceConfig { min_align_mask: 0xFFF, ..Default::default() });
    /// assert_eq!(swiotlb.max_mapping_size(&nvme), 252 * 1024);
    /// ```
    pub fn max_mapping_size(&self, dev: &Device) -> usize {
        align::max_mapping_size(self.inner.geo.seg, dev.inner.cfg.min_align_mask)
    }

    fn pools(&self) -> Pools<'_> {
        Pools {
            next: &*self.inner.head,
            _mem: &self.inner,
        }
    }

    /// The constraints of a request of `dev` with allocation alignment `alloc_align`.
    #[inline(always)]
    fn masks(dev: &Device, alloc_align: u64) -> Masks {
        let c = &dev.inner.cfg;
        Masks {
            min_align: c.min_align_mask,
            alloc_align,
            boundary: c.seg_boundary_mask,
        }
    }

    /// The search request of a simple map (module `align`: the common streaming map, an
    /// IOMMU's bounce of whole granules); `None` for any other, which [`Swiotlb::plan`]
    /// derives (and refuses, if it must). Where both answer they give the same plan.
    #[inline(always)]
    pub(crate) fn simple_plan(
        &self,
        dev: &Device,
        orig: u64,
        size: usize,
        alloc_align: u64,
    ) -> Option<Plan> {
        let m = Self::masks(dev, alloc_align);
        // A map rounds its size to the alignment; a simple one is within a map's bound on it.
        align::simple(Some(orig), size, m, true, self.inner.geo.seg)
    }

    /// Derive the search request of a map or alloc.
    #[inline]
    pub(crate) fn plan(
        &self,
        dev: &Device,
        orig: Option<u64>,
        size: usize,
        alloc_align: u64,
        for_alloc: bool,
    ) -> Result<Plan, Error> {
        let m = Self::masks(dev, alloc_align);
        let max_align = if for_alloc {
            u64::MAX
        } else {
            POOL_ALIGN as u64 - 1
        };
        align::plan(orig, size, m, !for_alloc, max_align, self.inner.geo.seg)
    }

    /// Find and allocate slots for `plan`: the calling thread's cached run (unless
    /// `try_cache` is false: the caller tried it already), every pool's local area, then the
    /// other areas, then (if allowed) growth and a transient pool. On success the allocation
    /// is recorded (`Pool::record`) and counted ([`Swiotlb::found`]); the caller publishes it.
    // Inlined into map: returned out of line, the pool reference and slot went through the
    // stack in pieces and were reloaded whole (a store-forwarding stall on every map).
    #[inline(always)]
    pub(crate) fn find_slots<'a>(
        &'a self,
        dev: &'a Device,
        plan: &Plan,
        try_cache: bool,
    ) -> Result<(PoolRef<'a>, usize), Error> {
        // The cached run is matched apart: merged into one `Option` with the searches, it
        // went through the stack on every map.
        let cached = if try_cache {
            self.take_cached(plan)
        } else {
            None
        };
        let (pool, s) = match cached {
            Some((pool, s)) => (PoolRef { pool, guard: None }, s),
            None => self.search(dev, plan)?,
        };
        self.found(dev, &pool, plan.nslots);
        Ok((pool, s))
    }

    /// Count an allocation of `nslots` just found in `pool` for `dev` and set the device's
    /// flag; the map issues the release fence ([`Swiotlb::handed_on`]) once it has published
    /// the mapping.
    #[inline(always)]
    pub(crate) fn found(&self, dev: &Device, pool: &Pool, nslots: usize) {
        if self.inner.stats.enabled() {
            self.inner.stats.add_used(pool.accounted_slots(nslots));
        }
        let d = &dev.inner;
        if FLAG_SET.on() && !d.uses.load(Relaxed) {
            d.uses.store(true, Relaxed);
        }
    }

    /// The release fence of a map (or alloc) that published its mapping, before the caller
    /// can hand the address on: a thread that receives it through the caller's memory finds
    /// the pool, the device's flag and the mapping (model `transient_unlink_head`).
    #[inline(always)]
    pub(crate) fn handed_on() {
        // Every map, not only the flag's first store: the pool found may be one published
        // since. A release fence suffices in C11 (it orders the earlier list reads too, and
        // happens-before is transitive; LKMM needs the kernel's smp_mb), and costs no
        // instruction on x86.
        FLAG_FENCE.fence(Release);
    }

    /// The calling thread's cached run, if it has `plan`'s slots and qualifies for it (the
    /// alignment and boundary checks a search makes), with the mapping recorded.
    // Inlined into map as `find_slots` is: out of line it cost a prologue, an epilogue and an
    // `Option` returned through the stack on every map.
    #[inline(always)]
    pub(crate) fn take_cached(&self, plan: &Plan) -> Option<(&Pool, usize)> {
        let run = self
            .inner
            .caches
            .take(plan.nslots, |pool, s| pool.qualifies(s, plan))?;
        run.pool.record(run.start, plan);
        Some((run.pool, run.start))
    }

    /// Search for `plan` everywhere but the calling thread's cache: the global pools, again
    /// after draining every cache, then a transient pool. Inlined into map as `find_slots` is
    /// (out of line, the locked path of a thread without a cache slot paid the stall).
    #[inline(always)]
    fn search<'a>(&'a self, dev: &'a Device, plan: &Plan) -> Result<(PoolRef<'a>, usize), Error> {
        self.search_global(plan)
            .or_else(|| self.drain_and_search(plan))
            .or_else(|| self.search_transient(dev, plan))
            .ok_or(Error::NoSpace {
                size: plan.mapping_size,
            })
    }

    /// Give every thread's cached run back to its area and search again: a cached run never
    /// turns a fitting map into `NoSpace`.
    #[cold]
    #[inline(never)]
    fn drain_and_search(&self, plan: &Plan) -> Option<(PoolRef<'_>, usize)> {
        let drained = self
            .inner
            .caches
            .drain(|run| run.pool.put_back(run.start, run.nslots));
        if drained {
            self.search_global(plan)
        } else {
            None
        }
    }

    #[inline]
    fn search_global(&self, plan: &Plan) -> Option<(PoolRef<'_>, usize)> {
        let cpu = dma_sync::cpu::current();
        for off in 0..self.inner.geo.nareas {
            for pool in self.pools() {
                if off >= pool.geo.nareas {
                    continue;
                }
                let a = (cpu + off) & (pool.geo.nareas - 1);
                if let Some(s) = pool.try_area(a, plan) {
                    return Some((PoolRef { pool, guard: None }, s));
                }
            }
        }
        None
    }

    #[cold]
    #[inline(never)]
    fn search_transient<'a>(
        &'a self,
        dev: &'a Device,
        plan: &Plan,
    ) -> Option<(PoolRef<'a>, usize)> {
        let cfg = &self.inner.cfg;
        if !cfg.can_grow {
            return None;
        }
        if cfg.background_growth {
            self.kick_growth();
        }
        if !cfg.transient_pools {
            return None;
        }
        // Just big enough: the run plus the slots needed to reach an address matching the
        // original's `mmask` bits (pools are POOL_ALIGN-aligned).
        let lead = plan.orig.map_or(0, |o| {
            ((o & plan.mmask & (POOL_ALIGN as u64 - 1)) >> IO_TLB_SHIFT) as usize
        });
        let nslabs = plan.nslots + lead;
        let geo = Geometry::new(nslabs, 1, nslabs);
        let limit = dev.inner.cfg.dma_mask.min(cfg.phys_limit);
        // Pinned before the pool becomes reachable: a racing unmap of the new address (any
        // thread may guess it) can unlink and retire the pool before this map returns, and the
        // grace period must then wait for the map's copy into it. Pinned before the pool is
        // even built, so the pin's own synchronisation cannot stand in for the link's release.
        let guard = rcu::pin();
        // No memory: the search fails ("buffer full"); nothing was linked or counted yet.
        let pool = Pool::new(geo, true, limit, &TRANSIENT_POOL).ok()?;
        let s = pool.try_area(0, plan)?;
        self.inner.stats.transient_added(geo.nslabs);
        let p = dev.inner.link(pool);
        // SAFETY: retired only after unlinking, which follows the link; `guard`, pinned before
        // it and owned by the returned value, keeps the pool from being freed while used.
        let pool = unsafe { &*p };
        Some((
            PoolRef {
                pool,
                guard: Some(guard),
            },
            s,
        ))
    }

    /// Start the background worker that adds a pool, unless one is running.
    fn kick_growth(&self) {
        if self.inner.growing.swap(true, Relaxed) {
            return;
        }
        let me = self.clone();
        dma_sync::thread::spawn(move || {
            // Failure shows as the next search failing again, which kicks the worker again.
            let _ = me.grow();
            me.inner.growing.store(false, Relaxed);
        });
    }

    /// Whether the background worker is adding a pool.
    pub fn growth_in_progress(&self) -> bool {
        self.inner.growing.load(Relaxed)
    }

    /// Add one pool of `growth_nslabs` slots (halved on failure down to 512 or the configured
    /// size), as the background worker does. Returns the slots added.
    ///
    /// ```
    /// use swiotlb_core::{Config, RegionMemory, Swiotlb};
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), RegionMemory::new(64)).unwrap();
    /// assert_eq!(swiotlb.grow().unwrap(), 8);
    /// assert_eq!(swiotlb.stats().nslabs, 16);
    /// ```
    pub fn grow(&self) -> Result<usize, Error> {
        let cfg = &self.inner.cfg;
        let want = if cfg.growth_nslabs == 0 {
            cfg.nslabs
        } else {
            cfg.growth_nslabs
        };
        let floor = want.min(IO_TLB_MIN_SLABS);
        let mut n = want;
        loop {
            match self.grow_by(n) {
                Err(Error::PoolAlloc { .. }) if n / 2 >= floor => {
                    n = (n / 2).next_multiple_of(self.inner.geo.seg).max(floor);
                }
                r => return r,
            }
        }
    }

    /// Add one global pool of (at least) `nslabs` slots with the default area count, limited
    /// to whole segments; it is published to lock-free readers. Returns the slots added.
    ///
    /// ```
    /// use swiotlb_core::{Config, Error, RegionMemory, Swiotlb};
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), RegionMemory::new(64)).unwrap();
    /// assert_eq!(swiotlb.grow_by(12), Ok(16)); // rounded up to whole segments of 8
    /// assert_eq!(swiotlb.stats().pools.len(), 2);
    /// let fixed = Swiotlb::new(Config::restricted(128), RegionMemory::new(64)).unwrap();
    /// assert_eq!(fixed.grow_by(8), Err(Error::GrowthDisabled));
    /// ```
    pub fn grow_by(&self, nslabs: usize) -> Result<usize, Error> {
        if !self.inner.cfg.can_grow {
            return Err(Error::GrowthDisabled);
        }
        if nslabs == 0 || nslabs > MAX_NSLABS {
            return Err(Error::InvalidConfig("a pool has 1..=2^24 slots"));
        }
        let geo = Geometry::new(nslabs, self.inner.geo.nareas, self.inner.geo.seg);
        // No memory: the error returns before the list is touched.
        let pool = Pool::new(geo, false, self.inner.cfg.phys_limit, &POOL_GROW)?;
        let pool = Box::into_raw(pool);
        let mut writer = Some(self.inner.writer.lock());
        let mut tail: *const Pool = &*self.inner.head;
        loop {
            // SAFETY: global pools are immortal; the writer lock orders us after every append.
            let next = unsafe { &*tail }.next.load(Relaxed);
            if next.is_null() {
                break;
            }
            tail = next;
        }
        if !POOLS_APPEND_LOCKED.on() {
            writer = None;
        }
        // SAFETY: as above.
        unsafe { &*tail }
            .next
            .store(pool, POOLS_PUBLISH.ord(Release));
        *writer.unwrap_or_else(|| self.inner.writer.lock()) += 1;
        self.inner.nslabs.fetch_add(geo.nslabs, Relaxed);
        Ok(geo.nslabs)
    }

    /// The pool holding bounce address `addr` of `dev`: lock-free. A device that never used
    /// bounce buffers pays one fence and one flag load.
    #[inline(always)]
    pub(crate) fn lookup<'a>(&'a self, dev: &'a Device, addr: u64) -> Option<PoolRef<'a>> {
        match self.lookup_global(dev, addr) {
            Ok(pool) => Some(PoolRef { pool, guard: None }),
            Err(false) => None,
            Err(true) => Self::lookup_transient(dev, addr),
        }
    }

    /// The first part of [`Swiotlb::lookup`]: the global pool holding `addr`, or whether a
    /// transient pool of `dev` may hold it (`Err(true)`: the device has transient pools).
    /// The unmap fast path uses it alone: a global pool needs no pin.
    #[inline(always)]
    pub(crate) fn lookup_global(&self, dev: &Device, addr: u64) -> Result<&Pool, bool> {
        let d = &dev.inner;
        LOOKUP_RMB.fence(Acquire);
        if !d.uses.load(Relaxed) {
            return Err(false);
        }
        if let Some(pool) = self.pools().find(|p| p.contains(addr)) {
            return Ok(pool);
        }
        Err(d.has_transients())
    }

    /// The transient pool of `dev` holding `addr`, pinned. Out of line: a global pool's
    /// lookup, the common one, stays short.
    #[inline(never)]
    fn lookup_transient(dev: &Device, addr: u64) -> Option<PoolRef<'_>> {
        let d = &dev.inner;
        let guard = rcu::pin_at(&LOOKUP_PIN);
        let pool: *const Pool = d.find(addr, &guard)?;
        // SAFETY: the pool is not freed before `guard`, which the returned value owns, unpins.
        let pool = unsafe { &*pool };
        Some(PoolRef {
            pool,
            guard: Some(guard),
        })
    }

    /// Whether `addr` is a bounce address of `dev` (global or transient pool). Lock-free, and
    /// correct for addresses handed between threads through the caller's own memory.
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(4096);
    /// let orig = mem.base();
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
    /// let dev = swiotlb.device(DeviceConfig::default());
    /// assert!(!swiotlb.is_bounce_buffer(&dev, orig));
    /// let a = swiotlb.map(&dev, orig, 100, Direction::ToDevice, MapAttrs::default()).unwrap();
    /// assert!(swiotlb.is_bounce_buffer(&dev, a));
    /// assert!(!swiotlb.is_bounce_buffer(&dev, orig));
    /// ```
    pub fn is_bounce_buffer(&self, dev: &Device, addr: u64) -> bool {
        self.check_device(dev).is_ok() && self.lookup(dev, addr).is_some()
    }

    /// The pool holding bounce address `addr` of `dev`, if any.
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(4096);
    /// let orig = mem.base();
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
    /// let dev = swiotlb.device(DeviceConfig::default());
    /// let a = swiotlb.map(&dev, orig, 100, Direction::ToDevice, MapAttrs::default()).unwrap();
    /// let p = swiotlb.find_pool(&dev, a).unwrap();
    /// assert!(p.start <= a && a < p.end && !p.transient);
    /// assert_eq!((p.nslabs, p.end - p.start), (8, 8 * 2048));
    /// assert_eq!(swiotlb.find_pool(&dev, orig), None);
    /// ```
    pub fn find_pool(&self, dev: &Device, addr: u64) -> Option<PoolInfo> {
        self.check_device(dev).ok()?;
        self.lookup(dev, addr).map(|p| PoolInfo {
            start: p.start(),
            end: p.end(),
            nslabs: p.geo.nslabs,
            nareas: p.geo.nareas,
            transient: p.transient,
        })
    }

    /// A snapshot of the statistics (see [`StatsSnapshot`] for its report).
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(8192);
    /// let orig = mem.base();
    /// let config = Config { stats: true, ..Config::tiny(8, 1, 8) };
    /// let swiotlb = Swiotlb::new(config, mem).unwrap();
    /// let dev = swiotlb.device(DeviceConfig::default());
    /// let a = swiotlb.map(&dev, orig, 5000, Direction::ToDevice, MapAttrs::default()).unwrap();
    /// assert_eq!(swiotlb.stats().used, 3); // 5000 bytes take three 2 KiB slots
    /// swiotlb.unmap(&dev, a, 5000, Direction::ToDevice, MapAttrs::default()).unwrap();
    /// let s = swiotlb.stats();
    /// assert_eq!((s.used, s.hiwater), (0, Some(3)));
    ///
    /// assert_eq!(swiotlb.reset_hiwater(1), Err(Error::BadReset { value: 1 }));
    /// swiotlb.reset_hiwater(0).unwrap();
    /// assert_eq!(swiotlb.stats().hiwater, Some(0));
    /// ```
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        let cached = self.inner.caches.cached();
        let pools: Vec<PoolStats> = self
            .pools()
            .map(|p| {
                // A run in a thread cache is in its area's count but in no mapping.
                let mut area_used = p.area_used();
                for run in cached.iter().filter(|r| std::ptr::eq(r.pool, p)) {
                    let a = p.geo.area_of(run.start).0;
                    area_used[a] = area_used[a].saturating_sub(run.nslots);
                }
                PoolStats {
                    start: p.start(),
                    nslabs: p.geo.nslabs,
                    area_used,
                }
            })
            .collect();
        let global_used: usize = pools.iter().flat_map(|p| p.area_used.iter()).sum();
        let transient_nslabs = s.transient_nslabs.load(Relaxed);
        StatsSnapshot {
            nslabs: self.inner.nslabs.load(Relaxed),
            // A transient pool is created for one run, used until it is freed.
            used: global_used + transient_nslabs,
            hiwater: s.hiwater(),
            transient_pools: s.transient_pools.load(Relaxed),
            transient_nslabs,
            pools,
        }
    }

    /// Reset the high-water mark; only 0 is accepted (as writing the debugfs file). Example at
    /// [`Swiotlb::stats`].
    pub fn reset_hiwater(&self, value: u64) -> Result<(), Error> {
        self.inner.stats.reset_hiwater(value)
    }

    /// Check the quiescent invariants of every global pool (free-run counters, `used`,
    /// metadata of free slots). Meant for tests and debugging; takes every area lock in turn.
    ///
    /// ```
    /// use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(4096);
    /// let orig = mem.base();
    /// let swiotlb = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
    /// let dev = swiotlb.device(DeviceConfig::default());
    /// let a = swiotlb.map(&dev, orig, 3000, Direction::ToDevice, MapAttrs::default()).unwrap();
    /// assert_eq!(swiotlb.check_invariants(), Ok(()));
    /// // A failed unmap (wrong address) leaves the pool consistent.
    /// assert!(swiotlb.unmap(&dev, a + 1, 1, Direction::ToDevice, MapAttrs::default()).is_err());
    /// assert_eq!(swiotlb.check_invariants(), Ok(()));
    /// ```
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pools().try_for_each(Pool::check)?;
        match self
            .inner
            .caches
            .cached()
            .into_iter()
            .find(|r| !r.pool.is_clear(r.start, r.nslots))
        {
            Some(r) => Err(format!(
                "run {}+{} of a thread cache has metadata",
                r.start, r.nslots
            )),
            None => Ok(()),
        }
    }
}

impl Drop for MemInner {
    fn drop(&mut self) {
        // The head is the `Box` field, dropped after this; the grown pools hang off it.
        let mut p = self.head.next.load(Relaxed);
        while !p.is_null() {
            // SAFETY: exclusive access; global pools came from `Box::into_raw` and are freed once.
            let pool = unsafe { Box::from_raw(p) };
            p = pool.next.load(Relaxed);
        }
    }
}
