//! Hostile uses of `dma_sync::thread_slots` through its safe API: panics inside a section or
//! a drain, re-entrant sections and drains, threads that exit, more threads than slots, and
//! a thread's slots used from another thread-local's destructor around the registry's own.
//! None may hang, leak a slot, or let a drain run on a payload while a section holds it.
#![cfg(not(loom))]

use dma_sync::atomic::{AtomicUsize, Ordering::Relaxed};
use dma_sync::thread_slots::ThreadSlots;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::Duration;

mod points {
    dma_sync::mutation_points! {
        /// Test user's section fence.
        ENTER: Fence = "test.slots.enter";
        /// Test user's drain fence.
        DRAIN: Fence = "test.slots.drain";
        /// Test user's section end.
        EXIT: Store = "test.slots.exit";
        /// Test user's wait for a section's end.
        WAIT: Load = "test.slots.wait";
        /// Test user's reopen.
        REOPEN: Store = "test.slots.reopen";
        /// Test user's load of `closed`.
        REOPENED: Load = "test.slots.reopened";
        /// Test user's hand-back at exit.
        DISOWN: Store = "test.slots.disown";
        /// Test user's claim.
        CLAIM: Rmw = "test.slots.claim";
    }
    pub static SLOT_POINTS: dma_sync::thread_slots::SlotPoints =
        dma_sync::thread_slots::SlotPoints {
            enter: &ENTER,
            drain: &DRAIN,
            exit: &EXIT,
            wait: &WAIT,
            reopen: &REOPEN,
            reopened: &REOPENED,
            disown: &DISOWN,
            claim: &CLAIM,
        };
}

dma_sync::slot_user!(struct Test, points::SLOT_POINTS);

type Slots = ThreadSlots<AtomicUsize, Test>;

fn slots(n: usize) -> Arc<Slots> {
    Arc::new(ThreadSlots::new(n, || AtomicUsize::new(0)))
}

/// Run `f` on another thread; `None` if it has not returned within 10 s (a hang: the thread
/// is left behind).
fn within_10s<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10)).ok()
}

/// Sum of every payload, drained to 0.
fn drain_sum(s: &Slots) -> usize {
    let mut sum = 0;
    s.drain(|p| sum += p.swap(0, Relaxed));
    sum
}

/// A panic inside a section ends the section: a later drain neither hangs nor loses what the
/// section wrote before it panicked, whether the thread lives on or exits.
#[test]
fn a_panic_inside_a_section_ends_it() {
    for exit in [false, true] {
        let s = slots(2);
        let s1 = s.clone();
        let (done, wait) = mpsc::channel::<()>();
        let mut t = Some(std::thread::spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| {
                s1.section(|p| {
                    p.store(7, Relaxed);
                    panic!("user closure panics");
                })
            }));
            assert!(r.is_err());
            if !exit {
                // Stay alive (holding the slot) until the drain is over.
                let _ = wait.recv();
            }
        }));
        if exit {
            t.take().unwrap().join().unwrap();
        }
        let s2 = s.clone();
        assert_eq!(
            within_10s(move || drain_sum(&s2)),
            Some(7),
            "the drain waits for a section that already panicked (exit: {exit})"
        );
        drop(done);
        if let Some(t) = t {
            t.join().unwrap();
        }
    }
}

/// A section that unwinds out of the thread (no `catch_unwind`) gives its slot back too.
#[test]
fn a_thread_that_panics_in_a_section_gives_its_slot_back() {
    let s = slots(1);
    let s1 = s.clone();
    let r = std::thread::spawn(move || s1.section(|_| panic!("dies in a section"))).join();
    assert!(r.is_err());
    assert_eq!(s.claimed(), 0);
    let s2 = s.clone();
    assert_eq!(within_10s(move || drain_sum(&s2)), Some(0));
    let s3 = s.clone();
    let took = std::thread::spawn(move || s3.section(|p| p.fetch_add(1, Relaxed)))
        .join()
        .unwrap();
    assert_eq!(took, Some(0), "a new thread claims the slot and enters it");
}

