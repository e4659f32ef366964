//! The lists of fault sites and fuzz targets in the docs are written by hand; this test keeps
//! them from drifting from the code they describe. It reads the sources (no build of the fuzz
//! crate, no nightly) and checks:
//!
//! * every site a crate declares in `src/faults.rs` is in DESIGN.md's "Fault injection" list
//!   of that crate, and every listed site is declared;
//! * every site is armed by its crate's `tests/fault_injection.rs` and by a fuzz checker;
//! * wherever the docs say which sites a fuzz target, the soak or a domain arms (the "Fuzz
//!   targets" table, the "Fault injection" bullets, the soak's fault bullet, dma-iommu's table
//!   of sites reached through a domain), they name exactly the sites its code arms;
//! * the fuzz targets of `fuzz/Cargo.toml`, the files of `fuzz/fuzz_targets/`, the rows of the
//!   "Fuzz targets" table and the stable replay in `tests/fuzz_corpus.rs` are the same set,
//!   each target replayed through the checker it calls; `scripts/fuzz` runs them all; and
//!   every seed file the docs name exists.
#![cfg(not(loom))]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the soak crate sits in the workspace")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = workspace().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

type Names = BTreeSet<String>;

/// The names in backticks in `text`.
fn backticked(text: &str) -> Names {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The identifiers of `source`'s code (comments left out).
fn identifiers(source: &str) -> Names {
    source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The text of the markdown section `heading` (a whole heading line) up to the next heading.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("DESIGN.md has no section {heading:?}"))
        + heading.len()
        + 2;
    let rest = &doc[start..];
    &rest[..rest.find("\n#").unwrap_or(rest.len())]
}

/// The body rows of the markdown tables in `text`, as cells.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    rows.iter()
        .zip(rows.iter().skip(1).map(Some).chain([None]))
        .filter(|(row, next)| {
            !row.starts_with("|---") && !next.is_some_and(|n| n.starts_with("|---"))
        })
        .map(|(row, _)| {
            let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
            inner.split(" | ").map(|c| c.trim().to_string()).collect()
        })
        .collect()
}

/// A fault site as declared: `pub static CONSTANT: Site = Site::new("name");`.
#[derive(Debug)]
struct Site {
    krate: String,
    constant: String,
    name: String,
}

/// Every site of every workspace crate with a `src/faults.rs`.
fn declared_sites() -> Vec<Site> {
    let mut crates: Vec<String> = std::fs::read_dir(workspace())
        .expect("the workspace")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .into_string()
                .unwrap()
        })
        .filter(|c| workspace().join(c).join("src/faults.rs").is_file())
        .collect();
    crates.sort();
    let mut sites = Vec::new();
    for krate in crates {
        for line in read(&format!("{krate}/src/faults.rs")).lines() {
            let Some(rest) = line.strip_prefix("pub static ") else {
                continue;
            };
            let (constant, rest) = rest.split_once(": Site = Site::new(\"").unwrap_or_else(|| {
                panic!("{krate}/src/faults.rs: `{line}` is not `pub static X: Site = Site::new(\"name\");`")
            });
            let name = rest.split('"').next().unwrap_or_default();
            sites.push(Site {
                krate: krate.clone(),
                constant: constant.to_string(),
                name: name.to_string(),
            });
        }
    }
    assert!(!sites.is_empty(), "no fault sites found");
    let constants: Names = sites.iter().map(|s| s.constant.clone()).collect();
    assert_eq!(
        constants.len(),
        sites.len(),
        "two crates declare a site constant of the same name; this test (and a reader of the docs) tells sites apart by constant"
    );
    sites
}

/// The site constants among `names`.
fn sites_among(sites: &[Site], names: &Names) -> Names {
    sites
        .iter()
        .map(|s| &s.constant)
        .filter(|c| names.contains(*c))
        .cloned()
        .collect()
}

/// The site constants the code of `file` names (what it can arm).
fn armed_in(sites: &[Site], file: &str) -> Names {
    sites_among(sites, &identifiers(&read(file)))
}

#[track_caller]
fn assert_same(place: &str, listed: &Names, code: &Names, code_place: &str) {
    assert!(
        listed == code,
        "{place} lists the sites {listed:?} but {code_place} arms {code:?}"
    );
}

/// A fuzz target, the checker it calls (`module::function` under `dma_soak::diff`) and that
/// checker's file.
struct Target {
    name: String,
    checker: String,
    checker_file: String,
}

