//! `melo predict` over several images (issue 15, item 5): folders and files through one
//! resident backbone, JSON lines or CSV, broken files as error lines, the same numbers as
//! one image at a time.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn predict(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_melo"))
        .arg("predict")
        .args(args)
        .arg("--adapters")
        .arg(common::repo().join("adapters"))
        .arg("--backbone")
        .arg(common::repo().join("assets/backbone"))
        .output()
        .unwrap()
}

/// scans/: two real DICOM scans in sub-folders, a broken DICOM and a text file.
fn scans(root: &Path) -> PathBuf {
    let scans = root.join("scans");
    for (folder, file) in [("cr_chest", "RG1_J2KR.dcm"), ("ultrasound", "US1_J2KR.dcm")] {
        std::fs::create_dir_all(scans.join(folder)).unwrap();
        std::fs::copy(common::repo().join("assets/samples").join(folder).join(file), scans.join(folder).join(file))
            .unwrap();
    }
    let mut broken = vec![0u8; 128];
    broken.extend_from_slice(b"DICM\x02\x00\x10\x00UI\xff\xff");
    std::fs::write(scans.join("broken.dcm"), broken).unwrap();
    std::fs::write(scans.join("notes.txt"), "not an image").unwrap();
    scans
}

#[test]
fn a_folder_gives_one_json_line_per_image_and_an_error_line_per_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let scans = scans(dir.path());
    let out = predict(&[scans.as_os_str(), "--all".as_ref(), "--json".as_ref()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken file makes the run fail after the others: {stderr}");
    assert!(stderr.contains("1 of 3 images could not be classified"), "{stderr}");
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 3, "two scans and the broken file; the text file is not an image");
    let image = |l: &Value| l["image"].as_str().unwrap().to_string();
    let broken: Vec<&Value> = lines.iter().filter(|l| image(l).ends_with("broken.dcm")).collect();
    assert_eq!(broken.len(), 1);
    assert!(broken[0]["error"].as_str().is_some_and(|e| !e.is_empty()) && broken[0].get("predictions").is_none());

    // Each scan: every shipped task, and exactly what `melo predict FILE --all --json` gives.
    for file in [scans.join("cr_chest/RG1_J2KR.dcm"), scans.join("ultrasound/US1_J2KR.dcm")] {
        let line = lines.iter().find(|l| image(l) == file.display().to_string()).expect("a line per scan");
        let batch = line["predictions"].as_array().unwrap();
        assert_eq!(batch.len(), 4, "the four shipped adapters");
        let single = predict(&[file.as_os_str(), "--all".as_ref(), "--json".as_ref()]);
        assert!(single.status.success(), "{}", String::from_utf8_lossy(&single.stderr));
        let single: Value = serde_json::from_slice(&single.stdout).unwrap();
        assert_eq!(batch, single["predictions"].as_array().unwrap(), "{}", file.display());
    }
}

#[test]
fn csv_has_a_row_per_image_and_task_and_is_never_written_into_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let scans = scans(dir.path());
    std::fs::remove_file(scans.join("broken.dcm")).unwrap();
    let csv = dir.path().join("predictions.csv");
    let out = predict(&[scans.as_os_str(), "--task".as_ref(), "pneumonia".as_ref(), "--csv".as_ref(), csv.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(
        rows[0],
        "image,frame,task,top_label,top_probability,probabilities,calibrated,in_distribution,ood_score,ood_threshold"
    );
    assert_eq!(rows.len(), 3, "{text}");
    for row in &rows[1..] {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells[2], "pneumonia", "{row}");
        let top: f64 = cells[4].parse().unwrap();
        // Two classes: the top probability is at least one half and names one of them.
        assert!((0.5..=1.0).contains(&top), "{row}");
        assert!(cells[5].split(';').any(|kv| kv.starts_with(&format!("{}=", cells[3]))), "{row}");
        // Issue 15: the shipped adapter is calibrated and checks every image.
        assert_eq!(cells[6], "true", "{row}");
        let (score, threshold): (f64, f64) = (cells[8].parse().unwrap(), cells[9].parse().unwrap());
        assert_eq!(cells[7], (score <= threshold).to_string(), "{row}");
    }
    assert!(out.stdout.is_empty(), "with --csv nothing is printed per image");

    let inside = scans.join("predictions.csv");
    let out = predict(&[scans.as_os_str(), "--all".as_ref(), "--csv".as_ref(), inside.as_os_str()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would overwrite"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!inside.exists(), "nothing written into the input folder");
}
