//! How a domain is built, checked before anything is allocated.

use crate::error::DmaError;
use crate::flush_queue::FqConfig;
use iova_cache::IovaConfig;

/// How a domain is built.
///
/// ```
/// use dma_iommu::DomainConfig;
/// let c = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
/// assert_eq!(c.iova.granule_shift, 12);
/// assert_eq!(c.iova.end_pfn, (1 << (39 - 12)) - 1);
/// assert!(c.lazy.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// The page-table format; its page size is the IOVA granule.
    pub pgtable: io_pgtable::Config,
    /// The IOVA allocator; its granule must be the page size and its space inside the input
    /// address range.
    pub iova: IovaConfig,
    /// Start in lazy mode with this flush queue (`None`: strict). If the queue's rings cannot
    /// be allocated the domain starts strict instead, as Linux does.
    pub lazy: Option<FqConfig>,
}

impl DomainConfig {
    /// A strict domain over `pgtable`, with an IOVA space covering its whole input range
    /// (from pfn 1: IOVA 0 is never handed out).
    pub fn new(pgtable: io_pgtable::Config) -> Result<Self, DmaError> {
        let g = pgtable.geometry()?;
        let shift = g.config().granule.page_shift();
        let end_pfn = (1u64 << (g.ias() - shift)) - 1;
        // The domain records ownership itself (registry): no second record in the allocator.
        let iova = IovaConfig {
            granule_shift: shift,
            checked_frees: false,
            ..IovaConfig::with_space(1, end_pfn)
        };
        Ok(Self {
            pgtable,
            iova,
            lazy: None,
        })
    }

    /// The same, starting in lazy mode.
    ///
    /// ```
    /// use dma_iommu::{DomainConfig, FqConfig};
    /// let c = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap().lazy(FqConfig::single());
    /// assert_eq!(c.lazy, Some(FqConfig::single()));
    /// ```
    pub fn lazy(mut self, fq: FqConfig) -> Self {
        self.lazy = Some(fq);
        self
    }

    /// Check every part before anything is built: the page-table format, the IOVA allocator
    /// (its counts bounded by `iova_cache::config::MAX_CPUS` and `MAX_MAGAZINE_SIZE`), its
    /// granule and space against the page table, and the flush queue ([`FqConfig::validate`]:
    /// at most [`crate::flush_queue::MAX_QUEUED`] entries). [`crate::Domain::new`] calls it first.
    ///
    /// ```
    /// use dma_iommu::{DmaError, DomainConfig, FqConfig, FqError};
    /// let c = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
    /// assert_eq!(c.validate(), Ok(()));
    /// let huge = c.clone().lazy(FqConfig::per_cpu().with_cpus(usize::MAX));
    /// assert!(matches!(huge.validate(), Err(DmaError::FlushQueue(FqError::TooLarge { .. }))));
    /// let mut wide = c;
    /// wide.iova.cpus = usize::MAX;
    /// assert!(matches!(wide.validate(), Err(DmaError::NoIova(_))));
    /// ```
    pub fn validate(&self) -> Result<(), DmaError> {
        let geom = self.pgtable.geometry()?;
        self.iova.validate().map_err(DmaError::NoIova)?;
        let shift = geom.page_size().trailing_zeros();
        if self.iova.granule_shift != shift {
            return Err(DmaError::Config(
                "the IOVA granule differs from the page size",
            ));
        }
        let aperture_end = (1u64 << geom.ias()) - 1;
        if self.iova.start_pfn == 0 || self.iova.end_pfn > aperture_end >> shift {
            return Err(DmaError::Config(
                "the IOVA space must lie inside the aperture and exclude IOVA 0",
            ));
        }
        if let Some(fq) = &self.lazy {
            fq.validate()?;
        }
        Ok(())
    }
}
