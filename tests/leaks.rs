//! Files made to be shared leak nothing about the site (issue 20, items 7, 9 and 10): adapters
//! and training reports name their data set instead of recording its path, audit reports name
//! samples by pseudonym and keep no input path, CSV cells cannot become formulas, and no command
//! writes its output onto (or into) what it reads.
//!
//! Folder and file names below are the kind sites use: a patient's name. Each test looks for
//! them in the bytes written.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use melo::audit::{self, AttackKind, AuditConfig, LossParams, Preset};
use melo::model::lora::{Adapter, AdapterMetadata, ImportOptions};
use melo::model::vit::{Config, VisionTransformer};
use melo::train::trainer::{report_path, train, train_with, DataSetInfo, Method, TrainOptions};

const PATIENT: &str = "DOE^JANE";
const OTHER_PATIENT: &str = "SMITH^JOHN";

fn melo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_melo"))
}

fn backbone_dir() -> PathBuf {
    common::repo().join("assets/backbone")
}

fn vit_fixtures() -> PathBuf {
    common::repo().join("tests/data/vit")
}

/// The tiny timm ViT the PEFT fixture was made on (as in tests/vit_parity.rs).
fn tiny_vit() -> VisionTransformer {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vit_fixtures().join("peft_base_config.json")).unwrap()).unwrap();
    let mut config: Config = serde_json::from_value(json["constructor_kwargs"].clone()).unwrap();
    config.layer_norm_eps = json["layer_norm_eps"].as_f64().unwrap();
    config.layer_scale = json["layerscale"].as_bool().unwrap();
    VisionTransformer::load(&vit_fixtures().join("peft_base.safetensors"), config).unwrap()
}

/// The JSON header of a safetensors file, as text.
fn safetensors_header(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    String::from_utf8(bytes[8..8 + n].to_vec()).unwrap()
}

/// Rewrites the `adapter` metadata of an adapter file in place (tensor bytes untouched), to
/// make a file as an older version wrote it.
fn edit_adapter_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut adapter: serde_json::Value =
        serde_json::from_str(header["__metadata__"]["adapter"].as_str().unwrap()).unwrap();
    edit(&mut adapter);
    header["__metadata__"]["adapter"] = serde_json::Value::String(adapter.to_string());
    let mut text = header.to_string().into_bytes();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

fn assert_no_leak(what: &str, text: &str, leaks: &[&str]) {
    for leak in leaks {
        assert!(!text.contains(leak), "{what} contains {leak:?}:\n{text}");
    }
}

/// A grey PNG of pseudo-random pixels (deterministic per `seed`).
fn write_png(path: &Path, side: u32, seed: u32) {
    let img = image::GrayImage::from_fn(side, side, |x, y| {
        image::Luma([((x * 31 + y * 17 + seed * 101) % 251) as u8 ^ ((seed * 7) as u8)])
    });
    img.save(path).unwrap();
}

/// An ImageFolder `train|val|test/<class>/*.png` with `per_class` images per class and split.
fn write_image_folder(root: &Path, per_class: usize) {
    for split in ["train", "val", "test"] {
        for (c, class) in ["benign", "malignant"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                write_png(&dir.join(format!("{i}.png")), 28, (c * 100 + i) as u32);
            }
        }
    }
}

fn options(data: PathBuf, out: PathBuf) -> TrainOptions {
    TrainOptions {
        method: Method::Linear,
        rank: 1,
        alpha: 1.0,
        targets: Default::default(),
        lr: 3e-3,
        seed: 0,
        task: "leak_test".into(),
        labels: None,
        modality: String::new(),
        limit: None,
        ..common::train_options(data, out)
    }
}

