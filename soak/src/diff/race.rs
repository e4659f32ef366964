//! Races: two threads replay operations on overlapping parts of one shared structure, then
//! every outcome must be explained by the reference model.
//!
//! [`pgtable`]:
//! The table (`Config::tiny(3)`: 4 KiB pages, 16 KiB blocks) is set up from the input with
//! *units* — 16 KiB entries holding nothing, a block, or a level-3 table of some pages — and
//! two threads, released together, run short lists of operations on them: unmap a whole unit,
//! map a block over it, map or unmap one of its pages. Operations on different units do not
//! interact, so each unit is checked on its own: some interleaving of the two threads'
//! operations on it, run on [`PgtableModel`], must give exactly the results the threads saw
//! and the leaves the table holds afterwards (a linearizability check). Then conservation:
//! the tables the table counts as linked are exactly those reachable, and unmapping
//! everything leaves only the root. Two unmaps of one unit that both succeed — a table
//! retired twice — have no sequential explanation, so they are reported before the table is
//! dropped (a table that failed the check is leaked, not freed, so a double retire cannot
//! corrupt the heap of the process that reports it).
//!
//! [`iova`]: two threads free overlapping picks of the same allocated IOVA ranges (double
//! frees racing, through the per-CPU caches or the tree) and allocate. Conservation per range
//! (pfn and size class, the only names a free has): held at the start, plus allocations that
//! returned it, minus frees that succeeded, must be 0 or 1 (a double free makes it negative;
//! a second free that releases the other thread's reallocation of the same range is a good
//! free, as it is to the allocator); refused frees are `NotAllocated` (or
//! `SizeMismatch` against a reallocation); the ranges held afterwards are disjoint and, with
//! the caches, exactly what the allocator holds.
//!
//! Each input is replayed for [`ROUNDS`] fresh structures, so a narrow window is hit often.

use super::{decode, Divergence, Tracker};
use arbitrary::Arbitrary;
use dma_model::iova::class_size;
use dma_model::pgtable::PgtableModel;
use io_pgtable::{Config, Descriptor, Error, Gather, PageTable, Prot};
use std::collections::BTreeMap;
use std::sync::Barrier;

/// Fresh tables per input.
pub const ROUNDS: usize = 24;
/// Units raced on (the first level-1 entry's four 16 KiB entries).
const UNITS: u64 = 4;
/// Pages per unit.
const PAGES: u64 = 4;
const PAGE: u64 = 4096;
const UNIT: u64 = PAGES * PAGE;
/// Operations per thread.
const MAX_OPS: usize = 4;

#[derive(Debug, Clone, Copy, Arbitrary)]
enum RaceOp {
    UnmapUnit(u8),
    MapBlock(u8),
    MapPage(u8, u8),
    UnmapPage(u8, u8),
}

/// One operation resolved to its unit and arguments.
#[derive(Debug, Clone, Copy)]
struct Call {
    unit: u64,
    map: bool,
    iova: u64,
    pgsize: u64,
}

impl Call {
    fn new(op: RaceOp) -> Call {
        let unit = |u: u8| u64::from(u) % UNITS;
        let page = |u: u8, p: u8| unit(u) * UNIT + u64::from(p) % PAGES * PAGE;
        let (unit, map, iova, pgsize) = match op {
            RaceOp::UnmapUnit(u) => (unit(u), false, unit(u) * UNIT, UNIT),
            RaceOp::MapBlock(u) => (unit(u), true, unit(u) * UNIT, UNIT),
            RaceOp::MapPage(u, p) => (unit(u), true, page(u, p), PAGE),
            RaceOp::UnmapPage(u, p) => (unit(u), false, page(u, p), PAGE),
        };
        Call {
            unit,
            map,
            iova,
            pgsize,
        }
    }

    fn run_real(&self, pt: &PageTable) -> Result<usize, Error> {
        if self.map {
            pt.map_pages(self.iova, self.iova, self.pgsize, 1, Prot::READ)
        } else {
            let mut gather = Gather::new();
            let r = pt.unmap_pages(self.iova, self.pgsize, 1, &mut gather);
            gather.sync(pt.tlb());
            r
        }
    }

    fn run_model(&self, m: &mut PgtableModel) -> Result<usize, Error> {
        if self.map {
            m.map_pages(self.iova, self.iova, self.pgsize, 1, Prot::READ)
        } else {
            m.unmap_pages(self.iova, self.pgsize, 1)
        }
    }
}

