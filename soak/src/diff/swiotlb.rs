//! swiotlb-core against [`dma_model::swiotlb`]: shadow bytes on both sides and a free-space
//! model of the slots.
//!
//! The model keeps the bytes of original memory and, per live mapping, the bytes the device
//! sees, and applies the direction table (a map copies in for every direction;
//! `sync_for_device` copies in for to-device and bidirectional; `sync_for_cpu` and unmap copy
//! out for from-device and bidirectional unless skipped). Every pool's slots are modelled:
//! a successful map must sit on a free run that qualifies for its request (alignment,
//! reproduced offset bits, one segment, one boundary window), a `NoSpace` is allowed only when
//! no qualifying run exists and no transient pool can be made, a `NotDmaCapable` only for a
//! qualifying run beyond the device's mask; request errors are the model's exactly. A sync
//! must lie inside one live mapping in every direction. Writes to original memory can be
//! refused: a refused copy-back must be an error, never a success that lost the device's
//! bytes. Fault sites (growth, transient pools, the default pool) are armed from the input.
//! After every step bounce and original bytes must match the shadows, slot accounting must
//! be exact and `check_invariants` must pass; at the end everything unmapped leaves no slot
//! used and no transient pool.

use super::directives::{run_step, Directed, Directives, Step};
use super::dma::{containing, nth_live, Dir, Len, Pick};
use super::{decode, Divergence, Tracker};
use crate::memory::RefusingMemory;
use arbitrary::Arbitrary;
use dma_model::swiotlb::{copies_on_sync_for_cpu, copies_on_sync_for_device, copies_on_unmap};
use dma_model::swiotlb::{plan, Masks, Plan, SlotSpace};
use dma_sync::fault::Site;
use std::collections::BTreeMap;
use swiotlb_core::{
    faults, Config, Device, DeviceConfig, Direction, Error, MapAttrs, MemoryError, OrigMemory,
    RegionMemory, Swiotlb, INVALID_PHYS_ADDR, IO_TLB_SIZE, PAGE_SIZE, POOL_ALIGN,
};

/// Bytes of original memory.
const ORIG_LEN: usize = 64 * 1024;
/// Slots per segment of the fuzzed instance: small, so segments and pools fill up.
const SEG: usize = 16;
/// The fault sites an input can arm for its next operation (the default pool is armed at
/// construction).
const SITES: [&Site; 2] = [&faults::POOL_GROW, &faults::TRANSIENT_POOL];

#[derive(Debug, Arbitrary)]
enum Op {
    Map {
        dev: u8,
        off: u16,
        size: u16,
        dir: Dir,
        align_shift: u8,
        zero_padding: bool,
    },
    MapBad {
        dev: u8,
        orig: u64,
        size: usize,
        align: u64,
    },
    Unmap {
        pick: Pick,
        len: Len,
        dir: Dir,
        skip: bool,
    },
    SyncForCpu {
        pick: Pick,
        len: Len,
        dir: Dir,
    },
    SyncForDevice {
        pick: Pick,
        len: Len,
        dir: Dir,
    },
    DeviceWrite {
        pick: u8,
        at: u16,
        len: u8,
        byte: u8,
    },
    CpuWrite {
        off: u16,
        len: u8,
        byte: u8,
    },
    Alloc {
        dev: u8,
        size: u16,
    },
    Free {
        pick: Pick,
    },
    Grow {
        slots: u8,
    },
    ResetHiwater {
        value: u8,
    },
    Foreign {
        pick: u8,
    },
    /// The next operation's first allocation at fault site `n` fails.
    Fault(u8),
    /// The next operation's first write to original memory fails.
    RefuseWrite,
}

#[derive(Debug, Clone)]
struct Mapping {
    dev: usize,
    /// Offset of the original buffer in original memory (`None`: an allocation).
    orig: Option<usize>,
    /// What the device sees.
    bounce: Vec<u8>,
    /// In a transient pool of its own (outside the slot model).
    transient: bool,
}

