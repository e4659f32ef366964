//! The asymmetric fence pair of the epoch RCU, for other store-buffering protocols whose one
//! side is hot and the other rare: [`light`] on the hot side (a compiler fence once
//! membarrier is registered), [`heavy`] on the rare side (`membarrier(PRIVATE_EXPEDITED)`, a
//! full fence on every CPU running a thread of the process). Both are `fence(SeqCst)` in the
//! fallback mode, under Miri and under loom (the standard model of the pair: see `rcu/fence.rs`).
//!
//! A protocol calls [`prepare`] once before its first fence, where it is built (before it
//! can be shared), so every thread that later uses it sees the decided mode.
//!
//! ```
//! use dma_sync::atomic::{AtomicBool, Ordering::Relaxed};
//! dma_sync::mutation_points! {
//!     /// The hot side's fence.
//!     HOT: Fence = "doc.hot";
//!     /// The rare side's fence.
//!     RARE: Fence = "doc.rare";
//! }
//! dma_sync::asymmetric::prepare();
//! let (busy, stop) = (AtomicBool::new(false), AtomicBool::new(false));
//! busy.store(true, Relaxed);
//! dma_sync::asymmetric::light(&HOT);
//! assert!(!stop.load(Relaxed));
//! busy.store(false, Relaxed);
//! stop.store(true, Relaxed);
//! dma_sync::asymmetric::heavy(&RARE);
//! assert!(!busy.load(Relaxed));
//! ```

use crate::mutation::Point;

/// Decide the fence mode (membarrier or the fallback) if no one has.
pub fn prepare() {
    #[cfg(not(loom))]
    crate::rcu::fence::decide();
}

/// The hot side's fence, between its store and its load.
#[inline(always)]
pub fn light(point: &'static Point) {
    #[cfg(not(loom))]
    crate::rcu::fence::light(point);
    #[cfg(loom)]
    point.fence(crate::atomic::Ordering::SeqCst);
}

/// The rare side's fence: a full fence here and on every running thread of the process.
pub fn heavy(point: &'static Point) {
    #[cfg(not(loom))]
    crate::rcu::fence::heavy(point);
    #[cfg(loom)]
    point.fence(crate::atomic::Ordering::SeqCst);
}
