//! Each thread's record of the cache slots it owns, given back when the thread exits.
//!
//! A record names the instance (its `dma_sync::thread::unique` id), the instance's slot array
//! by a `Weak` (an instance dropped first fails the upgrade: its slots are never touched after
//! they are freed) and the slot's index. A thread that uses several instances finds its slot
//! in each here when the one-entry hint names another: a few entries, not a scan of the slots.
//!
//! The record's destructor stores 0 in each live slot's `owner` (release,
//! `swiotlb.cache.disown`): the run the slot may still cache stays in it, a freed run of the
//! instance, and the next thread to claim the slot (acquire, `swiotlb.cache.claim`) inherits
//! it with everything the exiting thread wrote, or a drainer takes it. The destructor needs no
//! thread id (only an owner writes its slot's non-zero `owner`), so it does not depend on the
//! id's own thread-local, which may be destroyed first. It also forgets the hint: a later
//! thread-local destructor that maps or unmaps must not use a slot given back.

use super::{forget_hint, Slots};
use crate::points::CACHE_DISOWN;
use dma_sync::atomic::Ordering::Release;
use std::cell::RefCell;
// `std`'s `Weak` under loom too (loom's `Arc` has none): the count orders only the array's
// own lifetime, not any memory of the protocol.
use std::sync::{Arc, Weak};

/// A slot the calling thread owns.
struct Claim {
    instance: usize,
    slots: Weak<Slots>,
    index: usize,
}

#[derive(Default)]
struct Registry {
    claims: Vec<Claim>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Loom drops the thread-locals of a failed model's threads while unwinding, outside
        // its execution, where a loom atomic cannot run: the model is over, nothing to give.
        #[cfg(loom)]
        if std::thread::panicking() {
            return;
        }
        forget_hint();
        for claim in &self.claims {
            // A failed upgrade: the instance is being dropped, its slots with it.
            if let Some(slots) = claim.slots.upgrade() {
                slots[claim.index].owner.store(0, CACHE_DISOWN.ord(Release));
            }
        }
    }
}

dma_sync::thread::thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

/// The index of the calling thread's slot in `instance`, if it has recorded one.
pub(super) fn lookup(instance: usize) -> Option<usize> {
    REGISTRY
        .try_with(|r| {
            let claims = &r.borrow().claims;
            claims
                .iter()
                .find(|c| c.instance == instance)
                .map(|c| c.index)
        })
        .ok()
        .flatten()
}

/// Claim a slot of `instance` with `pick` and record it; `None` if `pick` finds none, or while
/// the calling thread's thread-locals are being destroyed (a slot claimed then would never be
/// given back). Forgets the records of dropped instances, so a long-lived thread's registry
/// stays as small as its live instances.
pub(super) fn claim(
    instance: usize,
    slots: &Arc<Slots>,
    pick: impl FnOnce() -> Option<usize>,
) -> Option<usize> {
    REGISTRY
        .try_with(|r| {
            let index = pick()?;
            let claims = &mut r.borrow_mut().claims;
            claims.retain(|c| c.slots.strong_count() > 0);
            claims.push(Claim {
                instance,
                slots: Arc::downgrade(slots),
                index,
            });
            Some(index)
        })
        .ok()
        .flatten()
}
