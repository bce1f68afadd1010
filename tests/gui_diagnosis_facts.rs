//! Headless tests (egui_kittest) of the diagnosis panel's trust cues (issue 15): the
//! out-of-distribution banner and greyed probabilities, the *uncalibrated* mark, the model
//! facts panel of a shipped adapter, and its plots.
//!
//! The panel's state is set directly (no backbone is loaded: what is tested is what the panel
//! shows for a given prediction and adapter); the adapter is the shipped pneumonia one, read
//! from `adapters/`, and its training curves come from its report.

mod common;

use std::time::{Duration, Instant};

use egui::Vec2;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use melo::gui::{
    attach_histories, AppOptions, CalibrationView, EngineState, ImageKey, MeloApp, OodView, ReliabilityBin,
    ShownPrediction, TaskInfo, TaskRow, GREYED_CAPTION, RESEARCH_USE_ONLY,
};
use melo::model::engine::{OodCheck, Prediction};
use melo::model::lora::Adapter;

const BANNER: &str = "This image does not look like the images this model was trained on";

fn pneumonia_info() -> TaskInfo {
    let path = common::repo().join("adapters/pneumonia.safetensors");
    let adapter = Adapter::load(&path).unwrap_or_else(|e| panic!("{} is needed: {e}", path.display()));
    let mut info = TaskInfo::of(&adapter);
    attach_histories(std::slice::from_mut(&mut info), &common::repo().join("adapters"));
    info
}

/// The app on a CT sample with the panel ready, showing `info`, no backbone loaded.
fn app_with(info: TaskInfo) -> Harness<'static, MeloApp> {
    let app = MeloApp::with_options(AppOptions {
        paths: vec![common::repo().join("assets/samples/ct/693_J2KR.dcm")],
        backbone_dir: None,
        adapters_dir: None,
    });
    let mut harness = Harness::builder()
        .with_size(Vec2::new(1400.0, 2400.0))
        .with_max_steps(8)
        .build_ui_state(|ui, app: &mut MeloApp| app.show(ui), app);
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness.state().viewer.stack.is_none() {
        assert!(Instant::now() < deadline, "the CT sample did not load");
        harness.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    let panel = &mut harness.state_mut().diagnosis;
    panel.state = EngineState::Ready { backbone: "test".into(), load_ms: 0.0 };
    panel.selected = Some(info.task.clone());
    panel.task_chosen = true;
    panel.tasks = vec![info];
    harness.run_steps(2);
    harness
}

fn show(harness: &mut Harness<'static, MeloApp>, ood: Option<OodCheck>, calibrated: bool) {
    let app = harness.state_mut();
    let stack = app.viewer.stack.as_ref().unwrap();
    let key = ImageKey { stack_id: stack.id, slice: app.viewer.state.slice };
    let prediction = Prediction {
        task: "pneumonia".into(),
        labels: vec!["normal".into(), "pneumonia".into()],
        probabilities: vec![0.384, 0.616],
        multi_label: false,
        calibrated,
        ood,
    };
    app.diagnosis.shown = Some(ShownPrediction { key, prediction, latency_ms: 12.0 });
    harness.run_steps(3);
}

fn shown(harness: &Harness<'_, MeloApp>, text: &str) -> bool {
    harness.query_all_by_label_contains(text).next().is_some()
}

/// The *uncalibrated* mark beside the probabilities (a label of its own).
fn marked_uncalibrated(harness: &Harness<'_, MeloApp>) -> bool {
    harness.query_all_by_label("uncalibrated").next().is_some()
}

fn ood(score: f32, threshold: f32) -> OodCheck {
    OodCheck {
        ood_detector: "mahalanobis".into(),
        ood_score: score,
        ood_threshold: threshold,
        in_distribution: score <= threshold,
        ood_validation_rank: Some(if score <= threshold { 0.5 } else { 1.0 }),
    }
}

