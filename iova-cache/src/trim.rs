//! The background trim worker: every interval, one trim pass over the depots, until the
//! allocator is dropped. Not built for models, which call `trim_once` from a model thread.
//!
//! The worker parks between passes, so an idle allocator costs one wake-up per interval;
//! dropping the allocator sets the stop flag and unparks the worker, then joins it.

use crate::allocator::Inner;
use dma_sync::atomic::{AtomicBool, Ordering};
use dma_sync::thread::JoinHandle;
use dma_sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct TrimWorker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl TrimWorker {
    pub(crate) fn start(inner: Arc<Inner>, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = dma_sync::thread::spawn(move || {
            let mut due = Instant::now() + period;
            // Relaxed: `unpark` synchronises with the `park` it ends, which orders the
            // store before it; the flag carries no other data.
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < due {
                    std::thread::park_timeout(due - now);
                    continue;
                }
                inner.trim_once();
                due = Instant::now() + period;
            }
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for TrimWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            // A panic in the worker already reported itself; nothing more to do here.
            let _ = h.join();
        }
    }
}