struct World {
    swiotlb: Swiotlb,
    base: u64,
    restricted: bool,
    devs: Vec<Device>,
    foreign: Device,
    orig: Vec<u8>,
    live: BTreeMap<u64, Mapping>,
    dead: Vec<u64>,
    /// The free-space model of the global pools.
    space: SlotSpace,
    /// The high-water mark was reset and no allocation raised it since (it may lie below
    /// `used` until then, as in Linux).
    hiwater_reset: bool,
    directives: Directives,
}

impl Directed for World {
    fn directives(&mut self) -> &mut Directives {
        &mut self.directives
    }
}

impl World {
    fn pick(&self, p: Pick) -> Option<(u64, Option<u64>)> {
        p.resolve(&self.live, &self.dead, |m| m.bounce.len())
    }

    /// The live mapping containing `addr`, with the offset of `addr` in it.
    fn containing(&self, addr: u64) -> Option<(u64, usize)> {
        containing(&self.live, addr, |m| m.bounce.len())
    }

    fn len(&self, l: Len, whole: usize, o: usize) -> usize {
        match l {
            Len::Whole => whole - o.min(whole),
            Len::Small(n) => usize::from(n) % (whole + 64),
            Len::Raw(r) => r,
        }
    }

    fn armed(&self, site: &'static Site) -> bool {
        self.directives.armed(site)
    }

    /// Add the global pools (those `stats` lists) the model does not know yet.
    fn learn_pools(&mut self) {
        for p in &self.swiotlb.stats().pools {
            if !self.space.has_pool(p.start) {
                self.space.add_pool(p.start, p.nslabs, SEG);
            }
        }
    }

    /// A successful map or alloc at `addr` for `plan`: it must sit on a qualifying free run
    /// of a global pool, or alone in a fresh transient pool when no global run qualified.
    fn place(&mut self, t: &Tracker, d: usize, addr: u64, plan: &Plan) -> Result<bool, Divergence> {
        let transient = self
            .swiotlb
            .find_pool(&self.devs[d], addr)
            .is_some_and(|p| p.transient);
        if transient {
            t.check(!self.space.fits(plan) && !self.restricted, || {
                format!("transient pool for {addr:#x} while a global run qualified")
            })?;
            let start = plan.run_start(addr);
            t.check(start.is_some_and(|s| plan.may_start_at(s)), || {
                format!("{addr:#x} breaks {plan:?}")
            })?;
        } else {
            self.space.occupy(addr, plan).map_err(|e| t.fail(e))?;
        }
        self.hiwater_reset = false;
        Ok(transient)
    }

    /// A refusal for want of space: allowed only when no global run qualifies and no
    /// transient pool can be made (restricted pools, an armed fault, or a device mask below
    /// the memory a new pool gets).
    fn no_space_allowed(&self, d: usize, plan: &Plan) -> bool {
        let transient_impossible = self.restricted
            || self.armed(&faults::TRANSIENT_POOL)
            || self.devs[d].config().dma_mask != u64::MAX;
        !self.space.fits(plan) && transient_impossible
    }

