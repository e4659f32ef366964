//! Configuration and the geometry it implies: granule, levels, start level, page sizes.
//!
//! # Geometry
//!
//! * `levels = ceil((ias − page_shift) / bits_per_level)`, `start = 4 − levels`; the start-level
//!   table has `pgd_bits` index bits. Stage 2 concatenates the start level like Linux (start
//!   level 0 with ≤ 16 entries becomes start level 1, `pgd_bits += bits_per_level`). Every index
//!   computation (map, unmap, walk) goes through [`Geometry::index`], which uses `pgd_bits` at
//!   the start level, so the 2024 "concatenated tables" bug cannot come back in one place only.
//! * Leaf sizes: 4 KiB granule at levels 1/2/3; 16 KiB at 2/3; 64 KiB at 2/3, plus level 1
//!   (4 TiB) when `oas > 48`; restricted to levels at or below the start.
//! * `Granule::Tiny` is a configuration, not an implementation: 4 KiB pages and 2 index bits per
//!   level (4-entry tables), identical descriptors. Models and exhaustive tests use it.
//! * `Config` is validated before anything is allocated: `ias`/`oas` above the page shift and
//!   at most 48 bits (52 with 64 KiB), at most four levels, and `ns` (the NS quirk) only at
//!   stage 1: stage-2 table descriptors keep bits 63:59 RES0, where NSTable would go, and Linux
//!   accepts no NS quirk at stage 2 either (`InvalidConfig` otherwise).

use crate::error::Error;

/// Translation granule: the smallest page and the size of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB pages, 512 descriptors per table; blocks of 2 MiB (level 2) and 1 GiB (level 1).
    Size4K,
    /// 16 KiB pages, 2048 descriptors per table; blocks of 32 MiB (level 2).
    Size16K,
    /// 64 KiB pages, 8192 descriptors per table; blocks of 512 MiB (level 2), and 4 TiB
    /// (level 1) with a 52-bit output size.
    Size64K,
    /// Not an architectural granule: 4 KiB pages with 4-entry tables (2 index bits per level),
    /// blocks of 16 KiB (level 2) and 64 KiB (level 1). Descriptors are encoded exactly as
    /// for [`Granule::Size4K`]; the same code runs with geometries small enough for model
    /// checking and exhaustive tests.
    Tiny,
}

impl Granule {
    /// log2 of the page size.
    pub const fn page_shift(self) -> u32 {
        match self {
            Granule::Size4K | Granule::Tiny => 12,
            Granule::Size16K => 14,
            Granule::Size64K => 16,
        }
    }

    /// Index bits resolved by one (non-start) level: `log2(granule) - 3` for real granules.
    pub const fn bits_per_level(self) -> u32 {
        match self {
            Granule::Tiny => 2,
            g => g.page_shift() - 3,
        }
    }
}

/// Translation stage: stage 1 (VA to IPA/PA, AP permissions, AttrIndx) or stage 2 (IPA to PA,
/// S2AP permissions, MemAttr, concatenated start tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Stage 1 descriptors.
    S1,
    /// Stage 2 descriptors.
    S2,
}

/// What a page table is built from.
///
/// ```
/// use io_pgtable::{Config, Granule, Stage};
/// let cfg = Config { granule: Granule::Size16K, stage: Stage::S2, ias: 40, oas: 40, ns: false };
/// let g = cfg.geometry().unwrap();
/// assert_eq!(g.levels(), 3);
/// assert_eq!(g.pgsize_bitmap(), (16 << 10) | (32 << 20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Config {
    /// Translation granule.
    pub granule: Granule,
    /// Stage 1 or stage 2 descriptor format.
    pub stage: Stage,
    /// Input address size in bits (≤ 48, or 52 with the 64 KiB granule).
    pub ias: u32,
    /// Output address size in bits (≤ 48, or 52 with the 64 KiB granule).
    pub oas: u32,
    /// The non-secure quirk: NS on stage-1 leaves and NSTable on table descriptors. Stage 1
    /// only: refused with stage 2, whose table descriptors keep bits 63:59 RES0.
    pub ns: bool,
}

