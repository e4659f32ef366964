//! The per-I/O allocation bounce peer: a fresh buffer allocated, filled and freed on every map,
//! as Firecracker's swiotlb-less path, COCONUT-SVSM's one-page `share()` and Asterinas' TDX
//! `DmaStream::map` do.

use std::hint::black_box;

/// Bounce `src` to the device: allocate a fresh buffer, copy in, let the device read it
/// (`device_ns` of spinning, e.g. a share/unshare hypercall), free.
///
/// ```
/// dma_bench::peers::bounce::fresh_to_device(&[1u8; 512], 0);
/// ```
pub fn fresh_to_device(src: &[u8], device_ns: u64) {
    let mut buf = Vec::with_capacity(src.len());
    buf.extend_from_slice(src);
    black_box(&mut buf);
    crate::harness::spin_for(device_ns);
}

/// Bounce from the device into `dst`: allocate a zeroed buffer (nothing of the previous owner
/// may leak to the device), let the device write it, copy out, free.
///
/// ```
/// let mut dst = [0u8; 512];
/// dma_bench::peers::bounce::fresh_from_device(&mut dst, 0);
/// ```
pub fn fresh_from_device(dst: &mut [u8], device_ns: u64) {
    let buf = vec![0u8; dst.len()];
    crate::harness::spin_for(device_ns);
    dst.copy_from_slice(black_box(&buf));
}
