//! Slots given back by exiting threads, and one thread's slots in several instances.

use crate::{Config, DeviceConfig, Direction, MapAttrs, RegionMemory, Swiotlb};
use std::sync::Arc;

/// Bytes of one bounce: two 2 KiB slots.
const LEN: usize = 4096;

/// An instance of one area (8 cache slots) and its `LEN` bytes of original memory.
struct Instance {
    swiotlb: Swiotlb,
    orig: u64,
}

impl Instance {
    fn new() -> Instance {
        let mem = RegionMemory::new(LEN);
        let orig = mem.base();
        let swiotlb = Swiotlb::new(Config::tiny(64, 1, 8), mem).expect("tiny config");
        Instance { swiotlb, orig }
    }

    /// Map and unmap the original memory; returns the bounce address.
    fn bounce(&self) -> u64 {
        let s = &self.swiotlb;
        let dev = s.device(DeviceConfig::default());
        let (dir, attrs) = (Direction::ToDevice, MapAttrs::default());
        let a = s.map(&dev, self.orig, LEN, dir, attrs).expect("room");
        s.unmap(&dev, a, LEN, dir, attrs).expect("mapped");
        a
    }

    /// Slots with an owner, and runs cached.
    fn caches(&self) -> (usize, usize) {
        let caches = &self.swiotlb.inner.caches;
        (caches.claimed(), caches.cached().len())
    }
}

/// Three times as many threads as slots, one after another: each finds a slot (it caches its
/// run), and gives it back when it exits, with the run still cached for the next.
#[test]
fn exited_threads_give_their_slots_back() {
    let instance = Arc::new(Instance::new());
    for _ in 0..3 * instance.swiotlb.inner.caches.slots.len() {
        let i = instance.clone();
        let inside = std::thread::spawn(move || {
            i.bounce();
            i.caches()
        });
        assert_eq!(inside.join().unwrap(), (1, 1), "the thread owns a slot");
        assert_eq!(
            instance.caches(),
            (0, 1),
            "its slot is free, its run cached"
        );
        instance.swiotlb.check_invariants().unwrap();
        assert_eq!(instance.swiotlb.stats().used, 0);
    }
}

/// A thread that exits after its instance is dropped finds its slot array gone and touches
/// nothing (under Miri, a touch of the freed array fails the test).
#[test]
fn a_thread_outliving_its_instance_exits_cleanly() {
    let instance = Arc::new(Instance::new());
    let (done, bounced) = std::sync::mpsc::channel();
    let (go, dropped) = std::sync::mpsc::channel::<()>();
    let i = instance.clone();
    let t = std::thread::spawn(move || {
        i.bounce();
        drop(i);
        done.send(()).unwrap();
        dropped.recv().unwrap();
    });
    bounced.recv().unwrap();
    let alive = instance.swiotlb.inner.caches.slots.alive_probe();
    drop(instance);
    assert!(!alive(), "the instance and its slots are gone");
    go.send(()).unwrap();
    t.join().unwrap();
}

/// One thread alternating between two instances keeps one slot and one cached run in each:
/// every map takes back the run its last unmap in that instance cached (same address), and
/// no further slot is claimed.
#[test]
fn one_thread_alternating_instances_keeps_a_slot_in_each() {
    let instances = [Instance::new(), Instance::new()];
    let first = instances.each_ref().map(Instance::bounce);
    for _ in 0..10 {
        for (instance, &a) in instances.iter().zip(&first) {
            assert_eq!(instance.bounce(), a, "the cached run is taken back");
        }
    }
    for instance in &instances {
        assert_eq!(instance.caches(), (1, 1));
    }
}
