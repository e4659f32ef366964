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
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

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
fn device(sh: &Shared, dev: &Endpoint, seed: u64, via_vm_memory: bool) {
    let io = dev.iova_memory(sh.ram.clone());
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
            // vm-memory path: one get_slices translation for both copies (two Bytes calls
            // would translate twice, and an ATTACH in between may switch the page).
            match io.get_slices(GuestAddress(iova), 16, Permissions::ReadWrite) {
                Ok(mut slices) => {
                    let slice = slices.next().unwrap().unwrap();
                    assert_eq!(slice.len(), 16, "one page, one slice");
                    let stamp: u64 = slice.read_obj(0).unwrap();
                    assert_ne!(stamp, SCRIBBLE, "read a page after its unmap completed");
                    let page = (stamp & 0xffff) as usize;
                    assert_eq!(
                        sh.owner[page].load(Ordering::Acquire),
                        stamp,
                        "page reused during the access"
                    );
                    slice.write_obj(stamp, 8).unwrap();
                    true
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

impl Shared {
    fn new(ram: Ram) -> Arc<Shared> {
        Arc::new(Shared {
            ram,
            owner: (0..PAGES).map(|_| AtomicU64::new(0)).collect(),
            slot_state: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            stop: AtomicBool::new(false),
            accesses: AtomicU64::new(0),
            faults: AtomicU64::new(0),
        })
    }

    /// Three device threads on `dev`; the third copies through vm-memory.
    fn spawn_devices(self: &Arc<Self>, dev: &Endpoint) -> Vec<std::thread::JoinHandle<()>> {
        (0..3u64)
            .map(|i| {
                let (sh, dev) = (self.clone(), dev.clone());
                std::thread::spawn(move || {
                    device(&sh, &dev, 0x9e37_79b9_7f4a_7c15 ^ (i + 1), i == 2)
                })
            })
            .collect()
    }

    /// Stop the devices; returns (served, faulted) accesses.
    fn stop_devices(&self, workers: Vec<std::thread::JoinHandle<()>>) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        (
            self.accesses.load(Ordering::Relaxed),
            self.faults.load(Ordering::Relaxed),
        )
    }

    /// Give `page` a new owner stamp before it is mapped.
    fn own(&self, page: u64, serial: u64) -> u64 {
        let stamp = serial << 16 | page;
        self.ram
            .write_obj(stamp, GuestAddress(page * PAGE))
            .unwrap();
        self.owner[page as usize].store(stamp, Ordering::Release);
        stamp
    }

    /// Take `page` back once the request that removed its last translation completed: no
    /// device may have written anything but the old owner's stamp; then scribble it.
    fn reuse(&self, page: u64, stamp: u64) {
        let device_area: u64 = self.ram.read_obj(GuestAddress(page * PAGE + 8)).unwrap();
        assert!(
            device_area == 0 || device_area == stamp,
            "a device wrote {device_area:#x} after the mapping of {stamp:#x} was removed"
        );
        self.owner[page as usize].store(0, Ordering::Release);
        self.ram
            .write_obj(SCRIBBLE, GuestAddress(page * PAGE))
            .unwrap();
        self.ram
            .write_obj(0u64, GuestAddress(page * PAGE + 8))
            .unwrap();
    }
}

fn map_page(v: &Viommu, domain: u32, iova: u64, page: u64) {
    let req = Request::Map {
        domain,
        virt_start: iova,
        virt_end: iova + PAGE - 1,
        phys_start: page * PAGE,
        flags: MAP_F_READ | MAP_F_WRITE,
    };
    assert_eq!(v.handle(req).status(), Status::Ok);
}

fn unmap_page(domain: u32, iova: u64) -> Request {
    Request::Unmap {
        domain,
        virt_start: iova,
        virt_end: iova + PAGE - 1,
    }
}

fn attach(v: &Viommu, domain: u32, endpoint: u32) {
    assert_eq!(
        v.handle(Request::Attach {
            domain,
            endpoint,
            flags: 0
        })
        .status(),
        Status::Ok
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn map_unmap_churn_never_lets_an_access_outlive_its_mapping() {
    let ram = Ram::from_ranges(&[(GuestAddress(0), (PAGES * PAGE) as usize)]).unwrap();
    let v = Arc::new(Viommu::new(ViommuConfig::default()).unwrap());
    let dev = v.add_endpoint(1, vec![]).unwrap();
    attach(&v, 1, 1);
    let sh = Shared::new(ram);
    let workers = sh.spawn_devices(&dev);

    // The guest: slots hold (page, stamp) while mapped; pages are free or owned.
    let mut free: Vec<u64> = (0..PAGES).collect();
    let mut mapped: Vec<Option<(u64, u64)>> = vec![None; SLOTS as usize];
    let mut serial = 0u64;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let ops = 10_000;
    for op in 0..ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = (x % SLOTS) as usize;
        let iova = slot_iova(slot as u64);
        match mapped[slot].take() {
            Some((page, stamp)) => {
                sh.slot_state[slot].store(0, Ordering::Release);
                let req = unmap_page(1, iova);
                let st = if op % 7 == 0 {
                    v.handle_batch([req])[0].status()
                } else {
                    v.handle(req).status()
                };
                assert_eq!(st, Status::Ok);
                // The UNMAP completed: no device access of this mapping is still running.
                sh.reuse(page, stamp);
                free.push(page);
            }
            None => {
                let page = free.swap_remove((x >> 32) as usize % free.len());
                serial += 1;
                let stamp = sh.own(page, serial);
                map_page(&v, 1, iova, page);
                mapped[slot] = Some((page, stamp));
                sh.slot_state[slot].store(stamp, Ordering::Release);
            }
        }
    }
    let (accesses, faults) = sh.stop_devices(workers);
    eprintln!(
        "{ops} guest operations, {accesses} device accesses, {faults} faulted (raced an unmap)"
    );
    assert!(accesses > 0, "the devices made no access at all");
    // The page table and the mapping list agree at the end.
    let live = mapped.iter().flatten().count();
    assert_eq!(v.mappings(1).unwrap().len(), live);
    let report = dma_vmm::report::viommu_domain(&v, 1).unwrap();
    assert_eq!(
        report.page_table.unwrap().mapped_bytes(),
        live as u64 * PAGE
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn moving_an_endpoint_between_domains_quiesces_the_old_one() {
    // Domains 1 and 2 both map slot 0's IOVA, to different pages; the endpoint moves between
    // them with ATTACH. Once the ATTACH completes, the page of the domain it left is reused:
    // no device may still be copying through the old domain's translation.
    let ram = Ram::from_ranges(&[(GuestAddress(0), (PAGES * PAGE) as usize)]).unwrap();
    let v = Arc::new(Viommu::new(ViommuConfig::default()).unwrap());
    let dev = v.add_endpoint(1, vec![]).unwrap();
    // Anchors keep both domains alive while the device endpoint moves.
    for (anchor, domain) in [(100, 1), (200, 2)] {
        v.add_endpoint(anchor, vec![]).unwrap();
        attach(&v, domain, anchor);
    }
    let sh = Shared::new(ram);
    let iova = slot_iova(0);
    let (mut page, mut serial) = (0u64, 1u64);
    let mut stamp = sh.own(page, serial);
    map_page(&v, 1, iova, page);
    attach(&v, 1, 1);
    sh.slot_state[0].store(stamp, Ordering::Release);
    let workers = sh.spawn_devices(&dev);
    let mut domain = 1;
    let moves = 20_000;
    for _ in 0..moves {
        let (next_domain, next_page) = (3 - domain, (page + 1) % PAGES);
        serial += 1;
        let next_stamp = sh.own(next_page, serial);
        map_page(&v, next_domain, iova, next_page);
        sh.slot_state[0].store(next_stamp, Ordering::Release);
        attach(&v, next_domain, 1);
        // The ATTACH completed: nothing translates through `domain` for this endpoint.
        assert_eq!(v.handle(unmap_page(domain, iova)).status(), Status::Ok);
        sh.reuse(page, stamp);
        (domain, page, stamp) = (next_domain, next_page, next_stamp);
        // Let the devices run on the new domain for a moment.
        std::thread::yield_now();
    }
    let (accesses, faults) = sh.stop_devices(workers);
    eprintln!("{moves} endpoint moves, {accesses} device accesses, {faults} faulted");
    assert!(accesses > 0, "the devices made no access at all");
    assert_eq!(dev.domain(), Some(domain));
}
