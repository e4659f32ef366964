//! Blocking locks: parking_lot normally, `loom::sync` under loom.
//!
//! A contended parking_lot lock hangs a loom model (loom cannot see it), so models get loom's
//! own locks. Poisoning is not part of the API: a panic while holding a lock is a bug that
//! aborts the operation, as with parking_lot.

use std::ops::{Deref, DerefMut};

/// A mutual-exclusion lock.
///
/// ```
/// let m = dma_sync::Mutex::new(1);
/// *m.lock() += 1;
/// assert_eq!(*m.lock(), 2);
/// ```
#[derive(Debug, Default)]
pub struct Mutex<T> {
    #[cfg(not(loom))]
    inner: parking_lot::Mutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

/// Guard of a [`Mutex`].
pub struct MutexGuard<'a, T> {
    #[cfg(not(loom))]
    inner: parking_lot::MutexGuard<'a, T>,
    #[cfg(loom)]
    inner: loom::sync::MutexGuard<'a, T>,
}

impl<T> Mutex<T> {
    /// A new unlocked mutex holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: parking_lot::Mutex::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    /// Block until the lock is held.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(not(loom))]
        return MutexGuard {
            inner: self.inner.lock(),
        };
        #[cfg(loom)]
        return MutexGuard {
            inner: self.inner.lock().unwrap_or_else(|e| e.into_inner()),
        };
    }

    /// Take the lock if it is free.
    ///
    /// ```
    /// let m = dma_sync::Mutex::new(0);
    /// let held = m.lock();
    /// assert!(m.try_lock().is_none(), "held: refused without blocking");
    /// drop(held);
    /// *m.try_lock().unwrap() += 1;
    /// assert_eq!(m.into_inner(), 1);
    /// ```
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        #[cfg(not(loom))]
        return self.inner.try_lock().map(|inner| MutexGuard { inner });
        #[cfg(loom)]
        return self.inner.try_lock().ok().map(|inner| MutexGuard { inner });
    }

    /// Exclusive access without locking.
    pub fn get_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        return self.inner.get_mut();
        #[cfg(loom)]
        return self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
    }

    /// Consume the mutex.
    pub fn into_inner(self) -> T {
        #[cfg(not(loom))]
        return self.inner.into_inner();
        #[cfg(loom)]
        return self.inner.into_inner().unwrap_or_else(|e| e.into_inner());
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

/// A reader-writer lock.
///
/// ```
/// let l = dma_sync::RwLock::new(vec![1]);
/// l.write().push(2);
/// assert_eq!(l.read().len(), 2);
/// ```
#[derive(Debug, Default)]
pub struct RwLock<T> {
    #[cfg(not(loom))]
    inner: parking_lot::RwLock<T>,
    #[cfg(loom)]
    inner: loom::sync::RwLock<T>,
}

/// Shared guard of a [`RwLock`].
pub struct RwLockReadGuard<'a, T> {
    #[cfg(not(loom))]
    inner: parking_lot::RwLockReadGuard<'a, T>,
    #[cfg(loom)]
    inner: loom::sync::RwLockReadGuard<'a, T>,
}

/// Exclusive guard of a [`RwLock`].
pub struct RwLockWriteGuard<'a, T> {
    #[cfg(not(loom))]
    inner: parking_lot::RwLockWriteGuard<'a, T>,
    #[cfg(loom)]
    inner: loom::sync::RwLockWriteGuard<'a, T>,
}

impl<T> RwLock<T> {
    /// A new unlocked lock holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: parking_lot::RwLock::new(value),
            #[cfg(loom)]
            inner: loom::sync::RwLock::new(value),
        }
    }

    /// Block until shared access is held.
    #[inline]
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        #[cfg(not(loom))]
        return RwLockReadGuard {
            inner: self.inner.read(),
        };
        #[cfg(loom)]
        return RwLockReadGuard {
            inner: self.inner.read().unwrap_or_else(|e| e.into_inner()),
        };
    }

    /// Block until exclusive access is held.
    #[inline]
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        #[cfg(not(loom))]
        return RwLockWriteGuard {
            inner: self.inner.write(),
        };
        #[cfg(loom)]
        return RwLockWriteGuard {
            inner: self.inner.write().unwrap_or_else(|e| e.into_inner()),
        };
    }

    /// Consume the lock.
    pub fn into_inner(self) -> T {
        #[cfg(not(loom))]
        return self.inner.into_inner();
        #[cfg(loom)]
        return self.inner.into_inner().unwrap_or_else(|e| e.into_inner());
    }
}

impl<T> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}
