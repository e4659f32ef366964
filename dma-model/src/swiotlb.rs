//! swiotlb: bounce buffers as the specification describes them (Linux
//! `Documentation/core-api/swiotlb.rst`, `kernel/dma/swiotlb.c`, and the swiotlb-core docs).
//!
//! * [`plan`]: what a map or alloc searches for — slots of 2 KiB, the original's offset
//!   bits under `min_align_mask` reproduced (whole slots of it as padding), the size rounded
//!   to `alloc_align_mask` for a map, the page alignment of large unconstrained maps, and the
//!   typed errors of an impossible request.
//! * [`SlotSpace`]: the free-space model. Every pool is a row of slots cut into segments; a
//!   run qualifies when it lies in one segment and one boundary window, starts on the
//!   alignment, matches the original's offset bits and is free. So a `NoSpace` can be checked
//!   ("no qualifying run existed"), a placement can be checked ("it qualified and was free"),
//!   and every slot is accounted for.
//! * The direction table: which calls copy which way ([`copies_on_sync_for_cpu`] and
//!   friends). A map copies in for every direction (a device must never see stale bytes).

use std::collections::BTreeMap;
use swiotlb_core::{Direction, Error, IO_TLB_SHIFT, IO_TLB_SIZE, PAGE_SIZE};

/// A device's placement constraints.
#[derive(Debug, Clone, Copy)]
pub struct Masks {
    /// Offset bits of the original the bounce address keeps.
    pub min_align: u64,
    /// The allocation start has these bits clear (a map's `alloc_align_mask`).
    pub alloc_align: u64,
    /// No run crosses a `boundary + 1` window (`u64::MAX`: none).
    pub boundary: u64,
}

/// What one map or alloc searches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Original address (`None` for `alloc`).
    pub orig: Option<u64>,
    /// Slots of the run, padding included.
    pub nslots: usize,
    /// Whole slots of reproduced offset before the mapping starts.
    pub pad_slots: usize,
    /// Offset of the mapping in its first slot.
    pub in_off: usize,
    /// Bits that must be clear at the run start (slot bits included).
    pub amask: u64,
    /// Bits the run start shares with the original.
    pub mmask: u64,
    /// The device's boundary mask.
    pub boundary: u64,
}

/// The largest mapping a device with `min_align` can always get in segments of `seg` slots:
/// one segment, minus the offset bits that may have to be reproduced.
pub fn max_mapping_size(seg: usize, min_align: u64) -> usize {
    let slot = IO_TLB_SIZE as u64 - 1;
    let reserve = if min_align == 0 {
        0
    } else {
        min_align.saturating_add(slot) & !slot
    };
    ((seg * IO_TLB_SIZE) as u64).saturating_sub(reserve) as usize
}

/// The search request of a map (`round = true`: the size is rounded to the allocation
/// alignment, whose largest accepted mask is `max_align`) or an alloc, or the error the
/// request must get before any search.
pub fn plan(
    orig: Option<u64>,
    size: usize,
    m: Masks,
    round: bool,
    max_align: u64,
    seg: usize,
) -> Result<Plan, Error> {
    if size == 0 {
        return Err(Error::ZeroSize);
    }
    if m.alloc_align & m.alloc_align.wrapping_add(1) != 0 || m.alloc_align > max_align {
        return Err(Error::BadAlignMask {
            mask: m.alloc_align,
        });
    }
    let slot = IO_TLB_SIZE as u64 - 1;
    let too_large = Error::TooLarge {
        size,
        max: max_mapping_size(seg, m.min_align),
    };
    let offset = orig.map_or(0, |o| o & m.min_align & (m.alloc_align | slot));
    let unrounded = (size as u64).checked_add(offset).ok_or(too_large.clone())?;
    let searched = if round {
        unrounded
            .checked_next_multiple_of(m.alloc_align + 1)
            .ok_or(too_large.clone())?
    } else {
        unrounded
    };
    let nslots = searched.div_ceil(IO_TLB_SIZE as u64);
    if nslots > seg as u64 {
        return Err(too_large);
    }
    if m.boundary != u64::MAX && nslots > (m.boundary >> IO_TLB_SHIFT) + 1 {
        return Err(Error::Unsatisfiable);
    }
    // Linux 6.9: page alignment for page-sized runs only when nothing else constrains them.
    let align = if m.min_align == 0 && m.alloc_align == 0 && searched >= PAGE_SIZE as u64 {
        PAGE_SIZE as u64 - 1
    } else {
        m.alloc_align
    };
    let amask = align | slot;
    Ok(Plan {
        orig,
        nslots: nslots as usize,
        pad_slots: (offset >> IO_TLB_SHIFT) as usize,
        in_off: (offset & slot) as usize,
        amask,
        mmask: orig.map_or(0, |_| m.min_align & !amask),
        boundary: m.boundary,
    })
}

