//! Per-thread slots of a shared object, each written by one owner thread without a locked
//! instruction and emptied by a rare *drainer*: the machinery behind the thread caches of
//! swiotlb-core (freed bounce runs) and iova-cache (freed IOVAs).
//!
//! An instance has a fixed array of slots, each holding a user payload `T` (atomics the user
//! reads and writes Relaxed). A thread claims a slot the first time it asks and keeps it
//! until it exits. A one-entry thread-local *hint*, one per user (so two users on one thread
//! do not evict each other's), names the instance the thread used last and its slot there;
//! on a miss the thread's registry (module `registry`) names its slot in each instance it
//! owns one in, and only a thread with none claims a free slot.
//!
//! # The owner and the drainer
//!
//! Only the owner touches its slot's payload, inside a *section*: it stores `active`, issues
//! the light fence (point `enter`), loads `closed` (acquire, `reopened`) and, if the slot is
//! open, runs the user's closure on the payload; a release store of `active` ends the section
//! (`exit`). A drainer (one at a time) stores `closed` in every slot, issues the heavy fence
//! (`drain`, a membarrier), and for each slot waits until its owner is outside a section
//! (acquire, `wait`), runs the user's closure on the payload and reopens the slot (release,
//! `reopen`). This is a store-buffering pair: a section either sees `closed` (and leaves the
//! payload alone) or is seen active by the drainer, which then waits for its end and sees
//! what it wrote. A section that sees the slot reopened sees what the drainer wrote. No
//! payload is written by both sides at once.
//!
//! # Misuse
//!
//! A section ends when its closure panics as when it returns (a guard's drop), so no drain
//! waits for a section that is gone. A section entered from inside another of the same
//! instance on one thread does not run (`None`): its end would end the outer section's hold
//! while the outer closure still uses the payload. A drain whose closure panics reopens the
//! slots it had not finished. A drain from inside a section or a drain of the same instance
//! on the same thread would wait for itself forever: it panics instead. Under loom a
//! panicking model thread skips the guards (its model has failed already). The nested check
//! costs a section three instructions (callgrind, per loop iteration of two sections: the
//! iova `pair_loop` example 188 → 194 checked and 105 → 111 unchecked, swiotlb's
//! `bounce_loop` 840 → 846, dma-iommu's `lazy_loop` 953 → 956); the guards cost none.
//!
//! # Exit
//!
//! A thread's registry gives its slots back when the thread exits (release of the slot's
//! owner word, `disown`), so a program that churns threads finds slots for its new ones. The
//! payload stays: the next claimer's compare-and-swap (acquire, `claim`) inherits it, or a
//! drainer takes it. The drain does not look at owners: a slot is closed, waited for and
//! emptied the same whoever owns it, and a section is entered only by the slot's owner, so
//! the hand-over of a slot between owners never runs inside a section.
//!
//! # Points
//!
//! Each user ([`SlotUser`]) names the eight orderings above with its own mutation points
//! ([`SlotPoints`]), so its loom models weaken its own instance of the protocol.

mod registry;

use crate::atomic::{
    AtomicBool, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use crate::mutation::Point;
use crate::{asymmetric, CachePadded, Mutex};
use std::cell::Cell;
// `std`'s `Arc` under loom too: the owner words are shared with the threads' registries by
// `Weak`, which loom's `Arc` lacks.
use std::sync::Arc;

/// A user's names for the protocol's orderings (see the module documentation).
#[derive(Debug)]
pub struct SlotPoints {
    /// The owner's light fence between announcing a section and reading `closed`.
    pub enter: &'static Point,
    /// The drainer's heavy fence between closing the slots and reading who is inside.
    pub drain: &'static Point,
    /// The release store ending a section (the drainer that sees it sees the payload).
    pub exit: &'static Point,
    /// The drainer's acquire load of a section flag (pairs with `exit`).
    pub wait: &'static Point,
    /// The release store reopening a drained slot.
    pub reopen: &'static Point,
    /// The owner's acquire load of `closed` (pairs with `reopen`).
    pub reopened: &'static Point,
    /// The release store giving an exiting thread's slot back.
    pub disown: &'static Point,
    /// The acquire compare-and-swap claiming a free slot (pairs with `disown`).
    pub claim: &'static Point,
}

/// A user's one-entry hint: `(instance, slot index)` of the instance the thread used last.
pub type Hint = Cell<(usize, usize)>;

/// Hint value: no instance, or the thread has no slot in the instance it names.
pub const NO_SLOT: usize = usize::MAX;

/// A user of the protocol: its points and its own hint, both statics the fast path reaches
/// without an indirection. Declared with [`slot_user!`](crate::slot_user).
pub trait SlotUser: 'static {
    /// The user's names for the protocol's orderings.
    const POINTS: &'static SlotPoints;
    /// Run `f` on the calling thread's hint; `None` once the thread's thread-locals are
    /// being destroyed.
    fn hint<R>(f: impl FnOnce(&Hint) -> R) -> Option<R>;
}

