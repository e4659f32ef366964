//! Random operation sequences against a reference model of the live mappings: translations,
//! typed errors for bogus unmaps, the switch to lazy at a random point, and nothing leaked.
#![cfg(not(loom))]

mod common;

use common::domain_over;
use dma_iommu::{DeviceConfig, DmaError, FqConfig, Unmapped};
use proptest::prelude::*;
use std::time::Duration;
use swiotlb_core::{Config, Direction, RegionMemory};

#[derive(Debug, Clone)]
enum Op {
    Map { page: u64, offset: u64, size: u64 },
    Unmap { pick: usize },
    UnmapBogus { pick: usize, shift: u64 },
    UnmapAgain,
    Switch,
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..256u64, 0..0x1000u64, 1..0x3000u64).prop_map(|(page, offset, size)| Op::Map { page, offset, size }),
        3 => any::<usize>().prop_map(|pick| Op::Unmap { pick }),
        1 => (any::<usize>(), 1..0x3000u64).prop_map(|(pick, shift)| Op::UnmapBogus { pick, shift }),
        1 => Just(Op::UnmapAgain),
        1 => Just(Op::Switch),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 48 }, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn domain_matches_the_reference(ops in proptest::collection::vec(op(), 1..60), untrusted in any::<bool>()) {
        let mem = RegionMemory::new(2 << 20);
        let base = mem.base();
        let dom = domain_over(mem, Config::tiny(512, 1, 128), |cfg| cfg.iova.end_pfn = 256);
        let dev = dom.attach(DeviceConfig { trusted: !untrusted, ..DeviceConfig::default() }).unwrap();
        let fq = FqConfig::per_cpu().with_ring_size(4).with_timeout(Duration::from_secs(3600));

        let mut live: Vec<(u64, u64, u64)> = Vec::new();
        let mut last_unmapped = None;
        let (mut maps, mut errors, mut lazy) = (0u64, 0u64, false);
        for op in ops {
            match op {
                Op::Map { page, offset, size } => {
                    let paddr = base + page * 0x1000 + offset;
                    let dma = dom.map(&dev, paddr, size as usize, Direction::Bidirectional).unwrap();
                    if !untrusted {
                        prop_assert_eq!(dma & 0xfff, paddr & 0xfff);
                    }
                    prop_assert!(live.iter().all(|&(d, s, _)| dma + size <= d || d + s <= dma), "overlap");
                    live.push((dma, size, paddr));
                    maps += 1;
                }
                Op::Unmap { pick } if !live.is_empty() => {
                    let (dma, size, _) = live.swap_remove(pick % live.len());
                    let how = dom.unmap(&dev, dma, size as usize, Direction::Bidirectional).unwrap();
                    let expect = if lazy && !untrusted { Unmapped::Queued } else { Unmapped::Synced };
                    prop_assert_eq!(how, expect);
                    prop_assert_eq!(dom.translate(dma), None);
                    last_unmapped = Some((dma, size));
                }
                Op::UnmapBogus { pick, shift } if !live.is_empty() => {
                    let (dma, size, _) = live[pick % live.len()];
                    let r = dom.unmap(&dev, dma + shift, size as usize, Direction::Bidirectional);
                    prop_assert!(matches!(r, Err(DmaError::NotMapped { .. } | DmaError::Mismatch { .. })), "{:?}", r);
                    errors += 1;
                }
                Op::UnmapAgain => {
                    if let Some((dma, size)) = last_unmapped {
                        let r = dom.unmap(&dev, dma, size as usize, Direction::Bidirectional);
                        // The IOVA may have been handed out again by now; then it is not this size.
                        if !live.iter().any(|&(d, s, _)| d == dma && s == size) {
                            prop_assert!(r.is_err());
                            errors += 1;
                        } else {
                            live.retain(|&(d, _, _)| d != dma);
                            last_unmapped = None;
                        }
                    }
                }
                Op::Switch => {
                    prop_assert_eq!(dom.set_lazy(fq).unwrap(), !lazy);
                    lazy = true;
                }
                Op::Flush => {
                    prop_assert_eq!(dom.flush_queue_now(), lazy);
                }
                Op::Unmap { .. } | Op::UnmapBogus { .. } => {}
            }
            for &(dma, size, paddr) in &live {
                let first = dom.translate(dma).expect("live mapping translates");
                let last = dom.translate(dma + size - 1).expect("live mapping translates at its end");
                if untrusted && (paddr | (paddr + size)) & 0xfff != 0 {
                    prop_assert_eq!(last - first, size - 1, "bounce buffer contiguous");
                } else {
                    prop_assert_eq!((first, last), (paddr, paddr + size - 1));
                }
            }
        }
        let s = dom.stats();
        prop_assert_eq!((s.maps, s.errors, s.live), (maps, errors, live.len() as u64));
        for (dma, size, _) in live {
            dom.unmap(&dev, dma, size as usize, Direction::Bidirectional).unwrap();
        }
        dom.flush_queue_now();
        dom.iova_allocator().flush_all();
        prop_assert!(dom.iova_allocator().allocated_ranges().is_empty());
        prop_assert_eq!(dom.swiotlb().unwrap().stats().used, 0);
    }
}
