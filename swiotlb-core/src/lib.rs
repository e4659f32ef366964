//! Bounce buffers for devices with a limited or untrusted view of memory.
//!
//! The user-space equal of Linux swiotlb with dynamic pools: 2 KiB slots in 128-slot segments,
//! per-CPU areas with their own locks, every alignment rule of the kernel, bounce copies by
//! direction with partial sync, pools grown in the background, transient pools, a per-device
//! "uses bounce buffers" flag and a lock-free, RCU-published pool list.

pub mod points;
