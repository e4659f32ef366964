//! Quiescence: wait until every device access that could hold an old translation has finished.
//!
//! A device access pins one RCU read section ([`read_section`]) around its translate *and* its
//! copy. An unmap first clears the page-table entries, then calls [`synchronize`]: it retires a
//! token through [`dma_sync::rcu`] and waits until the token has been retired, which happens
//! only once every read section pinned before the retirement has ended. A section pinned after
//! the entries were cleared cannot see them (the pin's full fence pairs with the grace period's),
//! so when `synchronize` returns, no device access still uses the unmapped translation. This is
//! the quiescence point the virtio-iommu UNMAP and DETACH replies need and that today's
//! lock-per-lookup implementations lack (they translate under a lock, then copy after dropping
//! it).
//!
//! ```
//! # if dma_sync::LOOM { return; } // loom builds: no model runs doctests
//! use dma_vmm::quiesce;
//! let guard = quiesce::read_section();
//! // translate and copy here
//! drop(guard);
//! quiesce::synchronize(); // returns once every section pinned before it has ended
//! ```

use crate::points::{DEVICE_PIN, GRACE_DONE_ACQUIRE, GRACE_DONE_RELEASE, UNMAP_GRACE};
use dma_sync::atomic::{AtomicBool, Ordering};
use dma_sync::rcu::{self, Guard, Retire};
use dma_sync::Arc;

/// Enter a device read section: translations obtained inside it stay in use, and every unmap
/// that clears them waits, until the returned guard is dropped.
///
/// Keep sections short (one descriptor's copy): a long section delays every unmap. Never call
/// [`synchronize`] (or an unmap) while holding one on the same thread: it would wait for itself.
#[inline]
pub fn read_section() -> Guard {
    rcu::pin_at(&DEVICE_PIN)
}

/// Grace-period polls that spin before the waiter starts yielding its CPU.
const SPINS_BEFORE_YIELD: u32 = 1 << 12;

/// The token whose retirement marks the end of a grace period.
struct Token(Option<Arc<AtomicBool>>);

impl Token {
    /// Signal the waiter and let go of the flag (a parked loom token must hold no loom
    /// object: it outlives the model's execution).
    fn signal(&mut self) {
        if let Some(done) = self.0.take() {
            done.store(true, GRACE_DONE_RELEASE.ord(Ordering::Release));
        }
    }
}

impl Retire for Token {
    fn poison(&mut self) {
        // Loom parks retired objects instead of dropping them: poisoning is the "free".
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
/// epoch advances of the RCU domain, typically microseconds; batch unmaps to pay it once.
pub fn synchronize() {
    if !UNMAP_GRACE.on() {
        return;
    }
    let done = Arc::new(AtomicBool::new(false));
    {
        let guard = rcu::pin();
        let token = Box::into_raw(Box::new(Token(Some(done.clone()))));
        // SAFETY: the token was never published anywhere; it is retired exactly once.
        unsafe { guard.defer_retire(token) };
        guard.flush();
    }
    let mut spins = 0u32;
    while !done.load(GRACE_DONE_ACQUIRE.ord(Ordering::Acquire)) {
        // Each pin/flush lets the epoch advance and runs expired deferred work. Readers'
        // sections are short: spin first, and give the CPU away only if they are not.
        rcu::pin().flush();
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            dma_sync::thread::spin_wait();
        } else {
            dma_sync::thread::yield_now();
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
                let section = read_section();
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
