//! The study store after a crash (issue 14: "survives restarts and a crash mid-receive"). A
//! receive writes a temporary file, renames it into place, then commits the index row; a
//! crash can leave a temporary behind, or a file in place that the index does not know.
//! These tests build exactly those folder states from real DICOM files and check what the
//! next `StudyStore::open` makes of them.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use melo::store::{safe_name, split_part10, StudyStore};

/// (study, series, instance) UIDs of a Part 10 file.
fn uids(file: &Path) -> (String, String, String) {
    let obj = dicom_object::open_file(file).unwrap();
    let get = |tag| obj.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string();
    (get(tags::STUDY_INSTANCE_UID), get(tags::SERIES_INSTANCE_UID), get(tags::SOP_INSTANCE_UID))
}

/// Where the store keeps an instance.
fn place(root: &Path, (study, series, sop): &(String, String, String)) -> PathBuf {
    root.join(safe_name(study)).join(safe_name(series)).join(format!("{}.dcm", safe_name(sop)))
}

/// A temporary file as `crate::atomic` names them, last written `age` ago.
fn partial(dir: &Path, random: &str, age: Duration) -> PathBuf {
    let path = dir.join(format!(".melo-{random}.partial"));
    std::fs::write(&path, b"half a data set").unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
    path
}

#[test]
fn a_file_renamed_into_place_but_never_indexed_is_indexed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let received = support::fixture("CT_small.dcm");
    let crashed = support::fixture("MR_small.dcm");
    {
        let store = StudyStore::open(&root).unwrap();
        store.import_file(&received, "PACS").unwrap();
        assert_eq!(store.instance_count().unwrap(), 1);
    }
    // The crash: MR_small renamed into its place, its row never committed; the temporary of
    // a write that was still going on at that moment.
    let ids = uids(&crashed);
    let in_place = place(&root.canonicalize().unwrap(), &ids);
    std::fs::create_dir_all(in_place.parent().unwrap()).unwrap();
    std::fs::copy(&crashed, &in_place).unwrap();
    let leftover = partial(in_place.parent().unwrap(), "a1B2c3", Duration::from_secs(2));
    // Neither a temporary of ours by name nor a file in the store's layout: left alone.
    let users = in_place.parent().unwrap().join(".melo-notes.partial");
    std::fs::write(&users, b"not ours").unwrap();

    let store = StudyStore::open(&root).unwrap();
    let recovery = store.recovery();
    assert_eq!(recovery.indexed, vec![in_place.clone()], "{recovery:?}");
    assert_eq!(recovery.removed_partials, 1, "{recovery:?}");
    assert!(recovery.unreadable.is_empty() && recovery.removed_duplicates.is_empty(), "{recovery:?}");
    assert!(!leftover.exists() && users.exists());
    assert_eq!(store.instance_count().unwrap(), 2);
    let records = store.instances(&ids.1).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].sop_instance_uid, ids.2);
    assert_eq!(records[0].path, in_place);
    assert_eq!(records[0].size, std::fs::metadata(&crashed).unwrap().len());
    // The file was indexed as it lay, not rewritten, and its study is listed with its patient.
    assert_eq!(std::fs::read(&in_place).unwrap(), std::fs::read(&crashed).unwrap());
    assert!(store.studies().unwrap().iter().any(|s| s.study_uid == ids.0));
    drop(store);

    // Nothing left to repair the next time.
    let store = StudyStore::open(&root).unwrap();
    assert_eq!(store.recovery(), &Default::default());
    assert_eq!(store.instance_count().unwrap(), 2);
}

#[test]
fn files_that_cannot_be_indexed_are_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();
    // A truncated file in its place (written by something other than the store: the store's
    // own writes are whole before the rename).
    let truncated = support::fixture("MR_small.dcm");
    let bytes = std::fs::read(&truncated).unwrap();
    let at = place(&root, &uids(&truncated));
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::write(&at, &bytes[..bytes.len() - 2000]).unwrap();
    // A whole file in another instance's place: its UIDs do not name where it is.
    let elsewhere = at.parent().unwrap().join("1.2.3.4.dcm");
    std::fs::copy(support::fixture("CT_small.dcm"), &elsewhere).unwrap();

    let store = StudyStore::open(&root).unwrap();
    let recovery = store.recovery();
    assert!(recovery.indexed.is_empty(), "{recovery:?}");
    let mut unreadable: Vec<&PathBuf> = recovery.unreadable.iter().map(|(p, _)| p).collect();
    unreadable.sort();
    let mut expected = vec![&elsewhere, &at];
    expected.sort();
    assert_eq!(unreadable, expected, "{recovery:?}");
    let why = &recovery.unreadable.iter().find(|(p, _)| p == &elsewhere).unwrap().1;
    assert!(why.contains("its UIDs place it at"), "{why}");
    assert_eq!(store.instance_count().unwrap(), 0);
    assert!(at.exists() && elsewhere.exists(), "left for a person to look at");
}

#[test]
fn temporaries_are_kept_while_another_process_may_be_writing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let first = StudyStore::open(&root).unwrap();
    let root = first.root().to_path_buf();
    let series = root.join("1.2.3").join("4.5.6");
    std::fs::create_dir_all(&series).unwrap();
    let fresh = partial(&series, "Fresh1", Duration::from_secs(5));
    let old = partial(&series, "Old123", Duration::from_secs(20 * 60));

    // `first` holds the store open (as `melo net listen` would while the window opens it):
    // a fresh temporary may be a write in progress.
    let second = StudyStore::open(&root).unwrap();
    assert_eq!(second.recovery().removed_partials, 1);
    assert!(fresh.exists() && !old.exists());
    drop((first, second));

    // Alone, every temporary is a leftover.
    let third = StudyStore::open(&root).unwrap();
    assert_eq!(third.recovery().removed_partials, 1);
    assert!(!fresh.exists());
}

#[test]
fn an_unindexed_copy_of_an_indexed_instance_is_removed() {
    // A re-sent instance whose series UID changed: the new file is committed, then the old one
    // is removed; a crash between the two leaves the old copy unindexed. The index is right.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let original = support::fixture("MR_small.dcm");
    let bytes = std::fs::read(&original).unwrap();
    let part10 = split_part10(&bytes).unwrap();
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    assert_eq!(part10.meta.transfer_syntax().trim_end_matches('\0'), "1.2.840.10008.1.2.1");
    let mut obj = dicom_object::InMemDicomObject::read_dataset_with_ts(part10.data_set, &ts).unwrap();
    obj.put(DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.826.0.1.99")));
    let mut moved = bytes[..bytes.len() - part10.data_set.len()].to_vec();
    obj.write_dataset_with_ts(&mut moved, &ts).unwrap();

    let store = StudyStore::open(&root).unwrap();
    let root = store.root().to_path_buf();
    let stored = store.import_bytes(&moved, "PACS").unwrap();
    drop(store);
    let (study, _, sop) = uids(&original);
    let stale = place(&root, &(study, "1.2.826.0.1.99".to_string(), sop.clone()));
    assert_eq!(stored.path, stale);
    // The old copy, at the original series' place, left behind by the crash.
    let old = place(&root, &uids(&original));
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::copy(&original, &old).unwrap();

    let store = StudyStore::open(&root).unwrap();
    assert_eq!(store.recovery().removed_duplicates, vec![old.clone()], "{:?}", store.recovery());
    assert!(!old.exists() && stale.exists());
    assert_eq!(store.instance_count().unwrap(), 1);
    assert_eq!(store.instances("1.2.826.0.1.99").unwrap()[0].sop_instance_uid, sop);
}
