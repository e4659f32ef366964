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
//!
//! # The protocol
//!
//! * Device: `read_section()` = `rcu::pin_at(&DEVICE_PIN)` (`vmm.device.pin`), held across
//!   translate *and* copy (an endpoint's `access`, [`crate::translate::access`], `IovaMemory`'s
//!   slice iterator, or `IovaMemory::section()`).
//! * UNMAP: under the control lock, clear the leaves and update the mapping tree; drop the lock;
//!   `synchronize()` (skipped when `vmm.unmap.grace` is weakened); reply. DETACH, an ATTACH that
//!   moves an endpoint or takes it out of bypass mode, a driver write turning `bypass` off and a
//!   device reset do the same after swapping the endpoints' published attachments.
//! * `rcu::synchronize()` = pin, `defer_retire` a token holding an `Arc<AtomicBool>`, flush,
//!   unpin; then poll the flag (flush, without pinning, to let the epoch advance; spin 4096
//!   polls, then yield). The token sets the flag when freed: the epoch collector frees it only
//!   after every participant pinned at the time has unpinned, on whichever thread collects; the
//!   loom shim likewise frees it in any thread's collector step once the sections of its
//!   snapshot have ended.
//! * Orderings: the reader's pin has a fence between registering and its PTE loads (a compiler
//!   fence the writers' membarrier makes full, or `fence(SeqCst)` without membarrier); the
//!   updater's leaf clear precedes the retirement's heavy fence (the epoch collector's
//!   `rcu.seal.fence`, the loom shim's `rcu.sync.fence`): store-buffering, so either the
//!   reader's walk misses the leaf or the retirement waits for its unpin (release), which
//!   happens-before the token's free. The flag is a release store and an acquire load
//!   (`rcu.synchronize.done.*`), so the replying thread happens after the device's copy,
//!   through whichever thread ran the token.
//! * Cost: an idle grace period takes under 1 µs; `Viommu::handle_batch` pays one for a whole
//!   batch (replies are returned only after it). On an oversubscribed machine the waiter may wait
//!   a scheduler slice (measured 20 ms with two spinning readers on two cores).
//! * Never call UNMAP or `synchronize` inside a read section (it would wait for itself).
//! * A section does not freeze translations: an UNMAP clears the leaves at once (a second lookup
//!   inside the same section may fault) and an ATTACH may switch the endpoint to a domain that
//!   maps the IOVA elsewhere (make-before-break); only the completion of the request that removes
//!   a translation waits. A device that must read and write through one translation uses one
//!   `get_slices` iterator or one endpoint `access` (the ATTACH stress test caught a device
//!   writing, through a second translation, data read through the first).

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
