//! Flush queues: lazy IOTLB invalidation with deferred freeing.
//!
//! An unmap in lazy mode clears its leaves and queues what it must free (the IOVA range and
//! any freed table pages) instead of invalidating the IOTLB. An entry is freed only after a
//! *global* flush that started after it was queued has completed:
//!
//! * a flush is `start_cnt += 1; full fence; flush_all(); finish_cnt += 1 (release)`;
//! * an enqueue issues a full fence (ordering its leaf clears before everything that follows),
//!   then stamps the entry with `start_cnt`;
//! * an entry is freeable iff `stamp < finish_cnt`: at stamping only `stamp` flushes had
//!   started, so `finish_cnt > stamp` completed flushes include one that started after the
//!   stamp, hence after the clears. Flushes may overlap; only monotonicity is used.
//!
//! Stamps in one ring are non-decreasing, so a drain stops at the first entry that is not
//! freeable. Rings are per CPU (256 entries, 10 ms timer, as Linux) or one large shared ring
//! (32768 entries, 1 s timer: for IOMMUs whose flushes are expensive). A full ring flushes
//! synchronously (outside its lock). A timer, armed by the first enqueue after it ran (`timer_on`), flushes once
//! and drains every ring; it clears `timer_on` *before* it drains, so an enqueue racing with
//! the drain arms it again, and it re-arms itself if entries stamped after its flush are left.
//! Teardown marks the timer dead under the timer lock (waiting for a running drain), stops the
//! timer thread, flushes and frees everything.
//!
//! The queue is generic over what it frees ([`InvalidationOps`]), so its models need neither
//! the allocator nor the page table.
//!
//! # The protocol in detail
//!
//! * Rings: each is `{slots, head, tail}` behind its own spin lock on its own cache line; full
//!   ⇔ `(tail + 1) & mask == head`. Geometry is configurable (models use 2–4 entries). The
//!   ring slice is never changed after construction; it sits in a cell only so that loom checks
//!   the ring lookup, the one read of the queue that precedes the enqueue's fence.
//! * Flush: `start_cnt += 1` (Relaxed; the new count is the flush's ticket); `fence(SeqCst)`
//!   (`iommu.fq.flush.fence`); `flush_all()`; `finish_cnt += 1` (Release,
//!   `iommu.fq.finish.release`).
//! * Enqueue: find the ring of the current CPU; `fence(SeqCst)` (`iommu.fq.enqueue.fence`) right
//!   before the ring lock's compare-and-swap ([`SpinLock::with_fenced`]: on x86-64 that locked
//!   instruction is the fence, so the enqueue pays one locked instruction, and its unlock is a
//!   store); the fence orders the caller's leaf clears before the stamp. Under the lock: drain;
//!   if still full, unlock, flush, wait until `finish_cnt` reaches the flush's ticket (only
//!   if a flush started earlier on another CPU is still running), lock again and start over
//!   (another flush only if others filled the ring meanwhile); stamp `start_cnt`; append;
//!   unlock; arm the timer (`timer_on` read first, then swapped: no line bouncing while armed).
//!   The push that succeeds is inlined into the unmap; a refused one (full, or closed) goes on
//!   out of line (`enqueue_refused`): the call's six register saves were gone, 30 instructions
//!   fewer per lazy map+unmap.
//!   The queue is found through the unmap's acquire snapshot of the mode (module `strictness`),
//!   the acquire side of its publication.
//! * Drain: `finish_cnt.load(Acquire)` (`iommu.fq.finish.acquire`), then free the prefix of
//!   entries stamped below it, at most 64 per lock section (`DRAIN_BATCH`), handed to
//!   [`InvalidationOps::reclaim_all`] at once (the domain gives them back to its CPU's
//!   magazines with one slot-lock acquisition); nothing if the count is the one the ring was
//!   last drained to (every entry queued since was stamped at or above it), so an enqueue
//!   between two flushes pays an inline compare, not a call or a look at the oldest slot. An
//!   enqueue frees one batch (enough for the push: a full ring whose oldest entry is freeable
//!   is not full after it); the timer and teardown lock again until nothing freeable is left.
//! * Re-entry: a drain runs [`InvalidationOps::reclaim_all`] under the ring lock, with a
//!   thread-local flag set (restored as it returns or unwinds). An enqueue that finds the flag
//!   set was made from inside a `reclaim`, whose thread holds a ring lock (perhaps the one it
//!   would take): it takes none, flushes and frees its entry at once, as a strict unmap would
//!   (the flush's fence orders the caller's leaf clears before the invalidation), counted as
//!   queued and reclaimed. `fire_timer` and `shutdown` do nothing from inside a `reclaim`;
//!   `stats` there counts only the rings (and timer) it can lock at once. The common enqueue pays a thread-local load and a
//!   branch (about 2 instructions). Freeing each batch after the lock section instead (moved
//!   into an on-stack batch, teardown waiting for batches in flight) cost the lazy 4 KiB
//!   map+unmap 14 instructions and about 3 ns in interleaved dmabench runs: the entries are
//!   moved twice more, and the drain takes the lock twice.
//! * Why a spin lock: its waiters spin, then yield, so a section must be short. No flush runs
//!   under it (a full ring flushes after unlocking; only an enqueue made from inside a
//!   `reclaim` flushes while the drain running it holds the lock), and a drain frees at most a batch, so a
//!   section is a push and up to 64 frees, even on the single 32768-entry ring. A free may
//!   wait for the IOVA cache's depot lock (a parking mutex whose holders never wait for a
//!   ring), as it did under the parking ring lock before; the ring's other users are the timer
//!   once per timeout and CPUs that share a ring.
//! * Why the device is safe: the enqueue fence and the flush fence make this store-buffering
//!   protocol sound, so an enqueuer whose stamp missed a flush's increment has its leaf clears
//!   visible to every walk that follows that flush's invalidation (SB with SC fences on both
//!   sides; SeqCst *accesses* would not do under loom; loom and other targets than x86-64 keep
//!   the enqueue's fence as a fence before the compare-and-swap). The release/acquire pair on
//!   `finish_cnt` orders the invalidation before a free on another CPU.
//! * Timer: holds the timer lock for the whole run; `timer_on = false` first
//!   (`iommu.fq.timer.clear_first`), one flush, drain every ring (batch by batch); if entries stamped after its
//!   flush remain, it re-arms itself (`iommu.fq.timer.rearm`). The ring locks order the clear
//!   against a racing enqueue: either the drain sees the entry or the enqueuer sees the timer off
//!   and arms it. Invariant checked by the models: a non-empty queue always has its timer armed.
//!   In production one background thread per queue (module `timer`) runs the work; under loom a
//!   model thread calls `fire_timer`.
//! * Teardown (`shutdown`, also on drop): mark the timer dead under the timer lock, waiting for a
//!   running drain (`iommu.fq.teardown.stop_timer`, the 2022 Linux fix), stop and join the
//!   thread, flush, free everything. A domain tears down on drop, with no unmap running; a direct
//!   `FlushQueue` user that enqueues during or after `shutdown` loses nothing: teardown marks
//!   each ring closed under its lock and flushes again (outside it) while an entry stamped after
//!   its flush is left, and an enqueue into a closed ring flushes and frees its entry at once.
//! * Limits (`FqConfig::validate`, checked before any ring is allocated): ring size a power of
//!   two ≥ 2, at least one ring, `rings × ring_size ≤ MAX_QUEUED` (2^20 entries), timeout ≤
//!   `MAX_TIMEOUT` (one day): `FqError::{RingSize, NoRings, TooLarge, Timeout}`.
//! * A panicking [`InvalidationOps::flush_all`] unwinds to the caller. Its flush started and
//!   never finished: it is never counted in `finish_cnt` (its invalidation may not have run,
//!   so nothing is freed on its account), but it is counted as abandoned, and an enqueue that
//!   waits for the flushes started before its own does not wait for it. `finish_cnt` stays
//!   that many behind for good, so an entry then needs one more completed flush to be freed.
//!   `FqConfig::per_cpu()` takes one ring per CPU up to 4096 rings (CPUs beyond share rings), so
//!   the default is always valid.

