//! Multithreaded stress: writers on disjoint ranges sharing tables, readers translating and
//! dumping throughout. Every translation a reader sees was mapped at some moment; at the end
//! the linked tables are exactly the reachable ones and every retired table is freed once.
#![cfg(not(loom))]

use dma_sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use dma_sync::thread::spawn;
use dma_sync::Arc;
use io_pgtable::{Config, Descriptor, PageTable, Prot};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PAGE: u64 = 0x1000;
const WRITERS: u64 = 4;
const READERS: usize = 2;
/// Pages 0..64 (level-0 entry 0): page p belongs to writer p % 4, so writers share every
/// level-1/2/3 table there and only map and unmap single pages.
const SHARED: u64 = 64;
/// Pages 64 + 16w .. 64 + 16(w+1): writer w's own level-1 span, where it maps blocks and
/// pages and unmaps the whole span (freeing tables).
const OWN: u64 = 16;

/// Output address of `page` in generation `gen`: a reader can tell a translation that was
/// really mapped (right page, generation already issued) from garbage.
fn pa(page: u64, gen: u64) -> u64 {
    (gen << 24) | (page << 12)
}

fn check_seen(iova: u64, paddr: u64, gens: &[AtomicU64]) {
    let page = iova / PAGE;
    assert_eq!(
        (paddr >> 12) & 0xfff,
        page,
        "translation of page {page} points at another page: {paddr:#x}"
    );
    let owner = if page < SHARED {
        page % WRITERS
    } else {
        (page - SHARED) / OWN
    };
    let issued = gens[owner as usize].load(Acquire);
    assert!(
        paddr >> 24 <= issued,
        "page {page}: generation {} never issued (≤ {issued})",
        paddr >> 24
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn writers_and_readers() {
    let pt = Arc::new(PageTable::new(Config::tiny(4)).unwrap());
    let gens: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let rw = Prot::READ | Prot::WRITE;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (pt, gens) = (pt.clone(), gens.clone());
            spawn(move || {
                let mut rng = StdRng::seed_from_u64(w);
                let mine: Vec<u64> = (0..SHARED).filter(|p| p % WRITERS == w).collect();
                let own = SHARED + OWN * w;
                let mut mapped = vec![false; mine.len()];
                for round in 1..=20_000u64 {
                    // Publish the generation before any mapping that uses it.
                    gens[w as usize].store(round, Release);
                    let i = rng.gen_range(0..mine.len());
                    let iova = mine[i] * PAGE;
                    if mapped[i] {
                        assert_eq!(pt.unmap(iova, PAGE), Ok(PAGE));
                    } else {
                        pt.map(iova, pa(mine[i], round), PAGE, rw).unwrap();
                    }
                    mapped[i] = !mapped[i];
                    if round % 8 == 0 {
                        // Fill part of the own span with blocks and pages, then drop it whole.
                        let at = own + 4 * rng.gen_range(0..4);
                        let len = if rng.gen() { 4 } else { rng.gen_range(1..4) };
                        pt.map(at * PAGE, pa(at, round), len * PAGE, rw).unwrap();
                        assert_eq!(pt.unmap(own * PAGE, OWN * PAGE), Ok(OWN * PAGE));
                    }
                }
                for (i, &m) in mapped.iter().enumerate() {
                    if m {
                        assert_eq!(pt.unmap(mine[i] * PAGE, PAGE), Ok(PAGE));
                    }
                }
            })
        })
        .collect();

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (pt, gens, stop) = (pt.clone(), gens.clone(), stop.clone());
            spawn(move || {
                let mut rng = StdRng::seed_from_u64(100 + r as u64);
                let mut seen = 0u64;
                while !stop.load(Acquire) {
                    // Translations under one held pin, then one pinned call each.
                    let reader = pt.reader();
                    for _ in 0..16 {
                        let iova = rng.gen_range(0..SHARED + OWN * WRITERS) * PAGE;
                        if let Some(t) = reader.translate(iova) {
                            check_seen(iova, t.paddr(), &gens);
                            seen += 1;
                        }
                    }
                    drop(reader);
                    let iova = rng.gen_range(0..SHARED + OWN * WRITERS) * PAGE;
                    if let Some(t) = pt.iova_to_phys(iova) {
                        check_seen(iova, t.paddr(), &gens);
                    }
                    for e in pt.dump().entries {
                        match e.desc {
                            Descriptor::Leaf { paddr, .. } => {
                                for off in
                                    (0..pt.geometry().block_size(e.level)).step_by(PAGE as usize)
                                {
                                    check_seen(e.iova + off, paddr + off, &gens);
                                }
                            }
                            Descriptor::Table { addr } => assert_eq!(addr % PAGE, 0),
                            Descriptor::Invalid => panic!("dump of an invalid descriptor"),
                        }
                    }
                }
                seen
            })
        })
        .collect();

    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Release);
    let seen: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(seen > 0, "readers never saw a mapping");

    let dump = pt.dump();
    assert_eq!(dump.leaves().count(), 0);
    let s = pt.stats();
    assert_eq!(s.linked() as usize, dump.tables, "{s:?}");
    assert!(s.retired > 0 && s.allocated > dump.tables as u64, "{s:?}");
    // Let the grace periods run: every retired or discarded table is freed, and only once.
    for _ in 0..10_000 {
        let s = pt.stats();
        assert!(
            s.freed <= s.discarded + s.retired,
            "a table was freed twice: {s:?}"
        );
        if s.freed == s.discarded + s.retired {
            break;
        }
        dma_sync::rcu::pin().flush();
        std::thread::yield_now();
    }
    let s = pt.stats();
    assert_eq!(s.freed, s.discarded + s.retired, "{s:?}");
}