impl Plan {
    /// Whether a run of this plan may start at bounce address `start` (alignment and
    /// boundary only).
    pub fn may_start_at(&self, start: u64) -> bool {
        let last = start + (self.nslots * IO_TLB_SIZE) as u64 - 1;
        start & self.amask == 0
            && self.orig.map_or(true, |o| (start ^ o) & self.mmask == 0)
            && start & !self.boundary == last & !self.boundary
    }

    /// The mapping address a run starting at `start` gives.
    pub fn mapping_addr(&self, start: u64) -> u64 {
        start + (self.pad_slots * IO_TLB_SIZE + self.in_off) as u64
    }

    /// The run start of a mapping at `addr`.
    pub fn run_start(&self, addr: u64) -> Option<u64> {
        addr.checked_sub((self.pad_slots * IO_TLB_SIZE + self.in_off) as u64)
    }
}

/// Whether a `sync_for_cpu` in direction `dir` copies the device's bytes to the original.
pub fn copies_on_sync_for_cpu(dir: Direction) -> bool {
    dir != Direction::ToDevice
}

/// Whether a `sync_for_device` in direction `dir` copies the original to the bounce buffer.
pub fn copies_on_sync_for_device(dir: Direction) -> bool {
    dir != Direction::FromDevice
}

/// Whether an unmap copies the device's bytes back (`skip`: `skip_cpu_sync`).
pub fn copies_on_unmap(dir: Direction, skip: bool) -> bool {
    !skip && copies_on_sync_for_cpu(dir)
}

/// One pool's slots.
#[derive(Debug, Clone)]
struct PoolSlots {
    start: u64,
    seg: usize,
    used: Vec<bool>,
}

impl PoolSlots {
    fn end(&self) -> u64 {
        self.start + (self.used.len() * IO_TLB_SIZE) as u64
    }

    /// Whether slots `s..s + n` exist, lie in one segment and are free.
    fn free_run(&self, s: usize, n: usize) -> bool {
        s + n <= self.used.len()
            && s / self.seg == (s + n - 1) / self.seg
            && self.used[s..s + n].iter().all(|u| !u)
    }
}

/// The free-space model: pools, their slots, and the run of every live mapping.
#[derive(Debug, Clone, Default)]
pub struct SlotSpace {
    pools: Vec<PoolSlots>,
    /// Live runs by mapping address: (pool, first slot, slots).
    runs: BTreeMap<u64, (usize, usize, usize)>,
}

impl SlotSpace {
    /// Add a pool of `nslabs` slots at `start`, in segments of `seg` slots.
    pub fn add_pool(&mut self, start: u64, nslabs: usize, seg: usize) {
        self.pools.push(PoolSlots {
            start,
            seg: seg.min(nslabs).max(1),
            used: vec![false; nslabs],
        });
    }

    /// Whether a pool starting at `start` is known.
    pub fn has_pool(&self, start: u64) -> bool {
        self.pools.iter().any(|p| p.start == start)
    }

    /// Whether some pool has a qualifying free run for `plan`.
    pub fn fits(&self, plan: &Plan) -> bool {
        self.first_fit(plan).is_some()
    }

    /// The lowest qualifying free run for `plan`: its start address.
    pub fn first_fit(&self, plan: &Plan) -> Option<u64> {
        self.pools.iter().find_map(|p| {
            (0..p.used.len()).find_map(|s| {
                let start = p.start + (s * IO_TLB_SIZE) as u64;
                (plan.may_start_at(start) && p.free_run(s, plan.nslots)).then_some(start)
            })
        })
    }