impl Config {
    /// Stage 1, 4 KiB granule, 48-bit output, input size `ias`.
    ///
    /// ```
    /// let g = io_pgtable::Config::s1_4k(39).geometry().unwrap();
    /// assert_eq!((g.start_level(), g.levels()), (1, 3));
    /// ```
    pub const fn s1_4k(ias: u32) -> Self {
        Config {
            granule: Granule::Size4K,
            stage: Stage::S1,
            ias,
            oas: 48,
            ns: false,
        }
    }

    /// The [`Granule::Tiny`] stage-1 configuration with `levels` levels of 4 entries each
    /// (input size `12 + 2 * levels` bits, saturating: a count no geometry has is refused
    /// by [`Config::geometry`], not an overflow).
    ///
    /// ```
    /// let g = io_pgtable::Config::tiny(2).geometry().unwrap();
    /// assert_eq!((g.start_level(), g.entries(2), g.block_size(2)), (2, 4, 16 << 10));
    /// ```
    pub const fn tiny(levels: u32) -> Self {
        Config {
            granule: Granule::Tiny,
            stage: Stage::S1,
            ias: levels.saturating_mul(2).saturating_add(12),
            oas: 48,
            ns: false,
        }
    }

    /// Validate the configuration and derive its geometry.
    pub fn geometry(&self) -> Result<Geometry, Error> {
        Geometry::new(self)
    }
}

/// The level structure a [`Config`] implies. Levels are numbered as in VMSAv8-64: the leaf
/// level is 3 and the walk starts at [`Geometry::start_level`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    config: Config,
    page_shift: u32,
    bits_per_level: u32,
    start_level: u32,
    /// Index bits of the start-level table (more than `bits_per_level` with concatenation).
    pgd_bits: u32,
    pgsize_bitmap: u64,
    /// Width of the descriptor's output-address field: 48, or 52 with packed `PA[51:48]`.
    oa_bits: u32,
    /// Per level (indexed by level number): the input-address bit where its index starts.
    /// Precomputed so a walk step is a shift and a mask, with no arithmetic on the geometry.
    shifts: [u32; 4],
    /// Per level: the index mask (`entries - 1`); every index it yields is in the table.
    index_masks: [u64; 4],
    /// Mask of the descriptor's output-address bits `[47:page_shift]`.
    oa_mask: u64,
    /// Descriptor bits 15:12 holding `PA[51:48]` with a 52-bit output field, else 0: packing
    /// and unpacking are then branch-free.
    oa_hi_mask: u64,
    /// Leaf attribute bits by the six protection bits (see [`crate::pte::leaf`]).
    leaf_attr_lut: [u64; 64],
    /// The leaf level of each supported page size, by its log2 ([`NO_LEVEL`] if unsupported):
    /// the argument check of every map and unmap is one lookup.
    level_by_shift: [u8; 64],
    /// Whether this is the 4 KiB granule with four levels (start level 0; 4 KiB has no packed
    /// `PA[51:48]`): the common stage-1 and stage-2 format, whose layout the translation walk
    /// and the writers' descents take as constants.
    four_level_4k: bool,
}

/// `level_by_shift` entry of a size that is no leaf size.
const NO_LEVEL: u8 = u8::MAX;

/// Stage-2 start tables may be concatenated up to this many (Arm ARM, D8.2.x).
const S2_MAX_CONCAT: u32 = 16;

