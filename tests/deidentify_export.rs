//! `melo deidentify` (issue 14, item 6): every Table E.1-1 attribute present in the fixtures
//! is removed or replaced as the profile says, UIDs stay consistent across the 20-slice MR
//! series, the profile and its options are named in the output, the pixel data is byte for
//! byte the input's (read back by pydicom), dciodvfy finds no error the input did not have,
//! and the inputs are never modified.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use melo::image::deidentify::{basic_profile_action, element_action, Action};
use melo::image::{parse_header_bytes, TagEntry};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{repo, require_program};

fn melo_deidentify(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_melo")).arg("deidentify").args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// (input, output) pairs from the command's `IN -> OUT` lines.
fn pairs(out: &Output) -> Vec<(PathBuf, PathBuf)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(a, b)| (PathBuf::from(a), PathBuf::from(b)))
        .collect()
}

fn sha(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

fn header(path: &Path) -> Vec<TagEntry> {
    parse_header_bytes(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display())).tags
}

/// pydicom's reading of each file: UIDs, pixel data digest, de-identification attributes.
fn pydicom(files: &[&Path]) -> Vec<Value> {
    let python = require_program("python3", "python3");
    let script = r#"
import hashlib, json, sys
try:
    import pydicom
except ImportError:
    sys.exit('pydicom is not installed: install the Debian package python3-pydicom')
out = []
for f in sys.argv[1:]:
    ds = pydicom.dcmread(f, force=True)
    g = lambda k: str(ds.get(k, '') or '')
    out.append({
        'study': g('StudyInstanceUID'), 'series': g('SeriesInstanceUID'), 'sop': g('SOPInstanceUID'),
        'frame_of_reference': g('FrameOfReferenceUID'), 'media_sop': str(ds.file_meta.get('MediaStorageSOPInstanceUID', '')),
        'pixels': hashlib.sha256(ds.PixelData).hexdigest() if 'PixelData' in ds else None,
        'identity_removed': g('PatientIdentityRemoved'),
        'methods': [str(v) for v in (ds.get('DeidentificationMethod') or [])] if 'DeidentificationMethod' in ds else [],
        'codes': [c.CodeValue for c in ds.get('DeidentificationMethodCodeSequence', [])],
        'study_date': g('StudyDate'), 'birth_date': g('PatientBirthDate'), 'patient_name': g('PatientName'),
    })
print(json.dumps(out))
"#;
    let out = Command::new(python).arg("-c").arg(script).args(files).output().unwrap();
    assert!(out.status.success(), "pydicom: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// dciodvfy's error lines of `file` (its exit status is no verdict).
fn dciodvfy_errors(file: &Path) -> BTreeSet<String> {
    let out = Command::new(require_program("dciodvfy", "dicom3tools")).arg(file).output().unwrap();
    text(&out).lines().filter(|l| l.starts_with("Error")).map(String::from).collect()
}

fn fixtures() -> Vec<PathBuf> {
    let mut files = support::mr_series();
    for f in [
        "assets/samples/cr_chest/RG1_J2KR.dcm",
        "assets/samples/ct/693_J2KR.dcm",
        "assets/samples/ultrasound/US1_J2KR.dcm",
    ] {
        files.push(repo().join(f));
    }
    // pydicom's CT (private attributes, many identifying ones) and an RT structure set (UIDs
    // nested deep in kept sequences).
    for f in ["CT_small.dcm", "rtstruct.dcm", "SC_rgb_jpeg_gdcm.dcm"] {
        files.push(support::fixture(f));
    }
    files
}

/// Checks one output against its input by Table E.1-1; returns the table attributes seen.
fn check_profile(input: &Path, output: &Path) -> BTreeSet<(u16, u16)> {
    let before = header(input);
    let after = header(output);
    let top = |rows: &[TagEntry]| -> BTreeMap<(u16, u16), TagEntry> {
        rows.iter().filter(|r| r.depth == 0).map(|r| ((r.group, r.element), r.clone())).collect()
    };
    let (b, a) = (top(&before), top(&after));
    let mut seen = BTreeSet::new();
    for (&(g, e), row) in &b {
        let Some(action) = element_action(g, e, &row.vr) else {
            // Group lengths (gggg,0000) go: they would be stale after the changes.
            if g != 0x0002 && e != 0x0000 && row.vr != "SQ" {
                assert_eq!(
                    a.get(&(g, e)).map(|r| &r.value),
                    Some(&row.value),
                    "{}: ({g:04X},{e:04X}) kept",
                    input.display()
                );
            }
            continue;
        };
        if basic_profile_action(g, e).is_some() && g % 2 == 0 && g != 0x0002 {
            seen.insert((g, e));
        }
        let out = a.get(&(g, e));
        let name = format!("{}: ({g:04X},{e:04X}) {} [{}]", input.display(), row.name, action.code());
        match action {
            Action::Remove => assert!(out.is_none(), "{name} removed, found {out:?}"),
            _ if g == 0x0002 => {} // file meta: rebuilt from the data set
            Action::ReplaceUid => {
                let out = out.unwrap_or_else(|| panic!("{name} replaced, not removed"));
                if !row.value.is_empty() {
                    assert!(out.value.starts_with("2.25.") && out.value != row.value, "{name}: {}", out.value);
                }
            }
            Action::RemoveOrEmptyOrReplaceUids => {
                if row.vr != "SQ" {
                    assert!(out.is_none(), "{name}");
                }
            }
            _ if row.vr == "SQ" => {
                assert!(out.is_none_or(|o| o.value.starts_with("0 item")), "{name} emptied or removed: {out:?}")
            }
            Action::Empty | Action::EmptyOrDummy | Action::RemoveOrEmpty | Action::RemoveOrEmptyOrDummy => {
                let out = out.unwrap_or_else(|| panic!("{name} kept empty"));
                assert!(out.value.is_empty(), "{name} emptied: {:?}", out.value);
            }
            Action::Dummy | Action::RemoveOrDummy => {
                let out = out.unwrap_or_else(|| panic!("{name} given a dummy"));
                assert!(row.value.is_empty() || out.value != row.value, "{name}: {:?} kept", out.value);
            }
        }
    }
    // At every depth: nothing the profile removes, no person's name, every UID it replaces
    // in the 2.25 form.
    let original: HashSet<&str> = before.iter().filter(|r| r.vr == "UI").map(|r| r.value.as_str()).collect();
    for row in after.iter().filter(|r| r.group != 0x0002) {
        let action = element_action(row.group, row.element, &row.vr);
        let name = format!(
            "{}: ({:04X},{:04X}) {} at depth {}",
            output.display(),
            row.group,
            row.element,
            row.name,
            row.depth
        );
        assert_ne!(action, Some(Action::Remove), "{name} left in");
        if action == Some(Action::ReplaceUid) && !row.value.is_empty() {
            assert!(row.value.starts_with("2.25.") && !original.contains(row.value.as_str()), "{name}: {}", row.value);
        }
        if matches!(action, Some(Action::Empty | Action::RemoveOrEmpty)) && row.vr != "SQ" {
            assert!(row.value.is_empty(), "{name}: {:?}", row.value);
        }
    }
    seen
}

#[test]
fn profile_applied_uids_consistent_pixels_identical_and_inputs_untouched() {
    let inputs = fixtures();
    let before: Vec<String> = inputs.iter().map(|f| sha(f)).collect();
    let out_dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&std::ffi::OsStr> = inputs.iter().map(|p| p.as_os_str()).collect();
    args.extend(["--out".as_ref(), out_dir.path().as_os_str()]);
    let out = melo_deidentify(&args);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("Basic Application Confidentiality Profile (DCM 113100)")
            && said.contains("Pixel data untouched"),
        "{said}"
    );
    let pairs = pairs(&out);
    assert_eq!(pairs.len(), inputs.len(), "{said}");
    for (file, digest) in inputs.iter().zip(&before) {
        assert_eq!(&sha(file), digest, "{} modified", file.display());
    }
    for (_, output) in &pairs {
        assert!(!output.file_name().unwrap().to_string_lossy().contains("brain"), "output names carry no input name");
    }

    // Table E.1-1, attribute by attribute; the fixtures must exercise a good part of it.
    let mut seen = BTreeSet::new();
    for (input, output) in &pairs {
        seen.extend(check_profile(input, output));
    }
    assert!(seen.len() >= 25, "only {} table attributes in the fixtures: {seen:x?}", seen.len());

    // pydicom: pixel data byte-identical, identity removed, method named, UIDs consistent.
    let files: Vec<&Path> = pairs.iter().flat_map(|(i, o)| [i.as_path(), o.as_path()]).collect();
    let read = pydicom(&files);
    let (mut studies, mut series, mut frames, mut sops) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (k, (input, _)) in pairs.iter().enumerate() {
        let (old, new) = (&read[2 * k], &read[2 * k + 1]);
        assert_eq!(old["pixels"], new["pixels"], "{}: pixel data byte-identical", input.display());
        assert_eq!(new["identity_removed"], "YES");
        assert_eq!(new["codes"], serde_json::json!(["113100"]));
        assert!(new["methods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m.as_str().unwrap().contains("Pixel data untouched")));
        assert_eq!(new["sop"], new["media_sop"]);
        for key in ["study", "series", "sop", "frame_of_reference"] {
            if !old[key].as_str().unwrap().is_empty() {
                assert_ne!(old[key], new[key], "{key} replaced");
            }
        }
        if input.starts_with(repo().join("assets/samples/mr_brain_series")) {
            studies.insert((old["study"].to_string(), new["study"].to_string()));
            series.insert((old["series"].to_string(), new["series"].to_string()));
            frames.insert((old["frame_of_reference"].to_string(), new["frame_of_reference"].to_string()));
            sops.insert(new["sop"].to_string());
        }
    }
    assert_eq!(
        (studies.len(), series.len(), frames.len(), sops.len()),
        (1, 1, 1, 20),
        "one study, series, frame of reference; 20 instances"
    );

    // dciodvfy: no error the input did not have (one of each kind of input).
    for (input, output) in
        pairs.iter().filter(|(i, _)| !i.to_string_lossy().contains("brain_0") || i.ends_with("brain_001.dcm"))
    {
        let (old, new) = (dciodvfy_errors(input), dciodvfy_errors(output));
        let added: Vec<&String> = new.difference(&old).collect();
        assert!(added.is_empty(), "{}: dciodvfy errors the input did not have: {added:#?}", input.display());
    }
}

#[test]
fn retain_dates_option_is_applied_and_named() {
    let input = repo().join("assets/samples/cr_chest/RG1_J2KR.dcm");
    let out_dir = tempfile::tempdir().unwrap();
    let out =
        melo_deidentify(&[input.as_os_str(), "--retain-dates".as_ref(), "--out".as_ref(), out_dir.path().as_os_str()]);
    let said = text(&out);
    assert!(
        out.status.success()
            && said.contains("Retain Longitudinal Temporal Information Full Dates Option (DCM 113106)"),
        "{said}"
    );
    let (_, output) = pairs(&out).remove(0);
    let read = pydicom(&[&input, &output]);
    assert!(!read[0]["study_date"].as_str().unwrap().is_empty());
    assert_eq!(read[1]["study_date"], read[0]["study_date"], "dates kept");
    assert_eq!(read[1]["codes"], serde_json::json!(["113100", "113106"]));
    assert_eq!(read[1]["birth_date"], "", "the birth date goes all the same");
    assert_eq!(read[1]["patient_name"], "");
}

#[test]
fn bad_inputs_are_reported_and_nothing_lands_in_an_input_folder() {
    let dir = tempfile::tempdir().unwrap();
    let scans = dir.path().join("scans");
    std::fs::create_dir_all(&scans).unwrap();
    std::fs::copy(repo().join("assets/samples/ultrasound/US1_J2KR.dcm"), scans.join("us.dcm")).unwrap();
    std::fs::write(scans.join("notes.txt"), "Rossi^Maria, not DICOM").unwrap();

    // --out inside the input folder: refused before anything is written.
    let inside = scans.join("out");
    let out = melo_deidentify(&[scans.as_os_str(), "--out".as_ref(), inside.as_os_str()]);
    assert!(!out.status.success() && text(&out).contains("inside the input folder"), "{}", text(&out));
    assert!(!inside.exists());

    // A file that is not DICOM: named, the rest written, the run fails.
    let out_dir = dir.path().join("out");
    let out = melo_deidentify(&[scans.as_os_str(), "--out".as_ref(), out_dir.as_os_str()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("notes.txt") && said.contains("1 of 2 file(s) could not be de-identified"), "{said}");
    let written: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(written.len(), 1, "{written:?}");

    // The same instance twice: the second is refused, not written over the first.
    let out_dir = dir.path().join("twice");
    let us = scans.join("us.dcm");
    let out = melo_deidentify(&[us.as_os_str(), us.as_os_str(), "--out".as_ref(), out_dir.as_os_str()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("same SOP Instance UID"), "{}", text(&out));
}
