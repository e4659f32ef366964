//! A flush queue driven through its public API by `InvalidationOps` that misbehave: a
//! panicking flush must not leave the queue unable to make progress.
#![cfg(not(loom))]

use dma_iommu::{FlushQueue, FqConfig, Gather, InvalidationOps};
use dma_soak::hang::within_30_s;
use dma_sync::atomic::{AtomicBool, Ordering::Relaxed};
use dma_sync::{Arc, Mutex};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Ops whose next flush panics when `fail_next_flush` is set.
#[derive(Default)]
struct Flaky {
    fail_next_flush: AtomicBool,
    freed: Mutex<Vec<u64>>,
}

impl InvalidationOps for Flaky {
    type Entry = u64;
    fn flush_all(&self) {
        if self.fail_next_flush.swap(false, Relaxed) {
            panic!("the IOMMU refused the flush");
        }
    }
    fn sync(&self, _g: &mut Gather) {}
    fn reclaim(&self, iova: u64) {
        self.freed.lock().push(iova);
    }
}

/// A flush whose `flush_all` panicked started but never finished. A later enqueue into a full
/// ring, which waits for every flush started before its own, waited for it for ever.
#[test]
fn a_panicking_flush_does_not_hang_the_next_full_ring() {
    let ops = Arc::new(Flaky::default());
    // One ring of capacity 1; the timer does not run during the test.
    let cfg = FqConfig::single()
        .with_ring_size(2)
        .with_timeout(Duration::from_secs(3600));
    let fq = Arc::new(FlushQueue::new(ops.clone(), cfg).unwrap());
    fq.enqueue(1);
    ops.fail_next_flush.store(true, Relaxed);
    assert!(catch_unwind(AssertUnwindSafe(|| fq.flush())).is_err());
    let queue = fq.clone();
    let done = within_30_s(move || {
        queue.enqueue(2); // full: flushes, frees 1
        queue.enqueue(3); // full: flushes, frees 2
    });
    assert!(done.is_some(), "an enqueue into a full ring hung");
    // Entry 1 was stamped before the failed flush started, so its free needed a flush that
    // completed after: the one it waited for, not the failed one.
    assert_eq!(*ops.freed.lock(), [1, 2]);
    fq.shutdown();
    assert_eq!(*ops.freed.lock(), [1, 2, 3]);
    let st = fq.stats();
    assert_eq!((st.enqueued, st.reclaimed, st.pending), (3, 3, 0));
}
