//! What the DMA-mapping checkers (swiotlb and iommu) share: the fuzzed direction and address
//! picks, resolved against a registry of live mappings keyed by their start address.

use arbitrary::Arbitrary;
use std::collections::BTreeMap;
use swiotlb_core::Direction;

/// A mapping's DMA direction.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub(super) enum Dir {
    To,
    From,
    Bi,
}

impl Dir {
    pub(super) fn real(self) -> Direction {
        match self {
            Dir::To => Direction::ToDevice,
            Dir::From => Direction::FromDevice,
            Dir::Bi => Direction::Bidirectional,
        }
    }
}

/// A DMA address: a live mapping's (plus an offset), an unmapped one, or anything.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub(super) enum Pick {
    Live(u8),
    Inside(u8, u16),
    Dead(u8),
    Raw(u64),
}

/// A length for an operation on a mapping: the whole of it, a small one, or anything (each
/// checker resolves `Whole` and `Small` against the mapping it applies to).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub(super) enum Len {
    Whole,
    Small(u16),
    Raw(usize),
}

impl Pick {
    /// The picked address and the start of the live mapping it was taken from, if any
    /// (`None` when the pick needs a live or dead mapping and there is none). `len` is a
    /// mapping's length in bytes.
    pub(super) fn resolve<M>(
        self,
        live: &BTreeMap<u64, M>,
        dead: &[u64],
        len: impl Fn(&M) -> usize,
    ) -> Option<(u64, Option<u64>)> {
        match self {
            Pick::Live(n) => nth_live(live, n).map(|(a, _)| (a, Some(a))),
            Pick::Inside(n, o) => {
                nth_live(live, n).map(|(a, m)| (a + u64::from(o) % len(m) as u64, Some(a)))
            }
            Pick::Dead(n) if !dead.is_empty() => Some((dead[usize::from(n) % dead.len()], None)),
            Pick::Raw(r) => Some((r, None)),
            _ => None,
        }
    }
}

/// The live mapping `n` designates (counting round the registry), if there is any.
pub(super) fn nth_live<M>(live: &BTreeMap<u64, M>, n: u8) -> Option<(u64, &M)> {
    live.iter()
        .nth(usize::from(n) % live.len().max(1))
        .map(|(&a, m)| (a, m))
}

/// The live mapping containing `addr`, with the offset of `addr` in it; `len` is a mapping's
/// length in bytes.
pub(super) fn containing<M>(
    live: &BTreeMap<u64, M>,
    addr: u64,
    len: impl Fn(&M) -> usize,
) -> Option<(u64, usize)> {
    let (&a, m) = live.range(..=addr).next_back()?;
    let o = (addr - a) as usize;
    (o < len(m)).then_some((a, o))
}
