//! Claiming descriptors: how racing operations on overlapping ranges agree on who owns what.
//!
//! Every change that hands a leaf or a table to one operation is a compare-and-swap (or a
//! swap) on the descriptor that holds it, so each leaf is unmapped once and each table level
//! retired once, whatever the callers overlap:
//!
//! * An unmap claims a leaf or a table link by compare-and-swap from the value it decoded to 0.
//!   Whoever wins owns it; a loser re-reads the entry (now 0: `NotMapped` or a short count).
//! * The owner of an unlinked table *takes* its subtree: it swaps every entry to
//!   [`DEAD`], so a table link found there is its own, and a map still descending through a
//!   stale pointer can no longer install a table or write a leaf in it (its compare-and-swap
//!   from 0 fails, and it restarts from the root).
//! * A block map replacing a table first *freezes* the subtree bottom-up (each empty entry
//!   and each table link to [`FROZEN`], remembering what was there), then claims the link to
//!   the table. A leaf found on the way means the range is not free: everything frozen is
//!   thawed and the map is refused. A thaw that finds an entry `DEAD` (an unmap took the
//!   table meanwhile) hands the frozen child table, which nobody else can reach, back to the
//!   map, which retires it.
//! * [`FROZEN`] hides what it reserves (an empty slot or an empty table: different answers to
//!   an unmap) and whether the freeze will complete or thaw, so no map or unmap decides on
//!   it: one that meets it backs off and starts again from the root ([`Stop::Wait`]),
//!   where it finds the block or the thawed entries. A freeze that meets another's thaws its
//!   own first, so no one waits while holding a reservation. The wait is short: a freeze
//!   never waits, and it either completes (the block replaces the path to its frozen
//!   entries) or thaws, also when the `TlbOps::flush_walk` between the claim of the link and
//!   the block write unwinds: then the subtree is thawed and the link restored (the table as
//!   before, nothing retired).

use crate::error::Error;
use crate::pgtable::{LateUnlinks, PageTable};
use crate::points::{CLAIM, DESCENT_ACQUIRE, TAKE_RELEASE};
use crate::pte::{self, Descriptor, DEAD, FROZEN};
use crate::table::TableMem;
use crate::tlb::TlbOps;
use dma_sync::atomic::{AtomicU64, Ordering::*};
use dma_sync::rcu::{self, Guard};

/// Why an operation stopped before finishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Refused with this error (the table as before the call).
    Refused(Error),
    /// A table this call was using is being torn down: start again from the root at once
    /// (the unmap tearing it down has unlinked it already).
    Restart,
    /// An entry this call must read is reserved by a block map ([`FROZEN`]): back off
    /// ([`back_off`]) and start again from the root.
    Wait,
}

/// Restarts a call spins through before it yields its time slice to the reserving thread.
const SPINS_BEFORE_YIELD: u32 = 16;

/// Wait a little before restart number `waits` (from 1) after meeting a reservation: the
/// reserving block map finishes in a few steps when it runs, but may need this core to run.
#[cold]
fn back_off(waits: u32) {
    if waits < SPINS_BEFORE_YIELD {
        dma_sync::thread::spin_wait();
    } else {
        dma_sync::thread::yield_now();
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Refused(e)
    }
}

/// Entries a block map has frozen, in the order frozen (children before their link): the
/// entry, what it held (0 or a table link), and the level of the table holding it.
pub(crate) type Frozen<'g> = Vec<(&'g AtomicU64, u64, u32)>;

impl<T: TlbOps> PageTable<T> {
    /// Run `attempt`, each time pinned, until it finishes: again at once after a
    /// [`Stop::Restart`] (the unmap that tore the table down made progress), after backing
    /// off after a [`Stop::Wait`]. Late unlinks run unpinned after each attempt.
    pub(crate) fn retrying<R>(
        &self,
        mut attempt: impl FnMut(&Guard, &mut LateUnlinks) -> Result<R, Stop>,
    ) -> Result<R, Error> {
        let mut waits = 0;
        loop {
            let mut late = LateUnlinks::default();
            let result = {
                let guard = rcu::pin();
                attempt(&guard, &mut late)
            };
            late.finish(self);
            match result {
                Ok(r) => return Ok(r),
                Err(Stop::Refused(e)) => return Err(e),
                Err(Stop::Restart) => {}
                Err(Stop::Wait) => {
                    waits += 1;
                    back_off(waits);
                }
            }
        }
    }

    /// Change `entry` from `old` to `new` if nobody changed it since `old` was read: `Ok` if
    /// this call owns what `old` held, else the descriptor another operation put there.
    #[inline]
    pub(crate) fn claim(&self, entry: &AtomicU64, old: u64, new: u64) -> Result<(), u64> {
        if CLAIM.on() {
            entry
                .compare_exchange(old, new, AcqRel, DESCENT_ACQUIRE.ord(Acquire))
                .map(|_| ())
        } else {
            // Weakened (loom only): the load-then-store this protocol replaced.
            entry.store(new, Relaxed);
            Ok(())
        }
    }

