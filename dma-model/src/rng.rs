//! The one pseudo-random generator of the checkers: xorshift64, reproducible from a seed,
//! no shared state, a few cycles per value.

/// xorshift64 (Marsaglia): `next_u64` never returns 0 and has period 2^64 − 1.
///
/// ```
/// let mut a = dma_model::XorShift::new(7);
/// let mut b = dma_model::XorShift::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!((0..100).all(|_| a.below(10) < 10));
/// ```
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from any seed (zero is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (0 when `n` is 0), without the modulo bias of `%`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `true` with probability `1 / n` (never for `n == 0`).
    #[inline]
    pub fn one_in(&mut self, n: u64) -> bool {
        n != 0 && self.below(n) == 0
    }
}
