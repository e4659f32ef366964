//! Mapping: `map_pages` (one leaf table per call, as Linux) and the `map` helper that loops
//! over page sizes.
//!
//! * `map_pages` writes at most one leaf table per call. All target slots are checked before
//!   any is written, so a refused call changes nothing; each slot is then claimed by CAS from 0,
//!   and a call that loses a slot to a racing map withdraws the leaves it already wrote (CAS
//!   back to 0, all of them before the first TLB callback, so one that unwinds leaves none
//!   mapped; invalidation synced) and returns `Exists`. A present leaf is `Exists`; a table
//!   where a block goes is replaced only if its subtree is empty (freeze, claim the link, walk
//!   flush, RCU free, then the block: break-before-make), else `Exists`.
//! * One page (`map` of a granule, `map_pages` of one page) takes a single-slot path: the
//!   same descent (tables installed as below), then `place`, whose checks of the slot are
//!   those of the check pass (a page slot never links a table), with no page-size loop and
//!   no check pass over a range. It picks the descent's layout once, outside the retry
//!   loop: constants for the four-level 4 KiB format (`levels.rs`). Callgrind, a 4 KiB
//!   map+unmap in a loop (`examples/map_loop.rs`): 789 instructions through the general
//!   loops, 467 on these paths (462 since the withdraw's clearing moved into helpers out of
//!   line: these paths did not change, the difference is layout).
//! * `map` loops with Linux's `iommu_pgsize` choice and undoes its own partial progress on
//!   error: it replays its steps and takes back each leaf still holding what it wrote (as a
//!   lost race's withdraw does), never a page another caller mapped there meanwhile. Map and unmap find the level of a page size with one lookup (`level_by_shift`); a
//!   leaf's attribute bits come from a 64-entry table indexed by the six protection bits (built
//!   from the bit-by-bit encoding; a test checks the two agree), looked up once per call.
//! * Installing a table: a zeroed table, then `CAS(0 → table, Release, Acquire)`
//!   (`pgtable.install.release`): the release publishes the table's initialisation; the loser's
//!   failure acquire sees the winner's table before writing leaves into it, and the loser frees
//!   its never-published table at once. Writers descend with acquire loads
//!   (`pgtable.descent.acquire`), pairing with the install release.

use crate::claim::Stop;
use crate::error::{AddrKind, Error};
use crate::levels::Levels;
use crate::pgtable::{check_range, pgsize_for, LateUnlinks, Link, PageTable};
use crate::points::{DESCENT_ACQUIRE, INSTALL_RELEASE};
use crate::pte::{self, Descriptor, Prot, DEAD, FROZEN, PAGE_LEVEL};
use crate::table;
use crate::tlb::{Gather, TlbOps};
use dma_sync::atomic::{AtomicU64, Ordering::*};
use dma_sync::rcu::Guard;

