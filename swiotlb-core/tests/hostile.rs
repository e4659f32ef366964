//! Hostile calls through the safe API: stale handles, racing and misdirected unmaps, sizes at
//! the edges. Each test asserts the typed error and that the instance still works.
#![cfg(not(loom))]

use std::cell::Cell;
use std::sync::{Arc, Barrier};
use swiotlb_core::{
    Config, DeviceConfig, Direction, DmaDst, DmaSrc, Error, MapAttrs, MemoryError, OrigMemory,
    RegionMemory, Swiotlb,
};

const NONE: MapAttrs = MapAttrs {
    alloc_align_mask: 0,
    skip_cpu_sync: false,
    zero_padding: false,
};

/// A device outlives its instance; the next instance may be allocated at the same address.
/// The stale device must stay foreign to it (it was taken for the new instance's own device).
#[test]
fn a_device_of_a_dropped_instance_is_foreign_to_its_successor() {
    dma_sync::cpu::set_current(Some(0));
    for _ in 0..64 {
        let mem = RegionMemory::new(4096);
        let orig = mem.base();
        let old = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
        let stale = old.device(DeviceConfig::default());
        let a = old
            .map(&stale, orig, 64, Direction::ToDevice, NONE)
            .unwrap();
        drop(old);
        let mem = RegionMemory::new(4096);
        let orig = mem.base();
        let new = Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap();
        assert_eq!(
            new.map(&stale, orig, 64, Direction::ToDevice, NONE),
            Err(Error::ForeignDevice)
        );
        assert_eq!(
            new.unmap(&stale, a, 64, Direction::ToDevice, NONE),
            Err(Error::ForeignDevice)
        );
        let dev = new.device(DeviceConfig::default());
        let b = new.map(&dev, orig, 64, Direction::ToDevice, NONE).unwrap();
        new.unmap(&dev, b, 64, Direction::ToDevice, NONE).unwrap();
        assert_eq!(new.stats().used, 0);
        new.check_invariants().unwrap();
    }
}

thread_local! {
    /// Whether this thread's next copy stops at the gate.
    static STALL: Cell<bool> = const { Cell::new(false) };
}

/// Original memory whose next copy, on a thread that asked for it, announces itself and
/// waits at a gate before it touches the bounce buffer: a map or an unmap made slow at its
/// worst point.
struct Gated {
    inner: RegionMemory,
    gate: Arc<Barrier>,
}

impl OrigMemory for Gated {
    fn read_into(&self, addr: u64, dst: DmaDst<'_>) -> Result<(), MemoryError> {
        self.stall();
        self.inner.read_into(addr, dst)
    }

    fn write_from(&self, addr: u64, src: DmaSrc<'_>) -> Result<(), MemoryError> {
        self.stall();
        self.inner.write_from(addr, src)
    }
}

impl Gated {
    /// A small instance over `inner`, gated, and its gate.
    fn instance(inner: RegionMemory) -> (Swiotlb, Arc<Barrier>) {
        let gate = Arc::new(Barrier::new(2));
        let mem = Gated {
            inner,
            gate: gate.clone(),
        };
        (Swiotlb::new(Config::tiny(8, 1, 8), mem).unwrap(), gate)
    }

    fn stall(&self) {
        if STALL.with(|s| s.replace(false)) {
            self.gate.wait(); // arrived
            self.gate.wait(); // let go
        }
    }
}

/// Bytes of a copy-back mapping in the overtaking tests.
const COPY_LEN: usize = 64;

/// A gated instance (see [`Gated`]) over a region holding an old buffer (`0x11`s) and a new
/// one (`0x22`s), a device, and a bidirectional mapping of the old buffer whose bounce buffer
/// holds the device's answer (`0xAA`s): `(instance, gate, device, mapping, old, new)`.
fn answered_copy_back() -> (Swiotlb, Arc<Barrier>, swiotlb_core::Device, u64, u64, u64) {
    dma_sync::cpu::set_current(Some(0));
    let inner = RegionMemory::new(4096);
    let (old, new) = (inner.base(), inner.base() + 1024);
    inner.write(old, &[0x11; COPY_LEN]).unwrap();
    inner.write(new, &[0x22; COPY_LEN]).unwrap();
    let (swiotlb, gate) = Gated::instance(inner);
    let dev = swiotlb.device(DeviceConfig::default());
    let a = swiotlb
        .map(&dev, old, COPY_LEN, Direction::Bidirectional, NONE)
        .unwrap();
    swiotlb.write_bounce(&dev, a, &[0xAA; COPY_LEN]).unwrap(); // the device's answer
    (swiotlb, gate, dev, a, old, new)
}

