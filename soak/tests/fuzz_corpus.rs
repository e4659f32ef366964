//! The fuzz targets as stable tests: every committed seed input, then proptest-generated
//! byte strings, through the same checkers `cargo fuzz` runs (fuzz/fuzz_targets/*).
#![cfg(not(loom))]

use dma_soak::diff::{self, tolerating, Divergence, Known};
use proptest::prelude::*;
use std::path::PathBuf;

type Checker = fn(&[u8]) -> Result<(), Divergence>;

/// Fuzz target name (its corpus folder) and checker.
const TARGETS: &[(&str, Checker)] = &[
    ("io_pgtable", diff::pgtable::run),
    ("iova_cache", diff::iova::run),
    ("swiotlb_core", diff::swiotlb::run),
    ("dma_iommu", diff::iommu::run),
    ("race_pgtable", diff::race::pgtable),
    ("race_iova", diff::race::iova),
];

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect()
}

/// Library defects not fixed yet, each with an `#[ignore]`d strict test (none now).
const UNFIXED: &[Known] = &[];

#[test]
fn seed_corpus_passes() {
    for (target, check) in TARGETS {
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for (path, data) in seeds {
            if let Err(d) = tolerating(UNFIXED, || check(&data)) {
                panic!("{target} seed {}: {d}", path.display());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs_pass(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
        for (target, check) in TARGETS {
            if let Err(d) = tolerating(UNFIXED, || check(&data)) {
                prop_assert!(false, "{}: {}", target, d);
            }
        }
    }
}
