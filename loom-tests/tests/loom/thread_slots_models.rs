//! Models of the generic thread-slot protocol (`dma_sync::thread_slots`) itself, with several
//! instances and threads that exit: what the users' models, one instance each, cannot see.
//!
//! The payload is one token (0 for none) in a loom cell: a thread that touches a slot the
//! protocol has not handed to it (a slot another thread owns, one whose hand-over it did not
//! acquire) is a causality violation, the race that would corrupt a user's payload. The
//! protocol runs under iova-cache's point names (`iova.thread.*`), so a weakened point
//! weakens it here as in that user; its must-fail twins are the users' models.
//!
//! Invariants: a thread keeps its slot in every instance it used until it exits (its own
//! token is still there when it comes back), every claimed slot is handed back when its
//! owner exits (none stays claimed, a later thread finds a slot), and tokens are
//! conserved (each is in a thread's hand or in a slot, once).

use dma_sync::thread::spawn;
use dma_sync::thread_slots::ThreadSlots;
use dma_sync::{Arc, UnsafeCell};
use loom_tests::harness::{check, Bound};

dma_sync::slot_user!(struct Tokens, iova_cache::points::THREAD_SLOTS);

/// A slot's token, 0 for none.
struct Token(UnsafeCell<usize>);

// SAFETY: the protocol hands a payload to one thread at a time (its owner inside a section,
// or the drainer); loom checks every access of the cell against that.
unsafe impl Sync for Token {}

impl Token {
    /// Put `token` in the cell; the one it held.
    ///
    /// # Safety
    /// The caller has the payload to itself: it owns the slot and is inside a section, or it
    /// is the drainer.
    unsafe fn replace(&self, token: usize) -> usize {
        // SAFETY: by the contract no other thread touches the cell meanwhile.
        self.0
            .with_mut(|p| unsafe { std::mem::replace(&mut *p, token) })
    }
}

type Slots = ThreadSlots<Token, Tokens>;

fn instance(n: usize) -> Arc<Slots> {
    Arc::new(ThreadSlots::new(n, || Token(UnsafeCell::new(0))))
}

/// Put `token` in the calling thread's slot; the token it displaces (0 for none), or `None`
/// (the token stays in the caller's hand) when the thread has no open slot.
fn park(slots: &Slots, token: usize) -> Option<usize> {
    slots.section(|t| {
        // SAFETY: inside a section the owner alone touches its payload.
        unsafe { t.replace(token) }
    })
}

/// The tokens of `held` that are not 0.
fn hand(held: &[usize]) -> Vec<usize> {
    held.iter().copied().filter(|&t| t != 0).collect()
}

/// Empty every slot of `slots` into `hand`.
fn drain_into(slots: &Slots, hand: &mut Vec<usize>) {
    slots.drain(|t| {
        // SAFETY: the drain has the payload to itself.
        hand.push(unsafe { t.replace(0) })
    });
}

/// Every token is in a thread's hand or in a slot (drained now), exactly once.
fn conserved(mut hands: Vec<usize>, instances: &[&Slots], tokens: usize) {
    for slots in instances {
        drain_into(slots, &mut hands);
    }
    hands.retain(|&t| t != 0);
    hands.sort_unstable();
    assert_eq!(
        hands,
        (1..=tokens).collect::<Vec<_>>(),
        "token conservation broken"
    );
}

/// Wait until no slot of `instances` is claimed: every owner has exited and handed its slots
/// back. Under loom a joined thread's thread-locals may still be to drop (loom wakes the
/// joiner when the thread's closure returns), so the hand-back is awaited, not assumed; a
/// slot never handed back keeps the wait spinning until loom gives up on the execution.
fn await_hand_back(instances: &[&Slots]) {
    while instances.iter().any(|s| s.claimed() != 0) {
        dma_sync::thread::spin_wait();
    }
}

/// A thread that parks `first` in `a`, `second` in `b`, then takes its token back from `a`;
/// every slot it asks for must be its own (there are as many as threads), and the slot in `a`
/// must still hold `first`. Returns the tokens in its hand.
fn alternate(a: &Slots, b: &Slots, first: usize, second: usize) -> Vec<usize> {
    const OWN: &str = "a thread lost its own slot";
    let old_a = park(a, first).expect(OWN);
    let old_b = park(b, second).expect(OWN);
    let back = park(a, 0).expect(OWN);
    assert_eq!(
        back, first,
        "{OWN}: its token in the first instance is gone"
    );
    hand(&[old_a, old_b, back])
}

