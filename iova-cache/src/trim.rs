//! The background trim worker: every interval, one trim pass over the depots, until the
//! allocator is dropped. Not built for models, which call `trim_once` from a model thread.

use crate::allocator::Inner;
use dma_sync::atomic::{AtomicBool, Ordering};
use dma_sync::thread::JoinHandle;
use dma_sync::Arc;
use std::time::{Duration, Instant};

/// How long the worker sleeps at most before looking at its stop flag, so that dropping an
/// allocator never waits a whole trim interval.
const STOP_POLL: Duration = Duration::from_millis(5);

pub(crate) struct TrimWorker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl TrimWorker {
    pub(crate) fn start(inner: Arc<Inner>, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = dma_sync::thread::spawn(move || {
            // Relaxed: the flag carries no data; `join` in `drop` orders everything after.
            while !flag.load(Ordering::Relaxed) {
                let due = Instant::now() + period;
                loop {
                    let now = Instant::now();
                    if now >= due || flag.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep((due - now).min(STOP_POLL));
                }
                if !flag.load(Ordering::Relaxed) {
                    inner.trim_once();
                }
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
            // A panic in the worker already reported itself; nothing more to do here.
            let _ = h.join();
        }
    }
}
