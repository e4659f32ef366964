//! Scatter lists: one contiguous IOVA range for a whole list, as Linux's `iommu_dma_map_sg`.
//!
//! Each segment occupies the granules its buffer touches, placed one after the other in IOVA
//! space; a segment that would cross the device's segment boundary is moved to the next
//! boundary (the IOVA allocation is naturally aligned, so a boundary of the list's own span is
//! a boundary in DMA space too). The DMA segments returned merge neighbours that are
//! contiguous in IOVA space, within the device's maximum segment size and boundary.
//! Untrusted devices map each segment on its own (bounced where needed, as Linux does).
//!
//! Both paths check the list first, the same way: not empty (`ZeroSize`), every segment 1 to
//! `max_segment_size` bytes (`ZeroSize`, `BadSegment`), no segment running past 2^64
//! (`Overflow`); placement computes every span with checked arithmetic. An untrusted list that
//! fails on a later segment undoes the earlier ones without copy-back (Linux's
//! `DMA_ATTR_SKIP_CPU_SYNC`). `unmap_sg` of an untrusted list unmaps every segment even when a
//! copy-back is lost and reports the first loss. An [`SgMapping`] is read-only outside this
//! module (accessors, no public fields), so what `unmap_sg` takes down is what `map_sg` mapped:
//! a caller cannot empty or change the segments and have an unmap of nothing reported as done.
//!
//! Both paths are built from the operations a single map uses, through the domain's
//! `DeviceMapper`: a trusted list is one `NewMapping` with an extent per segment, undone
//! whole on any error; an untrusted list is one single map per segment.

use crate::device::{Device, DeviceConfig};
use crate::domain::{DeviceMapper, Domain};
use crate::error::DmaError;
use crate::iotlb::TlbOps;
use crate::strictness::Unmapped;
use swiotlb_core::Direction;

/// One buffer of a scatter list, by physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysSegment {
    /// Physical address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One DMA segment of a mapped scatter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaSegment {
    /// DMA address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A mapped scatter list: its DMA segments, handed back to [`Domain::unmap_sg`].
///
/// Read-only: `unmap_sg` takes down what the segments name, so a caller that could empty or
/// change them would make it unmap nothing (and report success) or something else. Only
/// [`Domain::map_sg`] makes one; a clone names the same mappings, and the second `unmap_sg`
/// of them is refused (`NotMapped`).
///
/// ```compile_fail
/// # use dma_iommu::{DeviceConfig, Domain, DomainConfig, NoTlb, PhysSegment};
/// # use swiotlb_core::Direction;
/// # let dom = Domain::new(DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(), NoTlb, None).unwrap();
/// # let dev = dom.attach(DeviceConfig::default()).unwrap();
/// let list = [PhysSegment { addr: 0x10_0000, len: 0x1000 }];
/// let mut m = dom.map_sg(&dev, &list, Direction::ToDevice).unwrap();
/// m.segments.clear(); // private: an emptied list would unmap nothing
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgMapping {
    segments: Vec<DmaSegment>,
    per_input: Vec<u64>,
    contiguous: bool,
}

impl SgMapping {
    /// The DMA segments to program into the device (merged where contiguous).
    pub fn segments(&self) -> &[DmaSegment] {
        &self.segments
    }

    /// Each input segment's DMA address (unmerged), in input order.
    pub fn per_input(&self) -> &[u64] {
        &self.per_input
    }
}

/// Where a segment goes in the list's IOVA span.
struct Placement {
    /// Offset of the segment's first granule in the span.
    at: u64,
    /// Granule-aligned physical start.
    phys: u64,
    /// Granule-aligned length.
    span: u64,
    /// Offset of the buffer in its first granule.
    offset: u64,
}

