//! The fuzz targets: `fuzz/Cargo.toml`'s `[[bin]]`s, the files of `fuzz/fuzz_targets/`, the
//! rows of DESIGN.md "Fuzz targets" and the stable replay in `tests/fuzz_corpus.rs` are the same
//! set, each replayed through the checker it calls; `scripts/fuzz` runs them all; the section
//! names every `regression-*` seed, and every seed it names exists.

use crate::docs::{backticked, entries, read, section, table_rows, workspace, Names};
use std::collections::BTreeMap;

/// A fuzz target, the checker it calls (`module::function` under `dma_soak::diff`) and that
/// checker's file.
pub struct Target {
    pub name: String,
    pub checker: String,
    pub checker_file: String,
}

pub fn fuzz_targets() -> Vec<Target> {
    let manifest = read("fuzz/Cargo.toml");
    let bins: Vec<(String, String)> = manifest
        .split("[[bin]]")
        .skip(1)
        .map(|bin| {
            let field = |key: &str| {
                bin.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("fuzz/Cargo.toml: a [[bin]] without `{key}`"))
                    .to_string()
            };
            (field("name"), field("path"))
        })
        .collect();
    let files: Names = entries("fuzz/fuzz_targets")
        .into_iter()
        .map(|f| format!("fuzz_targets/{f}"))
        .collect();
    let paths: Names = bins.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(
        paths, files,
        "fuzz/Cargo.toml's [[bin]] paths differ from the files of fuzz/fuzz_targets/"
    );
    bins.into_iter()
        .map(|(name, path)| {
            let source = read(&format!("fuzz/{path}"));
            let call = source
                .split("dma_soak::diff::")
                .nth(1)
                .unwrap_or_else(|| panic!("fuzz/{path} calls no `dma_soak::diff` checker"));
            let checker: String = call
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let module = checker.split("::").next().unwrap_or_default();
            let checker_file = format!("soak/src/diff/{module}.rs");
            Target {
                name,
                checker,
                checker_file,
            }
        })
        .collect()
}

#[test]
fn every_fuzz_target_is_documented_replayed_and_run() {
    let targets = fuzz_targets();
    let names: Names = targets.iter().map(|t| t.name.clone()).collect();
    let design = read("DESIGN.md");
    let text = section(&design, "DESIGN.md", "### Fuzz targets");

    let rows: Names = table_rows(text)
        .iter()
        .map(|r| r[0].trim_matches('`').to_string())
        .collect();
    assert_eq!(
        rows, names,
        "DESIGN.md \"Fuzz targets\": the table's rows differ from fuzz/Cargo.toml's targets"
    );

    // tests/fuzz_corpus.rs: `("target", diff::module::function)`, the checker the target calls.
    let replayed: BTreeMap<String, String> = read("soak/tests/fuzz_corpus.rs")
        .split("(\"")
        .skip(1)
        .filter_map(|entry| {
            let (name, rest) = entry.split_once("\", diff::")?;
            let checker = rest.split(')').next()?;
            Some((name.to_string(), checker.to_string()))
        })
        .collect();
    let called: BTreeMap<String, String> = targets
        .iter()
        .map(|t| (t.name.clone(), t.checker.clone()))
        .collect();
    assert_eq!(
        replayed, called,
        "soak/tests/fuzz_corpus.rs TARGETS differ from the fuzz targets and the checkers they call"
    );

    // scripts/fuzz runs what `cargo fuzz list` lists (fuzz/Cargo.toml's targets) unless told
    // otherwise, or names every target.
    let script = read("scripts/fuzz");
    let unrun: Vec<&String> = names
        .iter()
        .filter(|n| !script.contains("cargo +nightly fuzz list") && !script.contains(n.as_str()))
        .collect();
    assert!(unrun.is_empty(), "scripts/fuzz does not run {unrun:?}");

    let seeds: Names = backticked(text)
        .into_iter()
        .filter(|n| n.split_once('/').is_some_and(|(t, _)| names.contains(t)))
        .collect();
    for named in &seeds {
        assert!(
            workspace().join("fuzz/corpus").join(named).is_file(),
            "DESIGN.md \"Fuzz targets\" names the seed `{named}`, which fuzz/corpus/ lacks"
        );
    }
    for target in &names {
        for file in entries(&format!("fuzz/corpus/{target}")) {
            let named = format!("{target}/{file}");
            assert!(
                !file.starts_with("regression-") || seeds.contains(&named),
                "DESIGN.md \"Fuzz targets\" does not name the seed `{named}`"
            );
        }
    }
}
