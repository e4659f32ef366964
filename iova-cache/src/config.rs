//! Geometry and tuning of an allocator.

use crate::error::IovaError;
use std::time::Duration;

/// Most per-CPU slots a configuration may ask for (each slot owns two magazines).
pub const MAX_CPUS: usize = 4096;
/// Largest magazine a configuration may ask for (Linux: 127 entries).
pub const MAX_MAGAZINE_SIZE: usize = 4096;
/// Most magazine entries over all CPU slots of one size class and magazine position
/// (`cpus * magazine_size`): bounds the memory the caches allocate up front to
/// `7 classes * 2 magazines * 2^20 entries * 8 bytes = 112 MiB` (Linux, with one class
/// fewer, at 8192 CPUs with magazines of 127 entries: about 2^20 per class).
pub const MAX_SLOT_ENTRIES: usize = 1 << 20;
/// Longest trim period a configuration may ask for (one hour; longer is `None`).
pub const MAX_TRIM_INTERVAL: Duration = Duration::from_secs(3600);

/// Granules per magazine by default: with the header word a magazine is 1024 bytes in Linux.
pub const DEFAULT_MAGAZINE_SIZE: usize = 127;

/// Number of cached size classes: orders 0..=6, i.e. 1 to 64 granules. Linux caches 1 to 32
/// pages; the class of 64 takes the size-aligned requests of 33..64 granules off the range
/// allocator's lock and its chunks, which set the tail of a mixed-size workload (module
/// `range`, "What a fragmented pair costs"), at the price of rounding 33..63 up to 64.
pub const CACHE_CLASSES: usize = 7;

/// Largest cached request in granules (`2^(CACHE_CLASSES - 1)`).
pub const MAX_CACHED_GRANULES: u64 = 1 << (CACHE_CLASSES - 1);

/// Configuration of an [`crate::IovaAllocator`].
///
/// Fields are public; start from [`IovaConfig::with_space`] or `Default` and override.
/// Tiny values (one or two CPU slots, magazines of two entries) are valid configurations and
/// are what the model tests use.
///
/// ```
/// use iova_cache::IovaConfig;
/// let cfg = IovaConfig { cpus: 2, magazine_size: 4, ..IovaConfig::with_space(1, 4095) };
/// assert!(cfg.validate().is_ok());
/// assert_eq!(cfg.dma_32bit_pfn(), 1 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IovaConfig {
    /// log2 of the granule in bytes (12 = 4 KiB).
    pub granule_shift: u32,
    /// First allocatable pfn (dma-iommu uses at least 1 so pfn 0 is never returned).
    pub start_pfn: u64,
    /// Last allocatable pfn, inclusive.
    pub end_pfn: u64,
    /// Whether the per-CPU magazine caches are used (`false`: range allocator only).
    pub caching: bool,
    /// Number of per-CPU slots; the calling thread's CPU id is reduced modulo this.
    pub cpus: usize,
    /// Entries per magazine (127 in Linux).
    pub magazine_size: usize,
    /// Period of the background trim that returns depot magazines beyond one per CPU slot to
    /// the range allocator; `None` disables the worker ([`crate::IovaAllocator::trim_once`]
    /// still works). Model builds never start the worker.
    pub trim_interval: Option<Duration>,
    /// Track user-held cached ranges so that a double or mismatched free of a cacheable size
    /// is a typed error instead of a silent corruption. Costs one atomic bit operation per
    /// cached allocation and free (a quarter byte per granule of bitmap where cached ranges
    /// live); callers that track ownership themselves (a page table) may turn it off.
    pub checked_frees: bool,
    /// A per-thread cache of one freed range in front of the CPU magazines (with `caching`):
    /// an alloc+free loop on one thread takes no lock (module `thread_cache`).
    pub thread_caches: bool,
}

impl Default for IovaConfig {
    /// A 48-bit space of 4 KiB granules from pfn 1, caches on, one slot per CPU.
    fn default() -> Self {
        Self::with_space(1, (1u64 << (48 - 12)) - 1)
    }
}

