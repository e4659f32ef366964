//! Named mutation points: every ordering that matters, weakenable in loom builds.
//!
//! A [`Point`] names one ordering decision: the ordering of an atomic access, a fence, an RCU
//! pin, a lock step. Code asks the point for the ordering instead of writing it bare:
//!
//! ```
//! use dma_sync::atomic::{fence, AtomicUsize, Ordering};
//! dma_sync::mutation_points! {
//!     /// Orders the payload before the flag.
//!     FLAG_RELEASE: Store = "doc.flag.release";
//!     /// Full fence between the flag store and the hand-off.
//!     FLAG_FENCE: Fence = "doc.flag.fence";
//! }
//! let flag = AtomicUsize::new(0);
//! flag.store(1, FLAG_RELEASE.ord(Ordering::Release));
//! FLAG_FENCE.fence(Ordering::SeqCst);
//! assert!(FLAG_FENCE.on());
//! ```
//!
//! In normal builds every method is an `#[inline(always)]` identity: `ord(o)` is `o`, `fence`
//! is the fence, `on()` is `true`. In loom builds the methods consult a per-test table of
//! weakened points (see `weakened`): a weakened ordering becomes `Relaxed` (or a chosen
//! weaker ordering), a weakened fence disappears, a weakened step (`on()`) is skipped. The
//! table lives in a `std` thread-local of the test's OS thread; loom runs all model threads as
//! coroutines on that thread, so a weakening reaches every thread of the model and no other
//! test running in parallel.
//!
//! The environment variable `DMALOOM_WEAKEN` (comma-separated point names) weakens points for
//! a whole run, so a must-pass model can be run by hand in its broken form.

use crate::atomic::Ordering;

/// What kind of ordering decision a point names.
///
/// ```
/// use dma_sync::mutation::Kind;
/// // The loom RCU shim's store-buffering protocol has two full fences.
/// let fences = dma_sync::points::ALL.iter().filter(|p| p.kind() == Kind::Fence);
/// assert_eq!(fences.count(), 2);
/// assert_eq!(dma_sync::points::RCU_PIN.kind(), Kind::Pin);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An atomic load (`Acquire` or stronger).
    Load,
    /// An atomic store (`Release` or stronger).
    Store,
    /// A read-modify-write or compare-and-swap.
    Rmw,
    /// A fence.
    Fence,
    /// An RCU read-side pin.
    Pin,
    /// A grace period or deferred-free step.
    GracePeriod,
    /// A lock acquisition or a step that must happen under a lock or in a given order.
    Step,
}

/// One named ordering decision.
///
/// Usually declared with [`crate::mutation_points!`]; [`Point::new`] is the same in a `const`
/// context. In normal builds a point hands back the ordering it is given.
///
/// ```
/// use dma_sync::atomic::Ordering;
/// use dma_sync::mutation::{Kind, Point};
/// static TAIL: Point = Point::new("doc.tail.acquire", Kind::Load, "Acquire on the tail.");
/// static LOCAL: Point = Point::new("doc.local", Kind::Step, "Per-thread step.")
///     .unobservable("only one thread ever takes it");
/// assert_eq!((TAIL.name(), TAIL.kind()), ("doc.tail.acquire", Kind::Load));
/// assert_eq!(TAIL.doc(), "Acquire on the tail.");
/// assert_eq!(TAIL.unobservable_reason(), None);
/// assert_eq!(LOCAL.unobservable_reason(), Some("only one thread ever takes it"));
/// assert_eq!(TAIL.ord(Ordering::Acquire), Ordering::Acquire);
/// assert!(LOCAL.on());
/// ```
#[derive(Debug)]
pub struct Point {
    name: &'static str,
    kind: Kind,
    doc: &'static str,
    unobservable: Option<&'static str>,
}

/// How a weakened point behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weakening {
    /// Orderings become `Relaxed`, fences disappear, steps are skipped.
    Relax,
    /// Orderings and fences become this ordering (`Relaxed` removes a fence); steps are
    /// skipped. Used for "full fence weakened to a release fence" style variants.
    To(Ordering),
}

