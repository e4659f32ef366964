//! The production RCU: epoch-based reclamation with an asymmetric read side.
//!
//! The shape of crossbeam-epoch's collector (a global epoch, per-thread participant records,
//! bags of deferred frees sealed with an epoch and freed two epochs later), with liburcu's
//! "memb" read side: a reader's pin is a load of the global epoch, a store to its own record (a
//! plain `mov` on x86) and a light fence (`rcu/fence.rs`): no read-modify-write, no lock, no
//! shared line written, no collection. Writers pay instead, with the heavy fence.
//!
//! * **Reader.** Outermost pin: `e = epoch.load(Relaxed)`; `record.store(e | PINNED, Release)`
//!   (`rcu.pin.release`); light fence (`rcu.pin.fence`). Outermost unpin:
//!   `record.store(UNPINNED, Release)` (`rcu.unpin.release`). Nesting is a thread-local count.
//!   The pin's store is Release because a collector may read it instead of the unpin that
//!   ended the thread's previous section, and a plain store does not continue that unpin's
//!   release sequence: the previous section's reads would not be ordered before the free
//!   (loom found it; on x86 a Release store is the same `mov`).
//! * **Retire.** `defer_retire` pushes the object into the thread's bag. A full bag
//!   ([`BAG_CAPACITY`]), a `flush` or the thread's exit seals it: heavy fence (`rcu.seal.fence`),
//!   then the bag is dated with the global epoch and queued globally. The heavy fence, not the
//!   plain SC fence crossbeam uses here, because readers issue no real fence of their own: a
//!   reader that pinned at the sealing epoch's successor could otherwise still load the
//!   unlinked pointer (nothing orders its load after the unlink).
//! * **Collect** (after a full bag's seal, on `flush`, and in `rcu::synchronize`'s waits,
//!   which collect without pinning): load the global epoch `g`; heavy fence (`rcu.sync.fence`);
//!   read every record; if every pinned one is at `g` (`rcu.advance.check`), acquire fence
//!   (`rcu.sync.acquire`: the unpins read are Release stores) and advance `g` to its successor
//!   with a compare-and-swap (a concurrent collector may have done it; a plain store could move
//!   the epoch back), AcqRel (`rcu.advance.release`); then, under the bag lock, load the epoch
//!   with Acquire (`rcu.expiry.acquire`) and free every queued bag at least two epochs older.
//!   Under the lock, so the epoch is no older than any queued bag's date.
//!
//! Why two epochs: a reader that can still reach an object unlinked before the bag's heavy
//! fence had pinned before that fence's barrier reached its CPU, so its record (pinned at an
//! epoch no later than the bag's) is visible to every collector whose heavy fence comes after
//! its load of a later epoch. The advance from the bag's epoch to the next may pass it (it may
//! have pinned at the one before), the advance after that cannot while it stays pinned.
//!
//! **Bounded garbage.** Readers never collect; retirements do: every [`BAG_CAPACITY`]
//! retirements of a thread seal its bag and run a collection, which advances the epoch unless
//! a reader is still pinned at an older one, and frees everything two epochs old. So the
//! garbage not yet freed is at most one partly filled bag per thread plus the bags sealed since
//! the oldest section still pinned began, and two epochs' worth more. A thread's exit seals
//! its bag (without collecting: that would run other objects' destructors while the thread's
//! locals are being destroyed); the next collection anywhere frees it. A reader that stays
//! pinned holds back every free after it, as in any RCU.
//!
//! **Threads.** A thread registers its record on its first pin (taking the participant lock,
//! where the fence mode is decided) and unregisters at exit, after sealing its bag. A guard
//! still alive when the thread's locals are destroyed keeps the record until it drops; a pin
//! during that destruction gets a temporary record, gone when its guard drops.
//!
//! Under `--cfg loom --cfg production_rcu` this same code runs on loom's atomics, locks and
//! thread-locals (both fences are `fence(SeqCst)`, see `rcu/fence.rs`); freed objects are
//! poisoned and parked (`rcu/graveyard.rs`).

