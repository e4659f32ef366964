//! A spin lock for critical sections of a few dozen instructions that are rarely contended.
//!
//! Its unlock is a release store, where a parking lock's unlock is a compare-and-swap (it
//! must look for parked waiters): one locked instruction less per critical section, about
//! 1.5 ns on an uncontended x86-64 line. It never parks, so it is only for short sections
//! that neither block nor wait on another lock that might: a waiter spins briefly, then
//! yields its CPU, so a holder preempted inside its section costs a waiter time slices, not a
//! deadlock.
//!
//! A protocol whose full fence comes right before a section takes the lock with
//! [`SpinLock::with_fenced`] ([`RawSpinLock::lock_fenced`]): on x86-64 the lock's
//! compare-and-swap, a locked instruction, is that fence, so the pair costs one locked
//! instruction (the flush queue's enqueue). Loom and Miri see the fence.
//!
//! The section is a closure ([`SpinLock::with`]), so the value is reached only while the lock
//! is held, and under loom through `loom::cell::UnsafeCell`, which reports any access that the
//! lock's acquire (`sync.spin.acquire`) and release (`sync.spin.release`) fail to order.

use crate::atomic::{AtomicBool, Ordering, Ordering::*};
use crate::mutation::Point;
use crate::points::{SPIN_ACQUIRE, SPIN_RELEASE};
use crate::{thread, UnsafeCell};

/// Spin steps a waiter takes before it yields its CPU instead: a section of a few dozen
/// instructions ends well within them unless its holder was preempted.
const SPINS_BEFORE_YIELD: u32 = 64;

/// A mutual-exclusion lock whose waiters spin, for short rarely contended sections.
///
/// ```
/// let counter = dma_sync::SpinLock::new(0u64);
/// counter.with(|n| *n += 1);
/// assert_eq!(counter.with(|n| *n), 1);
/// ```
#[derive(Debug)]
pub struct SpinLock<T> {
    lock: RawSpinLock,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only by the one thread holding the lock (`with`), so sharing
// the lock shares nothing but exclusive access, handed over by the acquire/release pair.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new unlocked lock holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            lock: RawSpinLock::default(),
            value: UnsafeCell::new(value),
        }
    }

    /// Run `f` on the value with the lock held. The lock is released when `f` returns or
    /// unwinds. `f` must not take this lock again (it would spin forever).
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _held = self.lock.lock(&SPIN_ACQUIRE, &SPIN_RELEASE);
        // SAFETY: the lock is held until `_held` drops, after `f` returned: no other thread
        // reaches the value meanwhile, and `with` hands out no reference that outlives `f`.
        self.value.with_mut(|p| f(unsafe { &mut *p }))
    }

    /// [`with`](Self::with), with a full (`SeqCst`) fence, named `fence`, right before the
    /// lock is taken: for a protocol whose full fence precedes a short section, such as the
    /// enqueue of a store-buffering pair. On x86-64 the lock's compare-and-swap is the fence
    /// (see [`Point`]'s `fence_before_rmw`), so the section costs one locked instruction, not
    /// two.
    ///
    /// ```
    /// use dma_sync::atomic::{AtomicU64, Ordering::Relaxed};
    /// dma_sync::mutation_points! {
    ///     /// Orders the flag store before the section's loads.
    ///     FLAG_FENCE: Fence = "doc.spin.fence";
    /// }
    /// let (flag, queue) = (AtomicU64::new(0), dma_sync::SpinLock::new(Vec::new()));
    /// flag.store(1, Relaxed);
    /// queue.with_fenced(&FLAG_FENCE, |q| q.push(7));
    /// assert_eq!(queue.with(|q| q.len()), 1);
    /// ```
    #[inline]
    pub fn with_fenced<R>(&self, fence: &'static Point, f: impl FnOnce(&mut T) -> R) -> R {
        let _held = self.lock.lock_fenced(fence, &SPIN_ACQUIRE, &SPIN_RELEASE);
        // SAFETY: as in `with`: the lock is held until `_held` drops, after `f` returned.
        self.value.with_mut(|p| f(unsafe { &mut *p }))
    }

    /// [`with`](Self::with) if the lock is free now; `None`, without running `f`, if it is
    /// held (by this thread too: a caller that may already hold it cannot wait for it).
    ///
    /// ```
    /// let lock = dma_sync::SpinLock::new(3u64);
    /// lock.with(|_| {
    ///     assert_eq!(lock.try_with(|v| *v), None);
    ///     assert_eq!(lock.try_with(|v| *v), None, "a refused try leaves it held");
    /// });
    /// assert_eq!(lock.try_with(|v| *v), Some(3));
    /// ```
    #[inline]
    pub fn try_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let _held = self.lock.try_lock(&SPIN_ACQUIRE, &SPIN_RELEASE)?;
        // SAFETY: as in `with`: the lock is held until `_held` drops, after `f` returned.
        Some(self.value.with_mut(|p| f(unsafe { &mut *p })))
    }

    /// Consume the lock.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: Default> Default for SpinLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

