//! The cached alloc+free pair of one granule in a loop, for instruction counts:
//! `valgrind --tool=callgrind target/release/examples/pair_loop N [unchecked]` for two values
//! of `N`; the difference over the difference in `N` is the cost of one pair. The space is
//! the benchmark's (a 48-bit space of 4 KiB granules). Examples build with the crate's
//! dev-dependencies, so the fault-injection sites are compiled in: 28 of the checked pair's
//! 172 instructions are theirs, which `dmabench` (built without them) does not pay.

use iova_cache::{IovaAllocator, IovaConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mut cfg = IovaConfig::with_space(1, (1 << 36) - 1);
    cfg.checked_frees = args.next().as_deref() != Some("unchecked");
    let a = IovaAllocator::new(cfg).expect("valid configuration");
    let limit = (1 << 36) - 1;
    for _ in 0..n {
        let p = a.alloc(1, limit).expect("room");
        a.free(p, 1).expect("allocated");
    }
}
