//! C-GET and C-MOVE of real series from a real Orthanc into the local study store: every file
//! arrives with the pixels that were uploaded, the SQLite index lists it, and the index
//! survives reopening the store.
//!
//! Files are compared by decoded pixel values, not bytes: Orthanc re-serialises data sets when
//! it sends them (the MR samples' space-padded empty values and 2.5 MB of trailing padding do
//! not survive DCMTK's writer), so byte equality is not what a PACS gives back.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use melo::net::{self, Level, Model, Peer, QueryKeys, ScpConfig, ScpEvent, ScuOptions, StoreScp};
use melo::store::{split_part10, StudyStore, INDEX_FILE};
use serde_json::json;
use support::orthanc::{Modality, Orthanc, ORTHANC_AET};

fn options() -> ScuOptions {
    ScuOptions { calling_aet: "MELO".into(), timeout: Duration::from_secs(30), ..Default::default() }
}

/// SOP Instance UID → path of the uploaded files.
fn by_uid(files: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            let p = split_part10(&bytes).unwrap();
            (p.meta.media_storage_sop_instance_uid().to_string(), f.clone())
        })
        .collect()
}

/// Both files decode to the same image.
fn assert_same_pixels(stored: &std::path::Path, original: &std::path::Path) {
    let a = melo::image::load_image(stored, &Default::default()).unwrap();
    let b = melo::image::load_image(original, &Default::default()).unwrap();
    assert_eq!((a.rows, a.cols, a.frames, a.channels), (b.rows, b.cols, b.frames, b.channels));
    assert!(a.values == b.values, "{} decodes to other pixel values than {}", stored.display(), original.display());
}

