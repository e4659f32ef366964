//! Every source file and script README.md and DESIGN.md name exists. A backticked `*.rs`,
//! `*.litmus` or `*.toml` path is a workspace path or ends the path of a file: of the crate
//! its heading names (`## swiotlb-core`, `### dma-iommu`), or of the workspace under other
//! headings. A backticked command starting with `scripts/` must name a script.

use crate::docs::{backticked, entries, read, workspace};

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
            for command in named.iter().filter(|n| n.starts_with("scripts/")) {
                let script = command.split_whitespace().next().unwrap_or_default();
                assert!(
                    workspace().join(script).is_file(),
                    "{doc} names `{command}`, but there is no {script}"
                );
            }
        }
    }
}
