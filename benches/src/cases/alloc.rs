//! The IOVA allocation cases: alloc+free pairs per size class, the fragmentation case (mixed
//! sizes), the asymmetric case, and the scale sweep (random free+alloc from 1k to 1M live
//! allocations), on ours and on every allocator peer through [`RangeAlloc`].

use super::floor::CAS;
use crate::harness::{measure, measure_units, Measurement, RunConfig};
use crate::peers::alloc::{BTreeFirstFit, VmAllocatorPeer};
use crate::peers::{RangeAlloc, GRANULE};
use crate::suite::{Case, Component, Omitted, Options, Role};
use iova_cache::{IovaAllocator, IovaConfig};
use std::sync::{Arc, Mutex};

/// Base of the allocation space of every allocator case (4 GiB).
pub const SPACE_BASE: u64 = 1 << 32;
/// Size of the allocation space (1 TiB).
pub const SPACE_SIZE: u64 = 1 << 40;

/// Workload name of the alloc+free pair of `granules`.
pub fn pair(granules: u64) -> String {
    format!(
        "alloc+free {granules} granule{}",
        if granules == 1 { "" } else { "s" }
    )
}
/// Workload name of the fragmentation case: `Options::fragmentation_live` live allocations of
/// 1..[`MIXED_MAX`] granules (size-aligned), then each op frees a random one and allocates a
/// replacement of a random size.
pub const FRAGMENTATION: &str = "fragmented, 1..64 granules: free+alloc";
/// Workload name of the fragmentation case at the live count the peers with a linear search
/// can be set up with ([`LINEAR_PEER_MAX_LIVE`]), run beside the main one when that is larger.
pub const FRAGMENTATION_SMALL: &str = "fragmented (3k live), 1..64 granules: free+alloc";
/// The largest thread count the fragmentation cases run at.
pub const FRAGMENTATION_MAX_THREADS: usize = 2;
/// The largest size (granules) of the fragmentation case.
pub const MIXED_MAX: u64 = 64;

/// Workload name of the scale sweep at `live` single-granule allocations.
pub fn sweep(live: u64) -> String {
    format!("random free+alloc, {} live", super::human_count(live))
}
/// Workload name of the asymmetric case.
pub const ASYMMETRIC: &str = "asymmetric: alloc on all, free on one";

/// Implementation name of ours with its default configuration.
pub const OURS: &str = "ours";
/// Implementation name of ours without ownership tracking of cached ranges (what a caller that
/// tracks ownership itself, like dma-iommu, configures).
pub const OURS_UNCHECKED: &str = "ours, unchecked frees";
/// Implementation name of our range allocator with the per-CPU caches turned off.
pub const OURS_NO_CACHE: &str = "ours, caches off";
/// Implementation name of the `vm-allocator` peer.
pub const VM_ALLOCATOR: &str = "vm-allocator + Mutex";
/// Implementation name of the first-fit `BTreeMap` peer.
pub const BTREE: &str = "Mutex<BTreeMap> first-fit";

/// The largest fragmentation set-up the peers with a linear search (`vm-allocator`, the
/// first-fit `BTreeMap`) run: with mixed sizes, alignment leaves small holes low in the space
/// that every later allocation walks past, so setting up N allocations costs O(N²).
pub const LINEAR_PEER_MAX_LIVE: usize = 3_000;

/// An allocator factory: a fresh, empty allocator per run.
pub type Factory<A> = Arc<dyn Fn() -> A + Send + Sync>;

/// The allocation cases of one implementation: a pair per size class in `granules`, the
/// fragmentation case if `fragmentation`, and the asymmetric case.
pub fn cases_for<A: RangeAlloc + 'static>(
    opts: &Options,
    implementation: &str,
    role: Role,
    granules: &[u64],
    fragmentation: bool,
    make: Factory<A>,
) -> Vec<Case> {
    let c = Component::Iova;
    let mut v = Vec::new();
    for &g in granules {
        let make = make.clone();
        v.push(
            Case::new(c, pair(g), implementation, role, move |cfg, t| {
                let a = make();
                measure(cfg, t, |_| {
                    let a = &a;
                    move || {
                        if let Some(x) = a.alloc(g) {
                            a.free(x, g);
                        }
                    }
                })
            })
            .with_floor(CAS),
        );
    }
    let live = opts.fragmentation_live;
    if fragmentation {
        let m = make.clone();
        let case = Case::new(c, FRAGMENTATION, implementation, role, move |cfg, t| {
            fragmented(&cfg.timing_each_op(), t, &m(), live, MIXED_MAX)
        });
        // Setting up 300k live allocations per run is the slow part: no oversubscribed runs.
        v.push(case.up_to(FRAGMENTATION_MAX_THREADS));
    }
    let m = make;
    v.push(Case::new(
        c,
        ASYMMETRIC,
        implementation,
        role,
        move |cfg, t| asymmetric(cfg, t, &m()),
    ));
    v
}

