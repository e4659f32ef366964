//! Magazines: fixed-capacity stacks of cached pfns of one size class.

use crate::faults::MAGAZINE_ALLOC;

/// A stack of at most `cap` cached pfns (capacity fixed at creation, never reallocated).
#[derive(Debug)]
pub(crate) struct Magazine {
    pfns: Vec<u64>,
}

impl Magazine {
    pub(crate) fn empty(cap: usize) -> Self {
        Self {
            pfns: Vec::with_capacity(cap),
        }
    }

    /// A fresh empty magazine on the free path, or `None` when its memory cannot be had.
    pub(crate) fn try_empty(cap: usize) -> Option<Self> {
        if MAGAZINE_ALLOC.fail() {
            return None;
        }
        let mut pfns = Vec::new();
        pfns.try_reserve_exact(cap).ok()?;
        Some(Self { pfns })
    }

    pub(crate) fn len(&self) -> usize {
        self.pfns.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pfns.is_empty()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.pfns.len() == self.pfns.capacity()
    }

    /// Push into a magazine that is not full; `false` (nothing pushed) if it is full, so the
    /// capacity fixed at creation is never exceeded.
    #[must_use]
    #[inline]
    pub(crate) fn push(&mut self, pfn: u64) -> bool {
        if self.is_full() {
            return false;
        }
        self.pfns.push(pfn);
        true
    }

    /// Push as many of `pfns` as there is room for, in order; returns how many.
    #[inline]
    pub(crate) fn push_some(&mut self, pfns: &[u64]) -> usize {
        let n = pfns.len().min(self.pfns.capacity() - self.pfns.len());
        self.pfns.extend_from_slice(&pfns[..n]);
        n
    }

    /// Pop the most recently pushed pfn if its start is at most `max_start`.
    #[inline]
    pub(crate) fn pop_last_at_or_below(&mut self, max_start: u64) -> Option<u64> {
        match self.pfns.last() {
            Some(&p) if p <= max_start => self.pfns.pop(),
            _ => None,
        }
    }

    /// Pop the most recently pushed pfn whose start is at most `max_start` (so the range
    /// ends at or below the caller's limit); the last entry fills the hole.
    pub(crate) fn pop_at_or_below(&mut self, max_start: u64) -> Option<u64> {
        let i = self.pfns.iter().rposition(|&p| p <= max_start)?;
        Some(self.pfns.swap_remove(i))
    }

    /// The cached pfns (flush in the model-weakened form copies them).
    pub(crate) fn pfns(&self) -> &[u64] {
        &self.pfns
    }

    /// Forget every entry, keeping the capacity.
    pub(crate) fn clear(&mut self) {
        self.pfns.clear();
    }

    /// Take the entries out, leaving the magazine empty with its capacity.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, u64> {
        self.pfns.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_pop_takes_the_newest_fitting_entry() {
        let mut m = Magazine::empty(4);
        for p in [100, 5, 200, 7] {
            assert!(m.push(p));
        }
        assert!(m.is_full());
        assert!(!m.push(9), "full: refused");
        assert_eq!(m.push_some(&[9, 10]), 0, "full: nothing pushed");
        assert_eq!(m.pop_last_at_or_below(6), None, "the newest entry is above");
        assert_eq!(m.pop_at_or_below(50), Some(7));
        assert_eq!(m.pop_at_or_below(50), Some(5));
        assert_eq!(
            m.pop_at_or_below(50),
            None,
            "no entry below the limit: a miss"
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m.pop_at_or_below(u64::MAX), Some(200));
        assert_eq!(m.drain().collect::<Vec<_>>(), vec![100]);
        assert!(m.is_empty());
        assert_eq!(m.push_some(&[1, 2, 3, 4, 5, 6]), 4, "as many as fit");
        assert_eq!(m.pfns(), [1, 2, 3, 4]);
    }
}
