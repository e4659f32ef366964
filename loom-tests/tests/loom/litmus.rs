//! The design discussion's four memory-ordering arguments as executable litmus tests.
//!
//! Each argument has a `.litmus` file in Linux-kernel-memory-model (LKMM) form under
//! `loom-tests/litmus/`, and here a loom model in its C11 translation (loom guide §2):
//! `READ_ONCE`/`WRITE_ONCE` → `Relaxed`, `rcu_assign_pointer` → `Release` store,
//! `rcu_dereference` → `Acquire` load (C11 has no usable consume), `smp_wmb` →
//! `fence(Release)`, `smp_rmb` → `fence(Acquire)`, `smp_mb` → `fence(SeqCst)`, RCU →
//! `dma_sync::rcu`. A model returns its registers; [`outcomes`] collects the SET of register
//! values over every execution loom explores, and the test compares it with the set C11
//! allows, as herd7 lists `States`.
//!
//! Every barrier, acquire, release, pin or step of a model is a test-local mutation point
//! (declared here, not in a crate: these are abstract models, not library code). Each variant
//! weakens one of them (or two, for "both barriers removed"); its expected set is the correct
//! set plus the outcomes C11 then allows. Every outcome C11 allows must be found, and nothing
//! else: the comparison is equality. Where LKMM and C11 disagree the variant says so.
//!
//! All litmus models are exhaustive (2 or 3 threads with at most ten loom operations each;
//! each runs in well under a second).
//!
//! # The four arguments
//!
//! 1. **A new pool is visible before its buffer is** (`swiotlb-new-pool`, from the swiotlb fix).
//!    Three parties: P0 publishes a pool (`rcu_assign_pointer`); P1 finds it, sets the device
//!    flag, issues a full fence and hands the address on through the driver's plain memory; P2
//!    reads the address, `smp_rmb`, reads the flag and looks the pool up. Bad: P2 holds the
//!    address but finds no pool. It is a WRC/ISA2 shape: the middle party must order its *read*
//!    of the pool list before its hand-off, which only a cumulative full fence does in LKMM.
//! 2. **Flag versus list, and list deletion versus reuse** (review of the per-device dynamic
//!    buffer flag). No flag: `smp_wmb` between adding the pool to the device list and handing out
//!    its address, `smp_rmb` before the emptiness check, so "holds paddr ⇒ list not empty and
//!    has paddr's entry". Deletion: `smp_wmb` between removing an entry and freeing its memory,
//!    and the `smp_rmb` orders the reusing CPU's search after its reallocation, so it never
//!    finds the removed entry for memory it just got back.
//! 3. **Walking live page tables** (the debugfs discussion). A lock-free walker reads a level
//!    while an unmap clears it, unlinks it and frees it. With levels freed through RCU the walker
//!    is safe and incoherent (any mix of mapped and cleared entries, or no level); without a
//!    grace period, or with an unpinned walker, it reads freed memory.
//! 4. **Switching to lazy invalidation while unmapping** (the non-strict review). The switch
//!    initialises the flush queue, `smp_wmb`, then sets `fq_domain`; an unmap reads `fq_domain`
//!    once and uses the snapshot for the gather, the sync decision and queue-versus-free; the
//!    enqueue starts with a full barrier and reads the ring after it. The review's reordering
//!    (sync skipped by a second read, IOVA freed at once by the first) is unreachable; so is an
//!    IOVA queued on an uninitialised ring.
//!
//! # Results
//!
//! | argument | correct set | variants (C11 verdict on the bad outcome) |
//! |---|---|---|
//! | 1 new pool | 5 outcomes, bad never | P2 rmb removed, P1 mb removed, both: found; P1 mb → release fence: never (LKMM: Sometimes); P0 publish Relaxed, P1 deref Relaxed: never, but P1 reads the pool stale; P2 deref Relaxed, P2 rmb → mb: never |
//! | 2 list add | 3 outcomes | wmb or rmb removed: found; publish or search deref Relaxed: never, but an unordered search reads the entry uninitialised |
//! | 2 delete/reuse | 3 outcomes | wmb or rmb removed: found; search deref Relaxed: never |
//! | 3 page-table walk | 5 outcomes (no level; mapped/cleared × 2) | walker pin, `rcu.pin`, `rcu.grace_period`, walker deref Relaxed, publication Relaxed: causality violation |
//! | 4 lazy switch | 2 outcomes | wmb removed, mb removed, ring load hoisted, `fq_domain` read twice: found; mb → acquire fence: never |
//!
//! For argument 3, weakening the publication or the walker's acquire is not a new *value* in C11
//! but a data race on the new level's initialisation, and loom reports it as one.
//!
//! # Where LKMM and C11 disagree
//!
//! * **Argument 1, variant D** (P1's `smp_mb` → `smp_wmb` = `fence(Release)`): LKMM *Sometimes*,
//!   C11 *Never*. `smp_wmb` orders only P1's stores and is not A-cumulative; a C11 release fence
//!   also orders P1's earlier loads and happens-before is transitive. loom checks C11, the
//!   semantics of our Rust fences, so swiotlb-core issues the release fence (`swiotlb.flag.fence`,
//!   no instruction on x86); a kernel port would need the full fence.
//! * **Relaxed pointer loads** (argument 1 F, argument 2 search, argument 3 walk): LKMM orders a
//!   dependent read after `READ_ONCE` of a pointer; C11 Relaxed does not (no consume), so loom
//!   finds stale or racing reads. Hence every `rcu_dereference` is an `Acquire` load in our code.
//! * **Fences are stronger in C11** in general (`fence(Release)` also orders earlier loads,
//!   `fence(Acquire)` later stores). Only D turns on this; elsewhere the verdicts agree.
//! * loom itself never produces load buffering and reads at most the last 7 stores; none of the
//!   arguments depends on either.
//!
//! # Running a variant by hand
//!
//! `DMALOOM_WEAKEN=<point>` weakens a point for a whole run, so a correct model can be shown
//! failing by hand: `DMALOOM_WEAKEN=litmus.new_pool.p1.mb RUSTFLAGS="--cfg loom" cargo test
//! --release -p loom-tests --test loom -- litmus::new_pool_correct` fails with the outcome set
//! gaining `(999, flag 0, pool 0)` and `(999, flag 1, pool 0)`.

