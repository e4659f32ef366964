//! The mutation-point tables in each crate's `points` module docs are written by hand next to
//! the points they describe; this test keeps them from drifting from the registry. Every
//! table row must name a point of that crate with its kind, every point must have a row,
//! every twin the table names must be a must-fail twin weakening that row's point, and every
//! model it names a function of the loom suite.
//!
//! Runs in ordinary builds: it reads the sources, so it needs no loom build.
#![cfg(not(loom))]

use dma_sync::mutation::Point;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loom-tests sits in the workspace")
        .to_path_buf()
}

/// The rows of the first markdown table in a file's `//!` docs whose header starts with
/// `Point`: the header's cells, then each row's cells.
fn point_table(source: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let cells = |line: &str| -> Vec<String> {
        let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split(" | ").map(|c| c.trim().to_string()).collect()
    };
    let lines: Vec<&str> = source
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(str::trim)
        .collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("| Point |"))
        .expect("a `| Point | Kind | ...` table in the module docs");
    let rows = lines[header + 2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .map(|l| cells(l))
        .collect();
    (cells(lines[header]), rows)
}

/// The `snake_case` names in backticks in a cell.
fn names(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2).filter(|n| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

/// The loom suite's sources: its models, must-pass tests and twins.
fn loom_sources() -> Vec<String> {
    let dir = workspace().join("loom-tests/tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("loom"))
        .expect("the loom suite")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.push(dir.join("production_rcu.rs"));
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("a loom source file"))
        .collect()
}

/// Every `fn name` of the loom suite, with the constant a twin declaration names after it
/// (`fn twin: points::FLAG_SET, ...` in `must_fail_test!` and its wrappers).
fn loom_functions() -> BTreeMap<String, Option<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut fns = BTreeMap::new();
    for text in loom_sources() {
        for rest in text.split("fn ").skip(1) {
            let name = ident(rest);
            let weakened = rest[name.len()..].strip_prefix(": ").map(|path| {
                let path = ident_path(path);
                path.rsplit("::").next().unwrap_or_default().to_string()
            });
            fns.insert(name, weakened);
        }
    }
    fns
}

/// The leading `a::b::C` path of `s`.
fn ident_path(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Point constants to their names, from every crate's `points.rs` (`CONST: Kind = "name";`).
fn point_constants() -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for krate in [
        "dma-sync",
        "swiotlb-core",
        "iova-cache",
        "io-pgtable",
        "dma-iommu",
        "dma-vmm",
    ] {
        let path = workspace().join(krate).join("src/points.rs");
        let text = std::fs::read_to_string(path).expect("a points module");
        for line in text.lines().map(str::trim) {
            let Some((constant, rest)) = line.split_once(": ") else {
                continue;
            };
            if let Some((_, name)) = rest.split_once(" = \"") {
                let name = name.split('"').next().unwrap_or_default();
                map.insert(constant.to_string(), name.to_string());
            }
        }
    }
    map
}

fn check(krate: &str, points: &[&Point]) {
    let path = workspace().join(krate).join("src/points.rs");
    let source = std::fs::read_to_string(&path).expect("the crate's points module");
    let (header, rows) = point_table(&source);
    let listed: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r[0].trim_matches('`').to_string(), r[1].clone()))
        .collect();
    let declared: BTreeSet<(String, String)> = points
        .iter()
        .map(|p| (p.name().to_string(), format!("{:?}", p.kind())))
        .collect();
    assert_eq!(
        listed,
        declared,
        "{}: the table's (point, kind) rows differ from the crate's points::ALL",
        path.display()
    );
    let (fns, constants) = (loom_functions(), point_constants());
    for (i, title) in header.iter().enumerate() {
        if !(title.starts_with("Twin") || title.starts_with("Model")) {
            continue;
        }
        for row in &rows {
            let point = row[0].trim_matches('`');
            for name in names(&row[i]) {
                let Some(weakened) = fns.get(name) else {
                    panic!(
                        "{}: `{name}` (column {title}, point {point}) is no function of the loom suite",
                        path.display()
                    );
                };
                // A twin must weaken the point of its row; a model names no point.
                let weakened = weakened.as_ref().and_then(|c| constants.get(c));
                assert!(
                    weakened.map_or(true, |w| w == point),
                    "{}: `{name}` (point {point}) weakens {weakened:?}",
                    path.display()
                );
                assert!(
                    !title.starts_with("Twin") || weakened.is_some(),
                    "{}: `{name}` (column {title}, point {point}) is not a must-fail twin",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn every_points_table_matches_the_registry() {
    let crates: [(&str, &[&Point]); 5] = [
        ("swiotlb-core", swiotlb_core::points::ALL),
        ("iova-cache", iova_cache::points::ALL),
        ("io-pgtable", io_pgtable::points::ALL),
        ("dma-iommu", dma_iommu::points::ALL),
        ("dma-vmm", dma_vmm::points::ALL),
    ];
    for (krate, points) in crates {
        check(krate, points);
    }
}