/// Declare a [`SlotUser`]: `dma_sync::slot_user!(pub(crate) struct Threads, POINTS);` with
/// `POINTS` a `static` [`SlotPoints`].
#[macro_export]
macro_rules! slot_user {
    ($vis:vis struct $name:ident, $points:path) => {
        /// The thread-slot user of this module: its points and its hint.
        $vis struct $name;
        impl $crate::thread_slots::SlotUser for $name {
            const POINTS: &'static $crate::thread_slots::SlotPoints = &$points;
            #[inline(always)]
            fn hint<R>(f: impl FnOnce(&$crate::thread_slots::Hint) -> R) -> Option<R> {
                $crate::__slot_hint!(HINT);
                HINT.try_with(f).ok()
            }
        }
    };
}

#[cfg(not(loom))]
#[doc(hidden)]
#[macro_export]
macro_rules! __slot_hint {
    ($name:ident) => {
        ::std::thread_local! {
            static $name: $crate::thread_slots::Hint =
                const { ::std::cell::Cell::new((0, $crate::thread_slots::NO_SLOT)) };
        }
    };
}

#[cfg(loom)]
#[doc(hidden)]
#[macro_export]
macro_rules! __slot_hint {
    ($name:ident) => {
        $crate::thread::thread_local! {
            static $name: $crate::thread_slots::Hint =
                ::std::cell::Cell::new((0, $crate::thread_slots::NO_SLOT));
        }
    };
}

struct Slot<T> {
    /// Whether the owner is inside a section.
    active: AtomicBool,
    /// Whether a drainer owns the payload: the owner keeps out until the drainer reopens it.
    closed: AtomicBool,
    payload: T,
}

/// Whether the calling thread, the owner of the slot whose flag `active` is, is inside a
/// section of it. Only owners store the flag (the drainer only loads it), each owner's stores
/// ordered before the next owner's claim (`disown`, `claim`), so the owner reads its own last
/// store, or the initial one. Under loom an unsynchronised read that loom checks against
/// exactly that: an atomic load there, followed by the light fence, which is a full fence
/// under loom and a compiler fence in production, would acquire the previous owner's
/// `exit` and hide a weakened `disown` from the models.
#[inline(always)]
fn inside(active: &AtomicBool) -> bool {
    #[cfg(not(loom))]
    return active.load(Relaxed);
    // SAFETY: no store to the flag is concurrent with its owner's read (above); loom reports
    // one that is as a causality violation.
    #[cfg(loom)]
    return unsafe { active.unsync_load() };
}

/// Ends a section when dropped: on return and when the user's closure panics (a section
/// left active would make every later drain wait forever). Stores the flag's value from
/// before the section: `false`, or `true` for a nested section, which leaves the outer one
/// active. (Branch-free: an early return for the nested case moved the swiotlb map path's
/// registers around, 81 instructions more per bounce under callgrind, against 6 this way.)
struct EndSection<'a, U: SlotUser>(&'a AtomicBool, bool, std::marker::PhantomData<U>);

