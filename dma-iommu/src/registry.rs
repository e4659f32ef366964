//! The domain's record of live mappings, keyed by the first IOVA granule.
//!
//! It makes unmap robust: an address that is not the start of a live mapping of this device
//! (never mapped, another device's, or unmapped already) is a typed error before anything is
//! torn down, and two racing unmaps of one mapping cannot both proceed.
//!
//! It is on every map and unmap, so its common case takes no lock. A shard is the top bits of
//! the pfn's Fibonacci hash, over a thousand shards per CPU, so the pfns a CPU's IOVA cache
//! recycles rarely share a shard with another CPU's (with 16 shards, lazy map+unmap ran at
//! 1.04× on two threads, now 1.8×), and a shard usually holds one mapping, in its inline slot:
//! a key word and the record, on one cache line (checked by a test). The key is a small state
//! machine: empty, claimed, or the live mapping's DMA address. An insert claims an empty slot
//! by compare-and-swap, writes the record and publishes the address with a release store; a
//! take claims the slot by compare-and-swap from the address it unmaps, reads the record, and
//! stores empty (or puts the address back when the record is another device's or another
//! size's, so a refused unmap changes nothing). Two racing takes of one mapping: one claims
//! it, the other then finds the slot empty or another mapping's and is refused; a take that
//! finds the slot claimed waits (a refused take may be about to put its mapping back). The
//! orderings are the points `iommu.registry.claim`, `.publish` and `.vacate`, with loom models
//! on this code (module `points`).
//!
//! When an insert finds the slot taken (another mapping, or claimed at that moment) the
//! mapping goes to the shard's hash table, behind a lock of its own, and stays there until
//! its take: a mapping never moves, so a take that does not find its address in the slot
//! looks in the table. The table's keys are hashed by one multiplication: our own allocator
//! chose them, nobody makes them collide. The counts of mappings ever recorded are kept by
//! the slot's owner and under the table's lock, so the map path writes no shared statistics
//! line.
//!
//! Each of insert and take is one compare-and-swap and one store, as the spin lock each took
//! before was (the claim is the lock, and the store its release): the same locked
//! instructions, and the registry's own instructions a few fewer (no closure frame, the fault
//! site outside the claim), though the whole lazy path came out 23 more in callgrind and 3 ns
//! faster in an interleaved A/B (module `domain` has the measurement). What the lock-free slot
//! adds is robustness to preemption (a claim is held across no allocation and no call) and no
//! lock to order with the table's. Removing the locked instruction of the insert would need a
//! record kept per pfn (beside the page table's leaves, written by the thread that claimed
//! the leaf), since a slot is shared by every pfn that hashes to it.
//!
//! A record keeps what an unmap checks and needs in 32 bytes: the device, the size, and what
//! the mapping holds besides its span ([`Held`]: a bounce buffer, or a scatter list's span,
//! which alone is not the size rounded up to granules). The inline slot is keyed by the DMA
//! address itself, so the offset in the first granule needs no field.

use crate::error::DmaError;
use crate::points::{REGISTRY_CLAIM, REGISTRY_PUBLISH, REGISTRY_VACATE};
use dma_sync::atomic::{AtomicU64, Ordering};
use dma_sync::{thread, Mutex, UnsafeCell};
use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// What kind of call made a mapping; an unmap must be of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `map` (possibly bounced).
    Single,
    /// `map_resource` (MMIO, never bounced).
    Resource,
    /// `map_sg`: one contiguous IOVA range for a whole list.
    List,
}

/// What a live mapping holds besides its IOVA span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A [`Kind::Single`] mapping of the caller's memory.
    Single,
    /// A [`Kind::Single`] mapping of a bounce buffer at this address.
    Bounced(u64),
    /// A [`Kind::Resource`] mapping.
    Resource,
    /// A [`Kind::List`] mapping of a span of `granules` (segments moved to a boundary make it
    /// longer than the list's size rounded up).
    List {
        /// IOVA granules of the span.
        granules: u64,
    },
}

impl Held {
    fn kind(self) -> Kind {
        match self {
            Held::Single | Held::Bounced(_) => Kind::Single,
            Held::Resource => Kind::Resource,
            Held::List { .. } => Kind::List,
        }
    }
}

