//! Query/retrieve on our SCP (issue 14): DCMTK's findscu searches the study store at every
//! level and gets what the store's index holds; DCMTK's movescu has the store send a series to
//! a DCMTK storescp that `melo net listen --destination` names; an unknown destination is
//! answered 0xA801 and nothing moves.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use melo::net::{Peer, ScpConfig, ScpHandle, StoreScp};
use melo::store::{split_part10, StudyStore};
use support::dcmtk;

/// A store holding the MR series (20 slices) and three single-instance studies, served by
/// our SCP to FINDSCU and MOVESCU.
struct Served {
    store: Arc<StudyStore>,
    port: u16,
    _dir: tempfile::TempDir,
    _handle: ScpHandle,
}

fn corpus() -> Vec<PathBuf> {
    let mut files = support::mr_series();
    files.extend(["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle_16bit.dcm"].map(support::fixture));
    files
}

fn serve(destinations: Vec<Peer>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(StudyStore::open(&dir.path().join("store")).unwrap());
    for file in corpus() {
        store.import_file(&file, "TEST").unwrap();
    }
    let config = ScpConfig {
        allowed_callers: Some(vec!["FINDSCU".into(), "MOVESCU".into()]),
        move_destinations: destinations,
        timeout: Duration::from_secs(20),
        ..ScpConfig::new("MELO")
    };
    let scp = StoreScp::bind("127.0.0.1:0", config, store.clone()).unwrap();
    let port = scp.local_addr().port();
    let handle = scp.spawn(Arc::new(|_| {}));
    Served { store, port, _dir: dir, _handle: handle }
}

/// `findscu` with `keys` (study root unless `-P` is among them); the matches it extracted,
/// each as keyword → value.
fn findscu(port: u16, keys: &[&str]) -> Vec<BTreeMap<String, String>> {
    let out_dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(dcmtk::program("findscu"));
    command.args(["-to", "20", "-ta", "20", "-td", "20", "-aet", "FINDSCU", "-aec", "MELO", "-X", "-od"]);
    command.arg(out_dir.path());
    if !keys.contains(&"-P") {
        command.arg("-S");
    }
    for k in keys {
        if *k == "-P" {
            command.arg("-P");
        } else {
            command.args(["-k", k]);
        }
    }
    command.args(["127.0.0.1", &port.to_string()]);
    let out = dcmtk::run(command);
    assert!(out.status.success(), "findscu {keys:?} failed:\n{}", dcmtk::text(&out));
    let mut files: Vec<PathBuf> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let obj = dicom_object::OpenFileOptions::new().open_file(f).unwrap();
            melo::net::query::match_to_map(&obj)
        })
        .collect()
}

fn column(matches: &[BTreeMap<String, String>], keyword: &str) -> BTreeSet<String> {
    matches.iter().map(|m| m.get(keyword).cloned().unwrap_or_default()).collect()
}

