//! The loom RCU: fence-based read sections, retirements dated at `defer_retire`, grace
//! periods completed by whichever thread runs a collector step.
//!
//! * A reader's slot holds a sequence number, odd while it is inside a read section. Pinning
//!   increments it with a Relaxed read-modify-write and issues `fence(SeqCst)`
//!   (`rcu.pin.fence`); unpinning stores the next even value with Release
//!   (`rcu.unpin.release`). The pin is an RMW, not a store, so it continues the release
//!   sequence of the previous unpin: a collector that reads the newer odd value still
//!   synchronizes with the end of the earlier section (a plain store there was a real bug,
//!   found when grace periods started completing on other threads).
//! * `defer_retire` issues `fence(SeqCst)` (`rcu.sync.fence`) and snapshots every slot
//!   (Acquire, `rcu.sync.acquire`): the retirement waits for each slot that was odd then to
//!   move on. Dating the retirement here is at least as strict as the production epoch
//!   collector (`rcu/epoch.rs`), which dates a bag when it is sealed (at `flush`, at thread
//!   exit, or once the bag is full), never earlier: an object still reachable when it is
//!   retired can be freed under a reader that pins afterwards. The retiring thread's own
//!   section is in the snapshot, as in the epoch collector.
//! * Collector step: on every outermost pin and unpin and on `flush`, the thread frees every
//!   pending retirement whose snapshot has moved on (Acquire loads of the slots). So a grace
//!   period can complete on any thread, not only the retiring one, and nothing ever blocks in
//!   an unpin.
//! * The pending list is a loom mutex, so the free is ordered after the retiring thread's
//!   writes to the object; frees poison and park (`graveyard`), so [`super::boxed`] can hand
//!   the address back.
//! * `rcu.grace_period` weakened: `defer_retire` frees at once.
//!
//! # Why this is at least as strict as the production epoch collector
//!
//! * the collector dates a retirement when the thread's bag is sealed and frees it two epoch
//!   advances later, each advance waiting for every reader pinned at an older epoch; the shim
//!   frees as soon as every reader section that was open at `defer_retire` has ended, the
//!   earliest moment any correct RCU could, so retiring before unlinking is caught
//!   (`rcu_strict_models::retire_before_unlink_is_caught`);
//! * the collector runs frees in whichever thread seals or flushes (or exits); here any thread's
//!   pin, unpin or flush can, a superset, so `rcu::synchronize`'s done flag is observable: its
//!   two points are killed (`synchronize_relaxed_done_*`, and through dma-vmm in
//!   `vmm_quiesce_models`);
//! * the collector's frees return memory that a later allocation reuses; [`super::boxed`] does
//!   the same, so a CAS against a stale pointer can succeed against a new object
//!   (`rcu_strict_models::narrowed_pin_aba_is_caught`);
//! * the retiring thread's own section is part of the snapshot, as in the collector.
//!
//! Frees that bypass RCU altogether are reported by the loom suite's allocator (module
//! `bypass`).
//!
//! # loom's `fence(SeqCst)` is stronger than C11
//!
//! It joins a global clock both ways, so any two SC fences create happens-before. Every pin and
//! every retirement issues one, so a pin could in principle hide a missing acquire elsewhere.
//! What keeps the models honest: every acquire point of every protocol has a must-fail twin that
//! fails *with* the pins in place (so no pin masks it), and the production-RCU binary
//! (`loom-tests/tests/production_rcu.rs`) runs users on the epoch collector itself, whose grace
//! periods are decided by a different algorithm.

use super::graveyard::{self, Freed};
use super::Retire;
use crate::atomic::{AtomicUsize, Ordering::*};
use crate::points::{
    RCU_GRACE_PERIOD, RCU_PIN_FENCE, RCU_SYNC_ACQUIRE, RCU_SYNC_FENCE, RCU_UNPIN_RELEASE,
};
use crate::Mutex;
use std::cell::RefCell;
use std::mem::ManuallyDrop;

/// loom allows at most a handful of threads per model.
const MAX_READERS: usize = 8;

/// A retirement: the object, and the sections (slot, odd sequence number) it waits for.
struct Pending {
    waits: Vec<(usize, usize)>,
    obj: Box<dyn Freed>,
}

struct Domain {
    next_slot: AtomicUsize,
    seq: [AtomicUsize; MAX_READERS],
    /// How many retirements are pending: lets a collector step skip the lock.
    npending: AtomicUsize,
    /// Dropped by hand: a failed execution is torn down outside loom, where dropping a pending
    /// object's loom `Arc` would abort the process.
    pending: Mutex<ManuallyDrop<Vec<Pending>>>,
}