use super::fence;
use super::Retire;
use crate::atomic::{AtomicUsize, Ordering::*};
use crate::points::epoch::{
    RCU_ADVANCE_CHECK, RCU_ADVANCE_RELEASE, RCU_EXPIRY_ACQUIRE, RCU_PIN_RELEASE, RCU_SEAL_FENCE,
};
use crate::points::{
    RCU_GRACE_PERIOD, RCU_PIN_FENCE, RCU_SYNC_ACQUIRE, RCU_SYNC_FENCE, RCU_UNPIN_RELEASE,
};
use crate::{CachePadded, Mutex};
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::ptr::NonNull;
// A std `Arc` even under loom (records, and the domain under loom): a reference count orders
// nothing here, and a loom `Arc` must not be dropped while a failed execution is torn down.
use std::sync::Arc;

/// Retirements a thread collects before its bag is sealed and a collection runs.
pub(super) const BAG_CAPACITY: usize = 64;

/// Epochs step by two: the low bit of a record marks it pinned.
const STEP: usize = 2;
const PINNED: usize = 1;
const UNPINNED: usize = 0;

/// A participant's state, `epoch | PINNED` or `UNPINNED`, alone on its cache line: only its
/// thread writes it, only collectors read it.
type Record = CachePadded<AtomicUsize>;

/// A retired object, type-erased until its free. A raw pointer, not a `Box`, until then:
/// readers may still hold references, and a `Box` would assert unique ownership while they do.
struct Retired {
    #[cfg(not(loom))]
    obj: *mut dyn Send,
    #[cfg(loom)]
    obj: *mut dyn super::graveyard::Freed,
}

// SAFETY: the object is `Send` (`Retire: Send`), and once unlinked and retired this is its
// only owner.
unsafe impl Send for Retired {}

impl Retired {
    /// # Safety
    /// As [`super::Guard::defer_retire`].
    unsafe fn new<T: Retire>(ptr: *mut T) -> Self {
        Retired { obj: ptr }
    }

    /// Drop the object, or under loom poison and park it. Only once its grace period is over.
    fn free(self) {
        // SAFETY: by `defer_retire`'s contract a unique Box retired once; its grace period is
        // over, so no reader holds a reference any more.
        let obj = unsafe { Box::from_raw(self.obj) };
        #[cfg(not(loom))]
        drop(obj);
        #[cfg(loom)]
        super::graveyard::poison_and_park(obj);
    }
}

/// A bag of retirements, dated with the global epoch when it was sealed.
struct Sealed {
    epoch: usize,
    objects: Vec<Retired>,
}

struct Domain {
    epoch: CachePadded<AtomicUsize>,
    /// Every registered record; walked by collectors only.
    participants: Mutex<Vec<Arc<Record>>>,
    /// Sealed bags, oldest first.
    sealed: Mutex<Vec<Sealed>>,
}

impl Domain {
    fn new() -> Self {
        Domain {
            epoch: CachePadded::new(AtomicUsize::new(0)),
            participants: Mutex::new(Vec::new()),
            sealed: Mutex::new(Vec::new()),
        }
    }

    fn register(&self) -> Arc<Record> {
        let record = Arc::new(CachePadded::new(AtomicUsize::new(UNPINNED)));
        let mut participants = self.participants.lock();
        fence::decide();
        participants.push(record.clone());
        record
    }

    fn unregister(&self, record: &Arc<Record>) {
        self.participants
            .lock()
            .retain(|r| !std::ptr::eq::<Record>(&**r, &**record));
    }

    /// Date `objects` with the global epoch and queue them.
    fn seal(&self, objects: Vec<Retired>) {
        // Orders the unlinks before the epoch load, and on every running reader (see the
        // module docs for why a plain fence is not enough here).
        fence::heavy(&RCU_SEAL_FENCE);
        let epoch = self.epoch.load(Relaxed);
        self.sealed.lock().push(Sealed { epoch, objects });
    }

