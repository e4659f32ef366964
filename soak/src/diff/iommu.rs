//! dma-iommu against [`dma_model::iommu`]: a registry of live mappings and shadow memory.
//!
//! The model keeps every live mapping (device, physical range, direction, bounced or not),
//! the bytes of original memory and, for bounced mappings, the bytes the device sees. Every
//! map gets the model's prediction: the exact error the contract names, or the shape a
//! success must have (bounced or not, the offset in the granule kept, inside the device's
//! mask, disjoint IOVA spans, translations to the right pages, zeroed bounce padding); a
//! `NoIova` refusal only when no IOVA run of the span's class is free below the limit; an
//! allocation failure only when the input armed that fault site, with the domain unchanged.
//! Unmaps get the exact answer (`ZeroSize`, `ForeignDevice`, `NotMapped`, `Mismatch`,
//! strict or queued); syncs are refused unless both ends translate, copy what the direction
//! table says inside a bounced mapping and are refused past its end. Original memory can
//! refuse writes: an unmap or sync whose copy-back was refused must be an error, never a
//! success that lost the device's bytes. Device accesses go through the page table with the
//! mapping's permissions. The IOTLB records every invalidation: an IOVA handed out again must
//! have been covered by an invalidation that started after its unmap began. At the end
//! everything unmapped leaves no live mapping, no allocated IOVA, no bounce slot used and
//! nothing pending in the flush queue.

use super::directives::{run_step, Directed, Directives, Step};
use super::dma::{containing, nth_live, Dir, Len, Pick};
use super::{decode, Divergence, Tracker};
use crate::memory::RefusingMemory;
use arbitrary::Arbitrary;
use dma_iommu::test_util::SimulatedDevice;
use dma_iommu::{
    DeviceConfig, DmaError, Domain, DomainConfig, FqConfig, FqError, FqKind, PhysSegment,
    RecordingIotlb, SgMapping,
};
use dma_model::iommu::{span as model_span, Dev, IommuModel, MapPrediction, MapShape, Mapping};
use dma_model::swiotlb::{copies_on_sync_for_cpu, copies_on_sync_for_device, copies_on_unmap};
use dma_sync::fault::Site;
use iova_cache::IovaError;
use std::time::Duration;
use swiotlb_core::{Config as BounceConfig, Direction, OrigMemory, Swiotlb};

/// Bytes of original memory.
const MEM: usize = 64 * 1024;
/// IOVA granule of the tiny page table.
const GRANULE: u64 = 4096;
/// Slots per segment of the bounce buffers.
const BOUNCE_SEG: usize = 32;
/// The fault sites an input can arm for its next operation: the domain's own, and those of
/// the crates it is made of.
const SITES: [&Site; 7] = [
    &dma_iommu::faults::MAPPING_RECORD,
    &dma_iommu::faults::FQ_RING_ALLOC,
    &io_pgtable::faults::TABLE_ALLOC,
    &swiotlb_core::faults::TRANSIENT_POOL,
    &iova_cache::faults::TREE_NODE,
    &iova_cache::faults::MAGAZINE_ALLOC,
    &iova_cache::faults::DEPOT_GROW,
];

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
    /// The next operation's first allocation at fault site `n` fails.
    Fault(u8),
    /// The next operation's first write to original memory fails.
    RefuseWrite,
}

struct World {
    dom: Domain<RecordingIotlb>,
    base: u64,
    devs: Vec<dma_iommu::Device>,
    dev_model: Vec<Dev>,
    mem: Vec<u8>,
    model: IommuModel,
    lists: Vec<(usize, SgMapping, Vec<PhysSegment>)>,
    /// Unmapped IOVA spans `[start, end)` with the IOTLB clock before their unmap.
    unmapped: Vec<(u64, u64, u64)>,
    dead: Vec<u64>,
    directives: Directives,
}

impl Directed for World {
    fn directives(&mut self) -> &mut Directives {
        &mut self.directives
    }
}

fn span(dma: u64, size: usize) -> (u64, u64) {
    model_span(dma, size, GRANULE)
}

