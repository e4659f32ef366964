//! The mutation points of dma-vmm: the device-side read section and the unmap grace period.
//!
//! A device access (translate, then copy) runs inside one RCU read section; an unmap or detach
//! clears the translation, then waits for a grace period before it returns to the guest. The
//! two points below are the two halves of that quiescence protocol; the wait itself is
//! `dma_sync::rcu::synchronize`, whose orderings are dma-sync's points.
//!
//! # Points and their twins
//!
//! | Point | Kind | Twins | Failure when weakened |
//! |---|---|---|---|
//! | `vmm.device.pin` | Pin | `device_unpinned`, `vmm_unpinned_device_races_reuse` | the grace period covers only the walk: the device reads a page after its UNMAP completed |
//! | `vmm.unmap.grace` | GracePeriod | `unmap_without_grace`, `bypass_off_without_grace` | UNMAP replies, or the driver's write of bypass = 0 returns, while the device still copies through the old translation |
//!
//! The wait's own orderings are dma-sync's `rcu.synchronize.done.release` / `.acquire`, killed
//! here by `vmm_relaxed_done_store_races_device` and `vmm_relaxed_done_load_races_device` (and in
//! the RCU shim's own models).
//!
//! # Loom models
//!
//! `loom-tests/tests/loom/vmm_models.rs` and `vmm_quiesce_models.rs`, the real `Viommu` on
//! `Config::tiny(2)`:
//!
//! * `unmap_vs_access`, `detach_vs_access`, `bypass_off_vs_access` and
//!   `attach_from_bypass_vs_access`: a device thread translates and reads a guest page inside one
//!   access while the guest UNMAPs (DETACHes; turns the config field `bypass` off, or ATTACHes an
//!   endpoint in bypass mode to an empty domain) and reuses the page (a Relaxed store: only the
//!   grace period's happens-before edge keeps the device from reading it). Two threads, one
//!   operation each; 3 preemptions (the device stopped between pin and walk and between walk and
//!   read, the guest between its clear and its wait; the wait loop makes exhaustive exploration
//!   unbounded), `unmap_vs_access` 4 (also the device stopped while the guest's wait runs).
//!   Both outcomes (served, faulted) must occur, so the models are not vacuous. A
//!   faulting access also takes the fault log's mutex, so the models cover the fault path next
//!   to the grace period. `attach_from_bypass_vs_access` found that an ATTACH taking an endpoint
//!   out of bypass mode returned without a grace period (only a move between domains waited).
//!   Twins at 2 preemptions (the device stopped between its translation and its read).
//! * `batched_unmap_vs_access` (the UNMAP followed by a PROBE in one `handle_batch`, whose one
//!   grace period must cover every request, not only the last) and `reset_vs_access` (a device
//!   reset): the same shape, 3 preemptions.
//! * `two_accesses`: the device does two accesses, the guest one UNMAP and a non-atomic write of
//!   the page (loom checks happens-before, not values). The device's second access pins and
//!   unpins after its first ended, so the grace period can complete on the device's thread and
//!   the guest learns it only through the done flag. The UNMAP's leaf table stays (a
//!   neighbouring mapping): 5 preemptions, the twins 3 (the pin twin 2).
//!   `two_accesses_table_pruned`, the same with the table freed by the UNMAP (`prune` of the gap
//!   it opens): 3 preemptions (4 cost 119 s of CPU).
//! * `loom-tests/tests/production_rcu.rs` (`--cfg production_rcu`): `unmap_vs_access` on the
//!   production epoch RCU itself.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p loom-tests
//! --test loom vmm`.

dma_sync::mutation_points! {
    /// A device access pins one RCU read section across translate *and* copy (weakened: the
    /// section protects nothing, so an unmap can return while the copy still runs).
    DEVICE_PIN: Pin = "vmm.device.pin";
    /// Unmap and detach wait for a grace period after clearing translations, before they
    /// return (weakened: they return at once, while a device may still use an old translation).
    UNMAP_GRACE: GracePeriod = "vmm.unmap.grace";
}
