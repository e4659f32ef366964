//! The mappings of one domain as the virtio-iommu specification defines them: one entry per
//! MAP request, with the spec's overlap and partial-unmap rules.
//!
//! The page table answers "where does this IOVA go"; this map answers "which MAP request
//! created it", which the spec's rules need: MAP fails if any byte of the range is already
//! mapped, UNMAP removes every mapping inside its range and refuses (changing nothing) if it
//! would split one. Both run on the control path under the domain's lock; devices never look
//! here.

use std::collections::BTreeMap;

/// One mapping, created by one MAP request: `[virt_start, virt_end]` → `phys_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Mapping {
    /// First IOVA of the mapping.
    pub virt_start: u64,
    /// Last IOVA of the mapping (inclusive, as in the specification).
    pub virt_end: u64,
    /// Guest-physical address of `virt_start`.
    pub phys_start: u64,
    /// `VIRTIO_IOMMU_MAP_F_*` flags of the MAP request.
    pub flags: u32,
}

impl Mapping {
    /// Length in bytes (`virt_end - virt_start + 1`; saturates for the full 2^64 range; 0
    /// for a reversed one, which no tree holds).
    pub fn len(&self) -> u64 {
        self.virt_end
            .checked_sub(self.virt_start)
            .map_or(0, |d| d.saturating_add(1))
    }

    /// Whether the range is reversed (`virt_end < virt_start`): a mapping in a tree covers at
    /// least one byte.
    pub fn is_empty(&self) -> bool {
        self.virt_end < self.virt_start
    }
}

/// Why the map refused a request (the caller turns these into virtio-iommu status codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapConflict {
    /// MAP: a byte of the range is already mapped (spec: `VIRTIO_IOMMU_S_INVAL`).
    Overlap(Mapping),
    /// UNMAP: the range covers only part of this mapping (spec: `VIRTIO_IOMMU_S_RANGE`).
    Split(Mapping),
    /// MAP or UNMAP: the range ends before it starts (spec: `VIRTIO_IOMMU_S_INVAL`).
    Reversed {
        /// First address of the range.
        start: u64,
        /// Last address of the range.
        end: u64,
    },
}

/// A domain's mappings, keyed by `virt_start`; entries never overlap.
#[derive(Debug, Default, Clone)]
pub struct MappingTree {
    by_start: BTreeMap<u64, Mapping>,
}

