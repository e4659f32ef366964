//! The asymmetric fence pair of the epoch RCU: a light fence for readers, a heavy one for
//! writers.
//!
//! RCU's ordering is a store-buffering pair: a reader stores "pinned" and then loads published
//! pointers; a writer unlinks and then reads the readers' states. Each side needs a full fence
//! between its store and its load. Readers are many and fast, writers rare, so the cost is moved
//! to the writer with Linux's `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: the kernel runs a
//! full barrier on every CPU currently running a thread of this process (a thread that is not
//! running passes a barrier when it is scheduled again). The reader's fence then only has to
//! stop the compiler; the writer's syscall is a full fence on the reader's CPU at whatever point
//! the reader has reached. This is liburcu's "memb" flavour and folly's asymmetric fences.
//!
//! | Mode | light (reader) | heavy (writer) |
//! |---|---|---|
//! | membarrier registered | `compiler_fence(SeqCst)` | `membarrier(PRIVATE_EXPEDITED)` |
//! | fallback (no membarrier: old kernel, seccomp, not Linux, Miri) | `fence(SeqCst)` | `fence(SeqCst)` |
//!
//! The mode is decided once, by [`decide`], when the first thread registers as a participant
//! (under the participant lock, so every participant, and so every reader and writer, sees the
//! decision before its first fence): `MEMBARRIER_CMD_QUERY` must list both
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED` and its registration, and the registration must succeed.
//! A reader's fast path reads the mode with one cached load. [`force_fallback`] lets a test
//! binary pin the fallback before first use.
//!
//! Under loom both fences are `fence(SeqCst)`, the standard model of an asymmetric pair: the
//! heavy fence must order the reader as if the reader itself had issued a full fence at the
//! point it had reached, which an SC fence on each side gives. The limit: loom places the
//! reader's "barrier" exactly at its light fence, while the real membarrier may land at any
//! instruction boundary of the reader; the code never relies on where it lands, only on the
//! reader's program order around its light fence (store state, fence, load pointers), which
//! both give the same.

use crate::atomic::Ordering::SeqCst;
use crate::mutation::Point;

/// A reader's fence between publishing its state and loading published pointers.
#[inline(always)]
pub(crate) fn light(point: &'static Point) {
    #[cfg(any(loom, miri))]
    point.fence(SeqCst);
    #[cfg(not(any(loom, miri)))]
    {
        let _ = point;
        if mode::membarrier() {
            std::sync::atomic::compiler_fence(SeqCst);
        } else {
            crate::atomic::fence(SeqCst);
        }
    }
}

/// A writer's fence: a full fence here and on every running thread of the process.
pub(crate) fn heavy(point: &'static Point) {
    #[cfg(any(loom, miri))]
    point.fence(SeqCst);
    #[cfg(not(any(loom, miri)))]
    {
        let _ = point;
        if mode::membarrier() {
            mode::membarrier_fence();
        } else {
            crate::atomic::fence(SeqCst);
        }
    }
}

/// Decide the mode if no one has: called by every participant's registration, under the
/// participant lock, before its first fence.
pub(crate) fn decide() {
    #[cfg(not(any(loom, miri)))]
    mode::decide();
}

/// Use plain fences on both sides for the rest of the process, if no participant has
/// registered yet. Returns whether the fallback is in force (false: membarrier was already
/// chosen, and readers rely on it).
pub fn force_fallback() -> bool {
    #[cfg(not(any(loom, miri)))]
    return mode::force_fallback();
    #[cfg(any(loom, miri))]
    true
}

/// Whether readers use the light fence with membarrier (false: the fence fallback).
pub fn uses_membarrier() -> bool {
    #[cfg(not(any(loom, miri)))]
    return mode::membarrier();
    #[cfg(any(loom, miri))]
    false
}

/// The process-wide mode byte and the syscall. Always std atomics: the mode is a property of
/// the process, not of a model.
#[cfg(not(any(loom, miri)))]
mod mode {
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

    const UNDECIDED: u8 = 0;
    const MEMBARRIER: u8 = 1;
    const FENCES: u8 = 2;

    /// Written once, under the participant lock (or by `force_fallback` before any
    /// participant); every participant reads it after taking that lock once, so Relaxed loads
    /// see the decided value.
    static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

    #[inline(always)]
    pub(super) fn membarrier() -> bool {
        MODE.load(Relaxed) == MEMBARRIER
    }

    pub(super) fn decide() {
        if MODE.load(Relaxed) == UNDECIDED {
            let mode = if sys::register() { MEMBARRIER } else { FENCES };
            // A racing `force_fallback` (no participant yet) wins: its caller asked first.
            let _ = MODE.compare_exchange(UNDECIDED, mode, Relaxed, Relaxed);
        }
    }

    pub(super) fn force_fallback() -> bool {
        let _ = MODE.compare_exchange(UNDECIDED, FENCES, Relaxed, Relaxed);
        MODE.load(Relaxed) == FENCES
    }

    pub(super) fn membarrier_fence() {
        sys::private_expedited();
    }

    #[cfg(target_os = "linux")]
    mod sys {
        // The kernel's `enum membarrier_cmd` (include/uapi/linux/membarrier.h).
        const CMD_QUERY: libc::c_int = 0;
        const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
        const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

        fn membarrier(cmd: libc::c_int) -> libc::c_long {
            // SAFETY: membarrier takes two integer arguments and touches no user memory.
            unsafe {
                libc::syscall(
                    libc::SYS_membarrier,
                    cmd,
                    0 as libc::c_uint,
                    0 as libc::c_int,
                )
            }
        }

        /// Whether the kernel offers private expedited membarrier and registered this process.
        pub(super) fn register() -> bool {
            let offered = membarrier(CMD_QUERY);
            let needed = (CMD_PRIVATE_EXPEDITED | CMD_REGISTER_PRIVATE_EXPEDITED) as libc::c_long;
            offered >= 0
                && offered & needed == needed
                && membarrier(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
        }

        pub(super) fn private_expedited() {
            // Registered, so the kernel has no reason to refuse; if it ever did, readers
            // would be unordered, and carrying on would free memory under them.
            let r = membarrier(CMD_PRIVATE_EXPEDITED);
            assert_eq!(
                r, 0,
                "membarrier(PRIVATE_EXPEDITED) failed after registration"
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    mod sys {
        pub(super) fn register() -> bool {
            false
        }

        pub(super) fn private_expedited() {
            unreachable!("membarrier mode is never chosen off Linux")
        }
    }
}
