//! The DMA domain: an IOVA allocator, an I/O page table, the caller's IOTLB, strict or lazy
//! invalidation, and bouncing for untrusted devices.
//!
//! Map: (bounce if needed) → allocate IOVA below the device's mask (32-bit first while the
//! device still prefers it) → map the granule-aligned span → record. The DMA address is the
//! IOVA plus the buffer's offset in its first granule.
//!
//! Unmap: take the record (refusing addresses that are not a live mapping of this device) →
//! [`Strictness::unmap_with`]: clear the leaves, then sync and free (strict; always for
//! untrusted devices) or queue (lazy) → release the bounce buffer, copying back, after the
//! IOTLB can no longer reach it (the order is the mutation point
//! `iommu.unmap.bounce_after_sync`; a copy-back that original memory refuses is
//! [`DmaError::LostCopyBack`]; the slots are released all the same).
//!
//! A trusted device's map (never bounced) runs in one frame, its caller's (module `trusted`;
//! `Domain::map` is inlined, the untrusted path called out of line): the checks, the IOVA
//! from the allocator's per-CPU cache, the page table, the record, with every failure path out
//! of line. Every other map builds on a `NewMapping` (module `new_mapping`: undone
//! unless recorded); the bounce side is a `Bouncer` (module `bounce`); the IOVA allocator, page
//! table and IOTLB are the domain's `Backend` (module `backend`), shared with [`Strictness`].
//! Both reserve their IOVA through `Domain::reserve` and undo through the backend's
//! `undo_unpublished`. Scatter lists (module `sg`) are built from the same operations, reached
//! through a `DeviceMapper`.
//!
//! Cost of a lazy map+unmap beyond its parts (an IOVA pair and a page-table map+unmap): the
//! device check, one registry insert (plain stores and a release store into the slot of the
//! IOVA's first pfn, which the allocator handed to this map alone) and one take (a claim of
//! that slot by compare-and-swap and a release store), the flush-queue enqueue (a full fence
//! fused with the per-CPU ring's spin lock, a drain check) and the glue between them: two
//! locked instructions the parts do not have (three before the record per pfn, and one more,
//! the IOVA allocation's slot lock, until a flush's IOVAs went onto the reclaiming thread's
//! own stack: below). Callgrind, 4
//! KiB, one thread, a plain loop of map+unmap (`examples/lazy_loop.rs`, the difference of two
//! run lengths): 1294 instructions (1287 before the enqueue's drain was cut into batches of
//! 64, which calls the free four times per flush instead of once); 1325 against the parts'
//! 921 (821 the page table, 100 the unchecked IOVA pair) in an earlier build, 1.44×; 1367
//! (1.48×) before a flush's IOVAs went back to the magazines as one batch
//! (`IovaAllocator::free_batch`) and the enqueue's drain check was inlined. What is left
//! above the parts in instructions: the IOVA churn (255 IOVAs in flight come back in a burst
//! after each flush, so an allocation is about 80 instructions, most of it the magazines'
//! refills, and the batched free about 60 per IOVA with the ring's pop), the enqueue about 80
//! (its frees aside), the registry about 75 (insert 22, take 54; 73 with the record per pfn) and the glue. Against the
//! parts' own examples in one build, after the page table's one-page paths (`io-pgtable`'s
//! `map_loop` 467, `iova-cache`'s unchecked `pair_loop` 102: 569), lazy map+unmap is 985, of
//! which about 30 are the record's fault-injection site (examples build with it, dmabench
//! does not): 955, 1.68× in instructions alone, about 385 above the parts as before the
//! parts got faster. Its allocation was 115 of them (78 before the IOVA allocator's per-thread
//! cache): a lazy domain's IOVAs came back in batches through the flush queue, so the map
//! paid that cache's check and never its hit, while the pair it is compared with hits (102
//! since, below).
//! (Turning the cache off for lazy domains saved 28 instructions but no time in an
//! interleaved dmabench.) So 1.3× needs about 215 fewer instructions here as well as fewer
//! locked instructions, not one of them.
//!
//! The time ratio is worse than the instruction ratio because a locked instruction waits for
//! the store buffer to drain, and the stores before each one (page-table leaves, ring slots,
//! records) go to lines that 255 IOVAs in flight keep cycling. A software-clock profile of
//! the enqueue showed its three locked instructions (the fence, the parking ring lock's
//! compare-and-swap and its unlock's) taking nearly all of its samples; removing one moves
//! part of its wait to the next locked instruction (the next map's IOVA slot lock). The fence
//! already was a locked `or` on the stack, not `mfence` (Rust emits that for a `SeqCst`
//! fence on x86-64; here the two cost the same, 8.5 ns in a store, fence, load loop). Since
//! the fence was fused with the ring lock (its compare-and-swap is the fence on x86-64) and
//! the ring lock became a spin lock (unlock: a store), dmabench, interleaved with the code
//! before: 1.83× → 1.59× the parts (medians of three runs, 1.79–1.85 → 1.56–1.62; lazy
//! 94–98 → 86–89 ns). Earlier steps: the registry's packed lines and the batched free, 1.87×
//! → 1.74×.
//!
//! With both of the registry's locked instructions removed (an unsound single-thread
//! experiment, to measure what a registry without them could give), the ratio was 1.38×
//! (1.35–1.44) against 1.65× with them. The registry's slot was then shared by every pfn that
//! hashed to its shard, so an insert had to claim it by compare-and-swap as a take does. It
//! now keeps a record per pfn (module `registry`: a sparse radix of 64-slot leaves, allocated
//! by the first map in their range): no two live mappings share a first pfn and the IOVA
//! allocator hands a range to one mapper, so the allocation is the insert's claim and the
//! insert is an acquire load, plain stores and a release store. The take keeps its
//! compare-and-swap: two racing unmaps of one mapping need an arbiter. 4 KiB lazy map+unmap
//! in callgrind (`examples/lazy_loop.rs`, four pairs of run lengths each): 994–1009
//! instructions with the shared slot, 973–987 with the record per pfn, and 6.1 → 5.1 locked
//! instructions per map+unmap (counted from callgrind's per-instruction counts on the
//! `lock`-prefixed instructions; the registry's own lines 77 → 73, the radix walk costing what
//! the hash did). In time, dmabench (`iova,pgtable,iommu`, 1 thread, 1 granule), six
//! interleaved runs of each on a shared machine (load average about 13 on 2 CPUs), medians
//! of CPU time: lazy 69.5 ns (65.2–76.0) → 63.1 ns (60.6–73.8), faster in four of the six
//! pairs, 1.91× (1.66–2.18) → 1.86× (1.56–2.26) the parts; strict 642 → 641 ns and untrusted
//! 722 → 709 ns, unchanged within noise. 1.3× stays out of reach: what is left above the
//! parts is the take's claim, the enqueue's fence and lock, the IOVA churn and the glue, about
//! 360 instructions. The ring lock and the registry's claim cannot be one, since an unmap
//! queues on its own CPU's ring, whichever CPU mapped.
//!
//! Flush rings owned by a thread were built and measured, not kept: each thread's ring written
//! only by it (`dma_sync::thread_slots`), the enqueue's fence the light side of the asymmetric
//! pair and the flush's fence a membarrier. The enqueue then ran no locked instruction (5.0
//! per map+unmap, 992 instructions against 1004, callgrind with `--fair-sched=yes`), yet in
//! dmabench, five interleaved runs of each on a loaded machine, lazy map+unmap went from 65.2
//! ns (64.9–68.2) to 71.7 ns (65.9–77.7): the store buffer's wait moved to the next locked
//! instruction, as the account above has it, and a timer drain spun on preempted owners. So
//! the count of locked instructions alone is not the lever; the stores queued before each one
//! are.
//!
//! A flush's IOVAs now go onto a stack in the reclaiming thread's own IOVA thread-cache slot
//! (`iova_cache::IovaAllocator::free_batch`, up to 256 granules; the rest to the magazines),
//! and that thread's next maps take them from there in a section of the thread-slot protocol,
//! without the CPU slot's lock: 5.04 → 4.04 locked instructions per map+unmap (callgrind,
//! `examples/lazy_loop.rs`, 20 000 against 40 000 pairs), 962 → 953 instructions (the
//! allocation, inclusive, 115 → 102; the stack's bookkeeping costs about what the magazine pop
//! did). In time, on a machine loaded throughout (load average 5 to 13 on 2 CPUs), medians of
//! CPU time: `examples/lazy_loop.rs` itself (2 000 000 pairs a run, two rounds of 16
//! interleaved runs of each) 66.6 ns (54.6–87.8) → 58.4 ns (54.6–82.0) and 61.1 ns
//! (54.4–85.0) → 57.3 ns (53.2–67.6), faster in 11 and 10 of the 16 pairs; dmabench
//! (1 thread, 1 granule; 26 interleaved runs of each in four rounds, with and without the
//! floor component) lazy 62.9 ns (57.9–109.9) → 61.9 ns (56.6–102.1), faster in 14 of the
//! 26 pairs, and the ratio to the parts, whose own time swung 31–56 ns between runs, 1.85×
//! (1.13–2.67) → 1.81× (1.33–2.49): the first two rounds 61.2 → 59.1 ns (nine of twelve
//! pairs), the two loudest the other way. So one locked instruction fewer gave a few
//! nanoseconds at best, as the account above has it: the stores queued before the next
//! locked instruction (the registry's take) wait all the same. What is left above the parts:
//! the take's claim, the enqueue's fence and lock and the glue, about 350 instructions; 1.3×
//! stays out of reach.
//!
//! `Domain::map` was a call of its own (six registers saved, a 200-byte frame, its large
//! `Result` written through memory and read back by the caller). It is now inlined into its
//! caller, with the untrusted path out of line (`map_untrusted`), so a trusted map's checks,
//! allocation, page-table call and record run in the caller's frame and its result stays in
//! registers: 953 → 899 instructions per lazy map+unmap in callgrind (`examples/lazy_loop.rs`,
//! 20 000 against 40 000 pairs; the map's own glue and the allocator's fast path now inline,
//! 367 → 312; stores 144 → 128 and loads 232 → 220 per map+unmap, the register saves and the
//! `Result` through memory gone; locked instructions unchanged, 4.02 per map+unmap: the page
//! table's two, the take's and the ring lock's; an untrusted bounced map+unmap 1997 before and
//! after). In time, on a machine loaded throughout (load average 7 to 12 on 2 CPUs): the
//! example itself (2 000 000 pairs a run, 16 interleaved runs of each)
//! 57.5 ns (53.0–98.9) → 55.0 ns (49.6–93.3), faster in 13 of the 16 pairs; dmabench
//! (`floor,iova,pgtable,iommu`, 1 thread, 1 granule; 11 interleaved runs of each in two
//! rounds) lazy 73.2 ns (60.6–106.2) → 65.7 ns (59.2–93.3), faster in 9 of the 11 pairs, and
//! the ratio to the parts 1.87× (1.42–2.69) → 1.78× (1.56–1.95), lower in 8 of the 11. What is
//! left above the parts: the take's claim, the enqueue's fence and lock, the IOVA churn and
//! about 60 instructions less glue, about 300 instructions (873 against 569, the example's
//! fault-injection site aside); 1.3× stays out of reach.
//!
//! The flush-queue enqueue was then inlined the same way (module `flush_queue`: its refused
//! push out of line): 899 → 869 instructions, stores 128 → 121 and loads 220 → 214 per
//! map+unmap; in time, on a machine loaded throughout (load average 4 to 8 on 2 CPUs), the
//! example 51.6 ns (49.5–68.5) → 49.7 ns (48.0–61.2), faster in 13 of 16 interleaved pairs,
//! and dmabench (as above, six interleaved runs of each) lazy 65.3 ns (60.6–103.8) → 59.0 ns
//! (55.8–62.8), faster in 5 of the 6 pairs, the ratio to the parts 1.90× (1.79–2.50) → 1.78×
//! (1.69–1.86), lower in 4 of the 6. Above the parts now: about 270 instructions (843 against
//! 569), two locked instructions.
//!
//! What the stores before each locked instruction allow, and why no reorder was made: the
//! take's compare-and-swap follows the map's record stores (the insert must come after the
//! page-table map: a take that found the record first could clear leaves not yet written, and
//! the map's leaves would then outlive the queued IOVA), and its own stores (the vacate, the
//! gather) come after it; the enqueue already takes the ring lock before its slot, tail, count
//! and unlock stores. The stores queued before each locked instruction are those the protocol
//! orders before it. Nor can one claim serve both the registry and the page table: an unmap
//! that checked the record and then claimed the leaf, with no claim of the slot, could, if
//! delayed, take the leaf of a new mapping of the same IOVA (freed and mapped again meanwhile)
//! before that mapping was recorded; and the enqueue's locked instruction is its ring's
//! (per CPU, so any thread may reach it), which a lock-free push would keep as its
//! compare-and-swap.
//!
//! A lazy domain has 255 IOVAs in flight, so its maps visit 255 registry slots in turn: a
//! slot (key word, record and count) is one 64-byte line (module `registry`; when the
//! registry's shard was a lock, record and count, the same layout cut the L1 misses from 2.3
//! to 0.6 per map+unmap in callgrind's cache model), and neighbouring IOVAs' slots fill about
//! four 4 KiB leaves. The path writes only lines its own CPU's maps and unmaps use (an IOVA
//! mapped on one CPU and unmapped on another moves its slot's line once): maps are counted by
//! the slot's owner and queued
//! unmaps under the ring's lock, no `Arc` is cloned, no clock is read (the timer is armed
//! by a flag). Results and expectations travel by value only where small (an unmap hands the
//! registry what it expects by value and gets back only the span and bounce buffer; closures
//! own copies): moving the large `Result` or a whole `NewMapping` into a call stalled on
//! store forwarding.
//!
//! Details:
//!
//! * Map: an untrusted device's buffer that is not granule-aligned at both ends is bounced
//!   (`alloc_align_mask = granule − 1`, zeroed padding); the IOVA comes from
//!   `DevicePolicy::alloc_iova` below `min(dma_mask, aperture)`; on `NoSpace` in lazy mode the
//!   flush queue is run once and the allocation retried, since queued IOVAs count as used. Every
//!   failure undoes what the call did (IOVA freed, bounce slot released without copy-back): the
//!   range and its mapped extents are a `NewMapping`, which only `publish` (the registry record)
//!   keeps; dropped on an error, it unmaps what it mapped with a synced gather and frees the IOVA
//!   (a trusted map undoes the same way out of line, module `trusted`).
//! * Configuration: `Domain::new` runs `DomainConfig::validate` before it allocates anything
//!   (page-table format, the IOVA allocator's counts against iova-cache's maxima, IOVA granule and
//!   space against the page table, the lazy queue's limits); `attach` runs `DeviceConfig::validate`
//!   (segment boundary `2^k − 1` of at least a granule, segments of at least a byte) and refuses
//!   with `DmaError::DeviceConfig`.
//! * Unmap refuses an address that is not the start of a live mapping of this device, a
//!   different size or offset, a different kind (single, resource, list) or a second unmap
//!   (`NotMapped` / `Mismatch`, nothing changed). If original memory refuses the copy-back the
//!   mapping is gone all the same, its slots are released exactly once, the unmap counts as an
//!   unmap and as an error, and the call returns `LostCopyBack { dma, size, cause }`. A refused
//!   copy in a sync is `CopyRefused` and leaves the mapping live, so the sync can be retried.
//! * Sync for CPU or device: translate through the page table; bounced → a swiotlb partial
//!   sync, otherwise coherent (nothing to do, but the range must be mapped). A sync by another
//!   device of the same domain is accepted, like Linux's `dma_sync_*`: it is an operation on the
//!   domain's address space (an unmap by another device is refused).
//! * Limits: `opt_mapping_size` (the largest per-CPU-cached IOVA size, Linux's
//!   `dma_opt_mapping_size`: 64 granules, 256 KiB at 4 KiB, where Linux's is 32 pages);
//!   `max_mapping_size(dev)`, capped by the bounce segment for untrusted devices, since any of
//!   their mappings may need bouncing.
//! * Statistics: per-CPU Relaxed counters (bounced, lists, synced unmaps, errors); maps and
//!   live mappings counted by the registry (by a slot's owner or under a table's lock), queued unmaps by the flush
//!   queue under its ring locks; `Display` is the text report.
//! * Table pages: io-pgtable frees table levels itself (walk-cache flush through
//!   `TlbOps::flush_walk`, then RCU), so queue entries carry only the IOVA span.

