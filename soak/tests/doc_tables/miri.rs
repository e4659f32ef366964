//! DESIGN.md "Miri coverage" names the crates `scripts/miri` runs (its `crates=(...)`) and,
//! in its table of what is excluded, every test those crates' `--lib` code keeps from Miri with
//! `#[cfg_attr(miri, ignore)]`.

use crate::docs::{backticked, is_snake_case, read, rust_files, section, table_rows, Names};

const IGNORED: &str = "#[cfg_attr(miri, ignore)]";

/// The crates of `crates=(a b c)` in scripts/miri.
fn miri_crates() -> Names {
    read("scripts/miri")
        .lines()
        .find_map(|l| l.strip_prefix("crates=("))
        .and_then(|l| l.strip_suffix(')'))
        .expect("scripts/miri: a line `crates=(crate ...)`")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The tests of `krate/src` marked [`IGNORED`]: the first `fn` after each mark.
fn ignored_tests(krate: &str) -> Names {
    rust_files(&format!("{krate}/src"))
        .iter()
        .flat_map(|file| {
            read(file)
                .split(IGNORED)
                .skip(1)
                .map(|after| {
                    let name = after.split("fn ").nth(1).unwrap_or_default();
                    name.split('(').next().unwrap_or_default().to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_miri_section_names_its_crates_and_the_tests_they_skip() {
    let crates = miri_crates();
    let design = read("DESIGN.md");
    let text = section(&design, "DESIGN.md", "### Miri coverage");

    // "... then for a, b and c runs the `--lib` unit tests ..."
    let named: Names = text
        .split_once("then for ")
        .and_then(|(_, rest)| rest.split_once(" runs the `--lib`"))
        .expect("DESIGN.md \"Miri coverage\": the sentence \"then for CRATE, ... and CRATE runs the `--lib` unit tests\"")
        .0
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" and ", ", ")
        .split(',')
        .map(|c| c.trim().to_string())
        .collect();
    assert_eq!(
        named, crates,
        "DESIGN.md \"Miri coverage\" names other crates than scripts/miri's `crates=(...)`"
    );

    let row = table_rows(text)
        .into_iter()
        .find(|r| r[0].starts_with(&format!("Tests marked `{IGNORED}`")))
        .unwrap_or_else(|| {
            panic!("DESIGN.md \"Miri coverage\": no row \"Tests marked `{IGNORED}` ...\"")
        });
    let listed: Names = backticked(&row[0])
        .into_iter()
        .filter(|n| is_snake_case(n))
        .collect();
    let ignored: Names = crates.iter().flat_map(|c| ignored_tests(c)).collect();
    assert_eq!(
        listed, ignored,
        "DESIGN.md \"Miri coverage\": the tests listed as kept from Miri differ from those \
         marked `{IGNORED}` in the src/ of scripts/miri's crates"
    );
}
