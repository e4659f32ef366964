//! Models of io-pgtable on the real code, with the tiny granule (4-entry tables, two levels:
//! a level-2 top table whose entries span 16 KiB, level-3 tables of 4 KiB pages).
//!
//! * `install_race`: two mappers race to install the same level-3 table while the main
//!   thread translates through it. Kills the install release, the writers' descent acquire
//!   and the readers' walk acquire: without any one of them a thread touches the winner's
//!   table without happening after its zeroed initialisation ("Causality violation").
//! * `four_level_install_under_reader`: the same for the four-level 4 KiB format, whose walk
//!   a held `Reader` runs inline (the other models' tiny granule takes the walk's call): a
//!   mapper installs three tables while a reader translates through them. Kills the walk
//!   acquire.
//! * `four_level_install_race`: `install_race` on the four-level 4 KiB format, whose writers
//!   descend with the layout as constants: two mappers race to install three tables. Kills
//!   the writers' descent acquire there.
//! * `neighbours_in_one_table`: a map and an unmap on neighbouring pages of one shared leaf
//!   table (the unmap empties it for a moment), with a translator; nothing is lost, nothing
//!   freed.
//! * `unmap_frees_level_under_readers`: the seed's debug-walk scenario on the real code. An
//!   unmap removes a whole level-3 table while a debug walk (dump) and a translation run.
//!   Kills the reader's pin (the reader reads the poisoned table) and the order
//!   "unlink, flush walk, defer free" (retiring a still-linked table lets a reader that pins
//!   after the grace period reach it).
//! * `unmap_frees_subtree_under_dump`, `unmap_frees_subtree_under_translation`: the same with
//!   three levels, so one unmap retires a level-2 table and the level-3 table below it
//!   together, against each reader alone.
//! * `unmap_frees_level_under_dump`: the two-level unmap against the debug walk alone, for the
//!   dump's longer schedules (the translation's are `unmap_frees_level_under_translation`'s).
//! * `block_replaces_empty_table_under_readers`: a block map replaces an emptied level-3
//!   table (unlink, walk flush, free, then the block) while a walk and a translation run.
//! * `unmap_frees_level_under_translation`, `unmap_then_remap_under_translation` and
//!   `block_replaces_table_then_remap_under_translation`: two threads, a writer and a
//!   translation alone; in the remap models the writer maps the page again after freeing its
//!   table, so the new level-3 table can be the freed one handed back by the slab.
//! * Every table is known to the loom RCU's reader check from its allocation
//!   (`rcu::track`), and its return to the slab counts as a free (`rcu::released`): a table
//!   released outside RCU while a walker may still reach it is reported, not undefined
//!   behaviour (`pgtable_retire_bypasses_rcu`).
//! * `racing_unmaps_of_one_table`, `map_races_table_unmap`, `map_races_subtree_unmap`,
//!   `block_map_races_page_map`, `block_map_races_table_unmap`,
//!   `page_maps_race_refused_block_map`, `prune_races_page_map`, `prune_races_subtree_unmap`:
//!   operations on overlapping ranges; each entry is
//!   claimed by exactly one (the claim's twin is the load-then-store it replaced), and an
//!   entry a block map reserved is never taken for an answer.
//! * `two_page_map_loses_and_withdraws`: a map of two pages races a map of its second page;
//!   the loser of that slot, if it wrote the first, withdraws it (exhaustive; the claim's
//!   load-then-store twin lets both maps win).
//! * `block_map_races_page_install`, `block_map_races_install_below`,
//!   `page_install_races_page_unmap`, `page_install_races_table_unmap`,
//!   `install_race_under_dump`: the table a writer or the debug walk meets is one a racing map
//!   *just installed* (every model above builds its tables before the threads start, so the
//!   spawn orders them): each acquire on the way to it, one site at a time, is what orders
//!   the table's zeroing before the reads behind the link. They kill the one-site relaxations
//!   of `pgtable.descent.acquire` and `pgtable.walk.acquire` that `scripts/mutants` generates
//!   (map's check of its slots, `place`'s load, `subtree_empty`'s, the claim's failure load,
//!   the freeze's, unmap's descent, the debug walk's) with a causality violation. The unmap's
//!   load of its target entry and the claim's acquire on success order the take of a new
//!   table each on its own; `page_install_races_table_unmap` fails with both relaxed.
//!
//! Bounds: `install_race` and `neighbours_in_one_table` are exhaustive (about 55,000
//! executions; a few dozen), and so are `install_race_under_dump` and
//! `page_install_races_page_unmap`. The models that free tables use `Preemptions(3)` or more:
//! a reader (or a losing writer) needs one switch to stop between loading a descriptor and
//! using it, and the winner one more to run its claim, take, grace period and free inside
//! that window; the third leaves room for the walker or translator.
//! The three-thread models stay at 3 (`unmap_frees_level_under_readers` about 7 s of CPU,
//! the block replacement 10 s; at 4 the first takes 70 s, the other ran past 55 s before it
//! was stopped): three switches stop both readers inside the window (one each) with one left
//! for the unmap, whose grace period waits for both without a preemption. The two readers
//! share nothing but the grace period that waits for them (the shim's scan of several readers
//! is `dma_sync_shim`'s two-reader model), so each reader's longer schedules against the unmap
//! are explored in two-thread models: `unmap_frees_level_under_translation` is exhaustive
//! (17 s), `unmap_frees_level_under_dump` runs at 5 preemptions (9 s; 4 takes 2 s, 6 ran past
//! 24 s), and the three-level unmap (which took 32 s at 3 with both readers) runs against the
//! dump at 4 (12 s) and against the translation at 6 (0.6 s). The remap models run at 6 and 5 preemptions (15 s and 24 s; the block
//! one's writer has three operations): four switches stop the translation after each of its
//! pin, two table reads and unpin, so each falls before, inside or after the writer's free
//! and its reallocation, and the rest stop the writer inside its grace period and between
//! its operations. The must-fail twins use `Preemptions(2)` (the claim twin
//! `Preemptions(1)`: one switch between the two unmaps' load and store): each injected bug
//! needs exactly those two switches, and loom reports it within a few executions.

use dma_sync::mutation::Weakening;
use dma_sync::thread::{spawn, JoinHandle};
use dma_sync::Arc;
use io_pgtable::points::{
    CLAIM, DESCENT_ACQUIRE, FREE_ORDER, INSTALL_RELEASE, READER_PIN, RETIRE_RCU, TAKE_RELEASE,
    WALK_ACQUIRE,
};
use io_pgtable::{Config, Descriptor, Error, Gather, PageTable, Prot};
use loom_tests::harness::{check, Bound};
use loom_tests::must_fail_test;

