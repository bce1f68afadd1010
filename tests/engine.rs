//! The diagnosis engine on the shipped DINOv2 backbone with adapters made here (no trained
//! adapter exists yet): registration, switching, prediction, explanation, metadata, and
//! refusal of bad adapters and bad images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use melo::image::{load_image, ImageMeta, LoadOptions, MedicalImage, Window};
use melo::model::engine::{preprocess, Engine};
use melo::model::lora::{Adapter, AdapterMetadata, TrainingSummary};
use melo::model::vit::{Config, Pooling, VisionTransformer};
use melo::model::Error;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engine() -> Engine {
    Engine::open(&repo().join("assets/backbone")).unwrap()
}

fn labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("finding_{i}")).collect()
}

fn synthetic(engine: &Engine, task: &str, classes: usize, seed: u64) -> Adapter {
    let meta = AdapterMetadata::for_backbone(task, labels(classes), engine.backbone());
    Adapter::synthetic(meta, engine.backbone(), seed).unwrap()
}

fn ct() -> MedicalImage {
    load_image(&repo().join("assets/samples/ct/693_J2KR.dcm"), &LoadOptions::default()).unwrap()
}

fn mr() -> MedicalImage {
    load_image(&repo().join("assets/samples/mr_brain_series/brain_001.dcm"), &LoadOptions::default()).unwrap()
}

fn grey_image(rows: usize, cols: usize, values: Vec<f32>) -> MedicalImage {
    MedicalImage {
        meta: ImageMeta { modality: "OT".into(), photometric: "MONOCHROME2".into(), ..ImageMeta::default() },
        frames: 1,
        rows,
        cols,
        channels: 1,
        values,
    }
}

/// Five adapters saved to a folder (2–6 classes, one on CLS ‖ mean-patch), then registered.
fn engine_with_five(dir: &Path) -> Engine {
    let mut engine = engine();
    for (i, classes) in (2..=6).enumerate() {
        let mut meta = AdapterMetadata::for_backbone(&format!("task{i}"), labels(classes), engine.backbone());
        if i == 4 {
            meta.pooling = Pooling::ClsMeanPatch;
        }
        let adapter = Adapter::synthetic(meta, engine.backbone(), 7 + i as u64).unwrap();
        adapter.save(&dir.join(format!("task{i}.safetensors"))).unwrap();
    }
    std::fs::write(dir.join("README.md"), "not an adapter, must be ignored").unwrap();
    let rejected = engine.register_dir(dir).unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(engine.adapters().len(), 5);
    engine
}

fn assert_probabilities(p: &melo::model::Prediction) {
    let sum: f32 = p.probabilities.iter().sum();
    assert!((sum - 1.0).abs() < 1e-5, "{}: probabilities sum to {sum}", p.task);
    assert!(p.probabilities.iter().all(|q| (0.0..=1.0).contains(q)));
    assert_eq!(p.probabilities.len(), p.labels.len());
}

#[test]
fn switches_among_adapters_and_predicts_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = engine_with_five(dir.path());
    let image = ct();
    let mut first = Vec::new();
    for task in ["task0", "task1", "task2", "task3", "task4"] {
        engine.switch(task).unwrap();
        assert_eq!(engine.active().unwrap().task(), task);
        let p = engine.predict(&image).unwrap();
        assert_eq!(p.task, task);
        assert_probabilities(&p);
        first.push(p.probabilities);
    }
    // Switching back gives bit-identical results: switching neither copies nor alters weights.
    engine.switch("task0").unwrap();
    assert_eq!(engine.predict(&image).unwrap().probabilities, first[0]);
    // Adapters are not interchangeable: same class count, different weights, different output.
    engine.register(synthetic(&engine, "task0b", 2, 99)).unwrap();
    engine.switch("task0b").unwrap();
    assert_ne!(engine.predict(&image).unwrap().probabilities, first[0]);

    // Switch latency (an index change) is measured by `melo bench` (src/model/bench.rs), not
    // asserted here: a test's timing depends on the machine's load, not on the code.

    let err = engine.switch("no-such-task").unwrap_err();
    assert!(matches!(err, Error::UnknownTask { .. }));
    assert!(err.to_string().contains("task3"), "{err}");
}

