//! The fault sites: every site a crate declares in `src/faults.rs` is in DESIGN.md's "Fault
//! injection" list of that crate and every listed site is declared; every site is armed by its
//! crate's `tests/fault_injection.rs` and by a fuzz checker; and wherever the docs say which
//! sites a fuzz target, the soak or a domain arms (the "Fuzz targets" table, the "Fault
//! injection" bullets, the soak's fault bullet, dma-iommu's table of sites reached through a
//! domain), they name exactly the sites its code arms. Sites are told apart by constant, so
//! constants are unique across crates.

use crate::docs::{
    backticked, entries, identifiers, module_docs, read, section, table_rows, workspace, Names,
};
use crate::fuzz_targets::fuzz_targets;
use std::collections::BTreeMap;

/// A fault site as declared: `pub static CONSTANT: Site = Site::new("name");`.
#[derive(Debug)]
struct Site {
    krate: String,
    constant: String,
    name: String,
}

/// Every site of every workspace crate with a `src/faults.rs`.
fn declared_sites() -> Vec<Site> {
    let crates: Vec<String> = entries(".")
        .into_iter()
        .filter(|c| workspace().join(c).join("src/faults.rs").is_file())
        .collect();
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

#[test]
fn every_fault_site_is_listed_and_armed() {
    let sites = declared_sites();
    let design = read("DESIGN.md");
    let text = section(&design, "DESIGN.md", "### Fault injection");

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

    // A target's row of the "Fuzz targets" table and its "Fault injection" bullet each
    // name the sites its checker arms, all of them.
    let fuzz_table = table_rows(section(&design, "DESIGN.md", "### Fuzz targets"));
    let bullets = section(&design, "DESIGN.md", "### Fault injection");
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
    let soak = section(&design, "DESIGN.md", "### Soak");
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
    let docs = module_docs(&read("dma-iommu/src/faults.rs"));
    let reached: Names = table_rows(section(
        &docs,
        "dma-iommu/src/faults.rs",
        "# Sites reached through a domain",
    ))
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
