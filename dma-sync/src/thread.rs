//! Threads: `std::thread` normally, `loom::thread` under loom.

#[cfg(not(loom))]
pub use std::thread::{spawn, yield_now, JoinHandle};

#[cfg(loom)]
pub use loom::thread::{spawn, yield_now, JoinHandle};

/// Thread-locals: `std::thread_local!` normally, `loom::thread_local!` (one value per model
/// thread, while `std`'s would be shared by every thread of a model) under loom, which has no
/// `const { .. }` initialiser form.
#[cfg(not(loom))]
pub use std::thread_local;

/// Thread-locals: `std::thread_local!` normally, `loom::thread_local!` (one value per model
/// thread, while `std`'s would be shared by every thread of a model) under loom, which has no
/// `const { .. }` initialiser form.
#[cfg(loom)]
pub use loom::thread_local;

/// One step of a spin loop.
///
/// Loom's scheduler is not fair: a spin loop that does not yield never lets the thread it
/// waits for run, and the model fails with "exceeded maximum number of branches".
///
/// ```
/// use dma_sync::atomic::{AtomicBool, Ordering};
/// let ready = AtomicBool::new(true);
/// while !ready.load(Ordering::Acquire) {
///     dma_sync::thread::spin_wait();
/// }
/// ```
#[inline(always)]
pub fn spin_wait() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// A number no other call of this function in the process returns, never 0: a name for
/// an object that must not be confused with one that had its address before.
///
/// ```
/// assert_ne!(dma_sync::thread::unique(), dma_sync::thread::unique());
/// ```
pub fn unique() -> usize {
    // A plain counter in every build: the numbers are names, not part of any model's orderings.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A process-wide id of the calling thread, never 0 and never handed to another thread (ids
/// are not reused when a thread exits): an owner tag for per-thread records in shared arrays.
///
/// ```
/// let me = dma_sync::thread::id();
/// assert_ne!(me, 0);
/// assert_eq!(dma_sync::thread::id(), me);
/// let other = std::thread::spawn(dma_sync::thread::id).join().unwrap();
/// assert_ne!(other, me);
/// ```
#[inline]
pub fn id() -> usize {
    thread_local! {
        static ID: usize = unique();
    }
    ID.with(|id| *id)
}