use dma_sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering, Ordering::*, Poison};
use dma_sync::mutation::{weakened, Point, Weakening};
use dma_sync::thread::spawn;
use dma_sync::Arc;
use loom_tests::harness::{must_fail, outcomes, Bound};
use loom_tests::must_fail_test;
use std::collections::BTreeSet;
use std::fmt::Debug;

/// herd7's verdict on a test's `exists` clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The bad outcome is unreachable.
    Never,
    /// The bad outcome is reachable.
    Sometimes,
}

/// One variant of a litmus model: some points weakened, and what C11 then allows.
struct Variant<T: 'static> {
    /// The variant's name, as in `loom-tests/litmus/README.md`.
    name: &'static str,
    /// The points weakened together, and how.
    weaken: &'static [(&'static Point, Weakening)],
    /// Outcomes C11 allows in this variant beyond the correct set.
    extra: &'static [T],
    /// herd7's LKMM verdict on the kernel form of this variant (its `.litmus` header).
    lkmm: Verdict,
    /// Why the verdicts are what they are; required where LKMM and C11 disagree.
    note: &'static str,
}

/// A litmus model: the correct outcome set, the bad outcome, and its variants.
struct Litmus<T: 'static> {
    model: fn() -> T,
    /// Outcomes C11 allows for the correct program.
    correct: &'static [T],
    /// herd7's `exists` clause.
    bad: fn(&T) -> bool,
    variants: &'static [Variant<T>],
    /// The points whose weakening changes the outcome set; each needs a variant. (Points whose
    /// weakening C11 answers with a data race are checked with `must_fail` instead.)
    points: &'static [&'static Point],
}

/// Run `model` with every point of `weaken` weakened; each must be reached.
fn outcomes_with<T: Ord + Send + 'static>(
    weaken: &[(&'static Point, Weakening)],
    model: fn() -> T,
) -> BTreeSet<T> {
    match weaken.split_first() {
        None => outcomes(Bound::Exhaustive, model),
        Some((&(point, how), rest)) => {
            let (set, hits) = weakened(point, how, || outcomes_with(rest, model));
            assert!(
                hits > 0,
                "mutation point {} was never reached",
                point.name()
            );
            set
        }
    }
}

impl<T: Ord + Clone + Debug + Send + 'static> Litmus<T> {
    /// The correct program yields exactly the correct set, without the bad outcome.
    fn check_correct(&self) {
        let want: BTreeSet<T> = self.correct.iter().cloned().collect();
        assert!(
            !want.iter().any(self.bad),
            "the correct set contains the bad outcome"
        );
        assert_eq!(
            outcomes_with(&[], self.model),
            want,
            "outcomes of the correct program"
        );
    }

    /// Every variant yields exactly the set C11 allows; the bad outcome is found exactly when
    /// C11 allows it; every point of the model is weakened by some variant.
    fn check_variants(&self) {
        let mut failures = Vec::new();
        for v in self.variants {
            let want: BTreeSet<T> = self.correct.iter().chain(v.extra).cloned().collect();
            let got = outcomes_with(v.weaken, self.model);
            let c11 = if want.iter().any(self.bad) {
                Verdict::Sometimes
            } else {
                Verdict::Never
            };
            if v.lkmm != c11 {
                assert!(
                    !v.note.is_empty(),
                    "{}: LKMM and C11 disagree, say why",
                    v.name
                );
            }
            if got != want {
                failures.push(format!(
                    "{}: expected {want:?}\n   found {got:?}\n   missing {:?}\n   unexpected {:?}",
                    v.name,
                    want.difference(&got).collect::<Vec<_>>(),
                    got.difference(&want).collect::<Vec<_>>(),
                ));
            } else {
                eprintln!(
                    "{}: {} outcomes, bad outcome {c11:?} (LKMM: {:?})",
                    v.name,
                    got.len(),
                    v.lkmm
                );
            }
        }
        for p in self.points {
            assert!(
                self.variants
                    .iter()
                    .any(|v| v.weaken.iter().any(|(q, _)| std::ptr::eq(*q, *p))),
                "point {} has no variant",
                p.name()
            );
        }
        assert!(
            failures.is_empty(),
            "variants with unexpected outcome sets:\n{}",
            failures.join("\n")
        );
    }
}

