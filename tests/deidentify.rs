//! Hiding patient details follows DICOM PS3.15 Annex E's basic confidentiality profile:
//! the list itself against the standard's table, and what is left to show of every corpus
//! file against what pydicom sees in it (tests/data/deid_reference.json, made by
//! tools/deid/basic_profile.py).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use melo::image::deidentify::{basic_profile_action, basic_profile_rows, element_action, Action};
use melo::image::{parse_header_bytes, ImageMeta, TagEntry};
use melo::series::Series;

const SALT: &[u8] = b"tests/deidentify.rs";

/// Attributes of PS3.15 Table E.1-1 with their Basic Profile codes, written from the standard
/// (not from the generated table), covering each kind of identifying attribute.
const FROM_THE_STANDARD: &[(u16, u16, &str, &str)] = &[
    (0x0010, 0x0010, "Z", "Patient's Name"),
    (0x0010, 0x0030, "Z", "Patient's Birth Date"),
    (0x0010, 0x0032, "X", "Patient's Birth Time"),
    (0x0010, 0x0040, "Z", "Patient's Sex"),
    (0x0010, 0x1010, "X", "Patient's Age"),
    (0x0010, 0x1020, "X", "Patient's Size"),
    (0x0010, 0x1030, "X", "Patient's Weight"),
    (0x0010, 0x1040, "X", "Patient's Address"),
    (0x0010, 0x2154, "X", "Patient's Telephone Numbers"),
    (0x0010, 0x1000, "X", "Other Patient IDs"),
    (0x0010, 0x1001, "X", "Other Patient Names"),
    (0x0010, 0x1002, "X", "Other Patient IDs Sequence"),
    (0x0010, 0x21B0, "X", "Additional Patient History"),
    (0x0010, 0x4000, "X", "Patient Comments"),
    (0x0008, 0x1120, "X", "Referenced Patient Sequence"),
    (0x0008, 0x0050, "Z", "Accession Number"),
    (0x0008, 0x0020, "Z", "Study Date"),
    (0x0008, 0x0030, "Z", "Study Time"),
    (0x0020, 0x0010, "Z", "Study ID"),
    (0x0008, 0x0080, "X/Z/D", "Institution Name"),
    (0x0008, 0x0081, "X", "Institution Address"),
    (0x0008, 0x1040, "X", "Institutional Department Name"),
    (0x0008, 0x1010, "X/Z/D", "Station Name"),
    (0x0018, 0x1000, "X/Z/D", "Device Serial Number"),
    (0x0008, 0x0090, "Z", "Referring Physician's Name"),
    (0x0008, 0x0092, "X", "Referring Physician's Address"),
    (0x0008, 0x0094, "X", "Referring Physician's Telephone Numbers"),
    (0x0008, 0x1048, "X", "Physician(s) of Record"),
    (0x0008, 0x1050, "X", "Performing Physician's Name"),
    (0x0008, 0x1060, "X", "Name of Physician(s) Reading Study"),
    (0x0008, 0x1070, "X/Z/D", "Operators' Name"),
    (0x0008, 0x1030, "X", "Study Description"),
    (0x0008, 0x103E, "X", "Series Description"),
    (0x0018, 0x1030, "X/D", "Protocol Name"),
    (0x0020, 0x4000, "X", "Image Comments"),
    (0x0032, 0x4000, "X", "Study Comments"),
    (0x0032, 0x1060, "X/Z", "Requested Procedure Description"),
    (0x0040, 0x0254, "X", "Performed Procedure Step Description"),
    (0x0008, 0x1080, "X", "Admitting Diagnoses Description"),
    (0x0008, 0x1084, "X", "Admitting Diagnoses Code Sequence"),
    (0x0002, 0x0003, "U", "Media Storage SOP Instance UID"),
    (0x0008, 0x0018, "U", "SOP Instance UID"),
    (0x0020, 0x000D, "U", "Study Instance UID"),
    (0x0020, 0x000E, "U", "Series Instance UID"),
    (0x0020, 0x0052, "U", "Frame of Reference UID"),
    (0x0008, 0x1155, "U", "Referenced SOP Instance UID"),
    (0x0008, 0x1140, "X/Z/U*", "Referenced Image Sequence"),
    (0x0008, 0x2112, "X/Z/U*", "Source Image Sequence"),
    // The profile's rules beyond the table's rows: private attributes, curves, overlay data.
    (0x0009, 0x0010, "X", "a private creator"),
    (0x0029, 0x1010, "X", "a private attribute"),
    (0x5000, 0x3000, "X", "Curve Data"),
    (0x5002, 0x0010, "X", "a curve attribute"),
    (0x6000, 0x3000, "X", "Overlay Data"),
    (0x6002, 0x4000, "X", "Overlay Comments"),
];

