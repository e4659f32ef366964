//! Reading the workspace's sources and markdown: what every check of the docs needs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub type Names = BTreeSet<String>;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the soak crate sits in the workspace")
        .to_path_buf()
}

/// The text of a workspace file.
pub fn read(relative: &str) -> String {
    let path = workspace().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names of the entries of a workspace directory.
pub fn entries(relative: &str) -> Names {
    let dir = workspace().join(relative);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .into_string()
                .unwrap()
        })
        .collect()
}

/// The `.rs` files below a workspace directory, as workspace paths.
pub fn rust_files(relative: &str) -> Vec<String> {
    let mut files = Vec::new();
    for name in entries(relative) {
        let path = format!("{relative}/{name}");
        if workspace().join(&path).is_dir() {
            files.extend(rust_files(&path));
        } else if name.ends_with(".rs") {
            files.push(path);
        }
    }
    files
}

/// The texts in backticks in `text`.
pub fn backticked(text: &str) -> Names {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Whether `name` is a `snake_case` identifier (a function or module name).
pub fn is_snake_case(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The identifiers of `source`'s code (comments left out).
pub fn identifiers(source: &str) -> Names {
    source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// A source file's module docs (its `//!` lines), as markdown.
pub fn module_docs(source: &str) -> String {
    source
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| format!("{}\n", l.trim()))
        .collect()
}

/// The text of the markdown section `heading` (a whole heading line) of `doc` up to the next
/// heading; `label` names the document in the panic.
pub fn section<'a>(doc: &'a str, label: &str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("{label} has no section {heading:?}"))
        + heading.len()
        + 2;
    let rest = &doc[start..];
    &rest[..rest.find("\n#").unwrap_or(rest.len())]
}

/// The body rows (header and separator left out) of the markdown tables in `text`, as cells.
pub fn table_rows(text: &str) -> Vec<Vec<String>> {
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    let separator = |row: &&str| row.starts_with("|---");
    rows.iter()
        .zip(rows.iter().skip(1).map(Some).chain([None]))
        .filter(|(row, next)| !separator(row) && !next.is_some_and(separator))
        .map(|(row, _)| {
            let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
            inner.split(" | ").map(|c| c.trim().to_string()).collect()
        })
        .collect()
}