/// The address of an atomic in a model's shared state, as a published pointer.
fn addr<T>(a: &T) -> *mut T {
    a as *const T as *mut T
}

/// Argument 1: `swiotlb-new-pool` (`litmus/swiotlb-new-pool.litmus`). A new pool is visible to
/// whoever sees an address in its buffer, even when the address travels through memory the
/// library does not order (the driver's).
mod new_pool {
    use super::*;

    dma_sync::mutation_points! {
        /// P0's `rcu_assign_pointer` of the new pool.
        P0_PUBLISH: Store = "litmus.new_pool.p0.publish";
        /// P1's `rcu_dereference` of the pool list.
        P1_DEREF: Load = "litmus.new_pool.p1.deref";
        /// P1's `smp_mb` after setting the device flag.
        P1_MB: Fence = "litmus.new_pool.p1.mb";
        /// P2's `smp_rmb` between the hand-off load and the flag load.
        P2_RMB: Fence = "litmus.new_pool.p2.rmb";
        /// P2's `rcu_dereference` of the pool list.
        P2_DEREF: Load = "litmus.new_pool.p2.deref";
    }

    const POOL: usize = 999;

    struct Mem {
        default: AtomicUsize,
        pool: AtomicUsize,
        mem_pools: AtomicPtr<AtomicUsize>,
        flag: AtomicUsize,
        buf: AtomicUsize,
    }

    impl Mem {
        /// Read the pool a pointer loaded from `mem_pools` points at.
        fn deref(&self, p: *mut AtomicUsize) -> &AtomicUsize {
            // SAFETY: `mem_pools` only ever holds `&self.default` or `&self.pool`.
            unsafe { &*p }
        }
    }

    /// Registers `(P1 found the new pool, 1:r1, 2:r0, 2:r1, 2:r3)`.
    pub type Regs = (bool, usize, usize, usize, usize);

    fn model() -> Regs {
        let m = Arc::new(Mem {
            default: AtomicUsize::new(0),
            pool: AtomicUsize::new(0),
            mem_pools: AtomicPtr::new(std::ptr::null_mut()),
            flag: AtomicUsize::new(0),
            buf: AtomicUsize::new(0),
        });
        // Initial state `mem_pools = default`, before any thread starts.
        m.mem_pools.store(addr(&m.default), Relaxed);
        let p0 = {
            let m = m.clone();
            spawn(move || {
                m.pool.store(POOL, Relaxed);
                m.mem_pools.store(addr(&m.pool), P0_PUBLISH.ord(Release));
            })
        };
        let p1 = {
            let m = m.clone();
            spawn(move || {
                let r0 = m.mem_pools.load(P1_DEREF.ord(Acquire));
                let r1 = m.deref(r0).load(Relaxed);
                if r1 != 0 {
                    m.flag.store(1, Relaxed);
                    P1_MB.fence(SeqCst);
                }
                m.buf.store(r1, Relaxed);
                (r0 == addr(&m.pool), r1)
            })
        };
        // P2 is the model's main thread.
        let r0 = m.buf.load(Relaxed);
        P2_RMB.fence(Acquire);
        let r1 = m.flag.load(Relaxed);
        let r3 = if r1 != 0 {
            m.deref(m.mem_pools.load(P2_DEREF.ord(Acquire)))
                .load(Relaxed)
        } else {
            0
        };
        p0.join().unwrap();
        let (found, p1_r1) = p1.join().unwrap();
        (found, p1_r1, r0, r1, r3)
    }

    /// P2 holds the address but does not find the pool.
    fn bad(r: &Regs) -> bool {
        r.2 != 0 && r.4 == 0
    }

