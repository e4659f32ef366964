//! Setups shared by the loom binaries (the main suite and the production-RCU one).

use dma_sync::Arc;
use dma_vmm::viommu::{Endpoint, Request, Status, Viommu, ViommuConfig, MAP_F_READ, MAP_F_WRITE};
use io_pgtable::Config;

/// The page every vIOMMU model maps: IOVA 0x1000 to guest page 1.
pub const PAGE: u64 = 0x1000;

/// A vIOMMU on the tiny page-table geometry (two levels of four entries), one endpoint
/// attached to domain 0, and IOVA [`PAGE`] mapped to guest page 1.
pub fn viommu_with_one_page() -> (Arc<Viommu>, Endpoint) {
    let cfg = ViommuConfig {
        pgtable: Config::tiny(2),
        input_range: (0, (1 << 16) - 1),
        ..ViommuConfig::default()
    };
    let v = Arc::new(Viommu::new(cfg).unwrap());
    let dev = v.add_endpoint(0, vec![]).unwrap();
    let attach = Request::Attach {
        domain: 0,
        endpoint: 0,
        flags: 0,
    };
    assert_eq!(v.handle(attach).status(), Status::Ok);
    let map = Request::Map {
        domain: 0,
        virt_start: PAGE,
        virt_end: 2 * PAGE - 1,
        phys_start: PAGE,
        flags: MAP_F_READ | MAP_F_WRITE,
    };
    assert_eq!(v.handle(map).status(), Status::Ok);
    (v, dev)
}

/// The UNMAP of [`PAGE`].
pub fn unmap_page() -> Request {
    Request::Unmap {
        domain: 0,
        virt_start: PAGE,
        virt_end: 2 * PAGE - 1,
    }
}