#[test]
fn findscu_gets_what_the_store_holds_at_every_level() {
    let served = serve(Vec::new());
    let studies = served.store.studies().unwrap();
    assert_eq!(studies.len(), 4);

    // Study level, every study, with counts.
    let found = findscu(
        served.port,
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "PatientID",
            "PatientName",
            "StudyDate",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "StudyID",
        ],
    );
    assert_eq!(column(&found, "StudyInstanceUID"), studies.iter().map(|s| s.study_uid.clone()).collect());
    for study in &studies {
        let m = found.iter().find(|m| m["StudyInstanceUID"] == study.study_uid).unwrap();
        assert_eq!(m["PatientID"], study.patient_id);
        assert_eq!(m["PatientName"], study.patient_name);
        assert_eq!(m["StudyDate"], study.study_date);
        assert_eq!(m["NumberOfStudyRelatedSeries"], study.series.to_string());
        assert_eq!(m["NumberOfStudyRelatedInstances"], study.instances.to_string());
        assert_eq!(m["QueryRetrieveLevel"], "STUDY");
        // Asked for, not indexed: returned empty.
        assert_eq!(m["StudyID"], "");
    }
    let mr_study = &found.iter().find(|m| m["NumberOfStudyRelatedInstances"] == "20").unwrap()["StudyInstanceUID"];

    // Matching keys: modality, date range, wildcard name, UID list.
    let mr = findscu(served.port, &["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "ModalitiesInStudy=MR"]);
    let expected_mr: BTreeSet<String> = studies
        .iter()
        .filter(|s| served.store.series(&s.study_uid).unwrap().iter().any(|r| r.modality == "MR"))
        .map(|s| s.study_uid.clone())
        .collect();
    assert_eq!(column(&mr, "StudyInstanceUID"), expected_mr);
    assert_eq!(expected_mr.len(), 2);
    let in_2004 =
        findscu(served.port, &["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "StudyDate=20040101-20041231"]);
    let expected_2004: BTreeSet<String> =
        studies.iter().filter(|s| s.study_date.starts_with("2004")).map(|s| s.study_uid.clone()).collect();
    assert_eq!(column(&in_2004, "StudyInstanceUID"), expected_2004);
    assert_eq!(expected_2004.len(), 2);
    let named = findscu(served.port, &["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName=compressed*"]);
    assert_eq!(named.len(), 2, "CompressedSamples^CT1 and ^MR1, case-insensitively: {named:?}");
    let listed: Vec<String> = studies.iter().take(2).map(|s| s.study_uid.clone()).collect();
    let by_list =
        findscu(served.port, &["QueryRetrieveLevel=STUDY", &format!("StudyInstanceUID={}", listed.join("\\"))]);
    assert_eq!(column(&by_list, "StudyInstanceUID"), listed.iter().cloned().collect());
    let none = findscu(served.port, &["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID=NOBODY"]);
    assert!(none.is_empty());

    // Series level within the MR study.
    let series = findscu(
        served.port,
        &[
            "QueryRetrieveLevel=SERIES",
            &format!("StudyInstanceUID={mr_study}"),
            "SeriesInstanceUID",
            "Modality",
            "SeriesNumber",
            "NumberOfSeriesRelatedInstances",
        ],
    );
    let stored_series = served.store.series(mr_study).unwrap();
    assert_eq!(series.len(), stored_series.len());
    assert_eq!(series[0]["SeriesInstanceUID"], stored_series[0].series_uid);
    assert_eq!(series[0]["Modality"], "MR");
    assert_eq!(series[0]["NumberOfSeriesRelatedInstances"], "20");

    // Image level: every instance of the series, with its number.
    let series_uid = &stored_series[0].series_uid;
    let images = findscu(
        served.port,
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={mr_study}"),
            &format!("SeriesInstanceUID={series_uid}"),
            "SOPInstanceUID",
            "SOPClassUID",
            "InstanceNumber",
        ],
    );
    let stored = served.store.instances(series_uid).unwrap();
    assert_eq!(column(&images, "SOPInstanceUID"), stored.iter().map(|i| i.sop_instance_uid.clone()).collect());
    for i in &stored {
        let m = images.iter().find(|m| m["SOPInstanceUID"] == i.sop_instance_uid).unwrap();
        assert_eq!(m["InstanceNumber"], i.number.unwrap().to_string());
        assert_eq!(m["SOPClassUID"], i.sop_class_uid);
    }
    let one = findscu(
        served.port,
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={mr_study}"),
            &format!("SeriesInstanceUID={series_uid}"),
            "SOPInstanceUID",
            "InstanceNumber=7",
        ],
    );
    assert_eq!(one.len(), 1);

    // Patient Root, patient level.
    let patients =
        findscu(served.port, &["-P", "QueryRetrieveLevel=PATIENT", "PatientID", "NumberOfPatientRelatedStudies"]);
    assert_eq!(column(&patients, "PatientID"), studies.iter().map(|s| s.patient_id.clone()).collect());
    assert!(patients.iter().all(|p| p["NumberOfPatientRelatedStudies"] == "1"), "{patients:?}");

    // Study Root has no patient level: refused with a failure status, not an empty answer.
    let mut command = Command::new(dcmtk::program("findscu"));
    command.args([
        "-v",
        "-S",
        "-aet",
        "FINDSCU",
        "-aec",
        "MELO",
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID",
    ]);
    command.args(["127.0.0.1", &served.port.to_string()]);
    let said = dcmtk::text(&dcmtk::run(command));
    assert!(said.contains("Final Find Response (Error: DataSetDoesNotMatchSOPClass)"), "{said}");
}

/// DCMTK's storescp as a move destination, writing what it receives into `dir`.
struct StoreScpProcess {
    child: Child,
    port: u16,
}

impl StoreScpProcess {
    fn start(dir: &Path) -> StoreScpProcess {
        let port = support::free_port();
        let child = Command::new(dcmtk::program("storescp"))
            .args(["-aet", "STORESCP", "-od"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Owned at once: killed (on drop) whichever way this ends.
        let process = StoreScpProcess { child, port };
        assert!(dcmtk::wait_for_echo("MELO", "STORESCP", port), "storescp did not answer C-ECHO");
        process
    }
}

impl Drop for StoreScpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn movescu(port: u16, destination: &str, keys: &[String]) -> std::process::Output {
    let mut command = Command::new(dcmtk::program("movescu"));
    command.args([
        "-v",
        "-S",
        "-to",
        "20",
        "-ta",
        "20",
        "-td",
        "60",
        "-aet",
        "MOVESCU",
        "-aec",
        "MELO",
        "-aem",
        destination,
    ]);
    for k in keys {
        command.args(["-k", k]);
    }
    command.args(["127.0.0.1", &port.to_string()]);
    dcmtk::run(command)
}

fn received(dir: &Path) -> BTreeMap<String, PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let uid =
                split_part10(&bytes).unwrap().meta.media_storage_sop_instance_uid().trim_end_matches('\0').to_string();
            (uid, p)
        })
        .collect()
}

