//! Issue 19 in the window: the privacy tab's "Diagnosis adapter" target runs the membership
//! audit of a (tiny, real) adapter with shadow adapters and shows its metrics; a bad field gives
//! a one-line reason and the window stays usable.

mod common;

use std::time::{Duration, Instant};

use egui::Vec2;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use melo::gui::{AppOptions, AuditTarget, Command, MeloApp, Tab};

fn app() -> Harness<'static, MeloApp> {
    let app = MeloApp::with_options(AppOptions { paths: Vec::new(), backbone_dir: None, adapters_dir: None });
    let mut harness = Harness::builder()
        .with_size(Vec2::new(1400.0, 900.0))
        .with_max_steps(8)
        .build_ui_state(|ui, app: &mut MeloApp| app.show(ui), app);
    harness.state_mut().send(Command::SetTab(Tab::Privacy));
    harness.run_steps(2);
    harness
}

fn shown(harness: &Harness<'_, MeloApp>, text: &str) -> bool {
    harness.query_all_by_label_contains(text).next().is_some()
}

#[test]
fn the_privacy_tab_audits_a_diagnosis_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let target = common::tiny_breast_adapter(dir.path());
    let data = common::require_shared_data("the adapter audit").join("medmnist/breastmnist.npz");
    let mut harness = app();
    harness.get_by_label("Diagnosis adapter").click();
    harness.run_steps(2);
    assert_eq!(harness.state().privacy.target_mode, AuditTarget::Adapter);
    assert!(shown(&harness, "Run adapter audit"));

    // An empty adapter field: a one-line reason, nothing started.
    harness.get_by_label("Run adapter audit").click();
    harness.run_steps(2);
    assert!(shown(&harness, "Adapter is empty"));
    assert!(!harness.state().privacy.adapter_audit.is_running());

    let panel = &mut harness.state_mut().privacy.adapter_audit;
    panel.adapter = target.display().to_string();
    panel.members = format!("{}:train", data.display());
    panel.nonmembers = format!("{}:test", data.display());
    panel.shadow_dir = dir.path().join("shadows").display().to_string();
    panel.shadows = 2;
    panel.limit = 16;
    harness.get_by_label("Run adapter audit").click();
    harness.run_steps(2);
    let deadline = Instant::now() + Duration::from_secs(600);
    while harness.state().privacy.adapter_audit.is_running() {
        assert!(Instant::now() < deadline, "the adapter audit did not finish");
        harness.step();
        std::thread::sleep(Duration::from_millis(100));
    }
    harness.run_steps(3);
    let panel = &harness.state().privacy.adapter_audit;
    assert!(panel.error.is_none(), "{:?}", panel.error);
    let report = panel.report.as_ref().expect("a report");
    assert_eq!(report.shadows.as_ref().unwrap().count, 2);
    for attack in ["loss", "lira_online", "lira_offline", "rmia_online", "rmia_offline"] {
        assert!(shown(&harness, attack), "{attack} row missing");
    }
    let auc = &report.attacks[1].metrics;
    assert!(shown(&harness, &format!("{:.3} [{:.3}, {:.3}]", auc.auc, auc.auc_ci95[0], auc.auc_ci95[1])));
    assert!(shown(&harness, "Most exposed training images"));
    let top = report.most_exposed.first().expect("a gallery");
    assert!(shown(&harness, &format!("{}  {}", top.id, top.label)), "{} missing from the gallery", top.id);
    assert!(shown(&harness, "2 shadow adapters (2 trained now, 0 from the cache)"));
}