    fn map(
        &mut self,
        t: &Tracker,
        d: usize,
        orig: u64,
        size: usize,
        dir: Dir,
        attrs: MapAttrs,
    ) -> Result<(), Divergence> {
        let dev = self.devs[d].clone();
        let cfg = dev.config();
        let used = self.swiotlb.stats().used;
        let real = self.swiotlb.map(&dev, orig, size, dir.real(), attrs);
        let in_region = orig >= self.base
            && (orig - self.base)
                .checked_add(size as u64)
                .is_some_and(|e| e <= ORIG_LEN as u64);
        let masks = Masks {
            min_align: cfg.min_align_mask,
            alloc_align: attrs.alloc_align_mask,
            boundary: cfg.seg_boundary_mask,
        };
        let planned = if orig == INVALID_PHYS_ADDR {
            Err(Error::Memory(MemoryError {
                addr: orig,
                len: size,
            }))
        } else {
            plan(Some(orig), size, masks, true, POOL_ALIGN as u64 - 1, SEG)
        };
        let plan = match (&real, planned) {
            (_, Err(p)) => return t.same("map", real.map(|_| ()), Err(p)),
            (_, Ok(plan)) => plan,
        };
        let addr = match real {
            Ok(addr) => addr,
            Err(e) => {
                let allowed = match e {
                    Error::NoSpace { size: s } => s == size && self.no_space_allowed(d, &plan),
                    Error::NotDmaCapable { addr } => {
                        beyond(addr, size, cfg.dma_mask)
                            && self.space.check_placement(addr, &plan).is_ok()
                    }
                    Error::Memory(_) => !in_region,
                    _ => false,
                };
                t.check(allowed, || {
                    format!(
                        "map of {orig:#x}+{size} refused with {e:?}; model {plan:?}, a free run at {:x?}; {}",
                        self.space.first_fit(&plan),
                        self.swiotlb.stats()
                    )
                })?;
                return t.same(
                    "slots used after a failed map",
                    self.swiotlb.stats().used,
                    used,
                );
            }
        };
        t.check(in_region, || {
            format!("map of {orig:#x}+{size} outside original memory gave {addr:#x}")
        })?;
        t.check((addr ^ orig) & cfg.min_align_mask == 0, || {
            format!("{addr:#x} does not keep min_align bits of {orig:#x}")
        })?;
        t.check(!beyond(addr, size, cfg.dma_mask), || {
            format!("{addr:#x}+{size} beyond the DMA mask")
        })?;
        t.check(
            self.swiotlb.is_bounce_buffer(&dev, addr)
                && self.swiotlb.is_bounce_buffer(&dev, addr + size as u64 - 1),
            || "mapping outside the device's pools".into(),
        )?;
        let transient = self.place(t, d, addr, &plan)?;
        let off = (orig - self.base) as usize;
        let bounce = self.orig[off..off + size].to_vec();
        self.dead.retain(|&x| x != addr);
        self.live.insert(
            addr,
            Mapping {
                dev: d,
                orig: Some(off),
                bounce,
                transient,
            },
        );
        Ok(())
    }

    /// Forget a released mapping.
    fn released(&mut self, addr: u64) {
        if let Some(m) = self.live.remove(&addr) {
            if !m.transient {
                self.space.release(addr);
            }
            self.dead.push(addr);
        }
    }

    /// Original memory and every live mapping's bounce bytes match the shadows.
    fn check_bytes(&self, t: &Tracker, whole: bool) -> Result<(), Divergence> {
        for (&a, m) in &self.live {
            let mut seen = vec![0u8; m.bounce.len()];
            self.swiotlb
                .read_bounce(&self.devs[m.dev], a, &mut seen)
                .map_err(|e| t.fail(format!("read_bounce {a:#x}: {e}")))?;
            t.check(seen == m.bounce, || {
                format!("bounce bytes of {a:#x} differ from the model")
            })?;
        }
        if whole {
            let mut seen = vec![0u8; ORIG_LEN];
            self.swiotlb
                .memory()
                .read(self.base, &mut seen)
                .map_err(|e| t.fail(format!("read original: {e}")))?;
            let first = seen.iter().zip(&self.orig).position(|(a, b)| a != b);
            t.check(first.is_none(), || {
                format!("original memory differs from the model at offset {first:?}")
            })?;
        }
        Ok(())
    }
}

/// Whether `addr + size - 1` lies beyond `mask`.
fn beyond(addr: u64, size: usize, mask: u64) -> bool {
    addr.checked_add(size as u64 - 1).map_or(true, |e| e > mask)
}

