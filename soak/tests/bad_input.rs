//! The bad-input table: every public entry point against zero, maximum, unaligned,
//! overflowing, never-mapped, double-freed and wrong-device arguments, with the typed error
//! each must give, and a check that the structure keeps working afterwards.
//!
//! Each crate's table is rendered as markdown and compared with the checked-in
//! `soak/bad-input/<crate>.md`, so the published table is always what the test asserts: a
//! difference fails with the lines that differ, and `DMALOOM_BLESS=1 cargo test -p dma-soak
//! --test bad_input` rewrites the files instead.
#![cfg(not(loom))]

use std::fmt::Debug;

/// Rows of the table for one crate; asserts as it goes.
struct Table {
    krate: &'static str,
    rows: Vec<[String; 3]>,
}

/// The variant name of an error's `Debug` form, with the inner variant of a wrapped error
/// (`PageTable(OutOfRange)`); field values vary between runs.
fn variant(e: &impl Debug) -> String {
    let s = format!("{e:?}");
    let name = |s: &str| s[..s.find([' ', '(', '{', ')']).unwrap_or(s.len())].to_string();
    let outer = name(&s);
    match s[outer.len()..].strip_prefix('(') {
        Some(inner) if inner.starts_with(char::is_uppercase) => format!("{outer}({})", name(inner)),
        _ => outer,
    }
}

impl Table {
    fn new(krate: &'static str) -> Self {
        Table {
            krate,
            rows: Vec::new(),
        }
    }

    /// `got` must be exactly the error `want` (for configuration errors, whose payload is
    /// prose, the same variant).
    fn err<T: Debug, E: Debug + PartialEq>(
        &mut self,
        entry: &str,
        class: &str,
        got: Result<T, E>,
        want: E,
    ) {
        let shown = variant(&want);
        let krate = self.krate;
        match got {
            Err(e) if shown.ends_with("Config") => {
                assert_eq!(variant(&e), shown, "{krate}: {entry} with {class}")
            }
            got => assert_eq!(got.err(), Some(want), "{krate}: {entry} with {class}"),
        }
        self.rows
            .push([entry.into(), class.into(), format!("`{shown}`")]);
    }

    /// `got` must be an error of the variant `pattern` matches (its fields depend on run-time
    /// addresses).
    fn err_like<T: Debug, E: Debug>(
        &mut self,
        entry: &str,
        class: &str,
        got: Result<T, E>,
        ok: impl Fn(&E) -> bool,
    ) {
        match got {
            Err(e) if ok(&e) => {
                self.rows
                    .push([entry.into(), class.into(), format!("`{}`", variant(&e))])
            }
            other => panic!("{}: {entry} with {class}: unexpected {other:?}", self.krate),
        }
    }

    /// A mapping that is gone, or not `class`'s to touch: its unmap and then a sync for the CPU
    /// must both be the error `want`.
    fn gone<U: Debug, S: Debug, E: Debug + PartialEq + Clone>(
        &mut self,
        (unmap_class, sync_class): (&str, &str),
        unmap: Result<U, E>,
        sync_for_cpu: impl FnOnce() -> Result<S, E>,
        want: E,
    ) {
        self.err("unmap", unmap_class, unmap, want.clone());
        self.err("sync_for_cpu", sync_class, sync_for_cpu(), want);
    }

    /// A call that is not an error by contract: record what it does.
    fn accepted(&mut self, entry: &str, class: &str, what: &str, holds: bool) {
        assert!(
            holds,
            "{}: {entry} with {class}: expected {what}",
            self.krate
        );
        self.rows.push([entry.into(), class.into(), what.into()]);
    }

    /// Renders the table and compares it with its checked-in file (rewrites the file when
    /// `DMALOOM_BLESS` is set).
    fn check(&self) {
        let mut rendered = format!(
            "# {}: bad input\n\nWritten by `soak/tests/bad_input.rs`, which asserts every row; \
             `DMALOOM_BLESS=1` rewrites this file.\n\n\
             | Entry point | Argument | Result |\n|---|---|---|\n",
            self.krate
        );
        for [e, c, r] in &self.rows {
            rendered += &format!("| `{e}` | {c} | {r} |\n");
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("bad-input")
            .join(format!("{}.md", self.krate));
        if std::env::var_os("DMALOOM_BLESS").is_some() {
            std::fs::write(&path, &rendered).expect("write the bad-input table");
            return;
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        if stored != rendered {
            panic!(
                "{} differs from the table this test asserts \
                 (DMALOOM_BLESS=1 rewrites it):\n{}",
                path.display(),
                line_diff(&stored, &rendered)
            );
        }
    }
}

/// The lines only `old` has (`-`) and only `new` has (`+`), in order: a longest-common-
/// subsequence diff, enough for tables of a few hundred lines.
fn line_diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    // common[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            (i, j) = (i + 1, j + 1);
        } else if j == b.len() || (i < a.len() && common[i + 1][j] >= common[i][j + 1]) {
            out += &format!("-{}\n", a[i]);
            i += 1;
        } else {
            out += &format!("+{}\n", b[j]);
            j += 1;
        }
    }
    out
}

mod pgtable {
    use super::Table;
    use io_pgtable::{AddrKind, Config, Error, Gather, PageTable, Prot};

    const RW: Prot = Prot::READ.union(Prot::WRITE);
    /// The highest page-aligned address.
    const LAST_PAGE: u64 = !0xfff;

