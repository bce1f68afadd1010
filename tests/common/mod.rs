//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data` beside the repository, if present. A test that needs it must fail when it
/// is absent (use [`require_shared_data`]), never pass without checking anything.
pub fn shared_data() -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    p.is_dir().then_some(p)
}

/// `../shared/data` beside the repository (CI and developer machines have it); panics with a
/// message naming what is missing, so a run without it fails instead of skipping `what`.
pub fn require_shared_data(what: &str) -> PathBuf {
    shared_data().unwrap_or_else(|| {
        panic!(
            "{} is missing: {what} needs the shared data set beside the repository (see the README)",
            repo().join("../shared/data").display()
        )
    })
}

/// eframe storage in memory, as the real window's would be on disk.
#[derive(Default)]
pub struct MemoryStorage(pub std::collections::HashMap<String, String>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.into(), value);
    }
    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }
    fn flush(&mut self) {}
}

/// The small training run the tests share: a rank-2 LoRA on 24 images of each split at 28 px,
/// BreastMNIST's labels, hflip and label smoothing 0.1, one epoch. Tests override what they
/// exercise with struct-update syntax.
pub fn train_options(data: PathBuf, out: PathBuf) -> melo::train::trainer::TrainOptions {
    melo::train::trainer::TrainOptions {
        data,
        method: melo::train::trainer::Method::Lora,
        rank: 2,
        alpha: 2.0,
        targets: Default::default(),
        epochs: 1,
        lr: 2e-3,
        min_lr: 1e-6,
        warmup: 0.0,
        batch: 8,
        size: 28,
        seed: 1,
        out,
        task: "breast_test".into(),
        labels: Some(vec!["malignant".into(), "normal_or_benign".into()]),
        modality: "US".into(),
        description: String::new(),
        augment: melo::train::augment::Augment::Hflip,
        label_smoothing: 0.1,
        weight_decay: 1e-4,
        class_weights: true,
        pooling: melo::model::Pooling::ClsMeanPatch,
        backbone: repo().join("assets/backbone"),
        limit: Some(24),
        split: melo::train::data::SplitFractions::default(),
        resume: false,
        stop_after: None,
        head_epochs: 0,
        head_lr: 3e-3,
        ood_pass_rate: melo::model::ood::THRESHOLD_QUANTILE,
        progress: false,
        intended_use: String::new(),
        limitations: Vec::new(),
    }
}

/// A tiny LoRA adapter trained on the first 16 BreastMNIST training images at 28 px for 2
/// epochs, written to `dir/target.safetensors` with its report (the recipe the membership
/// audit's shadows reuse).
pub fn tiny_breast_adapter(dir: &std::path::Path) -> PathBuf {
    let data = require_shared_data("a tiny BreastMNIST adapter").join("medmnist/breastmnist.npz");
    let out = dir.join("target.safetensors");
    let options = melo::train::trainer::TrainOptions {
        epochs: 2,
        task: "breast_tiny".into(),
        augment: melo::train::augment::Augment::None,
        label_smoothing: 0.0,
        limit: Some(16),
        ..train_options(data, out.clone())
    };
    melo::train::trainer::train(&options).expect("training the tiny BreastMNIST adapter");
    out
}

/// Runs the window's frames until nothing is loading (at most 2 minutes), then lets the UI
/// settle: what every GUI test does after opening files.
pub fn wait_until_loaded(harness: &mut egui_kittest::Harness<'_, melo::gui::MeloApp>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        harness.step();
        if !harness.state().is_busy() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "loading did not finish within the time limit");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    harness.run();
}

/// Frames until `done` holds (workers report over channels between frames), then four more;
/// fails after `limit`, naming what did not happen and the window's status lines.
pub fn wait_for(
    harness: &mut egui_kittest::Harness<'_, melo::gui::MeloApp>,
    what: &str,
    limit: std::time::Duration,
    done: impl Fn(&melo::gui::MeloApp) -> bool,
) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        harness.step();
        if done(harness.state()) {
            break;
        }
        let app = harness.state();
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within {limit:?}; results: {:?}, studies: {:?}, messages: {:?}",
            app.diagnosis.results.status,
            app.studies.status,
            app.messages.iter().map(|m| &m.text).collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    harness.run_steps(4);
}
