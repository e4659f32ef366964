//! The fast paths of map and unmap against the general paths alone: the same operations on
//! two instances, one with the fast paths switched off, give the same results (bounce
//! addresses as offsets in the instance's pools), the same statistics, the same bytes and
//! consistent pools.

use crate::{
    Config, Device, DeviceConfig, Direction, Error, MapAttrs, OrigMemory, RegionMemory, Swiotlb,
};
use proptest::prelude::*;
use std::cell::Cell;

thread_local! {
    /// Whether this thread's maps and unmaps take their fast paths.
    static FAST_PATHS: Cell<bool> = const { Cell::new(true) };
}

/// Whether map and unmap take their fast paths on the calling thread (see `bounce`).
pub(super) fn fast_paths() -> bool {
    FAST_PATHS.with(Cell::get)
}

/// Bytes of original memory of each instance (under Miri, enough for the fixed workload:
/// every step compares them all).
const ORIG_LEN: usize = if cfg!(miri) { 17 * 1024 } else { 64 * 1024 };
/// Slots per segment: the longest simple request is 16 KiB.
const SEG: usize = 8;
/// Marks an offset in a transient pool.
const TRANSIENT: u64 = 1 << 62;
/// Stands for every address in no pool.
const OUTSIDE: u64 = u64::MAX;

/// One call, with addresses and sizes as choices the instance turns into its own.
#[derive(Debug, Clone)]
enum Op {
    /// Map `len` bytes at original offset `at` for device `dev`.
    Map {
        dev: usize,
        at: usize,
        len: usize,
        dir: usize,
        attrs: MapAttrs,
    },
    /// Unmap live mapping `pick` (modulo the live ones; the last unmapped one if none), its
    /// address moved by `shift` bytes and its size changed by `grow` bytes (saturating).
    Unmap {
        pick: usize,
        shift: i64,
        grow: i64,
        dir: usize,
        skip_cpu_sync: bool,
    },
    /// Device write into live mapping `pick` (then copied back by a later unmap).
    DeviceWrite { pick: usize, byte: u8 },
}

/// A mapping handed out: its bounce address, size and device (an index).
#[derive(Debug, Clone, Copy)]
struct Live {
    addr: u64,
    len: usize,
    dev: usize,
}

/// The state of a side besides its answers: statistics without addresses, the original
/// bytes, and each live mapping's bounce bytes.
#[derive(Debug, PartialEq)]
struct State {
    area_used: Vec<Vec<usize>>,
    used: usize,
    hiwater: Option<usize>,
    transient_pools: usize,
    orig: Vec<u8>,
    bounce: Vec<Vec<u8>>,
}

/// An instance with its devices, its original memory's base and its mappings.
struct Side {
    swiotlb: Swiotlb,
    devs: Vec<Device>,
    base: u64,
    live: Vec<Live>,
    last_unmapped: Option<Live>,
    fast: bool,
}

impl Side {
    fn new(fast: bool) -> Side {
        let mem = RegionMemory::new(ORIG_LEN);
        let base = mem.base();
        let pattern: Vec<u8> = (0..ORIG_LEN).map(|i| (i * 7 + i / 251) as u8).collect();
        mem.write(base, &pattern).unwrap();
        let swiotlb = Swiotlb::new(Config::tiny(32, 2, SEG), mem).unwrap();
        let devs = [
            DeviceConfig::default(),
            DeviceConfig {
                min_align_mask: 0xFFF,
                ..Default::default()
            },
            DeviceConfig {
                seg_boundary_mask: 0x3FFF,
                ..Default::default()
            },
            // Every pool lies above 4 KiB: every map is `NotDmaCapable`, released again.
            DeviceConfig {
                dma_mask: 0xFFF,
                ..Default::default()
            },
        ]
        .into_iter()
        .map(|c| swiotlb.device(c))
        .collect();
        Side {
            swiotlb,
            devs,
            base,
            live: Vec::new(),
            last_unmapped: None,
            fast,
        }
    }

    /// Bounce address `addr` as an offset from the start of the default pool, or, in a
    /// transient pool (which lies anywhere), as `TRANSIENT` plus its offset in that pool;
    /// `OUTSIDE` for an address in no pool.
    fn offset(&self, addr: u64) -> u64 {
        let pool = self
            .devs
            .iter()
            .find_map(|d| self.swiotlb.find_pool(d, addr));
        let default = &self.swiotlb.stats().pools[0];
        let in_default =
            (default.start..default.start + (default.nslabs * 2048) as u64).contains(&addr);
        match pool {
            Some(p) if p.transient => TRANSIENT | (addr - p.start),
            _ if in_default => addr - default.start,
            _ => OUTSIDE,
        }
    }