const RW: Prot = Prot::READ.union(Prot::WRITE);
const PAGE: u64 = 0x1000;
/// Output address of input page `i` in every model.
const fn pa(iova: u64) -> u64 {
    0x10_0000 + iova
}

fn tiny() -> Arc<PageTable> {
    Arc::new(PageTable::new(Config::tiny(2)).expect("tiny config"))
}

/// The tiny table with an empty level-3 table under top entry 1 (its one page mapped and
/// unmapped again): what a 16 KiB block map over that entry replaces.
fn tiny_with_empty_table() -> Arc<PageTable> {
    let pt = tiny();
    map_one(&pt, 0x4000 + PAGE, PAGE);
    assert_eq!(pt.unmap(0x4000 + PAGE, PAGE), Ok(PAGE));
    pt
}

/// Run `f` on a clone of the shared table in a new model thread.
fn spawn_on(pt: &Arc<PageTable>, f: impl FnOnce(&PageTable) + Send + 'static) -> JoinHandle<()> {
    let pt = pt.clone();
    spawn(move || f(&pt))
}

/// Map `size` bytes at `iova` as one page (or block) of that size, to `pa(iova)`.
fn map_one(pt: &PageTable, iova: u64, size: u64) {
    assert_eq!(pt.map_pages(iova, pa(iova), size, 1, RW), Ok(size as usize));
}

/// Unmap the one page (or table's span) of `size` bytes at `iova`.
fn unmap_one(pt: &PageTable, iova: u64, size: u64) {
    let mut g = Gather::new();
    assert_eq!(pt.unmap_pages(iova, size, 1, &mut g), Ok(size as usize));
}

/// A translation is either absent or the one mapped.
fn translated_or_absent(pt: &PageTable, iova: u64) {
    if let Some(t) = pt.iova_to_phys(iova) {
        assert_eq!(
            t.paddr(),
            pa(iova),
            "translation of {iova:#x} was never mapped"
        );
    }
}

/// At quiescence every table not discarded or retired is reachable, and vice versa.
fn accounted(pt: &PageTable) {
    let s = pt.stats();
    assert_eq!(s.linked() as usize, pt.dump().tables, "{s:?}");
}

/// Two mappers install the level-3 table under top entry 0 at once; main translates.
fn install_race() {
    let pt = tiny();
    let mappers: Vec<_> = (0..2u64)
        .map(|i| spawn_on(&pt, move |pt| map_one(pt, i * PAGE, PAGE)))
        .collect();
    translated_or_absent(&pt, PAGE);
    for m in mappers {
        m.join().unwrap();
    }
    for iova in [0, PAGE] {
        assert_eq!(pt.iova_to_phys(iova).map(|t| t.paddr()), Some(pa(iova)));
    }
    let s = pt.stats();
    assert_eq!(
        (s.allocated - s.discarded, s.freed, s.discarded),
        (2, s.discarded, s.discarded.min(1))
    );
    accounted(&pt);
}

/// The four-level 4 KiB format, whose walk a held `Reader` runs inline in its caller: a
/// mapper installs the level-1, -2 and -3 tables of one page into the empty root while the
/// main thread translates that page through a reader.
fn four_level_install_under_reader() {
    let pt = Arc::new(PageTable::new(Config::s1_4k(48)).expect("4 KiB config"));
    let mapper = spawn_on(&pt, |pt| map_one(pt, PAGE, PAGE));
    if let Some(t) = pt.reader().translate(PAGE) {
        assert_eq!(t.paddr(), pa(PAGE), "a translation never mapped");
    }
    mapper.join().unwrap();
    let t = pt
        .reader()
        .translate(PAGE + 0x123)
        .map(|t| (t.paddr(), t.level()));
    assert_eq!(t, Some((pa(PAGE) + 0x123, 3)));
}

/// The four-level 4 KiB format's install race: two mappers map neighbouring pages under an
/// empty root, so both race to install the level-1, -2 and -3 tables through the descent
/// that format takes with constant layout (the tiny granule's reads it from the geometry).
fn four_level_install_race() {
    let pt = Arc::new(PageTable::new(Config::s1_4k(48)).expect("4 KiB config"));
    let mappers: Vec<_> = (0..2u64)
        .map(|i| spawn_on(&pt, move |pt| map_one(pt, i * PAGE, PAGE)))
        .collect();
    for m in mappers {
        m.join().unwrap();
    }
    let r = pt.reader();
    for iova in [0, PAGE] {
        assert_eq!(r.translate(iova).map(|t| t.paddr()), Some(pa(iova)));
    }
    drop(r);
    let s = pt.stats();
    assert_eq!(s.allocated - s.discarded, 4, "{s:?}");
    accounted(&pt);
}

/// Map page 0 and unmap page 1 of one shared leaf table, which only page 1 occupied: a
/// design that freed tables when emptied would lose page 0 here.
fn neighbours_in_one_table() {
    let pt = tiny();
    pt.map(PAGE, pa(PAGE), PAGE, RW).unwrap();
    let mapper = spawn_on(&pt, |pt| map_one(pt, 0, PAGE));
    let unmapper = spawn_on(&pt, |pt| unmap_one(pt, PAGE, PAGE));
    translated_or_absent(&pt, PAGE);
    translated_or_absent(&pt, 0);
    mapper.join().unwrap();
    unmapper.join().unwrap();
    let mapped: Vec<u64> = pt.dump().leaves().map(|e| e.iova).collect();
    assert_eq!(mapped, [0]);
    assert_eq!(pt.stats().retired, 0);
    accounted(&pt);
}

/// Unmap the whole level-3 table under top entry 1 while a debug walk and a translation run.
fn unmap_frees_level_under_readers() {
    unmap_frees_under_readers(2, true, true);
}

/// Unmap the whole level-3 table under top entry 1 while a debug walk, and nothing else, runs.
fn unmap_frees_level_under_dump() {
    unmap_frees_under_readers(2, true, false);
}

/// Three levels: the unmap of level-1 entry 1 retires a level-2 and a level-3 table while a
/// debug walk runs.
fn unmap_frees_subtree_under_dump() {
    unmap_frees_under_readers(3, true, false);
}

/// The three-level unmap while a translation runs.
fn unmap_frees_subtree_under_translation() {
    unmap_frees_under_readers(3, false, true);
}

