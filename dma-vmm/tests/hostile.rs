//! Hostile callers of dma-vmm's public API: a guest whose MAP asks for more page-table memory
//! than the device may spend (in leaves, or in tables for scattered pages), reversed ranges handed to the mapping tree, and a `Translate`
//! implementation that reports empty leaves. Each gets a typed answer; nothing panics, hangs
//! or grows without bound, and the structure keeps working.
#![cfg(not(loom))]

use dma_sync::atomic::{AtomicU64, Ordering::Relaxed};
use dma_vmm::translate::{access, Segments};
use dma_vmm::viommu::{
    MapConflict, Mapping, MappingTree, Request, Status, Viommu, ViommuConfig, MAP_F_READ,
};
use dma_vmm::{Fault, Leaf, Translate};
use io_pgtable::Prot;

fn map(domain: u32, virt_start: u64, virt_end: u64, phys_start: u64) -> Request {
    Request::Map {
        domain,
        virt_start,
        virt_end,
        phys_start,
        flags: MAP_F_READ,
    }
}

/// One MAP of 64 GiB + 4 KiB whose IOVA and GPA differ in their 4 KiB bit needs 2^24 + 1
/// pages (128 MiB of leaf tables); half the 48-bit input range so mapped would need 256 GiB.
/// The mapping cap counts requests, so it let both through and the device allocated until
/// memory ran out. Now the leaves count, against `max_leaves`.
#[test]
fn a_map_of_more_leaves_than_the_device_holds_is_nomem() {
    let v = Viommu::new(ViommuConfig::default()).unwrap();
    let dev = v.add_endpoint(1, vec![]).unwrap();
    let attach = Request::Attach {
        domain: 1,
        endpoint: 1,
        flags: 0,
    };
    assert_eq!(v.handle(attach).status(), Status::Ok);
    let max = ViommuConfig::default().max_leaves;
    assert_eq!(
        v.handle(map(1, 0, ((max + 1) << 12) - 1, 0x1000)).status(),
        Status::NoMem
    );
    assert_eq!(
        v.handle(map(1, 0, (1 << 47) - 1, 0x1000)).status(),
        Status::NoMem
    );
    assert_eq!(v.mappings(1).unwrap(), vec![]);
    let pt = v.domain(1).unwrap();
    assert_eq!(pt.page_table().unwrap().iova_to_phys(0), None);
    // The same span in 1 GiB blocks is 64 leaves; the room a refused MAP asked for is free.
    let blocks = map(1, 0, (1 << 36) - 1, 1 << 30);
    assert_eq!(v.handle(blocks).status(), Status::Ok);
    assert_eq!(
        dev.access(0x10, 4, Prot::READ, |s| s[0].paddr),
        Ok((1 << 30) + 0x10)
    );
    // Leaves come back with UNMAP: a budget filled exactly has room again after it.
    let unmap = |s, e| Request::Unmap {
        domain: 1,
        virt_start: s,
        virt_end: e,
    };
    assert_eq!(v.handle(unmap(0, u64::MAX)).status(), Status::Ok);
    let pages = 1 << 14;
    let small = ViommuConfig {
        max_leaves: pages,
        ..ViommuConfig::default()
    };
    let v = Viommu::new(small).unwrap();
    v.add_endpoint(1, vec![]).unwrap();
    assert_eq!(v.handle(attach).status(), Status::Ok);
    assert_eq!(
        v.handle(map(1, 0, (pages << 12) - 1, 0x1000)).status(),
        Status::Ok
    );
    assert_eq!(
        v.handle(map(1, 1 << 40, (1 << 40) + 0xfff, 0)).status(),
        Status::NoMem
    );
    assert_eq!(v.handle(unmap(0, u64::MAX)).status(), Status::Ok);
    assert_eq!(
        v.handle(map(1, 1 << 40, (1 << 40) + 0xfff, 0)).status(),
        Status::Ok
    );
    // A dying domain gives its leaves back too.
    let detach = Request::Detach {
        domain: 1,
        endpoint: 1,
    };
    assert_eq!(v.handle(detach).status(), Status::Ok);
    assert_eq!(v.handle(attach).status(), Status::Ok);
    assert_eq!(
        v.handle(map(1, 0, (pages << 12) - 1, 0x1000)).status(),
        Status::Ok
    );
}

