//! The targets of the suite, each a ratio of two quantities measured in the same run, and
//! whether it is met.
//!
//! Absolute nanoseconds depend on the machine, its load and its clock; a ratio against a floor
//! or a peer measured seconds apart in the same process mostly does not, which is what makes
//! the targets checkable on any machine and comparable with published ratios.

use crate::cases::{alloc, floor, iommu, pgtable, swiotlb};
use crate::suite::{CaseResult, Component};
use serde::Serialize;

/// What is read from a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// CPU nanoseconds per op (robust to other load on the machine).
    CpuNsPerOp,
    /// Ops per second, all threads: load-adjusted up to the CPU count, wall clock beyond.
    OpsPerSec,
    /// 99th percentile latency, ns.
    P99,
}

/// One measured quantity: a metric of a case at a thread count.
#[derive(Clone, Debug, Serialize)]
pub struct Quantity {
    /// Component of the case.
    pub component: Component,
    /// Workload of the case.
    pub workload: String,
    /// Implementation of the case.
    pub implementation: String,
    /// Thread count.
    pub threads: usize,
    /// Metric.
    pub metric: Metric,
}

impl Quantity {
    fn new(
        component: Component,
        workload: impl Into<String>,
        implementation: &str,
        threads: usize,
        metric: Metric,
    ) -> Self {
        Quantity {
            component,
            workload: workload.into(),
            implementation: implementation.into(),
            threads,
            metric,
        }
    }

    /// CPU nanoseconds per op of a one-thread run.
    fn cpu_ns(component: Component, workload: &str, implementation: &str) -> Self {
        Self::new(component, workload, implementation, 1, Metric::CpuNsPerOp)
    }

    /// Ops per second of a run on `threads` threads.
    fn ops(component: Component, workload: &str, implementation: &str, threads: usize) -> Self {
        Self::new(
            component,
            workload,
            implementation,
            threads,
            Metric::OpsPerSec,
        )
    }

    /// The value of this quantity in `results` (run on `cpus` CPUs), if measured.
    pub fn value(&self, results: &[CaseResult], cpus: usize) -> Option<f64> {
        let r = results.iter().find(|r| {
            r.component == self.component
                && r.workload == self.workload
                && r.implementation == self.implementation
        })?;
        let m = r.at(self.threads)?;
        let v = match self.metric {
            Metric::CpuNsPerOp => m.cpu_ns_per_op,
            Metric::OpsPerSec => m.throughput(cpus),
            Metric::P99 => m.latency.p99 as f64,
        };
        (v.is_finite() && v > 0.0).then_some(v)
    }
}

/// A target: `numerator / denominator` at most (or at least) `bound`.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// Short id.
    pub id: &'static str,
    /// The target as the issue states it.
    pub statement: &'static str,
    /// Numerator.
    pub numerator: Quantity,
    /// Denominator.
    pub denominator: Quantity,
    /// `true`: the ratio must be ≤ bound; `false`: ≥ bound.
    pub at_most: bool,
    /// The bound.
    pub bound: f64,
}

/// A target evaluated on a run.
#[derive(Clone, Debug, Serialize)]
pub struct TargetResult {
    /// The target.
    #[serde(flatten)]
    pub target: Target,
    /// Numerator value, if measured.
    pub numerator_value: Option<f64>,
    /// Denominator value, if measured.
    pub denominator_value: Option<f64>,
    /// The ratio, if both were measured.
    pub ratio: Option<f64>,
    /// Whether the bound holds (`None`: not measured in this run).
    pub met: Option<bool>,
}

impl TargetResult {
    /// How far the ratio is from the bound, as a factor ≥ 1 when missed (1.0 when met).
    pub fn shortfall(&self) -> Option<f64> {
        let r = self.ratio?;
        let f = if self.target.at_most {
            r / self.target.bound
        } else {
            self.target.bound / r
        };
        Some(f.max(1.0))
    }
}