/// Unmap the top-level entry 1 (with `levels - 1` tables below it) under, with `walk`, a debug
/// walk and, with `translate`, a translation of the one page mapped there (on the model's
/// main thread).
fn unmap_frees_under_readers(levels: u32, walk: bool, translate: bool) {
    let pt = Arc::new(PageTable::new(Config::tiny(levels)).expect("tiny config"));
    let top = pt.geometry().start_level();
    let block = pt.geometry().block_size(top);
    let page = block + PAGE;
    pt.map_pages(page, pa(page), PAGE, 1, RW).unwrap();
    let unmapper = spawn_on(&pt, move |pt| unmap_one(pt, block, block));
    let walker = walk.then(|| {
        spawn_on(&pt, move |pt| {
            // The old tree or the new one, never anything else.
            for e in pt.dump().entries {
                match e.desc {
                    Descriptor::Leaf { paddr, .. } => {
                        assert_eq!((e.iova, paddr), (page, pa(page)))
                    }
                    Descriptor::Table { .. } => assert_eq!(e.iova & !(block - 1), block),
                    Descriptor::Invalid => panic!("walk met an invalid descriptor"),
                }
            }
        })
    });
    if translate {
        translated_or_absent(&pt, page);
    }
    unmapper.join().unwrap();
    if let Some(walker) = walker {
        walker.join().unwrap();
    }
    assert!(pt.iova_to_phys(page).is_none());
    assert_eq!(pt.stats().retired, u64::from(levels) - 1);
    accounted(&pt);
}

/// A 16 KiB block replaces the emptied level-3 table under top entry 1 while a walk and a
/// translation run; `pa` is linear, so old page and new block translate alike.
fn block_replaces_empty_table_under_readers() {
    const BLOCK: u64 = 0x4000;
    let pt = tiny_with_empty_table();
    let mapper = spawn_on(&pt, |pt| map_one(pt, BLOCK, BLOCK));
    let walker = spawn_on(&pt, |pt| {
        for e in pt.dump().entries {
            if let Descriptor::Leaf { paddr, .. } = e.desc {
                assert_eq!((e.iova, paddr), (BLOCK, pa(BLOCK)));
            }
        }
    });
    translated_or_absent(&pt, BLOCK + PAGE);
    mapper.join().unwrap();
    walker.join().unwrap();
    assert_eq!(
        pt.iova_to_phys(BLOCK + PAGE).map(|t| (t.paddr(), t.size())),
        Some((pa(BLOCK + PAGE), BLOCK))
    );
    assert_eq!(pt.stats().retired, 1);
    accounted(&pt);
}

/// Two threads, each with more than one operation: the block map of
/// `block_replaces_empty_table_under_readers` followed, on the mapper's thread, by an unmap of
/// the block and a map of the page again, whose new level-3 table the slab serves from the
/// replaced one once its grace period has freed it; a translation runs throughout. It is
/// absent or `pa` of the page (block and page translate alike); afterwards it is the page.
fn block_replaces_table_then_remap_under_translation() {
    const BLOCK: u64 = 0x4000;
    let pt = tiny_with_empty_table();
    let mapper = spawn_on(&pt, |pt| {
        map_one(pt, BLOCK, BLOCK);
        unmap_one(pt, BLOCK, BLOCK);
        map_one(pt, BLOCK + PAGE, PAGE);
    });
    let translator = spawn_on(&pt, |pt| translated_or_absent(pt, BLOCK + PAGE));
    mapper.join().unwrap();
    translator.join().unwrap();
    assert_eq!(
        pt.iova_to_phys(BLOCK + PAGE).map(|t| (t.paddr(), t.size())),
        Some((pa(BLOCK + PAGE), PAGE))
    );
    assert_eq!(pt.stats().retired, 1);
    accounted(&pt);
}

/// Two unmaps of the same 16 KiB top entry, which links the level-3 table of one page, race
/// while main translates the page: exactly one takes (and retires) the table, the other
/// finds the entry empty.
fn racing_unmaps_of_one_table() {
    const BLOCK: u64 = 0x4000;
    let pt = tiny();
    map_one(&pt, BLOCK + PAGE, PAGE);
    let unmappers: Vec<_> = (0..2)
        .map(|_| {
            let pt = pt.clone();
            spawn(move || pt.unmap_pages(BLOCK, BLOCK, 1, &mut Gather::new()))
        })
        .collect();
    translated_or_absent(&pt, BLOCK + PAGE);
    let mut results: Vec<_> = unmappers.into_iter().map(|u| u.join().unwrap()).collect();
    results.sort_by_key(Result::is_err);
    assert_eq!(
        results,
        [Ok(BLOCK as usize), Err(Error::NotMapped { iova: BLOCK })],
        "exactly one unmap wins"
    );
    assert!(pt.iova_to_phys(BLOCK + PAGE).is_none());
    assert_eq!(pt.stats().retired, 1);
    accounted(&pt);
}

/// A map of page 2 of the level-3 table under top entry 1 races an unmap of the whole
/// entry (which holds page 1). The map lands before the unmap (and is taken with the
/// table) or after (in a new table); it never lands in the retired table.
fn map_races_table_unmap() {
    map_races_unmap_of_top_entry(2, PAGE);
}

/// Three levels: the map needs a new level-3 table in the level-2 table the unmap takes. A
/// mapper still holding the stale level-2 table must not install there (the table would
/// leak, and the accounting catch it): the owner's swaps leave it `DEAD` and the map restarts.
fn map_races_subtree_unmap() {
    map_races_unmap_of_top_entry(3, 0x4000);
}

/// Page 1 of top entry 1 mapped; a mapper maps the page `offset` further while an unmapper
/// unmaps the whole top entry (with `levels - 1` tables below it); main translates.
fn map_races_unmap_of_top_entry(levels: u32, offset: u64) {
    let pt = Arc::new(PageTable::new(Config::tiny(levels)).expect("tiny config"));
    let top = pt.geometry().start_level();
    let block = pt.geometry().block_size(top);
    let (first, second) = (block + PAGE, block + PAGE + offset);
    map_one(&pt, first, PAGE);
    let mapper = spawn_on(&pt, move |pt| map_one(pt, second, PAGE));
    let unmapper = spawn_on(&pt, move |pt| unmap_one(pt, block, block));
    translated_or_absent(&pt, second);
    mapper.join().unwrap();
    unmapper.join().unwrap();
    assert!(pt.iova_to_phys(first).is_none());
    let late = pt.iova_to_phys(second).is_some();
    let leaves: Vec<u64> = pt.dump().leaves().map(|e| e.iova).collect();
    assert_eq!(leaves, if late { vec![second] } else { vec![] });
    accounted(&pt);
}