impl<T: TlbOps + 'static> Domain<T> {
    /// Map a scatter list for `dev`: one contiguous IOVA range for the list (trusted devices),
    /// or one mapping per segment (untrusted devices, so unaligned segments can be bounced).
    ///
    /// ```
    /// use dma_iommu::{DeviceConfig, Domain, DomainConfig, NoTlb, PhysSegment};
    /// use swiotlb_core::Direction;
    /// let dom = Domain::new(DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(), NoTlb, None).unwrap();
    /// let dev = dom.attach(DeviceConfig::default()).unwrap();
    /// // Two page-aligned pages far apart in physical memory become one DMA segment.
    /// let list = [PhysSegment { addr: 0x10_0000, len: 0x1000 }, PhysSegment { addr: 0x50_0000, len: 0x1000 }];
    /// let m = dom.map_sg(&dev, &list, Direction::ToDevice).unwrap();
    /// assert_eq!(m.segments().len(), 1);
    /// assert_eq!(m.segments()[0].len, 0x2000);
    /// assert_eq!(dom.translate(m.segments()[0].addr + 0x1000), Some(0x50_0000));
    /// dom.unmap_sg(&dev, &m, Direction::ToDevice).unwrap();
    /// ```
    pub fn map_sg(
        &self,
        dev: &Device,
        list: &[PhysSegment],
        dir: Direction,
    ) -> Result<SgMapping, DmaError> {
        self.with_mapper(dev, |mapper| {
            check_list(mapper.config(), list)?;
            let contiguous = mapper.config().trusted;
            let (segments, per_input) = if contiguous {
                map_contiguous(mapper, list, dir)
            } else {
                map_each(mapper, list, dir)
            }?;
            mapper.count_list();
            Ok(SgMapping {
                segments,
                per_input,
                contiguous,
            })
        })
    }

    /// Unmap a scatter list mapped by [`Domain::map_sg`] (with the same list and direction).
    pub fn unmap_sg(
        &self,
        dev: &Device,
        m: &SgMapping,
        dir: Direction,
    ) -> Result<Unmapped, DmaError> {
        self.with_mapper(dev, |mapper| unmap(mapper, m, dir))
    }
}

/// The checks both paths share, so a list gets the same answer whatever the device's trust:
/// the list is not empty, and every segment holds 1 to `max_segment_size` bytes that do not
/// run past the end of the address space.
fn check_list(cfg: &DeviceConfig, list: &[PhysSegment]) -> Result<(), DmaError> {
    if list.is_empty() {
        return Err(DmaError::ZeroSize);
    }
    for (index, s) in list.iter().enumerate() {
        if s.len == 0 {
            return Err(DmaError::ZeroSize);
        }
        if s.len > cfg.max_segment_size {
            return Err(DmaError::BadSegment { index, len: s.len });
        }
        s.addr.checked_add(s.len).ok_or(DmaError::Overflow)?;
    }
    Ok(())
}

/// Place a list [`check_list`] accepted in one IOVA span of granule `g`.
fn place(
    cfg: &DeviceConfig,
    g: u64,
    list: &[PhysSegment],
) -> Result<(Vec<Placement>, u64), DmaError> {
    let boundary = cfg.seg_boundary_mask;
    let mut out = Vec::with_capacity(list.len());
    let mut total = 0u64;
    for (index, s) in list.iter().enumerate() {
        let bad = DmaError::BadSegment { index, len: s.len };
        let offset = s.addr & (g - 1);
        // The granules the buffer touches; `s.len` may be anything up to u64::MAX.
        let span = offset
            .checked_add(s.len)
            .and_then(|n| n.checked_add(g - 1))
            .ok_or(DmaError::Overflow)?
            & !(g - 1);
        if boundary != u64::MAX {
            let size = boundary + 1;
            if span > size {
                return Err(bad);
            }
            if (total & boundary) + span > size {
                total = (total | boundary)
                    .checked_add(1)
                    .ok_or(DmaError::Overflow)?;
            }
        }
        out.push(Placement {
            at: total,
            phys: s.addr - offset,
            span,
            offset,
        });
        total = total.checked_add(span).ok_or(DmaError::Overflow)?;
    }
    Ok((out, total))
}

/// The DMA segments to program (merged) and each input segment's DMA address.
type Mapped = (Vec<DmaSegment>, Vec<u64>);