/// A section inside a section of the same slot does not run: it would end the outer
/// section's hold, and a drainer could then touch the payload while the outer one does.
#[test]
fn a_nested_section_does_not_run_and_keeps_the_outer_one() {
    let s = slots(2);
    let (inside, go) = mpsc::channel::<()>();
    let (drained, wait_drain) = mpsc::channel::<()>();
    let s1 = s.clone();
    let t = std::thread::spawn(move || {
        s1.section(|p| {
            p.store(1, Relaxed);
            assert_eq!(s1.section(|_| ()), None, "the nested section ran");
            inside.send(()).unwrap();
            // The drain must still be waiting: the outer section holds the payload.
            assert!(
                wait_drain.recv_timeout(Duration::from_millis(300)).is_err(),
                "a drain ran while the outer section held the payload"
            );
            p.store(2, Relaxed);
        })
    });
    go.recv().unwrap();
    let s2 = s.clone();
    let sum = within_10s(move || {
        let sum = drain_sum(&s2);
        let _ = drained.send(());
        sum
    });
    assert_eq!(t.join().unwrap(), Some(()));
    assert_eq!(sum, Some(2), "the drain saw the outer section's last write");
}

/// A drain from inside the calling thread's own section, or from inside a drain (its
/// closure), can never finish (it would wait for its own section, or for the drainer lock
/// its thread holds): it panics instead of hanging, and the slots stay usable.
#[test]
fn a_drain_inside_a_section_or_a_drain_panics_instead_of_hanging() {
    let inside_section = |s: &Slots| {
        let _ = s.section(|_| s.drain(|_| ()));
    };
    let inside_drain = |s: &Slots| s.drain(|_| s.drain(|_| ()));
    for reenter in [inside_section as fn(&Slots), inside_drain] {
        let s = slots(2);
        let s1 = s.clone();
        let r = within_10s(move || {
            let r = catch_unwind(AssertUnwindSafe(|| reenter(&s1)));
            (r.is_err(), s1.section(|p| p.fetch_add(1, Relaxed)))
        });
        assert_eq!(r, Some((true, Some(0))), "hung, or not a panic");
        let s2 = s.clone();
        assert_eq!(within_10s(move || drain_sum(&s2)), Some(1));
    }
}

/// A drain whose closure panics leaves no slot closed: every owner enters its section again
/// without waiting for another drain, and the next drain works.
#[test]
fn a_panic_inside_a_drain_reopens_the_slots() {
    let s = slots(4);
    assert_eq!(s.section(|p| p.fetch_add(5, Relaxed)), Some(0));
    let r = catch_unwind(AssertUnwindSafe(|| {
        s.drain(|_| panic!("drain closure panics"))
    }));
    assert!(r.is_err());
    assert_eq!(
        s.section(|p| p.fetch_add(1, Relaxed)),
        Some(5),
        "the owner's slot stayed closed after the failed drain"
    );
    let s2 = s.clone();
    assert_eq!(within_10s(move || drain_sum(&s2)), Some(6));
}

/// More threads than slots: the extra ones get `None`, nobody gets a slot twice, and every
/// slot is given back when its thread exits; a later generation finds them all.
#[test]
fn more_threads_than_slots() {
    let s = slots(3);
    for _generation in 0..3 {
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let got = s.section(|p| p.fetch_add(1, Relaxed)).is_some();
                    // Every thread holds (or fails to get) a slot at once.
                    barrier.wait();
                    got
                })
            })
            .collect();
        let got = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&g| g)
            .count();
        assert_eq!(got, 3, "each slot serves one thread at a time");
        assert_eq!(s.claimed(), 0, "every slot given back");
    }
    assert_eq!(drain_sum(&s), 9, "the payloads carried over between owners");
}

