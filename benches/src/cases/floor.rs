//! The floor cases.

use crate::floor::{cas_op, memcpy_op, own_copy_op, Chase, Cycle};
use crate::harness::measure;
use crate::suite::{Case, Component, Omitted, Options, Role};
use std::sync::Arc;

/// Workload name of the uncontended CAS.
pub const CAS: &str = "compare-and-swap";
/// Workload name of the dependent 4-level load chase (latency).
pub const CHASE_DEP: &str = "4-level load chase, dependent";
/// Workload name of the independent 4-level load chase (throughput).
pub const CHASE_INDEP: &str = "4-level load chase, independent";

/// Workload name of the dependent chase over `pages` pages (the scale sweep's floor).
pub fn chase_sweep(pages: u64) -> String {
    format!("dependent chase, {} pages", super::human_count(pages))
}

/// Workload name of the memcpy floor of `size` bytes (glibc's `memcpy`).
pub fn memcpy(size: usize) -> String {
    format!("memcpy {}", super::human_bytes(size as u64))
}

/// Workload name of the copy floor of `size` bytes made by swiotlb-core's own copy routine.
pub fn own_copy(size: usize) -> String {
    format!("swiotlb-core copy {}", super::human_bytes(size as u64))
}

/// The copy floors of `size` bytes a bounce is compared with: the faster of the two counts.
pub fn copies(size: usize) -> Vec<String> {
    vec![memcpy(size), own_copy(size)]
}

/// First page of every translation workload (IOVA 4 GiB).
pub const FIRST_PAGE: u64 = 1 << 20;

/// Seed of the cycle the dependent chase and the dependent translations follow.
pub const CYCLE_SEED: u64 = 0x5eed;

/// The cycle through `pages` pages from [`FIRST_PAGE`] that every dependent workload follows.
pub fn cycle(pages: u64) -> Cycle {
    Cycle::new(FIRST_PAGE, pages, CYCLE_SEED)
}

/// Where thread `t` of a dependent workload over `cycle` starts (spread over the cycle).
pub fn dependent_start(cycle: &Cycle, t: usize) -> u64 {
    cycle.first_page() + (t as u64 * 7919) % cycle.pages()
}

/// A dependent chase case over `pages` pages.
fn dependent(workload: String, pages: u64) -> Case {
    Case::new(
        Component::Floor,
        workload,
        "floor",
        Role::Floor,
        move |cfg, t| {
            let cycle = cycle(pages);
            let chase = Chase::new(&cycle);
            let mut m = measure(cfg, t, |t| chase.dependent_op(dependent_start(&cycle, t)));
            m.huge_page_share = chase.huge_page_share();
            m
        },
    )
}

/// The floor cases selected by `opts`.
pub fn cases(opts: &Options) -> (Vec<Case>, Vec<Omitted>) {
    if !opts.has(Component::Floor) {
        return (Vec::new(), Vec::new());
    }
    let f = Component::Floor;
    let mut v = vec![Case::new(f, CAS, "floor", Role::Floor, |cfg, t| {
        measure(cfg, t, |_| cas_op())
    })];
    let pages = opts.translate_pages;
    v.push(dependent(CHASE_DEP.into(), pages));
    v.push(Case::new(
        f,
        CHASE_INDEP,
        "floor",
        Role::Floor,
        move |cfg, t| {
            let chase = Arc::new(Chase::new(&cycle(pages)));
            measure(cfg, t, |t| {
                chase.independent_op(FIRST_PAGE, pages, t as u64 * 7919)
            })
        },
    ));
    for &n in &opts.sweep {
        v.push(dependent(chase_sweep(n), n).up_to(1));
    }
    // The bounce sizes need their memcpy floor too.
    let mut sizes = opts.copy_sizes.clone();
    if opts.has(Component::Swiotlb) {
        sizes.extend(&opts.bounce_sizes);
    }
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        v.push(Case::new(
            f,
            memcpy(size),
            "floor",
            Role::Floor,
            move |cfg, t| measure(cfg, t, |_| memcpy_op(size)),
        ));
        v.push(Case::new(
            f,
            own_copy(size),
            "floor",
            Role::Floor,
            move |cfg, t| measure(cfg, t, |_| own_copy_op(size)),
        ));
    }
    (v, Vec::new())
}