    /// P2 got the address through P1's fence, so it sees flag and pool. Without it, P2 may miss
    /// either: (999, flag unseen) and (999, flag seen, pool unseen).
    const P2_UNORDERED: &[Regs] = &[(true, POOL, POOL, 0, 0), (true, POOL, POOL, 1, 0)];
    /// P1 reads the new pool's pointer but not its contents (its own message passing broken).
    const P1_STALE_POOL: &[Regs] = &[(true, 0, 0, 0, 0)];

    pub(super) const TEST: Litmus<Regs> = Litmus {
        model,
        correct: &[
            (false, 0, 0, 0, 0),
            (true, POOL, 0, 0, 0),
            (true, POOL, 0, 1, 0),
            (true, POOL, 0, 1, POOL),
            (true, POOL, POOL, 1, POOL),
        ],
        bad,
        points: ALL,
        variants: &[
            Variant {
                name: "B swiotlb-no-p2-rmb",
                weaken: &[(&P2_RMB, Weakening::Relax)],
                extra: P2_UNORDERED,
                lkmm: Verdict::Sometimes,
                note: "",
            },
            Variant {
                name: "C swiotlb-no-p1-mb",
                weaken: &[(&P1_MB, Weakening::Relax)],
                extra: P2_UNORDERED,
                lkmm: Verdict::Sometimes,
                note: "",
            },
            Variant {
                name: "D swiotlb-p1-wmb",
                weaken: &[(&P1_MB, Weakening::To(Release))],
                extra: &[],
                lkmm: Verdict::Sometimes,
                note: "LKMM's smp_wmb orders only P1's stores and is not A-cumulative, so P0's \
                       publication need not reach P2 before buf does. A C11 release fence also \
                       orders P1's earlier loads and happens-before is transitive (P0 -> P1 by \
                       the acquire, P1 -> P2 by the fence pair), so C11 forbids the outcome. \
                       The library uses fence(Release) (swiotlb.flag.fence) on every map.",
            },
            Variant {
                name: "E swiotlb-p0-write-once",
                weaken: &[(&P0_PUBLISH, Weakening::Relax)],
                extra: P1_STALE_POOL,
                lkmm: Verdict::Never,
                note: "The exists clause stays Never in both models: P1 read 999 before its \
                       fence, so coherence carries it to P2. C11 additionally lets P1 itself \
                       read the new pool's pointer and a stale 0 (LKMM forbids that through \
                       the address dependency): the release matters to P1's own lookup.",
            },
            Variant {
                name: "F swiotlb-p1-deref-relaxed",
                weaken: &[(&P1_DEREF, Weakening::Relax)],
                extra: P1_STALE_POOL,
                lkmm: Verdict::Never,
                note: "READ_ONCE of the pointer: LKMM orders the dependent read, C11 Relaxed \
                       does not (no consume), so P1 may read the pool uninitialised; P2's \
                       clause stays Never because P1's SC fence also acquires P0's publish.",
            },
            Variant {
                name: "swiotlb-p2-deref-relaxed",
                weaken: &[(&P2_DEREF, Weakening::Relax)],
                extra: &[],
                lkmm: Verdict::Never,
                note: "Only executions where P2 synchronised through the fences can give the \
                       bad outcome, and there the acquire fence already orders the lookup.",
            },
            Variant {
                name: "G swiotlb-p2-mb",
                weaken: &[(&P2_RMB, Weakening::To(SeqCst))],
                extra: &[],
                lkmm: Verdict::Never,
                note: "",
            },
            Variant {
                name: "H swiotlb-no-barriers",
                weaken: &[(&P1_MB, Weakening::Relax), (&P2_RMB, Weakening::Relax)],
                extra: P2_UNORDERED,
                lkmm: Verdict::Sometimes,
                note: "",
            },
        ],
    };
}

/// Argument 2: the per-device list of dynamic pools instead of a flag
/// (`litmus/dyn-list-add.litmus`, `litmus/dyn-list-del-reuse.litmus`).
mod dyn_list {
    use super::*;

    dma_sync::mutation_points! {
        /// `list_add_rcu`: the entry's publication on the device list.
        ADD_PUBLISH: Store = "litmus.dyn_list.add.publish";
        /// `smp_wmb` between adding to the list and handing out the address.
        ADD_WMB: Fence = "litmus.dyn_list.add.wmb";
        /// `smp_rmb` between the address load and the emptiness check.
        CHECK_RMB: Fence = "litmus.dyn_list.check.rmb";
        /// `rcu_dereference` of the list head in the search.
        SEARCH_DEREF: Load = "litmus.dyn_list.search.deref";
        /// `smp_wmb` between deleting an entry and freeing its memory.
        DEL_WMB: Fence = "litmus.dyn_list.del.wmb";
        /// `smp_rmb` between reallocating the memory and searching the list.
        REUSE_RMB: Fence = "litmus.dyn_list.reuse.rmb";
        /// `rcu_dereference` of the list head in the search after reuse.
        REUSE_DEREF: Load = "litmus.dyn_list.reuse.deref";
    }