    #[test]
    fn io_pgtable_table() {
        let mut t = Table::new("io-pgtable");
        t.err(
            "PageTable::new",
            "input size 60 bits",
            PageTable::new(Config::s1_4k(60)).map(|_| ()),
            Error::InvalidConfig {
                reason: "address size above 48 bits (52 only with 64 KiB)",
            },
        );
        let pt = PageTable::new(Config::s1_4k(39)).unwrap();
        let top = 1u64 << 39;
        t.err(
            "map_pages",
            "zero count",
            pt.map_pages(0x1000, 0x1000, 0x1000, 0, RW),
            Error::ZeroCount,
        );
        t.err(
            "map_pages",
            "zero page size",
            pt.map_pages(0, 0, 0, 1, RW),
            Error::UnsupportedPageSize { pgsize: 0 },
        );
        t.err(
            "map_pages",
            "maximum page size",
            pt.map_pages(0, 0, u64::MAX, 1, RW),
            Error::UnsupportedPageSize { pgsize: u64::MAX },
        );
        t.err(
            "map_pages",
            "page size not supported (8 KiB)",
            pt.map_pages(0, 0, 0x2000, 1, RW),
            Error::UnsupportedPageSize { pgsize: 0x2000 },
        );
        t.err(
            "map_pages",
            "unaligned iova",
            pt.map_pages(0x1234, 0, 0x1000, 1, RW),
            Error::Misaligned {
                kind: AddrKind::Iova,
                addr: 0x1234,
                align: 0x1000,
            },
        );
        t.err(
            "map_pages",
            "unaligned paddr",
            pt.map_pages(0x1000, 0x10, 0x1000, 1, RW),
            Error::Misaligned {
                kind: AddrKind::Paddr,
                addr: 0x10,
                align: 0x1000,
            },
        );
        t.err(
            "map_pages",
            "iova beyond the input size",
            pt.map_pages(top, 0, 0x1000, 1, RW),
            Error::OutOfRange {
                kind: AddrKind::Iova,
                addr: top,
                bits: 39,
            },
        );
        t.err(
            "map_pages",
            "paddr beyond the output size",
            pt.map_pages(0, 1 << 48, 0x1000, 1, RW),
            Error::OutOfRange {
                kind: AddrKind::Paddr,
                addr: 1 << 48,
                bits: 48,
            },
        );
        t.err(
            "map_pages",
            "maximum count (overflowing)",
            pt.map_pages(0, 0, 0x1000, usize::MAX, RW),
            Error::Overflow,
        );
        t.err(
            "map_pages",
            "maximum iova (overflowing end)",
            pt.map_pages(LAST_PAGE, 0, 0x1000, 1, RW),
            Error::Overflow,
        );
        t.err(
            "map_pages",
            "no read or write permission",
            pt.map_pages(0, 0, 0x1000, 1, Prot::CACHE),
            Error::NoAccess,
        );
        assert_eq!(
            pt.map_pages(0x20_0000, 0x20_0000, 0x20_0000, 1, RW),
            Ok(0x20_0000)
        );
        t.err(
            "map_pages",
            "already mapped (double map)",
            pt.map_pages(0x20_1000, 0, 0x1000, 1, RW),
            Error::Exists { iova: 0x20_0000 },
        );
        let mut g = Gather::new();
        t.err(
            "unmap_pages",
            "zero count",
            pt.unmap_pages(0x20_0000, 0x20_0000, 0, &mut g),
            Error::ZeroCount,
        );
        t.err(
            "unmap_pages",
            "never mapped",
            pt.unmap_pages(0x4000_0000, 0x1000, 1, &mut g),
            Error::NotMapped { iova: 0x4000_0000 },
        );
        t.err(
            "unmap_pages",
            "inside a block (partial)",
            pt.unmap_pages(0x20_0000, 0x1000, 1, &mut g),
            Error::PartialBlock {
                iova: 0x20_0000,
                block_size: 0x20_0000,
            },
        );
        t.err(
            "unmap_pages",
            "unaligned iova",
            pt.unmap_pages(0x20_0800, 0x1000, 1, &mut g),
            Error::Misaligned {
                kind: AddrKind::Iova,
                addr: 0x20_0800,
                align: 0x1000,
            },
        );
        t.err(
            "unmap_pages",
            "maximum count (overflowing)",
            pt.unmap_pages(0x20_0000, 0x20_0000, usize::MAX, &mut g),
            Error::Overflow,
        );
        assert_eq!(
            pt.unmap_pages(0x20_0000, 0x20_0000, 1, &mut g),
            Ok(0x20_0000)
        );
        t.err(
            "unmap_pages",
            "double unmap",
            pt.unmap_pages(0x20_0000, 0x20_0000, 1, &mut g),
            Error::NotMapped { iova: 0x20_0000 },
        );
        g.sync(pt.tlb());
        t.err("map", "zero size", pt.map(0, 0, 0, RW), Error::ZeroCount);
        t.err(
            "map",
            "unaligned size",
            pt.map(0, 0, 0x1800, RW),
            Error::Misaligned {
                kind: AddrKind::Iova,
                addr: 0x1800,
                align: 0x1000,
            },
        );
        t.err(
            "map",
            "maximum size (beyond the output size)",
            pt.map(0, 0, LAST_PAGE, RW),
            Error::OutOfRange {
                kind: AddrKind::Paddr,
                addr: 0,
                bits: 48,
            },
        );
        t.err(
            "map",
            "overflowing end",
            pt.map(LAST_PAGE, 0, 0x2000, RW),
            Error::Overflow,
        );
        t.err("unmap", "zero size", pt.unmap(0, 0), Error::ZeroCount);
        t.err(
            "unmap",
            "never mapped",
            pt.unmap(0x1000, 0x1000),
            Error::NotMapped { iova: 0x1000 },
        );
        t.err(
            "unmap",
            "overflowing end",
            pt.unmap(LAST_PAGE, 0x2000),
            Error::Overflow,
        );
        for (class, iova, size, want) in [
            ("zero size", 0, 0, Error::ZeroCount),
            (
                "unaligned iova",
                0x800,
                0x1000,
                Error::Misaligned {
                    kind: AddrKind::Iova,
                    addr: 0x800,
                    align: 0x1000,
                },
            ),
            ("overflowing end", LAST_PAGE, 0x2000, Error::Overflow),
        ] {
            t.err("leaves", class, pt.leaves(iova, iova, size), want);
            t.err(
                "tables_to_install",
                class,
                pt.tables_to_install(iova, iova, size),
                want,
            );
            t.err("prune", class, pt.prune(iova, size), want);
        }
        t.accepted(
            "prune",
            "the whole space, after a map and its unmap",
            "accepted, only the root left",
            {
                let fresh = PageTable::new(Config::s1_4k(39)).unwrap();
                fresh.map(0x1000, 0x1000, 0x1000, RW).unwrap();
                fresh.unmap(0x1000, 0x1000).unwrap();
                fresh.prune(0, top) == Ok(()) && fresh.stats().linked() == 1
            },
        );
        t.accepted(
            "iova_to_phys",
            "maximum / never-mapped iova",
            "`None`",
            pt.iova_to_phys(u64::MAX).is_none() && pt.iova_to_phys(0x1000).is_none(),
        );
        t.accepted(
            "Reader::translate",
            "beyond the input size",
            "`None`",
            pt.reader().translate(top).is_none(),
        );
        // Still working: a map, its translation, its unmap, and no table leaked.
        pt.map(0x3000, 0x9000, 0x2000, RW).unwrap();
        assert_eq!(pt.iova_to_phys(0x3abc).unwrap().paddr(), 0x9abc);
        assert_eq!(pt.unmap(0x3000, 0x2000), Ok(0x2000));
        assert_eq!(pt.dump().tables as u64, pt.stats().linked());
        assert!(pt.dump().leaves().next().is_none());
        let mut g = Gather::new();
        t.accepted(
            "Gather::add_page / is_disjoint",
            "zero size",
            "accepted, no overflow",
            {
                g.add_page(pt.tlb(), 0x8000, 0);
                g.sync(pt.tlb());
                !g.is_disjoint(0x1000, 0)
            },
        );
        t.check();
    }
}

