//! The epoch RCU in its fallback mode (full fences on both sides, as without membarrier): the
//! whole binary is forced into it before its first pin.
#![cfg(not(loom))]

mod rcu_common;

/// Every test calls this before touching RCU: the first call of the binary decides the mode.
fn fallback() {
    assert!(
        dma_sync::rcu::force_fence_fallback(),
        "a pin ran before the fallback was forced"
    );
    drop(dma_sync::rcu::pin());
    assert!(!dma_sync::rcu::uses_membarrier());
}

#[test]
fn readers_never_see_a_freed_object() {
    fallback();
    rcu_common::stress(3, 2, 100_000);
}

#[test]
fn a_pinned_reader_holds_back_frees() {
    fallback();
    rcu_common::pinned_reader_holds_back_frees();
}

#[test]
fn exiting_threads_leave_no_garbage() {
    fallback();
    rcu_common::exiting_threads_leave_no_garbage();
}
