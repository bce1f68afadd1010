//! Decoded values against pydicom 3.0.2 (+ pylibjpeg), file by file.
//!
//! References come from `tools/pydicom_reference.py`: for each file either pydicom's error,
//! or the shape, a sha256 of the float32 values after the modality LUT / colour LUT, and 512
//! sampled values. Lossless transfer syntaxes must match bit for bit; lossy ones within a
//! codec tolerance (different IDCT / upsampling implementations).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use melo::image::{load_image, LoadOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Transfer syntaxes whose decoders legitimately differ between implementations.
const LOSSY: &[&str] = &[
    "1.2.840.10008.1.2.4.50", // JPEG baseline
    "1.2.840.10008.1.2.4.51", // JPEG extended
    "1.2.840.10008.1.2.4.81", // JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000 (lossy allowed)
];

#[derive(Default, Debug)]
struct Tally {
    files: usize,
    decoded: usize,
    exact: usize,
    within_tolerance: usize,
    refused_as_pydicom: usize,
    failures: Vec<String>,
}

fn sha256_f32(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

fn sample_indices(n: usize) -> Vec<usize> {
    if n <= 512 {
        (0..n).collect()
    } else {
        (0..512).map(|i| i * n / 512).collect()
    }
}

fn check_corpus(root: &Path, references: &Path) -> Tally {
    let refs: Value = serde_json::from_str(&std::fs::read_to_string(references).unwrap()).unwrap();
    let files: BTreeMap<String, Value> = serde_json::from_value(refs["files"].clone()).unwrap();
    let mut t = Tally::default();
    for (rel, r) in &files {
        let path = root.join(rel);
        assert!(path.exists(), "reference lists {rel} but {} is missing", path.display());
        t.files += 1;
        let result = std::panic::catch_unwind(|| load_image(&path, &LoadOptions::default()));
        let Ok(result) = result else {
            t.failures.push(format!("{rel}: PANIC"));
            continue;
        };
        if r["status"] == "error" {
            match result {
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    t.refused_as_pydicom += 1;
                }
                Ok(_) => t.failures.push(format!("{rel}: pydicom refuses it ({}) but we decoded it", r["error"])),
            }
            continue;
        }
        let image = match result {
            Ok(i) => i,
            Err(e) => {
                t.failures.push(format!("{rel}: pydicom decodes it, we fail: {e}"));
                continue;
            }
        };
        t.decoded += 1;
        let mut shape = vec![image.frames, image.rows, image.cols];
        if image.channels == 3 {
            shape.push(3);
        }
        let want_shape: Vec<usize> = serde_json::from_value(r["shape"].clone()).unwrap();
        if shape != want_shape {
            t.failures.push(format!("{rel}: shape {shape:?}, pydicom {want_shape:?}"));
            continue;
        }
        if sha256_f32(&image.values) == r["values_sha256"].as_str().unwrap() {
            t.exact += 1;
            continue;
        }
        let ts = image.meta.transfer_syntax.as_str();
        let samples: Vec<f64> = serde_json::from_value(r["samples"].clone()).unwrap();
        let idx = sample_indices(image.values.len());
        let diffs: Vec<f64> = idx.iter().zip(&samples).map(|(&i, &s)| (f64::from(image.values[i]) - s).abs()).collect();
        let max_diff = diffs.iter().copied().fold(0.0, f64::max);
        let mean_diff = diffs.iter().sum::<f64>() / diffs.len().max(1) as f64;
        let mean = image.values.iter().map(|&v| f64::from(v)).sum::<f64>() / image.values.len() as f64;
        let range = (r["max"].as_f64().unwrap() - r["min"].as_f64().unwrap()).max(1.0);
        let lossy = LOSSY.contains(&ts);
        // Lossy: sampled values within 3 % of the range on average and 25 % at worst, same mean
        // within 1 % of the range (IDCT and chroma upsampling differ between libjpeg and Rust).
        let ok = lossy
            && mean_diff <= 0.03 * range
            && max_diff <= 0.25 * range
            && (mean - r["mean"].as_f64().unwrap()).abs() <= 0.01 * range;
        if ok {
            t.within_tolerance += 1;
        } else {
            t.failures.push(format!(
                "{rel} ({ts}{}): values differ from pydicom: mean |diff| {mean_diff:.3}, max {max_diff:.3}, mean {mean:.3} vs {}",
                if lossy { ", lossy" } else { ", lossless: must be exact" },
                r["mean"]
            ));
        }
    }
    t
}

fn report(name: &str, t: &Tally) {
    println!(
        "{name}: {} files; {} decoded ({} bit-exact, {} within lossy tolerance); {} refused as pydicom refuses them",
        t.files, t.decoded, t.exact, t.within_tolerance, t.refused_as_pydicom
    );
    for f in &t.failures {
        println!("  MISMATCH {f}");
    }
}

#[test]
fn committed_fixtures_match_pydicom() {
    let root = common::repo().join("tests/data/dicom");
    let t = check_corpus(&root, &common::repo().join("tests/data/pydicom_fixtures.json"));
    report("fixtures", &t);
    assert!(t.failures.is_empty(), "{} mismatches", t.failures.len());
    assert!(t.decoded >= 15);
}

/// Known gaps, each with its reason; everything else in the corpus must match.
const KNOWN_GAPS: &[(&str, &str)] = &[];

#[test]
fn shared_corpus_matches_pydicom() {
    let Some(data) = common::shared_data() else {
        println!("SKIPPED: ../shared/data is absent, the full DICOM corpus was not checked");
        return;
    };
    let t = check_corpus(&data.join("dicom"), &common::repo().join("tests/data/pydicom_corpus.json"));
    report("corpus", &t);
    let unexpected: Vec<&String> =
        t.failures.iter().filter(|f| !KNOWN_GAPS.iter().any(|(name, _)| f.starts_with(name))).collect();
    assert!(unexpected.is_empty(), "{} unexpected mismatches: {unexpected:#?}", unexpected.len());
}