use crate::iotlb::Gather;
use crate::points::{
    FQ_ENQUEUE_FENCE, FQ_FINISH_ACQUIRE, FQ_FINISH_RELEASE, FQ_FLUSH_FENCE, FQ_TEARDOWN_STOP_TIMER,
    FQ_TIMER_CLEAR_FIRST, FQ_TIMER_REARM,
};
use dma_sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dma_sync::{cpu, thread, Arc, CachePadded, Mutex, SpinLock, UnsafeCell};
use std::fmt;
use std::time::Duration;

/// What an unmap hands to the invalidation machinery: IOTLB callbacks and the free path.
///
/// The domain implements it over the caller's [`crate::TlbOps`], its IOVA allocator and its
/// page table; models implement it over an emulated walker.
///
/// ```
/// use dma_iommu::{Gather, InvalidationOps};
/// use dma_sync::Mutex;
/// struct Ops { freed: Mutex<Vec<u64>> }
/// impl InvalidationOps for Ops {
///     type Entry = u64;
///     fn flush_all(&self) {}
///     fn sync(&self, _g: &mut Gather) {}
///     fn reclaim(&self, iova: u64) { self.freed.lock().push(iova); }
/// }
/// let ops = Ops { freed: Mutex::new(vec![]) };
/// ops.reclaim(0x1000);
/// assert_eq!(*ops.freed.lock(), [0x1000]);
/// ```
pub trait InvalidationOps: Send + Sync + 'static {
    /// What a queued unmap must free later: an IOVA range and freed table pages.
    type Entry: Send + 'static;
    /// Invalidate every cached translation of the domain; return when complete.
    fn flush_all(&self);
    /// Invalidate what a strict unmap gathered; return when complete.
    fn sync(&self, gather: &mut Gather);
    /// Free what `entry` holds; called only once no IOTLB can hold a translation for it.
    ///
    /// A drain calls it under the ring's spin lock. It may enqueue into any flush queue, its
    /// own included: an enqueue made from inside a `reclaim` (a thread-local flag says so)
    /// takes no ring lock, which its own thread may hold, but frees its entry at once after a
    /// flush of its own, as a strict unmap would. [`FlushQueue::stats`] called there leaves
    /// out the rings (and timer count) locked at that moment, the drain's own among them;
    /// [`FlushQueue::fire_timer`] and [`FlushQueue::shutdown`] called from inside a `reclaim`
    /// do nothing. If it unwinds, the entries the drain had not
    /// handed over yet stay queued; the one whose free unwound is dropped.
    fn reclaim(&self, entry: Self::Entry);
    /// Free what every entry of `entries` holds, as [`reclaim`](Self::reclaim) would: a
    /// drain hands over all the entries a flush made freeable at once, so an implementation
    /// can free them together.
    fn reclaim_all(&self, entries: impl Iterator<Item = Self::Entry>) {
        entries.for_each(|e| self.reclaim(e));
    }
}

/// Most entries a flush queue may hold over all its rings (`rings × ring_size`): 2^20, at
/// most a few tens of MiB of slots. Linux's per-CPU queue on 4096 CPUs (256 entries each) and
/// its single queue (32768 entries) fit.
pub const MAX_QUEUED: usize = 1 << 20;

/// Longest timer timeout a queue accepts: one day (a deadline that far ahead cannot overflow
/// the clock; IOVAs held longer are a leak, not a cache).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Per-CPU rings or one shared ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FqKind {
    /// One ring per CPU (Linux default).
    PerCpu,
    /// One large ring shared by all CPUs (Linux `shadow_on_flush`, for expensive flushes).
    Single,
}

/// Flush-queue geometry and timeout.
///
/// ```
/// use dma_iommu::{FqConfig, FqKind};
/// use std::time::Duration;
/// let c = FqConfig::per_cpu().with_cpus(4);
/// assert_eq!((c.kind, c.ring_size, c.cpus), (FqKind::PerCpu, 256, 4));
/// assert_eq!(c.timeout, Duration::from_millis(10));
/// let s = FqConfig::single();
/// assert_eq!((s.ring_size, s.timeout), (32768, Duration::from_secs(1)));
/// assert!(FqConfig::per_cpu().with_ring_size(3).validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FqConfig {
    /// Per-CPU rings or a single ring.
    pub kind: FqKind,
    /// Entries per ring, a power of two ≥ 2 (one slot stays empty: capacity is `ring_size - 1`).
    pub ring_size: usize,
    /// Delay between the first enqueue after a timer run and the next timer run.
    pub timeout: Duration,
    /// Number of per-CPU rings (ignored for [`FqKind::Single`]).
    pub cpus: usize,
}

impl FqConfig {
    /// Linux's per-CPU queue: 256-entry rings, 10 ms timeout, one ring per CPU, at most
    /// `MAX_QUEUED / 256` (4096) rings, so the default is valid on any machine (CPUs beyond
    /// share rings: a CPU id is reduced modulo the ring count).
    pub fn per_cpu() -> Self {
        const RING: usize = 256;
        Self {
            kind: FqKind::PerCpu,
            ring_size: RING,
            timeout: Duration::from_millis(10),
            cpus: cpu::count().clamp(1, MAX_QUEUED / RING),
        }
    }

    /// Linux's single queue: one 32768-entry ring, 1 s timeout.
    pub fn single() -> Self {
        Self {
            kind: FqKind::Single,
            ring_size: 32768,
            timeout: Duration::from_secs(1),
            cpus: 1,
        }
    }

    /// The same with `ring_size` entries per ring.
    pub fn with_ring_size(mut self, ring_size: usize) -> Self {
        self.ring_size = ring_size;
        self
    }

    /// The same with timeout `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same with `cpus` per-CPU rings.
    pub fn with_cpus(mut self, cpus: usize) -> Self {
        self.cpus = cpus;
        self
    }

    /// Number of rings this configuration builds.
    pub fn rings(&self) -> usize {
        match self.kind {
            FqKind::PerCpu => self.cpus,
            FqKind::Single => 1,
        }
    }

