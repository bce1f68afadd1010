//! Headless tests of the Studies view: the real `MeloApp` driven through egui_kittest against
//! a REAL Orthanc (tests/support/orthanc.rs) holding the 20-slice MR series: add the node,
//! echo it, search by patient ID, hide patient details, retrieve (C-GET and WADO-RS) into the
//! store, open into the viewer, receive with the C-STORE SCP; and the faults (closed port,
//! unreachable URL) leave one clear line and a usable window.
//!
//! Orthanc missing fails these tests naming the Debian package; they never skip.

mod common;
mod support;

use std::time::Duration;

use eframe::App;
use egui::Vec2;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use melo::gui::{AppOptions, Command, EchoState, MeloApp, NodeAddress, NodeForm, StudiesCommand, Tab};
use melo::store::StudyStore;
use support::orthanc::{dimse_form, Modality, Orthanc, ORTHANC_AET};

const MR_SLICES: usize = 20;

fn new_app() -> MeloApp {
    MeloApp::with_options(AppOptions { paths: Vec::new(), backbone_dir: None, adapters_dir: None })
}

fn harness(app: MeloApp) -> Harness<'static, MeloApp> {
    Harness::builder()
        .with_size(Vec2::new(1400.0, 900.0))
        .with_max_steps(32)
        .build_ui_state(|ui, app: &mut MeloApp| app.show(ui), app)
}

fn wait_for(harness: &mut Harness<'_, MeloApp>, what: &str, done: impl Fn(&MeloApp) -> bool) {
    common::wait_for(harness, what, Duration::from_secs(120), done);
}

fn shown(harness: &Harness<'_, MeloApp>, text: &str) -> bool {
    harness.query_all_by_label_contains(text).next().is_some()
}

/// An app on the Studies tab (reached by its top-bar button) with its store in `store`.
fn studies_window(store: &std::path::Path) -> Harness<'static, MeloApp> {
    let mut harness = harness(new_app());
    harness.run_steps(4);
    harness.get_by_label("Studies").click();
    harness.run_steps(4);
    assert_eq!(harness.state().tab, Tab::Studies);
    harness.state_mut().send(Command::Studies(StudiesCommand::SetStoreFolder(store.to_path_buf())));
    harness.run_steps(4);
    assert_eq!(harness.state().studies.status, None, "the store opens");
    harness
}

/// Fills the node form (as typed) and presses "Add node".
fn add_node(harness: &mut Harness<'_, MeloApp>, form: NodeForm) {
    harness.state_mut().studies.form = form;
    harness.run_steps(4);
    harness.get_by_label("Add node").click();
    harness.run_steps(4);
}

/// The second patient's ID and name (tests/data/dicom/CT_small.dcm; the MR sample has an
/// ID but an empty name, so hiding is shown on this one).
const CT_PATIENT_ID: &str = "1CT1";
const CT_PATIENT_NAME: &str = "CompressedSamples CT1";

/// Orthanc with the MR series and, as a second patient, the small CT.
struct Pacs {
    orthanc: Orthanc,
    patient_id: String,
    study_uid: String,
}

fn pacs(modalities: &[Modality]) -> Pacs {
    let orthanc = Orthanc::start(modalities);
    let uploads = orthanc.upload_all(&support::mr_series());
    orthanc.upload(&support::fixture("CT_small.dcm"));
    let study = orthanc.get_json(&format!("/studies/{}", uploads[0]["ParentStudy"].as_str().unwrap()));
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    let pacs = Pacs {
        patient_id: text(&study["PatientMainDicomTags"]["PatientID"]),
        study_uid: text(&study["MainDicomTags"]["StudyInstanceUID"]),
        orthanc,
    };
    assert!(!pacs.patient_id.is_empty(), "the MR sample has a patient ID");
    pacs
}

/// Searches the selected node by patient ID (the field as typed, then the button).
fn search_by_patient_id(harness: &mut Harness<'_, MeloApp>, patient_id: &str) {
    harness.state_mut().studies.search.patient_id = patient_id.into();
    harness.get_by_label("Search").click();
    harness.run_steps(4);
    wait_for(harness, "the search", |app| !app.studies.searching);
}

