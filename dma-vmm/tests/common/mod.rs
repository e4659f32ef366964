//! Request builders the virtio-iommu tests share (`viommu.rs`, `spec_requirements.rs`).

use dma_vmm::viommu::Request;

pub fn attach(domain: u32, endpoint: u32) -> Request {
    Request::Attach {
        domain,
        endpoint,
        flags: 0,
    }
}

pub fn map(domain: u32, virt_start: u64, virt_end: u64, phys_start: u64, flags: u32) -> Request {
    Request::Map {
        domain,
        virt_start,
        virt_end,
        phys_start,
        flags,
    }
}

pub fn unmap(domain: u32, virt_start: u64, virt_end: u64) -> Request {
    Request::Unmap {
        domain,
        virt_start,
        virt_end,
    }
}
