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
    assert_eq!(info["window"]["center"].as_f64(), r["window"][0].as_f64());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(info.get("patient").is_none());
    assert!(!text.contains("CompressedSamples"), "patient name leaked: {text}");
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
    // Window 40/400 maps HU <= -160 to black and > 239 to white: both must occur in a CT slice.
    assert!(img.pixels().any(|p| p.0[0] == 0) && img.pixels().any(|p| p.0[0] == 255));
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
