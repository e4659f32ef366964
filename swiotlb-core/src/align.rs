//! The alignment rules: what is searched for, and which slot addresses qualify.
//!
//! Inputs are the device's `min_align_mask` (offset bits of the original address the bounce
//! address must keep), the caller's `alloc_align_mask` (alignment of the allocation start) and
//! the device's segment boundary mask (no run crosses a `mask + 1` boundary). All checks use the
//! slot's bounce (DMA) address.

use crate::error::Error;
use crate::{IO_TLB_SHIFT, IO_TLB_SIZE, PAGE_SIZE};

/// A search request derived from one map or alloc call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Original address, if any (`None` for `alloc`): enables the `mmask` match.
    pub orig: Option<u64>,
    /// Bytes the caller maps.
    pub mapping_size: usize,
    /// Bytes searched for (mapping plus reproduced offset, rounded to the allocation alignment).
    pub size: usize,
    /// Slots searched for.
    pub nslots: usize,
    /// The allocation start must have these address bits clear.
    pub amask: u64,
    /// These address bits must equal the original's.
    pub mmask: u64,
    /// Step between aligned candidates, in slots.
    pub stride: usize,
    /// Whole slots of the original's offset, skipped before the mapping starts.
    pub pad_slots: usize,
    /// In-slot offset of the mapping start.
    pub in_off: usize,
    /// Device segment boundary mask.
    pub boundary_mask: u64,
}

/// Device-side constraints of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Masks {
    pub min_align: u64,
    pub alloc_align: u64,
    pub boundary: u64,
}

/// Whether `mask` is of the form 2^k − 1.
pub(crate) fn is_low_mask(mask: u64) -> bool {
    mask & mask.wrapping_add(1) == 0
}

/// Derive the search request. `round_to_align` rounds the searched size up to the allocation
/// alignment (map: the caller, e.g. an IOMMU, may expose whole aligned units to the device);
/// `alloc` only aligns the start. `max_align` bounds `alloc_align`; `seg` is the segment size
/// in slots, the longest run.
///
/// A simple request (the common streaming map, and an IOMMU's bounce of whole granules) takes
/// `simple`, which computes the same plan in a few instructions; anything else, and every
/// request that is refused, takes the general derivation.
#[inline]
pub(crate) fn plan(
    orig: Option<u64>,
    mapping_size: usize,
    m: Masks,
    round_to_align: bool,
    max_align: u64,
    seg: usize,
) -> Result<Plan, Error> {
    match simple(orig, mapping_size, m, round_to_align, seg) {
        Some(plan) if m.alloc_align <= max_align => Ok(plan),
        _ => general(orig, mapping_size, m, round_to_align, max_align, seg),
    }
}

/// The plan of a simple request, or `None` for any other (which `general` derives). Simple:
/// no minimum-alignment mask (no offset to reproduce), no segment boundary, an allocation
/// alignment of at most a page, and 1 byte to one segment (`seg` slots) once rounded. The map
/// fast path takes it directly; `plan` starts with it, so both give the same plan for the same
/// request (a test compares it with `general` at every size and alignment).
#[inline(always)]
pub(crate) fn simple(
    orig: Option<u64>,
    mapping_size: usize,
    m: Masks,
    round_to_align: bool,
    seg: usize,
) -> Option<Plan> {
    let longest = seg * IO_TLB_SIZE;
    let unbounded = m.min_align == 0 && m.boundary == u64::MAX;
    if !unbounded || !(1..=longest).contains(&mapping_size) {
        return None;
    }
    let a = m.alloc_align;
    if a == 0 {
        return Some(unconstrained(orig, mapping_size));
    }
    if a >= PAGE_SIZE as u64 || !is_low_mask(a) {
        return None;
    }
    // At most a segment plus a page: no overflow.
    let size = if round_to_align {
        (mapping_size + a as usize) & !(a as usize)
    } else {
        mapping_size
    };
    if size > longest {
        return None;
    }
    let amask = a | (IO_TLB_SIZE as u64 - 1);
    Some(Plan {
        orig,
        mapping_size,
        size,
        nslots: size.div_ceil(IO_TLB_SIZE),
        amask,
        mmask: 0,
        stride: (amask >> IO_TLB_SHIFT) as usize + 1,
        pad_slots: 0,
        in_off: 0,
        boundary_mask: u64::MAX,
    })
}