/// The lock word of a spin lock without the value it guards, for a lock whose owner keeps the
/// data elsewhere and names its own mutation points for the two orderings (iova-cache's CPU
/// slots). It guards nothing by itself: whoever pairs it with data decides what it protects.
///
/// ```
/// use dma_sync::points::{SPIN_ACQUIRE, SPIN_RELEASE};
/// let lock = dma_sync::RawSpinLock::default();
/// drop(lock.lock(&SPIN_ACQUIRE, &SPIN_RELEASE));
/// let _again = lock.lock(&SPIN_ACQUIRE, &SPIN_RELEASE);
/// ```
#[derive(Debug, Default)]
pub struct RawSpinLock {
    locked: AtomicBool,
}

/// Holds a [`RawSpinLock`]; releases it when dropped, on return and on unwind alike.
#[must_use = "the lock is released when the guard drops"]
pub struct RawSpinGuard<'a> {
    locked: &'a AtomicBool,
    release: Ordering,
}

impl RawSpinLock {
    /// Take the lock, spinning while it is held: a compare-and-swap with acquire success
    /// (named `acquire`: it orders the previous holder's section before ours); the guard
    /// releases it with a release store (named `release`: it orders our section before the
    /// next holder's). The orderings are the lock's own, so no caller can pick one that a
    /// compare-and-swap or a store refuses (the guard's drop would panic); only a loom model
    /// weakening a point changes them.
    #[inline]
    pub fn lock(&self, acquire: &'static Point, release: &'static Point) -> RawSpinGuard<'_> {
        self.take(None, acquire, release)
    }

    /// [`lock`](Self::lock) if the lock is free now (one compare-and-swap); `None` if it is
    /// held.
    #[inline]
    pub fn try_lock(
        &self,
        acquire: &'static Point,
        release: &'static Point,
    ) -> Option<RawSpinGuard<'_>> {
        let release = release.ord(Release);
        // Lazily: a guard built for a failed attempt would release another holder's lock as
        // it drops.
        self.try_take(acquire.cas(Acquire, Relaxed))
            .then(|| RawSpinGuard {
                locked: &self.locked,
                release,
            })
    }

    /// [`lock`](Self::lock), preceded by a `SeqCst` fence named `fence`, with no memory
    /// access between the fence and the lock's first compare-and-swap. On x86-64 that
    /// compare-and-swap (a locked instruction whether it succeeds or not) is the fence.
    #[inline]
    pub fn lock_fenced(
        &self,
        fence: &'static Point,
        acquire: &'static Point,
        release: &'static Point,
    ) -> RawSpinGuard<'_> {
        self.take(Some(fence), acquire, release)
    }

    /// Both: the orderings are read before the fence, so no memory access separates the
    /// fence from the first compare-and-swap.
    #[inline(always)]
    fn take(
        &self,
        fence: Option<&'static Point>,
        acquire: &'static Point,
        release: &'static Point,
    ) -> RawSpinGuard<'_> {
        let cas = acquire.cas(Acquire, Relaxed);
        let release = release.ord(Release);
        if let Some(fence) = fence {
            fence.fence_before_rmw();
        }
        if !self.try_take(cas) {
            self.contended(cas);
        }
        RawSpinGuard {
            locked: &self.locked,
            release,
        }
    }

    #[inline]
    fn try_take(&self, (success, failure): (Ordering, Ordering)) -> bool {
        self.locked
            .compare_exchange(false, true, success, failure)
            .is_ok()
    }

    /// Retry the compare-and-swap, first with a pause and then yielding the CPU, so a holder
    /// preempted on this CPU gets to run. A failed compare-and-swap stores nothing and reads
    /// the latest value, so the waiter sees the release as soon as it happens; contention is
    /// rare (the sections are short), so spinning on a plain load first would buy little.
    #[cold]
    fn contended(&self, cas: (Ordering, Ordering)) {
        let mut spins = 0;
        while !self.try_take(cas) {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                thread::spin_wait();
            } else {
                thread::yield_now();
            }
        }
    }
}

impl Drop for RawSpinGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.locked.store(false, self.release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_section_releases_the_lock() {
        let lock = SpinLock::new(1);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lock.with(|_| panic!("inside the section"))
        }));
        assert!(caught.is_err());
        assert_eq!(lock.with(|v| *v), 1, "taken again after the unwind");
    }

    #[test]
    fn contending_threads_each_see_the_others_updates() {
        let rounds = if cfg!(miri) { 20 } else { 10_000 };
        let lock = std::sync::Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..rounds {
                        lock.with(|n| *n += 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(lock.with(|n| *n), 4 * rounds);
    }
}