#[test]
fn predict_all_runs_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_five(dir.path());
    let image = mr();
    let all = engine.predict_all(&image, 0).unwrap();
    assert_eq!(all.len(), 5);
    for p in &all {
        assert_probabilities(p);
        let single = engine.predict_task(&p.task, &image, 0).unwrap();
        assert_eq!(single.probabilities, p.probabilities);
    }
}

#[test]
fn colour_images_are_predicted() {
    let mut engine = engine();
    engine.register(synthetic(&engine, "t", 3, 11)).unwrap();
    engine.switch("t").unwrap();
    let us = load_image(&repo().join("assets/samples/ultrasound/US1_J2KR.dcm"), &LoadOptions::default()).unwrap();
    assert_eq!(us.channels, 3);
    assert_probabilities(&engine.predict(&us).unwrap());
    // Colour values are scaled by the bit depth, not windowed: the input stays in 0..1.
    let x = preprocess(&us, 0, 224, [0.0; 3], [1.0; 3]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(x.iter().any(|&v| v > 0.2), "image came out black");
}

/// The adapter's raw logits on the first frame, for checking how they become probabilities.
fn logits(engine: &Engine, task: &str, image: &MedicalImage) -> Vec<f32> {
    let adapter = engine.adapter(task).unwrap();
    let m = adapter.metadata();
    let pixels = preprocess(image, 0, m.input_size, m.mean, m.std).unwrap();
    adapter.logits(engine.backbone(), &pixels).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn single_label_probabilities_are_the_softmax_of_the_logits() {
    let mut engine = engine();
    engine.register(synthetic(&engine, "t", 4, 21)).unwrap();
    engine.switch("t").unwrap();
    let image = ct();
    let z = logits(&engine, "t", &image);
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = z.iter().map(|&v| f64::from(v - max).exp()).sum();
    let p = engine.predict(&image).unwrap();
    assert!(!p.multi_label);
    for (i, (&q, &v)) in p.probabilities.iter().zip(&z).enumerate() {
        let want = f64::from(v - max).exp() / sum;
        assert!((f64::from(q) - want).abs() < 1e-6, "class {i}: {q} vs softmax {want}");
    }
}

#[test]
fn multi_label_adapters_give_independent_probabilities() {
    let mut engine = engine();
    let mut meta = AdapterMetadata::for_backbone("chest14", labels(14), engine.backbone());
    meta.multi_label = true;
    engine.register(Adapter::synthetic(meta, engine.backbone(), 3).unwrap()).unwrap();
    engine.switch("chest14").unwrap();
    let image = ct();
    let p = engine.predict(&image).unwrap();
    assert!(p.multi_label);
    assert_eq!(p.probabilities.len(), 14);
    // Each label's probability is the sigmoid of its own logit (a softmax would tie them
    // together and sum to 1; 14 sigmoids of small logits sum to about 7).
    let z = logits(&engine, "chest14", &image);
    for (i, (&q, &v)) in p.probabilities.iter().zip(&z).enumerate() {
        let want = 1.0 / (1.0 + (-f64::from(v)).exp());
        assert!((f64::from(q) - want).abs() < 1e-6, "label {i}: {q} vs sigmoid {want}");
    }
    let sum: f32 = p.probabilities.iter().sum();
    assert!(sum > 2.0, "probabilities sum to {sum}: a softmax, not independent sigmoids");
}

/// The real image of the ViT fixture (`tests/data/vit/dinov2_ref.safetensors`, `input`: a PBC
/// blood-cell photo, 224×224, ImageNet-normalised) as a 16-bit RGB image, so that
/// preprocessing at 224 px gives that input back (no resize, ImageNet mean and std).
fn fixture_rgb_image() -> MedicalImage {
    let reference =
        candle_core::safetensors::load(repo().join("tests/data/vit/dinov2_ref.safetensors"), &Device::Cpu).unwrap();
    let input = &reference["input"];
    let (_, _, rows, cols) = input.dims4().unwrap();
    let chw = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let plane = rows * cols;
    // Channel-first, normalised → interleaved RGB in 0..65535.
    let values: Vec<f32> =
        (0..plane * 3).map(|i| (chw[(i % 3) * plane + i / 3] * std[i % 3] + mean[i % 3]) * 65535.0).collect();
    MedicalImage {
        meta: ImageMeta { modality: "OT".into(), photometric: "RGB".into(), bits_stored: 16, ..ImageMeta::default() },
        frames: 1,
        rows,
        cols,
        channels: 3,
        values,
    }
}

/// max |got − want| over two equally long maps.
fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[test]
fn explanation_heatmap_is_aligned_to_the_image() {
    // alpha 0: the LoRA update vanishes, so the attention is the backbone's and the heatmap
    // must be the independent rollout of `tools/vit/make_rollout_ref.py` on the same image.
    let mut engine = engine();
    let mut meta = AdapterMetadata::for_backbone("t", labels(3), engine.backbone());
    meta.alpha = 0.0;
    engine.register(Adapter::synthetic(meta, engine.backbone(), 1).unwrap()).unwrap();
    engine.switch("t").unwrap();
    let image = fixture_rgb_image();
    let reference =
        candle_core::safetensors::load(repo().join("tests/data/vit/rollout_ref.safetensors"), &Device::Cpu).unwrap();
    let want_grid = reference["grid"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want_heatmap = reference["heatmap"].flatten_all().unwrap().to_vec1::<f32>().unwrap();

    let explanation = engine.explain(&image, 0).unwrap();
    let h = &explanation.heatmap;
    assert_eq!((h.rows, h.cols), (image.rows, image.cols));
    assert_eq!((h.grid_rows, h.grid_cols), (16, 16));
    // The reference is not symmetric (a transposed map is far off) and peaks off-centre.
    let grid_error = max_abs_diff(&h.grid, &want_grid);
    let heatmap_error = max_abs_diff(&h.values, &want_heatmap);
    println!("rollout grid max |Δ| {grid_error:.2e}, heatmap max |Δ| {heatmap_error:.2e}");
    assert!(grid_error < ROLLOUT_TOLERANCE, "rollout grid differs from the reference by {grid_error}");
    assert!(heatmap_error < ROLLOUT_TOLERANCE, "heatmap differs from the reference by {heatmap_error}");
    assert_eq!(explanation.prediction.probabilities, engine.predict(&image).unwrap().probabilities);
}

/// f32 attention over 12 blocks against the float64 reference (measured 3.4e-7); a one-patch
/// shift or a transposition moves values by more than 0.1.
const ROLLOUT_TOLERANCE: f32 = 1e-5;

#[test]
fn metadata_round_trips_through_the_file() {
    let engine = engine();
    let mut meta =
        AdapterMetadata::for_backbone("pneumonia", vec!["normal".into(), "pneumonia".into()], engine.backbone());
    meta.description = "PneumoniaMNIST, 224 px".into();
    meta.modality = "CR".into();
    meta.alpha = 6.0;
    meta.rank = 8;
    meta.pooling = Pooling::ClsMeanPatch;
    meta.mean = [0.5, 0.5, 0.5];
    meta.std = [0.25, 0.25, 0.25];
    meta.training = TrainingSummary {
        dataset: "PneumoniaMNIST train".into(),
        train_samples: Some(4708),
        validation_samples: Some(524),
        epochs: Some(30),
        optimizer: "Adam, cosine to 1e-6, label smoothing 0.1".into(),
        learning_rate: Some(1e-3),
        selection: "best validation AUC".into(),
        notes: "horizontal flip".into(),
    };
    meta.metrics = BTreeMap::from([("test_accuracy".into(), 0.91), ("test_macro_auc".into(), 0.97)]);
    let adapter = Adapter::synthetic(meta.clone(), engine.backbone(), 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pneumonia.safetensors");
    adapter.save(&path).unwrap();
    let loaded = Adapter::load(&path).unwrap();
    assert_eq!(loaded.metadata(), &meta);
    assert_eq!(loaded.parameter_count(), 12 * 2 * (8 * 384 * 2) + 2 * 768 + 2);
    // The metadata is plain JSON in the safetensors header, readable by any safetensors tool.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let json = &header.metadata().as_ref().unwrap()["adapter"];
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(value["backbone_sha256"], engine.backbone().sha256());
    assert_eq!(value["pooling"], "cls_mean_patch");
    // Saving is atomic: only the adapter is left in the folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn adapter_for_another_backbone_is_refused() {
    let mut engine = engine();
    let mut meta = AdapterMetadata::for_backbone("foreign", labels(2), engine.backbone());
    meta.backbone_sha256 = "ab".repeat(32);
    let adapter = Adapter::synthetic(meta, engine.backbone(), 1).unwrap();
    let err = engine.register(adapter.clone()).unwrap_err();
    assert!(matches!(err, Error::BackboneMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&"ab".repeat(32)) && message.contains(engine.backbone().sha256()), "{message}");

    // In a folder, the foreign adapter is reported and the others still register.
    let dir = tempfile::tempdir().unwrap();
    adapter.save(&dir.path().join("foreign.safetensors")).unwrap();
    synthetic(&engine, "mine", 2, 2).save(&dir.path().join("mine.safetensors")).unwrap();
    let rejected = engine.register_dir(dir.path()).unwrap();
    assert_eq!(engine.tasks().collect::<Vec<_>>(), ["mine"]);
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].reason.contains("refusing"), "{}", rejected[0].reason);
}

#[test]
fn bad_adapter_files_are_clear_errors() {
    let mut engine = engine();
    let dir = tempfile::tempdir().unwrap();
    let good = synthetic(&engine, "good", 3, 4);
    let good_path = dir.path().join("good.safetensors");
    good.save(&good_path).unwrap();
    let bytes = std::fs::read(&good_path).unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Adapter::load(&truncated).unwrap_err();
    assert!(matches!(err, Error::NotSafetensors { .. }), "{err}");

    let png = dir.path().join("picture.safetensors");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    assert!(matches!(Adapter::load(&png).unwrap_err(), Error::NotSafetensors { .. }));

    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(Adapter::load(&empty).unwrap_err(), Error::NotSafetensors { .. }));

    // Well-formed safetensors, wrong shapes: B's rank disagrees with A's in block 3.
    let wrong_rank = dir.path().join("wrong_rank.safetensors");
    rewrite(&bytes, &wrong_rank, |name, shape, values| {
        if name == "blocks.3.attn.v.lora_B" {
            shape[1] = 3;
            values.truncate(shape[0] * 3);
        }
    });
    let err = Adapter::load(&wrong_rank).unwrap_err();
    assert!(err.to_string().contains("disagree on the rank"), "{err}");

    // Head with the wrong number of classes for its labels (weight and bias agree).
    let wrong_head = dir.path().join("wrong_head.safetensors");
    rewrite(&bytes, &wrong_head, |name, shape, values| {
        if name == "head.weight" {
            shape[0] = 2;
            values.truncate(2 * shape[1]);
        } else if name == "head.bias" {
            shape[0] = 2;
            values.truncate(2);
        }
    });
    let err = Adapter::load(&wrong_head).unwrap_err();
    assert!(err.to_string().contains("2 outputs but 3 labels"), "{err}");

    // A missing block is a gap, not a silently shallower adapter.
    let missing = dir.path().join("missing_block.safetensors");
    std::fs::write(&missing, safetensors_without(&bytes, "blocks.5.attn.q.lora_A")).unwrap();
    let err = Adapter::load(&missing).unwrap_err();
    assert!(err.to_string().contains("block 5 are missing"), "{err}");

    // An adapter made for a 2-block, 64-wide ViT with this backbone's hash: right hash, wrong depth.
    let tiny = tiny_vit();
    let mut meta = AdapterMetadata::for_backbone("tiny", labels(3), &tiny);
    meta.backbone_sha256 = engine.backbone().sha256().to_string();
    let err = engine.register(Adapter::synthetic(meta, &tiny, 1).unwrap()).unwrap_err();
    assert!(err.to_string().contains("2 blocks of updates for a 12-block model"), "{err}");

    // Not our format: a MeLo file must go through the importer.
    let err = Adapter::load(&repo().join("tests/data/vit/melo_adapter.safetensors")).unwrap_err();
    assert!(err.to_string().contains("import-melo"), "{err}");

    // The folder registers the good one and names each bad one.
    let rejected = engine.register_dir(dir.path()).unwrap();
    assert_eq!(engine.tasks().collect::<Vec<_>>(), ["good"]);
    assert_eq!(rejected.len(), 6, "{rejected:?}");
}

#[test]
fn bad_images_are_clear_errors() {
    let mut engine = engine();
    engine.register(synthetic(&engine, "t", 2, 1)).unwrap();
    engine.switch("t").unwrap();

    let one_pixel = grey_image(1, 1, vec![0.0]);
    let err = engine.predict(&one_pixel).unwrap_err();
    assert!(matches!(err, Error::Image(_)) && err.to_string().contains("too small"), "{err}");

    // A header claiming 100 000 × 100 000 pixels: refused before anything is allocated.
    let huge = grey_image(100_000, 100_000, Vec::new());
    let err = engine.predict(&huge).unwrap_err();
    assert!(
        matches!(&err, Error::Image(m) if m.contains("100000×100000 pixels is too large (limit")),
        "not the size limit: {err}"
    );

    // The same as a PNG file: the loader's limits refuse it from the header alone.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("huge.png");
    std::fs::write(&png, png_header_only(100_000, 100_000)).unwrap();
    let err = load_image(&png, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, melo::Error::TooLarge(m) if m.contains("100000×100000×1×3 samples (limit")),
        "not the size limit: {err}"
    );

    // Inconsistent buffers and frames are errors, not panics.
    let err = engine.predict(&grey_image(64, 64, vec![0.0; 100])).unwrap_err();
    assert!(matches!(&err, Error::Image(m) if m.contains("holds 100 values, frame 0 needs 4096")), "{err}");
    let err = engine.predict_frame(&grey_image(64, 64, vec![0.0; 64 * 64]), 1).unwrap_err();
    assert!(matches!(&err, Error::Image(m) if m.contains("frame 1 does not exist (1 frames)")), "{err}");

    // NaN / infinite values are treated as black, not propagated into the scores.
    let mut values = vec![100.0f32; 64 * 64];
    values[5] = f32::NAN;
    values[9] = f32::INFINITY;
    assert_probabilities(&engine.predict(&grey_image(64, 64, values)).unwrap());
}

