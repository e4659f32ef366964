//! Repetitions: every case runs several times in one suite run; what the tables, plots and
//! targets use is the median, and the min–max range says how far to trust it.

use crate::harness::{Latency, Measurement};
use serde::Serialize;

/// Median, smallest and largest of repeated values.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Spread {
    /// Median (the mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` if there are none or one is not finite.
    ///
    /// ```
    /// use dma_bench::spread::Spread;
    /// let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
    /// assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    /// assert_eq!(Spread::of(&[4.0, 1.0]).unwrap().median, 2.5);
    /// assert!(Spread::of(&[]).is_none());
    /// ```
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_unstable_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// Whether `x` lies within `[min, max]`.
    pub fn contains(&self, x: f64) -> bool {
        self.min <= x && x <= self.max
    }

    /// `max / min - 1` as a percentage: how far apart the repetitions landed.
    pub fn range_percent(&self) -> f64 {
        if self.min > 0.0 {
            (self.max / self.min - 1.0) * 100.0
        } else {
            f64::INFINITY
        }
    }
}

/// The median of `f` over `reps` (0 if empty or not finite).
fn median_by(reps: &[Measurement], f: impl Fn(&Measurement) -> f64) -> f64 {
    let v: Vec<f64> = reps.iter().map(f).collect();
    Spread::of(&v).map_or(f64::NAN, |s| s.median)
}

/// One measurement whose every figure is the median of that figure over `reps` (all at the same
/// thread count): what the tables and plots show.
///
/// ```
/// use dma_bench::harness::{Latency, Measurement};
/// let reps: Vec<_> = [100, 300, 200]
///     .iter()
///     .map(|&ops| Measurement::new(1, ops, 1.0, 1e-6 * ops as f64, Latency::default()))
///     .collect();
/// let m = dma_bench::spread::median_measurement(&reps);
/// assert_eq!(m.ops, 200);
/// assert!((m.cpu_ns_per_op - 1000.0).abs() < 1e-6);
/// ```
pub fn median_measurement(reps: &[Measurement]) -> Measurement {
    let Some(first) = reps.first() else {
        return Measurement::new(0, 0, 0.0, 0.0, Latency::default());
    };
    let opt = |f: &dyn Fn(&Measurement) -> Option<f64>| {
        let v: Vec<f64> = reps.iter().filter_map(f).collect();
        Spread::of(&v).map(|s| s.median)
    };
    let lat = |f: &dyn Fn(&Latency) -> f64| median_by(reps, |m| f(&m.latency));
    Measurement {
        threads: first.threads,
        ops: median_by(reps, |m| m.ops as f64) as u64,
        elapsed_s: median_by(reps, |m| m.elapsed_s),
        ops_per_sec: median_by(reps, |m| m.ops_per_sec),
        ns_per_op: median_by(reps, |m| m.ns_per_op),
        cpu_s: median_by(reps, |m| m.cpu_s),
        cpu_ns_per_op: median_by(reps, |m| m.cpu_ns_per_op),
        runqueue_wait_s: opt(&|m| m.runqueue_wait_s),
        adjusted_ops_per_sec: opt(&|m| m.adjusted_ops_per_sec),
        background_ops_per_sec: opt(&|m| m.background_ops_per_sec),
        huge_page_share: opt(&|m| m.huge_page_share),
        latency: Latency {
            samples: median_by(reps, |m| m.latency.samples as f64) as u64,
            group: median_by(reps, |m| m.latency.group as f64) as u64,
            mean: lat(&|l| l.mean),
            p50: lat(&|l| l.p50),
            p90: lat(&|l| l.p90),
            p99: lat(&|l| l.p99),
            p999: lat(&|l| l.p999),
            max: lat(&|l| l.max),
            switches: opt(&|m| m.latency.switches.map(|n| n as f64)).map(|n| n as u64),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_rejects_non_finite_values() {
        assert!(Spread::of(&[1.0, f64::INFINITY]).is_none());
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn range_and_containment() {
        let s = Spread::of(&[2.0, 3.0, 2.5]).unwrap();
        assert!((s.range_percent() - 50.0).abs() < 1e-9);
        assert!(s.contains(2.0) && s.contains(3.0) && !s.contains(3.01));
    }

    #[test]
    fn median_measurement_keeps_absent_figures_absent() {
        let reps = vec![Measurement::new(2, 10, 1.0, 1.0, Latency::default()); 3];
        let m = median_measurement(&reps);
        assert_eq!((m.threads, m.ops), (2, 10));
        assert_eq!(m.adjusted_ops_per_sec, None);
        assert_eq!(m.background_ops_per_sec, None);
        assert_eq!(m.huge_page_share, None);
        assert_eq!(m.latency.switches, None);
    }

    #[test]
    fn median_measurement_takes_the_median_switches() {
        let reps: Vec<Measurement> = [Some(1), Some(5), Some(3)]
            .into_iter()
            .map(|switches| {
                let lat = Latency {
                    switches,
                    ..Latency::default()
                };
                Measurement::new(1, 10, 1.0, 1.0, lat)
            })
            .collect();
        assert_eq!(median_measurement(&reps).latency.switches, Some(3));
    }
}
