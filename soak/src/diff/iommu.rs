//! dma-iommu against a registry of live mappings and shadow memory.
//!
//! The model keeps every live mapping (device, physical range, direction, kind, bounced or
//! not), the bytes of original memory and, for bounced mappings, the bytes the device sees.
//! Maps are checked against the contract (the offset inside the granule kept, inside the
//! device's mask, disjoint IOVA spans, translations to the right physical pages, untrusted and
//! unaligned means bounced with zeroed padding); unmaps and syncs against the registry (exact
//! errors: `ZeroSize`, `ForeignDevice`, `NotMapped`, `Mismatch`), with strict or lazy outcome
//! as the device and the mode dictate. Device accesses go through the page table with the
//! mapping's permissions. The IOTLB records every invalidation: an IOVA handed out again
//! must have been covered by an invalidation that started after its unmap began. After every
//! unmap nothing of it translates; at the end everything unmapped leaves no live mapping, no
//! allocated IOVA, no bounce slot used and nothing pending in the flush queue.

use super::dma::{containing, nth_live, Dir, Len, Pick};
use super::{decode, Divergence, Tracker};
use arbitrary::Arbitrary;
use dma_iommu::test_util::SimulatedDevice;
use dma_iommu::{
    DeviceConfig, DmaError, Domain, DomainConfig, FqConfig, FqKind, PhysSegment, RecordingIotlb,
    SgMapping, Unmapped,
};
use std::collections::BTreeMap;
use std::time::Duration;
use swiotlb_core::{Config as TlbConfig, Direction, OrigMemory, RegionMemory, Swiotlb};

/// Bytes of original memory.
const MEM: usize = 64 * 1024;
/// IOVA granule of the tiny page table.
const GRANULE: u64 = 4096;

#[derive(Debug, Arbitrary)]
enum Op {
    Map {
        dev: u8,
        off: u16,
        size: u16,
        dir: Dir,
    },
    MapRaw {
        dev: u8,
        paddr: u64,
        size: usize,
    },
    Unmap {
        pick: Pick,
        size: Len,
        dir: Dir,
        dev: Option<u8>,
    },
    Sync {
        pick: Pick,
        len: u16,
        for_cpu: bool,
    },
    DeviceWrite {
        pick: u8,
        at: u16,
        len: u8,
        byte: u8,
    },
    DeviceRead {
        pick: u8,
    },
    CpuWrite {
        off: u16,
        len: u8,
        byte: u8,
    },
    MapSg {
        dev: u8,
        segs: Vec<(u16, u16)>,
    },
    UnmapSg {
        pick: u8,
    },
    SetLazy {
        single: bool,
        ring_shift: u8,
    },
    FlushNow,
    Foreign {
        pick: u8,
    },
}

#[derive(Debug, Clone)]
struct Mapping {
    dev: usize,
    /// Offset of the buffer in original memory.
    off: usize,
    size: usize,
    dir: Dir,
    /// What the device sees of a bounced mapping (`None`: it sees original memory).
    bounce: Option<Vec<u8>>,
}

struct World {
    dom: Domain<RecordingIotlb>,
    base: u64,
    devs: Vec<dma_iommu::Device>,
    trusted: Vec<bool>,
    mem: Vec<u8>,
    live: BTreeMap<u64, Mapping>,
    lists: Vec<(usize, SgMapping, Vec<PhysSegment>)>,
    /// Unmapped IOVA spans `[start, end)` with the IOTLB clock before their unmap.
    unmapped: Vec<(u64, u64, u64)>,
    dead: Vec<u64>,
}

fn span(dma: u64, size: usize) -> (u64, u64) {
    let start = dma & !(GRANULE - 1);
    (start, (dma + size as u64).next_multiple_of(GRANULE))
}

impl World {
    fn pick(&self, p: Pick) -> Option<u64> {
        p.resolve(&self.live, &self.dead, |m| m.size)
            .map(|(dma, _)| dma)
    }

    fn containing(&self, dma: u64) -> Option<(u64, usize)> {
        containing(&self.live, dma, |m| m.size)
    }

