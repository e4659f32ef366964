//! Every source file and script README.md and DESIGN.md name exists. A backticked `*.rs`,
//! `*.litmus` or `*.toml` path is a workspace path or ends the path of a file: of the crate
//! its heading names (`## swiotlb-core`, `### dma-iommu`), or of the workspace under other
//! headings. A backticked command starting with `scripts/` must name a script, and a cargo
//! command's `-p` a workspace package, its `--test` a test and its `--example` an example of
//! that package (lines of code blocks count as commands too).

use crate::docs::{backticked, entries, read, workspace};
use std::collections::BTreeMap;

/// Every file path of the workspace, build output and version control left out.
fn all_files(relative: &str, into: &mut Vec<String>) {
    for name in entries(relative) {
        let path = if relative == "." {
            name.clone()
        } else {
            format!("{relative}/{name}")
        };
        if workspace().join(&path).is_dir() {
            if name != "target" && !name.starts_with('.') {
                all_files(&path, into);
            }
        } else {
            into.push(path);
        }
    }
}

/// `doc` cut at its headings: each part with the crate its heading names, if any.
fn parts_by_crate(doc: &str) -> Vec<(Option<String>, &str)> {
    doc.split("\n#")
        .map(|part| {
            let heading = part.lines().next().unwrap_or_default();
            let first = heading.trim_start_matches('#').split_whitespace().next();
            let krate = first
                .map(|w| w.trim_end_matches(':').to_string())
                .filter(|w| workspace().join(w).join("Cargo.toml").is_file());
            (krate, part)
        })
        .collect()
}

/// Whether a backticked name is a source file path (not an extension such as `.litmus`, not a
/// pattern such as `tests/*.rs` or `<crate>.md`).
fn is_source_path(name: &str) -> bool {
    [".rs", ".litmus", ".toml"]
        .iter()
        .any(|e| name.ends_with(e))
        && !name.starts_with('.')
        && !name.contains(['<', '*', ' '])
}

#[test]
fn every_file_the_docs_name_exists() {
    let mut files = Vec::new();
    all_files(".", &mut files);
    for doc in ["README.md", "DESIGN.md"] {
        for (krate, part) in parts_by_crate(&read(doc)) {
            let named = backticked(part);
            for name in named.iter().filter(|n| is_source_path(n)) {
                let within = krate.as_ref().map_or(String::new(), |k| format!("{k}/"));
                let found = workspace().join(name).is_file()
                    || files
                        .iter()
                        .any(|f| f.starts_with(&within) && f.ends_with(&format!("/{name}")));
                let place = krate
                    .as_ref()
                    .map_or(String::new(), |k| format!(" (in {k})"));
                assert!(found, "{doc} names `{name}`, which is no file{place}");
            }
            for command in named.iter().flat_map(|n| n.lines()) {
                check_command(doc, command);
            }
        }
    }
}

/// Workspace packages by name, with their directories.
fn packages() -> BTreeMap<String, String> {
    entries(".")
        .into_iter()
        .filter(|d| workspace().join(d).join("Cargo.toml").is_file())
        .filter_map(|dir| {
            let manifest = read(&format!("{dir}/Cargo.toml"));
            let name = manifest
                .lines()
                .find_map(|l| l.strip_prefix("name = \""))?
                .trim_end_matches('"')
                .to_string();
            Some((name, dir))
        })
        .collect()
}

/// A command line of the docs (a trailing `# comment` left out): its script exists, or its
/// cargo package, test target and example do.
fn check_command(doc: &str, line: &str) {
    let words: Vec<&str> = line
        .split(" #")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if let Some(script) = words.first().filter(|w| w.starts_with("scripts/")) {
        assert!(
            workspace().join(script).is_file(),
            "{doc} names `{line}`, but there is no {script}"
        );
    }
    if !words.contains(&"cargo") {
        return;
    }
    let after = |flag: &str| {
        let at = words.iter().position(|w| *w == flag)?;
        words
            .get(at + 1)
            .filter(|w| !w.starts_with('-') && !w.contains('<'))
    };
    let Some(package) = after("-p") else {
        return;
    };
    let packages = packages();
    let dir = packages
        .get(*package)
        .unwrap_or_else(|| panic!("{doc} names `{line}`, but there is no package {package}"));
    for (flag, folder) in [("--test", "tests"), ("--example", "examples")] {
        if let Some(target) = after(flag) {
            let file = format!("{dir}/{folder}/{target}.rs");
            let main = format!("{dir}/{folder}/{target}/main.rs");
            assert!(
                workspace().join(&file).is_file() || workspace().join(&main).is_file(),
                "{doc} names `{line}`, but there is no {file} or {main}"
            );
        }
    }
}
