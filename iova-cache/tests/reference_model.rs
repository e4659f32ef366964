//! proptest against a reference model: a `BTreeMap` of the live ranges.
//!
//! Every allocation must lie in the space and below its limit, be naturally aligned, and be
//! disjoint from every live and every cached range; a "no space" answer must be true once the
//! caches are flushed; frees succeed exactly once; after a final flush the range allocator
//! holds exactly the live ranges.
#![cfg(not(loom))]

use iova_cache::{IovaAllocator, IovaConfig, IovaError, RangeKind};
use proptest::prelude::*;
use std::collections::BTreeMap;

const END: u64 = 511;

#[derive(Debug, Clone)]
enum Op {
    /// Cached-path allocation of `size` below a limit picked by `limit_sel`.
    Alloc {
        size: u64,
        limit_sel: u8,
    },
    /// Uncached allocation.
    AllocRange {
        size: u64,
        aligned: bool,
        limit_sel: u8,
    },
    /// Free the live range picked by `idx`, then try to free it again.
    Free {
        idx: usize,
        twice: bool,
    },
    /// Free something that is not a live allocation start.
    FreeBogus {
        pfn: u64,
        size: u64,
    },
    /// Reserve `[lo, lo + len)`.
    Reserve {
        lo: u64,
        len: u64,
    },
    /// Look a pfn up.
    Find {
        pfn: u64,
    },
    /// Move to another CPU slot.
    Cpu(usize),
    Flush,
    Trim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..=40, any::<u8>()).prop_map(|(size, limit_sel)| Op::Alloc { size, limit_sel }),
        2 => (1u64..=40, any::<bool>(), any::<u8>())
            .prop_map(|(size, aligned, limit_sel)| Op::AllocRange { size, aligned, limit_sel }),
        6 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(idx, twice)| Op::Free { idx, twice }),
        1 => (0u64..=END + 2, 1u64..=8).prop_map(|(pfn, size)| Op::FreeBogus { pfn, size }),
        1 => (0u64..=END + 8, 1u64..=12).prop_map(|(lo, len)| Op::Reserve { lo, len }),
        2 => (0u64..=END + 2).prop_map(|pfn| Op::Find { pfn }),
        2 => (0usize..3).prop_map(Op::Cpu),
        1 => Just(Op::Flush),
        1 => Just(Op::Trim),
    ]
}

/// A live range in the model: granules actually taken, and which free family it belongs to.
#[derive(Debug, Clone, Copy)]
struct Live {
    granules: u64,
    asked: u64,
    cached_path: bool,
}

fn limit_of(sel: u8) -> u64 {
    match sel % 4 {
        0 => END,
        1 => 255,
        2 => 100 + u64::from(sel),
        _ => 3 + u64::from(sel % 64),
    }
}