    /// A new IOVA span must not overlap a live one, and if it reuses an unmapped one, an
    /// invalidation covering it must have run after that unmap began.
    fn check_new_span(&self, t: &Tracker, dma: u64, size: usize) -> Result<(), Divergence> {
        let (s, e) = span(dma, size);
        for (&a, m) in &self.live {
            let (ls, le) = span(a, m.size);
            t.check(e <= ls || le <= s, || {
                format!("IOVA span {s:#x}..{e:#x} overlaps live {ls:#x}..{le:#x}")
            })?;
        }
        for sg in self.lists.iter().flat_map(|(_, m, _)| m.segments.iter()) {
            let (ls, le) = span(sg.addr, sg.len as usize);
            t.check(e <= ls || le <= s, || {
                format!("IOVA span {s:#x}..{e:#x} overlaps a mapped list")
            })?;
        }
        let now = self.dom.tlb().tick();
        for &(us, ue, before) in &self.unmapped {
            if us < e && s < ue {
                let (cs, ce) = (us.max(s), ue.min(e));
                // Per granule: the gather may have synced the span in several ranges.
                let covered = (cs..ce)
                    .step_by(GRANULE as usize)
                    .all(|g| self.dom.tlb().covered_between(g, g + GRANULE, before, now));
                t.check(covered, || {
                    let log: Vec<_> = self.dom.tlb().log().into_iter().filter(|i| i.started > before).collect();
                    format!("IOVA {cs:#x}..{ce:#x} reused without an invalidation after its unmap (clock {before}..{now}; since: {log:?})")
                })?;
            }
        }
        Ok(())
    }

    fn map(
        &mut self,
        t: &Tracker,
        d: usize,
        off: u64,
        paddr: u64,
        size: usize,
        dir: Dir,
    ) -> Result<(), Divergence> {
        let dev = self.devs[d].clone();
        let cfg = *dev.config();
        let before = self.dom.stats();
        let real = self.dom.map(&dev, paddr, size, dir.real());
        let in_mem = paddr >= self.base
            && off
                .checked_add(size as u64)
                .is_some_and(|e| e <= MEM as u64);
        match real {
            Ok(dma) => {
                t.check(size > 0, || "map of 0 bytes succeeded".into())?;
                let last = dma.checked_add(size as u64 - 1);
                t.check(last.is_some_and(|l| l <= cfg.dma_mask), || {
                    format!("{dma:#x}+{size} beyond the mask")
                })?;
                let bounced = !cfg.trusted && (paddr | (paddr + size as u64)) & (GRANULE - 1) != 0;
                let after = self.dom.stats();
                t.same(
                    "bounced counter",
                    after.bounced - before.bounced,
                    u64::from(bounced),
                )?;
                if !bounced {
                    t.same(
                        "offset in granule",
                        dma & (GRANULE - 1),
                        paddr & (GRANULE - 1),
                    )?;
                    t.same(
                        "translation of the first byte",
                        self.dom.translate(dma),
                        Some(paddr),
                    )?;
                    let l = dma + size as u64 - 1;
                    t.same(
                        "translation of the last byte",
                        self.dom.translate(l),
                        Some(paddr + size as u64 - 1),
                    )?;
                }
                self.check_new_span(t, dma, size)?;
                if !in_mem {
                    // Mapped memory the model does not shadow (a raw address): release it.
                    let r = self.dom.unmap(&dev, dma, size, dir.real());
                    t.check(r.is_ok(), || format!("unmap of a fresh raw mapping: {r:?}"))?;
                    return Ok(());
                }
                let bounce = bounced.then(|| self.mem[off as usize..off as usize + size].to_vec());
                if bounced {
                    // The device sees the buffer and zeros around it, never its neighbours.
                    let (s, e) = span(dma, size);
                    let mut seen = vec![0xAA; (e - s) as usize];
                    let r = SimulatedDevice::new(
                        &self.dom,
                        &dev,
                        self.dom.swiotlb().expect("bounce buffers").memory(),
                    )
                    .read(s, &mut seen);
                    t.check(r.is_ok(), || {
                        format!("device read of a bounced span: {r:?}")
                    })?;
                    let o = (dma - s) as usize;
                    t.check(
                        seen[..o].iter().chain(&seen[o + size..]).all(|&b| b == 0),
                        || "bounce padding not zeroed".into(),
                    )?;
                    t.check(
                        seen[o..o + size] == self.mem[off as usize..off as usize + size],
                        || "bounced bytes differ".into(),
                    )?;
                }
                self.dead.retain(|&x| x != dma);
                self.live.insert(
                    dma,
                    Mapping {
                        dev: d,
                        off: off as usize,
                        size,
                        dir,
                        bounce,
                    },
                );
            }
            Err(e) => {
                let ok = match &e {
                    DmaError::ZeroSize => size == 0,
                    DmaError::Overflow => {
                        paddr.checked_add(size as u64).is_none() || size > usize::MAX / 2
                    }
                    DmaError::BeyondMask { .. } | DmaError::NoIova(_) | DmaError::Bounce(_) => true,
                    DmaError::PageTable(_) => !in_mem,
                    _ => false,
                };
                t.check(ok, || {
                    format!("map of {paddr:#x}+{size} for device {d}: {e:?}")
                })?;
                t.same(
                    "live after a failed map",
                    self.dom.stats().live,
                    before.live,
                )?;
            }
        }
        Ok(())
    }
}