/// Run one input. The first byte picks the configuration (restricted or growing pools, and
/// whether the default pool's allocation is made to fail first).
pub fn run(data: &[u8]) -> Result<(), Divergence> {
    let sel = data.first().copied().unwrap_or(0);
    let ops: Vec<Op> = decode(data.get(1..).unwrap_or_default());
    let restricted = sel & 1 == 1;
    let cfg = if restricted {
        Config {
            segment_slots: SEG,
            stats: true,
            ..Config::restricted(64)
        }
    } else {
        Config {
            stats: true,
            ..Config::tiny(64, 2, SEG)
        }
    };
    let mut t = Tracker::default();
    #[cfg(feature = "fault-injection")]
    if sel & 2 != 0 {
        let (r, used) = dma_sync::fault::armed(&faults::DEFAULT_POOL, 1, || {
            Swiotlb::new(cfg.clone(), RegionMemory::new(64)).map(|_| ())
        });
        t.same(
            "new with its default pool failing",
            (r, used),
            (Err(Error::PoolAlloc { nslabs: 64 }), 1),
        )?;
    }
    let (mem, refusals) = RefusingMemory::new(ORIG_LEN);
    let base = mem.base();
    let pattern: Vec<u8> = (0..ORIG_LEN)
        .map(|i| (i * 7 + usize::from(sel)) as u8)
        .collect();
    mem.write(base, &pattern).expect("fresh region");
    let swiotlb = Swiotlb::new(cfg, mem).expect("tiny configuration");
    let other = Swiotlb::new(Config::tiny(16, 1, SEG), RegionMemory::new(4096))
        .expect("tiny configuration");
    let devs = vec![
        swiotlb.device(DeviceConfig::default()),
        swiotlb.device(DeviceConfig {
            min_align_mask: 0xFFF,
            ..Default::default()
        }),
        swiotlb.device(DeviceConfig {
            min_align_mask: 0x7FF,
            seg_boundary_mask: 0x7FFF,
            ..Default::default()
        }),
        swiotlb.device(DeviceConfig {
            dma_mask: 0xFFFF_FFFF,
            ..Default::default()
        }),
    ];
    let foreign = other.device(DeviceConfig::default());
    let mut w = World {
        swiotlb,
        base,
        restricted,
        devs,
        foreign,
        orig: pattern,
        live: BTreeMap::new(),
        dead: Vec::new(),
        space: SlotSpace::default(),
        hiwater_reset: false,
        directives: Directives::new(&SITES, refusals),
    };
    w.learn_pools();
    for (step, op) in ops.iter().enumerate() {
        t.enter(step, op);
        let step = match *op {
            Op::Fault(n) => Step::Fault(n),
            Op::RefuseWrite => Step::RefuseWrite,
            Op::Unmap { .. } | Op::SyncForCpu { .. } => Step::Call { copies_back: true },
            _ => Step::Call { copies_back: false },
        };
        let Some(whole) = run_step(&mut w, step, |w| apply(w, &t, op)) else {
            continue;
        };
        let whole = whole?;
        w.check_bytes(&t, whole)?;
        check_accounting(&t, &w)?;
    }
    t.finish();
    w.check_bytes(&t, true)?;
    let live: Vec<(u64, Mapping)> = std::mem::take(&mut w.live).into_iter().collect();
    for (a, m) in live {
        let d = &w.devs[m.dev];
        let r = if m.orig.is_some() {
            w.swiotlb.unmap(
                d,
                a,
                m.bounce.len(),
                Direction::ToDevice,
                MapAttrs::default(),
            )
        } else {
            w.swiotlb.free(d, a)
        };
        t.same("final release", r, Ok(()))?;
    }
    let s = w.swiotlb.stats();
    t.same("slots used at the end", s.used, 0)?;
    t.same("transient pools at the end", s.transient_pools, 0)?;
    t.same(
        "device transient pools at the end",
        w.devs.iter().map(Device::transient_pools).sum::<usize>(),
        0,
    )?;
    t.check(w.swiotlb.check_invariants().is_ok(), || {
        format!("{:?}", w.swiotlb.check_invariants())
    })
}

