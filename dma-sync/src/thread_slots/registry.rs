//! Each thread's record of the slots it owns, given back when the thread exits.
//!
//! A record names the instance (its `thread::unique` id), the instance's owner words by a
//! `Weak` (an instance dropped first fails the upgrade: its words are never touched after
//! they are freed), the slot's index, and the user's points and hint. A thread that uses
//! several instances finds its slot in each here when its user's one-entry hint names
//! another: a few entries, not a scan of the slots. One registry serves every user.
//!
//! The record's destructor stores 0 in each live slot's owner word (release, the user's
//! `disown` point): the payload the slot holds stays, and the next thread to claim the slot
//! (acquire, `claim`) inherits it with everything the exiting thread wrote, or a drainer
//! takes it. The destructor needs no thread id (only an owner writes its slot's non-zero
//! word), so it does not depend on the id's own thread-local, which may be destroyed first.
//! It also forgets the hints: a later thread-local destructor must not use a slot given back.

use super::Owners;
use crate::atomic::Ordering::Release;
use crate::mutation::Point;
use std::cell::RefCell;
// `std`'s `Weak` under loom too (loom's `Arc` has none): the count orders only the array's
// own lifetime, not any memory of the protocol.
use std::sync::{Arc, Weak};

/// A slot the calling thread owns.
struct Claim {
    instance: usize,
    owners: Weak<Owners>,
    index: usize,
    /// The user's `disown` point.
    disown: &'static Point,
    /// Forgets the user's hint.
    forget: fn(),
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
        for claim in &self.claims {
            (claim.forget)();
        }
        for claim in &self.claims {
            // A failed upgrade: the instance is being dropped, its words with it.
            if let Some(owners) = claim.owners.upgrade() {
                owners[claim.index].store(0, claim.disown.ord(Release));
            }
        }
    }
}

crate::thread::thread_local! {
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
    owners: &Arc<Owners>,
    disown: &'static Point,
    forget: fn(),
    pick: impl FnOnce() -> Option<usize>,
) -> Option<usize> {
    REGISTRY
        .try_with(|r| {
            let index = pick()?;
            let claims = &mut r.borrow_mut().claims;
            claims.retain(|c| c.owners.strong_count() > 0);
            claims.push(Claim {
                instance,
                owners: Arc::downgrade(owners),
                index,
                disown,
                forget,
            });
            Some(index)
        })
        .ok()
        .flatten()
}