#[test]
fn preprocessing_applies_window_inversion_and_normalisation() {
    let mean = [0.485, 0.456, 0.406];
    let std = [0.229, 0.224, 0.225];
    // Left half below the window (black), right half above it (white).
    let mut image = grey_image(32, 32, (0..32 * 32).map(|i| if i % 32 < 16 { -1000.0 } else { 1000.0 }).collect());
    image.meta.windows = vec![Window { center: 40.0, width: 400.0 }];
    let x = preprocess(&image, 0, 28, mean, std).unwrap();
    assert_eq!(x.dims(), [1, 3, 28, 28]);
    let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for c in 0..3 {
        let left = flat[c * 784];
        let right = flat[c * 784 + 27];
        assert!((left - (0.0 - mean[c]) / std[c]).abs() < 1e-5, "channel {c}: {left}");
        assert!((right - (1.0 - mean[c]) / std[c]).abs() < 1e-5, "channel {c}: {right}");
    }
    // MONOCHROME1: the reader sees low values as white, and so does the model.
    image.meta.photometric = "MONOCHROME1".into();
    let inverted = preprocess(&image, 0, 28, mean, std).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((inverted[0] - (1.0 - mean[0]) / std[0]).abs() < 1e-5);
}

#[test]
fn cli_without_adapters_says_so() {
    let empty = tempfile::tempdir().unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_melo")).args(["adapters", "--adapters"]).arg(empty.path()).output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No adapters in"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_melo"))
        .arg("predict")
        .arg(repo().join("assets/samples/ct/693_J2KR.dcm"))
        .arg("--adapters")
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no diagnosis adapters") && stderr.contains("import-melo"), "{stderr}");
}

