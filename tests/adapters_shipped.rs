//! The adapters shipped in `adapters/` were trained by `melo train` on `../shared/data`; each
//! has a report beside it (`TASK.report.json`) with its test metrics and the probabilities of the
//! first test images. Here the engine — the code behind `melo predict` — opens those images from
//! the data set and must give the same probabilities, and the adapter's metadata must carry
//! the report's metrics.

mod common;

use std::path::PathBuf;

use melo::model::Engine;
use melo::train::data::{DataSource, Split};
use melo::train::metrics::argmax;
use melo::train::trainer::TrainReport;

/// The four tasks of issue 4.
const TASKS: [&str; 4] = ["blood_cell_type", "breast_malignancy", "pneumonia", "retina_dr_grade"];
/// Test images re-predicted per task (the report holds up to 64).
const CHECKED: usize = 16;

/// Where the data set a shipped report names lies under `../shared/data`.
fn data_folder(name: &str) -> &'static str {
    match name {
        "PBC (Acevedo et al. 2020), 8-class subset" => "pbc",
        "BreastMNIST (MedMNIST v2)" => "medmnist/breastmnist.npz",
        "PneumoniaMNIST (MedMNIST v2)" => "medmnist/pneumoniamnist.npz",
        "RetinaMNIST (MedMNIST v2)" => "medmnist/retinamnist.npz",
        other => panic!("no known location for the data set {other:?}"),
    }
}

#[test]
fn shipped_adapters_reproduce_their_recorded_test_predictions() {
    let repo = common::repo();
    let adapters = repo.join("adapters");
    let mut engine = Engine::open(&repo.join("assets/backbone")).unwrap();
    let rejected = engine.register_dir(&adapters).unwrap();
    assert!(rejected.is_empty(), "rejected adapters: {rejected:?}");
    for task in TASKS {
        assert!(engine.tasks().any(|t| t == task), "adapter '{task}' is not shipped");
    }
    for task in TASKS {
        let report_path = adapters.join(format!("{task}.report.json"));
        let report: TrainReport = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        let adapter = engine.adapter(task).unwrap();
        let metrics = &adapter.metadata().metrics;
        assert_eq!(metrics["test_accuracy"], report.test.accuracy, "{task}");
        assert_eq!(metrics.get("test_macro_auc").copied(), report.test.macro_auc, "{task}");
        assert_eq!(metrics["test_samples"], report.test_samples as f64, "{task}");
        // The adapter names the report's data set and carries its counts.
        let meta = adapter.metadata();
        assert_eq!(meta.training.dataset, report.data, "{task}");
        assert_eq!(meta.data_set.counts, report.class_counts, "{task}");
        assert_eq!(meta.data_set.licence, report.data_licence, "{task}");

        // Reports name their data set, never its path: the test knows where each one lives.
        let data: PathBuf = repo.join("../shared/data").join(data_folder(&report.data));
        assert!(data.exists(), "{task}: data set {} is missing (see ../shared/data/README.md)", data.display());
        let source = DataSource::open(&data, report.options.labels.as_deref(), report.options.split).unwrap();
        assert_eq!(source.classes, adapter.labels(), "{task}");
        let n = CHECKED.min(report.test_probabilities_head.len());
        let (mut agree, mut correct_now, mut correct_then) = (0, 0, 0);
        for i in 0..n {
            let image = source.image(Split::Test, i).unwrap();
            let p = engine.predict_task(task, &image, 0).unwrap();
            // The report holds the uncalibrated softmax; the engine applies the adapter's
            // temperature: softmax(log p / T) is the same softmax of logits / T.
            let t = adapter.temperature();
            let scaled: Vec<f64> = report.test_probabilities_head[i].iter().map(|&p| f64::from(p).ln() / t).collect();
            let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scaled.iter().map(|z| (z - max).exp()).sum();
            let recorded: &Vec<f32> = &scaled.iter().map(|z| ((z - max).exp() / sum) as f32).collect();
            for (a, b) in p.probabilities.iter().zip(recorded) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{task} test item {i}: predicted {:?}, recorded {recorded:?}",
                    p.probabilities
                );
            }
            let label = source.label(Split::Test, i);
            agree += usize::from(argmax(&p.probabilities) == argmax(recorded));
            correct_now += usize::from(argmax(&p.probabilities) == label);
            correct_then += usize::from(argmax(recorded) == label);
        }
        assert_eq!(agree, n, "{task}");
        assert_eq!(correct_now, correct_then, "{task}");
    }
}