mod iova {
    use super::Table;
    use dma_iommu::DevicePolicy;
    use iova_cache::{IovaAllocator, IovaConfig, IovaError, RangeKind};

    fn cfg() -> IovaConfig {
        IovaConfig {
            cpus: 2,
            magazine_size: 4,
            trim_interval: None,
            ..IovaConfig::with_space(16, 4095)
        }
    }

    #[test]
    fn iova_cache_table() {
        let mut t = Table::new("iova-cache");
        let new = |c: IovaConfig| IovaAllocator::new(c).map(|_| ());
        t.err(
            "IovaAllocator::new",
            "start above end",
            new(IovaConfig::with_space(10, 1)),
            IovaError::InvalidConfig("start_pfn lies above end_pfn"),
        );
        t.err(
            "IovaAllocator::new",
            "maximum end pfn",
            new(IovaConfig::with_space(0, u64::MAX)),
            IovaError::InvalidConfig("end_pfn must lie below u64::MAX"),
        );
        t.err(
            "IovaAllocator::new",
            "zero CPU slots",
            new(IovaConfig { cpus: 0, ..cfg() }),
            IovaError::InvalidConfig("at least one CPU slot is needed"),
        );
        t.err(
            "IovaAllocator::new",
            "zero-entry magazines",
            new(IovaConfig {
                magazine_size: 0,
                ..cfg()
            }),
            IovaError::InvalidConfig("magazines need at least one entry"),
        );
        t.err(
            "IovaAllocator::new",
            "zero granule shift",
            new(IovaConfig {
                granule_shift: 0,
                ..cfg()
            }),
            IovaError::InvalidConfig("granule_shift must be in 1..=32"),
        );
        let a = IovaAllocator::new(cfg()).unwrap();
        let space = 4096 - 16;
        t.err("alloc", "zero size", a.alloc(0, 4095), IovaError::ZeroSize);
        t.err(
            "alloc",
            "maximum size",
            a.alloc(u64::MAX, 4095),
            IovaError::TooLarge {
                size: u64::MAX,
                space,
            },
        );
        t.err(
            "alloc",
            "limit below the start",
            a.alloc(1, 15),
            IovaError::LimitBelowStart {
                limit: 15,
                start: 16,
            },
        );
        t.err(
            "alloc_no_flush",
            "zero size",
            a.alloc_no_flush(0, 4095),
            IovaError::ZeroSize,
        );
        t.err(
            "alloc_range",
            "zero size",
            a.alloc_range(0, 4095, true),
            IovaError::ZeroSize,
        );
        t.err(
            "alloc_range",
            "maximum size",
            a.alloc_range(u64::MAX, u64::MAX, true),
            IovaError::TooLarge {
                size: u64::MAX,
                space,
            },
        );
        t.err(
            "alloc_range",
            "limit below the start (zero)",
            a.alloc_range(1, 0, false),
            IovaError::LimitBelowStart {
                limit: 0,
                start: 16,
            },
        );
        t.err(
            "alloc_range",
            "whole space, aligned (no aligned fit)",
            a.alloc_range(space, 4095, true),
            IovaError::NoSpace {
                size: space,
                limit: 4095,
            },
        );
        let dev = DevicePolicy::new(true);
        t.err(
            "DevicePolicy::alloc_iova",
            "zero size",
            dev.alloc_iova(&a, 0, u64::MAX),
            IovaError::ZeroSize,
        );
        t.err(
            "DevicePolicy::alloc_iova",
            "mask below the start",
            dev.alloc_iova(&a, 1, 3),
            IovaError::LimitBelowStart {
                limit: 3,
                start: 16,
            },
        );
        t.err("free", "zero size", a.free(100, 0), IovaError::ZeroSize);
        t.err(
            "free",
            "never allocated",
            a.free(100, 1),
            IovaError::NotAllocated { pfn: 100 },
        );
        t.err(
            "free",
            "maximum pfn",
            a.free(u64::MAX, 64),
            IovaError::NotAllocated { pfn: u64::MAX },
        );
        let p = a.alloc(4, 4095).unwrap();
        t.err(
            "free",
            "wrong size",
            a.free(p, 8),
            IovaError::SizeMismatch {
                pfn: p,
                allocated: 4,
                freed: 8,
            },
        );
        t.err(
            "free",
            "unaligned (inside the range)",
            a.free(p + 1, 4),
            IovaError::NotAllocated { pfn: p + 1 },
        );
        a.free(p, 4).unwrap();
        t.err(
            "free",
            "double free (cached size)",
            a.free(p, 4),
            IovaError::NotAllocated { pfn: p },
        );
        let big = a.alloc(80, 4095).unwrap();
        a.free(big, 80).unwrap();
        t.err(
            "free",
            "double free (uncached size)",
            a.free(big, 80),
            IovaError::NotAllocated { pfn: big },
        );
        t.err(
            "free_range",
            "never allocated",
            a.free_range(200, 3),
            IovaError::NotAllocated { pfn: 200 },
        );
        t.err(
            "free_range",
            "double free of a pfn sitting in a cache",
            a.free_range(p, 4),
            IovaError::NotAllocated { pfn: p },
        );
        let c = a.alloc(2, 4095).unwrap();
        t.err(
            "free_range",
            "range from the cached path (wrong family)",
            a.free_range(c, 2),
            IovaError::NotAllocated { pfn: c },
        );
        a.free(c, 2).unwrap();
        let r = a.alloc_range(3, 4095, false).unwrap();
        a.free_range(r, 3).unwrap();
        t.err(
            "free_range",
            "double free",
            a.free_range(r, 3),
            IovaError::NotAllocated { pfn: r },
        );
        let r = a.alloc_range(2, 4095, true).unwrap();
        t.err(
            "free",
            "range allocated uncached, freed through the cache",
            a.free(r, 2),
            IovaError::NotAllocated { pfn: r },
        );
        a.free_range(r, 2).unwrap();
        t.err(
            "reserve",
            "low above high",
            a.reserve(20, 10),
            IovaError::InvalidRange { lo: 20, hi: 10 },
        );
        let held = a.alloc(1, 4095).unwrap();
        t.err(
            "reserve",
            "overlapping a live allocation",
            a.reserve(held, held),
            IovaError::ReserveOverlapsAllocation { pfn: held, size: 1 },
        );
        a.free(held, 1).unwrap();
        t.accepted(
            "reserve",
            "maximum range (beyond the space)",
            "accepted, clipped to the space",
            a.reserve(4000, u64::MAX - 1).is_ok(),
        );
        t.accepted("find", "maximum pfn", "`None`", a.find(u64::MAX).is_none());
        t.accepted("flush_cpu", "maximum CPU index", "ignored", {
            a.flush_cpu(usize::MAX);
            true
        });
        // Still working: allocations below the reservation, every range back after frees.
        let q = a.alloc(8, 4095).unwrap();
        assert!(q + 7 < 4000 && q % 8 == 0);
        assert_eq!(a.find(4001).unwrap().kind, RangeKind::Reserved);
        a.free(q, 8).unwrap();
        a.flush_all();
        assert_eq!(a.allocated_ranges(), vec![]);
        a.check_invariants().unwrap();
        t.check();
    }

