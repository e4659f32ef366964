//! Read-copy-update: pin a read-side guard, load published pointers under it, defer frees.
//!
//! Normal builds are crossbeam-epoch: [`pin`] is `crossbeam_epoch::pin`, and
//! [`Guard::defer_retire`] frees the object once every thread pinned at the time has unpinned.
//!
//! Under loom this is a fence-based RCU that loom can see, in the store-buffering shape of
//! the kernel's: a reader registers (`active = 1`), issues a full fence and then loads
//! pointers; an updater unlinks, issues a full fence and waits until every registered reader
//! has left (acquire load, paired with the reader's release on leaving). Retired objects are
//! not freed: they are *poisoned* through [`Retire::poison`] (loom's `with_mut`, a tracked
//! write) and parked until the model's execution ends. A reader that can still reach a
//! retired object is therefore reported by loom as a causality violation instead of being
//! real undefined behaviour. Every ordering of the shim is a mutation point in
//! [`crate::points`].
//!
//! Under loom the grace period runs when the retiring thread's outermost guard is dropped, so
//! a model must not hold a lock another pinned thread waits for at that moment.
//!
//! ```
//! # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
//! use dma_sync::atomic::{AtomicPtr, Ordering};
//! use dma_sync::rcu::{self, Retire};
//!
//! struct Node(u64);
//! impl Retire for Node {
//!     fn poison(&mut self) { self.0 = u64::MAX; }
//! }
//!
//! let head = AtomicPtr::new(Box::into_raw(Box::new(Node(1))));
//! let guard = rcu::pin();
//! // SAFETY: `head` only ever holds pointers from `Box::into_raw`, retired after unlinking.
//! let node = unsafe { guard.deref(head.load(Ordering::Acquire)) }.unwrap();
//! assert_eq!(node.0, 1);
//! let old = head.swap(Box::into_raw(Box::new(Node(2))), Ordering::AcqRel);
//! // SAFETY: `old` is unlinked and retired once.
//! unsafe { guard.defer_retire(old) };
//! drop(guard);
//! let last = head.swap(std::ptr::null_mut(), Ordering::AcqRel);
//! // SAFETY: unlinked, retired once.
//! unsafe { rcu::pin().defer_retire(last) };
//! ```

use crate::mutation::Point;

/// An object that can be freed through RCU.
pub trait Retire: Send + 'static {
    /// Overwrite the object's contents as a free would, through exclusive access.
    ///
    /// Called only under loom, just before the object is parked: write every loom atomic or
    /// cell the readers may touch (`Poison::poison`, `UnsafeCell::with_mut`), so a racing
    /// reader is reported. Normal builds drop the object instead.
    fn poison(&mut self);
}

/// A pinned read-side critical section. Pointers loaded while it lives stay valid until it is
/// dropped.
///
/// ```
/// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
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
    #[cfg(not(loom))]
    inner: crossbeam_epoch::Guard,
    #[cfg(loom)]
    protected: bool,
}

/// Enter a read-side critical section.
#[inline]
pub fn pin() -> Guard {
    #[cfg(not(loom))]
    return Guard {
        inner: crossbeam_epoch::pin(),
    };
    #[cfg(loom)]
    return shim::pin(crate::points::RCU_PIN.on());
}

/// Enter a read-side critical section through a named point: weakening the point in a loom
/// build yields a guard that protects nothing, so a model can show the pin is needed.
///
/// ```
/// # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
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
    #[cfg(not(loom))]
    {
        let _ = point;
        pin()
    }
    #[cfg(loom)]
    return shim::pin(crate::points::RCU_PIN.on() && point.on());
}

impl Guard {
    /// Borrow the object behind a pointer loaded under this guard.
    ///
    /// # Safety
    /// `ptr` is null or was loaded, while this guard was pinned, from a location whose objects
    /// are only ever freed through [`Guard::defer_retire`] after being unlinked from it.
    #[inline(always)]
    pub unsafe fn deref<T>(&self, ptr: *const T) -> Option<&T> {
        // SAFETY: by the caller's contract the object is not freed before this guard unpins.
        unsafe { ptr.as_ref() }
    }