#[test]
fn a_trained_adapter_and_its_report_name_the_data_set_never_its_path() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join(format!("{PATIENT} 1970-01-01"));
    write_image_folder(&data, 4);
    // An unreadable file: counted, not named.
    std::fs::write(data.join(format!("train/benign/{OTHER_PATIENT}.png")), b"not a png").unwrap();
    let out_dir = root.path().join(OTHER_PATIENT);
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("leak_test.safetensors");
    let data_set = DataSetInfo { name: "Synthetic ultrasound".into(), licence: "CC0 1.0".into() };
    let report = train_with(&options(data, out.clone()), &data_set).unwrap();

    let root_text = root.path().display().to_string();
    let backbone_text = backbone_dir().display().to_string();
    let leaks = [PATIENT, OTHER_PATIENT, root_text.as_str(), backbone_text.as_str(), "assets/backbone"];
    assert_no_leak("the adapter's header", &safetensors_header(&out), &leaks);
    assert_no_leak("the report", &std::fs::read_to_string(report_path(&out)).unwrap(), &leaks);

    // What is recorded instead: name, licence, counts per split and class, skipped files.
    let counts = |n: u64| BTreeMap::from([("benign".to_string(), n), ("malignant".to_string(), n)]);
    let want: BTreeMap<String, BTreeMap<String, u64>> =
        ["train", "val", "test"].iter().map(|s| (s.to_string(), counts(4))).collect();
    let meta = Adapter::load(&out).unwrap().metadata().clone();
    assert_eq!(meta.training.dataset, "Synthetic ultrasound");
    assert_eq!(meta.data_set.licence, "CC0 1.0");
    assert_eq!(meta.data_set.counts, want);
    assert_eq!(meta.data_set.skipped_files, 1);
    assert_eq!(report.data, "Synthetic ultrasound");
    assert_eq!(report.class_counts, want);
    assert_eq!(report.skipped_files, 1);
    assert_eq!(report.file, PathBuf::from("leak_test.safetensors"));
}

#[test]
fn without_a_name_the_data_set_is_unnamed_or_its_medmnist_name() {
    let folder = Path::new("/data").join(PATIENT);
    assert_eq!(DataSetInfo::default_for(&folder).name, "unnamed");
    assert_eq!(DataSetInfo::default_for(&folder.join(format!("{PATIENT}.npz"))).name, "unnamed");
    assert_eq!(DataSetInfo::default_for(&folder.join("pneumoniamnist.npz")).name, "PneumoniaMNIST (MedMNIST v2)");
    assert_eq!(DataSetInfo::default_for(&folder.join("bloodmnist_224.npz")).name, "BloodMNIST (MedMNIST v2, 224 px)");
    // A name that is a path is refused before any work.
    let dir = tempfile::tempdir().unwrap();
    let o = options(dir.path().join("none.npz"), dir.path().join("x.safetensors"));
    let named = DataSetInfo { name: format!("/data/{PATIENT}"), licence: String::new() };
    let err = train_with(&o, &named).unwrap_err().to_string();
    assert!(err.contains("--data-name"), "{err}");
}

#[test]
fn adapters_written_before_issue_20_load_without_their_paths() {
    let vit = tiny_vit();
    let meta = AdapterMetadata::for_backbone("old", vec!["a".into(), "b".into()], &vit);
    let adapter = Adapter::synthetic(meta, &vit, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.safetensors");
    adapter.save(&path).unwrap();
    // As the trainer and the PEFT importer wrote them: the --data path as typed, the import's
    // folder, and no data_set entry.
    edit_adapter_json(&path, |a| {
        a["training"]["dataset"] = format!("/data/{PATIENT}/ultrasound").into();
        a["source"] = format!("imported from PEFT 0.13.2 adapter /home/site/{PATIENT}/peft").into();
        a.as_object_mut().unwrap().remove("data_set");
    });
    let loaded = Adapter::load(&path).unwrap();
    let m = loaded.metadata();
    assert_eq!(m.training.dataset, "", "a path is not a data set's name");
    assert!(!m.source.contains(PATIENT), "{}", m.source);
    assert!(m.source.starts_with("imported from PEFT 0.13.2 adapter"), "{}", m.source);
    assert_eq!(m.data_set, Default::default());
}

#[test]
fn imports_record_no_source_path_or_file_name() {
    let vit = tiny_vit();
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join(PATIENT);
    std::fs::create_dir_all(site.join("peft")).unwrap();
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(vit_fixtures().join("peft_adapter").join(name), site.join("peft").join(name)).unwrap();
    }
    let melo_file = site.join(format!("{OTHER_PATIENT}.safetensors"));
    std::fs::copy(vit_fixtures().join("melo_adapter.safetensors"), &melo_file).unwrap();

    let peft = Adapter::import_peft(&site.join("peft"), &ImportOptions::for_backbone("p", &vit)).unwrap();
    let mut options = ImportOptions::for_backbone("m", &vit);
    options.alpha = Some(6.0);
    let melo_adapter = Adapter::import_melo(&melo_file, &options).unwrap();
    let root = dir.path().display().to_string();
    for adapter in [&peft, &melo_adapter] {
        let json = serde_json::to_string(adapter.metadata()).unwrap();
        assert_no_leak("imported metadata", &json, &[PATIENT, OTHER_PATIENT, &root]);
    }
    assert!(peft.metadata().source.starts_with("imported from a PEFT"), "{}", peft.metadata().source);
    assert!(melo_adapter.metadata().source.starts_with("imported from a MeLo file"));
}

