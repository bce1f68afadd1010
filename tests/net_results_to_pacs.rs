//! Diagnosis results back to the PACS (issue 14, item 5) against a real Orthanc with its
//! DICOMweb plugin: the SR and the Secondary Capture that `melo predict --sr/--sc` writes go
//! in by STOW-RS, QIDO-RS finds them in the source's study, WADO-RS gives back the very bytes
//! sent. A corrupt result sent by C-STORE is refused with a clear message, and Orthanc holds
//! nothing of it, whether our SCU or Orthanc itself catches it.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_ul::association::ClientAssociationOptions;
use melo::net::dicomweb::{json_to_map, DicomWebClient};
use melo::net::dimse::{field, Command as Dimse, Link};
use melo::net::QueryKeys;
use melo::store::{split_part10, StudyStore};
use support::orthanc::{Orthanc, ORTHANC_AET};
use support::repo;

const SCAN: &str = "assets/samples/cr_chest/RG1_J2KR.dcm";

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `melo predict SCAN --task pneumonia --sr SR --sc SC` with the shipped adapters.
fn results() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (sr, sc) = (dir.path().join("result_sr.dcm"), dir.path().join("result_sc.dcm"));
    let out = Command::new(env!("CARGO_BIN_EXE_melo"))
        .arg("predict")
        .arg(repo().join(SCAN))
        .args(["--task", "pneumonia", "--sr"])
        .arg(&sr)
        .arg("--sc")
        .arg(&sc)
        .arg("--adapters")
        .arg(repo().join("adapters"))
        .arg("--backbone")
        .arg(repo().join("assets/backbone"))
        .output()
        .unwrap();
    assert!(out.status.success(), "melo predict failed: {}", text(&out));
    (dir, sr, sc)
}

/// (SOP Instance UID, Series Instance UID, Study Instance UID, Modality) of a file.
fn identity(file: &Path) -> (String, String, String, String) {
    let obj = dicom_object::open_file(file).unwrap();
    let get = |tag| obj.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string();
    (get(tags::SOP_INSTANCE_UID), get(tags::SERIES_INSTANCE_UID), get(tags::STUDY_INSTANCE_UID), get(tags::MODALITY))
}

fn web(orthanc: &Orthanc) -> DicomWebClient {
    DicomWebClient::new(&orthanc.url("/dicom-web"), Duration::from_secs(30)).unwrap()
}