/// A slot given back keeps its payload for the next claimer.
#[test]
fn a_new_thread_inherits_a_slot_payload() {
    let s = slots(1);
    for expect in 0..4 {
        let s1 = s.clone();
        let seen = std::thread::spawn(move || s1.section(|p| p.fetch_add(1, Relaxed)))
            .join()
            .unwrap();
        assert_eq!(seen, Some(expect));
    }
}

/// A thread-local that uses the slots from its destructor, against the registry's: whether
/// the registry is destroyed before it (the section finds no slot) or after (the section
/// runs on the thread's slot), and whether the thread ever claimed one before (a first use
/// during thread-local destruction), no slot stays claimed once the thread is gone.
#[test]
fn slots_used_from_another_thread_locals_destructor() {
    struct UseOnDrop(Option<Arc<Slots>>, Arc<AtomicUsize>);
    impl Drop for UseOnDrop {
        fn drop(&mut self) {
            if let Some(s) = self.0.take() {
                if s.section(|p| p.fetch_add(1, Relaxed)).is_some() {
                    self.1.fetch_add(1, Relaxed);
                }
            }
        }
    }
    thread_local! {
        static LATE: std::cell::RefCell<UseOnDrop> =
            std::cell::RefCell::new(UseOnDrop(None, Arc::new(AtomicUsize::new(0))));
    }
    // (registered before the registry, used before) × order
    for (tls_first, use_first) in [(true, true), (true, false), (false, true)] {
        let s = slots(2);
        let ran = Arc::new(AtomicUsize::new(0));
        let (s1, ran1) = (s.clone(), ran.clone());
        std::thread::spawn(move || {
            if tls_first {
                // This thread-local is registered before the slots' registry: its
                // destructor runs after the registry's (destructors run in reverse).
                LATE.with(|l| *l.borrow_mut() = UseOnDrop(Some(s1.clone()), ran1.clone()));
            }
            if use_first {
                assert_eq!(s1.section(|p| p.fetch_add(1, Relaxed)), Some(0));
            }
            if !tls_first {
                LATE.with(|l| *l.borrow_mut() = UseOnDrop(Some(s1.clone()), ran1.clone()));
            }
        })
        .join()
        .unwrap();
        assert_eq!(
            s.claimed(),
            0,
            "a slot stays claimed (tls first {tls_first}, used first {use_first})"
        );
        let total = drain_sum(&s);
        assert_eq!(
            total,
            usize::from(use_first) + ran.load(Relaxed),
            "each section that ran left its increment"
        );
        if tls_first && use_first {
            assert_eq!(ran.load(Relaxed), 0, "ran after its registry was destroyed");
        }
        if !tls_first {
            assert_eq!(
                ran.load(Relaxed),
                1,
                "ran before its registry was destroyed"
            );
        }
    }
}

/// An instance dropped while threads still own slots in it: the threads' registries forget
/// it, a new instance (possibly at its address) is not confused with it, and nothing is
/// kept alive.
#[test]
fn an_instance_dropped_under_its_owners() {
    let (tx, rx) = mpsc::channel::<Arc<Slots>>();
    let (back, next) = mpsc::channel::<Option<usize>>();
    let t = std::thread::spawn(move || {
        for s in rx {
            back.send(s.section(|p| p.fetch_add(1, Relaxed))).unwrap();
        }
    });
    for _ in 0..50 {
        let s = slots(1);
        let alive = s.alive_probe();
        tx.send(s.clone()).unwrap();
        assert_eq!(
            next.recv().unwrap(),
            Some(0),
            "a fresh instance, a fresh slot"
        );
        drop(s);
        // The thread dropped its clone after the send.
        while alive() {
            std::thread::yield_now();
        }
    }
    drop(tx);
    t.join().unwrap();
}

/// No slots at all: every section is `None` and a drain returns at once.
#[test]
fn zero_slots() {
    let s = slots(0);
    assert!(s.is_empty());
    assert_eq!(s.section(|_| ()), None);
    assert_eq!(drain_sum(&s), 0);
}
