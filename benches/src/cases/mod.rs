//! The cases of each component. Every component module offers `cases(opts)`, returning the
//! cases to run and what was left out (with the reason).

pub mod alloc;
pub mod floor;
pub mod iommu;
pub mod pgtable;
pub mod swiotlb;

use crate::suite::{Case, Omitted, Options};

/// Every selected case of the suite, in table order, and what was left out.
pub fn all(opts: &Options) -> (Vec<Case>, Vec<Omitted>) {
    let mut cases = Vec::new();
    let mut omitted = Vec::new();
    let mut add = |(c, o): (Vec<Case>, Vec<Omitted>)| {
        cases.extend(c);
        omitted.extend(o);
    };
    add(floor::cases(opts));
    add(alloc::cases(opts));
    add(pgtable::cases(opts));
    add(swiotlb::cases(opts));
    add(iommu::cases(opts));
    (cases, omitted)
}

/// `n` bytes in the units people say them in ("512 B", "4 KiB", "2 MiB").
///
/// ```
/// assert_eq!(dma_bench::cases::human_bytes(65536), "64 KiB");
/// assert_eq!(dma_bench::cases::human_bytes(512), "512 B");
/// ```
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// A count the way the sweeps name it ("1k", "10k", "1M", "1500").
///
/// ```
/// assert_eq!(dma_bench::cases::human_count(1_000_000), "1M");
/// assert_eq!(dma_bench::cases::human_count(10_000), "10k");
/// assert_eq!(dma_bench::cases::human_count(1_500), "1500");
/// ```
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}