/// A 16 KiB block map over the emptied level-3 table under top entry 1 races a page map in
/// that table: exactly one of the two maps succeeds, and the table is retired iff the block
/// won.
fn block_map_races_page_map() {
    const BLOCK: u64 = 0x4000;
    let pt = tiny_with_empty_table();
    let block = {
        let pt = pt.clone();
        spawn(move || pt.map_pages(BLOCK, pa(BLOCK), BLOCK, 1, RW))
    };
    let page = {
        let pt = pt.clone();
        spawn(move || pt.map_pages(BLOCK + 2 * PAGE, pa(BLOCK + 2 * PAGE), PAGE, 1, RW))
    };
    translated_or_absent(&pt, BLOCK + 2 * PAGE);
    let (block, page) = (block.join().unwrap(), page.join().unwrap());
    let t = pt.iova_to_phys(BLOCK + 2 * PAGE).expect("one map won");
    match (block, page) {
        (Ok(_), Err(Error::Exists { .. })) => {
            assert_eq!((t.paddr(), t.size()), (pa(BLOCK + 2 * PAGE), BLOCK));
            assert_eq!(pt.stats().retired, 1);
        }
        (Err(Error::Exists { .. }), Ok(_)) => {
            assert_eq!((t.paddr(), t.size()), (pa(BLOCK + 2 * PAGE), PAGE));
            assert_eq!(pt.stats().retired, 0);
        }
        other => panic!("not exactly one map won: {other:?}"),
    }
    accounted(&pt);
}

/// A map of two pages races a map of the second one (read-only) in a linked level-3 table;
/// main translates the first. Exactly one map gets the second page; the two-page map that
/// loses it after writing the first withdraws that one (compare-and-swap back to 0 from the
/// leaf it wrote), so its refusal leaves nothing of its own mapped.
fn two_page_map_loses_and_withdraws() {
    const FIRST: u64 = 0x4000;
    const SECOND: u64 = FIRST + PAGE;
    let pt = tiny_with_empty_table();
    let pair = {
        let pt = pt.clone();
        spawn(move || pt.map_pages(FIRST, pa(FIRST), PAGE, 2, RW))
    };
    let single = {
        let pt = pt.clone();
        spawn(move || pt.map_pages(SECOND, pa(SECOND), PAGE, 1, Prot::READ))
    };
    translated_or_absent(&pt, FIRST);
    let (pair, single) = (pair.join().unwrap(), single.join().unwrap());
    let second = pt.iova_to_phys(SECOND).expect("one map won").prot();
    match (pair, single) {
        (Ok(_), Err(Error::Exists { iova: SECOND })) => {
            assert!(second.contains(Prot::WRITE), "the pair's page");
            assert!(pt.iova_to_phys(FIRST).is_some());
        }
        (Err(Error::Exists { iova: SECOND }), Ok(_)) => {
            assert!(!second.contains(Prot::WRITE), "the single map's page");
            assert_eq!(
                pt.iova_to_phys(FIRST),
                None,
                "the loser's first page stayed"
            );
        }
        other => panic!("not exactly one map won: {other:?}"),
    }
    accounted(&pt);
}

/// A prune of the 16 KiB span of top entry 1, which links an emptied level-3 table, races a
/// page map in that table: the map always succeeds and its page stays (a prune never takes a
/// mapping); the old table is retired iff the prune froze it empty before the page landed
/// (the map then waits for the reservation and installs a fresh table, or its claim from 0 in
/// the old one fails on `DEAD` and it restarts).
fn prune_races_page_map() {
    const BLOCK: u64 = 0x4000;
    let pt = tiny_with_empty_table();
    let prune = spawn_on(&pt, |pt| assert_eq!(pt.prune(BLOCK, BLOCK), Ok(())));
    let iova = BLOCK + 2 * PAGE;
    let page = spawn_on(&pt, move |pt| map_one(pt, iova, PAGE));
    translated_or_absent(&pt, iova);
    prune.join().unwrap();
    page.join().unwrap();
    let t = pt.iova_to_phys(iova).expect("a prune took the page");
    assert_eq!((t.paddr(), t.size()), (pa(iova), PAGE));
    let s = pt.stats();
    assert!(s.retired <= 1, "{s:?}");
    // Root and one level-3 table: the old one, or the fresh one after the old one went.
    assert_eq!(s.linked(), 2, "{s:?}");
    accounted(&pt);
}

/// Three levels: a prune of top entry 1's span, which links an emptied level-2 table over an
/// emptied level-3 table, races an unmap of the same span. The prune freezes the level-2
/// table (its link to the level-3 table `FROZEN`) before it claims the top entry; if the
/// unmap claims the entry first, it takes the level-2 table and meets `FROZEN` where the link
/// was, so the level-3 table is the prune's to take back when its claim fails. Both tables are
/// retired exactly once, whoever wins, and nothing stays linked below the root; the unmap
/// unmaps the span or, after the prune, finds it empty.
fn prune_races_subtree_unmap() {
    let pt = Arc::new(PageTable::new(Config::tiny(3)).expect("tiny config"));
    let top = pt.geometry().start_level();
    let block = pt.geometry().block_size(top);
    map_one(&pt, block + PAGE, PAGE);
    assert_eq!(pt.unmap(block + PAGE, PAGE), Ok(PAGE));
    let prune = spawn_on(&pt, move |pt| assert_eq!(pt.prune(block, block), Ok(())));
    let unmapper = {
        let pt = pt.clone();
        spawn(move || pt.unmap_pages(block, block, 1, &mut Gather::new()))
    };
    prune.join().unwrap();
    let unmapped = unmapper.join().unwrap();
    assert!(
        unmapped == Ok(block as usize) || unmapped == Err(Error::NotMapped { iova: block }),
        "{unmapped:?}"
    );
    let s = pt.stats();
    assert_eq!((s.retired, s.linked()), (2, 1), "{s:?}");
    accounted(&pt);
}