#[test]
fn shipped_adapters_and_reports_hold_no_path() {
    let repo = common::repo();
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["adapters", "docs/training"] {
        for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".report.json") || name.ends_with(".safetensors") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 8, "adapters and reports found: {files:?}");
    for path in files {
        let text = if path.extension().is_some_and(|e| e == "safetensors") {
            safetensors_header(&path)
        } else {
            std::fs::read_to_string(&path).unwrap()
        };
        assert_no_leak(&path.display().to_string(), &text, &["../", "/tmp", "/work", "/home", "shared/data", "\\\\"]);
    }
}

/// Members and non-members as image folders named after a patient, files named after
/// patients and after spreadsheet formulas.
fn audit_sets(root: &Path) -> (PathBuf, PathBuf) {
    let members = root.join(format!("{PATIENT} members"));
    let nonmembers = root.join("nonmembers");
    for (dir, names) in [
        (&members, [format!("{OTHER_PATIENT}.png"), "=1+1.png".into(), "@SUM(A1).png".into()]),
        (&nonmembers, ["JONES^ANN.png".into(), "-2.png".into(), "a,b.png".into()]),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        for (i, name) in names.iter().enumerate() {
            write_png(&dir.join(name), 32, i as u32 + if dir == &members { 0 } else { 10 });
        }
    }
    (members, nonmembers)
}

fn tiny_audit(members: &Path, nonmembers: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(audit::demo_dir(), members, nonmembers, Preset::Quick);
    c.attacks = vec![AttackKind::Loss];
    c.loss = LossParams { timesteps: vec![100], draws: 1 };
    c.bootstrap_resamples = 20;
    c.batch_size = 8;
    c
}

#[test]
fn audit_reports_name_samples_by_pseudonym_and_keep_no_input_path() {
    let root = tempfile::tempdir().unwrap();
    let (members, nonmembers) = audit_sets(root.path());
    let report = audit::run(&tiny_audit(&members, &nonmembers), &mut |_| {}, &AtomicBool::new(false)).unwrap();
    let json = root.path().join("report.json");
    let csv = root.path().join("scores.csv");
    report.write_json(&json).unwrap();
    report.write_csv(&csv).unwrap();
    let root_text = root.path().display().to_string();
    let leaks = [PATIENT, OTHER_PATIENT, "JONES", "=1+1", root_text.as_str()];
    let json_text = std::fs::read_to_string(&json).unwrap();
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    assert_no_leak("the JSON report", &json_text, &leaks);
    assert_no_leak("the CSV", &csv_text, &leaks);
    let mut ids: Vec<&str> = csv_text.lines().skip(1).map(id_cell).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["member-0001", "member-0002", "member-0003", "nonmember-0001", "nonmember-0002", "nonmember-0003"]
    );
    let value: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(value["target"]["dir"], "demo_ddpm");
    assert_eq!(value["members"], "image folder");
    assert_eq!(value["params"]["members"], "");
}

