//! Ownership of user-held cacheable ranges, for typed double-free errors.
//!
//! A cached pfn is still allocated in the range allocator, so the tree alone cannot tell a
//! second free of a cached range from a first one. This sharded map records the ranges handed
//! to users; the shard is chosen by a hash of the pfn so frees on any CPU spread over the
//! locks.

use crate::error::IovaError;
use crate::faults::OWNER_RECORD;
use crate::gaptree::mix;
use crossbeam_utils::CachePadded;
use dma_sync::Mutex;
use std::collections::HashMap;

/// User-held ranges of one shard: start pfn -> granules.
type Shard = Mutex<HashMap<u64, u64>>;

pub(crate) struct Owners {
    shards: Box<[CachePadded<Shard>]>,
}

impl Owners {
    pub(crate) fn new(cpus: usize) -> Self {
        let n = (cpus * 4).next_power_of_two().max(16);
        Self {
            shards: (0..n)
                .map(|_| CachePadded::new(Mutex::new(HashMap::new())))
                .collect(),
        }
    }

    fn shard(&self, pfn: u64) -> &Shard {
        &self.shards[mix(pfn) as usize & (self.shards.len() - 1)]
    }

    /// Record `[pfn, pfn + size)` as held by a user; `false` if the memory for the record
    /// cannot be had.
    pub(crate) fn insert(&self, pfn: u64, size: u64) -> bool {
        let mut map = self.shard(pfn).lock();
        if OWNER_RECORD.fail() || map.try_reserve(1).is_err() {
            return false;
        }
        map.insert(pfn, size);
        true
    }

    /// Forget a user-held range, refusing pfns not held or freed with another size.
    pub(crate) fn remove(&self, pfn: u64, size: u64) -> Result<(), IovaError> {
        let mut map = self.shard(pfn).lock();
        match map.get(&pfn) {
            None => Err(IovaError::NotAllocated { pfn }),
            Some(&allocated) if allocated != size => Err(IovaError::SizeMismatch {
                pfn,
                allocated,
                freed: size,
            }),
            Some(_) => {
                map.remove(&pfn);
                Ok(())
            }
        }
    }
}
