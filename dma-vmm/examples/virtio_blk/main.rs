//! A virtio-blk-like device behind the virtio-iommu, end to end.
//!
//! The guest ([`guest`]) attaches the device's endpoint and maps its queue with virtio-iommu
//! requests in wire format, lays out a split virtqueue at those IOVAs with virtio-queue's
//! driver-side utilities, and writes and reads sectors. The device ([`device`]) is written
//! as any VMM device is, against `GuestMemory` and `Queue`; the VMM hands it its endpoint's
//! `IovaMemory`, so it pops chains and copies buffers by IOVA, through the lock-free page
//! table. Meanwhile another guest thread maps and unmaps other ranges. Last, the guest
//! unmaps a buffer and offers it anyway: the device fails the request with `S_IOERR`, and
//! the vIOMMU reports the fault on its event queue.
//!
//! Run: `cargo run -p dma-vmm --example virtio_blk`

mod device;
mod guest;

use device::{BlockDevice, DeviceThread, S_IOERR, S_OK, T_IN, T_OUT};
use dma_vmm::viommu::{Status, Viommu, ViommuConfig, MAP_F_READ};
use guest::{BlkDriver, IommuDriver, Layout, Ram, PAGE, SLOTS};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

/// The VMM wires a block device to endpoint 0x10 and runs it on its own thread.
const BLK_ENDPOINT: u32 = 0x10;

fn main() {
    let ram = Ram::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("guest RAM");
    let viommu = Arc::new(Viommu::new(ViommuConfig::default()).expect("vIOMMU"));
    let blk = viommu.add_endpoint(BLK_ENDPOINT, vec![]).expect("endpoint");

    // The guest attaches the endpoint and maps the queue's pages.
    let iommu = IommuDriver::new(viommu.clone(), 1);
    assert_eq!(iommu.attach(BLK_ENDPOINT), Status::Ok);
    let layout = Layout::for_queue(0);
    assert_eq!(layout.map(&iommu), Status::Ok);
    let view = layout.ring_view(&ram);
    let mut driver = BlkDriver::new(&view, ram.clone(), layout);

    // The VMM: the device gets the endpoint's I/O memory instead of the guest's RAM.
    let device = DeviceThread::spawn(BlockDevice::new(
        blk.iova_memory(ram.clone()),
        driver.device_queue(),
        64,
    ));

    // Another guest driver maps and unmaps its own buffers meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (other, stop) = (IommuDriver::new(viommu.clone(), 1), stop.clone());
        std::thread::spawn(move || {
            let mut pairs = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let iova = 0x4000_0000 + (pairs % 64) * PAGE;
                assert_eq!(other.map(iova, 0x20_0000, PAGE, MAP_F_READ), Status::Ok);
                assert_eq!(other.unmap(iova, PAGE), Status::Ok);
                pairs += 1;
            }
            pairs
        })
    };

    // Write every slot's page to its own sectors, then read them back into the pages.
    let rounds = 200u64;
    let pattern = |round: u64, slot: u16| vec![(round as u8) ^ (slot as u8 * 37); PAGE as usize];
    for round in 0..rounds {
        for kind in [T_OUT, T_IN] {
            for slot in 0..SLOTS {
                let (iova, gpa) = layout.buffer(slot);
                let fill = match kind {
                    T_OUT => pattern(round, slot),
                    _ => vec![0; PAGE as usize],
                };
                ram.write_slice(&fill, GuestAddress(gpa)).expect("buffer");
                driver.submit(slot, kind, u64::from(slot) * 8, iova, PAGE as u32);
            }
            device.kick();
            assert_eq!(device.wait().expect("queue"), usize::from(SLOTS));
            for done in driver.completions() {
                assert_eq!(done.status, S_OK, "{done:?}");
            }
        }
        for slot in 0..SLOTS {
            let mut back = vec![0; PAGE as usize];
            ram.read_slice(&mut back, GuestAddress(layout.buffer(slot).1))
                .expect("buffer");
            assert!(
                back == pattern(round, slot),
                "round {round} slot {slot}: read back {:?}..",
                &back[..8]
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let pairs = churn.join().expect("churn thread");
    println!(
        "{} requests served byte-exact while another driver did {pairs} MAP/UNMAP pairs",
        rounds * 2 * u64::from(SLOTS)
    );

    // The guest unmaps slot 0's page and offers it anyway.
    let (iova, _) = layout.buffer(0);
    assert_eq!(iommu.unmap(iova, PAGE), Status::Ok);
    driver.submit(0, T_OUT, 0, iova, PAGE as u32);
    device.kick();
    device.wait().expect("queue");
    let failed = driver.completions();
    assert_eq!(failed[0].status, S_IOERR);
    println!("request on an unmapped buffer: {failed:?} (S_IOERR)");
    // The vIOMMU's event queue: a 24-byte virtio_iommu_fault per fault.
    while let Some(event) = viommu.fault_event(64) {
        let address = u64::from_le_bytes(event[16..24].try_into().expect("8 bytes"));
        println!(
            "fault event: reason {}, flags {:#x}, endpoint {:#x}, address {address:#x}",
            event[0],
            u32::from_le_bytes(event[4..8].try_into().expect("4 bytes")),
            u32::from_le_bytes(event[8..12].try_into().expect("4 bytes")),
        );
    }
    let device = device.stop();
    assert_eq!(
        device.disk()[..PAGE as usize],
        pattern(rounds - 1, 0),
        "the failed write changed the disk"
    );
    println!("device: {:?}", device.counters());
}