impl<T: TlbOps> PageTable<T> {
    /// Map up to `pgcount` pages of `pgsize` from `iova` to `paddr`; returns the bytes mapped.
    ///
    /// Leaves are written at the level whose block size is `pgsize`, at most up to the end of
    /// that one table (as Linux's `map_pages`): a short count means "call again for the
    /// rest". Missing tables are installed lock-free. A present leaf, or a table that still
    /// maps something where a block should go, is [`Error::Exists`] and nothing is written;
    /// an empty table where a block goes is unlinked, flushed and freed through RCU.
    ///
    /// Racing calls may overlap each other and unmaps: each slot is claimed by
    /// compare-and-swap, so of racing maps of one slot exactly one succeeds and the others get
    /// [`Error::Exists`] (a loser withdraws the leaves it wrote before losing).
    ///
    /// ```
    /// use io_pgtable::{Config, Error, PageTable, Prot};
    /// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    /// // 600 pages requested; the leaf table from 0x1000 holds 511 more entries.
    /// assert_eq!(pt.map_pages(0x1000, 0x5000_1000, 0x1000, 600, Prot::READ), Ok(511 * 0x1000));
    /// assert_eq!(pt.map_pages(0x1000, 0, 0x1000, 1, Prot::READ), Err(Error::Exists { iova: 0x1000 }));
    /// ```
    pub fn map_pages(
        &self,
        iova: u64,
        paddr: u64,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<usize, Error> {
        let (level, len) = self.check_input(iova, pgsize, pgcount)?;
        self.check_paddr(paddr, pgsize, len)?;
        if !prot.intersects(Prot::READ | Prot::WRITE) {
            return Err(Error::NoAccess);
        }
        self.map_checked(iova, paddr, level, pgcount, prot)
    }

    /// [`PageTable::map_pages`] of arguments already checked, with the leaf level of `pgsize`.
    fn map_checked(
        &self,
        iova: u64,
        paddr: u64,
        level: u32,
        pgcount: usize,
        prot: Prot,
    ) -> Result<usize, Error> {
        if pgcount == 1 && level == PAGE_LEVEL {
            // One page, the common case: a single slot needs no separate check pass.
            let page = self.geom.page_size() as usize;
            let mapped = match Levels::constant(&self.geom) {
                Some(levels) => self.map_page(levels, iova, paddr, prot),
                None => self.map_page(Levels::read(&self.geom), iova, paddr, prot),
            };
            return mapped.map(|()| page);
        }
        self.retrying(|guard, late| self.map_in(guard, iova, paddr, level, pgcount, prot, late))
    }

    /// [`PageTable::map_in`] of one page at `iova`, with the layout `levels`: the descent,
    /// then `place`, whose checks of the slot are those of `map_in`'s check pass (a page slot
    /// never links a table).
    fn map_page<const FOUR_4K: bool>(
        &self,
        levels: Levels<'_, FOUR_4K>,
        iova: u64,
        paddr: u64,
        prot: Prot,
    ) -> Result<(), Error> {
        let leaf = pte::leaf(&self.geom, PAGE_LEVEL, paddr, prot);
        self.retrying(|guard, late| {
            let (table, index) = self.descend_installing_in(levels, guard, iova, PAGE_LEVEL)?;
            self.place(guard, &table[index], PAGE_LEVEL, iova, leaf, late)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn map_in(
        &self,
        guard: &Guard,
        iova: u64,
        paddr: u64,
        level: u32,
        pgcount: usize,
        prot: Prot,
        late: &mut LateUnlinks,
    ) -> Result<usize, Stop> {
        let g = &self.geom;
        let (table, first) = self.descend_installing(guard, iova, level)?;
        let n = pgcount.min(g.entries(level) - first);
        let size = g.block_size(level);
        let slots = &table[first..first + n];
        // Check every slot before writing any: a refused call changes nothing (unless it
        // loses a race below, when it withdraws what it wrote).
        for (i, e) in slots.iter().enumerate() {
            let d = e.load(DESCENT_ACQUIRE.ord(Acquire));
            let free = match (d, pte::decode(g, level, d)) {
                (0, _) => true,
                (DEAD, _) => return Err(Stop::Restart),
                (FROZEN, _) => return Err(Stop::Wait),
                // SAFETY: a table link read under `guard` from this page table.
                (_, Descriptor::Table { addr }) => unsafe {
                    self.subtree_empty(guard, addr, level + 1)
                },
                _ => false,
            };
            if !free {
                return Err(Error::Exists {
                    iova: iova + i as u64 * size,
                }
                .into());
            }
        }
        // The attribute bits are the same for every slot: encode them once.
        let attrs = pte::leaf(g, level, 0, prot);
        for (i, e) in slots.iter().enumerate() {
            let at = i as u64 * size;
            let leaf = attrs | pte::encode_oa(g, paddr + at);
            if let Err(stop) = self.place(guard, e, level, iova + at, leaf, late) {
                self.withdraw(&slots[..i], level, iova, paddr, attrs);
                return Err(stop);
            }
        }
        Ok(n * size as usize)
    }

    /// The table at level `target` on the way to `iova`, and `iova`'s index in it: descends
    /// from the root with acquire loads, installing missing tables. A leaf on the way is
    /// [`Error::Exists`]; a table being torn down or reserved stops the call.
    fn descend_installing<'g>(
        &'g self,
        guard: &'g Guard,
        iova: u64,
        target: u32,
    ) -> Result<(&'g [AtomicU64], usize), Stop> {
        match Levels::constant(&self.geom) {
            Some(levels) => self.descend_installing_in(levels, guard, iova, target),
            None => self.descend_installing_in(Levels::read(&self.geom), guard, iova, target),
        }
    }

    /// [`PageTable::descend_installing`] with the layout `levels` of this table's geometry.
    #[inline(always)]
    fn descend_installing_in<'g, const FOUR_4K: bool>(
        &'g self,
        levels: Levels<'_, FOUR_4K>,
        guard: &'g Guard,
        iova: u64,
        target: u32,
    ) -> Result<(&'g [AtomicU64], usize), Stop> {
        // Indices before the first acquire load, above which the geometry cannot be hoisted.
        let index = levels.indices(iova);
        let mut level = levels.start();
        let mut table = self.root.entries();
        while level < target {
            let entry = &table[index[level as usize]];
            let mut d = entry.load(DESCENT_ACQUIRE.ord(Acquire));
            if d == 0 {
                d = self.install(entry)?;
            }
            if !pte::is_table(d) {
                return Err(match d {
                    DEAD => Stop::Restart,
                    FROZEN => Stop::Wait,
                    // A leaf.
                    _ => Error::Exists {
                        iova: iova & !(self.geom.block_size(level) - 1),
                    }
                    .into(),
                });
            }
            level += 1;
            // SAFETY: a table link read under `guard` from this page table, so a table at
            // `level` that outlives `guard` (as `PageTable::table_at`).
            table =
                unsafe { table::entries_at(guard, levels.next_table(d), levels.entries(level)) };
        }
        Ok((table, index[target as usize]))
    }

    /// Write `leaf` into the slot `e` (at `level`, mapping `iova`): claimed from 0, or, where
    /// an empty table is linked, by replacing the table (break before make).
    fn place(
        &self,
        guard: &Guard,
        e: &AtomicU64,
        level: u32,
        iova: u64,
        leaf: u64,
        late: &mut LateUnlinks,
    ) -> Result<(), Stop> {
        let mut d = e.load(DESCENT_ACQUIRE.ord(Acquire));
        loop {
            match (d, pte::decode(&self.geom, level, d)) {
                (0, _) => match self.claim(e, 0, leaf) {
                    Ok(()) => return Ok(()),
                    Err(now) => d = now,
                },
                (DEAD, _) => return Err(Stop::Restart),
                (FROZEN, _) => return Err(Stop::Wait),
                // SAFETY: `d` was read from `e`, a slot of this page table, under `guard`.
                (_, Descriptor::Table { addr }) => unsafe {
                    let link = Link {
                        entry: e,
                        desc: d,
                        addr,
                        level: level + 1,
                        iova,
                    };
                    return self.replace_table(guard, link, leaf, late);
                },
                _ => return Err(Error::Exists { iova }.into()),
            }
        }
    }

    /// Take back the leaves (`attrs` and the output address) this call wrote into `slots`
    /// (mapping from `iova` to `paddr`) before it lost a race further on; one an overlapping
    /// unmap already took stays taken. Every slot is cleared before the first TLB callback,
    /// so a callback that unwinds leaves none of them mapped.
    // Off the steady-state path: kept out of line so the hot path stays small.
    #[inline(never)]
    fn withdraw(&self, slots: &[AtomicU64], level: u32, iova: u64, paddr: u64, attrs: u64) {
        let mut cleared = Vec::new();
        self.take_back(slots, level, (iova, paddr), attrs, &mut cleared);
        self.invalidate(&cleared);
    }

    /// Clear each of `slots` (at `level`, mapping from `iova` to `paddr`) that still holds the
    /// leaf this call wrote there (`attrs` and the output address), noting each cleared
    /// page in `cleared` (address, size). A slot holding anything else (empty, or another
    /// caller's leaf or table after an overlapping unmap took ours) is left alone.
    fn take_back(
        &self,
        slots: &[AtomicU64],
        level: u32,
        (iova, paddr): (u64, u64),
        attrs: u64,
        cleared: &mut Vec<(u64, u64)>,
    ) {
        let size = self.geom.block_size(level);
        for (i, e) in slots.iter().enumerate() {
            let at = i as u64 * size;
            let leaf = attrs | pte::encode_oa(&self.geom, paddr + at);
            if self.claim(e, leaf, 0).is_ok() {
                cleared.push((iova + at, size));
            }
        }
    }

    /// Invalidate the pages `cleared` (address, size) and sync: the TLB callbacks after the
    /// clearing, so one that unwinds leaves nothing mapped that the caller took back.
    fn invalidate(&self, cleared: &[(u64, u64)]) {
        let mut gather = Gather::new();
        for &(iova, size) in cleared {
            self.tlb.add_page(&mut gather, iova, size);
        }
        gather.sync(&self.tlb);
    }

    /// Undo the first `size` bytes of a [`PageTable::map`] of `iova` to `paddr` with `prot`:
    /// the same steps, each slot taken back only if it still holds the leaf the map wrote
    /// (never a mapping another caller made after an overlapping unmap took ours), every
    /// slot cleared before the first TLB callback. The tables the map installed stay linked,
    /// as after an unmap of pages.
    #[cold]
    #[inline(never)]
    fn withdraw_range(&self, iova: u64, paddr: u64, size: u64, prot: Prot) {
        let g = &self.geom;
        let mut cleared = Vec::new();
        {
            let guard = dma_sync::rcu::pin();
            let mut done = 0;
            while done < size {
                let (at, pa) = (iova + done, paddr + done);
                // The steps `map` took (they succeeded, so this one does).
                let Ok((level, count)) = self.step(at, pa, size - done) else {
                    break;
                };
                // As `map_in`: at most to the end of one table.
                let n = count.min(g.entries(level) - g.index(level, at));
                // A walk that stops above `level` meets no leaf of ours: an unmap took the
                // table, or the entry never led to it.
                if let Ok((table, first)) = self.descend_mapped(&guard, at, level) {
                    let attrs = pte::leaf(g, level, 0, prot);
                    let slots = &table[first..first + n];
                    self.take_back(slots, level, (at, pa), attrs, &mut cleared);
                }
                done += n as u64 * g.block_size(level);
            }
        }
        self.invalidate(&cleared);
    }

    /// Install a zeroed table (from the slab) into the empty `entry`; returns the descriptor now in
    /// `entry` (ours, or whatever another operation put there first).
    // Off the steady-state path: kept out of line so the hot path stays small.
    #[inline(never)]
    fn install(&self, entry: &AtomicU64) -> Result<u64, Error> {
        let g = &self.geom;
        let table = self.slab.alloc(g.oa_bits(), &self.stats)?;
        let desc = pte::table(g, table.addr());
        match entry.compare_exchange(
            0,
            desc,
            INSTALL_RELEASE.ord(Release),
            DESCENT_ACQUIRE.ord(Acquire),
        ) {
            Ok(_) => {
                table.into_addr();
                Ok(desc)
            }
            Err(current) => {
                // Lost the race: our table was never published, free it now.
                drop(table);
                self.stats.discarded.fetch_add(1, Relaxed);
                self.stats.freed.fetch_add(1, Relaxed);
                Ok(current)
            }
        }
    }

    /// Whether the table at `addr` (at `level`) and everything below it maps nothing.
    ///
    /// # Safety
    /// `addr` is a table at `level` of this page table, read from a descriptor under `guard`.
    // Off the steady-state path: kept out of line so the hot path stays small.
    #[inline(never)]
    unsafe fn subtree_empty(&self, guard: &Guard, addr: u64, level: u32) -> bool {
        // SAFETY: by the caller's contract.
        let table = unsafe { self.table_at(guard, addr, level) };
        table.iter().all(|e| {
            let d = e.load(DESCENT_ACQUIRE.ord(Acquire));
            match pte::decode(&self.geom, level, d) {
                // Empty, reserved or being torn down: no mapping (the freeze tells which).
                Descriptor::Invalid => true,
                // SAFETY: a table link read from this table under `guard`.
                Descriptor::Table { addr } => unsafe { self.subtree_empty(guard, addr, level + 1) },
                Descriptor::Leaf { .. } => false,
            }
        })
    }

    /// Map `size` bytes at `iova` to `paddr`, with the largest page sizes the alignment of
    /// `iova | paddr` allows (as the Linux core's `iommu_map`). On error, the leaves this call
    /// wrote are taken back (a leaf an overlapping unmap took meanwhile, and whatever another
    /// caller mapped in its place, stay), before any TLB callback; tables it installed stay
    /// linked, empty, as after an unmap of pages.
    ///
    /// ```
    /// use io_pgtable::{Config, PageTable, Prot};
    /// let pt = PageTable::new(Config::s1_4k(39)).unwrap();
    /// pt.map(0x1f_f000, 0x1f_f000, 0x20_2000, Prot::READ).unwrap();
    /// assert_eq!(pt.iova_to_phys(0x1f_f000).unwrap().size(), 0x1000);
    /// assert_eq!(pt.iova_to_phys(0x20_0000).unwrap().size(), 0x20_0000);
    /// assert_eq!(pt.iova_to_phys(0x40_0000).unwrap().size(), 0x1000);
    /// ```
    pub fn map(&self, iova: u64, paddr: u64, size: u64, prot: Prot) -> Result<(), Error> {
        self.check_sizes(iova, Some(paddr), size)?;
        if !prot.intersects(Prot::READ | Prot::WRITE) {
            return Err(Error::NoAccess);
        }
        if size == self.geom.page_size() {
            // One page, the common case: the step below would choose it.
            return self.map_checked(iova, paddr, PAGE_LEVEL, 1, prot).map(drop);
        }
        let mut done = 0;
        while done < size {
            // Each step lies inside the range checked above, aligned to its page size.
            let (level, count) = self.step(iova + done, paddr + done, size - done)?;
            match self.map_checked(iova + done, paddr + done, level, count, prot) {
                Ok(n) => done += n as u64,
                Err(e) => {
                    if done > 0 {
                        // Only the leaves it wrote: an overlapping unmap may have taken some
                        // of them already, and another map put its own there.
                        self.withdraw_range(iova, paddr, done, prot);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The next step of the `map`/`unmap` helpers at `iova`/`paddr` with `left` bytes to go:
    /// the leaf level of the largest page size alignment allows, and how many pages.
    pub(crate) fn step(&self, iova: u64, paddr: u64, left: u64) -> Result<(u32, usize), Error> {
        let misaligned = Error::Misaligned {
            kind: AddrKind::Iova,
            addr: iova,
            align: self.geom.page_size(),
        };
        let (pgsize, count) =
            pgsize_for(self.pgsize_bitmap(), iova, paddr, left).ok_or(misaligned)?;
        let level = self.geom.level_of(pgsize).ok_or(misaligned)?;
        Ok((level, count))
    }

    /// Common checks of the `map`/`unmap` helpers: non-zero, page-aligned sizes and addresses.
    pub(crate) fn check_sizes(
        &self,
        iova: u64,
        paddr: Option<u64>,
        size: u64,
    ) -> Result<(), Error> {
        let page = self.geom.page_size();
        if size == 0 {
            return Err(Error::ZeroCount);
        }
        if (iova | size) & (page - 1) != 0 {
            let addr = if iova & (page - 1) != 0 { iova } else { size };
            return Err(Error::Misaligned {
                kind: AddrKind::Iova,
                addr,
                align: page,
            });
        }
        if let Some(paddr) = paddr {
            self.check_paddr(paddr, page, size)?;
        }
        check_range(AddrKind::Iova, iova, size, self.geom.ias())
    }

    /// `paddr` aligned to `align`, and `[paddr, paddr + len)` inside the output range.
    fn check_paddr(&self, paddr: u64, align: u64, len: u64) -> Result<(), Error> {
        if paddr & (align - 1) != 0 {
            return Err(Error::Misaligned {
                kind: AddrKind::Paddr,
                addr: paddr,
                align,
            });
        }
        check_range(AddrKind::Paddr, paddr, len, self.geom.oas())
    }
}