    /// The error `e` with its bounce address made an offset by `offset`.
    fn relative(e: Error, offset: impl Fn(u64) -> u64) -> Error {
        match e {
            Error::NotMapped { addr } => Error::NotMapped { addr: offset(addr) },
            Error::OutOfRange { addr, size } => Error::OutOfRange {
                addr: offset(addr),
                size,
            },
            Error::NotDmaCapable { addr } => Error::NotDmaCapable { addr: offset(addr) },
            other => other,
        }
    }

    /// Apply `op` with this side's paths; the answer with addresses as offsets. The live
    /// mapping an operation picks gets its offset before the call (an unmap may free its
    /// transient pool).
    fn apply(&mut self, op: &Op) -> Result<u64, Error> {
        let picked = self.picked(op).map(|m| (m.addr, self.offset(m.addr)));
        FAST_PATHS.with(|f| f.set(self.fast));
        let r = self.call(op);
        FAST_PATHS.with(|f| f.set(true));
        let offset = |a: u64| match picked {
            Some((addr, off)) if addr == a => off,
            _ => self.offset(a),
        };
        r.map(offset).map_err(|e| Self::relative(e, offset))
    }

    /// The mapping `op` picks: a live one, or the last unmapped one if none is live.
    fn picked(&self, op: &Op) -> Option<Live> {
        let pick = match *op {
            Op::Map { .. } => return None,
            Op::Unmap { pick, .. } | Op::DeviceWrite { pick, .. } => pick,
        };
        match self.live.len() {
            0 => self.last_unmapped,
            n => Some(self.live[pick % n]),
        }
    }

    fn call(&mut self, op: &Op) -> Result<u64, Error> {
        let s = &self.swiotlb;
        match *op {
            Op::Map {
                dev,
                at,
                len,
                dir,
                attrs,
            } => {
                let d = &self.devs[dev];
                let a = s.map(d, self.base + at as u64, len, Direction::ALL[dir], attrs)?;
                self.live.push(Live { addr: a, len, dev });
                Ok(a)
            }
            Op::Unmap {
                pick,
                shift,
                grow,
                dir,
                skip_cpu_sync,
            } => {
                let m = self.picked(op).ok_or(Error::ZeroSize)?;
                let addr = m.addr.wrapping_add_signed(shift);
                let size = m.len.saturating_add_signed(grow as isize);
                let attrs = MapAttrs {
                    skip_cpu_sync,
                    ..MapAttrs::default()
                };
                s.unmap(&self.devs[m.dev], addr, size, Direction::ALL[dir], attrs)?;
                if shift == 0 && !self.live.is_empty() {
                    self.last_unmapped = Some(self.live.swap_remove(pick % self.live.len()));
                }
                Ok(addr)
            }
            Op::DeviceWrite { byte, .. } => {
                let m = self.picked(op).ok_or(Error::ZeroSize)?;
                s.write_bounce(&self.devs[m.dev], m.addr, &vec![byte; m.len])?;
                Ok(m.addr)
            }
        }
    }

    /// What must agree between the two sides besides the answers.
    fn state(&self) -> State {
        let st = self.swiotlb.stats();
        let mut orig = vec![0; ORIG_LEN];
        self.swiotlb.memory().read(self.base, &mut orig).unwrap();
        let bounce = self
            .live
            .iter()
            .map(|m| {
                let mut b = vec![0; m.len];
                // A mapping released through a guessed address still lies in its pool,
                // unless that was a transient pool.
                let _ = self.swiotlb.read_bounce(&self.devs[m.dev], m.addr, &mut b);
                b
            })
            .collect();
        let areas = st.pools.iter().map(|p| p.area_used.clone()).collect();
        State {
            area_used: areas,
            used: st.used,
            hiwater: st.hiwater,
            transient_pools: st.transient_pools,
            orig,
            bounce,
        }
    }
}

