//! Checks shared by the integration tests.

use io_pgtable::PageTable;

/// No table leaked: the tables counted as linked are exactly those reachable from the root,
/// and every retired or discarded table is freed once the grace periods have run.
pub fn check_no_leak(pt: &PageTable) {
    let s = pt.stats();
    assert_eq!(s.linked() as usize, pt.dump().tables, "{s:?}");
    for _ in 0..10_000 {
        let s = pt.stats();
        if s.freed == s.discarded + s.retired {
            return;
        }
        dma_sync::rcu::pin().flush();
        std::thread::yield_now();
    }
    let s = pt.stats();
    assert_eq!(
        s.freed,
        s.discarded + s.retired,
        "retired tables never freed: {s:?}"
    );
}
