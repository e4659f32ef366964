//! Differential checkers: real structure versus reference model, one module per crate.
//!
//! Each module exposes `run(data: &[u8]) -> Result<(), Divergence>`: it decodes at most
//! [`MAX_OPS`] operations from `data`, applies each to the real structure and to the model, and
//! compares results and invariants after every step and at the end (after which everything
//! must be released again).

mod directives;
mod dma;
pub mod iommu;
pub mod iova;
pub mod pgtable;
pub mod race;
#[cfg(feature = "random-inputs")]
mod random_inputs;
pub mod swiotlb;

#[cfg(feature = "random-inputs")]
pub use random_inputs::check_random_inputs;

use std::cell::Cell;
use std::fmt;

/// The most operations one input decodes to: enough to fill tiny structures, short enough
/// that a fuzzer executes thousands of inputs per second.
pub const MAX_OPS: usize = 192;

/// Where the real structure and the reference model disagreed, or an invariant broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Index of the operation after which the difference was seen (`usize::MAX`: final check).
    pub step: usize,
    /// The operation, in `Debug` form.
    pub op: String,
    /// What differed.
    pub what: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step == usize::MAX {
            write!(f, "final check: {}", self.what)
        } else {
            write!(f, "step {} ({}): {}", self.step, self.op, self.what)
        }
    }
}

impl std::error::Error for Divergence {}

/// Decode up to [`MAX_OPS`] operations; undecodable trailing bytes end the list.
///
/// ```
/// let ops: Vec<u8> = dma_soak::diff::decode(&[1, 2, 3]);
/// assert_eq!(ops, vec![1, 2, 3]);
/// ```
pub fn decode<T: for<'a> arbitrary::Arbitrary<'a>>(data: &[u8]) -> Vec<T> {
    let mut u = arbitrary::Unstructured::new(data);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS && !u.is_empty() {
        match T::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

/// Records the current step so checks can report where they failed.
///
/// With `DMALOOM_DIFF_TRACE` set in the environment every step is printed to stderr (for
/// replaying a crashing fuzz input: `cargo +nightly fuzz run <target> <file>`).
#[derive(Debug)]
pub struct Tracker {
    step: usize,
    op: String,
    trace: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            step: 0,
            op: String::new(),
            trace: std::env::var_os("DMALOOM_DIFF_TRACE").is_some(),
        }
    }
}

impl Tracker {
    /// Enter step `step` running `op`.
    pub fn enter(&mut self, step: usize, op: &impl fmt::Debug) {
        self.step = step;
        self.op = format!("{op:?}");
        if self.trace {
            eprintln!("step {step}: {}", self.op);
        }
    }

    /// Print `what` when tracing.
    pub fn note(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("  {}", what());
        }
    }

    /// Enter the final (end-of-input) check.
    pub fn finish(&mut self) {
        self.step = usize::MAX;
        self.op.clear();
    }

    /// `Err` describing `what` at the current step unless `ok`.
    pub fn check(&self, ok: bool, what: impl FnOnce() -> String) -> Result<(), Divergence> {
        if ok {
            Ok(())
        } else {
            Err(self.fail(what()))
        }
    }

    /// `Err` unless `real == model`, naming both.
    pub fn same<T: PartialEq + fmt::Debug>(
        &self,
        what: &str,
        real: T,
        model: T,
    ) -> Result<(), Divergence> {
        self.check(real == model, || {
            format!("{what}: real {real:?}, model {model:?}")
        })
    }

    /// A divergence at the current step.
    pub fn fail(&self, what: String) -> Divergence {
        Divergence {
            step: self.step,
            op: self.op.clone(),
            what,
        }
    }
}

/// A defect of the library that a checker finds and that is not fixed yet. The checkers
/// always report it; a test that must stay green meanwhile runs them inside [`tolerating`],
/// and a twin test, `#[ignore]`d until the fix lands, runs them strictly. None is open now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {}

std::thread_local! {
    static TOLERATED: Cell<&'static [Known]> = const { Cell::new(&[]) };
}

/// Run `f` with the checkers tolerating the `known` defects on this thread.
pub fn tolerating<R>(known: &'static [Known], f: impl FnOnce() -> R) -> R {
    struct Restore(&'static [Known]);
    impl Drop for Restore {
        fn drop(&mut self) {
            TOLERATED.with(|t| t.set(self.0));
        }
    }
    let _restore = Restore(TOLERATED.with(|t| t.replace(known)));
    f()
}

/// Whether the current run tolerates `defect`.
#[allow(dead_code)] // a checker calls it while a `Known` defect is open
pub(crate) fn tolerated(defect: Known) -> bool {
    TOLERATED.with(|t| t.get().contains(&defect))
}