/// Our allocator over the suite's allocation space, as a [`RangeAlloc`].
#[derive(Debug)]
pub struct Ours(pub IovaAllocator);

impl Ours {
    /// Our allocator over [`SPACE_BASE`]`..+`[`SPACE_SIZE`], `tune`d from the defaults.
    pub fn new(tune: impl FnOnce(&mut IovaConfig)) -> Self {
        let shift = GRANULE.trailing_zeros();
        let mut cfg = IovaConfig::with_space(
            SPACE_BASE >> shift,
            ((SPACE_BASE + SPACE_SIZE) >> shift) - 1,
        );
        tune(&mut cfg);
        Ours(IovaAllocator::new(cfg).expect("valid allocator configuration"))
    }
}

impl RangeAlloc for Ours {
    #[inline]
    fn alloc(&self, granules: u64) -> Option<u64> {
        let shift = GRANULE.trailing_zeros();
        self.0
            .alloc(granules, self.0.config().end_pfn)
            .ok()
            .map(|pfn| pfn << shift)
    }

    #[inline]
    fn free(&self, addr: u64, granules: u64) {
        // A failed free would be a harness bug; the allocator reports it and keeps working.
        let _ = self.0.free(addr >> GRANULE.trailing_zeros(), granules);
    }
}

/// The workloads' generator: a few cycles per choice, reproducible from a seed.
pub use dma_model::XorShift;

/// How many ops ahead [`fragmented`] picks the slot of its own array it will use.
const PICK_AHEAD: usize = 8;

/// Start loading `x`'s cache line without waiting for it.
#[inline(always)]
fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; it never faults, even on a bad address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Ask for transparent huge pages behind `v`'s buffer, before it is first touched (a hint:
/// where refused or unsupported, nothing changes).
fn huge_pages<T>(v: &mut Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = v.as_mut_ptr() as usize;
        let end = start + v.capacity() * std::mem::size_of::<T>();
        let (lo, hi) = ((start + PAGE - 1) & !(PAGE - 1), end & !(PAGE - 1));
        if hi > lo {
            // SAFETY: advice on whole pages inside the vector's own allocation, which changes
            // no contents and no other mapping.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// `live` allocations of 1..=`max_size` granules spread over the threads (made before the clock
/// starts), then each op frees a random one of the thread's and allocates a replacement of a
/// random size in the same range.
///
/// The harness's own record of the live allocations (24 bytes each, 24 MB at 1M live) is not
/// the allocator's cost, yet at random a read of it misses the caches and, over 4 KiB pages,
/// the TLB, and would dominate a large run (at 1M live it doubled the cost per op). So the
/// record asks for huge pages, and each op picks its slot [`PICK_AHEAD`] ops ahead and
/// prefetches it, at every live count alike; what the allocator touches for the random free
/// (its own metadata of that range) is neither prefetched nor on huge pages.
fn fragmented<A: RangeAlloc>(
    cfg: &RunConfig,
    threads: usize,
    a: &A,
    live: usize,
    max_size: u64,
) -> Measurement {
    let per_thread = (live / threads).max(1);
    measure(cfg, threads, |t| {
        let mut rng = XorShift::new(t as u64 + 1);
        let mut size = move || 1 + rng.below(max_size);
        let mut held: Vec<Option<(u64, u64)>> = Vec::with_capacity(per_thread);
        huge_pages(&mut held);
        held.extend((0..per_thread).map(|_| {
            let g = size();
            a.alloc(g).map(|x| (x, g))
        }));
        let mut pick = XorShift::new(t as u64 + 101);
        let mut ahead = [0usize; PICK_AHEAD];
        ahead.fill_with(|| pick.below(per_thread as u64) as usize);
        let mut next = 0;
        move || {
            let i = std::mem::replace(&mut ahead[next], pick.below(per_thread as u64) as usize);
            prefetch(&held[ahead[next]]);
            next = (next + 1) % PICK_AHEAD;
            let slot = &mut held[i];
            if let Some((x, g)) = slot.take() {
                a.free(x, g);
            }
            let g = size();
            *slot = a.alloc(g).map(|x| (x, g));
        }
    })
}

/// Batches of IOVAs travel from allocating threads to the freeing one in this many.
const ASYM_BATCH: usize = 32;
/// At most this many batches wait for the freeing thread; beyond it the allocating thread frees
/// its batch itself (the "depot full" path), so nothing ever blocks.
const ASYM_QUEUE: usize = 256;

/// Threads 1.. allocate single granules and hand them in batches to thread 0, which frees
/// them (the IRQ-CPU pattern of Linux storage completions). Throughput counts allocations; at
/// one thread the single thread does both.
fn asymmetric<A: RangeAlloc>(cfg: &RunConfig, threads: usize, a: &A) -> Measurement {
    let queue: Mutex<Vec<Vec<u64>>> = Mutex::new(Vec::new());
    measure_units(cfg, threads, |t| {
        let queue = &queue;
        let mut batch: Vec<u64> = Vec::with_capacity(ASYM_BATCH);
        let role_freer = threads > 1 && t == 0;
        let solo = threads == 1;
        move || {
            if solo {
                if let Some(x) = a.alloc(1) {
                    a.free(x, 1);
                }
                1
            } else if role_freer {
                let got = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                match got {
                    Some(b) => b.into_iter().for_each(|x| a.free(x, 1)),
                    None => std::hint::spin_loop(),
                }
                0
            } else {
                if let Some(x) = a.alloc(1) {
                    batch.push(x);
                }
                if batch.len() == ASYM_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(ASYM_BATCH));
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    if q.len() < ASYM_QUEUE {
                        q.push(full);
                    } else {
                        drop(q);
                        full.into_iter().for_each(|x| a.free(x, 1));
                    }
                }
                1
            }
        }
    })
}

