//! Headless tests of the privacy tab with a Stable Diffusion pipeline as the target (the real
//! `MeloApp` through egui_kittest): the line saying what the target folder is, CLiD only for
//! pipelines, the cost estimate, an audit of the tiny pipeline (`tests/data/sd/pipeline_tiny`,
//! 4 + 4 captioned images) to its report and a gallery with captions, and Resume from a
//! checkpoint. Expected values are read from the fixture's own JSON files, not from the library.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use egui::Vec2;
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use melo::audit::{self, AttackKind, AuditConfig, Checkpoint, Preset};
use melo::gui::{checkpoint_path, AppOptions, Command, MeloApp, PrivacyCommand, RunState, Tab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(300);

fn pipeline() -> PathBuf {
    common::repo().join("tests/data/sd/pipeline_tiny")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The captions of a captioned folder, in metadata.jsonl order.
fn captions(folder: &Path) -> Vec<String> {
    std::fs::read_to_string(folder.join("metadata.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["text"].as_str().unwrap().to_string())
        .collect()
}

/// A privacy tab whose checkpoints go to a temporary folder (not the user's cache).
fn privacy_app(checkpoints: &Path) -> Harness<'static, MeloApp> {
    let app = MeloApp::with_options(AppOptions { paths: Vec::new(), backbone_dir: None, adapters_dir: None });
    let mut harness = Harness::builder()
        .with_size(Vec2::new(1400.0, 900.0))
        .with_max_steps(8)
        .build_ui_state(|ui, app: &mut MeloApp| app.show(ui), app);
    harness.state_mut().privacy.checkpoint_dir = checkpoints.to_path_buf();
    harness.state_mut().send(Command::SetTab(Tab::Privacy));
    harness.run_steps(2);
    harness
}

fn wait_for(harness: &mut Harness<'_, MeloApp>, what: &str, done: impl Fn(&MeloApp) -> bool) {
    let deadline = Instant::now() + LONG;
    loop {
        harness.step();
        if let Some(failure) = harness.state().messages.iter().find(|m| m.text.starts_with("Audit failed")) {
            panic!("the audit failed while waiting for {what}: {}", failure.text);
        }
        if done(harness.state()) {
            harness.run_steps(2);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; messages: {:?}",
            harness.state().messages.iter().map(|m| &m.text).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn label_shown(harness: &Harness<'_, MeloApp>, text: &str) -> bool {
    harness.query_all_by_label_contains(text).next().is_some()
}

/// The tiny pipeline with PIA and CLiD (quick preset: CLiD at 2 timesteps, 1 draw).
fn tiny_pipeline_audit(app: &mut MeloApp) {
    let dir = pipeline();
    let mut config = AuditConfig::new(&dir, dir.join("members"), dir.join("nonmembers"), Preset::Quick);
    config.attacks = vec![AttackKind::Pia, AttackKind::Clid];
    config.batch_size = 4;
    config.bootstrap_resamples = 50;
    config.trajectory.steps = 2;
    app.privacy.trajectory_strengths = "100".into();
    app.privacy.loss_timesteps = "100".into();
    app.privacy.config = config;
}

#[test]
fn the_target_line_says_what_the_folder_is() {
    let checkpoints = tempfile::tempdir().unwrap();
    let mut harness = privacy_app(checkpoints.path());

    // the pipeline: class, prediction and resolution as its JSON files give them
    let dir = pipeline();
    let class = json(&dir.join("model_index.json"))["_class_name"].as_str().unwrap().to_string();
    let prediction =
        json(&dir.join("scheduler/scheduler_config.json"))["prediction_type"].as_str().unwrap().to_string();
    let latent = json(&dir.join("unet/config.json"))["sample_size"].as_u64().unwrap();
    let vae_blocks = json(&dir.join("vae/config.json"))["block_out_channels"].as_array().unwrap().len() as u32;
    let expected =
        format!("Stable Diffusion pipeline: {class}, {prediction}, {} px", latent * 2u64.pow(vae_blocks - 1));
    harness.state_mut().send(Command::Privacy(PrivacyCommand::SetTarget(dir)));
    harness.run_steps(2);
    assert!(label_shown(&harness, &expected), "{expected}");
    assert!(!harness.state_mut().privacy.target_kind().refused);

    harness.get_by_label("Use the demo model and sets").click();
    harness.run_steps(2);
    assert!(label_shown(&harness, "pixel-space DDPM"));
    assert!(!label_shown(&harness, "Stable Diffusion pipeline:"));

    let empty = tempfile::tempdir().unwrap();
    harness.state_mut().send(Command::Privacy(PrivacyCommand::SetTarget(empty.path().to_path_buf())));
    harness.run_steps(2);
    let kind = harness.state_mut().privacy.target_kind().clone();
    assert!(kind.refused && kind.text.contains("not a model folder") && !kind.text.contains('\n'), "{kind:?}");
    assert!(label_shown(&harness, "not a model folder"));
    assert!(!label_shown(&harness, "pixel-space DDPM"));
}

#[test]
fn clid_is_offered_only_for_a_pipeline() {
    let checkpoints = tempfile::tempdir().unwrap();
    let mut harness = privacy_app(checkpoints.path());
    harness.get_by_label("Use the demo model and sets").click();
    harness.state_mut().privacy.config.attacks = AttackKind::ALL.to_vec();
    harness.run_steps(2);
    assert!(harness.get_by_label("clid").accesskit_node().is_disabled(), "CLiD disabled for the pixel demo");
    assert!(!harness.get_by_label("pia").accesskit_node().is_disabled());
    assert!(
        !harness.state().privacy.config.attacks.contains(&AttackKind::Clid),
        "and dropped from the selection: {:?}",
        harness.state().privacy.config.attacks
    );

    harness.state_mut().send(Command::Privacy(PrivacyCommand::SetTarget(pipeline())));
    harness.run_steps(2);
    assert!(!harness.get_by_label("clid").accesskit_node().is_disabled(), "CLiD offered for a pipeline");

    // the latent demo button points at the shipped pipeline and selects CLiD
    harness.get_by_label("Use the latent demo (Stable Diffusion)").click();
    harness.run_steps(2);
    let app = harness.state();
    assert_eq!(app.privacy.config.target, audit::demo_sd_dir());
    assert_eq!(app.privacy.config.members, audit::demo_sd_dir().join("members"));
    if audit::demo_sd_dir().is_dir() {
        assert!(app.privacy.config.attacks.contains(&AttackKind::Clid), "CLiD selected for the latent demo");
        assert!(label_shown(&harness, "Stable Diffusion pipeline: "));
    } else {
        // until the demo is trained and shipped: said, and the target line gives the reason
        assert!(app.messages.iter().any(|m| m.text.starts_with("The latent demo is not installed")));
        assert!(harness.state_mut().privacy.target_kind().refused);
    }
}

#[test]
fn an_audit_of_the_tiny_pipeline_shows_its_report_and_captioned_gallery() {
    let checkpoints = tempfile::tempdir().unwrap();
    let mut harness = privacy_app(checkpoints.path());
    tiny_pipeline_audit(harness.state_mut());
    harness.run_steps(2);

    // the cost first: 8 samples × (PIA 2 + CLiD 2 × 2 timesteps × 1 draw) calls
    harness.get_by_label("Estimate").click();
    wait_for(&mut harness, "the estimate", |app| app.privacy.cost.is_some() && !app.privacy.is_estimating());
    let (estimate, _) = harness.state().privacy.cost.clone().unwrap();
    let estimate = estimate.expect("an estimate");
    assert_eq!((estimate.samples, estimate.model_calls, estimate.vae_encodes), (8, 48, 8));
    assert!(label_shown(&harness, "8 samples × 6 calls = 48 model calls ×"), "cost line shown");
    assert!(label_shown(&harness, "+ 8 VAE encodes ×"));

    harness.get_by_label("Run").click();
    wait_for(&mut harness, "the audit and its gallery", |app| {
        !app.is_audit_running() && !app.privacy.gallery.is_empty()
    });
    let app = harness.state();
    let report = app.privacy.report.as_ref().expect("a report");
    assert_eq!((report.n_members, report.n_nonmembers), (4, 4));
    assert_eq!(report.attacks.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["pia", "clid"]);
    assert!(report.target.kind.starts_with("Stable Diffusion pipeline"), "{}", report.target.kind);
    assert!(app.privacy.plot_rect.is_some(), "ROC plot drawn");
    let member_captions = captions(&pipeline().join("members"));
    for (attack, items) in &app.privacy.gallery {
        assert_eq!(items.len(), 4, "{attack}: every member (4 < the gallery's size)");
        for item in items {
            assert_eq!(item.caption.as_deref(), Some(member_captions[item.index].as_str()), "{attack} #{}", item.id);
            assert_eq!((item.original.width, item.reconstruction.width), (32, 32));
        }
    }
    // the gallery on screen (the attack with the highest AUC) shows the captions under the images
    let shown = app.privacy.gallery_attack.clone().unwrap();
    let items = &app.privacy.gallery.iter().find(|(name, _)| *name == shown).unwrap().1;
    for item in items {
        let caption = item.caption.as_deref().unwrap();
        if caption.is_ascii() {
            assert!(label_shown(&harness, caption), "caption {caption:?} shown");
        }
    }
    assert!(!checkpoint_path(checkpoints.path(), &app.privacy.run_config().unwrap()).exists(), "removed when done");
    assert!(harness.state().privacy.state == RunState::Idle);
}

#[test]
fn resume_takes_the_finished_attacks_from_an_interrupted_runs_checkpoint() {
    let checkpoints = tempfile::tempdir().unwrap();
    let mut harness = privacy_app(checkpoints.path());
    tiny_pipeline_audit(harness.state_mut());
    harness.run_steps(2);

    // an earlier run of the same parameters, stopped once PIA was done and CLiD had started
    let mut earlier = harness.state().privacy.run_config().unwrap();
    let path = checkpoint_path(checkpoints.path(), &earlier);
    earlier.checkpoint = Some(Checkpoint { path: path.clone(), resume: false });
    let cancel = AtomicBool::new(false);
    let stopped = audit::run(
        &earlier,
        &mut |p| {
            if p.message.starts_with("CLiD") {
                cancel.store(true, Ordering::SeqCst)
            }
        },
        &cancel,
    );
    assert!(matches!(stopped, Err(audit::Error::Cancelled)), "{stopped:?}");
    let saved = json(&path);
    let pia_seconds = saved["attacks"][0]["seconds"].as_f64().unwrap();
    assert_eq!(saved["attacks"].as_array().unwrap().len(), 1, "PIA only");
    harness.run_steps(2);
    assert!(label_shown(&harness, "An interrupted run of these parameters left a checkpoint"));

    harness.get_by_label("Resume").click();
    harness.run_steps(1);
    assert!(harness.state().privacy.resume);
    harness.get_by_label("Run").click();
    wait_for(&mut harness, "the resumed audit", |app| !app.is_audit_running() && app.privacy.report.is_some());
    let report = harness.state().privacy.report.clone().unwrap();
    assert_eq!(report.attacks.len(), 2);
    assert_eq!(report.attacks[0].seconds.to_bits(), pia_seconds.to_bits(), "PIA taken from the checkpoint");
    assert!(!path.exists(), "the checkpoint is removed once the audit is done");
}
