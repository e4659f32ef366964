//! Where loom builds keep freed RCU objects: poisoned, parked until the execution ends, and
//! handed back to [`super::boxed`] so a later allocation reuses a freed address.
//!
//! Really freeing an object a buggy reader may still read would be undefined behaviour in
//! the test process, not a report. Parking keeps the memory valid; the poisoning writes are
//! loom-tracked, so a reader racing the free is a causality violation.

use super::Retire;
use std::any::Any;
use std::sync::Mutex;

/// Parked objects, per loom execution (a loom `lazy_static` is reset between executions).
struct Parked(Mutex<Vec<Box<dyn Any + Send>>>);

impl Drop for Parked {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed execution is torn down outside loom: dropping a parked object's loom
            // `Arc` there would abort the process. Leak them instead.
            let parked = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
            std::mem::forget(std::mem::take(parked));
        }
    }
}

loom::lazy_static! {
    static ref PARKED: Parked = Parked(Mutex::new(Vec::new()));
}

fn parked() -> std::sync::MutexGuard<'static, Vec<Box<dyn Any + Send>>> {
    PARKED.0.lock().unwrap_or_else(|e| e.into_inner())
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

/// Poison a retired object whose grace period is over and park it.
pub(super) fn poison_and_park(mut obj: Box<dyn Freed>) {
    obj.poison();
    parked().push(obj.into_any());
}

/// The most recently parked `T`, if any, for reuse of its allocation.
pub(super) fn take<T: Retire>() -> Option<Box<T>> {
    let mut parked = parked();
    let i = parked.iter().rposition(|o| o.is::<T>())?;
    parked.remove(i).downcast::<T>().ok()
}
