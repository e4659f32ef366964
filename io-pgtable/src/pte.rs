//! VMSAv8-64 long-descriptor encoding: protections in, descriptors out, and back.
//!
//! Bit positions follow the Arm ARM (and Linux's `io-pgtable-arm.c`), so a dump reads as the
//! hardware would see the table.

use crate::config::{Geometry, Stage};

/// Bit 0: the descriptor is valid.
pub const VALID: u64 = 1 << 0;
/// Bit 1: table (levels 0–2) or page (level 3); clear for a block.
pub const TYPE_TABLE_OR_PAGE: u64 = 1 << 1;
/// Stage-1 AttrIndx field (bits 4:2).
pub const S1_ATTRINDX_SHIFT: u32 = 2;
/// Stage-1 AttrIndx: normal non-cacheable.
pub const S1_ATTR_NC: u64 = 0;
/// Stage-1 AttrIndx: normal write-back cacheable.
pub const S1_ATTR_WB: u64 = 1;
/// Stage-1 AttrIndx: device memory.
pub const S1_ATTR_DEV: u64 = 2;
/// Stage-1 NS bit (with the non-secure quirk).
pub const S1_NS: u64 = 1 << 5;
/// Stage-1 `AP[1]`: unprivileged access allowed.
pub const S1_AP_UNPRIV: u64 = 1 << 6;
/// Stage-1 `AP[2]`: read-only.
pub const S1_AP_RDONLY: u64 = 1 << 7;
/// Stage-2 MemAttr field (bits 5:2) mask.
pub const S2_MEMATTR_MASK: u64 = 0xf << 2;
/// Stage-2 MemAttr: outer and inner write-back.
pub const S2_MEMATTR_WB: u64 = 0xf << 2;
/// Stage-2 MemAttr: normal non-cacheable.
pub const S2_MEMATTR_NC: u64 = 0x5 << 2;
/// Stage-2 MemAttr: device.
pub const S2_MEMATTR_DEV: u64 = 0x1 << 2;
/// Stage-2 S2AP read.
pub const S2_AP_READ: u64 = 1 << 6;
/// Stage-2 S2AP write.
pub const S2_AP_WRITE: u64 = 1 << 7;
/// Shareability: outer shareable.
pub const SH_OUTER: u64 = 2 << 8;
/// Shareability: inner shareable.
pub const SH_INNER: u64 = 3 << 8;
/// Shareability field mask.
pub const SH_MASK: u64 = 3 << 8;
/// Access flag.
pub const AF: u64 = 1 << 10;
/// Stage-1 not-global.
pub const S1_NG: u64 = 1 << 11;
/// Execute-never (UXN and PXN, both set).
pub const XN: u64 = 3 << 53;
/// NSTable on table descriptors (with the non-secure quirk).
pub const NSTABLE: u64 = 1 << 63;

/// The level of page descriptors (type bits `11` there mean a page, not a table): the last
/// level with every granule, where a granule-sized map or unmap writes.
pub(crate) const PAGE_LEVEL: u32 = 3;

/// Output-address bits `[47:12]` of a descriptor with the 4 KiB granule and no packed
/// `PA[51:48]` (the constant of the 4 KiB translation walk).
pub(crate) const OA_MASK_4K: u64 = ((1 << 48) - 1) & !((1 << 12) - 1);

/// Marks an entry of a table whose owner is tearing it down (see the crate's concurrency
/// contract): invalid to hardware (bit 0 clear) and never changed again, so no
/// compare-and-swap from 0 (a table install, a leaf map) lands in a table being freed.
pub const DEAD: u64 = 0x0dead << 44;
/// Marks an entry a block map has reserved while it checks and replaces the table above it:
/// invalid to hardware (bit 0 clear); only the reserving map changes it (back, or on).
pub const FROZEN: u64 = 0x0f202 << 44;

/// Whether `d`, found above the leaf level, links a next-level table (type bits `11`).
#[inline]
pub(crate) fn is_table(d: u64) -> bool {
    d & (VALID | TYPE_TABLE_OR_PAGE) == VALID | TYPE_TABLE_OR_PAGE
}