use crate::backend::{unmap_present, Backend, SharedIotlb};
use crate::bounce::{copy_error, Bouncer};
use crate::device::{Device, DeviceConfig, DeviceInner};
use crate::error::DmaError;
use crate::flush_queue::FqConfig;
use crate::iotlb::TlbOps;
use crate::iova_view::IovaView;
use crate::new_mapping::NewMapping;
use crate::points::UNMAP_BOUNCE_AFTER_SYNC;
use crate::policy::DevicePolicy;
use crate::registry::{Expect, Kind, Registry};
use crate::stats::{DomainStats, Event, Stats};
use crate::strictness::{Strictness, Unmapped};
use dma_sync::atomic::{AtomicU64, Ordering};
use dma_sync::{cpu, Arc};
use io_pgtable::PageTable;
use iova_cache::{IovaAllocator, IovaError};
use swiotlb_core::{Direction, Swiotlb};

pub use crate::backend::IovaSpan;

mod trusted;
pub use crate::config::DomainConfig;

/// The identity of a domain, shared with its devices.
#[derive(Debug)]
pub(crate) struct DomainKey;

/// A DMA domain.
///
/// ```
/// use dma_iommu::test_util::SimulatedDevice;
/// use dma_iommu::{DeviceConfig, Domain, DomainConfig, FqConfig, RecordingIotlb, Unmapped};
/// use swiotlb_core::{Config, Direction, OrigMemory, RegionMemory, Swiotlb};
///
/// let mem = RegionMemory::new(1 << 20);
/// let buf = mem.base() + 0x3010;
/// mem.write(buf, b"ping").unwrap();
/// let bounce = Swiotlb::new(Config::tiny(256, 1, 128), mem).unwrap();
/// let dom = Domain::new(DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(), RecordingIotlb::new(), Some(bounce)).unwrap();
/// let nic = dom.attach(DeviceConfig::default()).unwrap();
///
/// let dma = dom.map(&nic, buf, 4, Direction::ToDevice).unwrap();
/// assert_eq!(dma & 0xfff, 0x010); // the offset in the granule is kept
/// let mut seen = [0u8; 4];
/// let hw = SimulatedDevice::new(&dom, &nic, dom.swiotlb().unwrap().memory());
/// hw.read(dma, &mut seen).unwrap(); // the device reads through the page table
/// assert_eq!(&seen, b"ping");
/// assert_eq!(dom.unmap(&nic, dma, 4, Direction::ToDevice), Ok(Unmapped::Synced));
/// assert!(dom.unmap(&nic, dma, 4, Direction::ToDevice).is_err()); // twice: refused
///
/// assert!(dom.set_lazy(FqConfig::per_cpu()).unwrap()); // strict -> lazy at run time
/// let dma = dom.map(&nic, buf, 4, Direction::ToDevice).unwrap();
/// assert_eq!(dom.unmap(&nic, dma, 4, Direction::ToDevice), Ok(Unmapped::Queued));
/// print!("{}", dom.stats());
/// ```
pub struct Domain<T: TlbOps + 'static> {
    /// The IOVA allocator, the page table and the IOTLB.
    backend: Arc<Backend<T>>,
    /// Strict or lazy invalidation; holds a clone of `backend` to invalidate and free through.
    strictness: Strictness<Backend<T>>,
    /// Bounce buffers for untrusted devices.
    bounce: Option<Swiotlb>,
    /// Identity of the domain: devices hold a clone, so the address is never reused while a
    /// device of this domain exists.
    key: Arc<DomainKey>,
    registry: Registry,
    stats: Stats,
    next_device: AtomicU64,
    shift: u32,
    /// Last IOVA of the aperture (inclusive).
    aperture_end: u64,
}

