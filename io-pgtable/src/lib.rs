//! A lock-free ARM LPAE I/O page table.
//!
//! Table levels are installed by compare-and-swap and freed through RCU, so lock-free walkers
//! (translation, debug dumps) never touch freed memory, even while unmaps remove tables.

pub mod points;
