//! Every source file and script README.md and DESIGN.md name exists: a backticked `*.rs`,
//! `*.litmus` or `*.toml` path must end some file path of the workspace (the docs name files
//! relative to the crate or module they discuss), and a backticked command starting with
//! `scripts/` must name a script.

use crate::docs::{backticked, entries, read, workspace, Names};

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

#[test]
fn every_file_the_docs_name_exists() {
    let mut files = Vec::new();
    all_files(".", &mut files);
    for doc in ["README.md", "DESIGN.md"] {
        let named: Names = backticked(&read(doc));
        for name in &named {
            // A file name with a stem, not an extension (`.litmus`) or a pattern.
            let source = [".rs", ".litmus", ".toml"]
                .iter()
                .any(|e| name.ends_with(e));
            if !source || name.starts_with('.') || name.contains(['<', '*', ' ']) {
                continue;
            }
            let tail = format!("/{name}");
            assert!(
                files.iter().any(|f| format!("/{f}").ends_with(&tail)),
                "{doc} names `{name}`, which no file of the workspace is"
            );
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