/// Retrieve → 20 instances in the store → Open → the series in the viewer.
fn retrieve_and_open(harness: &mut Harness<'_, MeloApp>, store_dir: &std::path::Path, study_uid: &str) {
    harness.get_by_label("Retrieve").click();
    harness.run_steps(4);
    wait_for(harness, "the retrieve", |app| app.studies.retrieve.is_none());
    let outcome = harness.state().studies.last_retrieve.clone().expect("the retrieve finished");
    assert_eq!(
        (outcome.stored, outcome.in_store, outcome.failed, outcome.cancelled),
        (MR_SLICES, MR_SLICES, 0, false),
        "{:?}",
        harness.state().studies.status
    );
    assert!(shown(harness, &format!("Retrieved {MR_SLICES} instance(s) into the store")));
    // The store's own index (a second connection, as after a restart) holds the series.
    let store = StudyStore::open(store_dir).unwrap();
    assert_eq!(store.instance_count().unwrap(), MR_SLICES);
    let studies = store.studies().unwrap();
    assert_eq!(studies.len(), 1);
    assert_eq!(studies[0].study_uid, study_uid);
    // The Local list shows it too.
    assert_eq!(harness.state().studies.local.len(), 1);

    harness.get_by_label("Open").click();
    harness.run_steps(4);
    wait_for(harness, "the series to load", |app| !app.is_busy() && app.viewer.slice_count() > 0);
    let app = harness.state();
    assert_eq!(app.tab, Tab::Viewer);
    assert_eq!(app.series.len(), 1, "one series: {:?}", app.messages.iter().map(|m| &m.text).collect::<Vec<_>>());
    assert_eq!(app.viewer.slice_count(), MR_SLICES);
    assert!(shown(harness, &format!("Slice 1/{MR_SLICES}")), "the viewer shows the series");
}

#[test]
fn dimse_node_echo_search_hide_retrieve_and_open() {
    let pacs = pacs(&[Modality::new("melo", "MELO", 1)]);
    let store_dir = tempfile::tempdir().unwrap();
    let mut harness = studies_window(store_dir.path());

    add_node(&mut harness, dimse_form("Orthanc", pacs.orthanc.dicom_port));
    assert_eq!(harness.state().studies.nodes.len(), 1, "{:?}", harness.state().studies.status);
    assert_eq!(harness.state().studies.selected_node, Some(0));

    harness.get_by_label("Echo").click();
    harness.run_steps(4);
    wait_for(&mut harness, "the echo", |app| app.studies.echo.get("Orthanc") != Some(&EchoState::Running));
    assert!(
        matches!(harness.state().studies.echo.get("Orthanc"), Some(EchoState::Ok(_))),
        "{:?}",
        harness.state().studies.echo
    );
    assert!(shown(&harness, "Echo OK"));

    // The CT patient, by ID: one study, whose name and ID the table blanks while hidden.
    search_by_patient_id(&mut harness, CT_PATIENT_ID);
    let results = harness.state().studies.results.clone();
    assert_eq!(results.len(), 1, "only the CT patient's study: {results:?}");
    assert_eq!(results[0].patient_name, CT_PATIENT_NAME);
    assert!(harness.state().hide_patient_details, "hidden is the default");
    assert!(!shown(&harness, CT_PATIENT_NAME), "the name is blanked while hidden");
    assert!(!shown(&harness, "CompressedSamples"), "no part of the name is shown");
    harness.get_by_label("Hide patient details").click();
    harness.run_steps(4);
    assert!(!harness.state().hide_patient_details);
    assert!(shown(&harness, CT_PATIENT_NAME), "the name is shown once details are shown");
    harness.get_by_label("Hide patient details").click();
    harness.run_steps(4);
    assert!(!shown(&harness, CT_PATIENT_NAME), "the name is blanked again");

    // The MR patient, by ID: its study and nothing else.
    search_by_patient_id(&mut harness, &pacs.patient_id);
    let results = harness.state().studies.results.clone();
    assert_eq!(results.len(), 1, "only the MR patient's study: {results:?}");
    assert_eq!(results[0].study_uid, pacs.study_uid);
    assert_eq!(results[0].patient_id, pacs.patient_id);
    assert_eq!(results[0].modalities, "MR");
    assert!(!shown(&harness, &pacs.patient_id), "the ID is blanked while hidden");

    // The study expands to its one series.
    harness.get_by_label("+").click();
    harness.run_steps(4);
    wait_for(&mut harness, "the series query", |app| {
        !matches!(app.studies.expanded.get(&pacs.study_uid), Some(melo::gui::SeriesState::Loading))
    });
    match harness.state().studies.expanded.get(&pacs.study_uid) {
        Some(melo::gui::SeriesState::Loaded(series)) => {
            assert_eq!(series.len(), 1);
            assert_eq!(series[0].modality, "MR");
            assert_eq!(series[0].instances, MR_SLICES.to_string());
        }
        other => panic!("series of the study: {other:?}"),
    }

    // Cancel: asked in the same frame as the retrieve, so before the first instance arrives.
    // The C-GET ends cancelled; whatever was stored is whole and indexed.
    let retrieve = StudiesCommand::Retrieve { study_uid: pacs.study_uid.clone(), series_uid: None };
    harness.state_mut().send(Command::Studies(retrieve));
    harness.state_mut().send(Command::Studies(StudiesCommand::CancelRetrieve));
    harness.run_steps(2);
    wait_for(&mut harness, "the cancelled retrieve", |app| app.studies.retrieve.is_none());
    let cancelled = harness.state().studies.last_retrieve.clone().expect("the retrieve finished");
    assert!(cancelled.cancelled, "{cancelled:?}");
    assert!(shown(&harness, "Retrieve cancelled;"), "{:?}", harness.state().studies.status);
    let store = StudyStore::open(store_dir.path()).unwrap();
    let indexed = store.instance_count().unwrap();
    assert_eq!(indexed, cancelled.in_store, "the line says what the index holds");
    assert!(indexed >= cancelled.stored && indexed <= MR_SLICES, "{cancelled:?}");
    for series in store.series(&pacs.study_uid).unwrap() {
        for instance in store.instances(&series.series_uid).unwrap() {
            let bytes = std::fs::read(&instance.path).unwrap();
            assert_eq!(bytes.len() as u64, instance.size, "an indexed file is whole");
        }
    }
    drop(store);

    retrieve_and_open(&mut harness, store_dir.path(), &pacs.study_uid);
}

