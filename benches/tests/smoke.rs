//! The CI smoke run: `dmabench --smoke` runs every case for a few milliseconds and writes its
//! JSON and plots; this checks that it still does, and that what it wrote is complete. (Not
//! under `--cfg loom`: the measured crates then run on loom's primitives, which only work inside
//! a model.)
#![cfg(not(loom))]

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmabench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
#[cfg_attr(miri, ignore)]
fn smoke_run_writes_complete_json_and_plots() {
    let out = out_dir("smoke");
    let status = Command::new(env!("CARGO_BIN_EXE_dmabench"))
        .args(["--smoke", "--quiet", "--out"])
        .arg(&out)
        .status()
        .expect("dmabench starts");
    assert!(status.success(), "dmabench --smoke failed: {status}");

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dmabench.json")).unwrap()).unwrap();
    assert_eq!(json["options"]["smoke"], Value::Bool(true));
    let results = json["results"].as_array().unwrap();
    let omitted = json["omitted"].as_array().unwrap();
    // Every component has cases, unless the whole component was left out (and says why).
    for c in ["floor", "iova", "pgtable", "swiotlb", "iommu"] {
        let ran = results.iter().any(|r| r["component"] == c);
        let left_out = omitted
            .iter()
            .any(|o| o["component"] == c && !o["reason"].as_str().unwrap().is_empty());
        assert!(
            ran || left_out,
            "component {c} neither ran nor was reported as left out"
        );
    }
    // Every case ran at every thread count (the scale sweeps at one thread) and did work, and
    // every run has one repetition per repetition of the suite.
    for r in results {
        let runs = r["runs"].as_array().unwrap();
        let threads: Vec<u64> = runs
            .iter()
            .map(|m| m["threads"].as_u64().unwrap())
            .collect();
        let workload = r["workload"].as_str().unwrap();
        let sweep = [" live", " mappings", " pages", " slots used"]
            .iter()
            .any(|s| workload.ends_with(s));
        let expected: &[u64] = if sweep {
            &[1]
        } else if workload.starts_with("fragmented") {
            &[1, 2]
        } else {
            &[1, 2, 4, 8]
        };
        assert_eq!(threads, expected, "{workload}");
        let reps = r["repetitions"].as_array().unwrap();
        assert_eq!(reps.len(), runs.len());
        assert!(reps.iter().all(|v| v.as_array().unwrap().len() == 1));
        for m in runs {
            assert!(
                m["ops"].as_u64().unwrap() > 0,
                "no op completed: {} {}",
                r["workload"],
                r["implementation"]
            );
        }
    }
    // Every target is reported; one whose inputs were measured has a ratio and a verdict.
    let targets = json["targets"].as_array().unwrap();
    assert_eq!(targets.len(), dma_bench::targets::all().len());
    for t in targets {
        if !t["numerator_value"].is_null() && !t["denominator_value"].is_null() {
            assert!(t["ratio"]["median"].as_f64().unwrap() > 0.0);
            assert!(t["met"].is_boolean());
            // Its runs were made next to each other, once per repetition.
            let spans = t["pair_spans_s"].as_array().unwrap();
            assert_eq!(spans.len(), 1, "{}", t["id"]);
            assert!(spans[0].as_f64().unwrap() > 0.0, "{}", t["id"]);
        } else {
            assert!(t["met"].is_null());
        }
    }
    let md = std::fs::read_to_string(out.join("targets.md")).unwrap();
    assert_eq!(md.lines().count(), 2 + targets.len());
    // One chart per question: the targets, ours against the peers of each workload that has
    // peers (throughput and latency), and each scale sweep; every file a complete SVG.
    let svgs: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".svg"))
        .collect();
    for svg in &svgs {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("</svg>"), "{svg}");
    }
    let expected = [
        "targets.svg",
        "iova-cache-alloc-free-1-granule-throughput.svg",
        "iova-cache-alloc-free-1-granule-latency.svg",
        "io-pgtable-translate-independent-1-writer-throughput.svg",
        "swiotlb-core-bounce-4-kib-to-device-throughput.svg",
        "sweep-iova-cache.svg",
        "sweep-io-pgtable.svg",
        "sweep-swiotlb-core.svg",
    ];
    for e in expected {
        assert!(svgs.iter().any(|s| s == e), "{e} missing from {svgs:?}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
#[cfg_attr(miri, ignore)]
fn options_select_components_and_threads() {
    let out = out_dir("select");
    let status = Command::new(env!("CARGO_BIN_EXE_dmabench"))
        .args([
            "--smoke",
            "--quiet",
            "--no-plots",
            "--components",
            "floor",
            "--threads",
            "2,1",
            "--repetitions",
            "2",
            "--check",
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("dmabench starts");
    // No target compares floors only: none is measured, so --check passes.
    assert!(status.success());
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dmabench.json")).unwrap()).unwrap();
    let results = json["results"].as_array().unwrap();
    assert!(!results.is_empty());
    assert!(results
        .iter()
        .all(|r| r["component"] == "floor" && r["runs"].as_array().unwrap().len() <= 2));
    assert!(results
        .iter()
        .all(|r| r["repetitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.as_array().unwrap().len() == 2)));
    assert!(!out.join("floor-throughput.svg").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
#[cfg_attr(miri, ignore)]
fn bad_options_are_refused_without_panicking() {
    let out = Command::new(env!("CARGO_BIN_EXE_dmabench"))
        .args(["--components", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value"));
}