/// Apply one operation to the allocator and the model; `Ok(true)` when original memory may
/// have changed (compare all of it).
fn apply(w: &mut World, t: &Tracker, op: &Op) -> Result<bool, Divergence> {
    let base = w.base;
    match *op {
        Op::Map {
            dev,
            off,
            size,
            dir,
            align_shift,
            zero_padding,
        } => {
            let d = usize::from(dev) % w.devs.len();
            let orig = base + u64::from(off) % ORIG_LEN as u64;
            let align = match align_shift % 8 {
                0..=3 => 0,
                s => (1u64 << (9 + 2 * s)) - 1,
            };
            let attrs = MapAttrs {
                alloc_align_mask: align,
                skip_cpu_sync: false,
                zero_padding,
            };
            w.map(t, d, orig, usize::from(size) % (40 * 1024), dir, attrs)?;
        }
        Op::MapBad {
            dev,
            orig,
            size,
            align,
        } => {
            let d = usize::from(dev) % w.devs.len();
            let attrs = MapAttrs {
                alloc_align_mask: align,
                ..Default::default()
            };
            w.map(t, d, orig, size, Dir::Bi, attrs)?;
        }
        Op::Unmap {
            pick,
            len,
            dir,
            skip,
        } => {
            let Some((addr, start)) = w.pick(pick) else {
                return Ok(false);
            };
            let m = start.and_then(|s| w.live.get(&s)).cloned();
            let whole_len = m.as_ref().map_or(IO_TLB_SIZE, |m| m.bounce.len());
            let size = w.len(len, whole_len, 0);
            let dev = m.as_ref().map_or(0, |m| m.dev);
            let used = w.swiotlb.stats().used;
            let armed = w.directives.refusals.left();
            let real = w.swiotlb.unmap(
                &w.devs[dev],
                addr,
                size,
                dir.real(),
                MapAttrs {
                    skip_cpu_sync: skip,
                    ..Default::default()
                },
            );
            let refused = w.directives.refusals.left() < armed;
            match (real, m.filter(|_| start == Some(addr))) {
                // Releasing an allocation through unmap is the caller's own loss, as in
                // Linux; it may also refuse (no original to copy back to).
                (Ok(()), Some(m)) if m.orig.is_none() => w.released(addr),
                (Err(Error::NotMapped { .. } | Error::OutOfRange { .. }), Some(m))
                    if m.orig.is_none() => {}
                (Ok(()), Some(m)) => {
                    t.check(size > 0 && size <= m.bounce.len(), || {
                        format!(
                            "unmap of {size} bytes of a {}-byte mapping accepted",
                            m.bounce.len()
                        )
                    })?;
                    t.check(!refused, || {
                        "unmap returned Ok although its copy-back to original memory was refused: the device's bytes are lost".into()
                    })?;
                    if copies_on_unmap(dir.real(), skip) {
                        let off = m.orig.expect("mapping");
                        w.orig[off..off + size].copy_from_slice(&m.bounce[..size]);
                    }
                    w.released(addr);
                    return Ok(true);
                }
                // A refused copy-back: an error, and the mapping either stays (retry) or is
                // released exactly once; original memory is unchanged either way.
                (Err(Error::Memory(_)), Some(m)) if refused && m.orig.is_some() => {
                    let now = w.swiotlb.stats().used;
                    if now < used {
                        w.released(addr);
                    } else {
                        t.same(
                            "slots after a refused copy-back that kept the mapping",
                            now,
                            used,
                        )?;
                    }
                    return Ok(true);
                }
                (Ok(()), None) => {
                    return Err(t.fail(format!(
                        "unmap of {addr:#x}, not a live mapping start, succeeded"
                    )))
                }
                (Err(Error::OutOfRange { .. }), Some(m)) => {
                    t.check(size == 0 || size > m.bounce.len(), || {
                        format!("unmap of {size} of {} refused", m.bounce.len())
                    })?;
                }
                (Err(e), Some(_)) => {
                    return Err(t.fail(format!("unmap of a live mapping failed: {e:?}")))
                }
                (Err(e), None) => t.check(
                    matches!(e, Error::NotMapped { .. } | Error::OutOfRange { .. }),
                    || format!("unmap error {e:?}"),
                )?,
            }
        }
        Op::SyncForCpu { pick, len, dir } | Op::SyncForDevice { pick, len, dir } => {
            let Some((addr, _)) = w.pick(pick) else {
                return Ok(false);
            };
            sync(w, t, matches!(op, Op::SyncForCpu { .. }), addr, len, dir)?;
            return Ok(true);
        }
        Op::DeviceWrite {
            pick,
            at,
            len,
            byte,
        } => {
            let Some((a, _)) = nth_live(&w.live, pick) else {
                return Ok(false);
            };
            let m = w.live.get_mut(&a).expect("live");
            let o = usize::from(at) % m.bounce.len();
            let n = usize::from(len).min(m.bounce.len() - o);
            let data = vec![byte; n];
            w.swiotlb
                .write_bounce(&w.devs[m.dev], a + o as u64, &data)
                .map_err(|e| t.fail(format!("write_bounce: {e}")))?;
            m.bounce[o..o + n].copy_from_slice(&data);
        }
        Op::CpuWrite { off, len, byte } => {
            let o = usize::from(off) % ORIG_LEN;
            let n = usize::from(len).min(ORIG_LEN - o);
            w.swiotlb
                .memory()
                .write(base + o as u64, &vec![byte; n])
                .map_err(|e| t.fail(format!("write: {e}")))?;
            w.orig[o..o + n].fill(byte);
        }
        Op::Alloc { dev, size } => alloc(
            w,
            t,
            usize::from(dev) % w.devs.len(),
            usize::from(size) % (20 * 1024),
        )?,
        Op::Free { pick } => {
            let Some((addr, start)) = w.pick(pick) else {
                return Ok(false);
            };
            // Freeing a streaming mapping's start through `free` is accepted as in Linux (the
            // caller's own loss); anything else that is not an allocation is refused.
            let alloc = start.filter(|s| *s == addr);
            let dev = start.map_or(0, |s| w.live[&s].dev);
            match (w.swiotlb.free(&w.devs[dev], addr), alloc) {
                (Ok(()), Some(a)) => w.released(a),
                (Ok(()), None) => {
                    return Err(t.fail(format!("free of {addr:#x}, not an allocation, succeeded")))
                }
                (Err(e), Some(a)) if w.live[&a].orig.is_none() => {
                    return Err(t.fail(format!("free of a live allocation failed: {e:?}")))
                }
                // Anything that is not a live allocation, a streaming mapping included, is
                // refused with the error of a missing allocation.
                (Err(e), _) => {
                    let ok = matches!(e, Error::NotMapped { .. } | Error::OutOfRange { .. })
                        || (!w.restricted && e == Error::NotForAlloc);
                    t.check(ok, || format!("free error {e:?}"))?;
                }
            }
        }
        Op::Grow { slots } => {
            let (pools, before) = (w.swiotlb.stats().pools.len(), w.swiotlb.stats().nslabs);
            let slots = usize::from(slots);
            match w.swiotlb.grow_by(slots) {
                Ok(n) => {
                    t.check(
                        !w.restricted && slots > 0 && !w.armed(&faults::POOL_GROW) && n >= slots,
                        || format!("grow_by({slots}) added {n}"),
                    )?;
                    t.same("slots after growth", w.swiotlb.stats().nslabs, before + n)?;
                    w.learn_pools();
                }
                Err(e) => {
                    // Refused on a restricted pool; for zero slots (a configuration error,
                    // whose message is prose); with the growth fault armed, the slots of
                    // the pool it tried to add (whole segments).
                    let ok = match e {
                        Error::GrowthDisabled => w.restricted,
                        Error::InvalidConfig(_) => !w.restricted && slots == 0,
                        Error::PoolAlloc { nslabs } => {
                            !w.restricted && w.armed(&faults::POOL_GROW) && nslabs >= slots
                        }
                        _ => false,
                    };
                    t.check(ok, || format!("grow_by({slots}): {e:?}"))?;
                    t.same(
                        "pools after a failed growth",
                        w.swiotlb.stats().pools.len(),
                        pools,
                    )?;
                }
            }
        }
        Op::ResetHiwater { value } => {
            let expected = if value == 0 {
                Ok(())
            } else {
                Err(Error::BadReset {
                    value: u64::from(value),
                })
            };
            t.same(
                "reset_hiwater",
                w.swiotlb.reset_hiwater(u64::from(value)),
                expected,
            )?;
            w.hiwater_reset |= value == 0;
        }
        Op::Foreign { pick } => {
            let addr = nth_live(&w.live, pick).map_or(base, |(a, _)| a);
            let f = &w.foreign;
            t.same(
                "foreign map",
                w.swiotlb
                    .map(f, base, 16, Direction::Bidirectional, MapAttrs::default()),
                Err(Error::ForeignDevice),
            )?;
            t.same(
                "foreign unmap",
                w.swiotlb
                    .unmap(f, addr, 16, Direction::Bidirectional, MapAttrs::default()),
                Err(Error::ForeignDevice),
            )?;
            t.same(
                "foreign sync",
                w.swiotlb
                    .sync_for_cpu(f, addr, 16, Direction::Bidirectional),
                Err(Error::ForeignDevice),
            )?;
            t.check(
                !w.swiotlb.is_bounce_buffer(f, addr) && w.swiotlb.find_pool(f, addr).is_none(),
                || "foreign lookup found a pool".into(),
            )?;
        }
        Op::Fault(_) | Op::RefuseWrite => {}
    }
    Ok(false)
}

