//! A real virtio device behind the vIOMMU: the virtio-blk example's device (written against
//! `GuestMemory` and virtio-queue's `Queue`, with no IOMMU code) reads its split virtqueue and
//! buffers by IOVA through its endpoint's `IovaMemory`, while the guest maps and unmaps through
//! virtio-iommu requests in wire format.
#![cfg(all(not(loom), feature = "vm-memory"))]

#[path = "../examples/virtio_blk/device.rs"]
mod device;
#[path = "../examples/virtio_blk/guest.rs"]
mod guest;

use device::{BlockDevice, DeviceThread, SECTOR, S_IOERR, S_OK, T_IN, T_OUT};
use dma_vmm::translate::{Fault, Leaf, Translate};
use dma_vmm::viommu::{
    wire, FaultReason, Status, Viommu, ViommuConfig, FAULT_F_ADDRESS, FAULT_F_READ, FAULT_F_WRITE,
    MAP_F_READ, MAP_F_WRITE,
};
use dma_vmm::{viommu::Endpoint, IovaMemory};
use guest::{BlkDriver, Completion, IommuDriver, Layout, Ram, PAGE, SLOTS};
use io_pgtable::Prot;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const SECTORS: u64 = 64;
const RW: u32 = MAP_F_READ | MAP_F_WRITE;
/// Sectors of one data page.
const PAGE_SECTORS: u64 = PAGE / SECTOR;

type Device = DeviceThread<IovaMemory<Ram, Endpoint>>;

fn ram() -> Ram {
    Ram::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap()
}

/// A guest with one block device at `endpoint` in `domain`, its queue `n` mapped.
struct Setup {
    iommu: IommuDriver,
    layout: Layout,
    endpoint: Endpoint,
}

fn setup(viommu: &Arc<Viommu>, endpoint: u32, domain: u32, n: u64) -> Setup {
    let ep = viommu.add_endpoint(endpoint, vec![]).unwrap();
    let iommu = IommuDriver::new(viommu.clone(), domain);
    assert_eq!(iommu.attach(endpoint), Status::Ok);
    let layout = Layout::for_queue(n);
    assert_eq!(layout.map(&iommu), Status::Ok);
    Setup {
        iommu,
        layout,
        endpoint: ep,
    }
}

/// Guest RAM and a vIOMMU with one block device (endpoint 8, domain 1, queue 0).
fn one_device() -> (Ram, Arc<Viommu>, Setup) {
    let viommu = Arc::new(Viommu::new(ViommuConfig::default()).unwrap());
    let s = setup(&viommu, 8, 1, 0);
    (ram(), viommu, s)
}

fn start(ram: &Ram, s: &Setup, driver: &BlkDriver<'_>) -> Device {
    DeviceThread::spawn(BlockDevice::new(
        s.endpoint.iova_memory(ram.clone()),
        driver.device_queue(),
        SECTORS,
    ))
}

/// One page of `byte`, with the page's own offset mixed in so misplaced bytes show.
fn page_of(byte: u8) -> Vec<u8> {
    (0..PAGE as usize)
        .map(|i| byte ^ (i as u8).rotate_left(3))
        .collect()
}

fn read_page(ram: &Ram, gpa: u64) -> Vec<u8> {
    let mut page = vec![0; PAGE as usize];
    ram.read_slice(&mut page, GuestAddress(gpa)).unwrap();
    page
}

/// Submit, kick, and wait for the one completion.
fn run_one<M: GuestMemory + Send + 'static>(
    driver: &mut BlkDriver<'_>,
    device: &DeviceThread<M>,
    slot: u16,
    kind: u32,
    sector: u64,
    iova: u64,
    len: u32,
) -> Completion {
    driver.submit(slot, kind, sector, iova, len);
    device.kick();
    assert_eq!(device.wait().unwrap(), 1);
    let done = driver.completions();
    assert_eq!(done.len(), 1, "{done:?}");
    done[0]
}

/// Every fault report pending, decoded from the event-queue bytes.
fn fault_events(viommu: &Viommu) -> Vec<(u8, u32, u32, u64)> {
    std::iter::from_fn(|| viommu.fault_event(wire::FAULT_SIZE))
        .map(|e| {
            assert_eq!(e.len(), wire::FAULT_SIZE);
            assert_eq!((&e[1..4], &e[12..16]), (&[0u8; 3][..], &[0u8; 4][..]));
            (
                e[0],
                u32::from_le_bytes(e[4..8].try_into().unwrap()),
                u32::from_le_bytes(e[8..12].try_into().unwrap()),
                u64::from_le_bytes(e[16..24].try_into().unwrap()),
            )
        })
        .collect()
}

