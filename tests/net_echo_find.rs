//! C-ECHO and C-FIND against a real Orthanc: answers compared with what Orthanc's own REST API
//! says about the same data; refusals and unreachable peers give one clear sentence.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use melo::net::query::match_to_map;
use melo::net::{self, Level, Model, Peer, QueryKeys, ScuOptions};
use serde_json::json;
use support::orthanc::{Modality, Orthanc};

fn options() -> ScuOptions {
    ScuOptions { calling_aet: "MELO".into(), timeout: Duration::from_secs(20), ..Default::default() }
}

fn orthanc_with_corpus() -> Orthanc {
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", 1)]);
    orthanc.upload_all(&support::mr_series());
    orthanc.upload(&support::fixture("CT_small.dcm"));
    orthanc.upload(&support::fixture("MR_small.dcm"));
    orthanc.upload(&support::repo().join("assets/samples/ct/693_J2KR.dcm"));
    orthanc
}

fn peer(orthanc: &Orthanc) -> Peer {
    orthanc.peer().parse().unwrap()
}

fn set(values: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    values.into_iter().collect()
}

#[test]
fn echo_answers_and_refusals_are_explained() {
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", 1)]);
    net::echo(&peer(&orthanc), &options()).expect("C-ECHO to Orthanc");

    // Wrong called AE title: Orthanc checks it and refuses the association.
    let wrong: Peer = format!("NOT_ORTHANC@127.0.0.1:{}", orthanc.dicom_port).parse().unwrap();
    let err = net::echo(&wrong, &options()).unwrap_err().to_string();
    assert!(err.contains("refused the association") && err.contains("called AE title not recognized"), "{err}");

    // Nothing listening.
    let closed: Peer = format!("PACS@127.0.0.1:{}", support::free_port()).parse().unwrap();
    let err = net::echo(&closed, &options()).unwrap_err().to_string();
    assert!(err.starts_with("cannot connect to PACS@127.0.0.1:"), "{err}");
}