/// A 16 KiB block map over the emptied level-3 table under top entry 1 races a thread that
/// maps the table's last page, then its second. The freeze may reserve the second slot, then
/// meet the last page and thaw: the second map must not take the reservation for an answer
/// (nothing was ever mapped there, and the block map is refused). So either the block wins and
/// both page maps are refused, or the first page wins and the block map is refused.
fn page_maps_race_refused_block_map() {
    const BLOCK: u64 = 0x4000;
    let pt = tiny_with_empty_table();
    let block = {
        let pt = pt.clone();
        spawn(move || pt.map_pages(BLOCK, pa(BLOCK), BLOCK, 1, RW))
    };
    let pages: Vec<_> = [3, 1]
        .map(|i| BLOCK + i * PAGE)
        .into_iter()
        .map(|iova| pt.map_pages(iova, pa(iova), PAGE, 1, RW))
        .collect();
    let block = block.join().unwrap();
    let exists = |iova| Err(Error::Exists { iova });
    let ok = Ok(PAGE as usize);
    if block.is_ok() {
        assert_eq!(pages, [exists(BLOCK), exists(BLOCK)]);
    } else {
        assert_eq!((block, pages), (exists(BLOCK), vec![ok, ok]));
    }
    accounted(&pt);
}

/// A 16 KiB block map over the emptied level-3 table under top entry 1 races an unmap of
/// that entry: the table is retired exactly once (by whichever claims it), the block map
/// always succeeds (restarting if the unmap took the table from under its freeze), and the
/// unmap always unmaps 16 KiB: the table, or the block after it. An unmap that meets the
/// entry reserved cannot answer `NotMapped` (the entry held an empty table, which a sequential
/// unmap takes): it waits for the block or the thaw. No translator: readers against frees are
/// the other models' subject.
fn block_map_races_table_unmap() {
    const BLOCK: u64 = 0x4000;
    let pt = tiny_with_empty_table();
    let mapper = spawn_on(&pt, |pt| map_one(pt, BLOCK, BLOCK));
    let unmapper = {
        let pt = pt.clone();
        spawn(move || pt.unmap_pages(BLOCK, BLOCK, 1, &mut Gather::new()))
    };
    mapper.join().unwrap();
    let unmapped = unmapper.join().unwrap();
    assert_eq!(
        unmapped,
        Ok(BLOCK as usize),
        "the unmap took neither table nor block"
    );
    // The unmap took the table first (the block stays), or the block after it was mapped.
    let block = pt.iova_to_phys(BLOCK).map(|t| (t.paddr(), t.size()));
    assert!(
        block.is_none() || block == Some((pa(BLOCK), BLOCK)),
        "{block:?}"
    );
    assert_eq!(pt.stats().retired, 1);
    accounted(&pt);
}

/// The allocation counters a model's outcome allows: tables `(allocated, discarded, retired)`.
fn counts(pt: &PageTable) -> (u64, u64, u64) {
    let s = pt.stats();
    (s.allocated, s.discarded, s.retired)
}

/// A 16 KiB block map races a page map under the *empty* top entry 1: the page map installs
/// the level-3 table while the block map checks its slot, re-reads it to place the block, or
/// claims it from 0 and loses to the install. Each of the three then reads the entries of a
/// table another thread just zeroed, through the link it loaded (the check's
/// `subtree_empty`, the freeze of `replace_table`): only its acquire orders that zeroing
/// before the read (loom reports a causality violation otherwise). Exactly one map wins; the
/// page map's table, if it made one, is discarded (its install lost to the block), linked
/// (the page won) or retired (the block replaced it).
fn block_map_races_page_install() {
    const BLOCK: u64 = 0x4000;
    // The root alone; or the page map's table too, discarded or replaced.
    let block_won = [(1, 0, 0), (2, 1, 0), (2, 0, 1)];
    race_block_and_page(tiny(), BLOCK, BLOCK + 2 * PAGE, &block_won, (2, 0, 0));
}

/// Race a block map of `block` bytes at `block` against a page map at `page` inside it, on
/// `pt`: exactly one wins, the translation of `page` is the winner's, and the table counts
/// (allocated, discarded, retired) are one of `block_won` or exactly `page_won`.
fn race_block_and_page(
    pt: Arc<PageTable>,
    block: u64,
    page: u64,
    block_won: &[(u64, u64, u64)],
    page_won: (u64, u64, u64),
) {
    let blocker = {
        let pt = pt.clone();
        spawn(move || pt.map_pages(block, pa(block), block, 1, RW))
    };
    let pager = {
        let pt = pt.clone();
        spawn(move || pt.map_pages(page, pa(page), PAGE, 1, RW))
    };
    let (blocked, paged) = (blocker.join().unwrap(), pager.join().unwrap());
    let t = pt.iova_to_phys(page).map(|t| (t.paddr(), t.size()));
    let refused = Err(Error::Exists { iova: block });
    if blocked.is_ok() {
        assert_eq!((blocked, paged), (Ok(block as usize), refused));
        assert_eq!(t, Some((pa(page), block)));
        let c = counts(&pt);
        assert!(block_won.contains(&c), "{c:?}");
    } else {
        assert_eq!((blocked, paged), (refused, Ok(PAGE as usize)));
        assert_eq!(t, Some((pa(page), PAGE)));
        assert_eq!(counts(&pt), page_won);
    }
    accounted(&pt);
}

/// The same race one level higher, on three levels: a 64 KiB block map over level-1 entry 1,
/// which links a level-2 table emptied in the setup, races a page map that installs a level-3
/// table in that level-2 table. The block map's check (`subtree_empty`) and its freeze
/// descend into the new level-3 table through a link they load from the level-2 table, or (the
/// freeze) through the link its claim of an empty entry lost to: only their acquires order the
/// new table's zeroing before their reads. Exactly one map wins; the level-2 table is retired
/// iff the block won, with the page map's table if it was installed.
fn block_map_races_install_below() {
    const BIG: u64 = 0x1_0000;
    let pt = Arc::new(PageTable::new(Config::tiny(3)).expect("tiny config"));
    map_one(&pt, BIG + PAGE, PAGE);
    // Take the level-3 table: the level-2 table stays linked, empty.
    unmap_one(&pt, BIG, 0x4000);
    assert_eq!(counts(&pt), (3, 0, 1));
    // The level-2 table retired; the page map's table discarded or retired with it.
    let block_won = [(3, 0, 2), (4, 1, 2), (4, 0, 3)];
    race_block_and_page(pt, BIG, BIG + 0x4000 + 2 * PAGE, &block_won, (4, 0, 1));
}

