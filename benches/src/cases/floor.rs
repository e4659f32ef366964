//! The floor cases.

use crate::floor::{cas_op, memcpy_op, Chase};
use crate::harness::measure;
use crate::suite::{Case, Component, Omitted, Options, Role};
use std::sync::Arc;

/// Workload name of the uncontended CAS.
pub const CAS: &str = "compare-and-swap";
/// Workload name of the 4-level dependent load chase.
pub const CHASE: &str = "4-level load chase";

/// Workload name of the memcpy floor of `size` bytes.
pub fn memcpy(size: usize) -> String {
    format!("memcpy {}", super::human_bytes(size as u64))
}

/// First page of every translation workload (IOVA 4 GiB).
pub const FIRST_PAGE: u64 = 1 << 20;

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
    v.push(Case::new(f, CHASE, "floor", Role::Floor, move |cfg, t| {
        let chase = Arc::new(Chase::new(FIRST_PAGE, pages));
        measure(cfg, t, |t| chase.op(FIRST_PAGE, pages, t as u64 * 7919))
    }));
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
    }
    (v, Vec::new())
}
