//! Original memory that can refuse writes: a failed copy-back must be reported, never lost.
//!
//! [`RefusingMemory`] is a [`RegionMemory`] whose next writes can be made to fail through
//! the [`Refusals`] handle the checker keeps (the allocator owns the memory). A refused write
//! changes no byte, so after a refused copy-back the original must still hold what the model
//! says it held before, and the call must have returned an error.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use swiotlb_core::{DmaDst, DmaSrc, MemoryError, OrigMemory, RegionMemory};

/// The checker's handle: how many of the next writes fail.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<AtomicUsize>);

impl Refusals {
    /// Make the next `n` writes fail (replacing any earlier count).
    pub fn refuse_next(&self, n: usize) {
        self.0.store(n, Relaxed);
    }

    /// Refusals armed and not yet used.
    pub fn left(&self) -> usize {
        self.0.load(Relaxed)
    }

    /// Take one refusal if any is armed.
    fn take(&self) -> bool {
        self.0
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// A [`RegionMemory`] whose writes fail while [`Refusals`] says so.
#[derive(Debug)]
pub struct RefusingMemory {
    region: RegionMemory,
    refusals: Refusals,
}

impl RefusingMemory {
    /// `len` zeroed bytes, and the handle that makes writes fail.
    pub fn new(len: usize) -> (Self, Refusals) {
        let refusals = Refusals::default();
        let m = RefusingMemory {
            region: RegionMemory::new(len),
            refusals: refusals.clone(),
        };
        (m, refusals)
    }

    /// First address of the memory.
    pub fn base(&self) -> u64 {
        self.region.base()
    }
}

impl OrigMemory for RefusingMemory {
    fn read_into(&self, addr: u64, dst: DmaDst<'_>) -> Result<(), MemoryError> {
        self.region.read_into(addr, dst)
    }

    fn write_from(&self, addr: u64, src: DmaSrc<'_>) -> Result<(), MemoryError> {
        if self.refusals.take() {
            return Err(MemoryError {
                addr,
                len: src.len(),
            });
        }
        self.region.write_from(addr, src)
    }
}
