//! The epoch RCU's behaviour over the public API, shared by the membarrier binary
//! (`rcu_membarrier.rs`) and the fence-fallback binary (`rcu_fallback.rs`).
//!
//! Every object carries an index into a table of "freed" flags, set by its destructor. A
//! reader checks its object's flag after loading it and again just before unpinning: a free
//! while a reader that could see the object is pinned trips the check. Conservation: every
//! retired object is freed exactly once (the destructor counts; a second free of a slot trips
//! its flag).

use dma_sync::atomic::{AtomicPtr, Ordering::*};
use dma_sync::rcu::{self, Retire};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

/// Flags and counts of one test's objects.
pub struct Ledger {
    freed: Vec<AtomicBool>,
    next: AtomicUsize,
    drops: AtomicUsize,
}

impl Ledger {
    pub fn new(capacity: usize) -> Arc<Ledger> {
        Arc::new(Ledger {
            freed: (0..capacity).map(|_| AtomicBool::new(false)).collect(),
            next: AtomicUsize::new(0),
            drops: AtomicUsize::new(0),
        })
    }

    /// A new object with its own slot (payload `value`).
    pub fn object(self: &Arc<Self>, value: u64) -> *mut Obj {
        let slot = self.next.fetch_add(1, Relaxed);
        assert!(slot < self.freed.len(), "ledger too small");
        Box::into_raw(Box::new(Obj {
            slot,
            value,
            check: !value,
            ledger: self.clone(),
        }))
    }

    pub fn allocated(&self) -> usize {
        self.next.load(Relaxed)
    }

    pub fn drops(&self) -> usize {
        self.drops.load(SeqCst)
    }

    pub fn is_freed(&self, slot: usize) -> bool {
        self.freed[slot].load(SeqCst)
    }
}

pub struct Obj {
    slot: usize,
    value: u64,
    check: u64,
    ledger: Arc<Ledger>,
}

impl Obj {
    /// Read under a guard: the object is intact and not freed.
    pub fn read(&self) -> u64 {
        assert_eq!(self.check, !self.value, "torn or reused object");
        assert!(
            !self.ledger.is_freed(self.slot),
            "read an object freed while pinned"
        );
        self.value
    }
}

impl Retire for Obj {
    fn poison(&mut self) {}
}

impl Drop for Obj {
    fn drop(&mut self) {
        let again = self.ledger.freed[self.slot].swap(true, SeqCst);
        assert!(!again, "object {} freed twice", self.slot);
        self.ledger.drops.fetch_add(1, SeqCst);
    }
}

/// Pin and flush until every allocated-and-retired object is freed (`expected` drops).
pub fn drain(ledger: &Ledger, expected: usize) {
    for _ in 0..100_000 {
        if ledger.drops() == expected {
            return;
        }
        rcu::synchronize();
        rcu::pin().flush();
    }
    panic!(
        "only {} of {expected} retired objects freed",
        ledger.drops()
    );
}

/// `readers` threads read the published object under pins, checking it stays unfreed for
/// their whole section, while `writers` threads replace it `rounds` times each and retire the
/// old one (flushing now and then). Then every retired object is freed exactly once.
pub fn stress(readers: usize, writers: usize, rounds: usize) {
    let ledger = Ledger::new(writers * rounds + 1);
    let head = Arc::new(AtomicPtr::new(ledger.object(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let reader_threads: Vec<_> = (0..readers)
        .map(|_| {
            let (head, stop) = (head.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut sections = 0u64;
                while !stop.load(Relaxed) || sections == 0 {
                    let guard = rcu::pin();
                    // SAFETY: `head` holds boxes that are retired only after being unlinked.
                    let obj = unsafe { guard.deref(head.load(Acquire)) }.expect("never null");
                    let v = obj.read();
                    if sections % 4 == 0 {
                        // A nested section, and a longer one, still protect `obj`.
                        drop(rcu::pin());
                        for _ in 0..50 {
                            std::hint::spin_loop();
                        }
                    }
                    assert_eq!(obj.read(), v);
                    drop(guard);
                    sections += 1;
                }
                sections
            })
        })
        .collect();
    let writer_threads: Vec<_> = (0..writers)
        .map(|w| {
            let (head, ledger) = (head.clone(), ledger.clone());
            std::thread::spawn(move || {
                for i in 0..rounds {
                    let guard = rcu::pin();
                    let new = ledger.object((w * rounds + i) as u64 + 1);
                    let old = head.swap(new, AcqRel);
                    // SAFETY: `old` is unlinked and retired once.
                    unsafe { guard.defer_retire(old) };
                    if i % 97 == 0 {
                        guard.flush();
                    }
                }
            })
        })
        .collect();
    for w in writer_threads {
        w.join().unwrap();
    }
    stop.store(true, Relaxed);
    for r in reader_threads {
        assert!(r.join().unwrap() > 0);
    }
    let last = head.swap(std::ptr::null_mut(), AcqRel);
    // SAFETY: unlinked, retired once.
    unsafe { rcu::pin().defer_retire(last) };
    drain(&ledger, ledger.allocated());
}

/// Objects retired while a reader is pinned are not freed, however many bags are sealed and
/// collections run, until the reader unpins; then they all are.
pub fn pinned_reader_holds_back_frees() {
    let ledger = Ledger::new(1000);
    let (pinned_tx, pinned_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let guard = rcu::pin();
        pinned_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        drop(guard);
    });
    pinned_rx.recv().unwrap();
    for i in 0..1000 {
        let guard = rcu::pin();
        // SAFETY: never published, retired once.
        unsafe { guard.defer_retire(ledger.object(i)) };
    }
    for _ in 0..10 {
        rcu::pin().flush();
    }
    assert_eq!(ledger.drops(), 0, "freed while a reader pinned before was");
    release_tx.send(()).unwrap();
    reader.join().unwrap();
    drain(&ledger, 1000);
}

/// Threads that retire fewer objects than a bag holds and exit: their bags are queued at
/// exit and freed by later collections.
pub fn exiting_threads_leave_no_garbage() {
    let ledger = Ledger::new(40);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let guard = rcu::pin();
                    // SAFETY: never published, retired once.
                    unsafe { guard.defer_retire(ledger.object(i)) };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drain(&ledger, 40);
}
