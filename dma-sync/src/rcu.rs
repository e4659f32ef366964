//! Read-copy-update: pin a read-side guard, load published pointers under it, defer frees.
//!
//! Two backends, one API:
//!
//! * normal builds, and `--cfg loom --cfg production_rcu`: an epoch-based collector with an
//!   asymmetric read side (`rcu/epoch.rs`, fences in `rcu/fence.rs`). [`pin`] is a load of the
//!   global epoch, a store to the thread's own record and a compiler fence, made a full fence on
//!   the reader's CPU by the writers' `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (plain
//!   `fence(SeqCst)` on both sides where membarrier is missing, and under Miri);
//!   [`Guard::defer_retire`] frees the object once every thread pinned at the time has unpinned,
//!   two epoch advances after its bag is sealed. Under `production_rcu` the same code runs on
//!   loom's primitives, both fences `fence(SeqCst)`, freed objects poisoned and parked;
//! * `--cfg loom`: a fence-based RCU that loom can see (`rcu/shim.rs`), at least as strict as the
//!   epoch collector: a retirement is dated when it is deferred (not when its bag is sealed),
//!   its grace period may complete on any thread that pins, unpins or flushes, freed objects
//!   are poisoned (a racing reader is a loom causality violation) and their allocations are
//!   handed back by [`boxed`] so address reuse (ABA) is explored. Every user's models run on it.
//!
//! Under both loom builds a free that bypasses this module (an object allocated by [`boxed`]
//! or declared with [`track`], dropped or [`released`] to a private pool while a reader may
//! still dereference it) is reported
//! (`rcu/bypass.rs`) when the test binary installs `CheckedAlloc` (loom builds only) as its
//! global allocator.
//!
//! ```
//! use dma_sync::atomic::{AtomicPtr, Ordering};
//! use dma_sync::rcu::{self, Retire};
//!
//! struct Node(u64);
//! impl Retire for Node {
//!     fn poison(&mut self) { self.0 = u64::MAX; }
//! }
//!
//! let head = AtomicPtr::new(Box::into_raw(rcu::boxed(Node(1))));
//! let guard = rcu::pin();
//! // SAFETY: `head` only ever holds pointers from `Box::into_raw`, retired after unlinking.
//! let node = unsafe { guard.deref(head.load(Ordering::Acquire)) }.unwrap();
//! assert_eq!(node.0, 1);
//! let old = head.swap(Box::into_raw(rcu::boxed(Node(2))), Ordering::AcqRel);
//! // SAFETY: `old` is unlinked and retired once.
//! unsafe { guard.defer_retire(old) };
//! drop(guard);
//! let last = head.swap(std::ptr::null_mut(), Ordering::AcqRel);
//! // SAFETY: unlinked, retired once.
//! unsafe { rcu::pin().defer_retire(last) };
//! rcu::synchronize();
//! ```

use crate::mutation::Point;

#[cfg(loom)]
mod bypass;
#[cfg(any(not(loom), production_rcu))]
mod epoch;
#[cfg(any(not(loom), production_rcu))]
pub(crate) mod fence;
#[cfg(loom)]
mod graveyard;
#[cfg(all(loom, not(production_rcu)))]
mod shim;
mod synchronize;

#[cfg(loom)]
pub use bypass::CheckedAlloc;
pub use synchronize::synchronize;

#[cfg(any(not(loom), production_rcu))]
use epoch as backend;
#[cfg(all(loom, not(production_rcu)))]
use shim as backend;

/// Use plain fences on both sides (no membarrier) for the rest of the process; only takes
/// effect before the first pin of the process. Returns whether the fallback is in force. For
/// tests of the fallback mode.
#[doc(hidden)]
#[cfg(any(not(loom), production_rcu))]
pub fn force_fence_fallback() -> bool {
    fence::force_fallback()
}

/// Whether readers pin with the light fence backed by membarrier (false: before the first
/// pin, or in the fence fallback).
#[doc(hidden)]
#[cfg(any(not(loom), production_rcu))]
pub fn uses_membarrier() -> bool {
    fence::uses_membarrier()
}

/// An object that can be freed through RCU.
pub trait Retire: Send + 'static {
    /// Overwrite the object's contents as a free would, through exclusive access.
    ///
    /// Called only under loom, when the grace period is over, just before the object is
    /// parked: write every loom atomic or cell the readers may touch (`Poison::poison`,
    /// `UnsafeCell::with_mut`), so a racing reader is reported, and release every loom `Arc`
    /// the object holds (parked objects outlive the model's execution). Normal builds drop
    /// the object instead.
    fn poison(&mut self);
}

/// A pinned read-side critical section. Pointers loaded while it lives stay valid until it is
/// dropped.
///
/// ```
/// use dma_sync::rcu::{self, Retire};
/// use dma_sync::Arc;
///
/// // Holds a reference to `alive` until it is freed.
/// struct Entry(Option<Arc<()>>);
/// impl Retire for Entry {
///     fn poison(&mut self) {
///         self.0 = None;
///     }
/// }
///
/// let alive = Arc::new(());
/// let guard = rcu::pin();
/// let entry = Box::new(Entry(Some(alive.clone())));
/// // SAFETY: a fresh Box, never published, retired once.
/// unsafe { guard.defer_retire(Box::into_raw(entry)) };
/// guard.flush();
/// assert_eq!(Arc::strong_count(&alive), 2, "not freed while a reader is pinned");
/// drop(guard);
/// ```
pub struct Guard {
    inner: backend::Guard,
}