    /// Check the geometry before anything is allocated: rings are powers of two ≥ 2, there
    /// is at least one, all of them together hold at most [`MAX_QUEUED`] entries, and the
    /// timeout is at most [`MAX_TIMEOUT`].
    ///
    /// ```
    /// use dma_iommu::{FqConfig, FqError};
    /// use std::time::Duration;
    /// assert_eq!(FqConfig::per_cpu().validate(), Ok(()));
    /// let e = FqConfig::per_cpu().with_cpus(0).validate().unwrap_err();
    /// assert_eq!(e, FqError::NoRings);
    /// assert!(e.to_string().contains("at least one CPU"));
    /// let odd = FqConfig::single().with_ring_size(100); // rings are powers of two
    /// assert_eq!(odd.validate(), Err(FqError::RingSize(100)));
    /// let huge = FqConfig::per_cpu().with_cpus(usize::MAX);
    /// assert_eq!(huge.validate(), Err(FqError::TooLarge { rings: usize::MAX, ring_size: 256 }));
    /// let forever = FqConfig::per_cpu().with_timeout(Duration::MAX);
    /// assert_eq!(forever.validate(), Err(FqError::Timeout(Duration::MAX)));
    /// ```
    pub fn validate(&self) -> Result<(), FqError> {
        if self.ring_size < 2 || !self.ring_size.is_power_of_two() {
            return Err(FqError::RingSize(self.ring_size));
        }
        let rings = self.rings();
        if rings == 0 {
            return Err(FqError::NoRings);
        }
        if !matches!(rings.checked_mul(self.ring_size), Some(n) if n <= MAX_QUEUED) {
            return Err(FqError::TooLarge {
                rings,
                ring_size: self.ring_size,
            });
        }
        if self.timeout > MAX_TIMEOUT {
            return Err(FqError::Timeout(self.timeout));
        }
        Ok(())
    }
}

/// Why a flush queue could not be built.
///
/// ```
/// use dma_iommu::{FqConfig, FqError};
/// let e = FqConfig::per_cpu().with_ring_size(6).validate().unwrap_err();
/// assert_eq!(e, FqError::RingSize(6));
/// assert_eq!(e.to_string(), "flush-queue ring size 6 is not a power of two >= 2");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FqError {
    /// The ring size is not a power of two ≥ 2.
    RingSize(usize),
    /// A per-CPU queue with zero CPUs.
    NoRings,
    /// The rings together would hold more than [`MAX_QUEUED`] entries.
    TooLarge {
        /// Rings asked for.
        rings: usize,
        /// Entries per ring asked for.
        ring_size: usize,
    },
    /// A timeout longer than [`MAX_TIMEOUT`].
    Timeout(Duration),
    /// A ring could not be allocated (see [`crate::faults::FQ_RING_ALLOC`]).
    NoMemory,
}

impl fmt::Display for FqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FqError::RingSize(n) => {
                write!(f, "flush-queue ring size {n} is not a power of two >= 2")
            }
            FqError::NoRings => write!(f, "a per-CPU flush queue needs at least one CPU"),
            FqError::TooLarge { rings, ring_size } => write!(
                f,
                "{rings} flush-queue rings of {ring_size} entries exceed {MAX_QUEUED} entries"
            ),
            FqError::Timeout(t) => write!(
                f,
                "flush-queue timeout {t:?} is longer than {MAX_TIMEOUT:?}"
            ),
            FqError::NoMemory => write!(f, "cannot allocate a flush-queue ring"),
        }
    }
}

impl std::error::Error for FqError {}

/// Counters of a flush queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FqStats {
    /// Entries queued (every enqueue, also one after teardown, which is freed at once).
    pub enqueued: u64,
    /// Entries freed.
    pub reclaimed: u64,
    /// Entries waiting for a flush.
    pub pending: u64,
    /// Global flushes completed.
    pub flushes: u64,
    /// Flushes forced by a full ring.
    pub full_flushes: u64,
    /// Timer runs.
    pub timer_fires: u64,
}

impl fmt::Display for FqStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "enqueued {} reclaimed {} pending {} flushes {} (ring full {}) timer runs {}",
            self.enqueued,
            self.reclaimed,
            self.pending,
            self.flushes,
            self.full_flushes,
            self.timer_fires
        )
    }
}

struct Slot<E> {
    stamp: u64,
    entry: E,
}

/// One ring: `head` is the oldest entry, `tail` the next free slot; one slot stays empty so
/// that full (`tail + 1 == head`) and empty (`tail == head`) differ. Accessed under its lock.
struct Ring<E> {
    slots: Box<[Option<Slot<E>>]>,
    head: usize,
    tail: usize,
    /// Set by teardown once it emptied the ring: no timer will run again, so a later
    /// enqueue frees its entry after a flush of its own instead of queueing it.
    closed: bool,
    /// The `finish_cnt` the last drain freed up to: while it is unchanged nothing here has
    /// become freeable (every entry queued since was stamped at or above it).
    drained_at: u64,
    enqueued: u64,
    reclaimed: u64,
    full_flushes: u64,
}

impl<E> Ring<E> {
    /// An empty ring of `size` slots, or `None` if its memory cannot be allocated.
    fn try_new(size: usize) -> Option<Self> {
        if crate::faults::FQ_RING_ALLOC.fail() {
            return None;
        }
        let mut slots = Vec::new();
        slots.try_reserve_exact(size).ok()?;
        slots.resize_with(size, || None);
        Some(Self {
            slots: slots.into_boxed_slice(),
            head: 0,
            tail: 0,
            closed: false,
            drained_at: 0,
            enqueued: 0,
            reclaimed: 0,
            full_flushes: 0,
        })
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn len(&self) -> usize {
        self.tail.wrapping_sub(self.head) & self.mask()
    }

    fn is_full(&self) -> bool {
        (self.tail + 1) & self.mask() == self.head
    }

    /// Append. Proven by the only caller, under the ring lock: the ring is not full (it
    /// drained until it was not), and `stamp` was read from the monotone `start_cnt` after
    /// the stamp of every entry already here (read earlier under this lock).
    fn push(&mut self, stamp: u64, entry: E) {
        debug_assert!(!self.is_full());
        debug_assert!(
            self.head == self.tail || self.newest_stamp() <= stamp,
            "stamps must not decrease"
        );
        self.slots[self.tail] = Some(Slot { stamp, entry });
        self.tail = (self.tail + 1) & self.mask();
        self.enqueued += 1;
    }

    fn newest_stamp(&self) -> u64 {
        let last = self.tail.wrapping_sub(1) & self.mask();
        self.slots[last].as_ref().map_or(0, |s| s.stamp)
    }

    /// Remove the oldest entry if its stamp is below `finish`.
    fn pop_if_before(&mut self, finish: u64) -> Option<E> {
        if self.head == self.tail || self.slots[self.head].as_ref()?.stamp >= finish {
            return None;
        }
        let slot = self.slots[self.head].take()?;
        self.head = (self.head + 1) & self.mask();
        self.reclaimed += 1;
        Some(slot.entry)
    }
}

/// One ring behind its lock, on its own cache line. A spin lock: its unlock is a store where a
/// parking lock's is a compare-and-swap, and its acquisition carries the enqueue fence. Its
/// sections are a drain and a push; no flush runs under it.
type RingSlot<E> = CachePadded<SpinLock<Ring<E>>>;

/// The rings, written once by the constructor. In a cell only so that loom checks the one read
/// of them that comes before any fence or lock of an enqueue (the ring lookup) against the
/// queue's publication: that read relies on the unmap's acquire snapshot alone.
struct Rings<E>(UnsafeCell<Box<[RingSlot<E>]>>);

// SAFETY: the cell is written only by the constructor, before the queue is shared, and only
// read afterwards; the slots themselves are `Sync` (spin locks over `Send` entries).
unsafe impl<E: Send> Sync for Rings<E> {}

impl<E> Rings<E> {
    /// The rings (never changed after construction).
    #[inline]
    fn get(&self) -> &[RingSlot<E>] {
        // SAFETY: nothing writes the box after construction, so a shared reference for as
        // long as `self` lives aliases no write.
        self.0.with(|p| unsafe { &**p })
    }
}

/// Most entries one drain frees under a ring lock: a lock section stays short even on a single
/// shared ring of 32768 entries (waiters spin, then yield). An enqueue drains again next time;
/// the timer and teardown take the lock again until the freeable prefix is gone. 64 is also
/// the run the domain frees per IOVA-cache slot-lock acquisition.
const DRAIN_BATCH: usize = 64;

/// Counts a flush as abandoned if dropped, i.e. if `flush_all` unwinds (forgotten otherwise).
struct Abandon<'a>(&'a AtomicU64);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(not(loom))]
std::thread_local! {
    /// Set while this thread runs [`InvalidationOps::reclaim_all`] for a drain, which holds a
    /// ring lock: an enqueue made meanwhile must not take a ring lock.
    static RECLAIMING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(loom)]