/// The allocation cases selected by `opts`: ours, ours without caches, and the peers.
pub fn cases(opts: &Options) -> (Vec<Case>, Vec<Omitted>) {
    if !opts.has(Component::Iova) {
        return (Vec::new(), Vec::new());
    }
    let mut v = Vec::new();
    let mut omitted = Vec::new();
    // Peers run the smallest size class only: that is where the targets compare.
    let peer_granules = &opts.granules[..opts.granules.len().min(1)];
    let linear_fragmentation = opts.fragmentation_live <= LINEAR_PEER_MAX_LIVE;
    if !linear_fragmentation {
        omitted.push(Omitted {
            component: Component::Iova,
            what: format!("{FRAGMENTATION} on {VM_ALLOCATOR} and {BTREE}"),
            reason: format!(
                "their search is linear in the holes alignment leaves: setting up {} mixed-size \
                 allocations would take minutes; they run the {LINEAR_PEER_MAX_LIVE}-live case \
                 instead",
                opts.fragmentation_live
            ),
        });
    }
    v.extend(cases_for(
        opts,
        OURS,
        Role::Ours,
        &opts.granules,
        true,
        Arc::new(|| Ours::new(|_| ())),
    ));
    v.extend(cases_for(
        opts,
        OURS_UNCHECKED,
        Role::Ours,
        peer_granules,
        false,
        Arc::new(|| Ours::new(|c| c.checked_frees = false)),
    ));
    v.extend(cases_for(
        opts,
        OURS_NO_CACHE,
        // Our code with the design choice under test turned off: compared like a peer.
        Role::Peer,
        peer_granules,
        true,
        Arc::new(|| Ours::new(|c| c.caching = false)),
    ));
    v.extend(cases_for(
        opts,
        VM_ALLOCATOR,
        Role::Peer,
        peer_granules,
        linear_fragmentation,
        Arc::new(|| VmAllocatorPeer::new(SPACE_BASE, SPACE_SIZE)),
    ));
    v.extend(cases_for(
        opts,
        BTREE,
        Role::Peer,
        peer_granules,
        linear_fragmentation,
        Arc::new(|| BTreeFirstFit::new(SPACE_BASE, SPACE_SIZE)),
    ));
    if !linear_fragmentation {
        let live = LINEAR_PEER_MAX_LIVE;
        let small = |implementation, role, make: Factory<Box<dyn RangeAlloc + Send>>| {
            Case::new(
                Component::Iova,
                FRAGMENTATION_SMALL,
                implementation,
                role,
                move |cfg, t| fragmented(&cfg.timing_each_op(), t, &make(), live, MIXED_MAX),
            )
            .up_to(FRAGMENTATION_MAX_THREADS)
        };
        v.push(small(
            OURS,
            Role::Ours,
            Arc::new(|| Box::new(Ours::new(|_| ()))),
        ));
        v.push(small(
            VM_ALLOCATOR,
            Role::Peer,
            Arc::new(|| Box::new(VmAllocatorPeer::new(SPACE_BASE, SPACE_SIZE))),
        ));
        v.push(small(
            BTREE,
            Role::Peer,
            Arc::new(|| Box::new(BTreeFirstFit::new(SPACE_BASE, SPACE_SIZE))),
        ));
    }
    for &n in &opts.sweep {
        v.push(
            Case::new(
                Component::Iova,
                sweep(n),
                OURS,
                Role::Ours,
                move |cfg, t| fragmented(cfg, t, &Ours::new(|_| ()), n as usize, 1),
            )
            .up_to(1),
        );
    }
    (v, omitted)
}
