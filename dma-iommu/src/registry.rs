//! The domain's record of live mappings, keyed by the first IOVA granule.
//!
//! It makes unmap robust: an address that is not the start of a live mapping of this device
//! (never mapped, another device's, or unmapped already) is a typed error before anything is
//! torn down, and two racing unmaps of one mapping cannot both proceed.
//!
//! It is on every map and unmap, so each costs one uncontended lock pair on a line no other
//! CPU wrote: a shard is the top bits of the pfn's Fibonacci hash, over a thousand shards per
//! CPU, so the pfns a CPU's IOVA cache recycles rarely share a shard with another CPU's (with
//! 16 shards, lazy map+unmap ran at 1.04× on two threads, now 1.8×). A shard usually holds
//! one mapping, inline on its own line; the hash table (keys hashed by one multiplication:
//! our own allocator chose them, nobody makes them collide) takes the rare others. The count
//! of mappings ever recorded is kept under the insert's lock, so the map path writes no
//! shared statistics line.

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
    pub(crate) bounce_buffer: Option<u64>,
}

/// What an unmap expects the record at its pfn to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expect {
    pub(crate) dev: u64,
    pub(crate) kind: Kind,
    pub(crate) size: u64,
    pub(crate) offset: u64,
}

impl Expect {
    /// What the unmap needs of `rec` if it is the expected mapping.
    fn check(self, rec: &Record, dma: u64) -> Result<Taken, DmaError> {
        if rec.dev != self.dev {
            return Err(DmaError::NotMapped { dma });
        }
        if rec.size != self.size || rec.offset != self.offset || rec.kind != self.kind {
            return Err(DmaError::Mismatch {
                dma,
                size: self.size,
                mapped: rec.size,
            });
        }
        Ok(Taken {
            granules: rec.granules,
            bounce_buffer: rec.bounce_buffer,
        })
    }
}

/// What an unmap needs of the record it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// IOVA granules held.
    pub(crate) granules: u64,
    /// The bounce buffer, if the mapping was bounced.
    pub(crate) bounce_buffer: Option<u64>,
}

/// 2^64 divided by the golden ratio: multiplying by it spreads consecutive pfns over the high
/// bits (Fibonacci hashing), which both the shard choice and [`PfnHasher`] use.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

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
        let m = u128::from(self.0 ^ pfn) * u128::from(FIBONACCI);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One shard: first IOVA pfn -> record of its live mappings, and how many it ever recorded.
/// With many more shards than mappings in flight, a shard mostly holds one: it sits inline,
/// on the shard's own cache line, and the table is touched only by the rare second one.
#[derive(Default)]
struct Live {
    one: Option<(u64, Record)>,
    more: HashMap<u64, Record, BuildHasherDefault<PfnHasher>>,
    recorded: u64,
}

impl Live {
    fn len(&self) -> usize {
        usize::from(self.one.is_some()) + self.more.len()
    }
}

type Shard = Mutex<Live>;

/// Shards per CPU: many more than the mappings a CPU has in flight (a flush-queue ring's
/// worth, 256, recycled by its IOVA cache), so a CPU's mappings rarely share a shard, and so a
/// cache line, with another CPU's; with 16 shards the shard lines bounced between CPUs on
/// every map and unmap and two threads ran no faster than one. A loom model needs only a few
/// (every lock is a model object); under Miri, which builds many domains, 16 keep every test
/// fast while mappings still spread over several shards.
const SHARDS_PER_CPU: usize = if cfg!(loom) {
    2
} else if cfg!(miri) {
    16
} else {
    1024
};

/// At most this many shards (128 bytes each: 2 MiB), however many CPUs.
const MAX_SHARDS: usize = 1 << 14;

pub(crate) struct Registry {
    shards: Box<[CachePadded<Shard>]>,
    /// `64 - log2(shards)`: a shard is the top bits of the pfn's Fibonacci hash.
    shift: u32,
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
    /// Shards for `cpus` CPUs: [`SHARDS_PER_CPU`] each, at most [`MAX_SHARDS`].
    pub(crate) fn new(cpus: usize) -> Self {
        let n = cpus
            .clamp(1, MAX_SHARDS / SHARDS_PER_CPU)
            .saturating_mul(SHARDS_PER_CPU)
            .next_power_of_two()
            .max(2);
        Self {
            shards: (0..n)
                .map(|_| CachePadded::new(Mutex::new(Live::default())))
                .collect(),
            shift: 64 - n.trailing_zeros(),
        }
    }