/// Attributes the basic profile keeps: what may still be shown with patient details hidden.
const KEPT_BY_THE_STANDARD: &[(u16, u16, &str)] = &[
    (0x0008, 0x0060, "Modality"),
    (0x0018, 0x0015, "Body Part Examined"),
    (0x0020, 0x0011, "Series Number"),
    (0x0020, 0x0013, "Instance Number"),
    (0x0008, 0x0016, "SOP Class UID"),
    (0x0028, 0x0010, "Rows"),
    (0x0028, 0x0030, "Pixel Spacing"),
    (0x0020, 0x0032, "Image Position (Patient)"),
    (0x0028, 0x1050, "Window Center"),
    (0x6000, 0x0010, "Overlay Rows"),
];

#[test]
fn profile_list_matches_the_standard() {
    for &(group, element, code, name) in FROM_THE_STANDARD {
        let action = basic_profile_action(group, element);
        assert_eq!(action.map(Action::code), Some(code), "({group:04X},{element:04X}) {name}");
    }
    for &(group, element, name) in KEPT_BY_THE_STANDARD {
        assert_eq!(basic_profile_action(group, element), None, "({group:04X},{element:04X}) {name} is kept");
    }
    // Person names the table does not list are hidden too (vendors' or newer attributes).
    assert_eq!(element_action(0x0008, 0x0070, "LO"), None, "Manufacturer is kept");
    assert_eq!(element_action(0x0040, 0x9999, "PN"), Some(Action::Remove));
    // The exported list is the whole table, not a viewer's subset.
    assert!(basic_profile_rows().count() > 600, "Table E.1-1 has over 600 rows");
}

#[test]
fn fields_follow_the_profile() {
    let meta = ImageMeta {
        modality: "CT".into(),
        body_part: "CHEST".into(),
        series_number: Some(4),
        series_uid: "1.2.3.4.5.6.7".into(),
        study_uid: "1.2.3.4.5.6".into(),
        series_description: "Rossi chest".into(),
        study_description: "Rossi thorax".into(),
        patient_name: "Rossi Maria".into(),
        patient_id: "PID-4711".into(),
        patient_birth_date: "19520314".into(),
        patient_sex: "F".into(),
        patient_age: "072Y".into(),
        institution: "St. Elsewhere".into(),
        study_date: "20240101".into(),
        accession_number: "ACC-1".into(),
        source: Some(PathBuf::from("/data/Rossi Maria/slice1.dcm")),
        ..ImageMeta::default()
    };
    let hidden = meta.without_phi_salted(SALT);
    for (field, value) in [
        ("series description", &hidden.series_description),
        ("study description", &hidden.study_description),
        ("name", &hidden.patient_name),
        ("ID", &hidden.patient_id),
        ("birth date", &hidden.patient_birth_date),
        ("sex", &hidden.patient_sex),
        ("age", &hidden.patient_age),
        ("institution", &hidden.institution),
        ("study date", &hidden.study_date),
        ("accession number", &hidden.accession_number),
    ] {
        assert!(value.is_empty(), "{field} hidden: {value:?}");
    }
    assert_eq!((hidden.modality.as_str(), hidden.body_part.as_str(), hidden.series_number), ("CT", "CHEST", Some(4)));
    for (raw, replaced) in [(&meta.series_uid, &hidden.series_uid), (&meta.study_uid, &hidden.study_uid)] {
        assert!(replaced.starts_with("2.25.") && !replaced.contains(raw.as_str()), "{raw} -> {replaced}");
    }
    assert_eq!(hidden.source, Some(PathBuf::from("slice1.dcm")));
}