impl World {
    fn pick(&self, p: Pick) -> Option<u64> {
        p.resolve(&self.model.live, &self.dead, |m| m.size)
            .map(|(dma, _)| dma)
    }

    fn containing(&self, dma: u64) -> Option<(u64, usize)> {
        containing(&self.model.live, dma, |m| m.size)
    }

    /// Device `d` reading and writing by DMA address, as a device would.
    fn device(&self, d: usize) -> SimulatedDevice<'_, RecordingIotlb> {
        let memory = self.dom.swiotlb().expect("bounce buffers").memory();
        SimulatedDevice::new(&self.dom, &self.devs[d], memory)
    }

    fn armed(&self, site: &'static Site) -> bool {
        self.directives.armed(site)
    }

    /// Whether an armed fault explains `e` (an allocation failure of the call).
    fn fault_explains(&self, e: &DmaError) -> bool {
        use dma_iommu::faults::MAPPING_RECORD;
        use iova_cache::faults::{DEPOT_GROW, MAGAZINE_ALLOC, TREE_NODE};
        match e {
            DmaError::NoMemory => self.armed(&MAPPING_RECORD),
            DmaError::PageTable(io_pgtable::Error::NoMemory) => {
                self.armed(&io_pgtable::faults::TABLE_ALLOC)
            }
            DmaError::Bounce(swiotlb_core::Error::NoSpace { .. }) => {
                self.armed(&swiotlb_core::faults::TRANSIENT_POOL)
            }
            DmaError::NoIova(IovaError::OutOfMemory { .. }) => {
                self.armed(&TREE_NODE) || self.armed(&MAGAZINE_ALLOC) || self.armed(&DEPOT_GROW)
            }
            _ => false,
        }
    }

    /// The IOVA spans of the mapped lists, as (dma, size) pairs: one for a trusted device's
    /// list, one per input for an untrusted device's.
    fn list_spans(&self) -> Vec<(u64, usize)> {
        let mut spans = Vec::new();
        for (d, m, list) in &self.lists {
            if self.dev_model[*d].trusted {
                let start = m.segments().iter().map(|s| s.addr).min().unwrap_or(0);
                let end = m
                    .segments()
                    .iter()
                    .map(|s| s.addr + s.len)
                    .max()
                    .unwrap_or(0);
                spans.push((start, (end - start) as usize));
            } else {
                spans.extend(
                    m.per_input()
                        .iter()
                        .zip(list)
                        .map(|(&a, s)| (a, s.len as usize)),
                );
            }
        }
        spans
    }

    /// Whether the granule of `dma` belongs to a mapped list.
    fn in_list(&self, dma: u64) -> bool {
        self.list_spans().iter().any(|&(a, l)| {
            let (s, e) = span(a, l);
            s <= dma && dma < e
        })
    }

    /// The live single mapping whose IOVA span holds `dma`.
    fn owner(&self, dma: u64) -> Option<(u64, &Mapping)> {
        self.model
            .live
            .iter()
            .map(|(&a, m)| (a, m))
            .find(|&(a, m)| {
                let (s, e) = span(a, m.size);
                s <= dma && dma < e
            })
    }

    /// A new IOVA span must not overlap a live one, and if it reuses an unmapped one, an
    /// invalidation covering it must have run after that unmap began.
    fn check_new_span(&self, t: &Tracker, dma: u64, size: usize) -> Result<(), Divergence> {
        let (s, e) = span(dma, size);
        let others = self
            .model
            .live
            .iter()
            .map(|(&a, m)| (a, m.size))
            .chain(self.list_spans());
        for (a, l) in others {
            let (ls, le) = span(a, l);
            t.check(e <= ls || le <= s, || {
                format!("IOVA span {s:#x}..{e:#x} overlaps live {ls:#x}..{le:#x}")
            })?;
        }
        let now = self.dom.iotlb().tick();
        for &(us, ue, before) in &self.unmapped {
            if us < e && s < ue {
                let (cs, ce) = (us.max(s), ue.min(e));
                // Per granule: the gather may have synced the span in several ranges.
                let covered = (cs..ce).step_by(GRANULE as usize).all(|g| {
                    self.dom
                        .iotlb()
                        .covered_between(g, g + GRANULE, before, now)
                });
                t.check(covered, || {
                    let log: Vec<_> = self.dom.iotlb().log().into_iter().filter(|i| i.started > before).collect();
                    format!("IOVA {cs:#x}..{ce:#x} reused without an invalidation after its unmap (clock {before}..{now}; since: {log:?})")
                })?;
            }
        }
        Ok(())
    }

    /// After a refused call: the domain is as before.
    fn unchanged(&self, t: &Tracker, live: u64, bounce_used: usize) -> Result<(), Divergence> {
        t.same("live after a failed call", self.dom.stats().live, live)?;
        t.same(
            "bounce slots after a failed call",
            bounce_used_of(&self.dom),
            bounce_used,
        )
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
        let (before, used) = (self.dom.stats(), bounce_used_of(&self.dom));
        let real = self.dom.map(&dev, paddr, size, dir.real());
        let in_mem = paddr >= self.base
            && off
                .checked_add(size as u64)
                .is_some_and(|e| e <= MEM as u64);
        let (shape, fits_table) =
            match self
                .model
                .predict_map(&self.dev_model[d], paddr, size as u64)
            {
                MapPrediction::Refused(e) => return t.same("map", real.map(|_| ()), Err(e)),
                MapPrediction::OutputOutOfRange(shape) => (shape, false),
                MapPrediction::Mapped(shape) => (shape, true),
            };
        let dma = match real {
            Ok(dma) if fits_table => dma,
            Ok(dma) => {
                return Err(t.fail(format!(
                    "map of {paddr:#x}+{size} gave {dma:#x}, but the output does not fit the table"
                )))
            }
            Err(e) => {
                let allowed = match &e {
                    DmaError::NoIova(IovaError::NoSpace { .. }) => {
                        !self.model.iova_fits(&shape, &self.list_spans())
                    }
                    DmaError::PageTable(
                        io_pgtable::Error::OutOfRange { .. } | io_pgtable::Error::Overflow,
                    ) => !fits_table,
                    // The bounce copy reads the original, which a raw address may not be.
                    DmaError::Bounce(swiotlb_core::Error::Memory(_)) => shape.bounced && !in_mem,
                    e => self.fault_explains(e),
                };
                t.check(allowed, || {
                    format!("map of {paddr:#x}+{size} for device {d}: {e:?}, model {shape:?}")
                })?;
                return self.unchanged(t, before.live, used);
            }
        };
        t.note(|| format!("mapped {dma:#x}+{size:#x} for device {d}: {shape:?}"));
        self.check_mapped(t, dma, (paddr, size), &shape, before.bounced)?;
        if !in_mem {
            // Mapped memory the model does not shadow (a raw address): release it.
            let r = self.dom.unmap(&dev, dma, size, dir.real());
            t.check(r.is_ok(), || format!("unmap of a fresh raw mapping: {r:?}"))?;
            return Ok(());
        }
        let bounce = shape
            .bounced
            .then(|| self.mem[off as usize..off as usize + size].to_vec());
        if shape.bounced {
            // The device sees the buffer and zeros around it, never its neighbours.
            let (s, e) = span(dma, size);
            let mut seen = vec![0xAA; (e - s) as usize];
            let r = self.device(d).read(s, &mut seen);
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
        self.model.live.insert(
            dma,
            Mapping {
                dev: d,
                off: off as usize,
                size,
                dir: dir.real(),
                bounce,
            },
        );
        Ok(())
    }

    /// A successful map has the predicted shape.
    fn check_mapped(
        &self,
        t: &Tracker,
        dma: u64,
        (paddr, size): (u64, usize),
        shape: &MapShape,
        bounced_before: u64,
    ) -> Result<(), Divergence> {
        let (s, e) = span(dma, size);
        t.same("offset in the granule", dma & (GRANULE - 1), shape.offset)?;
        t.same("granules of the span", (e - s) / GRANULE, shape.granules)?;
        t.check((e - 1) / GRANULE <= shape.limit_pfn, || {
            format!("{dma:#x}+{size} beyond the device's limit")
        })?;
        t.same(
            "bounced counter",
            self.dom.stats().bounced - bounced_before,
            u64::from(shape.bounced),
        )?;
        if !shape.bounced {
            t.same(
                "translation of the first byte",
                self.dom.translate(dma),
                Some(paddr),
            )?;
            t.same(
                "translation of the last byte",
                self.dom.translate(dma + size as u64 - 1),
                Some(paddr + size as u64 - 1),
            )?;
        }
        self.check_new_span(t, dma, size)
    }
}