/// A sync must lie inside one live mapping in every direction (stricter than Linux, which
/// checks nothing); inside, it copies what the direction table says.
fn sync(
    w: &mut World,
    t: &Tracker,
    for_cpu: bool,
    addr: u64,
    len: Len,
    dir: Dir,
) -> Result<(), Divergence> {
    let inside = w.containing(addr).filter(|(a, _)| w.live[a].orig.is_some());
    let whole_len = inside.map_or(IO_TLB_SIZE, |(a, _)| w.live[&a].bounce.len());
    let size = w.len(len, whole_len, inside.map_or(0, |(_, o)| o));
    let dev = inside.map_or(0, |(a, _)| w.live[&a].dev);
    let d = &w.devs[dev];
    let armed = w.directives.refusals.left();
    let real = if for_cpu {
        w.swiotlb.sync_for_cpu(d, addr, size, dir.real())
    } else {
        w.swiotlb.sync_for_device(d, addr, size, dir.real())
    };
    let refused = w.directives.refusals.left() < armed;
    let copies = if for_cpu {
        copies_on_sync_for_cpu(dir.real())
    } else {
        copies_on_sync_for_device(dir.real())
    };
    let fits = inside.filter(|&(a, o)| {
        size > 0
            && o.checked_add(size)
                .is_some_and(|e| e <= w.live[&a].bounce.len())
    });
    match (real, fits) {
        (r, _) if size == 0 => t.same("sync of 0 bytes", r, Err(Error::ZeroSize)),
        (Ok(()), Some((a, o))) => {
            t.check(!refused, || {
                "sync_for_cpu returned Ok although its copy to original memory was refused".into()
            })?;
            let m = w.live.get_mut(&a).expect("live");
            let at = m.orig.expect("mapping") + o;
            if copies && for_cpu {
                w.orig[at..at + size].copy_from_slice(&m.bounce[o..o + size]);
            } else if copies {
                m.bounce[o..o + size].copy_from_slice(&w.orig[at..at + size]);
            }
            Ok(())
        }
        (Err(Error::Memory(_)), Some(_)) if refused && copies && for_cpu => Ok(()),
        (Err(e), Some(_)) => Err(t.fail(format!("sync inside a live mapping failed: {e:?}"))),
        (r, None) => t.check(
            matches!(r, Err(Error::NotMapped { .. } | Error::OutOfRange { .. })),
            || {
                format!(
                    "sync of {addr:#x}+{size:#x} ({dir:?}) not inside one live mapping (model {inside:?}): {r:?}"
                )
            },
        ),
    }
}