#[test]
fn an_out_of_distribution_image_gets_the_banner_and_greyed_probabilities() {
    let mut harness = app_with(pneumonia_info());
    show(&mut harness, Some(ood(412.5, 260.25)), false);
    assert!(shown(&harness, BANNER), "no banner");
    assert!(shown(&harness, "mahalanobis score 412.50 > threshold 260.25"), "the banner gives score and threshold");
    assert!(shown(&harness, "trained on pneumoniamnist (medmnist v2)"), "the banner names the training data");
    assert!(shown(&harness, GREYED_CAPTION), "probabilities not greyed");
    assert!(shown(&harness, "61.6 %"), "the probabilities are still there, greyed");
    assert!(marked_uncalibrated(&harness));

    // The same image in distribution: no banner, nothing greyed, the check named quietly.
    show(&mut harness, Some(ood(120.0, 260.25)), false);
    assert!(!shown(&harness, BANNER), "banner on an in-distribution image");
    assert!(!shown(&harness, GREYED_CAPTION));
    assert!(shown(&harness, "Looks like the training images (mahalanobis score 120.00 <= threshold 260.25)"));

    // Under the threshold but less typical than 95 % of the validation images: a caution,
    // nothing greyed.
    let unusual = OodCheck { ood_validation_rank: Some(0.985), ..ood(250.0, 260.25) };
    show(&mut harness, Some(unusual), false);
    assert!(!shown(&harness, BANNER) && !shown(&harness, GREYED_CAPTION));
    assert!(shown(
        &harness,
        "Unusual image for this model: its mahalanobis score 250.00 is higher than 98.5 % of the validation \
         images (threshold 260.25). Read the probabilities with care."
    ));

    // No OOD statistics (adapters without them): no banner either; a calibrated prediction
    // loses the mark.
    show(&mut harness, None, true);
    assert!(!shown(&harness, BANNER) && !shown(&harness, GREYED_CAPTION));
    assert!(!marked_uncalibrated(&harness), "a calibrated prediction is not marked");
}

#[test]
fn the_facts_panel_names_research_use_data_and_intervals() {
    let info = pneumonia_info();
    let accuracy = info.facts.test_intervals[0].clone();
    let mut harness = app_with(info);
    show(&mut harness, None, false);
    assert!(shown(&harness, "Model facts"));
    assert!(shown(&harness, RESEARCH_USE_ONLY), "no research-use-only line");
    assert!(shown(&harness, "PneumoniaMNIST (MedMNIST v2) (CC BY 4.0); train 4690, val 524, test 621"));
    assert!(shown(&harness, &format!("accuracy {}", melo::model::facts::interval_text(&accuracy))));
    assert!(shown(&harness, "Paediatric chest X-rays from one centre only"), "limitations missing");
    // The shipped adapter carries its fitted temperature: the panel states it, from the metadata.
    let calibration = info_calibration();
    assert!(shown(&harness, &melo::gui::calibration_text(Some(&calibration))), "calibration line");
    assert!(!shown(&harness, "uncalibrated: the probabilities are the raw softmax"));

    // An adapter without one (imported, or trained before calibration) says so.
    let mut uncalibrated = pneumonia_info();
    uncalibrated.calibration = None;
    let mut harness = app_with(uncalibrated);
    show(&mut harness, None, false);
    assert!(shown(&harness, "uncalibrated: the probabilities are the raw softmax"));
}

/// The shipped pneumonia adapter's calibration as the panel sees it.
fn info_calibration() -> CalibrationView {
    pneumonia_info().calibration.expect("the shipped pneumonia adapter is calibrated (melo calibrate)")
}