    /// The bounce address of the dynamic pool in the argument.
    const X: usize = 7;
    /// The address of another pool that stays on the list.
    const Y: usize = 8;

    struct Entry {
        paddr: AtomicUsize,
    }

    struct List {
        /// The empty list's sentinel (`list_empty()` ⇔ the head points here).
        empty: Entry,
        a: Entry,
        b: Entry,
        head: AtomicPtr<Entry>,
        /// The driver's private hand-off word (`blah`), or the page free list.
        word: AtomicUsize,
    }

    impl List {
        fn new(first: Option<(usize, usize)>) -> Arc<List> {
            let (a, b) = first.unwrap_or((0, 0));
            let l = Arc::new(List {
                empty: Entry {
                    paddr: AtomicUsize::new(0),
                },
                a: Entry {
                    paddr: AtomicUsize::new(a),
                },
                b: Entry {
                    paddr: AtomicUsize::new(b),
                },
                head: AtomicPtr::new(std::ptr::null_mut()),
                word: AtomicUsize::new(0),
            });
            // Initial state, before any thread starts.
            let head = if first.is_some() {
                addr(&l.a)
            } else {
                addr(&l.empty)
            };
            l.head.store(head, Relaxed);
            l
        }

        /// The first entry of the list (the sentinel if empty) and its address field.
        fn first(&self, order: Ordering) -> (bool, usize) {
            let p = self.head.load(order);
            // SAFETY: `head` only ever points at `empty`, `a` or `b` of this list.
            let e = unsafe { &*p };
            (p != addr(&self.empty), e.paddr.load(Relaxed))
        }
    }

    /// Registers `(1:r0 the address, the list was non-empty, 1:r2 the first entry's address)`.
    pub type AddRegs = (usize, bool, usize);

    /// P0 maps: initialises an entry for the new pool, adds it to the device list, and hands
    /// the bounce address to the driver. P1 (driver, then `is_swiotlb_buffer`) reads the
    /// address, and checks the list instead of a flag.
    fn add_model() -> AddRegs {
        let l = List::new(None);
        let p0 = {
            let l = l.clone();
            spawn(move || {
                l.a.paddr.store(X, Relaxed);
                l.head.store(addr(&l.a), ADD_PUBLISH.ord(Release));
                ADD_WMB.fence(Release);
                l.word.store(X, Relaxed);
            })
        };
        let r0 = l.word.load(Relaxed);
        CHECK_RMB.fence(Acquire);
        let (nonempty, r2) = l.first(SEARCH_DEREF.ord(Acquire));
        p0.join().unwrap();
        (r0, nonempty, r2)
    }

    /// The driver holds X but the list looks empty or X is not found.
    fn add_bad(r: &AddRegs) -> bool {
        r.0 == X && !(r.1 && r.2 == X)
    }

    /// Without the write/read fence pair the address can overtake the list insertion.
    const ADD_UNORDERED: &[AddRegs] = &[(X, false, 0)];
    /// A search reads the new entry before its initialisation (P1 is not looking for X here).
    const ADD_UNINIT: &[AddRegs] = &[(0, true, 0)];

    pub(super) const ADD: Litmus<AddRegs> = Litmus {
        model: add_model,
        correct: &[(0, false, 0), (0, true, X), (X, true, X)],
        bad: add_bad,
        points: &[&ADD_PUBLISH, &ADD_WMB, &CHECK_RMB, &SEARCH_DEREF],
        variants: &[
            Variant {
                name: "dyn-list-add-no-wmb",
                weaken: &[(&ADD_WMB, Weakening::Relax)],
                extra: ADD_UNORDERED,
                lkmm: Verdict::Sometimes,
                note: "",
            },
            Variant {
                name: "dyn-list-add-no-rmb",
                weaken: &[(&CHECK_RMB, Weakening::Relax)],
                extra: ADD_UNORDERED,
                lkmm: Verdict::Sometimes,
                note: "",
            },
            Variant {
                name: "dyn-list-add-write-once",
                weaken: &[(&ADD_PUBLISH, Weakening::Relax)],
                extra: ADD_UNINIT,
                lkmm: Verdict::Never,
                note: "The clause needs only the fence pair. Without the release a search not \
                       ordered after the hand-off reads the entry uninitialised, in LKMM too.",
            },
            Variant {
                name: "dyn-list-add-deref-once",
                weaken: &[(&SEARCH_DEREF, Weakening::Relax)],
                extra: ADD_UNINIT,
                lkmm: Verdict::Never,
                note: "READ_ONCE of the head: LKMM orders the dependent read of the entry, C11 \
                       Relaxed does not (no consume), so the search may read the entry \
                       uninitialised; hence Acquire for every rcu_dereference.",
            },
        ],
    };

