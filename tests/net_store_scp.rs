//! C-STORE both ways: we send into a real Orthanc, DCMTK's storescu sends into our SCP; and
//! what the SCP must refuse (unknown callers, corrupt data sets, aborted transfers) leaves
//! nothing in the store.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_ul::association::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use melo::net::dimse::{field, Command, Link, Status};
use melo::net::{self, Peer, ScpConfig, ScpEvent, ScpHandle, ScuOptions, StoreScp};
use melo::store::{split_part10, StudyStore};
use support::dcmtk;
use support::orthanc::{Modality, Orthanc};

fn options() -> ScuOptions {
    ScuOptions { calling_aet: "MELO".into(), timeout: Duration::from_secs(20), ..Default::default() }
}

fn sop_instance_uid(file: &Path) -> String {
    let bytes = std::fs::read(file).unwrap();
    split_part10(&bytes).unwrap().meta.media_storage_sop_instance_uid().to_string()
}

struct RunningScp {
    store: Arc<StudyStore>,
    events: Arc<Mutex<Vec<ScpEvent>>>,
    port: u16,
    _dir: tempfile::TempDir,
    _handle: ScpHandle,
}

impl RunningScp {
    fn start(allowed: Option<Vec<String>>) -> RunningScp {
        Self::with(|c| c.allowed_callers = allowed)
    }

    fn with(configure: impl FnOnce(&mut ScpConfig)) -> RunningScp {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StudyStore::open(&dir.path().join("store")).unwrap());
        // DCMTK takes seconds to parse each MR sample (2.5 MB of trailing padding) between
        // two C-STOREs, so the SCP waits as long as a real deployment would.
        let mut config = ScpConfig { timeout: Duration::from_secs(60), ..ScpConfig::new("MELO") };
        configure(&mut config);
        let scp = StoreScp::bind("127.0.0.1:0", config, store.clone()).unwrap();
        let port = scp.local_addr().port();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let handle = scp.spawn(Arc::new(move |e| sink.lock().unwrap().push(e)));
        RunningScp { store, events, port, _dir: dir, _handle: handle }
    }

    /// Files (not counting the index, its journal and the store's lock file) anywhere under
    /// the store folder.
    fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if !p.file_name().unwrap().to_str().unwrap().starts_with("melo-index.sqlite")
                    && p.file_name().unwrap() != melo::store::LOCK_FILE
                {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.store.root(), &mut out);
        out
    }

    fn wait_for(&self, what: impl Fn(&ScpEvent) -> bool) -> ScpEvent {
        for _ in 0..200 {
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| what(e)) {
                return e.clone();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("event not seen; events: {:?}", self.events.lock().unwrap());
    }
}

#[test]
fn our_c_store_shows_up_in_orthanc_and_a_corrupt_file_is_not_sent() {
    let orthanc = Orthanc::start(&[Modality::new("melo", "MELO", 1)]);
    let good = vec![
        support::fixture("CT_small.dcm"),
        support::fixture("MR_small.dcm"),
        support::repo().join("assets/samples/ct/693_J2KR.dcm"),
        support::fixture("SC_rgb_rle_16bit.dcm"),
    ];
    let corrupt = support::fixture("MR_truncated.dcm");
    let mut files = good.clone();
    files.insert(1, corrupt.clone());
    let peer: Peer = orthanc.peer().parse().unwrap();
    let mut seen = 0;
    let results = net::store(&peer, &options(), &files, &mut |_| seen += 1).unwrap();
    assert_eq!(seen, files.len());
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert_eq!(failed.len(), 1, "{results:?}");
    assert_eq!(failed[0].file, corrupt);
    assert!(failed[0].status.is_none(), "the corrupt file never went on the wire");
    let held = orthanc.instance_uids();
    for f in &good {
        assert!(held.contains(&sop_instance_uid(f)), "{} not in Orthanc", f.display());
    }
    assert_eq!(held.len(), good.len());
    // What Orthanc holds is what we sent: its copy of the JPEG 2000 CT decodes identically.
    let id = &orthanc.find("Instance", serde_json::json!({ "SOPInstanceUID": sop_instance_uid(&good[2]) }))[0]["ID"];
    let copy = orthanc.get_bytes(&format!("/instances/{}/file", id.as_str().unwrap()));
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), &copy).unwrap();
    let a = melo::image::load_image(tmp.path(), &Default::default()).unwrap();
    let b = melo::image::load_image(&good[2], &Default::default()).unwrap();
    assert!(a.values == b.values);

    // The CLI says the same and fails for the corrupt file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_melo"))
        .args(["net", "store", &orthanc.peer()])
        .args([&good[0], &corrupt])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = dcmtk::text(&out);
    assert!(text.contains("1 of 2 file(s) stored") && text.contains("MR_truncated.dcm"), "{text}");
}