impl MappingTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The mapping that contains `iova`, if any. O(log n).
    pub fn lookup(&self, iova: u64) -> Option<&Mapping> {
        self.by_start
            .range(..=iova)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.virt_end >= iova)
    }

    /// Mappings intersecting `[start, end]`, in IOVA order (none for a reversed range).
    /// O(log n + k).
    pub fn intersecting(&self, start: u64, end: u64) -> impl Iterator<Item = &Mapping> {
        // A reversed range is empty (and `BTreeMap::range` would panic on it).
        let range = (start <= end).then(|| self.by_start.range(start..=end));
        // Only the mapping starting before `start` can reach into the range from the left.
        let head = self
            .lookup(start)
            .filter(|m| m.virt_start < start && start <= end);
        head.into_iter()
            .chain(range.into_iter().flatten().map(|(_, m)| m))
    }

    /// Check that `m` could be inserted: not reversed, and no byte of it is mapped.
    pub fn check_insert(&self, m: &Mapping) -> Result<(), MapConflict> {
        if m.is_empty() {
            return Err(MapConflict::Reversed {
                start: m.virt_start,
                end: m.virt_end,
            });
        }
        match self.intersecting(m.virt_start, m.virt_end).next() {
            Some(existing) => Err(MapConflict::Overlap(*existing)),
            None => Ok(()),
        }
    }

    /// Insert `m` if no byte of it is mapped yet.
    pub fn insert(&mut self, m: Mapping) -> Result<(), MapConflict> {
        self.check_insert(&m)?;
        self.by_start.insert(m.virt_start, m);
        Ok(())
    }

    /// The mappings an UNMAP of `[start, end]` removes, or the mapping it would split.
    pub fn plan_unmap(&self, start: u64, end: u64) -> Result<Vec<Mapping>, MapConflict> {
        if end < start {
            return Err(MapConflict::Reversed { start, end });
        }
        let mut covered = Vec::new();
        for m in self.intersecting(start, end) {
            if m.virt_start < start || m.virt_end > end {
                return Err(MapConflict::Split(*m));
            }
            covered.push(*m);
        }
        Ok(covered)
    }

    /// The unmapped range around `iova`, inclusive: from the end of the mapping below it (or
    /// 0) to the start of the mapping above it (or `u64::MAX`); `None` if `iova` is mapped.
    /// O(log n).
    pub fn gap_around(&self, iova: u64) -> Option<(u64, u64)> {
        let below = self.by_start.range(..=iova).next_back().map(|(_, m)| m);
        let above = self.by_start.range(iova..).next().map(|(&start, _)| start);
        if below.is_some_and(|m| m.virt_end >= iova) {
            return None;
        }
        // `above` starts past `iova`: the mapping starting at `iova` is `below`.
        Some((
            below.map_or(0, |m| m.virt_end + 1),
            above.map_or(u64::MAX, |start| start - 1),
        ))
    }

    /// Remove the mapping starting at `virt_start`.
    pub fn remove(&mut self, virt_start: u64) -> Option<Mapping> {
        self.by_start.remove(&virt_start)
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    /// Whether there are no mappings.
    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// All mappings in IOVA order.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.by_start.values()
    }

    /// Remove every mapping, returning them.
    pub fn drain(&mut self) -> Vec<Mapping> {
        std::mem::take(&mut self.by_start).into_values().collect()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(s: u64, e: u64) -> Mapping {
        Mapping {
            virt_start: s,
            virt_end: e,
            phys_start: s + 0x1000_0000,
            flags: 3,
        }
    }

    #[test]
    fn spec_example_partial_unmap_is_refused_and_changes_nothing() {
        // The specification's example: map [0,9] and [10,19]; UNMAP [0,14] would split.
        let mut t = MappingTree::new();
        t.insert(m(0, 9)).unwrap();
        t.insert(m(10, 19)).unwrap();
        assert_eq!(t.plan_unmap(0, 14), Err(MapConflict::Split(m(10, 19))));
        assert_eq!(t.plan_unmap(5, 19), Err(MapConflict::Split(m(0, 9))));
        assert_eq!(t.plan_unmap(0, 19).unwrap(), vec![m(0, 9), m(10, 19)]);
        // A range covering no mapping at all succeeds with nothing to remove.
        assert_eq!(t.plan_unmap(100, 200).unwrap(), vec![]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn overlap_reports_the_existing_mapping() {
        let mut t = MappingTree::new();
        t.insert(m(0x1000, 0x1fff)).unwrap();
        assert_eq!(
            t.insert(m(0x1fff, 0x2fff)),
            Err(MapConflict::Overlap(m(0x1000, 0x1fff)))
        );
        assert_eq!(
            t.insert(m(0, 0x1000)),
            Err(MapConflict::Overlap(m(0x1000, 0x1fff)))
        );
        t.insert(m(0x2000, 0x2fff)).unwrap();
        t.insert(m(0, 0xfff)).unwrap();
        assert_eq!(t.lookup(0x2abc), Some(&m(0x2000, 0x2fff)));
        assert_eq!(t.lookup(u64::MAX), None);
        assert_eq!(m(0, u64::MAX).len(), u64::MAX);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Against a byte-set reference model over a 64-unit space.
        #[cfg_attr(miri, ignore)] // proptest persists failures through the file system
        #[test]
        fn matches_reference(ops in proptest::collection::vec((any::<bool>(), 0u64..64, 0u64..16), 1..60)) {
            let mut t = MappingTree::new();
            let mut owner: [Option<u64>; 80] = [None; 80];
            for (is_map, s, l) in ops {
                let e = s + l;
                if is_map {
                    let free = (s..=e).all(|i| owner[i as usize].is_none());
                    prop_assert_eq!(t.insert(m(s, e)).is_ok(), free);
                    if free { for i in s..=e { owner[i as usize] = Some(s); } }
                } else {
                    let touched: Vec<u64> = (s..=e).filter_map(|i| owner[i as usize]).collect();
                    let splits = touched.iter().any(|&st| {
                        let me = t.lookup(st).unwrap().virt_end;
                        st < s || me > e
                    });
                    match t.plan_unmap(s, e) {
                        Ok(list) => {
                            prop_assert!(!splits);
                            for x in list { t.remove(x.virt_start); for i in x.virt_start..=x.virt_end { owner[i as usize] = None; } }
                        }
                        Err(MapConflict::Split(_)) => prop_assert!(splits),
                        Err(other) => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                for (i, o) in owner.iter().enumerate() {
                    prop_assert_eq!(t.lookup(i as u64).map(|x| x.virt_start), *o);
                    // The gap: the free units around `i`, to 0 and past the last unit.
                    let gap = o.is_none().then(|| {
                        let lo = (0..i).rev().find(|&j| owner[j].is_some()).map_or(0, |j| j as u64 + 1);
                        let hi = (i..owner.len()).find(|&j| owner[j].is_some()).map_or(u64::MAX, |j| j as u64 - 1);
                        (lo, hi)
                    });
                    prop_assert_eq!(t.gap_around(i as u64), gap);
                }
            }
        }
    }
}