    /// Advance the epoch if every pinned participant is at it, and free what has expired.
    fn collect(&self) {
        let global = self.epoch.load(Relaxed);
        // Pairs with the readers' light fences: a reader whose pin store this scan misses
        // loads published pointers after the unlinks that preceded the fence.
        fence::heavy(&RCU_SYNC_FENCE);
        if self.all_pinned_at(global) || !RCU_ADVANCE_CHECK.on() {
            // The scan read the unpins (Release): the readers' sections happen before the frees.
            RCU_SYNC_ACQUIRE.fence(Acquire);
            let (success, failure) = RCU_ADVANCE_RELEASE.cas(AcqRel, Relaxed);
            let next = global.wrapping_add(STEP);
            let _ = self.epoch.compare_exchange(global, next, success, failure);
        }
        // The expiry epoch is loaded under the bag lock: every bag queued was dated before its
        // push, so the load is no older than any bag's date. Loaded before the lock, a stalled
        // collector could judge a bag dated since against an older epoch, and the wrapped
        // difference would free it at once. Acquire: a free ordered after another collector's
        // advance comes after the unpins that advance read (the bag lock orders it only if that
        // collector took the lock first).
        let expired: Vec<Sealed> = {
            let mut sealed = self.sealed.lock();
            let now = self.epoch.load(RCU_EXPIRY_ACQUIRE.ord(Acquire));
            let (expired, waiting) = std::mem::take(&mut *sealed)
                .into_iter()
                .partition(|bag| now.wrapping_sub(bag.epoch) >= 2 * STEP);
            *sealed = waiting;
            expired
        };
        for bag in expired {
            bag.objects.into_iter().for_each(Retired::free);
        }
    }

    fn all_pinned_at(&self, global: usize) -> bool {
        self.participants.lock().iter().all(|r| {
            let state = r.load(Relaxed);
            state & PINNED == 0 || state & !PINNED == global
        })
    }
}

/// How a participant holds the domain: a static normally; under loom a shared pointer, since
/// loom drops its statics before the main thread's thread-locals, whose exit still collects.
#[cfg(not(loom))]
type DomainRef = &'static Domain;
#[cfg(loom)]
type DomainRef = Arc<Domain>;

#[cfg(not(loom))]
fn domain() -> DomainRef {
    static DOMAIN: std::sync::OnceLock<Domain> = std::sync::OnceLock::new();
    DOMAIN.get_or_init(Domain::new)
}

#[cfg(loom)]
loom::lazy_static! {
    static ref DOMAIN: Arc<Domain> = Arc::new(Domain::new());
}

#[cfg(loom)]
fn domain() -> DomainRef {
    DOMAIN.clone()
}

#[cfg(loom)]
impl Drop for Domain {
    /// The execution is over and every thread has finished: bags still queued are past their
    /// grace period. Free them, so the objects' loom `Arc`s are not reported as leaked.
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed execution is torn down outside loom: touch no loom object.
            std::mem::forget(std::mem::take(self.sealed.get_mut()));
            std::mem::forget(std::mem::take(self.participants.get_mut()));
            return;
        }
        for bag in std::mem::take(self.sealed.get_mut()) {
            bag.objects.into_iter().for_each(Retired::free);
        }
    }
}

/// A thread's participation: its record, its nesting depth and its bag. Owned by the
/// thread-local [`Registration`], or by the last guard if the thread-local goes first.
struct Local {
    domain: DomainRef,
    record: Arc<Record>,
    depth: Cell<usize>,
    bag: RefCell<Vec<Retired>>,
    /// The owner is gone: the outermost guard's drop ends the participation.
    orphaned: Cell<bool>,
}

impl Local {
    fn register(orphaned: bool) -> NonNull<Local> {
        let domain = domain();
        let local = Box::new(Local {
            record: domain.register(),
            domain,
            depth: Cell::new(0),
            bag: RefCell::new(Vec::new()),
            orphaned: Cell::new(orphaned),
        });
        NonNull::from(Box::leak(local))
    }

