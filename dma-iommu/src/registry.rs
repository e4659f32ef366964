//! The domain's record of live mappings, keyed by the first IOVA granule.
//!
//! It makes unmap robust: an address that is not the start of a live mapping of this device
//! (never mapped, another device's, or unmapped already) is a typed error before anything is
//! torn down, and two racing unmaps of one mapping cannot both proceed. Shards are chosen by a
//! hash of the pfn, so maps and unmaps on different CPUs rarely share a lock.
//!
//! It is on every map and unmap, so it costs one lock pair and one hash probe each: keys are
//! pfns our own allocator handed out (nobody chooses them to collide), hashed by one
//! multiplication instead of SipHash; an unmap checks and removes the record with a single
//! probe; and the count of mappings ever recorded is kept per shard under the lock the insert
//! holds anyway, so the map path writes no shared statistics line.

use crate::error::DmaError;
use dma_sync::{CachePadded, Mutex};
use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

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
    pub(crate) bounce: Option<u64>,
}

/// Hashes a pfn by one folded multiplication: good high bits (hashbrown's tag) and low bits
/// (its bucket index), a few instructions. Only `u64` keys are ever hashed.
#[derive(Default)]
struct PfnHasher(u64);

impl Hasher for PfnHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, pfn: u64) {
        let m = u128::from(self.0 ^ pfn) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One shard: first IOVA pfn -> record of its live mappings, and how many it ever recorded.
#[derive(Default)]
struct Live {
    records: HashMap<u64, Record, BuildHasherDefault<PfnHasher>>,
    recorded: u64,
}

type Shard = Mutex<Live>;

pub(crate) struct Registry {
    shards: Box<[CachePadded<Shard>]>,
}

/// What the registry counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Mappings recorded since the domain was built.
    pub(crate) recorded: u64,
    /// Mappings live now.
    pub(crate) live: u64,
}

impl Registry {
    pub(crate) fn new(cpus: usize) -> Self {
        let n = (cpus.max(1) * 4).next_power_of_two().max(16);
        Self {
            shards: (0..n)
                .map(|_| CachePadded::new(Mutex::new(Live::default())))
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
        if crate::faults::MAPPING_RECORD.fail() || shard.records.try_reserve(1).is_err() {
            return Err(DmaError::NoMemory);
        }
        shard.recorded += 1;
        let old = shard.records.insert(pfn, rec);
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
        let Entry::Occupied(live) = shard.records.entry(pfn) else {
            return Err(DmaError::NotMapped { dma });
        };
        check(live.get())?;
        Ok(live.remove())
    }

    /// Mappings recorded and live (locks every shard briefly).
    pub(crate) fn counts(&self) -> Counts {
        self.shards.iter().fold(
            Counts {
                recorded: 0,
                live: 0,
            },
            |c, s| {
                let s = s.lock();
                Counts {
                    recorded: c.recorded + s.recorded,
                    live: c.live + s.records.len() as u64,
                }
            },
        )
    }
}