/// A page map that installs the level-3 table under the empty top entry 1 races an unmap of
/// the same page: the unmap descends through the link the map installed and reads the new
/// table's entry, which only its descent acquire orders after the table's zeroing. The map
/// always succeeds (the unmap changes nothing above the page); the unmap takes the page
/// (which is then gone) or finds it not yet mapped (and it stays).
fn page_install_races_page_unmap() {
    const PAGE1: u64 = 0x4000 + PAGE;
    let pt = tiny();
    let mapper = spawn_on(&pt, |pt| map_one(pt, PAGE1, PAGE));
    let unmapper = {
        let pt = pt.clone();
        spawn(move || pt.unmap_pages(PAGE1, PAGE, 1, &mut Gather::new()))
    };
    mapper.join().unwrap();
    let unmapped = unmapper.join().unwrap();
    let t = pt.iova_to_phys(PAGE1).map(|t| t.paddr());
    match unmapped {
        Ok(n) => assert_eq!((n, t), (PAGE as usize, None)),
        Err(e) => assert_eq!((e, t), (Error::NotMapped { iova: PAGE1 }, Some(pa(PAGE1)))),
    }
    assert_eq!(counts(&pt), (2, 0, 0));
    accounted(&pt);
}

/// A page map that installs the level-3 table under the empty top entry 1 races an unmap of
/// the whole entry: the unmap finds the entry empty (`NotMapped`; the page stays), or claims
/// the new link and takes the table, reading (swapping) the entries another thread just
/// zeroed; the page went with the table, or the map, finding its slot `DEAD`, restarted and
/// installed a second table.
fn page_install_races_table_unmap() {
    const BLOCK: u64 = 0x4000;
    const PAGE1: u64 = BLOCK + PAGE;
    let pt = tiny();
    let mapper = spawn_on(&pt, |pt| map_one(pt, PAGE1, PAGE));
    let unmapper = {
        let pt = pt.clone();
        spawn(move || pt.unmap_pages(BLOCK, BLOCK, 1, &mut Gather::new()))
    };
    mapper.join().unwrap();
    let unmapped = unmapper.join().unwrap();
    let t = pt.iova_to_phys(PAGE1).map(|t| t.paddr());
    let outcome = (unmapped, t.is_some(), counts(&pt));
    assert!(
        [
            (Err(Error::NotMapped { iova: BLOCK }), true, (2, 0, 0)),
            (Ok(BLOCK as usize), false, (2, 0, 1)),
            (Ok(BLOCK as usize), true, (3, 0, 1)),
        ]
        .contains(&outcome),
        "{outcome:?}"
    );
    assert!(t.is_none() || t == Some(pa(PAGE1)), "{t:?}");
    accounted(&pt);
}

/// `install_race` with the debug walk as the reader: two mappers install the same level-3
/// table under top entry 0 while main dumps the table. The walk follows the link it loads
/// into the new table, whose zeroing only its acquire orders before the read; it sees the
/// link or not, and each leaf it meets is one of the two pages.
fn install_race_under_dump() {
    let pt = tiny();
    let mappers: Vec<_> = (0..1u64)
        .map(|i| spawn_on(&pt, move |pt| map_one(pt, i * PAGE, PAGE)))
        .collect();
    let d = pt.dump();
    for e in &d.entries {
        match e.desc {
            Descriptor::Table { .. } => assert_eq!((e.level, e.iova), (2, 0)),
            Descriptor::Leaf { paddr, .. } => {
                assert!(e.level == 3 && e.iova <= PAGE, "{e:?}");
                assert_eq!(paddr, pa(e.iova));
            }
            Descriptor::Invalid => panic!("walk met an invalid descriptor"),
        }
    }
    assert_eq!(
        d.tables,
        1 + d.entries.iter().filter(|e| e.level == 2).count()
    );
    for m in mappers {
        m.join().unwrap();
    }
    let leaves: Vec<u64> = pt.dump().leaves().map(|e| e.iova).collect();
    assert_eq!(leaves, [0]);
    accounted(&pt);
}

/// Bounded, `Preemptions(3)`: one switch parks a reader between descriptor load and table
/// use, one lets the mapper unlink, free and write the block in that window, one spare (9 s
/// of CPU; 4 ran past 55 s before it was stopped, and
/// `block_replaces_table_then_remap_under_translation` explores longer schedules with two
/// threads).
#[test]
fn block_replaces_empty_table_under_readers_passes() {
    check(
        Bound::Preemptions(3),
        block_replaces_empty_table_under_readers,
    );
}

/// Bounded, `Preemptions(5)`, for the reason given at the top (about 24 s of CPU; 4 takes 5 s).
#[test]
fn block_replaces_table_then_remap_under_translation_passes() {
    check(
        Bound::Preemptions(5),
        block_replaces_table_then_remap_under_translation,
    );
}

/// Exhaustive (~55,000 executions).
#[test]
fn install_race_passes() {
    check(Bound::Exhaustive, install_race);
}

/// Exhaustive: one mapper and one translation.
#[test]
fn four_level_install_under_reader_passes() {
    check(Bound::Exhaustive, four_level_install_under_reader);
}

/// Bounded, `Preemptions(3)`: one switch stops a mapper between its load of an empty entry
/// and its install, one lets the other install there, one spare.
#[test]
fn four_level_install_race_passes() {
    check(Bound::Preemptions(3), four_level_install_race);
}

/// Exhaustive (a few dozen executions: the threads share only the top table).
#[test]
fn neighbours_in_one_table_passes() {
    check(Bound::Exhaustive, neighbours_in_one_table);
}

/// Bounded, `Preemptions(5)` (about 9 s of CPU; 4 takes 2 s, 6 ran past 24 s): the unmap
/// against the debug walk alone, which loads every entry of the top table and of the level-3
/// table: five switches stop the walk at two of those loads (before and after the unmap's
/// take) while the unmap is stopped inside its claim, take and grace period, one spare. Exhaustive exploration runs for many
/// minutes (the unmap swaps every entry of the table it takes, and the RCU shim's grace
/// periods complete in collector steps on every pin and unpin).
#[test]
fn unmap_frees_level_under_dump_passes() {
    check(Bound::Preemptions(5), unmap_frees_level_under_dump);
}

/// Bounded, `Preemptions(3)` (about 6 s of CPU; 4 took 67 s): one switch stops the walk and
/// one the translation between a descriptor load and its use, one lets the unmap run its
/// claim, take, grace period and free in that window (its grace period waits for both without
/// a preemption). Each reader's longer schedules against the unmap alone are the two-thread
/// models' (`unmap_frees_level_under_dump`, `unmap_frees_level_under_translation`): the
/// readers share nothing but that grace period.
#[test]
fn unmap_frees_level_under_readers_passes() {
    check(Bound::Preemptions(3), unmap_frees_level_under_readers);
}

