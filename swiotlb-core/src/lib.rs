//! Bounce buffers for devices with a limited or untrusted view of memory.
//!
//! A device that cannot reach a buffer (a DMA mask below it) or must not see the rest of its
//! page (a confidential VM, an untrusted device behind an IOMMU) is given a copy in a pool it
//! may access instead, and the bytes are copied back when the transfer ends. This crate is the
//! user-space equal of Linux swiotlb with dynamic pools, for VMMs and user-space drivers:
//! 2 KiB slots in 128-slot segments, per-CPU areas with their own locks, every alignment rule
//! of the kernel, bounce copies by direction with partial sync, pools grown in the
//! background, transient pools, a per-device "uses bounce buffers" flag and a lock-free,
//! RCU-published pool list.
//!
//! # API
//!
//! * [`Swiotlb::new`]`(`[`Config`]`, impl `[`OrigMemory`]`)` builds an instance (a cloneable
//!   handle) with its default pool. [`Config::tiny`] and [`Config::restricted`] give small
//!   and restricted configurations.
//! * [`Swiotlb::device`]`(`[`DeviceConfig`]`) -> `[`Device`]: min-align mask, segment
//!   boundary mask, DMA mask; the device owns its sticky flag and its transient pools.
//! * [`Swiotlb::map`]`(dev, orig, size, `[`Direction`]`, `[`MapAttrs`]`) -> Result<u64>`
//!   returns the bounce address; [`Swiotlb::unmap`], [`Swiotlb::sync_for_cpu`],
//!   [`Swiotlb::sync_for_device`] take any bounce address/range of a live mapping;
//!   [`Swiotlb::sync_if_bounced`] syncs an address that may be no bounce address at all
//!   (`Ok(false)`), with one pool lookup.
//! * [`Swiotlb::is_bounce_buffer`], [`Swiotlb::find_pool`]: lock-free lookup.
//! * [`Swiotlb::read_bounce`] / [`Swiotlb::write_bounce`]: the device side.
//! * [`Swiotlb::max_mapping_size`], [`Swiotlb::grow`], [`Swiotlb::grow_by`],
//!   [`Swiotlb::alloc`] / [`Swiotlb::free`] (restricted pools), [`Swiotlb::stats`] (with a
//!   debugfs-style `Display`), [`Swiotlb::reset_hiwater`], [`Swiotlb::check_invariants`].
//! * [`Direction`] picks the copies a sync or unmap makes; [`MapAttrs`] adds the allocation
//!   alignment, `skip_cpu_sync` and zero padding.
//! * [`OrigMemory`] is the caller's memory by physical/DMA address ([`RegionMemory`],
//!   [`ProcessMemory`], or a guest-memory implementation). It copies through [`DmaDst`] /
//!   [`DmaSrc`]: bounce memory, which a device may touch at any moment, is never lent out as a
//!   slice and is accessed only atomically (per byte in assembly on x86-64, per word
//!   elsewhere).
//! * [`copy_bytes`]: the copy of bounce memory applied to plain buffers (benchmarks set it
//!   against `memcpy`).
//! * Errors are [`Error`] values; an operation that fails changes nothing.
//! * [`Swiotlb::stats`] returns a [`StatsSnapshot`] (`Display`: the debugfs-style text; serde
//!   with the `serde` feature).
//! * [`faults`]: the allocation sites (dynamic pool, transient pool, default pool) a test
//!   can make fail with the `fault-injection` feature, each with the fallback that loses nothing.
//! * [`points`]: the named orderings of the lock-free protocols (pool publication, the device
//!   flag, transient lists), each weakened by the model-checking suite to show it is needed.
//!
//! # Address space
//!
//! Bounce addresses and original addresses live in one physical/DMA address space. Pools own
//! real page-aligned memory, and a pool's bounce addresses are the process addresses of that
//! memory, so the same address space as [`ProcessMemory`] and [`RegionMemory`]: an IOMMU layer
//! can map a returned bounce address like any other physical address, and a simulated device
//! can access it through [`Swiotlb::read_bounce`] / [`Swiotlb::write_bounce`].
//!
//! ```
//! use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, OrigMemory, RegionMemory, Swiotlb};
//!
//! let mem = RegionMemory::new(64 * 1024);
//! let buf = mem.base() + 0x1A00;
//! mem.write(buf, &[1, 2, 3, 4]).unwrap();
//! let config = Config { nslabs: 1024, nareas: 2, ..Config::default() };
//! let swiotlb = Swiotlb::new(config, mem).unwrap();
//! let nvme = swiotlb.device(DeviceConfig { min_align_mask: 0xFFF, ..Default::default() });
//!
//! let dma = swiotlb.map(&nvme, buf, 4, Direction::FromDevice, MapAttrs::default()).unwrap();
//! assert_eq!(dma & 0xFFF, 0xA00); // the offset bits under min_align_mask are kept
//! assert!(swiotlb.is_bounce_buffer(&nvme, dma));
//! swiotlb.write_bounce(&nvme, dma, &[9, 9]).unwrap(); // the device writes half
//! swiotlb.unmap(&nvme, dma, 4, Direction::FromDevice, MapAttrs::default()).unwrap();
//! let mut back = [0u8; 4];
//! swiotlb.memory().read(buf, &mut back).unwrap();
//! assert_eq!(back, [9, 9, 3, 4]); // bytes it did not write are unchanged
//! ```
//!
//! # Modules
//!
//! | Module | Concept |
//! |---|---|
//! | `memory` | [`OrigMemory`] (copies between the caller's memory at a physical/DMA address and a [`DmaDst`]/[`DmaSrc`]; `read`/`write` on plain buffers are provided), [`ProcessMemory`] (address = pointer, unsafe constructor), [`RegionMemory`] (safe, bounds-checked, page-aligned shared region; an instance holds one as itself, so map and unmap copy it with no indirect call, and any other implementation as a trait object) |
//! | `shared` | memory a device may access at any moment: `SharedRegion` (the owned aligned array of atomic 64-bit words behind every pool and every [`RegionMemory`]), [`DmaSrc`]/[`DmaDst`], the atomic copies (32-byte AVX moves or `rep movsb` on x86-64, word-wise elsewhere and under Miri and loom) |
//! | `slots` | the free-run counters of one area: init, allocate, free, renumbering, invariant check |
//! | `align` | the alignment rules: offset, searched size, legacy page alignment, allocation and min-align masks, stride, padding slots, boundary window, largest mapping; the shortcut for a request without masks |
//! | `pool` | a pool: aligned region, per-slot metadata, areas each behind its own spin lock, the run each area got back last (cached for the next map of its size), the bounded next-fit search, a release claimed (and an unmap's size checked, when nothing is copied back) by one compare-and-swap of the head slot's metadata |
//! | `thread_cache` | each thread's last freed run of a global pool, taken back by its next map of that size without a lock; drained (a store-buffering pair of asymmetric fences) when a search finds no room; its slots (`dma_sync::thread_slots`) are given back when their thread exits |
//! | `device` | [`DeviceConfig`], the sticky flag, the transient-pool list |
//! | `swiotlb` | [`Swiotlb`] and [`Config`]: the global pool list, search order, transient pools, growth, the lock-free lookup, statistics, invariant check |
//! | `bounce` | map / bounce / sync / unmap, `alloc` / `free` (restricted pools), the device side; the fast paths of map (a simple request served by the thread's cached run) and unmap (no copy back, a global pool, an unpadded head), each a special case of the general path it skips |
//! | `stats` | `used`, the CAS-max high-water mark, transient pools and slots, per-area use, the debugfs-style `Display` |
//! | `error` | [`Error`], [`MemoryError`] |
//! | [`points`], [`faults`] | the named orderings (with the loom models that need each one) and the allocation sites (with their fallbacks) |
//!
//! # Deviations from Linux, deliberate
//!
//! * `alloc_align_mask` is accepted up to [`POOL_ALIGN`] − 1, so a 64 KiB IOMMU granule works;
//!   map rounds the searched size up to the allocation alignment, `alloc` does not.
//! * Slot metadata carry an explicit head bit, in-slot offset and slot count, so unmap and free
//!   validate the address and claim the mapping in one compare-and-swap of the head slot's
//!   metadata: a second unmap (racing or not), a middle slot or an address off by one is
//!   `NotMapped`, never a corrupted counter.
//! * A sync range that leaves its mapping is `OutOfRange` instead of a clamp, and a sync checks
//!   its whole range against one live mapping in every direction, also one that copies nothing
//!   (Linux checks only the ranges it copies).
//! * A transient pool is allocated "just big enough", including the leading slots needed to
//!   reproduce the original's min-align offset bits.
//! * Map can zero the padding of a granule ([`MapAttrs`]`::zero_padding`).
//! * An area keeps the run it freed last out of its free-run counters and gives it to the next
//!   map of the same size that the run qualifies for (Linux: next-fit after the last
//!   allocation), so a map+unmap loop reuses cache-hot bounce memory and never searches or
//!   renumbers. The run it displaces goes back to the counters, where the next search starts;
//!   a search that finds nothing merges the cached run back and searches once more, so a
//!   cached run never makes a map fail.
//! * Before the area, each thread keeps the run its last unmap freed (Linux has no such
//!   cache): its next map of that size takes it back with no lock, so a map+unmap loop pays
//!   one locked instruction (the unmap's claim). A search that finds no room drains every
//!   thread's cache before it gives up; cached slots are not counted as used. A thread that
//!   finds all of an instance's cache slots (four per area of the default pool, 8 to 1024)
//!   claimed takes the locked path, as does every thread with `Config::thread_caches` off; a
//!   thread gives its slots back when it exits.
//!
//! # Limits and what is not done
//!
//! * Pool memory comes from the process heap: `phys_limit` and the DMA mask are checked after
//!   allocation (failure is an error); there is no retry in lower zones and no
//!   decryption/re-encryption step (a guest-memory backend would add it).
//! * With `Config::stats` on (off by default; the kernel keeps the mark only in its debugfs
//!   build) map and unmap update one shared `used` counter for the high-water mark. Off, the hot
//!   path makes no shared write and `used` is the unlocked sum of the per-area counts less the
//!   runs thread caches hold. The counter stays instance-wide on purpose: the high-water mark is the peak
//!   of the *total*, and per-area peaks reached at different times would sum to more than it. The
//!   mark itself is written only by a map that raises it (CAS-max).
//! * The LKMM side of the flag argument (`smp_wmb` instead of a full fence) is checked with herd7
//!   only; the loom suite checks the C11 translation.
//!
//! # Tests
//!
//! * Unit tests: the free-run counters with the kernel's example and a proptest of the
//!   renumbering against a slot-by-slot walk, the cached runs of areas and threads (reused by
//!   the next map of their size, given back when a map needs the slots, also those of another
//!   thread), geometry, every alignment case A–D, the shortcut
//!   plan of simple requests against the general one at every size and alignment, errors, the
//!   high-water mark, both sets of shared-memory copies (bytes and words) against a byte
//!   array at every offset and length and at odd offsets and lengths over several pages,
//!   `device_racing_syncs_and_unmap` (a device thread writing and reading a mapping while the CPU
//!   syncs both ways and unmaps), and the fast paths of map and unmap against the general
//!   paths alone (`bounce/fast_path_tests.rs`: a proptest of random workloads and a fixed
//!   one through every branch, on two instances, one with the fast paths switched off; every
//!   answer, statistic, original and bounce byte the same, the invariants kept).
//! * `tests/alignment.rs`: cases A–D through the API; postconditions over every combination of
//!   min-align, alloc-align, boundary, offset and size; the search-termination regression.
//! * `tests/regressions.rs`: one test per applicable entry of the kernel's bug history
//!   (CVE-2022-0854, CVE-2024-35814, the reverted rework, partial syncs at every offset, syncs
//!   past the end, configurations refused before anything is allocated, transient pools of
//!   1..127 slots, small pool/many CPUs, owner-area free, high-water reset, max mapping size,
//!   padding zeroing, the DMA-mask re-check, the flag, growth), each error path leaving the state
//!   unchanged.
//! * `tests/model.rs`: proptest-made bytes through `dma_soak::diff::swiotlb`, the checker the fuzz
//!   target and the soak share, against the `swiotlb` reference model of `dma-model`.
//! * `tests/stress.rs`: four threads on eight simulated CPUs with transient pools and background
//!   growth (every slot back, every byte round-trips); lookups racing growth; racing double
//!   unmaps of global and transient mappings (each succeeds exactly once, counters exact).
//! * `tests/fault_injection.rs`: see [`faults`].