/// Two instances of two slots used by the same two threads in opposite orders (A, B, A and
/// B, A, B): each thread's hint names the instance it used last, so every return to the
/// other instance is a hint miss that the thread's registry must resolve to the slot it
/// already owns there, and never to another thread's slot (the hint names a slot of another
/// instance). Exhaustive: two threads of three sections each, with their claims, and no
/// drainer (a drain is the users' models').
fn two_instances_two_threads() {
    let (a, b) = (instance(2), instance(2));
    let (a1, b1) = (a.clone(), b.clone());
    let t1 = spawn(move || alternate(&a1, &b1, 1, 2));
    let (a2, b2) = (a.clone(), b.clone());
    let t2 = spawn(move || alternate(&b2, &a2, 3, 4));
    let mut hands = t1.join().unwrap();
    hands.extend(t2.join().unwrap());
    await_hand_back(&[&a, &b]);
    conserved(hands, &[&a, &b], 4);
}

#[test]
fn two_instances_two_threads_passes() {
    check(Bound::Exhaustive, two_instances_two_threads);
}

/// A thread that parks a token and exits, racing an heir, on one slot (a slot fewer than
/// threads: the heir gets one only if it claims first or the leaver hands it back). After
/// both exited their slots are handed back, and a third thread started then finds the slot
/// and the token left in it. The heir's claim before, during and after the leaver's exit, exhaustive:
/// two threads of one section each, with the claims and the leaver's hand-back.
fn exit_hands_slot_back() {
    let s = instance(1);
    let (s1, s2) = (s.clone(), s.clone());
    let leaver = spawn(move || hand(&[park(&s1, 1).unwrap_or(1)]));
    let heir = spawn(move || hand(&[park(&s2, 2).unwrap_or(2)]));
    let mut hands = leaver.join().unwrap();
    hands.extend(heir.join().unwrap());
    await_hand_back(&[&s]);
    let s3 = s.clone();
    let late = spawn(move || park(&s3, 3).map(|left| hand(&[left])));
    let late = late.join().unwrap();
    hands.extend(late.expect("no slot for a thread started after every owner exited"));
    conserved(hands, &[&s], 3);
}

#[test]
fn exit_hands_slot_back_passes() {
    check(Bound::Exhaustive, exit_hands_slot_back);
}

/// A leaver parking a token and exiting, an heir parking one, and a drainer emptying the
/// slot, on one slot: the drain closes, waits for and empties the slot whoever owns it, so
/// it races the hand-over between owners as well as each owner's section. Preemptions(3):
/// the drain's close, fence and wait inside the leaver's section, between its section and
/// its exit, or across the heir's claim and section, and the heir's claim on either side of
/// the hand-back.
fn exit_races_drain() {
    let s = instance(1);
    let (s1, s2, s3) = (s.clone(), s.clone(), s.clone());
    let leaver = spawn(move || hand(&[park(&s1, 1).unwrap_or(1)]));
    let heir = spawn(move || hand(&[park(&s2, 2).unwrap_or(2)]));
    let drainer = spawn(move || {
        let mut got = Vec::new();
        drain_into(&s3, &mut got);
        hand(&got)
    });
    let mut hands = leaver.join().unwrap();
    hands.extend(heir.join().unwrap());
    hands.extend(drainer.join().unwrap());
    await_hand_back(&[&s]);
    conserved(hands, &[&s], 2);
}

#[test]
fn exit_races_drain_passes() {
    check(Bound::Preemptions(3), exit_races_drain);
}

loom_tests::must_fail_test! {
    /// A slot given back by a Relaxed store: the heir that claims it touches the token the
    /// leaver parked without having acquired it.
    fn exit_disown_relaxed: iova_cache::points::THREAD_DISOWN,
        dma_sync::mutation::Weakening::Relax, "Causality violation", Bound::Exhaustive,
        exit_hands_slot_back;
}

loom_tests::must_fail_test! {
    /// Without the section's fence, the leaver's section and the drain miss each other's
    /// flags (store buffering): both touch the token.
    fn exit_drain_enter_fence_dropped: iova_cache::points::THREAD_ENTER,
        dma_sync::mutation::Weakening::Relax, "Causality violation", Bound::Preemptions(3),
        exit_races_drain;
}

loom_tests::must_fail_test! {
    /// The drainer's wait read Relaxed: it empties the slot without having acquired the end
    /// of the section that filled it.
    fn exit_drain_wait_relaxed: iova_cache::points::THREAD_WAIT,
        dma_sync::mutation::Weakening::Relax, "Causality violation", Bound::Preemptions(3),
        exit_races_drain;
}
