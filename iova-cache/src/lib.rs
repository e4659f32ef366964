//! I/O virtual address allocation with per-CPU magazine caches.
//!
//! The user-space equal of Linux `iova.c`: a top-down range allocator over a granule, fronted
//! by per-CPU `loaded`/`prev` magazines and a trimmed depot, limit-aware and never hoarding.

pub mod points;
