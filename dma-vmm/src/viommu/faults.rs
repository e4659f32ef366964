//! Fault reporting (virtio 1.2, "Device Types / IOMMU Device / Device operations / Fault
//! reporting"): device accesses that fault are recorded for the event queue.
//!
//! A device thread whose access faults (an unmapped or read-only IOVA, a reserved region, an
//! endpoint attached to no domain) appends a [`FaultRecord`] to its vIOMMU's bounded
//! [`FaultLog`]; the VMM's event-queue handler takes them with `Viommu::fault_event` and
//! writes them into the driver's event buffers. When the log is full the record is dropped
//! and counted (the specification lets the device drop an event when no buffer is
//! available). Only the fault path takes the log's lock: translations that succeed never
//! touch it, and the control path never holds it while waiting for a grace period.

use crate::translate::Fault;
use dma_sync::Mutex;
use io_pgtable::Prot;
use std::collections::VecDeque;

/// `VIRTIO_IOMMU_FAULT_F_READ`: the faulting access was a read.
pub const FAULT_F_READ: u32 = 1 << 0;
/// `VIRTIO_IOMMU_FAULT_F_WRITE`: the faulting access was a write.
pub const FAULT_F_WRITE: u32 = 1 << 1;
/// `VIRTIO_IOMMU_FAULT_F_ADDRESS`: `address` is valid.
pub const FAULT_F_ADDRESS: u32 = 1 << 8;

/// `VIRTIO_IOMMU_FAULT_R_*`: why an access faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum FaultReason {
    /// `R_UNKNOWN`: an internal error, or none of the others.
    Unknown = 0,
    /// `R_DOMAIN`: the endpoint is attached to no domain and not in bypass mode (wherever it
    /// accessed, its reserved regions included).
    Domain = 1,
    /// `R_MAPPING`: the address is not mapped, or not with the access's permissions; also a
    /// reserved region reached by an attached endpoint or one in bypass mode (whose identity
    /// translation leaves the regions out).
    Mapping = 2,
}

/// One fault report (`struct virtio_iommu_fault`, without its reserved fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FaultRecord {
    /// Why the access faulted.
    pub reason: FaultReason,
    /// `FAULT_F_READ`, `FAULT_F_WRITE`, and `FAULT_F_ADDRESS` when `address` is valid.
    pub flags: u32,
    /// The endpoint that faulted.
    pub endpoint: u32,
    /// The faulting IOVA (0 without `FAULT_F_ADDRESS`).
    pub address: u64,
}

impl FaultRecord {
    /// The report of `fault`, met by `endpoint` on an access needing `access`. An endpoint
    /// attached to no domain faults as a whole: its report carries no address.
    pub fn new(endpoint: u32, fault: &Fault, access: Prot) -> FaultRecord {
        let mut flags = 0;
        if access.contains(Prot::READ) {
            flags |= FAULT_F_READ;
        }
        if access.contains(Prot::WRITE) {
            flags |= FAULT_F_WRITE;
        }
        let (reason, address) = match *fault {
            Fault::Detached => (FaultReason::Domain, None),
            Fault::Unmapped { iova }
            | Fault::Denied { iova, .. }
            | Fault::Reserved { iova }
            | Fault::Overflow { iova, .. } => (FaultReason::Mapping, Some(iova)),
        };
        if address.is_some() {
            flags |= FAULT_F_ADDRESS;
        }
        FaultRecord {
            reason,
            flags,
            endpoint,
            address: address.unwrap_or(0),
        }
    }
}

/// Fault records waiting for the event queue, at most `capacity` of them.
#[derive(Debug)]
pub struct FaultLog {
    capacity: usize,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    pending: VecDeque<FaultRecord>,
    dropped: u64,
}

impl FaultLog {
    /// An empty log holding up to `capacity` records (allocated as they come).
    pub fn new(capacity: usize) -> FaultLog {
        FaultLog {
            capacity,
            state: Mutex::new(LogState::default()),
        }
    }

    /// Append `record`, or count it as dropped if the log is full.
    pub fn push(&self, record: FaultRecord) {
        let mut s = self.state.lock();
        if s.pending.len() < self.capacity {
            s.pending.push_back(record);
        } else {
            s.dropped += 1;
        }
    }

    /// The oldest pending record.
    pub fn pop(&self) -> Option<FaultRecord> {
        self.state.lock().pending.pop_front()
    }

    /// Records dropped because the log was full or an event buffer too small, or discarded by
    /// a device reset.
    pub fn dropped(&self) -> u64 {
        self.state.lock().dropped
    }

    /// Count one more dropped record.
    pub fn drop_one(&self) {
        self.state.lock().dropped += 1;
    }

    /// Discard every pending record, counting them as dropped.
    pub fn discard_pending(&self) {
        let mut s = self.state.lock();
        s.dropped += s.pending.len() as u64;
        s.pending.clear();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn records_follow_the_fault_and_the_access() {
        let r = FaultRecord::new(7, &Fault::Unmapped { iova: 0x1000 }, Prot::READ);
        assert_eq!(
            r,
            FaultRecord {
                reason: FaultReason::Mapping,
                flags: FAULT_F_READ | FAULT_F_ADDRESS,
                endpoint: 7,
                address: 0x1000
            }
        );
        let r = FaultRecord::new(7, &Fault::Detached, Prot::READ | Prot::WRITE);
        assert_eq!(
            (r.reason, r.flags, r.address),
            (FaultReason::Domain, FAULT_F_READ | FAULT_F_WRITE, 0)
        );
        let denied = Fault::Denied {
            iova: 0x2000,
            access: Prot::WRITE,
            prot: Prot::READ,
        };
        let r = FaultRecord::new(1, &denied, Prot::WRITE);
        assert_eq!(r.flags, FAULT_F_WRITE | FAULT_F_ADDRESS);
    }

    #[test]
    fn a_full_log_drops_and_counts() {
        let log = FaultLog::new(2);
        for iova in 0..5 {
            log.push(FaultRecord::new(1, &Fault::Unmapped { iova }, Prot::READ));
        }
        assert_eq!(log.dropped(), 3);
        assert_eq!(log.pop().map(|r| r.address), Some(0));
        assert_eq!(log.pop().map(|r| r.address), Some(1));
        assert_eq!(log.pop(), None);
        log.drop_one();
        assert_eq!(log.dropped(), 4);
        for iova in 0..2 {
            log.push(FaultRecord::new(1, &Fault::Unmapped { iova }, Prot::READ));
        }
        log.discard_pending();
        assert_eq!((log.pop(), log.dropped()), (None, 6));
    }
}