dma_sync::thread::thread_local! {
    /// As above, one value per model thread.
    static RECLAIMING: std::cell::Cell<bool> = std::cell::Cell::new(false);
}

/// Whether this thread is inside a drain's `reclaim` (so it holds a ring lock).
#[inline]
fn reclaiming() -> bool {
    RECLAIMING.with(|r| r.get())
}

/// Marks this thread as reclaiming for as long as it lives (also if `reclaim` unwinds),
/// restoring the previous state (a drain inside another's `reclaim` goes on being one).
struct Reclaiming(bool);

impl Reclaiming {
    fn enter() -> Self {
        Self(RECLAIMING.with(|r| r.replace(true)))
    }
}

impl Drop for Reclaiming {
    fn drop(&mut self) {
        let outer = self.0;
        RECLAIMING.with(|r| r.set(outer));
    }
}

/// Why an enqueue could not append under the ring lock: it hands its entry back.
enum NotPushed<E> {
    /// The ring is full even after a drain: flush (outside the lock) and try again.
    Full(E),
    /// Torn down: free the entry after a flush of its own.
    Closed(E),
}

struct TimerState {
    /// Set by teardown: the timer never runs again.
    dead: bool,
    fires: u64,
}

struct Shared<O: InvalidationOps> {
    ops: Arc<O>,
    rings: Rings<O::Entry>,
    start_cnt: AtomicU64,
    finish_cnt: AtomicU64,
    /// Flushes whose `flush_all` panicked: started, never finished (their invalidation may
    /// not have happened), so `finish_cnt` stays behind `start_cnt` by this many for good.
    abandoned: AtomicU64,
    /// Entries enqueued from inside a `reclaim`, freed at once (counted as queued and
    /// reclaimed).
    freed_at_once: AtomicU64,
    timer_on: AtomicBool,
    /// Held for a whole timer run, so teardown waits for a running drain.
    timer: Mutex<TimerState>,
    config: FqConfig,
    #[cfg(not(loom))]
    thread: crate::timer::Waker,
}

impl<O: InvalidationOps> Shared<O> {
    /// The rings.
    #[inline]
    fn rings(&self) -> &[RingSlot<O::Entry>] {
        self.rings.get()
    }

    /// One global flush, counted. Returns its ticket: the number of flushes started up to and
    /// including it; once `finish_cnt` reaches it, every entry stamped before it is freeable.
    fn flush(&self) -> u64 {
        let ticket = self.start_cnt.fetch_add(1, Ordering::Relaxed) + 1;
        // Pairs with the enqueue fence: if an enqueuer's stamp missed this increment, its leaf
        // clears are visible to the walker once the invalidation below has run.
        FQ_FLUSH_FENCE.fence(Ordering::SeqCst);
        let unwinding = Abandon(&self.abandoned);
        self.ops.flush_all();
        std::mem::forget(unwinding);
        self.finish_cnt
            .fetch_add(1, FQ_FINISH_RELEASE.ord(Ordering::Release));
        ticket
    }

    /// Flushes that are over: finished, or abandoned by a panicking `flush_all` (which a
    /// wait for earlier flushes must not wait for: it never finishes).
    fn flushes_over(&self) -> u64 {
        let finished = self.finish_cnt.load(Ordering::Relaxed);
        finished + self.abandoned.load(Ordering::Relaxed)
    }

    /// Free the ring's freeable prefix, at most [`DRAIN_BATCH`] entries; `true` if nothing
    /// freeable is left (as of the flush count read). Most enqueues come between two flushes:
    /// the count they read is the one the ring was last drained to, and the ring is left alone
    /// (inline; the freeing is out of line).
    #[inline]
    fn drain(&self, ring: &mut Ring<O::Entry>) -> bool {
        let finish = self
            .finish_cnt
            .load(FQ_FINISH_ACQUIRE.ord(Ordering::Acquire));
        finish == ring.drained_at || self.drain_to(ring, finish)
    }

    /// Free up to [`DRAIN_BATCH`] entries stamped below `finish`, the flush count just read;
    /// `true` if it stopped before the budget ran out (at the end of the freeable prefix).
    #[inline(never)]
    fn drain_to(&self, ring: &mut Ring<O::Entry>, finish: u64) -> bool {
        let mut budget = DRAIN_BATCH;
        let _inside = Reclaiming::enter();
        self.ops.reclaim_all(std::iter::from_fn(|| {
            if budget == 0 {
                return None;
            }
            let entry = ring.pop_if_before(finish)?;
            budget -= 1;
            Some(entry)
        }));
        let done = budget > 0;
        if done {
            ring.drained_at = finish;
        }
        done
    }

    /// Queue `entry`, whose leaves the caller has cleared. The first acquisition of the ring
    /// lock carries the enqueue fence (`iommu.fq.enqueue.fence`): it orders the caller's leaf
    /// clears before the stamp. A ring still full after a drain is flushed outside its lock,
    /// then tried again; another flush is needed only if one that started earlier on another
    /// CPU is still running, or if others filled the ring meanwhile.
    #[inline]
    fn enqueue(&self, entry: O::Entry) {
        if reclaiming() {
            return self.enqueue_reclaiming(entry);
        }
        let rings = self.rings();
        let ring = &rings[cpu::current_in(rings.len())];
        match ring.with_fenced(&FQ_ENQUEUE_FENCE, |r| self.try_push(r, entry)) {
            Ok(()) => self.arm(),
            Err(refused) => self.enqueue_refused(ring, refused),
        }
    }

    /// [`Shared::enqueue`] after `ring` refused the entry (full after a drain, or closed),
    /// out of line: flush and try again, or free it at once into a torn-down queue.
    #[cold]
    #[inline(never)]
    fn enqueue_refused(&self, ring: &RingSlot<O::Entry>, refused: NotPushed<O::Entry>) {
        let mut tried = Err(refused);
        loop {
            match tried {
                Ok(()) => return self.arm(),
                Err(NotPushed::Full(entry)) => {
                    let ticket = self.flush();
                    // Only if a flush started earlier on another CPU is still running: our
                    // own completion is counted but not its, so wait for it (every entry we
                    // found was stamped below our ticket). Flushing again is for a ring that
                    // others filled meanwhile.
                    while self.flushes_over() < ticket {
                        thread::spin_wait();
                    }
                    tried = ring.with(|r| self.try_push(r, entry));
                }
                Err(NotPushed::Closed(entry)) => {
                    // Torn down: free it as a strict unmap would, after a flush that started
                    // after the caller's leaf clears (ordered by the enqueue fence).
                    self.flush();
                    return self.ops.reclaim(entry);
                }
            }
        }
    }

