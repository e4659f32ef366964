//! The guest side: a virtio-iommu driver that sends its requests in wire format, and a
//! virtio-blk driver that lays out its split virtqueue with virtio-queue's driver-side
//! utilities (`virtio_queue::mock`'s descriptor table and rings) at the DMA addresses (IOVAs)
//! the guest mapped for it.
//!
//! The rings are placed here rather than by `MockSplitQueue::create`: in virtio-queue 0.18
//! it puts the used ring `len` bytes after the available ring's entries instead of `2 * len`
//! (`SplitQueueRing::end` counts entries as bytes), so the used ring overlaps the upper half
//! of the available ring and a driver that goes round the ring sees its entries overwritten.

use crate::device::{HEADER, T_IN};
use dma_vmm::viommu::{wire, Request, Status, Viommu, MAP_F_READ, MAP_F_WRITE};
use dma_vmm::IovaMemory;
use io_pgtable::{Config, PageTable, Prot};
use std::sync::Arc;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The guest's RAM.
pub type Ram = GuestMemoryMmap<()>;
/// The IOMMU page size the guest maps with.
pub const PAGE: u64 = 0x1000;
/// Descriptors in the queue.
pub const QUEUE_SIZE: u16 = 16;
/// Requests the driver can have in flight: three descriptors each.
pub const SLOTS: u16 = QUEUE_SIZE / 3;
/// `VRING_DESC_F_NEXT`.
const DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
const DESC_F_WRITE: u16 = 2;
/// Bytes of the control page per slot: the header, then the status byte.
const SLOT_CTRL: u64 = 32;

/// The guest's virtio-iommu driver for one domain: every request goes through the device's
/// wire entry point, as a request-queue element would.
pub struct IommuDriver {
    viommu: Arc<Viommu>,
    domain: u32,
}

impl IommuDriver {
    /// A driver managing `domain` of `viommu`.
    pub fn new(viommu: Arc<Viommu>, domain: u32) -> Self {
        IommuDriver { viommu, domain }
    }

    /// ATTACH `endpoint` to the domain.
    pub fn attach(&self, endpoint: u32) -> Status {
        self.send(Request::Attach {
            domain: self.domain,
            endpoint,
            flags: 0,
        })
    }

    /// MAP `[iova, iova + len)` to `gpa` with `MAP_F_*` `flags`.
    pub fn map(&self, iova: u64, gpa: u64, len: u64, flags: u32) -> Status {
        self.send(Request::Map {
            domain: self.domain,
            virt_start: iova,
            virt_end: iova + len - 1,
            phys_start: gpa,
            flags,
        })
    }

    /// UNMAP `[iova, iova + len)`; returns once no device access still uses it.
    pub fn unmap(&self, iova: u64, len: u64) -> Status {
        self.send(Request::Unmap {
            domain: self.domain,
            virt_start: iova,
            virt_end: iova + len - 1,
        })
    }

    /// Lay the request out as the request queue carries it and hand it to the device.
    fn send(&self, request: Request) -> Status {
        let readable = wire::encode_request(&request);
        let reply = self.viommu.handle_bytes(&readable, wire::TAIL_SIZE);
        // A reply the device did not write is a failed request.
        reply
            .first()
            .and_then(|&code| Status::from_code(code))
            .unwrap_or(Status::IoErr)
    }
}

/// The guest CPU's view of a page it handed a device, addressed by the DMA address (IOVA)
/// it gave the device, like a guest kernel writing its rings through its own page tables.
pub type DmaView = IovaMemory<Ram, PageTable>;

/// The view of `[iova, iova + len)` as the guest-physical `gpa`.
pub fn dma_view(ram: &Ram, iova: u64, gpa: u64, len: u64) -> DmaView {
    let pt = PageTable::new(Config::s1_4k(48)).expect("valid page-table config");
    pt.map(iova, gpa, len, Prot::READ | Prot::WRITE)
        .expect("ring view fits");
    IovaMemory::new(ram.clone(), pt)
}

/// Where a queue lives, by IOVA and guest-physical address: its ring page, its control page
/// (request headers and status bytes) and one data page per slot.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// IOVA of the ring page; the control page follows it, then the data pages.
    pub iova: u64,
    /// Guest-physical address of the ring page; the same pages follow it.
    pub gpa: u64,
}

impl Layout {
    /// Queue `n`'s pages: IOVAs from 16 MiB + n MiB, guest pages from 64 KiB + 64n KiB.
    pub fn for_queue(n: u64) -> Layout {
        Layout {
            iova: 0x100_0000 + n * 0x10_0000,
            gpa: 0x1_0000 + n * 0x1_0000,
        }
    }

    /// IOVA and guest-physical address of the control page.
    pub fn ctrl(&self) -> (u64, u64) {
        (self.iova + PAGE, self.gpa + PAGE)
    }

    /// IOVA and guest-physical address of `slot`'s data page.
    pub fn buffer(&self, slot: u16) -> (u64, u64) {
        let at = (2 + u64::from(slot)) * PAGE;
        (self.iova + at, self.gpa + at)
    }

    /// The view the driver writes its rings through.
    pub fn ring_view(&self, ram: &Ram) -> DmaView {
        dma_view(ram, self.iova, self.gpa, PAGE)
    }