/// One live mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The device that mapped it.
    pub dev: u64,
    /// Bytes the caller mapped.
    pub size: u64,
    /// What it holds besides its span.
    pub held: Held,
}

/// What an unmap expects the record at its DMA address to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The device unmapping.
    pub dev: u64,
    /// The call unmapping.
    pub kind: Kind,
    /// The size it gives.
    pub size: u64,
}

/// What an unmap needs of the record it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// IOVA granules held.
    pub granules: u64,
    /// The bounce buffer, if the mapping was bounced.
    pub bounce_buffer: Option<u64>,
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

/// The inline slot holds no record.
const EMPTY: u64 = 0;
/// One insert or take has claimed the inline slot and alone reaches its record.
const BUSY: u64 = 1;

/// A shard's inline slot: a key word and the record it guards. The key is [`EMPTY`],
/// [`BUSY`], or the DMA address of the live record. A DMA address is never a sentinel: its
/// pfn is at least the allocator's start pfn, which the domain's configuration keeps above 0,
/// and both sentinels lie in pfn 0.
///
/// Whoever moves the key to `BUSY` by compare-and-swap (an insert from `EMPTY`, a take from
/// the live address) owns the record and `recorded` until it stores the key again with
/// release: the insert publishes the address, the take stores `EMPTY` (or puts the address
/// back when the record is not what it expected). So every access to the record is ordered
/// after the previous owner's, and no lock is taken.
struct Slot {
    key: AtomicU64,
    rec: UnsafeCell<Record>,
    /// Mappings this slot ever recorded; written only by the slot's owner (a load and a
    /// store, no read-modify-write), read by [`Registry::counts`].
    recorded: AtomicU64,
}

// SAFETY: the record is reached only by the thread that claimed the slot (key BUSY by its
// compare-and-swap), and each claim acquires the previous owner's release of the key.
unsafe impl Sync for Slot {}

impl Default for Slot {
    fn default() -> Self {
        Self {
            key: AtomicU64::new(EMPTY),
            rec: UnsafeCell::new(Record {
                dev: 0,
                size: 0,
                held: Held::Single,
            }),
            recorded: AtomicU64::new(0),
        }
    }
}

/// A shard's other mappings (first pfn -> (DMA address, record)) and how many it ever
/// recorded.
#[derive(Default)]
struct Table {
    more: HashMap<u64, (u64, Record), BuildHasherDefault<PfnHasher>>,
    recorded: u64,
}

/// A slot on a cache line of its own. 64 bytes, not `CachePadded`'s 128 (which x86-64 uses
/// against the adjacent-line prefetcher): at a 128-byte stride the slots would use only
/// every other set of a 64-set L1, and a lazy domain's 255 shards in turn would fill those
/// sets' ways by themselves.
#[repr(align(64))]
#[derive(Default)]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

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

/// At most this many shards (a 64-byte line each, and a locked table of at most 48 bytes:
/// under 1.8 MiB), however many CPUs.
const MAX_SHARDS: usize = 1 << 14;

/// Spins before a take that found the slot claimed yields the CPU (the claimer may have been
/// preempted; a claim otherwise lasts a few dozen instructions).
const SPINS_BEFORE_YIELD: u32 = 64;

/// The record of live mappings.
pub struct Registry {
    slots: Box<[Line<Slot>]>,
    /// `tables[i]`: shard `i`'s other mappings.
    tables: Box<[Mutex<Table>]>,
    /// `64 - log2(shards)`: a shard is the top bits of the pfn's Fibonacci hash.
    shift: u32,
    /// The IOVA granule's shift: a DMA address's pfn, and a span's granules.
    granule_shift: u32,
}

/// What the registry counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Mappings recorded since the domain was built.
    pub recorded: u64,
    /// Mappings live now.
    pub live: u64,
}

impl Registry {
    /// Shards for `cpus` CPUs: [`SHARDS_PER_CPU`] each, at most [`MAX_SHARDS`]; IOVA granules
    /// of `1 << granule_shift` bytes.
    pub fn new(cpus: usize, granule_shift: u32) -> Self {
        let n = cpus
            .clamp(1, MAX_SHARDS / SHARDS_PER_CPU)
            .saturating_mul(SHARDS_PER_CPU)
            .next_power_of_two()
            .max(2);
        Self {
            slots: (0..n).map(|_| Line::default()).collect(),
            tables: (0..n).map(|_| Mutex::new(Table::default())).collect(),
            shift: 64 - n.trailing_zeros(),
            granule_shift,
        }
    }

