//! The docs' lists of the workspace's parts: README's tour names every crate directory and the
//! stages of `scripts/test-all`; DESIGN.md names every loom model module of
//! `loom-tests/tests/loom/` in its loom-tests section and every bad-input table of
//! `soak/bad-input/`. Each list names nothing that does not exist.

use crate::docs::{backticked, entries, read, section, table_rows, workspace, Names};

#[test]
fn the_readme_tour_names_every_crate() {
    let readme = read("README.md");
    let toured: Names = table_rows(section(&readme, "README.md", "## A short tour"))
        .iter()
        .flat_map(|r| backticked(&r[0]))
        .collect();
    let crates: Names = entries(".")
        .into_iter()
        .filter(|d| workspace().join(d).join("Cargo.toml").is_file())
        .collect();
    assert_eq!(
        toured, crates,
        "README.md \"A short tour\": the rows differ from the directories with a Cargo.toml"
    );
}

#[test]
fn design_names_every_loom_model_module() {
    let design = read("DESIGN.md");
    let text = section(
        &design,
        "DESIGN.md",
        "## loom-tests: the litmus arguments and the dma-sync shim models",
    );
    let named: Names = backticked(text)
        .iter()
        .map(|n| {
            n.rsplit('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".rs")
                .to_string()
        })
        .filter(|n| n.ends_with("_models"))
        .collect();
    let modules: Names = entries("loom-tests/tests/loom")
        .iter()
        .filter_map(|f| f.strip_suffix(".rs"))
        .filter(|m| m.ends_with("_models"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        named, modules,
        "DESIGN.md \"loom-tests\": the `*_models` modules named differ from loom-tests/tests/loom/"
    );
}

#[test]
fn design_names_every_bad_input_table() {
    let design = read("DESIGN.md");
    let named: Names = backticked(section(&design, "DESIGN.md", "### Bad input"))
        .into_iter()
        .filter(|n| n.ends_with(".md") && !n.contains('<'))
        .collect();
    assert_eq!(
        named,
        entries("soak/bad-input"),
        "DESIGN.md \"Bad input\": the tables named differ from the files of soak/bad-input/"
    );
}

#[test]
fn the_readme_names_every_stage_of_test_all() {
    let stages: Names = read("scripts/test-all")
        .lines()
        .find_map(|l| l.split_once("&& stages=(").map(|(_, rest)| rest))
        .and_then(|rest| rest.split_once(')'))
        .expect("scripts/test-all: the default `... && stages=(stage ...)`")
        .0
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let readme = read("README.md");
    let sentence = readme
        .split_once("runs selected stages (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .expect("README.md: \"`scripts/test-all ...` runs selected stages (`stage`, ...)\"")
        .0;
    assert_eq!(
        backticked(sentence),
        stages,
        "README.md names other stages than scripts/test-all runs"
    );
}
