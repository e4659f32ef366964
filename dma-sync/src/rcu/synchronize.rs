//! Wait for a grace period: return once every read section pinned before the call has ended.
//!
//! It retires a token through [`super::Guard::defer_retire`] and waits until the token is
//! freed. The free may run on any thread (the epoch collector frees in whichever thread
//! collects; the loom shim too), so the token's "done" flag is a release store read with
//! acquire: the caller then happens after every section the grace period waited for.

use crate::atomic::{AtomicBool, Ordering};
use crate::points::{RCU_SYNCHRONIZE_DONE_ACQUIRE, RCU_SYNCHRONIZE_DONE_RELEASE};
use crate::Arc;

/// Grace-period polls that spin before the waiter starts yielding its CPU.
const SPINS_BEFORE_YIELD: u32 = 1 << 12;

/// The token whose free marks the end of a grace period.
struct Token(Option<Arc<AtomicBool>>);

impl Token {
    /// Signal the waiter and let go of the flag (a parked loom token must hold no loom
    /// object: it outlives the model's execution).
    fn signal(&mut self) {
        if let Some(done) = self.0.take() {
            done.store(true, RCU_SYNCHRONIZE_DONE_RELEASE.ord(Ordering::Release));
        }
    }
}

impl super::Retire for Token {
    fn poison(&mut self) {
        // Loom parks freed objects instead of dropping them: poisoning is the free.
        self.signal();
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.signal();
    }
}

/// Wait for a grace period: return once every read section that was pinned when this call
/// began has ended.
///
/// Must not be called from inside a read section (it would wait for itself). Cost: a few
/// epoch advances, typically microseconds; batch updates to pay it once.
///
/// ```
/// let section = dma_sync::rcu::pin();
/// drop(section);
/// dma_sync::rcu::synchronize(); // returns once every section pinned before it has ended
/// ```
pub fn synchronize() {
    let done = Arc::new(AtomicBool::new(false));
    {
        let guard = super::pin();
        let token = Box::into_raw(super::boxed(Token(Some(done.clone()))));
        // SAFETY: the token was never published anywhere; it is retired exactly once.
        unsafe { guard.defer_retire(token) };
        guard.flush();
    }
    let mut spins = 0u32;
    while !done.load(RCU_SYNCHRONIZE_DONE_ACQUIRE.ord(Ordering::Acquire)) {
        // Each poll lets the grace period advance and runs expired deferred work. Readers'
        // sections are short: spin first, and give the CPU away only if they are not.
        super::backend::poll();
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            crate::thread::spin_wait();
        } else {
            crate::thread::yield_now();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;

    #[test]
    fn synchronize_without_readers_returns() {
        for _ in 0..3 {
            synchronize();
        }
    }

    #[test]
    fn synchronize_waits_for_a_section_pinned_before_it() {
        let pinned = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let left = Arc::new(AtomicBool::new(false));
        let reader = {
            let (pinned, release, left) = (pinned.clone(), release.clone(), left.clone());
            std::thread::spawn(move || {
                let section = crate::rcu::pin();
                pinned.store(true, SeqCst);
                while !release.load(SeqCst) {
                    std::thread::yield_now();
                }
                left.store(true, SeqCst);
                drop(section);
            })
        };
        while !pinned.load(SeqCst) {
            std::thread::yield_now();
        }
        let waiter = {
            let left = left.clone();
            std::thread::spawn(move || {
                synchronize();
                // Only the end of the reader's section lets the grace period end.
                assert!(
                    left.load(SeqCst),
                    "synchronize returned inside a pinned section"
                );
            })
        };
        for _ in 0..20 {
            std::thread::yield_now();
        }
        assert!(
            !waiter.is_finished(),
            "synchronize returned while a section was pinned"
        );
        release.store(true, SeqCst);
        waiter.join().unwrap();
        reader.join().unwrap();
    }
}
