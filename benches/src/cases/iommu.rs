//! The DMA-mapping cases: map+unmap of 4 KiB through a domain in strict and lazy invalidation
//! mode, and with bouncing for an untrusted device.

use crate::suite::{Case, Component, Omitted, Options};

/// Workload name of strict-mode map+unmap.
pub const STRICT: &str = "map+unmap 4 KiB, strict";
/// Workload name of lazy-mode (flush queue) map+unmap.
pub const LAZY: &str = "map+unmap 4 KiB, lazy";
/// Workload name of map+unmap for an untrusted device (bounced).
pub const BOUNCED: &str = "map+unmap 4 KiB, untrusted (bounced)";

/// The DMA-mapping cases selected by `opts`.
pub fn cases(opts: &Options) -> (Vec<Case>, Vec<Omitted>) {
    if !opts.has(Component::Iommu) {
        return (Vec::new(), Vec::new());
    }
    let omitted = vec![Omitted {
        component: Component::Iommu,
        what: "every dma-iommu case".into(),
        reason: "the dma-iommu API is not wired into the suite yet".into(),
    }];
    (Vec::new(), omitted)
}