#[test]
fn movescu_has_melo_net_listen_send_a_series_to_a_configured_storescp() {
    let inbox = tempfile::tempdir().unwrap();
    let destination = StoreScpProcess::start(inbox.path());
    // The store, filled, then served by the command line with the new options.
    let dir = tempfile::tempdir().unwrap();
    let (study_uid, series_uid, expected) = {
        let store = StudyStore::open(dir.path()).unwrap();
        for file in corpus() {
            store.import_file(&file, "TEST").unwrap();
        }
        let study = store.studies().unwrap().into_iter().find(|s| s.instances == 20).unwrap();
        let series = store.series(&study.study_uid).unwrap().remove(0);
        let expected: BTreeMap<String, PathBuf> =
            store.instances(&series.series_uid).unwrap().into_iter().map(|i| (i.sop_instance_uid, i.path)).collect();
        (study.study_uid, series.series_uid, expected)
    };
    let port = support::free_port();
    let mut listen = Command::new(env!("CARGO_BIN_EXE_melo"))
        .args(["net", "listen", "--bind", "127.0.0.1", "--port", &port.to_string(), "--allow", "MOVESCU"])
        .args(["--allow", "MELO", "--max-associations", "4"])
        .args(["--destination", &format!("STORESCP@127.0.0.1:{}", destination.port), "--store"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let up = dcmtk::wait_for_echo("MOVESCU", "MELO", port);

    let keys = vec![
        "QueryRetrieveLevel=SERIES".to_string(),
        format!("StudyInstanceUID={study_uid}"),
        format!("SeriesInstanceUID={series_uid}"),
    ];
    let moved = movescu(port, "STORESCP", &keys);
    let unknown = movescu(port, "NOBODY", &keys);
    let _ = listen.kill();
    let _ = listen.wait();
    assert!(up, "melo net listen did not answer C-ECHO");
    assert!(moved.status.success(), "movescu failed:\n{}", dcmtk::text(&moved));

    let got = received(inbox.path());
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (uid, file) in &got {
        let a = melo::image::load_image(file, &Default::default()).unwrap();
        let b = melo::image::load_image(&expected[uid], &Default::default()).unwrap();
        assert!(a.values == b.values, "{uid}: other pixels at the destination");
    }
    // One pending response per instance, then success.
    let said = dcmtk::text(&moved);
    assert_eq!(said.matches("Received Move Response").count(), 20, "{said}");
    assert!(said.contains("Received Final Move Response (Success)"), "{said}");

    // A destination the SCP was not given: 0xA801 (DCMTK names it), and nothing more arrives.
    let said = dcmtk::text(&unknown);
    assert!(said.contains("(Refused: MoveDestinationUnknown)"), "{said}");
    assert_eq!(received(inbox.path()).len(), 20);
}

#[test]
fn our_scu_finds_and_moves_through_our_scp_to_a_second_scp_of_ours() {
    // The receiving node: a second store behind an SCP of ours, called MELO2.
    let inbox_dir = tempfile::tempdir().unwrap();
    let inbox = Arc::new(StudyStore::open(inbox_dir.path()).unwrap());
    let config = ScpConfig { allowed_callers: Some(vec!["MELO".into()]), ..ScpConfig::new("MELO2") };
    let receiver = StoreScp::bind("127.0.0.1:0", config, inbox.clone()).unwrap();
    let destination = Peer::new("MELO2", "127.0.0.1", receiver.local_addr().port()).unwrap();
    let _receiver = receiver.spawn(Arc::new(|_| {}));
    let served = serve(vec![destination]);
    let peer = Peer::new("MELO", "127.0.0.1", served.port).unwrap();
    let options =
        melo::net::ScuOptions { calling_aet: "MOVESCU".into(), timeout: Duration::from_secs(20), ..Default::default() };

    let studies = melo::net::find(
        &peer,
        &options,
        melo::net::Model::StudyRoot,
        melo::net::Level::Study,
        &melo::net::QueryKeys { modality: Some("MR".into()), ..Default::default() },
    )
    .unwrap();
    assert_eq!(studies.len(), 2);
    let mr = served.store.studies().unwrap().into_iter().find(|s| s.instances == 20).unwrap();
    let series_uid = served.store.series(&mr.study_uid).unwrap().remove(0).series_uid;
    let keys = melo::net::QueryKeys {
        study_uid: Some(mr.study_uid.clone()),
        series_uid: Some(series_uid.clone()),
        ..Default::default()
    };
    let mut pending = 0;
    let report = melo::net::move_to(
        &peer,
        &options,
        melo::net::Model::StudyRoot,
        melo::net::Level::Series,
        &keys,
        "MELO2",
        &mut |_| {
            pending += 1;
            true
        },
    )
    .unwrap();
    assert_eq!((report.sub_operations.completed, report.sub_operations.failed), (20, 0), "{report:?}");
    assert_eq!(pending, 20, "one pending response per instance");
    let sent = served.store.instances(&series_uid).unwrap();
    let got = inbox.instances(&series_uid).unwrap();
    assert_eq!(
        got.iter().map(|i| &i.sop_instance_uid).collect::<Vec<_>>(),
        sent.iter().map(|i| &i.sop_instance_uid).collect::<Vec<_>>()
    );

    // A destination that is not configured: the C-MOVE fails with 0xA801, named.
    let err = melo::net::move_to(
        &peer,
        &options,
        melo::net::Model::StudyRoot,
        melo::net::Level::Series,
        &keys,
        "ELSEWHERE",
        &mut |_| true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("0xA801") && err.contains("move destination unknown"), "{err}");
}
