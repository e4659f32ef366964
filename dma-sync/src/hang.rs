//! Test support (feature `test-support`): a watchdog for tests whose defect was a thread
//! waiting for ever, so that such a test fails instead of hanging the suite.
//!
//! It lives here, the lowest crate of the workspace, so that every crate's tests can use it:
//! a crate's unit tests could not take it from `dma-soak`, which depends on the crates it
//! tests (a unit-test binary would link a second copy of the crate under test).

use std::panic::resume_unwind;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// Run `f` on another thread; `None` if it has not returned within 30 s (a hang; the thread
/// is left behind). A panic in `f` is raised again on the caller's thread, so the test fails
/// with the body's own message rather than as a hang. Under Miri, whose time is emulated (a
/// timeout there bounds nothing worth bounding), `f` runs on the caller's thread. The bound is
/// a watchdog, not a measurement: a correct `f` returns in milliseconds.
///
/// ```
/// use dma_sync::hang::within_30_s;
/// assert_eq!(within_30_s(|| 6 * 7), Some(42));
/// let panicked = std::panic::catch_unwind(|| within_30_s(|| panic!("the body's own")));
/// let message = panicked.unwrap_err();
/// assert_eq!(message.downcast_ref::<&str>(), Some(&"the body's own"));
/// ```
pub fn within_30_s<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    if cfg!(miri) {
        return Some(f());
    }
    let (tx, rx) = mpsc::channel();
    let body = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(r) => Some(r),
        // The sender was dropped unsent: `f` unwound, and its thread ends with the panic.
        Err(RecvTimeoutError::Disconnected) => match body.join() {
            Err(panic) => resume_unwind(panic),
            Ok(()) => unreachable!("the body's thread ended without sending or panicking"),
        },
        Err(RecvTimeoutError::Timeout) => None,
    }
}
