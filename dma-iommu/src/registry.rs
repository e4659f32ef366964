//! The domain's record of live mappings, keyed by the first IOVA granule.
//!
//! It makes unmap robust: an address that is not the start of a live mapping of this device
//! (never mapped, another device's, or unmapped already) is a typed error before anything is
//! torn down, and two racing unmaps of one mapping cannot both proceed. Shards are chosen by a
//! hash of the pfn, so maps and unmaps on different CPUs rarely share a lock.

use crate::error::DmaError;
use dma_sync::{CachePadded, Mutex};
use std::collections::HashMap;

/// What kind of call made a mapping; an unmap must be of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `map` (possibly bounced).
    Single,
    /// `map_resource` (MMIO, never bounced).
    Resource,
    /// `map_sg`: one contiguous IOVA range for a whole list.
    List,
}

/// One live mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) dev: u64,
    pub(crate) kind: Kind,
    /// Bytes the caller mapped.
    pub(crate) size: u64,
    /// Offset of the DMA address in its first granule.
    pub(crate) offset: u64,
    /// IOVA granules held.
    pub(crate) granules: u64,
    /// The bounce buffer, if the mapping was bounced.
    pub(crate) bounce_buffer: Option<u64>,
}

/// Live mappings of one shard: first IOVA pfn -> record.
type Shard = Mutex<HashMap<u64, Record>>;

pub(crate) struct Registry {
    shards: Box<[CachePadded<Shard>]>,
}

impl Registry {
    pub(crate) fn new(cpus: usize) -> Self {
        let n = (cpus.max(1) * 4).next_power_of_two().max(16);
        Self {
            shards: (0..n)
                .map(|_| CachePadded::new(Mutex::new(HashMap::new())))
                .collect(),
        }
    }

    fn shard(&self, pfn: u64) -> &Shard {
        let h = pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.shards[h as usize & (self.shards.len() - 1)]
    }

    /// Record a new mapping; [`DmaError::NoMemory`] (nothing recorded) if the shard cannot
    /// grow.
    pub(crate) fn insert(&self, pfn: u64, rec: Record) -> Result<(), DmaError> {
        let mut shard = self.shard(pfn).lock();
        if crate::faults::MAPPING_RECORD.fail() || shard.try_reserve(1).is_err() {
            return Err(DmaError::NoMemory);
        }
        let old = shard.insert(pfn, rec);
        // Unreachable: the caller mapped the page table first, and io-pgtable claims every
        // entry by compare-and-swap, so no two live mappings share a first pfn.
        debug_assert!(old.is_none(), "IOVA pfn {pfn:#x} handed out twice");
        Ok(())
    }

    /// Remove the mapping at `pfn` if `check` accepts it; otherwise leave it in place.
    pub(crate) fn take(
        &self,
        pfn: u64,
        dma: u64,
        check: impl FnOnce(&Record) -> Result<(), DmaError>,
    ) -> Result<Record, DmaError> {
        let mut shard = self.shard(pfn).lock();
        let rec = shard.get(&pfn).ok_or(DmaError::NotMapped { dma })?;
        check(rec)?;
        Ok(shard.remove(&pfn).expect("present under the lock"))
    }

    /// Live mappings (locks every shard briefly).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}
