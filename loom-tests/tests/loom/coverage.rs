//! Every mutation point of the workspace has a must-fail twin, or a documented reason why C11
//! cannot observe it. The production RCU's own points (`dma_sync::points::epoch`) are checked
//! by `tests/production_rcu.rs` instead, whose binary builds that backend.

use std::collections::BTreeMap;

#[test]
fn every_point_is_killed_or_documented() {
    let mut kills: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for k in loom_tests::kills() {
        kills.entry(k.point.name()).or_default().push(k.test);
    }
    let points = loom_tests::all_points();
    let mut missing = Vec::new();
    let (mut killed, mut documented) = (0, 0);
    for p in &points {
        match (kills.contains_key(p.name()), p.unobservable_reason()) {
            (true, _) => killed += 1,
            (false, Some(_)) => documented += 1,
            (false, None) => missing.push(p.name()),
        }
    }
    for name in kills.keys() {
        assert!(
            points.iter().any(|p| p.name() == *name),
            "a must-fail twin names {name}, which is not in any crate's points::ALL"
        );
    }
    eprintln!(
        "mutation coverage: {} points, {killed} killed, {documented} documented as unobservable",
        points.len()
    );
    assert!(
        missing.is_empty(),
        "mutation points without a must-fail twin: {missing:?}"
    );
}
