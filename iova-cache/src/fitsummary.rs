//! Per-alignment fit summaries of free ranges, so a size-aligned search can skip a subtree
//! whose ranges are long enough but wrongly aligned.
//!
//! For alignment class `k` in `1..=6` (2 to 64 granules) a range `[s, s + len)` offers
//! `s + len - align_up(s, 2^k)` granules from its first `2^k`-aligned pfn; the summary keeps
//! that number capped at `2^k` in byte `k - 1` of a `u64`. A request of `size <= 2^k` granules
//! aligned to `2^k` fits in the range exactly when the byte is at least `size`, and in a
//! subtree exactly when the bytewise maximum over the subtree is. All bytes are at most 64, so
//! the bytewise maximum is a few word operations.

/// Largest alignment class with a byte (2^6 = 64 granules).
pub(crate) const MAX_CLASS: u32 = 6;

/// The high bit of every byte.
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Per class byte, `2^k - 1`: the offset of `start` from the class's alignment is
/// `start.wrapping_neg()` masked by it (bytes 6 and 7 hold no class).
const OFFSET_MASKS: u64 = 0x3f1f_0f07_0301;

/// Per class byte, `2^k`: the most granules a class counts.
const CAPS: u64 = 0x4020_1008_0402;

/// Every byte one: a byte times it fills every byte.
const ONES: u64 = 0x0101_0101_0101_0101;

/// The fit summary of one free range `[start, start + len)` (`len >= 1`, inside the u64 space).
///
/// All classes at once, branch-free, since a leaf's rescan computes it for each of its free
/// ranges: per class byte, the first `2^k`-aligned pfn lies `start.wrapping_neg() & (2^k - 1)`
/// granules in, and the range offers what is left of its length after that, capped at `2^k`.
/// The length is capped at 127 first (what is left is then still at least 64, the largest
/// cap), so every byte stays below 128 and a byte's subtraction never borrows from the next.
/// Where the aligned pfn would lie past the top of the u64 space, the offset is at least
/// `len` and the range offers nothing.
#[inline]
pub(crate) fn of_range(start: u64, len: u64) -> u64 {
    let lens = len.min(127) * ONES;
    let offsets = ((start.wrapping_neg() & 63) * ONES) & OFFSET_MASKS;
    // Per byte `128 + len - offset`: the high bit is set exactly where `len >= offset`.
    let diff = (lens | HIGH) - offsets;
    let left = diff & !HIGH & (((diff & HIGH) >> 7) * 0xff);
    let capped = (at_least(left, CAPS) >> 7) * 0xff;
    (CAPS & capped) | (left & !capped)
}

/// [`at_least`] with every byte's answer yes.
pub(crate) const ALL: u64 = HIGH;

/// Per byte of two summaries (every byte below 128), whether `a`'s is at least `b`'s: the
/// byte's high bit in the result.
#[inline]
pub(crate) fn at_least(a: u64, b: u64) -> u64 {
    // Per byte, `(a | 0x80) - b` keeps its high bit exactly when `a >= b`, with no borrow
    // into the next byte since `b < 128`.
    ((a | HIGH) - b) & HIGH
}

/// Bytewise maximum of two summaries (every byte below 128): one SSE2 `pmaxub` on x86-64
/// (a node's rescan folds a dozen of these), the word trick of [`at_least`] elsewhere.
#[inline]
pub(crate) fn max(a: u64, b: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_cvtsi128_si64, _mm_cvtsi64_si128, _mm_max_epu8};
        // SAFETY: SSE2 is part of the x86-64 baseline, enabled in every x86_64 build; the
        // intrinsics only compute on registers.
        unsafe {
            let m = _mm_max_epu8(_mm_cvtsi64_si128(a as i64), _mm_cvtsi64_si128(b as i64));
            _mm_cvtsi128_si64(m) as u64
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let pick_a = (at_least(a, b) >> 7) * 0xff;
        (a & pick_a) | (b & !pick_a)
    }
}

/// What a subtree summary must offer for a request of `size` granules aligned to `align` (a
/// power of two `>= 2`): `(byte shift, granules)`. Exact for `size <= align <= 64`; for larger
/// alignments a necessary condition (a fit is also 64-aligned).
#[inline]
pub(crate) fn need(size: u64, align: u64) -> (u32, u64) {
    let k = align.trailing_zeros().min(MAX_CLASS);
    (8 * (k - 1), size.min(1 << k))
}

/// Whether `summary` offers `need` (from [`need`]).
#[inline]
pub(crate) fn offers(summary: u64, (shift, granules): (u32, u64)) -> bool {
    (summary >> shift) & 0xff >= granules
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether an `align`-aligned start of `size` granules fits inside the range, by brute force.
    fn brute_fits(start: u64, len: u64, size: u64, align: u64) -> bool {
        let last = start + (len - 1);
        (start..=last).any(|p| p % align == 0 && p.checked_add(size - 1).is_some_and(|e| e <= last))
    }

    #[test]
    #[cfg_attr(miri, ignore)] // a million brute-force checks, no unsafe code
    fn summary_decides_aligned_fits_exactly() {
        for start in (0..70).chain(u64::MAX - 70..u64::MAX) {
            for len in 1..=70.min((u64::MAX - start).saturating_add(1)) {
                let s = of_range(start, len);
                for k in 1..=MAX_CLASS {
                    let align = 1 << k;
                    for size in 1..=align {
                        assert_eq!(
                            offers(s, need(size, align)),
                            brute_fits(start, len, size, align),
                            "[{start}, +{len}) size {size} align {align}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bytewise_max_matches_per_byte_max() {
        let (a, b) = (of_range(3, 100), of_range(64, 7));
        let m = max(a, b);
        for byte in 0..8 {
            let get = |x: u64| (x >> (8 * byte)) & 0xff;
            assert_eq!(get(m), get(a).max(get(b)));
        }
        assert_eq!(max(0x40_00_3f, 0x3f_40_00), 0x40_40_3f);
        assert_eq!(
            at_least(0x40_00_3f, 0x3f_40_3f),
            0x80_00_80 | (ALL & !0xff_ff_ff)
        );
    }

    #[test]
    fn larger_alignments_use_the_64_class_as_a_filter() {
        assert_eq!(need(200, 256), (40, 64));
        assert!(
            !offers(of_range(1, 126), need(100, 128)),
            "no 64-aligned start with 64 after it"
        );
        assert!(
            offers(of_range(64, 64), need(100, 128)),
            "necessary, not sufficient"
        );
    }
}