#[test]
fn a_peer_that_never_answers_times_out() {
    // Accepts the TCP connection, then stays silent: the association request goes unanswered.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(4));
        drop(conn);
    });
    let silent: Peer = format!("SILENT@127.0.0.1:{port}").parse().unwrap();
    let quick = ScuOptions { timeout: Duration::from_secs(1), ..options() };
    let started = std::time::Instant::now();
    let err = net::echo(&silent, &quick).unwrap_err().to_string();
    assert!(err.contains("did not answer within 1 s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "the timeout applied");
    holder.join().unwrap();
}

#[test]
fn find_studies_and_series_matches_orthancs_index() {
    let orthanc = orthanc_with_corpus();
    let p = peer(&orthanc);

    // All studies.
    let ours = net::find(&p, &options(), Model::StudyRoot, Level::Study, &QueryKeys::default()).unwrap();
    let ours = set(ours.iter().map(|m| match_to_map(m)["StudyInstanceUID"].clone()));
    let theirs = set(orthanc
        .find("Study", json!({}))
        .iter()
        .map(|s| s["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().to_string()));
    assert_eq!(ours, theirs);
    assert!(ours.len() >= 3, "the corpus has several studies: {ours:?}");

    // Keys: modality, patient ID, study date range, each as Orthanc's own search answers.
    let by_modality = net::find(
        &p,
        &options(),
        Model::StudyRoot,
        Level::Study,
        &QueryKeys { modality: Some("CT".into()), ..Default::default() },
    )
    .unwrap();
    let expected = set(orthanc
        .find("Study", json!({ "ModalitiesInStudy": "CT" }))
        .iter()
        .map(|s| s["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().to_string()));
    assert_eq!(set(by_modality.iter().map(|m| match_to_map(m)["StudyInstanceUID"].clone())), expected);
    assert!(!expected.is_empty() && expected.len() < theirs.len(), "the CT filter selects some studies only");

    let mr_study = &orthanc.find("Series", json!({ "Modality": "MR" }))[0];
    let patient = orthanc.get_json(&format!("/series/{}/patient", mr_study["ID"].as_str().unwrap()));
    let patient_id = patient["MainDicomTags"]["PatientID"].as_str().unwrap().to_string();
    let by_patient = net::find(
        &p,
        &options(),
        Model::StudyRoot,
        Level::Study,
        &QueryKeys { patient_id: Some(patient_id.clone()), ..Default::default() },
    )
    .unwrap();
    assert!(!by_patient.is_empty());
    assert!(by_patient.iter().all(|m| match_to_map(m)["PatientID"] == patient_id));

    let dates = orthanc.find("Study", json!({}));
    let date = dates[0]["MainDicomTags"]["StudyDate"].as_str().unwrap().to_string();
    let range = format!("{date}-{date}");
    let by_date = net::find(
        &p,
        &options(),
        Model::StudyRoot,
        Level::Study,
        &QueryKeys { study_date: Some(range.clone()), ..Default::default() },
    )
    .unwrap();
    let expected = set(orthanc
        .find("Study", json!({ "StudyDate": range }))
        .iter()
        .map(|s| s["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().to_string()));
    assert_eq!(set(by_date.iter().map(|m| match_to_map(m)["StudyInstanceUID"].clone())), expected);

    // Series of each study, as Orthanc lists them.
    for study in orthanc.find("Study", json!({})) {
        let study_uid = study["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().to_string();
        let keys = QueryKeys { study_uid: Some(study_uid.clone()), ..Default::default() };
        let series = net::find(&p, &options(), Model::StudyRoot, Level::Series, &keys).unwrap();
        let theirs = orthanc.get_json(&format!("/studies/{}/series", study["ID"].as_str().unwrap()));
        let theirs = set(theirs
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["MainDicomTags"]["SeriesInstanceUID"].as_str().unwrap().to_string()));
        assert_eq!(
            set(series.iter().map(|m| match_to_map(m)["SeriesInstanceUID"].clone())),
            theirs,
            "study {study_uid}"
        );
    }

    // Image level: the 20 MR slices.
    let mr = orthanc.find("Series", json!({ "Modality": "MR" }));
    let twenty = mr.iter().find(|s| s["Instances"].as_array().unwrap().len() == 20).expect("the MR series");
    let series_uid = twenty["MainDicomTags"]["SeriesInstanceUID"].as_str().unwrap().to_string();
    let study = orthanc.get_json(&format!("/series/{}/study", twenty["ID"].as_str().unwrap()));
    let keys = QueryKeys {
        study_uid: Some(study["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().into()),
        series_uid: Some(series_uid),
        ..Default::default()
    };
    let images = net::find(&p, &options(), Model::StudyRoot, Level::Image, &keys).unwrap();
    assert_eq!(images.len(), 20);
}

#[test]
fn patient_root_lists_patients() {
    let orthanc = orthanc_with_corpus();
    let patients =
        net::find(&peer(&orthanc), &options(), Model::PatientRoot, Level::Patient, &QueryKeys::default()).unwrap();
    let ours = set(patients.iter().map(|m| match_to_map(m)["PatientID"].clone()));
    let theirs = set(orthanc
        .find("Patient", json!({}))
        .iter()
        .map(|p| p["MainDicomTags"]["PatientID"].as_str().unwrap().to_string()));
    assert_eq!(ours, theirs);
    // Studies of one patient through Patient Root.
    let id = ours.iter().next().unwrap().clone();
    let studies = net::find(
        &peer(&orthanc),
        &options(),
        Model::PatientRoot,
        Level::Study,
        &QueryKeys { patient_id: Some(id.clone()), ..Default::default() },
    )
    .unwrap();
    let expected = orthanc.find("Study", json!({ "PatientID": id }));
    assert_eq!(studies.len(), expected.len());
}

#[test]
fn cli_echo_and_find_json() {
    let orthanc = orthanc_with_corpus();
    let melo = env!("CARGO_BIN_EXE_melo");
    let out = Command::new(melo).args(["net", "echo", &orthanc.peer()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("C-ECHO OK"));

    let wrong = format!("WRONG@127.0.0.1:{}", orthanc.dicom_port);
    let out = Command::new(melo).args(["net", "echo", &wrong, "--aet", "MELO"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the association") && err.lines().count() == 1, "{err}");

    let out = Command::new(melo).args(["net", "find", &orthanc.peer(), "--modality", "MR", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let matches: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let expected = orthanc.find("Study", json!({ "ModalitiesInStudy": "MR" }));
    assert_eq!(matches.len(), expected.len());
    assert!(matches.iter().all(|m| m["StudyInstanceUID"].as_str().is_some_and(|u| !u.is_empty())));

    // A bad key is refused before any connection.
    let out = Command::new(melo).args(["net", "find", &orthanc.peer(), "--study-date", "2001-01-01"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not YYYYMMDD"));
}