    fn shard(&self, pfn: u64) -> &Shard {
        let h = pfn.wrapping_mul(FIBONACCI) >> self.shift;
        &self.shards[h as usize]
    }

    /// Record a new mapping; [`DmaError::NoMemory`] (nothing recorded) if the shard cannot
    /// grow.
    pub(crate) fn insert(&self, pfn: u64, rec: Record) -> Result<(), DmaError> {
        let mut shard = self.shard(pfn).lock();
        if crate::faults::MAPPING_RECORD.fail() {
            return Err(DmaError::NoMemory);
        }
        // Unreachable duplicates: the caller mapped the page table first, and io-pgtable
        // claims every entry by compare-and-swap, so no two live mappings share a first pfn.
        debug_assert!(
            shard.one.as_ref().map(|&(p, _)| p) != Some(pfn) && !shard.more.contains_key(&pfn),
            "IOVA pfn {pfn:#x} handed out twice"
        );
        if shard.one.is_none() {
            shard.one = Some((pfn, rec));
        } else {
            if shard.more.try_reserve(1).is_err() {
                return Err(DmaError::NoMemory);
            }
            shard.more.insert(pfn, rec);
        }
        shard.recorded += 1;
        Ok(())
    }

    /// Remove the mapping at `pfn` if it is what `expect` describes; otherwise leave it in
    /// place: another device's (or none) is [`DmaError::NotMapped`], another size, offset or
    /// kind [`DmaError::Mismatch`]. The expectation travels by value and only what the unmap
    /// needs comes back, so nothing of either is spilled to memory on the way.
    pub(crate) fn take(&self, pfn: u64, dma: u64, expect: Expect) -> Result<Taken, DmaError> {
        let mut shard = self.shard(pfn).lock();
        if let Some((at, rec)) = &shard.one {
            if *at == pfn {
                let taken = expect.check(rec, dma)?;
                shard.one = None;
                return Ok(taken);
            }
        }
        let Entry::Occupied(live) = shard.more.entry(pfn) else {
            return Err(DmaError::NotMapped { dma });
        };
        let taken = expect.check(live.get(), dma)?;
        live.remove();
        Ok(taken)
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
                    live: c.live + s.len() as u64,
                }
            },
        )
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn rec(dev: u64) -> Record {
        Record {
            dev,
            kind: Kind::Single,
            size: 4096,
            offset: 0,
            granules: 1,
            bounce_buffer: None,
        }
    }

    fn expect(dev: u64) -> Expect {
        Expect {
            dev,
            kind: Kind::Single,
            size: 4096,
            offset: 0,
        }
    }

    #[test]
    fn shards_holding_many_mappings_find_each_one() {
        let r = Registry::new(1);
        // Four times as many mappings as shards: every shard holds one inline and more in
        // its table.
        let pfns: Vec<u64> = (1..=4 * SHARDS_PER_CPU as u64).map(|i| i * 7).collect();
        for &p in &pfns {
            r.insert(p, rec(p)).unwrap();
        }
        for &p in &pfns {
            let other = Expect {
                dev: p + 1,
                ..expect(p)
            };
            let dma = p << 12;
            assert_eq!(r.take(p, dma, other), Err(DmaError::NotMapped { dma }));
            let longer = Expect {
                size: 8192,
                ..expect(p)
            };
            assert_eq!(
                r.take(p, dma, longer),
                Err(DmaError::Mismatch {
                    dma,
                    size: 8192,
                    mapped: 4096
                })
            );
            assert_eq!(
                r.take(p + 1, 0, expect(p + 1)),
                Err(DmaError::NotMapped { dma: 0 })
            );
        }
        let counts = r.counts();
        assert_eq!(
            (counts.recorded, counts.live),
            (pfns.len() as u64, pfns.len() as u64)
        );
        let taken = Taken {
            granules: 1,
            bounce_buffer: None,
        };
        for &p in pfns.iter().rev() {
            assert_eq!(r.take(p, p << 12, expect(p)), Ok(taken));
            assert!(r.take(p, p << 12, expect(p)).is_err(), "taken once");
        }
        assert_eq!(r.counts().live, 0);
    }
}
