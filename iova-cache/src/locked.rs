//! A lock whose acquisition is a named mutation point.
//!
//! The data sits in a [`dma_sync::UnsafeCell`] next to a `Mutex<()>`, and is reached only
//! through a closure while the lock is held. Model builds can weaken the point to skip the
//! lock; loom then reports the unsynchronised accesses to the cell as a causality violation.
//! Normal builds always lock.

use dma_sync::mutation::Point;
use dma_sync::{Mutex, UnsafeCell};

pub(crate) struct StepLock<T> {
    lock: Mutex<()>,
    cell: UnsafeCell<T>,
    step: &'static Point,
}

// SAFETY: the cell is only reached through `with`, which holds `lock` (the unlocked variant
// exists only in model builds, where loom reports the race instead of running into it).
unsafe impl<T: Send> Sync for StepLock<T> {}

impl<T> StepLock<T> {
    pub(crate) fn new(value: T, step: &'static Point) -> Self {
        Self {
            lock: Mutex::new(()),
            cell: UnsafeCell::new(value),
            step,
        }
    }

    /// Run `f` on the data with the lock held.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _guard = self.step.on().then(|| self.lock.lock());
        // SAFETY: `_guard` holds the lock, so no other `with` call is inside the cell, and the
        // reference does not outlive the closure.
        self.cell.with_mut(|p| f(unsafe { &mut *p }))
    }
}
