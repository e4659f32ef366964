//! Strict or lazy invalidation, and the run-time switch from strict to lazy.
//!
//! The mode is a pointer to the flush queue: null means strict. The switch builds the queue
//! completely, then publishes it with a release store; the pointer never goes back to null
//! (lazy → strict is not offered, as in Linux), so there is no ABA and no reclamation race.
//!
//! An unmap reads the pointer **once** and derives everything from that snapshot: whether
//! the gather collects ranges, whether the IOTLB is synced, whether the IOVA is queued or
//! freed. The strict branch syncs and then frees; the lazy branch queues. There is no path
//! that frees without either, whatever the switch does meanwhile (the reordering found in the
//! 2021 review: "queue?" read as no, "sync?" read as no, then freed). The snapshot is an
//! acquire load, the acquire side of the publication, so the queue it points to is complete.
//!
//! Orderings: `enable_lazy` is serialised by a mutex that also holds the "published" flag, so the
//! switch never *loads* the pointer, and publishes with a release store (`iommu.fq.publish`).
//! An unmap takes one acquire load of the pointer (`iommu.unmap.snapshot.acquire`) before the
//! leaves are cleared; the lazy branch hands it to `enqueue_published`, and no read of the
//! queue can move above the acquire (the "hoisted ring load" reordering of the 2021 review). It
//! is not the enqueue fence: that one is fused with the ring lock's acquisition, and the ring
//! must be found first. On x86-64 an acquire load is a plain load. The
//! `iommu.unmap.single_snapshot` step exists only to show the snapshot is needed: weakened, the
//! sync decision re-reads the mode, and both the emulated and the real-stack models find the
//! premature free. Other readers of the pointer (statistics, an explicit timer run) use an
//! acquire load (`iommu.fq.lookup.acquire`). Untrusted devices call `unmap_with(force_strict =
//! true)`: strict whatever the domain's mode.
//!
//! Why the flag lives under the mutex: loom's DPOR can miss an interleaving when a thread loads a
//! location between another thread's load and its own store (tokio-rs/loom#166). A first
//! version of `enable_lazy` checked "already lazy" with a load of the pointer, and the lookup
//! twin then passed (one execution explored).

use crate::flush_queue::{FlushQueue, FqConfig, FqError, FqStats, InvalidationOps};
use crate::iotlb::Gather;
use crate::points::{FQ_LOOKUP_ACQUIRE, FQ_PUBLISH, UNMAP_SINGLE_SNAPSHOT, UNMAP_SNAPSHOT_ACQUIRE};
use dma_sync::atomic::{AtomicPtr, Ordering};
use dma_sync::{Arc, Mutex};
use std::fmt;

/// How an unmap invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unmapped {
    /// Strict: the IOTLB was synced and the entry freed before returning.
    Synced,
    /// Lazy: the entry was queued and is freed after a later global flush.
    Queued,
}

/// The invalidation mode of a domain and its flush queue once lazy.
///
/// ```
/// use dma_iommu::{FqConfig, Gather, InvalidationOps, Strictness, Unmapped};
/// use dma_sync::{Arc, Mutex};
/// use std::time::Duration;
/// #[derive(Default)]
/// struct Ops { log: Mutex<Vec<&'static str>> }
/// impl InvalidationOps for Ops {
///     type Entry = u64;
///     fn flush_all(&self) { self.log.lock().push("flush"); }
///     fn sync(&self, _g: &mut Gather) { self.log.lock().push("sync"); }
///     fn reclaim(&self, _iova: u64) { self.log.lock().push("free"); }
/// }
/// let ops = Arc::new(Ops::default());
/// let s = Strictness::new(ops.clone());
/// let clear = |g: &mut Gather| { g.add_range(0x1000, 0x1000); 0x1000u64 };
/// assert_eq!(s.unmap(clear), Unmapped::Synced);
/// assert_eq!(*ops.log.lock(), ["sync", "free"]); // never free-then-sync
/// let fq = FqConfig::per_cpu().with_ring_size(8).with_timeout(Duration::from_secs(3600));
/// assert!(s.enable_lazy(fq).unwrap()); // the background timer stays out of the way
/// assert_eq!(s.unmap(clear), Unmapped::Queued);
/// s.fire_timer();
/// assert_eq!(*ops.log.lock(), ["sync", "free", "flush", "free"]);
/// ```
pub struct Strictness<O: InvalidationOps> {
    ops: Arc<O>,
    /// Null: strict. Otherwise the published queue, owned here, never replaced.
    fq: AtomicPtr<FlushQueue<O>>,
    /// Serialises switches (the group mutex in Linux); `true` once a queue is published. The
    /// switch consults this, not `fq`, so its only access to `fq` is the publishing store.
    switch: Mutex<bool>,
}