#[test]
fn cli_predicts_and_lists_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    for (i, task) in ["brain", "ct-findings"].iter().enumerate() {
        synthetic(&engine, task, 3 + i, i as u64).save(&dir.path().join(format!("{task}.safetensors"))).unwrap();
    }
    std::fs::write(dir.path().join("broken.safetensors"), b"nonsense").unwrap();
    let melo = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_melo"));
        c.env("MELO_ADAPTERS", dir.path()).env("MELO_BACKBONE", repo().join("assets/backbone"));
        c
    };
    let image = repo().join("assets/samples/ct/693_J2KR.dcm");

    let out = melo().arg("predict").arg(&image).args(["--all", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let predictions = report["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    for p in predictions {
        let sum: f64 = p["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }
    assert_eq!(report["rejected_adapters"].as_array().unwrap().len(), 1);

    // Several tasks and none chosen: a clear request to choose.
    let out = melo().arg("predict").arg(&image).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--task"));

    let heatmap = dir.path().join("heat.png");
    let out = melo().arg("predict").arg(&image).args(["--task", "brain", "--heatmap"]).arg(&heatmap).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = load_image(&heatmap, &LoadOptions::default()).unwrap();
    assert_eq!((written.rows, written.cols), (512, 512));

    let out = melo().args(["adapters", "--json"]).output().unwrap();
    assert!(out.status.success());
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["adapters"].as_array().unwrap().len(), 2);
    assert_eq!(listing["adapters"][0]["task"], "brain");
}

// ---- helpers ---------------------------------------------------------------------------

fn tiny_vit() -> VisionTransformer {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/data/vit/peft_base_config.json")).unwrap())
            .unwrap();
    let config: Config = serde_json::from_value(json["constructor_kwargs"].clone()).unwrap();
    VisionTransformer::load(&repo().join("tests/data/vit/peft_base.safetensors"), config).unwrap()
}

/// Rewrites an f32 safetensors file, letting `edit` change each tensor's shape and values
/// (metadata kept).
fn rewrite(bytes: &[u8], out: &Path, mut edit: impl FnMut(&str, &mut Vec<usize>, &mut Vec<f32>)) {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut shape = view.shape().to_vec();
        let mut values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        edit(&name, &mut shape, &mut values);
        tensors.push((name, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    let data = safetensors::serialize(views, header.metadata().clone()).unwrap();
    std::fs::write(out, data).unwrap();
}

/// The same file without one tensor.
fn safetensors_without(bytes: &[u8], drop: &str) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| n != drop).collect();
    safetensors::serialize(views, header.metadata().clone()).unwrap()
}

/// A well-formed PNG claiming `w × h` 8-bit grey pixels: IHDR, then an IDAT chunk (a valid
/// zlib stream of one empty stored block: far too little data, which only a full decode
/// would notice) and IEND, so that the header reads cleanly and only the size can refuse it.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]); // 8-bit grey, deflate, no filter, no interlace
    let idat = [0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x01];
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", &ihdr[..]), (b"IDAT", &idat[..]), (b"IEND", &[][..])] {
        out.extend((data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend(data);
        out.extend(&chunk);
        out.extend(crc32(&chunk).to_be_bytes());
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
