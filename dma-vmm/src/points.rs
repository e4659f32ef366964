//! The mutation points of dma-vmm: the device-side read section and the unmap grace period.
//!
//! A device access (translate, then copy) runs inside one RCU read section; an unmap or detach
//! clears the translation, then waits for a grace period before it returns to the guest. The
//! two points below are the two halves of that quiescence protocol.

dma_sync::mutation_points! {
    /// A device access pins one RCU read section across translate *and* copy (weakened: the
    /// section protects nothing, so an unmap can return while the copy still runs).
    DEVICE_PIN: Pin = "vmm.device.pin";
    /// Unmap and detach wait for a grace period after clearing translations, before they
    /// return (weakened: they return at once, while a device may still use an old translation).
    UNMAP_GRACE: GracePeriod = "vmm.unmap.grace";
    /// Release store of "grace period over" by whichever thread runs the retired token.
    GRACE_DONE_RELEASE: Store = "vmm.grace.done.release"
        unobservable "under loom the RCU shim runs the grace period synchronously on the waiting thread when its guard drops, so the flag is written and read by one thread; in production crossbeam may run the token on another thread, which is why it is release/acquire";
    /// Acquire load of "grace period over" in the waiting loop; pairs with
    /// `vmm.grace.done.release`.
    GRACE_DONE_ACQUIRE: Load = "vmm.grace.done.acquire"
        unobservable "as vmm.grace.done.release: the loom RCU shim completes the grace period on the waiting thread itself";
}