    /// Check that a mapping at `addr` is a qualifying placement of `plan` on free slots;
    /// `Err` says why not. Changes nothing.
    pub fn check_placement(&self, addr: u64, plan: &Plan) -> Result<(usize, usize), String> {
        let start = plan
            .run_start(addr)
            .ok_or_else(|| format!("{addr:#x} cannot hold {plan:?}"))?;
        let (i, p) = self
            .pools
            .iter()
            .enumerate()
            .find(|(_, p)| p.start <= start && start < p.end())
            .ok_or_else(|| format!("run start {start:#x} of {addr:#x} is in no pool"))?;
        if (start - p.start) % IO_TLB_SIZE as u64 != 0 {
            return Err(format!("run start {start:#x} is not a slot start"));
        }
        if !plan.may_start_at(start) {
            return Err(format!(
                "run start {start:#x} breaks the alignment of {plan:?}"
            ));
        }
        let s = ((start - p.start) >> IO_TLB_SHIFT) as usize;
        if !p.free_run(s, plan.nslots) {
            return Err(format!(
                "slots {s}..{} of the pool at {:#x} are not one free run of a segment",
                s + plan.nslots,
                p.start
            ));
        }
        Ok((i, s))
    }

    /// Record a mapping at `addr` placed by `plan` (after [`SlotSpace::check_placement`]).
    pub fn occupy(&mut self, addr: u64, plan: &Plan) -> Result<(), String> {
        let (i, s) = self.check_placement(addr, plan)?;
        self.pools[i].used[s..s + plan.nslots].fill(true);
        self.runs.insert(addr, (i, s, plan.nslots));
        Ok(())
    }

    /// Release the run of the mapping at `addr`; `false` if there is none.
    pub fn release(&mut self, addr: u64) -> bool {
        match self.runs.remove(&addr) {
            Some((i, s, n)) => {
                self.pools[i].used[s..s + n].fill(false);
                true
            }
            None => false,
        }
    }

    /// Slots of live runs.
    pub fn used(&self) -> usize {
        self.runs.values().map(|&(_, _, n)| n).sum()
    }
}

// Not under loom: the real structures are built outside a model.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const NONE: Masks = Masks {
        min_align: 0,
        alloc_align: 0,
        boundary: u64::MAX,
    };

    #[test]
    fn nvme_offset_is_reproduced() {
        let m = Masks {
            min_align: 0xFFF,
            ..NONE
        };
        let p = plan(Some(0x1_0000_0A00), 8192, m, true, 0xFFFF, 128).unwrap();
        // 0x200 into the slot; bit 11 of 0xA00 comes from an odd slot.
        assert_eq!((p.nslots, p.pad_slots, p.in_off), (5, 0, 0x200));
        assert!(!p.may_start_at(0x4000_0000) && p.may_start_at(0x4000_0800));
        assert_eq!(p.mapping_addr(0x4000_0800) & 0xFFF, 0xA00);
        // With a 64 KiB allocation alignment the whole offset is reproduced: a pad slot.
        let untrusted = Masks {
            alloc_align: 0xFFFF,
            ..m
        };
        let p = plan(Some(0xA00), 4096, untrusted, true, 0xFFFF, 128).unwrap();
        assert_eq!((p.nslots, p.pad_slots, p.in_off), (32, 1, 0x200));
    }

    #[test]
    fn requests_that_cannot_be_met_are_typed_errors() {
        assert_eq!(
            plan(Some(0), 0, NONE, true, 0xFFFF, 8),
            Err(Error::ZeroSize)
        );
        let bad = Masks {
            alloc_align: 0x1234,
            ..NONE
        };
        assert_eq!(
            plan(Some(0), 1, bad, true, 0xFFFF, 8),
            Err(Error::BadAlignMask { mask: 0x1234 })
        );
        assert_eq!(
            plan(Some(0), 8 * 2048 + 1, NONE, true, 0xFFFF, 8),
            Err(Error::TooLarge {
                size: 8 * 2048 + 1,
                max: 8 * 2048
            })
        );
        let narrow = Masks {
            boundary: 0xFFF,
            ..NONE
        };
        assert_eq!(
            plan(Some(0), 3 * 2048, narrow, true, 0xFFFF, 8),
            Err(Error::Unsatisfiable)
        );
    }

    #[test]
    fn a_full_segment_leaves_no_run_and_a_release_makes_one() {
        let mut space = SlotSpace::default();
        space.add_pool(0x10_0000, 4, 2);
        let two = plan(Some(0), 2 * 2048, NONE, true, 0xFFFF, 2).unwrap();
        let one = plan(Some(0), 2048, NONE, true, 0xFFFF, 2).unwrap();
        space.occupy(0x10_0000, &one).unwrap();
        space.occupy(0x10_1800, &one).unwrap();
        // Slots 1 and 2 are free but in different segments.
        assert!(!space.fits(&two));
        assert!(space.check_placement(0x10_0800, &two).is_err());
        assert!(space.release(0x10_0000));
        assert!(space.fits(&two));
        assert_eq!(space.used(), 1);
    }
}
