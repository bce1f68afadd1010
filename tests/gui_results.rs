//! Headless tests (egui_kittest) of results going back to the PACS from the window, and of
//! what comes back (issue 14, items 5 and 6 in the window), against a REAL Orthanc
//! (tests/support/orthanc.rs) and the real model (assets/backbone, the shipped adapters):
//!
//! * the diagnosis panel sends the SR of the shown prediction by C-STORE; Orthanc holds it
//!   (REST); the Studies view retrieves the study back (C-GET) and opens the SR, whose content
//!   tree the viewer shows as text with the probability the panel showed;
//! * the Secondary Capture goes by STOW-RS; Save SR… / Save Secondary Capture… write files
//!   that read back; a save over the source and a send to a stopped node end in one line;
//! * C-MOVE to our receiver, and the de-identified export of stored studies (files read back).
//!
//! Orthanc missing fails these tests naming the Debian package; they never skip.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_dictionary_std::tags;
use egui::Vec2;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use melo::gui::{
    AppOptions, Command, DiagnosisCommand, EngineState, MeloApp, MessageLevel, NodeForm, ResultKind, StudiesCommand,
    Tab,
};
use melo::store::StudyStore;
use serde_json::{json, Value};
use support::orthanc::{dimse_form, Modality, Orthanc, ORTHANC_AET};

const SCAN: &str = "assets/samples/cr_chest/RG1_J2KR.dcm";
const SCAN_PATIENT_NAME: &str = "CompressedSamples RG1";
const TASK: &str = "pneumonia";
const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const LONG: Duration = Duration::from_secs(180);

fn scan() -> PathBuf {
    common::repo().join(SCAN)
}

fn harness(app: MeloApp) -> Harness<'static, MeloApp> {
    Harness::builder()
        .with_size(Vec2::new(1400.0, 1400.0))
        .with_max_steps(32)
        .build_ui_state(|ui, app: &mut MeloApp| app.show(ui), app)
}

fn wait_for(harness: &mut Harness<'_, MeloApp>, what: &str, done: impl Fn(&MeloApp) -> bool) {
    common::wait_for(harness, what, LONG, done);
}

fn shown(harness: &Harness<'_, MeloApp>, text: &str) -> bool {
    harness.query_all_by_label_contains(text).next().is_some()
}

/// The window on the chest CR with the model loaded and the pneumonia task's prediction on
/// screen; its study store in `store`.
fn diagnosing_window(store: &Path) -> Harness<'static, MeloApp> {
    let mut harness = harness(MeloApp::with_options(AppOptions {
        paths: vec![scan()],
        backbone_dir: Some(common::repo().join("assets/backbone")),
        adapters_dir: Some(common::repo().join("adapters")),
    }));
    wait_for(&mut harness, "the model and the scan", |app| {
        matches!(app.diagnosis.state, EngineState::Ready { .. }) && app.viewer.stack.is_some()
    });
    harness.state_mut().send(Command::Diagnosis(DiagnosisCommand::SelectTask(TASK.into())));
    harness.state_mut().send(Command::Studies(StudiesCommand::SetStoreFolder(store.to_path_buf())));
    wait_for(&mut harness, "the prediction", |app| {
        app.diagnosis.shown.as_ref().is_some_and(|s| s.prediction.task == TASK) && !app.is_diagnosis_busy()
    });
    assert!(shown(&harness, "Results to the PACS"), "the results section is under the prediction");
    harness
}

fn add_node(harness: &mut Harness<'_, MeloApp>, form: NodeForm) {
    harness.state_mut().studies.form = form;
    harness.state_mut().send(Command::Studies(StudiesCommand::SubmitNode));
    harness.run_steps(4);
}

/// Sends through the panel's menu: "Send SR / SC to" → the node's entry; waits for the outcome.
fn send_through_menu(harness: &mut Harness<'_, MeloApp>, entry: &str) {
    harness.get_by_label("Send SR / SC to").click();
    harness.run_steps(4);
    harness.get_by_label(entry).click();
    harness.run_steps(4);
    wait_for(harness, "the send", |app| !app.diagnosis.results.busy);
}

fn results_line(harness: &Harness<'_, MeloApp>) -> (MessageLevel, String) {
    harness.state().diagnosis.results.status.clone().expect("a results line")
}

