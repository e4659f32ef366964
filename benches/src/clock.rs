//! The clock per-op latencies are read with: nanosecond resolution where the monotonic clock
//! has less. On x86-64 that is the time-stamp counter (the kernel's own clocksource on current
//! machines), calibrated once against [`Instant`]; elsewhere [`Instant`] itself. `Instant` is
//! kept for everything else: some virtual machines scale it to 10 ns steps, which would
//! quantise the latency of a 20 ns op into two or three values.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A reading of the fine clock (ticks; only differences of readings on one thread mean
/// anything). On x86-64 the read is fenced on both sides: RDTSC alone may execute before the
/// loads in front of it complete (a chain of cache misses would then seem to take no time) or
/// after the instructions behind it start.
#[inline(always)]
pub fn now() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_lfence, _rdtsc};
        // SAFETY: LFENCE and RDTSC have no preconditions; every x86-64 CPU has both (SSE2).
        unsafe {
            _mm_lfence();
            let t = _rdtsc();
            _mm_lfence();
            t
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        epoch().elapsed().as_nanos() as u64
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds per tick of [`now`], measured once (20 ms against [`Instant`]).
pub fn ns_per_tick() -> f64 {
    static NS: OnceLock<f64> = OnceLock::new();
    *NS.get_or_init(|| {
        if cfg!(not(target_arch = "x86_64")) {
            return 1.0;
        }
        let (t0, c0) = (Instant::now(), now());
        while t0.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let (ns, ticks) = (t0.elapsed().as_nanos() as f64, now().wrapping_sub(c0));
        if ticks == 0 {
            1.0
        } else {
            ns / ticks as f64
        }
    })
}

/// Nanoseconds between two readings of [`now`] (0 if the second is not later).
#[inline]
pub fn ns_between(start: u64, end: u64) -> f64 {
    end.saturating_sub(start) as f64 * ns_per_tick()
}

/// The median cost of reading the clock twice back to back, in nanoseconds (subtracted from
/// every latency sample).
pub fn overhead_ns() -> f64 {
    static OVERHEAD: OnceLock<f64> = OnceLock::new();
    *OVERHEAD.get_or_init(|| {
        let mut v: Vec<f64> = (0..2001)
            .map(|_| {
                let a = now();
                let b = now();
                ns_between(a, b)
            })
            .collect();
        v.sort_unstable_by(f64::total_cmp);
        v[v.len() / 2]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)] // FFI clocks and real time
    fn fine_clock_agrees_with_instant() {
        let (t0, c0) = (Instant::now(), now());
        std::thread::sleep(Duration::from_millis(30));
        let (wall, fine) = (t0.elapsed().as_nanos() as f64, ns_between(c0, now()));
        assert!(
            (fine / wall - 1.0).abs() < 0.05,
            "fine {fine} ns vs {wall} ns"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn back_to_back_readings_cost_less_than_a_microsecond() {
        assert!(overhead_ns() < 1000.0);
    }
}