    /// An enqueue from inside a drain's `reclaim`, whose thread holds a ring lock (perhaps
    /// the one this enqueue would take): no ring lock; the entry is freed at once, as a
    /// strict unmap would free it, after a flush whose fence orders the caller's leaf clears
    /// before its invalidation.
    #[cold]
    #[inline(never)]
    fn enqueue_reclaiming(&self, entry: O::Entry) {
        self.flush();
        self.freed_at_once.fetch_add(1, Ordering::Relaxed);
        self.ops.reclaim(entry);
    }

    /// Under the ring lock: drain, then append `entry` stamped with `start_cnt`, unless the
    /// ring is closed or still full.
    #[inline]
    fn try_push(&self, r: &mut Ring<O::Entry>, entry: O::Entry) -> Result<(), NotPushed<O::Entry>> {
        if r.closed {
            // Counted as queued and reclaimed, so `enqueued` counts every enqueue.
            r.enqueued += 1;
            r.reclaimed += 1;
            return Err(NotPushed::Closed(entry));
        }
        // A full ring whose oldest entry is freeable is no longer full after one batch.
        self.drain(r);
        if r.is_full() {
            r.full_flushes += 1;
            return Err(NotPushed::Full(entry));
        }
        // Read under the lock after every stamp already here: stamps in a ring never decrease.
        let stamp = self.start_cnt.load(Ordering::Relaxed);
        r.push(stamp, entry);
        Ok(())
    }

    /// Free every freeable entry of `ring`, one lock section per batch (so an enqueue waiting
    /// for the lock gets in between), running `each` first in every section; returns the
    /// entries left.
    fn drain_all(&self, ring: &RingSlot<O::Entry>, each: impl Fn(&mut Ring<O::Entry>)) -> usize {
        loop {
            let (done, len) = ring.with(|r| {
                each(r);
                (self.drain(r), r.len())
            });
            if done {
                return len;
            }
        }
    }

    /// Arm the timer unless it is armed (read first: no cache-line bouncing when armed).
    fn arm(&self) {
        if !self.timer_on.load(Ordering::Relaxed) && !self.timer_on.swap(true, Ordering::Relaxed) {
            #[cfg(not(loom))]
            self.thread.wake();
        }
    }

    /// The timer's work: flush once, drain every ring. `false` once torn down.
    fn fire(&self) -> bool {
        if reclaiming() {
            // Inside a drain's `reclaim`: this thread holds a ring lock (perhaps the timer
            // lock too), which a timer run would wait for. The timer will run.
            return true;
        }
        let mut st = self.timer.lock();
        if st.dead {
            return false;
        }
        // Cleared before draining: the ring locks order it before (or after) any racing
        // enqueue, which then either is drained here or sees the timer off and re-arms it.
        let clear_first = FQ_TIMER_CLEAR_FIRST.on();
        if clear_first {
            self.timer_on.store(false, Ordering::Relaxed);
        }
        self.flush();
        let mut left = false;
        for ring in self.rings().iter() {
            left |= self.drain_all(ring, |_| {}) > 0;
        }
        if !clear_first {
            self.timer_on.store(false, Ordering::Relaxed);
        }
        st.fires += 1;
        // Entries stamped after this flush started need the next one.
        if left && FQ_TIMER_REARM.on() {
            self.arm();
        }
        true
    }
}

/// A flush queue: deferred freeing after global IOTLB flushes.
///
/// ```
/// use dma_iommu::{FlushQueue, FqConfig, Gather, InvalidationOps};
/// use dma_sync::{Arc, Mutex};
/// use std::time::Duration;
/// #[derive(Default)]
/// struct Ops { flushes: Mutex<u32>, freed: Mutex<Vec<u64>> }
/// impl InvalidationOps for Ops {
///     type Entry = u64;
///     fn flush_all(&self) { *self.flushes.lock() += 1; }
///     fn sync(&self, _g: &mut Gather) {}
///     fn reclaim(&self, iova: u64) { self.freed.lock().push(iova); }
/// }
/// let ops = Arc::new(Ops::default());
/// let slow_timer = FqConfig::per_cpu().with_ring_size(4).with_timeout(Duration::from_secs(3600));
/// let fq = FlushQueue::new(ops.clone(), slow_timer).unwrap();
/// fq.enqueue(0x1000);
/// assert!(ops.freed.lock().is_empty()); // not before a flush
/// fq.fire_timer();
/// assert_eq!(*ops.freed.lock(), [0x1000]);
/// fq.shutdown();
/// ```
pub struct FlushQueue<O: InvalidationOps> {
    shared: Arc<Shared<O>>,
    closed: AtomicBool,
    #[cfg(not(loom))]
    timer: Mutex<Option<crate::timer::TimerThread>>,
}

impl<O: InvalidationOps> FlushQueue<O> {
    /// Build the rings and counters and start the timer (not under loom: models run the
    /// timer's work with [`FlushQueue::fire_timer`]).
    ///
    /// ```
    /// use dma_iommu::{FlushQueue, FqConfig, FqError, Gather, InvalidationOps};
    /// use dma_sync::Arc;
    /// struct Ops;
    /// impl InvalidationOps for Ops {
    ///     type Entry = ();
    ///     fn flush_all(&self) {}
    ///     fn sync(&self, _g: &mut Gather) {}
    ///     fn reclaim(&self, _: ()) {}
    /// }
    /// let bad = FqConfig::per_cpu().with_ring_size(1);
    /// assert!(matches!(FlushQueue::new(Arc::new(Ops), bad), Err(FqError::RingSize(1))));
    /// let fq = FlushQueue::new(Arc::new(Ops), FqConfig::single()).unwrap();
    /// assert_eq!(fq.config().rings(), 1);
    /// ```
    pub fn new(ops: Arc<O>, config: FqConfig) -> Result<Self, FqError> {
        config.validate()?;
        // Every ring before anything else (the timer thread): a failure leaves nothing behind.
        let rings = (0..config.rings())
            .map(|_| Ring::try_new(config.ring_size).map(|r| CachePadded::new(SpinLock::new(r))))
            .collect::<Option<_>>()
            .ok_or(FqError::NoMemory)?;
        let shared = Arc::new(Shared {
            ops,
            rings: Rings(UnsafeCell::new(rings)),
            start_cnt: AtomicU64::new(0),
            finish_cnt: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            freed_at_once: AtomicU64::new(0),
            timer_on: AtomicBool::new(false),
            timer: Mutex::new(TimerState {
                dead: false,
                fires: 0,
            }),
            config,
            #[cfg(not(loom))]
            thread: crate::timer::Waker::default(),
        });
        #[cfg(not(loom))]
        let timer = {
            let s = shared.clone();
            let t = crate::timer::TimerThread::start(
                config.timeout,
                move || s.timer_on.load(Ordering::Relaxed),
                {
                    let s = shared.clone();
                    move || s.fire()
                },
            );
            shared.thread.set(t.thread());
            Mutex::new(Some(t))
        };
        Ok(Self {
            shared,
            closed: AtomicBool::new(false),
            #[cfg(not(loom))]
            timer,
        })
    }

