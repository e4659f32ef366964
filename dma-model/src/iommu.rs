//! dma-iommu: a DMA domain as a registry of live mappings over an IOVA space (Linux
//! `drivers/iommu/dma-iommu.c`: `iommu_dma_map_page`, `__iommu_dma_unmap`, the swiotlb
//! bounce of untrusted devices, and the dma-iommu docs).
//!
//! [`IommuModel::predict_map`] gives, for a map, either the exact error the contract names
//! (zero size, overflow, a span beyond the device's mask or the aperture, an impossible
//! bounce request, an output address beyond the table) or what a success must look like
//! (bounced or not, the offset kept, the span's granules and IOVA limit), and
//! [`IommuModel::iova_fits`] says whether a `NoIova` refusal was allowed: only when no
//! naturally aligned run of the span's size class is free below the limit once every
//! unmapped IOVA is back. [`IommuModel::expect_unmap`] is the exact answer of an unmap.

use crate::iova::{class_size, lowest_gap};
use crate::swiotlb::{self, Masks};
use dma_iommu::{DmaError, Unmapped};
use std::collections::BTreeMap;
use swiotlb_core::Direction;

/// One live mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Index of the device that mapped it.
    pub dev: usize,
    /// Offset of the buffer in the shadowed memory.
    pub off: usize,
    /// Bytes mapped.
    pub size: usize,
    /// Direction given at map time.
    pub dir: Direction,
    /// What the device sees of a bounced mapping (`None`: it sees the original).
    pub bounce: Option<Vec<u8>>,
}

/// A device as the model needs it.
#[derive(Debug, Clone, Copy)]
pub struct Dev {
    /// Highest IOVA the device emits.
    pub dma_mask: u64,
    /// Offset bits a bounce buffer keeps.
    pub min_align: u64,
    /// Segment boundary mask.
    pub boundary: u64,
    /// Trusted devices are never bounced.
    pub trusted: bool,
}

/// What a map must do when it succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    /// Whether the buffer is bounced.
    pub bounced: bool,
    /// Offset of the returned address in its granule.
    pub offset: u64,
    /// Granules of the IOVA span.
    pub granules: u64,
    /// Highest pfn the span may use.
    pub limit_pfn: u64,
}

/// What a map must give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapPrediction {
    /// Exactly this error.
    Refused(DmaError),
    /// `PageTable(OutOfRange)` or `PageTable(Overflow)`: the output address does not fit the
    /// table (found after the IOVA of this shape was allocated, so a `NoIova` may come first).
    OutputOutOfRange(MapShape),
    /// A mapping of this shape, or a `NoIova` refusal if [`IommuModel::iova_fits`] says no.
    Mapped(MapShape),
}

/// The reference model of a domain.
#[derive(Debug, Clone)]
pub struct IommuModel {
    /// IOVA granule in bytes.
    pub granule: u64,
    /// Last IOVA of the page table's input space.
    pub aperture_end: u64,
    /// Output address bits of the page table.
    pub oas: u32,
    /// Allocatable IOVA pfns, inclusive.
    pub pfns: (u64, u64),
    /// Slots per segment of the bounce allocator.
    pub bounce_seg: usize,
    /// Live mappings by DMA address.
    pub live: BTreeMap<u64, Mapping>,
}

/// The granule-aligned IOVA span `[start, end)` of `size` bytes at `dma`.
pub fn span(dma: u64, size: usize, granule: u64) -> (u64, u64) {
    let start = dma & !(granule - 1);
    (start, (dma + size as u64).next_multiple_of(granule))
}