    /// Take the table at `addr` (at `level`), whose link this call claimed, and every table
    /// below it: each entry is swapped to [`DEAD`] and a table link found there is taken too.
    ///
    /// # Safety
    /// `addr` is a table at `level` of this page table, read under `guard`, whose only link
    /// this call claimed (or the page table is being dropped).
    pub(crate) unsafe fn take_subtree(
        &self,
        guard: &Guard,
        addr: u64,
        level: u32,
    ) -> Vec<TableMem> {
        let mut out = Vec::new();
        let mut stack = vec![(addr, level)];
        while let Some((addr, level)) = stack.pop() {
            // SAFETY: `addr` is the caller's table, or a link swapped out of a table this
            // call owns: a table of this page table, reachable by stale readers only, and
            // freed by no one else.
            for e in unsafe { self.table_at(guard, addr, level) } {
                let old = e.swap(DEAD, TAKE_RELEASE.ord(AcqRel));
                // Only the owner writes DEAD, and a table has one owner: under loom a second
                // one (the weakened claim) is reported before anything is freed twice.
                #[cfg(loom)]
                assert_ne!(old, DEAD, "a table level claimed twice");
                if let Descriptor::Table { addr } = pte::decode(&self.geom, level, old) {
                    stack.push((addr, level + 1));
                }
            }
            // SAFETY: this call claimed the link to `addr` (from its parent, or by swapping
            // it out of a table it owns), so no one else takes or frees it.
            out.push(unsafe { self.own_table(addr, level) });
        }
        out
    }

    /// Freeze the subtree of the table at `addr` (at `level`) into `frozen`: every empty entry
    /// and, after its own subtree, every table link becomes [`FROZEN`]. Stops at a leaf
    /// ([`Error::Exists`] at `iova`, the block being mapped), at a table being torn down
    /// ([`Stop::Restart`]) or at another map's reservation ([`Stop::Wait`]); the caller then
    /// thaws `frozen`.
    ///
    /// # Safety
    /// `addr` is a table at `level` of this page table, read from a descriptor under `guard`.
    pub(crate) unsafe fn freeze<'g>(
        &self,
        guard: &'g Guard,
        addr: u64,
        level: u32,
        iova: u64,
        frozen: &mut Frozen<'g>,
    ) -> Result<(), Stop> {
        // SAFETY: by the caller's contract.
        for e in unsafe { self.table_at(guard, addr, level) } {
            let mut d = e.load(DESCENT_ACQUIRE.ord(Acquire));
            loop {
                match (d, pte::decode(&self.geom, level, d)) {
                    (DEAD, _) => return Err(Stop::Restart),
                    (FROZEN, _) => return Err(Stop::Wait),
                    (0, _) => {}
                    // SAFETY: a table link read from this table under `guard`.
                    (_, Descriptor::Table { addr }) => unsafe {
                        self.freeze(guard, addr, level + 1, iova, frozen)?
                    },
                    _ => return Err(Error::Exists { iova }.into()),
                }
                match self.claim(e, d, FROZEN) {
                    Ok(()) => break,
                    Err(now) => d = now,
                }
            }
            frozen.push((e, d, level));
        }
        Ok(())
    }

    /// Undo [`PageTable::freeze`], newest first. A frozen table link an owner swapped to
    /// [`DEAD`] meanwhile is this call's alone (the owner saw only [`FROZEN`]): it is taken
    /// and retired here.
    pub(crate) fn thaw(&self, guard: &Guard, frozen: Frozen<'_>) {
        for (e, old, level) in frozen.into_iter().rev() {
            if e.compare_exchange(FROZEN, old, Release, Relaxed).is_ok() || old == 0 {
                continue;
            }
            let addr = pte::decode_oa(&self.geom, old);
            // SAFETY: `old` was read under `guard`, and its only link was held FROZEN by this
            // call until an owner of the table holding it swapped it out unseen: it is ours.
            let tables = unsafe { self.take_subtree(guard, addr, level + 1) };
            crate::table::retire(guard, tables, &self.stats);
        }
    }

    /// Take ownership of the table at `addr` (at `level`).
    ///
    /// # Safety
    /// The caller claimed the only link to `addr`, and the table is no longer reachable from
    /// the root, so no one else will free it.
    pub(crate) unsafe fn own_table(&self, addr: u64, level: u32) -> TableMem {
        let g = &self.geom;
        // SAFETY: by the caller's contract the table is ours; below the root every table
        // comes from the slab, with the length and alignment of every table at `level`.
        unsafe {
            TableMem::from_addr(
                addr,
                g.entries(level),
                g.table_align(level),
                Some(self.slab.clone()),
            )
        }
    }
}
