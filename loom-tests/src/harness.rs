//! Running models: bounds, must-pass and must-fail twins, litmus outcome sets.
//!
//! Models never rely on `LOOM_MAX_DURATION` or `LOOM_MAX_PERMUTATIONS`: loom checks them only
//! every 20,000 iterations and then stops *as a pass*. The harness refuses to run when they
//! are set. A model states its own [`Bound`]; `DMALOOM_PREEMPTIONS` may raise (never lower)
//! every bound for a longer run.

use dma_sync::mutation::{weakened, Point, Weakening};
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once};

/// How much of the schedule space a model explores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Every interleaving (up to loom's 7-store history).
    Exhaustive,
    /// At most this many preemptions per execution.
    Preemptions(usize),
}

/// A loom builder for `bound`, with time and permutation caps cleared.
pub fn builder(bound: Bound) -> loom::model::Builder {
    for var in ["LOOM_MAX_DURATION", "LOOM_MAX_PERMUTATIONS"] {
        assert!(
            std::env::var_os(var).is_none(),
            "{var} is set: loom would stop exploring and report a pass; unset it"
        );
    }
    let mut b = loom::model::Builder::new();
    b.max_duration = None;
    b.max_permutations = None;
    b.max_branches = b.max_branches.max(10_000);
    let raise = std::env::var("DMALOOM_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    b.preemption_bound = match bound {
        Bound::Exhaustive => None,
        Bound::Preemptions(n) => Some(raise.map_or(n, |r| r.max(n))),
    };
    b
}

/// Run `model` under `bound`; panics with loom's message if loom finds a failure.
pub fn check(bound: Bound, model: impl Fn() + Sync + Send + 'static) {
    builder(bound).check(model);
}

/// Run `model` and collect every value it returns across all explored executions.
///
/// Litmus tests compare this set with the expected one, as herd7 lists `States`.
pub fn outcomes<T>(bound: Bound, model: impl Fn() -> T + Sync + Send + 'static) -> BTreeSet<T>
where
    T: Ord + Send + 'static,
{
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let sink = seen.clone();
    builder(bound).check(move || {
        let o = model();
        sink.lock().unwrap_or_else(|e| e.into_inner()).insert(o);
    });
    let set = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    set
}

/// [`outcomes`] with `point` weakened as `how`. Panics if the point was never consulted.
pub fn outcomes_weakened<T>(
    point: &'static Point,
    how: Weakening,
    bound: Bound,
    model: impl Fn() -> T + Sync + Send + 'static,
) -> BTreeSet<T>
where
    T: Ord + Send + 'static,
{
    let (set, hits) = weakened(point, how, || outcomes(bound, model));
    assert!(
        hits > 0,
        "mutation point {} was never reached by the model",
        point.name()
    );
    set
}

/// Run `model` with `point` weakened; pass only if loom fails with a message containing
/// `expect` (or one of its alternatives, separated by `" | "`), and the weakened point was
/// actually reached.
///
/// `DMALOOM_SKIP_TWINS=1` skips every twin (they pass at once): `scripts/mutants` runs only
/// the must-pass models against a mutated source, where a twin's verdict means nothing.
pub fn must_fail(
    point: &'static Point,
    how: Weakening,
    expect: &str,
    bound: Bound,
    model: impl Fn() + Sync + Send + 'static,
) {
    if std::env::var_os("DMALOOM_SKIP_TWINS").is_some() {
        return;
    }
    let (result, hits) = weakened(point, how, || quietly(|| check(bound, model)));
    let msg = match result {
        Ok(()) => panic!(
            "weakening {} ({how:?}) was not caught by loom (point reached {hits} times)",
            point.name()
        ),
        Err(msg) => msg,
    };
    assert!(
        hits > 0,
        "{} was never reached, yet the model failed: {msg}",
        point.name()
    );
    assert!(
        expect.split(" | ").any(|e| msg.contains(e)),
        "weakening {} failed the model, but not for the expected reason {expect:?}: {msg}",
        point.name()
    );
    eprintln!(
        "killed {}: {}",
        point.name(),
        msg.lines().next().unwrap_or("")
    );
}

/// A negative control: `model` is a deliberately broken *user* of the library (no point
/// weakened); pass only if loom fails with a message containing `expect`. Skipped, as the
/// twins are, under `DMALOOM_SKIP_TWINS=1`.
pub fn must_be_caught(expect: &str, bound: Bound, model: impl Fn() + Sync + Send + 'static) {
    if std::env::var_os("DMALOOM_SKIP_TWINS").is_some() {
        return;
    }
    let msg = quietly(|| check(bound, model)).expect_err("loom must catch the broken model");
    assert!(
        msg.contains(expect),
        "caught, but not for the expected reason {expect:?}: {msg}"
    );
}

std::thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`, catching a panic and returning its message, without printing the expected panic.
pub fn quietly<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into())
    })
}

/// Declare a must-fail twin: a `#[test]` that weakens one point and expects loom to fail,
/// registered for the coverage test.
///
/// ```ignore
/// must_fail_test! {
///     /// Without the reader's pin the walker reads a poisoned table.
///     fn walker_unpinned: io_pgtable::points::WALK_PIN, Weakening::Relax,
///         "Causality violation", Bound::Preemptions(2), || unmap_vs_walk();
/// }
/// ```
#[macro_export]
macro_rules! must_fail_test {
    ($(#[$m:meta])* fn $name:ident : $point:path, $how:expr, $expect:expr, $bound:expr, $model:expr $(;)?) => {
        $(#[$m])*
        #[test]
        fn $name() {
            $crate::harness::must_fail(&$point, $how, $expect, $bound, $model);
        }
        $crate::inventory::submit! {
            $crate::Kill { point: &$point, test: stringify!($name) }
        }
    };
}
