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