/// A bounce allocation from a restricted pool: page-aligned to its order, on a qualifying
/// free run; refused exactly as the model says.
fn alloc(w: &mut World, t: &Tracker, d: usize, size: usize) -> Result<(), Divergence> {
    let cfg = w.devs[d].config();
    let used = w.swiotlb.stats().used;
    let real = w.swiotlb.alloc(&w.devs[d], size);
    let order = size.div_ceil(PAGE_SIZE).next_power_of_two() * PAGE_SIZE;
    let planned = if !w.restricted {
        Err(Error::NotForAlloc)
    } else {
        let masks = Masks {
            min_align: cfg.min_align_mask,
            alloc_align: order as u64 - 1,
            boundary: cfg.seg_boundary_mask,
        };
        plan(None, size, masks, false, u64::MAX, SEG)
    };
    match (real, planned) {
        (r, Err(p)) => t.same("alloc", r.map(|_| ()), Err(p)),
        (Ok(addr), Ok(plan)) => {
            t.check(addr % order as u64 == 0, || {
                format!("alloc {addr:#x} not aligned to {order:#x}")
            })?;
            w.place(t, d, addr, &plan)?;
            let mut bytes = vec![0; size];
            w.swiotlb
                .read_bounce(&w.devs[d], addr, &mut bytes)
                .map_err(|e| t.fail(e.to_string()))?;
            w.dead.retain(|&x| x != addr);
            w.live.insert(
                addr,
                Mapping {
                    dev: d,
                    orig: None,
                    bounce: bytes,
                    transient: false,
                },
            );
            Ok(())
        }
        (Err(e), Ok(plan)) => {
            t.check(
                e == (Error::NoSpace { size }) && w.no_space_allowed(d, &plan),
                || format!("alloc of {size}: {e:?}, model {plan:?}"),
            )?;
            t.same(
                "slots used after a failed alloc",
                w.swiotlb.stats().used,
                used,
            )
        }
    }
}

/// Every slot is accounted for: the global pools' used slots are exactly the modelled runs,
/// and each live transient mapping has its own pool.
fn check_accounting(t: &Tracker, w: &World) -> Result<(), Divergence> {
    let s = w.swiotlb.stats();
    let transient = w.live.values().filter(|m| m.transient).count();
    t.same(
        "global slots used (real, model)",
        s.used - s.transient_nslabs,
        w.space.used(),
    )?;
    t.same("transient pools", s.transient_pools, transient)?;
    // `used` counts a transient pool's whole `nslabs` while the high-water mark counts the
    // mapping's slots, so only the global part is compared.
    let global = s.used - s.transient_nslabs;
    t.check(
        w.hiwater_reset || s.hiwater.is_some_and(|h| h >= global),
        || format!("hiwater {:?} below used {global}", s.hiwater),
    )?;
    t.check(w.swiotlb.check_invariants().is_ok(), || {
        format!("{:?}", w.swiotlb.check_invariants())
    })
}