    #[inline]
    fn enter(&self) {
        let depth = self.depth.get();
        self.depth.set(depth + 1);
        if depth == 0 {
            let epoch = self.domain.epoch.load(Relaxed);
            // Release, not Relaxed: a collector that reads this pin rather than the unpin before
            // it must still be ordered after the previous section (a plain store does not
            // continue the unpin's release sequence). Free on x86; `stlr` on Arm.
            self.record
                .store(epoch | PINNED, RCU_PIN_RELEASE.ord(Release));
            fence::light(&RCU_PIN_FENCE);
        }
    }

    /// Leave a section; true when the participation ended with it.
    #[inline]
    fn leave(&self) -> bool {
        let depth = self.depth.get() - 1;
        self.depth.set(depth);
        if depth > 0 {
            return false;
        }
        self.record.store(UNPINNED, RCU_UNPIN_RELEASE.ord(Release));
        self.orphaned.get()
    }

    fn retire(&self, obj: Retired) {
        let full = {
            let mut bag = self.bag.borrow_mut();
            bag.push(obj);
            bag.len() >= BAG_CAPACITY
        };
        if full {
            self.flush();
        }
    }

    fn seal(&self) {
        let bag = std::mem::take(&mut *self.bag.borrow_mut());
        if !bag.is_empty() {
            self.domain.seal(bag);
        }
    }

    fn flush(&self) {
        self.seal();
        self.domain.collect();
    }

    /// End the participation: queue the bag, drop the record, free the `Local`. No collection:
    /// frees here would run other objects' destructors while this thread's locals are being
    /// destroyed; the next collection anywhere frees the bag.
    ///
    /// # Safety
    /// `local` came from [`Local::register`], no guard uses it any more, and this runs once.
    unsafe fn finish(local: NonNull<Local>) {
        // SAFETY: leaked by `register`, reclaimed once.
        let local = unsafe { Box::from_raw(local.as_ptr()) };
        #[cfg(loom)]
        if std::thread::panicking() {
            // A failed execution is torn down outside loom: touch no loom object.
            std::mem::forget(local);
            return;
        }
        local.seal();
        local.domain.unregister(&local.record);
    }
}

/// The thread-local owner of a thread's [`Local`].
struct Registration(NonNull<Local>);

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: the Local lives until `finish`, which only the last of this owner and the
        // outermost guard runs.
        let local = unsafe { self.0.as_ref() };
        if local.depth.get() == 0 {
            // SAFETY: no guard is alive; the owner releases it once.
            unsafe { Local::finish(self.0) };
        } else {
            local.orphaned.set(true);
        }
    }
}

crate::thread::thread_local! {
    static LOCAL: Registration = Registration(Local::register(false));
}

/// A guard of the epoch RCU; `local` is `None` for a read section weakened away. Not `Send`:
/// it leaves the section on the thread that entered it.
pub(super) struct Guard {
    local: Option<NonNull<Local>>,
    _not_send: PhantomData<*mut ()>,
}

#[inline]
pub(super) fn pin(protect: bool) -> Guard {
    #[cfg(loom)]
    super::graveyard::open();
    let local = protect.then(|| {
        let local = LOCAL
            .try_with(|r| r.0)
            // The thread's locals are being destroyed: a participation for this guard alone.
            .unwrap_or_else(|_| Local::register(true));
        // SAFETY: the Local lives until its owner and every guard are gone.
        unsafe { local.as_ref() }.enter();
        local
    });
    Guard {
        local,
        _not_send: PhantomData,
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        if let Some(local) = self.local {
            // SAFETY: this guard keeps the Local alive.
            if unsafe { local.as_ref() }.leave() {
                // SAFETY: orphaned and no guard left: this is the last user.
                unsafe { Local::finish(local) };
            }
        }
    }
}