/// `MappingTree` is public: a reversed range panicked in `BTreeMap::range` (insert,
/// `check_insert`, `plan_unmap`, `intersecting`), and `Mapping::len` of a reversed mapping
/// overflowed.
/// Scattered one-page MAPs, each in its own 1 GiB of the 48-bit space, need their own
/// level-2 and level-3 tables (and a level-1 table for each 512 GiB): 2^20 of them, the
/// default `max_mappings`, held 8 GiB of tables for 4 MiB of leaves, and `max_leaves` saw one
/// leaf each. Now the tables a MAP installs count, against `max_tables`, before any is made.
#[test]
fn scattered_one_page_maps_are_bounded_by_their_tables() {
    let v = Viommu::new(ViommuConfig::default()).unwrap();
    v.add_endpoint(1, vec![]).unwrap();
    let attach = Request::Attach {
        domain: 1,
        endpoint: 1,
        flags: 0,
    };
    assert_eq!(v.handle(attach).status(), Status::Ok);
    // Map `i`: a page at 512 GiB `i % 512`, 1 GiB `i / 512` of it.
    let at = |i: u64| ((i % 512) << 39) | ((i / 512) << 30);
    let page = |i: u64| map(1, at(i), at(i) + 0xfff, 0x1000);
    let linked = || {
        let domain = v.domain(1).unwrap();
        domain.page_table().unwrap().stats().linked() - 1
    };
    // The first 512 need three tables each, the others two: 65536 tables hold 32512 maps.
    let max = ViommuConfig::default().max_tables;
    let fit = 512 + (max - 3 * 512) / 2;
    for i in 0..fit {
        assert_eq!(v.handle(page(i)).status(), Status::Ok, "map {i}");
    }
    assert_eq!(linked(), max);
    assert_eq!(v.handle(page(fit)).status(), Status::NoMem);
    assert_eq!(linked(), max, "refused before anything was allocated");
    assert_eq!(v.mappings(1).unwrap().len() as u64, fit);
    // A page next to a mapped one needs no table: still mapped.
    assert_eq!(
        v.handle(map(1, at(7) + 0x1000, at(7) + 0x1fff, 0x2000))
            .status(),
        Status::Ok
    );
    // UNMAP frees the tables its gap no longer needs: room for one more scattered page.
    let unmap = |s: u64, e: u64| Request::Unmap {
        domain: 1,
        virt_start: s,
        virt_end: e,
    };
    let last = fit - 1;
    assert_eq!(
        v.handle(unmap(at(last), at(last) + 0xfff)).status(),
        Status::Ok
    );
    assert_eq!(linked(), max - 2);
    assert_eq!(v.handle(page(fit)).status(), Status::Ok);
    assert_eq!(v.handle(unmap(0, u64::MAX)).status(), Status::Ok);
    assert_eq!(linked(), 0);

    // A gap of exactly one leaf table's 2 MiB span frees that table; a smaller one frees
    // nothing.
    for iova in [0x1f_f000, 0x20_0000, 0x40_0000] {
        assert_eq!(
            v.handle(map(1, iova, iova + 0xfff, iova)).status(),
            Status::Ok
        );
    }
    let three = linked();
    assert_eq!(
        v.handle(map(1, 0x20_1000, 0x20_1fff, 0)).status(),
        Status::Ok
    );
    assert_eq!(v.handle(unmap(0x20_1000, 0x20_1fff)).status(), Status::Ok);
    assert_eq!(linked(), three);
    assert_eq!(v.handle(unmap(0x20_0000, 0x20_0fff)).status(), Status::Ok);
    assert_eq!(linked(), three - 1);
    assert_eq!(v.handle(unmap(0, u64::MAX)).status(), Status::Ok);

    // MAP and UNMAP cycles over fresh addresses reuse the same room.
    let tight = ViommuConfig {
        max_tables: 3,
        ..ViommuConfig::default()
    };
    let v = Viommu::new(tight).unwrap();
    v.add_endpoint(1, vec![]).unwrap();
    assert_eq!(v.handle(attach).status(), Status::Ok);
    for i in 0..64 {
        assert_eq!(v.handle(page(i * 7919)).status(), Status::Ok, "cycle {i}");
        let a = at(i * 7919);
        assert_eq!(v.handle(unmap(a, a + 0xfff)).status(), Status::Ok);
    }
    assert_eq!(v.handle(page(1)).status(), Status::Ok);
    assert_eq!(v.handle(page(2)).status(), Status::NoMem);
    // A dying domain gives its tables back; so does a device reset.
    let detach = Request::Detach {
        domain: 1,
        endpoint: 1,
    };
    assert_eq!(v.handle(detach).status(), Status::Ok);
    assert_eq!(v.handle(attach).status(), Status::Ok);
    assert_eq!(v.handle(page(2)).status(), Status::Ok);
    v.reset();
    assert_eq!(v.handle(attach).status(), Status::Ok);
    assert_eq!(v.handle(page(3)).status(), Status::Ok);
}