/// The plan of a request without masks of 1 byte to one segment: no offset to reproduce,
/// nothing to round, and only the legacy page alignment of a mapping of a page or more.
#[inline]
fn unconstrained(orig: Option<u64>, mapping_size: usize) -> Plan {
    let align = if mapping_size >= PAGE_SIZE {
        PAGE_SIZE
    } else {
        IO_TLB_SIZE
    };
    Plan {
        orig,
        mapping_size,
        size: mapping_size,
        nslots: mapping_size.div_ceil(IO_TLB_SIZE),
        amask: align as u64 - 1,
        mmask: 0,
        stride: align >> IO_TLB_SHIFT,
        pad_slots: 0,
        in_off: 0,
        boundary_mask: u64::MAX,
    }
}

/// The plan of any request, or why it is refused.
fn general(
    orig: Option<u64>,
    mapping_size: usize,
    m: Masks,
    round_to_align: bool,
    max_align: u64,
    seg: usize,
) -> Result<Plan, Error> {
    if mapping_size == 0 {
        return Err(Error::ZeroSize);
    }
    if !is_low_mask(m.alloc_align) || m.alloc_align > max_align {
        return Err(Error::BadAlignMask {
            mask: m.alloc_align,
        });
    }
    let max = max_mapping_size(seg, m.min_align);
    let too_large = Error::TooLarge {
        size: mapping_size,
        max,
    };
    let slot_mask = IO_TLB_SIZE as u64 - 1;
    let offset = orig.map_or(0, |o| o & m.min_align & (m.alloc_align | slot_mask)) as usize;
    let unrounded = mapping_size.checked_add(offset).ok_or(too_large.clone())?;
    let size = if round_to_align {
        round_up(unrounded as u64, m.alloc_align).ok_or(too_large.clone())?
    } else {
        unrounded as u64
    };
    let nslots = size.div_ceil(IO_TLB_SIZE as u64);
    if nslots > seg as u64 {
        return Err(too_large);
    }
    let (size, nslots) = (size as usize, nslots as usize);
    // Legacy page alignment only when nothing else constrains the placement.
    let alloc_align = if m.min_align == 0 && m.alloc_align == 0 && size >= PAGE_SIZE {
        PAGE_SIZE as u64 - 1
    } else {
        m.alloc_align
    };
    let amask = alloc_align | slot_mask;
    let mmask = if orig.is_some() {
        m.min_align & !amask
    } else {
        0
    };
    let stride =
        ((amask.max(mmask) >> IO_TLB_SHIFT).saturating_add(1)).min(usize::MAX as u64) as usize;
    if m.boundary != u64::MAX && nslots as u64 > (m.boundary >> IO_TLB_SHIFT) + 1 {
        return Err(Error::Unsatisfiable);
    }
    Ok(Plan {
        orig,
        mapping_size,
        size,
        nslots,
        amask,
        mmask,
        stride,
        pad_slots: offset >> IO_TLB_SHIFT,
        in_off: offset & (IO_TLB_SIZE - 1),
        boundary_mask: m.boundary,
    })
}

/// `x` rounded up to a multiple of `mask + 1` (`mask` = 2^k − 1).
fn round_up(x: u64, mask: u64) -> Option<u64> {
    Some(x.checked_add(mask)? & !mask)
}

