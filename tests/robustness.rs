//! No panic on any file, whole or truncated: every file of the fixtures and of the shared
//! corpus (`../shared/data`, required) is cut at several lengths and opened; each must decode or give an error.

mod common;

use std::path::{Path, PathBuf};

use melo::image::{load_dicom_bytes, LoadOptions};

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "dcm") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn open_truncations(files: &[PathBuf]) -> usize {
    let mut opened = 0;
    for path in files {
        let bytes = std::fs::read(path).unwrap();
        let n = bytes.len();
        // Error messages end up in logs and on screens others see: they must not carry the
        // patient's name or ID (checked for every file whose header names a patient).
        let identifiers: Vec<String> = melo::image::parse_header_bytes(&bytes)
            .map(|m| vec![m.patient_name.clone(), m.patient_id.clone()])
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| s.len() >= 4)
            .collect();
        let cuts = [0, 1, 131, 132, 200, n / 10, n / 3, n / 2, n * 9 / 10, n.saturating_sub(1), n];
        for &cut in &cuts {
            let slice = &bytes[..cut.min(n)];
            if std::env::var_os("MELO_TRACE").is_some() {
                eprintln!("{} @ {cut}", path.display());
            }
            let outcome =
                std::panic::catch_unwind(|| load_dicom_bytes(slice, &LoadOptions::default()).map(|i| i.values.len()));
            assert!(outcome.is_ok(), "{} cut at {cut} bytes panicked", path.display());
            if let Ok(Err(e)) = &outcome {
                let text = e.to_string();
                assert!(!text.trim().is_empty());
                for id in &identifiers {
                    assert!(
                        !text.contains(id.as_str()),
                        "{} cut at {cut}: error shows patient identifier: {text}",
                        path.display()
                    );
                }
            }
            opened += 1;
        }
    }
    opened
}

#[test]
fn truncated_fixtures_never_panic() {
    let files = files_under(&common::repo().join("tests/data/dicom"));
    assert!(files.len() >= 20);
    println!("{} truncations opened", open_truncations(&files));
}

#[test]
fn truncated_corpus_never_panics() {
    let data = common::require_shared_data("the truncated-corpus test");
    let files = files_under(&data.join("dicom"));
    assert!(files.len() >= 100, "{} .dcm files under {}: the corpus is incomplete", files.len(), data.display());
    println!("{} truncations of {} files opened", open_truncations(&files), files.len());
}

#[test]
fn lying_header_is_refused_before_allocating() {
    // MR_small with Rows/Columns rewritten to 65535 x 65535 and 10000 frames would ask for
    // 43 G samples; the limit refuses it with a clear error.
    let limits = melo::image::LoadLimits::default();
    let err = limits.check(65535, 65535, 10_000, 1).unwrap_err();
    assert!(matches!(&err, melo::Error::TooLarge(m) if m.contains("65535×65535×10000×1 samples (limit")), "{err}");
    let tight = LoadOptions { limits: melo::image::LoadLimits { max_samples: 1000, max_frames: 10 } };
    let bytes = std::fs::read(common::repo().join("tests/data/dicom/MR_small.dcm")).unwrap();
    let err = load_dicom_bytes(&bytes, &tight).unwrap_err();
    assert!(matches!(&err, melo::Error::TooLarge(m) if m.contains("samples (limit 1000")), "{err}");
}
