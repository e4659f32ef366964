//! Atomics and fences: `std::sync::atomic` normally, `loom::sync::atomic` under loom.
//!
//! Orderings that matter are chosen through a [`crate::mutation::Point`], never written bare.
//! [`Poison`] lets a retire path overwrite an atomic it owns exclusively, which under loom is a
//! tracked mutable access: a concurrent reader is then reported as a causality violation.
//!
//! ```
//! use dma_sync::atomic::{AtomicUsize, Ordering, Poison};
//! let mut a = AtomicUsize::new(3);
//! a.poison(usize::MAX);
//! assert_eq!(a.load(Ordering::Relaxed), usize::MAX);
//! ```

pub use std::sync::atomic::Ordering;

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};

/// Atomics that loom never tracks, even under `--cfg loom`: for plain data words that no
/// protocol orders (bounce-buffer bytes a device may touch at any time), where a loom object
/// per word would only slow models down. Always `std::sync::atomic`, so Miri still checks them.
///
/// ```
/// use dma_sync::atomic::{untracked::AtomicU64, Ordering};
/// let word = AtomicU64::new(0);
/// word.store(7, Ordering::Relaxed);
/// assert_eq!(word.load(Ordering::Relaxed), 7);
/// ```
pub mod untracked {
    pub use std::sync::atomic::AtomicU64;
}

/// A memory fence. Loom has no `compiler_fence`; use this, never `Relaxed`.
///
/// ```
/// dma_sync::atomic::fence(dma_sync::atomic::Ordering::SeqCst);
/// ```
#[inline(always)]
pub fn fence(order: Ordering) {
    #[cfg(not(loom))]
    std::sync::atomic::fence(order);
    #[cfg(loom)]
    loom::sync::atomic::fence(order);
}

/// Overwrite an atomic through exclusive access, as a free path does before memory is reused.
///
/// Under loom this is `with_mut`, which loom checks against every concurrent access.
///
/// ```
/// use dma_sync::atomic::{AtomicPtr, Ordering, Poison};
/// // A retired node clears its link so a reader racing the free cannot follow it.
/// let mut next = AtomicPtr::new(Box::into_raw(Box::new(5u32)));
/// let owned = next.load(Ordering::Relaxed);
/// next.poison(std::ptr::null_mut());
/// assert!(next.load(Ordering::Relaxed).is_null());
/// // SAFETY: `owned` came from `Box::into_raw` and nothing else refers to it.
/// drop(unsafe { Box::from_raw(owned) });
/// ```
pub trait Poison {
    /// The value type of the atomic.
    type Value;
    /// Store `value` through `&mut self`.
    ///
    /// ```
    /// use dma_sync::atomic::{AtomicU64, Ordering, Poison};
    /// let mut a = AtomicU64::new(0);
    /// a.poison(7);
    /// assert_eq!(a.load(Ordering::Relaxed), 7);
    /// ```
    fn poison(&mut self, value: Self::Value);
}

macro_rules! impl_poison {
    ($($ty:ty => $val:ty),*) => {$(
        impl Poison for $ty {
            type Value = $val;
            #[inline]
            fn poison(&mut self, value: $val) {
                #[cfg(not(loom))]
                { *self.get_mut() = value; }
                #[cfg(loom)]
                self.with_mut(|v| *v = value);
            }
        }
    )*};
}
impl_poison!(AtomicU64 => u64, AtomicUsize => usize);

impl<T> Poison for AtomicPtr<T> {
    type Value = *mut T;
    #[inline]
    fn poison(&mut self, value: *mut T) {
        #[cfg(not(loom))]
        {
            *self.get_mut() = value;
        }
        #[cfg(loom)]
        self.with_mut(|v| *v = value);
    }
}