impl IommuModel {
    /// Predict a map of `size` bytes at `paddr` for `dev`.
    pub fn predict_map(&self, dev: &Dev, paddr: u64, size: u64) -> MapPrediction {
        let g = self.granule;
        if size == 0 {
            return MapPrediction::Refused(DmaError::ZeroSize);
        }
        let Some(end) = paddr.checked_add(size) else {
            return MapPrediction::Refused(DmaError::Overflow);
        };
        let bounced = !dev.trusted && (paddr | end) & (g - 1) != 0;
        let offset = if bounced {
            let m = Masks {
                min_align: dev.min_align,
                alloc_align: g - 1,
                boundary: dev.boundary,
            };
            let plan = swiotlb::plan(
                Some(paddr),
                size as usize,
                m,
                true,
                swiotlb_core::POOL_ALIGN as u64 - 1,
                self.bounce_seg,
            );
            if let Err(e) = plan {
                return MapPrediction::Refused(DmaError::Bounce(e));
            }
            paddr & dev.min_align & (g - 1)
        } else {
            paddr & (g - 1)
        };
        let Some(len) = (offset + size).checked_next_multiple_of(g) else {
            return MapPrediction::Refused(DmaError::Overflow);
        };
        let limit = dev.dma_mask.min(self.aperture_end);
        let granules = len / g;
        let shift = g.trailing_zeros();
        let space = self.pfns.1 - self.pfns.0 + 1;
        // The caches round a request below their largest class up to a power of two, so
        // that is what must fit the space.
        if len - 1 > limit || class_size(granules) > space || limit >> shift < self.pfns.0 {
            return MapPrediction::Refused(DmaError::BeyondMask {
                len,
                dma_mask: dev.dma_mask,
            });
        }
        let shape = MapShape {
            bounced,
            offset,
            granules,
            limit_pfn: (limit >> shift).min(self.pfns.1),
        };
        let out = paddr & !(g - 1);
        if !bounced && out.checked_add(len).map_or(true, |e| e > 1u64 << self.oas) {
            return MapPrediction::OutputOutOfRange(shape);
        }
        MapPrediction::Mapped(shape)
    }

    /// Whether the IOVA allocator could serve `shape` with only the live mappings (and the
    /// `others`, `(dma, size)` pairs, e.g. mapped lists) holding IOVA space. Each holds the
    /// size class of its span (a power of two below the cache limit), from its first granule.
    pub fn iova_fits(&self, shape: &MapShape, others: &[(u64, usize)]) -> bool {
        !self.iova_may_run_out(std::slice::from_ref(shape), others)
    }

    /// Whether mapping `shapes` one after the other (the segments of one list) may run out
    /// of IOVA space: for some choice of aligned free runs the allocator may make for the
    /// earlier ones, one of them does not fit. The allocator's choice is its own, so every
    /// choice is tried (lists are short and spaces small).
    pub fn iova_may_run_out(&self, shapes: &[MapShape], others: &[(u64, usize)]) -> bool {
        let shift = self.granule.trailing_zeros();
        let busy: Vec<(u64, u64)> = self
            .live
            .iter()
            .map(|(&a, m)| (a, m.size))
            .chain(others.iter().copied())
            .map(|(a, s)| {
                let (st, e) = span(a, s, self.granule);
                let first = st >> shift;
                (first, first + class_size((e - st) >> shift) - 1)
            })
            .collect();
        self.may_run_out(&busy, shapes)
    }

    fn may_run_out(&self, busy: &[(u64, u64)], shapes: &[MapShape]) -> bool {
        let Some((first, rest)) = shapes.split_first() else {
            return false;
        };
        let c = class_size(first.granules);
        let align = c.next_power_of_two();
        let mut from = self.pfns.0;
        let mut placed_any = false;
        while let Some(p) = lowest_gap(busy, from, first.limit_pfn, c, align) {
            placed_any = true;
            let mut with = busy.to_vec();
            with.push((p, p + c - 1));
            if self.may_run_out(&with, rest) {
                return true;
            }
            from = p + align;
        }
        !placed_any
    }

