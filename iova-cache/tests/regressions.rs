//! Regression tests for the known bugs of Linux `iova.c` and its rcache that apply here, and
//! for the error contract.
#![cfg(not(loom))]

use iova_cache::{IovaAllocator, IovaConfig, IovaError, RangeAllocator};
use std::time::{Duration, Instant};

fn cfg(start: u64, end: u64) -> IovaConfig {
    IovaConfig {
        trim_interval: None,
        ..IovaConfig::with_space(start, end)
    }
}

/// 4e89dce72521: 1 GiB space, allocate 500 MiB, 12 MiB, 499 MiB, free the 12 MiB: a 13 MiB
/// request must be served from the 13 MiB left at the bottom (a hint sitting low made Linux
/// fail it before the two-phase retry).
#[test]
fn no_false_no_space_after_retry() {
    const MIB: u64 = 256; // 4 KiB granules per MiB
    let mut r = RangeAllocator::new(0, 1024 * MIB - 1).unwrap();
    let top = 1024 * MIB - 1;
    let _a = r.alloc(500 * MIB, top, false).unwrap();
    let b = r.alloc(12 * MIB, top, false).unwrap();
    let _c = r.alloc(499 * MIB, top, false).unwrap();
    r.free(b, 12 * MIB).unwrap();
    assert_eq!(r.alloc(13 * MIB, top, false), Ok(0));
    // And the 12 MiB hole is found again below the same limit.
    assert_eq!(r.alloc(12 * MIB, top, false), Ok(b));
    assert!(matches!(
        r.alloc(1, top, false),
        Err(IovaError::NoSpace { .. })
    ));
    r.check_invariants().unwrap();
}

/// 5b61343b5059: a failed 32-bit allocation must not make later 32-bit allocations fail once
/// space below 4 GiB has been freed, and must not block smaller sizes that still fit.
#[test]
fn no_stale_32bit_negative_cache() {
    let a = IovaAllocator::new(IovaConfig {
        caching: false,
        ..cfg(1, (1 << 22) - 1)
    })
    .unwrap();
    let limit32 = a.dma_32bit_pfn() - 1;
    // Fill the 32-bit zone with 1024-granule ranges (the lowest one is one granule short).
    let mut held = Vec::new();
    while let Ok(p) = a.alloc(1024, limit32) {
        held.push(p);
    }
    assert!(matches!(
        a.alloc(1024, limit32),
        Err(IovaError::NoSpace { .. })
    ));
    assert!(
        a.alloc(512, limit32).is_ok(),
        "a smaller size still fits at the bottom"
    );
    assert!(matches!(
        a.alloc(2048, limit32),
        Err(IovaError::NoSpace { .. })
    ));
    // Free one range below 4 GiB: the same size fits again at once.
    let freed = held.swap_remove(held.len() / 2);
    a.free(freed, 1024).unwrap();
    assert_eq!(a.alloc(1024, limit32), Ok(freed));
    assert!(
        a.alloc(1024, (1 << 22) - 1).unwrap() > limit32,
        "wide space unaffected"
    );
    a.check_invariants().unwrap();
}

/// Hoarding (John Garry 2020, 6fa3525b455a): every granule sits in other CPUs' magazines; an
/// allocation on another CPU must flush them and succeed, in any size class.
#[test]
fn hoarded_caches_are_flushed_on_failure() {
    let a = IovaAllocator::new(IovaConfig {
        cpus: 4,
        ..cfg(1, 256)
    })
    .unwrap();
    dma_sync::cpu::set_current(Some(1));
    let all: Vec<u64> = (0..256).map(|_| a.alloc(1, 256).unwrap()).collect();
    assert!(a.alloc(1, 256).is_err());
    for (i, &p) in all.iter().enumerate() {
        dma_sync::cpu::set_current(Some(1 + i % 3));
        a.free(p, 1).unwrap();
    }
    assert_eq!(
        a.stats().cached_granules(),
        256,
        "everything is cached on CPUs 1-3"
    );
    dma_sync::cpu::set_current(Some(0));
    assert!(
        matches!(a.alloc_no_flush(32, 256), Err(IovaError::NoSpace { .. })),
        "hoarded"
    );
    let big = a.alloc(32, 256).expect("flush-and-retry frees the hoard");
    assert_eq!(big % 32, 0);
    assert!(a.alloc(1, 256).is_ok());
    let s = a.stats();
    assert!(s.flushes >= 1);
    assert_eq!(s.cached_granules(), 0);
    dma_sync::cpu::set_current(None);
}

