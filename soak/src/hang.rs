//! Hang detection for tests whose defect was a thread waiting for ever: the test fails
//! instead of hanging the suite.

use std::sync::mpsc;
use std::time::Duration;

/// Run `f` on another thread; `None` if it has not returned within 30 s (a hang; the thread
/// is left behind). The bound is a watchdog, not a measurement: a correct `f` returns in
/// milliseconds.
pub fn within_30_s<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30)).ok()
}