/// Orthanc's instances in series of `modality`, as simplified tags.
fn orthanc_instances(orthanc: &Orthanc, modality: &str) -> Vec<Value> {
    orthanc
        .find("Series", json!({ "Modality": modality }))
        .iter()
        .flat_map(|series| series["Instances"].as_array().cloned().unwrap_or_default())
        .map(|id| orthanc.get_json(&format!("/instances/{}/simplified-tags", id.as_str().unwrap())))
        .collect()
}

fn read(path: &Path) -> dicom_object::DefaultDicomObject {
    dicom_object::open_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn attr(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}

#[test]
fn sr_sent_by_c_store_comes_back_from_the_pacs_and_opens_as_its_content() {
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", 1)]);
    let upload = orthanc.upload(&scan());
    let study = orthanc.get_json(&format!("/studies/{}", upload["ParentStudy"].as_str().unwrap()));
    let patient_id = study["PatientMainDicomTags"]["PatientID"].as_str().unwrap().to_string();
    let study_uid = study["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().to_string();
    let store_dir = tempfile::tempdir().unwrap();
    let mut harness = diagnosing_window(store_dir.path());
    add_node(&mut harness, dimse_form("Orthanc", orthanc.dicom_port));
    assert_eq!(harness.state().studies.nodes.len(), 1, "{:?}", harness.state().studies.status);

    // SR only: untick SC, then the node from the menu.
    harness.get_by_label("SC").click();
    harness.run_steps(4);
    assert!(!harness.state().diagnosis.results.send_sc);
    send_through_menu(&mut harness, "Orthanc (C-STORE)");
    let (level, line) = results_line(&harness);
    assert_eq!(level, MessageLevel::Info, "{line}");
    assert_eq!(line, format!("Sent the SR: 1 object(s) stored on {} (C-STORE)", orthanc.peer()));
    assert!(shown(&harness, "Sent the SR: 1 object(s) stored on"));

    // Orthanc has it, in the scan's study, as a Comprehensive SR.
    let srs = orthanc_instances(&orthanc, "SR");
    assert_eq!(srs.len(), 1, "{srs:?}");
    assert_eq!(srs[0]["SOPClassUID"], COMPREHENSIVE_SR);
    assert_eq!(srs[0]["StudyInstanceUID"], study_uid.as_str());
    let prediction = harness.state().diagnosis.shown.clone().unwrap().prediction;

    // Back from the PACS: search, retrieve (C-GET) the study, open the SR series.
    harness.get_by_label("Studies").click();
    harness.run_steps(4);
    harness.state_mut().studies.search.patient_id = patient_id.clone();
    harness.get_by_label("Search").click();
    harness.run_steps(4);
    wait_for(&mut harness, "the search", |app| !app.studies.searching);
    assert_eq!(harness.state().studies.results.len(), 1, "{:?}", harness.state().studies.status);
    harness.get_by_label("Retrieve").click();
    harness.run_steps(4);
    wait_for(&mut harness, "the retrieve", |app| app.studies.retrieve.is_none());
    let outcome = harness.state().studies.last_retrieve.clone().expect("a retrieve");
    assert_eq!((outcome.stored, outcome.failed), (2, 0), "the CR and the SR: {:?}", harness.state().studies.status);
    let local = harness.state().studies.local.clone();
    let series: Vec<_> = local.iter().flat_map(|(_, s)| s.iter()).collect();
    let sr_index = series.iter().position(|s| s.modality == "SR").expect("the SR series is in the store");
    harness.query_all_by_label("Open series").nth(sr_index).unwrap().click();
    harness.run_steps(4);
    wait_for(&mut harness, "the SR to open", |app| app.documents.is_some() && !app.is_busy());
    assert_eq!(harness.state().tab, Tab::Viewer);
    assert!(harness.state().messages.is_empty(), "{:?}", harness.state().messages);

    // The content tree: title, the measurement group, each class probability with its unit.
    assert!(shown(&harness, "Imaging Measurement Report"));
    assert!(shown(&harness, "Measurement Group"));
    assert!(shown(&harness, "Algorithm Name:"));
    for (label, p) in prediction.labels.iter().zip(&prediction.probabilities) {
        assert!(shown(&harness, &format!("Probability of {label} ({TASK}):")), "{label}");
        let value = format!("{:.4} %", 100.0 * f64::from(*p));
        assert!(shown(&harness, &value), "the probability of {label} as the panel showed it: {value}");
    }
    assert!(shown(&harness, "CR Image 1.3.6.1.4.1.5962"), "the image library references the scan");
    // The diagnosis panel says why it classifies nothing (not the previous image's result).
    assert!(shown(&harness, "A structured report has no pixels to classify"));
    // Patient details are hidden (the default) and shown on request.
    assert!(!shown(&harness, SCAN_PATIENT_NAME) && !shown(&harness, &patient_id));
    assert!(shown(&harness, "Patient: (hidden)"));
    harness.get_by_label("Hide patient details").click();
    harness.run_steps(4);
    assert!(shown(&harness, SCAN_PATIENT_NAME), "the name once details are shown");
}

#[test]
fn sc_goes_by_stow_rs_saves_read_back_and_failures_are_one_line() {
    let orthanc = Orthanc::start(&[]);
    let store_dir = tempfile::tempdir().unwrap();
    let mut harness = diagnosing_window(store_dir.path());
    let url = orthanc.url("/dicom-web");
    add_node(&mut harness, NodeForm { name: "Web".into(), dicomweb: true, url: url.clone(), ..Default::default() });

    // SC only, by STOW-RS.
    harness.get_by_label("SR").click();
    harness.run_steps(4);
    send_through_menu(&mut harness, "Web (STOW-RS)");
    let (level, line) = results_line(&harness);
    assert_eq!(level, MessageLevel::Info, "{line}");
    assert_eq!(line, format!("Sent the Secondary Capture: 1 object(s) stored on {url} (STOW-RS)"));
    let scs = orthanc_instances(&orthanc, "OT");
    assert_eq!(scs.len(), 1, "{scs:?}");
    assert_eq!(scs[0]["SOPClassUID"], SECONDARY_CAPTURE);
    assert_eq!(scs[0]["BurnedInAnnotation"], "YES");
    assert!(orthanc_instances(&orthanc, "SR").is_empty(), "the SR was not asked for");

    // Save SR… / Save Secondary Capture… (the dialog's answer, as the app receives it).
    let out = tempfile::tempdir().unwrap();
    for kind in [ResultKind::Sr, ResultKind::Sc] {
        let path = out.path().join(kind.file_name(TASK));
        harness.state_mut().send(Command::Diagnosis(DiagnosisCommand::SaveResultTo { kind, path: path.clone() }));
        harness.run_steps(2);
        wait_for(&mut harness, "the save", |app| !app.diagnosis.results.busy);
        let (level, line) = results_line(&harness);
        assert_eq!(level, MessageLevel::Info, "{line}");
        assert!(line.starts_with(&format!("{} saved to ", kind.label())), "{line}");
        let obj = read(&path);
        let class = attr(&obj, tags::SOP_CLASS_UID).unwrap();
        assert_eq!(class, if kind == ResultKind::Sr { COMPREHENSIVE_SR } else { SECONDARY_CAPTURE });
        assert_eq!(attr(&obj, tags::PATIENT_NAME).as_deref(), Some("CompressedSamples^RG1"));
    }
    // The saved SR reads back through the library the viewer uses.
    let doc = melo::report::content::read(&out.path().join(ResultKind::Sr.file_name(TASK))).unwrap();
    let prediction = harness.state().diagnosis.shown.clone().unwrap().prediction;
    let text = doc.text_lines(true).join("\n");
    for (label, p) in prediction.labels.iter().zip(&prediction.probabilities) {
        assert!(text.contains(&format!("Probability of {label} ({TASK}): {:.4} %", 100.0 * f64::from(*p))), "{text}");
    }
    assert!(!text.contains("CompressedSamples"), "hidden in the text: {text}");

    // A save over the scan itself is refused, and the scan is untouched.
    let before = std::fs::read(scan()).unwrap();
    harness.state_mut().send(Command::Diagnosis(DiagnosisCommand::SaveResultTo { kind: ResultKind::Sr, path: scan() }));
    harness.run_steps(2);
    wait_for(&mut harness, "the refused save", |app| !app.diagnosis.results.busy);
    let (level, line) = results_line(&harness);
    assert_eq!(level, MessageLevel::Error, "{line}");
    assert!(line.contains("would overwrite the input"), "{line}");
    assert_eq!(std::fs::read(scan()).unwrap(), before);

    // A stopped node: one line naming it, the window alive, the next send works.
    let closed = support::free_port();
    add_node(&mut harness, dimse_form("Stopped", closed));
    send_through_menu(&mut harness, "Stopped (C-STORE)");
    let (level, line) = results_line(&harness);
    assert_eq!(level, MessageLevel::Error, "{line}");
    assert!(line.starts_with(&format!("Send failed: cannot connect to ORTHANC@127.0.0.1:{closed}")), "{line}");
    assert!(!line.contains('\n'));
    assert!(shown(&harness, "Send failed: cannot connect"));
    assert_eq!(harness.state().viewer.slice_count(), 1, "the image is still shown");
    send_through_menu(&mut harness, "Web (STOW-RS)");
    assert_eq!(results_line(&harness).0, MessageLevel::Info, "{:?}", results_line(&harness));
    assert_eq!(orthanc_instances(&orthanc, "OT").len(), 2);
}

/// The Studies view on an empty store, on the Studies tab.
fn studies_window(store: &Path) -> Harness<'static, MeloApp> {
    let mut harness =
        harness(MeloApp::with_options(AppOptions { paths: Vec::new(), backbone_dir: None, adapters_dir: None }));
    harness.run_steps(4);
    harness.get_by_label("Studies").click();
    harness.run_steps(4);
    harness.state_mut().send(Command::Studies(StudiesCommand::SetStoreFolder(store.to_path_buf())));
    harness.run_steps(4);
    assert_eq!(harness.state().studies.status, None, "the store opens");
    harness
}

fn search(harness: &mut Harness<'_, MeloApp>, patient_id: &str) {
    harness.state_mut().studies.search.patient_id = patient_id.into();
    harness.get_by_label("Search").click();
    harness.run_steps(4);
    wait_for(harness, "the search", |app| !app.studies.searching);
    assert_eq!(harness.state().studies.results.len(), 1, "{:?}", harness.state().studies.status);
}

fn status(harness: &Harness<'_, MeloApp>) -> String {
    harness.state().studies.status.clone().map(|(_, s)| s).unwrap_or_default()
}

#[test]
fn c_move_to_the_receiver_then_de_identified_export() {
    let scp_port = support::free_port();
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", scp_port)]);
    let mr = orthanc.upload_all(&support::mr_series());
    orthanc.upload(&support::fixture("CT_small.dcm"));
    let mr_study = orthanc.get_json(&format!("/studies/{}", mr[0]["ParentStudy"].as_str().unwrap()));
    let mr_patient = mr_study["PatientMainDicomTags"]["PatientID"].as_str().unwrap().to_string();
    let mr_study_uid = mr_study["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().to_string();
    let store_dir = tempfile::tempdir().unwrap();
    let mut harness = studies_window(store_dir.path());
    add_node(&mut harness, dimse_form("Orthanc", orthanc.dicom_port));

    // Move without the receiver: refused with what to do.
    search(&mut harness, "1CT1");
    harness.get_by_label("Move").click();
    harness.run_steps(4);
    assert!(
        status(&harness).starts_with("Move not started: start the receiver (Receiving) first"),
        "{}",
        status(&harness)
    );
    assert!(harness.state().studies.retrieve.is_none());

    // With the receiver on, Orthanc sends the CT study to our AE title.
    {
        let studies = &mut harness.state_mut().studies;
        studies.scp.aet = "MELO".into();
        studies.scp.port = scp_port.to_string();
        studies.scp.allowed = ORTHANC_AET.into();
    }
    harness.get_by_label("Receiving").click();
    harness.run_steps(4);
    assert!(harness.state().studies.is_scp_running(), "{}", status(&harness));
    harness.get_by_label("Move").click();
    harness.run_steps(4);
    wait_for(&mut harness, "the move", |app| app.studies.retrieve.is_none());
    let outcome = harness.state().studies.last_retrieve.clone().unwrap();
    assert_eq!((outcome.stored, outcome.in_store, outcome.failed), (1, 1, 0), "{}", status(&harness));
    search(&mut harness, &mr_patient);
    harness.get_by_label("Move").click();
    harness.run_steps(4);
    wait_for(&mut harness, "the MR move", |app| app.studies.retrieve.is_none());
    let outcome = harness.state().studies.last_retrieve.clone().unwrap();
    assert_eq!((outcome.stored, outcome.in_store, outcome.failed), (20, 20, 0), "{}", status(&harness));
    wait_for(&mut harness, "both studies listed", |app| app.studies.local.len() == 2);
    assert_eq!(harness.query_all_by_label("Export de-identified…").count(), 2);

    let store = StudyStore::open(store_dir.path()).unwrap();
    let stored = |study_uid: &str| -> Vec<PathBuf> {
        store
            .series(study_uid)
            .unwrap()
            .iter()
            .flat_map(|s| store.instances(&s.series_uid).unwrap().into_iter().map(|i| i.path))
            .collect()
    };
    let ct_uid =
        harness.state().studies.local.iter().find(|(s, _)| s.study_uid != mr_study_uid).unwrap().0.study_uid.clone();

    // The CT, dates retained: no name, new UIDs, the study date kept, the profile named.
    let out = tempfile::tempdir().unwrap();
    harness.state_mut().studies.deid_retain_dates = true;
    let ct_out = out.path().join("ct");
    let export = StudiesCommand::ExportDeidentifiedTo { study_uid: ct_uid.clone(), folder: ct_out.clone() };
    harness.state_mut().send(Command::Studies(export));
    harness.run_steps(2);
    wait_for(&mut harness, "the CT export", |app| !app.studies.exporting);
    let line = status(&harness);
    for part in [
        "1 file(s) de-identified into",
        "Basic Application Confidentiality Profile (DCM 113100)",
        "Retain Longitudinal Temporal Information Full Dates Option (DCM 113106)",
        "Pixel data untouched",
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    let original = read(&stored(&ct_uid)[0]);
    let files: Vec<PathBuf> = std::fs::read_dir(&ct_out).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    let copy = read(&files[0]);
    assert_eq!(attr(&original, tags::PATIENT_NAME).as_deref(), Some("CompressedSamples^CT1"));
    assert!(attr(&copy, tags::PATIENT_NAME).unwrap_or_default().is_empty(), "the name is gone");
    for tag in [tags::SOP_INSTANCE_UID, tags::STUDY_INSTANCE_UID, tags::SERIES_INSTANCE_UID] {
        let (a, b) = (attr(&original, tag).unwrap(), attr(&copy, tag).unwrap());
        assert_ne!(a, b, "{tag} is new");
    }
    assert_eq!(attr(&copy, tags::STUDY_DATE), attr(&original, tags::STUDY_DATE), "dates retained");
    assert_eq!(attr(&copy, tags::PATIENT_IDENTITY_REMOVED).as_deref(), Some("YES"));

    // The MR, dates not retained: 20 files, one new study UID for all, pixel data as it was.
    harness.state_mut().studies.deid_retain_dates = false;
    let mr_out = out.path().join("mr");
    let export = StudiesCommand::ExportDeidentifiedTo { study_uid: mr_study_uid.clone(), folder: mr_out.clone() };
    harness.state_mut().send(Command::Studies(export));
    harness.run_steps(2);
    wait_for(&mut harness, "the MR export", |app| !app.studies.exporting);
    let line = status(&harness);
    assert!(line.starts_with("20 file(s) de-identified into") && !line.contains("113106"), "{line}");
    let copies: Vec<_> = std::fs::read_dir(&mr_out).unwrap().map(|e| read(&e.unwrap().path())).collect();
    assert_eq!(copies.len(), 20);
    let study_uids: std::collections::BTreeSet<_> =
        copies.iter().map(|c| attr(c, tags::STUDY_INSTANCE_UID).unwrap()).collect();
    assert_eq!(study_uids.len(), 1, "consistent across the study");
    assert!(!study_uids.contains(&mr_study_uid));
    let original = read(&stored(&mr_study_uid)[0]);
    let sop = attr(&original, tags::SOP_INSTANCE_UID).unwrap();
    let pixels =
        |o: &dicom_object::DefaultDicomObject| o.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec();
    let number = attr(&original, tags::INSTANCE_NUMBER);
    let copy = copies.iter().find(|c| attr(c, tags::INSTANCE_NUMBER) == number).unwrap();
    assert_ne!(attr(copy, tags::SOP_INSTANCE_UID).unwrap(), sop);
    let study_date = attr(&original, tags::STUDY_DATE).unwrap();
    assert!(!study_date.is_empty());
    assert_ne!(attr(copy, tags::STUDY_DATE).unwrap_or_default(), study_date, "dates not retained");
    assert_eq!(pixels(copy), pixels(&original), "pixel data untouched");

    // An export folder inside the store is refused with one line; nothing is written there.
    let inside = store_dir.path().join("export");
    harness
        .state_mut()
        .send(Command::Studies(StudiesCommand::ExportDeidentifiedTo { study_uid: ct_uid, folder: inside.clone() }));
    harness.run_steps(2);
    wait_for(&mut harness, "the refused export", |app| !app.studies.exporting);
    let line = status(&harness);
    assert!(line.starts_with("De-identified export failed:") && line.contains("inside the input folder"), "{line}");
    assert!(!inside.exists());
}