    /// Queue `entry`, whose leaves the caller has cleared; it is freed after a later flush.
    ///
    /// ```
    /// use dma_iommu::{FlushQueue, FqConfig, Gather, InvalidationOps};
    /// use dma_sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// #[derive(Default)]
    /// struct Ops { freed: Mutex<Vec<u64>> }
    /// impl InvalidationOps for Ops {
    ///     type Entry = u64;
    ///     fn flush_all(&self) {}
    ///     fn sync(&self, _g: &mut Gather) {}
    ///     fn reclaim(&self, iova: u64) { self.freed.lock().push(iova); }
    /// }
    /// let ops = Arc::new(Ops::default());
    /// // One ring of capacity 1, and a timer that does not run during the example.
    /// let cfg = FqConfig::single().with_ring_size(2).with_timeout(Duration::from_secs(3600));
    /// let fq = FlushQueue::new(ops.clone(), cfg).unwrap();
    /// fq.enqueue(1);
    /// assert!(fq.timer_armed());
    /// fq.enqueue(2); // the ring is full: flush now, free entry 1, queue entry 2
    /// assert_eq!(*ops.freed.lock(), [1]);
    /// let st = fq.stats();
    /// assert_eq!((st.enqueued, st.reclaimed, st.pending, st.full_flushes), (2, 1, 1, 1));
    /// ```
    pub fn enqueue(&self, entry: O::Entry) {
        self.shared.enqueue(entry);
    }

    /// Enqueue through a pointer to a published queue.
    ///
    /// # Safety
    /// `this` was read with an acquire load (`iommu.unmap.snapshot.acquire`) from a
    /// publication made with a release store after the queue was fully built, is never
    /// unpublished while unmaps run, and stays valid for the duration of the call.
    pub(crate) unsafe fn enqueue_published(this: *const Self, entry: O::Entry) {
        // SAFETY: per the contract, the pointee is initialised and visible after the acquire.
        let fq = unsafe { &*this };
        fq.shared.enqueue(entry);
    }

    /// One global flush now (counted; frees nothing by itself).
    pub fn flush(&self) {
        self.shared.flush();
    }

    /// Run the timer's work now: flush once, drain all rings. Returns `false` after teardown.
    /// From inside an [`InvalidationOps::reclaim`] it does nothing (and returns `true`): the
    /// drain running it holds a ring lock.
    pub fn fire_timer(&self) -> bool {
        self.shared.fire()
    }

    /// Whether the timer is armed.
    pub fn timer_armed(&self) -> bool {
        self.shared.timer_on.load(Ordering::Relaxed)
    }

    /// The configuration.
    pub fn config(&self) -> &FqConfig {
        &self.shared.config
    }

    /// Counters (each ring is locked briefly). From inside an [`InvalidationOps::reclaim`],
    /// whose drain holds a ring lock and perhaps the timer's, it waits for no lock: rings
    /// (and the timer count) locked at that moment are left out.
    pub fn stats(&self) -> FqStats {
        // Inside a drain's `reclaim` this thread may hold a ring lock and the timer's: it
        // cannot wait for either, so it counts only what it can lock at once.
        let inside = reclaiming();
        let at_once = self.shared.freed_at_once.load(Ordering::Relaxed);
        let timer_fires = if inside {
            self.shared.timer.try_lock().map_or(0, |st| st.fires)
        } else {
            self.shared.timer.lock().fires
        };
        let mut s = FqStats {
            enqueued: at_once,
            reclaimed: at_once,
            flushes: self.shared.finish_cnt.load(Ordering::Relaxed),
            timer_fires,
            ..FqStats::default()
        };
        let mut add = |r: &mut Ring<O::Entry>| {
            s.enqueued += r.enqueued;
            s.reclaimed += r.reclaimed;
            s.pending += r.len() as u64;
            s.full_flushes += r.full_flushes;
        };
        for ring in self.shared.rings().iter() {
            if inside {
                ring.try_with(&mut add);
            } else {
                ring.with(&mut add);
            }
        }
        s
    }

    /// Stop the timer (waiting for a running drain), flush, and free every queued entry.
    ///
    /// The owner calls it when the domain is quiesced; an enqueue that races with it or comes
    /// after it still has its entry freed (teardown flushes again for an entry that arrived
    /// meanwhile; a later enqueue flushes and frees at once). Idempotent; also run on drop.
    /// From inside an [`InvalidationOps::reclaim`] it does nothing: the drain running it holds
    /// a ring lock teardown would wait for.
    ///
    /// ```
    /// use dma_iommu::{FlushQueue, FqConfig, Gather, InvalidationOps};
    /// use dma_sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// #[derive(Default)]
    /// struct Ops { freed: Mutex<Vec<u64>> }
    /// impl InvalidationOps for Ops {
    ///     type Entry = u64;
    ///     fn flush_all(&self) {}
    ///     fn sync(&self, _g: &mut Gather) {}
    ///     fn reclaim(&self, iova: u64) { self.freed.lock().push(iova); }
    /// }
    /// let ops = Arc::new(Ops::default());
    /// let fq = FlushQueue::new(ops.clone(), FqConfig::single().with_timeout(Duration::from_secs(3600))).unwrap();
    /// fq.enqueue(7);
    /// fq.shutdown();
    /// assert_eq!(*ops.freed.lock(), [7]);
    /// assert!(!fq.fire_timer()); // torn down
    /// ```
    pub fn shutdown(&self) {
        if reclaiming() {
            // Inside a drain's `reclaim`, whose thread holds a ring lock that teardown would
            // wait for: nothing now; a later call, or the drop, tears down.
            return;
        }
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        if FQ_TEARDOWN_STOP_TIMER.on() {
            // Waits for a running timer drain, and no later one does anything.
            self.shared.timer.lock().dead = true;
        }
        #[cfg(not(loom))]
        if let Some(t) = self.timer.lock().take() {
            t.stop();
        }
        let s = &self.shared;
        s.flush();
        for ring in s.rings().iter() {
            // Quiesced, every entry was stamped before the flush above started and is gone.
            // One that a racing enqueue stamped later needs a flush of its own (outside the
            // lock; the closed ring takes no new entry meanwhile).
            while s.drain_all(ring, |r| r.closed = true) > 0 {
                s.flush();
            }
        }
        s.timer_on.store(false, Ordering::Relaxed);
    }
}

