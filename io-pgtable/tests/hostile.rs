//! Hostile `TlbOps`: a walk-cache flush that panics while a block map replaces an empty
//! table must leave the table as it was and every later operation on it working; one that
//! panics while an unmap frees a table must not free it before the page table drops; an `add_page` that
//! panics while a map that lost a race withdraws its leaves must leave none mapped; a
//! `flush_all` that panics while the page table drops must leave every table leaked, none
//! freed.
#![cfg(not(loom))]

use dma_soak::hang::within_30_s;
use dma_sync::atomic::{AtomicBool, Ordering::Relaxed};
use io_pgtable::{Config, PageTable, Prot, TlbOps, TlbRange};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// TLB operations whose next `flush_walk` panics when `fail_next_walk` is set, and whose
/// `flush_all` panics when `fail_flush_all` is.
#[derive(Default)]
struct Flaky {
    fail_next_walk: AtomicBool,
    fail_flush_all: AtomicBool,
}

impl TlbOps for Flaky {
    fn flush_all(&self) {
        if self.fail_flush_all.load(Relaxed) {
            panic!("the IOMMU refused the flush");
        }
    }
    fn flush_walk(&self, _iova: u64, _size: u64, _granule: u64) {
        if self.fail_next_walk.swap(false, Relaxed) {
            panic!("the IOMMU refused the walk-cache flush");
        }
    }
    fn sync(&self, _range: &TlbRange) {}
}

/// The block map had claimed the table's link (FROZEN) before the flush; the unwind left it
/// FROZEN, so every later map or unmap reaching it backed off and retried for ever.
#[test]
fn a_walk_flush_that_panics_during_a_block_map_leaves_the_table_usable() {
    const RW: Prot = Prot::READ.union(Prot::WRITE);
    let pt = Arc::new(PageTable::with_tlb(Config::s1_4k(39), Flaky::default()).unwrap());
    // An empty leaf table linked under the 2 MiB block at 0x20_0000.
    pt.map(0x20_1000, 0x5000, 0x1000, RW).unwrap();
    assert_eq!(pt.unmap(0x20_1000, 0x1000), Ok(0x1000));
    let linked = pt.stats().linked();
    pt.tlb().fail_next_walk.store(true, Relaxed);
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        pt.map(0x20_0000, 0x4000_0000, 0x20_0000, RW)
    }));
    assert!(unwound.is_err());
    assert_eq!(pt.iova_to_phys(0x20_0000), None);
    assert_eq!(
        pt.stats().linked(),
        linked,
        "the table is still linked, none retired"
    );
    let pt2 = pt.clone();
    let later = within_30_s(move || {
        pt2.map(0x20_1000, 0x6000, 0x1000, RW)?;
        let page = pt2.iova_to_phys(0x20_1010).map(|t| t.paddr());
        pt2.unmap(0x20_1000, 0x1000)?;
        pt2.map(0x20_0000, 0x4000_0000, 0x20_0000, RW)?;
        Ok::<_, io_pgtable::Error>((page, pt2.iova_to_phys(0x20_0010).map(|t| t.size())))
    });
    assert_eq!(
        later,
        Some(Ok((Some(0x6010), Some(0x20_0000)))),
        "later operations on the range hung or failed"
    );
    assert_eq!(pt.unmap(0x20_0000, 0x20_0000), Ok(0x20_0000));
    assert_eq!(pt.iova_to_phys(0x20_0010), None);
}