fn row(group: u16, element: u16, vr: &str, value: &str, depth: usize) -> TagEntry {
    TagEntry { group, element, name: String::new(), vr: vr.into(), value: value.into(), depth, phi: false }
}

/// Rows nested under a hidden sequence go with it; a kept sequence keeps its rows, with UIDs
/// replaced; private and person-name rows go wherever they are.
#[test]
fn nested_rows_follow_their_sequence() {
    let meta = ImageMeta {
        tags: vec![
            row(0x0008, 0x1120, "SQ", "1 item(s)", 0), // Referenced Patient Sequence: X
            row(0x0008, 0x1150, "UI", "1.2.840.10008.3.1.2.3.1", 1),
            row(0x0008, 0x1155, "UI", "1.2.3.99", 1),
            row(0x0008, 0x1115, "SQ", "1 item(s)", 0), // Referenced Series Sequence: kept
            row(0x0020, 0x000E, "UI", "1.2.3.77", 1),
            row(0x0009, 0x1001, "LO", "Rossi private", 1),
            row(0x0040, 0x9999, "PN", "Weiss^Anna", 1),
            row(0x0028, 0x0010, "US", "512", 0),
        ],
        ..ImageMeta::default()
    };
    let hidden = meta.without_phi_salted(SALT);
    let tags: Vec<(u16, u16, usize)> = hidden.tags.iter().map(|t| (t.group, t.element, t.depth)).collect();
    assert_eq!(tags, vec![(0x0008, 0x1115, 0), (0x0020, 0x000E, 1), (0x0028, 0x0010, 0)]);
    assert!(hidden.tags[1].value.starts_with("2.25."), "{}", hidden.tags[1].value);
}

#[test]
fn series_strip_label_hides_the_description() {
    let series = Series {
        uid: "1.2.3".into(),
        description: "Rossi^Maria CHEST FOLLOW-UP".into(),
        modality: "CT".into(),
        files: vec![PathBuf::from("a.dcm"), PathBuf::from("b.dcm")],
    };
    let shown = series.strip_label(2, false);
    assert!(shown.contains("Rossi^Maria CHEST FOLLOW-UP") && shown.contains("CT · 2 files"), "{shown}");
    let hidden = series.strip_label(2, true);
    assert_eq!(hidden, "#3\nCT · 2 files");
}

fn corpus() -> PathBuf {
    let dir = common::repo().join("../shared/data/dicom");
    assert!(
        dir.is_dir(),
        "{} is missing: this test needs the DICOM corpus of ../shared (beside the repository)",
        dir.display()
    );
    dir
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Names and identifiers: values that must not show up anywhere, not even under an attribute
/// the profile keeps. Long enough not to match by chance (a study ID "1").
fn name_or_identifier(row: &TagEntry) -> Option<&str> {
    const IDENTIFIERS: [(u16, u16); 4] = [(0x0010, 0x0020), (0x0010, 0x1000), (0x0008, 0x0050), (0x0020, 0x0010)];
    let value = row.value.trim();
    // Values of unknown VR (UN) are shown as their byte count: nothing of them to find.
    let wanted = (row.vr == "PN" || IDENTIFIERS.contains(&(row.group, row.element))) && row.vr != "UN";
    (wanted && value.chars().count() >= 4).then_some(value)
}

/// (group, element, depth) of an element pydicom lists.
type Position = (u16, u16, usize);
/// Its Table E.1-1 code, and the tag of the sequence holding it.
type Listed<'a> = (&'a str, Option<(u16, u16)>);

/// The reader nests sequences 8 deep at most; deeper elements are not shown at all.
const SHOWN_DEPTH: usize = 8;