impl Target {
    /// Evaluate on `results`, measured on `cpus` CPUs.
    pub fn evaluate(&self, results: &[CaseResult], cpus: usize) -> TargetResult {
        let n = self.numerator.value(results, cpus);
        let d = self.denominator.value(results, cpus);
        let ratio = n.zip(d).map(|(n, d)| n / d);
        let met = ratio.map(|r| {
            if self.at_most {
                r <= self.bound
            } else {
                r >= self.bound
            }
        });
        TargetResult {
            target: self.clone(),
            numerator_value: n,
            denominator_value: d,
            ratio,
            met,
        }
    }
}

const OURS: &str = "ours";
const FLOOR: &str = "floor";

impl Target {
    /// `numerator / denominator` at most (`at_most`) or at least `bound`.
    fn ratio(
        id: &'static str,
        statement: &'static str,
        numerator: Quantity,
        denominator: Quantity,
        at_most: bool,
        bound: f64,
    ) -> Self {
        Target {
            id,
            statement,
            numerator,
            denominator,
            at_most,
            bound,
        }
    }

    /// Our one-thread CPU time per op at most `bound` times a floor's.
    fn vs_floor(
        id: &'static str,
        statement: &'static str,
        (component, workload): (Component, &str),
        floor: &str,
        bound: f64,
    ) -> Self {
        Self::ratio(
            id,
            statement,
            Quantity::cpu_ns(component, workload, OURS),
            Quantity::cpu_ns(Component::Floor, floor, FLOOR),
            true,
            bound,
        )
    }

    /// Our throughput at `threads` threads at least `bound` times `peer`'s, on one workload.
    fn vs_peer(
        id: &'static str,
        statement: &'static str,
        (component, workload): (Component, &str),
        (peer, peer_threads): (&str, usize),
        threads: usize,
        bound: f64,
    ) -> Self {
        Self::ratio(
            id,
            statement,
            Quantity::ops(component, workload, OURS, threads),
            Quantity::ops(component, workload, peer, peer_threads),
            false,
            bound,
        )
    }
}