/// The old buffer holds the device's answer only, the new one its own bytes.
fn assert_buffers(swiotlb: &Swiotlb, old: u64, new: u64) {
    let mut back = [0u8; COPY_LEN];
    swiotlb.memory().read(old, &mut back).unwrap();
    assert_eq!(
        back, [0xAA; COPY_LEN],
        "the old buffer holds its device's answer only"
    );
    swiotlb.memory().read(new, &mut back).unwrap();
    assert_eq!(back, [0x22; COPY_LEN], "the new buffer is unchanged");
}

/// Two unmaps of one copy-back mapping, the second overtaken inside its copy back by the
/// first and by a map of the same size that reuses the slots for another buffer. The slow
/// unmap copied the new mapping's bytes into the old buffer and then freed the new mapping
/// (its head word was the same): one buffer got another's bytes, the other lost its mapping.
/// Now whichever unmap claims the mapping copies it back; the other gets `NotMapped`.
#[test]
fn an_overtaken_copy_back_unmap_never_copies_another_mappings_bytes() {
    const LEN: usize = COPY_LEN;
    let (swiotlb, gate, dev, a, old, new) = answered_copy_back();
    let dir = Direction::Bidirectional;
    let mut unmapped = 0;
    let slow = std::thread::scope(|s| {
        let slow = s.spawn(|| {
            STALL.with(|st| st.set(true));
            swiotlb.unmap(&dev, a, LEN, dir, NONE)
        });
        gate.wait(); // the slow unmap is inside its copy back
        unmapped += usize::from(swiotlb.unmap(&dev, a, LEN, dir, NONE).is_ok());
        let b = swiotlb.map(&dev, new, LEN, dir, NONE).unwrap();
        gate.wait();
        let slow = slow.join().unwrap();
        unmapped += usize::from(swiotlb.unmap(&dev, b, LEN, dir, NONE).is_ok());
        slow
    });
    unmapped += usize::from(slow.is_ok());
    assert_buffers(&swiotlb, old, new);
    assert_eq!(unmapped, 2, "each of the two mappings unmapped once");
    assert_eq!(swiotlb.stats().used, 0);
    swiotlb.check_invariants().unwrap();
}

/// The same overtaking, with the slots reaching the other thread through a drain: the pool is
/// full but for the old mapping's slot, so a map finds room only in the slow unmap's thread
/// cache, once that unmap has given its slot back, by draining the caches (a search that
/// found no room). An unmap that gave its slots back before its copy back copied the new
/// mapping's bytes into the old buffer. The slots stay claimed until the copy back is over:
/// the map meanwhile gets a grown pool or `NoSpace`, never them.
#[test]
fn an_overtaken_copy_back_keeps_its_slots_from_a_draining_map() {
    const LEN: usize = COPY_LEN;
    let (swiotlb, gate, dev, a, old, new) = answered_copy_back();
    let filler = old + 2048;
    let dir = Direction::Bidirectional;
    let to_dev = Direction::ToDevice;
    let fillers: Vec<u64> = (0..7)
        .map(|_| swiotlb.map(&dev, filler, LEN, to_dev, NONE).unwrap())
        .collect();
    assert_eq!(swiotlb.stats().used, 8, "the default pool is full");
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            STALL.with(|st| st.set(true));
            swiotlb.unmap(&dev, a, LEN, dir, NONE)
        });
        gate.wait(); // the slow unmap is inside its copy back
        let b = swiotlb.map(&dev, new, LEN, dir, NONE);
        gate.wait();
        assert_eq!(slow.join().unwrap(), Ok(()));
        match b {
            Ok(b) => assert_eq!(swiotlb.unmap(&dev, b, LEN, dir, NONE), Ok(())),
            Err(e) => assert!(matches!(e, Error::NoSpace { .. }), "{e:?}"),
        }
    });
    assert_buffers(&swiotlb, old, new);
    for f in fillers {
        swiotlb.unmap(&dev, f, LEN, to_dev, NONE).unwrap();
    }
    assert_eq!(swiotlb.stats().used, 0);
    swiotlb.check_invariants().unwrap();
}

thread_local! {
    /// Whether this thread's next copy of original memory unwinds.
    static UNWIND: Cell<bool> = const { Cell::new(false) };
}

/// Original memory whose next copy, on a thread that asked for it, panics (a caller's
/// implementation with a bug).
struct Panicky(RegionMemory);

impl Panicky {
    fn check(&self) {
        if UNWIND.with(|u| u.replace(false)) {
            panic!("the original memory's copy failed");
        }
    }
}