    /// The live mapping starting in the granule of `dma` (the domain's records are per
    /// granule: an unmap anywhere in it names that mapping).
    pub fn mapping_in_granule(&self, dma: u64) -> Option<(u64, &Mapping)> {
        let g = self.granule;
        self.live
            .range(..=dma | (g - 1))
            .next_back()
            .filter(|(a, _)| **a / g == dma / g)
            .map(|(&a, m)| (a, m))
    }

    /// The exact answer of `unmap(dev, dma, size)` (`queued`: a trusted device of a lazy
    /// domain), with the mapping it takes down.
    pub fn expect_unmap(
        &self,
        dev: usize,
        dma: u64,
        size: usize,
        queued: bool,
    ) -> Result<(Unmapped, u64), DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        match self.mapping_in_granule(dma) {
            Some((a, m)) if m.dev == dev && a == dma && m.size == size => {
                let how = if queued {
                    Unmapped::Queued
                } else {
                    Unmapped::Synced
                };
                Ok((how, a))
            }
            Some((_, m)) if m.dev == dev => Err(DmaError::Mismatch {
                dma,
                size: size as u64,
                mapped: m.size as u64,
            }),
            _ => Err(DmaError::NotMapped { dma }),
        }
    }
}

// Not under loom: the real structures are built outside a model.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn model() -> IommuModel {
        IommuModel {
            granule: 0x1000,
            aperture_end: (1 << 20) - 1,
            oas: 48,
            pfns: (1, 255),
            bounce_seg: 32,
            live: BTreeMap::new(),
        }
    }

    const TRUSTED: Dev = Dev {
        dma_mask: u64::MAX,
        min_align: 0,
        boundary: u64::MAX,
        trusted: true,
    };

    #[test]
    fn map_errors_are_predicted_exactly() {
        let m = model();
        let p = |dev: &Dev, paddr, size| m.predict_map(dev, paddr, size);
        assert_eq!(
            p(&TRUSTED, 0, 0),
            MapPrediction::Refused(DmaError::ZeroSize)
        );
        assert_eq!(
            p(&TRUSTED, u64::MAX, 2),
            MapPrediction::Refused(DmaError::Overflow)
        );
        let narrow = Dev {
            dma_mask: 0x1FFF,
            ..TRUSTED
        };
        assert_eq!(
            p(&narrow, 0x10, 0x2000),
            MapPrediction::Refused(DmaError::BeyondMask {
                len: 0x3000,
                dma_mask: 0x1FFF
            })
        );
        // 61 granules round up to 64, more than a space of 63 holds.
        let small = IommuModel {
            pfns: (1, 63),
            ..model()
        };
        assert_eq!(
            small.predict_map(&TRUSTED, 0, 61 << 12),
            MapPrediction::Refused(DmaError::BeyondMask {
                len: 61 << 12,
                dma_mask: u64::MAX
            })
        );
        let untrusted = Dev {
            trusted: false,
            ..TRUSTED
        };
        // Bounced: larger than a bounce segment can hold.
        assert!(matches!(
            p(&untrusted, 0x10, 0x20_0000),
            MapPrediction::Refused(DmaError::Bounce(swiotlb_core::Error::TooLarge { .. }))
        ));
        assert!(matches!(
            p(&TRUSTED, 1 << 48, 0x1000),
            MapPrediction::OutputOutOfRange(_)
        ));
    }

    #[test]
    fn a_list_may_run_out_of_iova_space_only_if_some_placement_does() {
        let mut m = model();
        m.pfns = (1, 8);
        let shape = |granules| MapShape {
            bounced: false,
            offset: 0,
            granules,
            limit_pfn: 8,
        };
        // Free pfns 1..=8: a 4-run fits at 4 only; a 1-run first placed at 4..=7 leaves no
        // room for it, so running out is possible.
        assert!(m.iova_fits(&shape(4), &[]));
        assert!(m.iova_may_run_out(&[shape(1), shape(4)], &[]));
        // 2 then 1 always fits in 8 pfns.
        assert!(!m.iova_may_run_out(&[shape(2), shape(1)], &[]));
    }
}
