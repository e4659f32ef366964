//! Guest-side MAP/UNMAP churn while device threads translate and copy: no access ever lands
//! outside a mapping that was live when its translation was taken.
//!
//! Each guest page carries a stamp `serial << 16 | page` at offset 0, written before the page
//! is mapped; `owner[page]` holds the stamp while a mapping of the page is live and 0 once
//! its UNMAP has completed, after which the guest scribbles the page. Devices learn which
//! IOVAs are live through `slot_state` (release/acquire, as a virtqueue would tell them), then
//! translate and, inside the same read section, check that the page they reached is still
//! owned by the stamp it carries, and write that stamp into the page's device area (offset
//! 8). When an UNMAP completes, the guest checks the device area holds nothing or this
//! mapping's stamp: a device write that landed after the UNMAP returned would leave a stale
//! stamp for the next owner to find.
#![cfg(all(not(loom), feature = "vm-memory"))]

use dma_sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dma_vmm::viommu::*;
use io_pgtable::Prot;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Ram = GuestMemoryMmap<()>;

const PAGES: u64 = 64;
const SLOTS: u64 = 16;
const PAGE: u64 = 0x1000;
const IOVA_BASE: u64 = 0x100_0000;
const SCRIBBLE: u64 = 0xdead_dead_dead_dead;

struct Shared {
    ram: Ram,
    owner: Vec<AtomicU64>,
    slot_state: Vec<AtomicU64>,
    stop: AtomicBool,
    accesses: AtomicU64,
    faults: AtomicU64,
}

fn slot_iova(slot: u64) -> u64 {
    IOVA_BASE + slot * 2 * PAGE
}

/// One device thread: pick a live slot, translate and copy inside one read section.
fn device(sh: &Shared, dev: &DeviceEndpoint, seed: u64, via_vm_memory: bool) {
    let io = dev.io_memory(sh.ram.clone());
    let mut x = seed;
    while !sh.stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = x % SLOTS;
        if sh.slot_state[slot as usize].load(Ordering::Acquire) == 0 {
            continue;
        }
        let iova = slot_iova(slot);
        let ok = if via_vm_memory {
            // vm-memory path: Bytes through IoMemory, one explicit section around both copies.
            let _section = io.section();
            match io.read_obj::<u64>(GuestAddress(iova)) {
                Ok(stamp) => {
                    assert_ne!(stamp, SCRIBBLE, "read a page after its unmap completed");
                    let page = (stamp & 0xffff) as usize;
                    assert_eq!(
                        sh.owner[page].load(Ordering::Acquire),
                        stamp,
                        "page reused during the access"
                    );
                    io.write_obj(stamp, GuestAddress(iova + 8)).is_ok()
                }
                Err(_) => false,
            }
        } else {
            dev.access(iova, 16, Prot::READ | Prot::WRITE, |segs| {
                let gpa = segs[0].paddr;
                let stamp: u64 = sh.ram.read_obj(GuestAddress(gpa)).unwrap();
                assert_eq!(stamp & 0xffff, gpa / PAGE, "stamp of another page");
                assert_eq!(
                    sh.owner[(gpa / PAGE) as usize].load(Ordering::Acquire),
                    stamp,
                    "page reused during the access"
                );
                sh.ram.write_obj(stamp, GuestAddress(gpa + 8)).unwrap();
            })
            .is_ok()
        };
        let counter = if ok { &sh.accesses } else { &sh.faults };
        counter.fetch_add(1, Ordering::Relaxed);
        // A device waits for its next notification now and then; on a small machine this
        // also lets the guest thread run.
        if x % 16 == 0 {
            std::thread::yield_now();
        }
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn map_unmap_churn_never_lets_an_access_outlive_its_mapping() {
    let ram = Ram::from_ranges(&[(GuestAddress(0), (PAGES * PAGE) as usize)]).unwrap();
    let v = Arc::new(Viommu::new(ViommuConfig::default()).unwrap());
    let dev = v.add_endpoint(1, vec![]).unwrap();
    assert_eq!(
        v.handle(Request::Attach {
            domain: 1,
            endpoint: 1,
            flags: 0
        })
        .status(),
        Status::Ok
    );
    let sh = Arc::new(Shared {
        ram,
        owner: (0..PAGES).map(|_| AtomicU64::new(0)).collect(),
        slot_state: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        accesses: AtomicU64::new(0),
        faults: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..3u64)
        .map(|i| {
            let (sh, dev) = (sh.clone(), dev.clone());
            std::thread::spawn(move || device(&sh, &dev, 0x9e37_79b9_7f4a_7c15 ^ (i + 1), i == 2))
        })
        .collect();

    // The guest: slots hold (page, stamp) while mapped; pages are free or owned.
    let mut free: Vec<u64> = (0..PAGES).collect();
    let mut mapped: Vec<Option<(u64, u64)>> = vec![None; SLOTS as usize];
    let mut serial = 0u64;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let ops = 20_000;
    for op in 0..ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = (x % SLOTS) as usize;
        let iova = slot_iova(slot as u64);
        match mapped[slot].take() {
            Some((page, stamp)) => {
                sh.slot_state[slot].store(0, Ordering::Release);
                let req = Request::Unmap {
                    domain: 1,
                    virt_start: iova,
                    virt_end: iova + PAGE - 1,
                };
                let st = if op % 7 == 0 {
                    v.handle_batch([req])[0].status()
                } else {
                    v.handle(req).status()
                };
                assert_eq!(st, Status::Ok);
                // The UNMAP completed: no device access of this mapping is still running.
                let gpa = GuestAddress(page * PAGE);
                let device_area: u64 = sh.ram.read_obj(GuestAddress(page * PAGE + 8)).unwrap();
                assert!(
                    device_area == 0 || device_area == stamp,
                    "a device wrote {device_area:#x} after UNMAP of {stamp:#x}"
                );
                sh.owner[page as usize].store(0, Ordering::Release);
                sh.ram.write_obj(SCRIBBLE, gpa).unwrap();
                sh.ram
                    .write_obj(0u64, GuestAddress(page * PAGE + 8))
                    .unwrap();
                free.push(page);
            }
            None => {
                let page = free.swap_remove((x >> 32) as usize % free.len());
                serial += 1;
                let stamp = serial << 16 | page;
                sh.ram.write_obj(stamp, GuestAddress(page * PAGE)).unwrap();
                sh.owner[page as usize].store(stamp, Ordering::Release);
                let req = Request::Map {
                    domain: 1,
                    virt_start: iova,
                    virt_end: iova + PAGE - 1,
                    phys_start: page * PAGE,
                    flags: MAP_F_READ | MAP_F_WRITE,
                };
                assert_eq!(v.handle(req).status(), Status::Ok);
                mapped[slot] = Some((page, stamp));
                sh.slot_state[slot].store(stamp, Ordering::Release);
            }
        }
    }
    sh.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (accesses, faults) = (
        sh.accesses.load(Ordering::Relaxed),
        sh.faults.load(Ordering::Relaxed),
    );
    eprintln!(
        "{ops} guest operations, {accesses} device accesses, {faults} faulted (raced an unmap)"
    );
    assert!(accesses > 0, "the devices made no access at all");
    // The page table and the mapping list agree at the end.
    let live = mapped.iter().flatten().count();
    assert_eq!(v.mappings(1).unwrap().len(), live);
    let report = dma_vmm::report::domain(&v, 1).unwrap();
    assert_eq!(
        report.page_table.unwrap().mapped_bytes(),
        live as u64 * PAGE
    );
}