/// An unmap of a whole table's span claims the link and takes the subtree before the walk
/// flush; a `flush_walk` that unwound there first dropped the taken tables on the spot (back
/// to the slab under any reader still walking them), then handed them to RCU, which frees
/// them once no software reader holds them: the walk cache the flush did not invalidate may
/// still point a device at them. They are kept until the page table is dropped.
#[test]
fn a_walk_flush_that_panics_during_a_table_unmap_keeps_the_table_until_the_drop() {
    const RW: Prot = Prot::READ.union(Prot::WRITE);
    let pt = PageTable::with_tlb(Config::s1_4k(39), Flaky::default()).unwrap();
    pt.map(0x20_1000, 0x5000, 0x1000, RW).unwrap();
    pt.map(0x60_1000, 0x5000, 0x1000, RW).unwrap();
    let before = pt.stats();
    // Hold a reader across the unmap, as a device thread translating would.
    let reader = pt.reader();
    pt.tlb().fail_next_walk.store(true, Relaxed);
    let unwound = catch_unwind(AssertUnwindSafe(|| pt.unmap(0x20_0000, 0x20_0000)));
    assert!(unwound.is_err());
    let s = pt.stats();
    assert_eq!(s.retired, before.retired + 1, "{s:?}");
    assert_eq!(s.freed, before.freed, "freed under a reader: {s:?}");
    assert_eq!(s.linked() as usize, pt.dump().tables, "{s:?}");
    assert_eq!(reader.translate(0x20_1000), None);
    drop(reader);
    // A table whose flush returned is freed after its grace period; the unflushed one not.
    assert_eq!(pt.unmap(0x60_0000, 0x20_0000), Ok(0x20_0000));
    let mut s = pt.stats();
    for _ in 0..100_000 {
        if s.freed > before.freed {
            break;
        }
        dma_sync::rcu::pin().flush();
        dma_sync::thread::yield_now();
        s = pt.stats();
    }
    assert_eq!(s.retired, before.retired + 2, "{s:?}");
    assert_eq!(
        s.freed,
        before.freed + 1,
        "the unflushed table was freed: {s:?}"
    );
    // The range works again.
    pt.map(0x20_1000, 0x6000, 0x1000, RW).unwrap();
    assert_eq!(pt.iova_to_phys(0x20_1010).map(|t| t.paddr()), Some(0x6010));
}

/// Run from inside the next `flush_walk`, on the page table: another caller's operations
/// landing while a block map replaces a table.
type Hook = Box<dyn FnOnce(&PageTable<Racing>) + Send>;

/// TLB operations that run a hook during the next `flush_walk`, and whose `add_page` panics
/// while `fail_add_page` is set.
#[derive(Default)]
struct Racing {
    pt: std::sync::OnceLock<std::sync::Weak<PageTable<Racing>>>,
    hook: std::sync::Mutex<Option<Hook>>,
    fail_add_page: AtomicBool,
}

impl Racing {
    fn table() -> Arc<PageTable<Racing>> {
        let pt = Arc::new(PageTable::with_tlb(Config::s1_4k(39), Racing::default()).unwrap());
        pt.tlb().pt.set(Arc::downgrade(&pt)).unwrap();
        pt
    }

    fn on_next_walk_flush(&self, hook: impl FnOnce(&PageTable<Racing>) + Send + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(hook));
    }
}

impl TlbOps for Racing {
    fn flush_all(&self) {}
    fn flush_walk(&self, _iova: u64, _size: u64, _granule: u64) {
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook(&self.pt.get().and_then(|w| w.upgrade()).expect("the table"));
        }
    }
    fn sync(&self, _range: &TlbRange) {}
    fn add_page(&self, gather: &mut io_pgtable::Gather, iova: u64, granule: u64) {
        if self.fail_add_page.load(Relaxed) {
            panic!("the IOMMU refused the invalidation");
        }
        gather.add_page(self, iova, granule);
    }
}

const RW: Prot = Prot::READ.union(Prot::WRITE);
const BLOCK: u64 = 0x20_0000;

/// An empty leaf table linked where the block at `iova` goes: a block map there replaces it,
/// calling `flush_walk`.
fn empty_table_at(pt: &PageTable<Racing>, iova: u64) {
    pt.map(iova + 0x1000, 0x5000, 0x1000, RW).unwrap();
    assert_eq!(pt.unmap(iova + 0x1000, 0x1000), Ok(0x1000));
}

/// A map of three blocks writes the first, replaces the empty table under the second (the
/// walk flush lets a racing map take the third), loses the third and withdraws the first two.
/// The withdraw called `add_page` after clearing each slot: one that unwound at the first
/// left the second block mapped, a refused map that changed the table.
#[test]
fn a_tlb_callback_that_panics_during_a_lost_race_withdraw_leaves_nothing_mapped() {
    let pt = Racing::table();
    empty_table_at(&pt, BLOCK);
    let raced = Arc::new(AtomicBool::new(false));
    let raced2 = raced.clone();
    pt.tlb().on_next_walk_flush(move |pt| {
        let won = pt.map_pages(2 * BLOCK, 0x7000_0000, BLOCK, 1, Prot::READ);
        raced2.store(won.is_ok(), Relaxed);
    });
    pt.tlb().fail_add_page.store(true, Relaxed);
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        pt.map_pages(0, 0x4000_0000, BLOCK, 3, RW)
    }));
    pt.tlb().fail_add_page.store(false, Relaxed);
    assert!(raced.load(Relaxed), "the racing map did not land");
    assert!(unwound.is_err(), "the withdraw's add_page did not run");
    assert_eq!(pt.iova_to_phys(0), None, "first block left mapped");
    assert_eq!(pt.iova_to_phys(BLOCK), None, "second block left mapped");
    assert_eq!(
        pt.iova_to_phys(2 * BLOCK).map(|t| t.paddr()),
        Some(0x7000_0000),
        "the racing map's block"
    );
    assert_eq!(pt.stats().linked() as usize, pt.dump().tables);
    // The withdrawn range maps again.
    assert_eq!(
        pt.map_pages(0, 0x4000_0000, BLOCK, 2, RW),
        Ok(2 * BLOCK as usize)
    );
}

