//! A lock-free ARM LPAE (VMSAv8-64 long-descriptor) I/O page table.
//!
//! The page table a vIOMMU emulation or a user-space IOMMU stack maps into, and that device
//! threads translate through on every access. Table levels are installed with a release
//! compare-and-swap and freed through RCU, so lock-free readers — [`PageTable::iova_to_phys`],
//! [`PageTable::reader`], [`PageTable::dump`] — never touch freed memory, even while unmaps
//! remove the tables they are walking (Linux's debugfs walkers race with table frees).
//! Writers claim entries by compare-and-swap and never lock; the one wait is a map or unmap
//! that meets an entry a racing block map has reserved, which waits for that block map's
//! few steps (see the concurrency contract below).
//!
//! # API
//!
//! | Item | What |
//! |---|---|
//! | [`PageTable::new`]`(Config)`, [`PageTable::with_tlb`]`(Config, T: TlbOps)` | build; `Config::{s1_4k, tiny}` for common shapes |
//! | [`PageTable::map_pages`]`(iova, paddr, pgsize, pgcount, prot) -> Result<usize, Error>` | bytes mapped, at most one leaf table per call |
//! | [`PageTable::unmap_pages`]`(iova, pgsize, pgcount, &mut Gather) -> Result<usize, Error>` | bytes unmapped; errors are never sizes |
//! | [`PageTable::map`]`(iova, paddr, size, prot) -> Result<(), Error>` | largest page sizes alignment allows; undoes partial progress |
//! | [`PageTable::unmap`]`(iova, size) -> Result<u64, Error>`, [`PageTable::unmap_with`] | looping unmap (syncing its own gather / into yours) |
//! | [`PageTable::leaves`]`(iova, paddr, size)`, [`PageTable::tables_to_install`]`(iova, paddr, size) -> Result<u64, Error>` | what a `map` will cost, before it is made (for a caller mapping for someone else) |
//! | [`PageTable::prune`]`(iova, size) -> Result<(), Error>` | free the tables inside a range that map nothing (unmaps leave them linked) |
//! | [`PageTable::iova_to_phys`]`(iova) -> Option<Translation>` | one pinned translation: [`Translation::paddr`], `prot`, `level`, `size`, `desc` |
//! | [`PageTable::reader`]`() -> Reader` | a held pin: [`Reader::translate`], [`Reader::walk`], [`Reader::dump`] |
//! | [`PageTable::dump`]`() -> Dump` | every valid descriptor, hardware bits, `Display`able, serde with feature `serde` |
//! | [`TlbOps`] (flush_all, flush_walk, sync, add_page), [`Gather`], [`NoTlb`] | TLB maintenance |
//! | [`PageTable::stats`]`() -> Stats` | tables allocated / discarded / retired / freed |
//! | [`faults::TABLE_ALLOC`] | the table-allocation site a test can make fail (feature `fault-injection`) |
//!
//! ```
//! use io_pgtable::{Config, Gather, PageTable, Prot};
//!
//! let pt = PageTable::new(Config::s1_4k(48)).unwrap();
//! assert_eq!(pt.map_pages(0x1000, 0x8000_1000, 0x1000, 2, Prot::READ | Prot::WRITE), Ok(0x2000));
//! let t = pt.iova_to_phys(0x1234).unwrap();
//! assert_eq!(t.paddr(), 0x8000_1234);
//! let mut gather = Gather::new();
//! assert_eq!(pt.unmap_pages(0x1000, 0x1000, 2, &mut gather), Ok(0x2000));
//! gather.sync(pt.tlb());
//! assert!(pt.iova_to_phys(0x1234).is_none());
//! ```
//!
//! # Format
//!
//! 4 KiB, 16 KiB and 64 KiB granules, stage 1 and stage 2, input and output sizes up to 48
//! bits (52 with 64 KiB, `PA[51:48]` packed in bits 15:12), stage-2 concatenated start tables,
//! blocks wherever the granule allows. Tables are real aligned arrays of 64-bit descriptors;
//! a table descriptor carries the table's (process) address as its output address. The
//! [`Granule::Tiny`] configuration (4-entry tables, same descriptors, same code) keeps
//! model-checking and exhaustive tests small.
//!
//! # Concurrency contract
//!
//! Any operations may race on any ranges, overlapping or not; readers may run at any time on
//! any range and see each descriptor before or after a concurrent change. Every change that
//! hands a leaf or a table to one operation is a compare-and-swap on the descriptor holding
//! it (see `claim.rs`), so what racing callers get is:
//!
//! * **Unmaps of overlapping ranges** (pages, or a table's span): each leaf is unmapped and
//!   each table level retired by exactly one of them; the others find the entry empty and
//!   stop there ([`Error::NotMapped`], or a short count from `unmap_pages`).
//! * **Maps of overlapping ranges**: each slot is claimed from empty, so exactly one map of a
//!   slot succeeds and the others get [`Error::Exists`]. A map that loses a slot after
//!   claiming earlier ones withdraws those (unmapped again, their invalidation synced) before
//!   returning the error.
//! * **A map racing an unmap of a table covering it**: the map lands before the unmap claims
//!   the table (and goes with it) or after (in a fresh table); a map still descending
//!   through the torn-down table finds its entries dead and starts again from the root. It
//!   never writes into a retired table.
//! * **A block map replacing a table** freezes the table's subtree entry by entry, then
//!   claims the link: a racing map of a page inside it either lands first (the block map gets
//!   [`Error::Exists`]) or after the block (it gets `Exists`). A racing unmap of the table
//!   takes it first (the block map starts again, on the now empty entry) or takes the block.
//!   A reserved entry is never an answer: whoever meets one backs off and starts again from
//!   the root until the block map has finished or thawed it (a short wait: the block map
//!   itself never waits).
//! * A partial unmap of a block is refused ([`Error::PartialBlock`]): blocks are never split,
//!   so no race splits one.
//!
//! The helpers [`PageTable::map`] and [`PageTable::unmap`] loop over `map_pages`/`unmap_pages`
//! and are not atomic as a whole: a racing caller may see part of their range done. A `map`
//! that fails takes back only the leaves it wrote, so a page another caller mapped in its
//! range meanwhile (after an overlapping unmap) stays.
//!
//! A table level is freed only when an unmap covers its whole span (or a block map replaces
//! it while empty): its link is claimed, its subtree taken, the walk cache flushed through
//! [`TlbOps::flush_walk`], and the subtree handed to RCU, which releases it after every
//! reader that might hold it has unpinned (if the flush unwinds, the subtree is kept until
//! the page table is dropped: see [`TlbOps::flush_walk`]; a drop frees its tables only after
//! [`TlbOps::flush_all`] returned, and leaks them all, counted by [`leaked_tables`], if it
//! unwinds). Tables emptied by smaller unmaps stay linked
//! (another mapper may be descending into them), as in Linux, until [`PageTable::prune`] of a
//! range holding their whole span frees them as a block map frees an empty table (freeze,
//! claim, flush, RCU): a map racing inside the range lands before (the table stays) or after
//! (in a fresh table).
//!
//! # Tests
//!
//! * Unit tests (Miri-sized, in `src/tests.rs` and per module): descriptor encoding bit by bit
//!   per granule, stage and level, the geometry table, block versus page choice, partial block
//!   unmap refused, unmap return values, a table freed when an unmap covers it (walk flush
//!   recorded, counters), a block replacing only an empty table, the stage-2 concatenated start
//!   index, every error variant leaving the table unchanged, `map` undoing partial progress,
//!   gather behaviour, `tables_to_install` equal to the tables each of scattered maps
//!   installs, `prune` of the gaps (or of everything) leaving exactly the tables a fresh table
//!   needs for the mappings left, a small concurrent test. Under Miri the 16K/64K granules are skipped
//!   (their 2048/8192-entry tables are too slow to walk there), and the scattered-range tests
//!   of `tables_to_install` and `prune` run the tiny granule only.
//! * `tests/reference_model.rs`: proptest-made bytes through `dma_soak::diff::pgtable`, the
//!   checker the fuzz target and the soak share, against the `pgtable` reference model of
//!   `dma-model`.
//! * `tests/overlapping.rs`: racing operations on overlapping ranges through safe calls: the
//!   reported double free (two unmaps of one 2 MiB entry holding a level-3 table, 10,000 rounds:
//!   exactly one wins per round, `retired` equals the rounds; it aborted with heap corruption
//!   before claiming), page and table unmaps with a refilling mapper on one table (no page
//!   unmapped more often than mapped), and a block map racing a page map and a table unmap
//!   (exactly one map wins unless the unmap falls between them). Each ends with the table
//!   accounting balanced.
//! * `tests/stress.rs`: four writers (shared tables on interleaved pages, plus spans of their own
//!   whose tables they free) and two readers (held-pin and single translations, dumps); every
//!   translation was issued; at the end reachable == linked tables and freed == discarded +
//!   retired, never more.
//! * `tests/hostile.rs`: a `flush_walk` that panics during a block map's table replacement
//!   leaves the table as it was and later operations there working; one that panics during
//!   an unmap of a table's span keeps the taken tables, retired but not freed (not under a
//!   held reader, nor after the grace period a freed table's neighbour gets: the walk cache may
//!   still hold them) until the page table is dropped; an `add_page` that panics while a map that lost a race
//!   withdraws its leaves leaves none of them mapped; a `map` that fails after another caller
//!   unmapped its first page and mapped its own there leaves that page mapped.
//! * `tests/fault_injection.rs`: see [`faults`]; the loom models (and the production-RCU
//!   binary, `loom-tests/tests/production_rcu.rs`): see [`points`].

mod claim;
mod config;
mod cost;
mod dump;
mod error;
pub mod faults;
mod levels;
mod map;
mod pgtable;
pub mod points;
mod prune;
pub mod pte;
mod slab;
mod table;
mod tlb;
mod translation;
mod unmap;
mod walk;

#[cfg(all(test, not(loom)))]
mod tests;

pub use config::{Config, Geometry, Granule, Stage};
pub use dump::{Dump, WalkEntry};
pub use error::{AddrKind, Error};
pub use pgtable::{leaked_tables, PageTable};
pub use pte::{Descriptor, Prot};
pub use table::Stats;
pub use tlb::{Gather, NoTlb, TlbOps, TlbRange};
pub use translation::Translation;
pub use walk::Reader;