#[test]
fn dicomweb_node_searches_and_retrieves_with_wado_rs() {
    let pacs = pacs(&[]);
    let store_dir = tempfile::tempdir().unwrap();
    let mut harness = studies_window(store_dir.path());
    let url = pacs.orthanc.url("/dicom-web");
    add_node(&mut harness, NodeForm { name: "Web".into(), dicomweb: true, url: url.clone(), ..Default::default() });
    assert_eq!(harness.state().studies.nodes[0].address, NodeAddress::DicomWeb { url });

    harness.get_by_label("Echo").click();
    harness.run_steps(4);
    wait_for(&mut harness, "the echo", |app| app.studies.echo.get("Web") != Some(&EchoState::Running));
    assert!(shown(&harness, "Echo OK"), "{:?}", harness.state().studies.echo);

    search_by_patient_id(&mut harness, &pacs.patient_id);
    let results = harness.state().studies.results.clone();
    assert_eq!(results.len(), 1, "{results:?} {:?}", harness.state().studies.status);
    assert_eq!(results[0].study_uid, pacs.study_uid);
    retrieve_and_open(&mut harness, store_dir.path(), &pacs.study_uid);
}

#[test]
fn echo_to_a_closed_port_shows_the_error_and_the_window_stays_usable() {
    let store_dir = tempfile::tempdir().unwrap();
    let mut harness = studies_window(store_dir.path());
    let closed = support::free_port();
    add_node(&mut harness, dimse_form("Gone", closed));
    harness.get_by_label("Echo").click();
    harness.run_steps(4);
    wait_for(&mut harness, "the echo", |app| app.studies.echo.get("Gone") != Some(&EchoState::Running));
    match harness.state().studies.echo.get("Gone") {
        Some(EchoState::Failed(e)) => assert!(e.contains("cannot connect"), "{e}"),
        other => panic!("echo to a closed port: {other:?}"),
    }
    assert!(shown(&harness, &format!("Echo failed: cannot connect to ORTHANC@127.0.0.1:{closed}")));

    // A search on it fails with one line; so does an unreachable DICOMweb URL.
    search_by_patient_id(&mut harness, "X");
    assert!(shown(&harness, "Search failed: cannot connect"), "{:?}", harness.state().studies.status);
    add_node(
        &mut harness,
        NodeForm {
            name: "Web".into(),
            dicomweb: true,
            url: format!("http://127.0.0.1:{closed}/dicom-web"),
            ..Default::default()
        },
    );
    assert_eq!(harness.state().studies.nodes.len(), 2);
    let echo_buttons: Vec<_> = harness.query_all_by_label("Echo").collect();
    assert_eq!(echo_buttons.len(), 2);
    echo_buttons[1].click();
    harness.run_steps(4);
    wait_for(&mut harness, "the DICOMweb echo", |app| app.studies.echo.get("Web") != Some(&EchoState::Running));
    assert!(
        matches!(harness.state().studies.echo.get("Web"), Some(EchoState::Failed(e)) if e.contains("cannot connect")),
        "{:?}",
        harness.state().studies.echo
    );

    // A bad node is refused with a line, nothing added.
    add_node(
        &mut harness,
        NodeForm { name: "Bad".into(), aet: "X".into(), host: "h".into(), port: "99999".into(), ..Default::default() },
    );
    assert_eq!(harness.state().studies.nodes.len(), 2);
    assert!(shown(&harness, "Node not saved: port"));

    // The window is alive: the other tabs and this one still answer.
    harness.get_by_label("Viewer").click();
    harness.run_steps(4);
    assert_eq!(harness.state().tab, Tab::Viewer);
    harness.get_by_label("Studies").click();
    harness.run_steps(4);
    assert_eq!(harness.state().tab, Tab::Studies);
    assert!(shown(&harness, "Echo failed"));
}

