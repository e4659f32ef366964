//! Model tests across the dmaloom crates, and the harness that proves they can fail.
//!
//! Every ordering that matters in the library is a named [`dma_sync::mutation::Point`]. This
//! crate holds the loom models that run the real code on tiny geometries, the litmus tests of
//! the design discussion, and for every point a *must-fail twin*: the model run with that one
//! point weakened, passing only if loom reports a failure whose message names the expected
//! reason. [`all_points`] lists every point of the workspace but the production RCU's own
//! (`dma_sync::points::epoch`, checked by `tests/production_rcu.rs`); the `coverage` test fails
//! when a point has neither a must-fail twin nor a documented reason why C11 cannot observe it.
//!
//! The models live in `tests/loom/` (one test binary, gated on `cfg(loom)`), run by
//! `RUSTFLAGS="--cfg loom" cargo test --release`.
//!
//! ```
//! let points = loom_tests::all_points();
//! let mut names: Vec<_> = points.iter().map(|p| p.name()).collect();
//! names.sort();
//! names.dedup();
//! assert_eq!(names.len(), points.len(), "point names are unique");
//! ```

use dma_sync::mutation::Point;

#[cfg(loom)]
pub mod fixtures;
#[cfg(loom)]
pub mod harness;
#[cfg(loom)]
pub mod rcu_node;

#[doc(hidden)]
pub use inventory;

/// Every mutation point declared in the workspace, crate by crate, but the production RCU's
/// own (`dma_sync::points::epoch`: their twins run in `tests/production_rcu.rs`, which checks
/// them itself).
pub fn all_points() -> Vec<&'static Point> {
    [
        dma_sync::points::ALL,
        swiotlb_core::points::ALL,
        iova_cache::points::ALL,
        io_pgtable::points::ALL,
        dma_iommu::points::ALL,
        dma_vmm::points::ALL,
    ]
    .concat()
}

/// A must-fail twin: the test named `test` weakens `point` and expects loom to fail.
///
/// Registered by `must_fail_test!`; the coverage test matches these against
/// [`all_points`].
#[derive(Debug)]
pub struct Kill {
    /// The weakened point.
    pub point: &'static Point,
    /// The test function that kills it.
    pub test: &'static str,
}

inventory::collect!(Kill);

/// Every registered must-fail twin in this binary.
pub fn kills() -> impl Iterator<Item = &'static Kill> {
    inventory::iter::<Kill>.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_are_unique_and_dotted() {
        let points = all_points();
        let mut names: Vec<_> = points.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate mutation point names");
        for p in points {
            assert!(p.name().contains('.'), "{} is not a dotted name", p.name());
            assert!(
                !p.doc().trim().is_empty(),
                "{} has no doc comment",
                p.name()
            );
        }
    }
}