#[test]
fn io_is_byte_exact_while_the_guest_maps_and_unmaps_next_to_the_queue() {
    let (ram, viommu, s) = one_device();
    let view = s.layout.ring_view(&ram);
    let mut driver = BlkDriver::new(&view, ram.clone(), s.layout);
    let device = start(&ram, &s, &driver);

    // Another thread of the guest maps and unmaps pages in the queue's own last-level table,
    // and 2 MiB blocks next to it, in the same domain.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (other, stop) = (IommuDriver::new(viommu.clone(), 1), stop.clone());
        let near = s.layout.iova + 0x8_0000;
        std::thread::spawn(move || {
            let mut pairs = 0u64;
            while !stop.load(Ordering::Relaxed) || pairs < 200 {
                let (iova, len) = match pairs % 3 {
                    0 | 1 => (near + (pairs % 16) * PAGE, PAGE),
                    _ => (0x20_0000 * (16 + pairs % 4), 0x20_0000),
                };
                assert_eq!(other.map(iova, 0x40_0000, len, RW), Status::Ok);
                assert_eq!(other.unmap(iova, len), Status::Ok);
                pairs += 1;
            }
            pairs
        })
    };

    let mut disk = vec![0u8; (SECTORS * SECTOR) as usize];
    for round in 0..60u64 {
        for slot in 0..SLOTS {
            let (iova, gpa) = s.layout.buffer(slot);
            let data = page_of((round * 7 + u64::from(slot)) as u8);
            ram.write_slice(&data, GuestAddress(gpa)).unwrap();
            // Sectors overlap from slot to slot and round to round: order matters.
            let sector = (round + u64::from(slot) * 3) % (SECTORS - PAGE_SECTORS);
            driver.submit(slot, T_OUT, sector, iova, PAGE as u32);
            device.kick();
            assert_eq!(device.wait().unwrap(), 1);
            let at = (sector * SECTOR) as usize;
            disk[at..at + PAGE as usize].copy_from_slice(&data);
        }
        let done = driver.completions();
        assert!(
            done.iter().all(|c| c.status == S_OK && c.len == 1),
            "{done:?}"
        );
        // Read back five windows into zeroed pages, in one batch.
        let sectors: Vec<u64> = (0..SLOTS)
            .map(|slot| (round * 5 + u64::from(slot) * 11) % (SECTORS - PAGE_SECTORS))
            .collect();
        for (slot, &sector) in (0..SLOTS).zip(&sectors) {
            let (iova, gpa) = s.layout.buffer(slot);
            ram.write_slice(&[0; PAGE as usize], GuestAddress(gpa))
                .unwrap();
            driver.submit(slot, T_IN, sector, iova, PAGE as u32);
        }
        device.kick();
        assert_eq!(device.wait().unwrap(), usize::from(SLOTS));
        for c in driver.completions() {
            assert_eq!((c.status, c.len), (S_OK, PAGE as u32 + 1), "{c:?}");
            let at = (sectors[usize::from(c.slot)] * SECTOR) as usize;
            let got = read_page(&ram, s.layout.buffer(c.slot).1);
            assert!(
                got == disk[at..at + PAGE as usize],
                "round {round} slot {}",
                c.slot
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(churn.join().unwrap() >= 200);
    let device = device.stop();
    assert!(
        device.disk() == disk.as_slice(),
        "disk differs from the model"
    );
    assert_eq!(device.counters().failed, 0);
    assert!(fault_events(&viommu).is_empty(), "no access faulted");
}

#[test]
fn a_buffer_the_guest_unmapped_fails_cleanly_and_the_fault_is_reported() {
    let (ram, viommu, s) = one_device();
    let view = s.layout.ring_view(&ram);
    let mut driver = BlkDriver::new(&view, ram.clone(), s.layout);
    let device = start(&ram, &s, &driver);
    let (iova, gpa) = s.layout.buffer(0);

    // Sector 0 gets a known content through the mapped buffer.
    let old = page_of(0x11);
    ram.write_slice(&old, GuestAddress(gpa)).unwrap();
    assert_eq!(
        run_one(&mut driver, &device, 0, T_OUT, 0, iova, PAGE as u32).status,
        S_OK
    );

    // The guest unmaps the buffer and reuses its page; requests naming the IOVA fail.
    assert_eq!(s.iommu.unmap(iova, PAGE), Status::Ok);
    let reused = page_of(0x22);
    ram.write_slice(&reused, GuestAddress(gpa)).unwrap();
    let out = run_one(&mut driver, &device, 0, T_OUT, 0, iova, PAGE as u32);
    assert_eq!((out.status, out.len), (S_IOERR, 1));
    let into = run_one(&mut driver, &device, 0, T_IN, 0, iova, PAGE as u32);
    assert_eq!((into.status, into.len), (S_IOERR, 1));
    assert!(read_page(&ram, gpa) == reused, "the device wrote the page");
    let mapping = FaultReason::Mapping as u8;
    assert_eq!(
        fault_events(&viommu),
        vec![
            (mapping, FAULT_F_READ | FAULT_F_ADDRESS, 8, iova),
            (mapping, FAULT_F_WRITE | FAULT_F_ADDRESS, 8, iova),
        ]
    );

    // Unmapping the rings (one mapping with the control page: a half would split it) the
    // device cannot even see the request; nothing is used, nothing panics, and the fault
    // names the ring page. Mapped again, the queue carries on.
    assert_eq!(s.iommu.unmap(s.layout.iova, PAGE), Status::Range);
    assert_eq!(s.iommu.unmap(s.layout.iova, 2 * PAGE), Status::Ok);
    let (iova1, gpa1) = s.layout.buffer(1);
    ram.write_slice(&page_of(0x33), GuestAddress(gpa1)).unwrap();
    driver.submit(1, T_OUT, 8, iova1, PAGE as u32);
    device.kick();
    assert_eq!(device.wait().unwrap(), 0);
    let events = fault_events(&viommu);
    assert!(
        events.iter().all(|e| e.0 == mapping && e.2 == 8)
            && events.iter().any(|e| e.3 >> 12 == s.layout.iova >> 12),
        "{events:x?}"
    );
    assert_eq!(
        s.iommu.map(s.layout.iova, s.layout.gpa, 2 * PAGE, RW),
        Status::Ok
    );
    device.kick();
    assert_eq!(device.wait().unwrap(), 1);
    assert_eq!(driver.completions()[0].status, S_OK);

    // Detached, the endpoint reaches nothing: R_DOMAIN, no address.
    let detach = [
        &[wire::T_DETACH, 0, 0, 0][..],
        &1u32.to_le_bytes(),
        &8u32.to_le_bytes(),
        &[0; 8],
    ]
    .concat();
    assert_eq!(viommu.handle_bytes(&detach, 4), vec![0, 0, 0, 0]);
    device.kick();
    assert_eq!(device.wait().unwrap(), 0);
    let events = fault_events(&viommu);
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|&(r, f, ep, a)| (r, f & FAULT_F_ADDRESS, ep, a)
                == (FaultReason::Domain as u8, 0, 8, 0)),
        "{events:x?}"
    );

    let device = device.stop();
    let at = 8 * SECTOR as usize;
    assert!(
        device.disk()[..PAGE as usize] == old,
        "failed writes changed sector 0"
    );
    assert!(
        device.disk()[at..at + PAGE as usize] == page_of(0x33),
        "the request offered while the rings were unmapped was served once remapped"
    );
    assert_eq!(viommu.faults_dropped(), 0);
}

