//! iova-cache against a map of user-held ranges and a list of reservations.
//!
//! The allocator is free to choose addresses (a cache pop, the top-down tree), so the model
//! checks what every choice must satisfy rather than the choice itself: inside the space and
//! below the limit, naturally aligned, disjoint from every user-held, reserved and cached
//! range; a `NoSpace` only when no aligned gap exists (ignoring the caches when the call may
//! flush them). Frees succeed exactly once, with the right size and through the right path;
//! everything else is the typed error the contract names. After every step the range
//! allocator's allocated set is exactly user-held plus cached, and the statistics agree.

use super::{decode, Divergence, Tracker};
use arbitrary::Arbitrary;
use dma_iommu::DevicePolicy;
use dma_model::iova::{class_size, Held, IovaModel, MAX_CACHED};
use iova_cache::{IovaAllocator, IovaConfig, IovaError, RangeKind};

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Size {
    Small(u8),
    Raw(u64),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Pfn {
    In(u16),
    Raw(u64),
}

/// Which pfn a free names.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Pick {
    /// The n-th user-held range.
    Held(u8),
    /// The n-th cached range (a double free through the cache).
    Cached(u8),
    /// The n-th range freed earlier (a double free).
    Freed(u8),
    Raw(u64),
}

/// The size a free passes.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum FreeSize {
    AsAllocated,
    AsAsked,
    Other(u8),
}

#[derive(Debug, Arbitrary)]
enum Op {
    Alloc {
        size: Size,
        limit: Pfn,
    },
    AllocNoFlush {
        size: Size,
        limit: Pfn,
    },
    AllocRange {
        size: Size,
        limit: Pfn,
        aligned: bool,
    },
    AllocDma {
        size: Size,
        limit: Pfn,
        device: bool,
    },
    Free {
        pick: Pick,
        size: FreeSize,
    },
    FreeRange {
        pick: Pick,
        size: FreeSize,
    },
    Reserve {
        lo: Pfn,
        hi: Pfn,
    },
    Find {
        pfn: Pfn,
    },
    FlushAll,
    FlushCpu(u8),
    Trim,
    SetCpu(u8),
    /// Make the next operation's first allocation at one of the crate's fault sites fail
    /// (`fault-injection` feature; otherwise nothing).
    Fail(u8),
}

/// The shared reference model, and whether an injected allocation failure is armed
/// (`OutOfMemory` is then a valid answer that must change nothing; every fallback must lose
/// nothing, which the accounting checks).
struct Model {
    m: IovaModel,
    oom_allowed: bool,
}

impl std::ops::Deref for Model {
    type Target = IovaModel;
    fn deref(&self) -> &IovaModel {
        &self.m
    }
}

impl std::ops::DerefMut for Model {
    fn deref_mut(&mut self) -> &mut IovaModel {
        &mut self.m
    }
}

/// Run one input. The first byte picks the configuration.
pub fn run(data: &[u8]) -> Result<(), Divergence> {
    let sel = data.first().copied().unwrap_or(0);
    let ops: Vec<Op> = decode(data.get(1..).unwrap_or_default());
    // 4 MiB granules put the 32-bit boundary at pfn 1024, inside a 4096-pfn space.
    let cfg = IovaConfig {
        granule_shift: 22,
        caching: sel & 0x80 == 0,
        cpus: 2,
        magazine_size: 1 + usize::from(sel & 3),
        trim_interval: None,
        checked_frees: true,
        ..IovaConfig::with_space(1 + u64::from(sel >> 2 & 0x1f), 4095)
    };
    dma_sync::cpu::set_current(Some(0));
    let result = run_ops(cfg, &ops);
    dma_sync::cpu::set_current(None);
    result
}