/// The scenario one input describes.
#[derive(Debug)]
struct Scenario {
    /// Per unit: 0 empty, 1 a block, else a bit mask of mapped pages (a level-3 table).
    setup: [u8; UNITS as usize],
    threads: [Vec<Call>; 2],
}

fn scenario(data: &[u8]) -> Scenario {
    let mut setup = [0u8; UNITS as usize];
    for (s, b) in setup.iter_mut().zip(data) {
        *s = b % 18;
    }
    let ops: Vec<RaceOp> = decode(data.get(UNITS as usize..).unwrap_or_default());
    // Both threads on all units: overlapping entries are the point.
    let calls = |odd: usize| {
        ops.iter()
            .skip(odd)
            .step_by(2)
            .take(MAX_OPS)
            .map(|&op| Call::new(op))
            .collect()
    };
    Scenario {
        setup,
        threads: [calls(0), calls(1)],
    }
}

/// Map the setup into the real table and the model.
fn set_up(pt: &PageTable, model: &mut PgtableModel, setup: &[u8]) -> Result<(), String> {
    for (u, &s) in (0..UNITS).zip(setup) {
        let base = u * UNIT;
        let calls: Vec<(u64, u64)> = match s {
            0 => vec![],
            1 => vec![(base, UNIT)],
            mask => (0..PAGES)
                .filter(|p| mask >> p & 1 != 0)
                .map(|p| (base + p * PAGE, PAGE))
                .collect(),
        };
        for (iova, size) in calls {
            let real = pt.map_pages(iova, iova, size, 1, Prot::READ);
            let want = model.map_pages(iova, iova, size, 1, Prot::READ);
            if real != want {
                return Err(format!(
                    "setup map of {iova:#x}: real {real:?}, model {want:?}"
                ));
            }
        }
    }
    Ok(())
}

/// The leaves inside `unit`: (iova, size).
fn real_leaves(pt: &PageTable, unit: u64) -> Vec<(u64, u64)> {
    let g = *pt.geometry();
    pt.dump()
        .entries
        .iter()
        .filter(|e| matches!(e.desc, Descriptor::Leaf { .. }))
        .filter(|e| e.iova / UNIT == unit)
        .map(|e| (e.iova, g.block_size(e.level)))
        .collect()
}

fn model_leaves(m: &PgtableModel, unit: u64) -> Vec<(u64, u64)> {
    m.leaves
        .iter()
        .filter(|(&b, _)| b / UNIT == unit)
        .map(|(&b, l)| (b, l.size))
        .collect()
}

/// Whether some interleaving of `a` and `b` (calls with the results seen), run on `model`,
/// gives those results and ends with `leaves`.
fn explained(
    model: &PgtableModel,
    a: &[(Call, Result<usize, Error>)],
    b: &[(Call, Result<usize, Error>)],
    unit: u64,
    leaves: &[(u64, u64)],
    installed: [bool; 2],
) -> bool {
    if a.is_empty() && b.is_empty() {
        return model_leaves(model, unit) == leaves;
    }
    let step = |first: &[(Call, Result<usize, Error>)], rest_a: bool| {
        let Some(((call, seen), tail)) = first.split_first() else {
            return false;
        };
        let mut m = model.clone();
        if call.run_model(&mut m) != *seen {
            return false;
        }
        if rest_a {
            explained(&m, tail, b, unit, leaves, [false, installed[1]])
        } else {
            explained(&m, a, tail, unit, leaves, [installed[0], false])
        }
    };
    // A map that found its table taken restarts from the root: the tables of its first
    // attempt may have been seen by the other thread before the call's own outcome.
    let tables_first = |first: &[(Call, Result<usize, Error>)], t: usize| {
        let Some((call, _)) = first.first() else {
            return false;
        };
        if !call.map || installed[t] {
            return false;
        }
        let mut m = model.clone();
        m.install_tables(call.iova, call.pgsize);
        let mut now = installed;
        now[t] = true;
        explained(&m, a, b, unit, leaves, now)
    };
    step(a, true) || step(b, false) || tables_first(a, 0) || tables_first(b, 1)
}

