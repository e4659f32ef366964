//! The lists in the docs that are derived from code are written by hand; these tests keep them
//! equal to the code. They read the sources (no build of the fuzz crate, no nightly, no Miri)
//! and fail naming the file, the list and what differs:
//!
//! * `fault_sites`: the fault sites of DESIGN.md "Fault injection", of the "Fuzz targets"
//!   table, of the soak and of dma-iommu's table of sites reached through a domain; every site
//!   armed by its crate's tests and by a fuzz checker;
//! * `fuzz_targets`: the fuzz targets of `fuzz/Cargo.toml`, `fuzz/fuzz_targets/`, the "Fuzz
//!   targets" table, the stable replay and `scripts/fuzz`; the seeds the docs name;
//! * `miri`: the crates `scripts/miri` runs and the tests they keep from Miri, as DESIGN.md
//!   "Miri coverage" lists them;
//! * `layout`: README's tour of the crates and the stages of `scripts/test-all`, DESIGN.md's
//!   lists of the loom model modules and of the bad-input tables;
//! * `paths`: every source file and script README.md and DESIGN.md name exists.
#![cfg(not(loom))]

mod docs;
mod fault_sites;
mod fuzz_targets;
mod layout;
mod miri;
mod paths;
