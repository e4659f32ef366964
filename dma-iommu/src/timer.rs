//! The flush-queue timer: a background thread that runs the timer's work `timeout` after it
//! was armed.
//!
//! Not built under loom: a wall-clock timer has no meaning in a model, where a model thread
//! calls the timer's work directly. The thread sleeps with `std::thread::park_timeout` (the
//! shim has no timed wait); arming wakes it with `unpark`, whose token makes a wake-up that
//! races with the decision to park harmless.

use dma_sync::atomic::{AtomicBool, Ordering};
use dma_sync::thread::JoinHandle;
use dma_sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle timer thread parks before re-checking (it is woken on arm anyway).
const IDLE: Duration = Duration::from_secs(1);

/// The timer thread's handle, for waking it when the timer is armed.
#[derive(Default)]
pub(crate) struct Waker(Mutex<Option<Thread>>);

impl Waker {
    pub(crate) fn set(&self, t: Thread) {
        *self.0.lock() = Some(t);
    }

    /// Called only when `timer_on` went from 0 to 1: once per timer period at most.
    pub(crate) fn wake(&self) {
        if let Some(t) = self.0.lock().as_ref() {
            t.unpark();
        }
    }
}

/// A running timer thread.
pub(crate) struct TimerThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl TimerThread {
    /// Start a thread that, whenever `armed()` holds, waits `timeout` and calls `fire()`; it
    /// exits when `fire()` returns `false` or on [`TimerThread::stop`].
    pub(crate) fn start(
        timeout: Duration,
        armed: impl Fn() -> bool + Send + 'static,
        fire: impl Fn() -> bool + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = dma_sync::thread::spawn(move || {
            let stopping = || stopped.load(Ordering::Relaxed);
            while !stopping() {
                if !armed() {
                    std::thread::park_timeout(IDLE);
                    continue;
                }
                let deadline = Instant::now() + timeout;
                loop {
                    if stopping() {
                        return;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    std::thread::park_timeout(deadline - now);
                }
                if !fire() {
                    return;
                }
            }
        });
        Self { stop, handle }
    }

    pub(crate) fn thread(&self) -> Thread {
        self.handle.thread().clone()
    }

    /// Stop the thread and wait for it to exit (after a running `fire` returned).
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.thread().unpark();
        // A panic in the timer's work already reported itself; teardown goes on.
        let _ = self.handle.join();
    }
}