#[test]
fn sr_and_sc_sent_by_stow_are_found_by_qido_and_come_back_identical_by_wado() {
    let (_dir, sr, sc) = results();
    let orthanc = Orthanc::start(&[]);
    let web = web(&orthanc);

    let answer = web.store_files(&[sr.clone(), sc.clone()]).unwrap();
    // PS3.18 STOW-RS answer: Referenced SOP Sequence (0008,1199), no Failed SOP Sequence.
    assert_eq!(answer["00081199"]["Value"].as_array().map(Vec::len), Some(2), "{answer}");
    let failed = answer["00081198"]["Value"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(failed, 0, "failures in the STOW-RS answer: {answer}");

    let (sr_uid, sr_series, study, sr_modality) = identity(&sr);
    let (sc_uid, sc_series, sc_study, sc_modality) = identity(&sc);
    assert_eq!((sr_modality.as_str(), sc_modality.as_str()), ("SR", "OT"));
    assert_eq!(sc_study, study, "both results are filed in the source's study");

    // QIDO-RS: the study, by its UID and by the modality of a result.
    let found = web.search_studies(&QueryKeys { study_uid: Some(study.clone()), ..Default::default() }).unwrap();
    assert_eq!(found.len(), 1);
    let by_modality = web.search_studies(&QueryKeys { modality: Some("SR".into()), ..Default::default() }).unwrap();
    assert_eq!(by_modality.len(), 1);
    assert_eq!(json_to_map(&by_modality[0])["StudyInstanceUID"], study);
    let series: BTreeSet<(String, String)> = web
        .search_series(&study)
        .unwrap()
        .iter()
        .map(|s| {
            let m = json_to_map(s);
            (m["SeriesInstanceUID"].clone(), m["Modality"].clone())
        })
        .collect();
    let expected: BTreeSet<(String, String)> =
        [(sr_series.clone(), "SR".to_string()), (sc_series.clone(), "OT".to_string())].into();
    assert_eq!(series, expected);
    for (series_uid, uid, file) in [(&sr_series, &sr_uid, &sr), (&sc_series, &sc_uid, &sc)] {
        let instances = web.search_instances(&study, series_uid).unwrap();
        assert_eq!(instances.len(), 1);
        let m = json_to_map(&instances[0]);
        assert_eq!(&m["SOPInstanceUID"], uid);
        let sent = std::fs::read(file).unwrap();
        let sent = split_part10(&sent).unwrap();
        assert_eq!(m["SOPClassUID"], sent.meta.media_storage_sop_class_uid().trim_end_matches('\0'));

        // WADO-RS: the instance as Orthanc holds it; its data set is byte for byte ours, in
        // our transfer syntax.
        let back = web.retrieve_instance(&study, series_uid, uid).unwrap();
        let back = split_part10(&back).unwrap();
        assert_eq!(back.meta.transfer_syntax(), sent.meta.transfer_syntax(), "{}", file.display());
        assert_eq!(back.meta.media_storage_sop_instance_uid(), sent.meta.media_storage_sop_instance_uid());
        assert!(back.data_set == sent.data_set, "{}: WADO-RS returned other bytes", file.display());
    }

    // WADO-RS into the study store, as the Studies view retrieves: the SC's pixels and the
    // SR's attributes are those of the files sent.
    let dir = tempfile::tempdir().unwrap();
    let store = StudyStore::open(dir.path()).unwrap();
    let stored = web.retrieve_series(&study, &sc_series, &store).unwrap();
    assert_eq!(stored.len(), 1);
    let a = melo::image::load_image(&stored[0].path, &Default::default()).unwrap();
    let b = melo::image::load_image(&sc, &Default::default()).unwrap();
    assert!(a.values == b.values && (a.rows, a.cols, a.channels) == (b.rows, b.cols, b.channels));
    let stored = web.retrieve_series(&study, &sr_series, &store).unwrap();
    assert_eq!(stored.len(), 1);
    let (ours, theirs) = (std::fs::read(&sr).unwrap(), std::fs::read(&stored[0].path).unwrap());
    assert!(split_part10(&ours).unwrap().data_set == split_part10(&theirs).unwrap().data_set);
    assert_eq!(store.instance_count().unwrap(), 2);
}

/// A copy of `file` cut `cut` bytes short.
fn truncated(file: &Path, cut: usize, into: &Path) -> PathBuf {
    let bytes = std::fs::read(file).unwrap();
    let out = into.join(format!("truncated_{}", file.file_name().unwrap().to_str().unwrap()));
    std::fs::write(&out, &bytes[..bytes.len() - cut]).unwrap();
    out
}

#[test]
fn a_corrupt_result_sent_by_c_store_is_refused_and_orthanc_holds_nothing_of_it() {
    let (dir, sr, sc) = results();
    let orthanc = Orthanc::start(&[]);
    let bad_sc = truncated(&sc, 5000, dir.path());

    // Our SCU: the file is checked before anything goes on the wire; the command names it and
    // says why, and stores the good one.
    let out = Command::new(env!("CARGO_BIN_EXE_melo"))
        .args(["net", "store", &orthanc.peer()])
        .arg(&bad_sc)
        .arg(&sr)
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("truncated_result_sc.dcm") && said.contains("not a valid DICOM data set"), "{said}");
    assert!(said.contains("1 of 2 file(s) stored"), "{said}");
    assert_eq!(orthanc.instance_uids(), vec![identity(&sr).0]);

    // The same truncated data set pushed past our check, on a raw association: Orthanc
    // refuses it (a failure status, an abort, or, as Orthanc 1.10 does, waiting for the rest
    // until our timeout), and stores nothing of it.
    let bytes = std::fs::read(&sc).unwrap();
    let part10 = split_part10(&bytes).unwrap();
    let sop_class = part10.meta.media_storage_sop_class_uid().trim_end_matches('\0').to_string();
    let uid = part10.meta.media_storage_sop_instance_uid().trim_end_matches('\0').to_string();
    let ts = part10.meta.transfer_syntax().trim_end_matches('\0').to_string();
    let assoc = ClientAssociationOptions::new()
        .calling_ae_title("MELO")
        .called_ae_title(ORTHANC_AET)
        .with_presentation_context(sop_class.clone(), vec![ts])
        .read_timeout(Duration::from_secs(5))
        .establish(format!("127.0.0.1:{}", orthanc.dicom_port))
        .unwrap();
    let peer = orthanc.peer();
    let mut link = Link { assoc, peer: peer.clone(), timeout: Duration::from_secs(5), max_data_set: 1 << 30 };
    let rq = Dimse::new(field::C_STORE_RQ)
        .with_str(tags::AFFECTED_SOP_CLASS_UID, VR::UI, &sop_class)
        .with_str(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, &uid)
        .with_u16(tags::MESSAGE_ID, 1)
        .with_u16(tags::PRIORITY, 0);
    let data = &part10.data_set[..part10.data_set.len() - 5000];
    let outcome = link.send(1, &rq, Some(data), "C-STORE").and_then(|()| link.receive_message("C-STORE"));
    match outcome {
        Ok(rsp) => {
            let status = rsp.command.status().unwrap();
            assert!(status.is_failure(), "Orthanc accepted a truncated data set: {status}");
            eprintln!("Orthanc answered {status}");
            let _ = dicom_ul::association::SyncAssociation::release(link.assoc);
        }
        Err(e) => {
            let message = e.to_string();
            eprintln!("the C-STORE of the truncated SC failed: {message}");
            assert!(message.starts_with(&peer) && message.contains("during C-STORE"), "{message}");
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(orthanc.instance_uids(), vec![identity(&sr).0], "Orthanc kept part of the truncated SC");
}