impl IovaConfig {
    /// Defaults over the inclusive pfn space `[start_pfn, end_pfn]`.
    ///
    /// ```
    /// let cfg = iova_cache::IovaConfig::with_space(16, 1023);
    /// assert_eq!((cfg.start_pfn, cfg.end_pfn, cfg.magazine_size), (16, 1023, 127));
    /// ```
    pub fn with_space(start_pfn: u64, end_pfn: u64) -> Self {
        Self {
            granule_shift: 12,
            start_pfn,
            end_pfn,
            caching: true,
            cpus: dma_sync::cpu::count().min(MAX_CPUS),
            magazine_size: DEFAULT_MAGAZINE_SIZE,
            trim_interval: Some(Duration::from_millis(100)),
            checked_frees: true,
            thread_caches: true,
        }
    }

    /// Exclusive end pfn of the 32-bit DMA zone: `2^(32 - granule_shift)`.
    ///
    /// ```
    /// let cfg = iova_cache::IovaConfig { granule_shift: 16, ..Default::default() };
    /// assert_eq!(cfg.dma_32bit_pfn(), 1 << 16); // 64 KiB granules
    /// ```
    pub fn dma_32bit_pfn(&self) -> u64 {
        1u64 << 32u32.saturating_sub(self.granule_shift)
    }

    /// Granules in the space.
    ///
    /// ```
    /// assert_eq!(iova_cache::IovaConfig::with_space(16, 1023).space(), 1008);
    /// ```
    pub fn space(&self) -> u64 {
        self.end_pfn
            .saturating_sub(self.start_pfn)
            .saturating_add(1)
    }

    /// Check every field against its documented range, before anything is allocated:
    ///
    /// | Field | Valid |
    /// |---|---|
    /// | `granule_shift` | `1..=32` |
    /// | `start_pfn`, `end_pfn` | `start_pfn <= end_pfn`, and every IOVA of the space fits in 64 bits: `end_pfn < 2^(64 - granule_shift)` |
    /// | `cpus` | `1..=`[`MAX_CPUS`] |
    /// | `magazine_size` | `1..=`[`MAX_MAGAZINE_SIZE`], and `cpus * magazine_size <= `[`MAX_SLOT_ENTRIES`] |
    /// | `trim_interval` | `None`, or positive and at most [`MAX_TRIM_INTERVAL`] |
    ///
    /// ```
    /// use iova_cache::{IovaConfig, IovaError};
    /// let bad = IovaConfig { cpus: 0, ..IovaConfig::with_space(1, 10) };
    /// assert!(matches!(bad.validate(), Err(IovaError::InvalidConfig(_))));
    /// let huge = IovaConfig { cpus: 4096, magazine_size: 4096, ..IovaConfig::with_space(1, 10) };
    /// assert!(matches!(huge.validate(), Err(IovaError::InvalidConfig(_))));
    /// let wide = IovaConfig::with_space(1, 1 << 52); // 4 KiB granules: past 2^64 bytes
    /// assert!(matches!(wide.validate(), Err(IovaError::InvalidConfig(_))));
    /// ```
    pub fn validate(&self) -> Result<(), IovaError> {
        if self.start_pfn > self.end_pfn {
            return Err(IovaError::InvalidConfig("start_pfn lies above end_pfn"));
        }
        if self.granule_shift == 0 || self.granule_shift > 32 {
            return Err(IovaError::InvalidConfig("granule_shift must be in 1..=32"));
        }
        if self.end_pfn >> (64 - self.granule_shift) != 0 {
            return Err(IovaError::InvalidConfig(
                "end_pfn must lie below 2^(64 - granule_shift): IOVAs are 64-bit",
            ));
        }
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(IovaError::InvalidConfig("cpus must be in 1..=4096"));
        }
        if self.magazine_size == 0 || self.magazine_size > MAX_MAGAZINE_SIZE {
            return Err(IovaError::InvalidConfig(
                "magazine_size must be in 1..=4096",
            ));
        }
        if self.cpus * self.magazine_size > MAX_SLOT_ENTRIES {
            return Err(IovaError::InvalidConfig(
                "cpus * magazine_size must be at most 2^20",
            ));
        }
        match self.trim_interval {
            Some(Duration::ZERO) => {
                return Err(IovaError::InvalidConfig("trim_interval must be positive"))
            }
            Some(t) if t > MAX_TRIM_INTERVAL => {
                return Err(IovaError::InvalidConfig(
                    "trim_interval must be at most one hour",
                ))
            }
            _ => {}
        }
        Ok(())
    }
}