impl<U: SlotUser> Drop for EndSection<'_, U> {
    #[inline(always)]
    fn drop(&mut self) {
        // Loom unwinds a failed model's threads where a loom atomic cannot run.
        #[cfg(loom)]
        if std::thread::panicking() {
            return;
        }
        self.0.store(self.1, U::POINTS.exit.ord(Release));
    }
}

/// A drain's slots from `next` on, reopened when dropped: none if the drain finished, the
/// rest if its closure panicked (a slot left closed would keep its owner out until the next
/// drain). Also clears the drainer's id.
struct Reopen<'a, T, U: SlotUser> {
    slots: &'a ThreadSlots<T, U>,
    next: usize,
}

impl<T, U: SlotUser> Drop for Reopen<'_, T, U> {
    fn drop(&mut self) {
        self.slots
            .draining
            .store(0, std::sync::atomic::Ordering::Relaxed);
        // Loom unwinds a failed model's threads where a loom atomic cannot run.
        #[cfg(loom)]
        if std::thread::panicking() {
            return;
        }
        for slot in &self.slots.slots[self.next..] {
            slot.closed.store(false, U::POINTS.reopen.ord(Release));
        }
    }
}

/// Forget the calling thread's hint of user `U`: its slots are being given back.
fn forget_hint<U: SlotUser>() {
    U::hint(|hint| hint.set((0, NO_SLOT)));
}

/// An owner word: `thread::id` of the slot's owner, 0 before a thread claims it and after
/// its owner exits. Apart from the slots, which the registries never touch.
type Owners = [CachePadded<AtomicUsize>];

/// The per-thread slots of one instance, for user `U`.
pub struct ThreadSlots<T, U: SlotUser> {
    slots: Box<[CachePadded<Slot<T>>]>,
    owners: Arc<Owners>,
    /// The instance's name in the hints (`thread::unique`: an instance at a dropped one's
    /// address is not taken for it).
    id: usize,
    /// One drainer at a time: a second would reopen a slot the first has closed.
    drainer: Mutex<()>,
    /// `thread::id` of the drainer, 0 when none: a drain inside a drain on one thread panics
    /// instead of waiting for the lock it holds. Only a thread's own id can compare equal,
    /// so a `std` atomic, Relaxed, in every build: not part of the protocol's orderings.
    draining: std::sync::atomic::AtomicUsize,
    user: std::marker::PhantomData<U>,
}

