//! The directive operations of the checkers that copy to original memory: arm a fault site,
//! or refuse a copy-back, for the next real call.

use crate::memory::Refusals;
use dma_sync::fault::Site;

/// Directives waiting for the next real call.
#[derive(Debug, Default)]
pub(super) struct Pending {
    fault: Option<&'static Site>,
    refuse: bool,
}

impl Pending {
    /// Fail the next call's allocation at site `n` (modulo `sites`), where fault injection
    /// is built in.
    pub(super) fn fault(&mut self, n: u8, sites: &[&'static Site]) {
        self.fault =
            cfg!(feature = "fault-injection").then_some(sites[usize::from(n) % sites.len()]);
    }

    /// Refuse the next call's copy-back to original memory.
    pub(super) fn refuse_write(&mut self) {
        self.refuse = true;
    }

    /// The directives for the call about to run: the refusal goes to `refusals` if the call
    /// copies back (it lapses otherwise); returns the site to fail.
    pub(super) fn take(&mut self, copies_back: bool, refusals: &Refusals) -> Option<&'static Site> {
        if std::mem::take(&mut self.refuse) && copies_back {
            refusals.refuse_next(1);
        }
        self.fault.take()
    }
}

/// Run `f` with the next allocation at `site` failing (if any).
pub(super) fn with_fault<R>(site: Option<&'static Site>, f: impl FnOnce() -> R) -> R {
    match site {
        #[cfg(feature = "fault-injection")]
        Some(site) => dma_sync::fault::armed(site, 1, f).0,
        _ => f(),
    }
}
