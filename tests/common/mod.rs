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

/// A tiny LoRA adapter trained on the first 16 BreastMNIST training images at 28 px for 2
/// epochs, written to `dir/target.safetensors` with its report (the recipe the membership
/// audit's shadows reuse).
pub fn tiny_breast_adapter(dir: &std::path::Path) -> PathBuf {
    use melo::train::trainer::{train, Method, TrainOptions};
    let data = require_shared_data("a tiny BreastMNIST adapter").join("medmnist/breastmnist.npz");
    let out = dir.join("target.safetensors");
    let options = TrainOptions {
        data,
        method: Method::Lora,
        rank: 2,
        alpha: 2.0,
        epochs: 2,
        lr: 2e-3,
        min_lr: 1e-6,
        warmup: 0.0,
        batch: 8,
        size: 28,
        seed: 1,
        out: out.clone(),
        task: "breast_tiny".into(),
        labels: Some(vec!["malignant".into(), "normal_or_benign".into()]),
        modality: "US".into(),
        description: String::new(),
        augment: melo::train::augment::Augment::None,
        label_smoothing: 0.0,
        weight_decay: 1e-4,
        class_weights: true,
        pooling: melo::model::Pooling::ClsMeanPatch,
        backbone: repo().join("assets/backbone"),
        limit: Some(16),
        split: melo::train::data::SplitFractions::default(),
        resume: false,
        stop_after: None,
        head_epochs: 0,
        head_lr: 3e-3,
        ood_pass_rate: melo::model::ood::THRESHOLD_QUANTILE,
        progress: false,
        intended_use: String::new(),
        limitations: Vec::new(),
    };
    train(&options).expect("training the tiny BreastMNIST adapter");
    out
}