/// For every corpus file: each element pydicom finds that the profile does not keep (at any
/// depth, private ones included) is in the reader's rows, so the check is not vacuous, and is
/// gone from what is shown with patient details hidden, or for UIDs replaced; no name or
/// identifier among them appears anywhere else in what is shown.
#[test]
fn corpus_files_hide_every_element_pydicom_lists() {
    let corpus = corpus();
    let reference_path = common::repo().join("tests/data/deid_reference.json");
    let text = std::fs::read_to_string(&reference_path)
        .unwrap_or_else(|e| panic!("{}: {e} (make it with tools/deid/basic_profile.py)", reference_path.display()));
    let reference: serde_json::Value = serde_json::from_str(&text).expect("reference is JSON");
    let reference = reference["files"].as_object().expect("files");

    let on_disk: BTreeSet<String> = files_under(&corpus)
        .iter()
        .map(|p| p.strip_prefix(&corpus).unwrap().to_string_lossy().replace('\\', "/"))
        .collect();
    let referenced: BTreeSet<String> = reference.keys().cloned().collect();
    assert_eq!(on_disk, referenced, "the corpus changed: rerun tools/deid/basic_profile.py reference");

    let mut checked_files = 0;
    let mut checked_elements = 0;
    let mut refused = Vec::new();
    let mut failures = Vec::new();
    for (name, entry) in reference {
        let Some(elements) = entry["elements"].as_array() else {
            continue; // pydicom cannot read it either
        };
        let bytes = std::fs::read(corpus.join(name)).expect("corpus file");
        let meta = match parse_header_bytes(&bytes) {
            Ok(meta) => meta,
            Err(e) => {
                refused.push(format!("{name}: {e}"));
                continue;
            }
        };
        checked_files += 1;
        let hidden = meta.without_phi_salted(SALT);
        let hex = |text: &serde_json::Value| -> Option<(u16, u16)> {
            let tag = u32::from_str_radix(text.as_str()?, 16).ok()?;
            Some(((tag >> 16) as u16, tag as u16))
        };
        let mut listed: BTreeMap<Position, Listed> = BTreeMap::new();
        for element in elements {
            let depth = element[0].as_u64().expect("depth") as usize;
            let (group, elem) = hex(&element[1]).expect("hex tag");
            listed.insert((group, elem, depth), (element[2].as_str().expect("code"), hex(&element[3])));
        }
        for (&(group, element, depth), &(code, parent)) in &listed {
            if depth > SHOWN_DEPTH {
                continue;
            }
            checked_elements += 1;
            let at = |rows: &[TagEntry]| -> Vec<String> {
                rows.iter()
                    .filter(|t| (t.group, t.element, t.depth) == (group, element, depth))
                    .map(|t| t.value.clone())
                    .collect()
            };
            let raw = at(&meta.tags);
            if raw.is_empty() {
                // A sequence stored as UN (unknown VR) is shown as its byte count only: what
                // is nested in it is never shown, hidden or not.
                let in_opaque_sequence = parent.is_some_and(|(g, e)| {
                    meta.tags.iter().any(|t| (t.group, t.element, t.depth + 1) == (g, e, depth) && t.vr == "UN")
                });
                if !in_opaque_sequence {
                    failures.push(format!("{name}: ({group:04X},{element:04X}) at depth {depth} not read"));
                }
                continue;
            }
            let shown = at(&hidden.tags);
            if code == "U" {
                if let Some(v) = shown.iter().find(|v| raw.iter().any(|r| !r.trim().is_empty() && v.contains(r.trim())))
                {
                    failures.push(format!("{name}: UID ({group:04X},{element:04X}) shown as is: {v}"));
                }
            } else if !shown.is_empty() {
                failures.push(format!("{name}: ({group:04X},{element:04X}) {code} at depth {depth} shown: {shown:?}"));
            }
        }
        // No listed value shows up elsewhere (a field, another row).
        let secrets: HashSet<&str> = meta
            .tags
            .iter()
            .filter(|t| listed.contains_key(&(t.group, t.element, t.depth)))
            .filter_map(name_or_identifier)
            .collect();
        let fields = [
            &hidden.patient_name,
            &hidden.patient_id,
            &hidden.patient_birth_date,
            &hidden.patient_age,
            &hidden.institution,
            &hidden.study_date,
            &hidden.accession_number,
            &hidden.series_description,
            &hidden.study_description,
            &hidden.series_uid,
            &hidden.study_uid,
            &hidden.body_part,
            &hidden.modality,
        ];
        let shown_text = hidden.tags.iter().map(|t| &t.value).chain(fields);
        for value in shown_text {
            if let Some(secret) = secrets.iter().find(|s| value.contains(**s)) {
                failures.push(format!("{name}: {secret:?} shown in {value:?}"));
            }
        }
        if !hidden.series_description.is_empty() || !hidden.study_description.is_empty() {
            failures.push(format!("{name}: a description is shown"));
        }
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
    // Every file pydicom reads is checked, except those the reader refuses (they show nothing).
    let readable = reference.values().filter(|e| e["elements"].is_array()).count();
    assert_eq!(checked_files + refused.len(), readable);
    assert!(checked_files >= 100, "only {checked_files} files read; refused: {refused:#?}");
    assert!(checked_elements >= 3000, "only {checked_elements} elements checked");
}

mod window {
    //! The real window, headless: what the overlays, the series strip, the status bar and the
    //! tag browser show of a file with a study description, an institution and a patient's
    //! name in a private attribute.

    use std::time::{Duration, Instant};

    use egui::Vec2;
    use egui_kittest::kittest::Queryable;
    use egui_kittest::Harness;
    use melo::gui::MeloApp;

    /// NM file from pydicom's test data: Study Description "Whole Body Bone", Institution
    /// Name "Hospital Name", private (0009,1040) "Patient,The" (values read with pydicom).
    const FILE: &str = "tests/data/dicom/JPEG2000.dcm";
    const SOP_INSTANCE_UID: &str = "1.3.6.1.4.1.5962.1.1.8.1.3.20040826185059.5457";
    /// (value, the tag row that holds it)
    const SECRETS: [(&str, &str); 5] = [
        ("Whole Body Bone", "(0008,1030)"),
        ("Hospital Name", "(0008,0080)"),
        ("Patient,The", "(0009,1040)"),
        ("CompressedSamples", "(0010,0010)"),
        (SOP_INSTANCE_UID, "(0008,0018)"),
    ];

    fn label_shown(harness: &Harness<'_, MeloApp>, text: &str) -> bool {
        harness.query_all_by_label_contains(text).next().is_some()
    }

    fn tag_row_for(harness: &mut Harness<'_, MeloApp>, value: &str, tag: &str) -> bool {
        harness.state_mut().viewer.tags.filter = value.into();
        harness.run();
        label_shown(harness, tag)
    }

    #[test]
    fn hidden_details_leave_no_description_name_or_uid_in_the_window() {
        let file = super::common::repo().join(FILE);
        assert!(file.is_file(), "{} is missing", file.display());
        let mut harness = Harness::builder()
            .with_size(Vec2::new(1280.0, 800.0))
            .with_max_steps(32)
            .build_ui_state(|ui, app: &mut MeloApp| app.show(ui), MeloApp::with_paths(vec![file]));
        let deadline = Instant::now() + Duration::from_secs(120);
        while harness.state().is_busy() {
            assert!(Instant::now() < deadline, "loading did not finish");
            harness.step();
            std::thread::sleep(Duration::from_millis(5));
        }
        harness.run();
        harness.get_by_label("Tags").click();
        harness.run();

        assert!(harness.state().hide_patient_details, "hidden by default");
        assert!(label_shown(&harness, "#1\nNM · 1 file"), "the strip shows position, modality, count");
        assert!(label_shown(&harness, "NM WHOLE BODY"), "modality and body part stay in the overlay");
        assert!(!label_shown(&harness, "Whole Body Bone"), "no study description while hidden");
        assert!(!label_shown(&harness, "JPEG2000.dcm"), "no file name while hidden");
        for (value, tag) in SECRETS {
            assert!(!tag_row_for(&mut harness, value, tag), "{tag} {value:?} listed while hidden");
        }
        // The UID row stays, replaced.
        assert!(tag_row_for(&mut harness, "2.25.", "(0008,0018)"), "SOP Instance UID replaced, not dropped");

        harness.state_mut().viewer.tags.filter.clear();
        harness.get_by_label("Hide patient details").click();
        harness.run();
        assert!(!harness.state().hide_patient_details);
        assert!(label_shown(&harness, "Whole Body Bone"), "the study description is shown when not hidden");
        assert!(label_shown(&harness, "JPEG2000.dcm"), "the file name is shown when not hidden");
        for (value, tag) in SECRETS {
            assert!(tag_row_for(&mut harness, value, tag), "{tag} {value:?} listed when not hidden");
        }
    }
}