impl<T: TlbOps + 'static> Domain<T> {
    /// Build a domain whose IOTLB is `iotlb`; `bounce` provides bounce buffers for untrusted
    /// devices.
    ///
    /// ```
    /// use dma_iommu::{DmaError, Domain, DomainConfig, NoTlb};
    /// let mut cfg = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
    /// cfg.iova.start_pfn = 0; // IOVA 0 must never be handed out
    /// assert!(matches!(Domain::new(cfg, NoTlb, None), Err(DmaError::Config(_))));
    /// ```
    pub fn new(config: DomainConfig, iotlb: T, bounce: Option<Swiotlb>) -> Result<Self, DmaError> {
        // Refused before anything is allocated.
        config.validate()?;
        let geom = config.pgtable.geometry()?;
        let shift = geom.page_size().trailing_zeros();
        let aperture_end = (1u64 << geom.ias()) - 1;
        let iova = IovaAllocator::new(config.iova.clone()).map_err(DmaError::NoIova)?;
        let iotlb = Arc::new(iotlb);
        let pt = PageTable::with_tlb(config.pgtable, SharedIotlb(iotlb.clone()))?;
        let backend = Arc::new(Backend { pt, iova, iotlb });
        let strictness = Strictness::new(backend.clone());
        if let Some(fq) = config.lazy {
            // Validated above, so only a failed allocation can refuse it. Linux
            // `iommu_dma_init_domain`: no memory for the queue, stay strict.
            let _ = strictness.enable_lazy(fq);
        }
        Ok(Self {
            backend,
            strictness,
            bounce,
            key: Arc::new(DomainKey),
            registry: Registry::new(config.iova.end_pfn, shift)?,
            stats: Stats::new(cpu::count()),
            next_device: AtomicU64::new(1),
            shift,
            aperture_end,
        })
    }

    /// The IOVA granule (the page table's page size) in bytes.
    pub fn granule(&self) -> u64 {
        1 << self.shift
    }

    /// The caller's IOTLB.
    pub fn iotlb(&self) -> &T {
        &self.backend.iotlb
    }

    /// The bounce-buffer allocator, and through it the original memory it copies from and to.
    pub fn swiotlb(&self) -> Option<&Swiotlb> {
        self.bounce.as_ref()
    }

    /// The IOVA allocator, for diagnostics (ranges, statistics): a view that cannot allocate
    /// or free, since the domain's records rely on owning every IOVA it hands out.
    pub fn iova_allocator(&self) -> IovaView<'_> {
        IovaView::new(&self.backend.iova)
    }

    /// Attach a device. Untrusted devices need the domain's bounce buffers.
    ///
    /// ```
    /// use dma_iommu::{DeviceConfig, DmaError, Domain, DomainConfig, NoTlb};
    /// let dom = Domain::new(DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(), NoTlb, None).unwrap();
    /// assert!(dom.attach(DeviceConfig::default()).unwrap().config().trusted);
    /// // An untrusted device needs bounce buffers, and this domain has none.
    /// let untrusted = DeviceConfig { trusted: false, ..DeviceConfig::default() };
    /// assert!(matches!(dom.attach(untrusted), Err(DmaError::NoBounceBuffers)));
    /// ```
    pub fn attach(&self, config: DeviceConfig) -> Result<Device, DmaError> {
        config.validate(self.granule())?;
        let bounce_dev = if config.trusted {
            None
        } else {
            let bounce = self.bounce.as_ref().ok_or(DmaError::NoBounceBuffers)?;
            // The bounce buffer is reached through the IOMMU: only its IOVA must fit the
            // device's mask, not its physical address.
            Some(bounce.device(swiotlb_core::DeviceConfig {
                min_align_mask: config.min_align_mask,
                seg_boundary_mask: config.seg_boundary_mask,
                dma_mask: u64::MAX,
            }))
        };
        let id = self.next_device.fetch_add(1, Ordering::Relaxed);
        Ok(Device {
            inner: Arc::new(DeviceInner {
                id,
                domain: self.key.clone(),
                config,
                policy: DevicePolicy::new(config.prefer_32bit),
                bounce_dev,
            }),
        })
    }

    pub(crate) fn check_device(&self, dev: &Device) -> Result<(), DmaError> {
        if Arc::ptr_eq(&dev.inner.domain, &self.key) {
            Ok(())
        } else {
            Err(DmaError::ForeignDevice)
        }
    }

    /// Count a failed public call in the statistics; pass the result through. The success
    /// is rebuilt from its value rather than moved whole: moving the large `Result` made every
    /// map and unmap reload it across a store-forwarding stall.
    #[inline]
    fn counted<R>(&self, r: Result<R, DmaError>) -> Result<R, DmaError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(self.count_error(e)),
        }
    }

    #[cold]
    fn count_error(&self, e: DmaError) -> DmaError {
        self.stats.count(Event::Error);
        e
    }

    /// Run one public call for `dev` on its [`DeviceMapper`] (refused for a device of another
    /// domain); a failure is counted in the statistics.
    #[inline]
    pub(crate) fn with_mapper<'d, R>(
        &'d self,
        dev: &'d Device,
        call: impl FnOnce(&DeviceMapper<'d, T>) -> Result<R, DmaError>,
    ) -> Result<R, DmaError> {
        let r = self
            .check_device(dev)
            .and_then(|()| call(&DeviceMapper { domain: self, dev }));
        self.counted(r)
    }

    /// Map `size` bytes of memory at physical address `paddr` for `dev`; returns the DMA
    /// address. For an untrusted device, a buffer not aligned to the granule at both ends is
    /// bounced first (allocation aligned to the granule, padding zeroed), so the device never
    /// sees other data sharing its pages.
    ///
    /// ```
    /// use dma_iommu::test_util::SimulatedDevice;
    /// use dma_iommu::{DeviceConfig, Direction, Domain, DomainConfig, NoTlb};
    /// use swiotlb_core::{Config, OrigMemory, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(1 << 20);
    /// let (aligned, unaligned) = (mem.base() + 0x4000, mem.base() + 0x6010);
    /// mem.write(unaligned, b"abc").unwrap();
    /// let bounce = Swiotlb::new(Config::tiny(256, 1, 128), mem).unwrap();
    /// let cfg = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
    /// let dom = Domain::new(cfg, NoTlb, Some(bounce)).unwrap();
    /// let dev = dom.attach(DeviceConfig { trusted: false, ..DeviceConfig::default() }).unwrap();
    /// // Whole granules are mapped in place.
    /// let dma = dom.map(&dev, aligned, 0x1000, Direction::ToDevice).unwrap();
    /// assert_eq!(dom.translate(dma), Some(aligned));
    /// // A buffer sharing its granule with other data is bounced: the device sees a copy.
    /// let dma = dom.map(&dev, unaligned, 3, Direction::ToDevice).unwrap();
    /// assert_ne!(dom.translate(dma), Some(unaligned));
    /// let mut seen = [0u8; 3];
    /// let hw = SimulatedDevice::new(&dom, &dev, dom.swiotlb().unwrap().memory());
    /// hw.read(dma, &mut seen).unwrap();
    /// assert_eq!(&seen, b"abc");
    /// assert_eq!(dom.stats().bounced, 1);
    /// ```
    #[inline]
    pub fn map(
        &self,
        dev: &Device,
        paddr: u64,
        size: usize,
        dir: Direction,
    ) -> Result<u64, DmaError> {
        if dev.inner.config.trusted {
            // Never bounced: the whole map in the caller's frame (module `trusted`), so its
            // result stays in registers.
            return self.counted(self.map_trusted(dev, paddr, size as u64, dir));
        }
        self.map_untrusted(dev, paddr, size as u64, dir)
    }

    /// [`Domain::map`] for an untrusted device, out of line.
    #[inline(never)]
    fn map_untrusted(
        &self,
        dev: &Device,
        paddr: u64,
        size: u64,
        dir: Direction,
    ) -> Result<u64, DmaError> {
        self.with_mapper(dev, move |m| m.map(paddr, size, dir))
    }

    /// [`Domain::map`] for a device checked to be this domain's.
    fn map_single(
        &self,
        dev: &Device,
        paddr: u64,
        size: u64,
        dir: Direction,
    ) -> Result<u64, DmaError> {
        let end = buffer_end(paddr, size)?;
        let mask = self.granule() - 1;
        let Some(bouncer) = self.bouncer(dev).filter(|_| (paddr | end) & mask != 0) else {
            return self.map_phys(dev, paddr, size, dir, Kind::Single, None);
        };
        let len = usize::try_from(size).map_err(|_| DmaError::Overflow)?;
        let phys = bouncer.map(paddr, len, dir, mask)?;
        let r = self.map_phys(dev, phys, size, dir, Kind::Single, Some(phys));
        if r.is_err() {
            // Nothing was written through the mapping: release without copying back.
            bouncer.release(phys, len, dir);
        } else {
            self.stats.count(Event::Bounce);
        }
        r
    }

    /// The bounce pool as `dev` uses it (untrusted devices only).
    fn bouncer<'a>(&'a self, dev: &'a Device) -> Option<Bouncer<'a>> {
        Some(Bouncer {
            pool: self.bounce.as_ref()?,
            dev: dev.inner.bounce_dev.as_ref()?,
        })
    }

    /// Map a physical (MMIO) range for peer-to-peer DMA: never bounced, no CPU syncs.
    ///
    /// ```
    /// use dma_iommu::{DeviceConfig, Direction, Domain, DomainConfig, NoTlb, Unmapped};
    /// let dom = Domain::new(DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(), NoTlb, None).unwrap();
    /// let dev = dom.attach(DeviceConfig::default()).unwrap();
    /// let bar = 0xfe00_0000; // a peer device's MMIO window
    /// let dma = dom.map_resource(&dev, bar, 0x1000, Direction::Bidirectional).unwrap();
    /// assert_eq!(dom.translate(dma), Some(bar));
    /// // A resource mapping is taken down by `unmap_resource` only.
    /// assert!(dom.unmap(&dev, dma, 0x1000, Direction::Bidirectional).is_err());
    /// let how = dom.unmap_resource(&dev, dma, 0x1000, Direction::Bidirectional);
    /// assert_eq!(how, Ok(Unmapped::Synced));
    /// ```
    pub fn map_resource(
        &self,
        dev: &Device,
        paddr: u64,
        size: usize,
        dir: Direction,
    ) -> Result<u64, DmaError> {
        self.with_mapper(dev, |_| {
            if size == 0 {
                return Err(DmaError::ZeroSize);
            }
            self.map_phys(dev, paddr, size as u64, dir, Kind::Resource, None)
        })
    }

    /// Allocate IOVA for `[phys, phys + size)` below the device's mask, map its granules and
    /// record the mapping.
    #[inline]
    fn map_phys(
        &self,
        dev: &Device,
        phys: u64,
        size: u64,
        dir: Direction,
        kind: Kind,
        bounce_buffer: Option<u64>,
    ) -> Result<u64, DmaError> {
        let offset = phys & (self.granule() - 1);
        let mut m = self.new_mapping(dev, offset, size, kind, dir)?;
        m.map(0, phys - offset, m.len())?;
        Ok(m.publish(size, offset, bounce_buffer)? + offset)
    }

    /// Reserve the IOVA granules for `size` bytes starting `offset` into a granule, below the
    /// device's mask, for a mapping of `kind` in direction `dir`: a mapping under
    /// construction, undone if dropped before it is published.
    fn new_mapping<'d>(
        &'d self,
        dev: &'d Device,
        offset: u64,
        size: u64,
        kind: Kind,
        dir: Direction,
    ) -> Result<NewMapping<'d, T>, DmaError> {
        let span = self.reserve(dev, offset, size)?;
        Ok(NewMapping::new(
            &self.backend,
            &self.registry,
            dev,
            kind,
            dir,
            span,
            self.shift,
        ))
    }

    /// Allocate the IOVA granules for `size` bytes starting `offset` into a granule, below
    /// the device's mask (32-bit first while the device prefers it). Nothing to undo on an
    /// error; the caller owns the span otherwise. Always inline: a call of its own cost the
    /// trusted map more (saved registers) than its checks.
    #[inline(always)]
    fn reserve(&self, dev: &Device, offset: u64, size: u64) -> Result<IovaSpan, DmaError> {
        let g = self.granule();
        let len = offset
            .checked_add(size)
            .and_then(|n| n.checked_add(g - 1))
            .map(|n| n & !(g - 1))
            .ok_or(DmaError::Overflow)?;
        let limit = dev.inner.config.dma_mask.min(self.aperture_end);
        if len - 1 > limit {
            return Err(DmaError::BeyondMask {
                len,
                dma_mask: dev.inner.config.dma_mask,
            });
        }
        let granules = len >> self.shift;
        match dev
            .inner
            .policy
            .alloc_iova(&self.backend.iova, granules, limit >> self.shift)
        {
            Ok(pfn) => Ok(IovaSpan { pfn, granules }),
            Err(e) => self.reserve_after_miss(dev, e, len, limit),
        }
    }

    /// [`Domain::reserve`] after the allocator refused: IOVAs waiting in the flush queue
    /// count as used, so on `NoSpace` flush once, free them, and retry once; otherwise (or
    /// failing again) the typed error.
    #[cold]
    #[inline(never)]
    fn reserve_after_miss(
        &self,
        dev: &Device,
        e: IovaError,
        len: u64,
        limit: u64,
    ) -> Result<IovaSpan, DmaError> {
        let granules = len >> self.shift;
        let mut r = Err(e);
        if matches!(r, Err(IovaError::NoSpace { .. })) && self.strictness.fire_timer() {
            r = dev
                .inner
                .policy
                .alloc_iova(&self.backend.iova, granules, limit >> self.shift);
        }
        r.map(|pfn| IovaSpan { pfn, granules })
            .map_err(|e| match e {
                IovaError::LimitBelowStart { .. } | IovaError::TooLarge { .. } => {
                    DmaError::BeyondMask {
                        len,
                        dma_mask: dev.inner.config.dma_mask,
                    }
                }
                e => DmaError::NoIova(e),
            })
    }

    /// Unmap a mapping made by [`Domain::map`]; `dma` and `size` as mapped. Returns whether
    /// the IOTLB was synced (strict) or the IOVA queued (lazy). A bounced mapping is copied
    /// back to the original buffer (by direction) once the device can no longer reach it.
    ///
    /// ```
    /// use dma_iommu::{DeviceConfig, Direction, DmaError, Domain, DomainConfig, NoTlb};
    /// let dom = Domain::new(DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(), NoTlb, None).unwrap();
    /// let dev = dom.attach(DeviceConfig::default()).unwrap();
    /// let dma = dom.map(&dev, 0x10_0000, 0x2000, Direction::FromDevice).unwrap();
    /// // A wrong size is refused and the mapping stays live.
    /// let wrong = dom.unmap(&dev, dma, 0x1000, Direction::FromDevice);
    /// assert!(matches!(wrong, Err(DmaError::Mismatch { .. })));
    /// assert_eq!(dom.translate(dma), Some(0x10_0000));
    /// dom.unmap(&dev, dma, 0x2000, Direction::FromDevice).unwrap();
    /// assert_eq!(dom.translate(dma), None);
    /// ```
    pub fn unmap(
        &self,
        dev: &Device,
        dma: u64,
        size: usize,
        dir: Direction,
    ) -> Result<Unmapped, DmaError> {
        self.with_mapper(dev, move |m| m.unmap(dma, size as u64, dir))
    }

    /// Unmap a mapping made by [`Domain::map_resource`].
    pub fn unmap_resource(
        &self,
        dev: &Device,
        dma: u64,
        size: usize,
        dir: Direction,
    ) -> Result<Unmapped, DmaError> {
        self.with_mapper(dev, |_| {
            self.unmap_kind(dev, dma, size as u64, dir, Kind::Resource, true)
        })
    }

    /// Unmap the mapping of `kind` at `dma` of a device checked to be this domain's; a
    /// bounced one is copied back (by direction) unless `copy_back` is false.
    #[inline]
    fn unmap_kind(
        &self,
        dev: &Device,
        dma: u64,
        size: u64,
        dir: Direction,
        kind: Kind,
        copy_back: bool,
    ) -> Result<Unmapped, DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        let expect = Expect {
            dev: dev.inner.id,
            kind,
            size,
        };
        let rec = self.registry.take(dma, expect)?;
        let span = IovaSpan {
            pfn: dma >> self.shift,
            granules: rec.granules,
        };
        let iova = span.pfn << self.shift;
        let len = rec.granules << self.shift;
        let (pt, granule) = (&self.backend.pt, self.granule());
        // Untrusted devices are always strict: their bounce buffers and pages must not stay
        // reachable after the unmap returns.
        let strict = !dev.inner.config.trusted;
        let mut bounced = rec.bounce_buffer.zip(self.bouncer(dev));
        let mut copied = Ok(());
        if !UNMAP_BOUNCE_AFTER_SYNC.on() {
            // Weakened: the slots released while the device can still reach them.
            if let Some((phys, bouncer)) = bounced.take() {
                copied = bouncer.unmap(dma, phys, size as usize, dir, copy_back);
            }
        }
        // The closure owns copies: nothing of this frame is read back through a pointer.
        let how = self.strictness.unmap_with(strict, move |gather| {
            // Only a scatter list's span has holes (segments moved to a boundary); every
            // other record covers a span mapped whole before it was recorded, and only the
            // unmap that took the record unmaps it.
            unmap_present(pt, iova, len, granule, gather);
            span
        });
        // A queued unmap is counted by the flush queue (under its ring lock).
        if how == Unmapped::Synced {
            self.stats.count(Event::Synced);
        }
        if let Some((phys, bouncer)) = bounced {
            // The device can no longer reach the buffer (untrusted: always strict, so the
            // IOTLB is synced). `size` is the recorded size, which `map_single` checked fits
            // a usize.
            copied = bouncer.unmap(dma, phys, size as usize, dir, copy_back);
        }
        copied.map(|()| how)
    }

    /// Make the device's writes to `[dma, dma + size)` visible to the CPU (copies a bounced
    /// range back). `dma` may lie anywhere inside a live mapping.
    ///
    /// Both syncs on one bounced buffer, CPU to device and back:
    ///
    /// ```
    /// use dma_iommu::test_util::SimulatedDevice;
    /// use dma_iommu::{DeviceConfig, Direction, Domain, DomainConfig, NoTlb};
    /// use swiotlb_core::{Config, OrigMemory, RegionMemory, Swiotlb};
    /// let mem = RegionMemory::new(1 << 20);
    /// let buf = mem.base() + 0x10; // not granule-aligned: bounced for an untrusted device
    /// mem.write(buf, b"old").unwrap();
    /// let bounce = Swiotlb::new(Config::tiny(256, 1, 128), mem).unwrap();
    /// let cfg = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
    /// let dom = Domain::new(cfg, NoTlb, Some(bounce)).unwrap();
    /// let dev = dom.attach(DeviceConfig { trusted: false, ..DeviceConfig::default() }).unwrap();
    /// let dma = dom.map(&dev, buf, 3, Direction::Bidirectional).unwrap(); // copied into the bounce buffer
    /// let mem = dom.swiotlb().unwrap().memory();
    /// let hw = SimulatedDevice::new(&dom, &dev, mem);
    /// let mut seen = [0u8; 3];
    ///
    /// mem.write(buf, b"new").unwrap(); // the CPU updates the buffer
    /// hw.read(dma, &mut seen).unwrap();
    /// assert_eq!(&seen, b"old"); // the device still sees the copy
    /// dom.sync_for_device(&dev, dma, 3, Direction::Bidirectional).unwrap();
    /// hw.read(dma, &mut seen).unwrap();
    /// assert_eq!(&seen, b"new");
    ///
    /// hw.write(dma, b"dev").unwrap(); // lands in the bounce buffer
    /// mem.read(buf, &mut seen).unwrap();
    /// assert_eq!(&seen, b"new");
    /// dom.sync_for_cpu(&dev, dma, 3, Direction::Bidirectional).unwrap(); // copies it back
    /// mem.read(buf, &mut seen).unwrap();
    /// assert_eq!(&seen, b"dev");
    /// ```
    pub fn sync_for_cpu(
        &self,
        dev: &Device,
        dma: u64,
        size: usize,
        dir: Direction,
    ) -> Result<(), DmaError> {
        self.with_mapper(dev, |_| self.sync(dev, dma, size, dir, false))
    }

    /// Make the CPU's writes to `[dma, dma + size)` visible to the device (copies into a
    /// bounce buffer). `dma` may lie anywhere inside a live mapping. Example: see
    /// [`Domain::sync_for_cpu`].
    pub fn sync_for_device(
        &self,
        dev: &Device,
        dma: u64,
        size: usize,
        dir: Direction,
    ) -> Result<(), DmaError> {
        self.with_mapper(dev, |_| self.sync(dev, dma, size, dir, true))
    }

    /// A sync of `[dma, dma + size)` for a device checked to be this domain's, for the
    /// device (`to_device`) or for the CPU: a bounced range is copied (the pool is looked up
    /// once, by the copy itself), coherent memory needs nothing.
    fn sync(
        &self,
        dev: &Device,
        dma: u64,
        size: usize,
        dir: Direction,
        to_device: bool,
    ) -> Result<(), DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        let last = dma.checked_add(size as u64 - 1).ok_or(DmaError::Overflow)?;
        let phys = self.translate(dma).ok_or(DmaError::NotMapped { dma })?;
        self.translate(last)
            .ok_or(DmaError::NotMapped { dma: last })?;
        let Some(b) = self.bouncer(dev) else {
            // Only untrusted devices bounce: coherent memory, nothing to copy.
            return Ok(());
        };
        // `Ok(false)`: not a bounce address, coherent memory.
        b.pool
            .sync_if_bounced(b.dev, phys, size, dir, to_device)
            .map(drop)
            .map_err(|e| {
                copy_error(e, |cause| DmaError::CopyRefused {
                    dma,
                    size: size as u64,
                    cause,
                })
            })
    }

    /// The physical address `dma` translates to, if mapped.
    pub fn translate(&self, dma: u64) -> Option<u64> {
        self.backend.pt.iova_to_phys(dma).map(|t| t.paddr())
    }

    /// The physical address and permissions of `dma`'s translation, as a device walks it.
    #[cfg(feature = "test-util")]
    pub(crate) fn translation(&self, dma: u64) -> Option<(u64, io_pgtable::Prot)> {
        self.backend
            .pt
            .iova_to_phys(dma)
            .map(|t| (t.paddr(), t.prot()))
    }

    /// The largest mapping whose IOVA comes from the per-CPU caches (Linux's
    /// `dma_opt_mapping_size`): larger ones go to the shared range allocator.
    ///
    /// 64 granules (256 KiB at 4 KiB), twice Linux's 32 pages: the IOVA caches have a class
    /// of 64 granules (`iova_cache::config::CACHE_CLASSES`). A driver sizing its requests by
    /// this gets mappings up to 256 KiB from the caches, and a 33..63-granule mapping takes
    /// an IOVA range rounded up to 64.
    pub fn opt_mapping_size(&self) -> u64 {
        iova_cache::config::MAX_CACHED_GRANULES << self.shift
    }

    /// The largest single mapping `dev` may ask for: capped by the bounce buffers' segment
    /// for an untrusted device (any of its mappings may need bouncing), else by its mask.
    ///
    /// ```
    /// use dma_iommu::{DeviceConfig, Domain, DomainConfig, NoTlb};
    /// use swiotlb_core::{Config, RegionMemory, Swiotlb};
    /// let bounce = Swiotlb::new(Config::tiny(256, 1, 128), RegionMemory::new(1 << 20)).unwrap();
    /// let cfg = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
    /// let dom = Domain::new(cfg, NoTlb, Some(bounce)).unwrap();
    /// let dev32 = dom.attach(DeviceConfig { dma_mask: 0xffff_ffff, ..DeviceConfig::default() }).unwrap();
    /// assert_eq!(dom.max_mapping_size(&dev32), 0xffff_ffff);
    /// let untrusted = dom.attach(DeviceConfig { trusted: false, ..DeviceConfig::default() }).unwrap();
    /// assert!(dom.max_mapping_size(&untrusted) < 0xffff_ffff); // one bounce segment at most
    /// ```
    pub fn max_mapping_size(&self, dev: &Device) -> u64 {
        let by_mask = dev.inner.config.dma_mask.min(self.aperture_end);
        match (&dev.inner.bounce_dev, &self.bounce) {
            (Some(b), Some(bounce)) => (bounce.max_mapping_size(b) as u64).min(by_mask),
            _ => by_mask,
        }
    }

    /// Switch from strict to lazy invalidation at run time, safely while other threads map
    /// and unmap. `Ok(false)` if already lazy. Untrusted devices stay strict. If the queue
    /// cannot be allocated, [`crate::FqError::NoMemory`] and the domain stays strict.
    ///
    /// ```
    /// use dma_iommu::{Domain, DomainConfig, FqConfig, NoTlb};
    /// let dom = Domain::new(DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(), NoTlb, None).unwrap();
    /// assert!(!dom.is_lazy());
    /// assert_eq!(dom.set_lazy(FqConfig::per_cpu()), Ok(true));
    /// assert_eq!(dom.set_lazy(FqConfig::per_cpu()), Ok(false)); // already lazy: no second queue
    /// assert!(dom.is_lazy());
    /// ```
    pub fn set_lazy(&self, fq: FqConfig) -> Result<bool, DmaError> {
        Ok(self.strictness.enable_lazy(fq)?)
    }

    /// Whether the domain is lazy.
    pub fn is_lazy(&self) -> bool {
        self.strictness.is_lazy()
    }

    /// Run the flush-queue timer's work now (flush once, free what that covers). `false`
    /// when strict.
    ///
    /// ```
    /// use dma_iommu::{DeviceConfig, Direction, Domain, DomainConfig, FqConfig, NoTlb, Unmapped};
    /// use std::time::Duration;
    /// let fq = FqConfig::per_cpu().with_timeout(Duration::from_secs(3600)); // no timer run here
    /// let cfg = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap().lazy(fq);
    /// let dom = Domain::new(cfg, NoTlb, None).unwrap();
    /// let dev = dom.attach(DeviceConfig::default()).unwrap();
    /// let dma = dom.map(&dev, 0x10_0000, 0x1000, Direction::ToDevice).unwrap();
    /// assert_eq!(dom.unmap(&dev, dma, 0x1000, Direction::ToDevice), Ok(Unmapped::Queued));
    /// assert_eq!(dom.stats().fq.pending, 1); // the IOVA waits for an IOTLB flush
    /// assert!(dom.flush_queue_now());
    /// assert_eq!((dom.stats().fq.pending, dom.stats().fq.reclaimed), (0, 1));
    /// ```
    pub fn flush_queue_now(&self) -> bool {
        self.strictness.fire_timer()
    }

    /// Counters; [`DomainStats`] displays as a text report.
    pub fn stats(&self) -> DomainStats {
        self.stats.snapshot(
            self.registry.counts(),
            self.is_lazy(),
            self.strictness.queue_stats(),
        )
    }
}

