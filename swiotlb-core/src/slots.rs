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

/// Initial counters: `min(seg − i mod seg, len − i)`.
pub(crate) fn init(list: &mut [u16], seg: usize) {
    let len = list.len();
    for (i, v) in list.iter_mut().enumerate() {
        *v = (seg - i % seg).min(len - i) as u16;
    }
}

/// Renumber the free slots before `s` (same segment) counting on from `count`.
fn renumber_before(list: &mut [u16], seg: usize, s: usize, mut count: u16) {
    let mut j = s;
    // The back-walk stops at the segment start; `j > 0` is the explicit stop for slot 0.
    while j > 0 && same_segment_as_next(j - 1, seg) && list[j - 1] != 0 {
        j -= 1;
        count += 1;
        list[j] = count;
    }
}

/// Mark `[s, s + n)` used. The run must be free and inside one segment.
pub(crate) fn allocate(list: &mut [u16], seg: usize, s: usize, n: usize) {
    debug_assert!(list[s] as usize >= n, "allocating a run that is not free");
    list[s..s + n].fill(0);
    renumber_before(list, seg, s, 0);
}

/// Mark `[s, s + n)` free again, merging with the free runs after and before it.
pub(crate) fn free(list: &mut [u16], seg: usize, s: usize, n: usize) {
    let end = s + n;
    let mut count = if end < list.len() && end % seg != 0 {
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

    #[test]
    fn check_rejects_a_broken_counter() {
        let l = [3u16, 1, 1];
        assert!(check(&l, 4).is_err());
    }
}
