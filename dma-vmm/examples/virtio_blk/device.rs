//! The device side: a virtio-blk-like device backed by a `Vec<u8>`, written the way a VMM's
//! device is, against vm-memory's `GuestMemory` and virtio-queue's `Queue`. It knows nothing
//! of the IOMMU: handed an `IovaMemory` it reads its rings and buffers by IOVA, handed the
//! `GuestMemoryMmap` it would read them by guest-physical address.
//!
//! A request is a chain of three descriptors: a 16-byte device-readable header (`type: u32`,
//! `reserved: u32`, `sector: u64`), one data buffer (device-readable for `T_OUT`, writable for
//! `T_IN`), and a one-byte device-writable status. A buffer the device cannot reach (the
//! guest unmapped it) fails the request with `S_IOERR`; nothing panics, and a write request
//! commits to the disk only the bytes it read whole.

use std::sync::mpsc;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory};

/// `VIRTIO_BLK_T_IN`: read sectors into the guest's buffer.
pub const T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`: write the guest's buffer to sectors.
pub const T_OUT: u32 = 1;
/// `VIRTIO_BLK_S_OK`.
pub const S_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`.
pub const S_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const S_UNSUPP: u8 = 2;
/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Bytes of the request header.
pub const HEADER: usize = 16;

/// What the device did, for the VMM's statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Requests completed with `S_OK`.
    pub ok: u64,
    /// Requests completed with an error status (`S_IOERR`, `S_UNSUPP`).
    pub failed: u64,
    /// Chains whose status byte could not be written either (used length 0).
    pub unanswered: u64,
}

/// A block device over guest memory `M` (by IOVA when `M` is an `IovaMemory`).
pub struct BlockDevice<M> {
    mem: M,
    queue: Queue,
    disk: Vec<u8>,
    counters: Counters,
}

impl<M: GuestMemory> BlockDevice<M> {
    /// A device of `sectors` zeroed sectors serving `queue` over `mem`.
    pub fn new(mem: M, queue: Queue, sectors: u64) -> Self {
        BlockDevice {
            mem,
            queue,
            disk: vec![0; (sectors * SECTOR) as usize],
            counters: Counters::default(),
        }
    }

    /// The disk's bytes (device-private memory, not guest memory).
    pub fn disk(&self) -> &[u8] {
        &self.disk
    }

    /// What the device did so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Serve every request the driver made available; returns how many chains were used.
    /// Stops early if the used ring cannot be written (the guest unmapped it).
    pub fn process(&mut self) -> Result<usize, virtio_queue::Error> {
        let mut used = 0;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let descriptors: Vec<Descriptor> = chain.collect();
            let len = self.serve(&descriptors);
            self.queue.add_used(&self.mem, head, len)?;
            used += 1;
        }
        Ok(used)
    }

    /// Serve one chain; returns the used length (bytes written into the chain).
    fn serve(&mut self, chain: &[Descriptor]) -> u32 {
        let [header, data, status] = chain else {
            self.counters.unanswered += 1;
            return 0;
        };
        let (code, written) = match self.transfer(header, data) {
            Ok(written) => (S_OK, written),
            Err(code) => (code, 0),
        };
        let status_ok = status.is_write_only()
            && status.len() >= 1
            && self.mem.write_obj(code, status.addr()).is_ok();
        if !status_ok {
            self.counters.unanswered += 1;
            return 0;
        }
        match code {
            S_OK => self.counters.ok += 1,
            _ => self.counters.failed += 1,
        }
        written + 1
    }

    /// Move the data of one request; returns the bytes written into guest memory.
    fn transfer(&mut self, header: &Descriptor, data: &Descriptor) -> Result<u32, u8> {
        if header.is_write_only() || (header.len() as usize) < HEADER {
            return Err(S_IOERR);
        }
        let mut raw = [0u8; HEADER];
        self.mem
            .read_slice(&mut raw, header.addr())
            .map_err(|_| S_IOERR)?;
        let kind = u32::from_le_bytes(raw[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
        let start = sector
            .checked_mul(SECTOR)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or(S_IOERR)?;
        let end = start
            .checked_add(data.len() as usize)
            .filter(|&e| e <= self.disk.len())
            .ok_or(S_IOERR)?;
        match kind {
            T_OUT if !data.is_write_only() => {
                // Read the whole buffer first: a fault half-way changes nothing on disk.
                let mut buf = vec![0u8; data.len() as usize];
                self.mem
                    .read_slice(&mut buf, data.addr())
                    .map_err(|_| S_IOERR)?;
                self.disk[start..end].copy_from_slice(&buf);
                Ok(0)
            }
            T_IN if data.is_write_only() => {
                self.mem
                    .write_slice(&self.disk[start..end], data.addr())
                    .map_err(|_| S_IOERR)?;
                Ok(data.len())
            }
            T_IN | T_OUT => Err(S_IOERR),
            _ => Err(S_UNSUPP),
        }
    }
}

/// A device on its own thread, as a VMM runs it: each kick (the driver's notification)
/// serves the queue and answers with an interrupt carrying the number of chains used.
pub struct DeviceThread<M> {
    kick: mpsc::Sender<()>,
    interrupt: mpsc::Receiver<Result<usize, virtio_queue::Error>>,
    thread: std::thread::JoinHandle<BlockDevice<M>>,
}

impl<M: GuestMemory + Send + 'static> DeviceThread<M> {
    /// Start serving `device`.
    pub fn spawn(mut device: BlockDevice<M>) -> Self {
        let (kick, kicks) = mpsc::channel();
        let (raise, interrupt) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            while kicks.recv().is_ok() {
                if raise.send(device.process()).is_err() {
                    break;
                }
            }
            device
        });
        DeviceThread {
            kick,
            interrupt,
            thread,
        }
    }

    /// Notify the device that requests are available.
    pub fn kick(&self) {
        self.kick.send(()).expect("device thread alive");
    }

    /// Wait for the device's answer to one kick.
    pub fn wait(&self) -> Result<usize, virtio_queue::Error> {
        self.interrupt.recv().expect("device thread alive")
    }

    /// Stop the thread and return the device.
    pub fn stop(self) -> BlockDevice<M> {
        drop(self.kick);
        self.thread.join().expect("device thread")
    }
}