/// The endpoint as seen by a device thread that is preempted right after translating `at`:
/// the lookup succeeds, the thread says so on `translated`, then stalls inside its read
/// section before it copies (the window in which a reply that does not wait for the device
/// lets the guest reuse the memory under it).
struct Stalling {
    endpoint: Endpoint,
    at: u64,
    translated: Mutex<mpsc::Sender<()>>,
}

impl Translate for Stalling {
    fn lookup(&self, iova: u64) -> Result<Leaf, Fault> {
        let leaf = self.endpoint.lookup(iova);
        if iova == self.at && leaf.is_ok() {
            let _ = self.translated.lock().unwrap().send(());
            std::thread::sleep(Duration::from_millis(2));
        }
        leaf
    }

    fn report(&self, fault: &Fault, access: Prot) {
        self.endpoint.report(fault, access)
    }
}

/// The quiescence guarantee through a real queue: the guest UNMAPs a 64 KiB buffer while
/// the device may be copying it, and reuses its pages as soon as UNMAP returns. A write
/// request then either completed with the buffer's content from before the UNMAP (never a
/// byte the guest wrote after it) or failed with nothing written to disk; a read request's
/// data never lands in the pages after the UNMAP returned. Rounds cycle through: UNMAP
/// before the kick (the request fails), after the completion (it succeeds), while the
/// device is stalled between its translation and its copy (the UNMAP must wait for the copy;
/// with the grace period removed from UNMAP this fails at once), and after a delay that
/// varies from round to round.
#[test]
fn after_unmap_returns_no_descriptor_processing_uses_the_old_translation() {
    const BIG: u64 = 16 * PAGE;
    const BIG_IOVA: u64 = 0x800_0000;
    const BIG_GPA: u64 = 0x60_0000;
    const CHECK_IOVA: u64 = 0x900_0000;
    const CHECK_GPA: u64 = 0x70_0000;
    let (ram, _, s) = one_device();
    let view = s.layout.ring_view(&ram);
    let mut driver = BlkDriver::new(&view, ram.clone(), s.layout);
    let (tx, translated) = mpsc::channel();
    let stalling = Stalling {
        endpoint: s.endpoint.clone(),
        at: BIG_IOVA + BIG - PAGE, // the last page: the whole buffer is translated
        translated: Mutex::new(tx),
    };
    let device = DeviceThread::spawn(BlockDevice::new(
        IovaMemory::new(ram.clone(), stalling),
        driver.device_queue(),
        BIG / SECTOR,
    ));
    assert_eq!(s.iommu.map(CHECK_IOVA, CHECK_GPA, BIG, RW), Status::Ok);
    let pattern = |byte: u8| -> Vec<u8> {
        (0..BIG / PAGE)
            .flat_map(|p| page_of(byte ^ p as u8))
            .collect()
    };
    let read_big = |gpa: u64| {
        let mut buf = vec![0; BIG as usize];
        ram.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        buf
    };
    let poison = pattern(0xee);
    let mut disk = vec![0u8; BIG as usize];
    let mut outcomes = [[0u32; 2]; 2]; // [write, read] x [served, failed]
    for i in 0..120u64 {
        assert_eq!(s.iommu.map(BIG_IOVA, BIG_GPA, BIG, RW), Status::Ok);
        let kind = if (i / 4) % 2 == 0 { T_OUT } else { T_IN };
        let data = pattern(i as u8);
        ram.write_slice(&data, GuestAddress(BIG_GPA)).unwrap();
        while translated.try_recv().is_ok() {}
        driver.submit(0, kind, 0, BIG_IOVA, BIG as u32);
        let mode = i % 4;
        if mode == 0 {
            assert_eq!(s.iommu.unmap(BIG_IOVA, BIG), Status::Ok);
        }
        device.kick();
        match mode {
            1 => assert_eq!(device.wait().unwrap(), 1),
            2 => translated.recv().unwrap(),
            3 => {
                let delay = Duration::from_micros((i * 37) % 400);
                let kicked = Instant::now();
                while kicked.elapsed() < delay {
                    std::hint::spin_loop();
                }
            }
            _ => {}
        }
        assert_eq!(s.iommu.unmap(BIG_IOVA, BIG), Status::Ok);
        // UNMAP has returned: the guest reuses the pages at once.
        ram.write_slice(&poison, GuestAddress(BIG_GPA)).unwrap();
        if mode != 1 {
            assert_eq!(device.wait().unwrap(), 1);
        }
        let done = driver.completions()[0];
        let served = match done.status {
            S_OK => true,
            S_IOERR => false,
            other => panic!("round {i}: status {other}"),
        };
        let written = if served && kind == T_IN {
            BIG as u32
        } else {
            0
        };
        assert_eq!(done.len, written + 1, "round {i}: used length");
        if served && kind == T_OUT {
            disk = data;
        }
        assert!(
            read_big(BIG_GPA) == poison,
            "round {i}: the device wrote the pages after UNMAP returned"
        );
        outcomes[usize::from(kind == T_IN)][usize::from(!served)] += 1;
        match mode {
            0 => assert!(!served, "round {i}: served through an unmapped IOVA"),
            1 | 2 => assert!(served, "round {i}: failed while mapped"),
            _ => {}
        }
        // The disk holds exactly the bytes of the last write served.
        let check = run_one(&mut driver, &device, 1, T_IN, 0, CHECK_IOVA, BIG as u32);
        assert_eq!(check.status, S_OK);
        assert!(
            read_big(CHECK_GPA) == disk,
            "round {i}: the disk holds bytes the guest wrote after UNMAP returned"
        );
    }
    device.stop();
    for (kind, [served, failed]) in ["write", "read"].iter().zip(outcomes) {
        assert!(
            served > 0 && failed > 0,
            "{kind}: {served} served, {failed} failed"
        );
    }
}