/// Study and series UIDs of the uploaded MR series.
fn mr_keys(orthanc: &Orthanc, upload: &serde_json::Value) -> QueryKeys {
    let series = orthanc.get_json(&format!("/series/{}", upload["ParentSeries"].as_str().unwrap()));
    let study = orthanc.get_json(&format!("/studies/{}", upload["ParentStudy"].as_str().unwrap()));
    QueryKeys {
        study_uid: Some(study["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().into()),
        series_uid: Some(series["MainDicomTags"]["SeriesInstanceUID"].as_str().unwrap().into()),
        ..Default::default()
    }
}

/// Every uploaded file is in the store with the same pixels, and indexed.
fn assert_store_holds(store: &StudyStore, series_uid: &str, expected: &BTreeMap<String, PathBuf>) {
    let indexed = store.instances(series_uid).unwrap();
    assert_eq!(indexed.len(), expected.len(), "indexed instances");
    for record in &indexed {
        assert!(record.path.starts_with(store.root()));
        let bytes = std::fs::read(&record.path).unwrap();
        assert_eq!(record.size, bytes.len() as u64);
        let stored = split_part10(&bytes).unwrap();
        assert_eq!(stored.meta.media_storage_sop_instance_uid(), record.sop_instance_uid);
        assert_same_pixels(&record.path, &expected[&record.sop_instance_uid]);
    }
}

#[test]
fn c_get_of_a_series_lands_in_the_store_with_its_pixels() {
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", 1)]);
    let files = support::mr_series();
    let uploads = orthanc.upload_all(&files);
    orthanc.upload(&support::fixture("CT_small.dcm")); // another study, must not come along
    let keys = mr_keys(&orthanc, &uploads[0]);
    let dir = tempfile::tempdir().unwrap();
    let store = StudyStore::open(dir.path()).unwrap();
    let peer: Peer = orthanc.peer().parse().unwrap();

    let mut calls = 0;
    let report = net::get(&peer, &options(), Model::StudyRoot, Level::Series, &keys, &store, &mut |p| {
        calls += 1;
        assert!(p.stored <= 20);
        true
    })
    .unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    assert_eq!(report.stored.len(), 20);
    assert_eq!(report.sub_operations.completed, 20);
    assert_eq!(report.sub_operations.failed, 0);
    assert!(calls >= 20, "progress after each instance");
    assert_store_holds(&store, keys.series_uid.as_deref().unwrap(), &by_uid(&files));
    assert_eq!(store.instance_count().unwrap(), 20);

    // The index survives a restart; studies list the MR study with its one series.
    drop(store);
    let reopened = StudyStore::open(dir.path()).unwrap();
    assert_eq!(reopened.instance_count().unwrap(), 20);
    let studies = reopened.studies().unwrap();
    assert_eq!(studies.len(), 1);
    assert_eq!(studies[0].study_uid, keys.study_uid.clone().unwrap());
    assert_eq!((studies[0].series, studies[0].instances), (1, 20));
    assert!(dir.path().join(INDEX_FILE).exists());

    // Retrieving again replaces the files, the index still has 20 rows.
    let again = net::get(&peer, &options(), Model::StudyRoot, Level::Series, &keys, &reopened, &mut |_| true).unwrap();
    assert!(again.stored.iter().all(|s| s.replaced));
    assert_eq!(reopened.instance_count().unwrap(), 20);
}

#[test]
fn c_get_keeps_compressed_files_and_patient_root_works() {
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", 1)]);
    let file = support::repo().join("assets/samples/ct/693_J2KR.dcm");
    let upload = orthanc.upload(&file);
    let patient = orthanc.get_json(&format!("/studies/{}/patient", upload["ParentStudy"].as_str().unwrap()));
    let study = orthanc.get_json(&format!("/studies/{}", upload["ParentStudy"].as_str().unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let store = StudyStore::open(dir.path()).unwrap();
    let keys = QueryKeys {
        patient_id: Some(patient["MainDicomTags"]["PatientID"].as_str().unwrap().into()),
        study_uid: Some(study["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().into()),
        ..Default::default()
    };
    let report = net::get(
        &orthanc.peer().parse().unwrap(),
        &options(),
        Model::PatientRoot,
        Level::Study,
        &keys,
        &store,
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(report.stored.len(), 1);
    // JPEG 2000 lossless was proposed, so Orthanc sends the file as stored, not decompressed.
    assert_eq!(report.stored[0].transfer_syntax, "1.2.840.10008.1.2.4.90");
    assert_same_pixels(&report.stored[0].path, &file);
}

#[test]
fn c_move_of_a_series_to_our_scp() {
    // Our SCP first, on a free port, so that Orthanc can be told where MELO listens.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(StudyStore::open(dir.path()).unwrap());
    let config = ScpConfig { allowed_callers: Some(vec![ORTHANC_AET.into()]), ..ScpConfig::new("MELO") };
    let scp = StoreScp::bind("127.0.0.1:0", config, store.clone()).unwrap();
    let port = scp.local_addr().port();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let _running = scp.spawn(Arc::new(move |e: ScpEvent| sink.lock().unwrap().push(e)));

    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", port)]);
    let files = support::mr_series();
    let uploads = orthanc.upload_all(&files);
    let keys = mr_keys(&orthanc, &uploads[0]);
    let peer: Peer = orthanc.peer().parse().unwrap();

    let report =
        net::move_to(&peer, &options(), Model::StudyRoot, Level::Series, &keys, "MELO", &mut |_| true).unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    assert_eq!(report.sub_operations.completed, 20);
    // Orthanc answers the C-MOVE once its sub-operations are acknowledged, and we acknowledge
    // a C-STORE only after the file is renamed into place and indexed.
    assert_store_holds(&store, keys.series_uid.as_deref().unwrap(), &by_uid(&files));
    let stored = events.lock().unwrap().iter().filter(|e| matches!(e, ScpEvent::Stored { .. })).count();
    assert_eq!(stored, 20);

    // A move to an AE title Orthanc does not know fails with its status (0xC000 from Orthanc
    // 1.10; the standard's 0xA801 from others), nothing more arrives.
    let err = net::move_to(&peer, &options(), Model::StudyRoot, Level::Series, &keys, "NOBODY", &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("C-MOVE failed: status 0x"), "{err}");
    assert_eq!(store.instance_count().unwrap(), 20);

    // Orthanc's view of the retrieved data agrees (20 instances in that series).
    let series = orthanc.find("Series", json!({ "SeriesInstanceUID": keys.series_uid.unwrap() }));
    assert_eq!(series[0]["Instances"].as_array().unwrap().len(), 20);
}

#[test]
fn cli_get_and_move() {
    let dir = tempfile::tempdir().unwrap();
    let scp_port = support::free_port();
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", scp_port)]);
    let uploads = orthanc.upload_all(&support::mr_series());
    let keys = mr_keys(&orthanc, &uploads[0]);
    let melo = env!("CARGO_BIN_EXE_melo");
    let (study, series) = (keys.study_uid.clone().unwrap(), keys.series_uid.clone().unwrap());

    let get_dir = dir.path().join("get");
    let out = std::process::Command::new(melo)
        .args(["net", "get", &orthanc.peer(), "--study-uid", &study, "--series-uid", &series, "--store"])
        .arg(&get_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("20 completed, 0 failed"));
    assert_eq!(StudyStore::open(&get_dir).unwrap().instance_count().unwrap(), 20);

    let move_dir = dir.path().join("move");
    let out = std::process::Command::new(melo)
        .args(["net", "move", &orthanc.peer(), "--study-uid", &study, "--series-uid", &series, "--port"])
        .arg(scp_port.to_string())
        .arg("--store")
        .arg(&move_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(StudyStore::open(&move_dir).unwrap().instance_count().unwrap(), 20);
}

#[test]
fn a_cancelled_c_get_stops_and_keeps_only_complete_instances() {
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", 1)]);
    let uploads = orthanc.upload_all(&support::mr_series());
    let keys = mr_keys(&orthanc, &uploads[0]);
    let dir = tempfile::tempdir().unwrap();
    let store = StudyStore::open(dir.path()).unwrap();
    let peer: Peer = orthanc.peer().parse().unwrap();
    // Cancel as soon as the first instance is in.
    let err = net::get(&peer, &options(), Model::StudyRoot, Level::Series, &keys, &store, &mut |p| p.stored == 0)
        .unwrap_err();
    assert!(matches!(err, net::Error::Cancelled), "{err}");
    let n = store.instance_count().unwrap();
    assert!((1..20).contains(&n), "{n} instances kept");
    // Every indexed file is complete and readable.
    for record in store.instances(keys.series_uid.as_deref().unwrap()).unwrap() {
        melo::image::load_image(&record.path, &Default::default()).unwrap();
    }
    // The peer is still usable afterwards.
    net::echo(&peer, &options()).unwrap();
}

#[test]
fn bench_retrieve_times_the_series_into_the_viewer_both_ways() {
    let scp_port = support::free_port();
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", scp_port)]);
    let uploads = orthanc.upload_all(&support::mr_series());
    let keys = mr_keys(&orthanc, &uploads[0]);
    let (study, series) = (keys.study_uid.unwrap(), keys.series_uid.unwrap());
    for via in [vec!["--via", "get"], vec!["--via", "move", "--port", &scp_port.to_string()]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_melo"))
            .args(["net", "bench-retrieve", &orthanc.peer(), "--study-uid", &study, "--series-uid", &series])
            .args(&via)
            .args(["--runs", "2", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{via:?}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let runs = report["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        for run in runs {
            assert_eq!(run["instances"], 20, "{run}");
            let (stored, first, all) = (
                run["retrieved_s"].as_f64().unwrap(),
                run["first_slice_s"].as_f64().unwrap(),
                run["all_slices_s"].as_f64().unwrap(),
            );
            assert!(0.0 < stored && stored <= first && first <= all, "{run}");
        }
        assert!(report["median"]["all_slices_s"].as_f64().unwrap() > 0.0);
    }
    // --via move without the port our SCP is to listen on is refused before anything runs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_melo"))
        .args(["net", "bench-retrieve", &orthanc.peer(), "--study-uid", &study, "--series-uid", &series])
        .args(["--via", "move"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--via move needs --port"));
}