impl Point {
    /// Declare a point. Prefer the [`crate::mutation_points!`] macro.
    pub const fn new(name: &'static str, kind: Kind, doc: &'static str) -> Self {
        Self {
            name,
            kind,
            doc,
            unobservable: None,
        }
    }

    /// Mark the point as one C11 (and so loom) cannot observe, with the reason.
    pub const fn unobservable(mut self, reason: &'static str) -> Self {
        self.unobservable = Some(reason);
        self
    }

    /// The point's unique dotted name, e.g. `swiotlb.flag.fence`.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The kind of decision.
    pub const fn kind(&self) -> Kind {
        self.kind
    }

    /// What the point orders, from its doc comment.
    pub const fn doc(&self) -> &'static str {
        self.doc
    }

    /// Why C11 cannot observe this point, if it cannot.
    pub const fn unobservable_reason(&self) -> Option<&'static str> {
        self.unobservable
    }

    /// The ordering to use for an access: `strong` unless the point is weakened.
    #[inline(always)]
    pub fn ord(&'static self, strong: Ordering) -> Ordering {
        #[cfg(not(loom))]
        return strong;
        #[cfg(loom)]
        return match active::lookup(self) {
            None => strong,
            Some(Weakening::Relax) => Ordering::Relaxed,
            Some(Weakening::To(o)) => o,
        };
    }

    /// Success and failure orderings for a compare-and-swap.
    ///
    /// ```
    /// use dma_sync::atomic::{AtomicUsize, Ordering::*};
    /// dma_sync::mutation_points! {
    ///     /// Claims the slot and acquires what its previous owner released.
    ///     CLAIM: Rmw = "doc.slot.claim";
    /// }
    /// let slot = AtomicUsize::new(0);
    /// let (success, failure) = CLAIM.cas(AcqRel, Acquire);
    /// assert_eq!(slot.compare_exchange(0, 1, success, failure), Ok(0));
    /// assert_eq!(slot.compare_exchange(0, 2, success, failure), Err(1));
    /// ```
    #[inline(always)]
    pub fn cas(&'static self, success: Ordering, failure: Ordering) -> (Ordering, Ordering) {
        #[cfg(not(loom))]
        return (success, failure);
        #[cfg(loom)]
        return match active::lookup(self) {
            None => (success, failure),
            Some(Weakening::Relax) => (Ordering::Relaxed, Ordering::Relaxed),
            Some(Weakening::To(o)) => (o, failure_for(o)),
        };
    }

    /// Issue the fence `strong`, unless the point is weakened.
    #[inline(always)]
    pub fn fence(&'static self, strong: Ordering) {
        #[cfg(not(loom))]
        crate::atomic::fence(strong);
        #[cfg(loom)]
        match active::lookup(self) {
            None => crate::atomic::fence(strong),
            Some(Weakening::Relax) | Some(Weakening::To(Ordering::Relaxed)) => {}
            Some(Weakening::To(o)) => crate::atomic::fence(o),
        }
    }

    /// Issue a `SeqCst` fence that an atomic read-modify-write of the caller follows at once,
    /// with no memory access in between (the fence before a lock's acquiring
    /// compare-and-swap), unless the point is weakened.
    ///
    /// On x86-64 (not under loom or Miri) this is a compiler barrier only: every atomic
    /// read-modify-write compiles to a `lock`-prefixed instruction there, which waits for the
    /// store buffer to drain and is not reordered with any earlier or later load or store of
    /// write-back memory (Intel SDM vol. 3A §9.2.2; x86-TSO: a locked instruction has the
    /// effect of `mfence` and the access together). `fence(SeqCst)` followed at once by a
    /// locked instruction is therefore the locked instruction alone, which is how Linux's
    /// `smp_mb__before_atomic()` is a compiler barrier on x86. The compiler barrier keeps the
    /// compiler from moving any access across the point. Loom and Miri check the C11 program,
    /// with the fence; other targets issue it.
    #[inline(always)]
    pub(crate) fn fence_before_rmw(&'static self) {
        #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
        self.fence(Ordering::SeqCst);
    }

    /// Whether a step (a pin, a lock, a grace period) is taken: `true` unless weakened.
    #[inline(always)]
    pub fn on(&'static self) -> bool {
        #[cfg(not(loom))]
        return true;
        #[cfg(loom)]
        return active::lookup(self).is_none();
    }
}

