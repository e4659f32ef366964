//! The soak as a test: a few seconds by default, `DMALOOM_SOAK_SECS` for longer runs.
#![cfg(not(loom))]

use dma_soak::workload::{run, SoakConfig};

#[test]
fn mixed_workload_keeps_every_invariant() {
    let cfg = SoakConfig::from_env(3);
    let report = match run(&cfg) {
        Ok(r) => r,
        Err(broken) => panic!("soak invariants broke:\n{}", broken.join("\n")),
    };
    println!("soak {:?}: {report}", cfg.duration);
    assert!(report.checks >= 1, "no quiescent check ran");
    assert!(
        report.ops.iter().all(|&n| n > 0),
        "a crate saw no operation: {report}"
    );
    assert!(report.reads > 0, "the reader never ran");
    assert!(
        cfg.fault_one_in == 0 || report.faults > 0,
        "no injected allocation failure was met: {report}"
    );
}