    /// Registers `(1:r0 the reallocated address, 1:r2 the first entry's address)`.
    pub type DelRegs = (usize, usize);

    /// The list is `a (X) -> b (Y)`. P0 deletes `a` and frees X to the page allocator; P1
    /// reallocates X from the free list and searches the (non-empty) list for it.
    fn del_model() -> DelRegs {
        let l = List::new(Some((X, Y)));
        let p0 = {
            let l = l.clone();
            spawn(move || {
                // list_del_rcu: WRITE_ONCE(prev->next, next); `b` was published before.
                l.head.store(addr(&l.b), Relaxed);
                DEL_WMB.fence(Release);
                l.word.store(X, Relaxed);
            })
        };
        let r0 = l.word.load(Relaxed);
        REUSE_RMB.fence(Acquire);
        let (_, r2) = l.first(REUSE_DEREF.ord(Acquire));
        p0.join().unwrap();
        (r0, r2)
    }

    /// P1 reallocated X and still finds the deleted entry for X.
    fn del_bad(r: &DelRegs) -> bool {
        r.0 == X && r.1 == X
    }

    pub(super) const DEL: Litmus<DelRegs> = Litmus {
        model: del_model,
        correct: &[(0, X), (0, Y), (X, Y)],
        bad: del_bad,
        points: &[&DEL_WMB, &REUSE_RMB, &REUSE_DEREF],
        variants: &[
            Variant {
                name: "dyn-list-del-reuse-no-wmb",
                weaken: &[(&DEL_WMB, Weakening::Relax)],
                extra: &[(X, X)],
                lkmm: Verdict::Sometimes,
                note: "",
            },
            Variant {
                name: "dyn-list-del-reuse-no-rmb",
                weaken: &[(&REUSE_RMB, Weakening::Relax)],
                extra: &[(X, X)],
                lkmm: Verdict::Sometimes,
                note: "",
            },
            Variant {
                name: "dyn-list-del-reuse-deref-once",
                weaken: &[(&REUSE_DEREF, Weakening::Relax)],
                extra: &[],
                lkmm: Verdict::Never,
                note: "Both entries were published before the threads started, so only the \
                       fence pair matters here; the add case shows the acquire is needed.",
            },
        ],
    };

    /// Every point of this module is used by one of the two tests.
    pub(super) fn all_points() -> &'static [&'static Point] {
        ALL
    }
}

/// Argument 3: walking live page tables (`litmus/pgtable-walk-rcu.litmus`). A walker reads a
/// table while the updater maps it, unmaps it and frees the table level. With levels freed
/// through RCU the walker is safe, and incoherent: it may see any mix of mapped and cleared
/// entries. Without RCU it reads freed memory.
mod pgtable_walk {
    use super::*;
    use dma_sync::rcu::{self, Retire};

    dma_sync::mutation_points! {
        /// The walker's `rcu_read_lock`.
        WALK_PIN: Pin = "litmus.pgtable_walk.walk.pin";
        /// The walker's `rcu_dereference` of the table pointer.
        WALK_DEREF: Load = "litmus.pgtable_walk.walk.deref";
        /// The mapper's `rcu_assign_pointer` of the new table.
        MAP_PUBLISH: Store = "litmus.pgtable_walk.map.publish";
    }

    /// A freshly allocated, not yet initialised table entry.
    pub const UNINIT: u64 = 3;
    /// A valid leaf.
    pub const MAPPED: u64 = 1;
    /// A cleared entry.
    pub const CLEARED: u64 = 0;
    /// What a freed table reads as.
    const POISON: u64 = 2;

    /// A table level with two entries.
    struct Table {
        pte: [AtomicU64; 2],
    }

    impl Retire for Table {
        fn poison(&mut self) {
            for pte in &mut self.pte {
                pte.poison(POISON);
            }
        }
    }

    /// The walker's view: no table, or the two entries it read.
    pub type Walk = Option<[u64; 2]>;

    fn model() -> Walk {
        let root = Arc::new(AtomicPtr::<Table>::new(std::ptr::null_mut()));
        let walker = {
            let root = root.clone();
            spawn(move || {
                let guard = rcu::pin_at(&WALK_PIN);
                // SAFETY: `root` holds Box pointers retired through RCU after unlinking.
                let table = unsafe { guard.deref(root.load(WALK_DEREF.ord(Acquire))) };
                let seen = table.map(|t| [t.pte[0].load(Relaxed), t.pte[1].load(Relaxed)]);
                drop(guard);
                seen
            })
        };
        // The updater, on the model's main thread: map (allocate, fill, publish) ...
        let table = Box::new(Table {
            pte: [AtomicU64::new(UNINIT), AtomicU64::new(UNINIT)],
        });
        for pte in &table.pte {
            pte.store(MAPPED, Relaxed);
        }
        root.store(Box::into_raw(table), MAP_PUBLISH.ord(Release));
        // ... then unmap: clear the leaves, unlink the level, retire it through RCU.
        let guard = rcu::pin();
        // SAFETY: only this thread writes `root`, and the table is live until retired below.
        let table = unsafe { guard.deref(root.load(Relaxed)) }.expect("mapped above");
        for pte in &table.pte {
            pte.store(CLEARED, Relaxed);
        }
        let old = root.swap(std::ptr::null_mut(), Relaxed);
        // SAFETY: `old` is unlinked and retired exactly once.
        unsafe { guard.defer_retire(old) };
        drop(guard);
        walker.join().unwrap()
    }