#[test]
fn dcmtk_storescu_pushes_a_series_into_our_scp() {
    let scp = RunningScp::start(Some(vec!["STORESCU".into()]));
    let files = support::mr_series();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = dcmtk::storescu("STORESCU", "MELO", scp.port, &refs);
    assert!(out.status.success(), "storescu failed:\n{}", dcmtk::text(&out));
    assert_eq!(scp.store.instance_count().unwrap(), 20);
    let studies = scp.store.studies().unwrap();
    assert_eq!(studies.len(), 1);
    let series = scp.store.series(&studies[0].study_uid).unwrap();
    let stored = scp.store.instances(&series[0].series_uid).unwrap();
    assert_eq!(stored.len(), 20);
    for (record, original) in stored.iter().zip(&files) {
        // Instance numbers order both lists the same way.
        assert_eq!(record.sop_instance_uid, sop_instance_uid(original));
        let a = melo::image::load_image(&record.path, &Default::default()).unwrap();
        let b = melo::image::load_image(original, &Default::default()).unwrap();
        assert!(a.values == b.values, "{}", record.path.display());
    }
    // DCMTK's echoscu is answered too.
    let echo = dcmtk::echoscu("STORESCU", "MELO", scp.port);
    assert!(echo.status.success(), "{}", dcmtk::text(&echo));
}

#[test]
fn unknown_callers_and_wrong_called_titles_are_refused() {
    let scp = RunningScp::start(Some(vec!["STORESCU".into()]));
    let file = support::fixture("CT_small.dcm");
    let out = dcmtk::storescu("INTRUDER", "MELO", scp.port, &[&file]);
    assert!(!out.status.success());
    assert!(dcmtk::text(&out).contains("Calling AE Title Not Recognized"), "{}", dcmtk::text(&out));
    let out = dcmtk::storescu("STORESCU", "SOMEONE", scp.port, &[&file]);
    assert!(!out.status.success());
    assert!(dcmtk::text(&out).contains("Called AE Title Not Recognized"), "{}", dcmtk::text(&out));
    scp.wait_for(
        |e| matches!(e, ScpEvent::Refused { reason, .. } if reason.contains("calling AE title not recognized")),
    );
    assert_eq!(scp.store.instance_count().unwrap(), 0);
    assert!(scp.files().is_empty());

    // Our own SCU gets the same refusal as one clear sentence.
    let peer: Peer = format!("MELO@127.0.0.1:{}", scp.port).parse().unwrap();
    let err = net::echo(&peer, &ScuOptions { calling_aet: "INTRUDER".into(), ..options() }).unwrap_err().to_string();
    assert!(err.contains("refused the association: calling AE title not recognized"), "{err}");
    // Allowing any caller lets it in.
    let open = RunningScp::start(None);
    let peer: Peer = format!("MELO@127.0.0.1:{}", open.port).parse().unwrap();
    net::echo(&peer, &ScuOptions { calling_aet: "INTRUDER".into(), ..options() }).unwrap();
}

/// An association to our SCP proposing MR storage, driven message by message.
fn raw_link(port: u16) -> Link<dicom_ul::association::ClientAssociation<std::net::TcpStream>> {
    let assoc = ClientAssociationOptions::new()
        .calling_ae_title("STORESCU")
        .called_ae_title("MELO")
        .with_presentation_context("1.2.840.10008.5.1.4.1.1.4", vec!["1.2.840.10008.1.2.1"])
        .read_timeout(Duration::from_secs(10))
        .establish(format!("127.0.0.1:{port}"))
        .unwrap();
    Link { assoc, peer: "MELO".into(), timeout: Duration::from_secs(10), max_data_set: 1 << 30 }
}