#[test]
fn file_names_asked_for_are_escaped_against_csv_injection() {
    let root = tempfile::tempdir().unwrap();
    let (members, nonmembers) = audit_sets(root.path());
    let mut config = tiny_audit(&members, &nonmembers);
    config.report_file_names = true;
    let report = audit::run(&config, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    let csv = root.path().join("scores.csv");
    report.write_csv(&csv).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    // Still no folder, only file names; formulas start with ' and commas are quoted.
    assert_no_leak("the CSV", &text, &[PATIENT, &root.path().display().to_string()]);
    for cell in [",'=1+1.png,", ",'@SUM(A1).png,", ",'-2.png,", ",\"a,b.png\",", ",SMITH^JOHN.png,"] {
        assert!(text.contains(cell), "{cell} missing in\n{text}");
    }
    for line in text.lines().skip(1) {
        assert!(!id_cell(line).starts_with(['=', '+', '-', '@', '\t']), "{line}");
    }
}

/// The `id` cell of a row `attack,set,index,id,score` (the id may be quoted and hold commas;
/// the other cells cannot).
fn id_cell(line: &str) -> &str {
    let rest = line.splitn(4, ',').nth(3).unwrap();
    rest.rsplit_once(',').unwrap().0
}

#[test]
fn predict_refuses_a_heatmap_onto_its_input_image() {
    let dir = tempfile::tempdir().unwrap();
    let scan = dir.path().join("scan.png");
    write_png(&scan, 64, 1);
    let before = std::fs::read(&scan).unwrap();
    let out = melo()
        .arg("predict")
        .arg(&scan)
        .args(["--task", "pneumonia", "--heatmap"])
        .arg(dir.path().join("./scan.png"))
        .arg("--adapters")
        .arg(common::repo().join("adapters"))
        .arg("--backbone")
        .arg(backbone_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("would overwrite the input"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert_eq!(std::fs::read(&scan).unwrap(), before);
}

#[test]
fn audit_refuses_outputs_onto_each_other_or_into_its_inputs() {
    let root = tempfile::tempdir().unwrap();
    let (members, nonmembers) = audit_sets(root.path());
    let run = |out: &Path, csv: &Path| {
        let o = melo()
            .arg("audit")
            .arg("--target")
            .arg(audit::demo_dir())
            .arg("--members")
            .arg(&members)
            .arg("--nonmembers")
            .arg(&nonmembers)
            .arg("--out")
            .arg(out)
            .arg("--csv")
            .arg(csv)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let report = root.path().join("report.json");
    assert!(run(&report, &root.path().join("./report.json")).contains("given twice"));
    let err = run(&members.join("report.json"), &root.path().join("s.csv"));
    assert!(err.contains("inside the input folder"), "{err}");
    let err = run(&report, &audit::demo_dir().join("scores.csv"));
    assert!(err.contains("inside the input folder"), "{err}");
    assert!(!report.exists() && !members.join("report.json").exists());
    assert_eq!(std::fs::read_dir(&members).unwrap().count(), 3);
}

#[test]
fn train_refuses_an_output_onto_its_backbone_or_into_its_data() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    write_image_folder(&data, 1);
    let err = train(&options(data.clone(), data.join("train/a.safetensors"))).unwrap_err().to_string();
    assert!(err.contains("inside the input folder"), "{err}");
    // The backbone folder, reached through a link: compared canonically.
    #[cfg(unix)]
    {
        let link = root.path().join("bb");
        std::os::unix::fs::symlink(backbone_dir(), &link).unwrap();
        let err = train(&options(data.clone(), link.join("dinov2_vits14.safetensors"))).unwrap_err().to_string();
        assert!(err.contains("would overwrite"), "{err}");
    }
    let npz = root.path().join("set.npz");
    std::fs::write(&npz, b"stand-in").unwrap();
    // The data file itself under another name (a hard link): the adapter would replace it.
    let o = options(npz.clone(), root.path().join("set.safetensors"));
    std::fs::hard_link(&npz, &o.out).unwrap();
    let err = train(&o).unwrap_err().to_string();
    assert!(err.contains("would overwrite the input"), "{err}");
    assert_eq!(std::fs::read(&npz).unwrap(), b"stand-in");
}