/// Whether the raw descriptor `d` maps nothing and never did: zero, or one of the markers
/// ([`DEAD`], [`FROZEN`]) the claiming protocol leaves in entries.
#[inline]
pub fn vacant(d: u64) -> bool {
    d == 0 || d == DEAD || d == FROZEN
}

bitflags::bitflags! {
    /// Access rights and memory type of a mapping, as Linux's `IOMMU_*` prot bits.
    ///
    /// ```
    /// use io_pgtable::Prot;
    /// let p = Prot::READ | Prot::WRITE | Prot::CACHE;
    /// assert!(p.contains(Prot::WRITE));
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
    pub struct Prot: u8 {
        /// Device may read.
        const READ = 1 << 0;
        /// Device may write.
        const WRITE = 1 << 1;
        /// Normal write-back cacheable, inner shareable.
        const CACHE = 1 << 2;
        /// Execute-never.
        const NOEXEC = 1 << 3;
        /// Device memory (MMIO).
        const MMIO = 1 << 4;
        /// Privileged access only (stage 1).
        const PRIV = 1 << 5;
    }
}

/// `"rw"`, `"r-"`, `"-w"` plus attribute letters: `c` cacheable, `m` MMIO, `x` execute-never,
/// `p` privileged.
///
/// ```
/// use io_pgtable::Prot;
/// assert_eq!((Prot::READ | Prot::CACHE).to_string(), "r-c");
/// assert_eq!((Prot::WRITE | Prot::NOEXEC | Prot::PRIV).to_string(), "-wxp");
/// ```
impl std::fmt::Display for Prot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let letter = |p: Prot, c: char| if self.contains(p) { c } else { '-' };
        write!(f, "{}{}", letter(Prot::READ, 'r'), letter(Prot::WRITE, 'w'))?;
        for (p, c) in [
            (Prot::CACHE, 'c'),
            (Prot::MMIO, 'm'),
            (Prot::NOEXEC, 'x'),
            (Prot::PRIV, 'p'),
        ] {
            if self.contains(p) {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// A descriptor decoded at its level.
///
/// ```
/// use io_pgtable::{pte, Config, Descriptor};
/// let g = Config::s1_4k(48).geometry().unwrap();
/// let d = pte::table(&g, 0x8000_1000);
/// assert_eq!(pte::decode(&g, 2, d), Descriptor::Table { addr: 0x8000_1000 });
/// // The same bits are a page at level 3; a block encoding there is invalid.
/// assert!(matches!(pte::decode(&g, 3, d), Descriptor::Leaf { paddr: 0x8000_1000, .. }));
/// assert_eq!(pte::decode(&g, 3, 0b01), Descriptor::Invalid);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Descriptor {
    /// Invalid (bit 0 clear, or `01` at level 3).
    Invalid,
    /// A next-level table at this address.
    Table {
        /// Address of the next-level table.
        addr: u64,
    },
    /// A leaf: block at levels 1–2, page at level 3.
    Leaf {
        /// Output address of the block or page.
        paddr: u64,
        /// Protections decoded from the attribute bits.
        prot: Prot,
    },
}

/// Place an output address in a descriptor: bits `[47:page_shift]` in place and, with a 52-bit
/// output field, `PA[51:48]` in bits 15:12 (the packing the 2021 Linux fix applied to table
/// descriptors too).
///
/// ```
/// use io_pgtable::{pte, Config, Granule};
/// let g = Config { granule: Granule::Size64K, oas: 52, ..Config::s1_4k(48) }.geometry().unwrap();
/// let pa = 0xa_0000_1234_0000; // bits 51:48 set
/// let d = pte::encode_oa(&g, pa);
/// assert_eq!(d >> 48, 0); // packed into bits 15:12
/// assert_eq!(pte::decode_oa(&g, d), pa);
/// ```
#[inline]
pub fn encode_oa(g: &Geometry, addr: u64) -> u64 {
    (addr & g.oa_mask()) | ((addr >> 36) & g.oa_hi_mask())
}

/// The output address held in a descriptor (inverse of [`encode_oa`]); the example there
/// round-trips a 52-bit address.
#[inline]
pub fn decode_oa(g: &Geometry, desc: u64) -> u64 {
    (desc & g.oa_mask()) | ((desc & g.oa_hi_mask()) << 36)
}

/// A table descriptor pointing at `table_addr`.
#[inline]
pub fn table(g: &Geometry, table_addr: u64) -> u64 {
    let ns = if g.config().ns { NSTABLE } else { 0 };
    encode_oa(g, table_addr) | ns | TYPE_TABLE_OR_PAGE | VALID
}

/// A leaf descriptor at `level` for `paddr` with `prot` (`prot` must grant read or write).
///
/// ```
/// use io_pgtable::{pte, Config, Prot};
/// let g = Config::s1_4k(48).geometry().unwrap();
/// let d = pte::leaf(&g, 3, 0x4000_3000, Prot::READ | Prot::NOEXEC);
/// assert_eq!(pte::decode_oa(&g, d), 0x4000_3000);
/// assert_eq!(pte::prot_of(&g, d), Prot::READ | Prot::NOEXEC);
/// ```
#[inline]
pub fn leaf(g: &Geometry, level: u32, paddr: u64, prot: Prot) -> u64 {
    let ty = if level == 3 {
        TYPE_TABLE_OR_PAGE | VALID
    } else {
        VALID
    };
    ty | encode_oa(g, paddr) | g.leaf_attrs()[(prot.bits() & 63) as usize]
}

/// The attribute bits of a leaf with `prot` at `stage` (with the NS quirk iff `ns`), for every
/// combination of the six protection bits: a map encodes them with one lookup.
pub(crate) fn leaf_attr_lut(stage: Stage, ns: bool) -> [u64; 64] {
    std::array::from_fn(|i| leaf_attrs_bits(stage, ns, Prot::from_bits_retain(i as u8)))
}

/// A leaf's attribute bits bit by bit (everything but the type bits and the output address):
/// the definition the lookup table is built from.
fn leaf_attrs_bits(stage: Stage, ns: bool, prot: Prot) -> u64 {
    let mut d = AF;
    d |= if prot.contains(Prot::CACHE) {
        SH_INNER
    } else {
        SH_OUTER
    };
    if prot.contains(Prot::NOEXEC) {
        d |= XN;
    }
    match stage {
        Stage::S1 => {
            d |= S1_NG;
            if !prot.contains(Prot::WRITE) {
                d |= S1_AP_RDONLY;
            }
            if !prot.contains(Prot::PRIV) {
                d |= S1_AP_UNPRIV;
            }
            let attr = if prot.contains(Prot::MMIO) {
                S1_ATTR_DEV
            } else if prot.contains(Prot::CACHE) {
                S1_ATTR_WB
            } else {
                S1_ATTR_NC
            };
            d |= attr << S1_ATTRINDX_SHIFT;
            if ns {
                d |= S1_NS;
            }
        }
        Stage::S2 => {
            if prot.contains(Prot::READ) {
                d |= S2_AP_READ;
            }
            if prot.contains(Prot::WRITE) {
                d |= S2_AP_WRITE;
            }
            d |= if prot.contains(Prot::MMIO) {
                S2_MEMATTR_DEV
            } else if prot.contains(Prot::CACHE) {
                S2_MEMATTR_WB
            } else {
                S2_MEMATTR_NC
            };
        }
    }
    d
}

/// The protections a leaf descriptor grants. A stage-1 leaf is always readable (write-only
/// mappings are encoded read-write, as in Linux).
///
/// ```
/// use io_pgtable::{pte, Config, Prot};
/// let g = Config::s1_4k(48).geometry().unwrap();
/// let d = pte::leaf(&g, 3, 0x5000, Prot::WRITE);
/// assert!(pte::prot_of(&g, d).contains(Prot::READ | Prot::WRITE));
/// ```
#[inline]
pub fn prot_of(g: &Geometry, d: u64) -> Prot {
    prot_at(g.config().stage, d)
}

/// [`prot_of`] for a leaf of `stage`: one lookup in a table built at compile time, and XN.
#[inline]
pub(crate) fn prot_at(stage: Stage, d: u64) -> Prot {
    let lut = match stage {
        Stage::S1 => &PROT_LUT_S1,
        Stage::S2 => &PROT_LUT_S2,
    };
    let p = Prot::from_bits_retain(lut[((d >> PROT_LUT_SHIFT) & 63) as usize]);
    if d & XN != 0 {
        p.union(Prot::NOEXEC)
    } else {
        p
    }
}

/// The lowest descriptor bit the protection tables are indexed by: every stage-1 and stage-2
/// attribute [`prot_of`] reads, except XN, lies in bits 7:2.
const PROT_LUT_SHIFT: u32 = 2;

/// The protections of every combination of descriptor bits 7:2 of a stage-1 leaf.
static PROT_LUT_S1: [u8; 64] = prot_lut(Stage::S1);
/// The protections of every combination of descriptor bits 7:2 of a stage-2 leaf.
static PROT_LUT_S2: [u8; 64] = prot_lut(Stage::S2);

/// The protections of every combination of descriptor bits 7:2 at `stage` (XN excluded),
/// so a leaf's protections decode with one lookup instead of a chain of tests.
const fn prot_lut(stage: Stage) -> [u8; 64] {
    let mut lut = [0; 64];
    let mut i = 0;
    while i < 64 {
        lut[i] = prot_of_bits(stage, (i as u64) << PROT_LUT_SHIFT).bits();
        i += 1;
    }
    lut
}

/// [`prot_of`] bit by bit: the definition the lookup tables are built from.
const fn prot_of_bits(stage: Stage, d: u64) -> Prot {
    let xn = set(d & XN != 0, Prot::NOEXEC);
    let rest = match stage {
        Stage::S1 => {
            let attr = (d >> S1_ATTRINDX_SHIFT) & 7;
            Prot::READ
                .union(set(d & S1_AP_RDONLY == 0, Prot::WRITE))
                .union(set(d & S1_AP_UNPRIV == 0, Prot::PRIV))
                .union(set(attr == S1_ATTR_DEV, Prot::MMIO))
                .union(set(attr == S1_ATTR_WB, Prot::CACHE))
        }
        Stage::S2 => {
            let attr = d & S2_MEMATTR_MASK;
            set(d & S2_AP_READ != 0, Prot::READ)
                .union(set(d & S2_AP_WRITE != 0, Prot::WRITE))
                .union(set(attr == S2_MEMATTR_DEV, Prot::MMIO))
                .union(set(attr == S2_MEMATTR_WB, Prot::CACHE))
        }
    };
    xn.union(rest)
}

/// `p` if `on`, else nothing (a `const` conditional union).
const fn set(on: bool, p: Prot) -> Prot {
    if on {
        p
    } else {
        Prot::empty()
    }
}

/// Decode a descriptor found at `level`.
///
/// ```
/// use io_pgtable::{pte, Config, Prot};
/// let g = Config::s1_4k(48).geometry().unwrap();
/// let d = pte::leaf(&g, 2, 0x4020_0000, Prot::READ);
/// assert_eq!(pte::decode(&g, 2, d), pte::Descriptor::Leaf { paddr: 0x4020_0000, prot: Prot::READ });
/// ```
#[inline]
pub fn decode(g: &Geometry, level: u32, d: u64) -> Descriptor {
    if d & VALID == 0 {
        return Descriptor::Invalid;
    }
    let is_table_or_page = d & TYPE_TABLE_OR_PAGE != 0;
    match (level, is_table_or_page) {
        (3, false) => Descriptor::Invalid,
        (3, true) | (_, false) => Descriptor::Leaf {
            paddr: decode_oa(g, d),
            prot: prot_of(g, d),
        },
        (_, true) => Descriptor::Table {
            addr: decode_oa(g, d),
        },
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::config::{Config, Granule};

    fn g(granule: Granule, stage: Stage, ias: u32, oas: u32, ns: bool) -> Geometry {
        Config {
            granule,
            stage,
            ias,
            oas,
            ns,
        }
        .geometry()
        .unwrap()
    }

    #[test]
    fn s1_page_bits_4k() {
        let geo = g(Granule::Size4K, Stage::S1, 48, 48, false);
        let d = leaf(&geo, 3, 0x1234_5678_9000, Prot::READ);
        // valid + page, AttrIndx NC, AP unpriv + read-only, outer shareable, AF, nG, OA.
        let want = 0b11 | S1_AP_UNPRIV | S1_AP_RDONLY | SH_OUTER | AF | S1_NG | 0x1234_5678_9000;
        assert_eq!(d, want, "{d:#x} vs {want:#x}");
        let d = leaf(
            &geo,
            3,
            0x1000,
            Prot::READ | Prot::WRITE | Prot::CACHE | Prot::NOEXEC | Prot::PRIV,
        );
        assert_eq!(
            d,
            0b11 | (S1_ATTR_WB << 2) | SH_INNER | AF | S1_NG | XN | 0x1000
        );
        let d = leaf(&geo, 3, 0x1000, Prot::WRITE | Prot::MMIO);
        assert_eq!(
            d,
            0b11 | (S1_ATTR_DEV << 2) | S1_AP_UNPRIV | SH_OUTER | AF | S1_NG | 0x1000
        );
        assert_eq!(
            d & (1 << 4 | 1 << 3 | 1 << 2),
            1 << 3,
            "AttrIndx 2 is bit 3"
        );
    }

    #[test]
    fn s1_block_vs_page_type_bits() {
        let geo = g(Granule::Size4K, Stage::S1, 48, 48, false);
        assert_eq!(leaf(&geo, 2, 0x20_0000, Prot::READ) & 3, 0b01);
        assert_eq!(leaf(&geo, 1, 0x4000_0000, Prot::READ) & 3, 0b01);
        assert_eq!(leaf(&geo, 3, 0x1000, Prot::READ) & 3, 0b11);
        assert_eq!(table(&geo, 0x5000) & 3, 0b11);
        assert_eq!(
            decode(&geo, 3, 0b01 | 0x1000),
            Descriptor::Invalid,
            "01 at level 3 is invalid"
        );
        assert_eq!(decode(&geo, 2, 0b10 | 0x1000), Descriptor::Invalid);
        assert_eq!(
            decode(&geo, 2, table(&geo, 0x5000)),
            Descriptor::Table { addr: 0x5000 }
        );
    }

    #[test]
    fn ns_quirk_bits() {
        let geo = g(Granule::Size4K, Stage::S1, 48, 48, true);
        assert_ne!(leaf(&geo, 3, 0x1000, Prot::READ) & S1_NS, 0);
        assert_eq!(table(&geo, 0x5000), NSTABLE | 0x5000 | 0b11);
        let plain = g(Granule::Size4K, Stage::S1, 48, 48, false);
        assert_eq!(leaf(&plain, 3, 0x1000, Prot::READ) & S1_NS, 0);
        assert_eq!(table(&plain, 0x5000) & NSTABLE, 0);
    }

    #[test]
    fn s2_bits() {
        let geo = g(Granule::Size16K, Stage::S2, 40, 40, false);
        let d = leaf(&geo, 3, 0x4000, Prot::READ);
        assert_eq!(
            d,
            0b11 | S2_AP_READ | S2_MEMATTR_NC | SH_OUTER | AF | 0x4000
        );
        assert_eq!(d & S1_NG, 0, "no nG at stage 2");
        let d = leaf(
            &geo,
            2,
            0x200_0000,
            Prot::READ | Prot::WRITE | Prot::CACHE | Prot::NOEXEC,
        );
        assert_eq!(
            d,
            0b01 | S2_AP_READ | S2_AP_WRITE | S2_MEMATTR_WB | SH_INNER | AF | XN | 0x200_0000
        );
        assert_eq!(
            leaf(&geo, 3, 0x4000, Prot::WRITE | Prot::MMIO)
                & (S2_MEMATTR_MASK | S2_AP_READ | S2_AP_WRITE),
            S2_MEMATTR_DEV | S2_AP_WRITE
        );
    }

    #[test]
    fn output_address_field_per_granule() {
        // The OA field starts at the granule: bits below it are never taken from the address.
        let g16 = g(Granule::Size16K, Stage::S1, 48, 48, false);
        assert_eq!(encode_oa(&g16, 0xffff_ffff_ffff), 0xffff_ffff_c000);
        let g64 = g(Granule::Size64K, Stage::S1, 48, 48, false);
        assert_eq!(encode_oa(&g64, 0xffff_ffff_ffff), 0xffff_ffff_0000);
        // 52-bit output: PA[51:48] packed into bits 15:12, for leaves and tables alike.
        let g52 = g(Granule::Size64K, Stage::S1, 52, 52, false);
        let pa = 0xa_1234_5678_0000u64;
        let d = leaf(&g52, 3, pa, Prot::READ);
        assert_eq!((d >> 12) & 0xf, 0xa);
        assert_eq!(d & 0xffff_ffff_0000, 0x1234_5678_0000);
        assert_eq!(decode_oa(&g52, d), pa);
        assert_eq!(
            decode(&g52, 2, table(&g52, pa)),
            Descriptor::Table { addr: pa }
        );
    }

    #[test]
    fn prot_roundtrip() {
        for stage in [Stage::S1, Stage::S2] {
            let geo = g(Granule::Size4K, stage, 48, 48, false);
            for bits in 0..64u8 {
                let p = Prot::from_bits_truncate(bits);
                if !p.intersects(Prot::READ | Prot::WRITE) {
                    continue;
                }
                let got = prot_of(&geo, leaf(&geo, 3, 0x1000, p));
                let mut want = p;
                if stage == Stage::S1 {
                    want |= Prot::READ;
                } else {
                    want.remove(Prot::PRIV);
                }
                if p.contains(Prot::MMIO) {
                    want.remove(Prot::CACHE);
                }
                assert_eq!(got, want, "{stage:?} {p:?}");
            }
        }
    }

    /// No leaf this crate writes sets the bits a translation packs its fields into.
    #[test]
    fn leaves_leave_the_translation_bits_clear() {
        for granule in [Granule::Size4K, Granule::Size64K] {
            for (stage, ns) in [(Stage::S1, false), (Stage::S1, true), (Stage::S2, false)] {
                let oas = if granule == Granule::Size64K { 52 } else { 48 };
                let geo = g(granule, stage, 48, oas, ns);
                for level in 1..4 {
                    for bits in 0..64u8 {
                        let d = leaf(&geo, level, u64::MAX, Prot::from_bits_retain(bits));
                        assert_eq!(d >> crate::translation::Meta::SHIFT, 0, "{d:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn leaf_attribute_lookup_matches_the_bitwise_encoding() {
        for stage in [Stage::S1, Stage::S2] {
            for ns in [false, true] {
                let lut = leaf_attr_lut(stage, ns);
                for bits in 0..=u8::MAX {
                    let prot = Prot::from_bits_retain(bits);
                    assert_eq!(
                        lut[(bits & 63) as usize],
                        leaf_attrs_bits(stage, ns, prot & Prot::all()),
                        "{stage:?} ns {ns} {prot:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn prot_lookup_matches_the_bitwise_decode() {
        for stage in [Stage::S1, Stage::S2] {
            let geo = g(Granule::Size4K, stage, 48, 48, false);
            for low in 0..1u64 << 12 {
                for high in [0, XN, 1 << 53, NSTABLE] {
                    let d = low | high | 0x1234_5000;
                    assert_eq!(prot_of(&geo, d), prot_of_bits(stage, d), "{stage:?} {d:#x}");
                }
            }
        }
    }
}