    /// The walker read an uninitialised or freed entry.
    fn bad(w: &Walk) -> bool {
        w.is_some_and(|ptes| ptes.iter().any(|&p| p == UNINIT || p == POISON))
    }

    const M: u64 = MAPPED;
    const C: u64 = CLEARED;

    pub(super) const TEST: Litmus<Walk> = Litmus {
        model,
        // Safe and incoherent: every mix of mapped and cleared entries, or no table at all.
        correct: &[None, Some([M, M]), Some([M, C]), Some([C, M]), Some([C, C])],
        bad,
        // Each point's weakening is a data race in C11, not a new outcome: see `RACES`.
        points: &[],
        variants: &[],
    };

    /// Weakenings C11 answers with a data race, which loom reports as a causality violation:
    /// an unordered read of the table's initialisation (the pointer published or read
    /// Relaxed; LKMM: the publication Sometimes, the READ_ONCE Never, by address dependency),
    /// or a read racing the free (walker unpinned).
    pub(super) const RACES: &[(&Point, &str)] = &[
        (
            &WALK_PIN,
            "walker without rcu_read_lock reads the freed table",
        ),
        (
            &WALK_DEREF,
            "Relaxed table pointer: the entries' initialisation is unordered",
        ),
        (
            &MAP_PUBLISH,
            "Relaxed publication: the entries' initialisation is unordered",
        ),
    ];

    pub(super) fn model_fn() -> fn() -> Walk {
        model
    }

    pub(super) fn all_points() -> &'static [&'static Point] {
        ALL
    }
}

/// Argument 4: switching a domain to lazy invalidation while it unmaps
/// (`litmus/fq-lazy-switch.litmus`). The flush-queue state is visible before the flag that
/// announces it; an unmap reads the flag once, so it never skips the IOTLB sync and then
/// frees the IOVA at once.
mod fq_switch {
    use super::*;

    dma_sync::mutation_points! {
        /// `smp_wmb` between initialising the flush queue and publishing `fq_domain`.
        INIT_WMB: Fence = "litmus.fq_switch.init.wmb";
        /// The full barrier at the start of the enqueue, before the ring is read.
        QUEUE_MB: Fence = "litmus.fq_switch.queue.mb";
        /// The unmap reads `fq_domain` once and uses that snapshot for every decision
        /// (weakened: the sync decision re-reads it, as in the review's reordering scenario).
        READ_ONCE: Step = "litmus.fq_switch.unmap.read_once";
        /// The ring is read after the barrier (weakened: hoisted to function entry, the first
        /// of the three reorderings fixed in review).
        RING_AFTER_MB: Step = "litmus.fq_switch.queue.ring_after_mb";
    }

    /// The flush-queue ring before initialisation.
    pub const UNINIT: usize = 0;
    /// The initialised ring.
    pub const READY: usize = 1;

    struct Domain {
        ring: AtomicUsize,
        fq_domain: AtomicUsize,
    }

    /// Registers `(the IOTLB was synced, None = IOVA freed at once | Some(ring state) = queued)`.
    pub type Unmap = (bool, Option<usize>);

    fn model() -> Unmap {
        let d = Arc::new(Domain {
            ring: AtomicUsize::new(UNINIT),
            fq_domain: AtomicUsize::new(0),
        });
        let switch = {
            let d = d.clone();
            spawn(move || {
                // iommu_dma_init_fq()
                d.ring.store(READY, Relaxed);
                INIT_WMB.fence(Release);
                d.fq_domain.store(1, Relaxed);
            })
        };
        // iommu_dma_unmap() on the model's main thread.
        let hoisted_ring = if RING_AFTER_MB.on() {
            None
        } else {
            Some(d.ring.load(Relaxed))
        };
        let queued = d.fq_domain.load(Relaxed) != 0;
        // ... the page-table unmap runs here ...
        let skip_sync = if READ_ONCE.on() {
            queued
        } else {
            d.fq_domain.load(Relaxed) != 0
        };
        let synced = !skip_sync;
        let action = if queued {
            QUEUE_MB.fence(SeqCst);
            Some(hoisted_ring.unwrap_or_else(|| d.ring.load(Relaxed)))
        } else {
            None
        };
        switch.join().unwrap();
        (synced, action)
    }