    /// MAP the ring and control pages (read-write) and every data page.
    pub fn map(&self, iommu: &IommuDriver) -> Status {
        let rw = MAP_F_READ | MAP_F_WRITE;
        match iommu.map(self.iova, self.gpa, 2 * PAGE, rw) {
            Status::Ok => {}
            failed => return failed,
        }
        (0..SLOTS)
            .map(|slot| {
                let (iova, gpa) = self.buffer(slot);
                iommu.map(iova, gpa, PAGE, rw)
            })
            .find(|&s| s != Status::Ok)
            .unwrap_or(Status::Ok)
    }
}

/// A request the device has used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The slot the request was submitted in.
    pub slot: u16,
    /// The used length the device reported.
    pub len: u32,
    /// The status byte the device wrote (0xff if it wrote none).
    pub status: u8,
}

/// Offsets of the split virtqueue's parts in the ring page (virtio 1.2, 2.7: descriptor
/// table 16-byte aligned, available ring 2-byte, used ring 4-byte).
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = DESC_TABLE + 16 * QUEUE_SIZE as u64;
/// flags, idx, ring, used_event: 6 + 2 * size bytes, rounded up to the used ring's alignment.
const USED_RING: u64 = (AVAIL_RING + 6 + 2 * QUEUE_SIZE as u64 + 3) & !3;

/// The guest's virtio-blk driver: a split virtqueue built from virtio-queue's mock rings.
pub struct BlkDriver<'a> {
    desc_table: DescriptorTable<'a, DmaView>,
    avail: AvailRing<'a, DmaView>,
    used: UsedRing<'a, DmaView>,
    ram: Ram,
    layout: Layout,
    next_avail: u16,
    last_used: u16,
}

impl<'a> BlkDriver<'a> {
    /// A driver whose rings are written through `view` (from [`Layout::ring_view`]).
    pub fn new(view: &'a DmaView, ram: Ram, layout: Layout) -> Self {
        let at = |offset| GuestAddress(layout.iova + offset);
        BlkDriver {
            desc_table: DescriptorTable::new(view, at(DESC_TABLE), QUEUE_SIZE),
            avail: AvailRing::new(view, at(AVAIL_RING), QUEUE_SIZE),
            used: UsedRing::new(view, at(USED_RING), QUEUE_SIZE),
            ram,
            layout,
            next_avail: 0,
            last_used: 0,
        }
    }

    /// The device's side of the queue, as the driver configures it through the transport
    /// (its ring addresses are IOVAs).
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("valid queue size");
        let split = |offset: u64| {
            let a = self.layout.iova + offset;
            (Some(a as u32), Some((a >> 32) as u32))
        };
        let (lo, hi) = split(DESC_TABLE);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(AVAIL_RING);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(USED_RING);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// Offer a request in `slot` (< [`SLOTS`], not in flight): `kind` `T_IN` or `T_OUT`,
    /// starting at `sector`, with its data buffer at `buf_iova` (usually the slot's data
    /// page, [`Layout::buffer`]), `len` bytes.
    pub fn submit(&mut self, slot: u16, kind: u32, sector: u64, buf_iova: u64, len: u32) {
        assert!(slot < SLOTS, "slot {slot}");
        let ctrl = u64::from(slot) * SLOT_CTRL;
        let mut header = [0u8; HEADER];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        // The guest writes its own buffers by guest-physical address.
        let (ctrl_iova, ctrl_gpa) = self.layout.ctrl();
        let (ctrl_iova, ctrl_gpa) = (ctrl_iova + ctrl, ctrl_gpa + ctrl);
        self.ram
            .write_slice(&header, GuestAddress(ctrl_gpa))
            .expect("control page");
        self.ram
            .write_obj(0xffu8, GuestAddress(ctrl_gpa + HEADER as u64))
            .expect("control page");
        let data_flags = if kind == T_IN { DESC_F_WRITE } else { 0 };
        let first = 3 * slot;
        let chain = [
            (ctrl_iova, HEADER as u32, DESC_F_NEXT),
            (buf_iova, len, data_flags | DESC_F_NEXT),
            (ctrl_iova + HEADER as u64, 1, DESC_F_WRITE),
        ];
        for (i, (addr, len, flags)) in chain.into_iter().enumerate() {
            let index = first + i as u16;
            let desc = Descriptor::new(addr, len, flags, index + 1);
            self.desc_table
                .store(index, RawDescriptor::from(desc))
                .expect("descriptor index");
        }
        let avail = &self.avail;
        avail
            .ring()
            .ref_at(usize::from(self.next_avail % QUEUE_SIZE))
            .expect("ring index")
            .store(u16::to_le(first));
        self.next_avail = self.next_avail.wrapping_add(1);
        avail.idx().store(u16::to_le(self.next_avail));
    }

    /// The requests the device used since the last call, in used-ring order.
    pub fn completions(&mut self) -> Vec<Completion> {
        let used = &self.used;
        let idx = u16::from_le(used.idx().load());
        let mut done = Vec::new();
        while self.last_used != idx {
            let elem = used
                .ring()
                .ref_at(usize::from(self.last_used % QUEUE_SIZE))
                .expect("ring index")
                .load();
            let slot = (elem.id() / 3) as u16;
            let status_gpa = self.layout.ctrl().1 + u64::from(slot) * SLOT_CTRL + HEADER as u64;
            let status = self
                .ram
                .read_obj(GuestAddress(status_gpa))
                .expect("control page");
            done.push(Completion {
                slot,
                len: elem.len(),
                status,
            });
            self.last_used = self.last_used.wrapping_add(1);
        }
        done
    }
}