    /// Configurations with absurd CPU or magazine counts are refused (they once panicked
    /// with a capacity overflow).
    #[test]
    fn maximum_cpus_is_a_config_error() {
        assert!(IovaAllocator::new(IovaConfig {
            cpus: usize::MAX,
            ..cfg()
        })
        .is_err());
        assert!(IovaAllocator::new(IovaConfig {
            magazine_size: usize::MAX,
            ..cfg()
        })
        .is_err());
    }
}

mod swiotlb {
    use super::Table;
    use swiotlb_core::{
        Config, DeviceConfig, Direction, Error, MapAttrs, RegionMemory, Swiotlb, INVALID_PHYS_ADDR,
    };

    const BI: Direction = Direction::Bidirectional;

    #[test]
    fn swiotlb_core_table() {
        let mut t = Table::new("swiotlb-core");
        let mem = |n| RegionMemory::new(n);
        t.err(
            "Swiotlb::new",
            "zero slots",
            Swiotlb::new(
                Config {
                    nslabs: 0,
                    ..Config::tiny(8, 1, 8)
                },
                mem(64),
            )
            .map(|_| ()),
            Error::InvalidConfig("nslabs must be at least 1"),
        );
        t.err(
            "Swiotlb::new",
            "segment of 3 slots (not a power of two)",
            Swiotlb::new(Config::tiny(8, 1, 3), mem(64)).map(|_| ()),
            Error::InvalidConfig("segment_slots must be a power of two up to 128"),
        );
        t.err(
            "Swiotlb::new",
            "maximum slots",
            Swiotlb::new(
                Config {
                    nslabs: 1 << 40,
                    ..Config::tiny(8, 1, 8)
                },
                mem(64),
            )
            .map(|_| ()),
            Error::InvalidConfig("nslabs above 2^32"),
        );
        let m = RegionMemory::new(256 * 1024);
        let base = m.base();
        let swiotlb = Swiotlb::new(Config::tiny(64, 2, 16), m).unwrap();
        let other = Swiotlb::new(Config::tiny(8, 1, 8), mem(64)).unwrap();
        let dev = swiotlb.device(DeviceConfig::default());
        let foreign = other.device(DeviceConfig::default());
        let max = swiotlb.max_mapping_size(&dev);
        let attrs = MapAttrs::default();
        t.err(
            "map",
            "zero size",
            swiotlb.map(&dev, base, 0, BI, attrs),
            Error::ZeroSize,
        );
        t.err(
            "map",
            "above the maximum mapping size",
            swiotlb.map(&dev, base, max + 1, BI, attrs),
            Error::TooLarge { size: max + 1, max },
        );
        t.err(
            "map",
            "maximum size",
            swiotlb.map(&dev, base, usize::MAX, BI, attrs),
            Error::TooLarge {
                size: usize::MAX,
                max,
            },
        );
        t.err(
            "map",
            "alloc_align_mask not 2^k - 1",
            swiotlb.map(
                &dev,
                base,
                64,
                BI,
                MapAttrs {
                    alloc_align_mask: 0x1234,
                    ..attrs
                },
            ),
            Error::BadAlignMask { mask: 0x1234 },
        );
        t.err(
            "map",
            "maximum alloc_align_mask",
            swiotlb.map(
                &dev,
                base,
                64,
                BI,
                MapAttrs {
                    alloc_align_mask: u64::MAX,
                    ..attrs
                },
            ),
            Error::BadAlignMask { mask: u64::MAX },
        );
        t.err(
            "map",
            "invalid original address (all ones)",
            swiotlb.map(&dev, INVALID_PHYS_ADDR, 64, BI, attrs),
            Error::Memory(swiotlb_core::MemoryError {
                addr: INVALID_PHYS_ADDR,
                len: 64,
            }),
        );
        t.err_like(
            "map",
            "original buffer outside memory",
            swiotlb.map(&dev, base + 256 * 1024 - 8, 64, BI, attrs),
            |e| matches!(e, Error::Memory(_)),
        );
        let narrow = swiotlb.device(DeviceConfig {
            seg_boundary_mask: 0xFFF,
            ..Default::default()
        });
        t.err(
            "map",
            "segment boundary smaller than the run",
            swiotlb.map(&narrow, base, 8192, BI, attrs),
            Error::Unsatisfiable,
        );
        let low = swiotlb.device(DeviceConfig {
            dma_mask: 0xFFFF,
            ..Default::default()
        });
        t.err_like(
            "map",
            "DMA mask below every pool",
            swiotlb.map(&low, base, 64, BI, attrs),
            |e| matches!(e, Error::NotDmaCapable { .. }),
        );
        t.err(
            "map",
            "wrong device (other instance)",
            swiotlb.map(&foreign, base, 64, BI, attrs),
            Error::ForeignDevice,
        );
        let a = swiotlb.map(&dev, base, 3000, BI, attrs).unwrap();
        t.err(
            "unmap",
            "never mapped",
            swiotlb.unmap(&dev, base, 64, BI, attrs),
            Error::NotMapped { addr: base },
        );
        t.err(
            "unmap",
            "unaligned (inside the mapping)",
            swiotlb.unmap(&dev, a + 1, 64, BI, attrs),
            Error::NotMapped { addr: a + 1 },
        );
        t.err(
            "unmap",
            "zero size",
            swiotlb.unmap(&dev, a, 0, BI, attrs),
            Error::OutOfRange { addr: a, size: 0 },
        );
        t.err(
            "unmap",
            "larger than mapped",
            swiotlb.unmap(&dev, a, 3001, BI, attrs),
            Error::OutOfRange {
                addr: a,
                size: 3001,
            },
        );
        t.err(
            "unmap",
            "wrong device (other instance)",
            swiotlb.unmap(&foreign, a, 3000, BI, attrs),
            Error::ForeignDevice,
        );
        t.err(
            "sync_for_cpu",
            "zero size",
            swiotlb.sync_for_cpu(&dev, a, 0, BI),
            Error::ZeroSize,
        );
        t.err(
            "sync_for_cpu",
            "past the mapping's end",
            swiotlb.sync_for_cpu(&dev, a + 2000, 1001, BI),
            Error::OutOfRange {
                addr: a + 2000,
                size: 1001,
            },
        );
        t.err(
            "sync_for_cpu",
            "maximum size",
            swiotlb.sync_for_cpu(&dev, a, usize::MAX, BI),
            Error::OutOfRange {
                addr: a,
                size: usize::MAX,
            },
        );
        t.err(
            "sync_if_bounced",
            "zero size",
            swiotlb.sync_if_bounced(&dev, a, 0, BI, true),
            Error::ZeroSize,
        );
        t.err(
            "sync_if_bounced",
            "past the mapping's end",
            swiotlb.sync_if_bounced(&dev, a + 2000, 1001, BI, false),
            Error::OutOfRange {
                addr: a + 2000,
                size: 1001,
            },
        );
        t.err(
            "sync_if_bounced",
            "wrong device (other instance)",
            swiotlb.sync_if_bounced(&foreign, a, 1, BI, false),
            Error::ForeignDevice,
        );
        t.err(
            "sync_for_device",
            "never mapped",
            swiotlb.sync_for_device(&dev, u64::MAX, 1, BI),
            Error::NotMapped { addr: u64::MAX },
        );
        t.err(
            "sync_for_device",
            "wrong device (other instance)",
            swiotlb.sync_for_device(&foreign, a, 1, BI),
            Error::ForeignDevice,
        );
        t.err_like(
            "read_bounce",
            "past the pool's end",
            swiotlb.read_bounce(&dev, a, &mut vec![0; 1 << 20]),
            |e| matches!(e, Error::OutOfRange { .. }),
        );
        t.err(
            "write_bounce",
            "never mapped (maximum address)",
            swiotlb.write_bounce(&dev, u64::MAX, &[1]),
            Error::NotMapped { addr: u64::MAX },
        );
        swiotlb.unmap(&dev, a, 3000, BI, attrs).unwrap();
        t.gone(
            ("double unmap", "after unmap"),
            swiotlb.unmap(&dev, a, 3000, BI, attrs),
            || swiotlb.sync_for_cpu(&dev, a, 1, BI),
            Error::NotMapped { addr: a },
        );
        // Another device of the same instance: mappings are the mapping device's alone, in shared
        // pools and in its transient pools.
        let sm = RegionMemory::new(64 * 1024);
        let sbase = sm.base();
        let small = Swiotlb::new(Config::tiny(16, 1, 16), sm).unwrap();
        let (d1, d2) = (
            small.device(DeviceConfig::default()),
            small.device(DeviceConfig::default()),
        );
        let full = small.map(&d1, sbase, 32 * 1024, BI, attrs).unwrap();
        let transient = small.map(&d1, sbase, 4096, BI, attrs).unwrap();
        assert_eq!(d1.transient_pools(), 1);
        let other_transient = "wrong device (another device's transient pool)";
        t.gone(
            (other_transient, other_transient),
            small.unmap(&d2, transient, 4096, BI, attrs),
            || small.sync_for_cpu(&d2, transient, 1, BI),
            Error::NotMapped { addr: transient },
        );
        small.unmap(&d1, transient, 4096, BI, attrs).unwrap();
        t.err(
            "unmap",
            "wrong device (another device's mapping, same instance)",
            small.unmap(&d2, full, 32 * 1024, BI, attrs),
            Error::NotMapped { addr: full },
        );
        small.unmap(&d1, full, 32 * 1024, BI, attrs).unwrap();
        assert_eq!(small.stats().used, 0);
        t.err(
            "alloc",
            "not a restricted pool",
            swiotlb.alloc(&dev, 4096),
            Error::NotForAlloc,
        );
        t.err(
            "free",
            "not a restricted pool",
            swiotlb.free(&dev, a),
            Error::NotForAlloc,
        );
        t.err(
            "grow_by",
            "zero slots",
            swiotlb.grow_by(0),
            Error::InvalidConfig("a pool needs at least one slot"),
        );
        t.err(
            "grow_by",
            "maximum slots",
            swiotlb.grow_by(1 << 40),
            Error::InvalidConfig("a pool has 1..=2^32 slots"),
        );
        t.err(
            "reset_hiwater",
            "non-zero value",
            swiotlb.reset_hiwater(7),
            Error::BadReset { value: 7 },
        );
        t.accepted(
            "is_bounce_buffer / find_pool",
            "maximum address, wrong device",
            "`false` / `None`",
            !swiotlb.is_bounce_buffer(&dev, u64::MAX) && swiotlb.find_pool(&foreign, a).is_none(),
        );
        // A restricted pool: allocations.
        let r = Swiotlb::new(Config::restricted(64), mem(64)).unwrap();
        let rdev = r.device(DeviceConfig::default());
        t.err("alloc", "zero size", r.alloc(&rdev, 0), Error::ZeroSize);
        t.err_like(
            "alloc",
            "larger than a segment (1 TiB)",
            r.alloc(&rdev, 1 << 40),
            |e| matches!(e, Error::TooLarge { .. }),
        );
        t.err_like("alloc", "maximum size", r.alloc(&rdev, usize::MAX), |e| {
            matches!(e, Error::TooLarge { .. })
        });
        t.err(
            "grow_by",
            "restricted pool",
            r.grow_by(8),
            Error::GrowthDisabled,
        );
        let x = r.alloc(&rdev, 4096).unwrap();
        t.err(
            "free",
            "unaligned",
            r.free(&rdev, x + 1),
            Error::NotMapped { addr: x + 1 },
        );
        r.free(&rdev, x).unwrap();
        t.err_like("free", "double free", r.free(&rdev, x), |e| {
            matches!(e, Error::NotMapped { .. })
        });
        t.err(
            "free",
            "never allocated (maximum address)",
            r.free(&rdev, u64::MAX),
            Error::NotMapped { addr: u64::MAX },
        );
        // Still working: a round trip carries the device's bytes back; nothing is left used.
        swiotlb.memory().write(base + 100, b"abcd").unwrap();
        let a = swiotlb
            .map(&dev, base + 100, 4, Direction::FromDevice, attrs)
            .unwrap();
        swiotlb.write_bounce(&dev, a, b"XY").unwrap();
        swiotlb
            .unmap(&dev, a, 4, Direction::FromDevice, attrs)
            .unwrap();
        let mut back = [0; 4];
        swiotlb.memory().read(base + 100, &mut back).unwrap();
        assert_eq!(&back, b"XYcd");
        assert_eq!(swiotlb.stats().used, 0);
        swiotlb.check_invariants().unwrap();
        assert_eq!(r.alloc(&rdev, 4096).map(|a| a % 4096), Ok(0));
        t.check();
    }

