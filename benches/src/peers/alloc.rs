//! Allocator peers: rust-vmm `vm-allocator` behind a `Mutex` (Firecracker's and crosvm's way)
//! and a `Mutex<BTreeMap>` first-fit free list (Asterinas' `RangeAllocator`, crosvm's
//! `resources` allocator).

use super::{RangeAlloc, GRANULE};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

fn align_of(granules: u64) -> u64 {
    granules.next_power_of_two() * GRANULE
}

/// rust-vmm `vm-allocator` `AddressAllocator` behind one `parking_lot::Mutex`.
///
/// ```
/// use dma_bench::peers::{alloc::VmAllocatorPeer, RangeAlloc};
/// let a = VmAllocatorPeer::new(1 << 32, 1 << 30);
/// let x = a.alloc(2).unwrap();
/// a.free(x, 2);
/// ```
#[derive(Debug)]
pub struct VmAllocatorPeer {
    inner: Mutex<AddressAllocator>,
}

impl VmAllocatorPeer {
    /// An allocator over `[base, base + size)`.
    pub fn new(base: u64, size: u64) -> Self {
        let a = AddressAllocator::new(base, size).expect("valid vm-allocator range");
        VmAllocatorPeer {
            inner: Mutex::new(a),
        }
    }
}

impl RangeAlloc for VmAllocatorPeer {
    fn alloc(&self, granules: u64) -> Option<u64> {
        let r = self.inner.lock().allocate(
            granules * GRANULE,
            align_of(granules),
            AllocPolicy::FirstMatch,
        );
        r.ok().map(|r| r.start())
    }

    fn free(&self, addr: u64, granules: u64) {
        if let Ok(r) = RangeInclusive::new(addr, addr + granules * GRANULE - 1) {
            // A failed free would be a harness bug; the peer keeps working either way.
            let _ = self.inner.lock().free(&r);
        }
    }
}

/// A first-fit allocator over a `BTreeMap` of free ranges (`start → end`, exclusive) behind one
/// `parking_lot::Mutex`: allocation scans from the lowest address, free merges neighbours.
///
/// ```
/// use dma_bench::peers::{alloc::BTreeFirstFit, RangeAlloc};
/// let a = BTreeFirstFit::new(0, 1 << 20);
/// let x = a.alloc(1).unwrap();
/// let y = a.alloc(1).unwrap();
/// assert_ne!(x, y);
/// a.free(x, 1);
/// assert_eq!(a.alloc(1), Some(x));
/// ```
#[derive(Debug)]
pub struct BTreeFirstFit {
    free: Mutex<BTreeMap<u64, u64>>,
}

impl BTreeFirstFit {
    /// An allocator over `[base, base + size)`.
    pub fn new(base: u64, size: u64) -> Self {
        BTreeFirstFit {
            free: Mutex::new(BTreeMap::from([(base, base + size)])),
        }
    }
}

impl RangeAlloc for BTreeFirstFit {
    fn alloc(&self, granules: u64) -> Option<u64> {
        let (size, align) = (granules * GRANULE, align_of(granules));
        let mut free = self.free.lock();
        let (start, end, at) = free.iter().find_map(|(&s, &e)| {
            let at = s.checked_add(align - 1)? & !(align - 1);
            (at.checked_add(size)? <= e).then_some((s, e, at))
        })?;
        free.remove(&start);
        if start < at {
            free.insert(start, at);
        }
        if at + size < end {
            free.insert(at + size, end);
        }
        Some(at)
    }

    fn free(&self, addr: u64, granules: u64) {
        let (mut start, mut end) = (addr, addr + granules * GRANULE);
        let mut free = self.free.lock();
        if let Some((&s, &e)) = free.range(..start).next_back() {
            if e == start {
                free.remove(&s);
                start = s;
            }
        }
        if let Some(e) = free.remove(&end) {
            end = e;
        }
        free.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::alloc::XorShift;

    /// Random allocs and frees against a set of held ranges: no two live ranges overlap, every
    /// range is aligned and inside the space, and freeing everything makes the whole space
    /// allocatable again.
    fn conserves<A: RangeAlloc>(a: &A, base: u64, size: u64) {
        let mut rng = XorShift::new(7);
        let mut held: Vec<(u64, u64)> = Vec::new();
        for _ in 0..2000 {
            if held.is_empty() || rng.below(3) > 0 {
                let g = 1 << rng.below(4);
                if let Some(x) = a.alloc(g) {
                    let len = g * GRANULE;
                    assert!(x >= base && x + len <= base + size);
                    assert_eq!(x % align_of(g), 0);
                    assert!(
                        held.iter().all(|&(y, l)| x + len <= y || y + l <= x),
                        "overlap at {x:#x}"
                    );
                    held.push((x, len));
                }
            } else {
                let (x, len) = held.swap_remove(rng.below(held.len() as u64) as usize);
                a.free(x, len / GRANULE);
            }
        }
        for (x, len) in held.drain(..) {
            a.free(x, len / GRANULE);
        }
        let all = size / GRANULE;
        let x = a.alloc(all).expect("whole space free again");
        assert_eq!(x, base);
    }

    #[test]
    fn btree_first_fit_conserves_space() {
        conserves(&BTreeFirstFit::new(1 << 24, 1 << 24), 1 << 24, 1 << 24);
    }

    #[test]
    fn vm_allocator_peer_conserves_space() {
        conserves(&VmAllocatorPeer::new(1 << 24, 1 << 24), 1 << 24, 1 << 24);
    }

    #[test]
    fn exhaustion_is_none_and_recoverable() {
        let a = BTreeFirstFit::new(0, 4 * GRANULE);
        let xs: Vec<u64> = (0..4).map(|_| a.alloc(1).unwrap()).collect();
        assert_eq!(a.alloc(1), None);
        a.free(xs[2], 1);
        assert_eq!(a.alloc(1), Some(xs[2]));
    }
}