#[test]
fn received_studies_appear_in_the_local_list() {
    let scp_port = support::free_port();
    let pacs = pacs(&[Modality::new("melo", "MELO", scp_port)]);
    let store_dir = tempfile::tempdir().unwrap();
    let mut harness = studies_window(store_dir.path());
    {
        let studies = &mut harness.state_mut().studies;
        studies.scp.aet = "MELO".into();
        studies.scp.port = scp_port.to_string();
        studies.scp.allowed = ORTHANC_AET.into();
    }
    harness.run_steps(4);
    harness.get_by_label("Receiving").click();
    harness.run_steps(4);
    assert!(harness.state().studies.is_scp_running(), "{:?}", harness.state().studies.status);

    // Orthanc pushes the MR study to us (C-STORE over its own associations).
    let study_id = pacs.orthanc.find("Study", serde_json::json!({ "StudyInstanceUID": pacs.study_uid }))[0]["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = pacs
        .orthanc
        .post_json("/modalities/melo/store", &serde_json::json!({ "Resources": [study_id], "Synchronous": true }));
    assert_eq!(answer["FailedInstancesCount"], 0, "{answer}");
    wait_for(&mut harness, "the received study in the Local list", |app| {
        app.studies.local.iter().any(|(s, _)| s.study_uid == pacs.study_uid && s.instances == MR_SLICES)
    });
    assert!(shown(&harness, &format!("1 series, {MR_SLICES} image(s)")));
    assert!(!shown(&harness, &pacs.patient_id), "the Local list hides the patient ID too");
    harness.get_by_label("Receiving").click();
    harness.run_steps(4);

    // Our receiver answers C-MOVE to the configured nodes: Orthanc forgets the study, then
    // asks us (its C-MOVE SCU) to send it back to ORTHANC, a node of this window.
    add_node(&mut harness, dimse_form("Orthanc", pacs.orthanc.dicom_port));
    harness.get_by_label("Receiving").click();
    harness.run_steps(4);
    assert!(harness.state().studies.is_scp_running(), "{:?}", harness.state().studies.status);
    pacs.orthanc.delete(&format!("/studies/{study_id}"));
    assert!(pacs.orthanc.find("Study", serde_json::json!({ "StudyInstanceUID": pacs.study_uid })).is_empty());
    let moved = pacs.orthanc.post_json(
        "/modalities/melo/move",
        &serde_json::json!({
            "Level": "Study",
            "Resources": [{ "StudyInstanceUID": pacs.study_uid }],
            "TargetAet": ORTHANC_AET,
            "Synchronous": true
        }),
    );
    let back = pacs.orthanc.find("Instance", serde_json::json!({ "StudyInstanceUID": pacs.study_uid }));
    assert_eq!(back.len(), MR_SLICES, "Orthanc got the study back by our C-MOVE: {moved}");

    harness.get_by_label("Receiving").click();
    harness.run_steps(4);
    assert!(!harness.state().studies.is_scp_running());
}

#[test]
fn nodes_and_the_store_folder_are_kept_in_the_settings() {
    let store_dir = tempfile::tempdir().unwrap();
    let mut harness = studies_window(store_dir.path());
    add_node(&mut harness, dimse_form("Main PACS", 104));
    add_node(
        &mut harness,
        NodeForm { name: "Web".into(), dicomweb: true, url: "http://pacs:8042/dicom-web".into(), ..Default::default() },
    );
    // Edit the first node's port, remove nothing yet.
    harness.query_all_by_label("Edit").next().unwrap().click();
    harness.run_steps(4);
    harness.state_mut().studies.form.port = "11112".into();
    harness.get_by_label("Save node").click();
    harness.run_steps(4);

    let mut storage = common::MemoryStorage::default();
    harness.state_mut().save(&mut storage);
    let mut restarted = new_app();
    restarted.restore(&storage);
    assert_eq!(restarted.studies.nodes, harness.state().studies.nodes);
    assert_eq!(restarted.studies.nodes[0].describe(), "ORTHANC@127.0.0.1:11112");
    assert_eq!(restarted.studies.store_folder.as_deref(), Some(store_dir.path()));

    // Remove takes it out of the next save.
    harness.query_all_by_label("Remove").next().unwrap().click();
    harness.run_steps(4);
    harness.state_mut().save(&mut storage);
    let mut again = new_app();
    again.restore(&storage);
    assert_eq!(again.studies.nodes.len(), 1);
    assert_eq!(again.studies.nodes[0].name, "Web");
}
