//! Diagnosis results as DICOM (issue 14, item 5): `melo predict --sr/--sc` on a real scan with
//! the shipped adapters, checked by independent readers — dicom3tools' `dciodvfy` (no errors),
//! DCMTK's `dsrdump` (the TID 1500 tree and the probabilities), pydicom (reads both back) —
//! and stored into a real Orthanc with `melo net store`. A missing tool fails the test and
//! names its package.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dicom_dictionary_std::tags;
use serde_json::Value;
use support::orthanc::Orthanc;
use support::{repo, require_program};

const SCAN: &str = "assets/samples/cr_chest/RG1_J2KR.dcm";

fn melo(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_melo")).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `melo predict SCAN --json` plus `extra`, with the shipped adapters; the JSON report.
fn predict(extra: &[&std::ffi::OsStr]) -> Value {
    let adapters = repo().join("adapters");
    let backbone = repo().join("assets/backbone");
    let scan = repo().join(SCAN);
    let mut args: Vec<&std::ffi::OsStr> = vec!["predict".as_ref(), scan.as_os_str(), "--json".as_ref()];
    args.extend_from_slice(extra);
    args.extend(["--adapters".as_ref(), adapters.as_os_str(), "--backbone".as_ref(), backbone.as_os_str()]);
    let out = melo(&args);
    assert!(out.status.success(), "melo predict failed: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// dciodvfy's findings: (errors, warnings). Its exit status is not a verdict (it is 0 with
/// errors), so the lines are read.
fn dciodvfy(file: &Path) -> (Vec<String>, Vec<String>) {
    let program = require_program("dciodvfy", "dicom3tools");
    let out = Command::new(program).arg(file).output().unwrap();
    let all = text(&out);
    let errors = all.lines().filter(|l| l.starts_with("Error")).map(String::from).collect();
    let warnings = all.lines().filter(|l| l.starts_with("Warning")).map(String::from).collect();
    (errors, warnings)
}

/// pydicom's view of `file`: the given attributes by keyword, as JSON (pydicom is the
/// project's reference decoder).
fn pydicom(file: &Path, script: &str) -> Value {
    let python = require_program("python3", "python3");
    let program = format!(
        "import json, sys\ntry:\n    import pydicom\nexcept ImportError:\n    sys.exit('pydicom is not installed: install the Debian package python3-pydicom')\n\
         ds = pydicom.dcmread(sys.argv[1])\nout = {{}}\n{script}\nprint(json.dumps(out))"
    );
    let out = Command::new(python).arg("-c").arg(program).arg(file).output().unwrap();
    assert!(out.status.success(), "pydicom could not read {}: {}", file.display(), text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn attr(file: &Path, tag: dicom_core::Tag) -> String {
    let obj = dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(file).unwrap();
    obj.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

fn outputs() -> (tempfile::TempDir, PathBuf, PathBuf, Value) {
    let dir = tempfile::tempdir().unwrap();
    let (sr, sc) = (dir.path().join("result_sr.dcm"), dir.path().join("result_sc.dcm"));
    let report = predict(&[
        "--task".as_ref(),
        "pneumonia".as_ref(),
        "--sr".as_ref(),
        sr.as_os_str(),
        "--sc".as_ref(),
        sc.as_os_str(),
    ]);
    (dir, sr, sc, report)
}

#[test]
fn sr_follows_tid_1500_and_passes_dciodvfy_dsrdump_and_pydicom() {
    let (_dir, sr, _sc, report) = outputs();
    let source = repo().join(SCAN);

    let (errors, warnings) = dciodvfy(&sr);
    eprintln!("dciodvfy warnings on the SR:\n{}", warnings.join("\n"));
    assert!(errors.is_empty(), "dciodvfy errors on the SR:\n{}", errors.join("\n"));

    let dsrdump = require_program("dsrdump", "dcmtk");
    let out = Command::new(dsrdump).args(["+Pc", "+Pt"]).arg(&sr).output().unwrap();
    let dump = text(&out);
    assert!(out.status.success(), "{dump}");
    for needle in [
        "Comprehensive SR Document",
        "<CONTAINER:(126000,DCM,\"Imaging Measurement Report\")=SEPARATE>  # TID 1500 (DCMR)",
        "<has obs context CODE:(121005,DCM,\"Observer Type\")=(121007,DCM,\"Device\")>",
        "<contains CONTAINER:(111028,DCM,\"Image Library\")=SEPARATE>",
        "<contains CONTAINER:(126010,DCM,\"Imaging Measurements\")=SEPARATE>",
        "<contains CONTAINER:(125007,DCM,\"Measurement Group\")=SEPARATE>",
        "<has concept mod TEXT:(111001,DCM,\"Algorithm Name\")=\"pneumonia\">",
        "(111003,DCM,\"Algorithm Version\")",
        "(111002,DCM,\"Algorithm Parameters\")=\"backbone sha256 ",
    ] {
        assert!(dump.contains(needle), "dsrdump lacks {needle:?}:\n{dump}");
    }
    // Every class probability, as the command printed it, is a NUM in percent.
    let prediction = &report["predictions"][0];
    for (label, p) in
        prediction["labels"].as_array().unwrap().iter().zip(prediction["probabilities"].as_array().unwrap())
    {
        let line = dump
            .lines()
            .find(|l| {
                l.contains("<contains NUM:")
                    && l.contains(&format!("\"Probability of {} (pneumonia)\"", label.as_str().unwrap()))
            })
            .unwrap_or_else(|| panic!("no NUM for {label}:\n{dump}"));
        let value: f64 = line.split("=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
        assert!((value - 100.0 * p.as_f64().unwrap()).abs() < 1e-3, "{line} vs {p}");
        assert!(line.ends_with("(%,UCUM,\"%\")>"), "{line}");
    }
    // dsrdump shortens long text values: the full backbone sha256 is looked for in the file.
    let bytes = std::fs::read(&sr).unwrap();
    let sha = report["backbone_sha256"].as_str().unwrap();
    assert!(bytes.windows(sha.len()).any(|w| w == sha.as_bytes()), "backbone sha256 {sha} in the SR");
    assert!(bytes.windows(17).any(|w| w == b"RESEARCH USE ONLY"), "research use only stated in the SR");

    let read = pydicom(
        &sr,
        "out['sop_class'] = ds.SOPClassUID\nout['sop'] = ds.SOPInstanceUID\nout['series'] = ds.SeriesInstanceUID\n\
         out['study'] = ds.StudyInstanceUID\nout['patient_id'] = ds.PatientID\nout['modality'] = ds.Modality\n\
         out['template'] = ds.ContentTemplateSequence[0].TemplateIdentifier\n\
         ev = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]\n\
         out['ref_series'] = ev.SeriesInstanceUID\nout['ref_sop'] = ev.ReferencedSOPSequence[0].ReferencedSOPInstanceUID\n\
         out['ref_class'] = ev.ReferencedSOPSequence[0].ReferencedSOPClassUID",
    );
    assert_eq!(read["sop_class"], "1.2.840.10008.5.1.4.1.1.88.33");
    assert_eq!(read["template"], "1500");
    assert_eq!(read["modality"], "SR");
    assert_eq!(read["study"], attr(&source, tags::STUDY_INSTANCE_UID), "filed in the source's study");
    assert_eq!(read["patient_id"], attr(&source, tags::PATIENT_ID), "patient module copied");
    assert_eq!(read["ref_sop"], attr(&source, tags::SOP_INSTANCE_UID));
    assert_eq!(read["ref_class"], attr(&source, tags::SOP_CLASS_UID));
    assert_eq!(read["ref_series"], attr(&source, tags::SERIES_INSTANCE_UID));
    for uid in [&read["sop"], &read["series"]] {
        let uid = uid.as_str().unwrap();
        assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
    }
    assert_ne!(read["series"], attr(&source, tags::SERIES_INSTANCE_UID), "a new series");
}

#[test]
fn all_tasks_give_one_measurement_group_each() {
    let dir = tempfile::tempdir().unwrap();
    let sr = dir.path().join("all.dcm");
    let report = predict(&["--all".as_ref(), "--sr".as_ref(), sr.as_os_str()]);
    let tasks = report["predictions"].as_array().unwrap().len();
    assert_eq!(tasks, 4, "the four shipped adapters");
    let out = Command::new(require_program("dsrdump", "dcmtk")).arg("+Pc").arg(&sr).output().unwrap();
    let dump = text(&out);
    assert_eq!(dump.matches("(125007,DCM,\"Measurement Group\")").count(), tasks, "{dump}");
    for p in report["predictions"].as_array().unwrap() {
        let task = p["task"].as_str().unwrap();
        assert!(dump.contains(&format!("(111001,DCM,\"Algorithm Name\")=\"{task}\"")), "{task}: {dump}");
    }
    let (errors, _) = dciodvfy(&sr);
    assert!(errors.is_empty(), "{errors:?}");

    // The window's SR reader (report::content) sees the tree DCMTK sees: the same items in
    // the same order, at the same depth, with the same relationships and value types.
    let doc = melo::report::content::read(&sr).unwrap();
    let dcmtk: Vec<(usize, String, String)> = dump
        .lines()
        .filter(|l| l.trim_start().starts_with('<'))
        .skip(1) // the root container, which the reader gives as the title
        .map(|l| {
            let depth = (l.len() - l.trim_start().len()) / 2 - 1;
            let head = l.trim_start().trim_start_matches('<').split(':').next().unwrap();
            let (relationship, value_type) = head.rsplit_once(' ').unwrap();
            (depth, relationship.to_uppercase(), value_type.to_string())
        })
        .collect();
    let ours: Vec<(usize, String, String)> =
        doc.lines.iter().map(|l| (l.depth, l.relationship.clone(), l.value_type.clone())).collect();
    assert_eq!(ours, dcmtk, "{dump}");
    assert_eq!(doc.title, "Imaging Measurement Report");
    // Every probability of every task, as the command printed it, in percent.
    let text = doc.text_lines(false).join("\n");
    for p in report["predictions"].as_array().unwrap() {
        let task = p["task"].as_str().unwrap();
        for (label, q) in p["labels"].as_array().unwrap().iter().zip(p["probabilities"].as_array().unwrap()) {
            let q = q.as_f64().unwrap() as f32;
            let line = format!("Probability of {} ({task}): {:.4} %", label.as_str().unwrap(), 100.0 * f64::from(q));
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }
    assert!(text.contains("Patient: CompressedSamples RG1"), "{text}");
    let hidden = doc.text_lines(true).join("\n");
    assert!(!hidden.contains("CompressedSamples") && !hidden.contains("9RG1"), "{hidden}");
    // An image is not an SR: refused with the reason.
    let err = melo::report::content::read(&repo().join(SCAN)).unwrap_err().to_string();
    assert!(err.contains("not a structured report"), "{err}");
}

#[test]
fn secondary_capture_is_derived_rgb_with_the_result_burned_in() {
    let (_dir, _sr, sc, _report) = outputs();
    let source = repo().join(SCAN);
    let (errors, warnings) = dciodvfy(&sc);
    eprintln!("dciodvfy warnings on the SC:\n{}", warnings.join("\n"));
    assert!(errors.is_empty(), "dciodvfy errors on the SC:\n{}", errors.join("\n"));

    let read = pydicom(
        &sc,
        "a = ds.pixel_array\nout['shape'] = list(a.shape)\nout['image_type'] = list(ds.ImageType)\n\
         out['burned'] = ds.BurnedInAnnotation\nout['comments'] = ds.ImageComments\nout['photometric'] = ds.PhotometricInterpretation\n\
         out['sop_class'] = ds.SOPClassUID\nout['study'] = ds.StudyInstanceUID\n\
         out['source'] = ds.SourceImageSequence[0].ReferencedSOPInstanceUID\n\
         out['band_white'] = int((a[ds.Rows - 40:, :, :] == 255).all(axis=2).sum())\n\
         out['image_rows'] = int(ds.Rows)",
    );
    assert_eq!(read["sop_class"], "1.2.840.10008.5.1.4.1.1.7");
    assert_eq!(read["image_type"], serde_json::json!(["DERIVED", "SECONDARY"]));
    assert_eq!(read["burned"], "YES");
    assert_eq!(read["photometric"], "RGB");
    let comments = read["comments"].as_str().unwrap();
    assert!(comments.contains("RESEARCH USE ONLY") && comments.contains("pneumonia:"), "{comments}");
    assert_eq!(read["study"], attr(&source, tags::STUDY_INSTANCE_UID));
    assert_eq!(read["source"], attr(&source, tags::SOP_INSTANCE_UID));
    let source_rows: usize = attr(&source, tags::ROWS).parse().unwrap();
    let shape = read["shape"].as_array().unwrap();
    assert!(shape[0].as_u64().unwrap() as usize > source_rows, "a text band below the image: {shape:?}");
    assert_eq!(shape[1].as_u64().unwrap(), attr(&source, tags::COLUMNS).parse::<u64>().unwrap());
    assert_eq!(shape[2], 3);
    assert!(read["band_white"].as_u64().unwrap() > 100, "burned text in the band: {read}");
}

#[test]
fn sr_and_sc_stored_into_orthanc_with_melo_net_store() {
    let (_dir, sr, sc, _report) = outputs();
    let orthanc = Orthanc::start(&[]);
    let out = melo(&["net".as_ref(), "store".as_ref(), orthanc.peer().as_ref(), sr.as_os_str(), sc.as_os_str()]);
    assert!(out.status.success(), "melo net store: {}\nOrthanc:\n{}", text(&out), orthanc.log_tail());
    for (file, modality) in [(&sr, "SR"), (&sc, "OT")] {
        let uid = attr(file, tags::SOP_INSTANCE_UID);
        let found = orthanc.find("Instance", serde_json::json!({ "SOPInstanceUID": uid }));
        assert_eq!(found.len(), 1, "{} in Orthanc: {found:?}", file.display());
        let id = found[0]["ID"].as_str().unwrap();
        let tags = orthanc.get_json(&format!("/instances/{id}/simplified-tags"));
        assert_eq!(tags["Modality"], modality);
        assert_eq!(tags["StudyInstanceUID"], attr(&repo().join(SCAN), tags::STUDY_INSTANCE_UID));
    }
}

#[test]
fn a_source_that_is_not_dicom_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let sr = dir.path().join("sr.dcm");
    let png = repo().join("tests/data/sd/captioned/square64.png");
    let out = melo(&[
        "predict".as_ref(),
        png.as_os_str(),
        "--task".as_ref(),
        "pneumonia".as_ref(),
        "--sr".as_ref(),
        sr.as_os_str(),
        "--adapters".as_ref(),
        repo().join("adapters").as_os_str(),
        "--backbone".as_ref(),
        repo().join("assets/backbone").as_os_str(),
    ]);
    assert!(!out.status.success());
    let message = text(&out);
    assert!(message.contains("cannot read the source DICOM instance"), "{message}");
    assert!(!sr.exists() && std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing written");

    // --sr and --sc naming one file: the second would replace the first.
    let both = dir.path().join("both.dcm");
    let out = melo(&[
        "predict".as_ref(),
        repo().join(SCAN).as_os_str(),
        "--sr".as_ref(),
        both.as_os_str(),
        "--sc".as_ref(),
        both.as_os_str(),
        "--task".as_ref(),
        "pneumonia".as_ref(),
    ]);
    assert!(!out.status.success() && text(&out).contains("given twice"), "{}", text(&out));
    assert!(!both.exists());

    // An output that would replace the scan itself is refused too.
    let scan = dir.path().join("scan.dcm");
    std::fs::copy(repo().join(SCAN), &scan).unwrap();
    let before = std::fs::read(&scan).unwrap();
    let out = melo(&[
        "predict".as_ref(),
        scan.as_os_str(),
        "--sc".as_ref(),
        scan.as_os_str(),
        "--task".as_ref(),
        "pneumonia".as_ref(),
    ]);
    assert!(!out.status.success() && text(&out).contains("would overwrite the input"), "{}", text(&out));
    assert_eq!(std::fs::read(&scan).unwrap(), before);
}
