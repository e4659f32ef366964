//! The mutation points of this crate: every ordering that matters, by name.
//!
//! Each has a must-fail twin in the loom suite (`io_pgtable_models`).
//!
//! # Points and their twins
//!
//! | Point | Kind | Twin | Model |
//! |---|---|---|---|
//! | `pgtable.install.release` | Rmw | `pgtable_install_relaxed` | `install_race` |
//! | `pgtable.descent.acquire` | Load | `pgtable_descent_relaxed`, `pgtable_four_level_descent_relaxed` | `install_race`, `four_level_install_race` |
//! | `pgtable.walk.acquire` | Load | `pgtable_walk_relaxed`, `pgtable_inlined_walk_relaxed` | `install_race`, `four_level_install_under_reader` |
//! | `pgtable.reader.pin` | Pin | `pgtable_reader_unpinned`, `pgtable_reader_unpinned_dump`, `pgtable_reader_unpinned_subtree` | `unmap_frees_level_under_readers`, `unmap_frees_level_under_dump`, `unmap_frees_subtree_under_dump` |
//! | `pgtable.free.order` | Step | `pgtable_free_before_unlink`, `pgtable_block_free_before_unlink` (retire while linked, unlink after the grace period) | `unmap_frees_level_under_readers`, `block_replaces_empty_table_under_readers` |
//! | `pgtable.claim` | Step | `pgtable_claim_load_then_store` (a load, then a plain store: the code before claiming), `pgtable_claim_load_then_store_maps` | `racing_unmaps_of_one_table`, `two_page_map_loses_and_withdraws` |
//! | `pgtable.retire.rcu` | Step | `pgtable_retire_bypasses_rcu` (released to the slab at once: every table is tracked by the loom RCU's reader check, so the release races a walker's dereference), `pgtable_retire_bypasses_rcu_translation` (the same against a translation alone) | `unmap_frees_level_under_readers`, `unmap_frees_level_under_translation` |
//! | `pgtable.take.release` | Rmw | `pgtable_take_unreleased` (acquire only; fails with loom's "maximum number of branches": the restarting map reads the stale link forever) | `block_map_races_table_unmap` |
//!
//! The claim twin fails with "a table level claimed twice": under loom the owner's swap checks
//! it never finds `DEAD` (only an owner writes it, and a table has one owner), which reports the
//! second owner before anything is retired twice. The other twins fail with a causality
//! violation (reading an atomic whose initialisation or poisoning is not ordered with the read);
//! the two free-order twins may instead meet an invalid descriptor in a walk (a poisoned,
//! freed table).
//!
//! # Loom models
//!
//! `loom-tests/tests/loom/io_pgtable_models.rs`, real code on `Config::tiny` (but one):
//!
//! * `install_race`: two mappers install the same level-3 table; main translates. Exhaustive.
//! * `four_level_install_under_reader`: on `Config::s1_4k(48)`, the format whose walk a held
//!   `Reader` runs inline (the tiny granule's goes through the walk's call): a mapper installs
//!   the three tables below the root while main translates through a reader. Exhaustive.
//! * `four_level_install_race`: `install_race` on `Config::s1_4k(48)`, whose writers descend
//!   with the layout as constants (`levels.rs`): two mappers install the same three tables.
//!   `Preemptions(3)`.
//! * `neighbours_in_one_table`: map page 0 while unmapping page 1, the only page of a shared
//!   leaf table; main translates. Exhaustive.
//! * `unmap_frees_level_under_readers`: an unmap frees a level-3 table while a dump walks and
//!   main translates. `Preemptions(3)`: a reader needs one switch between loading a
//!   descriptor and using the table, the unmapper one to run claim, take, grace period and free
//!   in that window, one spare (since the unmap swaps every entry it takes to `DEAD`, exhaustive
//!   exploration runs for many minutes). The readers share only the grace period, so their
//!   longer schedules are explored one reader at a time: `unmap_frees_level_under_dump`, the
//!   unmap against the dump alone, `Preemptions(5)` (the translation's is
//!   `unmap_frees_level_under_translation`); `unmap_frees_subtree_under_dump` and
//!   `unmap_frees_subtree_under_translation`, the same on three levels (a two-table subtree),
//!   `Preemptions(4)` and `Preemptions(6)`.
//! * `unmap_frees_level_under_translation`: the same unmap against a translation alone (both
//!   parties spawned), so the bypass twin shows the translation's own table reads reach the
//!   loom RCU's reader check. Exhaustive.
//! * `block_replaces_empty_table_under_readers`: a block map replaces an emptied level-3 table
//!   (unlink, walk flush, RCU free, block) under a dump and a translation. `Preemptions(3)`.
//! * `racing_unmaps_of_one_table`: two unmaps of the 16 KiB top entry linking a level-3 table,
//!   main translating: exactly one `Ok`, the other `NotMapped`, one table retired.
//! * `map_races_table_unmap`: a page map into the level-3 table races the unmap of its whole
//!   entry; the page is mapped afterwards iff it landed after the unmap, nothing leaks.
//!   `map_races_subtree_unmap` is the same on three levels, where the map must install a
//!   level-3 table into the level-2 table the unmap takes: a stale install would leak (the
//!   accounting check catches it); the owner's `DEAD` swaps make the map restart instead.
//! * `block_map_races_page_map`: a block map over an emptied level-3 table races a page map in
//!   it: exactly one succeeds; the table is retired iff the block won.
//! * `two_page_map_loses_and_withdraws`: a map of two pages races a map of the second: exactly
//!   one gets it, and a two-page map that loses it after writing the first withdraws that
//!   page. Exhaustive.
//! * `block_map_races_table_unmap`: a block map over an emptied level-3 table races an unmap of
//!   its entry: one table retired, the block map always succeeds (restarting when the unmap took
//!   the table from under its freeze), the unmap always takes the table or the block (one that
//!   meets the entry reserved waits for the outcome).
//! * `prune_races_page_map`: `PageTable::prune` of the span of an emptied level-3 table races a
//!   page map in it: the map always succeeds and its page stays; the old table is retired iff
//!   the prune froze it before the page landed. `Preemptions(3)`.
//! * `prune_races_subtree_unmap`: three levels; a prune of a top entry's span (an emptied
//!   level-2 table over an emptied level-3 table) races an unmap of the same span. An unmap
//!   that claims the entry first meets the prune's `FROZEN` where the level-3 link was, so the
//!   prune's thaw takes that table back: both tables retired once, whoever wins (a lost claim
//!   that skipped the thaw leaked the level-3 table). `Preemptions(3)`.
//! * `page_maps_race_refused_block_map`: a block map races a thread mapping two pages under it,
//!   so its freeze may reserve the second page's slot, then meet the first page and thaw:
//!   either the block or the pages win, never a page map refused by a reservation alone.
//! * `block_map_races_page_install`: a block map races a page map under an *empty* top entry,
//!   so the page map installs the level-3 table while the block map checks its slot, re-reads
//!   it in `place` or loses its claim from 0 to the install: each then reads the new table's
//!   entries through the link it loaded. Exactly one map wins; the page map's table is
//!   discarded, linked or retired accordingly. `Preemptions(3)`.
//! * `block_map_races_install_below`: the same one level higher (`Config::tiny(3)`): a 64 KiB
//!   block over a level-2 table emptied in the setup races a page map that installs a level-3
//!   table in it, which the block map's `subtree_empty` and freeze (its load, or its lost
//!   claim of an empty entry) descend into. `Preemptions(3)`.
//! * `page_install_races_page_unmap`: a page map installing the level-3 table races an unmap of
//!   the same page, which descends through the new link: the page is unmapped, or
//!   `NotMapped` and it stays. Exhaustive. `page_install_races_table_unmap`: the same map
//!   races an unmap of the whole top entry, which finds it empty or claims the new link and
//!   takes the table (the map restarting into a second table if it had not placed its page).
//!   `Preemptions(3)`.
//! * `install_race_under_dump`: one mapper installs the level-3 table while the debug walk
//!   reads (the install race itself is `install_race`'s). Exhaustive.
//!
//! These five are the models in which a table a writer or the walk reaches was installed by a
//! racing thread, not built before the threads start: they kill the one-site relaxations of
//! `pgtable.descent.acquire` and `pgtable.walk.acquire` that `scripts/mutants` generates
//! (DESIGN.md, "Mutation testing outside the registry"). The unmap's load of its target entry
//! and the claim's acquire on success each order the take of a new table alone; relaxing both
//! fails `page_install_races_table_unmap`.
//!
//! The racing models use `Preemptions(3)`: a loser needs one switch between reading an entry and
//! claiming it, the winner one to claim, take and retire in that window, and the third lets the
//! translator (or the freeze) interleave; exhaustive exploration of the first takes about 7
//! minutes and finds nothing more. The twins use `Preemptions(2)`, each injected bug needing
//! exactly the two switches above, except the claim twin (`Preemptions(1)`: one switch between
//! the two unmaps' load and store) and the take twin (`Preemptions(3)`, its model's bound).
//!
//! # The production RCU under loom
//!
//! `loom-tests/tests/production_rcu.rs` runs the level free on the production reclamation
//! itself, dma-sync's epoch RCU under `--cfg loom --cfg production_rcu`: unlink, retire, two
//! forced epoch advances (`flush` twice: a bag is freed two epochs after it is sealed, so fewer
//! flushes could never expose a reader bug), bound `Preemptions(3)`; its twin weakens the
//! walker's pin (`pgtable.reader.pin`) and must fail with a causality violation.