#[test]
fn calibration_and_ood_plots_appear_when_the_adapter_has_them() {
    let mut info = pneumonia_info();
    // The shipped adapter has both (re-fitted by `melo calibrate`); replaced below by values
    // whose text and plots are known.
    assert!(info.calibration.is_some() && info.ood.is_some());
    // The curves are the report's history.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::repo().join("adapters/pneumonia.report.json")).unwrap())
            .unwrap();
    let history = report["history"].as_array().unwrap();
    // The histogram is rebuilt from the adapter's validation quantiles: it holds every
    // validation image (up to rounding per bin) and the threshold lies within its range.
    let view = info.ood.as_ref().unwrap();
    let n = report["ood"]["threshold_samples"].as_u64().unwrap();
    let total: u64 = view.validation_histogram.iter().map(|b| b.2).sum();
    assert!(total.abs_diff(n) <= view.validation_histogram.len() as u64 / 2 + 1, "{total} of {n} images");
    let (lo, hi) = (view.validation_histogram[0].0, view.validation_histogram.last().unwrap().1);
    assert!(lo < view.threshold && view.threshold < hi, "{lo} {} {hi}", view.threshold);
    assert_eq!(info.history.len(), history.len());
    for (point, epoch) in info.history.iter().zip(history) {
        assert_eq!(point.epoch as u64, epoch["epoch"].as_u64().unwrap());
        assert_eq!(point.train_loss, epoch["train_loss"].as_f64().unwrap());
        assert_eq!(point.val_auc, epoch["val_macro_auc"].as_f64());
    }
    info.calibration = Some(CalibrationView {
        temperature: 1.7,
        rejected_temperature: None,
        ece_before: 0.081,
        ece_after: 0.023,
        ece_change_ci: Some([-0.07, -0.04]),
        brier_before: Some(0.1),
        brier_after: Some(0.09),
        bins: (0..15)
            .map(|i| ReliabilityBin { count: 10, mean_confidence: (i as f64 + 0.5) / 15.0, accuracy: 0.5 })
            .collect(),
    });
    info.ood = Some(OodView {
        detector: "mahalanobis".into(),
        threshold: 260.25,
        validation_histogram: vec![(0.0, 100.0, 40), (100.0, 200.0, 400), (200.0, 300.0, 84)],
    });
    let mut harness = app_with(info);
    show(&mut harness, Some(ood(412.5, 260.25)), true);
    for header in ["Reliability diagram", "Out-of-distribution score", "Training curves"] {
        assert!(shown(&harness, header), "{header} missing");
    }
    assert!(shown(&harness, "temperature 1.70 fitted on validation; test ECE 0.081 -> 0.023 (change 95 % CI -0.070 to -0.040), Brier 0.100 -> 0.090"));
    assert!(!marked_uncalibrated(&harness) && !shown(&harness, "uncalibrated: the probabilities"));
    // Opening the OOD plot shows this image's score against the threshold.
    harness.get_by_label("Out-of-distribution score").click();
    harness.run_steps(3);
    assert!(shown(
        &harness,
        "mahalanobis: this image 412.50 (above 100.0 % of validation images), threshold 260.25 (out of distribution)"
    ));
    harness.get_by_label("Training curves").click();
    harness.run_steps(3);
    assert!(shown(&harness, "3 epochs, from the training report"));
}

#[test]
fn the_all_tasks_table_marks_out_of_distribution_rows() {
    let mut harness = app_with(pneumonia_info());
    show(&mut harness, None, false);
    let app = harness.state_mut();
    let key = app.diagnosis.shown.as_ref().unwrap().key;
    let row = |task: &str, p: f32, ood: OodCheck| TaskRow {
        prediction: Prediction {
            task: task.into(),
            labels: vec!["a".into(), "b".into()],
            probabilities: vec![1.0 - p, p],
            multi_label: false,
            calibrated: false,
            ood: Some(ood),
        },
        latency_ms: 5.0,
    };
    app.diagnosis.show_all_tasks = true;
    app.diagnosis.all_tasks = Some((
        key,
        vec![
            row("pneumonia", 0.616, ood(412.5, 260.25)),
            row("other", 0.9, ood(10.0, 260.25)),
            row("third", 0.7, OodCheck { ood_validation_rank: Some(0.97), ..ood(200.0, 260.25) }),
        ],
    ));
    harness.run_steps(3);
    assert!(shown(&harness, "61.6 % (out of distribution)"), "the OOD row is not marked");
    assert!(shown(&harness, "90.0 %") && !shown(&harness, "90.0 % (out of distribution)"), "in-distribution row");
    assert!(shown(&harness, "70.0 % (unusual)"), "the unusual row is not marked");
}