impl Geometry {
    fn new(c: &Config) -> Result<Self, Error> {
        let page_shift = c.granule.page_shift();
        let bits_per_level = c.granule.bits_per_level();
        let max_bits = if c.granule == Granule::Size64K {
            52
        } else {
            48
        };
        if c.ias > max_bits || c.oas > max_bits {
            return Err(Error::InvalidConfig {
                reason: "address size above 48 bits (52 only with 64 KiB)",
            });
        }
        if c.ias <= page_shift || c.oas <= page_shift {
            return Err(Error::InvalidConfig {
                reason: "address size not above the page size",
            });
        }
        if c.ns && c.stage == Stage::S2 {
            // NSTable (bit 63) is RES0 in stage-2 table descriptors; Linux accepts no NS quirk
            // at stage 2 either.
            return Err(Error::InvalidConfig {
                reason: "the non-secure quirk applies to stage 1 only",
            });
        }
        let va_bits = c.ias - page_shift;
        let levels = va_bits.div_ceil(bits_per_level);
        if levels > 4 {
            return Err(Error::InvalidConfig {
                reason: "more than four levels",
            });
        }
        let mut start_level = 4 - levels;
        let mut pgd_bits = va_bits - bits_per_level * (levels - 1);
        // Stage 2 saves a level by concatenating the level-0 table's targets, as Linux does.
        if c.stage == Stage::S2 && start_level == 0 && (1u32 << pgd_bits) <= S2_MAX_CONCAT {
            pgd_bits += bits_per_level;
            start_level = 1;
        }
        let shifts = [0, 1, 2, 3].map(|l| page_shift + (3 - l) * bits_per_level);
        let index_masks = [0, 1, 2, 3].map(|l| {
            let bits = if l == start_level {
                pgd_bits
            } else {
                bits_per_level
            };
            (1u64 << bits) - 1
        });
        let mut geom = Geometry {
            config: *c,
            page_shift,
            bits_per_level,
            start_level,
            pgd_bits,
            pgsize_bitmap: 0,
            oa_bits: if c.oas > 48 { 52 } else { 48 },
            shifts,
            index_masks,
            oa_mask: ((1u64 << 48) - 1) & !((1u64 << page_shift) - 1),
            oa_hi_mask: if c.oas > 48 { 0xf << 12 } else { 0 },
            leaf_attr_lut: crate::pte::leaf_attr_lut(c.stage, c.ns),
            level_by_shift: [NO_LEVEL; 64],
            four_level_4k: c.granule == Granule::Size4K && start_level == 0,
        };
        let leaf_levels: &[u32] = match c.granule {
            Granule::Size4K | Granule::Tiny => &[1, 2, 3],
            Granule::Size16K => &[2, 3],
            Granule::Size64K if c.oas > 48 => &[1, 2, 3],
            Granule::Size64K => &[2, 3],
        };
        geom.pgsize_bitmap = leaf_levels
            .iter()
            .filter(|&&l| l >= start_level)
            .fold(0, |m, &l| m | geom.block_size(l));
        for level in geom.start_level..4 {
            if geom.pgsize_bitmap & geom.block_size(level) != 0 {
                geom.level_by_shift[geom.level_shift(level) as usize] = level as u8;
            }
        }
        Ok(geom)
    }

    /// The configuration this geometry came from.
    #[inline]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The page (granule) size in bytes.
    #[inline]
    pub fn page_size(&self) -> u64 {
        1 << self.page_shift
    }

    /// Number of levels walked.
    #[inline]
    pub fn levels(&self) -> u32 {
        4 - self.start_level
    }

    /// The level of the top table.
    #[inline]
    pub fn start_level(&self) -> u32 {
        self.start_level
    }

    /// Every supported leaf size, one bit each.
    #[inline]
    pub fn pgsize_bitmap(&self) -> u64 {
        self.pgsize_bitmap
    }

    /// Input address size in bits.
    #[inline]
    pub fn ias(&self) -> u32 {
        self.config.ias
    }

    /// Output address size in bits.
    #[inline]
    pub fn oas(&self) -> u32 {
        self.config.oas
    }

    /// Width of the descriptor output-address field (48, or 52 with packed `PA[51:48]`).
    #[inline]
    pub fn oa_bits(&self) -> u32 {
        self.oa_bits
    }

    /// The input-address bit where level `level`'s index starts.
    ///
    /// # Panics
    /// If `level` is above 3 (levels are 0 to 3).
    #[inline]
    pub fn level_shift(&self, level: u32) -> u32 {
        self.shifts[level as usize]
    }

    /// The span of one descriptor at `level`: the block (or page) size there.
    ///
    /// # Panics
    /// If `level` is above 3 (levels are 0 to 3).
    #[inline]
    pub fn block_size(&self, level: u32) -> u64 {
        1 << self.level_shift(level)
    }