mod align;
mod bounce;
mod device;
mod error;
pub mod faults;
mod memory;
pub mod points;
mod pool;
mod shared;
mod slots;
mod stats;
mod swiotlb;
mod thread_cache;

pub use bounce::{Direction, MapAttrs};
pub use device::{Device, DeviceConfig, MAX_MIN_ALIGN_MASK, MIN_SEG_BOUNDARY_MASK};
pub use error::{Error, MemoryError};
pub use memory::{OrigMemory, ProcessMemory, RegionMemory};
pub use shared::{copy_bytes, DmaDst, DmaSrc};
pub use stats::{PoolStats, StatsSnapshot};
pub use swiotlb::{Config, PoolInfo, Swiotlb, MAX_NAREAS, MAX_NSLABS};

/// log2 of the slot size.
pub const IO_TLB_SHIFT: u32 = 11;
/// Slot size in bytes.
pub const IO_TLB_SIZE: usize = 1 << IO_TLB_SHIFT;
/// Slots per segment: no allocation crosses a segment (the default and largest segment).
pub const IO_TLB_SEGSIZE: usize = 128;
/// Default pool size in bytes.
pub const IO_TLB_DEFAULT_SIZE: usize = 64 << 20;
/// Smallest pool growth halves down to, in slots.
pub const IO_TLB_MIN_SLABS: usize = 512;
/// Page size used for the legacy page alignment and `alloc`.
pub const PAGE_SIZE: usize = 4096;
/// Alignment of every pool's memory; the largest accepted `alloc_align_mask` is one less.
pub const POOL_ALIGN: usize = 64 * 1024;
/// Original address of a slot with no mapping.
pub const INVALID_PHYS_ADDR: u64 = u64::MAX;

#[cfg(all(test, not(loom)))]
mod tests {
    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<crate::Swiotlb>();
        check::<crate::Device>();
    }
}