/// One device's side of a domain, its device already checked to be the domain's: the
/// operations every map path is built from, for the scatter-list code (module `sg`) and the
/// domain's own calls alike.
pub(crate) struct DeviceMapper<'d, T: TlbOps + 'static> {
    domain: &'d Domain<T>,
    dev: &'d Device,
}

/// The end of a buffer of `size` bytes at `paddr`, checked as every map checks it: not empty
/// (`ZeroSize`) and not past 2^64 (`Overflow`).
#[inline]
fn buffer_end(paddr: u64, size: u64) -> Result<u64, DmaError> {
    if size == 0 {
        return Err(DmaError::ZeroSize);
    }
    paddr.checked_add(size).ok_or(DmaError::Overflow)
}

impl<'d, T: TlbOps + 'static> DeviceMapper<'d, T> {
    /// The IOVA granule in bytes.
    pub(crate) fn granule(&self) -> u64 {
        self.domain.granule()
    }

    /// The device's limits.
    pub(crate) fn config(&self) -> &'d DeviceConfig {
        &self.dev.inner.config
    }

    /// Map `size` bytes at `paddr` on their own, bounced where needed ([`Domain::map`]).
    pub(crate) fn map(&self, paddr: u64, size: u64, dir: Direction) -> Result<u64, DmaError> {
        self.domain.map_single(self.dev, paddr, size, dir)
    }

    /// Reserve `size` bytes of granule-aligned IOVA for a scatter list: a mapping under
    /// construction, undone if dropped before it is published.
    pub(crate) fn new_list(
        &self,
        size: u64,
        dir: Direction,
    ) -> Result<NewMapping<'d, T>, DmaError> {
        self.domain.new_mapping(self.dev, 0, size, Kind::List, dir)
    }

    /// Count a scatter list mapped (its mappings count themselves).
    pub(crate) fn count_list(&self) {
        self.domain.stats.count(Event::List);
    }

    /// Unmap the single mapping at `dma`, copying a bounced one back (by direction).
    pub(crate) fn unmap(&self, dma: u64, size: u64, dir: Direction) -> Result<Unmapped, DmaError> {
        self.domain
            .unmap_kind(self.dev, dma, size, dir, Kind::Single, true)
    }

    /// Unmap the scatter list whose span starts at `iova` ([`DeviceMapper::new_list`]).
    pub(crate) fn unmap_list(
        &self,
        iova: u64,
        size: u64,
        dir: Direction,
    ) -> Result<Unmapped, DmaError> {
        self.domain
            .unmap_kind(self.dev, iova, size, dir, Kind::List, true)
    }

    /// Take down a mapping [`DeviceMapper::map`] made in this call (an undo): no copy-back,
    /// so the caller's buffer keeps its bytes. A concurrent unmap that guessed the address
    /// may have taken it first; then it is gone already.
    pub(crate) fn undo(&self, dma: u64, size: u64, dir: Direction) {
        let _ = self
            .domain
            .unmap_kind(self.dev, dma, size, dir, Kind::Single, false);
    }
}

impl<T: TlbOps + 'static> std::fmt::Debug for Domain<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("granule", &self.granule())
            .field("lazy", &self.is_lazy())
            .finish_non_exhaustive()
    }
}