impl<O: InvalidationOps> Strictness<O> {
    /// Strict mode over `ops`.
    pub fn new(ops: Arc<O>) -> Self {
        Self {
            ops,
            fq: AtomicPtr::new(std::ptr::null_mut()),
            switch: Mutex::new(false),
        }
    }

    /// The invalidation callbacks.
    pub fn ops(&self) -> &Arc<O> {
        &self.ops
    }

    /// Whether lazy mode is on (a hint: it may turn on right after this returns `false`).
    pub fn is_lazy(&self) -> bool {
        !self.fq.load(Ordering::Relaxed).is_null()
    }

    /// Switch to lazy invalidation, with a queue built from `config`. Safe while unmaps run
    /// on other threads. `Ok(false)` if already lazy.
    ///
    /// ```
    /// use dma_iommu::{FqConfig, Gather, InvalidationOps, Strictness, Unmapped};
    /// use dma_sync::{Arc, Mutex};
    /// #[derive(Default)]
    /// struct Ops { synced: Mutex<u32> }
    /// impl InvalidationOps for Ops {
    ///     type Entry = ();
    ///     fn flush_all(&self) {}
    ///     fn sync(&self, _g: &mut Gather) { *self.synced.lock() += 1; }
    ///     fn reclaim(&self, _: ()) {}
    /// }
    /// let s = Strictness::new(Arc::new(Ops::default()));
    /// // A queue that cannot be built leaves the mode strict.
    /// assert!(s.enable_lazy(FqConfig::per_cpu().with_ring_size(3)).is_err());
    /// assert!(!s.is_lazy());
    /// assert_eq!(s.enable_lazy(FqConfig::per_cpu()), Ok(true));
    /// assert!(s.is_lazy() && s.queue().is_some());
    /// ```
    pub fn enable_lazy(&self, config: FqConfig) -> Result<bool, FqError> {
        let mut published = self.switch.lock();
        if *published {
            return Ok(false);
        }
        let fq = Box::into_raw(Box::new(FlushQueue::new(self.ops.clone(), config)?));
        // Rings, counters and timer are complete before anyone can see the pointer.
        self.fq.store(fq, FQ_PUBLISH.ord(Ordering::Release));
        *published = true;
        Ok(true)
    }

    /// The flush queue, if lazy.
    pub fn queue(&self) -> Option<&FlushQueue<O>> {
        let p = self.fq.load(FQ_LOOKUP_ACQUIRE.ord(Ordering::Acquire));
        // SAFETY: a non-null pointer was published after construction (release, paired with
        // the acquire above) and is freed only by `drop`, which has exclusive access.
        unsafe { p.as_ref() }
    }

    /// Unmap: `clear` clears the leaves, adding them to the gather (which ignores them when
    /// queued) and returns what must be freed. Then either sync and free (strict) or queue
    /// (lazy), decided by one snapshot of the mode taken before `clear`.
    pub fn unmap(&self, clear: impl FnOnce(&mut Gather) -> O::Entry) -> Unmapped {
        self.unmap_with(false, clear)
    }