    /// Index bits of a table at `level`; the start level uses the (possibly concatenated)
    /// top-table width.
    #[inline]
    pub fn index_bits(&self, level: u32) -> u32 {
        if level == self.start_level {
            self.pgd_bits
        } else {
            self.bits_per_level
        }
    }

    /// Descriptors in a table at `level`.
    #[inline]
    pub fn entries(&self, level: u32) -> usize {
        1 << self.index_bits(level)
    }

    /// The index of `iova` in a table at `level`.
    ///
    /// # Panics
    /// If `level` is above 3 (levels are 0 to 3).
    #[inline]
    pub fn index(&self, level: u32, iova: u64) -> usize {
        ((iova >> self.level_shift(level)) & self.index_mask(level)) as usize
    }

    /// The index mask of a table at `level` (`entries - 1`).
    #[inline]
    pub(crate) fn index_mask(&self, level: u32) -> u64 {
        self.index_masks[level as usize]
    }

    /// Mask of a descriptor's output-address bits `[47:page_shift]`.
    #[inline]
    pub(crate) fn oa_mask(&self) -> u64 {
        self.oa_mask
    }

    /// Leaf attribute bits by the six protection bits.
    #[inline]
    pub(crate) fn leaf_attrs(&self) -> &[u64; 64] {
        &self.leaf_attr_lut
    }

    /// Descriptor bits 15:12 if they hold `PA[51:48]` (52-bit output), else 0.
    #[inline]
    pub(crate) fn oa_hi_mask(&self) -> u64 {
        self.oa_hi_mask
    }

    /// Whether this is the four-level 4 KiB format (see the field).
    #[inline]
    pub(crate) fn four_level_4k(&self) -> bool {
        self.four_level_4k
    }

    /// The span of a whole table at `level`.
    ///
    /// # Panics
    /// If `level` is above 3 (levels are 0 to 3).
    #[inline]
    pub fn table_span(&self, level: u32) -> u64 {
        self.block_size(level) << self.index_bits(level)
    }

    /// The level whose descriptors map `pgsize`, if `pgsize` is a supported leaf size.
    #[inline]
    pub fn level_of(&self, pgsize: u64) -> Option<u32> {
        if !pgsize.is_power_of_two() {
            return None;
        }
        match self.level_by_shift[pgsize.trailing_zeros() as usize] {
            NO_LEVEL => None,
            level => Some(u32::from(level)),
        }
    }

    /// Alignment of a table at `level`: a granule, or the whole table if larger (concatenated
    /// start tables are aligned to their total size).
    pub(crate) fn table_align(&self, level: u32) -> usize {
        (self.page_size() as usize).max(self.entries(level) * 8)
    }
}