impl OrigMemory for Panicky {
    fn read_into(&self, addr: u64, dst: DmaDst<'_>) -> Result<(), MemoryError> {
        self.check();
        self.0.read_into(addr, dst)
    }

    fn write_from(&self, addr: u64, src: DmaSrc<'_>) -> Result<(), MemoryError> {
        self.check();
        self.0.write_from(addr, src)
    }
}

/// A copy that unwinds out of `map` gives the slots back (they stayed allocated for good,
/// and the whole pool could no longer be mapped); one that unwinds out of a copy-back `unmap`
/// keeps the mapping, which a second unmap releases.
#[test]
fn an_unwinding_copy_leaks_no_slot_and_loses_no_mapping() {
    dma_sync::cpu::set_current(Some(0));
    const ALL: usize = 8 * 2048;
    let mem = Panicky(RegionMemory::new(64 * 1024));
    let orig = mem.0.base();
    let cfg = Config {
        can_grow: false,
        transient_pools: false,
        ..Config::tiny(8, 1, 8)
    };
    let swiotlb = Swiotlb::new(cfg, mem).unwrap();
    let dev = swiotlb.device(DeviceConfig::default());
    let dir = Direction::Bidirectional;
    let unwinds = |f: &dyn Fn()| {
        UNWIND.with(|u| u.set(true));
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
    };
    // Once through the general path (a fresh thread has no cached run), once through the
    // fast path (the run cached by the unmap below).
    for _ in 0..2 {
        assert!(unwinds(&|| {
            let _ = swiotlb.map(&dev, orig, ALL, dir, NONE);
        }));
        assert_eq!(swiotlb.stats().used, 0);
        swiotlb.check_invariants().unwrap();
        let a = swiotlb.map(&dev, orig, ALL, dir, NONE).unwrap();
        assert!(unwinds(&|| {
            let _ = swiotlb.unmap(&dev, a, ALL, dir, NONE);
        }));
        assert_eq!(swiotlb.stats().used, 8, "the mapping is kept");
        swiotlb.sync_for_cpu(&dev, a, ALL, dir).unwrap();
        swiotlb.unmap(&dev, a, ALL, dir, NONE).unwrap();
        assert_eq!(swiotlb.stats().used, 0);
        swiotlb.check_invariants().unwrap();
    }
}

/// An unmap (with a copy back) of an address whose map is still copying in: the address is
/// guessed, or stale. A mapping published before its copy in could be claimed then: the copy
/// back gave the buffer the slots' earlier bytes, and the map went on to fill freed slots.
/// Now the mapping is published once filled: the early unmap finds none.
#[test]
fn a_map_still_copying_in_cannot_be_unmapped() {
    dma_sync::cpu::set_current(Some(0));
    const LEN: usize = 64;
    let inner = RegionMemory::new(4096);
    let orig = inner.base();
    inner.write(orig, &[0x33; LEN]).unwrap();
    let (swiotlb, gate) = Gated::instance(inner);
    let dev = swiotlb.device(DeviceConfig::default());
    let dir = Direction::Bidirectional;
    let start = swiotlb.stats().pools[0].start;
    // The device's earlier bytes in every slot.
    let a = swiotlb.map(&dev, orig, LEN, dir, NONE).unwrap();
    swiotlb
        .write_bounce(&dev, start, &[0xEE; 8 * 2048])
        .unwrap();
    swiotlb
        .unmap(&dev, a, LEN, Direction::ToDevice, NONE)
        .unwrap();
    let (mapped, early) = std::thread::scope(|s| {
        let mapper = s.spawn(|| {
            STALL.with(|st| st.set(true));
            swiotlb.map(&dev, orig, LEN, dir, NONE).unwrap()
        });
        gate.wait(); // the map is inside its copy in
        let early: Vec<_> = (0..8)
            .map(|i| swiotlb.unmap(&dev, start + i * 2048, LEN, dir, NONE))
            .collect();
        gate.wait();
        (mapper.join().unwrap(), early)
    });
    assert!(
        early
            .iter()
            .all(|r| matches!(r, Err(Error::NotMapped { .. }))),
        "{early:?}"
    );
    let mut back = [0u8; LEN];
    swiotlb.memory().read(orig, &mut back).unwrap();
    assert_eq!(
        back, [0x33; LEN],
        "no copy back of the slots' earlier bytes"
    );
    swiotlb.read_bounce(&dev, mapped, &mut back).unwrap();
    assert_eq!(back, [0x33; LEN], "the map filled its own slots");
    swiotlb.unmap(&dev, mapped, LEN, dir, NONE).unwrap();
    assert_eq!(swiotlb.stats().used, 0);
    swiotlb.check_invariants().unwrap();
}