/// Run one input. The first byte picks the page-table depth and the starting mode.
pub fn run(data: &[u8]) -> Result<(), Divergence> {
    let sel = data.first().copied().unwrap_or(0);
    let ops: Vec<Op> = decode(data.get(1..).unwrap_or_default());
    let mem = RegionMemory::new(MEM);
    let base = mem.base();
    let pattern: Vec<u8> = (0..MEM)
        .map(|i| (i * 13 + usize::from(sel)) as u8)
        .collect();
    mem.write(base, &pattern).expect("fresh region");
    let swiotlb = Swiotlb::new(TlbConfig::tiny(64, 1, 32), mem).expect("tiny configuration");
    let levels = 3 + u32::from(sel & 1);
    let mut cfg = DomainConfig::new(io_pgtable::Config::tiny(levels)).expect("tiny geometry");
    cfg.iova.cpus = 2;
    cfg.iova.magazine_size = 2;
    cfg.iova.trim_interval = None;
    if sel & 2 != 0 {
        cfg = cfg.lazy(fq(sel & 4 != 0, 2));
    }
    let dom = Domain::new(cfg, RecordingIotlb::new(), Some(swiotlb)).expect("domain");
    let other = Domain::new(
        DomainConfig::new(io_pgtable::Config::tiny(2)).expect("tiny"),
        RecordingIotlb::new(),
        None,
    )
    .expect("domain");
    let configs = [
        DeviceConfig::default(),
        DeviceConfig {
            trusted: false,
            ..DeviceConfig::default()
        },
        DeviceConfig {
            trusted: false,
            min_align_mask: 0xFFF,
            ..DeviceConfig::default()
        },
        DeviceConfig {
            dma_mask: 0x1_FFFF,
            max_segment_size: 0x2000,
            ..DeviceConfig::default()
        },
    ];
    let devs: Vec<_> = configs
        .iter()
        .map(|c| dom.attach(*c).expect("attach"))
        .collect();
    let foreign = other.attach(DeviceConfig::default()).expect("attach");
    let mut w = World {
        dom,
        base,
        devs,
        trusted: configs.iter().map(|c| c.trusted).collect(),
        mem: pattern,
        live: BTreeMap::new(),
        lists: Vec::new(),
        unmapped: Vec::new(),
        dead: Vec::new(),
    };
    dma_sync::cpu::set_current(Some(usize::from(sel >> 4 & 1)));
    let r = run_ops(&mut w, &foreign, &ops);
    dma_sync::cpu::set_current(None);
    r
}

fn fq(single: bool, ring_shift: u8) -> FqConfig {
    // Small rings fill up (full-ring flushes); a long timeout keeps runs reproducible.
    FqConfig {
        kind: if single {
            FqKind::Single
        } else {
            FqKind::PerCpu
        },
        ring_size: 1 << (1 + ring_shift % 4),
        timeout: Duration::from_secs(3600),
        cpus: 2,
    }
}