    /// The shard of DMA address `dma` (models pick neighbours by it).
    pub fn shard(&self, dma: u64) -> usize {
        let pfn = dma >> self.granule_shift;
        (pfn.wrapping_mul(FIBONACCI) >> self.shift) as usize
    }

    /// Whether the mapping at `dma` is its shard's inline record (models check both places
    /// are reached).
    #[cfg(loom)]
    pub fn is_inline(&self, dma: u64) -> bool {
        self.slots[self.shard(dma)].key.load(Ordering::Relaxed) == dma
    }

    /// Record a new mapping at DMA address `dma` (its first IOVA granule, plus its offset in
    /// it), whose first pfn no live mapping has; [`DmaError::NoMemory`] (nothing recorded) if
    /// the shard's table cannot grow. Inline when the shard's slot is empty: one
    /// compare-and-swap and a release store.
    #[inline]
    pub fn insert(&self, dma: u64, rec: Record) -> Result<(), DmaError> {
        if crate::faults::MAPPING_RECORD.fail() {
            return Err(DmaError::NoMemory);
        }
        let i = self.shard(dma);
        let slot = &self.slots[i];
        let (claim, failed) = REGISTRY_CLAIM.cas(Ordering::Acquire, Ordering::Relaxed);
        if slot
            .key
            .compare_exchange(EMPTY, BUSY, claim, failed)
            .is_err()
        {
            return self.insert_into_table(i, dma, rec);
        }
        // SAFETY: the slot is BUSY by this thread's claim, which acquired the previous
        // owner's release: no other thread reaches the record until the store below.
        slot.rec.with_mut(|r| unsafe { *r = rec });
        let n = slot.recorded.load(Ordering::Relaxed);
        slot.recorded.store(n + 1, Ordering::Relaxed);
        slot.key.store(dma, REGISTRY_PUBLISH.ord(Ordering::Release));
        Ok(())
    }

    /// [`Registry::insert`] when the slot holds another mapping (or is claimed).
    #[inline(never)]
    fn insert_into_table(&self, i: usize, dma: u64, rec: Record) -> Result<(), DmaError> {
        let pfn = dma >> self.granule_shift;
        let mut table = self.tables[i].lock();
        // Unreachable duplicates: the caller mapped the page table first, and io-pgtable
        // claims every entry by compare-and-swap, so no two live mappings share a first pfn.
        debug_assert!(
            !table.more.contains_key(&pfn),
            "IOVA pfn {pfn:#x} handed out twice"
        );
        if table.more.try_reserve(1).is_err() {
            return Err(DmaError::NoMemory);
        }
        table.more.insert(pfn, (dma, rec));
        table.recorded += 1;
        Ok(())
    }

    /// Remove the mapping at `dma` if it is what `expect` describes; otherwise leave it in
    /// place: none at `dma`'s granule or another device's is [`DmaError::NotMapped`], another
    /// offset in the granule, size or kind [`DmaError::Mismatch`]. Of two racing takes of one
    /// mapping, one claims the slot and the other finds it empty. The expectation travels by
    /// value and only what the unmap needs comes back, so nothing of either is spilled to
    /// memory on the way.
    #[inline]
    pub fn take(&self, dma: u64, expect: Expect) -> Result<Taken, DmaError> {
        let pfn = dma >> self.granule_shift;
        if pfn == 0 {
            // Never mapped, and the slot's sentinels: a claim from them would take an empty
            // slot's stale record, or another take's claim.
            return Err(DmaError::NotMapped { dma });
        }
        let i = self.shard(dma);
        let slot = &self.slots[i];
        // First try the common case, the slot holding this very address.
        let mut key = dma;
        loop {
            let (claim, failed) = REGISTRY_CLAIM.cas(Ordering::Acquire, Ordering::Relaxed);
            match slot.key.compare_exchange(key, BUSY, claim, failed) {
                Ok(_) => break,
                // The mapping may be the one claimed (by a take that may put it back).
                Err(BUSY) => key = self.wait_unclaimed(slot),
                Err(now) => key = now,
            }
            if key >> self.granule_shift != pfn {
                // Empty or another mapping's: a mapping stays where it was recorded.
                return self.take_from_table(i, pfn, dma, expect);
            }
        }
        // SAFETY: the slot is BUSY by this thread's claim, which acquired the insert's
        // publication: no other thread reaches the record until the store below.
        let rec = slot.rec.with(|r| unsafe { *r });
        let taken = self.check(key, &rec, dma, expect);
        let after = if taken.is_ok() { EMPTY } else { key };
        slot.key
            .store(after, REGISTRY_VACATE.ord(Ordering::Release));
        taken
    }