    /// [`Strictness::unmap`], strict whatever the mode if `force_strict` (untrusted devices).
    ///
    /// ```
    /// use dma_iommu::{FqConfig, Gather, InvalidationOps, Strictness, Unmapped};
    /// use dma_sync::{Arc, Mutex};
    /// #[derive(Default)]
    /// struct Ops { synced: Mutex<u32> }
    /// impl InvalidationOps for Ops {
    ///     type Entry = ();
    ///     fn flush_all(&self) {}
    ///     fn sync(&self, _g: &mut Gather) { *self.synced.lock() += 1; }
    ///     fn reclaim(&self, _: ()) {}
    /// }
    /// let s = Strictness::new(Arc::new(Ops::default()));
    /// s.enable_lazy(FqConfig::per_cpu()).unwrap();
    /// let clear = |g: &mut Gather| g.add_range(0x1000, 0x1000);
    /// assert_eq!(s.unmap_with(true, clear), Unmapped::Synced); // untrusted: strict anyway
    /// assert_eq!(*s.ops().synced.lock(), 1);
    /// assert_eq!(s.unmap_with(false, clear), Unmapped::Queued);
    /// ```
    #[inline]
    pub fn unmap_with(
        &self,
        force_strict: bool,
        clear: impl FnOnce(&mut Gather) -> O::Entry,
    ) -> Unmapped {
        let snapshot = if force_strict {
            std::ptr::null_mut()
        } else {
            // Acquire: the lazy branch dereferences the queue (paired with `iommu.fq.publish`).
            self.fq.load(UNMAP_SNAPSHOT_ACQUIRE.ord(Ordering::Acquire))
        };
        let mut gather = if snapshot.is_null() {
            Gather::new()
        } else {
            Gather::queued()
        };
        let entry = clear(&mut gather);
        if snapshot.is_null() {
            if force_strict || self.sync_decision(&gather) {
                self.ops.sync(&mut gather);
            }
            self.ops.reclaim(entry);
            Unmapped::Synced
        } else {
            // SAFETY: `snapshot` was read with an acquire load from the release store that
            // `enable_lazy` published it with after construction, and is freed only by
            // `drop`, which has exclusive access.
            unsafe { FlushQueue::enqueue_published(snapshot, entry) };
            Unmapped::Queued
        }
    }

    /// Whether a strict unmap syncs: always, from the snapshot. The weakened point re-reads
    /// the mode here, as the unmap path did before the single snapshot.
    fn sync_decision(&self, gather: &Gather) -> bool {
        if UNMAP_SINGLE_SNAPSHOT.on() {
            return !gather.is_queued();
        }
        self.fq.load(Ordering::Relaxed).is_null()
    }

    /// Run the flush-queue timer's work now (no-op when strict). `false` if nothing ran.
    pub fn fire_timer(&self) -> bool {
        self.queue().is_some_and(FlushQueue::fire_timer)
    }

    /// Flush-queue counters (zero when strict).
    pub fn queue_stats(&self) -> FqStats {
        self.queue().map(FlushQueue::stats).unwrap_or_default()
    }

    /// Stop the timer, flush and free everything queued (see [`FlushQueue::shutdown`]).
    pub fn shutdown(&self) {
        if let Some(q) = self.queue() {
            q.shutdown();
        }
    }
}