fn run_ops(cfg: IovaConfig, ops: &[Op]) -> Result<(), Divergence> {
    let a = IovaAllocator::new(cfg.clone()).expect("valid configuration");
    let dma32 = a.dma_32bit_pfn();
    let devices = [DevicePolicy::new(true), DevicePolicy::new(true)];
    let mut m = Model {
        m: IovaModel::new(cfg.clone()),
        oom_allowed: false,
    };
    let size_of = |s: Size| match s {
        Size::Small(n) => u64::from(n) % (MAX_CACHED + 16),
        Size::Raw(r) => r,
    };
    let pfn_of = |p: Pfn| match p {
        Pfn::In(n) => u64::from(n) % (cfg.end_pfn + 64),
        Pfn::Raw(r) => r,
    };
    let mut t = Tracker::default();
    let mut armed = None;
    for (step, op) in ops.iter().enumerate() {
        t.enter(step, op);
        if let Op::Fail(site) = *op {
            armed = cfg!(feature = "fault-injection").then_some(site);
            continue;
        }
        let cached = a.cached_ranges();
        let apply = |m: &mut Model| -> Result<(), Divergence> {
            match *op {
                Op::Alloc { size, limit } | Op::AllocNoFlush { size, limit } => {
                    let (size, limit) = (size_of(size), pfn_of(limit));
                    let flush = matches!(op, Op::Alloc { .. });
                    let real = if flush {
                        a.alloc(size, limit)
                    } else {
                        a.alloc_no_flush(size, limit)
                    };
                    fast_result(&t, m, real, size, limit, if flush { &[] } else { &cached })?;
                }
                Op::AllocDma {
                    size,
                    limit,
                    device,
                } => {
                    let (size, limit) = (size_of(size), pfn_of(limit));
                    let dev = &devices[usize::from(device)];
                    let was_32 = dev.tries_32bit_first();
                    let real = dev.alloc_iova(&a, size, limit);
                    fast_result(&t, m, real, size, limit, &[])?;
                    if let Ok(pfn) = real {
                        t.check(pfn < dma32 || !was_32 || !dev.tries_32bit_first(), || {
                            format!(
                            "pfn {pfn:#x} above 4 GiB while the device still tries 32-bit first"
                        )
                        })?;
                    }
                    t.check(was_32 || !dev.tries_32bit_first(), || {
                        "the 32-bit-first flag came back".into()
                    })?;
                }
                Op::AllocRange {
                    size,
                    limit,
                    aligned,
                } => {
                    let (size, limit) = (size_of(size), pfn_of(limit));
                    let real = a.alloc_range(size, limit, aligned);
                    let align = if aligned {
                        size.checked_next_power_of_two().unwrap_or(u64::MAX)
                    } else {
                        1
                    };
                    match real {
                        Err(IovaError::OutOfMemory { .. }) if m.oom_allowed => {}
                        Ok(pfn) => m
                            .admit(
                                pfn,
                                Held {
                                    size,
                                    asked: size,
                                    fast: false,
                                },
                                align,
                                limit,
                            )
                            .map_err(|e| t.fail(e))?,
                        Err(IovaError::NoSpace { size: s, limit: l }) => {
                            t.same("NoSpace", (s, l), (size, limit.min(cfg.end_pfn)))?;
                            t.check(!m.fits(size, align, limit, &cached), || {
                                "false NoSpace".into()
                            })?;
                        }
                        Err(e) => {
                            t.same("alloc_range error", Err(e), m.check_request(size, limit))?
                        }
                    }
                }
                Op::Free { pick, size } | Op::FreeRange { pick, size } => {
                    let via_range = matches!(op, Op::FreeRange { .. });
                    let (pfn, held) = pick_pfn(m, &cached, pick);
                    let size = match size {
                        FreeSize::AsAllocated => held.map_or(1, |h| h.size),
                        FreeSize::AsAsked => held.map_or(1, |h| h.asked),
                        FreeSize::Other(n) => u64::from(n % 40),
                    };
                    let (real, expected) = if via_range {
                        (a.free_range(pfn, size), m.expect_free(pfn, size, false))
                    } else if size == 0 {
                        (a.free(pfn, size), Err(IovaError::ZeroSize))
                    } else {
                        let c = class_size(size);
                        (
                            a.free(pfn, size),
                            m.expect_free(pfn, c, cfg.caching && c <= MAX_CACHED),
                        )
                    };
                    t.same("free", real, expected)?;
                    if real.is_ok() {
                        m.free(pfn);
                    }
                }
                Op::Reserve { lo, hi } => {
                    let (lo, hi) = (pfn_of(lo), pfn_of(hi));
                    let real = a.reserve(lo, hi);
                    // With an injected failure the reservation's bookkeeping may not be
                    // allocated: nothing changed.
                    let expected =
                        if m.oom_allowed && matches!(real, Err(IovaError::OutOfMemory { .. })) {
                            real
                        } else {
                            m.reserve(lo, hi)
                        };
                    t.same("reserve", real, expected)?;
                    t.check(a.cached_ranges().is_empty(), || {
                        "reserve left cached ranges".into()
                    })?;
                }
                Op::Find { pfn } => {
                    let pfn = pfn_of(pfn);
                    let real = a.find(pfn);
                    if let Some((p, h)) = m.held_at(pfn) {
                        t.same(
                            "find (held)",
                            real.map(|r| (r.lo, r.hi, r.kind)),
                            Some((p, p + h.size - 1, RangeKind::Allocated)),
                        )?;
                    } else if m.reserved_at(pfn).is_some() {
                        t.check(
                            real.is_some_and(|r| {
                                r.kind == RangeKind::Reserved && r.lo <= pfn && pfn <= r.hi
                            }),
                            || format!("find {pfn:#x} in a reservation: {real:?}"),
                        )?;
                    } else {
                        let in_cache = cached.iter().find(|&&(p, s)| p <= pfn && pfn < p + s);
                        let expected = in_cache.map(|&(p, s)| (p, p + s - 1, RangeKind::Allocated));
                        t.same(
                            "find (free or cached)",
                            real.map(|r| (r.lo, r.hi, r.kind)),
                            expected,
                        )?;
                    }
                }
                Op::FlushAll => {
                    a.flush_all();
                    t.check(a.cached_ranges().is_empty(), || {
                        "flush_all left cached ranges".into()
                    })?;
                }
                Op::FlushCpu(c) => a.flush_cpu(usize::from(c % 3)),
                Op::Trim => {
                    a.trim_once();
                }
                Op::SetCpu(c) => dma_sync::cpu::set_current(Some(usize::from(c % 3))),
                Op::Fail(_) => {}
            }
            Ok(())
        };
        match armed.take() {
            Some(site) => fail_next_alloc(site, &mut m, apply)?,
            None => apply(&mut m)?,
        }
        check_accounting(&t, &a, &m)?;
    }
    t.finish();
    // Give everything back through the path it came from; then nothing may stay allocated.
    for (pfn, h) in std::mem::take(&mut m.held) {
        let r = if h.fast {
            a.free(pfn, h.asked)
        } else {
            a.free_range(pfn, h.size)
        };
        t.same("final free", r, Ok(()))?;
    }
    a.flush_all();
    t.same(
        "ranges left after freeing everything",
        a.allocated_ranges(),
        vec![],
    )?;
    let s = a.stats().range;
    t.same("granules allocated at the end", s.allocated_granules, 0)?;
    t.same(
        "free + reserved granules",
        s.free_granules + s.reserved_granules,
        cfg.space(),
    )?;
    t.check(a.check_invariants().is_ok(), || {
        format!("{:?}", a.check_invariants())
    })
}

