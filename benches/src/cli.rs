//! Command-line options of `dmabench`.

use crate::suite::{Component, Options};
use clap::Parser;
use std::path::PathBuf;

/// Multithreaded map/unmap benchmarks of the dmaloom crates against their peers and the
/// physical floor. The default suite takes a few minutes; `--smoke` a few seconds.
#[derive(Debug, Parser)]
#[command(name = "dmabench", version, about)]
pub struct Cli {
    /// Thread counts to run every case at (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub threads: Option<Vec<usize>>,
    /// Throughput phase per case and thread count, in milliseconds (the latency phase adds a
    /// quarter of it).
    #[arg(long)]
    pub duration_ms: Option<u64>,
    /// Components to run (comma-separated).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub components: Option<Vec<Component>>,
    /// IOVA size classes, in 4 KiB granules (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub granules: Option<Vec<u64>>,
    /// Copy floor sizes, in bytes (comma-separated): glibc memcpy and swiotlb-core's copy at each.
    #[arg(long, value_delimiter = ',')]
    pub copy_sizes: Option<Vec<usize>>,
    /// Bounce sizes, in bytes (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub bounce_sizes: Option<Vec<usize>>,
    /// Modelled cost of one IOTLB invalidation + sync, in nanoseconds.
    #[arg(long)]
    pub iotlb_sync_ns: Option<u64>,
    /// Map+unmap pairs per second of the throttled writer of the fixed-rate translation case
    /// (0: unthrottled).
    #[arg(long)]
    pub writer_rate: Option<u64>,
    /// Live allocations (1..64 granules) in the fragmentation case.
    #[arg(long)]
    pub fragmentation_live: Option<usize>,
    /// Live objects of the scale sweeps (comma-separated; the scale targets compare 1000 with
    /// 1000000).
    #[arg(long, value_delimiter = ',')]
    pub sweep: Option<Vec<u64>>,
    /// Times every case runs at every thread count (figures are medians; targets the median
    /// ratio with its min–max).
    #[arg(long)]
    pub repetitions: Option<usize>,
    /// Exit with status 2 when a measured target is missed (by its median ratio).
    #[arg(long)]
    pub check: bool,
    /// Print the full tables (every thread count, min–max, p99.9) instead of 120 columns.
    #[arg(long)]
    pub wide: bool,
    /// Output folder for JSON and plots.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Run every case for a few milliseconds with small set-ups (what CI runs).
    #[arg(long)]
    pub smoke: bool,
    /// Do not pin threads to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Do not raise the scheduling priority (by default the run takes the highest nice level
    /// it may, so other work on the machine disturbs it less).
    #[arg(long)]
    pub no_boost: bool,
    /// Do not write SVG plots.
    #[arg(long)]
    pub no_plots: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

impl Cli {
    /// The options: the default (or smoke) suite with every given flag applied.
    ///
    /// ```
    /// use clap::Parser;
    /// let cli = dma_bench::cli::Cli::parse_from(["dmabench", "--smoke", "--threads", "1,2"]);
    /// let o = cli.into_options();
    /// assert!(o.smoke);
    /// assert_eq!(o.threads, vec![1, 2]);
    /// ```
    pub fn into_options(self) -> Options {
        let mut o = if self.smoke {
            Options::smoke()
        } else {
            Options::default_suite()
        };
        if let Some(mut t) = nonempty(self.threads) {
            t.retain(|&t| t > 0);
            t.sort_unstable();
            t.dedup();
            o.threads = t;
        }
        if let Some(d) = self.duration_ms {
            o.duration_ms = d.max(1);
        }
        if let Some(c) = nonempty(self.components) {
            o.components = c;
        }
        if let Some(g) = nonempty(self.granules) {
            o.granules = g.into_iter().filter(|&g| g > 0).collect();
        }
        if let Some(s) = nonempty(self.copy_sizes) {
            o.copy_sizes = s.into_iter().filter(|&s| s > 0).collect();
        }
        if let Some(s) = nonempty(self.bounce_sizes) {
            o.bounce_sizes = s.into_iter().filter(|&s| s > 0).collect();
        }
        if let Some(n) = self.iotlb_sync_ns {
            o.iotlb_sync_ns = n;
        }
        if let Some(n) = self.writer_rate {
            o.writer_rate = n;
        }
        if let Some(n) = self.fragmentation_live {
            o.fragmentation_live = n.max(1);
        }
        if let Some(mut v) = nonempty(self.sweep) {
            v.retain(|&n| n > 0);
            v.sort_unstable();
            v.dedup();
            o.sweep = v;
        }
        if let Some(n) = self.repetitions {
            o.repetitions = n.max(1);
        }
        o.check = self.check;
        o.wide = self.wide;
        if let Some(p) = self.out {
            o.out = p;
        }
        o.pin &= !self.no_pin;
        o.boost &= !self.no_boost;
        o.plots &= !self.no_plots;
        o.quiet = self.quiet;
        o
    }
}

/// `Some` only for a non-empty list.
fn nonempty<T>(v: Option<Vec<T>>) -> Option<Vec<T>> {
    v.filter(|v| !v.is_empty())
}
