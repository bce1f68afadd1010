//! DICOMweb against Orthanc's DICOMweb plugin: QIDO-RS answers agree with Orthanc's index,
//! WADO-RS brings a series into the study store with its pixels, STOW-RS objects appear in
//! Orthanc; an unreachable service is one clear sentence.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use melo::net::dicomweb::{json_to_map, DicomWebClient};
use melo::net::QueryKeys;
use melo::store::{split_part10, StudyStore};
use serde_json::json;
use support::orthanc::{Modality, Orthanc};

fn client(orthanc: &Orthanc) -> DicomWebClient {
    DicomWebClient::new(&orthanc.url("/dicom-web"), Duration::from_secs(30)).unwrap()
}

#[test]
fn qido_and_wado_bring_a_series_into_the_store() {
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", 1)]);
    let files = support::mr_series();
    let uploads = orthanc.upload_all(&files);
    orthanc.upload(&support::fixture("CT_small.dcm"));
    let web = client(&orthanc);

    let all = web.search_studies(&QueryKeys::default()).unwrap();
    let theirs: BTreeSet<String> = orthanc
        .find("Study", json!({}))
        .iter()
        .map(|s| s["MainDicomTags"]["StudyInstanceUID"].as_str().unwrap().to_string())
        .collect();
    let ours: BTreeSet<String> = all.iter().map(|s| json_to_map(s)["StudyInstanceUID"].clone()).collect();
    assert_eq!(ours, theirs);

    let mr = web.search_studies(&QueryKeys { modality: Some("MR".into()), ..Default::default() }).unwrap();
    assert_eq!(mr.len(), 1);
    let study_uid = json_to_map(&mr[0])["StudyInstanceUID"].clone();
    let series = web.search_series(&study_uid).unwrap();
    assert_eq!(series.len(), 1);
    let series_uid = json_to_map(&series[0])["SeriesInstanceUID"].clone();
    let expected = orthanc.get_json(&format!("/series/{}", uploads[0]["ParentSeries"].as_str().unwrap()));
    assert_eq!(series_uid, expected["MainDicomTags"]["SeriesInstanceUID"].as_str().unwrap());
    assert_eq!(web.search_instances(&study_uid, &series_uid).unwrap().len(), 20);

    let dir = tempfile::tempdir().unwrap();
    let store = StudyStore::open(dir.path()).unwrap();
    let stored = web.retrieve_series(&study_uid, &series_uid, &store).unwrap();
    assert_eq!(stored.len(), 20);
    assert_eq!(store.instances(&series_uid).unwrap().len(), 20);
    for original in &files {
        let bytes = std::fs::read(original).unwrap();
        let uid = split_part10(&bytes).unwrap().meta.media_storage_sop_instance_uid().to_string();
        let copy = stored.iter().find(|s| s.sop_instance_uid == uid).expect("retrieved");
        let a = melo::image::load_image(&copy.path, &Default::default()).unwrap();
        let b = melo::image::load_image(original, &Default::default()).unwrap();
        assert!(a.values == b.values, "{}", original.display());
    }
}

#[test]
fn stow_sends_files_and_bad_urls_are_explained() {
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", 1)]);
    let files = vec![support::fixture("CT_small.dcm"), support::repo().join("assets/samples/ct/693_J2KR.dcm")];
    let answer = client(&orthanc).store_files(&files).unwrap();
    // PS3.18 answer: Referenced SOP Sequence (0008,1199) lists what was stored.
    let referenced = answer["00081199"]["Value"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(referenced, 2, "{answer}");
    assert_eq!(orthanc.instance_uids().len(), 2);

    // A corrupt file is refused before anything is sent.
    let err = client(&orthanc).store_files(&[support::fixture("CT_small_truncated.dcm")]).unwrap_err().to_string();
    assert!(err.contains("CT_small_truncated.dcm") && err.contains("not a valid DICOM data set"), "{err}");
    assert_eq!(orthanc.instance_uids().len(), 2);

    let closed = format!("http://127.0.0.1:{}/dicom-web", support::free_port());
    let err = DicomWebClient::new(&closed, Duration::from_secs(5))
        .unwrap()
        .search_studies(&QueryKeys::default())
        .unwrap_err();
    assert!(err.to_string().starts_with("cannot connect to http://127.0.0.1:"), "{err}");
    let err = DicomWebClient::new("https://pacs.example/dicom-web", Duration::from_secs(5)).err().unwrap().to_string();
    assert!(err.contains("not supported by this build"), "{err}");
}

#[test]
fn cli_speaks_dicomweb_urls() {
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", 1)]);
    orthanc.upload_all(&support::mr_series());
    let url = orthanc.url("/dicom-web");
    let melo = env!("CARGO_BIN_EXE_melo");
    let run = |args: &[&str]| std::process::Command::new(melo).args(args).output().unwrap();

    let out = run(&["net", "echo", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["net", "find", &url, "--modality", "MR", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let found: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.len(), 1);
    let study = found[0]["StudyInstanceUID"].as_str().unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let out = run(&["net", "get", &url, "--study-uid", &study, "--store", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(StudyStore::open(dir.path()).unwrap().instance_count().unwrap(), 20);

    let ct = support::fixture("CT_small.dcm");
    let out = run(&["net", "store", &url, ct.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(orthanc.instance_uids().len(), 21);

    // C-MOVE has no DICOMweb form: refused by the argument parser with the usage message.
    let out = run(&["net", "move", &url, "--study-uid", &study]);
    assert_eq!(out.status.code(), Some(2));
}