/// Limit-aware pops: a 32-bit request must not take a cached range above 4 GiB, and it must
/// not lose that range either; a wide request still gets it from the cache.
#[test]
fn cached_pops_respect_the_limit() {
    let a = IovaAllocator::new(IovaConfig {
        cpus: 1,
        magazine_size: 4,
        ..cfg(1, (1 << 21) - 1)
    })
    .unwrap();
    let limit32 = a.dma_32bit_pfn() - 1;
    dma_sync::cpu::set_current(Some(0));
    let high: Vec<u64> = (0..10)
        .map(|_| a.alloc(4, (1 << 21) - 1).unwrap())
        .collect();
    assert!(high.iter().all(|&p| p > limit32));
    for &p in &high {
        a.free(p, 4).unwrap(); // fills loaded, prev, and pushes magazines to the depot
    }
    assert!(a.stats().classes[2].depot_magazines >= 1);
    for _ in 0..12 {
        let p = a.alloc(4, limit32).unwrap();
        assert!(p + 3 <= limit32, "pop ignored the limit: {p:#x}");
    }
    // Every high range is still cached and served to a wide request.
    let s = a.stats();
    // The last one freed waits in this thread's cache, above the limit too.
    assert_eq!(
        s.classes[2].cpu_granules + s.classes[2].depot_granules + s.thread_cached_granules,
        40
    );
    let again = a.alloc(4, (1 << 21) - 1).unwrap();
    assert!(high.contains(&again));
    dma_sync::cpu::set_current(None);
}

/// Every bad input is a typed error and the allocator keeps working.
#[test]
fn bad_input_is_a_typed_error() {
    let a = IovaAllocator::new(IovaConfig {
        cpus: 2,
        ..cfg(16, 1023)
    })
    .unwrap();
    assert_eq!(a.alloc(0, 1023), Err(IovaError::ZeroSize));
    assert_eq!(
        a.alloc(2000, 1023),
        Err(IovaError::TooLarge {
            size: 2000,
            space: 1008
        })
    );
    assert_eq!(
        a.alloc(1, 15),
        Err(IovaError::LimitBelowStart {
            limit: 15,
            start: 16
        })
    );
    assert_eq!(a.free(100, 1), Err(IovaError::NotAllocated { pfn: 100 }));
    assert_eq!(a.free(100, 0), Err(IovaError::ZeroSize));
    assert_eq!(a.free(100, 64), Err(IovaError::NotAllocated { pfn: 100 }));
    assert_eq!(
        a.reserve(50, 40),
        Err(IovaError::InvalidRange { lo: 50, hi: 40 })
    );
    let p = a.alloc(64, 1023).unwrap();
    assert_eq!(
        a.reserve(p, p),
        Err(IovaError::ReserveOverlapsAllocation { pfn: p, size: 64 })
    );
    a.free(p, 64).unwrap();
    assert_eq!(a.free(p, 64), Err(IovaError::NotAllocated { pfn: p }));
    let q = a.alloc(8, 1023).unwrap();
    a.free(q, 8).unwrap();
    assert_eq!(
        a.free(q, 8),
        Err(IovaError::NotAllocated { pfn: q }),
        "double free of a cached range"
    );
    // Nothing was corrupted: each granule is handed out once.
    let mut got: Vec<u64> = std::iter::from_fn(|| a.alloc(1, 1023).ok()).collect();
    let n = got.len();
    got.sort_unstable();
    got.dedup();
    assert_eq!((n, got.len()), (1008, 1008));
    a.check_invariants().unwrap();
    for e in [
        IovaError::ZeroSize,
        IovaError::NotAllocated { pfn: 1 },
        IovaError::InvalidConfig("x"),
    ] {
        assert!(!e.to_string().is_empty());
        let _: &dyn std::error::Error = &e;
    }
}

/// Reservations after caching: cached ranges inside the window are flushed first.
#[test]
fn reserve_flushes_cached_ranges_in_the_window() {
    let a = IovaAllocator::new(cfg(1, 1023)).unwrap();
    let p = a.alloc(4, 1023).unwrap();
    a.free(p, 4).unwrap();
    a.reserve(p, p + 3).unwrap();
    assert_eq!(a.find(p).unwrap().kind, iova_cache::RangeKind::Reserved);
    assert_ne!(a.alloc(4, 1023).unwrap(), p);
}