/// Run `apply` with the next allocation at fault site `site % 5` failing.
#[cfg(feature = "fault-injection")]
fn fail_next_alloc(
    site: u8,
    m: &mut Model,
    apply: impl FnOnce(&mut Model) -> Result<(), Divergence>,
) -> Result<(), Divergence> {
    use iova_cache::faults::{CHUNK_ALLOC, DEPOT_GROW, MAGAZINE_ALLOC, OWNER_RECORD, TREE_NODE};
    let sites = [
        &MAGAZINE_ALLOC,
        &DEPOT_GROW,
        &TREE_NODE,
        &OWNER_RECORD,
        &CHUNK_ALLOC,
    ];
    let site = sites[usize::from(site) % sites.len()];
    m.oom_allowed = true;
    let (r, _) = dma_sync::fault::armed(site, 1, || apply(&mut *m));
    m.oom_allowed = false;
    r
}

#[cfg(not(feature = "fault-injection"))]
fn fail_next_alloc(
    _: u8,
    m: &mut Model,
    apply: impl FnOnce(&mut Model) -> Result<(), Divergence>,
) -> Result<(), Divergence> {
    apply(m)
}

fn fast_result(
    t: &Tracker,
    m: &mut Model,
    real: Result<u64, IovaError>,
    size: u64,
    limit: u64,
    cached: &[(u64, u64)],
) -> Result<(), Divergence> {
    let c = class_size(size);
    let align = c.checked_next_power_of_two().unwrap_or(u64::MAX);
    match real {
        Err(IovaError::OutOfMemory { .. }) if m.oom_allowed => Ok(()),
        Ok(pfn) => m
            .admit(
                pfn,
                Held {
                    size: c,
                    asked: size,
                    fast: true,
                },
                align,
                limit,
            )
            .map_err(|e| t.fail(e)),
        Err(IovaError::NoSpace { size: s, .. }) => {
            t.same("NoSpace size", s, c)?;
            t.check(!m.fits(c, align, limit, cached), || {
                format!("false NoSpace for {c} granules below {limit:#x}")
            })
        }
        Err(e) => t.same("alloc error", Err(e), m.check_request(size, limit)),
    }
}

fn pick_pfn(m: &Model, cached: &[(u64, u64)], pick: Pick) -> (u64, Option<Held>) {
    let nth = |n: u8, len: usize| usize::from(n) % len.max(1);
    match pick {
        Pick::Held(n) if !m.held.is_empty() => {
            let (&p, &h) = m.held.iter().nth(nth(n, m.held.len())).expect("in range");
            (p, Some(h))
        }
        Pick::Cached(n) if !cached.is_empty() => {
            let (p, s) = cached[nth(n, cached.len())];
            (
                p,
                Some(Held {
                    size: s,
                    asked: s,
                    fast: true,
                }),
            )
        }
        Pick::Freed(n) if !m.freed.is_empty() => {
            let (p, h) = m.freed[nth(n, m.freed.len())];
            (p, Some(h))
        }
        Pick::Raw(r) => (r, None),
        _ => (m.cfg.start_pfn, None),
    }
}

/// The range allocator holds exactly the user-held plus the cached ranges.
fn check_accounting(t: &Tracker, a: &IovaAllocator, m: &Model) -> Result<(), Divergence> {
    let cached = a.cached_ranges();
    let mut expected: Vec<(u64, u64)> = m.held.iter().map(|(&p, h)| (p, h.size)).collect();
    expected.extend(cached.iter().copied());
    expected.sort_unstable();
    let mut real = a.allocated_ranges();
    real.sort_unstable();
    t.same("allocated = held + cached", real, expected)?;
    let stats = a.stats();
    t.same(
        "cached granules",
        stats.cached_granules(),
        cached.iter().map(|&(_, s)| s).sum::<u64>(),
    )?;
    t.check(a.check_invariants().is_ok(), || {
        format!("{:?}", a.check_invariants())
    })
}
