//! The crossbeam-epoch backend: production, and under `--cfg loom --cfg crossbeam_loom`
//! crossbeam's own loom mode, where a free poisons the object and parks it instead.

use super::Retire;

/// A crossbeam guard; `None` is a read section weakened away (loom builds only).
pub(super) struct Guard(Option<crossbeam_epoch::Guard>);

#[inline]
pub(super) fn pin(protect: bool) -> Guard {
    #[cfg(not(loom))]
    return Guard(protect.then(crossbeam_epoch::pin));
    #[cfg(loom)]
    {
        super::graveyard::open();
        Guard(protect.then(collector::pin))
    }
}

/// Under loom: a collector per execution instead of crossbeam's default one, so that a failed
/// execution, torn down outside loom, leaks it instead of touching loom (which would abort).
#[cfg(loom)]
mod collector {
    use crossbeam_epoch::{Collector, Guard, LocalHandle};
    use std::mem::ManuallyDrop;

    /// Dropped at the end of a passing execution, leaked when a failing one is torn down.
    struct Leaky<T>(ManuallyDrop<T>);

    impl<T> Drop for Leaky<T> {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                // SAFETY: dropped once, here.
                unsafe { ManuallyDrop::drop(&mut self.0) };
            }
        }
    }

    loom::lazy_static! {
        static ref COLLECTOR: Leaky<Collector> = Leaky(ManuallyDrop::new(Collector::new()));
    }

    loom::thread_local! {
        static HANDLE: Leaky<LocalHandle> = Leaky(ManuallyDrop::new(COLLECTOR.0.register()));
    }

    pub(super) fn pin() -> Guard {
        HANDLE.with(|h| h.0.pin())
    }
}

/// The unique owner of a retired object, sent to whichever thread runs the free.
struct Owned<T>(*mut T);

// SAFETY: the object is `Send`, and after unlinking the pointer is its only owner.
unsafe impl<T: Send> Send for Owned<T> {}

impl<T: Retire> Owned<T> {
    /// Free the object: drop it, or under loom poison and park it.
    fn free(self) {
        // SAFETY: by `defer_retire`'s contract, a unique Box retired once.
        let obj = unsafe { Box::from_raw(self.0) };
        #[cfg(not(loom))]
        drop(obj);
        #[cfg(loom)]
        super::graveyard::poison_and_park(obj);
    }
}

impl Guard {
    /// # Safety
    /// As [`super::Guard::defer_retire`].
    pub(super) unsafe fn defer_retire<T: Retire>(&self, ptr: *mut T) {
        let owned = Owned(ptr);
        match &self.0 {
            // SAFETY: crossbeam runs the closure after every current pin has ended; `owned`
            // is the unique owner.
            Some(g) => unsafe { g.defer_unchecked(move || owned.free()) },
            // An unprotected (weakened) guard frees at once, as crossbeam's `unprotected`.
            None => owned.free(),
        }
    }

    pub(super) fn flush(&self) {
        if let Some(g) = &self.0 {
            g.flush();
        }
    }
}
