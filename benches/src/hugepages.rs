//! How much of a structure transparent huge pages back: the share of its 4 KiB pages that lie in
//! a 2 MiB huge page, read from the kernel's page flags.
//!
//! A walk over megabytes of tables costs a TLB miss per table on 4 KiB pages and almost none on
//! 2 MiB pages, so two walks over the same bytes compare fairly only in the same state. Linux
//! in the `madvise` THP mode gives a huge page only to an advised range, and only when it
//! finds 2 MiB of contiguous free memory at the fault (or when `khugepaged` collapses the
//! range later): the answer varies from run to run with fragmentation. The walked cases record
//! it with their measurement (see [`crate::harness::Measurement::huge_page_share`]).
//!
//! The flags come from `/proc/self/pagemap` (the frame of each page) and `/proc/kpageflags`
//! (its `THP` bit), which need `CAP_SYS_ADMIN`: without it the kernel hides the frames and the
//! share is unknown (`None`).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes of a base page.
const PAGE: u64 = 4096;
/// Pagemap entry: the page is present.
const PM_PRESENT: u64 = 1 << 63;
/// Pagemap entry: the page frame number (bits 0–54).
const PM_PFN: u64 = (1 << 55) - 1;
/// Page flag: the page is part of a transparent huge page.
const KPF_THP: u64 = 1 << 22;

/// The share (0 to 1) of the distinct 4 KiB pages holding `addrs` that transparent huge pages
/// back; pages not yet present count as not huge. `None` when the flags cannot be read (no
/// `CAP_SYS_ADMIN`, not Linux) or `addrs` is empty.
///
/// ```
/// let v = vec![1u8; 1 << 16];
/// if let Some(s) = dma_bench::hugepages::share([v.as_ptr() as u64]) {
///     assert!((0.0..=1.0).contains(&s));
/// }
/// assert_eq!(dma_bench::hugepages::share([]), None);
/// ```
pub fn share(addrs: impl IntoIterator<Item = u64>) -> Option<f64> {
    let mut pages: Vec<u64> = addrs.into_iter().map(|a| a / PAGE).collect();
    pages.sort_unstable();
    pages.dedup();
    if pages.is_empty() {
        return None;
    }
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let flags = File::open("/proc/kpageflags").ok()?;
    let read = |f: &File, index: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, index.checked_mul(8)?).ok()?;
        Some(u64::from_ne_bytes(b))
    };
    let mut huge = 0usize;
    for &page in &pages {
        let entry = read(&pagemap, page)?;
        if entry & PM_PRESENT == 0 {
            continue;
        }
        let pfn = entry & PM_PFN;
        if pfn == 0 {
            // Frames hidden from an unprivileged reader.
            return None;
        }
        if read(&flags, pfn)? & KPF_THP != 0 {
            huge += 1;
        }
    }
    Some(huge as f64 / pages.len() as f64)
}

/// The address of every 4 KiB page of the `len` bytes from `base` (page-aligned): a region, for
/// [`share`].
pub fn region(base: u64, len: u64) -> impl Iterator<Item = u64> {
    (base..base + len).step_by(PAGE as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_lists_every_page_once() {
        let v: Vec<u64> = region(8192, 3 * 4096).collect();
        assert_eq!(v, [8192, 12288, 16384]);
        assert_eq!(region(0, 0).count(), 0);
    }

    #[test]
    fn pages_never_mapped_are_not_huge() {
        // The second page of the address space is never mapped.
        let s = share([0x1000, 0x1008]);
        assert!(matches!(s, None | Some(0.0)), "{s:?}");
    }
}
