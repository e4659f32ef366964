//! Per-CPU ids.
//!
//! Normal builds ask the kernel (`sched_getcpu`) and fall back to a stable per-thread id where
//! that is unavailable. Without restartable sequences `sched_getcpu` costs about as much as a
//! whole per-CPU cache hit, so a thread asks again only every [`REFRESH`] calls and reports the
//! CPU it last saw in between (a thread that migrated keeps its old CPU's shard that long); a thread may also claim an id with [`set_current`] (tests use this to
//! run eight "CPUs" on a two-core machine). Under loom every model thread is on CPU 0 until it
//! calls [`set_current`], so a model chooses whether two threads share a CPU or not.
//!
//! ```
//! let n = dma_sync::cpu::count();
//! assert!(n >= 1);
//! assert!(dma_sync::cpu::current_in(4) < 4);
//! dma_sync::cpu::set_current(Some(3));
//! assert_eq!(dma_sync::cpu::current(), 3);
//! dma_sync::cpu::set_current(None);
//! ```

/// Calls of [`current`] between two questions to the kernel (normal builds).
pub const REFRESH: u32 = 64;

#[cfg(not(loom))]
mod imp {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    std::thread_local! {
        static OVERRIDE: Cell<usize> = const { Cell::new(usize::MAX) };
        static FALLBACK: Cell<usize> = const { Cell::new(usize::MAX) };
        /// The CPU last reported (by the kernel or the override), and how many more calls may
        /// return it.
        static SEEN: Cell<(usize, u32)> = const { Cell::new((0, 0)) };
    }

    /// One thread-local read on the common path: an override is found by the refresh, which
    /// [`set_current`] forces.
    #[inline]
    pub fn current() -> usize {
        SEEN.with(|seen| match seen.get() {
            (cpu, left) if left > 0 => {
                seen.set((cpu, left - 1));
                cpu
            }
            _ => refresh(seen),
        })
    }

    #[cold]
    fn refresh(seen: &Cell<(usize, u32)>) -> usize {
        let cpu = match OVERRIDE.with(Cell::get) {
            usize::MAX => ask(),
            o => o,
        };
        seen.set((cpu, super::REFRESH - 1));
        cpu
    }

    fn ask() -> usize {
        // Miri cannot call into the C library: it takes the per-thread fallback below.
        #[cfg(miri)]
        let cpu = -1;
        // SAFETY: sched_getcpu has no preconditions.
        #[cfg(not(miri))]
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu >= 0 {
            return cpu as usize;
        }
        FALLBACK.with(|f| {
            if f.get() == usize::MAX {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                f.set(NEXT.fetch_add(1, Ordering::Relaxed) % count());
            }
            f.get()
        })
    }

    pub fn set_current(cpu: Option<usize>) {
        OVERRIDE.with(|o| o.set(cpu.unwrap_or(usize::MAX)));
        SEEN.with(|seen| seen.set((0, 0)));
    }

    pub fn count() -> usize {
        static COUNT: OnceLock<usize> = OnceLock::new();
        *COUNT.get_or_init(|| {
            // SAFETY: sysconf has no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
            if n > 0 {
                n as usize
            } else {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            }
        })
    }
}

#[cfg(loom)]
mod imp {
    use std::cell::Cell;

    loom::thread_local! {
        static CPU: Cell<usize> = Cell::new(0);
    }
    std::thread_local! {
        static COUNT: Cell<usize> = const { Cell::new(2) };
    }

    pub fn current() -> usize {
        CPU.with(Cell::get)
    }

    pub fn set_current(cpu: Option<usize>) {
        CPU.with(|c| c.set(cpu.unwrap_or(0)));
    }

    pub fn count() -> usize {
        COUNT.with(Cell::get)
    }

    pub fn set_count(n: usize) {
        COUNT.with(|c| c.set(n.max(1)));
    }
}

/// The CPU the calling thread runs on (possibly stale by the time it is used: a hint for
/// choosing a shard, never a correctness condition).
#[inline]
pub fn current() -> usize {
    imp::current()
}

/// [`current`] reduced to `0..n` (for indexing `n` per-CPU shards).
///
/// ```
/// use dma_sync::cpu;
/// cpu::set_current(Some(5));
/// assert_eq!(cpu::current_in(4), 1); // power of two: a mask
/// assert_eq!(cpu::current_in(3), 2); // otherwise the remainder
/// assert_eq!(cpu::current_in(0), 0); // no shards: never out of range
/// cpu::set_current(None);
/// ```
#[inline]
pub fn current_in(n: usize) -> usize {
    let c = current();
    if c < n {
        // One shard per CPU (the common configuration): already in range, and what the mask
        // or the remainder below would give.
        return c;
    }
    if n.is_power_of_two() {
        c & (n - 1)
    } else {
        c % n.max(1)
    }
}

/// Make the calling thread report `cpu` from [`current`] (`None`: back to the default).
///
/// The override belongs to the calling thread only:
///
/// ```
/// use dma_sync::cpu;
/// cpu::set_current(Some(7));
/// let other = std::thread::spawn(|| {
///     cpu::set_current(Some(2));
///     cpu::current()
/// });
/// assert_eq!(other.join().unwrap(), 2);
/// assert_eq!(cpu::current(), 7, "another thread's override does not leak here");
/// cpu::set_current(None);
/// ```
pub fn set_current(cpu: Option<usize>) {
    imp::set_current(cpu)
}

/// The number of CPUs configured on this machine (loom: set by `set_count`, default 2).
pub fn count() -> usize {
    imp::count()
}

/// Set what [`count`] returns inside models run by this test thread (loom builds only).
#[cfg(loom)]
pub fn set_count(n: usize) {
    imp::set_count(n)
}
