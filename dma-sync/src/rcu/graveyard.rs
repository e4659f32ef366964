//! Where loom builds keep freed RCU objects: poisoned, parked until the execution ends, and
//! handed back to [`super::boxed`] so a later allocation reuses a freed address.
//!
//! Really freeing an object a buggy reader may still read would be undefined behaviour in
//! the test process, not a report. Parking keeps the memory valid; the poisoning writes are
//! loom-tracked, so a reader racing the free is a causality violation.
//!
//! The parked list lives in a std thread-local of the test's OS thread (loom runs every model
//! thread there), opened by a loom `lazy_static` when the execution's first guard is pinned and
//! emptied when loom drops that static at the end of the execution. Frees that run later, as
//! the epoch collector collects while the main thread's participation ends (loom drops the
//! main thread's thread-locals after its statics), find the list closed: every thread is done by then, so they poison and drop the object at once.

use super::Retire;
use std::any::Any;
use std::cell::RefCell;

type Parked = Vec<Box<dyn Any + Send>>;

std::thread_local! {
    /// `None` outside an execution (not yet opened, or closed at its end).
    static PARKED: RefCell<Option<Parked>> = const { RefCell::new(None) };
}

/// Opens the parked list for one execution; closes it when loom drops it.
struct Execution;

impl Drop for Execution {
    fn drop(&mut self) {
        let parked = PARKED.with(|p| p.borrow_mut().take()).unwrap_or_default();
        if std::thread::panicking() {
            // A failed execution is torn down outside loom: dropping a parked object's loom
            // `Arc` there would abort the process. Leak them instead.
            std::mem::forget(parked);
        }
    }
}

loom::lazy_static! {
    static ref EXECUTION: Execution = {
        PARKED.with(|p| *p.borrow_mut() = Some(Vec::new()));
        Execution
    };
}

/// Open the parked list for this execution (called when a guard is pinned).
pub(super) fn open() {
    let _ = &*EXECUTION;
}

/// A retired object of any type, as the loom backends hold it until its grace period ends.
pub(super) trait Freed: Send {
    /// [`Retire::poison`].
    fn poison(&mut self);
    /// For parking, and downcasting back on reuse.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl<T: Retire> Freed for T {
    fn poison(&mut self) {
        Retire::poison(self);
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// Poison a retired object whose grace period is over and park it (or, once the execution's
/// threads are done, drop it).
pub(super) fn poison_and_park(mut obj: Box<dyn Freed>) {
    obj.poison();
    let obj = obj.into_any();
    let closed = PARKED.with(|p| match p.borrow_mut().as_mut() {
        Some(parked) => {
            parked.push(obj);
            None
        }
        None => Some(obj),
    });
    drop(closed);
}

/// The most recently parked `T`, if any, for reuse of its allocation.
pub(super) fn take<T: Retire>() -> Option<Box<T>> {
    PARKED.with(|p| {
        let mut p = p.borrow_mut();
        let parked = p.as_mut()?;
        let i = parked.iter().rposition(|o| o.is::<T>())?;
        parked.remove(i).downcast::<T>().ok()
    })
}
