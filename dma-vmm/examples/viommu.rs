//! A vIOMMU in a VMM: the guest's driver maps and unmaps buffers through virtio-iommu
//! requests while two device worker threads translate and copy through the same page table.
//!
//! Each worker plays a virtio device: it takes a buffer IOVA from its "queue" (an atomic the
//! guest publishes with release, as a virtqueue's available ring would), reads the guest's
//! request through vm-memory by IOVA and writes a reply next to it. UNMAP completes only when
//! no worker still copies through the old translation, so the guest reuses its pages at once.
//!
//! Run: `cargo run -p dma-vmm --example viommu`

use dma_sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dma_vmm::report;
use dma_vmm::viommu::{Endpoint, Request, Status, Viommu, ViommuConfig, MAP_F_READ, MAP_F_WRITE};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PAGE: u64 = 0x1000;

/// A device worker: serve whatever buffer the guest currently offers on `queue`.
fn worker(
    name: &str,
    dev: Endpoint,
    ram: GuestMemoryMmap<()>,
    queue: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let io = dev.iova_memory(ram);
    let (mut served, mut faulted) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let iova = queue.load(Ordering::Acquire);
        if iova == 0 {
            std::thread::yield_now();
            continue;
        }
        // Translate + read + write in one read section: an UNMAP of this buffer waits for it.
        let _section = io.section();
        // Each copy translates afresh: an UNMAP clears the entries at once and only its
        // completion waits for us, so the write may fault even after the read succeeded.
        let mut request = [0u8; 8];
        let served_now = io
            .read_slice(&mut request, GuestAddress(iova))
            .and_then(|()| {
                let reply = u64::from_le_bytes(request).wrapping_mul(3);
                io.write_obj(reply, GuestAddress(iova + 16))
            });
        match served_now {
            Ok(()) => served += 1,
            // The guest unmapped the buffer under us: a device fault (an abort on real hardware).
            Err(_) => faulted += 1,
        }
    }
    println!("{name}: served {served} requests, {faulted} faults (buffer already unmapped)");
    (served, faulted)
}

fn main() {
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let viommu = Arc::new(Viommu::new(ViommuConfig::default()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));

    // Two devices (endpoints 8 and 16), each in its own domain, as Linux sets them up.
    let mut workers = Vec::new();
    let mut queues = Vec::new();
    for (ep, domain) in [(8u32, 1u32), (16, 2)] {
        let dev = viommu.add_endpoint(ep, vec![]).unwrap();
        assert_eq!(
            viommu
                .handle(Request::Attach {
                    domain,
                    endpoint: ep,
                    flags: 0
                })
                .status(),
            Status::Ok
        );
        let queue = Arc::new(AtomicU64::new(0));
        queues.push((domain, queue.clone()));
        let (ram, stop) = (ram.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            worker(&format!("device {ep}"), dev, ram, queue, stop)
        }));
    }

    // The guest driver: map a buffer, offer it, take it back, unmap, reuse the page.
    for round in 0..2000u64 {
        for (i, (domain, queue)) in queues.iter().enumerate() {
            let gpa = (round % 32 + 32 * i as u64) * PAGE;
            let iova = 0x4000_0000 + (round % 4) * PAGE;
            ram.write_obj(round, GuestAddress(gpa)).unwrap();
            let map = Request::Map {
                domain: *domain,
                virt_start: iova,
                virt_end: iova + PAGE - 1,
                phys_start: gpa,
                flags: MAP_F_READ | MAP_F_WRITE,
            };
            assert_eq!(viommu.handle(map).status(), Status::Ok);
            queue.store(iova, Ordering::Release);
            std::thread::yield_now();
            queue.store(0, Ordering::Release);
            let unmap = Request::Unmap {
                domain: *domain,
                virt_start: iova,
                virt_end: iova + PAGE - 1,
            };
            assert_eq!(viommu.handle(unmap).status(), Status::Ok);
            // UNMAP has completed: no device copies into this page any more; reuse it.
            ram.write_obj(0u64, GuestAddress(gpa + 16)).unwrap();
        }
    }
    // Leave one mapping in domain 1 so the dump shows something.
    let keep = Request::Map {
        domain: 1,
        virt_start: 0x20_0000,
        virt_end: 0x3f_ffff,
        phys_start: 0x0,
        flags: MAP_F_READ,
    };
    assert_eq!(viommu.handle(keep).status(), Status::Ok);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    print!("{}", report::Report::default().with_viommu(&viommu));
}