/// A trusted device's list: one IOVA span, built and undone as a single mapping is.
fn map_contiguous<T: TlbOps + 'static>(
    mapper: &DeviceMapper<'_, T>,
    list: &[PhysSegment],
    dir: Direction,
) -> Result<Mapped, DmaError> {
    let (placed, total) = place(mapper.config(), mapper.granule(), list)?;
    // Undone on any error below: nothing is published before `publish`.
    let mut new = mapper.new_list(total, dir)?;
    for p in &placed {
        new.map(p.at, p.phys, p.span)?;
    }
    let base = new.iova();
    let per_input: Vec<u64> = placed.iter().map(|p| base + p.at + p.offset).collect();
    let segments = merge(mapper.config(), list, &per_input);
    // At most `total`, which did not overflow.
    let total_len = list.iter().map(|s| s.len).sum();
    new.publish(total_len, 0, None)?;
    Ok((segments, per_input))
}

/// An untrusted device's list: one single mapping per segment, all undone if one fails.
fn map_each<T: TlbOps + 'static>(
    mapper: &DeviceMapper<'_, T>,
    list: &[PhysSegment],
    dir: Direction,
) -> Result<Mapped, DmaError> {
    let mut per_input = Vec::with_capacity(list.len());
    for s in list {
        match mapper.map(s.addr, s.len, dir) {
            Ok(dma) => per_input.push(dma),
            Err(e) => {
                // Nothing was handed out: take the fresh mappings down without copying
                // back (Linux: `DMA_ATTR_SKIP_CPU_SYNC`), so the caller's buffers keep
                // their bytes and no copy can be refused.
                for (dma, s) in per_input.iter().zip(list) {
                    mapper.undo(*dma, s.len, dir);
                }
                return Err(e);
            }
        }
    }
    let segments = per_input
        .iter()
        .zip(list)
        .map(|(&addr, s)| DmaSegment { addr, len: s.len })
        .collect();
    Ok((segments, per_input))
}

/// Take down a list [`Domain::map_sg`] mapped.
fn unmap<T: TlbOps + 'static>(
    mapper: &DeviceMapper<'_, T>,
    m: &SgMapping,
    dir: Direction,
) -> Result<Unmapped, DmaError> {
    // `map_sg` refuses empty lists and its sums did not overflow; the fields are private.
    let Some(first) = m.per_input.first() else {
        return Err(DmaError::ZeroSize);
    };
    if m.contiguous {
        let base = first & !(mapper.granule() - 1);
        let size = m.segments.iter().map(|s| s.len).sum();
        return mapper.unmap_list(base, size, dir);
    }
    // Every segment is unmapped even if a copy-back was lost (that mapping is gone anyway);
    // the first loss is reported. A refusal (an address that is not a live mapping) stops at
    // that segment, as it changes nothing.
    let mut how = Unmapped::Synced;
    let mut lost = None;
    for s in &m.segments {
        match mapper.unmap(s.addr, s.len, dir) {
            Ok(h) => how = h,
            Err(e @ DmaError::LostCopyBack { .. }) => {
                lost.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match lost {
        Some(e) => Err(e),
        None => Ok(how),
    }
}

/// Merge DMA-contiguous neighbours within the device's maximum segment size and boundary.
fn merge(cfg: &DeviceConfig, list: &[PhysSegment], dma: &[u64]) -> Vec<DmaSegment> {
    let mut out: Vec<DmaSegment> = Vec::with_capacity(list.len());
    for (&addr, s) in dma.iter().zip(list) {
        if let Some(last) = out.last_mut() {
            let end = last.addr + last.len;
            let fits = last.len + s.len <= cfg.max_segment_size;
            let same_window = cfg.seg_boundary_mask == u64::MAX
                || (last.addr | cfg.seg_boundary_mask)
                    == ((addr + s.len - 1) | cfg.seg_boundary_mask);
            if end == addr && fits && same_window {
                last.len += s.len;
                continue;
            }
        }
        out.push(DmaSegment { addr, len: s.len });
    }
    out
}
