//! The settings the window writes to disk (eframe storage) while patient details are hidden
//! hold no folder: not the image folder, and not the audit's target, member, non-member and
//! export folders nor the adapter folder, which sites name after patients and studies too
//! (issue 20, item 11). With details shown they are remembered across runs.

use std::path::{Path, PathBuf};

use eframe::App;
use melo::gui::{AppOptions, MeloApp};

mod common;

const PATIENT: &str = "DOE^JANE";

fn new_app() -> MeloApp {
    MeloApp::with_options(AppOptions { paths: Vec::new(), backbone_dir: None, adapters_dir: None })
}

/// Every folder the window remembers, set to an existing folder named after a patient.
fn with_patient_folders(app: &mut MeloApp, root: &Path) -> Vec<PathBuf> {
    let folder = |what: &str| {
        let p = root.join(format!("{PATIENT} {what}"));
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let folders = ["images", "adapters", "target", "members", "nonmembers", "export"].map(folder);
    app.last_folder = Some(folders[0].clone());
    app.diagnosis.adapter_folder = Some(folders[1].clone());
    app.privacy.config.target = folders[2].clone();
    app.privacy.config.members = folders[3].clone();
    app.privacy.config.nonmembers = folders[4].clone();
    app.privacy.export_folder = Some(folders[5].clone());
    folders.to_vec()
}

#[test]
fn hidden_patient_details_keep_every_folder_out_of_the_stored_settings() {
    let root = tempfile::tempdir().unwrap();
    let mut app = new_app();
    assert!(app.hide_patient_details, "hidden is the default");
    let demo_target = app.privacy.config.target.clone();
    with_patient_folders(&mut app, root.path());

    let mut storage = common::MemoryStorage::default();
    app.save(&mut storage);
    let stored: String = storage.0.values().cloned().collect();
    assert!(!stored.is_empty(), "settings were stored");
    assert!(!stored.contains(PATIENT), "a folder was stored: {stored}");
    assert!(!stored.contains(&root.path().display().to_string()), "a folder was stored: {stored}");

    // The next run starts from the defaults for them.
    let mut restarted = new_app();
    restarted.restore(&storage);
    assert_eq!(restarted.last_folder, None);
    assert_eq!(restarted.diagnosis.adapter_folder, None);
    assert_eq!(restarted.privacy.export_folder, None);
    assert_eq!(restarted.privacy.config.target, demo_target);
}

#[test]
fn shown_patient_details_remember_the_folders() {
    let root = tempfile::tempdir().unwrap();
    let mut app = new_app();
    app.hide_patient_details = false;
    let folders = with_patient_folders(&mut app, root.path());

    let mut storage = common::MemoryStorage::default();
    app.save(&mut storage);
    let mut restarted = new_app();
    restarted.restore(&storage);
    assert_eq!(restarted.last_folder.as_ref(), Some(&folders[0]));
    assert_eq!(restarted.diagnosis.adapter_folder.as_ref(), Some(&folders[1]));
    assert_eq!(restarted.privacy.config.target, folders[2]);
    assert_eq!(restarted.privacy.config.members, folders[3]);
    assert_eq!(restarted.privacy.config.nonmembers, folders[4]);
    assert_eq!(restarted.privacy.export_folder.as_ref(), Some(&folders[5]));
}