dma_sync::mutation_points! {
    /// Success ordering of the compare-and-swap that installs a new table: releases the
    /// table's zeroed initialisation to every thread that later acquires the descriptor.
    INSTALL_RELEASE: Rmw = "pgtable.install.release";
    /// A writer's acquire on the descriptors it descends through (its loads, and the
    /// failure ordering of the install CAS): the winner's zeroed table is visible before the
    /// loser writes leaves into it.
    DESCENT_ACQUIRE: Load = "pgtable.descent.acquire";
    /// A reader's (translation, debug walk) acquire on the descriptors it follows, pairing
    /// with the install release.
    WALK_ACQUIRE: Load = "pgtable.walk.acquire";
    /// A reader's RCU pin around one whole walk: tables it reaches are not freed before it
    /// unpins.
    READER_PIN: Pin = "pgtable.reader.pin";
    /// Freeing a table level in the order unlink, flush the walk cache, then hand to RCU
    /// (weakened: the table is retired first and unlinked only after the grace period).
    FREE_ORDER: Step = "pgtable.free.order";
    /// Claiming a descriptor by compare-and-swap before unmapping its leaf, taking its table
    /// or writing a leaf into it (weakened: the load, then a plain store, that let two racing
    /// unmaps both take one table and retire it twice).
    CLAIM: Step = "pgtable.claim";
    /// Release on the owner's swaps of a taken table's entries to `DEAD`: a map that finds
    /// `DEAD` and restarts from the root then sees the unlink that preceded it (weakened: it
    /// may keep reading the stale link, find `DEAD` again and restart forever).
    TAKE_RELEASE: Rmw = "pgtable.take.release";
    /// Unlinked tables go back to the slab only through RCU, after a grace period (weakened:
    /// released at once, as a free that bypasses RCU).
    RETIRE_RCU: Step = "pgtable.retire.rcu";
}