/// Enter a read-side critical section.
#[inline]
pub fn pin() -> Guard {
    Guard {
        inner: backend::pin(crate::points::RCU_PIN.on()),
    }
}

/// Enter a read-side critical section through a named point: weakening the point in a loom
/// build yields a guard that protects nothing, so a model can show the pin is needed.
///
/// ```
/// use dma_sync::atomic::{AtomicPtr, Ordering};
/// dma_sync::mutation_points! {
///     /// The lookup's read-side pin.
///     LOOKUP_PIN: Pin = "doc.lookup.pin";
/// }
/// let slot: AtomicPtr<u64> = AtomicPtr::new(std::ptr::null_mut());
/// let guard = dma_sync::rcu::pin_at(&LOOKUP_PIN);
/// // SAFETY: `slot` holds null or RCU-retired boxes only.
/// assert!(unsafe { guard.deref(slot.load(Ordering::Acquire)) }.is_none());
/// ```
#[inline]
pub fn pin_at(point: &'static Point) -> Guard {
    Guard {
        inner: backend::pin(crate::points::RCU_PIN.on() && point.on()),
    }
}

/// Allocate `value` for later publication and retirement through RCU.
///
/// Normal builds: `Box::new`. Under loom, the allocation of a retired `T` whose grace period is
/// over is handed back (most recently freed first), as a real allocator would: a stale
/// pointer then compares equal to the new object, so models explore ABA.
///
/// ```
/// struct Level([u64; 4]);
/// impl dma_sync::rcu::Retire for Level {
///     fn poison(&mut self) { self.0 = [u64::MAX; 4]; }
/// }
/// let level = dma_sync::rcu::boxed(Level([0; 4]));
/// assert_eq!(level.0, [0; 4]);
/// ```
pub fn boxed<T: Retire>(value: T) -> Box<T> {
    #[cfg(not(loom))]
    return Box::new(value);
    #[cfg(loom)]
    {
        let obj = match graveyard::take::<T>() {
            Some(mut reused) => {
                *reused = value;
                reused
            }
            None => Box::new(value),
        };
        bypass::track(&*obj as *const T as usize, std::mem::size_of::<T>());
        obj
    }
}

/// Declare an allocation of `len` bytes at `ptr`, made just now and not yet published, as one
/// RCU readers will reach, so loom builds check that it is only freed through RCU or after
/// every reader. [`boxed`] does this itself. No-op in normal builds.
pub fn track(ptr: *const u8, len: usize) {
    #[cfg(loom)]
    bypass::track(ptr as usize, len);
    #[cfg(not(loom))]
    let _ = (ptr, len);
}

/// Declare that the memory of an allocation declared with [`track`] went back to a private
/// pool (a free list that hands it out again) rather than to the allocator: loom builds check
/// it as a free, so it must not race a reader. No-op in normal builds.
pub fn released(ptr: *const u8) {
    #[cfg(loom)]
    bypass::released(ptr as usize);
    #[cfg(not(loom))]
    let _ = ptr;
}

impl Guard {
    /// Borrow the object behind a pointer loaded under this guard.
    ///
    /// # Safety
    /// `ptr` is null or was loaded, while this guard was pinned, from a location whose objects
    /// are only ever freed through [`Guard::defer_retire`] after being unlinked from it.
    #[inline(always)]
    pub unsafe fn deref<T>(&self, ptr: *const T) -> Option<&T> {
        #[cfg(loom)]
        bypass::deref(ptr as usize);
        // SAFETY: by the caller's contract the object is not freed before this guard unpins.
        unsafe { ptr.as_ref() }
    }

    /// Borrow `len` elements at `ptr`, loaded under this guard (a table of descriptors).
    ///
    /// # Safety
    /// As [`Guard::deref`], for the whole slice; `ptr` is not null.
    #[inline(always)]
    pub unsafe fn deref_slice<T>(&self, ptr: *const T, len: usize) -> &[T] {
        #[cfg(loom)]
        bypass::deref(ptr as usize);
        // SAFETY: by the caller's contract the elements outlive this guard.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// Free `ptr` once every reader that might still hold it has left its critical section.
    ///
    /// The retirement is dated now: a reader that pins after this call must not be able to
    /// reach `ptr`, so unlink first, then retire.
    ///
    /// # Safety
    /// `ptr` came from `Box::into_raw`, is no longer reachable from any published location,
    /// and is retired exactly once.
    pub unsafe fn defer_retire<T: Retire>(&self, ptr: *mut T) {
        // SAFETY: forwarded contract.
        unsafe { self.inner.defer_retire(ptr) }
    }

    /// Let expired retirements run now (the epoch collector seals this thread's deferred frees,
    /// tries to advance the epoch and frees what has expired; the loom shim runs every ripe
    /// free).
    pub fn flush(&self) {
        self.inner.flush();
    }
}