/// Every valid configuration of every granule and stage, input sizes 13..=52 bits (48-bit
/// output), with its geometry: for tests that check a property across all formats.
#[cfg(all(test, not(loom)))]
pub(crate) fn every_geometry() -> impl Iterator<Item = (Config, Geometry)> {
    let granules = [
        Granule::Size4K,
        Granule::Size16K,
        Granule::Size64K,
        Granule::Tiny,
    ];
    granules.into_iter().flat_map(|granule| {
        [Stage::S1, Stage::S2].into_iter().flat_map(move |stage| {
            (13..=52).filter_map(move |ias| {
                let config = Config {
                    granule,
                    stage,
                    ias,
                    oas: 48,
                    ns: false,
                };
                Some((config, config.geometry().ok()?))
            })
        })
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn geom(granule: Granule, stage: Stage, ias: u32, oas: u32) -> Geometry {
        Config {
            granule,
            stage,
            ias,
            oas,
            ns: false,
        }
        .geometry()
        .unwrap()
    }

    #[test]
    fn reference_geometry_table() {
        use Granule::*;
        // (granule, ias) -> (start level, top entries, shift of L3, L2)
        let g = geom(Size4K, Stage::S1, 48, 48);
        assert_eq!(
            (
                g.start_level(),
                g.entries(0),
                g.level_shift(0),
                g.level_shift(3)
            ),
            (0, 512, 39, 12)
        );
        assert_eq!(g.pgsize_bitmap(), (4 << 10) | (2 << 20) | (1 << 30));
        let g = geom(Size4K, Stage::S1, 39, 48);
        assert_eq!((g.start_level(), g.entries(1)), (1, 512));
        let g = geom(Size4K, Stage::S1, 32, 48);
        assert_eq!((g.start_level(), g.entries(1), g.levels()), (1, 4, 3));
        let g = geom(Size16K, Stage::S1, 48, 48);
        assert_eq!(
            (
                g.start_level(),
                g.entries(0),
                g.level_shift(0),
                g.level_shift(2)
            ),
            (0, 2, 47, 25)
        );
        assert_eq!(g.pgsize_bitmap(), (16 << 10) | (32 << 20));
        let g = geom(Size16K, Stage::S1, 47, 48);
        assert_eq!((g.start_level(), g.entries(1)), (1, 2048));
        assert_eq!(geom(Size16K, Stage::S1, 36, 48).levels(), 2);
        let g = geom(Size64K, Stage::S1, 48, 48);
        assert_eq!(
            (g.start_level(), g.entries(1), g.level_shift(1)),
            (1, 64, 42)
        );
        assert_eq!(g.pgsize_bitmap(), (64 << 10) | (512 << 20));
        let g = geom(Size64K, Stage::S1, 52, 52);
        assert_eq!((g.start_level(), g.entries(1)), (1, 1024));
        assert_eq!(g.pgsize_bitmap(), (64 << 10) | (512 << 20) | (1 << 42));
        assert_eq!(geom(Size64K, Stage::S1, 42, 48).levels(), 2);
    }

    #[test]
    fn stage2_concatenates_start_level() {
        // 4K, ias 40: four levels with a 2-entry level-0 table become 2 concatenated
        // level-1 tables (1024 entries).
        let g = geom(Granule::Size4K, Stage::S2, 40, 40);
        assert_eq!(
            (g.start_level(), g.entries(1), g.index_bits(1)),
            (1, 1024, 10)
        );
        assert_eq!(g.index(1, 1 << 39), 512);
        assert_eq!(g.table_align(1), 8192);
        // Stage 1 keeps level 0.
        assert_eq!(geom(Granule::Size4K, Stage::S1, 40, 40).start_level(), 0);
        // 48-bit stage 2 needs 512 level-1 tables: not concatenated.
        assert_eq!(geom(Granule::Size4K, Stage::S2, 48, 48).start_level(), 0);
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = [
            Config {
                granule: Granule::Size4K,
                stage: Stage::S1,
                ias: 52,
                oas: 48,
                ns: false,
            },
            Config {
                granule: Granule::Size4K,
                stage: Stage::S1,
                ias: 48,
                oas: 52,
                ns: false,
            },
            Config {
                granule: Granule::Size4K,
                stage: Stage::S1,
                ias: 12,
                oas: 48,
                ns: false,
            },
            Config {
                granule: Granule::Tiny,
                stage: Stage::S1,
                ias: 21,
                oas: 48,
                ns: false,
            },
            Config {
                granule: Granule::Size4K,
                stage: Stage::S2,
                ias: 40,
                oas: 40,
                ns: true,
            },
            // More levels than a table has: overflowed the input size (a debug-build panic).
            Config::tiny(u32::MAX),
            Config::tiny(5),
        ];
        for c in bad {
            assert!(
                matches!(c.geometry(), Err(Error::InvalidConfig { .. })),
                "{c:?}"
            );
        }
    }

    #[test]
    fn tiny_geometry() {
        let g = Config::tiny(3).geometry().unwrap();
        assert_eq!(
            (
                g.start_level(),
                g.entries(1),
                g.block_size(1),
                g.block_size(2)
            ),
            (1, 4, 64 << 10, 16 << 10)
        );
        assert_eq!(g.level_of(16 << 10), Some(2));
        assert_eq!(g.level_of(8 << 10), None);
        assert_eq!(g.table_span(2), 64 << 10);
    }
}