/// One round: a fresh table, the setup, the race, the checks.
fn round(t: &Tracker, s: &Scenario) -> Result<(), Divergence> {
    let pt = PageTable::new(Config::tiny(3)).expect("tiny geometry");
    let mut model = PgtableModel::new(*pt.geometry());
    set_up(&pt, &mut model, &s.setup).map_err(|e| t.fail(e))?;
    let barrier = Barrier::new(2);
    let results: Vec<Vec<Result<usize, Error>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = s
            .threads
            .iter()
            .map(|calls| {
                let (pt, barrier) = (&pt, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    calls.iter().map(|c| c.run_real(pt)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("racing thread"))
            .collect()
    });
    let verdict = check(t, &pt, &model, s, &results);
    if verdict.is_err() {
        // A table the check found broken may hold a table retired twice: leak it rather
        // than free it twice.
        std::mem::forget(pt);
    }
    verdict
}

fn check(
    t: &Tracker,
    pt: &PageTable,
    model: &PgtableModel,
    s: &Scenario,
    results: &[Vec<Result<usize, Error>>],
) -> Result<(), Divergence> {
    let seen: Vec<Vec<(Call, Result<usize, Error>)>> = s
        .threads
        .iter()
        .zip(results)
        .map(|(c, r)| c.iter().copied().zip(r.iter().copied()).collect())
        .collect();
    for unit in 0..UNITS {
        let on = |th: &[(Call, Result<usize, Error>)]| -> Vec<(Call, Result<usize, Error>)> {
            th.iter().filter(|(c, _)| c.unit == unit).copied().collect()
        };
        let (a, b) = (on(&seen[0]), on(&seen[1]));
        let leaves = real_leaves(pt, unit);
        t.check(explained(model, &a, &b, unit, &leaves, [false; 2]), || {
            format!(
                "unit {unit:#x}: no sequential order explains the race (setup {:?}; thread A {a:?}; thread B {b:?}; leaves after {leaves:?})",
                s.setup[unit as usize]
            )
        })?;
    }
    let stats = pt.stats();
    t.same(
        "tables linked = tables reachable after the race",
        stats.linked(),
        pt.dump().tables as u64,
    )?;
    for unit in 0..UNITS {
        let mut gather = Gather::new();
        let _ = pt.unmap_pages(unit * UNIT, UNIT, 1, &mut gather);
        gather.sync(pt.tlb());
    }
    let (stats, dump) = (pt.stats(), pt.dump());
    t.same(
        "tables linked = tables reachable after unmapping every unit",
        stats.linked(),
        dump.tables as u64,
    )?;
    t.check(dump.leaves().next().is_none() && dump.tables <= 2, || {
        format!("left after unmapping every unit: {dump}")
    })?;
    t.check(stats.freed <= stats.discarded + stats.retired, || {
        format!("freed more tables than were released: {stats:?}")
    })
}

/// Run one input: its scenario for [`ROUNDS`] fresh tables.
pub fn pgtable(data: &[u8]) -> Result<(), Divergence> {
    pgtable_rounds(data, ROUNDS)
}

/// Run one input's scenario for `rounds` fresh tables.
pub fn pgtable_rounds(data: &[u8], rounds: usize) -> Result<(), Divergence> {
    let s = scenario(data);
    let mut t = Tracker::default();
    t.note(|| format!("{s:?}"));
    for r in 0..rounds {
        t.enter(r, &"round");
        round(&t, &s)?;
    }
    Ok(())
}

/// IOVA ranges set up before each iova race.
const RANGES: usize = 8;

/// One thread's part of an iova race: free the `n`-th range (as allocated), or allocate.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum IovaOp {
    Free(u8),
    Alloc(u8),
}

