//! The cases of each component. Every component module offers `cases(opts)`, returning the
//! cases to run and what was left out (with the reason).
//!
//! # What is measured
//!
//! Every case runs at 1 and 2 threads and oversubscribed at 4 and 8 (`--threads`), each on a
//! fresh structure built outside the timed region; the fragmentation cases stop at 2 threads and
//! the scale sweeps run at 1 (their set-up dominates).
//!
//! | Component | Ours | Peers / floor |
//! |---|---|---|
//! | floor | — | CAS; dependent and independent chase over the translation working set (4096 pages); dependent chase over each sweep size; page-aligned copies of 512 B, 2, 4 and 64 KiB by glibc's `memcpy` and by swiotlb-core's own copy (`swiotlb_core::copy_bytes`): a bounce is compared with the faster of the two |
//! | iova-cache | alloc+free pair per size class 1–64 granules (default, and with `checked_frees: false`, what dma-iommu configures); fragmented (300k live allocations of 1..64 granules, size-aligned, then free a random one and allocate a random size); asymmetric (threads 1.. allocate and hand batches of 32 to thread 0, which frees; a full hand-over queue makes the allocating thread free itself, so nothing blocks); scale sweep: random free+alloc of single granules with 1k, 10k, 100k and 1M live | `vm-allocator` 0.1.4 `AddressAllocator` behind a `parking_lot::Mutex`; a `Mutex<BTreeMap>` first-fit free list; ours with `caching: false` |
//! | io-pgtable | map+unmap of 4 KiB, 2 MiB and 256×4 KiB (one `map`/`unmap` call each, per-thread disjoint regions); independent translation of 4096 mapped pages with no writer, one writer running flat out, and one throttled to `--writer-rate` map+unmap pairs per second (default 10k/s); dependent translation with 0 and 1 writer; translation under a `Reader` pinned before the clock starts, both kinds; scale sweep: dependent translation with 1k … 1M live mappings. The writer maps and unmaps a page elsewhere on its own thread, pinned to the CPU after the readers', and its achieved rate is recorded as `background_ops_per_sec` | cloud-hypervisor's virtio-iommu store rebuilt from its design (two `RwLock<BTreeMap>`s, both read-locked per translation, overlap check on MAP, linear scan + `retain` on UNMAP); vm-memory 0.18 `Iotlb` behind an `RwLock`; our table behind one global `Mutex` |
//! | swiotlb-core | map+copy+unmap of 512 B, 4 KiB and 64 KiB to and from the device (one area per CPU, 64 MiB pool); pool growth (64 live 64 KiB mappings per thread on a pool that starts at 1 MiB); scale sweep: a 4 KiB bounce while 1k … 1M slots are held by one-slot mappings the measuring thread made (pool: the used slots + 32768) | our pool with one area (the single lock Linux had before areas); a fresh `Vec` per I/O (Firecracker, COCONUT-SVSM, Asterinas TDX), at every thread count |
//! | dma-iommu | map+unmap of 4 KiB through a `Domain`: strict, lazy (per-CPU flush queues, Linux's defaults), an untrusted device with the buffer 512 B into its page (bounced; always strict), and the same untrusted case with invalidations that cost nothing | — |
//!
//! The IOTLB of the dma-iommu cases is dma-iommu's own `SimulatedIotlb`: every range sync, global
//! flush and walk-cache flush busy-waits `--iotlb-sync-ns` (default 530 ns: the ~2,130 cycles per
//! invalidation rIOMMU reports for VT-d, at 4 GHz). Untrusted devices are strict, so with that
//! cost every untrusted unmap pays one sync that neither lazy mode nor a bare bounce pays; the
//! "untrusted vs its parts" target therefore reads the free-IOTLB case, which measures what the
//! layer adds to a bounce.
//!
//! The vm-allocator and first-fit peers cannot take part in the 300k fragmentation case: with
//! mixed sizes, alignment leaves small holes low in the space that every later search walks past,
//! so building 300k live allocations is quadratic (minutes). The program lists that under "left
//! out" and runs a 3k-live fragmentation case, ours beside both peers (with
//! `--fragmentation-live ≤ 3000` they join the main case instead).

pub mod alloc;
pub mod floor;
pub mod iommu;
pub mod pgtable;
pub mod swiotlb;

use crate::suite::{Case, Omitted, Options};

/// Every selected case of the suite, in table order, and what was left out.
pub fn all(opts: &Options) -> (Vec<Case>, Vec<Omitted>) {
    let mut cases = Vec::new();
    let mut omitted = Vec::new();
    let mut add = |(c, o): (Vec<Case>, Vec<Omitted>)| {
        cases.extend(c);
        omitted.extend(o);
    };
    add(floor::cases(opts));
    add(alloc::cases(opts));
    add(pgtable::cases(opts));
    add(swiotlb::cases(opts));
    add(iommu::cases(opts));
    (cases, omitted)
}

/// `n` bytes in the units people say them in ("512 B", "4 KiB", "2 MiB").
///
/// ```
/// assert_eq!(dma_bench::cases::human_bytes(65536), "64 KiB");
/// assert_eq!(dma_bench::cases::human_bytes(512), "512 B");
/// ```
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// A count the way the sweeps name it ("1k", "10k", "1M", "1500").
///
/// ```
/// assert_eq!(dma_bench::cases::human_count(1_000_000), "1M");
/// assert_eq!(dma_bench::cases::human_count(10_000), "10k");
/// assert_eq!(dma_bench::cases::human_count(1_500), "1500");
/// ```
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}
