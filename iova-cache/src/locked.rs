//! Locks whose acquisition is a named mutation point.
//!
//! The data sits in a [`dma_sync::UnsafeCell`] next to a raw lock, and is reached only through
//! a closure while the lock is held. Model builds can weaken the point to skip the lock; loom
//! then reports the unsynchronised accesses to the cell as a causality violation. Normal
//! builds always lock.
//!
//! Two raw locks: [`Blocking`] (a parking mutex) for the tree and the depots, whose critical
//! sections may be long (a flush frees a whole magazine to the tree), and [`Spin`] (dma-sync's
//! spin lock) for the CPU slots, whose critical sections are a few pushes and pops: taking it
//! is one compare-and-swap and releasing it a plain store, where a parking mutex pays a second
//! read-modify-write on release to look for sleepers.

use crate::points::{SLOT_LOCK_ACQUIRE, SLOT_UNLOCK_RELEASE};
use dma_sync::mutation::Point;
use dma_sync::{Mutex, MutexGuard, RawSpinGuard, RawSpinLock, UnsafeCell};

/// A raw lock: `acquire` returns a guard that releases on drop.
pub(crate) trait RawLock: Default {
    type Guard<'a>
    where
        Self: 'a;
    fn acquire(&self) -> Self::Guard<'_>;
}

/// A parking mutex, for locks that may be held across long work.
#[derive(Default)]
pub(crate) struct Blocking(Mutex<()>);

impl RawLock for Blocking {
    type Guard<'a> = MutexGuard<'a, ()>;

    #[inline]
    fn acquire(&self) -> MutexGuard<'_, ()> {
        self.0.lock()
    }
}

/// A spin lock for short critical sections: dma-sync's, with this crate's points for its two
/// orderings.
#[derive(Default)]
pub(crate) struct Spin(RawSpinLock);

impl RawLock for Spin {
    type Guard<'a> = RawSpinGuard<'a>;

    #[inline]
    fn acquire(&self) -> RawSpinGuard<'_> {
        self.0.lock(&SLOT_LOCK_ACQUIRE, &SLOT_UNLOCK_RELEASE)
    }
}

pub(crate) struct StepLock<T, L: RawLock = Blocking> {
    lock: L,
    cell: UnsafeCell<T>,
    step: &'static Point,
}

// SAFETY: the cell is only reached through `with`, which holds `lock` (the unlocked variant
// exists only in model builds, where loom reports the race instead of running into it).
unsafe impl<T: Send, L: RawLock + Sync> Sync for StepLock<T, L> {}

impl<T, L: RawLock> StepLock<T, L> {
    pub(crate) fn new(value: T, step: &'static Point) -> Self {
        Self {
            lock: L::default(),
            cell: UnsafeCell::new(value),
            step,
        }
    }

    /// Run `f` on the data with the lock held.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _guard = self.step.on().then(|| self.lock.acquire());
        // SAFETY: `_guard` holds the lock, so no other `with` call is inside the cell, and the
        // reference does not outlive the closure.
        self.cell.with_mut(|p| f(unsafe { &mut *p }))
    }
}