/// Run one input's iova race for [`ROUNDS`] fresh allocators.
pub fn iova(data: &[u8]) -> Result<(), Divergence> {
    use iova_cache::{IovaAllocator, IovaConfig, IovaError};
    let caching = data.first().map_or(true, |b| b & 1 == 0);
    let ops: Vec<IovaOp> = decode(data.get(1..).unwrap_or_default());
    let lists: [Vec<IovaOp>; 2] = [0, 1].map(|odd| {
        ops.iter()
            .skip(odd)
            .step_by(2)
            .take(MAX_OPS)
            .copied()
            .collect()
    });
    let mut t = Tracker::default();
    t.note(|| format!("caching {caching}, {lists:?}"));
    for r in 0..ROUNDS {
        t.enter(r, &"round");
        let cfg = IovaConfig {
            caching,
            cpus: 2,
            magazine_size: 2,
            trim_interval: None,
            checked_frees: true,
            ..IovaConfig::with_space(1, 255)
        };
        let a = IovaAllocator::new(cfg).expect("valid configuration");
        let held: Vec<(u64, u64)> = (0..RANGES as u64)
            .map(|i| {
                let size = 1 + i % 3;
                (a.alloc(size, 255).expect("room for the setup"), size)
            })
            .collect();
        let barrier = Barrier::new(2);
        let results: Vec<Vec<(IovaOp, Result<u64, IovaError>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = lists
                .iter()
                .enumerate()
                .map(|(cpu, ops)| {
                    let (a, held, barrier) = (&a, &held, &barrier);
                    scope.spawn(move || {
                        dma_sync::cpu::set_current(Some(cpu));
                        barrier.wait();
                        let out = ops
                            .iter()
                            .map(|&op| match op {
                                IovaOp::Free(n) => {
                                    let (pfn, size) = held[usize::from(n) % RANGES];
                                    (op, a.free(pfn, size).map(|()| pfn))
                                }
                                IovaOp::Alloc(n) => (op, a.alloc(1 + u64::from(n % 3), 255)),
                            })
                            .collect();
                        dma_sync::cpu::set_current(None);
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("racing thread"))
                .collect()
        });
        // Conservation per range (pfn and size class): held at the start, plus allocations
        // that returned it, minus frees that succeeded, is 0 or 1 (a double free makes it
        // negative), and the first free of a held range succeeds. A free names a range by pfn
        // and size only, so a second free of a setup range may legitimately release the other
        // thread's fresh allocation of that same range: counting per range accepts exactly that.
        let mut count: BTreeMap<(u64, u64), i64> =
            held.iter().map(|&(p, s)| ((p, class_size(s)), 1)).collect();
        for &(op, r) in results.iter().flatten() {
            match (op, r) {
                (IovaOp::Alloc(n), Ok(p)) => {
                    *count
                        .entry((p, class_size(1 + u64::from(n % 3))))
                        .or_default() += 1;
                }
                (IovaOp::Free(n), Ok(p)) => {
                    let size = class_size(held[usize::from(n) % RANGES].1);
                    *count.entry((p, size)).or_default() -= 1;
                }
                (IovaOp::Free(n), Err(e)) => {
                    let pfn = held[usize::from(n) % RANGES].0;
                    t.check(
                        matches!(e, IovaError::NotAllocated { pfn: q } | IovaError::SizeMismatch { pfn: q, .. } if q == pfn),
                        || format!("a refused free of {pfn:#x} gave {e:?}"),
                    )?;
                }
                (IovaOp::Alloc(_), Err(e)) => {
                    return Err(t.fail(format!("allocation in a 255-pfn space failed: {e:?}")))
                }
            }
        }
        let bad = count.iter().find(|(_, &c)| !(0..=1).contains(&c));
        t.check(bad.is_none(), || {
            format!("range held {bad:?} times after the race (freed more often than handed out?): {results:?}")
        })?;
        let freed_first = held.iter().enumerate().all(|(i, &(pfn, _))| {
            let tried = results
                .iter()
                .flatten()
                .any(|(op, _)| matches!(op, IovaOp::Free(n) if usize::from(*n) % RANGES == i));
            !tried
                || results
                    .iter()
                    .flatten()
                    .any(|&(op, r)| matches!(op, IovaOp::Free(_)) && r == Ok(pfn))
        });
        t.check(freed_first, || {
            format!("a held range was never freed by any of its frees: {results:?}")
        })?;
        let still: Vec<(u64, u64)> = count
            .iter()
            .filter(|(_, &c)| c == 1)
            .map(|(&range, _)| range)
            .collect();
        let overlap = still.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0);
        t.check(overlap.is_none(), || {
            format!("ranges held after the race overlap: {overlap:?} (setup {held:?}; {results:?})")
        })?;
        let mut expected = still;
        expected.extend(a.cached_ranges());
        expected.sort_unstable();
        let mut real = a.allocated_ranges();
        real.sort_unstable();
        t.same(
            "allocated = still held + handed out + cached",
            real,
            expected,
        )?;
        t.check(a.check_invariants().is_ok(), || {
            format!("{:?}", a.check_invariants())
        })?;
    }
    Ok(())
}
