//! The IOVA allocation policy of DMA mappings (`dma_iommu::policy`): 32-bit addresses first,
//! given up for a device after its first miss, and never because of bad input or a lack of
//! memory.
#![cfg(not(loom))]

use dma_iommu::DevicePolicy;
use dma_sync::fault::armed;
use iova_cache::faults::TREE_NODE;
use iova_cache::{IovaAllocator, IovaConfig, IovaError};

/// Pfns of a 33-bit space of 4 KiB granules: half of it lies above 4 GiB.
const WIDE: u64 = (1 << 21) - 1;

/// An allocator over pfns `1..=WIDE`, without the background trim.
fn allocator(caching: bool) -> IovaAllocator {
    IovaAllocator::new(IovaConfig {
        caching,
        trim_interval: None,
        ..IovaConfig::with_space(1, WIDE)
    })
    .unwrap()
}

/// 791c2b17fb40: after the first 32-bit miss a device stops trying 32-bit first for good.
#[test]
fn device_gives_up_32bit_first_after_one_miss() {
    let a = allocator(false);
    let limit32 = a.dma_32bit_pfn() - 1;
    let wide = WIDE;
    let dev = DevicePolicy::new(true);
    let filler = a.alloc_range(limit32, limit32, false).unwrap(); // the whole 32-bit zone
    let p = dev.alloc_iova(&a, 1, wide).unwrap();
    assert!(p > limit32);
    assert!(!dev.tries_32bit_first());
    a.free_range(filler, limit32).unwrap();
    assert!(
        dev.alloc_iova(&a, 1, wide).unwrap() > limit32,
        "still wide after space came back"
    );
    let fresh = DevicePolicy::new(true);
    assert!(fresh.alloc_iova(&a, 1, wide).unwrap() <= limit32);
    let dac = DevicePolicy::new(false);
    assert!(
        dac.alloc_iova(&a, 1, wide).unwrap() > limit32,
        "forcedac devices never try 32-bit"
    );
    assert!(
        dac.alloc_iova(&a, 1, limit32).unwrap() <= limit32,
        "a 32-bit mask is always honoured"
    );
    assert_eq!(fresh.alloc_iova(&a, 0, wide), Err(IovaError::ZeroSize));
    assert!(
        fresh.tries_32bit_first(),
        "a bad request does not flip the device"
    );
}

/// A refused tree node (no memory) is not a 32-bit miss: the device keeps trying 32-bit first.
#[test]
fn no_memory_is_not_a_32bit_miss() {
    let a = allocator(true);
    let dev = DevicePolicy::new(true);
    let (r, used) = armed(&TREE_NODE, 1, || dev.alloc_iova(&a, 1, WIDE));
    assert_eq!((r, used), (Err(IovaError::OutOfMemory { size: 1 }), 1));
    assert!(dev.tries_32bit_first());
    assert!(dev.alloc_iova(&a, 1, WIDE).unwrap() < a.dma_32bit_pfn());
}

/// A 32-bit-first device that gave up 32-bit space leaves the 32-bit space it frees to the
/// 32-bit-only devices while there is room above 4 GiB: its small requests take a new chunk
/// high rather than the free space of the chunks its 32-bit allocations left below 4 GiB.
#[test]
fn wide_allocations_leave_freed_32bit_space_to_32bit_devices() {
    let a = allocator(false);
    let limit32 = a.dma_32bit_pfn() - 1;
    // A chunk of this space is 2^17 granules: leave two chunks' worth of 32-bit space free.
    let low_room = 2 << 17;
    a.reserve(1, limit32 - low_room).unwrap();
    let dev = DevicePolicy::new(true);
    let mut low = Vec::new();
    let first_high = loop {
        let pfn = dev.alloc_iova(&a, 64, WIDE).unwrap();
        if pfn > limit32 {
            break pfn;
        }
        low.push(pfn);
    };
    assert_eq!(
        low.len() as u64,
        low_room / 64,
        "32-bit space first, to the last slot"
    );
    assert!(!dev.tries_32bit_first());
    // Half the device's 32-bit ranges come back: free slots in every low chunk.
    for &pfn in low.iter().step_by(2) {
        a.free(pfn, 64).unwrap();
    }
    // Three chunks' worth of wide requests: more than the first high chunk holds.
    for _ in 0..3 * (1 << 17) / 64 {
        let pfn = dev.alloc_iova(&a, 64, WIDE).unwrap();
        assert!(pfn > limit32, "{pfn:#x} taken below 4 GiB with room above");
        assert!(pfn < first_high, "top-down");
    }
    let dev32 = DevicePolicy::new(false);
    for _ in 0..low.len() / 2 {
        assert!(dev32.alloc_iova(&a, 64, limit32).unwrap() <= limit32);
    }
    assert_eq!(
        dev32.alloc_iova(&a, 64, limit32),
        Err(IovaError::NoSpace {
            size: 64,
            limit: limit32
        }),
        "the freed 32-bit space, exactly"
    );
    a.check_invariants().unwrap();
}