/// Largest mapping a device with `min_align_mask` can always get: one segment minus the
/// offset bits that may have to be reproduced.
pub(crate) fn max_mapping_size(seg: usize, min_align_mask: u64) -> usize {
    let slot_mask = IO_TLB_SIZE as u64 - 1;
    let reserve = if min_align_mask == 0 {
        0
    } else {
        min_align_mask.saturating_add(slot_mask) & !slot_mask
    };
    ((seg * IO_TLB_SIZE) as u64).saturating_sub(reserve) as usize
}

impl Plan {
    /// Whether a run may start at bounce address `addr` as far as alignment goes.
    #[inline]
    pub(crate) fn aligned(&self, addr: u64) -> bool {
        addr & self.amask == 0
            && match self.orig {
                Some(o) => (addr ^ o) & self.mmask == 0,
                None => true,
            }
    }

    /// Whether the run starting at `addr` stays inside one boundary window.
    #[inline]
    pub(crate) fn within_boundary(&self, addr: u64) -> bool {
        let last = addr + (self.nslots * IO_TLB_SIZE) as u64 - 1;
        (addr & !self.boundary_mask) == (last & !self.boundary_mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: usize = 128;
    fn masks(min_align: u64, alloc_align: u64) -> Masks {
        Masks {
            min_align,
            alloc_align,
            boundary: u64::MAX,
        }
    }

    #[test]
    fn case_a_nvme_via_dma_direct() {
        let p = plan(
            Some(0x1_0000_0A00),
            8192,
            masks(0xFFF, 0),
            true,
            0xFFFF,
            SEG,
        )
        .unwrap();
        assert_eq!(p.size, 8704);
        assert_eq!(p.nslots, 5);
        assert_eq!((p.amask, p.mmask, p.stride), (0x7FF, 0x800, 2));
        assert_eq!((p.pad_slots, p.in_off), (0, 0x200));
        // Only odd slots (bit 11 set) qualify; the mapping then ends in 0xA00.
        assert!(!p.aligned(0x4000_0000));
        assert!(p.aligned(0x4000_0800));
        assert_eq!((0x4000_0800 + p.in_off as u64) & 0xFFF, 0xA00);
    }

    #[test]
    fn case_b_untrusted_nvme_64k_granule() {
        let p = plan(
            Some(0x7_0003_3A00),
            4096,
            masks(0xFFF, 0xFFFF),
            true,
            0xFFFF,
            SEG,
        )
        .unwrap();
        assert_eq!(p.size, 65536);
        assert_eq!(p.nslots, 32);
        assert_eq!((p.mmask, p.stride), (0, 32));
        assert_eq!((p.pad_slots, p.in_off), (1, 0x200));
        assert!(p.aligned(0x5_0001_0000));
        assert!(!p.aligned(0x5_0001_0800));
    }

    #[test]
    fn case_c_streaming_at_least_a_page() {
        let p = plan(Some(0x1234_5678), 6000, masks(0, 0), true, 0xFFFF, SEG).unwrap();
        assert_eq!((p.nslots, p.amask, p.stride), (3, 0xFFF, 2));
        let small = plan(Some(0x1234_5678), 4000, masks(0, 0), true, 0xFFFF, SEG).unwrap();
        assert_eq!((small.nslots, small.amask, small.stride), (2, 0x7FF, 1));
        // Any other constraint switches page alignment off.
        let nvme = plan(Some(0x1234_5000), 6000, masks(0xFFF, 0), true, 0xFFFF, SEG).unwrap();
        assert_eq!(nvme.amask, 0x7FF);
    }

    #[test]
    fn case_d_alloc_size_order_alignment() {
        let p = plan(None, 12288, masks(0, 0x3FFF), false, u64::MAX, SEG).unwrap();
        assert_eq!((p.nslots, p.amask, p.stride, p.mmask), (6, 0x3FFF, 8, 0));
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert_eq!(
            plan(Some(0), 0, masks(0, 0), true, 0xFFFF, SEG),
            Err(Error::ZeroSize)
        );
        assert_eq!(
            plan(Some(0), 10, masks(0, 0x1234), true, 0xFFFF, SEG),
            Err(Error::BadAlignMask { mask: 0x1234 })
        );
        assert_eq!(
            plan(Some(0), 10, masks(0, 0x1FFFF), true, 0xFFFF, SEG),
            Err(Error::BadAlignMask { mask: 0x1FFFF })
        );
        assert!(matches!(
            plan(Some(0), 256 * 1024 + 1, masks(0, 0), true, 0xFFFF, SEG),
            Err(Error::TooLarge { .. })
        ));
        let b = Masks {
            min_align: 0,
            alloc_align: 0,
            boundary: 0xFFF,
        };
        assert_eq!(
            plan(Some(0), 8192, b, true, 0xFFFF, SEG),
            Err(Error::Unsatisfiable)
        );
        assert!(plan(Some(0), 4096, b, true, 0xFFFF, SEG).is_ok());
    }

    /// The shortcut for simple requests gives exactly the general plan, for every size up to
    /// past a segment (a sample of them under Miri), every allocation alignment a shortcut may
    /// take and the first it may not, with and without an original address, for maps (the
    /// size rounded to the alignment) and allocations (not rounded).
    #[test]
    fn simple_requests_get_the_general_plan() {
        let (seg, step) = if cfg!(miri) { (4, 97) } else { (SEG, 1) };
        let sizes = (0..=seg * IO_TLB_SIZE + 3)
            .step_by(step)
            .chain([1, 4096, seg * IO_TLB_SIZE]);
        for size in sizes {
            for alloc_align in [0, 0x1, 0x3FF, 0x7FF, 0xFFF, 0x1FFF] {
                for orig in [Some(0x1234_5678), Some(u64::MAX - 1), None] {
                    for round in [true, false] {
                        let m = masks(0, alloc_align);
                        let general = general(orig, size, m, round, 0xFFFF, seg);
                        let rounded = if round {
                            (size + alloc_align as usize) & !(alloc_align as usize)
                        } else {
                            size
                        };
                        let simple_case =
                            alloc_align < 0x1000 && size > 0 && rounded <= seg * IO_TLB_SIZE;
                        match simple(orig, size, m, round, seg) {
                            Some(p) => {
                                assert!(simple_case, "size {size} align {alloc_align:#x}");
                                assert_eq!(Ok(p), general, "size {size} align {alloc_align:#x}");
                            }
                            None => assert!(!simple_case, "size {size} align {alloc_align:#x}"),
                        }
                        assert_eq!(plan(orig, size, m, round, 0xFFFF, seg), general);
                    }
                }
            }
        }
        // An alignment above `max_align` is refused even where the shortcut would answer.
        assert_eq!(
            plan(Some(0), 4096, masks(0, 0xFFF), true, 0x7FF, SEG),
            Err(Error::BadAlignMask { mask: 0xFFF })
        );
        // A boundary or a minimum alignment is never simple.
        let b = Masks {
            min_align: 0,
            alloc_align: 0,
            boundary: 0xFFFF,
        };
        assert_eq!(simple(Some(0), 4096, b, true, SEG), None);
        assert_eq!(simple(Some(0), 4096, masks(0x7FF, 0), true, SEG), None);
    }

    #[test]
    fn max_mapping_size_reserves_the_min_align_offset() {
        assert_eq!(max_mapping_size(128, 0), 256 * 1024);
        assert_eq!(max_mapping_size(128, 0xFFF), 252 * 1024);
        assert_eq!(max_mapping_size(128, 0x7FF), 254 * 1024);
        assert_eq!(max_mapping_size(4, u64::MAX), 0);
    }

    #[test]
    fn boundary_window_check() {
        let b = Masks {
            min_align: 0,
            alloc_align: 0,
            boundary: 0xFFFF,
        };
        let p = plan(Some(0), 4096, b, true, 0xFFFF, SEG).unwrap();
        assert!(p.within_boundary(0x1_0000));
        assert!(p.within_boundary(0x1_E000));
        assert!(!p.within_boundary(0x1_F800));
    }
}