fn class_size(size: u64) -> u64 {
    if size < 32 {
        size.next_power_of_two()
    } else {
        size
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// Whether an (optionally aligned) gap of `size` ending at or below `limit` exists in
/// `[1, END]` minus the live ranges.
fn gap_exists(
    live: &BTreeMap<u64, Live>,
    reserved: &[(u64, u64)],
    size: u64,
    limit: u64,
    aligned: bool,
) -> bool {
    let align = if aligned { size.next_power_of_two() } else { 1 };
    let mut cand = 1u64.next_multiple_of(align);
    while cand + size - 1 <= limit.min(END) {
        let taken = live
            .iter()
            .any(|(&p, l)| overlaps((p, l.granules), (cand, size)))
            || reserved.iter().any(|&r| overlaps(r, (cand, size)));
        if !taken {
            return true;
        }
        cand += align;
    }
    false
}

fn check_fresh(
    a: &IovaAllocator,
    live: &BTreeMap<u64, Live>,
    reserved: &[(u64, u64)],
    pfn: u64,
    granules: u64,
    limit: u64,
) {
    for &r in reserved {
        assert!(
            !overlaps(r, (pfn, granules)),
            "{pfn} overlaps reserved {r:?}"
        );
    }
    assert!(
        pfn >= 1 && pfn + granules - 1 <= limit.min(END),
        "{pfn} + {granules} outside [1, {limit}]"
    );
    for (&p, l) in live {
        assert!(
            !overlaps((p, l.granules), (pfn, granules)),
            "{pfn} overlaps live {p}"
        );
    }
    for (p, g) in a.cached_ranges() {
        assert!(
            !overlaps((p, g), (pfn, granules)),
            "{pfn} overlaps cached {p}"
        );
    }
}

fn run(ops: Vec<Op>) {
    let cfg = IovaConfig {
        cpus: 3,
        magazine_size: 3,
        trim_interval: None,
        ..IovaConfig::with_space(1, END)
    };
    let a = IovaAllocator::new(cfg).unwrap();
    let mut live: BTreeMap<u64, Live> = BTreeMap::new();
    // Reserved (start, granules) pieces as asked, clipped to the space.
    let mut reserved: Vec<(u64, u64)> = Vec::new();
    for op in ops {
        match op {
            Op::Alloc { size, limit_sel } => {
                let limit = limit_of(limit_sel);
                let granules = class_size(size);
                match a.alloc(size, limit) {
                    Ok(pfn) => {
                        assert_eq!(pfn % granules.next_power_of_two(), 0, "natural alignment");
                        check_fresh(&a, &live, &reserved, pfn, granules, limit);
                        live.insert(
                            pfn,
                            Live {
                                granules,
                                asked: size,
                                cached_path: true,
                            },
                        );
                    }
                    Err(IovaError::NoSpace { .. }) => {
                        // The failed allocation flushed the caches: the tree is authoritative.
                        assert!(
                            !gap_exists(&live, &reserved, granules, limit, true),
                            "false no space: {size} <= {limit}"
                        );
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::AllocRange {
                size,
                aligned,
                limit_sel,
            } => {
                let limit = limit_of(limit_sel);
                match a.alloc_range(size, limit, aligned) {
                    Ok(pfn) => {
                        if aligned {
                            assert_eq!(pfn % size.next_power_of_two(), 0);
                        }
                        check_fresh(&a, &live, &reserved, pfn, size, limit);
                        live.insert(
                            pfn,
                            Live {
                                granules: size,
                                asked: size,
                                cached_path: false,
                            },
                        );
                    }
                    Err(IovaError::NoSpace { .. }) => {
                        // Uncached: ranges sitting in caches legitimately block it; with the
                        // caches flushed the answer must be exact.
                        a.flush_all();
                        let retry = a.alloc_range(size, limit, aligned);
                        if let Ok(pfn) = retry {
                            check_fresh(&a, &live, &reserved, pfn, size, limit);
                            live.insert(
                                pfn,
                                Live {
                                    granules: size,
                                    asked: size,
                                    cached_path: false,
                                },
                            );
                        } else {
                            assert!(
                                !gap_exists(&live, &reserved, size, limit, aligned),
                                "false no space (range)"
                            );
                        }
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::Free { idx, twice } => {
                if live.is_empty() {
                    continue;
                }
                let (&pfn, &l) = live.iter().nth(idx % live.len()).unwrap();
                let free = |p, s| {
                    if l.cached_path {
                        a.free(p, s)
                    } else {
                        a.free_range(p, s)
                    }
                };
                free(pfn, l.asked).expect("first free succeeds");
                live.remove(&pfn);
                if twice {
                    assert!(free(pfn, l.asked).is_err(), "second free refused");
                }
            }
            Op::FreeBogus { pfn, size } => {
                if live.contains_key(&pfn) {
                    continue;
                }
                assert!(a.free(pfn, size).is_err());
                assert!(a.free_range(pfn, size).is_err());
            }
            Op::Reserve { lo, len } => {
                let hi = lo + len - 1;
                let clash = live
                    .iter()
                    .find(|(&p, l)| overlaps((p, l.granules), (lo, len)));
                match (a.reserve(lo, hi), clash) {
                    (Ok(()), None) => {
                        let (clo, chi) = (lo.max(1), hi.min(END));
                        if clo <= chi {
                            reserved.push((clo, chi - clo + 1));
                        }
                    }
                    (Err(IovaError::ReserveOverlapsAllocation { pfn, .. }), Some((&p, _))) => {
                        assert!(
                            live.contains_key(&pfn),
                            "reported clash {pfn} is live (first: {p})"
                        );
                    }
                    (r, c) => panic!("reserve [{lo}, {hi}]: {r:?}, model clash {c:?}"),
                }
            }
            Op::Find { pfn } => {
                let found = a.find(pfn);
                let held = live
                    .range(..=pfn)
                    .next_back()
                    .filter(|(&p, l)| pfn < p + l.granules);
                let cached = a
                    .cached_ranges()
                    .into_iter()
                    .find(|&(p, g)| p <= pfn && pfn < p + g);
                let is_reserved = reserved.iter().any(|&(r, n)| r <= pfn && pfn < r + n);
                match (found, held, cached) {
                    (Some(r), Some((&p, l)), _) => {
                        assert_eq!(
                            (r.lo, r.hi, r.kind),
                            (p, p + l.granules - 1, RangeKind::Allocated)
                        );
                    }
                    (Some(r), None, Some((p, g))) => {
                        assert_eq!((r.lo, r.hi, r.kind), (p, p + g - 1, RangeKind::Allocated));
                    }
                    (Some(r), None, None) => {
                        assert!(
                            is_reserved && r.kind == RangeKind::Reserved,
                            "find({pfn}) = {r:?}"
                        );
                    }
                    (None, h, c) => assert!(
                        h.is_none() && c.is_none() && !is_reserved,
                        "find({pfn}) missed"
                    ),
                }
            }
            Op::Cpu(c) => dma_sync::cpu::set_current(Some(c)),
            Op::Flush => a.flush_all(),
            Op::Trim => {
                a.trim_once();
            }
        }
    }
    a.flush_all();
    let expect: Vec<(u64, u64)> = live.iter().map(|(&p, l)| (p, l.granules)).collect();
    assert_eq!(
        a.allocated_ranges(),
        expect,
        "after a flush exactly the live ranges remain"
    );
    a.check_invariants().unwrap();
    dma_sync::cpu::set_current(None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    #[cfg_attr(miri, ignore)]
    fn matches_the_reference_model(ops in prop::collection::vec(op(), 1..200)) {
        run(ops);
    }
}

/// The uncached configuration against the same model.
#[test]
#[cfg_attr(miri, ignore)]
fn caches_off_is_the_range_allocator() {
    let cfg = IovaConfig {
        caching: false,
        ..IovaConfig::with_space(1, END)
    };
    let a = IovaAllocator::new(cfg).unwrap();
    let p = a.alloc(3, END).unwrap();
    assert_eq!(p, 508);
    assert!(a.cached_ranges().is_empty());
    assert_eq!(
        a.free(p, 2),
        Err(IovaError::SizeMismatch {
            pfn: 508,
            allocated: 4,
            freed: 2
        })
    );
    a.free(p, 3).unwrap();
    assert_eq!(a.free(p, 3), Err(IovaError::NotAllocated { pfn: 508 }));
    assert!(a.stats().classes.is_empty());
    assert!(a.allocated_ranges().is_empty());
}