    /// Wait until no insert or take holds `slot`; its key then.
    #[cold]
    #[inline(never)]
    fn wait_unclaimed(&self, slot: &Slot) -> u64 {
        let mut spins = 0;
        loop {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                thread::spin_wait();
            } else {
                thread::yield_now();
            }
            let key = slot.key.load(Ordering::Relaxed);
            if key != BUSY {
                return key;
            }
        }
    }

    /// [`Registry::take`] of a mapping not in its shard's slot.
    #[inline(never)]
    fn take_from_table(
        &self,
        i: usize,
        pfn: u64,
        dma: u64,
        expect: Expect,
    ) -> Result<Taken, DmaError> {
        let mut table = self.tables[i].lock();
        let Entry::Occupied(live) = table.more.entry(pfn) else {
            return Err(DmaError::NotMapped { dma });
        };
        let (at, rec) = live.get();
        let taken = self.check(*at, rec, dma, expect)?;
        live.remove();
        Ok(taken)
    }

    /// What the unmap of `dma` needs of `rec`, recorded at `at` (the same granule), if it is
    /// the mapping `expect` describes.
    #[inline]
    fn check(&self, at: u64, rec: &Record, dma: u64, expect: Expect) -> Result<Taken, DmaError> {
        if rec.dev != expect.dev {
            return Err(DmaError::NotMapped { dma });
        }
        if rec.size != expect.size || at != dma || rec.held.kind() != expect.kind {
            return Err(DmaError::Mismatch {
                dma,
                size: expect.size,
                mapped: rec.size,
            });
        }
        let g = self.granule_shift;
        let offset = dma & ((1 << g) - 1);
        Ok(match rec.held {
            Held::List { granules } => Taken {
                granules,
                bounce_buffer: None,
            },
            // The span the map reserved: offset and size rounded up to granules (the domain's
            // `reserve` checked that this does not overflow).
            held => Taken {
                granules: (offset + rec.size).div_ceil(1 << g),
                bounce_buffer: match held {
                    Held::Bounced(phys) => Some(phys),
                    _ => None,
                },
            },
        })
    }

    /// Mappings recorded and live (locks every shard's table briefly; a slot being claimed
    /// counts as live).
    pub fn counts(&self) -> Counts {
        self.slots.iter().zip(self.tables.iter()).fold(
            Counts {
                recorded: 0,
                live: 0,
            },
            |c, (s, t)| {
                let t = t.lock();
                Counts {
                    recorded: c.recorded + s.recorded.load(Ordering::Relaxed) + t.recorded,
                    live: c.live
                        + u64::from(s.key.load(Ordering::Relaxed) != EMPTY)
                        + t.more.len() as u64,
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
            size: 4096,
            held: Held::Single,
        }
    }

    fn expect(dev: u64) -> Expect {
        Expect {
            dev,
            kind: Kind::Single,
            size: 4096,
        }
    }

    #[test]
    fn a_slot_its_record_and_its_count_fit_one_cache_line() {
        assert!(std::mem::size_of::<Slot>() <= 64);
        assert_eq!(std::mem::size_of::<Line<Slot>>(), 64);
        assert!(std::mem::size_of::<Mutex<Table>>() <= 48);
    }

    #[test]
    fn shards_holding_many_mappings_find_each_one() {
        let r = Registry::new(1, 12);
        // Four times as many mappings as shards: every shard holds one inline and more in
        // its table.
        let pfns: Vec<u64> = (1..=4 * SHARDS_PER_CPU as u64).map(|i| i * 7).collect();
        for &p in &pfns {
            r.insert(p << 12, rec(p)).unwrap();
        }
        for &p in &pfns {
            let dma = p << 12;
            let other = Expect {
                dev: p + 1,
                ..expect(p)
            };
            assert_eq!(r.take(dma, other), Err(DmaError::NotMapped { dma }));
            let longer = Expect {
                size: 8192,
                ..expect(p)
            };
            let mismatch = |dma, size| DmaError::Mismatch {
                dma,
                size,
                mapped: 4096,
            };
            assert_eq!(r.take(dma, longer), Err(mismatch(dma, 8192)));
            // Inside the mapping's first granule, but not where it starts.
            assert_eq!(r.take(dma + 8, expect(p)), Err(mismatch(dma + 8, 4096)));
            let list = Expect {
                kind: Kind::List,
                ..expect(p)
            };
            assert_eq!(r.take(dma, list), Err(mismatch(dma, 4096)));
            assert_eq!(
                r.take((p + 1) << 12, expect(p + 1)),
                Err(DmaError::NotMapped { dma: (p + 1) << 12 })
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
            assert_eq!(r.take(p << 12, expect(p)), Ok(taken));
            assert!(r.take(p << 12, expect(p)).is_err(), "taken once");
        }
        assert_eq!(r.counts().live, 0);
    }

    /// Addresses in pfn 0 (the slot's sentinels among them) are never mapped: refused, and
    /// nothing changes, whether the slots are empty or hold (stale or live) records.
    #[test]
    fn addresses_in_pfn_zero_are_refused() {
        let r = Registry::new(1, 12);
        let refused = |r: &Registry| {
            for dma in [EMPTY, BUSY, 0x10, 0xfff] {
                let e = Expect {
                    size: 0,
                    ..expect(0)
                };
                assert_eq!(r.take(dma, e), Err(DmaError::NotMapped { dma }));
                assert_eq!(r.take(dma, expect(0)), Err(DmaError::NotMapped { dma }));
            }
        };
        refused(&r);
        let pfns: Vec<u64> = (1..=2 * SHARDS_PER_CPU as u64).collect();
        for &p in &pfns {
            r.insert(p << 12, rec(0)).unwrap();
        }
        refused(&r);
        for &p in &pfns {
            assert!(r.take(p << 12, expect(0)).is_ok());
        }
        // Every slot empty now, its record stale.
        refused(&r);
        assert_eq!(
            r.counts(),
            Counts {
                recorded: pfns.len() as u64,
                live: 0
            }
        );
    }

    #[test]
    fn a_taken_record_gives_its_span_and_bounce_buffer() {
        let r = Registry::new(1, 12);
        let single = |size, held| Record { dev: 1, size, held };
        // 0x10 into its granule, 0x1ff0 bytes: two granules; bounced.
        r.insert(0x5010, single(0x1ff0, Held::Bounced(0x9000)))
            .unwrap();
        // 0x10 into its granule, 0x1ff1 bytes: three granules.
        r.insert(0x8010, single(0x1ff1, Held::Single)).unwrap();
        // A list whose span is longer than its size.
        r.insert(0xa000, single(0x1000, Held::List { granules: 4 }))
            .unwrap();
        r.insert(0xf000, single(0x1000, Held::Resource)).unwrap();
        let e = |kind, size| Expect { dev: 1, kind, size };
        let t = |granules, bounce_buffer| Taken {
            granules,
            bounce_buffer,
        };
        assert_eq!(
            r.take(0x5010, e(Kind::Single, 0x1ff0)),
            Ok(t(2, Some(0x9000)))
        );
        assert_eq!(r.take(0x8010, e(Kind::Single, 0x1ff1)), Ok(t(3, None)));
        assert_eq!(r.take(0xa000, e(Kind::List, 0x1000)), Ok(t(4, None)));
        assert_eq!(r.take(0xf000, e(Kind::Resource, 0x1000)), Ok(t(1, None)));
        assert_eq!(
            r.counts(),
            Counts {
                recorded: 4,
                live: 0
            }
        );
    }
}