    /// Free `ptr` once every reader that might still hold it has left its critical section.
    ///
    /// # Safety
    /// `ptr` came from `Box::into_raw`, is no longer reachable from any published location,
    /// and is retired exactly once.
    pub unsafe fn defer_retire<T: Retire>(&self, ptr: *mut T) {
        #[cfg(not(loom))]
        {
            struct SendPtr<T>(*mut T);
            // SAFETY: the object is `Send`; the pointer is the unique owner after unlinking.
            unsafe impl<T: Send> Send for SendPtr<T> {}
            let p = SendPtr(ptr);
            // SAFETY: crossbeam runs the closure after all current pins end; `p` is unique.
            unsafe {
                self.inner.defer_unchecked(move || {
                    let p = p;
                    drop(Box::from_raw(p.0));
                })
            };
        }
        #[cfg(loom)]
        shim::defer(ptr);
    }

    /// Push this thread's deferred frees towards execution (crossbeam's `flush`; under loom
    /// retirement already happens when the outermost guard drops).
    pub fn flush(&self) {
        #[cfg(not(loom))]
        self.inner.flush();
    }
}

#[cfg(loom)]
impl Drop for Guard {
    fn drop(&mut self) {
        shim::unpin(self.protected);
    }
}

#[cfg(loom)]
mod shim {
    use super::{Guard, Retire};
    use crate::atomic::{AtomicUsize, Ordering::*};
    use crate::points::{
        RCU_GRACE_PERIOD, RCU_PIN_FENCE, RCU_SYNC_ACQUIRE, RCU_SYNC_FENCE, RCU_UNPIN_RELEASE,
    };
    use std::cell::RefCell;

    /// loom allows at most a handful of threads per model.
    const MAX_READERS: usize = 8;

    struct Domain {
        next_slot: AtomicUsize,
        active: [AtomicUsize; MAX_READERS],
        graveyard: std::sync::Mutex<Vec<Box<dyn Send>>>,
    }

    loom::lazy_static! {
        static ref DOMAIN: Domain = Domain {
            next_slot: AtomicUsize::new(0),
            active: std::array::from_fn(|_| AtomicUsize::new(0)),
            graveyard: std::sync::Mutex::new(Vec::new()),
        };
    }

    type Deferred = Box<dyn FnOnce(&Domain)>;

    #[derive(Default)]
    struct Local {
        slot: Option<usize>,
        /// Nesting depth of protected guards.
        depth: usize,
        /// Guards of either kind alive on this thread.
        guards: usize,
        bag: Vec<Deferred>,
    }

    loom::thread_local! {
        static LOCAL: RefCell<Local> = RefCell::new(Local::default());
    }

    pub(super) fn pin(protect: bool) -> Guard {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            l.guards += 1;
            if protect {
                if l.depth == 0 {
                    let slot = *l
                        .slot
                        .get_or_insert_with(|| DOMAIN.next_slot.fetch_add(1, Relaxed));
                    assert!(slot < MAX_READERS, "too many RCU readers in one model");
                    DOMAIN.active[slot].store(1, Relaxed);
                    RCU_PIN_FENCE.fence(SeqCst);
                }
                l.depth += 1;
            }
        });
        Guard { protected: protect }
    }

    pub(super) fn unpin(protected: bool) {
        let bag = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            l.guards -= 1;
            if protected {
                l.depth -= 1;
                if l.depth == 0 {
                    let slot = l.slot.expect("pinned thread has a slot");
                    DOMAIN.active[slot].store(0, RCU_UNPIN_RELEASE.ord(Release));
                }
            }
            if l.guards == 0 {
                std::mem::take(&mut l.bag)
            } else {
                Vec::new()
            }
        });
        if !bag.is_empty() {
            synchronize();
            for retire in bag {
                retire(&DOMAIN);
            }
        }
    }

    pub(super) fn defer<T: Retire>(ptr: *mut T) {
        let p = ptr as usize;
        let retire: Deferred = Box::new(move |domain: &Domain| {
            // SAFETY: by `defer_retire`'s contract the pointer is a unique, unlinked Box.
            let mut obj = unsafe { Box::from_raw(p as *mut T) };
            obj.poison();
            domain
                .graveyard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(obj);
        });
        LOCAL.with(|l| l.borrow_mut().bag.push(retire));
    }

    /// Wait until every reader registered now has left its critical section.
    fn synchronize() {
        RCU_SYNC_FENCE.fence(SeqCst);
        if !RCU_GRACE_PERIOD.on() {
            return;
        }
        let me = LOCAL.with(|l| l.borrow().slot);
        let readers = DOMAIN.next_slot.load(Relaxed);
        for slot in (0..readers).filter(|&s| Some(s) != me) {
            while DOMAIN.active[slot].load(RCU_SYNC_ACQUIRE.ord(Acquire)) != 0 {
                crate::thread::spin_wait();
            }
        }
    }
}