/// Two devices on their own threads serve their queues while a third thread churns
/// MAP/UNMAP in both domains and the driver moves each buffer to a new guest page every
/// round (UNMAP, MAP elsewhere): every byte read and written is checked against a model.
#[test]
fn stress_two_devices_and_a_churning_guest() {
    let ram = ram();
    let viommu = Arc::new(Viommu::new(ViommuConfig::default()).unwrap());
    let setups = [setup(&viommu, 8, 1, 0), setup(&viommu, 16, 2, 1)];
    let views: Vec<_> = setups.iter().map(|s| s.layout.ring_view(&ram)).collect();
    let mut drivers: Vec<BlkDriver<'_>> = setups
        .iter()
        .zip(&views)
        .map(|(s, v)| BlkDriver::new(v, ram.clone(), s.layout))
        .collect();
    let devices: Vec<Device> = setups
        .iter()
        .zip(&drivers)
        .map(|(s, d)| start(&ram, s, d))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let others = [1, 2].map(|d| IommuDriver::new(viommu.clone(), d));
        let near: Vec<u64> = setups.iter().map(|s| s.layout.iova + 0x8_0000).collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut pairs = 0u64;
            while !stop.load(Ordering::Relaxed) || pairs < 100 {
                let q = (pairs % 2) as usize;
                let iova = near[q] + (pairs % 32) * PAGE;
                assert_eq!(others[q].map(iova, 0x40_0000, PAGE, RW), Status::Ok);
                assert_eq!(others[q].unmap(iova, PAGE), Status::Ok);
                pairs += 1;
            }
            pairs
        })
    };
    // Spare guest pages the buffers move between: 64 per queue from 4 MiB.
    let spare = |q: usize, i: u64| 0x40_0000 + (q as u64 * 64 + i % 64) * PAGE;
    let mut disks = vec![vec![0u8; (SECTORS * SECTOR) as usize]; 2];
    let mut gpas: Vec<Vec<u64>> = setups
        .iter()
        .map(|s| (0..SLOTS).map(|slot| s.layout.buffer(slot).1).collect())
        .collect();
    for round in 0..80u64 {
        for (q, s) in setups.iter().enumerate() {
            // Move one buffer to a new page: the device must use the new translation.
            let slot = (round % u64::from(SLOTS)) as u16;
            let (iova, _) = s.layout.buffer(slot);
            assert_eq!(s.iommu.unmap(iova, PAGE), Status::Ok);
            let gpa = spare(q, round * 3 + u64::from(slot));
            assert_eq!(s.iommu.map(iova, gpa, PAGE, RW), Status::Ok);
            gpas[q][usize::from(slot)] = gpa;
            // Writes from even slots, reads into odd ones, over overlapping sectors.
            for slot in 0..SLOTS {
                let (iova, _) = s.layout.buffer(slot);
                let gpa = gpas[q][usize::from(slot)];
                let sector = (round * 3 + u64::from(slot) * 5) % (SECTORS - PAGE_SECTORS);
                let kind = if slot % 2 == 0 { T_OUT } else { T_IN };
                let fill = match kind {
                    T_OUT => page_of((round as u8) ^ (q as u8 * 0x40) ^ slot as u8),
                    _ => vec![0; PAGE as usize],
                };
                ram.write_slice(&fill, GuestAddress(gpa)).unwrap();
                drivers[q].submit(slot, kind, sector, iova, PAGE as u32);
            }
            devices[q].kick();
        }
        for (q, device) in devices.iter().enumerate() {
            assert_eq!(device.wait().unwrap(), usize::from(SLOTS));
            // The device serves chains in order: replay them on the model in that order.
            for c in drivers[q].completions() {
                assert_eq!(c.status, S_OK, "queue {q} round {round}: {c:?}");
                let sector = (round * 3 + u64::from(c.slot) * 5) % (SECTORS - PAGE_SECTORS);
                let at = (sector * SECTOR) as usize;
                let page = read_page(&ram, gpas[q][usize::from(c.slot)]);
                if c.slot % 2 == 0 {
                    disks[q][at..at + PAGE as usize].copy_from_slice(&page);
                } else {
                    assert!(
                        page == disks[q][at..at + PAGE as usize],
                        "queue {q} round {round} slot {}: read differs from the model",
                        c.slot
                    );
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(churn.join().unwrap() >= 100);
    for (q, device) in devices.into_iter().enumerate() {
        let device = device.stop();
        assert!(device.disk() == disks[q].as_slice(), "queue {q}: disk");
        assert_eq!(device.counters().ok, 80 * u64::from(SLOTS));
    }
    assert!(fault_events(&viommu).is_empty());
}
