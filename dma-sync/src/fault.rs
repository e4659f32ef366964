//! Fault injection: named allocation sites that a test can make fail.
//!
//! Every allocation whose failure the library must survive (a dynamic pool, a transient pool,
//! a magazine, a table level) asks its [`Site`] first. Without the `fault-injection` feature
//! [`Site::fail`] is an `#[inline(always)]` `false` and costs nothing. With it, a test arms a
//! site on its own thread with `armed`, and the next `n` allocations there fail, so the
//! test can check that each failure is a typed error or a fallback that loses nothing.
//! Arming is per OS thread (and so per loom model), so tests running in parallel do not
//! disturb each other; a site reached from another thread sees it unarmed.
//!
//! ```
//! use dma_sync::fault::Site;
//! static MAGAZINE: Site = Site::new("doc.magazine");
//!
//! fn alloc_magazine() -> Option<Vec<u64>> {
//!     if MAGAZINE.fail() { None } else { Some(Vec::with_capacity(127)) }
//! }
//!
//! assert!(alloc_magazine().is_some());
//! # #[cfg(feature = "fault-injection")]
//! dma_sync::fault::armed(&MAGAZINE, 1, || assert!(alloc_magazine().is_none()));
//! ```

/// A named allocation site.
///
/// Declared as a `static`, since arming finds a site by its address:
///
/// ```
/// use dma_sync::fault::Site;
/// static TABLE_LEVEL: Site = Site::new("doc.table.level");
/// assert_eq!(TABLE_LEVEL.name(), "doc.table.level");
/// assert!(!TABLE_LEVEL.fail(), "an unarmed site never fails");
/// ```
#[derive(Debug)]
pub struct Site {
    name: &'static str,
}

impl Site {
    /// Declare a site.
    pub const fn new(name: &'static str) -> Self {
        Self { name }
    }

    /// The site's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the allocation at this site must fail now.
    #[inline(always)]
    pub fn fail(&'static self) -> bool {
        #[cfg(not(feature = "fault-injection"))]
        return false;
        #[cfg(feature = "fault-injection")]
        return armed_imp::take(self);
    }
}

/// Run `f` with the next `failures` allocations at `site` (on this thread) failing.
/// Returns `f`'s result and how many injected failures were consumed.
///
/// ```
/// use dma_sync::fault::{armed, Site};
/// static POOL: Site = Site::new("doc.pool");
/// let (fails, used) = armed(&POOL, 2, || (0..3).map(|_| POOL.fail()).collect::<Vec<_>>());
/// assert_eq!(fails, [true, true, false]);
/// assert_eq!(used, 2);
/// assert!(!POOL.fail(), "disarmed when `f` returns");
/// ```
#[cfg(feature = "fault-injection")]
pub fn armed<R>(site: &'static Site, failures: usize, f: impl FnOnce() -> R) -> (R, usize) {
    armed_imp::arm(site, failures);
    struct Disarm(&'static Site);
    impl Drop for Disarm {
        fn drop(&mut self) {
            armed_imp::disarm(self.0);
        }
    }
    let guard = Disarm(site);
    let r = f();
    let used = armed_imp::used(site);
    drop(guard);
    (r, used)
}

#[cfg(feature = "fault-injection")]
mod armed_imp {
    use super::Site;
    use std::cell::RefCell;

    struct Arm {
        site: &'static Site,
        left: usize,
        used: usize,
    }

    std::thread_local! {
        static ARMED: RefCell<Vec<Arm>> = const { RefCell::new(Vec::new()) };
    }

    fn find<R>(site: &'static Site, f: impl FnOnce(&mut Arm) -> R) -> Option<R> {
        ARMED.with(|a| {
            a.borrow_mut()
                .iter_mut()
                .rev()
                .find(|e| std::ptr::eq(e.site, site))
                .map(f)
        })
    }

    pub(super) fn take(site: &'static Site) -> bool {
        find(site, |e| {
            if e.left > 0 {
                e.left -= 1;
                e.used += 1;
                true
            } else {
                false
            }
        })
        .unwrap_or(false)
    }

    pub(super) fn arm(site: &'static Site, left: usize) {
        ARMED.with(|a| {
            a.borrow_mut().push(Arm {
                site,
                left,
                used: 0,
            })
        });
    }

    pub(super) fn used(site: &'static Site) -> usize {
        find(site, |e| e.used).unwrap_or(0)
    }

    pub(super) fn disarm(site: &'static Site) {
        ARMED.with(|a| {
            let mut a = a.borrow_mut();
            if let Some(i) = a.iter().rposition(|e| std::ptr::eq(e.site, site)) {
                a.remove(i);
            }
        });
    }
}
