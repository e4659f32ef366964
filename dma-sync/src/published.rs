//! A published pointer for read-mostly data that is replaced whole.
//!
//! Normal builds use `arc_swap::ArcSwap` (lock-free, wait-free loads). arc-swap has no loom
//! support: inside a model loom sees nothing of it, so under loom the same API is a
//! `loom::sync::RwLock<Arc<T>>`. That is stronger than arc-swap (readers serialise with the
//! writer), which is fine for checking the *users* of a snapshot; protocols whose orderings are
//! under test publish through [`crate::rcu`] and named mutation points instead.

use crate::Arc;
use std::ops::Deref;

/// A pointer to a value that readers load lock-free and writers replace whole.
///
/// ```
/// use dma_sync::{Arc, Published};
/// let cfg = Published::new(Arc::new(1));
/// assert_eq!(**cfg.load(), 1);
/// let old = cfg.swap(Arc::new(2));
/// assert_eq!(*old, 1);
/// cfg.rcu(|v| **v + 1);
/// assert_eq!(*cfg.load_full(), 3);
/// ```
pub struct Published<T> {
    #[cfg(not(loom))]
    inner: arc_swap::ArcSwap<T>,
    #[cfg(loom)]
    inner: crate::RwLock<Arc<T>>,
}

/// A loaded snapshot; dereferences to the `Arc` that was current when it was loaded.
///
/// A snapshot is not updated by later stores: a reader keeps a consistent view.
///
/// ```
/// use dma_sync::{Arc, Published};
/// let table = Published::new(Arc::new(vec![1, 2]));
/// let snap = table.load();
/// table.store(Arc::new(vec![3]));
/// assert_eq!(**snap, [1, 2]);
/// assert_eq!(**table.load(), [3]);
/// ```
pub struct Snapshot<T> {
    #[cfg(not(loom))]
    inner: arc_swap::Guard<Arc<T>>,
    #[cfg(loom)]
    inner: Arc<T>,
}

impl<T> Deref for Snapshot<T> {
    type Target = Arc<T>;
    #[inline]
    fn deref(&self) -> &Arc<T> {
        &self.inner
    }
}

impl<T> Published<T> {
    /// Publish `value`.
    pub fn new(value: Arc<T>) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: arc_swap::ArcSwap::new(value),
            #[cfg(loom)]
            inner: crate::RwLock::new(value),
        }
    }

    /// A cheap snapshot of the current value.
    #[inline]
    pub fn load(&self) -> Snapshot<T> {
        #[cfg(not(loom))]
        return Snapshot {
            inner: self.inner.load(),
        };
        #[cfg(loom)]
        return Snapshot {
            inner: self.inner.read().clone(),
        };
    }

    /// A counted reference to the current value.
    #[inline]
    pub fn load_full(&self) -> Arc<T> {
        #[cfg(not(loom))]
        return self.inner.load_full();
        #[cfg(loom)]
        return self.inner.read().clone();
    }

    /// Replace the value.
    pub fn store(&self, value: Arc<T>) {
        drop(self.swap(value));
    }

    /// Replace the value, returning the previous one.
    pub fn swap(&self, value: Arc<T>) -> Arc<T> {
        #[cfg(not(loom))]
        return self.inner.swap(value);
        #[cfg(loom)]
        return std::mem::replace(&mut *self.inner.write(), value);
    }

    /// Replace the value by `f(current)`, retrying if another writer got in first.
    /// Returns the value that was replaced.
    ///
    /// ```
    /// use dma_sync::{Arc, Published};
    /// let hits = Arc::new(Published::new(Arc::new(0u32)));
    /// let writers: Vec<_> = (0..2)
    ///     .map(|_| {
    ///         let hits = hits.clone();
    ///         dma_sync::thread::spawn(move || {
    ///             for _ in 0..100 {
    ///                 hits.rcu(|v| **v + 1);
    ///             }
    ///         })
    ///     })
    ///     .collect();
    /// for w in writers {
    ///     w.join().unwrap();
    /// }
    /// assert_eq!(**hits.load(), 200, "no update is lost to a racing writer");
    /// ```
    pub fn rcu(&self, mut f: impl FnMut(&Arc<T>) -> T) -> Arc<T> {
        #[cfg(not(loom))]
        return self.inner.rcu(|cur| Arc::new(f(cur)));
        #[cfg(loom)]
        {
            let mut slot = self.inner.write();
            let new = Arc::new(f(&slot));
            std::mem::replace(&mut *slot, new)
        }
    }
}