fn store_rq(instance: &str) -> Command {
    Command::new(field::C_STORE_RQ)
        .with_str(tags::AFFECTED_SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.4")
        .with_str(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, instance)
        .with_u16(tags::MESSAGE_ID, 1)
        .with_u16(tags::PRIORITY, 0)
}

#[test]
fn corrupt_or_mismatched_data_sets_are_refused_and_nothing_is_stored() {
    let scp = RunningScp::start(Some(vec!["STORESCU".into()]));
    let bytes = std::fs::read(support::fixture("MR_small.dcm")).unwrap();
    let part10 = split_part10(&bytes).unwrap();
    let uid = part10.meta.media_storage_sop_instance_uid().to_string();
    let mut link = raw_link(scp.port);

    // Truncated in the middle of the pixel data.
    let truncated = &part10.data_set[..part10.data_set.len() - 1000];
    link.send(1, &store_rq(&uid), Some(truncated), "C-STORE").unwrap();
    let rsp = link.receive_message("C-STORE").unwrap();
    assert_eq!(rsp.command.status(), Some(Status::CANNOT_UNDERSTAND), "{:?}", rsp.command);
    assert!(rsp.command.error_comment().is_some());

    // Garbage.
    link.send(1, &store_rq(&uid), Some(&[0xFFu8; 300]), "C-STORE").unwrap();
    let rsp = link.receive_message("C-STORE").unwrap();
    assert_eq!(rsp.command.status(), Some(Status::CANNOT_UNDERSTAND));

    // A valid data set announced under another SOP Instance UID.
    link.send(1, &store_rq("1.2.3.4.5"), Some(part10.data_set), "C-STORE").unwrap();
    let rsp = link.receive_message("C-STORE").unwrap();
    assert_eq!(rsp.command.status(), Some(Status::DATA_SET_MISMATCH));

    assert_eq!(scp.store.instance_count().unwrap(), 0);
    assert!(scp.files().is_empty(), "{:?}", scp.files());

    // The association is still usable: the real thing is stored.
    link.send(1, &store_rq(&uid), Some(part10.data_set), "C-STORE").unwrap();
    let rsp = link.receive_message("C-STORE").unwrap();
    assert_eq!(rsp.command.status(), Some(Status::SUCCESS));
    assert_eq!(scp.store.instance_count().unwrap(), 1);
    dicom_ul::association::SyncAssociation::release(link.assoc).unwrap();
}

#[test]
fn a_hostile_sop_instance_uid_cannot_place_a_file_outside_the_store() {
    let scp = RunningScp::start(Some(vec!["STORESCU".into()]));
    let bytes = std::fs::read(support::fixture("MR_small.dcm")).unwrap();
    let part10 = split_part10(&bytes).unwrap();
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut obj = dicom_object::InMemDicomObject::read_dataset_with_ts(part10.data_set, &ts).unwrap();
    let hostile = "../../../../tmp/melo-evil";
    obj.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(hostile)));
    obj.put(DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from("/etc")));
    let mut data = Vec::new();
    obj.write_dataset_with_ts(&mut data, &ts).unwrap();

    let mut link = raw_link(scp.port);
    link.send(1, &store_rq(hostile), Some(&data), "C-STORE").unwrap();
    let rsp = link.receive_message("C-STORE").unwrap();
    assert_eq!(rsp.command.status(), Some(Status::SUCCESS));
    dicom_ul::association::SyncAssociation::release(link.assoc).unwrap();
    let files = scp.files();
    assert_eq!(files.len(), 1);
    let root = scp.store.root().canonicalize().unwrap();
    assert!(files[0].canonicalize().unwrap().starts_with(&root), "{}", files[0].display());
    assert!(!Path::new("/tmp/melo-evil.dcm").exists());
    let name = files[0].file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with('x') && name.ends_with(".dcm"), "{name}");
}

#[test]
fn a_peer_aborting_mid_transfer_leaves_nothing_behind() {
    let scp = RunningScp::start(Some(vec!["STORESCU".into()]));
    let bytes = std::fs::read(support::fixture("MR_small.dcm")).unwrap();
    let part10 = split_part10(&bytes).unwrap();
    let uid = part10.meta.media_storage_sop_instance_uid().to_string();
    let mut link = raw_link(scp.port);
    // The command, then the first half of the data set, not marked last; then an A-ABORT.
    let command = store_rq(&uid).with_data_set().encode().unwrap();
    let pdv = |kind, is_last, data: &[u8]| Pdu::PData {
        data: vec![PDataValue { presentation_context_id: 1, value_type: kind, is_last, data: data.to_vec() }],
    };
    link.send_pdu(&pdv(PDataValueType::Command, true, &command), "").unwrap();
    link.send_pdu(&pdv(PDataValueType::Data, false, &part10.data_set[..4000]), "").unwrap();
    dicom_ul::association::SyncAssociation::abort(link.assoc).unwrap();
    let event = scp.wait_for(|e| matches!(e, ScpEvent::Failed { .. }));
    let ScpEvent::Failed { reason, .. } = event else { unreachable!() };
    assert!(reason.contains("aborted"), "{reason}");
    assert_eq!(scp.store.instance_count().unwrap(), 0);
    assert!(scp.files().is_empty());
}

