//! Free-run counters (`list[]`) of one area: for a free slot, how many consecutive free slots
//! start there without leaving its segment; 0 for a used slot.
//!
//! Indices are area-relative; areas are whole segments, so segment boundaries are multiples of
//! `seg` from the area start. A pool smaller than one segment has `seg` equal to its size, so
//! no counter claims a slot beyond the pool (the out-of-bounds transient-pool bug).

/// Whether slot `i` and slot `i + 1` lie in the same segment.
#[inline]
fn same_segment_as_next(i: usize, seg: usize) -> bool {
    (i + 1) % seg != 0
}

/// `i mod seg`; a mask for the power-of-two segments of global pools (a division costs more
/// than the rest of a fast-path renumbering), a division for transient pools.
#[inline]
fn seg_offset(i: usize, seg: usize) -> usize {
    if seg.is_power_of_two() {
        i & (seg - 1)
    } else {
        i % seg
    }
}

/// Initial counters: `min(seg − i mod seg, len − i)`.
pub(crate) fn init(list: &mut [u16], seg: usize) {
    let len = list.len();
    for (i, v) in list.iter_mut().enumerate() {
        *v = (seg - i % seg).min(len - i) as u16;
    }
}

/// Renumber the free slots before `s` (same segment) counting on from `count`: the free run
/// ending at `s − 1` gets `count + 1, count + 2, …` walking back.
///
/// The run's start is found from the counters instead of a slot-by-slot walk (a walk of up to
/// a segment, twice per map+unmap, dominated the fast path). The slots before `s` satisfy the
/// quiescent invariant (they are untouched by the caller), so with `v = list[s − 1] > 0`,
/// `[j, s)` is wholly free iff `list[j] == v + (s − 1 − j)`: a used slot `x` in `[j, s)` caps
/// `list[j]` at `x − j`, below that value. The test is monotone in `j`, so a binary search
/// (after one probe of the segment start, the common case of a free segment) finds the run
/// start, and the run is refilled in one vectorisable pass.
fn renumber_before(list: &mut [u16], seg: usize, s: usize, count: u16) {
    let seg_start = s - seg_offset(s, seg);
    if s == seg_start || list[s - 1] == 0 {
        return;
    }
    let v = list[s - 1] as usize;
    let free_from = |list: &[u16], j: usize| list[j] as usize == v + (s - 1 - j);
    let first = if free_from(list, seg_start) {
        seg_start
    } else {
        // `lo` fails the test, `hi` passes it.
        let (mut lo, mut hi) = (seg_start, s - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if free_from(list, mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    };
    // In u16 lanes (the run is at most one segment, 128 slots), so the loop vectorises.
    let top = count + (s - first) as u16;
    for (c, k) in list[first..s].iter_mut().zip(0u16..) {
        *c = top - k;
    }
}

/// Mark `[s, s + n)` used. The run must be free and inside one segment: `list[s] >= n`, which
/// the search checked under the area lock just before.
pub(crate) fn allocate(list: &mut [u16], seg: usize, s: usize, n: usize) {
    list[s..s + n].fill(0);
    renumber_before(list, seg, s, 0);
}

/// Mark `[s, s + n)` free again, merging with the free runs after and before it.
pub(crate) fn free(list: &mut [u16], seg: usize, s: usize, n: usize) {
    let end = s + n;
    let mut count = if end < list.len() && seg_offset(end, seg) != 0 {
        list[end]
    } else {
        0
    };
    for v in list[s..end].iter_mut().rev() {
        count += 1;
        *v = count;
    }
    renumber_before(list, seg, s, count);
}

/// Check the quiescent invariant: a free slot's counter is 1 + its successor's when the
/// successor is free and in the same segment, else 1.
pub(crate) fn check(list: &[u16], seg: usize) -> Result<(), String> {
    for i in 0..list.len() {
        if list[i] == 0 {
            continue;
        }
        let next_free = i + 1 < list.len() && same_segment_as_next(i, seg) && list[i + 1] != 0;
        let want = if next_free { list[i + 1] + 1 } else { 1 };
        if list[i] != want {
            return Err(format!(
                "list[{i}] = {} but should be {want} ({list:?})",
                list[i]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_example_with_segments_of_8() {
        let mut l = [0u16; 8];
        init(&mut l, 8);
        assert_eq!(l, [8, 7, 6, 5, 4, 3, 2, 1]);
        allocate(&mut l, 8, 2, 3);
        assert_eq!(l, [2, 1, 0, 0, 0, 3, 2, 1]);
        check(&l, 8).unwrap();
        free(&mut l, 8, 2, 3);
        assert_eq!(l, [8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn runs_never_cross_segments_and_slot_zero_stops() {
        let mut l = [0u16; 8];
        init(&mut l, 4);
        assert_eq!(l, [4, 3, 2, 1, 4, 3, 2, 1]);
        allocate(&mut l, 4, 4, 2);
        assert_eq!(l, [4, 3, 2, 1, 0, 0, 2, 1]);
        allocate(&mut l, 4, 0, 1);
        assert_eq!(l, [0, 3, 2, 1, 0, 0, 2, 1]);
        free(&mut l, 4, 4, 2);
        free(&mut l, 4, 0, 1);
        assert_eq!(l, [4, 3, 2, 1, 4, 3, 2, 1]);
    }

    #[test]
    fn pools_under_one_segment_never_claim_slots_beyond_the_end() {
        for n in 1..128usize {
            let mut l = vec![0u16; n];
            init(&mut l, 128);
            assert_eq!(l[0] as usize, n);
            assert_eq!(*l.last().unwrap(), 1);
            check(&l, 128).unwrap();
        }
    }

    /// The slot-by-slot walk `renumber_before` replaces.
    fn renumber_by_walking(list: &mut [u16], seg: usize, s: usize, mut count: u16) {
        let mut j = s;
        while j > 0 && same_segment_as_next(j - 1, seg) && list[j - 1] != 0 {
            j -= 1;
            count += 1;
            list[j] = count;
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]
        /// Random allocations and frees (segments of powers of two and not, as transient pools
        /// have) renumber exactly as the slot-by-slot walk does, and keep the invariant.
        #[test]
        #[cfg_attr(miri, ignore)] // No unsafe code; too slow interpreted.
        fn renumbering_matches_the_walk(
            seg_pow in 0usize..4,
            odd_seg in proptest::prelude::any::<bool>(),
            segs in 1usize..4,
            ops in proptest::collection::vec((0usize..64, 1usize..9), 1..64),
        ) {
            let seg = (1usize << (seg_pow + 1)) + usize::from(odd_seg);
            let len = seg * segs;
            let mut l = vec![0u16; len];
            init(&mut l, seg);
            let mut live: Vec<(usize, usize)> = Vec::new();
            for (at, n) in ops {
                let s = at % len;
                if let Some(k) = live.iter().position(|&(b, m)| b <= s && s < b + m) {
                    let (b, m) = live.swap_remove(k);
                    let mut want = l.clone();
                    let end = b + m;
                    let mut c = if end < len && end % seg != 0 { want[end] } else { 0 };
                    for v in want[b..end].iter_mut().rev() {
                        c += 1;
                        *v = c;
                    }
                    renumber_by_walking(&mut want, seg, b, c);
                    free(&mut l, seg, b, m);
                    proptest::prop_assert_eq!(&l, &want);
                } else if l[s] as usize >= n {
                    let mut want = l.clone();
                    want[s..s + n].fill(0);
                    renumber_by_walking(&mut want, seg, s, 0);
                    allocate(&mut l, seg, s, n);
                    proptest::prop_assert_eq!(&l, &want);
                    live.push((s, n));
                }
                proptest::prop_assert!(check(&l, seg).is_ok());
            }
        }
    }

    #[test]
    fn check_rejects_a_broken_counter() {
        let l = [3u16, 1, 1];
        assert!(check(&l, 4).is_err());
    }
}