#[test]
fn reversed_ranges_in_the_mapping_tree_are_refused() {
    let mut t = MappingTree::new();
    let ok = Mapping {
        virt_start: 0x1000,
        virt_end: 0x1fff,
        phys_start: 0,
        flags: 3,
    };
    t.insert(ok).unwrap();
    let reversed = Mapping {
        virt_start: 0x3000,
        virt_end: 0x2fff,
        ..ok
    };
    let refused = Err(MapConflict::Reversed {
        start: 0x3000,
        end: 0x2fff,
    });
    assert_eq!((reversed.len(), reversed.is_empty()), (0, true));
    assert_eq!((ok.len(), ok.is_empty()), (0x1000, false));
    assert_eq!(t.check_insert(&reversed), refused);
    assert_eq!(t.insert(reversed), refused);
    assert_eq!(
        t.plan_unmap(0x3000, 0x2fff),
        Err(MapConflict::Reversed {
            start: 0x3000,
            end: 0x2fff
        })
    );
    assert_eq!(t.intersecting(0x1800, 0x17ff).count(), 0);
    assert_eq!(t.iter().copied().collect::<Vec<_>>(), vec![ok]);
    assert_eq!(t.plan_unmap(0, u64::MAX), Ok(vec![ok]));
}

/// A `Translate` whose every leaf is empty: the walk stayed on the same IOVA for ever
/// (merging empty leaves). It must end on a fault; `lookups` bounds the damage on old code.
struct EmptyLeaves {
    lookups: AtomicU64,
}

impl Translate for EmptyLeaves {
    fn lookup(&self, iova: u64) -> Result<Leaf, Fault> {
        assert!(
            self.lookups.fetch_add(1, Relaxed) < 1000,
            "the walk does not advance"
        );
        Ok(Leaf {
            paddr: iova,
            len: 0,
            prot: Prot::READ | Prot::WRITE,
        })
    }
}

#[test]
fn a_translation_reporting_empty_leaves_faults() {
    let tr = EmptyLeaves {
        lookups: AtomicU64::new(0),
    };
    assert_eq!(
        access(&tr, 0x1000, 16, Prot::READ, |s| s.len()),
        Err(Fault::Unmapped { iova: 0x1000 })
    );
    let walk: Vec<_> = Segments::new(&tr, 0x1000, 16, Prot::READ).collect();
    assert_eq!(walk, vec![Err(Fault::Unmapped { iova: 0x1000 })]);
    assert!(tr.lookups.load(Relaxed) <= 2);
}