impl<T, U: SlotUser> std::fmt::Debug for ThreadSlots<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadSlots")
            .field("slots", &self.slots.len())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<T, U: SlotUser> ThreadSlots<T, U> {
    /// `n` unclaimed slots holding `payload()` each.
    pub fn new(n: usize, mut payload: impl FnMut() -> T) -> Self {
        asymmetric::prepare();
        ThreadSlots {
            slots: (0..n)
                .map(|_| {
                    CachePadded::new(Slot {
                        active: AtomicBool::new(false),
                        closed: AtomicBool::new(false),
                        payload: payload(),
                    })
                })
                .collect(),
            owners: (0..n)
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
            id: crate::thread::unique(),
            drainer: Mutex::new(()),
            draining: std::sync::atomic::AtomicUsize::new(0),
            user: std::marker::PhantomData,
        }
    }

    /// The calling thread's slot, claimed on its first use; `None` when every slot has
    /// another owner (or the thread's thread-locals are being destroyed).
    // The hint's closure only copies the hint out: with the match inside it, the thread-local
    // access was compiled as a call on every section.
    #[inline(always)]
    fn own_slot(&self) -> Option<&Slot<T>> {
        match U::hint(Cell::get)? {
            (id, NO_SLOT) if id == self.id => None,
            // Claimed by this thread (no other writes its id), so never taken from it.
            (id, i) if id == self.id => Some(&*self.slots[i]),
            _ => U::hint(|hint| self.claim(hint)).flatten(),
        }
    }

    /// Find the calling thread's slot in its registry, or claim a free one, and remember it
    /// in `hint`.
    #[cold]
    fn claim(&self, hint: &Hint) -> Option<&Slot<T>> {
        let i = registry::lookup(self.id).or_else(|| {
            registry::claim(
                self.id,
                &self.owners,
                U::POINTS.disown,
                forget_hint::<U>,
                || self.claim_free(),
            )
        });
        hint.set((self.id, i.unwrap_or(NO_SLOT)));
        Some(&self.slots[i?])
    }

    /// Claim a slot no thread owns. The acquire inherits the payload a previous owner left
    /// (pairs with the `disown` point).
    fn claim_free(&self) -> Option<usize> {
        let me = crate::thread::id();
        let acquire = U::POINTS.claim.ord(Acquire);
        self.owners.iter().position(|o| {
            o.load(Relaxed) == 0 && o.compare_exchange(0, me, acquire, Relaxed).is_ok()
        })
    }

    /// Run `f` on the calling thread's payload inside a section; `None` if the thread has no
    /// slot, a drainer has closed it, or the thread is inside a section of this instance
    /// already (`f` entered another: it leaves the section flag as the outer one set it, so
    /// the outer hold on the payload lasts until the outer section ends). A panic in `f` ends
    /// the section as a return does.
    #[inline(always)]
    pub fn section<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        let slot = self.own_slot()?;
        let nested = inside(&slot.active);
        slot.active.store(true, Relaxed);
        let _end = EndSection::<U>(&slot.active, nested, std::marker::PhantomData);
        asymmetric::light(U::POINTS.enter);
        let open = !slot.closed.load(U::POINTS.reopened.ord(Acquire));
        (open & !nested).then(|| f(&slot.payload))
    }

    /// Run `f` on every slot's payload with no section running on it (see the module
    /// documentation for the protocol). If `f` panics, every slot it has not finished is
    /// reopened on the way out (the one it panicked on keeps what `f` left in it).
    ///
    /// # Panics
    ///
    /// If called from inside a section of this instance on the same thread (that section
    /// could never end, so the drain could never finish), or from inside a drain of this
    /// instance on the same thread (its `f`): either would otherwise hang.
    #[cold]
    pub fn drain(&self, mut f: impl FnMut(&T)) {
        let me = crate::thread::id();
        assert_ne!(
            self.draining.load(std::sync::atomic::Ordering::Relaxed),
            me,
            "ThreadSlots::drain called inside a drain of the same instance"
        );
        let _one = self.drainer.lock();
        self.draining
            .store(me, std::sync::atomic::Ordering::Relaxed);
        let mut open = Reopen {
            slots: self,
            next: 0,
        };
        for slot in self.slots.iter() {
            slot.closed.store(true, Relaxed);
        }
        asymmetric::heavy(U::POINTS.drain);
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.active.load(U::POINTS.wait.ord(Acquire)) {
                // Only the owner sets its slot active: if that is this thread, the drain
                // runs inside its section, which can never end.
                assert_ne!(
                    registry::lookup(self.id),
                    Some(i),
                    "ThreadSlots::drain called inside a section of the same instance"
                );
                while slot.active.load(U::POINTS.wait.ord(Acquire)) {
                    crate::thread::spin_wait();
                }
            }
            // Every section that did not see `closed` is over, and its writes are seen.
            f(&slot.payload);
            slot.closed.store(false, U::POINTS.reopen.ord(Release));
            open.next = i + 1;
        }
    }

    /// Every slot's payload, unordered with the owners (for statistics and checks).
    pub fn payloads(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|s| &s.payload)
    }

    /// How many slots there are.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none (every thread takes its user's slower path).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A probe of whether the slots' shared owner words still exist: the threads' registries
    /// must not keep them alive once the instance is dropped (for tests).
    pub fn alive_probe(&self) -> impl Fn() -> bool {
        let owners = Arc::downgrade(&self.owners);
        move || owners.strong_count() > 0
    }

    /// How many slots have an owner now (an unordered snapshot, for tests).
    pub fn claimed(&self) -> usize {
        self.owners.iter().filter(|o| o.load(Relaxed) != 0).count()
    }
}
