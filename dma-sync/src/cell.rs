//! `UnsafeCell` with loom's closure API on both builds, so code is written once.

/// An `UnsafeCell` whose accesses go through closures, as `loom::cell::UnsafeCell` requires.
///
/// Under loom every `with`/`with_mut` is checked for races against the other accesses.
///
/// ```
/// use dma_sync::UnsafeCell;
/// let c = UnsafeCell::new(1u32);
/// // SAFETY: no other reference to the cell's content exists.
/// c.with_mut(|p| unsafe { *p += 1 });
/// // SAFETY: as above.
/// assert_eq!(c.with(|p| unsafe { *p }), 2);
/// assert_eq!(c.into_inner(), 2);
/// ```
#[derive(Debug, Default)]
pub struct UnsafeCell<T> {
    #[cfg(not(loom))]
    inner: std::cell::UnsafeCell<T>,
    #[cfg(loom)]
    inner: loom::cell::UnsafeCell<T>,
}

impl<T> UnsafeCell<T> {
    /// Wrap `value`.
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: std::cell::UnsafeCell::new(value),
            #[cfg(loom)]
            inner: loom::cell::UnsafeCell::new(value),
        }
    }

    /// Run `f` with a shared pointer to the content.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        #[cfg(not(loom))]
        return f(self.inner.get());
        #[cfg(loom)]
        return self.inner.with(f);
    }

    /// Run `f` with a mutable pointer to the content.
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(not(loom))]
        return f(self.inner.get());
        #[cfg(loom)]
        return self.inner.with_mut(f);
    }

    /// Consume the cell.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

// SAFETY: same contract as `std::cell::UnsafeCell`: the owner type decides Sync-ness.
unsafe impl<T: Send> Send for UnsafeCell<T> {}
