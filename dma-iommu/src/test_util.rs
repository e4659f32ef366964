//! Test support (feature `test-util`): a device simulated on the CPU, for tests, soak runs
//! and examples. The library itself never touches device-visible memory on a device's behalf.

use crate::device::Device;
use crate::domain::Domain;
use crate::error::DmaError;
use crate::iotlb::TlbOps;
use io_pgtable::Prot;
use swiotlb_core::OrigMemory;

/// A device reading and writing by DMA address, as hardware behind the IOMMU would: every
/// access is translated through the domain's page table and checked against the mapping's
/// permissions, granule by granule. A page that is one of the device's bounce buffers is
/// reached through the domain's bounce allocator, any other page through `memory`, the memory
/// the device can see (given separately: a domain need not have bounce buffers at all).
///
/// ```
/// use dma_iommu::test_util::SimulatedDevice;
/// use dma_iommu::{DeviceConfig, Direction, DmaError, Domain, DomainConfig, NoTlb};
/// use swiotlb_core::{OrigMemory, RegionMemory};
/// let mem = RegionMemory::new(1 << 16);
/// let buf = mem.base() + 0x1000;
/// let dom = Domain::new(DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(), NoTlb, None).unwrap();
/// let dev = dom.attach(DeviceConfig::default()).unwrap();
/// let nic = SimulatedDevice::new(&dom, &dev, &mem);
/// let rx = dom.map(&dev, buf, 0x1000, Direction::FromDevice).unwrap();
/// nic.write(rx, b"pkt").unwrap();
/// let mut seen = [0u8; 3];
/// mem.read(buf, &mut seen).unwrap();
/// assert_eq!(&seen, b"pkt");
/// // A to-device mapping is read-only for the device, and an unmapped address faults.
/// let tx = dom.map(&dev, buf + 0x1000, 0x1000, Direction::ToDevice).unwrap();
/// assert_eq!(nic.write(tx, b"x"), Err(DmaError::Fault { dma: tx }));
/// dom.unmap(&dev, rx, 0x1000, Direction::FromDevice).unwrap();
/// assert_eq!(nic.write(rx, b"late"), Err(DmaError::Fault { dma: rx }));
/// ```
pub struct SimulatedDevice<'a, T: TlbOps + 'static> {
    domain: &'a Domain<T>,
    device: &'a Device,
    memory: &'a dyn OrigMemory,
}

impl<'a, T: TlbOps + 'static> SimulatedDevice<'a, T> {
    /// `device`, attached to `domain`, whose non-bounced pages live in `memory`.
    pub fn new(domain: &'a Domain<T>, device: &'a Device, memory: &'a dyn OrigMemory) -> Self {
        Self {
            domain,
            device,
            memory,
        }
    }

    /// Read `buf.len()` bytes at `dma`; [`DmaError::Fault`] at the first byte the device may
    /// not read (unmapped, or a mapping that does not permit reads).
    pub fn read(&self, dma: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.access(dma, buf.len(), Prot::READ, |phys, bounce, range| {
            let piece = &mut buf[range];
            match bounce {
                Some((pool, bdev)) => Ok(pool.read_bounce(bdev, phys, piece)?),
                None => self
                    .memory
                    .read(phys, piece)
                    .map_err(|_| DmaError::Fault { dma }),
            }
        })
    }

    /// Write `data` at `dma`; [`DmaError::Fault`] at the first byte the device may not write.
    pub fn write(&self, dma: u64, data: &[u8]) -> Result<(), DmaError> {
        self.access(dma, data.len(), Prot::WRITE, |phys, bounce, range| {
            let piece = &data[range];
            match bounce {
                Some((pool, bdev)) => Ok(pool.write_bounce(bdev, phys, piece)?),
                None => self
                    .memory
                    .write(phys, piece)
                    .map_err(|_| DmaError::Fault { dma }),
            }
        })
    }

    /// Split `[dma, dma + len)` at granule boundaries, translate each piece (checking `need`)
    /// and hand `access` its physical address, the bounce pool if it is one of the device's
    /// bounce buffers, and its range in the caller's buffer.
    fn access(
        &self,
        dma: u64,
        len: usize,
        need: Prot,
        mut access: impl FnMut(
            u64,
            Option<(&swiotlb_core::Swiotlb, &swiotlb_core::Device)>,
            std::ops::Range<usize>,
        ) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        self.domain.check_device(self.device)?;
        let granule = self.domain.granule();
        let bounce = self
            .domain
            .swiotlb()
            .zip(self.device.inner.bounce_dev.as_ref());
        let mut done = 0usize;
        while done < len {
            let at = dma.checked_add(done as u64).ok_or(DmaError::Overflow)?;
            let (phys, prot) = self
                .domain
                .translation(at)
                .ok_or(DmaError::Fault { dma: at })?;
            if !prot.contains(need) {
                return Err(DmaError::Fault { dma: at });
            }
            let room = (granule - (at & (granule - 1))) as usize;
            let n = room.min(len - done);
            let pool = bounce.filter(|(pool, bdev)| pool.is_bounce_buffer(bdev, phys));
            access(phys, pool, done..done + n)?;
            done += n;
        }
        Ok(())
    }
}
