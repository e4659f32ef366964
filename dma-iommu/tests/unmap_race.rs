//! Hostile callers of one domain: a thread that maps and unmaps 4 KiB while another unmaps
//! whatever address the first was last given, with the right device and size. The registry
//! must hand each mapping to exactly one unmap (the other gets `NotMapped`), whether the
//! second unmap hits the mapping it aimed at or a later one that reused its IOVA; at the end
//! nothing is live, mapped or allocated.
#![cfg(not(loom))]

use dma_iommu::{DeviceConfig, Direction, DmaError, Domain, DomainConfig, FqConfig, NoTlb};
use dma_sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use dma_sync::Arc;

const MAPS: u64 = if cfg!(miri) { 30 } else { 20_000 };

fn race(lazy: bool) {
    let mut cfg = DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
    if lazy {
        cfg = cfg.lazy(FqConfig::per_cpu().with_cpus(2).with_ring_size(8));
    }
    let dom = Arc::new(Domain::new(cfg, NoTlb, None).unwrap());
    let dev = Arc::new(
        dom.attach(DeviceConfig {
            trusted: true,
            ..DeviceConfig::default()
        })
        .unwrap(),
    );
    let last = Arc::new(AtomicU64::new(0));
    // The thief's successes so far: the mapper goes on until it has had some, so the race
    // is run, not just allowed.
    let stolen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let dir = Direction::Bidirectional;
    let thief = {
        let (dom, dev, last, done) = (dom.clone(), dev.clone(), last.clone(), done.clone());
        let stolen = stolen.clone();
        dma_sync::thread::spawn(move || {
            dma_sync::cpu::set_current(Some(1));
            while !done.load(Relaxed) {
                let dma = last.load(Relaxed);
                if dma == 0 {
                    continue;
                }
                match dom.unmap(&dev, dma, 4096, dir) {
                    Ok(_) => _ = stolen.fetch_add(1, Relaxed),
                    Err(DmaError::NotMapped { .. }) => {}
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
        })
    };
    dma_sync::cpu::set_current(Some(0));
    let (mut mine, mut maps) = (0u64, 0u64);
    while maps < MAPS || (stolen.load(Relaxed) == 0 && maps < 100 * MAPS) {
        let i = maps;
        maps += 1;
        let paddr = 0x10_0000 + (i % 64) * 0x1000;
        let dma = dom.map(&dev, paddr, 4096, dir).unwrap();
        last.store(dma, Relaxed);
        match dom.unmap(&dev, dma, 4096, dir) {
            Ok(_) => mine += 1,
            Err(DmaError::NotMapped { .. }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    done.store(true, Relaxed);
    thief.join().unwrap();
    let stolen = stolen.load(Relaxed);
    assert!(stolen > 0, "the second thread never unmapped a mapping");
    assert_eq!(mine + stolen, maps, "each mapping unmapped exactly once");
    let st = dom.stats();
    assert_eq!((st.maps, st.live), (maps, 0), "{st:?}");
    assert!(dom.flush_queue_now() || !lazy);
    let iova = dom.iova_allocator();
    iova.flush_all();
    assert_eq!(iova.allocated_ranges(), vec![]);
    iova.check_invariants().unwrap();
    for i in 0..64 {
        assert_eq!(dom.translate(0x1000 * (i + 1)), None);
    }
}

#[test]
#[cfg_attr(miri, ignore)] // a contended lock parks through a futex call Miri rejects
fn racing_unmaps_of_one_iova_take_each_mapping_once_strict() {
    race(false);
}

#[test]
#[cfg_attr(miri, ignore)] // as above
fn racing_unmaps_of_one_iova_take_each_mapping_once_lazy() {
    race(true);
}