    /// An area count of `usize::MAX` is refused (it once overflowed in `new`).
    #[test]
    fn maximum_areas_is_a_config_error() {
        assert!(Swiotlb::new(
            Config {
                nareas: usize::MAX,
                ..Config::tiny(8, 1, 8)
            },
            RegionMemory::new(64)
        )
        .is_err());
    }
}

mod iommu {
    use super::Table;
    use dma_iommu::test_util::SimulatedDevice;
    use dma_iommu::{DeviceConfig, DmaError, Domain, DomainConfig, FqConfig, NoTlb, PhysSegment};
    use swiotlb_core::{Config, Direction, RegionMemory, Swiotlb};

    const TO: Direction = Direction::ToDevice;
    const BI: Direction = Direction::Bidirectional;

    #[test]
    fn dma_iommu_table() {
        let mut t = Table::new("dma-iommu");
        let cfg = || DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap();
        t.err_like(
            "DomainConfig::new",
            "input size 60 bits",
            DomainConfig::new(io_pgtable::Config::s1_4k(60)),
            |e| {
                matches!(
                    e,
                    DmaError::PageTable(io_pgtable::Error::InvalidConfig { .. })
                )
            },
        );
        let bad_iova = DomainConfig {
            iova: iova_cache::IovaConfig {
                granule_shift: 16,
                ..cfg().iova
            },
            ..cfg()
        };
        t.err_like(
            "Domain::new",
            "IOVA granule other than the page size",
            Domain::new(bad_iova, NoTlb, None).map(|_| ()),
            |e| matches!(e, DmaError::Config(_)),
        );
        let bare = Domain::new(cfg(), NoTlb, None).unwrap();
        t.err(
            "Domain::attach",
            "untrusted device, no bounce buffers",
            bare.attach(DeviceConfig {
                trusted: false,
                ..DeviceConfig::default()
            })
            .map(|_| ()),
            DmaError::NoBounceBuffers,
        );
        let mem = RegionMemory::new(256 * 1024);
        let base = mem.base();
        let dom = Domain::new(
            cfg(),
            NoTlb,
            Some(Swiotlb::new(Config::tiny(64, 1, 32), mem).unwrap()),
        )
        .unwrap();
        let dev = dom.attach(DeviceConfig::default()).unwrap();
        let other = dom.attach(DeviceConfig::default()).unwrap();
        let untrusted = dom
            .attach(DeviceConfig {
                trusted: false,
                ..DeviceConfig::default()
            })
            .unwrap();
        let narrow = dom
            .attach(DeviceConfig {
                dma_mask: 0xFFFF,
                ..DeviceConfig::default()
            })
            .unwrap();
        let foreign = bare.attach(DeviceConfig::default()).unwrap();
        t.err(
            "map",
            "zero size",
            dom.map(&dev, base, 0, BI),
            DmaError::ZeroSize,
        );
        t.err(
            "map",
            "maximum address (overflowing end)",
            dom.map(&dev, u64::MAX - 8, 64, BI),
            DmaError::Overflow,
        );
        t.err_like(
            "map",
            "maximum size",
            dom.map(&dev, base, usize::MAX, BI),
            |e| matches!(e, DmaError::Overflow),
        );
        t.err_like(
            "map",
            "larger than the device's mask",
            dom.map(&narrow, base, 128 * 1024, BI),
            |e| matches!(e, DmaError::BeyondMask { .. }),
        );
        t.err_like(
            "map",
            "physical address beyond the output size",
            dom.map(&dev, 1 << 50, 4096, BI),
            |e| matches!(e, DmaError::PageTable(io_pgtable::Error::OutOfRange { .. })),
        );
        t.err_like(
            "map",
            "untrusted, unaligned, beyond a bounce segment",
            dom.map(&untrusted, base + 1, 200 * 1024, BI),
            |e| matches!(e, DmaError::Bounce(swiotlb_core::Error::TooLarge { .. })),
        );
        t.err(
            "map",
            "wrong device (other domain)",
            dom.map(&foreign, base, 64, BI),
            DmaError::ForeignDevice,
        );
        t.err(
            "map_resource",
            "zero size",
            dom.map_resource(&dev, base, 0, BI),
            DmaError::ZeroSize,
        );
        let dma = dom.map(&dev, base + 0x100, 3000, BI).unwrap();
        t.err(
            "unmap",
            "zero size",
            dom.unmap(&dev, dma, 0, BI),
            DmaError::ZeroSize,
        );
        t.err(
            "unmap",
            "never mapped",
            dom.unmap(&dev, 0x10_0000, 64, BI),
            DmaError::NotMapped { dma: 0x10_0000 },
        );
        t.err(
            "unmap",
            "maximum address",
            dom.unmap(&dev, u64::MAX, 64, BI),
            DmaError::NotMapped { dma: u64::MAX },
        );
        t.err(
            "unmap",
            "wrong size",
            dom.unmap(&dev, dma, 2999, BI),
            DmaError::Mismatch {
                dma,
                size: 2999,
                mapped: 3000,
            },
        );
        t.err(
            "unmap",
            "unaligned (inside the first page)",
            dom.unmap(&dev, dma + 1, 3000, BI),
            DmaError::Mismatch {
                dma: dma + 1,
                size: 3000,
                mapped: 3000,
            },
        );
        t.err(
            "unmap",
            "wrong device (same domain)",
            dom.unmap(&other, dma, 3000, BI),
            DmaError::NotMapped { dma },
        );
        t.err(
            "unmap",
            "wrong device (other domain)",
            dom.unmap(&foreign, dma, 3000, BI),
            DmaError::ForeignDevice,
        );
        t.err(
            "unmap_resource",
            "a mapping made by map (wrong kind)",
            dom.unmap_resource(&dev, dma, 3000, BI),
            DmaError::Mismatch {
                dma,
                size: 3000,
                mapped: 3000,
            },
        );
        t.err(
            "sync_for_cpu",
            "zero size",
            dom.sync_for_cpu(&dev, dma, 0, BI),
            DmaError::ZeroSize,
        );
        t.err(
            "sync_for_cpu",
            "maximum size (overflowing)",
            dom.sync_for_cpu(&dev, dma, usize::MAX, BI),
            DmaError::Overflow,
        );
        t.err(
            "sync_for_device",
            "never mapped",
            dom.sync_for_device(&dev, 0x10_0000, 1, BI),
            DmaError::NotMapped { dma: 0x10_0000 },
        );
        t.err(
            "sync_for_device",
            "wrong device (other domain)",
            dom.sync_for_device(&foreign, dma, 1, BI),
            DmaError::ForeignDevice,
        );
        t.err(
            "SimulatedDevice::write",
            "never mapped",
            SimulatedDevice::new(&dom, &dev, dom.swiotlb().expect("bounce buffers").memory())
                .write(0x10_0000, &[1]),
            DmaError::Fault { dma: 0x10_0000 },
        );
        let ro = dom.map(&dev, base + 0x2000, 64, TO).unwrap();
        t.err_like(
            "SimulatedDevice::write",
            "to a to-device (read-only) mapping",
            SimulatedDevice::new(&dom, &dev, dom.swiotlb().expect("bounce buffers").memory())
                .write(ro, &[1]),
            |e| matches!(e, DmaError::Fault { .. }),
        );
        t.accepted(
            "translate",
            "maximum / never-mapped address",
            "`None`",
            dom.translate(u64::MAX).is_none() && dom.translate(0x10_0000).is_none(),
        );
        t.err(
            "map_sg",
            "zero-length segment",
            dom.map_sg(&dev, &[PhysSegment { addr: base, len: 0 }], BI)
                .map(|_| ()),
            DmaError::ZeroSize,
        );
        t.err(
            "map_sg",
            "segment above max_segment_size",
            dom.map_sg(
                &dev,
                &[PhysSegment {
                    addr: base,
                    len: 128 * 1024,
                }],
                BI,
            )
            .map(|_| ()),
            DmaError::BadSegment {
                index: 0,
                len: 128 * 1024,
            },
        );
        let list = dom
            .map_sg(
                &dev,
                &[
                    PhysSegment {
                        addr: base,
                        len: 4096,
                    },
                    PhysSegment {
                        addr: base + 0x8000,
                        len: 4096,
                    },
                ],
                BI,
            )
            .unwrap();
        dom.unmap_sg(&dev, &list, BI).unwrap();
        t.err_like(
            "unmap_sg",
            "double unmap",
            dom.unmap_sg(&dev, &list, BI),
            |e| matches!(e, DmaError::NotMapped { .. }),
        );
        t.err_like(
            "set_lazy",
            "ring of 3 entries",
            dom.set_lazy(FqConfig::per_cpu().with_ring_size(3)),
            |e| matches!(e, DmaError::FlushQueue(_)),
        );
        dom.unmap(&dev, dma, 3000, BI).unwrap();
        t.gone(
            ("double unmap", "after unmap"),
            dom.unmap(&dev, dma, 3000, BI),
            || dom.sync_for_cpu(&dev, dma, 1, BI),
            DmaError::NotMapped { dma },
        );
        // Still working: a bounced round trip, then nothing live, queued or allocated.
        dom.swiotlb()
            .unwrap()
            .memory()
            .write(base + 0x4001, b"abcd")
            .unwrap();
        let b = dom.map(&untrusted, base + 0x4001, 4, BI).unwrap();
        SimulatedDevice::new(
            &dom,
            &untrusted,
            dom.swiotlb().expect("bounce buffers").memory(),
        )
        .write(b, b"XY")
        .unwrap();
        dom.unmap(&untrusted, b, 4, BI).unwrap();
        let mut back = [0; 4];
        dom.swiotlb()
            .unwrap()
            .memory()
            .read(base + 0x4001, &mut back)
            .unwrap();
        assert_eq!(&back, b"XYcd");
        dom.unmap(&dev, ro, 64, TO).unwrap();
        dom.flush_queue_now();
        assert_eq!(dom.stats().live, 0);
        dom.iova_allocator().flush_all();
        assert_eq!(dom.iova_allocator().allocated_ranges(), vec![]);
        assert_eq!(dom.swiotlb().unwrap().stats().used, 0);
        t.check();
    }

    /// A sync is an operation on the domain's address space (as Linux's `dma_sync_*`):
    /// another device of the same domain may sync a live mapping; an unmap may not.
    #[test]
    fn sync_by_another_device_of_the_domain_is_accepted_unmap_is_not() {
        let dom = Domain::new(
            DomainConfig::new(io_pgtable::Config::s1_4k(39)).unwrap(),
            NoTlb,
            None,
        )
        .unwrap();
        let (a, b) = (
            dom.attach(DeviceConfig::default()).unwrap(),
            dom.attach(DeviceConfig::default()).unwrap(),
        );
        let dma = dom.map(&a, 0x10_0000, 4096, BI).unwrap();
        assert_eq!(dom.sync_for_cpu(&b, dma, 16, BI), Ok(()));
        assert!(dom.unmap(&b, dma, 4096, BI).is_err());
        assert!(dom.unmap(&a, dma, 4096, BI).is_ok());
        assert_eq!(
            dom.sync_for_cpu(&b, dma, 16, BI),
            Err(DmaError::NotMapped { dma })
        );
    }
}