/// Bounded, `Preemptions(4)` (about 12 s of CPU; 3 takes 3 s, 5 ran past 21 s): the
/// three-level unmap against the debug walk alone. One switch stops the walk between a
/// descriptor load and its use, one lets the unmap claim the link and take both tables in
/// that window, one stops it inside its grace period, one spare. (The three-thread version
/// with a translation beside the walk took 32 s at 3; the readers share nothing but the grace
/// period, whose wait for two readers `unmap_frees_level_under_readers` checks.)
#[test]
fn unmap_frees_subtree_under_dump_passes() {
    check(Bound::Preemptions(4), unmap_frees_subtree_under_dump);
}

/// Bounded, `Preemptions(6)` (about 0.6 s of CPU; 7 takes 0.9 s): five switches stop the
/// translation after each of its pin, three table reads and unpin, so each falls before,
/// inside or after the unmap's claim, take and free of both tables; the sixth stops the unmap
/// inside its grace period.
#[test]
fn unmap_frees_subtree_under_translation_passes() {
    check(Bound::Preemptions(6), unmap_frees_subtree_under_translation);
}

/// Must-fail twins of one model: each expects a "Causality violation" at `Preemptions(2)`
/// (every injected bug needs the two switches described at the top).
macro_rules! causality_twins {
    ($model:ident: $($(#[$m:meta])* fn $name:ident: $point:path;)+) => {
        $(must_fail_test! {
            $(#[$m])*
            fn $name: $point, Weakening::Relax,
                "Causality violation", Bound::Preemptions(2), $model;
        })+
    };
}

causality_twins! { install_race:
    /// A relaxed install publishes the table pointer without its zeroed contents: the loser
    /// (or the translator) touches entries it has not seen initialised.
    fn pgtable_install_relaxed: INSTALL_RELEASE;
    /// A writer descending (or losing the CAS) without acquire writes its leaf into a table
    /// whose initialisation it has not seen.
    fn pgtable_descent_relaxed: DESCENT_ACQUIRE;
    /// A translator following a table descriptor without acquire reads uninitialised entries.
    fn pgtable_walk_relaxed: WALK_ACQUIRE;
}

causality_twins! { four_level_install_under_reader:
    /// The inlined walk following a table descriptor without acquire reads entries of a
    /// table whose zeroing it has not seen.
    fn pgtable_inlined_walk_relaxed: WALK_ACQUIRE;
}

causality_twins! { four_level_install_race:
    /// The constant-layout descent without acquire (on its loads and the install's failure
    /// load): the install's loser reads the winner's table before its zeroing.
    fn pgtable_four_level_descent_relaxed: DESCENT_ACQUIRE;
}

causality_twins! { unmap_frees_level_under_readers:
    /// A reader without its pin is not waited for: it reads the poisoned, freed table.
    fn pgtable_reader_unpinned: READER_PIN;
}

causality_twins! { unmap_frees_level_under_dump:
    /// The same with the debug walk as the only reader.
    fn pgtable_reader_unpinned_dump: READER_PIN;
}

/// A reader that reaches a table retired before its unlink either races the poisoning free
/// or, pinned after it, walks the poison (an invalid descriptor).
const FREED_TABLE: &str = "Causality violation | walk met an invalid descriptor";

must_fail_test! {
    /// Retiring a table before unlinking it: a reader pinned after the retirement still
    /// reaches it through the live descriptor and reads freed memory.
    fn pgtable_free_before_unlink: FREE_ORDER, Weakening::Relax, FREED_TABLE,
        Bound::Preemptions(2), unmap_frees_level_under_readers;
}

must_fail_test! {
    /// Tables released to the slab at once instead of through RCU: the loom RCU's reader
    /// check (every table is tracked from its allocation, its release is a tracked write)
    /// reports the release racing a walker's dereference, from whichever side comes second.
    /// Untracked, the release is a silent push onto the slab's free list.
    fn pgtable_retire_bypasses_rcu: RETIRE_RCU, Weakening::Relax,
        "Causality violation | freed outside dma_sync::rcu", Bound::Preemptions(2),
        unmap_frees_level_under_readers;
}

/// The level-3 table under top entry 1 freed while a translation, and nothing else, reads it:
/// the unmap of top entry 1 races `iova_to_phys` of the page mapped there, on spawned threads.
/// The translation is absent or the mapped one; afterwards it is absent and one table was
/// retired. Its twin shows that the translation's own table reads reach the loom RCU's reader
/// check, without a debug walk beside it. Exhaustive (about 15 s of CPU; 4 preemptions, which
/// put each of the translation's pin, two table reads and unpin before, inside or after the
/// unmap's claim, take and retirement, take half a second).
fn unmap_frees_level_under_translation() {
    unmap_under_translation(false);
}

/// The same unmap followed, on the same thread, by a map of the page again: the new level-3
/// table comes from the slab, which hands back the retired one once its grace period has
/// freed it (the free list is last in, first out), so a translation that still held the old
/// link must have ended before the address is zeroed and linked again. The translation is
/// absent or the mapped one (`pa` does not change); afterwards it is the mapped one.
fn unmap_then_remap_under_translation() {
    unmap_under_translation(true);
}

/// Unmap top entry 1 (one level-3 table holding one page), and with `remap` map the page
/// again, while a spawned thread translates the page.
fn unmap_under_translation(remap: bool) {
    let pt = tiny();
    let block = pt.geometry().block_size(pt.geometry().start_level());
    let page = block + PAGE;
    map_one(&pt, page, PAGE);
    let unmapper = spawn_on(&pt, move |pt| {
        unmap_one(pt, block, block);
        if remap {
            map_one(pt, page, PAGE);
        }
    });
    let translator = spawn_on(&pt, move |pt| translated_or_absent(pt, page));
    unmapper.join().unwrap();
    translator.join().unwrap();
    assert_eq!(pt.iova_to_phys(page).is_some(), remap);
    assert_eq!(pt.stats().retired, 1);
    accounted(&pt);
}

/// Exhaustive, as said on the model.
#[test]
fn unmap_frees_level_under_translation_passes() {
    check(Bound::Exhaustive, unmap_frees_level_under_translation);
}

/// Bounded, `Preemptions(6)`, for the reason given at the top (about 15 s of CPU; 5 takes 6 s).
#[test]
fn unmap_then_remap_under_translation_passes() {
    check(Bound::Preemptions(6), unmap_then_remap_under_translation);
}

must_fail_test! {
    /// Tables released to the slab at once, against a translation alone: its table reads are
    /// tracked dereferences, so the release races one of them.
    fn pgtable_retire_bypasses_rcu_translation: RETIRE_RCU, Weakening::Relax,
        "Causality violation | freed outside dma_sync::rcu", Bound::Preemptions(2),
        unmap_frees_level_under_translation;
}

causality_twins! { unmap_frees_subtree_under_dump:
    /// The same with a freed subtree of two levels.
    fn pgtable_reader_unpinned_subtree: READER_PIN;
}

must_fail_test! {
    /// A block map that retires the table it replaces before unlinking it: a reader pinned
    /// after the retirement still reaches the freed table.
    fn pgtable_block_free_before_unlink: FREE_ORDER, Weakening::Relax, FREED_TABLE,
        Bound::Preemptions(2), block_replaces_empty_table_under_readers;
}

/// Bounded, `Preemptions(3)`: a loser needs one switch between reading the link and claiming
/// it, the winner one to claim, take and retire in that window; the third lets the translator
/// interleave. (Exhaustive takes about seven minutes and finds nothing more.)
#[test]
fn racing_unmaps_of_one_table_passes() {
    check(Bound::Preemptions(3), racing_unmaps_of_one_table);
}

/// Bounded, `Preemptions(3)`: one switch parks the mapper between reading an entry and
/// claiming it, one runs the unmapper's claim and take in that window, one for the translator.
#[test]
fn map_races_table_unmap_passes() {
    check(Bound::Preemptions(3), map_races_table_unmap);
}

/// Bounded, `Preemptions(3)`, as the two-level one.
#[test]
fn map_races_subtree_unmap_passes() {
    check(Bound::Preemptions(3), map_races_subtree_unmap);
}

/// Bounded, `Preemptions(3)`: one switch stops the unmap between reading the link and
/// claiming it, one runs the block map's freeze (and claim) in that window, one lets the
/// unmap's take interleave with the freeze.
#[test]
fn block_map_races_table_unmap_passes() {
    check(Bound::Preemptions(3), block_map_races_table_unmap);
}

/// Bounded, `Preemptions(3)`: one switch stops the page map between reading a slot and
/// claiming it, one runs the block map's freeze and claim in that window (or the reverse),
/// one for the translator.
#[test]
fn block_map_races_page_map_passes() {
    check(Bound::Preemptions(3), block_map_races_page_map);
}

/// Bounded, `Preemptions(3)`: one switch stops the block map inside its freeze, one returns
/// to it after the first page map (to meet the page and thaw), one spare.
#[test]
fn page_maps_race_refused_block_map_passes() {
    check(Bound::Preemptions(3), page_maps_race_refused_block_map);
}

/// Bounded, `Preemptions(3)`, as `block_map_races_page_map` (the prune's freeze and claim are
/// the block map's): one switch stops the page map between reading its slot and claiming it,
/// one runs the prune's freeze and claim in that window (or the reverse), one for the
/// translator.
#[test]
fn prune_races_page_map_passes() {
    check(Bound::Preemptions(3), prune_races_page_map);
}

/// Bounded, `Preemptions(3)` (4 s of CPU), as `prune_races_page_map`: one switch stops the prune between its freeze and its
/// claim, one runs the unmap's claim and take there (or stops the unmap inside its take
/// while the prune runs), one for the prune's thaw against the unmap's swaps.
#[test]
fn prune_races_subtree_unmap_passes() {
    check(Bound::Preemptions(3), prune_races_subtree_unmap);
}

/// Exhaustive: the level-3 table exists, so the threads share its two slots only.
#[test]
fn two_page_map_loses_and_withdraws_passes() {
    check(Bound::Exhaustive, two_page_map_loses_and_withdraws);
}

must_fail_test! {
    /// The owner's `DEAD` swaps without release: the block map that finds `DEAD` restarts
    /// from the root without seeing the unlink, may read the stale link again forever, and
    /// loom reports the endless restart as a livelock.
    fn pgtable_take_unreleased: TAKE_RELEASE, Weakening::To(dma_sync::atomic::Ordering::Acquire),
        "maximum number of branches", Bound::Preemptions(3), block_map_races_table_unmap;
}

must_fail_test! {
    /// Claiming by load-then-store: both unmaps read the table link before either clears it,
    /// both take the table, and the second owner's swap finds its entries already taken.
    fn pgtable_claim_load_then_store: CLAIM, Weakening::Relax,
        "a table level claimed twice", Bound::Preemptions(1), racing_unmaps_of_one_table;
}

must_fail_test! {
    /// Claiming by load-then-store, for maps: both maps read the second slot empty before
    /// either writes it, and both succeed.
    fn pgtable_claim_load_then_store_maps: CLAIM, Weakening::Relax,
        "not exactly one map won", Bound::Preemptions(2), two_page_map_loses_and_withdraws;
}

/// Bounded, `Preemptions(3)`: the block map's check meets the new link after one switch (the
/// page map installs first); its `place` re-read, or its claim from 0, needs two (the check
/// reads 0, the page map installs in that window, the block map resumes); the third lets the
/// page map's slot claim interleave with the freeze. Raised to 5, it finds nothing more.
#[test]
fn block_map_races_page_install_passes() {
    check(Bound::Preemptions(3), block_map_races_page_install);
}

/// Bounded, `Preemptions(3)`, as the two-level race: the check meets the new level-3 link
/// after one switch, the freeze's load (or its lost claim) after two, one spare. Raised to 5,
/// it finds nothing more.
#[test]
fn block_map_races_install_below_passes() {
    check(Bound::Preemptions(3), block_map_races_install_below);
}

/// Exhaustive (the unmap of one page never takes a table, so the threads share one entry of
/// the top table and one of the new table).
#[test]
fn page_install_races_page_unmap_passes() {
    check(Bound::Exhaustive, page_install_races_page_unmap);
}

/// Bounded, `Preemptions(3)`: the unmap meets the new link once the map installed it (one
/// switch at most), and takes the table between the map's install and its claim of the slot
/// (the map restarts) with one more; one spare. Exhaustive exploration does not finish in 15
/// minutes (the unmap's grace period completes in collector steps); raised to 5, it finds
/// nothing more.
#[test]
fn page_install_races_table_unmap_passes() {
    check(Bound::Preemptions(3), page_install_races_table_unmap);
}

/// Exhaustive, as `install_race`.
#[test]
fn install_race_under_dump_passes() {
    check(Bound::Exhaustive, install_race_under_dump);
}