/// Bounce slots in use.
fn bounce_used_of(dom: &Domain<RecordingIotlb>) -> usize {
    dom.swiotlb().map_or(0, |s| s.stats().used)
}

/// Run one input. The first byte picks the page-table depth and the starting mode.
pub fn run(data: &[u8]) -> Result<(), Divergence> {
    let sel = data.first().copied().unwrap_or(0);
    let ops: Vec<Op> = decode(data.get(1..).unwrap_or_default());
    let (mem, refusals) = RefusingMemory::new(MEM);
    let base = mem.base();
    let pattern: Vec<u8> = (0..MEM)
        .map(|i| (i * 13 + usize::from(sel)) as u8)
        .collect();
    mem.write(base, &pattern).expect("fresh region");
    let bounce =
        Swiotlb::new(BounceConfig::tiny(64, 1, BOUNCE_SEG), mem).expect("tiny configuration");
    let levels = 3 + u32::from(sel & 1);
    let mut cfg = DomainConfig::new(io_pgtable::Config::tiny(levels)).expect("tiny geometry");
    cfg.iova.cpus = 2;
    cfg.iova.magazine_size = 2;
    cfg.iova.trim_interval = None;
    if sel & 2 != 0 {
        cfg = cfg.lazy(fq(sel & 4 != 0, 2));
    }
    let g = *io_pgtable::PageTable::new(cfg.pgtable)
        .expect("tiny geometry")
        .geometry();
    let model = IommuModel {
        granule: GRANULE,
        aperture_end: (1u64 << g.ias()) - 1,
        oas: g.oas(),
        pfns: (cfg.iova.start_pfn, cfg.iova.end_pfn),
        bounce_seg: BOUNCE_SEG,
        live: Default::default(),
    };
    let dom = Domain::new(cfg, RecordingIotlb::new(), Some(bounce)).expect("domain");
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
        dev_model: configs
            .iter()
            .map(|c| Dev {
                dma_mask: c.dma_mask,
                min_align: c.min_align_mask,
                boundary: c.seg_boundary_mask,
                trusted: c.trusted,
            })
            .collect(),
        mem: pattern,
        model,
        lists: Vec::new(),
        unmapped: Vec::new(),
        dead: Vec::new(),
        directives: Directives::new(&SITES, refusals),
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
    for (step, op) in ops.iter().enumerate() {
        t.enter(step, op);
        let step = match *op {
            Op::Fault(n) => Step::Fault(n),
            Op::RefuseWrite => Step::RefuseWrite,
            Op::Unmap { .. } | Op::Sync { .. } => Step::Call { copies_back: true },
            _ => Step::Call { copies_back: false },
        };
        let Some(r) = run_step(w, step, |w| apply(w, &t, foreign, op)) else {
            continue;
        };
        r?;
        let live = w.model.live.len() as u64
            + w.lists
                .iter()
                .map(|(d, m, _)| {
                    if w.dev_model[*d].trusted {
                        1
                    } else {
                        m.per_input().len() as u64
                    }
                })
                .sum::<u64>();
        t.same("live mappings", w.dom.stats().live, live)?;
    }
    t.finish();
    let live: Vec<(u64, Mapping)> = std::mem::take(&mut w.model.live).into_iter().collect();
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
    t.same("bounce slots used at the end", bounce_used_of(&w.dom), 0)?;
    Ok(())
}

