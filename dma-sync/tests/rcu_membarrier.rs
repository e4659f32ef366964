//! The epoch RCU in its default mode: membarrier when the kernel offers it.
#![cfg(not(loom))]

mod rcu_common;

#[test]
fn mode_is_decided_at_first_pin() {
    drop(dma_sync::rcu::pin());
    eprintln!("membarrier: {}", dma_sync::rcu::uses_membarrier());
}

#[test]
fn readers_never_see_a_freed_object() {
    rcu_common::stress(3, 2, 100_000);
}

#[test]
fn a_pinned_reader_holds_back_frees() {
    rcu_common::pinned_reader_holds_back_frees();
}

#[test]
fn exiting_threads_leave_no_garbage() {
    rcu_common::exiting_threads_leave_no_garbage();
}