loom::lazy_static! {
    static ref DOMAIN: Domain = {
        Domain {
            next_slot: AtomicUsize::new(0),
            seq: std::array::from_fn(|_| AtomicUsize::new(0)),
            npending: AtomicUsize::new(0),
            pending: Mutex::new(ManuallyDrop::new(Vec::new())),
        }
    };
}

impl Drop for Domain {
    /// The execution is over and every thread has finished: retirements still pending are
    /// past their grace period. Free them, so the objects' loom `Arc`s are not reported as
    /// leaked.
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed execution is torn down outside loom: touch no loom object.
            return;
        }
        // SAFETY: taken once, here; the field is not used again.
        let pending = unsafe { ManuallyDrop::take(self.pending.get_mut()) };
        for p in pending {
            let mut obj = p.obj;
            obj.poison();
        }
    }
}

#[derive(Default)]
struct Local {
    /// This thread's slot and its last sequence number.
    slot: Option<(usize, usize)>,
    /// Nesting depth of protected guards.
    depth: usize,
}

loom::thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// A guard of the shim; `protected` is false for a read section weakened away.
pub(super) struct Guard {
    protected: bool,
}

pub(super) fn pin(protect: bool) -> Guard {
    graveyard::open();
    let entered = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        if !protect {
            return false;
        }
        l.depth += 1;
        if l.depth > 1 {
            return false;
        }
        let (slot, seq) = *l.slot.get_or_insert_with(|| {
            let slot = DOMAIN.next_slot.fetch_add(1, Relaxed);
            assert!(slot < MAX_READERS, "too many RCU readers in one model");
            (slot, 0)
        });
        l.slot = Some((slot, seq + 1));
        // An RMW, not a store: it continues the release sequence of the previous unpin, so a
        // collector that reads this value still synchronizes with that section's end.
        DOMAIN.seq[slot].fetch_add(1, Relaxed);
        true
    });
    if entered {
        RCU_PIN_FENCE.fence(SeqCst);
        collect();
    }
    Guard { protected: protect }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let left = self.protected
            && LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                l.depth -= 1;
                if l.depth > 0 {
                    return false;
                }
                let (slot, seq) = l.slot.expect("a pinned thread has a slot");
                l.slot = Some((slot, seq + 1));
                DOMAIN.seq[slot].store(seq + 1, RCU_UNPIN_RELEASE.ord(Release));
                true
            });
        if left {
            collect();
        }
    }
}

impl Guard {
    /// # Safety
    /// As [`super::Guard::defer_retire`].
    pub(super) unsafe fn defer_retire<T: Retire>(&self, ptr: *mut T) {
        // SAFETY: by `defer_retire`'s contract the pointer is a unique, unlinked Box.
        let obj: Box<dyn Freed> = unsafe { Box::from_raw(ptr) };
        RCU_SYNC_FENCE.fence(SeqCst);
        // An unprotected guard frees at once, as the epoch collector's does.
        if !self.protected || !RCU_GRACE_PERIOD.on() {
            graveyard::poison_and_park(obj);
            return;
        }
        let readers = DOMAIN.next_slot.load(Relaxed);
        let waits = (0..readers)
            .map(|slot| (slot, DOMAIN.seq[slot].load(RCU_SYNC_ACQUIRE.ord(Acquire))))
            .filter(|&(_, seq)| seq % 2 == 1)
            .collect();
        DOMAIN.pending.lock().push(Pending { waits, obj });
        // Relaxed: the count only lets a collector step skip the lock. The retirement itself
        // reaches the collector through the pending list's mutex; release/acquire here would
        // add nothing but an extra happens-before edge the real collector does not have.
        DOMAIN.npending.fetch_add(1, Relaxed);
    }

    pub(super) fn flush(&self) {
        collect();
    }
}

/// A wait of `rcu::synchronize`: a pin, a flush and an unpin, each a collector step.
pub(super) fn poll() {
    super::pin().flush();
}

/// One collector step: run every pending free whose grace period is over.
fn collect() {
    // Relaxed: a stale 0 only defers the step (as it would with Acquire); see `defer_retire`.
    if DOMAIN.npending.load(Relaxed) == 0 {
        return;
    }
    let ripe: Vec<Pending> = {
        let mut pending = DOMAIN.pending.lock();
        let (ripe, waiting) = std::mem::take(&mut **pending).into_iter().partition(|p| {
            p.waits
                .iter()
                .all(|&(slot, seq)| DOMAIN.seq[slot].load(RCU_SYNC_ACQUIRE.ord(Acquire)) != seq)
        });
        **pending = waiting;
        ripe
    };
    if ripe.is_empty() {
        return;
    }
    DOMAIN.npending.fetch_sub(ripe.len(), Relaxed);
    for p in ripe {
        graveyard::poison_and_park(p.obj);
    }
}