#[cfg(loom)]
fn failure_for(o: Ordering) -> Ordering {
    match o {
        Ordering::Release | Ordering::Relaxed => Ordering::Relaxed,
        Ordering::AcqRel | Ordering::Acquire => Ordering::Acquire,
        _ => Ordering::SeqCst,
    }
}

/// Declare a crate's mutation points and the `ALL` registry listing them.
///
/// Each entry is `NAME: Kind = "dotted.name";`, optionally followed by
/// `unobservable "reason"` for a point C11 cannot observe. The doc comment becomes the
/// point's description.
///
/// ```
/// dma_sync::mutation_points! {
///     /// Acquire on the lookup of the list head.
///     HEAD_ACQUIRE: Load = "doc.head.acquire";
///     /// Lock step whose weakening no C11 execution can distinguish.
///     STEP: Step = "doc.step" unobservable "the step only orders single-threaded work";
/// }
/// assert_eq!(ALL.len(), 2);
/// assert_eq!(HEAD_ACQUIRE.name(), "doc.head.acquire");
/// assert!(STEP.unobservable_reason().is_some());
/// ```
#[macro_export]
macro_rules! mutation_points {
    ($( $(#[doc = $doc:literal])* $NAME:ident : $kind:ident = $name:literal
        $(unobservable $why:literal)? ; )*) => {
        $(
            $(#[doc = $doc])*
            pub static $NAME: $crate::mutation::Point = $crate::mutation::Point::new(
                $name,
                $crate::mutation::Kind::$kind,
                concat!($($doc),*),
            )$(.unobservable($why))?;
        )*
        /// Every mutation point this module declares.
        pub static ALL: &[&$crate::mutation::Point] = &[$(&$NAME),*];
    };
}

/// Run `f` with `point` weakened as `how`, on this OS thread only (loom builds).
///
/// Returns `f`'s result and how many times the point was consulted while weakened, so a
/// must-fail test can tell "loom found the bug" from "the weakened code never ran".
///
/// ```ignore
/// let (result, hits) = dma_sync::mutation::weakened(&POINT, Weakening::Relax, || run_model());
/// ```
#[cfg(loom)]
pub fn weakened<R>(point: &'static Point, how: Weakening, f: impl FnOnce() -> R) -> (R, usize) {
    active::push(point, how);
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            active::pop();
        }
    }
    let pop = Pop;
    let r = f();
    let hits = active::hits();
    drop(pop);
    (r, hits)
}

/// The points weakened through `DMALOOM_WEAKEN` for the whole run (loom builds).
#[cfg(loom)]
pub fn weakened_by_env() -> Vec<String> {
    std::env::var("DMALOOM_WEAKEN")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(loom)]
mod active {
    use super::{Point, Weakening};
    use std::cell::RefCell;

    struct Entry {
        point: &'static Point,
        how: Weakening,
        hits: usize,
    }

    std::thread_local! {
        static STACK: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
        static ENV: Vec<String> = super::weakened_by_env();
    }

    pub(super) fn lookup(point: &'static Point) -> Option<Weakening> {
        let scoped = STACK.with(|s| {
            let mut s = s.borrow_mut();
            s.iter_mut()
                .rev()
                .find(|e| std::ptr::eq(e.point, point) || e.point.name == point.name)
                .map(|e| {
                    e.hits += 1;
                    e.how
                })
        });
        scoped.or_else(|| {
            ENV.with(|env| {
                env.iter()
                    .any(|n| n == point.name)
                    .then_some(Weakening::Relax)
            })
        })
    }

    pub(super) fn push(point: &'static Point, how: Weakening) {
        STACK.with(|s| {
            s.borrow_mut().push(Entry {
                point,
                how,
                hits: 0,
            })
        });
    }

    pub(super) fn hits() -> usize {
        STACK.with(|s| s.borrow().last().map_or(0, |e| e.hits))
    }

    pub(super) fn pop() {
        STACK.with(|s| s.borrow_mut().pop());
    }
}