#[test]
fn a_store_that_cannot_write_refuses_the_c_store_and_indexes_nothing() {
    let scp = RunningScp::start(Some(vec!["STORESCU".into()]));
    let bytes = std::fs::read(support::fixture("MR_small.dcm")).unwrap();
    let part10 = split_part10(&bytes).unwrap();
    let uid = part10.meta.media_storage_sop_instance_uid().to_string();
    // A plain file where the study's folder has to go: the write fails as on a full or
    // read-only disk, whatever the user running the tests may do.
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(part10.data_set, &ts).unwrap();
    let study = obj.element(tags::STUDY_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
    std::fs::write(scp.store.root().join(melo::store::safe_name(&study)), b"in the way").unwrap();

    let mut link = raw_link(scp.port);
    link.send(1, &store_rq(&uid), Some(part10.data_set), "C-STORE").unwrap();
    let rsp = link.receive_message("C-STORE").unwrap();
    assert_eq!(rsp.command.status(), Some(Status::OUT_OF_RESOURCES));
    dicom_ul::association::SyncAssociation::release(link.assoc).unwrap();
    assert_eq!(scp.store.instance_count().unwrap(), 0);
    let event = scp.wait_for(|e| matches!(e, ScpEvent::StoreFailed { .. }));
    assert!(matches!(event, ScpEvent::StoreFailed { status, .. } if status == Status::OUT_OF_RESOURCES));
}

#[test]
fn our_scu_sends_the_padded_mr_series_to_our_scp() {
    // The MR samples carry 2.5 MB of zero padding after Pixel Data: sent without it, received
    // and stored with the same pixels.
    let scp = RunningScp::start(Some(vec!["MELO".into()]));
    let peer: Peer = format!("MELO@127.0.0.1:{}", scp.port).parse().unwrap();
    let files = support::mr_series();
    let results = net::store(&peer, &options(), &files, &mut |_| {}).unwrap();
    assert!(results.iter().all(|r| r.ok()), "{results:?}");
    assert_eq!(scp.store.instance_count().unwrap(), 20);
    for original in &files {
        let uid = sop_instance_uid(original);
        let studies = scp.store.studies().unwrap();
        let series = scp.store.series(&studies[0].study_uid).unwrap();
        let record = scp
            .store
            .instances(&series[0].series_uid)
            .unwrap()
            .into_iter()
            .find(|r| r.sop_instance_uid == uid)
            .unwrap();
        assert!(record.size < 200_000, "padding not stored: {} bytes", record.size);
        let a = melo::image::load_image(&record.path, &Default::default()).unwrap();
        let b = melo::image::load_image(original, &Default::default()).unwrap();
        assert!(a.values == b.values);
    }
}

#[test]
fn cli_listen_receives_from_dcmtk_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let melo = env!("CARGO_BIN_EXE_melo");
    // Who may send must be said.
    let out = std::process::Command::new(melo)
        .args(["net", "listen", "--port", &port.to_string(), "--store"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow"));

    let mut child = std::process::Command::new(melo)
        .args(["net", "listen", "--bind", "127.0.0.1", "--port", &port.to_string(), "--allow", "STORESCU", "--store"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it answers.
    let up = dcmtk::wait_for_echo("STORESCU", "MELO", port);
    let ct = support::fixture("CT_small.dcm");
    let out = dcmtk::storescu("STORESCU", "MELO", port, &[&ct]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "melo net listen did not answer C-ECHO");
    assert!(out.status.success(), "{}", dcmtk::text(&out));
    let store = StudyStore::open(dir.path()).unwrap();
    assert_eq!(store.instance_count().unwrap(), 1);
}

#[test]
fn associations_beyond_the_cap_are_rejected_as_transient_local_limit() {
    let scp = RunningScp::with(|c| {
        c.allowed_callers = Some(vec!["STORESCU".into(), "MELO".into()]);
        c.max_associations = 2;
    });
    assert_eq!(ScpConfig::new("X").max_associations, 8, "the default cap");
    // Two associations held open fill the cap.
    let held = [raw_link(scp.port), raw_link(scp.port)];
    let ct = support::fixture("CT_small.dcm");
    let out = dcmtk::storescu("STORESCU", "MELO", scp.port, &[&ct]);
    let said = dcmtk::text(&out);
    assert!(!out.status.success(), "{said}");
    // DCMTK prints the A-ASSOCIATE-RJ it got: result, source and reason.
    assert!(said.contains("Rejected Transient") && said.contains("Local Limit Exceeded"), "{said}");
    // Our SCU names the reason and says it may pass later.
    let peer: Peer = format!("MELO@127.0.0.1:{}", scp.port).parse().unwrap();
    let err = net::echo(&peer, &options()).unwrap_err().to_string();
    assert!(err.contains("refused the association: local limit exceeded (transient, try again later)"), "{err}");
    scp.wait_for(|e| matches!(e, ScpEvent::Refused { reason, .. } if reason.contains("2 associations already open")));
    assert_eq!(scp.store.instance_count().unwrap(), 0);

    // One released: there is room again.
    let [first, second] = held;
    dicom_ul::association::SyncAssociation::release(first.assoc).unwrap();
    let mut sent = None;
    for _ in 0..50 {
        let out = dcmtk::storescu("STORESCU", "MELO", scp.port, &[&ct]);
        if out.status.success() {
            sent = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sent.is_some(), "storescu still refused after a release");
    assert_eq!(scp.store.instance_count().unwrap(), 1);
    dicom_ul::association::SyncAssociation::release(second.assoc).unwrap();
}
