//! Model facts (issue 15): the shipped adapters carry their label (intended use, limitations,
//! research use only, test metrics with 95 % intervals that agree with the Python script's
//! independent computation from the training reports), older metadata still loads, and
//! `melo adapters` lists one line per adapter while `melo adapters TASK` prints the facts.

mod common;

use std::path::PathBuf;
use std::process::Command;

use melo::model::facts::test_intervals;
use melo::model::lora::{Adapter, AdapterMetadata};
use serde_json::Value;

const SHIPPED: [&str; 4] = ["blood_cell_type", "breast_malignancy", "pneumonia", "retina_dr_grade"];

fn adapters_dir() -> PathBuf {
    common::repo().join("adapters")
}

fn melo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_melo"));
    c.env("MELO_ADAPTERS", adapters_dir()).env("MELO_BACKBONE", common::repo().join("assets/backbone"));
    c
}

fn report(task: &str) -> Value {
    let path = adapters_dir().join(format!("{task}.report.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{} is missing: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn shipped_adapters_carry_facts_whose_intervals_match_an_independent_computation() {
    for task in SHIPPED {
        let adapter = Adapter::load(&adapters_dir().join(format!("{task}.safetensors"))).unwrap();
        let m = adapter.metadata();
        let facts = &m.facts;
        assert!(facts.research_use_only, "{task}");
        assert!(facts.intended_use.starts_with("Research"), "{task}: {}", facts.intended_use);
        assert!(facts.limitations.len() >= 3, "{task}: {:?}", facts.limitations);

        // The intervals were written by tools/train/model_facts.py (Python); here the Rust
        // implementation recomputes them from the report's confusion matrix and macro AUC.
        let r = report(task);
        let confusion: Vec<Vec<u64>> = r["test"]["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect())
            .collect();
        let expected = test_intervals(&m.labels, &confusion, r["test"]["macro_auc"].as_f64());
        assert_eq!(facts.test_intervals.len(), expected.len(), "{task}");
        for (got, want) in facts.test_intervals.iter().zip(&expected) {
            assert_eq!((&got.metric, got.n, &got.method), (&want.metric, want.n, &want.method), "{task}");
            for (a, b) in [(got.value, want.value), (got.low, want.low), (got.high, want.high)] {
                assert!((a - b).abs() < 1e-12, "{task} {}: {a} vs {b}", got.metric);
            }
        }
        // The accuracy is the report's, and its interval brackets it.
        let accuracy = &facts.test_intervals[0];
        assert_eq!(accuracy.metric, "accuracy");
        assert!((accuracy.value - r["test"]["accuracy"].as_f64().unwrap()).abs() < 1e-12, "{task}");
        assert!(accuracy.low < accuracy.value && accuracy.value < accuracy.high, "{task}");
        // Two classes: the AUC gets a Hanley-McNeil interval; more classes: none.
        let has_auc = facts.test_intervals.iter().any(|i| i.metric == "auc");
        assert_eq!(has_auc, m.labels.len() == 2, "{task}");
    }
}

#[test]
fn metadata_written_before_the_facts_loads_as_research_use_only_without_claims() {
    let adapter = Adapter::load(&adapters_dir().join("pneumonia.safetensors")).unwrap();
    let mut json = serde_json::to_value(adapter.metadata()).unwrap();
    json.as_object_mut().unwrap().remove("facts");
    let old: AdapterMetadata = serde_json::from_value(json).unwrap();
    assert!(old.facts.research_use_only);
    assert!(old.facts.intended_use.is_empty() && old.facts.limitations.is_empty());
    assert!(old.facts.test_intervals.is_empty());
    // Its recorded confusion matrix still gives the intervals the label shows.
    let computed = melo::model::facts::intervals_of(&old);
    let written = &adapter.metadata().facts.test_intervals;
    assert_eq!(computed.len(), written.len());
    for (c, w) in computed.iter().zip(written) {
        assert_eq!((&c.metric, c.n), (&w.metric, w.n));
        assert!((c.low - w.low).abs() < 1e-12 && (c.high - w.high).abs() < 1e-12, "{c:?} {w:?}");
    }
}

#[test]
fn adapters_lists_one_line_per_adapter() {
    let out = melo().arg("adapters").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // A header, then exactly one line per shipped adapter, each short and naming its figures.
    assert_eq!(lines.len(), 1 + SHIPPED.len(), "{stdout}");
    for task in SHIPPED {
        let line = lines.iter().find(|l| l.starts_with(task)).unwrap_or_else(|| panic!("no line for {task}: {stdout}"));
        let r = report(task);
        assert!(line.contains(&format!("ACC {:.3}", r["test"]["accuracy"].as_f64().unwrap())), "{line}");
        assert!(line.contains(&format!("AUC {:.3}", r["test"]["macro_auc"].as_f64().unwrap())), "{line}");
        // All four were re-fitted by `melo calibrate` (tools/ood/refit_shipped.sh).
        assert!(line.ends_with("calibrated") && !line.contains("uncalibrated"), "{line}");
        assert!(line.chars().count() < 120, "one short line: {line}");
        assert!(!line.contains("confusion"), "{line}");
    }
}

#[test]
fn adapters_task_prints_the_facts_label() {
    let out = melo().args(["adapters", "pneumonia"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for wanted in [
        "Model facts: pneumonia",
        "RESEARCH USE ONLY",
        "Intended use",
        "PneumoniaMNIST (MedMNIST v2) (CC BY 4.0)",
        "train: 4690 images (normal 1213, pneumonia 3477)",
        "Wilson score",
        "Hanley-McNeil",
        "calibrated: temperature",
        "fitted on validation",
        "Paediatric chest X-rays from one centre only",
    ] {
        assert!(text.contains(wanted), "missing {wanted:?} in:\n{text}");
    }
    // The accuracy line shows the report's accuracy and its Wilson interval, as computed here.
    let r = report("pneumonia");
    let confusion = [[166u64, 68], [7, 380]];
    assert_eq!(r["test"]["confusion"], serde_json::json!(confusion), "the report this test was written for");
    let (low, high) = melo::model::facts::wilson(546, 621, melo::model::facts::Z95).unwrap();
    assert!(text.contains(&format!("0.879 (95 % CI {low:.3}–{high:.3})")), "{text}");

    let out = melo().args(["adapters", "pneumonia", "--json"]).output().unwrap();
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["task"], "pneumonia");
    assert_eq!(json["facts"]["research_use_only"], true);
    assert_eq!(json["facts"]["test_intervals"][0]["metric"], "accuracy");

    // The optional TASK leaves the import subcommands (and the global folder option) alone.
    let out = melo()
        .args(["adapters", "--adapters"])
        .arg(adapters_dir())
        .args(["import-melo", "missing.pth"])
        .args(["--task", "t", "--alpha", "4"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.pth") && !stderr.contains("Usage"), "{stderr}");

    let out = melo().args(["adapters", "no_such_task"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no adapter 'no_such_task'") && stderr.contains("pneumonia"), "{stderr}");
}