fn apply(
    w: &mut World,
    t: &Tracker,
    foreign: &dma_iommu::Device,
    op: &Op,
) -> Result<(), Divergence> {
    let ndev = w.devs.len();
    match op {
        &Op::Map {
            dev,
            off,
            size,
            dir,
        } => {
            let off = u64::from(off) % MEM as u64;
            let size = (usize::from(size) % (20 * 1024)).min(MEM - off as usize);
            w.map(t, usize::from(dev) % ndev, off, w.base + off, size, dir)?;
        }
        &Op::MapRaw { dev, paddr, size } => {
            let d = usize::from(dev) % ndev;
            let off = paddr.wrapping_sub(w.base);
            w.map(t, d, off, paddr, size, Dir::Bi)?;
        }
        &Op::Unmap {
            pick,
            size,
            dir,
            dev,
        } => unmap(w, t, pick, size, dir, dev)?,
        &Op::Sync { pick, len, for_cpu } => sync(w, t, pick, usize::from(len), for_cpu)?,
        &Op::DeviceWrite {
            pick,
            at,
            len,
            byte,
        } => {
            let Some((a, m)) = nth_live(&w.model.live, pick) else {
                return Ok(());
            };
            let o = usize::from(at) % m.size;
            let n = usize::from(len).min(m.size - o);
            let data = vec![byte; n];
            let real = w.device(m.dev).write(a + o as u64, &data);
            match (m.dir, real) {
                (Direction::ToDevice, r) => t
                    .check(n == 0 || matches!(r, Err(DmaError::Fault { .. })), || {
                        format!("device write to a to-device mapping: {r:?}")
                    })?,
                (_, Ok(())) => {
                    let (off, m) = (m.off, w.model.live.get_mut(&a).expect("live"));
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
            let Some((a, m)) = nth_live(&w.model.live, pick) else {
                return Ok(());
            };
            let mut seen = vec![0; m.size];
            let real = w.device(m.dev).read(a, &mut seen);
            let expected = m
                .bounce
                .clone()
                .unwrap_or_else(|| w.mem[m.off..m.off + m.size].to_vec());
            match (m.dir, real) {
                (_, Ok(())) => t.check(seen == expected, || {
                    format!("device read of {a:#x} differs from the model")
                })?,
                (Direction::FromDevice, Err(DmaError::Fault { .. })) => {}
                (_, Err(e)) => {
                    return Err(t.fail(format!("device read of a readable mapping: {e:?}")))
                }
            }
        }
        &Op::CpuWrite { off, len, byte } => {
            let o = usize::from(off) % MEM;
            let n = usize::from(len).min(MEM - o);
            let bounce = w.dom.swiotlb().expect("bounce buffers");
            bounce
                .memory()
                .write(w.base + o as u64, &vec![byte; n])
                .map_err(|e| t.fail(e.to_string()))?;
            w.mem[o..o + n].fill(byte);
        }
        Op::MapSg { dev, segs } => map_sg(w, t, usize::from(*dev) % ndev, segs)?,
        &Op::UnmapSg { pick } => {
            if w.lists.is_empty() {
                return Ok(());
            }
            let i = usize::from(pick) % w.lists.len();
            let (d, m, _) = w.lists.swap_remove(i);
            let before = w.dom.iotlb().tick();
            let r = w.dom.unmap_sg(&w.devs[d], &m, Direction::ToDevice);
            t.check(r.is_ok(), || format!("unmap_sg: {r:?}"))?;
            for sg in m.segments() {
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
            let real = w.dom.set_lazy(fq(single, ring_shift));
            let expected = if was {
                Ok(false)
            } else if w.armed(&dma_iommu::faults::FQ_RING_ALLOC) {
                Err(DmaError::FlushQueue(FqError::NoMemory))
            } else {
                Ok(true)
            };
            t.same("set_lazy", real.clone(), expected)?;
            t.same("lazy after set_lazy", w.dom.is_lazy(), real.is_ok())?;
        }
        Op::FlushNow => t.same("flush_queue_now", w.dom.flush_queue_now(), w.dom.is_lazy())?,
        &Op::Foreign { pick } => {
            let dma = nth_live(&w.model.live, pick).map_or(GRANULE, |(a, _)| a);
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
        Op::Fault(_) | Op::RefuseWrite => {}
    }
    Ok(())
}

fn unmap(
    w: &mut World,
    t: &Tracker,
    pick: Pick,
    size: Len,
    dir: Dir,
    dev: Option<u8>,
) -> Result<(), Divergence> {
    let Some(dma) = w.pick(pick) else {
        return Ok(());
    };
    let ndev = w.devs.len();
    let owner = w.model.mapping_in_granule(dma).map(|(a, m)| (a, m.clone()));
    let d = dev.map_or_else(
        || owner.as_ref().map_or(0, |(_, m)| m.dev),
        |d| usize::from(d) % ndev,
    );
    let size = match size {
        Len::Whole => owner.as_ref().map_or(GRANULE as usize, |(_, m)| m.size),
        Len::Small(n) => usize::from(n),
        Len::Raw(r) => r,
    };
    if owner.is_none() && w.in_list(dma) {
        // A list's record: refused, whichever way (the kind differs).
        let real = w.dom.unmap(&w.devs[d], dma, size, dir.real());
        return t.check(
            matches!(
                real,
                Err(DmaError::Mismatch { .. } | DmaError::NotMapped { .. } | DmaError::ZeroSize)
            ),
            || format!("unmap of a list segment: {real:?}"),
        );
    }
    let queued = w.dev_model[d].trusted && w.dom.is_lazy();
    let expected = w.model.expect_unmap(d, dma, size, queued);
    let (before, armed, used) = (
        w.dom.iotlb().tick(),
        w.directives.refusals.left(),
        bounce_used_of(&w.dom),
    );
    let real = w.dom.unmap(&w.devs[d], dma, size, dir.real());
    let refused = w.directives.refusals.left() < armed;
    let Ok((_, a)) = expected else {
        return t.same("unmap", real.map(|_| ()), expected.map(|_| ()));
    };
    let m = w.model.live[&a].clone();
    let copies = m.bounce.is_some() && copies_on_unmap(dir.real(), false);
    let released = match real {
        Ok(how) => {
            t.check(!(refused && copies), || {
                format!("unmap returned {how:?} although its copy-back to original memory was refused: the device's bytes are lost")
            })?;
            t.same("unmap", Ok(how), expected.map(|(h, _)| h))?;
            if copies {
                let b = m.bounce.as_ref().expect("bounced");
                w.mem[m.off..m.off + m.size].copy_from_slice(b);
            }
            true
        }
        // A refused copy-back: the mapping is gone, its bounce slots released, and the error
        // names the bytes lost.
        Err(DmaError::LostCopyBack {
            dma: d, size: s, ..
        }) if refused && copies => {
            t.same("lost range", (d, s), (a, m.size as u64))?;
            t.same(
                "live after a lost copy-back",
                w.dom.stats().live,
                w.model.live.len() as u64 - 1 + list_count(w),
            )?;
            t.check(bounce_used_of(&w.dom) < used, || {
                "a lost copy-back kept its bounce slots".into()
            })?;
            true
        }
        Err(e) => return Err(t.fail(format!("unmap of a live mapping: {e:?}"))),
    };
    if released {
        w.model.live.remove(&a);
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
    check_memory(w, t)
}

/// Live lists as the domain counts them.
fn list_count(w: &World) -> u64 {
    w.lists
        .iter()
        .map(|(d, m, _)| {
            if w.dev_model[*d].trusted {
                1
            } else {
                m.per_input().len() as u64
            }
        })
        .sum()
}

/// Original memory equals the model, byte for byte.
fn check_memory(w: &World, t: &Tracker) -> Result<(), Divergence> {
    let mut seen = vec![0u8; MEM];
    let bounce = w.dom.swiotlb().expect("bounce buffers");
    bounce
        .memory()
        .read(w.base, &mut seen)
        .map_err(|e| t.fail(format!("read original: {e}")))?;
    let first = seen.iter().zip(&w.mem).position(|(a, b)| a != b);
    t.check(first.is_none(), || {
        format!("original memory differs from the model at offset {first:?}")
    })
}

/// A sync is refused unless both ends translate; inside a bounced mapping it copies what the
/// direction table says and is refused past the mapping's end; on coherent memory it is a
/// no-op.
fn sync(
    w: &mut World,
    t: &Tracker,
    pick: Pick,
    size: usize,
    for_cpu: bool,
) -> Result<(), Divergence> {
    let Some(dma) = w.pick(pick) else {
        return Ok(());
    };
    let last = dma.checked_add(size.max(1) as u64 - 1);
    if w.in_list(dma) || last.is_some_and(|l| w.in_list(l)) {
        return Ok(()); // lists are synced through their own mapping
    }
    let inside = w.containing(dma);
    let d = inside.map_or(0, |(a, _)| w.model.live[&a].dev);
    let dir = inside.map_or(Direction::Bidirectional, |(a, _)| w.model.live[&a].dir);
    let armed = w.directives.refusals.left();
    let real = if for_cpu {
        w.dom.sync_for_cpu(&w.devs[d], dma, size, dir)
    } else {
        w.dom.sync_for_device(&w.devs[d], dma, size, dir)
    };
    let refused = w.directives.refusals.left() < armed;
    let copies = if for_cpu {
        copies_on_sync_for_cpu(dir)
    } else {
        copies_on_sync_for_device(dir)
    };
    let expected: Result<(), DmaError> = match last {
        _ if size == 0 => Err(DmaError::ZeroSize),
        None => Err(DmaError::Overflow),
        Some(_) if w.owner(dma).is_none() => Err(DmaError::NotMapped { dma }),
        Some(l) if w.owner(l).is_none() => Err(DmaError::NotMapped { dma: l }),
        Some(_) => Ok(()),
    };
    let bounced = w
        .owner(dma)
        .filter(|(_, m)| m.bounce.is_some() && !w.dev_model[d].trusted)
        .map(|(a, _)| a);
    let fits = inside.filter(|&(a, o)| o + size <= w.model.live[&a].size);
    match (real, expected, bounced) {
        (r, Err(e), _) => t.same("sync", r, Err(e))?,
        (Ok(()), Ok(()), None) => {}
        (Ok(()), Ok(()), Some(_)) if fits.is_some() => {
            t.check(!(refused && copies && for_cpu), || {
                "sync_for_cpu returned Ok although its copy to original memory was refused".into()
            })?;
            let (a, o) = fits.expect("fits");
            let m = w.model.live.get_mut(&a).expect("live");
            let (b, at) = (m.bounce.as_mut().expect("bounced"), m.off + o);
            if copies && for_cpu {
                w.mem[at..at + size].copy_from_slice(&b[o..o + size]);
            } else if copies {
                b[o..o + size].copy_from_slice(&w.mem[at..at + size]);
            }
        }
        // Refused: nothing copied, the mapping unchanged.
        (
            Err(DmaError::CopyRefused {
                dma: d, size: s, ..
            }),
            Ok(()),
            Some(_),
        ) if refused && copies && for_cpu && fits.is_some() => {
            t.same("range not copied", (d, s), (dma, size as u64))?
        }
        (Err(DmaError::Bounce(e)), Ok(()), Some(_)) if fits.is_none() => t.check(
            matches!(
                e,
                swiotlb_core::Error::NotMapped { .. } | swiotlb_core::Error::OutOfRange { .. }
            ),
            || format!("sync past a bounced mapping: Bounce({e:?})"),
        )?,
        (r, Ok(()), b) => {
            return Err(t.fail(format!(
            "sync of {dma:#x}+{size:#x} ({dir:?}, bounced mapping {b:?}, inside {fits:?}): {r:?}"
        )))
        }
    }
    check_memory(w, t)
}

fn map_sg(w: &mut World, t: &Tracker, d: usize, segs: &[(u16, u16)]) -> Result<(), Divergence> {
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
        return Ok(());
    }
    let (live, used) = (w.dom.stats().live, bounce_used_of(&w.dom));
    let cfg = *w.devs[d].config();
    let dev = w.dev_model[d];
    // The predictions: a trusted device's list is one span of the segments' granules; an
    // untrusted device maps each segment on its own.
    let shapes: Vec<MapPrediction> = if dev.trusted {
        let total = list.iter().map(|s| {
            let o = s.addr & (GRANULE - 1);
            (o + s.len).next_multiple_of(GRANULE)
        });
        vec![w.model.predict_map(&dev, 0, total.sum::<u64>().max(1))]
    } else {
        list.iter()
            .map(|s| w.model.predict_map(&dev, s.addr, s.len.max(1)))
            .collect()
    };
    match w.dom.map_sg(&w.devs[d], &list, Direction::ToDevice) {
        Ok(m) => {
            t.check(
                list.iter()
                    .all(|s| s.len > 0 && s.len <= cfg.max_segment_size),
                || "list with an empty or too long segment mapped".into(),
            )?;
            t.same("per-input addresses", m.per_input().len(), list.len())?;
            for (s, &dma) in list.iter().zip(m.per_input()) {
                if dev.trusted {
                    t.same("list translation", w.dom.translate(dma), Some(s.addr))?;
                }
                t.check(dma + s.len - 1 <= cfg.dma_mask, || {
                    "list beyond the mask".into()
                })?;
            }
            for sg in m.segments() {
                w.check_new_span(t, sg.addr, sg.len as usize)?;
            }
            w.lists.push((d, m, list));
        }
        Err(e) => {
            let spans = w.list_spans();
            let ok = if dev.trusted {
                let first_bad = list
                    .iter()
                    .position(|s| s.len == 0 || s.len > cfg.max_segment_size);
                match (&e, first_bad) {
                    (DmaError::ZeroSize, Some(i)) => list[i].len == 0,
                    (DmaError::BadSegment { index, len }, Some(i)) => {
                        *index == i && list[i].len == *len
                    }
                    (_, Some(_)) => false,
                    (e, None) => allowed_map_error(w, e, &shapes, &spans),
                }
            } else {
                // Each segment on its own, in order: any error a segment up to the first
                // refused one may get, with the space the earlier ones took.
                let mut ok = false;
                for (i, s) in list.iter().enumerate() {
                    if s.len == 0 {
                        ok |= e == DmaError::ZeroSize;
                        break;
                    }
                    ok |= allowed_map_error(w, &e, &shapes[..=i], &spans);
                    if matches!(shapes[i], MapPrediction::Refused(_)) {
                        break;
                    }
                }
                ok
            };
            t.check(ok, || format!("map_sg error {e:?}, model {shapes:?}"))?;
            w.unchanged(t, live, used)?;
        }
    }
    Ok(())
}

/// Whether a map of the `shapes` (in order; the last one's call is refused) may give `e`:
/// the error its prediction names, `NoIova` when they cannot all have IOVA space, or an
/// allocation failure of an armed site.
fn allowed_map_error(
    w: &World,
    e: &DmaError,
    shapes: &[MapPrediction],
    others: &[(u64, usize)],
) -> bool {
    let mapped: Vec<MapShape> = shapes
        .iter()
        .filter_map(|p| match p {
            MapPrediction::Mapped(s) | MapPrediction::OutputOutOfRange(s) => Some(*s),
            MapPrediction::Refused(_) => None,
        })
        .collect();
    match (e, shapes.last()) {
        (e, Some(MapPrediction::Refused(x))) if x == e => true,
        (DmaError::NoIova(IovaError::NoSpace { .. }), _) => {
            w.model.iova_may_run_out(&mapped, others)
        }
        (e, _) => w.fault_explains(e),
    }
}