/// The depot is trimmed back toward one magazine per CPU slot by the background worker, and
/// the worker stops when the allocator is dropped.
#[test]
#[cfg_attr(miri, ignore)]
fn trim_worker_converges_and_stops() {
    let cfg = IovaConfig {
        cpus: 2,
        magazine_size: 4,
        trim_interval: Some(Duration::from_millis(1)),
        ..IovaConfig::with_space(1, 4095)
    };
    let a = IovaAllocator::new(cfg).unwrap();
    dma_sync::cpu::set_current(Some(0));
    let got: Vec<u64> = (0..100).map(|_| a.alloc(1, 4095).unwrap()).collect();
    for p in got {
        a.free(p, 1).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.stats().classes[0].depot_magazines > 2 {
        assert!(
            Instant::now() < deadline,
            "trim did not converge: {}",
            a.report()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let s = a.stats();
    assert!(s.trimmed_magazines >= 20);
    assert_eq!(s.cached_granules() + s.range.free_granules, 4095);
    drop(a); // joins the worker
    dma_sync::cpu::set_current(None);
}

#[test]
fn trim_once_keeps_one_magazine_per_cpu() {
    let a = IovaAllocator::new(IovaConfig {
        cpus: 1,
        magazine_size: 2,
        ..cfg(1, 255)
    })
    .unwrap();
    dma_sync::cpu::set_current(Some(0));
    let got: Vec<u64> = (0..12).map(|_| a.alloc(1, 255).unwrap()).collect();
    for p in got {
        a.free(p, 1).unwrap();
    }
    assert_eq!(a.stats().classes[0].depot_magazines, 4);
    assert_eq!(a.trim_once(), 1);
    assert_eq!(a.trim_once(), 1);
    assert_eq!(a.trim_once(), 1);
    assert_eq!(a.trim_once(), 0, "one magazine per CPU slot stays");
    let s = a.stats();
    assert_eq!(s.classes[0].depot_magazines, 1);
    assert_eq!(s.cached_granules(), 6);
    assert!(a.report().contains("class  1"));
    dma_sync::cpu::set_current(None);
}

/// Dropping an allocator wakes its parked trim worker instead of waiting out the interval
/// (with a one-hour interval a missed wake-up would hang this test).
#[test]
#[cfg_attr(miri, ignore)]
fn drop_wakes_a_parked_trim_worker() {
    for _ in 0..20 {
        let cfg = IovaConfig {
            trim_interval: Some(Duration::from_secs(3600)),
            ..IovaConfig::with_space(1, 1023)
        };
        let a = IovaAllocator::new(cfg).unwrap();
        let p = a.alloc(1, 1023).unwrap();
        a.free(p, 1).unwrap();
        drop(a);
    }
}

/// A checked free of a pfn inside a held range, in that range's slot of the size class
/// (pfn 9 freed as 8 granules while 8..16 is held), is refused: the slot bit alone would
/// accept it, so the alignment is checked first. Found by the reference model.
#[test]
fn checked_free_inside_a_range_is_refused() {
    dma_sync::cpu::set_current(Some(0));
    let a = IovaAllocator::new(cfg(1, 511)).unwrap();
    let p = a.alloc(5, 511).unwrap();
    assert_eq!(p % 8, 0);
    assert_eq!(
        a.free(p + 1, 5),
        Err(IovaError::NotAllocated { pfn: p + 1 })
    );
    assert_eq!(
        a.free(p, 16),
        Err(IovaError::SizeMismatch {
            pfn: p,
            allocated: 8,
            freed: 16
        })
    );
    a.free(p, 8).unwrap();
    assert_eq!(a.free(p, 8), Err(IovaError::NotAllocated { pfn: p }));
    a.flush_all();
    assert!(a.allocated_ranges().is_empty());
    dma_sync::cpu::set_current(None);
}

/// Every count and size of a configuration is checked against its documented maximum before
/// anything is allocated.
#[test]
fn configs_beyond_the_documented_maxima_are_refused() {
    use iova_cache::{MAX_SLOT_ENTRIES, MAX_TRIM_INTERVAL};
    let base = cfg(1, 1023);
    let bad = [
        IovaConfig {
            cpus: 1024,
            magazine_size: MAX_SLOT_ENTRIES / 1024 + 1,
            ..base.clone()
        },
        IovaConfig {
            trim_interval: Some(MAX_TRIM_INTERVAL + Duration::from_secs(1)),
            ..base.clone()
        },
        IovaConfig {
            trim_interval: Some(Duration::MAX),
            ..base.clone()
        },
        IovaConfig {
            granule_shift: 16,
            ..IovaConfig::with_space(1, 1 << 48)
        },
    ];
    for c in bad {
        assert!(
            matches!(
                IovaAllocator::new(c.clone()),
                Err(IovaError::InvalidConfig(_))
            ),
            "{c:?}"
        );
    }
    let edge = IovaConfig {
        cpus: 1024,
        magazine_size: MAX_SLOT_ENTRIES / 1024,
        trim_interval: Some(MAX_TRIM_INTERVAL),
        granule_shift: 16,
        ..IovaConfig::with_space(1, (1 << 48) - 1)
    };
    assert_eq!(edge.validate(), Ok(()));
}

/// Without checked frees, a double free caches a range twice; when the copies leave the cache
/// the range allocator refuses the second one, and the refusal is counted.
#[test]
fn unchecked_double_free_is_refused_when_the_cache_drains() {
    dma_sync::cpu::set_current(Some(0));
    let a = IovaAllocator::new(IovaConfig {
        checked_frees: false,
        cpus: 1,
        ..cfg(1, 511)
    })
    .unwrap();
    let p = a.alloc(2, 511).unwrap();
    a.free(p, 2).unwrap();
    a.free(p, 2).unwrap();
    a.flush_all();
    let s = a.stats();
    assert_eq!(s.refused_cached_frees, 1);
    assert!(s.to_string().contains("1 refused cached frees"));
    assert!(a.allocated_ranges().is_empty());
    a.check_invariants().unwrap();
    dma_sync::cpu::set_current(None);
}
