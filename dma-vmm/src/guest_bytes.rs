//! swiotlb-core's original memory over vm-memory: bounce copies to and from guest memory.
//!
//! [`GuestBytes`] implements [`swiotlb_core::OrigMemory`] for any vm-memory [`GuestMemory`]:
//! a `GuestMemoryMmap` (original addresses are guest-physical), or an [`crate::IovaMemory`]
//! (original addresses are IOVAs, translated and permission-checked). A confidential-VM VMM
//! gives its swiotlb the guest's private memory this way; `map` copies the guest's buffer into
//! a persistent shared pool, `unmap` copies the device's bytes back.
//!
//! swiotlb-core's bounce addresses are the process addresses of its pools and share one
//! address space with the original addresses; guest-physical addresses must therefore not
//! coincide with a pool's process address range (true for guest RAM below the process's
//! heap and mmap areas; check with `Swiotlb::is_bounce_buffer` when in doubt).
//!
//! ```
//! use dma_vmm::GuestBytes;
//! use swiotlb_core::{Config, DeviceConfig, Direction, MapAttrs, OrigMemory, Swiotlb};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
//! let bounce = Swiotlb::new(Config::tiny(64, 2, 16), GuestBytes::new(ram)).unwrap();
//! let dev = bounce.device(DeviceConfig::default());
//! bounce.memory().write(0x3000, b"ping").unwrap(); // the guest's buffer
//! let dma = bounce.map(&dev, 0x3000, 4, Direction::Bidirectional, MapAttrs::default()).unwrap();
//! let mut seen = [0u8; 4];
//! bounce.read_bounce(&dev, dma, &mut seen).unwrap(); // the device reads the bounce copy
//! assert_eq!(&seen, b"ping");
//! bounce.write_bounce(&dev, dma, b"pong").unwrap();
//! bounce.unmap(&dev, dma, 4, Direction::Bidirectional, MapAttrs::default()).unwrap();
//! let mut back = [0u8; 4];
//! bounce.memory().read(0x3000, &mut back).unwrap();
//! assert_eq!(&back, b"pong"); // copied back into guest memory
//! ```

use swiotlb_core::{DmaDst, DmaSrc, MemoryError, OrigMemory};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Guest memory as swiotlb-core original memory. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct GuestBytes<M> {
    mem: M,
}

impl<M: GuestMemory> GuestBytes<M> {
    /// Original memory backed by `mem`.
    pub fn new(mem: M) -> Self {
        GuestBytes { mem }
    }

    /// The guest memory.
    pub fn inner(&self) -> &M {
        &self.mem
    }

    /// Check that `[addr, addr + len)` allows `access` (so a refused copy touches nothing),
    /// then run `copy` on the guest memory; any failure refuses the whole range.
    fn copy<E>(
        &self,
        addr: u64,
        len: usize,
        access: Permissions,
        copy: impl FnOnce(&M) -> Result<(), E>,
    ) -> Result<(), MemoryError> {
        let refused = MemoryError { addr, len };
        if !self.mem.check_range(GuestAddress(addr), len, access) {
            return Err(refused);
        }
        copy(&self.mem).map_err(|_| refused)
    }
}

impl<M: GuestMemory + Send + Sync> OrigMemory for GuestBytes<M> {
    fn read_into(&self, addr: u64, mut dst: DmaDst<'_>) -> Result<(), MemoryError> {
        // Bounce memory is filled through a stack buffer, a piece at a time: vm-memory's
        // volatile copy out of guest memory, then swiotlb-core's atomic copy into the pool.
        self.copy(addr, dst.len(), Permissions::Read, |mem| {
            dst.fill_chunks(|off, piece| mem.read_slice(piece, GuestAddress(addr + off as u64)))
        })
    }

    fn write_from(&self, addr: u64, src: DmaSrc<'_>) -> Result<(), MemoryError> {
        self.copy(addr, src.len(), Permissions::Write, |mem| {
            src.for_each_chunk(|off, piece| mem.write_slice(piece, GuestAddress(addr + off as u64)))
        })
    }
}