impl<O: InvalidationOps> Drop for FlushQueue<O> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl<O: InvalidationOps> fmt::Debug for FlushQueue<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushQueue")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use dma_sync::hang::within_30_s;

    /// Records flushes and frees; every entry carries the number of flushes *started* when it
    /// was queued, and a free asserts that a flush started after that has completed.
    #[derive(Default)]
    struct Ops {
        started: dma_sync::atomic::AtomicU64,
        completed: dma_sync::atomic::AtomicU64,
        freed: Mutex<Vec<u64>>,
    }

    #[derive(Debug)]
    struct Entry {
        id: u64,
        started_at_enqueue: u64,
    }

    impl InvalidationOps for Ops {
        type Entry = Entry;
        fn flush_all(&self) {
            self.started.fetch_add(1, Ordering::SeqCst);
            self.completed.fetch_add(1, Ordering::SeqCst);
        }
        fn sync(&self, _g: &mut Gather) {}
        fn reclaim(&self, e: Entry) {
            assert!(
                self.completed.load(Ordering::SeqCst) > e.started_at_enqueue,
                "{e:?} freed before a later flush"
            );
            self.freed.lock().push(e.id);
        }
    }

    impl Ops {
        fn entry(&self, id: u64) -> Entry {
            Entry {
                id,
                started_at_enqueue: self.started.load(Ordering::SeqCst),
            }
        }
        fn freed(&self) -> Vec<u64> {
            let mut v = self.freed.lock().clone();
            v.sort_unstable();
            v
        }
    }

    /// Fresh ops, with the test thread on CPU 0 (Miri cannot ask the kernel for the CPU).
    fn cpu0_ops() -> Arc<Ops> {
        dma_sync::cpu::set_current(Some(0));
        Arc::new(Ops::default())
    }

    fn queue(config: FqConfig) -> (Arc<Ops>, FlushQueue<Ops>) {
        let ops = cpu0_ops();
        let fq =
            FlushQueue::new(ops.clone(), config.with_timeout(Duration::from_secs(3600))).unwrap();
        (ops, fq)
    }

    #[test]
    fn a_drain_frees_one_batch_per_lock_section_and_the_timer_frees_all() {
        let (ops, fq) = queue(FqConfig::single().with_ring_size(256));
        for id in 0..255 {
            fq.enqueue(ops.entry(id));
        }
        fq.flush();
        // Every queued entry is freeable; this enqueue's section frees one batch only.
        fq.enqueue(ops.entry(255));
        assert_eq!(ops.freed(), (0..DRAIN_BATCH as u64).collect::<Vec<_>>());
        fq.enqueue(ops.entry(256));
        assert_eq!(ops.freed().len(), 2 * DRAIN_BATCH);
        // The timer takes the lock again until nothing freeable is left: all but the two
        // entries queued after the first flush are freed by its own flush, those too.
        assert!(fq.fire_timer());
        assert_eq!(ops.freed(), (0..257).collect::<Vec<_>>());
        assert!(!fq.timer_armed());
        let st = fq.stats();
        assert_eq!((st.enqueued, st.reclaimed, st.pending), (257, 257, 0));
        fq.shutdown();
    }

    #[test]
    fn teardown_frees_a_ring_longer_than_a_batch() {
        let (ops, fq) = queue(FqConfig::single().with_ring_size(256));
        for id in 0..200 {
            fq.enqueue(ops.entry(id));
        }
        fq.shutdown();
        assert_eq!(ops.freed(), (0..200).collect::<Vec<_>>());
        assert_eq!(fq.stats().pending, 0);
    }

    #[test]
    fn entries_wait_for_a_flush() {
        let (ops, fq) = queue(FqConfig::per_cpu().with_cpus(1).with_ring_size(8));
        fq.enqueue(ops.entry(1));
        fq.enqueue(ops.entry(2));
        assert!(ops.freed().is_empty());
        assert!(fq.timer_armed());
        assert!(fq.fire_timer());
        assert!(!fq.timer_armed(), "everything drained: the timer stays off");
        assert_eq!(ops.freed(), [1, 2]);
        let s = fq.stats();
        assert_eq!(
            (s.enqueued, s.reclaimed, s.pending, s.flushes, s.timer_fires),
            (2, 2, 0, 1, 1)
        );
    }

    #[test]
    fn a_flush_frees_at_the_next_enqueue() {
        let (ops, fq) = queue(FqConfig::per_cpu().with_cpus(1).with_ring_size(8));
        fq.enqueue(ops.entry(1));
        fq.flush();
        fq.enqueue(ops.entry(2));
        assert_eq!(ops.freed(), [1]);
        assert_eq!(fq.stats().pending, 1);
    }

    #[test]
    fn a_full_ring_flushes_synchronously() {
        let (ops, fq) = queue(FqConfig::single().with_ring_size(4));
        for id in 0..3 {
            fq.enqueue(ops.entry(id));
        }
        assert!(ops.freed().is_empty());
        fq.enqueue(ops.entry(3));
        assert_eq!(ops.freed(), [0, 1, 2]);
        let s = fq.stats();
        assert_eq!((s.full_flushes, s.flushes, s.pending), (1, 1, 1));
    }

    #[test]
    fn per_cpu_rings_drain_only_their_own() {
        let (ops, fq) = queue(FqConfig::per_cpu().with_cpus(2).with_ring_size(8));
        dma_sync::cpu::set_current(Some(0));
        fq.enqueue(ops.entry(0));
        dma_sync::cpu::set_current(Some(1));
        fq.enqueue(ops.entry(1));
        fq.flush();
        dma_sync::cpu::set_current(Some(0));
        fq.enqueue(ops.entry(2));
        dma_sync::cpu::set_current(None);
        assert_eq!(ops.freed(), [0]);
        assert_eq!(fq.stats().pending, 2);
        fq.fire_timer();
        assert_eq!(ops.freed(), [0, 1, 2]);
    }

    #[test]
    fn shutdown_frees_everything_once_and_stops_the_timer() {
        let (ops, fq) = queue(FqConfig::per_cpu().with_cpus(3).with_ring_size(4));
        for id in 0..7 {
            dma_sync::cpu::set_current(Some(id as usize % 3));
            fq.enqueue(ops.entry(id));
        }
        dma_sync::cpu::set_current(None);
        fq.shutdown();
        assert_eq!(ops.freed(), (0..7).collect::<Vec<_>>());
        assert!(!fq.fire_timer(), "the timer is dead after teardown");
        fq.shutdown();
        drop(fq);
        assert_eq!(ops.freed().len(), 7);
    }

    #[test]
    fn an_enqueue_after_shutdown_is_freed_at_once() {
        let (ops, fq) = queue(FqConfig::per_cpu().with_cpus(2).with_ring_size(4));
        fq.enqueue(ops.entry(1));
        fq.shutdown();
        fq.enqueue(ops.entry(2));
        assert_eq!(ops.freed(), [1, 2], "nothing stranded after teardown");
        let s = fq.stats();
        assert_eq!(
            (s.enqueued, s.reclaimed, s.pending),
            (2, 2, 0),
            "the late entry counts as queued and reclaimed"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore)] // contended locks park through a futex call that Miri rejects
    fn enqueues_racing_with_shutdown_lose_nothing() {
        let ops = cpu0_ops();
        let cfg = FqConfig::per_cpu().with_cpus(2).with_ring_size(8);
        let fq = Arc::new(FlushQueue::new(ops.clone(), cfg).unwrap());
        // Entries 0..100 come before teardown, 100..200 race with it, 200..300 come after.
        let started = std::sync::Arc::new(std::sync::Barrier::new(3));
        let done = std::sync::Arc::new(std::sync::Barrier::new(3));
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let (ops, fq) = (ops.clone(), fq.clone());
                let (started, done) = (started.clone(), done.clone());
                dma_sync::thread::spawn(move || {
                    dma_sync::cpu::set_current(Some(t as usize));
                    for i in 0..300 {
                        match i {
                            100 => _ = started.wait(),
                            200 => _ = done.wait(),
                            _ => {}
                        }
                        fq.enqueue(ops.entry(t * 1000 + i));
                    }
                })
            })
            .collect();
        started.wait();
        fq.shutdown();
        done.wait();
        for t in threads {
            t.join().unwrap();
        }
        // No flush, no timer run: everything was freed by teardown or at its enqueue.
        let expect: Vec<u64> = (0..2u64)
            .flat_map(|t| (0..300).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(ops.freed(), expect);
        assert_eq!(fq.stats().pending, 0);
    }

    #[test]
    #[cfg_attr(miri, ignore)] // waits for a real-time timer
    fn the_background_timer_drains() {
        let ops = cpu0_ops();
        let fq = FlushQueue::new(
            ops.clone(),
            FqConfig::per_cpu().with_timeout(Duration::from_millis(1)),
        )
        .unwrap();
        fq.enqueue(ops.entry(9));
        // Eventually, with a generous bound so a loaded machine does not fail the test.
        for _ in 0..20_000 {
            if !ops.freed().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ops.freed(), [9]);
        assert!(fq.stats().timer_fires >= 1);
    }

    #[test]
    #[cfg_attr(miri, ignore)] // contended locks park through a futex call that Miri rejects
    fn dropping_a_queue_with_a_running_timer_frees_everything() {
        let ops = cpu0_ops();
        {
            let fq = FlushQueue::new(
                ops.clone(),
                FqConfig::per_cpu().with_timeout(Duration::ZERO),
            )
            .unwrap();
            for id in 0..100 {
                fq.enqueue(ops.entry(id));
            }
        }
        assert_eq!(ops.freed(), (0..100).collect::<Vec<_>>());
    }

    /// Frees by enqueueing a follow-up entry (`id + 100`, once) into the queue that frees it.
    #[derive(Default)]
    struct Requeue {
        fq: Mutex<Option<Arc<FlushQueue<Requeue>>>>,
        freed: Mutex<Vec<u64>>,
    }

    impl InvalidationOps for Requeue {
        type Entry = u64;
        fn flush_all(&self) {}
        fn sync(&self, _g: &mut Gather) {}
        fn reclaim(&self, id: u64) {
            self.freed.lock().push(id);
            let fq = self.fq.lock().clone();
            if let (true, Some(fq)) = (id < 100, fq) {
                fq.enqueue(id + 100);
            }
        }
    }

    #[test]
    fn a_reclaim_may_enqueue_into_its_own_queue() {
        let done = within_30_s(a_reclaim_enqueues_into_its_own_queue);
        assert!(done.is_some(), "hung");
    }

    fn a_reclaim_enqueues_into_its_own_queue() {
        dma_sync::cpu::set_current(Some(0));
        let ops = Arc::new(Requeue::default());
        let cfg = FqConfig::per_cpu()
            .with_cpus(1)
            .with_ring_size(4)
            .with_timeout(Duration::from_secs(3600));
        let fq = Arc::new(FlushQueue::new(ops.clone(), cfg).unwrap());
        *ops.fq.lock() = Some(fq.clone());
        // The fourth finds the ring full: its flush makes 0..3 freeable, and freeing them
        // enqueues 100..103 from inside the drain, each freed at once after a flush.
        for id in 0..4 {
            fq.enqueue(id);
        }
        let mut freed = ops.freed.lock().clone();
        freed.sort_unstable();
        assert_eq!(freed, [0, 1, 2, 100, 101, 102]);
        assert_eq!(fq.stats().pending, 1);
        assert!(fq.fire_timer());
        fq.enqueue(4); // into a drained ring, then a teardown whose frees queue again
        fq.shutdown();
        ops.fq.lock().take();
        let mut freed = ops.freed.lock().clone();
        freed.sort_unstable();
        assert_eq!(freed, [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]);
        let st = fq.stats();
        assert_eq!((st.enqueued, st.reclaimed, st.pending), (10, 10, 0));
    }

    /// Frees by reading its own queue's counters (the ring its drain holds left out) and
    /// running its timer work and teardown (both do nothing from inside a `reclaim`), and
    /// panics freeing entry 1.
    #[derive(Default)]
    struct Nosy {
        fq: Mutex<Option<Arc<FlushQueue<Nosy>>>>,
        freed: Mutex<Vec<u64>>,
        pending_seen: Mutex<Vec<u64>>,
    }

    impl InvalidationOps for Nosy {
        type Entry = u64;
        fn flush_all(&self) {}
        fn sync(&self, _g: &mut Gather) {}
        fn reclaim(&self, id: u64) {
            if let Some(fq) = self.fq.lock().clone() {
                let pending = fq.stats().pending;
                self.pending_seen.lock().push(pending);
                assert!(fq.fire_timer());
                fq.shutdown();
            }
            assert_ne!(id, 1, "a reclaim that unwinds");
            self.freed.lock().push(id);
        }
    }

    #[test]
    fn a_reclaim_may_run_its_queues_timer_and_teardown_and_one_that_panics_leaves_it_working() {
        let done = within_30_s(|| {
            dma_sync::cpu::set_current(Some(0));
            let ops = Arc::new(Nosy::default());
            let cfg = FqConfig::single()
                .with_ring_size(8)
                .with_timeout(Duration::from_secs(3600));
            let fq = Arc::new(FlushQueue::new(ops.clone(), cfg).unwrap());
            *ops.fq.lock() = Some(fq.clone());
            for id in 0..3 {
                fq.enqueue(id);
            }
            fq.flush();
            // Entry 3's drain frees 0, then freeing 1 unwinds out of the enqueue (entry 3 is
            // dropped with it); 2 stays queued, the ring lock is released, the flag cleared.
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fq.enqueue(3)));
            assert!(unwound.is_err());
            assert!(!reclaiming());
            assert_eq!(*ops.freed.lock(), [0]);
            assert_eq!(fq.stats().pending, 1);
            fq.enqueue(4); // frees 2
            assert_eq!(*ops.freed.lock(), [0, 2]);
            fq.shutdown();
            ops.fq.lock().take();
            assert_eq!(*ops.freed.lock(), [0, 2, 4]);
            // The single ring was the drain's own each time: no count from it.
            assert_eq!(*ops.pending_seen.lock(), [0; 4]);
            let st = fq.stats();
            assert_eq!((st.enqueued, st.reclaimed, st.pending), (4, 4, 0));
        });
        assert!(done.is_some(), "hung");
    }

    #[test]
    fn bad_geometry_is_rejected() {
        let ops = cpu0_ops();
        for c in [
            FqConfig::per_cpu().with_ring_size(0),
            FqConfig::single().with_ring_size(100),
        ] {
            assert!(matches!(
                FlushQueue::new(ops.clone(), c),
                Err(FqError::RingSize(_))
            ));
        }
        let e = FlushQueue::new(ops, FqConfig::per_cpu().with_cpus(0)).unwrap_err();
        assert_eq!(e, FqError::NoRings);
        assert!(e.to_string().contains("at least one CPU"));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // contended locks park through a futex call that Miri rejects
    fn concurrent_enqueues_and_timer_lose_nothing() {
        let ops = cpu0_ops();
        let fq = Arc::new(
            FlushQueue::new(
                ops.clone(),
                FqConfig::per_cpu()
                    .with_cpus(4)
                    .with_ring_size(8)
                    .with_timeout(Duration::from_micros(100)),
            )
            .unwrap(),
        );
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (ops, fq) = (ops.clone(), fq.clone());
                dma_sync::thread::spawn(move || {
                    dma_sync::cpu::set_current(Some(t as usize));
                    for i in 0..if cfg!(miri) { 20 } else { 500 } {
                        fq.enqueue(ops.entry(t * 1000 + i));
                        if i % 97 == 0 {
                            fq.fire_timer();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        fq.shutdown();
        let expect: Vec<u64> = (0..4u64)
            .flat_map(|t| (0..500).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(ops.freed(), expect);
        let s = fq.stats();
        assert_eq!((s.enqueued, s.reclaimed, s.pending), (2000, 2000, 0));
    }
}