/// Every target of the issue.
pub fn all() -> Vec<Target> {
    use Component::*;
    let pair1 = alloc::pair(1);
    let bounce4k = swiotlb::bounce(4096, swiotlb::Dir::ToDevice);
    let iova = (Iova, pair1.as_str());
    let bounce = (Swiotlb, bounce4k.as_str());
    let chase = floor::CHASE;
    vec![
        Target::vs_floor(
            "iova-pair-vs-cas",
            "iova alloc+free pair, cached: ≤ 6× one uncontended CAS",
            iova,
            floor::CAS,
            6.0,
        ),
        Target::vs_peer(
            "iova-scaling",
            "iova alloc+free pair: 2 threads ≥ 1.8× one thread",
            iova,
            (OURS, 1),
            2,
            1.8,
        ),
        Target::vs_peer(
            "iova-vs-vm-allocator",
            "iova alloc+free pair: ≥ 10× the vm-allocator peer at 2 threads",
            iova,
            (alloc::VM_ALLOCATOR, 2),
            2,
            10.0,
        ),
        Target::ratio(
            "iova-fragmentation-p99",
            "iova fragmentation (300k live) p99 ≤ 20× the cached pair",
            Quantity::new(Iova, alloc::FRAGMENTATION, OURS, 1, Metric::P99),
            Quantity::cpu_ns(Iova, &pair1, OURS),
            true,
            20.0,
        ),
        Target::vs_floor(
            "pt-guarded-vs-chase",
            "translation under an already-held guard ≤ 2× the 4-level load chase (0 writers)",
            (Pgtable, pgtable::GUARDED_0),
            chase,
            2.0,
        ),
        Target::vs_floor(
            "pt-guarded-vs-chase-writer",
            "translation under an already-held guard ≤ 2× the 4-level load chase (1 writer)",
            (Pgtable, pgtable::GUARDED_1),
            chase,
            2.0,
        ),
        Target::vs_floor(
            "pt-call-vs-chase",
            "translation, single call including its pin ≤ 4× the load chase (0 writers)",
            (Pgtable, pgtable::TRANSLATE_0),
            chase,
            4.0,
        ),
        Target::vs_floor(
            "pt-call-vs-chase-writer",
            "translation, single call including its pin ≤ 4× the load chase (1 writer)",
            (Pgtable, pgtable::TRANSLATE_1),
            chase,
            4.0,
        ),
        Target::vs_peer(
            "pt-translate-vs-ch",
            "translation throughput with one writer ≥ 5× the RwLock<BTreeMap> peer (1 reader)",
            (Pgtable, pgtable::TRANSLATE_1),
            (pgtable::CH_STORE, 1),
            1,
            5.0,
        ),
        Target::vs_floor(
            "pt-map-vs-cas",
            "page-table 4 KiB map+unmap ≤ 30× one CAS",
            (Pgtable, pgtable::MAP_4K),
            floor::CAS,
            30.0,
        ),
        Target::vs_floor(
            "bounce-vs-memcpy",
            "bounce map+copy+unmap of 4 KiB to the device ≤ 1.5× a 4 KiB memcpy",
            bounce,
            &floor::memcpy(4096),
            1.5,
        ),
        Target::vs_peer(
            "bounce-vs-one-area",
            "bounce 4 KiB to device: ≥ 1.5× the one-area peer at 2 threads",
            bounce,
            (swiotlb::ONE_AREA, 2),
            2,
            1.5,
        ),
        Target::vs_peer(
            "bounce-scaling",
            "bounce 4 KiB to device: 2 threads ≥ 1.8× one thread",
            bounce,
            (OURS, 1),
            2,
            1.8,
        ),
        Target::ratio(
            "iommu-lazy-vs-strict",
            "lazy-mode 4 KiB map+unmap ≥ 3× strict, IOTLB sync at its modelled cost",
            Quantity::ops(Iommu, iommu::LAZY, OURS, 1),
            Quantity::ops(Iommu, iommu::STRICT, OURS, 1),
            false,
            3.0,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Latency, Measurement};
    use crate::suite::Role;

    fn result(
        component: Component,
        workload: &str,
        implementation: &str,
        runs: &[(usize, u64)],
    ) -> CaseResult {
        CaseResult {
            component,
            workload: workload.into(),
            implementation: implementation.into(),
            role: Role::Ours,
            floor: None,
            runs: runs
                .iter()
                .map(|&(t, ops)| Measurement::new(t, ops, 1.0, t as f64, Latency::default()))
                .collect(),
        }
    }

    #[test]
    fn ratios_verdicts_and_missing_inputs() {
        let pair = alloc::pair(1);
        let results = vec![
            result(Component::Floor, floor::CAS, FLOOR, &[(1, 400_000_000)]),
            result(
                Component::Iova,
                &pair,
                OURS,
                &[(1, 100_000_000), (2, 150_000_000)],
            ),
        ];
        let by_id = |id: &str| {
            all()
                .into_iter()
                .find(|t| t.id == id)
                .unwrap()
                .evaluate(&results, 2)
        };
        // 10 ns per pair over 2.5 ns per CAS = 4 ≤ 6.
        let t = by_id("iova-pair-vs-cas");
        assert!((t.ratio.unwrap() - 4.0).abs() < 1e-9);
        assert_eq!((t.met, t.shortfall()), (Some(true), Some(1.0)));
        // 1.5× scaling < 1.8: missed by 1.2×.
        let t = by_id("iova-scaling");
        assert_eq!(t.met, Some(false));
        assert!((t.shortfall().unwrap() - 1.2).abs() < 1e-9);
        // No vm-allocator run: not measured.
        let t = by_id("iova-vs-vm-allocator");
        assert_eq!((t.ratio, t.met), (None, None));
    }

    #[test]
    fn target_ids_are_unique() {
        let mut ids: Vec<_> = all().iter().map(|t| t.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all().len());
    }
}