/// A wait of `rcu::synchronize`: seal this thread's bag and collect, without pinning (a
/// waiter is not a reader, and an unpinned collector does not hold the epoch back).
pub(super) fn poll() {
    match LOCAL.try_with(|r| r.0) {
        // SAFETY: the owner keeps the Local alive while the thread runs.
        Ok(local) => unsafe { local.as_ref() }.flush(),
        Err(_) => domain().collect(),
    }
}

impl Guard {
    /// # Safety
    /// As [`super::Guard::defer_retire`].
    pub(super) unsafe fn defer_retire<T: Retire>(&self, ptr: *mut T) {
        // SAFETY: forwarded contract.
        let obj = unsafe { Retired::new(ptr) };
        match self.local {
            // SAFETY: this guard keeps the Local alive.
            Some(local) if RCU_GRACE_PERIOD.on() => unsafe { local.as_ref() }.retire(obj),
            // An unprotected (weakened) guard frees at once.
            _ => obj.free(),
        }
    }

    pub(super) fn flush(&self) {
        if let Some(local) = self.local {
            // SAFETY: this guard keeps the Local alive.
            unsafe { local.as_ref() }.flush();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::{pin, Retire};
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
    use std::sync::Arc;

    /// Counts its frees; a reader checks it was not freed while pinned.
    struct Counted {
        freed: Arc<AtomicUsize>,
        alive: AtomicBool,
    }

    impl Retire for Counted {
        fn poison(&mut self) {}
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.alive.store(false, SeqCst);
            self.freed.fetch_add(1, SeqCst);
        }
    }

    fn counted(freed: &Arc<AtomicUsize>) -> *mut Counted {
        Box::into_raw(Box::new(Counted {
            freed: freed.clone(),
            alive: AtomicBool::new(true),
        }))
    }

    fn drain(freed: &AtomicUsize, expected: usize) {
        while freed.load(SeqCst) != expected {
            pin().flush();
            std::thread::yield_now();
        }
    }

    #[test]
    fn nested_pins_leave_the_record_pinned_until_the_outermost_drops() {
        let outer = pin();
        let record = outer.inner.local.map(|l| {
            // SAFETY: the guard keeps the Local alive.
            unsafe { l.as_ref() }.record.clone()
        });
        let record = record.expect("a protected guard has a Local");
        drop(pin());
        assert_eq!(record.load(Relaxed) & super::PINNED, super::PINNED);
        drop(outer);
        assert_eq!(record.load(Relaxed), super::UNPINNED);
    }

    #[test]
    fn a_full_bag_is_sealed_and_freed_once_readers_leave() {
        let freed = Arc::new(AtomicUsize::new(0));
        for _ in 0..super::BAG_CAPACITY + 1 {
            // SAFETY: never published, retired once.
            unsafe { pin().defer_retire(counted(&freed)) };
        }
        drain(&freed, super::BAG_CAPACITY + 1);
    }

    #[test]
    fn readers_and_writer_threads() {
        let freed = Arc::new(AtomicUsize::new(0));
        let head = Arc::new(AtomicPtr::new(counted(&freed)));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let head = head.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let guard = pin();
                        // SAFETY: `head` holds boxes retired only after unlinking.
                        let obj = unsafe { guard.deref(head.load(Acquire)) }.unwrap();
                        assert!(obj.alive.load(SeqCst), "freed while pinned");
                    }
                })
            })
            .collect();
        for _ in 0..20 {
            let guard = pin();
            let old = head.swap(counted(&freed), AcqRel);
            // SAFETY: unlinked, retired once.
            unsafe { guard.defer_retire(old) };
            guard.flush();
        }
        for r in readers {
            r.join().unwrap();
        }
        let last = head.swap(std::ptr::null_mut(), AcqRel);
        // SAFETY: unlinked, retired once.
        unsafe { pin().defer_retire(last) };
        drain(&freed, 21);
    }

    #[test]
    fn exiting_threads_hand_over_their_garbage() {
        let freed = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let freed = freed.clone();
                std::thread::spawn(move || {
                    // SAFETY: never published, retired once.
                    unsafe { pin().defer_retire(counted(&freed)) };
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drain(&freed, 2);
    }
}
