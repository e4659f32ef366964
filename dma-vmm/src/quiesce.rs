//! Quiescence: wait until every device access that could hold an old translation has finished.
//!
//! A device access pins one RCU read section ([`read_section`]) around its translate *and* its
//! copy. An unmap first clears the page-table entries, then calls [`synchronize`]
//! ([`dma_sync::rcu::synchronize`]), which returns only once every read section pinned before
//! it has ended. A section pinned after the entries were cleared cannot see them (the pin's
//! full fence pairs with the grace period's), so when `synchronize` returns, no device access still uses the unmapped translation. This is
//! the quiescence point the virtio-iommu UNMAP and DETACH replies need and that today's
//! lock-per-lookup implementations lack (they translate under a lock, then copy after dropping
//! it).
//!
//! ```
//! use dma_vmm::quiesce;
//! let guard = quiesce::read_section();
//! // translate and copy here
//! drop(guard);
//! quiesce::synchronize(); // returns once every section pinned before it has ended
//! ```

use crate::points::{DEVICE_PIN, UNMAP_GRACE};
use dma_sync::rcu::{self, Guard};

/// Enter a device read section: translations obtained inside it stay in use, and every unmap
/// that clears them waits, until the returned guard is dropped.
///
/// Keep sections short (one descriptor's copy): a long section delays every unmap. Never call
/// [`synchronize`] (or an unmap) while holding one on the same thread: it would wait for itself.
#[inline]
pub fn read_section() -> Guard {
    rcu::pin_at(&DEVICE_PIN)
}

/// Wait for a grace period: return once every read section that was pinned when this call
/// began has ended ([`rcu::synchronize`]; weakened `vmm.unmap.grace`: return at once).
///
/// Must not be called from inside a read section (it would wait for itself). Cost: a few
/// epoch advances of the RCU domain, typically microseconds; batch unmaps to pay it once.
pub fn synchronize() {
    if UNMAP_GRACE.on() {
        rcu::synchronize();
    }
}
