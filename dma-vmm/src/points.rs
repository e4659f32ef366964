//! The mutation points of dma-vmm: the device-side read section and the unmap grace period.
//!
//! A device access (translate, then copy) runs inside one RCU read section; an unmap or detach
//! clears the translation, then waits for a grace period before it returns to the guest. The
//! two points below are the two halves of that quiescence protocol; the wait itself is
//! `dma_sync::rcu::synchronize`, whose orderings are dma-sync's points.

dma_sync::mutation_points! {
    /// A device access pins one RCU read section across translate *and* copy (weakened: the
    /// section protects nothing, so an unmap can return while the copy still runs).
    DEVICE_PIN: Pin = "vmm.device.pin";
    /// Unmap and detach wait for a grace period after clearing translations, before they
    /// return (weakened: they return at once, while a device may still use an old translation).
    UNMAP_GRACE: GracePeriod = "vmm.unmap.grace";
}
