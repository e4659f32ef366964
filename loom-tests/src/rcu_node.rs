//! The node the RCU models publish, read and retire: a non-atomic payload and an atomic copy,
//! both written before publication and poisoned by the free, so loom reports a reader racing
//! either the initialisation or the free.

use dma_sync::atomic::{AtomicU64, Ordering::Relaxed, Poison};
use dma_sync::rcu::{self, Retire};
use dma_sync::UnsafeCell;

/// What a freed node reads as.
pub const POISON: u64 = u64::MAX;

/// A published node whose payload is written after allocation and before publication, so loom
/// tracks both the initialisation and the poisoning free of the payload.
pub struct Node {
    /// Non-atomic payload: any read not ordered after its write (or before its free) races.
    payload: UnsafeCell<u64>,
    /// Atomic copy of the payload, poisoned through `Poison` like a free path would.
    check: AtomicU64,
}

// SAFETY: the payload is written once before publication (Release/Acquire orders it) and
// then only read, until the RCU free takes exclusive ownership.
unsafe impl Sync for Node {}

impl Node {
    /// A new node through `rcu::boxed`, so it may reuse a freed node's address.
    pub fn build(value: u64) -> *mut Node {
        let node = rcu::boxed(Node {
            payload: UnsafeCell::new(0),
            check: AtomicU64::new(0),
        });
        // SAFETY: the node is not shared yet.
        node.payload.with_mut(|p| unsafe { *p = value });
        node.check.store(value, Relaxed);
        Box::into_raw(node)
    }

    /// Read the node as a reader does: both copies, which must agree and not be poison.
    pub fn read(&self) -> u64 {
        // SAFETY: the caller holds an RCU guard under which it loaded the node.
        let v = self.payload.with(|p| unsafe { *p });
        assert_eq!(v, self.check.load(Relaxed), "torn node");
        assert_ne!(v, POISON, "reader saw a freed node");
        v
    }
}

impl Retire for Node {
    fn poison(&mut self) {
        // SAFETY: `poison` runs with exclusive ownership of the retired node.
        self.payload.with_mut(|p| unsafe { *p = POISON });
        self.check.poison(POISON);
    }
}