fn fuzz_targets() -> Vec<Target> {
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
    let files: Names = std::fs::read_dir(workspace().join("fuzz/fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|e| {
            format!(
                "fuzz_targets/{}",
                e.unwrap().file_name().into_string().unwrap()
            )
        })
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
fn every_fault_site_is_listed_and_armed() {
    let sites = declared_sites();
    let design = read("DESIGN.md");
    let text = section(&design, "### Fault injection");

    // "each crate declares its sites in `faults.rs` (crate: `A`, `B`; crate: `C`)".
    let list = text
        .split_once("declares its sites in `faults.rs` (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .expect("DESIGN.md \"Fault injection\": the list \"declares its sites in `faults.rs` (crate: `SITE`, ...; ...)\"")
        .0;
    let listed: BTreeMap<String, Names> = list
        .split("; ")
        .map(|entry| {
            let (krate, names) = entry.split_once(':').unwrap_or_else(|| {
                panic!("DESIGN.md \"Fault injection\": `{entry}` is not `crate: `SITE`, ...`")
            });
            (krate.trim().to_string(), backticked(names))
        })
        .collect();
    let mut declared: BTreeMap<String, Names> = BTreeMap::new();
    for s in &sites {
        declared
            .entry(s.krate.clone())
            .or_default()
            .insert(s.constant.clone());
    }
    assert_eq!(
        listed, declared,
        "DESIGN.md \"Fault injection\": the sites listed per crate differ from the crates' src/faults.rs"
    );

    for (krate, own) in &declared {
        let test = format!("{krate}/tests/fault_injection.rs");
        let armed = armed_in(&sites, &test);
        let missing: Names = own.difference(&armed).cloned().collect();
        assert!(missing.is_empty(), "{test} never arms {missing:?}");
    }

    let fuzzed: Names = fuzz_targets()
        .iter()
        .flat_map(|t| armed_in(&sites, &t.checker_file))
        .collect();
    let unfuzzed: Vec<&str> = sites
        .iter()
        .map(|s| s.constant.as_str())
        .filter(|c| !fuzzed.contains(*c))
        .collect();
    assert!(
        unfuzzed.is_empty(),
        "no fuzz checker (soak/src/diff/) arms {unfuzzed:?}"
    );
}

#[test]
fn the_docs_name_the_sites_each_harness_arms() {
    let sites = declared_sites();
    let design = read("DESIGN.md");

    // The "Fuzz targets" table (its "Operations" column) and the "Fault injection" bullet of
    // each target name the sites its checker arms, all of them.
    let fuzz_table = table_rows(section(&design, "### Fuzz targets"));
    let bullets = section(&design, "### Fault injection");
    for t in fuzz_targets() {
        let armed = armed_in(&sites, &t.checker_file);
        let row = fuzz_table
            .iter()
            .find(|r| r[0] == format!("`{}`", t.name))
            .unwrap_or_else(|| panic!("DESIGN.md \"Fuzz targets\" has no row `{}`", t.name));
        let place = format!("DESIGN.md \"Fuzz targets\", row `{}`", t.name);
        assert_same(
            &place,
            &sites_among(&sites, &backticked(&row.join(" | "))),
            &armed,
            &t.checker_file,
        );
        let bullet = bullets
            .split("\n* ")
            .find(|b| b.starts_with(&format!("`{}`:", t.name)));
        match bullet {
            Some(b) => {
                let place = format!("DESIGN.md \"Fault injection\", bullet `{}`", t.name);
                assert_same(&place, &sites_among(&sites, &backticked(b)), &armed, &t.checker_file);
            }
            None => assert!(
                armed.is_empty(),
                "DESIGN.md \"Fault injection\" has no bullet for `{}`, whose checker arms {armed:?}",
                t.name
            ),
        }
    }

    // The soak's fault bullet names the sites its workers arm.
    let soak = section(&design, "### Soak");
    let bullet = soak
        .split("\n* ")
        .find(|b| b.starts_with("Faults at a random rate"))
        .expect("DESIGN.md \"Soak\": the bullet \"Faults at a random rate ...\"");
    assert_same(
        "DESIGN.md \"Soak\", bullet \"Faults at a random rate\"",
        &sites_among(&sites, &backticked(bullet)),
        &armed_in(&sites, "soak/src/workload.rs"),
        "soak/src/workload.rs",
    );

    // dma-iommu's table of the sites reached through a domain (by site name) names the other
    // crates' sites its fuzz checker arms.
    let docs: String = read("dma-iommu/src/faults.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let reached: Names = table_rows(section(&docs, "# Sites reached through a domain"))
        .iter()
        .flat_map(|r| backticked(&r[0]))
        .map(|name| {
            let site = sites.iter().find(|s| s.name == name).unwrap_or_else(|| {
                panic!("dma-iommu/src/faults.rs: `{name}` is no declared fault site")
            });
            site.constant.clone()
        })
        .collect();
    let under_a_domain: Names = armed_in(&sites, "soak/src/diff/iommu.rs")
        .into_iter()
        .filter(|c| {
            sites
                .iter()
                .any(|s| &s.constant == c && s.krate != "dma-iommu")
        })
        .collect();
    assert_same(
        "dma-iommu/src/faults.rs \"Sites reached through a domain\"",
        &reached,
        &under_a_domain,
        "soak/src/diff/iommu.rs (other crates' sites)",
    );
}

#[test]
fn every_fuzz_target_is_documented_replayed_and_run() {
    let targets = fuzz_targets();
    let names: Names = targets.iter().map(|t| t.name.clone()).collect();
    let design = read("DESIGN.md");
    let text = section(&design, "### Fuzz targets");

    let rows: Names = table_rows(text)
        .iter()
        .map(|r| r[0].trim_matches('`').to_string())
        .collect();
    assert_eq!(
        rows, names,
        "DESIGN.md \"Fuzz targets\": the table's rows differ from fuzz/Cargo.toml's targets"
    );

    // tests/fuzz_corpus.rs: `("target", diff::module::function)`, the checker the target calls.
    let replay = read("soak/tests/fuzz_corpus.rs");
    let replayed: BTreeMap<String, String> = replay
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

    // The section names every `regression-*` seed (`target/file`), and every seed it names
    // is in the corpus.
    let seeds: Names = backticked(text)
        .into_iter()
        .filter(|n| n.split_once('/').is_some_and(|(t, _)| names.contains(t)))
        .collect();
    for named in &seeds {
        let path = workspace().join("fuzz/corpus").join(named);
        assert!(
            path.is_file(),
            "DESIGN.md \"Fuzz targets\" names the seed `{named}`, which fuzz/corpus/ lacks"
        );
    }
    for target in &names {
        let dir = workspace().join("fuzz/corpus").join(target);
        let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for file in files {
            let file = file.unwrap().file_name().into_string().unwrap();
            let named = format!("{target}/{file}");
            assert!(
                !file.starts_with("regression-") || seeds.contains(&named),
                "DESIGN.md \"Fuzz targets\" does not name the seed `{named}`"
            );
        }
    }
}
