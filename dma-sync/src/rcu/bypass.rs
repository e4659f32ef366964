//! Loom builds: report a free that bypasses RCU instead of letting it be undefined behaviour.
//!
//! Objects allocated by [`super::boxed`] (or declared with [`super::track`]) are *known* for
//! the rest of the loom execution, each with a shadow loom cell created when it is allocated.
//! Every dereference through a guard is a tracked read of the shadow. [`CheckedAlloc`],
//! installed as the test binary's global allocator, turns the deallocation of a known object
//! into a tracked write of its shadow and keeps its memory until the next execution starts.
//! So loom itself decides: a free ordered after every dereference (teardown after a join, the
//! last drop of an `Arc`) passes; a free racing a reader's dereference, before or after it, is
//! a causality violation, and the stale reader never touches really freed memory. Frees
//! through RCU never deallocate during the execution (freed objects are parked).
//!
//! The write runs inside the allocator, which must not unwind: loom's report is caught there
//! and raised when the execution ends. The table is fixed-size and lock-free, so the allocator
//! itself never blocks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The loom cell whose accesses stand for the object's reads and its free.
type Shadow = loom::cell::UnsafeCell<()>;

/// Known objects across all concurrently running tests (each entry belongs to one OS thread).
const ENTRIES: usize = 1024;

struct Entry {
    /// Address of the owning OS thread's marker, 0 when free.
    owner: AtomicUsize,
    start: AtomicUsize,
    len: AtomicUsize,
    /// 0 while live; once deallocated (and kept), the allocation's alignment.
    kept_align: AtomicUsize,
    /// The object's `Box<Shadow>`, leaked until the entry is reset.
    shadow: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Entry = Entry {
    owner: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    kept_align: AtomicUsize::new(0),
    shadow: AtomicUsize::new(0),
};

static TABLE: [Entry; ENTRIES] = [FREE; ENTRIES];

/// One past the highest entry ever used: deallocations scan only that far.
static USED: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    /// Its address identifies the OS thread; never allocates.
    static MARKER: u8 = const { 0 };
    /// loom's report on a free that raced a reader, raised when the execution ends.
    static REPORT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Created once per loom execution: forgets what a previous (maybe failed) one left, and
/// raises a report when the execution ends.
struct Execution;

impl Drop for Execution {
    fn drop(&mut self) {
        let report = REPORT.with(|r| r.borrow_mut().take());
        if let Some(msg) = report.filter(|_| !std::thread::panicking()) {
            panic!("rcu: an object was freed outside dma_sync::rcu while a reader could reach it: {msg}");
        }
    }
}

loom::lazy_static! {
    static ref EXECUTION: Execution = {
        reset();
        Execution
    };
}

fn me() -> usize {
    MARKER.with(|m| m as *const u8 as usize)
}

fn reset() {
    let me = me();
    for e in &TABLE[..USED.load(Relaxed)] {
        if e.owner.load(Relaxed) != me {
            continue;
        }
        let align = e.kept_align.swap(0, Relaxed);
        if align != 0 {
            let layout = Layout::from_size_align(e.len.load(Relaxed), align)
                .expect("the layout it was allocated with");
            // SAFETY: kept by `dealloc` below with this layout, released once.
            unsafe { System.dealloc(e.start.load(Relaxed) as *mut u8, layout) };
        }
        let shadow = e.shadow.swap(0, Relaxed);
        if shadow != 0 {
            // SAFETY: from `Box::into_raw` in `track`; loom cells need no execution to drop.
            drop(unsafe { Box::from_raw(shadow as *mut Shadow) });
        }
        e.owner.store(0, Relaxed);
    }
    REPORT.with(|r| *r.borrow_mut() = None);
}

/// The entry of a known object starting at `start`.
fn find(me: usize, start: usize) -> Option<&'static Entry> {
    TABLE[..USED.load(Relaxed)]
        .iter()
        .find(|e| e.owner.load(Relaxed) == me && e.start.load(Relaxed) == start)
}

fn shadow(e: &Entry) -> &Shadow {
    // SAFETY: set in `track` before the entry is findable, freed only by `reset`.
    unsafe { &*(e.shadow.load(Relaxed) as *const Shadow) }
}

/// Declare `[start, start + len)` an object RCU readers will reach, allocated just now by
/// the current thread (a reused address gets a fresh shadow).
pub(super) fn track(start: usize, len: usize) {
    let _ = &*EXECUTION;
    if start == 0 || len == 0 {
        return;
    }
    let me = me();
    let e = find(me, start).unwrap_or_else(|| {
        let i = TABLE
            .iter()
            .position(|e| e.owner.compare_exchange(0, me, Relaxed, Relaxed).is_ok())
            .expect("rcu: more objects tracked in one loom execution than the table holds");
        TABLE[i].start.store(start, Relaxed);
        USED.fetch_max(i + 1, Relaxed);
        &TABLE[i]
    });
    e.len.store(len, Relaxed);
    e.kept_align.store(0, Relaxed);
    // The old shadow, if any, stays leaked until the reset: a stale reader may still hold it.
    let fresh = Box::into_raw(Box::new(Shadow::new(()))) as usize;
    e.shadow.store(fresh, Relaxed);
}

/// A guard dereferenced `ptr`: a tracked read of its shadow, if the object is known.
pub(super) fn deref(ptr: usize) {
    if let Some(e) = find(me(), ptr) {
        // loom words a read racing the free in several ways; every one is this report.
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| shadow(e).with(|_| ()))) {
            panic!(
                "rcu: a reader reached an object freed outside dma_sync::rcu: {}",
                loom_message(payload)
            );
        }
    }
}

/// Deallocating `ptr`: if it is a known object, keep its memory and write its shadow.
/// Returns whether it was kept.
fn freed(ptr: usize, layout: Layout) -> bool {
    let Ok(me) = MARKER.try_with(|m| m as *const u8 as usize) else {
        return false;
    };
    let Some(e) = find(me, ptr).filter(|e| e.len.load(Relaxed) == layout.size()) else {
        return false;
    };
    if e.kept_align.swap(layout.align(), Relaxed) == 0 {
        write_shadow(e);
    }
    true
}

/// The memory of the known object at `ptr` went back to a private pool (a free list that
/// hands it out again) instead of the allocator: a free as far as its readers are concerned.
pub(super) fn released(ptr: usize) {
    let Ok(me) = MARKER.try_with(|m| m as *const u8 as usize) else {
        return;
    };
    if let Some(e) = find(me, ptr) {
        write_shadow(e);
    }
}

/// The free of a known object, as a tracked write of its shadow; a race is reported when the
/// execution ends (the allocator must not unwind).
fn write_shadow(e: &Entry) {
    if !std::thread::panicking() {
        let write = catch_unwind(AssertUnwindSafe(|| shadow(e).with_mut(|_| ())));
        if let Err(payload) = write {
            let msg = loom_message(payload);
            let _ = REPORT.try_with(|r| r.borrow_mut().get_or_insert(msg).len());
        }
    }
}

/// The text of a panic loom raised.
fn loom_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "loom failure".into())
}

/// The system allocator, checking frees of objects RCU readers reach (loom builds). Install
/// it in a loom test binary:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: dma_sync::rcu::CheckedAlloc = dma_sync::rcu::CheckedAlloc;
/// ```
pub struct CheckedAlloc;

// SAFETY: forwards to `System`; a deallocation it defers is released by `reset` with the same
// layout, once.
unsafe impl GlobalAlloc for CheckedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !freed(ptr as usize, layout) {
            // SAFETY: forwarded contract.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}
