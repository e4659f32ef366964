//! How much of a structure transparent huge pages back: the share of its 4 KiB pages that lie in
//! a 2 MiB huge page, as the kernel reports it.
//!
//! A walk over megabytes of tables costs a TLB miss per table on 4 KiB pages and almost none on
//! 2 MiB pages, so two walks over the same bytes compare fairly only in the same state. Linux
//! in the `madvise` THP mode gives a huge page only to an advised range, and only when it
//! finds 2 MiB of contiguous free memory at the fault (or when `khugepaged` collapses the
//! range later): the answer varies from run to run with fragmentation. The walked cases record
//! it with their measurement (see [`crate::harness::Measurement::huge_page_share`]).
//!
//! Two sources answer, the first that can:
//!
//! * the `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` (Linux 6.7 and later, no privilege
//!   needed), which reports the ranges of the process's memory mapped by a huge page
//!   (`PAGE_IS_HUGE`: a PMD-mapped transparent huge page, the mapping a TLB entry of 2 MiB
//!   covers), page by page whatever mappings (VMAs) the pages lie in: the answer for a
//!   walked structure whose tables share their mappings with other memory, as the page-table
//!   slab's chunks share the heap's;
//! * on older kernels, the page flags: `/proc/self/pagemap` (the frame of each page) and
//!   `/proc/kpageflags` (its `THP` bit), which need `CAP_SYS_ADMIN`: without it the kernel
//!   hides the frames.
//!
//! Otherwise the share is unknown (`None`).

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
/// back; pages not yet present count as not huge. `None` when neither source can tell (an old
/// kernel without `CAP_SYS_ADMIN`, not Linux) or `addrs` is empty.
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
    let huge = match scan::huge_ranges(
        &pagemap,
        pages[0] * PAGE,
        (pages[pages.len() - 1] + 1) * PAGE,
    ) {
        Some(ranges) => count_in(&pages, &ranges),
        None => from_page_flags(&pagemap, &pages)?,
    };
    Some(huge as f64 / pages.len() as f64)
}

/// How many of `pages` (sorted page numbers) lie in the sorted, disjoint byte `ranges`.
fn count_in(pages: &[u64], ranges: &[(u64, u64)]) -> usize {
    let mut r = ranges.iter().peekable();
    pages
        .iter()
        .filter(|&&p| {
            let a = p * PAGE;
            while r.next_if(|&&(_, end)| end <= a).is_some() {}
            r.peek().is_some_and(|&&(start, _)| start <= a)
        })
        .count()
}

/// How many of `pages` the kernel's page flags call part of a transparent huge page (`None`
/// when the frames are hidden or the flags unreadable).
fn from_page_flags(pagemap: &File, pages: &[u64]) -> Option<usize> {
    let flags = File::open("/proc/kpageflags").ok()?;
    let read = |f: &File, index: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, index.checked_mul(8)?).ok()?;
        Some(u64::from_ne_bytes(b))
    };
    let mut huge = 0usize;
    for &page in pages {
        let entry = read(pagemap, page)?;
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
    Some(huge)
}

/// The `PAGEMAP_SCAN` ioctl (`linux/fs.h`), which the `libc` crate does not declare.
mod scan {
    use std::fs::File;

    /// `struct pm_scan_arg`.
    #[repr(C)]
    #[derive(Default)]
    struct Arg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }

    /// `struct page_region`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Region {
        start: u64,
        end: u64,
        categories: u64,
    }

    /// `PAGE_IS_HUGE`: mapped by a PMD-level (2 MiB) entry.
    const PAGE_IS_HUGE: u64 = 1 << 6;

    /// The byte ranges within `start..end` that huge pages map, sorted and disjoint; `None`
    /// where the kernel has no `PAGEMAP_SCAN` (before 6.7, not Linux).
    pub(super) fn huge_ranges(pagemap: &File, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // _IOWR('f', 16, struct pm_scan_arg)
            const PAGEMAP_SCAN: u64 =
                (3 << 30) | ((std::mem::size_of::<Arg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;
            let mut out = Vec::new();
            let mut buf = [Region::default(); 256];
            let mut from = start;
            while from < end {
                let mut arg = Arg {
                    size: std::mem::size_of::<Arg>() as u64,
                    start: from,
                    end,
                    vec: buf.as_mut_ptr() as u64,
                    vec_len: buf.len() as u64,
                    category_anyof_mask: PAGE_IS_HUGE,
                    return_mask: PAGE_IS_HUGE,
                    ..Arg::default()
                };
                // SAFETY: `arg` is a valid `pm_scan_arg` whose `vec` points at `vec_len`
                // writable `page_region`s that outlive the call; the ioctl only reads the
                // process's page tables.
                let n = unsafe {
                    libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg as *mut Arg)
                };
                if n < 0 {
                    return None;
                }
                out.extend(buf[..n as usize].iter().map(|r| (r.start, r.end)));
                if arg.walk_end <= from {
                    break;
                }
                from = arg.walk_end;
            }
            Some(out)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (pagemap, start, end);
            None
        }
    }
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
    fn pages_are_counted_in_the_ranges_that_hold_them() {
        let ranges = [(0x2000, 0x4000), (0x10000, 0x11000)];
        assert_eq!(count_in(&[0, 2, 3, 4, 0x10, 0x11], &ranges), 3);
        assert_eq!(count_in(&[5], &[]), 0);
    }

    #[test]
    fn pages_never_mapped_are_not_huge() {
        // The second page of the address space is never mapped.
        let s = share([0x1000, 0x1008]);
        assert!(matches!(s, None | Some(0.0)), "{s:?}");
    }
}