/// Run `ops` on a side with fast paths and one without, comparing after every step.
fn both_paths_agree(ops: &[Op]) -> Result<(), TestCaseError> {
    let (mut fast, mut general) = (Side::new(true), Side::new(false));
    for (step, op) in ops.iter().enumerate() {
        let (f, g) = (fast.apply(op), general.apply(op));
        prop_assert_eq!(&f, &g, "step {}: {:?}", step, op);
        // Under Miri the whole state is compared at the end only (each comparison reads
        // every original byte).
        if !cfg!(miri) {
            prop_assert!(fast.state() == general.state(), "step {}: {:?}", step, op);
        }
        prop_assert_eq!(fast.swiotlb.check_invariants(), Ok(()));
        prop_assert_eq!(general.swiotlb.check_invariants(), Ok(()));
    }
    prop_assert!(fast.state() == general.state());
    // Unmapping all that is left leaves both empty.
    for side in [&mut fast, &mut general] {
        while let Some(m) = side.live.pop() {
            let (s, dev) = (&side.swiotlb, &side.devs[m.dev]);
            // Refused for a mapping released through a guessed address before.
            let _ = s.unmap(dev, m.addr, m.len, Direction::ToDevice, MapAttrs::default());
        }
        prop_assert_eq!(side.swiotlb.stats().used, 0);
    }
    prop_assert!(fast.state() == general.state());
    Ok(())
}

fn attrs() -> impl Strategy<Value = MapAttrs> {
    let align = prop_oneof![4 => Just(0u64), 1 => Just(0x7FF), 1 => Just(0xFFF), 1 => Just(0x1234)];
    (align, any::<bool>(), any::<bool>()).prop_map(
        |(alloc_align_mask, skip_cpu_sync, zero_padding)| MapAttrs {
            alloc_align_mask,
            skip_cpu_sync,
            zero_padding,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    // Around the sizes that change the plan: a slot, a page, a segment.
    let len = prop_oneof![
        0..=2 * 2048usize,
        4094..=4098usize,
        (SEG * 2048 - 2)..=(SEG * 2048 + 2),
        1..=SEG * 2048,
    ];
    let map = (
        prop_oneof![6 => Just(0usize), 1 => 1..4usize],
        0..ORIG_LEN / 2,
        len,
        0..3usize,
        attrs(),
    )
        .prop_map(|(dev, at, len, dir, attrs)| Op::Map {
            dev,
            at,
            len,
            dir,
            attrs,
        });
    let shift = prop_oneof![6 => Just(0i64), 1 => Just(1), 1 => Just(2048), 1 => Just(-2048)];
    let grow = prop_oneof![4 => Just(0i64), 1 => -2..=2i64, 1 => -5000..5000i64];
    let unmap = (any::<usize>(), shift, grow, 0..3usize, any::<bool>()).prop_map(
        |(pick, shift, grow, dir, skip_cpu_sync)| Op::Unmap {
            pick,
            shift,
            grow,
            dir,
            skip_cpu_sync,
        },
    );
    let write =
        (any::<usize>(), any::<u8>()).prop_map(|(pick, byte)| Op::DeviceWrite { pick, byte });
    prop_oneof![4 => map, 4 => unmap, 1 => write]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random workloads: every answer and every state the same with and without fast paths.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn fast_paths_match_the_general_paths(ops in proptest::collection::vec(op(), 1..48)) {
        dma_sync::cpu::set_current(Some(0));
        both_paths_agree(&ops)?;
    }
}

/// A fixed workload through every branch of both fast paths (run under Miri): cached runs
/// taken and missed, a masked map, a refused map, unmaps refused for size, offset and a
/// second time, a copy back, and a transient pool.
#[test]
fn a_fixed_workload_agrees() {
    dma_sync::cpu::set_current(Some(0));
    let map = |dev, len, alloc_align_mask| Op::Map {
        dev,
        at: 0x300,
        len,
        dir: 0,
        attrs: MapAttrs {
            alloc_align_mask,
            ..MapAttrs::default()
        },
    };
    let unmap = |shift, grow, dir| Op::Unmap {
        pick: 0,
        shift,
        grow,
        dir,
        skip_cpu_sync: false,
    };
    let ops = [
        map(0, 4096, 0),
        unmap(0, 0, 0),
        map(0, 4096, 0), // the cached run
        unmap(0, 1, 0),  // too long: refused
        unmap(0, -4096, 0),
        unmap(1, 0, 0), // not a mapping's start
        unmap(0, 0, 0),
        unmap(0, 0, 0),  // a second time
        map(0, 3000, 0), // a cache miss: another size
        map(1, 100, 0),  // a masked device
        map(0, 5000, 0xFFF),
        map(3, 100, 0), // beyond the DMA mask
        Op::DeviceWrite { pick: 0, byte: 9 },
        unmap(0, 0, 1), // copied back
        map(0, SEG * 2048, 0),
        map(0, SEG * 2048, 0), // a transient pool, if the pool is full
        unmap(0, 0, 0),
    ];
    both_paths_agree(&ops).unwrap();
}
