//! The directive operations of the checkers that copy to original memory: arm a fault site,
//! or refuse a copy-back, for the next real call.

use crate::memory::Refusals;
use dma_sync::fault::Site;

/// What a checker's operation is to the directives.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    /// Fail the next call's allocation at site `n` (modulo the checker's sites).
    Fault(u8),
    /// Refuse the next call's copy-back to original memory.
    RefuseWrite,
    /// A real call; only one that copies back to original memory takes a refusal.
    Call { copies_back: bool },
}

/// The directives of one checker run: those waiting for the next real call, the fault site
/// armed for the call running, and the refusals original memory honours.
#[derive(Debug)]
pub(super) struct Directives {
    sites: &'static [&'static Site],
    fault: Option<&'static Site>,
    refuse: bool,
    armed: Option<&'static Site>,
    pub(super) refusals: Refusals,
}

/// A checker's world, which carries its directives.
pub(super) trait Directed {
    fn directives(&mut self) -> &mut Directives;
}

impl Directives {
    /// Directives over the fault sites `sites`, refusing copies through `refusals`.
    pub(super) fn new(sites: &'static [&'static Site], refusals: Refusals) -> Self {
        Self {
            sites,
            fault: None,
            refuse: false,
            armed: None,
            refusals,
        }
    }

    /// Whether `site` is armed for the call running.
    pub(super) fn armed(&self, site: &'static Site) -> bool {
        self.armed.is_some_and(|f| std::ptr::eq(f, site))
    }
}

/// Run `step` in `w`: a directive is kept for the next call (`None`); a call runs under the
/// directives kept for it (a refusal lapses if it does not copy back), with its fault site
/// armed meanwhile, and leaves no refusal behind.
pub(super) fn run_step<W: Directed, R>(
    w: &mut W,
    step: Step,
    call: impl FnOnce(&mut W) -> R,
) -> Option<R> {
    let d = w.directives();
    match step {
        Step::Fault(n) => {
            d.fault = cfg!(feature = "fault-injection")
                .then_some(d.sites[usize::from(n) % d.sites.len()]);
            return None;
        }
        Step::RefuseWrite => {
            d.refuse = true;
            return None;
        }
        Step::Call { copies_back } => {
            if std::mem::take(&mut d.refuse) && copies_back {
                d.refusals.refuse_next(1);
            }
            d.armed = d.fault.take();
        }
    }
    let site = d.armed;
    let r = with_fault(site, || call(w));
    let d = w.directives();
    d.refusals.refuse_next(0);
    d.armed = None;
    Some(r)
}

/// Run `f` with the next allocation at `site` failing (if any).
fn with_fault<R>(site: Option<&'static Site>, f: impl FnOnce() -> R) -> R {
    match site {
        #[cfg(feature = "fault-injection")]
        Some(site) => dma_sync::fault::armed(site, 1, f).0,
        _ => f(),
    }
}