fn run_ops(w: &mut World, foreign: &dma_iommu::Device, ops: &[Op]) -> Result<(), Divergence> {
    let mut t = Tracker::default();
    let ndev = w.devs.len();
    for (step, op) in ops.iter().enumerate() {
        t.enter(step, op);
        match op {
            &Op::Map {
                dev,
                off,
                size,
                dir,
            } => {
                let off = u64::from(off) % MEM as u64;
                let size = (usize::from(size) % (20 * 1024)).min(MEM - off as usize);
                w.map(&t, usize::from(dev) % ndev, off, w.base + off, size, dir)?;
            }
            &Op::MapRaw { dev, paddr, size } => {
                let d = usize::from(dev) % ndev;
                let off = paddr.wrapping_sub(w.base);
                w.map(&t, d, off, paddr, size, Dir::Bi)?;
            }
            &Op::Unmap {
                pick,
                size,
                dir,
                dev,
            } => {
                let Some(dma) = w.pick(pick) else { continue };
                let pfn_end = ((dma >> 12) + 1).checked_shl(12).unwrap_or(u64::MAX);
                let m = w
                    .live
                    .range(..pfn_end)
                    .next_back()
                    .filter(|(a, _)| **a >> 12 == dma >> 12)
                    .map(|(&a, m)| (a, m.clone()));
                let in_list = w
                    .lists
                    .iter()
                    .any(|(_, l, _)| l.segments.iter().any(|sg| sg.addr >> 12 == dma >> 12));
                let d = dev.map_or_else(
                    || m.as_ref().map_or(0, |(_, m)| m.dev),
                    |d| usize::from(d) % ndev,
                );
                let size = match size {
                    Len::Whole => m.as_ref().map_or(GRANULE as usize, |(_, m)| m.size),
                    Len::Small(n) => usize::from(n),
                    Len::Raw(r) => r,
                };
                let before = w.dom.tlb().tick();
                let real = w.dom.unmap(&w.devs[d], dma, size, dir.real());
                let expected = match &m {
                    _ if size == 0 => Err(DmaError::ZeroSize),
                    Some((a, m)) if m.dev == d && *a == dma && m.size == size => {
                        Ok(if w.trusted[d] && w.dom.is_lazy() {
                            Unmapped::Queued
                        } else {
                            Unmapped::Synced
                        })
                    }
                    Some((_, m)) if m.dev == d => Err(DmaError::Mismatch {
                        dma,
                        size: size as u64,
                        mapped: m.size as u64,
                    }),
                    _ => Err(DmaError::NotMapped { dma }),
                };
                if in_list && m.is_none() {
                    // A list's record: refused, whichever way (the kind differs).
                    t.check(
                        matches!(
                            real,
                            Err(DmaError::Mismatch { .. }
                                | DmaError::NotMapped { .. }
                                | DmaError::ZeroSize)
                        ),
                        || format!("unmap of a list segment: {real:?}"),
                    )?;
                    continue;
                }
                t.same("unmap", real.clone(), expected)?;
                if real.is_ok() {
                    let (a, m) = m.expect("model agreed");
                    if let (Some(b), Dir::From | Dir::Bi) = (&m.bounce, dir) {
                        w.mem[m.off..m.off + m.size].copy_from_slice(b);
                    }
                    w.live.remove(&a);
                    w.dead.push(a);
                    let (s, e) = span(a, m.size);
                    w.unmapped.push((s, e, before));
                    t.check(
                        (s..e)
                            .step_by(GRANULE as usize)
                            .all(|g| w.dom.translate(g).is_none()),
                        || format!("{a:#x} still translates after its unmap returned"),
                    )?;
                }
            }
            &Op::Sync { pick, len, for_cpu } => {
                let Some(dma) = w.pick(pick) else { continue };
                let inside = w.containing(dma);
                let size = usize::from(len);
                let d = inside.map_or(0, |(a, _)| w.live[&a].dev);
                let dir = inside.map_or(Dir::Bi, |(a, _)| w.live[&a].dir).real();
                let real = if for_cpu {
                    w.dom.sync_for_cpu(&w.devs[d], dma, size, dir)
                } else {
                    w.dom.sync_for_device(&w.devs[d], dma, size, dir)
                };
                let fits = inside.is_some_and(|(a, o)| o + size <= w.live[&a].size);
                match (real, inside) {
                    (Err(e), _) if size == 0 => t.same("sync of 0 bytes", e, DmaError::ZeroSize)?,
                    (Ok(()), Some((a, o))) if fits => {
                        let m = w.live.get_mut(&a).expect("live");
                        if let Some(b) = &mut m.bounce {
                            let at = m.off + o;
                            match (for_cpu, m.dir) {
                                (true, Dir::From | Dir::Bi) => {
                                    w.mem[at..at + size].copy_from_slice(&b[o..o + size])
                                }
                                (false, Dir::To | Dir::Bi) => {
                                    b[o..o + size].copy_from_slice(&w.mem[at..at + size])
                                }
                                _ => {}
                            }
                        }
                    }
                    (Err(e), Some(_)) if fits => {
                        return Err(t.fail(format!("sync inside a live mapping failed: {e:?}")))
                    }
                    // Outside one mapping: refused, or (coherent memory, both ends mapped) a no-op.
                    (Err(e), _) => t.check(
                        matches!(
                            e,
                            DmaError::NotMapped { .. } | DmaError::Bounce(_) | DmaError::Overflow
                        ),
                        || format!("sync error {e:?}"),
                    )?,
                    // A sync that copies nothing only checks that its start is live.
                    (Ok(()), _) => {
                        let copies = |m: &Mapping| match (for_cpu, m.dir) {
                            (true, Dir::To) | (false, Dir::From) => false,
                            _ => m.bounce.is_some(),
                        };
                        t.check(inside.map_or(true, |(a, _)| !copies(&w.live[&a])), || {
                            "a copying sync past a bounced mapping's end succeeded".into()
                        })?
                    }
                }
            }
            &Op::DeviceWrite {
                pick,
                at,
                len,
                byte,
            } => {
                let Some((a, m)) = nth_live(&w.live, pick) else {
                    continue;
                };
                let o = usize::from(at) % m.size;
                let n = usize::from(len).min(m.size - o);
                let data = vec![byte; n];
                let real = SimulatedDevice::new(
                    &w.dom,
                    &w.devs[m.dev],
                    w.dom.swiotlb().expect("bounce buffers").memory(),
                )
                .write(a + o as u64, &data);
                match (m.dir, real) {
                    (Dir::To, r) => t
                        .check(n == 0 || matches!(r, Err(DmaError::Fault { .. })), || {
                            format!("device write to a to-device mapping: {r:?}")
                        })?,
                    (_, Ok(())) => {
                        let (off, m) = (m.off, w.live.get_mut(&a).expect("live"));
                        match &mut m.bounce {
                            Some(b) => b[o..o + n].copy_from_slice(&data),
                            None => w.mem[off + o..off + o + n].copy_from_slice(&data),
                        }
                    }
                    (_, Err(e)) => {
                        return Err(t.fail(format!("device write to a writable mapping: {e:?}")))
                    }
                }
            }
            &Op::DeviceRead { pick } => {
                let Some((a, m)) = nth_live(&w.live, pick) else {
                    continue;
                };
                let mut seen = vec![0; m.size];
                let real = SimulatedDevice::new(
                    &w.dom,
                    &w.devs[m.dev],
                    w.dom.swiotlb().expect("bounce buffers").memory(),
                )
                .read(a, &mut seen);
                let expected = m
                    .bounce
                    .clone()
                    .unwrap_or_else(|| w.mem[m.off..m.off + m.size].to_vec());
                match (m.dir, real) {
                    (_, Ok(())) => t.check(seen == expected, || {
                        format!("device read of {a:#x} differs from the model")
                    })?,
                    (Dir::From, Err(DmaError::Fault { .. })) => {}
                    (_, Err(e)) => {
                        return Err(t.fail(format!("device read of a readable mapping: {e:?}")))
                    }
                }
            }
            &Op::CpuWrite { off, len, byte } => {
                let o = usize::from(off) % MEM;
                let n = usize::from(len).min(MEM - o);
                let tlb = w.dom.swiotlb().expect("bounce buffers");
                tlb.memory()
                    .write(w.base + o as u64, &vec![byte; n])
                    .map_err(|e| t.fail(e.to_string()))?;
                w.mem[o..o + n].fill(byte);
            }
            Op::MapSg { dev, segs } => {
                let d = usize::from(*dev) % ndev;
                let list: Vec<PhysSegment> = segs
                    .iter()
                    .take(4)
                    .map(|&(o, l)| {
                        let o = u64::from(o) % MEM as u64;
                        PhysSegment {
                            addr: w.base + o,
                            len: (u64::from(l) % 0x3000).min(MEM as u64 - o),
                        }
                    })
                    .collect();
                if list.is_empty() {
                    continue;
                }
                match w.dom.map_sg(&w.devs[d], &list, Direction::ToDevice) {
                    Ok(m) => {
                        t.same("per-input addresses", m.per_input.len(), list.len())?;
                        for (s, &dma) in list.iter().zip(&m.per_input) {
                            if w.trusted[d] {
                                t.same("list translation", w.dom.translate(dma), Some(s.addr))?;
                            }
                            t.check(dma + s.len - 1 <= w.devs[d].config().dma_mask, || {
                                "list beyond the mask".into()
                            })?;
                        }
                        for sg in &m.segments {
                            w.check_new_span(&t, sg.addr, sg.len as usize)?;
                        }
                        w.lists.push((d, m, list));
                    }
                    Err(e) => {
                        let ok = match e {
                            DmaError::ZeroSize => list.iter().any(|s| s.len == 0),
                            DmaError::BadSegment { index, len } => {
                                list.get(index).is_some_and(|s| s.len == len)
                            }
                            DmaError::BeyondMask { .. }
                            | DmaError::NoIova(_)
                            | DmaError::Bounce(_) => true,
                            _ => false,
                        };
                        t.check(ok, || format!("map_sg error {e:?}"))?;
                    }
                }
            }
            &Op::UnmapSg { pick } => {
                if w.lists.is_empty() {
                    continue;
                }
                let i = usize::from(pick) % w.lists.len();
                let (d, m, _) = w.lists.swap_remove(i);
                let before = w.dom.tlb().tick();
                let r = w.dom.unmap_sg(&w.devs[d], &m, Direction::ToDevice);
                t.check(r.is_ok(), || format!("unmap_sg: {r:?}"))?;
                for sg in &m.segments {
                    let (s, e) = span(sg.addr, sg.len as usize);
                    w.unmapped.push((s, e, before));
                    t.check(w.dom.translate(sg.addr).is_none(), || {
                        "a list segment still translates".into()
                    })?;
                }
                let again = w.dom.unmap_sg(&w.devs[d], &m, Direction::ToDevice);
                t.check(matches!(again, Err(DmaError::NotMapped { .. })), || {
                    format!("second unmap_sg: {again:?}")
                })?;
            }
            &Op::SetLazy { single, ring_shift } => {
                let was = w.dom.is_lazy();
                t.same(
                    "set_lazy",
                    w.dom.set_lazy(fq(single, ring_shift)).ok(),
                    Some(!was),
                )?;
                t.check(w.dom.is_lazy(), || "not lazy after set_lazy".into())?;
            }
            Op::FlushNow => t.same("flush_queue_now", w.dom.flush_queue_now(), w.dom.is_lazy())?,
            &Op::Foreign { pick } => {
                let dma = nth_live(&w.live, pick).map_or(GRANULE, |(a, _)| a);
                t.same(
                    "foreign map",
                    w.dom.map(foreign, w.base, 16, Direction::ToDevice),
                    Err(DmaError::ForeignDevice),
                )?;
                t.same(
                    "foreign unmap",
                    w.dom.unmap(foreign, dma, 16, Direction::ToDevice),
                    Err(DmaError::ForeignDevice),
                )?;
                t.same(
                    "foreign sync",
                    w.dom.sync_for_cpu(foreign, dma, 16, Direction::ToDevice),
                    Err(DmaError::ForeignDevice),
                )?;
            }
        }
        let live = w.live.len() as u64
            + w.lists
                .iter()
                .map(|(d, m, _)| {
                    if w.trusted[*d] {
                        1
                    } else {
                        m.per_input.len() as u64
                    }
                })
                .sum::<u64>();
        t.same("live mappings", w.dom.stats().live, live)?;
    }
    t.finish();
    let live: Vec<(u64, Mapping)> = std::mem::take(&mut w.live).into_iter().collect();
    for (a, m) in live {
        t.check(
            w.dom
                .unmap(&w.devs[m.dev], a, m.size, Direction::ToDevice)
                .is_ok(),
            || format!("final unmap of {a:#x}"),
        )?;
    }
    for (d, m, _) in std::mem::take(&mut w.lists) {
        t.check(
            w.dom.unmap_sg(&w.devs[d], &m, Direction::ToDevice).is_ok(),
            || "final unmap_sg".into(),
        )?;
    }
    w.dom.flush_queue_now();
    let s = w.dom.stats();
    t.same("live at the end", s.live, 0)?;
    t.same("flush-queue entries pending at the end", s.fq.pending, 0)?;
    let iova = w.dom.iova_allocator();
    iova.flush_all();
    t.same(
        "IOVA ranges allocated at the end",
        iova.allocated_ranges(),
        vec![],
    )?;
    let tlb = w.dom.swiotlb().expect("bounce buffers");
    t.same("bounce slots used at the end", tlb.stats().used, 0)?;
    Ok(())
}
