//! The concurrency vocabulary of dmaloom.
//!
//! This is the one crate of the workspace that names `std::sync`, `parking_lot`, `arc-swap`,
//! `membarrier` or `loom`. Every other crate imports its atomics, locks, cells, RCU guards,
//! published pointers, threads and per-CPU ids from here, so that one switch, `--cfg loom`,
//! swaps the whole library onto loom's model-checked primitives: parking_lot locks become
//! `loom::sync` locks (a contended parking_lot lock hangs a model), `ArcSwap` becomes a
//! loom-visible lock around an `Arc`, the epoch RCU becomes a fence-based RCU whose frees
//! poison the object so a use-after-free is reported as a causality violation, and
//! `sched_getcpu` becomes an id the model assigns to each of its threads.
//!
//! # API overview
//!
//! | Item | Normal build | Under `--cfg loom` |
//! |---|---|---|
//! | [`atomic`]: `AtomicBool`, `AtomicPtr`, `AtomicU64`, `AtomicUsize`, [`atomic::fence`], [`atomic::Poison`] | `std::sync::atomic` | `loom::sync::atomic` |
//! | [`Arc`] | `std::sync::Arc` | `loom::sync::Arc` |
//! | [`Mutex`], [`RwLock`] | parking_lot | `loom::sync` locks |
//! | [`SpinLock`] (closure API: `with`; `with_fenced` for a section right after a full fence), for short rarely contended sections; [`RawSpinLock`], its lock word alone, for owners that keep the data and name the two orderings' mutation points | a spinning lock on the atomics below, released by a store | the same lock on loom's atomics and cell |
//! | [`UnsafeCell`] (closure API: `with`, `with_mut`) | `std::cell::UnsafeCell` | `loom::cell::UnsafeCell` |
//! | [`Published`] (`load`, `store`, `swap`, `rcu`) | `arc_swap::ArcSwap` | a loom `RwLock<Arc<T>>` |
//! | [`rcu`]: [`rcu::pin`], [`rcu::pin_at`], [`rcu::Guard::defer_retire`], [`rcu::Retire`], [`rcu::synchronize`], [`rcu::boxed`], [`rcu::track`], [`rcu::released`] | epoch collector with a membarrier read side (a plain store and a compiler fence per pin; fence fallback without membarrier) | fence-based RCU at least as strict as the epoch collector: poisons freed objects, reuses their addresses, reports frees that bypass it (or, with `production_rcu`, the epoch collector itself on loom) |
//! | [`asymmetric`]: [`asymmetric::light`], [`asymmetric::heavy`] | RCU's fence pair: a compiler fence against `membarrier` (`fence(SeqCst)` both without it) | `fence(SeqCst)` both |
//! | [`thread`]: `spawn`, [`thread::spin_wait`] | `std::thread` | `loom::thread`; a spin step yields |
//! | [`thread_slots`]: [`thread_slots::ThreadSlots`] (`section`, `drain`), [`slot_user!`] | per-thread slots of a shared object: owner sections against a rare drainer (asymmetric fences), claimed per thread, given back at exit | the same on loom's atomics |
//! | [`cpu`]: [`cpu::current`], [`cpu::current_in`], [`cpu::set_current`], [`cpu::count`] | `sched_getcpu` | an id per model thread |
//! | [`mutation`]: [`mutation_points!`], [`mutation::Point`] | the ordering as written | weakenable per test |
//! | [`fault`]: [`fault::Site`] | never fails (feature `fault-injection`: armable per thread) | the same |
//! | `hang::within_30_s` (feature `test-support`) | a test's watchdog: the body on a thread of its own, `None` after 30 s, its panic raised again on the caller's thread; inline under Miri | the same (outside models) |
//! | [`CachePadded`], [`LOOM`] | cache-line padding; the build flag | |
//!
//! Every memory ordering that matters in the library is written through a named
//! [`mutation::Point`]. In loom builds a test can weaken one point at run time and assert that
//! loom finds the failure; in normal builds the hook is an `#[inline(always)]` identity.
//!
//! ```
//! use dma_sync::atomic::{AtomicU64, Ordering};
//! use dma_sync::mutation_points;
//!
//! mutation_points! {
//!     /// Publishes the counter to readers.
//!     PUBLISH: Store = "example.publish";
//! }
//!
//! let x = AtomicU64::new(0);
//! x.store(1, PUBLISH.ord(Ordering::Release));
//! assert_eq!(x.load(Ordering::Acquire), 1);
//! assert_eq!(ALL.len(), 1);
//! ```

pub mod asymmetric;
pub mod atomic;
pub mod cell;
pub mod cpu;
pub mod fault;
#[cfg(feature = "test-support")]
pub mod hang;
pub mod lock;
pub mod mutation;
pub mod points;
pub mod published;
pub mod rcu;
pub mod spin;
pub mod thread;
pub mod thread_slots;

pub use cell::UnsafeCell;
pub use lock::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use published::Published;
pub use spin::{RawSpinGuard, RawSpinLock, SpinLock};

/// Pads and aligns a value to a cache line, so per-CPU state does not share lines
/// (`crossbeam_utils::CachePadded`).
///
/// ```
/// let counters: Vec<dma_sync::CachePadded<u64>> = (0..4).map(|_| Default::default()).collect();
/// assert_eq!(*counters[3], 0);
/// ```
pub use crossbeam_utils::CachePadded;

/// Reference-counted pointer: `std::sync::Arc`, or `loom::sync::Arc` under loom.
#[cfg(not(loom))]
pub use std::sync::Arc;

/// Reference-counted pointer: `std::sync::Arc`, or `loom::sync::Arc` under loom.
#[cfg(loom)]
pub use loom::sync::Arc;

/// Whether this build runs on loom's model-checked primitives.
///
/// ```
/// // Doctests link against the library as built; under `--cfg loom` they run outside any
/// // model, so every example of the workspace returns early on this flag.
/// if dma_sync::LOOM {
///     return;
/// }
/// assert!(!dma_sync::LOOM);
/// ```
pub const LOOM: bool = cfg!(loom);