    /// The IOVA is freed without a sync, or queued on an uninitialised ring.
    fn bad(u: &Unmap) -> bool {
        matches!(u, (false, None) | (_, Some(UNINIT)))
    }

    const QUEUED_UNINIT: &[Unmap] = &[(false, Some(UNINIT))];

    pub(super) const TEST: Litmus<Unmap> = Litmus {
        model,
        correct: &[(true, None), (false, Some(READY))],
        bad,
        points: ALL,
        variants: &[
            Variant {
                name: "fq-lazy-switch-no-wmb",
                weaken: &[(&INIT_WMB, Weakening::Relax)],
                extra: QUEUED_UNINIT,
                lkmm: Verdict::Sometimes,
                note: "",
            },
            Variant {
                name: "fq-lazy-switch-no-mb",
                weaken: &[(&QUEUE_MB, Weakening::Relax)],
                extra: QUEUED_UNINIT,
                lkmm: Verdict::Sometimes,
                note: "",
            },
            Variant {
                name: "fq-lazy-switch-rmb",
                weaken: &[(&QUEUE_MB, Weakening::To(Acquire))],
                extra: &[],
                lkmm: Verdict::Never,
                note: "",
            },
            Variant {
                name: "fq-lazy-switch-hoisted-ring",
                weaken: &[(&RING_AFTER_MB, Weakening::Relax)],
                extra: QUEUED_UNINIT,
                lkmm: Verdict::Sometimes,
                note: "",
            },
            Variant {
                name: "fq-lazy-switch-read-twice",
                weaken: &[(&READ_ONCE, Weakening::Relax)],
                extra: &[(false, None)],
                lkmm: Verdict::Sometimes,
                note: "",
            },
        ],
    };
}

#[test]
fn new_pool_correct() {
    new_pool::TEST.check_correct();
}

#[test]
fn new_pool_variants() {
    new_pool::TEST.check_variants();
}

#[test]
fn dyn_list_add_correct() {
    dyn_list::ADD.check_correct();
}

#[test]
fn dyn_list_add_variants() {
    dyn_list::ADD.check_variants();
}

#[test]
fn dyn_list_del_reuse_correct() {
    dyn_list::DEL.check_correct();
}

#[test]
fn dyn_list_del_reuse_variants() {
    dyn_list::DEL.check_variants();
}

#[test]
fn dyn_list_points_all_tested() {
    let tested: Vec<&Point> = dyn_list::ADD
        .points
        .iter()
        .chain(dyn_list::DEL.points)
        .copied()
        .collect();
    for p in dyn_list::all_points() {
        assert!(
            tested.iter().any(|q| std::ptr::eq(*q, *p)),
            "{} is in neither test",
            p.name()
        );
    }
}

#[test]
fn pgtable_walk_correct() {
    pgtable_walk::TEST.check_correct();
}

/// Each weakened point of the walk is a data race in C11: loom reports a causality
/// violation. `Preemptions(2)` (exhaustive, the relaxed publication and dereference were found
/// only after about 13 s of CPU each, late in loom's search): one switch hands the walker the
/// published table before the updater's fill is ordered before it (or, unpinned, lets the
/// updater unlink, wait and free while the walker holds the table), one spare. The must-pass
/// outcome set stays exhaustive.
#[test]
fn pgtable_walk_weakenings_race() {
    for p in pgtable_walk::all_points() {
        assert!(
            pgtable_walk::RACES
                .iter()
                .any(|(q, _)| std::ptr::eq(*q, *p)),
            "{} has no must-fail check",
            p.name()
        );
    }
    for &(point, why) in pgtable_walk::RACES {
        eprintln!("{}: {why}", point.name());
        must_fail(
            point,
            Weakening::Relax,
            "Causality violation",
            Bound::Preemptions(2),
            walk_model,
        );
    }
}

fn walk_model() {
    pgtable_walk::model_fn()();
}

must_fail_test! {
    /// Every RCU pin removed (the shim's `rcu.pin`): the walker is not waited for. Exhaustive.
    fn walk_with_rcu_unpinned_reads_freed_table: dma_sync::points::RCU_PIN, Weakening::Relax,
        "Causality violation", Bound::Exhaustive, walk_model;
}

must_fail_test! {
    /// Levels freed at once instead of after a grace period. Exhaustive.
    fn walk_without_grace_period_reads_freed_table: dma_sync::points::RCU_GRACE_PERIOD,
        Weakening::Relax, "Causality violation", Bound::Exhaustive, walk_model;
}

#[test]
fn fq_switch_correct() {
    fq_switch::TEST.check_correct();
}

#[test]
fn fq_switch_variants() {
    fq_switch::TEST.check_variants();
}