impl<O: InvalidationOps> Drop for Strictness<O> {
    fn drop(&mut self) {
        let p = self.fq.load(Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: created by `Box::into_raw` in `enable_lazy`; exclusive access here.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl<O: InvalidationOps> fmt::Debug for Strictness<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Strictness")
            .field("lazy", &self.is_lazy())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::flush_queue::FqConfig;
    use dma_sync::atomic::AtomicU64;
    use std::time::Duration;

    /// Records the order of syncs and frees; each entry is an id.
    #[derive(Default)]
    struct Ops {
        events: Mutex<Vec<(char, u64)>>,
        flushes: AtomicU64,
    }

    impl InvalidationOps for Ops {
        type Entry = u64;
        fn flush_all(&self) {
            self.flushes.fetch_add(1, Ordering::Relaxed);
        }
        fn sync(&self, g: &mut Gather) {
            let id = g.range().map_or(u64::MAX, |r| r.start);
            self.events.lock().push(('s', id));
        }
        fn reclaim(&self, id: u64) {
            self.events.lock().push(('f', id));
        }
    }

    fn quiet() -> FqConfig {
        FqConfig::per_cpu()
            .with_cpus(2)
            .with_ring_size(4)
            .with_timeout(Duration::from_secs(3600))
    }

    #[test]
    fn strict_syncs_before_freeing_and_lazy_queues() {
        // Miri cannot ask the kernel for the CPU: name it.
        dma_sync::cpu::set_current(Some(0));
        let s = Strictness::new(Arc::new(Ops::default()));
        let clear = |id: u64| {
            move |g: &mut Gather| {
                g.add_range(id, 1);
                id
            }
        };
        assert!(!s.is_lazy());
        assert_eq!(s.unmap(clear(7)), Unmapped::Synced);
        assert_eq!(*s.ops().events.lock(), [('s', 7), ('f', 7)]);
        assert!(!s.fire_timer(), "no queue while strict");
        assert_eq!(s.queue_stats(), FqStats::default());
        assert!(s.enable_lazy(quiet()).unwrap());
        assert!(!s.enable_lazy(quiet()).unwrap(), "already lazy");
        assert_eq!(s.unmap(clear(8)), Unmapped::Queued);
        assert_eq!(
            s.unmap_with(true, clear(9)),
            Unmapped::Synced,
            "forced strict"
        );
        assert_eq!(
            s.ops().events.lock().len(),
            4,
            "8 is queued: no sync, no free yet"
        );
        s.fire_timer();
        assert_eq!(s.ops().events.lock().last(), Some(&('f', 8)));
        assert_eq!(s.queue_stats().reclaimed, 1);
    }

    #[test]
    fn a_bad_queue_configuration_leaves_the_domain_strict() {
        // Miri cannot ask the kernel for the CPU: name it.
        dma_sync::cpu::set_current(Some(0));
        let s = Strictness::new(Arc::new(Ops::default()));
        assert_eq!(
            s.enable_lazy(quiet().with_ring_size(3)),
            Err(FqError::RingSize(3))
        );
        assert!(!s.is_lazy());
        assert_eq!(s.unmap(|_| 1), Unmapped::Synced);
        assert!(s.enable_lazy(quiet()).unwrap());
    }

    #[test]
    #[cfg_attr(miri, ignore)] // contended locks park through a futex call that Miri rejects
    fn unmaps_racing_with_the_switch_each_sync_or_queue() {
        // Miri cannot ask the kernel for the CPU: name it.
        dma_sync::cpu::set_current(Some(0));
        let s = Arc::new(Strictness::new(Arc::new(Ops::default())));
        let n: u64 = if cfg!(miri) { 8 } else { 500 };
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                let s = s.clone();
                dma_sync::thread::spawn(move || {
                    dma_sync::cpu::set_current(Some(t as usize));
                    (0..n)
                        .map(|i| s.unmap(|_| t * 10_000 + i))
                        .filter(|u| *u == Unmapped::Queued)
                        .count() as u64
                })
            })
            .collect();
        s.enable_lazy(quiet()).unwrap();
        let queued: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        s.shutdown();
        let events = s.ops().events.lock().clone();
        let frees = events.iter().filter(|e| e.0 == 'f').count() as u64;
        let syncs = events.iter().filter(|e| e.0 == 's').count() as u64;
        assert_eq!(frees, 2 * n, "every entry freed once");
        assert_eq!(
            syncs,
            2 * n - queued,
            "one sync per strict unmap, none per queued one"
        );
        for (i, e) in events.iter().enumerate() {
            if e.0 == 's' {
                // A strict unmap's free follows its own sync (never free-then-sync).
                assert!(events[i + 1..].iter().any(|f| f.0 == 'f'));
            }
        }
    }
}
