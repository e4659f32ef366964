//! A 4 KiB map+unmap in a loop over 64 slots, as the benchmark's page-table case does, for
//! instruction counts: `valgrind --tool=callgrind target/release/examples/map_loop N` for two
//! values of `N`; the difference over the difference in `N` is the cost of one map+unmap.

use io_pgtable::{Config, PageTable, Prot};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let table = PageTable::new(Config::s1_4k(48)).expect("valid configuration");
    let base = 1u64 << 36;
    for i in 0..n {
        let iova = base + (i & 63) * 4096;
        table
            .map(
                iova,
                0x1000_0000 + (i & 63) * 4096,
                4096,
                Prot::READ | Prot::WRITE,
            )
            .expect("free slot");
        table.unmap(iova, 4096).expect("mapped");
    }
}