/// `map` of a page and two blocks: after the page, the first block replaces an empty table,
/// and during its walk flush another caller unmaps the page and maps its own there, and a
/// third maps the last block's place. `map` fails there and undoes its progress: the undo
/// was an unmap of the range it had done, which took the other caller's page too.
#[test]
fn a_failed_map_undoes_only_its_own_leaves() {
    let pt = Racing::table();
    let page = BLOCK - 0x1000;
    empty_table_at(&pt, BLOCK);
    pt.tlb().on_next_walk_flush(move |pt| {
        assert_eq!(pt.unmap(page, 0x1000), Ok(0x1000));
        pt.map(page, 0x9000_0000, 0x1000, Prot::READ).unwrap();
        pt.map(2 * BLOCK, 0x7000_0000, BLOCK, Prot::READ).unwrap();
    });
    assert_eq!(
        pt.map(page, 0x4000_0000 - 0x1000, 0x1000 + 2 * BLOCK, RW),
        Err(io_pgtable::Error::Exists { iova: 2 * BLOCK })
    );
    assert_eq!(
        pt.iova_to_phys(page).map(|t| t.paddr()),
        Some(0x9000_0000),
        "the other caller's page was unmapped"
    );
    assert_eq!(pt.iova_to_phys(BLOCK), None, "the map's own block stayed");
    assert_eq!(
        pt.iova_to_phys(2 * BLOCK).map(|t| t.paddr()),
        Some(0x7000_0000)
    );
    assert_eq!(pt.stats().linked() as usize, pt.dump().tables);
}

/// A drop frees its tables only after `flush_all` returned. One that unwound there used to
/// free the tables an unwound walk flush had kept (and the root) on the way out, although the
/// walk cache might still hold them; now every table is leaked and counted.
#[test]
fn a_flush_all_that_panics_in_the_drop_leaks_every_table() {
    const RW: Prot = Prot::READ.union(Prot::WRITE);
    let pt = PageTable::with_tlb(Config::s1_4k(39), Flaky::default()).unwrap();
    pt.map(0x20_1000, 0x5000, 0x1000, RW).unwrap();
    pt.map(0x60_1000, 0x5000, 0x1000, RW).unwrap();
    // The leaf table of 0x20_0000 is kept: its walk flush unwound.
    pt.tlb().fail_next_walk.store(true, Relaxed);
    assert!(catch_unwind(AssertUnwindSafe(|| pt.unmap(0x20_0000, 0x20_0000))).is_err());
    let s = pt.stats();
    // Linked: the root, the level-2 table, the leaf table of 0x60_0000; kept: one.
    assert_eq!((s.linked(), s.retired), (3, 1), "{s:?}");
    pt.tlb().fail_flush_all.store(true, Relaxed);
    let before = io_pgtable::leaked_tables();
    assert!(catch_unwind(AssertUnwindSafe(|| drop(pt))).is_err());
    assert_eq!(io_pgtable::leaked_tables() - before, 4);
}

#[test]
fn a_drop_whose_flush_returns_leaks_nothing() {
    const RW: Prot = Prot::READ.union(Prot::WRITE);
    let pt = PageTable::with_tlb(Config::s1_4k(39), Flaky::default()).unwrap();
    pt.map(0x20_1000, 0x5000, 0x1000, RW).unwrap();
    pt.tlb().fail_next_walk.store(true, Relaxed);
    assert!(catch_unwind(AssertUnwindSafe(|| pt.unmap(0x20_0000, 0x20_0000))).is_err());
    let before = io_pgtable::leaked_tables();
    drop(pt);
    assert_eq!(io_pgtable::leaked_tables(), before);
}
